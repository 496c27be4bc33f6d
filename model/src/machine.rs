//! The modelled machine: memory, RMP, guest vCPUs, and the kernel's `Platform` on top.
//!
//! Besides answering the SVSM's hardware operations, the machine checks the SVSM keeps
//! its side of the contract and records every breach in `violations` (tests assert it
//! stays empty): VMSA registers written while the vCPU was runnable (SVME = 1), SVSM
//! pages handed to a new vCPU that a guest VMPL can still reach.

use crate::memory::Memory;
use crate::rmp::{Rmp, Size};
use abi::hw::rmpadjust::{PERM_ALL, PERM_READ, PERM_WRITE};
use abi::hw::{EFER_SVME, SVM_EXIT_VMGEXIT};
use abi::vmsa::VmsaField;
use conformance::PspFault;
use kernel::addr::{Gpa, PageAddr, PageRange, PageSize};
use kernel::log_ring::{LogLost, LogRing};
use kernel::platform::{
    GuestRequestError, HwError, Level, LogCopyError, MemoryFault, Platform, PvalidateEffect, VtomLimits,
};
use kernel::vcpu::VcpuIndex;
use std::cell::RefCell;
use std::collections::BTreeMap;

/// A guest vCPU as the machine knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelVcpu {
    pub vmsa: u64,
    pub apic_id: u32,
    /// The host is running this vCPU right now (its VMSA is in use).
    pub running: bool,
    pub svsm_pages: Vec<u64>,
}

/// Memory another vCPU writes while the SVSM works: right after the SVSM's first read
/// that covers `trigger`, `bytes` land at `gpa`, if the guest (at [`RACING_VMPL`]) may
/// write there at that moment. A VMSA or a page the SVSM took is out of any vCPU's reach,
/// so a race never writes one (the fuzzer once "raced" EFER.SVME into a held VMSA).
#[derive(Clone, Debug)]
pub struct Race {
    pub trigger: u64,
    pub gpa: u64,
    pub bytes: Vec<u8>,
}

/// The VMPL the racing vCPU runs at (the model's guest VMPL).
pub const RACING_VMPL: u8 = 1;

/// Bytes of log the model keeps (a small ring, so tests can overflow it).
pub const MODEL_LOG_BYTES: usize = 16 * 1024;

#[derive(Debug)]
pub struct Machine {
    memory: RefCell<Memory>,
    pub rmp: Rmp,
    pub vcpus: BTreeMap<u32, ModelVcpu>,
    pub vtom: Option<VtomLimits>,
    /// Log lines at or above `log_level`.
    pub log: Vec<(Level, String)>,
    pub log_level: Level,
    /// The same lines as a byte stream, as the bare-metal console keeps them (read by the
    /// Observability protocol).
    pub log_ring: Box<LogRing<MODEL_LOG_BYTES>>,
    pub violations: RefCell<Vec<String>>,
    race: RefCell<Option<Race>>,
    /// The PSP model (firmware side of guest requests), once the launch set it up.
    pub psp: Option<softpsp::SoftPsp>,
    /// The certificate table the host hands out with reports (extended guest request).
    pub certificates: Vec<u8>,
    /// The next guest request goes wrong this way.
    pub psp_fault: Option<conformance::PspFault>,
    /// Each guest vCPU's TLB: the permissions it cached per page when it last reached
    /// it. A vCPU keeps using them until a flush, even after RMPADJUST took access away
    /// (as the hardware does), so an SVSM that forgets to flush fails the tests.
    pub tlbs: RefCell<Tlbs>,
    /// TLB flushes the SVSM asked for.
    pub tlb_flushes: std::cell::Cell<u64>,
    /// Instructions the host makes fail (it changed the RMP under the SVSM): each
    /// matching PVALIDATE or RMPADJUST consumes its entry and answers the code.
    pub failures: Vec<InjectedFailure>,
}

/// A PVALIDATE or RMPADJUST that will fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InjectedFailure {
    pub pfn: u64,
    /// `None`: PVALIDATE; `Some(vmpl)`: RMPADJUST targeting `vmpl`.
    pub rmpadjust_vmpl: Option<u8>,
    /// Matching instructions to let through first.
    pub skip: u32,
    pub rc: u32,
}

/// Per-vCPU cached permissions: vCPU index -> (pfn -> permission bits).
pub type Tlbs = BTreeMap<u32, BTreeMap<u64, u8>>;

impl Machine {
    /// A machine with `ram_bytes` of RAM, assigned to the guest as 4 KiB pages below
    /// `huge_from` and as 2 MiB pages above it.
    pub fn new(ram_bytes: u64, huge_from: u64) -> Self {
        let pages = ram_bytes / 4096;
        let mut rmp = Rmp::new(pages);
        let small = (huge_from / 4096).min(pages);
        rmp.host_assign(0, small);
        let mut pfn = small.next_multiple_of(512);
        while pfn + 512 <= pages {
            rmp.host_assign_huge(pfn);
            pfn += 512;
        }
        Self {
            memory: RefCell::new(Memory::default()),
            rmp,
            vcpus: BTreeMap::new(),
            vtom: None,
            log: Vec::new(),
            log_level: Level::Info,
            log_ring: Box::new(LogRing::new()),
            violations: RefCell::new(Vec::new()),
            race: RefCell::new(None),
            psp: None,
            certificates: Vec::new(),
            psp_fault: None,
            tlbs: RefCell::new(BTreeMap::new()),
            tlb_flushes: std::cell::Cell::new(0),
            failures: Vec::new(),
        }
    }

    /// May guest vCPU `vcpu` at `vmpl` access `[gpa, gpa + len)` with `need`, through its
    /// TLB? A page it reached before keeps the permissions cached then (stale until a
    /// flush); a page it did not, or whose cached permissions lack `need`, is looked up in
    /// the RMP and cached. `Err` names the first refused address.
    pub fn guest_access(&self, vcpu: u32, vmpl: u8, gpa: u64, len: usize, need: u8) -> Result<(), u64> {
        if len == 0 {
            return Ok(());
        }
        let last = gpa.checked_add(len as u64 - 1).ok_or(gpa)?;
        let mut tlbs = self.tlbs.borrow_mut();
        let tlb = tlbs.entry(vcpu).or_default();
        for pfn in gpa >> 12..=last >> 12 {
            if tlb.get(&pfn).is_some_and(|cached| cached & need == need) {
                continue;
            }
            if !self.rmp.allows(pfn, vmpl, need) {
                return Err((pfn << 12).max(gpa));
            }
            let perms =
                self.rmp.entry(pfn).map_or(0, |e| if vmpl == 0 { PERM_ALL } else { e.perms[usize::from(vmpl & 3)] });
            tlb.insert(pfn, perms);
        }
        Ok(())
    }

    /// Every vCPU forgets its cached translations (the SVSM's INVLPGB + TLBSYNC, or the
    /// host's flush after RMPUPDATE).
    pub fn flush_tlbs(&self) {
        self.tlbs.borrow_mut().clear();
        self.tlb_flushes.set(self.tlb_flushes.get() + 1);
    }

    /// An injected failure for this instruction, consumed.
    fn injected(&mut self, page: PageAddr, rmpadjust_vmpl: Option<u8>) -> Option<u32> {
        let i = self.failures.iter().position(|f| f.pfn == page.pfn() && f.rmpadjust_vmpl == rmpadjust_vmpl)?;
        let f = self.failures.get_mut(i)?;
        if f.skip > 0 {
            f.skip -= 1;
            return None;
        }
        Some(self.failures.remove(i).rc)
    }

    /// The RMP permissions of `vmpl` on a page, as RMPQUERY reports them: 0 unless the
    /// page is assigned, validated and not a VMSA.
    pub fn vmpl_perms(&self, pfn: u64, vmpl: u8) -> u8 {
        self.rmp.vmpl_perms(pfn, vmpl)
    }

    /// Raw memory access, as the hardware or the launch would do it (no RMP checks).
    pub fn raw_read(&self, gpa: u64, buf: &mut [u8]) {
        self.memory.borrow().read(gpa, buf);
    }
    pub fn raw_write(&mut self, gpa: u64, data: &[u8]) {
        self.memory.get_mut().write(gpa, data);
    }
    pub fn raw_read_u64(&self, gpa: u64) -> u64 {
        let mut b = [0u8; 8];
        self.raw_read(gpa, &mut b);
        u64::from_le_bytes(b)
    }

    /// A VMSA field, read as the hardware would.
    pub fn vmsa_field(&self, vmsa: u64, field: VmsaField) -> u64 {
        let mut b = [0u8; 8];
        self.raw_read(vmsa + field.offset() as u64, &mut b[..field.width()]);
        u64::from_le_bytes(b)
    }
    pub fn set_vmsa_field(&mut self, vmsa: u64, field: VmsaField, value: u64) {
        let bytes = value.to_le_bytes();
        self.raw_write(vmsa + field.offset() as u64, &bytes[..field.width()]);
    }

    /// Arrange for another vCPU to write guest memory during the SVSM's next work.
    pub fn race(&self, race: Race) {
        *self.race.borrow_mut() = Some(race);
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.borrow().clone()
    }

    fn violation(&self, what: String) {
        crate::heap::as_host(|| self.violations.borrow_mut().push(what));
    }

    /// Record a breach seen outside the machine (the snp platform's host).
    pub fn record_violation(&self, what: String) {
        self.violation(what);
    }

    /// A write of `len` bytes at `gpa` through plain memory (the snp platform's way to
    /// set VMSA fields): a VMSA register other than EFER must not change while the vCPU
    /// is runnable.
    pub fn check_vmsa_write(&self, gpa: u64, len: usize) {
        let page = gpa & !0xFFF;
        if !self.rmp.entry(page >> 12).is_some_and(|e| e.vmsa) {
            return;
        }
        let efer = VmsaField::Efer.offset() as u64;
        let only_efer = gpa - page >= efer && gpa - page + len as u64 <= efer + 8;
        if !only_efer && self.vmsa_field(page, VmsaField::Efer) & EFER_SVME != 0 {
            self.violation(format!("VMSA {page:#x} written at {gpa:#x} while EFER.SVME = 1"));
        }
    }

    fn check(&self, gpa: u64, len: usize, need: u8) -> Result<(), MemoryFault> {
        self.rmp.check_access(gpa, len, 0, need).map_err(|a| MemoryFault { gpa: Gpa(a) })
    }

    /// The SVSM read `[gpa, gpa + len)`: another vCPU's racing write lands now, if this
    /// read triggers it (also called by the svm platform's seam, which reads raw memory).
    pub(crate) fn after_read(&self, gpa: u64, len: usize) {
        crate::heap::as_host(|| self.race_now(gpa, len))
    }

    /// Another vCPU's racing write, if this read triggers it.
    fn race_now(&self, gpa: u64, len: usize) {
        let fire = matches!(&*self.race.borrow(), Some(r) if r.trigger >= gpa && r.trigger < gpa + len as u64);
        if fire && let Some(r) = self.race.borrow_mut().take() {
            let allowed = self.rmp.check_access(r.gpa, r.bytes.len(), RACING_VMPL, PERM_WRITE).is_ok();
            if allowed {
                self.memory.borrow_mut().write(r.gpa, &r.bytes);
            }
        }
    }

    fn vmsa_page(&self, vmsa: PageAddr) -> Result<(), MemoryFault> {
        match self.rmp.entry(vmsa.pfn()) {
            Some(e) if e.assigned && e.validated && e.vmsa => Ok(()),
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

impl Machine {
    /// The machine's side of a vCPU creation: check the SVSM's part, then record it.
    fn record_vcpu(&mut self, index: VcpuIndex, vmsa: PageAddr, apic_id: u32, svsm_pages: &[PageAddr]) {
        for page in svsm_pages {
            if (1..=3).any(|vmpl| self.rmp.allows(page.pfn(), vmpl, PERM_READ)) {
                self.violation(format!("SVSM page {:#x} of a new vCPU is reachable from a guest VMPL", page.raw()));
            }
        }
        if self.rmp.entry(vmsa.pfn()).is_none_or(|e| !e.vmsa) {
            self.violation(format!("vCPU created on {:#x}, which is not a VMSA page", vmsa.raw()));
        }
        if self.vmsa_field(vmsa.raw(), VmsaField::Efer) & EFER_SVME == 0 {
            self.violation(format!("vCPU created on {:#x} with EFER.SVME = 0: it cannot run", vmsa.raw()));
        }
        let svsm_pages = svsm_pages.iter().map(|p| p.raw()).collect();
        self.vcpus.insert(index.0, ModelVcpu { vmsa: vmsa.raw(), apic_id, running: false, svsm_pages });
    }

    fn stop_vcpu(&mut self, vmsa: PageAddr) -> Result<(), HwError> {
        let Some(v) = self.vcpus.values().find(|v| v.vmsa == vmsa.raw()) else {
            return Err(HwError::Fault);
        };
        if v.running {
            return Err(HwError::Rc(abi::hw::rc::FAIL_INUSE));
        }
        let efer = self.vmsa_field(vmsa.raw(), VmsaField::Efer);
        self.set_vmsa_field(vmsa.raw(), VmsaField::Efer, efer & !EFER_SVME);
        Ok(())
    }

    fn record_log(&mut self, level: Level, args: std::fmt::Arguments<'_>) {
        if level <= self.log_level {
            let line = args.to_string();
            if std::env::var_os("BULWARK_MODEL_LOG").is_some() {
                eprintln!("[svsm {level:?}] {line}");
            }
            self.log_ring.push(format!("[{level:?}] {line}\n").as_bytes());
            self.log.push((level, line));
        }
    }
}

impl Platform for Machine {
    const CALL_EXIT_CODE: u64 = SVM_EXIT_VMGEXIT;
    const NAME: &'static str = "model";

    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemoryFault> {
        self.check(gpa.0, buf.len(), PERM_READ)?;
        self.memory.borrow().read(gpa.0, buf);
        self.after_read(gpa.0, buf.len());
        Ok(())
    }

    fn write(&mut self, gpa: Gpa, data: &[u8]) -> Result<(), MemoryFault> {
        self.check(gpa.0, data.len(), PERM_WRITE)?;
        let memory = self.memory.get_mut();
        crate::heap::as_host(|| memory.write(gpa.0, data));
        Ok(())
    }

    fn zero_pages(&mut self, pages: PageRange) -> Result<(), MemoryFault> {
        for pfn in pages.start_pfn()..pages.end_pfn() {
            if !self.rmp.allows(pfn, 0, PERM_WRITE) {
                return Err(MemoryFault { gpa: Gpa(pfn << 12) });
            }
        }
        self.memory.get_mut().zero_pages(pages.start_pfn()..pages.end_pfn());
        Ok(())
    }

    fn pvalidate(&mut self, page: PageAddr, size: PageSize, validate: bool) -> Result<PvalidateEffect, HwError> {
        if let Some(rc) = self.injected(page, None) {
            return Err(HwError::Rc(rc));
        }
        crate::heap::as_host(|| self.rmp.pvalidate(page.raw(), Self::size(size), validate))
    }

    fn rmpadjust(
        &mut self,
        page: PageAddr,
        size: PageSize,
        target_vmpl: u8,
        perms: u8,
        vmsa: bool,
    ) -> Result<(), HwError> {
        if let Some(rc) = self.injected(page, Some(target_vmpl)) {
            return Err(HwError::Rc(rc));
        }
        let vcpus = &self.vcpus;
        let running = |pfn: u64| vcpus.values().any(|v| v.running && v.vmsa >> 12 == pfn);
        let rmp = &mut self.rmp;
        crate::heap::as_host(|| rmp.rmpadjust(page.raw(), Self::size(size), target_vmpl, perms, vmsa, running))
    }

    fn vmpl_permissions(&self, page: PageAddr, vmpl: u8) -> Option<u8> {
        Some(self.vmpl_perms(page.pfn(), vmpl))
    }

    fn flush_guest_tlb(&mut self) {
        self.flush_tlbs();
    }

    fn fatal(&mut self, why: std::fmt::Arguments<'_>) -> ! {
        // The panic (its message, a backtrace) is the test's, not the SVSM's heap.
        let why = crate::heap::as_host(|| why.to_string());
        crate::heap::as_host(|| panic!("the SVSM stopped: {why}"))
    }

    fn vmsa_read(&self, vmsa: PageAddr, field: VmsaField) -> Result<u64, MemoryFault> {
        self.vmsa_page(vmsa)?;
        Ok(self.vmsa_field(vmsa.raw(), field))
    }

    fn vmsa_write(&mut self, vmsa: PageAddr, field: VmsaField, value: u64) -> Result<(), MemoryFault> {
        self.vmsa_page(vmsa)?;
        if field != VmsaField::Efer && self.vmsa_field(vmsa.raw(), VmsaField::Efer) & EFER_SVME != 0 {
            self.violation(format!("VMSA {:#x} field {field:?} written while EFER.SVME = 1", vmsa.raw()));
        }
        self.set_vmsa_field(vmsa.raw(), field, value);
        Ok(())
    }

    fn vcpu_created(&mut self, index: VcpuIndex, vmsa: PageAddr, apic_id: u32, svsm_pages: &[PageAddr]) {
        crate::heap::as_host(|| self.record_vcpu(index, vmsa, apic_id, svsm_pages))
    }

    fn vcpu_stop(&mut self, vmsa: PageAddr) -> Result<(), HwError> {
        crate::heap::as_host(|| self.stop_vcpu(vmsa))
    }

    fn vcpu_deleted(&mut self, index: VcpuIndex) {
        self.vcpus.remove(&index.0);
    }

    fn vtom_limits(&self) -> Option<VtomLimits> {
        self.vtom
    }

    fn log(&mut self, level: Level, args: std::fmt::Arguments<'_>) {
        crate::heap::as_host(|| self.record_log(level, args))
    }

    fn log_level(&self) -> Level {
        self.log_level
    }

    fn heap_usage(&self) -> Option<kernel::platform::HeapUsage> {
        crate::heap::usage()
    }

    fn set_log_level(&mut self, level: Level) {
        self.log_level = level;
    }

    fn log_read(&self, offset: u64, out: &mut [u8]) -> Result<usize, LogLost> {
        self.log_ring.read(offset, out)
    }

    fn log_written(&self) -> u64 {
        self.log_ring.written()
    }

    fn log_to_guest(&mut self, offset: u64, gpa: Gpa, len: usize) -> Result<usize, LogCopyError> {
        // Straight from the ring into guest memory, as the bare-metal SVSM would copy.
        let segments = self.log_ring.segments(offset, len).map_err(LogCopyError::Lost)?;
        let total = segments.iter().map(|s| s.len()).sum();
        self.check(gpa.0, total, PERM_WRITE).map_err(LogCopyError::Fault)?;
        let memory = self.memory.get_mut();
        let mut at = gpa.0;
        for s in segments {
            crate::heap::as_host(|| memory.write(at, s));
            at += s.len() as u64;
        }
        Ok(total)
    }

    fn guest_request(&mut self, request: &[u8; 4096], response: &mut [u8; 4096]) -> Result<(), GuestRequestError> {
        // The PSP's memory is not the SVSM's heap.
        crate::heap::as_host(|| self.psp_answers(request, response))
    }

    fn report_certificates(&mut self) -> &[u8] {
        &self.certificates
    }
}

impl Machine {
    /// The PSP's side of a guest request, with the host's faults.
    fn psp_answers(&mut self, request: &[u8; 4096], response: &mut [u8; 4096]) -> Result<(), GuestRequestError> {
        let Some(psp) = self.psp.as_mut() else { return Err(GuestRequestError::Unavailable) };
        let fault = self.psp_fault.take();
        if let Some(PspFault::Status(status)) = fault {
            psp.refuse_next(status);
        }
        if let Some(PspFault::Busy(times)) = fault {
            // Throttled: the message never reaches the PSP.
            if times > 1 {
                self.psp_fault = Some(PspFault::Busy(times - 1));
            }
            return Err(GuestRequestError::Host(abi::ghcb::guest_request::BUSY));
        }
        // Every refusal reads as INVALID_PARAM (0x16) here; the SVSM does not look further.
        psp.guest_request(request, response).map_err(|_| GuestRequestError::Firmware(0x16))?;
        match fault {
            // The PSP answered; the host lost the answer (no code a host would send).
            Some(PspFault::DropAnswer) => Err(GuestRequestError::Host(u32::MAX)),
            Some(PspFault::CorruptAnswer) => {
                // Inside every answer's payload (the shortest, MSG_KEY_RSP, has 0x40 bytes).
                response[abi::attest::guest_message::HEADER_LEN + 1] ^= 1;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
