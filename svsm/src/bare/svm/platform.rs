//! The `svm` platform: the kernel's `Platform` for an SVSM that is the L1 hypervisor of
//! its guest under QEMU. There is no hardware RMP, so a software one (`bulwark-rmp`)
//! holds page state, and the nested page tables enforce it: a page is mapped for the
//! guest exactly while the RMP lets VMPL1 read it. Registers live in each vCPU's VMCB.

use super::super::guest_phys;
use super::super::pages::Page;
use super::npt::{Access, NestedPageTable};
use super::vcpu::SvmVcpu;
use abi::hw::rmpadjust::{PERM_EXEC_SUPERVISOR, PERM_EXEC_USER, PERM_READ, PERM_WRITE};
use abi::vmsa::VmsaField;
use alloc::collections::BTreeMap;
use kernel::addr::{Gpa, PageAddr, PageRange, PageSize};
use kernel::platform::{HwError, Level, MemoryFault, Platform, PvalidateEffect, VtomLimits};
use kernel::vcpu::VcpuIndex;
use rmp::{Rmp, Size};

/// The guest's VMPL on this platform (one guest level).
pub const GUEST_VMPL: u8 = 1;

pub struct SvmPlatform {
    pub rmp: Rmp,
    pub npt: NestedPageTable,
    /// By kernel vCPU index.
    pub vcpus: BTreeMap<u32, SvmVcpu>,
    /// MSR and I/O permission maps shared by every vCPU.
    pub maps: PermissionMaps,
    pub log_level: Level,
}

/// Which MSRs and I/O ports the guest reaches without the SVSM.
pub struct PermissionMaps {
    /// All zero: only MSRs outside the map's ranges (the discovery MSR among them) exit.
    msr: Page,
    /// All ones but the guest's own ports: any other port access exits and is refused, so
    /// a guest cannot program devices (PCI configuration, DMA engines) against SVSM memory.
    io: Page,
}

/// Ports the guest may use directly: its serial port (COM2) and QEMU's debug-exit device.
const GUEST_PORTS: [core::ops::RangeInclusive<u16>; 2] = [0x2F8..=0x2FF, 0xF4..=0xF7];

impl PermissionMaps {
    pub fn new() -> Option<Self> {
        let msr = Page::zeroed_run(2)?;
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
        for v in self.vcpus.values_mut() {
            v.flush_tlb();
        }
        Ok(())
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

    fn vcpu_by_vmsa(&self, vmsa: PageAddr) -> Option<&SvmVcpu> {
        self.vcpus.values().find(|v| v.vmsa_gpa == vmsa.raw())
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
        // One physical CPU runs every vCPU in turn: no VMSA is in use while the SVSM runs.
        self.rmp.rmpadjust(page.raw(), Self::size(size), target_vmpl, perms, vmsa, |_| false)?;
        self.sync(page.pfn()..page.pfn() + size.pages())
    }

    fn vmsa_read(&self, vmsa: PageAddr, field: VmsaField) -> Result<u64, MemoryFault> {
        if let Some(v) = self.vcpu_by_vmsa(vmsa) {
            return Ok(v.field(field));
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
        if let Some(v) = self.vcpus.values_mut().find(|v| v.vmsa_gpa == vmsa.raw()) {
            v.set_field(field, value);
            return Ok(());
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
                self.vcpus.insert(index.0, v);
            }
            None => crate::println!("svm: no memory for vCPU {} (APIC ID {apic_id})", index.0),
        }
    }

    fn vcpu_stop(&mut self, vmsa: PageAddr) -> Result<(), HwError> {
        match self.vcpus.values_mut().find(|v| v.vmsa_gpa == vmsa.raw()) {
            Some(v) => {
                v.stopped = true;
                let efer = v.field(VmsaField::Efer);
                v.set_field(VmsaField::Efer, efer & !abi::hw::EFER_SVME);
                Ok(())
            }
            None => Err(HwError::Fault),
        }
    }

    fn vcpu_deleted(&mut self, index: VcpuIndex) {
        self.vcpus.remove(&index.0);
    }

    fn vtom_limits(&self) -> Option<VtomLimits> {
        None
    }

    fn log(&mut self, level: Level, args: core::fmt::Arguments<'_>) {
        if level <= self.log_level {
            crate::println!("[{level:?}] {args}");
        }
    }
}
