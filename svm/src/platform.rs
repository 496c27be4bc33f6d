//! `SvmPlatform`: the kernel's `Platform` for an SVSM that is the L1 hypervisor of its
//! guest under QEMU. It is a per-CPU handle: what one CPU lends the kernel for one call
//! (or for the launch), holding `&` to what every CPU shares ([`SvmShared`]) and the vCPU
//! this CPU took out and serves. There is no hardware RMP, so a software one
//! (`bulwark-rmp`) holds page state, and the nested page tables enforce it (`npt`): every
//! PVALIDATE and RMPADJUST changes the tables for the pages it touched.
//!
//! The calling vCPU's registers live in the VMCB its CPU holds: the kernel reads and
//! writes them here without any lock, and the guest-memory copies (the calling area on
//! every call) check the lock-free access map. So a call that touches only the caller's
//! own state takes no lock another CPU needs. Page-state changes take the page-state
//! lock for the one change; other vCPUs are reached through their slots' locks and a
//! kick (`slots`, `shared`).

use crate::hw::{LogToGuestError, SvmHw};
use crate::run::Taken;
use crate::shared::SvmShared;
use crate::slots::Slot;
use crate::vcpu::SvmVcpu;
use abi::vmsa::VmsaField;
use kernel::addr::{Gpa, PageAddr, PageRange, PageSize};
use kernel::log_ring::LogLost;
use kernel::platform::{
    GuestRequestError, HwError, Level, LogCopyError, MemoryFault, Platform, PvalidateEffect, VtomLimits,
};
use kernel::vcpu::VcpuIndex;
use rmp::Size;

/// The vCPU the handle's CPU serves: taken out of its slot, so nobody else touches it.
struct Own<'a, P> {
    t: &'a mut Taken<P>,
    /// Still the vCPU of its index: false once the call deleted it.
    bound: bool,
}

/// The kernel's `Platform` on one CPU.
pub struct SvmPlatform<'a, H: SvmHw> {
    shared: &'a SvmShared<H>,
    cpu: u32,
    own: Option<Own<'a, H::Page>>,
}

impl<H: SvmHw> core::fmt::Debug for SvmPlatform<'_, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SvmPlatform")
            .field("cpu", &self.cpu)
            .field("vcpu", &self.own.as_ref().map(|o| o.t.index))
            .finish()
    }
}

impl<H: SvmHw> SvmShared<H> {
    /// The kernel's `Platform` on `cpu`, serving no vCPU of its own (the launch, a tool).
    pub fn platform(&self, cpu: u32) -> SvmPlatform<'_, H> {
        SvmPlatform { shared: self, cpu, own: None }
    }

    /// The kernel's `Platform` on `cpu` while it serves the vCPU `t` it holds.
    pub fn serving<'a>(&'a self, cpu: u32, t: &'a mut Taken<H::Page>) -> SvmPlatform<'a, H> {
        SvmPlatform { shared: self, cpu, own: Some(Own { t, bound: true }) }
    }
}

fn size(size: PageSize) -> Size {
    match size {
        PageSize::Size4K => Size::Small,
        PageSize::Size2M => Size::Huge,
    }
}

impl<H: SvmHw> SvmPlatform<'_, H> {
    /// The vCPU this CPU serves, if `vmsa` is its VMSA.
    fn own(&self, vmsa: PageAddr) -> Option<&SvmVcpu<H::Page>> {
        self.own.as_ref().filter(|o| o.bound && o.t.vcpu.vmsa_gpa == vmsa.raw()).map(|o| &o.t.vcpu)
    }

    fn own_mut(&mut self, vmsa: PageAddr) -> Option<&mut SvmVcpu<H::Page>> {
        self.own.as_mut().filter(|o| o.bound && o.t.vcpu.vmsa_gpa == vmsa.raw()).map(|o| &mut o.t.vcpu)
    }

    /// May the SVSM copy `[gpa, gpa + len)`? The access map says; a copy within the page
    /// the served vCPU's calls copied last (its calling area, mostly) skips the map while
    /// no page state changed since it was checked.
    fn check(&self, gpa: u64, len: usize) -> Result<(), MemoryFault> {
        let state = &self.shared.state;
        let epoch = state.page_epoch();
        let pfn = gpa >> 12;
        let one_page = len > 0 && gpa.checked_add(len as u64 - 1).is_some_and(|last| last >> 12 == pfn);
        let remembered = self.own.as_ref().filter(|_| one_page).map(|o| &o.t.copy_page);
        if remembered.is_some_and(|r| r.get() == Some((pfn, epoch))) {
            return Ok(());
        }
        state.access().check(gpa, len).map_err(|a| MemoryFault { gpa: Gpa(a) })?;
        if let Some(r) = remembered {
            r.set(Some((pfn, epoch)));
        }
        Ok(())
    }

    /// After a page-state change: the vCPU this CPU holds flushes on its next VMRUN, and
    /// every other one before it runs again (those out on a CPU are kicked).
    fn flush_everywhere(&mut self) {
        let except = self.own.as_mut().map(|o| {
            o.t.vcpu.flush_tlb();
            o.t.index
        });
        self.shared.flush(except);
    }

    /// The gpa of `field` in a VMSA page that no vCPU runs yet; the page must be a
    /// validated VMSA page in the RMP.
    fn unbound_vmsa_field(&self, vmsa: PageAddr, field: VmsaField) -> Result<u64, MemoryFault> {
        match self.shared.state.lock_rmp().entry(vmsa.pfn()) {
            Some(e) if e.assigned && e.validated && e.vmsa => Ok(vmsa.raw() + field.offset() as u64),
            _ => Err(MemoryFault { gpa: vmsa.gpa() }),
        }
    }
}

impl<H: SvmHw> Platform for SvmPlatform<'_, H> {
    const CALL_EXIT_CODE: u64 = abi::hw::SVM_EXIT_VMMCALL;
    const NAME: &'static str = "svm";

    /// Only the guest's own VMPL: every vCPU runs on the one nested page table, built
    /// from that VMPL's permissions (a VMPL2 vCPU would reach VMPL1's pages; found by
    /// review). One table per VMPL would lift this.
    fn runs_vcpus_at(&self, vmpl: u8) -> bool {
        vmpl == crate::vcpu::GUEST_VMPL
    }

    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemoryFault> {
        self.check(gpa.0, buf.len())?;
        self.shared.hw.read_guest(gpa.0, buf).map_err(|_| MemoryFault { gpa })
    }

    fn write(&mut self, gpa: Gpa, data: &[u8]) -> Result<(), MemoryFault> {
        self.check(gpa.0, data.len())?;
        self.shared.hw.write_guest(gpa.0, data).map_err(|_| MemoryFault { gpa })
    }

    fn zero_pages(&mut self, pages: PageRange) -> Result<(), MemoryFault> {
        let fault = MemoryFault { gpa: pages.start().gpa() };
        let len = usize::try_from(pages.pages().saturating_mul(4096)).map_err(|_| fault)?;
        self.check(pages.start().raw(), len)?;
        self.shared.hw.zero_guest(pages.start().raw(), len).map_err(|_| fault)
    }

    fn pvalidate(&mut self, page: PageAddr, size4k: PageSize, validate: bool) -> Result<PvalidateEffect, HwError> {
        let pfns = page.pfn()..page.pfn() + size4k.pages();
        let (effect, followed) = {
            let mut rmp = self.shared.state.lock_rmp();
            let effect = rmp.pvalidate(page.raw(), size(size4k), validate)?;
            let followed = self.shared.follow(&rmp, pfns.clone());
            if followed.is_err() && effect == PvalidateEffect::Changed {
                // No memory for a nested page table (to map the page, or to split the
                // 2 MiB leaf it lies in): the change is taken back, so the RMP and nested
                // paging agree (what was mapped before still is: no table is needed); the
                // call fails.
                let _ = rmp.pvalidate(page.raw(), size(size4k), !validate);
                let _ = self.shared.follow(&rmp, pfns);
            }
            (effect, followed)
        };
        self.flush_everywhere();
        followed.map(|()| effect)
    }

    fn rmpadjust(
        &mut self,
        page: PageAddr,
        size4k: PageSize,
        target_vmpl: u8,
        perms: u8,
        vmsa: bool,
    ) -> Result<(), HwError> {
        let pfns = page.pfn()..page.pfn() + size4k.pages();
        let followed = {
            let mut rmp = self.shared.state.lock_rmp();
            // A VMSA is in use while a CPU has its vCPU out (unless it is stopped for good).
            let slots = &self.shared.state.slots;
            let before = rmp.entry(page.pfn()).map(|e| (e.perms.get(usize::from(target_vmpl)).copied(), e.vmsa));
            rmp.rmpadjust(page.raw(), size(size4k), target_vmpl, perms, vmsa, |pfn| slots.vmsa_in_use(pfn))?;
            let followed = self.shared.follow(&rmp, pfns.clone());
            if followed.is_err()
                && let Some((Some(perms), vmsa)) = before
            {
                // As in `pvalidate`: no memory for a table, so the change is taken back
                // (what it had mapped before is mapped still, no table is needed).
                let _ = rmp.rmpadjust(page.raw(), size(size4k), target_vmpl, perms, vmsa, |_| false);
                let _ = self.shared.follow(&rmp, pfns);
            }
            followed
        };
        self.flush_everywhere();
        followed
    }

    fn vmpl_permissions(&self, page: PageAddr, vmpl: u8) -> Option<u8> {
        Some(self.shared.state.lock_rmp().vmpl_perms(page.pfn(), vmpl))
    }

    fn flush_guest_tlb(&mut self) {
        // Nothing left to do: every RMPADJUST already changed the nested page tables and
        // made each CPU running a guest leave it and flush before it runs it again.
    }

    fn vmsa_read(&self, vmsa: PageAddr, field: VmsaField) -> Result<u64, MemoryFault> {
        if let Some(v) = self.own(vmsa) {
            return Ok(v.field(field));
        }
        let fault = MemoryFault { gpa: vmsa.gpa() };
        let found = self.shared.state.slots.with_vmsa(vmsa.raw(), |slot| match slot {
            Slot::Here(v) => Ok(v.field(field)),
            // Out on another CPU: only the fields the guest cannot change are known.
            Slot::Out(r) => match field {
                VmsaField::Vmpl => Ok(u64::from(r.vmpl)),
                VmsaField::SevFeatures => Ok(r.sev_features),
                _ => Err(fault),
            },
        });
        if let Some(answer) = found {
            return answer;
        }
        // A VMSA no vCPU runs yet (CREATE_VCPU in progress): the page itself.
        let gpa = self.unbound_vmsa_field(vmsa, field)?;
        let mut b = [0u8; 8];
        let bytes = b.get_mut(..field.width()).ok_or(fault)?;
        self.shared.hw.read_guest(gpa, bytes).map_err(|_| fault)?;
        Ok(u64::from_le_bytes(b))
    }

    fn vmsa_write(&mut self, vmsa: PageAddr, field: VmsaField, value: u64) -> Result<(), MemoryFault> {
        if let Some(v) = self.own_mut(vmsa) {
            v.set_field(field, value);
            return Ok(());
        }
        let fault = MemoryFault { gpa: vmsa.gpa() };
        let found = self.shared.state.slots.with_vmsa(vmsa.raw(), |slot| match slot {
            Slot::Here(v) => {
                v.set_field(field, value);
                Ok(())
            }
            Slot::Out(_) => Err(fault),
        });
        if let Some(answer) = found {
            return answer;
        }
        let gpa = self.unbound_vmsa_field(vmsa, field)?;
        let bytes = value.to_le_bytes();
        let bytes = bytes.get(..field.width()).ok_or(fault)?;
        self.shared.hw.write_guest(gpa, bytes).map_err(|_| fault)
    }

    fn vmsa_image(&self, vmsa: PageAddr, image: &mut [u8; 4096]) -> Result<(), MemoryFault> {
        if let Some(v) = self.own(vmsa) {
            *image = v.to_vmsa();
            return Ok(());
        }
        let fault = MemoryFault { gpa: vmsa.gpa() };
        let found = self.shared.state.slots.with_vmsa(vmsa.raw(), |slot| match slot {
            Slot::Here(v) => Ok(v.to_vmsa()),
            // Running on another CPU: its state is in that CPU's hands.
            Slot::Out(_) => Err(fault),
        });
        match found {
            Some(answer) => answer.map(|made| *image = made),
            // A VMSA no vCPU runs: the page itself.
            None => self.shared.hw.read_guest(vmsa.raw(), image).map_err(|_| fault),
        }
    }

    fn vmsa_restore(&mut self, vmsa: PageAddr, image: &[u8; 4096]) -> Result<(), MemoryFault> {
        let fault = MemoryFault { gpa: vmsa.gpa() };
        if let Some(v) = self.own_mut(vmsa) {
            return if v.restore(image) { Ok(()) } else { Err(fault) };
        }
        let found = self.shared.state.slots.with_vmsa(vmsa.raw(), |slot| match slot {
            Slot::Here(v) => {
                if v.restore(image) {
                    Ok(())
                } else {
                    Err(fault)
                }
            }
            Slot::Out(_) => Err(fault),
        });
        match found {
            Some(answer) => answer,
            None => self.shared.hw.write_guest(vmsa.raw(), image).map_err(|_| fault),
        }
    }

    fn vcpu_arrived(&mut self, vmsa: PageAddr, image: &[u8; 4096]) {
        // Just created, in its slot (nothing runs a vCPU before the migration has
        // arrived): the rest of the source's state, as for the startup vCPU.
        let restored = self.shared.state.slots.with_vmsa(vmsa.raw(), |slot| match slot {
            Slot::Here(v) => v.restore(image),
            Slot::Out(_) => false,
        });
        if restored != Some(true) {
            kernel::log!(self, Error, "svm: the vCPU at {:#x} arrived without its x87/SSE state", vmsa.raw());
        }
    }

    fn vcpu_created(&mut self, index: VcpuIndex, vmsa: PageAddr, apic_id: u32, _svsm_pages: &[PageAddr]) {
        let mut image = [0u8; 4096];
        // The VMSA page is guest RAM the SVSM owns now (the guest lost access).
        let read = self.shared.hw.read_guest(vmsa.raw(), &mut image).is_ok();
        let controls = self.shared.controls();
        let asid = index.0.saturating_add(1);
        let made = self
            .shared
            .hw
            .alloc(1)
            .filter(|_| read)
            .and_then(|page| SvmVcpu::from_vmsa(page, controls, asid, vmsa.raw(), &image))
            .map(|v| self.shared.state.slots.insert(index.0, v).is_ok());
        match made {
            Some(true) => {
                let cpu = self.shared.state.slots.home(index.0);
                kernel::log!(self, Info, "svm: vCPU {} runs on cpu {cpu}", index.0);
                self.shared.hw.vcpus_changed();
                // A busy home CPU runs a vCPU it took as alone, with no turns: it must
                // look again (the wake-up reaches only idle CPUs).
                if cpu != self.cpu {
                    self.shared.hw.kick(cpu);
                }
            }
            Some(false) => kernel::log!(self, Error, "svm: no slot for vCPU {} (APIC ID {apic_id})", index.0),
            None => kernel::log!(self, Error, "svm: no memory for vCPU {} (APIC ID {apic_id})", index.0),
        }
    }

    fn vcpu_stop(&mut self, vmsa: PageAddr) -> Result<(), HwError> {
        if let Some(v) = self.own_mut(vmsa) {
            v.stop();
            return Ok(());
        }
        // Out on another CPU: it must leave the guest before DELETE_VCPU returns.
        match self.shared.state.slots.stop(vmsa.raw()) {
            Ok(Some(cpu)) => self.shared.hw.kick(cpu),
            Ok(None) => {}
            Err(_) => return Err(HwError::Fault),
        }
        Ok(())
    }

    fn vcpu_deleted(&mut self, index: VcpuIndex) {
        if let Some(o) = self.own.as_mut().filter(|o| o.t.index == index.0) {
            o.bound = false;
        }
        // Still out on a CPU (stopped): dropped when that CPU puts it back.
        self.shared.state.slots.remove(index.0);
        self.shared.hw.vcpus_changed();
    }

    fn vtom_limits(&self) -> Option<VtomLimits> {
        None
    }

    fn fatal(&mut self, why: core::fmt::Arguments<'_>) -> ! {
        self.shared.hw.fatal(why)
    }

    fn log(&mut self, level: Level, args: core::fmt::Arguments<'_>) {
        self.shared.log(level, args);
    }

    fn log_level(&self) -> Level {
        self.shared.state.log_level()
    }

    fn heap_usage(&self) -> Option<kernel::platform::HeapUsage> {
        self.shared.hw.heap_usage()
    }

    fn set_log_level(&mut self, level: Level) {
        self.shared.state.set_log_level(level);
    }

    fn log_read(&self, offset: u64, out: &mut [u8]) -> Result<usize, LogLost> {
        self.shared.hw.log_read(offset, out)
    }

    fn log_to_guest(&mut self, offset: u64, gpa: Gpa, len: usize) -> Result<usize, LogCopyError> {
        self.check(gpa.0, len).map_err(LogCopyError::Fault)?;
        match self.shared.hw.log_to_guest(offset, gpa.0, len) {
            Some(copied) => copied.map_err(|e| match e {
                LogToGuestError::Lost(lost) => LogCopyError::Lost(lost),
                LogToGuestError::Fault => LogCopyError::Fault(MemoryFault { gpa }),
                LogToGuestError::Busy => LogCopyError::Busy,
            }),
            None => kernel::platform::log_through_buffer(self, offset, gpa, len),
        }
    }

    fn log_written(&self) -> u64 {
        self.shared.hw.log_written()
    }

    fn guest_request(&mut self, request: &[u8; 4096], response: &mut [u8; 4096]) -> Result<(), GuestRequestError> {
        self.shared.hw.guest_request(request, response)
    }

    fn report_certificates(&mut self) -> &[u8] {
        &self.shared.state.certificates
    }
}

#[cfg(test)]
mod tests;
