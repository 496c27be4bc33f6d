//! `SnpPlatform`: the kernel's `Platform` on SEV-SNP, over the `SnpHw` seam.
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
//! - Log lines go to the SVSM's log ring and, byte by byte through GHCB port-I/O events,
//!   to the serial port (no #VC on this path, so logging works inside any handler).

use crate::ghcb::{self, Ghcb, GhcbError};
use crate::hw::{CERT_PAGES, Fault, SHARED_PAGES, Shared, SnpHw};
use crate::vmsa::{self, SvsmEntry};
use abi::ghcb::{exit, ioio, msr, offset, term};
use abi::hw::rmpadjust::{PERM_NONE, attrs};
use abi::hw::{EFER_SVME, SVM_EXIT_VMGEXIT, rc};
use abi::vmsa::VmsaField;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use kernel::addr::{Gpa, PageAddr, PageRange, PageSize};
use kernel::log_ring::{LogLost, LogRing};
use kernel::platform::{
    GuestRequestError, HwError, Level, LogCopyError, MemoryFault, Platform, PvalidateEffect, VtomLimits,
};
use kernel::vcpu::VcpuIndex;
use zerocopy::{FromZeros, IntoBytes};

/// Bytes of log the SVSM keeps for the Observability protocol.
pub const LOG_BYTES: usize = 64 * 1024;

/// What the platform keeps between entries.
#[derive(Debug)]
pub struct SnpState {
    pub log_level: Level,
    log: Box<LogRing<LOG_BYTES>>,
    /// Serial port for log lines (COM1 = 0x3F8), if any.
    pub console_port: Option<u16>,
    /// The VMPL the guest runs at.
    pub guest_vmpl: u8,
    /// SEV_FEATURES of every VMSA the SVSM creates (those of the launch).
    pub sev_features: u64,
    /// Where a new CPU enters the SVSM, if the SVSM runs its own VMSA per vCPU.
    pub svsm_entry: Option<SvsmEntry>,
    vcpus: BTreeMap<u64, VcpuRecord>,
    certificates: Vec<u8>,
    /// The host's protocol answer at start.
    pub c_bit: u8,
    pub hv_features: u64,
    /// The CPU has RMPQUERY (CPUID Fn8000_001F EAX[6]): the permissions of a less
    /// privileged guest VMPL can be read, so its calls can be served. Without it such
    /// callers may name no page (kernel `caller`).
    pub rmpquery: bool,
}

#[derive(Clone, Copy, Debug)]
struct VcpuRecord {
    apic_id: u32,
    /// The VMPL the guest VMSA runs at (AP_CREATE and AP_DESTROY name it).
    vmpl: u8,
    svsm_vmsa: Option<u64>,
}

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

#[derive(Debug)]
pub struct SnpPlatform<H: SnpHw> {
    pub hw: H,
    pub state: SnpState,
}

impl<H: SnpHw> SnpPlatform<H> {
    /// Bring the platform up on the boot CPU: agree on the GHCB protocol, check the host
    /// offers SNP, turn the shared pages shared and register the GHCB.
    pub fn start(mut hw: H, guest_vmpl: u8, sev_features: u64) -> Result<Self, StartError> {
        let c_bit = ghcb::negotiate(&mut hw).map_err(StartError::Protocol)?;
        let hv_features = ghcb::check_features(&mut hw).map_err(StartError::Features)?;
        for page in SHARED_PAGES {
            let gpa = hw.shared_gpa(page);
            match hw.pvalidate(gpa, false, false) {
                Ok((rc::SUCCESS, _)) => {}
                _ => return Err(StartError::Pvalidate(gpa)),
            }
            ghcb::page_state_change(&mut hw, gpa, msr::PSC_SHARED).map_err(|e| StartError::PageState(gpa, e))?;
        }
        let ghcb_gpa = hw.shared_gpa(Shared::Ghcb);
        ghcb::register(&mut hw, ghcb_gpa).map_err(StartError::Register)?;
        let state = SnpState {
            log_level: Level::Info,
            // 64 KiB: made on the heap directly, never on the (boot) stack.
            log: LogRing::new_box_zeroed().map_err(|_| StartError::NoMemory)?,
            console_port: None,
            guest_vmpl,
            sev_features,
            svsm_entry: None,
            vcpus: BTreeMap::new(),
            certificates: Vec::new(),
            c_bit,
            hv_features,
            rmpquery: false,
        };
        Ok(Self { hw, state })
    }

    /// Register the startup vCPU (its VMSA exists already).
    pub fn adopt_startup_vcpu(&mut self, vmsa: PageAddr, apic_id: u32) {
        let vmpl = self.state.guest_vmpl;
        self.state.vcpus.insert(vmsa.raw(), VcpuRecord { apic_id, vmpl, svsm_vmsa: None });
    }

    /// Build the guest's first vCPU in `page` (a guest page the SVSM validated and nobody
    /// else can reach yet): the reset state at the guest's VMPL, made a VMSA, announced to
    /// the host. The kernel then takes the page as its startup VMSA.
    pub fn launch_guest_vcpu(&mut self, page: PageAddr, apic_id: u32, signature: u32) -> Result<(), HwError> {
        let v = vmsa::reset_state(self.state.guest_vmpl, self.state.sev_features, signature);
        self.hw.write(page.raw(), v.as_bytes()).map_err(|_| HwError::Fault)?;
        self.make_vmsa(page.raw())?;
        let (vmpl, features) = (self.state.guest_vmpl, self.state.sev_features);
        self.ap_create(page.raw(), vmpl, apic_id, features).map_err(|_| HwError::Fault)?;
        self.adopt_startup_vcpu(page, apic_id);
        Ok(())
    }

    /// Hand the CPU to the guest until its next call (spec 58019 section 5). `Err` if the
    /// host refused to switch.
    pub fn resume_guest(&mut self) -> Result<(), GhcbError> {
        ghcb::run_vmpl(self.state.guest_vmpl).call(&mut self.hw)
    }

    /// Stop the guest for good with a GHCB termination reason.
    pub fn terminate(&mut self, set: u8, code: u8) {
        ghcb::terminate(&mut self.hw, set, code);
    }

    /// Flag `gpa` as a VMSA (the RMPADJUST target is the guest's VMPL, with no access).
    fn make_vmsa(&mut self, gpa: u64) -> Result<(), HwError> {
        match self.hw.rmpadjust(gpa, false, attrs(self.state.guest_vmpl, PERM_NONE, true)) {
            Ok(rc::SUCCESS) => Ok(()),
            Ok(code) => Err(HwError::Rc(code)),
            Err(Fault) => Err(HwError::Fault),
        }
    }

    fn unflag_vmsa(&mut self, gpa: u64) -> Result<(), HwError> {
        match self.hw.rmpadjust(gpa, false, attrs(self.state.guest_vmpl, PERM_NONE, false)) {
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
        let restricted = self.state.hv_features & msr::HV_FEATURE_SNP_RESTRICTED_INJECTION != 0;
        self.state.sev_features | if restricted { abi::hw::sev_features::RESTRICTED_INJECTION } else { 0 }
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

    fn read_u64(&self, gpa: u64, width: usize) -> Result<u64, MemoryFault> {
        let mut b = [0u8; 8];
        self.hw.read(gpa, &mut b[..width]).map_err(|_| MemoryFault { gpa: Gpa(gpa) })?;
        Ok(u64::from_le_bytes(b))
    }

    fn console(&mut self, bytes: &[u8]) {
        let Some(port) = self.state.console_port else { return };
        for &b in bytes {
            let mut g = Ghcb::event(exit::IOIO, u64::from(port) << ioio::PORT_SHIFT | ioio::SIZE8 | ioio::ADDR64, 0);
            g.set(offset::RAX, u64::from(b));
            if g.call(&mut self.hw).is_err() {
                // The host refuses the console: keep the ring, stop writing this line.
                return;
            }
        }
    }
}

use abi::ghcb::guest_request::INVALID_LEN;
/// Our own codes for a guest request that never got a host answer (the GHCB's
/// SW_EXITINFO1 reported an error, or the host left SW_EXITINFO2 unset).
const EVENT_REFUSED: u32 = u32::MAX;
const NO_ANSWER: u32 = u32::MAX - 1;

/// Run a guest-request event; the host's error is in SW_EXITINFO2 bits 63:32, the
/// firmware's in 31:0.
fn exchange<H: SnpHw>(hw: &mut H, g: &mut Ghcb) -> Result<(), GuestRequestError> {
    match g.call(hw) {
        Ok(()) => {}
        Err(GhcbError::Host(_)) => return Err(GuestRequestError::Host(EVENT_REFUSED)),
        Err(_) => return Err(GuestRequestError::Host(NO_ANSWER)),
    }
    match g.get(offset::SW_EXIT_INFO_2) {
        Some(0) => Ok(()),
        Some(info2) if info2 >> 32 != 0 => Err(GuestRequestError::Host((info2 >> 32) as u32)),
        Some(info2) => Err(GuestRequestError::Firmware(info2 as u32)),
        None => Err(GuestRequestError::Host(NO_ANSWER)),
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
        if !self.state.rmpquery || !(1..=3).contains(&vmpl) {
            return None;
        }
        match self.hw.rmpquery(page.raw()) {
            Ok((rc::SUCCESS, rdx)) => Some((rdx >> (8 * (u32::from(vmpl) - 1))) as u8),
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
        self.hw.write(gpa, &value.to_le_bytes()[..field.width()]).map_err(|_| MemoryFault { gpa: Gpa(gpa) })
    }

    fn vcpu_created(&mut self, index: VcpuIndex, vmsa: PageAddr, apic_id: u32, svsm_pages: &[PageAddr]) {
        // The VMSA's own VMPL (a guest VMPL may create vCPUs for a less privileged one);
        // the kernel checked it is 1..=3 before making the page a VMSA.
        let vmpl = match self.read_u64(vmsa.raw() + VmsaField::Vmpl.offset() as u64, 1) {
            Ok(v @ 1..=3) => v as u8,
            _ => self.state.guest_vmpl,
        };
        let mut record = VcpuRecord { apic_id, vmpl, svsm_vmsa: None };
        if let (Some(entry), Some(page)) = (self.state.svsm_entry, svsm_pages.first()) {
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
                        let _ = self.unflag_vmsa(page.raw());
                    }
                },
                Err(e) => kernel::log!(self, Error, "vCPU {}: SVSM VMSA not made (no stack, or {e:?})", index.0),
            }
        }
        let features = self.state.sev_features;
        if let Err(e) = self.ap_create(vmsa.raw(), vmpl, apic_id, features) {
            kernel::log!(self, Error, "vCPU {}: host refused AP creation: {e:?}", index.0);
        }
        self.state.vcpus.insert(vmsa.raw(), record);
    }

    fn vcpu_stop(&mut self, vmsa: PageAddr) -> Result<(), HwError> {
        // The SVSM's own VMSA of this vCPU first: its page goes back to the pool once this
        // returns Ok, so it must not be a VMSA then. Each step either completes or leaves
        // its VMSA as it was, and the record keeps what is still live, so a retry after
        // FAIL_INUSE finishes the job and never answers Ok early.
        let record = self.state.vcpus.get(&vmsa.raw()).copied();
        if let Some(VcpuRecord { apic_id, vmpl, svsm_vmsa: Some(svsm_vmsa) }) = record {
            self.retire_vmsa(svsm_vmsa)?;
            let _ = self.ap_event(exit::AP_DESTROY, svsm_vmsa, 0, apic_id, 0);
            self.state.vcpus.insert(vmsa.raw(), VcpuRecord { apic_id, vmpl, svsm_vmsa: None });
        }
        self.retire_vmsa(vmsa.raw())?;
        if let Some(record) = self.state.vcpus.remove(&vmsa.raw()) {
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
        if level > self.state.log_level {
            return;
        }
        // On the stack: the heap may be what ran out.
        let line = kernel::log_ring::LogLine::new(level, args);
        self.state.log.push(line.as_bytes());
        self.console(line.as_bytes());
    }

    fn log_level(&self) -> Level {
        self.state.log_level
    }

    fn set_log_level(&mut self, level: Level) {
        self.state.log_level = level;
    }

    fn log_read(&self, offset: u64, out: &mut [u8]) -> Result<usize, LogLost> {
        self.state.log.read(offset, out)
    }

    fn log_written(&self) -> u64 {
        self.state.log.written()
    }

    fn log_to_guest(&mut self, offset: u64, gpa: Gpa, len: usize) -> Result<usize, LogCopyError> {
        // Straight from the ring into the guest's page: at most two copies.
        let segments = self.state.log.segments(offset, len).map_err(LogCopyError::Lost)?;
        let mut at = gpa;
        for s in segments.iter().filter(|s| !s.is_empty()) {
            self.hw.write(at.0, s).map_err(|_| LogCopyError::Fault(MemoryFault { gpa: at }))?;
            at = Gpa(at.0 + s.len() as u64);
        }
        Ok(segments.iter().map(|s| s.len()).sum())
    }

    fn guest_request(&mut self, request: &[u8; 4096], response: &mut [u8; 4096]) -> Result<(), GuestRequestError> {
        self.hw.shared_write(Shared::Request, 0, request);
        let (req, resp) = (self.hw.shared_gpa(Shared::Request), self.hw.shared_gpa(Shared::Response));
        let mut g = Ghcb::event(exit::EXT_GUEST_REQUEST, req, resp);
        g.set(offset::RAX, self.hw.shared_gpa(Shared::Certs(0)));
        g.set(offset::RBX, CERT_PAGES as u64);
        let mut with_certificates = true;
        match exchange(&mut self.hw, &mut g) {
            Ok(()) => {}
            Err(GuestRequestError::Host(INVALID_LEN)) => {
                // The host's certificates do not fit our buffer. It refused before the PSP
                // saw the message, so the sequence numbers are still in step: ask again
                // without certificates.
                let needed = g.get(offset::RBX).unwrap_or(0);
                kernel::log!(
                    self,
                    Warn,
                    "snp: the host's certificates need {needed} pages, the SVSM has {CERT_PAGES}; reports go without them"
                );
                g = Ghcb::event(exit::GUEST_REQUEST, req, resp);
                with_certificates = false;
                exchange(&mut self.hw, &mut g)?;
            }
            Err(e) => return Err(e),
        }
        self.hw.shared_read(Shared::Response, 0, response);
        let mut certs = Vec::new();
        if with_certificates {
            let mut page = [0u8; 4096];
            for i in 0..CERT_PAGES {
                self.hw.shared_read(Shared::Certs(i), 0, &mut page);
                certs.extend_from_slice(&page);
            }
        }
        self.state.certificates = trim_cert_table(certs);
        Ok(())
    }

    fn report_certificates(&mut self) -> &[u8] {
        &self.state.certificates
    }
}

/// The certificate table up to and including its all-zero terminating entry (24-byte
/// entries: GUID, offset, length); the whole buffer if it has none, empty if it starts
/// with the terminator.
fn trim_cert_table(mut buf: Vec<u8>) -> Vec<u8> {
    let end = buf.chunks(24).position(|e| e.iter().all(|b| *b == 0));
    match end {
        Some(0) => Vec::new(),
        Some(n) => {
            // Keep the entries and the data they point at: up to the furthest end.
            let furthest = buf[..n * 24]
                .chunks(24)
                .map(|e| {
                    let off = u32::from_le_bytes([e[16], e[17], e[18], e[19]]) as usize;
                    let len = u32::from_le_bytes([e[20], e[21], e[22], e[23]]) as usize;
                    off.saturating_add(len)
                })
                .max()
                .unwrap_or(0);
            buf.truncate(furthest.max((n + 1) * 24).min(buf.len()));
            buf
        }
        None => buf,
    }
}

#[cfg(test)]
mod tests {
    use super::trim_cert_table;
    use alloc::vec;
    use alloc::vec::Vec;

    fn entry(guid: u8, offset: u32, len: u32) -> Vec<u8> {
        let mut e = vec![guid; 16];
        e.extend_from_slice(&offset.to_le_bytes());
        e.extend_from_slice(&len.to_le_bytes());
        e
    }

    #[test]
    fn the_table_ends_where_its_furthest_certificate_does() {
        let mut buf = [entry(1, 72, 10), entry(2, 82, 20), vec![0; 24]].concat();
        buf.resize(16384, 0xEE);
        let t = trim_cert_table(buf);
        assert_eq!(t.len(), 102, "two entries, the terminator, 30 bytes of certificates");
        assert!(trim_cert_table(vec![0; 4096]).is_empty(), "a table that starts with its terminator is empty");
    }

    #[test]
    fn entries_pointing_past_the_buffer_keep_the_whole_buffer() {
        let mut buf = [entry(1, 48, u32::MAX), vec![0; 24]].concat();
        buf.resize(100, 0);
        assert_eq!(trim_cert_table(buf).len(), 100);
    }
}
