//! What every CPU of the `svm` platform shares ([`SvmShared`]): the hardware seam and
//! the platform's state ([`SvmState`]): the software RMP (the page-state authority) with
//! the nested page tables that enforce it, the lock-free view of it the SVSM's own copies
//! check (`access`), the vCPU slots, the permission maps, the certificates, the log level
//! and the refusal counters.
//!
//! Nothing here is one lock around the platform. The RMP and the nested page tables
//! change together under the page-state lock, held for one PVALIDATE or RMPADJUST and
//! never while anything outside the platform runs; each vCPU slot has its own lock
//! (`slots`); the rest is fixed after the launch or atomic. Every lock is a leaf for the
//! kernel: the kernel may hold its own locks while it calls the platform, the platform
//! never calls the kernel while it holds one of its own. Order inside the platform: the
//! page-state lock, then one slot lock (`vmsa_in_use`), then the seam's own leaf locks.
//!
//! The kernel reaches this through a per-CPU handle ([`SvmPlatform`]) that also holds the
//! vCPU its CPU serves.
//!
//! [`SvmPlatform`]: crate::platform::SvmPlatform

use crate::access::AccessMap;
use crate::hw::{PageMem, SvmHw};
use crate::npt;
use crate::slots::Slots;
use crate::vcpu::{Controls, GUEST_VMPL, SvmVcpu};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use kernel::platform::{AtomicLevel, HwError, Level};
use rmp::Rmp;
use spin::{Mutex, MutexGuard};

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
    pub fn new<H: SvmHw<Page = P>>(hw: &H) -> Option<Self> {
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
    /// The page-state authority: what the guest validated, with which permissions. Its
    /// lock is the page-state lock: nested paging and `access` change under it too.
    rmp: Mutex<Rmp>,
    /// Which pages the SVSM may copy, as the RMP says, readable without a lock.
    access: AccessMap,
    /// Moves on after every change of `access` (under the page-state lock): a vCPU's
    /// CPU may remember a page it checked at an epoch and skip the map while the epoch
    /// stays.
    page_epoch: AtomicU64,
    pub slots: Slots<P>,
    pub maps: PermissionMaps<P>,
    /// The certificate table for the PSP's reports (empty without an issuing kit).
    pub certificates: Vec<u8>,
    log_level: AtomicLevel,
    /// Guest accesses refused so far (their log lines are rate-limited by it).
    refused: AtomicU32,
    /// MSR accesses refused so far (likewise).
    refused_msrs: AtomicU32,
}

impl<P> SvmState<P> {
    /// `None` if the heap cannot hold the access map.
    pub fn new(rmp: Rmp, slots: Slots<P>, maps: PermissionMaps<P>, certificates: Vec<u8>) -> Option<Self> {
        Some(Self {
            access: AccessMap::new(rmp.pages())?,
            page_epoch: AtomicU64::new(0),
            rmp: Mutex::new(rmp),
            slots,
            maps,
            certificates,
            log_level: AtomicLevel::new(Level::Info),
            refused: AtomicU32::new(0),
            refused_msrs: AtomicU32::new(0),
        })
    }

    /// The RMP, under the page-state lock (for a look; changes go through the platform).
    pub fn rmp(&self) -> MutexGuard<'_, Rmp> {
        self.rmp.lock()
    }

    pub(crate) fn lock_rmp(&self) -> MutexGuard<'_, Rmp> {
        self.rmp.lock()
    }

    pub(crate) fn access(&self) -> &AccessMap {
        &self.access
    }

    /// How often `access` changed so far.
    pub(crate) fn page_epoch(&self) -> u64 {
        self.page_epoch.load(Ordering::Acquire)
    }

    pub fn log_level(&self) -> Level {
        self.log_level.load()
    }

    pub fn set_log_level(&self, level: Level) {
        self.log_level.store(level);
    }

    /// Count a refused guest access; `Some(count)` if it is worth a log line.
    pub(crate) fn count_refusal(&self) -> Option<u32> {
        let n = self.refused.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        worth_logging(n).then_some(n)
    }

    /// Count a refused MSR access; `Some(count)` if it is worth a log line.
    pub(crate) fn count_msr_refusal(&self) -> Option<u32> {
        let n = self.refused_msrs.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        worth_logging(n).then_some(n)
    }
}

/// Log the first 32 of a kind in full, then every 100th: a guest cannot flood the log.
pub(crate) fn worth_logging(count: u32) -> bool {
    count <= 32 || count.is_multiple_of(100)
}

/// The platform every CPU shares.
#[derive(Debug)]
pub struct SvmShared<H: SvmHw> {
    pub hw: H,
    pub state: SvmState<H::Page>,
}

impl<H: SvmHw> SvmShared<H> {
    /// What a new vCPU's VMCB points at.
    pub fn controls(&self) -> Controls {
        Controls {
            npt_root: self.hw.npt_root(),
            msrpm: self.state.maps.msr.phys(),
            iopm: self.state.maps.io.phys(),
            next_rip_saved: self.hw.next_rip_saved(),
        }
    }

    /// Make nested paging and the access map follow `rmp` for `pfns`. The caller holds
    /// the page-state lock (`rmp` is its guard) and makes every vCPU forget the old
    /// translations afterwards.
    ///
    /// A whole 2 MiB region whose pages all map alike becomes one 2 MiB leaf (what a
    /// 2 MiB PVALIDATE or RMPADJUST and the launch's ranges give); anything else is mapped
    /// page by page.
    pub(crate) fn follow(&self, rmp: &Rmp, pfns: core::ops::Range<u64>) -> Result<(), HwError> {
        let mut followed = Ok(());
        let mut pfn = pfns.start;
        while pfn < pfns.end {
            let whole = pfn.is_multiple_of(npt::REGION_PAGES) && pfns.end - pfn >= npt::REGION_PAGES;
            let step = if whole { npt::REGION_PAGES } else { 1 };
            for p in pfn..pfn + step {
                self.state.access.set(p, rmp.allows(p, 0, 0));
            }
            let set = match whole.then(|| npt::uniform_access(rmp, pfn, GUEST_VMPL)).flatten() {
                Some(access) => self.hw.npt_set_region(pfn << 12, access),
                None => {
                    (pfn..pfn + step).try_for_each(|p| self.hw.npt_set(p << 12, npt::access_for(rmp, p, GUEST_VMPL)))
                }
            };
            if set.is_err() {
                followed = Err(HwError::NoMemory);
                break;
            }
            pfn += step;
        }
        self.state.page_epoch.fetch_add(1, Ordering::Release);
        followed
    }

    /// Make the nested page tables and the access map follow the RMP for `pfns`, and
    /// make every vCPU forget the old translations before it runs again: those out on a
    /// CPU are kicked, so the change has reached every CPU when this returns.
    pub fn sync(&self, pfns: core::ops::Range<u64>) -> Result<(), HwError> {
        let followed = self.follow(&self.state.lock_rmp(), pfns);
        self.flush(None);
        followed
    }

    /// Every vCPU but `except` (which its CPU holds and flushes itself) flushes its TLB
    /// before it runs again; the CPUs running one are kicked (no lock held meanwhile).
    pub(crate) fn flush(&self, except: Option<u32>) {
        for cpu in self.state.slots.flush_all(except).iter() {
            self.hw.kick(cpu);
        }
    }

    /// Pause the guest (a migration's last round) from `cpu`, which holds no vCPU: no
    /// vCPU is taken out from now on, and those out on other CPUs are called back.
    /// Returns once every vCPU is in the SVSM's hands.
    pub fn pause(&self, cpu: u32) {
        let out = self.state.slots.pause();
        for other in out.iter().filter(|other| *other != cpu) {
            self.hw.kick(other);
        }
        // A kicked CPU puts its vCPU back right after it leaves the guest.
        while !self.state.slots.all_here() {
            core::hint::spin_loop();
        }
    }

    /// Let the paused guest run again.
    pub fn resume(&self) {
        self.state.slots.resume();
        self.hw.vcpus_changed();
    }

    /// Is the guest paused?
    pub fn paused(&self) -> bool {
        self.state.slots.paused()
    }

    /// `f` on vCPU `index`, if it is in the SVSM's hands (not out on a CPU).
    pub fn with_vcpu<R>(&self, index: u32, f: impl FnOnce(&SvmVcpu<H::Page>) -> R) -> Option<R> {
        self.state.slots.with(index, |v| f(v))
    }

    /// Log a line the platform decided to emit, if its level is logged.
    pub(crate) fn log(&self, level: Level, args: core::fmt::Arguments<'_>) {
        if level <= self.state.log_level() {
            self.hw.log(level, args);
        }
    }
}
