//! The platform seam: the only way protocol code reaches hardware or the host.
//!
//! Implemented by the `snp` platform (PVALIDATE, RMPADJUST, VMSA pages, GHCB), the `svm`
//! platform (VMCBs and nested paging under QEMU) and the hosted `model` of SEV-SNP. The
//! methods are the hardware operations an SVSM performs, at the granularity the hardware
//! offers; policy (which gpa may be touched, in which order) stays in the kernel.
//!
//! Guest memory is reached only by copy (`read`/`write`); no reference into guest memory
//! ever leaves the platform.

use crate::addr::{Gpa, PageAddr, PageRange, PageSize};
use crate::vcpu::VcpuIndex;
use abi::vmsa::VmsaField;

/// A memory access by the SVSM faulted: the page is absent, not validated, or was taken
/// away by the host. Never fatal; the request that caused it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryFault {
    pub gpa: Gpa,
}

/// Failure of a PVALIDATE or RMPADJUST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwError {
    /// The instruction completed with this non-zero EAX (FAIL_INPUT, FAIL_PERMISSION,
    /// FAIL_INUSE, FAIL_SIZEMISMATCH, or an unknown future code).
    Rc(u32),
    /// The instruction faulted (e.g. an RMP violation the host must resolve).
    Fault,
    /// The platform could not get the SVSM heap memory the change needs (the svm
    /// platform's nested page tables); nothing changed.
    NoMemory,
}

/// Outcome of a successful PVALIDATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvalidateEffect {
    /// The validated state changed.
    Changed,
    /// EFLAGS.CF = 1: the page already had the requested state.
    Unchanged,
}

/// What the platform can offer for vTOM (CONFIGURE_VTOM query result).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtomLimits {
    /// Required alignment as a power of two.
    pub align_log2: u8,
    pub min: u64,
    pub max: u64,
}

/// The SVSM heap: bytes in use and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapUsage {
    pub used: u64,
    pub size: u64,
}

/// Log severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

/// A log level every CPU reads and any may change (the OCP log-level setting).
#[derive(Debug)]
pub struct AtomicLevel(core::sync::atomic::AtomicU8);

impl AtomicLevel {
    pub const fn new(level: Level) -> Self {
        Self(core::sync::atomic::AtomicU8::new(level as u8))
    }

    pub fn load(&self) -> Level {
        match self.0.load(core::sync::atomic::Ordering::Relaxed) {
            0 => Level::Error,
            1 => Level::Warn,
            2 => Level::Info,
            _ => Level::Debug,
        }
    }

    pub fn store(&self, level: Level) {
        self.0.store(level as u8, core::sync::atomic::Ordering::Relaxed);
    }
}

pub trait Platform {
    /// Exit code the calling vCPU's VMSA shows when it entered the SVSM through the call
    /// gate (VMGEXIT on SNP, VMMCALL on `svm`).
    const CALL_EXIT_CODE: u64;
    /// The platform's name, as the Observability protocol reports it (`build.platform`).
    const NAME: &'static str;

    /// Copy guest memory at `gpa` into `buf`.
    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemoryFault>;
    /// Copy `data` into guest memory at `gpa`.
    fn write(&mut self, gpa: Gpa, data: &[u8]) -> Result<(), MemoryFault>;
    /// Fill whole pages with zeros.
    fn zero_pages(&mut self, pages: PageRange) -> Result<(), MemoryFault>;

    /// PVALIDATE at VMPL0.
    fn pvalidate(&mut self, page: PageAddr, size: PageSize, validate: bool) -> Result<PvalidateEffect, HwError>;
    /// RMPADJUST at VMPL0: set `target_vmpl`'s permissions (abi::hw::rmpadjust::PERM_*)
    /// and the VMSA flag of a page.
    fn rmpadjust(
        &mut self,
        page: PageAddr,
        size: PageSize,
        target_vmpl: u8,
        perms: u8,
        vmsa: bool,
    ) -> Result<(), HwError>;

    /// The RMP permissions (abi::hw::rmpadjust::PERM_*) that `vmpl` (1..=3) holds on
    /// `page` as the hardware has them (RMPQUERY on SNP); 0 for a page that is not
    /// validated or is a VMSA. `None` when the platform cannot read them: the kernel then
    /// lets callers below the most privileged guest VMPL name no page (see `caller`).
    fn vmpl_permissions(&self, page: PageAddr, vmpl: u8) -> Option<u8>;

    /// Whether a guest vCPU at `vmpl` (1..=3) runs with that VMPL's permissions here.
    /// A platform that enforces only one VMPL's (svm: one nested page table, the
    /// guest's) refuses CREATE_VCPU for the others: their code would run with the more
    /// privileged VMPL's memory. SEV-SNP enforces every VMPL in the RMP.
    fn runs_vcpus_at(&self, vmpl: u8) -> bool {
        (1..=3).contains(&vmpl)
    }

    /// Make every CPU forget the translations the guest's VMPLs cached, and wait until
    /// they have (INVLPGB + TLBSYNC on SNP). Called after RMPADJUST took access away and
    /// before the SVSM relies on the page being out of the guest's reach: a stale TLB
    /// entry on another CPU would otherwise still let the guest write it. A platform whose
    /// permission changes already reach every CPU before they return (svm: the nested
    /// page tables change and every CPU running a guest leaves it) does nothing here.
    fn flush_guest_tlb(&mut self);

    /// Read a field of a lower-VMPL vCPU's VMSA.
    fn vmsa_read(&self, vmsa: PageAddr, field: VmsaField) -> Result<u64, MemoryFault>;
    /// Write a field of a lower-VMPL vCPU's VMSA.
    fn vmsa_write(&mut self, vmsa: PageAddr, field: VmsaField, value: u64) -> Result<(), MemoryFault>;

    /// The whole VMSA of a vCPU that is not running (a migration's last round, with the
    /// guest stopped). Where the VMSA page holds the state (SNP, the model), the page.
    fn vmsa_image(&self, vmsa: PageAddr, image: &mut [u8; 4096]) -> Result<(), MemoryFault> {
        self.read(vmsa.gpa(), image)
    }
    /// Replace the whole state of the vCPU on VMSA `vmsa` with `image` (a migration's
    /// destination, before the vCPU runs again). Where the page holds the state, the page.
    /// By default the page is written with EFER.SVME clear (as DELETE_VCPU leaves a
    /// VMSA), and the image's EFER goes in last. The snp platform also takes the page's
    /// VMSA flag away meanwhile, so a host cannot run it half written.
    fn vmsa_restore(&mut self, vmsa: PageAddr, image: &[u8; 4096]) -> Result<(), MemoryFault> {
        let fault = MemoryFault { gpa: vmsa.gpa() };
        let at = VmsaField::Efer.offset();
        let mut stopped = *image;
        let field = stopped.get_mut(at..at + 8).ok_or(fault)?;
        let efer = u64::from_le_bytes(field.try_into().map_err(|_| fault)?);
        field.copy_from_slice(&(efer & !abi::hw::EFER_SVME).to_le_bytes());
        let now = self.vmsa_read(vmsa, VmsaField::Efer)?;
        self.vmsa_write(vmsa, VmsaField::Efer, now & !abi::hw::EFER_SVME)?;
        self.write(vmsa.gpa(), &stopped)?;
        self.vmsa_write(vmsa, VmsaField::Efer, efer)
    }

    /// Make ready what the platform needs to serve vCPU `index`, before the creation
    /// commits (the snp platform: the SVSM's own CPU state for that index, from the heap,
    /// and a stack for its VMSA). `Err` (`HwError::NoMemory`): the creation fails and
    /// nothing is created, instead of a vCPU whose calls nobody serves or an SVSM that
    /// stops when its new CPU finds no memory. What is made stays the index's.
    fn prepare_vcpu(&mut self, _index: VcpuIndex) -> Result<(), HwError> {
        Ok(())
    }

    /// A vCPU was created: its VMSA page is a VMSA now, `svsm_pages` are SVSM-owned pages
    /// for its SVSM-side context. The platform makes it runnable (on SNP: tells the host).
    fn vcpu_created(&mut self, index: VcpuIndex, vmsa: PageAddr, apic_id: u32, svsm_pages: &[PageAddr]);
    /// A vCPU a live migration brought was just created ([`Platform::vcpu_created`] from
    /// its VMSA page): the platform takes what CREATE_VCPU leaves at reset from the
    /// source's `image` (on svm: the x87/SSE registers and an event due on the next
    /// entry, which live outside the VMSA page there). Default: nothing, the VMSA page
    /// holds it all.
    fn vcpu_arrived(&mut self, _vmsa: PageAddr, _image: &[u8; 4096]) {}
    /// Stop a vCPU for deletion (DELETE_VCPU's "set VMSA.EFER.SVME = 0").
    /// `Err(HwError::Rc(FAIL_INUSE))` if the VMSA is executing.
    fn vcpu_stop(&mut self, vmsa: PageAddr) -> Result<(), HwError>;
    /// The vCPU is gone; the platform forgets it.
    fn vcpu_deleted(&mut self, index: VcpuIndex);

    /// vTOM support, or `None` if this platform cannot reconfigure vTOM.
    fn vtom_limits(&self) -> Option<VtomLimits>;

    /// Stop the SVSM for good: `why` is logged, the host is told (GHCB termination on
    /// SNP), nothing returns. For the one case where serving on would be worse than
    /// stopping: an undo that failed left the SVSM's records and the RMP disagreeing
    /// (`rollback`). Never for guest input.
    fn fatal(&mut self, why: core::fmt::Arguments<'_>) -> !;

    /// The SVSM heap's use now, where the platform can tell (OCP `memory.heap_bytes_*`).
    fn heap_usage(&self) -> Option<HeapUsage> {
        None
    }

    /// Emit a log line.
    fn log(&mut self, level: Level, args: core::fmt::Arguments<'_>);
    /// The level at and above which lines are logged.
    fn log_level(&self) -> Level;
    fn set_log_level(&mut self, level: Level);
    /// Read the SVSM's log stream from its absolute `offset` since boot (`log_ring`);
    /// `Ok(0)` at its end. Platforms without a log buffer have an empty log.
    fn log_read(&self, _offset: u64, _out: &mut [u8]) -> Result<usize, crate::log_ring::LogLost> {
        Ok(0)
    }
    /// Bytes logged since boot.
    fn log_written(&self) -> u64 {
        0
    }
    /// Copy up to `len` bytes of the log from `offset` into guest memory at `gpa` (one
    /// page's piece, checked by the caller), straight from the ring where the platform
    /// keeps one: at most two copies, for a ring that wraps. Answers how many bytes were
    /// copied (0 at the end of the log). This default goes through a buffer on the stack,
    /// for platforms whose log is not at hand.
    fn log_to_guest(&mut self, offset: u64, gpa: Gpa, len: usize) -> Result<usize, LogCopyError> {
        log_through_buffer(self, offset, gpa, len)
    }

    /// Hand one SNP guest message (already encrypted under VMPCK0) to the PSP and wait for
    /// its answer. On SNP this is the host's guest-request exit; platforms without AMD's
    /// PSP run a software one (`bulwark-softpsp`). The platform never sees the key.
    fn guest_request(&mut self, _request: &[u8; 4096], _response: &mut [u8; 4096]) -> Result<(), GuestRequestError> {
        Err(GuestRequestError::Unavailable)
    }

    /// The certificate table (GHCB extended-guest-request format: ARK, ASK, VCEK) that
    /// lets a verifier check the reports `guest_request` returns; empty if none.
    /// (Borrowed: the kernel copies what it needs, fallibly.)
    fn report_certificates(&mut self) -> &[u8] {
        &[]
    }
}

/// [`Platform::log_to_guest`] through a buffer on the stack: [`Platform::log_read`], then
/// [`Platform::write`], 512 bytes at a time.
pub fn log_through_buffer<P: Platform + ?Sized>(
    p: &mut P,
    offset: u64,
    gpa: Gpa,
    len: usize,
) -> Result<usize, LogCopyError> {
    let mut chunk = [0u8; 512];
    let mut done = 0;
    while done < len {
        let step = (len - done).min(chunk.len());
        let buf = chunk.get_mut(..step).unwrap_or_default();
        let got = p.log_read(offset + done as u64, buf).map_err(LogCopyError::Lost)?;
        let at = Gpa(gpa.0 + done as u64);
        match buf.get(..got) {
            Some(bytes) if got > 0 => p.write(at, bytes).map_err(LogCopyError::Fault)?,
            _ => break,
        }
        done += got;
    }
    Ok(done)
}

/// Why a guest request got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestRequestError {
    /// This platform has no PSP; the request never left.
    Unavailable,
    /// The firmware refused the message (its error code).
    Firmware(u32),
    /// The host did not deliver the message (its error code).
    Host(u32),
}

/// Log through a platform: `log!(p, Warn, "... {}", x)`.
#[macro_export]
macro_rules! log {
    ($p:expr, $lvl:ident, $($arg:tt)*) => {
        $crate::platform::Platform::log($p, $crate::platform::Level::$lvl, format_args!($($arg)*))
    };
}

/// Why a log copy into guest memory stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogCopyError {
    /// The bytes at the offset were overwritten before they were read.
    Lost(crate::log_ring::LogLost),
    /// The guest page refused the write.
    Fault(MemoryFault),
    /// The platform could not reach its log now (another CPU held it too long). Never
    /// reported as 0 bytes: a reader would take that for the end of the log.
    Busy,
}
