//! `SnpPlatform`: the kernel's `Platform` on SEV-SNP, over the `SnpHw` seam. One per
//! CPU: each CPU serves the guest with its own handle (its own GHCB page and MSR, behind
//! its `SnpHw`), and all handles share one `SnpShared` (log ring, vCPU records,
//! certificate cache, settings; see `shared` for its locking rule). No lock of the
//! platform is held across a host exit, so a slow host exit on one CPU (a guest request,
//! AP creation, a console line) never stalls another CPU.
//!
//! Our reading where the specs leave room (docs/platforms/snp.md):
//! - A new vCPU gets two VMSAs: the SVSM's own (VMPL0, in the vCPU's SVSM pages, if the
//!   platform knows its AP entry) and the guest's; the host is told about both with
//!   AP_CREATION, the SVSM's first.
//! - Stopping a vCPU clears EFER.SVME and then the VMSA flag with RMPADJUST, which the
//!   hardware refuses (FAIL_INUSE) while the VMSA runs; the SVSM's VMSA of that vCPU is
//!   destroyed and unflagged before its pages go back to the pool.
//! - Certificates come with extended guest requests and are cached; the table a report
//!   call returns is the one the host sent with the previous report.
//! - Log lines go to the SVSM's log ring and, one line per host exit, to the serial port
//!   (`console`; no #VC on this path, so logging works inside any handler).

use crate::ghcb::{self, Ghcb, GhcbError};
use crate::hw::{Fault, SHARED_PAGES, Shared, SnpHw};
use crate::shared::{SnpConfig, SnpShared, VcpuRecord};
use crate::vmsa;
use abi::ghcb::{exit, msr, offset, term};
use abi::hw::rmpadjust::{PERM_NONE, attrs};
use abi::hw::{EFER_SVME, SVM_EXIT_VMGEXIT, rc};
use abi::vmsa::VmsaField;
use alloc::sync::Arc;
use alloc::vec::Vec;
use kernel::addr::{Gpa, PageAddr, PageRange, PageSize};
use kernel::log_ring::{LogLost, LogRing};
use kernel::platform::{
    GuestRequestError, HwError, Level, LogCopyError, MemoryFault, Platform, PvalidateEffect, VtomLimits,
};
use kernel::vcpu::VcpuIndex;
use zerocopy::{FromZeros, IntoBytes};

/// Why the platform could not start; each maps to a termination reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartError {
    Protocol(GhcbError),
    Features(GhcbError),
    /// Rescinding validation of a page that becomes shared failed.
    Pvalidate(u64),
    PageState(u64, GhcbError),
    Register(GhcbError),
    /// No memory for the log ring.
    NoMemory,
}

impl StartError {
    /// The GHCB termination reason (set, code) for this failure.
    pub fn reason(self) -> (u8, u8) {
        match self {
            Self::Protocol(_) => (term::SET_GHCB, term::PROTOCOL_UNSUPPORTED),
            Self::Features(_) => (term::SET_GHCB, term::SNP_UNSUPPORTED),
            Self::Pvalidate(_) => (term::SET_BULWARK, term::PVALIDATE),
            Self::PageState(..) => (term::SET_BULWARK, term::PAGE_STATE),
            Self::Register(_) => (term::SET_BULWARK, term::GHCB_SETUP),
            Self::NoMemory => (term::SET_BULWARK, term::PANIC),
        }
    }
}

/// One CPU's handle on the platform: its hardware (its GHCB) and the state all CPUs
/// share.
#[derive(Debug)]
pub struct SnpPlatform<H: SnpHw> {
    pub hw: H,
    shared: Arc<SnpShared>,
    /// The certificate table `report_certificates` lent out last: this CPU's copy of the
    /// shared cache, so the kernel's copy of it needs no lock.
    certificates: Vec<u8>,
}

/// Rescind validation of the shared page at `gpa` and ask the host to make it shared.
fn share_page<H: SnpHw>(hw: &mut H, gpa: u64) -> Result<(), StartError> {
    match hw.pvalidate(gpa, false, false) {
        Ok((rc::SUCCESS, _)) => {}
        _ => return Err(StartError::Pvalidate(gpa)),
    }
    ghcb::page_state_change(hw, gpa, msr::PSC_SHARED).map_err(|e| StartError::PageState(gpa, e))
}

impl<H: SnpHw> SnpPlatform<H> {
    /// Bring the platform up on the boot CPU: agree on the GHCB protocol, check the host
    /// offers SNP, turn the shared pages shared and register the GHCB.
    pub fn start(mut hw: H, config: SnpConfig) -> Result<Self, StartError> {
        let c_bit = ghcb::negotiate(&mut hw).map_err(StartError::Protocol)?;
        let hv_features = ghcb::check_features(&mut hw).map_err(StartError::Features)?;
        for page in SHARED_PAGES {
            let gpa = hw.shared_gpa(page);
            share_page(&mut hw, gpa)?;
        }
        let ghcb_gpa = hw.shared_gpa(Shared::Ghcb);
        ghcb::register(&mut hw, ghcb_gpa).map_err(StartError::Register)?;
        // 64 KiB: made on the heap directly, never on the (boot) stack.
        let log = LogRing::new_box_zeroed().map_err(|_| StartError::NoMemory)?;
        Ok(Self::handle(hw, Arc::new(SnpShared::new(config, c_bit, hv_features, log))))
    }

    /// Bring another CPU in: share its GHCB page (unless `share_ghcb` is false: it was
    /// shared for an earlier vCPU of the same index and is the host's already) and
    /// register it (registration is per host vCPU, so every new one registers).
    pub fn join(mut hw: H, shared: Arc<SnpShared>, share_ghcb: bool) -> Result<Self, StartError> {
        let gpa = hw.shared_gpa(Shared::Ghcb);
        if share_ghcb {
            share_page(&mut hw, gpa)?;
        }
        ghcb::register(&mut hw, gpa).map_err(StartError::Register)?;
        Ok(Self::handle(hw, shared))
    }

    /// Give `count` pages from `gpa` to the host (rescind their validation, then a
    /// page-state change to shared): buffers a host device reads and writes, such as the
    /// state disk's bounce pool. From here on they are host memory; the SVSM reaches them
    /// only through a mapping without the C-bit and trusts nothing read there. A failure
    /// stops at that page and leaves the earlier ones shared: the caller never uses or
    /// frees any of them again.
    pub fn share_pages(&mut self, gpa: u64, count: usize) -> Result<(), StartError> {
        for i in 0..count as u64 {
            share_page(&mut self.hw, gpa.saturating_add(i * 4096))?;
        }
        Ok(())
    }

    /// A handle for a CPU that has started or joined already (its GHCB registered).
    pub fn handle(hw: H, shared: Arc<SnpShared>) -> Self {
        Self { hw, shared, certificates: Vec::new() }
    }

    /// The state all CPUs' handles share.
    pub fn shared(&self) -> &Arc<SnpShared> {
        &self.shared
    }

    /// The platform's fixed settings.
    pub fn config(&self) -> &SnpConfig {
        &self.shared.config
    }

    /// Register the startup vCPU (its VMSA exists already).
    pub fn adopt_startup_vcpu(&mut self, vmsa: PageAddr, apic_id: u32) {
        let vmpl = self.config().guest_vmpl;
        // At boot, in a fresh heap.
        if !self.shared.set_vcpu(vmsa.raw(), VcpuRecord { apic_id, vmpl, svsm_vmsa: None }) {
            kernel::log!(self, Error, "the startup vCPU could not be recorded: no memory");
        }
    }

    /// Build the guest's first vCPU in `page` (a guest page the SVSM validated and nobody
    /// else can reach yet): the reset state at the guest's VMPL, made a VMSA, announced to
    /// the host. The kernel then takes the page as its startup VMSA.
    pub fn launch_guest_vcpu(&mut self, page: PageAddr, apic_id: u32, signature: u32) -> Result<(), HwError> {
        let v = vmsa::reset_state(self.config().guest_vmpl, self.config().sev_features, signature);
        self.hw.write(page.raw(), v.as_bytes()).map_err(|_| HwError::Fault)?;
        self.make_vmsa(page.raw())?;
        let (vmpl, features) = (self.config().guest_vmpl, self.config().sev_features);
        self.ap_create(page.raw(), vmpl, apic_id, features).map_err(|_| HwError::Fault)?;
        self.adopt_startup_vcpu(page, apic_id);
        Ok(())
    }

    /// Hand the CPU to the guest until its next call (spec 58019 section 5). `Err` if the
    /// host refused to switch.
    pub fn resume_guest(&mut self) -> Result<(), GhcbError> {
        ghcb::run_vmpl(self.config().guest_vmpl).call(&mut self.hw)
    }

    /// Stop the guest for good with a GHCB termination reason.
    pub fn terminate(&mut self, set: u8, code: u8) {
        ghcb::terminate(&mut self.hw, set, code);
    }

    /// Flag `gpa` as a VMSA (the RMPADJUST target is the guest's VMPL, with no access).
    fn make_vmsa(&mut self, gpa: u64) -> Result<(), HwError> {
        match self.hw.rmpadjust(gpa, false, attrs(self.config().guest_vmpl, PERM_NONE, true)) {
            Ok(rc::SUCCESS) => Ok(()),
            Ok(code) => Err(HwError::Rc(code)),
            Err(Fault) => Err(HwError::Fault),
        }
    }

    fn unflag_vmsa(&mut self, gpa: u64) -> Result<(), HwError> {
        match self.hw.rmpadjust(gpa, false, attrs(self.config().guest_vmpl, PERM_NONE, false)) {
            Ok(rc::SUCCESS) => Ok(()),
            Ok(code) => Err(HwError::Rc(code)),
            Err(Fault) => Err(HwError::Fault),
        }
    }

    /// AP_CREATION for the VMSA at `vmsa` of VMPL `vmpl`; RAX carries its SEV_FEATURES
    /// on creation only.
    fn ap_event(&mut self, request: u64, vmsa: u64, vmpl: u8, apic_id: u32, features: u64) -> Result<(), GhcbError> {
        let mut g = Ghcb::event(exit::AP_CREATION, ghcb::ap_creation_info(request, vmpl, apic_id), vmsa);
        if request == exit::AP_CREATE {
            g.set(offset::RAX, features);
        }
        g.call(&mut self.hw)
    }

    fn ap_create(&mut self, vmsa: u64, vmpl: u8, apic_id: u32, features: u64) -> Result<(), GhcbError> {
        self.ap_event(exit::AP_CREATE, vmsa, vmpl, apic_id, features)
    }

    /// SEV_FEATURES of the SVSM's own VMSAs: the launch's, plus restricted injection when
    /// the host offers it, so a host can no longer inject arbitrary exceptions (#VC among
    /// them) into the SVSM; it can only signal #HV, which the SVSM does not take.
    fn svsm_features(&self) -> u64 {
        let restricted = self.shared.hv_features & msr::HV_FEATURE_SNP_RESTRICTED_INJECTION != 0;
        self.config().sev_features | if restricted { abi::hw::sev_features::RESTRICTED_INJECTION } else { 0 }
    }

    /// Make a VMSA unrunnable (EFER.SVME = 0) and no longer a VMSA. On failure (FAIL_INUSE
    /// while it runs) it is left as it was.
    fn retire_vmsa(&mut self, vmsa: u64) -> Result<(), HwError> {
        let efer_at = vmsa + VmsaField::Efer.offset() as u64;
        let efer = self.read_u64(efer_at, 8).map_err(|_| HwError::Fault)?;
        self.hw.write(efer_at, &(efer & !EFER_SVME).to_le_bytes()).map_err(|_| HwError::Fault)?;
        if let Err(e) = self.unflag_vmsa(vmsa) {
            let _ = self.hw.write(efer_at, &efer.to_le_bytes());
            return Err(e);
        }
        Ok(())
    }

    /// Undo [`Self::retire_vmsa`]: the page a VMSA again, its EFER as it was (`efer`).
    /// Only after a retire that succeeded, so the same RMPADJUST succeeds again unless
    /// the host changed the page meanwhile; then the vCPU cannot run, and the log says so.
    fn unretire_vmsa(&mut self, vmsa: u64, efer: u64) {
        let efer_at = vmsa + VmsaField::Efer.offset() as u64;
        let written = self.hw.write(efer_at, &efer.to_le_bytes());
        let flagged = self.hw.rmpadjust(vmsa, false, attrs(self.config().guest_vmpl, PERM_NONE, true));
        if !matches!((written, flagged), (Ok(()), Ok(rc::SUCCESS))) {
            kernel::log!(self, Error, "VMSA {vmsa:#x} could not be made a VMSA again; its vCPU cannot run");
        }
    }

    fn read_u64(&self, gpa: u64, width: usize) -> Result<u64, MemoryFault> {
        let mut b = [0u8; 8];
        let bytes = b.get_mut(..width).ok_or(MemoryFault { gpa: Gpa(gpa) })?;
        self.hw.read(gpa, bytes).map_err(|_| MemoryFault { gpa: Gpa(gpa) })?;
        Ok(u64::from_le_bytes(b))
    }

    /// A log line to the serial port, in one host exit (`console`); nothing is held.
    fn console(&mut self, line: &[u8]) {
        let Self { hw, shared, .. } = self;
        if let Some(console) = &shared.console {
            // A host that refuses the console: the ring keeps the line.
            let _ = console.write(hw, line);
        }
    }
}

fn hw_result(r: Result<u32, Fault>) -> Result<(), HwError> {
    match r {
        Ok(rc::SUCCESS) => Ok(()),
        Ok(code) => Err(HwError::Rc(code)),
        Err(Fault) => Err(HwError::Fault),
    }
}

impl<H: SnpHw> Platform for SnpPlatform<H> {
    const CALL_EXIT_CODE: u64 = SVM_EXIT_VMGEXIT;
    const NAME: &'static str = "snp";

    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemoryFault> {
        self.hw.read(gpa.0, buf).map_err(|_| MemoryFault { gpa })
    }

    fn write(&mut self, gpa: Gpa, data: &[u8]) -> Result<(), MemoryFault> {
        self.hw.write(gpa.0, data).map_err(|_| MemoryFault { gpa })
    }

    fn zero_pages(&mut self, pages: PageRange) -> Result<(), MemoryFault> {
        let zeros = [0u8; 4096];
        for pfn in pages.start_pfn()..pages.end_pfn() {
            self.write(Gpa(pfn << 12), &zeros)?;
        }
        Ok(())
    }

    fn pvalidate(&mut self, page: PageAddr, size: PageSize, validate: bool) -> Result<PvalidateEffect, HwError> {
        match self.hw.pvalidate(page.raw(), size == PageSize::Size2M, validate) {
            Ok((rc::SUCCESS, false)) => Ok(PvalidateEffect::Changed),
            Ok((rc::SUCCESS, true)) => Ok(PvalidateEffect::Unchanged),
            Ok((code, _)) => Err(HwError::Rc(code)),
            Err(Fault) => Err(HwError::Fault),
        }
    }

    fn rmpadjust(
        &mut self,
        page: PageAddr,
        size: PageSize,
        target_vmpl: u8,
        perms: u8,
        vmsa: bool,
    ) -> Result<(), HwError> {
        hw_result(self.hw.rmpadjust(page.raw(), size == PageSize::Size2M, attrs(target_vmpl, perms, vmsa)))
    }

    fn vmpl_permissions(&self, page: PageAddr, vmpl: u8) -> Option<u8> {
        if !self.config().rmpquery || !(1..=3).contains(&vmpl) {
            return None;
        }
        match self.hw.rmpquery(page.raw()) {
            // RDX holds VMPL1's permissions in byte 0, VMPL2's in byte 1, VMPL3's in byte 2.
            Ok((rc::SUCCESS, rdx)) => Some(rdx.to_le_bytes().get(usize::from(vmpl) - 1).copied().unwrap_or(0)),
            // Not validated, not assigned, or the host pulled it: no access.
            Ok(_) | Err(_) => Some(0),
        }
    }

    fn flush_guest_tlb(&mut self) {
        self.hw.flush_tlb_all();
    }

    fn fatal(&mut self, why: core::fmt::Arguments<'_>) -> ! {
        kernel::log!(self, Error, "stopping: {why}");
        self.terminate(term::SET_BULWARK, term::INCONSISTENT);
        self.hw.halt()
    }

    fn vmsa_read(&self, vmsa: PageAddr, field: VmsaField) -> Result<u64, MemoryFault> {
        self.read_u64(vmsa.raw() + field.offset() as u64, field.width())
    }

    fn vmsa_write(&mut self, vmsa: PageAddr, field: VmsaField, value: u64) -> Result<(), MemoryFault> {
        let gpa = vmsa.raw() + field.offset() as u64;
        let bytes = value.to_le_bytes();
        let bytes = bytes.get(..field.width()).ok_or(MemoryFault { gpa: Gpa(gpa) })?;
        self.hw.write(gpa, bytes).map_err(|_| MemoryFault { gpa: Gpa(gpa) })
    }

    /// With an SVSM entry (every vCPU gets a VMPL0 VMSA of the SVSM's), the vCPU needs a
    /// stack slot there and the SVSM's CPU state for its index: without them its calls
    /// would reach nobody, or its first one would stop the SVSM for want of memory.
    fn prepare_vcpu(&mut self, index: VcpuIndex) -> Result<(), HwError> {
        if !self.shared.reserve_vcpu() {
            return Err(HwError::NoMemory);
        }
        let Some(entry) = self.shared.svsm_entry() else { return Ok(()) };
        if entry.for_vcpu(index.0).is_none() || !self.hw.prepare_cpu(index.0) {
            return Err(HwError::NoMemory);
        }
        Ok(())
    }

    fn vcpu_created(&mut self, index: VcpuIndex, vmsa: PageAddr, apic_id: u32, svsm_pages: &[PageAddr]) {
        // The VMSA's own VMPL (a guest VMPL may create vCPUs for a less privileged one);
        // the kernel checked it is 1..=3 before making the page a VMSA.
        let vmpl = match self.read_u64(vmsa.raw() + VmsaField::Vmpl.offset() as u64, 1) {
            Ok(v @ 1..=3) => u8::try_from(v).unwrap_or(self.config().guest_vmpl),
            _ => self.config().guest_vmpl,
        };
        let mut record = VcpuRecord { apic_id, vmpl, svsm_vmsa: None };
        if let (Some(entry), Some(page)) = (self.shared.svsm_entry(), svsm_pages.first()) {
            // The SVSM's VMSA in the vCPU's first SVSM page, on the SVSM's stack for it.
            let made = match entry.for_vcpu(index.0) {
                Some(state) => {
                    let v = vmsa::svsm_state(&state, self.svsm_features());
                    let written = self.hw.write(page.raw(), v.as_bytes()).map_err(|_| HwError::Fault);
                    written.and_then(|()| self.make_vmsa(page.raw()))
                }
                None => Err(HwError::Rc(rc::FAIL_INPUT)),
            };
            match made {
                Ok(()) => match self.ap_create(page.raw(), 0, apic_id, self.svsm_features()) {
                    Ok(()) => record.svsm_vmsa = Some(page.raw()),
                    Err(e) => {
                        kernel::log!(self, Error, "vCPU {}: host refused the SVSM's VMSA: {e:?}", index.0);
                        // A refusal does not prove the VMSA never ran: a host may run it
                        // and answer "refused" (the page is a VMSA, so it can). Then it
                        // cannot be unflagged (FAIL_INUSE), and it stays in the record, so
                        // stopping the vCPU retires it before its page goes back to the
                        // pool, never a live VMPL0 VMSA handed out again.
                        if self.unflag_vmsa(page.raw()).is_err() {
                            record.svsm_vmsa = Some(page.raw());
                        }
                    }
                },
                Err(e) => kernel::log!(self, Error, "vCPU {}: SVSM VMSA not made (no stack, or {e:?})", index.0),
            }
        }
        let features = self.config().sev_features;
        if let Err(e) = self.ap_create(vmsa.raw(), vmpl, apic_id, features) {
            kernel::log!(self, Error, "vCPU {}: host refused AP creation: {e:?}", index.0);
        }
        if !self.shared.set_vcpu(vmsa.raw(), record) {
            // Not met: `prepare_vcpu` reserved the room.
            kernel::log!(self, Error, "vCPU {}: not recorded (no memory)", index.0);
        }
    }

    /// A migration's destination replaces the startup vCPU's state. The page is no VMSA
    /// while it is written: clearing the RMP flag fails with FAIL_INUSE while the vCPU
    /// runs, so a host cannot run it half written. Flagged again whatever the write did.
    fn vmsa_restore(&mut self, vmsa: PageAddr, image: &[u8; 4096]) -> Result<(), MemoryFault> {
        let fault = MemoryFault { gpa: vmsa.gpa() };
        self.retire_vmsa(vmsa.raw()).map_err(|_| fault)?;
        let written = self.hw.write(vmsa.raw(), image);
        let flagged = self.hw.rmpadjust(vmsa.raw(), false, attrs(self.config().guest_vmpl, PERM_NONE, true));
        match (written, flagged) {
            (Ok(()), Ok(rc::SUCCESS)) => Ok(()),
            _ => Err(fault),
        }
    }

    fn vcpu_stop(&mut self, vmsa: PageAddr) -> Result<(), HwError> {
        // Both VMSAs stop, or neither: a stop refused with FAIL_INUSE (one of them runs)
        // changes nothing, so the vCPU runs on with the SVSM context its calls need. The
        // guest's VMSA first (the one that runs while the guest does); if the SVSM's then
        // cannot stop, the guest's is made a runnable VMSA again. Its page goes back to
        // the pool once this returns Ok, so it must not be a VMSA then. The record keeps
        // what is still live, so a retry finishes the job and never answers Ok early. The
        // record is read and changed in short holds of its lock, never across AP_DESTROY.
        let guest_efer = self.read_u64(vmsa.raw() + VmsaField::Efer.offset() as u64, 8).map_err(|_| HwError::Fault)?;
        self.retire_vmsa(vmsa.raw())?;
        if let Some(VcpuRecord { apic_id, svsm_vmsa: Some(svsm_vmsa), .. }) = self.shared.vcpu(vmsa.raw()) {
            if let Err(e) = self.retire_vmsa(svsm_vmsa) {
                self.unretire_vmsa(vmsa.raw(), guest_efer);
                return Err(e);
            }
            let _ = self.ap_event(exit::AP_DESTROY, svsm_vmsa, 0, apic_id, 0);
            self.shared.forget_svsm_vmsa(vmsa.raw(), svsm_vmsa);
        }
        if let Some(record) = self.shared.remove_vcpu(vmsa.raw()) {
            let _ = self.ap_event(exit::AP_DESTROY, vmsa.raw(), record.vmpl, record.apic_id, 0);
        }
        Ok(())
    }

    fn vcpu_deleted(&mut self, _index: VcpuIndex) {}

    fn vtom_limits(&self) -> Option<VtomLimits> {
        // vTOM is fixed at launch on SNP (SEV_FEATURES.VTOM); the SVSM cannot move it.
        None
    }

    fn log(&mut self, level: Level, args: core::fmt::Arguments<'_>) {
        if level > self.shared.log_level() {
            return;
        }
        // On the stack: the heap may be what ran out.
        let line = kernel::log_ring::LogLine::new(level, args);
        self.shared.log_push(line.as_bytes());
        self.console(line.as_bytes());
    }

    fn log_level(&self) -> Level {
        self.shared.log_level()
    }

    fn heap_usage(&self) -> Option<kernel::platform::HeapUsage> {
        self.hw.heap_usage()
    }

    fn set_log_level(&mut self, level: Level) {
        self.shared.set_log_level(level);
    }

    fn log_read(&self, offset: u64, out: &mut [u8]) -> Result<usize, LogLost> {
        self.shared.log_read(offset, out)
    }

    fn log_written(&self) -> u64 {
        self.shared.log_written()
    }

    fn log_to_guest(&mut self, offset: u64, gpa: Gpa, len: usize) -> Result<usize, LogCopyError> {
        // Straight from the ring into the guest's page (a memory copy, no host exit): at
        // most two copies.
        let hw = &mut self.hw;
        let copy = |segments: [&[u8]; 2]| {
            let mut at = gpa;
            for s in segments.iter().filter(|s| !s.is_empty()) {
                hw.write(at.0, s).map_err(|_| LogCopyError::Fault(MemoryFault { gpa: at }))?;
                at = Gpa(at.0 + s.len() as u64);
            }
            Ok(segments.iter().map(|s| s.len()).sum())
        };
        self.shared.log_copy(offset, len, copy, LogCopyError::Lost)
    }

    fn guest_request(&mut self, request: &[u8; 4096], response: &mut [u8; 4096]) -> Result<(), GuestRequestError> {
        crate::guest_request::guest_request(self, request, response)
    }

    fn report_certificates(&mut self) -> &[u8] {
        // A copy: the table stays as it is while the kernel copies it, whatever another
        // CPU's report brings meanwhile.
        if !self.shared.copy_certificates(&mut self.certificates) {
            kernel::log!(self, Warn, "snp: no memory to lend the certificate table; the report goes without it");
        }
        &self.certificates
    }
}
