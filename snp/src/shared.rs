//! `SnpShared`: what every CPU's platform handle shares. Each CPU serves the guest with
//! its own `SnpPlatform` (its own GHCB page and MSR); the little state that is truly the
//! platform's, not a CPU's, lives here.
//!
//! Locking rule: every lock in this module is private and taken only inside the methods
//! below, each of which does a copy or a small update and returns. None of them makes a
//! host exit or calls out of this module while holding its lock, so each lock is a leaf:
//! no CPU ever waits on another CPU's host exit here, and the kernel may hold its own
//! locks while it calls the platform. (The model's host checks at every exit that none
//! of them is held: `SnpShared::locks_held`.)

use crate::console::SerialConsole;
use crate::vmsa::SvsmEntry;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use kernel::log_ring::{LogLost, LogRing};
use kernel::platform::{AtomicLevel, Level};
use spin::{Mutex, Once};

/// Bytes of log the SVSM keeps for the Observability protocol.
pub const LOG_BYTES: usize = 64 * 1024;
/// How often [`SnpShared::log_push`] tries the log's lock before it drops the line: some
/// milliseconds, far longer than any holder copies one line.
const LOG_LOCK_SPINS: u32 = 1 << 22;

/// What the launch decides for the platform before it starts, fixed from then on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnpConfig {
    /// The VMPL the guest runs at.
    pub guest_vmpl: u8,
    /// SEV_FEATURES of every VMSA the SVSM creates (those of the launch).
    pub sev_features: u64,
    /// Serial port for log lines (COM1 = 0x3F8), if any.
    pub console_port: Option<u16>,
    /// The CPU has RMPQUERY (CPUID Fn8000_001F EAX[6]): the permissions of a less
    /// privileged guest VMPL can be read, so its calls can be served. Without it such
    /// callers may name no page (kernel `caller`).
    pub rmpquery: bool,
    /// The level log lines start at (the guest may change it: Observability protocol).
    pub log_level: Level,
}

impl SnpConfig {
    /// A guest at `guest_vmpl` with the launch's `sev_features`; no console, no
    /// RMPQUERY, log level Info.
    pub fn new(guest_vmpl: u8, sev_features: u64) -> Self {
        Self { guest_vmpl, sev_features, console_port: None, rmpquery: false, log_level: Level::Info }
    }
}

/// What the platform knows of a vCPU it made runnable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VcpuRecord {
    pub apic_id: u32,
    /// The VMPL the guest VMSA runs at (AP_CREATE and AP_DESTROY name it).
    pub vmpl: u8,
    /// The SVSM's own VMSA for this vCPU, while it is one.
    pub svsm_vmsa: Option<u64>,
}

/// The platform's state all CPUs share (module docs: each lock is a leaf).
#[derive(Debug)]
pub struct SnpShared {
    pub config: SnpConfig,
    /// The host's answers at start: the C-bit it reports and its HV_FEATURES.
    pub c_bit: u8,
    pub hv_features: u64,
    /// Where a new CPU enters the SVSM, if the SVSM runs its own VMSA per vCPU. Set once
    /// (by the boot CPU before the guest runs), read without a lock.
    svsm_entry: Once<SvsmEntry>,
    log_level: AtomicLevel,
    /// The log ring: held for one line's copy in or one read out.
    log: Mutex<Box<LogRing<LOG_BYTES>>>,
    /// Bytes ever pushed into the log, readable without its lock (the OCP's change events
    /// ask after every call).
    log_written: AtomicU64,
    /// Lines dropped because the log's lock stayed taken ([`Self::log_push`]).
    log_dropped: AtomicU64,
    /// vCPUs made runnable, by guest VMSA gpa (sorted): held for one lookup or update.
    /// AP_CREATION and AP_DESTROY happen between two holds, never inside one. A vector
    /// grown only fallibly: a record is added after a creation has committed, where a
    /// map node that failed to allocate would stop the SVSM (room is reserved before,
    /// [`Self::reserve_vcpu`]).
    vcpus: Mutex<Vec<(u64, VcpuRecord)>>,
    /// The certificate table the host sent with the last report. Held to swap in a new
    /// table or to copy it out (at most 16 KiB).
    certificates: Mutex<Vec<u8>>,
    /// The guest-request pages (request, response, certificates) are one set for all
    /// CPUs: a CPU claims them for its exchange. Never waited on: the kernel's PSP channel
    /// already runs one exchange at a time, so a claim that fails means the caller broke
    /// that rule, and its request fails without leaving (`platform::guest_request`).
    request_pages: AtomicBool,
    pub(crate) console: Option<SerialConsole>,
}

impl SnpShared {
    pub(crate) fn new(config: SnpConfig, c_bit: u8, hv_features: u64, log: Box<LogRing<LOG_BYTES>>) -> Self {
        Self {
            config,
            c_bit,
            hv_features,
            svsm_entry: Once::new(),
            log_level: AtomicLevel::new(config.log_level),
            log: Mutex::new(log),
            log_written: AtomicU64::new(0),
            log_dropped: AtomicU64::new(0),
            vcpus: Mutex::new(Vec::new()),
            certificates: Mutex::new(Vec::new()),
            request_pages: AtomicBool::new(false),
            console: config.console_port.map(SerialConsole::new),
        }
    }

    /// Tell the platform where a new CPU enters the SVSM (each new vCPU then gets its own
    /// VMPL0 VMSA). Only the first call counts; `false` if one came before.
    pub fn set_svsm_entry(&self, entry: SvsmEntry) -> bool {
        let mut first = false;
        self.svsm_entry.call_once(|| {
            first = true;
            entry
        });
        first
    }

    pub fn svsm_entry(&self) -> Option<SvsmEntry> {
        self.svsm_entry.get().copied()
    }

    pub fn log_level(&self) -> Level {
        self.log_level.load()
    }

    pub(crate) fn set_log_level(&self, level: Level) {
        self.log_level.store(level);
    }

    /// Push one line. The lock is waited for only so long: a CPU that holds it can be
    /// stopped by the host for good (a vCPU deleted while its SVSM context logs), and every
    /// other CPU that logs would then spin forever. After that the line is dropped and
    /// counted instead.
    pub(crate) fn log_push(&self, line: &[u8]) {
        for _ in 0..LOG_LOCK_SPINS {
            if let Some(mut log) = self.log.try_lock() {
                log.push(line);
                self.log_written.store(log.written(), Ordering::Release);
                return;
            }
            core::hint::spin_loop();
        }
        self.log_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Lines [`Self::log_push`] dropped because the log's lock stayed taken.
    pub fn log_dropped(&self) -> u64 {
        self.log_dropped.load(Ordering::Relaxed)
    }

    pub fn log_read(&self, offset: u64, out: &mut [u8]) -> Result<usize, LogLost> {
        self.log.lock().read(offset, out)
    }

    pub fn log_written(&self) -> u64 {
        self.log_written.load(Ordering::Acquire)
    }

    /// Hand `copy` the log's bytes from `offset` on (at most `max`), as the ring holds
    /// them: two slices, the second empty unless they wrap. The ring's lock is held while
    /// `copy` runs, so it must only copy (a write into mapped guest memory), never exit
    /// to the host.
    pub(crate) fn log_copy<E>(
        &self,
        offset: u64,
        max: usize,
        copy: impl FnOnce([&[u8]; 2]) -> Result<usize, E>,
        lost: impl FnOnce(LogLost) -> E,
    ) -> Result<usize, E> {
        let log = self.log.lock();
        copy(log.segments(offset, max).map_err(lost)?)
    }

    pub(crate) fn vcpu(&self, vmsa: u64) -> Option<VcpuRecord> {
        let vcpus = self.vcpus.lock();
        let at = vcpus.binary_search_by_key(&vmsa, |(k, _)| *k).ok()?;
        vcpus.get(at).map(|(_, r)| *r)
    }

    /// Room for one more record, so that the [`Self::set_vcpu`] after a creation needs no
    /// memory; `false` without it.
    pub(crate) fn reserve_vcpu(&self) -> bool {
        self.vcpus.lock().try_reserve(1).is_ok()
    }

    /// Record (or replace) the vCPU at `vmsa`; `false` if there was no room for a new one
    /// (not met after [`Self::reserve_vcpu`]).
    pub(crate) fn set_vcpu(&self, vmsa: u64, record: VcpuRecord) -> bool {
        let mut vcpus = self.vcpus.lock();
        match vcpus.binary_search_by_key(&vmsa, |(k, _)| *k) {
            Ok(at) => vcpus.get_mut(at).map(|(_, r)| *r = record).is_some(),
            Err(at) => {
                vcpus.try_reserve(1).is_ok() && {
                    vcpus.insert(at, (vmsa, record));
                    true
                }
            }
        }
    }

    /// The SVSM's VMSA `svsm_vmsa` of the vCPU at `vmsa` is gone (re-checked: only if
    /// the record still names it).
    pub(crate) fn forget_svsm_vmsa(&self, vmsa: u64, svsm_vmsa: u64) {
        let mut vcpus = self.vcpus.lock();
        let at = vcpus.binary_search_by_key(&vmsa, |(k, _)| *k).ok();
        if let Some((_, record)) = at.and_then(|at| vcpus.get_mut(at)).filter(|(_, r)| r.svsm_vmsa == Some(svsm_vmsa)) {
            record.svsm_vmsa = None;
        }
    }

    /// Forget the vCPU at `vmsa`; its record, if it had one.
    pub(crate) fn remove_vcpu(&self, vmsa: u64) -> Option<VcpuRecord> {
        let mut vcpus = self.vcpus.lock();
        let at = vcpus.binary_search_by_key(&vmsa, |(k, _)| *k).ok()?;
        Some(vcpus.remove(at).1)
    }

    /// Copy the cached table into `out` (its capacity kept across calls, so this
    /// allocates only when a table is larger than any before); `false` if there was no
    /// memory for it (`out` is then empty).
    pub(crate) fn copy_certificates(&self, out: &mut Vec<u8>) -> bool {
        out.clear();
        let table = self.certificates.lock();
        if out.try_reserve(table.len()).is_err() {
            return false;
        }
        out.extend_from_slice(&table);
        true
    }

    pub(crate) fn set_certificates(&self, table: Vec<u8>) {
        let old = core::mem::replace(&mut *self.certificates.lock(), table);
        // Freed after the lock is let go.
        drop(old);
    }

    /// Claim the guest-request pages; `None` if another CPU holds them.
    pub(crate) fn claim_request_pages(&self) -> Option<RequestPages<'_>> {
        self.request_pages
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            .then_some(RequestPages(&self.request_pages))
    }

    /// The locks of this module that are held right now, by name. On one thread (the
    /// model) a lock held during a host exit is one its own CPU took and did not give
    /// back: the model's host records it as a violation.
    pub fn locks_held(&self) -> impl Iterator<Item = &'static str> {
        [
            ("log", self.log.is_locked()),
            ("vcpus", self.vcpus.is_locked()),
            ("certificates", self.certificates.is_locked()),
        ]
        .into_iter()
        .filter_map(|(name, held)| held.then_some(name))
    }
}

/// The guest-request pages, claimed by one CPU until this is dropped.
#[derive(Debug)]
pub(crate) struct RequestPages<'a>(&'a AtomicBool);

impl Drop for RequestPages<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CPU that holds the log's lock and never lets go (the host stopped it for good)
    /// costs the others a dropped line, not a hang; the count says so, and lines pushed
    /// once the lock is free again land.
    #[test]
    fn a_log_lock_held_for_good_drops_lines_instead_of_hanging() {
        let shared = SnpShared::new(SnpConfig::new(1, 0), 51, 0, Box::new(LogRing::new()));
        shared.log_push(b"first\n");
        assert_eq!((shared.log_written(), shared.log_dropped()), (6, 0));
        let held = shared.log.lock();
        shared.log_push(b"lost\n");
        assert_eq!((shared.log_written(), shared.log_dropped()), (6, 1));
        drop(held);
        shared.log_push(b"after\n");
        assert_eq!((shared.log_written(), shared.log_dropped()), (12, 1));
    }
}
