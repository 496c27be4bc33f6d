//! The `svm` platform: the kernel's `Platform` for an SVSM that is the L1 hypervisor of
//! its guest under QEMU. There is no hardware RMP, so a software one (`bulwark-rmp`)
//! holds page state, and the nested page tables enforce it: a page is mapped for the
//! guest exactly while the RMP lets VMPL1 read it. Registers live in each vCPU's VMCB.
//!
//! Several CPUs run vCPUs: vCPU `i` lives on CPU `i % cpus`. The platform sits behind the
//! SVSM's one lock (`native.rs`); a CPU takes a vCPU out of it to run it ([`take`]) and
//! puts it back after the #VMEXIT ([`put_back`]), so the lock is never held in the guest.
//! While a vCPU is out, changes that concern it are recorded in its [`Running`] entry and
//! its CPU is kicked (`kick.rs`) before the change counts as done.
//!
//! [`take`]: SvmPlatform::take
//! [`put_back`]: SvmPlatform::put_back

use super::super::guest_phys;
use super::super::pages::Page;
use super::kick;
use super::npt::{Access, NestedPageTable};
use super::vcpu::SvmVcpu;
use abi::hw::rmpadjust::{PERM_EXEC_SUPERVISOR, PERM_EXEC_USER, PERM_READ, PERM_WRITE};
use abi::vmsa::VmsaField;
use alloc::collections::BTreeMap;
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::addr::{Gpa, PageAddr, PageRange, PageSize};
use kernel::platform::{GuestRequestError, HwError, Level, MemoryFault, Platform, PvalidateEffect, VtomLimits};
use kernel::vcpu::VcpuIndex;
use rmp::{Rmp, Size};

/// The guest's VMPL on this platform (one guest level).
pub const GUEST_VMPL: u8 = 1;

pub struct SvmPlatform {
    pub rmp: Rmp,
    pub npt: NestedPageTable,
    /// Every vCPU, by kernel vCPU index: in the SVSM's hands, or out on a CPU.
    pub vcpus: BTreeMap<u32, Slot>,
    /// CPUs that run vCPUs.
    pub cpus: u32,
    /// MSR and I/O permission maps shared by every vCPU.
    pub maps: PermissionMaps,
    /// The software PSP that answers the SVSM's guest requests (attestation).
    pub psp: Option<softpsp::SoftPsp>,
    /// The certificate table for its reports (empty without an issuing kit).
    pub certificates: alloc::vec::Vec<u8>,
    pub log_level: Level,
}

/// Where a vCPU is. Taking one out and putting it back swaps the slot's content in place:
/// the exit path allocates nothing.
pub enum Slot {
    Here(SvmVcpu),
    Out(Running),
}

impl Slot {
    fn vmsa_gpa(&self) -> u64 {
        match self {
            Slot::Here(v) => v.vmsa_gpa,
            Slot::Out(r) => r.vmsa_gpa,
        }
    }
}

/// A vCPU out on a CPU: what the SVSM may need of it meanwhile, and what it must do when
/// it comes back.
#[derive(Clone, Copy, Debug)]
pub struct Running {
    pub cpu: u32,
    pub vmsa_gpa: u64,
    pub vmpl: u8,
    pub sev_features: u64,
    /// Nested paging changed: flush its guest TLB before it runs again.
    pub flush: bool,
    /// DELETE_VCPU stopped it: it must not run again.
    pub stop: bool,
}

/// Bumped whenever the set of runnable vCPUs changes (an idle CPU waits for it).
pub static VCPUS_CHANGED: AtomicU64 = AtomicU64::new(0);

/// Tell idle CPUs that the set of vCPUs changed (one may be theirs now).
pub fn vcpus_changed() {
    VCPUS_CHANGED.fetch_add(1, Ordering::SeqCst);
    kick::wake_idle();
}

/// Which MSRs and I/O ports the guest reaches without the SVSM.
pub struct PermissionMaps {
    /// Built from the MSR policy (`bulwark_svm::msr`): every access exits except to the
    /// MSRs the hardware switches for the guest (docs/platforms/svm.md, "MSRs").
    msr: Page,
    /// All ones but the guest's own ports: any other port access exits and is refused, so
    /// a guest cannot program devices (PCI configuration, DMA engines) against SVSM memory.
    io: Page,
}

/// Ports the guest may use directly: its serial ports (COM2 console, COM4 the host
/// agent's channel) and QEMU's debug-exit device.
const GUEST_PORTS: [core::ops::RangeInclusive<u16>; 3] = [0x2F8..=0x2FF, 0x2E8..=0x2EF, 0xF4..=0xF7];

impl PermissionMaps {
    pub fn new() -> Option<Self> {
        let mut msr = Page::zeroed_run(2)?;
        ::svm::msrpm::build(msr.run_bytes_mut().try_into().ok()?);
        let mut io = Page::zeroed_run(3)?;
        let bits = io.run_bytes_mut();
        bits.fill(0xFF);
        for port in GUEST_PORTS.into_iter().flatten() {
            bits[usize::from(port / 8)] &= !(1 << (port % 8));
        }
        Some(Self { msr, io })
    }

    pub fn msr_phys(&self) -> u64 {
        self.msr.phys()
    }

    pub fn io_phys(&self) -> u64 {
        self.io.phys()
    }
}

impl SvmPlatform {
    /// Make the nested page tables follow the RMP for `pfns`, and flush guest TLBs.
    pub fn sync(&mut self, pfns: core::ops::Range<u64>) -> Result<(), HwError> {
        for pfn in pfns {
            let access = self.rmp.allows(pfn, GUEST_VMPL, PERM_READ).then(|| Access {
                write: self.rmp.allows(pfn, GUEST_VMPL, PERM_WRITE),
                execute: self.rmp.allows(pfn, GUEST_VMPL, PERM_EXEC_SUPERVISOR)
                    || self.rmp.allows(pfn, GUEST_VMPL, PERM_EXEC_USER),
            });
            self.npt.set(pfn << 12, access).ok_or(HwError::Fault)?;
        }
        for slot in self.vcpus.values_mut() {
            match slot {
                Slot::Here(v) => v.flush_tlb(),
                // A vCPU on another CPU may hold the old translations: it leaves the guest
                // before the change counts as done, and flushes when it comes back.
                Slot::Out(r) => {
                    r.flush = true;
                    kick::kick(r.cpu);
                }
            }
        }
        Ok(())
    }

    /// The CPU that runs vCPU `index`.
    pub fn home(&self, index: u32) -> u32 {
        index % self.cpus.max(1)
    }

    /// vCPU `index`, if it is in the SVSM's hands.
    pub fn vcpu(&self, index: u32) -> Option<&SvmVcpu> {
        match self.vcpus.get(&index)? {
            Slot::Here(v) => Some(v),
            Slot::Out(_) => None,
        }
    }

    pub fn vcpu_mut(&mut self, index: u32) -> Option<&mut SvmVcpu> {
        match self.vcpus.get_mut(&index)? {
            Slot::Here(v) => Some(v),
            Slot::Out(_) => None,
        }
    }

    /// The vCPUs in the SVSM's hands that may run, with their indices.
    pub fn runnable(&self) -> impl Iterator<Item = (u32, &SvmVcpu)> {
        self.vcpus.iter().filter_map(|(i, slot)| match slot {
            Slot::Here(v) if !v.stopped => Some((*i, v)),
            _ => None,
        })
    }

    /// Take vCPU `index` out of the SVSM's hands to run it on `cpu` (not if it is stopped).
    pub fn take(&mut self, index: u32, cpu: u32) -> Option<SvmVcpu> {
        let slot = self.vcpus.get_mut(&index)?;
        let Slot::Here(v) = &*slot else { return None };
        if v.stopped {
            return None;
        }
        let r = Running {
            cpu,
            vmsa_gpa: v.vmsa_gpa,
            vmpl: v.vmpl,
            sev_features: v.sev_features,
            flush: false,
            stop: false,
        };
        match core::mem::replace(slot, Slot::Out(r)) {
            Slot::Here(v) => Some(v),
            Slot::Out(_) => None,
        }
    }

    /// Give a vCPU back after its #VMEXIT (or a kick), applying what happened while it was
    /// out. A vCPU deleted meanwhile is dropped.
    pub fn put_back(&mut self, index: u32, mut v: SvmVcpu) {
        let Some(slot) = self.vcpus.get_mut(&index) else { return };
        let Slot::Out(r) = *slot else { return };
        if r.flush {
            v.flush_tlb();
        }
        if r.stop {
            Self::stop(&mut v);
        }
        *slot = Slot::Here(v);
    }

    fn stop(v: &mut SvmVcpu) {
        v.stopped = true;
        let efer = v.field(VmsaField::Efer);
        v.set_field(VmsaField::Efer, efer & !abi::hw::EFER_SVME);
    }

    fn check(&self, gpa: u64, len: usize, need: u8) -> Result<(), MemoryFault> {
        self.rmp.check_access(gpa, len, 0, need).map_err(|a| MemoryFault { gpa: Gpa(a) })
    }

    /// The gpa of `field` in a VMSA page that no vCPU runs yet; the page must be a
    /// validated VMSA page in the RMP.
    fn unbound_vmsa_field(&self, vmsa: PageAddr, field: VmsaField) -> Result<u64, MemoryFault> {
        match self.rmp.entry(vmsa.pfn()) {
            Some(e) if e.assigned && e.validated && e.vmsa => Ok(vmsa.raw() + field.offset() as u64),
            _ => Err(MemoryFault { gpa: vmsa.gpa() }),
        }
    }

    fn slot_by_vmsa(&self, vmsa: PageAddr) -> Option<&Slot> {
        self.vcpus.values().find(|slot| slot.vmsa_gpa() == vmsa.raw())
    }

    fn slot_by_vmsa_mut(&mut self, vmsa: PageAddr) -> Option<&mut Slot> {
        self.vcpus.values_mut().find(|slot| slot.vmsa_gpa() == vmsa.raw())
    }

    fn size(size: PageSize) -> Size {
        match size {
            PageSize::Size4K => Size::Small,
            PageSize::Size2M => Size::Huge,
        }
    }
}

impl Platform for SvmPlatform {
    const CALL_EXIT_CODE: u64 = abi::hw::SVM_EXIT_VMMCALL;
    const NAME: &'static str = "svm";

    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemoryFault> {
        self.check(gpa.0, buf.len(), PERM_READ)?;
        // SAFETY: `check` found every page validated guest RAM; SVSM memory is never
        // assigned to the guest in the RMP, so no SVSM object is touched.
        if unsafe { guest_phys::read(gpa.0, buf) } { Ok(()) } else { Err(MemoryFault { gpa }) }
    }

    fn write(&mut self, gpa: Gpa, data: &[u8]) -> Result<(), MemoryFault> {
        self.check(gpa.0, data.len(), PERM_WRITE)?;
        // SAFETY: as in `read`.
        if unsafe { guest_phys::write(gpa.0, data) } { Ok(()) } else { Err(MemoryFault { gpa }) }
    }

    fn zero_pages(&mut self, pages: PageRange) -> Result<(), MemoryFault> {
        let len = (pages.pages() * 4096) as usize;
        self.check(pages.start().raw(), len, PERM_WRITE)?;
        // SAFETY: as in `read`.
        if unsafe { guest_phys::zero(pages.start().raw(), len) } {
            Ok(())
        } else {
            Err(MemoryFault { gpa: pages.start().gpa() })
        }
    }

    fn pvalidate(&mut self, page: PageAddr, size: PageSize, validate: bool) -> Result<PvalidateEffect, HwError> {
        let effect = self.rmp.pvalidate(page.raw(), Self::size(size), validate)?;
        self.sync(page.pfn()..page.pfn() + size.pages())?;
        Ok(effect)
    }

    fn rmpadjust(
        &mut self,
        page: PageAddr,
        size: PageSize,
        target_vmpl: u8,
        perms: u8,
        vmsa: bool,
    ) -> Result<(), HwError> {
        // A VMSA is in use while a CPU has its vCPU out (unless it is stopped for good).
        let vcpus = &self.vcpus;
        let in_use =
            |pfn: u64| vcpus.values().any(|slot| matches!(slot, Slot::Out(r) if !r.stop && r.vmsa_gpa >> 12 == pfn));
        self.rmp.rmpadjust(page.raw(), Self::size(size), target_vmpl, perms, vmsa, in_use)?;
        self.sync(page.pfn()..page.pfn() + size.pages())
    }

    fn vmpl_permissions(&self, page: PageAddr, vmpl: u8) -> Option<u8> {
        Some(self.rmp.vmpl_perms(page.pfn(), vmpl))
    }

    fn fatal(&mut self, why: core::fmt::Arguments<'_>) -> ! {
        crate::println!("svm: stopping: {why}");
        crate::bare::exit::failure()
    }

    fn flush_guest_tlb(&mut self) {
        // Nothing left to do: every RMPADJUST already changed the nested page tables and
        // made each CPU running a guest leave it and flush before it runs it again
        // (`sync`).
    }

    fn vmsa_read(&self, vmsa: PageAddr, field: VmsaField) -> Result<u64, MemoryFault> {
        match self.slot_by_vmsa(vmsa) {
            Some(Slot::Here(v)) => return Ok(v.field(field)),
            // Out on another CPU: only the fields the guest cannot change are known.
            Some(Slot::Out(r)) => {
                return match field {
                    VmsaField::Vmpl => Ok(u64::from(r.vmpl)),
                    VmsaField::SevFeatures => Ok(r.sev_features),
                    _ => Err(MemoryFault { gpa: vmsa.gpa() }),
                };
            }
            None => {}
        }
        // A VMSA no vCPU runs yet (CREATE_VCPU in progress): the page itself.
        let gpa = self.unbound_vmsa_field(vmsa, field)?;
        let mut b = [0u8; 8];
        // SAFETY: a validated, assigned VMSA page of guest RAM (checked), owned by the SVSM.
        if !unsafe { guest_phys::read(gpa, &mut b[..field.width()]) } {
            return Err(MemoryFault { gpa: vmsa.gpa() });
        }
        Ok(u64::from_le_bytes(b))
    }

    fn vmsa_write(&mut self, vmsa: PageAddr, field: VmsaField, value: u64) -> Result<(), MemoryFault> {
        match self.slot_by_vmsa_mut(vmsa) {
            Some(Slot::Here(v)) => {
                v.set_field(field, value);
                return Ok(());
            }
            Some(Slot::Out(_)) => return Err(MemoryFault { gpa: vmsa.gpa() }),
            None => {}
        }
        let gpa = self.unbound_vmsa_field(vmsa, field)?;
        // SAFETY: as in `vmsa_read`.
        if unsafe { guest_phys::write(gpa, &value.to_le_bytes()[..field.width()]) } {
            Ok(())
        } else {
            Err(MemoryFault { gpa: vmsa.gpa() })
        }
    }

    fn vcpu_created(&mut self, index: VcpuIndex, vmsa: PageAddr, apic_id: u32, _svsm_pages: &[PageAddr]) {
        let mut image = [0u8; 4096];
        // SAFETY: the VMSA page is guest RAM the SVSM owns now (the guest lost access).
        let read = unsafe { guest_phys::read(vmsa.raw(), &mut image) };
        match SvmVcpu::from_vmsa(&self.npt, &self.maps, vmsa.raw(), &image).filter(|_| read) {
            Some(mut v) => {
                // Its own ASID, so its TLB entries never mix with another vCPU's.
                v.vmcb.set_u32(abi::vmcb::offset::GUEST_ASID, index.0 + 1);
                self.vcpus.insert(index.0, Slot::Here(v));
                crate::println!("svm: vCPU {} runs on cpu {}", index.0, self.home(index.0));
                vcpus_changed();
            }
            None => crate::println!("svm: no memory for vCPU {} (APIC ID {apic_id})", index.0),
        }
    }

    fn vcpu_stop(&mut self, vmsa: PageAddr) -> Result<(), HwError> {
        match self.slot_by_vmsa_mut(vmsa) {
            Some(Slot::Here(v)) => Self::stop(v),
            // Out on another CPU: it must leave the guest before DELETE_VCPU returns.
            Some(Slot::Out(r)) => {
                r.stop = true;
                kick::kick(r.cpu);
            }
            None => return Err(HwError::Fault),
        }
        Ok(())
    }

    fn vcpu_deleted(&mut self, index: VcpuIndex) {
        // Still out on a CPU (stopped): dropped when that CPU puts it back.
        self.vcpus.remove(&index.0);
        vcpus_changed();
    }

    fn vtom_limits(&self) -> Option<VtomLimits> {
        None
    }

    fn log(&mut self, level: Level, args: core::fmt::Arguments<'_>) {
        if level <= self.log_level {
            crate::println!("[{level:?}] {args}");
        }
    }

    fn guest_request(&mut self, request: &[u8; 4096], response: &mut [u8; 4096]) -> Result<(), GuestRequestError> {
        let psp = self.psp.as_mut().ok_or(GuestRequestError::Unavailable)?;
        // The firmware's refusals all read as INVALID_PARAM (0x16): the SVSM only needs to
        // know that no answer came.
        psp.guest_request(request, response).map_err(|e| {
            crate::println!("svm: the PSP refused a guest request: {e:?}");
            GuestRequestError::Firmware(0x16)
        })
    }

    fn log_level(&self) -> Level {
        self.log_level
    }

    fn set_log_level(&mut self, level: Level) {
        self.log_level = level;
    }

    fn log_read(&self, offset: u64, out: &mut [u8]) -> Result<usize, kernel::log_ring::LogLost> {
        super::super::console::log_read(offset, out)
    }

    fn log_written(&self) -> u64 {
        super::super::console::log_written()
    }

    fn report_certificates(&mut self) -> &[u8] {
        &self.certificates
    }
}
