//! `SvmPlatform`: the kernel's `Platform` for an SVSM that is the L1 hypervisor of its
//! guest under QEMU, over the [`SvmHw`] seam. There is no hardware RMP, so a software one
//! (`bulwark-rmp`) holds page state, and the nested page tables enforce it (`npt`):
//! every PVALIDATE and RMPADJUST changes the tables for the pages it touched ([`sync`]).
//! Registers live in each vCPU's VMCB.
//!
//! Several CPUs run vCPUs. The platform sits behind the SVSM's lock (the caller's); a CPU
//! takes a vCPU out of it to run it and puts it back after the #VMEXIT (`slots`, `run`),
//! so the lock is never held in the guest. While a vCPU is out, changes that concern it
//! are recorded in its slot and its CPU is kicked before the change counts as done.
//!
//! [`sync`]: SvmPlatform::sync

use crate::hw::{PageMem, SvmHw};
use crate::npt;
use crate::slots::{Slot, Slots};
use crate::vcpu::{Controls, GUEST_VMPL, SvmVcpu};
use abi::hw::rmpadjust::{PERM_READ, PERM_WRITE};
use abi::vmsa::VmsaField;
use alloc::vec::Vec;
use kernel::addr::{Gpa, PageAddr, PageRange, PageSize};
use kernel::log_ring::LogLost;
use kernel::platform::{GuestRequestError, HwError, Level, MemoryFault, Platform, PvalidateEffect, VtomLimits};
use kernel::vcpu::VcpuIndex;
use rmp::{Rmp, Size};

/// The MSR and I/O permission maps every vCPU's VMCB points at.
#[derive(Debug)]
pub struct PermissionMaps<P> {
    /// Built from the MSR policy (`msr`, `msrpm`).
    pub msr: P,
    /// Built from the I/O policy (`iopm`).
    pub io: P,
}

impl<P: PageMem> PermissionMaps<P> {
    /// Both maps, in SVSM memory from `hw`; `None` without memory.
    pub fn new<H: SvmHw<Page = P>>(hw: &mut H) -> Option<Self> {
        let mut msr = hw.alloc(crate::msrpm::SIZE / 4096)?;
        crate::msrpm::build(msr.bytes_mut().get_mut(..crate::msrpm::SIZE)?.try_into().ok()?);
        let mut io = hw.alloc(crate::iopm::SIZE / 4096)?;
        crate::iopm::build(io.bytes_mut().get_mut(..crate::iopm::SIZE)?);
        Some(Self { msr, io })
    }
}

/// What the platform keeps besides the hardware.
#[derive(Debug)]
pub struct SvmState<P> {
    /// The page-state authority: what the guest validated, with which permissions.
    pub rmp: Rmp,
    pub slots: Slots<P>,
    pub maps: PermissionMaps<P>,
    /// The certificate table for the PSP's reports (empty without an issuing kit).
    pub certificates: Vec<u8>,
    pub log_level: Level,
    /// Guest accesses refused so far (their log lines are rate-limited by it).
    pub(crate) refused: u32,
    /// MSR accesses refused so far (likewise).
    pub(crate) refused_msrs: u32,
    /// What the kernel made of the last call it served (for the model and tests).
    pub last_entry: Option<kernel::request::EntryOutcome>,
}

impl<P> SvmState<P> {
    pub fn new(rmp: Rmp, slots: Slots<P>, maps: PermissionMaps<P>, certificates: Vec<u8>) -> Self {
        Self { rmp, slots, maps, certificates, log_level: Level::Info, refused: 0, refused_msrs: 0, last_entry: None }
    }
}

/// Log the first 32 of a kind in full, then every 100th: a guest cannot flood the log.
pub(crate) fn worth_logging(count: u32) -> bool {
    count <= 32 || count.is_multiple_of(100)
}

#[derive(Debug)]
pub struct SvmPlatform<H: SvmHw> {
    pub hw: H,
    pub state: SvmState<H::Page>,
}

impl<H: SvmHw> SvmPlatform<H> {
    /// What a new vCPU's VMCB points at.
    pub fn controls(&self) -> Controls {
        Controls { npt_root: self.hw.npt_root(), msrpm: self.state.maps.msr.phys(), iopm: self.state.maps.io.phys() }
    }

    /// Make the nested page tables follow the RMP for `pfns`, and make every vCPU forget
    /// the old translations before it runs again: those out on a CPU are kicked, so the
    /// change has reached every CPU when this returns.
    pub fn sync(&mut self, pfns: core::ops::Range<u64>) -> Result<(), HwError> {
        for pfn in pfns {
            let access = npt::access_for(&self.state.rmp, pfn, GUEST_VMPL);
            self.hw.npt_set(pfn << 12, access).map_err(|_| HwError::Fault)?;
        }
        let hw = &mut self.hw;
        self.state.slots.flush_all(|cpu| hw.kick(cpu));
        Ok(())
    }

    /// vCPU `index`, if it is in the SVSM's hands.
    pub fn vcpu(&self, index: u32) -> Option<&SvmVcpu<H::Page>> {
        self.state.slots.get(index)
    }

    fn check(&self, gpa: u64, len: usize, need: u8) -> Result<(), MemoryFault> {
        self.state.rmp.check_access(gpa, len, 0, need).map_err(|a| MemoryFault { gpa: Gpa(a) })
    }

    /// The gpa of `field` in a VMSA page that no vCPU runs yet; the page must be a
    /// validated VMSA page in the RMP.
    fn unbound_vmsa_field(&self, vmsa: PageAddr, field: VmsaField) -> Result<u64, MemoryFault> {
        match self.state.rmp.entry(vmsa.pfn()) {
            Some(e) if e.assigned && e.validated && e.vmsa => Ok(vmsa.raw() + field.offset() as u64),
            _ => Err(MemoryFault { gpa: vmsa.gpa() }),
        }
    }

    fn size(size: PageSize) -> Size {
        match size {
            PageSize::Size4K => Size::Small,
            PageSize::Size2M => Size::Huge,
        }
    }
}

impl<H: SvmHw> Platform for SvmPlatform<H> {
    const CALL_EXIT_CODE: u64 = abi::hw::SVM_EXIT_VMMCALL;
    const NAME: &'static str = "svm";

    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemoryFault> {
        self.check(gpa.0, buf.len(), PERM_READ)?;
        self.hw.read_guest(gpa.0, buf).map_err(|_| MemoryFault { gpa })
    }

    fn write(&mut self, gpa: Gpa, data: &[u8]) -> Result<(), MemoryFault> {
        self.check(gpa.0, data.len(), PERM_WRITE)?;
        self.hw.write_guest(gpa.0, data).map_err(|_| MemoryFault { gpa })
    }

    fn zero_pages(&mut self, pages: PageRange) -> Result<(), MemoryFault> {
        let fault = MemoryFault { gpa: pages.start().gpa() };
        let len = usize::try_from(pages.pages().saturating_mul(4096)).map_err(|_| fault)?;
        self.check(pages.start().raw(), len, PERM_WRITE)?;
        self.hw.zero_guest(pages.start().raw(), len).map_err(|_| fault)
    }

    fn pvalidate(&mut self, page: PageAddr, size: PageSize, validate: bool) -> Result<PvalidateEffect, HwError> {
        let effect = self.state.rmp.pvalidate(page.raw(), Self::size(size), validate)?;
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
        let slots = &self.state.slots;
        self.state
            .rmp
            .rmpadjust(page.raw(), Self::size(size), target_vmpl, perms, vmsa, |pfn| slots.vmsa_in_use(pfn))?;
        self.sync(page.pfn()..page.pfn() + size.pages())
    }

    fn vmpl_permissions(&self, page: PageAddr, vmpl: u8) -> Option<u8> {
        Some(self.state.rmp.vmpl_perms(page.pfn(), vmpl))
    }

    fn flush_guest_tlb(&mut self) {
        // Nothing left to do: every RMPADJUST already changed the nested page tables and
        // made each CPU running a guest leave it and flush before it runs it again
        // (`sync`).
    }

    fn vmsa_read(&self, vmsa: PageAddr, field: VmsaField) -> Result<u64, MemoryFault> {
        match self.state.slots.by_vmsa(vmsa.raw()) {
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
        let bytes = b.get_mut(..field.width()).ok_or(MemoryFault { gpa: vmsa.gpa() })?;
        self.hw.read_guest(gpa, bytes).map_err(|_| MemoryFault { gpa: vmsa.gpa() })?;
        Ok(u64::from_le_bytes(b))
    }

    fn vmsa_write(&mut self, vmsa: PageAddr, field: VmsaField, value: u64) -> Result<(), MemoryFault> {
        match self.state.slots.by_vmsa_mut(vmsa.raw()) {
            Some(Slot::Here(v)) => {
                v.set_field(field, value);
                return Ok(());
            }
            Some(Slot::Out(_)) => return Err(MemoryFault { gpa: vmsa.gpa() }),
            None => {}
        }
        let gpa = self.unbound_vmsa_field(vmsa, field)?;
        let bytes = value.to_le_bytes();
        let bytes = bytes.get(..field.width()).ok_or(MemoryFault { gpa: vmsa.gpa() })?;
        self.hw.write_guest(gpa, bytes).map_err(|_| MemoryFault { gpa: vmsa.gpa() })
    }

    fn vcpu_created(&mut self, index: VcpuIndex, vmsa: PageAddr, apic_id: u32, _svsm_pages: &[PageAddr]) {
        let mut image = [0u8; 4096];
        // The VMSA page is guest RAM the SVSM owns now (the guest lost access).
        let read = self.hw.read_guest(vmsa.raw(), &mut image).is_ok();
        let controls = self.controls();
        let asid = index.0.saturating_add(1);
        let made = self
            .hw
            .alloc(1)
            .filter(|_| read)
            .and_then(|page| SvmVcpu::from_vmsa(page, controls, asid, vmsa.raw(), &image));
        match made {
            Some(v) => {
                self.state.slots.insert(index.0, v);
                let cpu = self.state.slots.home(index.0);
                kernel::log!(self, Info, "svm: vCPU {} runs on cpu {cpu}", index.0);
                self.hw.vcpus_changed();
            }
            None => kernel::log!(self, Error, "svm: no memory for vCPU {} (APIC ID {apic_id})", index.0),
        }
    }

    fn vcpu_stop(&mut self, vmsa: PageAddr) -> Result<(), HwError> {
        // Out on another CPU: it must leave the guest before DELETE_VCPU returns.
        match self.state.slots.stop(vmsa.raw()) {
            Ok(Some(cpu)) => self.hw.kick(cpu),
            Ok(None) => {}
            Err(_) => return Err(HwError::Fault),
        }
        Ok(())
    }

    fn vcpu_deleted(&mut self, index: VcpuIndex) {
        // Still out on a CPU (stopped): dropped when that CPU puts it back.
        self.state.slots.remove(index.0);
        self.hw.vcpus_changed();
    }

    fn vtom_limits(&self) -> Option<VtomLimits> {
        None
    }

    fn fatal(&mut self, why: core::fmt::Arguments<'_>) -> ! {
        self.hw.fatal(why)
    }

    fn log(&mut self, level: Level, args: core::fmt::Arguments<'_>) {
        if level <= self.state.log_level {
            self.hw.log(level, args);
        }
    }

    fn log_level(&self) -> Level {
        self.state.log_level
    }

    fn set_log_level(&mut self, level: Level) {
        self.state.log_level = level;
    }

    fn log_read(&self, offset: u64, out: &mut [u8]) -> Result<usize, LogLost> {
        self.hw.log_read(offset, out)
    }

    fn log_written(&self) -> u64 {
        self.hw.log_written()
    }

    fn guest_request(&mut self, request: &[u8; 4096], response: &mut [u8; 4096]) -> Result<(), GuestRequestError> {
        self.hw.guest_request(request, response)
    }

    fn report_certificates(&mut self) -> &[u8] {
        &self.state.certificates
    }
}

#[cfg(test)]
mod tests;
