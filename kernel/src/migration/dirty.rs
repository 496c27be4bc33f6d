//! Trusted dirty tracking for pre-copy (docs/migration.md "Dirty tracking").

use crate::addr::{PageAddr, PageRange, PageSize};
use crate::bitmap::OwnedBitmap;
use crate::pages::{Held, PageRole};
use crate::platform::{HwError, Platform};
use crate::svsm::Svsm;
use abi::hw::rc::FAIL_SIZEMISMATCH;
use abi::hw::rmpadjust::PERM_WRITE;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// Trusted dirty tracking for a live migration's pre-copy rounds: the SVSM itself
/// write-protects the guest's pages, never trusting the host's dirty log.
///
/// Every validated guest page loses WRITE for the guest's VMPL (RMPADJUST), and every
/// CPU's cached translations are flushed. A guest write then faults; the fault reaches
/// the SVSM ([`Self::write_fault`]: its own nested page fault handler on svm, the host
/// handing it on on snp), which records the page dirty and gives WRITE back, and the
/// guest retries. A host that does not hand a fault on only stalls the guest: its write
/// cannot happen without the SVSM, so no write goes unrecorded. [`Self::take_dirty`]
/// protects the dirty pages again (and flushes) before they are read, so a write after
/// that faults again and lands in the next round.
///
/// Only the guest's own VMPL (its most privileged, the startup vCPU's) is tracked: its
/// permissions change only by the SVSM, so giving WRITE back restores exactly what the
/// SVSM took. A guest that gave a less privileged VMPL write access could change that
/// VMPL's permissions itself, behind the SVSM's back, so tracking refuses to start then
/// ([`DirtyLogError::LowerVmplWrites`]). WRITE goes back only to a page that is still a
/// validated guest page (a page the guest deposited or made a VMSA while tracked stays as
/// the SVSM set it). What the SVSM itself changes for the guest (answers it writes,
/// pages validated, invalidated or handed back) is recorded by the page tracker and joins
/// each round's dirty pages.
///
/// A page inside a 2 MiB RMP entry (the guest validated the whole entry at once) has one
/// set of permissions for its 512 pages: the RMP refuses a 4 KiB RMPADJUST there
/// (FAIL_SIZEMISMATCH), which is how the log learns of it. Such an entry is protected as
/// one (a 2 MiB RMPADJUST), and its first write fault gives WRITE back to all of it and
/// records all 512 pages dirty: a later write to another of its pages cannot fault.
#[derive(Debug)]
pub struct DirtyLog {
    /// The guest's VMPL.
    vmpl: u8,
    /// The pages whose WRITE the log took (and gives back).
    protected: OwnedBitmap,
    /// The 2 MiB entries found (one bit per 2 MiB, by `pfn / 512`).
    huge: OwnedBitmap,
    /// Pages written since the last round.
    dirty: OwnedBitmap,
    /// Pages in the bitmaps (the top of guest RAM).
    pages: u64,
    /// Tracking broke (no memory, a platform error): WRITE was given back everywhere, and
    /// the migration must fail (every later round says so).
    failed: Option<DirtyLogError>,
}

/// Why dirty tracking failed; tracking is then over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyLogError {
    /// No room for the bitmaps.
    NoRoom,
    /// The platform could not read or change a page's permissions.
    Platform { gpa: u64 },
    /// A VMPL below the guest's may write this page; its permissions are the guest's to
    /// change, so its writes cannot be tracked soundly.
    LowerVmplWrites { gpa: u64 },
    /// Tracking broke earlier (this error's cause was returned then).
    Broken,
}

/// Is `addr` a validated guest page the SVSM holds nothing on? (A calling area is the
/// guest's to write, but it moves with its vCPU, not as memory: it is not tracked.)
/// With the page's stripe held, so the answer stands while the caller acts on it.
fn guest_page(held: &mut Held<'_>, addr: PageAddr) -> bool {
    PageRange::new(addr, 1).is_some_and(|one| held.is_validated(addr) && held.check_target(one).is_ok())
}

/// May the guest write `addr` (stripe held): a guest page, or a vCPU's calling area?
fn guest_writable(held: &mut Held<'_>, addr: PageAddr) -> bool {
    guest_page(held, addr) || held.is_validated(addr) && matches!(held.role(addr), Some(PageRole::CallingArea(_)))
}

impl DirtyLog {
    /// Start tracking every validated guest page the SVSM holds nothing on. On an error,
    /// every page protected so far gets WRITE back.
    pub fn start<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P) -> Result<Self, DirtyLogError> {
        let pages = svsm.pages.ram().iter().map(|r| r.end_pfn()).max().unwrap_or(0);
        let bitmap = || OwnedBitmap::new(pages).map_err(|_| DirtyLogError::NoRoom);
        let huge = OwnedBitmap::new(pages.div_ceil(HUGE_PAGES)).map_err(|_| DirtyLogError::NoRoom)?;
        let mut log = Self { vmpl: svsm.guest_vmpl, protected: bitmap()?, dirty: bitmap()?, huge, pages, failed: None };
        let mut protect_all = || -> Result<(), DirtyLogError> {
            for range in svsm.pages.ram() {
                for addr in range.iter() {
                    log.protect(svsm, p, addr)?;
                }
            }
            Ok(())
        };
        if let Err(e) = protect_all() {
            // Best effort: a page the platform refuses to give back stays as it is (the
            // error that matters is the one that stopped the start).
            let _ = log.give_back(svsm, p);
            return Err(e);
        }
        p.flush_guest_tlb();
        Ok(log)
    }

    /// Whether the log took WRITE from `pfn` (an export gives it back in what it sends).
    pub fn protected(&self, pfn: u64) -> bool {
        self.protected.get(pfn)
    }

    /// Whether `pfn` lies in a 2 MiB RMP entry the log found (the export says so, so the
    /// destination validates the entry whole).
    pub fn in_huge_entry(&self, pfn: u64) -> bool {
        self.huge.get(pfn / HUGE_PAGES)
    }

    /// Take WRITE from the guest's VMPL on `addr`, if it is a guest page and has it. Under
    /// the page's stripe lock (which covers its whole 2 MiB region): a deposit or
    /// CREATE_VCPU on another vCPU cannot change the page between the check and the
    /// RMPADJUST. A lower VMPL that may write it (given WRITE since tracking started)
    /// fails the round: its writes cannot be tracked. A page of a 2 MiB entry protects the
    /// entry.
    fn protect<P: Platform + ?Sized>(&mut self, svsm: &Svsm, p: &mut P, addr: PageAddr) -> Result<(), DirtyLogError> {
        let gpa = addr.raw();
        let one = PageRange::new(addr, 1).ok_or(DirtyLogError::Platform { gpa })?;
        let mut held = svsm.pages.lock(addr, addr);
        if !guest_page(&mut held, addr) {
            return Ok(());
        }
        for lower in self.vmpl + 1..=3 {
            let perms = p.vmpl_permissions(addr, lower).ok_or(DirtyLogError::Platform { gpa })?;
            if perms & PERM_WRITE != 0 {
                return Err(DirtyLogError::LowerVmplWrites { gpa });
            }
        }
        let perms = p.vmpl_permissions(addr, self.vmpl).ok_or(DirtyLogError::Platform { gpa })?;
        if perms & PERM_WRITE == 0 {
            // Protected already (a page of an entry protected whole, too), or never
            // writable: either way no write can happen unseen.
            return Ok(());
        }
        // Room first: WRITE must never be gone without a record to give it back by.
        self.protected.reserve(one).map_err(|_| DirtyLogError::NoRoom)?;
        match p.rmpadjust(addr, PageSize::Size4K, self.vmpl, perms & !PERM_WRITE, false) {
            Ok(()) => {
                self.protected.set(one, true);
                // A region found to be one 2 MiB entry takes 4 KiB RMPADJUSTs now: the
                // entry was split (by the host) or given up and its pages validated one by
                // one. Its pages are tracked one by one from here (each still validated
                // one kept the entry's permissions, and its record), and the export no
                // longer says they are in an entry.
                self.forget_entry(addr);
                Ok(())
            }
            Err(HwError::Rc(FAIL_SIZEMISMATCH)) => self.protect_entry(p, addr, perms),
            Err(_) => Err(DirtyLogError::Platform { gpa }),
        }
    }

    /// Protect the 2 MiB entry `addr` lies in (its region's stripe held by the caller;
    /// `perms` the guest VMPL's, with WRITE, the same for every page of the entry).
    fn protect_entry<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        addr: PageAddr,
        perms: u8,
    ) -> Result<(), DirtyLogError> {
        let (base, entry) = huge_entry(addr).ok_or(DirtyLogError::Platform { gpa: addr.raw() })?;
        let region = PageRange::new(PageAddr::from_pfn(base.pfn() / HUGE_PAGES), 1);
        let region = region.ok_or(DirtyLogError::Platform { gpa: base.raw() })?;
        self.huge.reserve(region).map_err(|_| DirtyLogError::NoRoom)?;
        self.protected.reserve(entry).map_err(|_| DirtyLogError::NoRoom)?;
        self.huge.set(region, true);
        p.rmpadjust(base, PageSize::Size2M, self.vmpl, perms & !PERM_WRITE, false)
            .map_err(|_| DirtyLogError::Platform { gpa: base.raw() })?;
        self.protected.set(entry, true);
        Ok(())
    }

    /// Give WRITE back on `addr`, if the log took it and the guest may still write the
    /// page (under its stripe lock, as [`Self::protect`]); on a 2 MiB entry, to all of it.
    fn unprotect<P: Platform + ?Sized>(&mut self, svsm: &Svsm, p: &mut P, addr: PageAddr) -> Result<(), DirtyLogError> {
        let gpa = addr.raw();
        if !self.protected.get(addr.pfn()) {
            return Ok(());
        }
        let mut held = svsm.pages.lock(addr, addr);
        if self.in_huge_entry(addr.pfn()) {
            return self.unprotect_entry(p, &mut held, addr);
        }
        let one = PageRange::new(addr, 1).ok_or(DirtyLogError::Platform { gpa })?;
        // Taken by the log; if the page is the SVSM's now, the SVSM's permissions stand.
        self.protected.set(one, false);
        if !guest_writable(&mut held, addr) {
            return Ok(());
        }
        let perms = p.vmpl_permissions(addr, self.vmpl).ok_or(DirtyLogError::Platform { gpa })?;
        p.rmpadjust(addr, PageSize::Size4K, self.vmpl, perms | PERM_WRITE, false)
            .map_err(|_| DirtyLogError::Platform { gpa })
    }

    /// [`Self::unprotect`] of a 2 MiB entry (its stripe held): one 2 MiB RMPADJUST while
    /// every page of it is validated and the RMP still holds it as one entry. Otherwise
    /// (the guest gave it up, or validated pages of it one by one after the host split
    /// it) every page of it the guest may write gets WRITE back on its own, and its pages
    /// are tracked one by one from here.
    fn unprotect_entry<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        held: &mut Held<'_>,
        addr: PageAddr,
    ) -> Result<(), DirtyLogError> {
        let (base, entry) = huge_entry(addr).ok_or(DirtyLogError::Platform { gpa: addr.raw() })?;
        self.protected.set(entry, false);
        if held.first_unvalidated(entry).is_none() {
            let whole = p
                .vmpl_permissions(base, self.vmpl)
                .ok_or(HwError::Fault)
                .and_then(|perms| p.rmpadjust(base, PageSize::Size2M, self.vmpl, perms | PERM_WRITE, false));
            if whole.is_ok() {
                return Ok(());
            }
        }
        let mut first = Ok(());
        for page in entry.iter() {
            if !guest_writable(held, page) {
                continue;
            }
            let done = p
                .vmpl_permissions(page, self.vmpl)
                .ok_or(HwError::Fault)
                .and_then(|perms| p.rmpadjust(page, PageSize::Size4K, self.vmpl, perms | PERM_WRITE, false));
            if done.is_err() && first.is_ok() {
                first = Err(DirtyLogError::Platform { gpa: page.raw() });
            }
        }
        self.forget_entry(base);
        first
    }

    /// The region of `addr` is no 2 MiB entry (any more).
    fn forget_entry(&mut self, addr: PageAddr) {
        if let Some(region) = PageRange::new(PageAddr::from_pfn(addr.pfn() / HUGE_PAGES), 1) {
            self.huge.set(region, false);
        }
    }

    /// A write by `vmpl` faulted on `gpa`: if the log took WRITE there and the guest may
    /// still write the page, record it dirty and give WRITE back (`true`: the guest
    /// retries). A page whose WRITE is back already (another vCPU's fault came first) is
    /// also `true`. Otherwise nothing changes (`false`: the fault is not the log's).
    pub fn write_fault<P: Platform + ?Sized>(
        &mut self,
        svsm: &Svsm,
        p: &mut P,
        gpa: u64,
        vmpl: u8,
    ) -> Result<bool, DirtyLogError> {
        let addr = PageAddr::from_pfn(gpa >> 12);
        if vmpl != self.vmpl {
            return Ok(false);
        }
        if !self.protected.get(addr.pfn()) {
            return Ok(writable_now(svsm, p, addr, vmpl));
        }
        // Every page of a 2 MiB entry: once WRITE is back, its other pages' writes are
        // not seen.
        let written = match self.in_huge_entry(addr.pfn()) {
            true => huge_entry(addr).map(|(_, entry)| entry),
            false => PageRange::new(addr, 1),
        };
        let written = written.ok_or(DirtyLogError::Platform { gpa })?;
        self.dirty.reserve(written).map_err(|_| DirtyLogError::NoRoom)?;
        self.dirty.set(written, true);
        self.unprotect(svsm, p, addr)?;
        Ok(writable_now(svsm, p, addr, vmpl))
    }

    /// The pages written since the last call (at most `max`; call again for more), each
    /// protected again, with every CPU's translations flushed, before they are returned.
    /// A page that is no longer the guest's is returned too (the export leaves it out).
    pub fn take_dirty<P: Platform + ?Sized>(
        &mut self,
        svsm: &Svsm,
        p: &mut P,
        max: usize,
    ) -> Result<Vec<u64>, DirtyLogError> {
        // What the SVSM itself changed for the guest since the last round (a call's answer
        // written, pages validated, invalidated or handed back) joins what the guest wrote.
        if self.failed.is_some() {
            return Err(DirtyLogError::Broken);
        }
        for pfn in svsm.pages.take_changed().map_err(|_| DirtyLogError::NoRoom)? {
            let one = PageRange::new(PageAddr::from_pfn(pfn), 1).ok_or(DirtyLogError::NoRoom)?;
            self.dirty.reserve(one).map_err(|_| DirtyLogError::NoRoom)?;
            self.dirty.set(one, true);
        }
        let mut taken = Vec::new();
        taken.try_reserve(max.min(4096)).map_err(|_| DirtyLogError::NoRoom)?;
        let mut from = 0;
        let result = (|| {
            while taken.len() < max
                && let Some(pfn) = self.dirty.next_set(from)
            {
                let addr = PageAddr::from_pfn(pfn);
                self.protect(svsm, p, addr)?;
                let one = PageRange::new(addr, 1).ok_or(DirtyLogError::Platform { gpa: addr.raw() })?;
                taken.try_reserve(1).map_err(|_| DirtyLogError::NoRoom)?;
                self.dirty.set(one, false);
                taken.push(pfn);
                from = pfn + 1;
            }
            Ok(())
        })();
        // What was protected must be flushed, whether or not every page was.
        p.flush_guest_tlb();
        result.map(|()| taken)
    }

    /// Tracking broke with `why`: WRITE goes back everywhere, and every later round fails.
    fn fail<P: Platform + ?Sized>(&mut self, svsm: &Svsm, p: &mut P, why: DirtyLogError) {
        if self.failed.is_none() {
            self.failed = Some(why);
        }
        let _ = self.give_back(svsm, p);
    }

    /// Give WRITE back everywhere the log took it (pages still the guest's), going on past
    /// a page the platform refuses; the first error is returned.
    fn give_back<P: Platform + ?Sized>(&mut self, svsm: &Svsm, p: &mut P) -> Result<(), DirtyLogError> {
        let mut first = Ok(());
        let mut from = 0;
        while let Some(pfn) = self.protected.next_set(from) {
            let done = self.unprotect(svsm, p, PageAddr::from_pfn(pfn));
            if first.is_ok() {
                first = done;
            }
            from = pfn + 1;
            if from >= self.pages {
                break;
            }
        }
        first
    }
}

/// Pages in a 2 MiB entry (the `huge` bitmap has one bit per entry).
const HUGE_PAGES: u64 = PageSize::Size2M.pages();

/// The 2 MiB entry `addr` lies in: its first page and its 512 pages.
fn huge_entry(addr: PageAddr) -> Option<(PageAddr, PageRange)> {
    PageRange::huge_page_around(addr).map(|entry| (entry.start(), entry))
}

/// Whether `vmpl` may write `addr` now and the page is the guest's to write: a fault
/// there is stale (another CPU's fault gave WRITE back first), and the guest retries.
fn writable_now<P: Platform + ?Sized>(svsm: &Svsm, p: &P, addr: PageAddr, vmpl: u8) -> bool {
    let mut held = svsm.pages.lock(addr, addr);
    guest_writable(&mut held, addr) && p.vmpl_permissions(addr, vmpl).is_some_and(|perms| perms & PERM_WRITE != 0)
}

impl Svsm {
    /// Start tracking the guest's writes for a live migration's pre-copy ([`DirtyLog`]).
    /// The flag that sends write faults to the log is set first, under the log's lock:
    /// a fault on another CPU while pages are being protected waits for the log.
    pub fn start_dirty_tracking<P: Platform + ?Sized>(&self, p: &mut P) -> Result<(), DirtyLogError> {
        let mut slot = self.dirty.lock();
        if slot.is_some() {
            return Ok(());
        }
        self.tracking.store(true, Ordering::Release);
        if self.pages.start_recording().is_err() {
            self.tracking.store(false, Ordering::Release);
            return Err(DirtyLogError::NoRoom);
        }
        match DirtyLog::start(self, p) {
            Ok(log) => {
                *slot = Some(log);
                Ok(())
            }
            Err(e) => {
                self.pages.stop_recording();
                self.tracking.store(false, Ordering::Release);
                Err(e)
            }
        }
    }

    /// A write by `vmpl` faulted on `gpa` (a nested page fault the platform took, or one
    /// the host handed on): `true` if dirty tracking held it back and has now recorded it
    /// and given the write back, so the guest only retries; `false` if it is not
    /// tracking's.
    pub fn dirty_write_fault<P: Platform + ?Sized>(&self, p: &mut P, gpa: u64, vmpl: u8) -> bool {
        let addr = PageAddr::from_pfn(gpa >> 12);
        if !self.tracking.load(Ordering::Acquire) {
            // A fault taken while tracking ran and handled after it stopped: WRITE is back.
            return writable_now(self, p, addr, vmpl);
        }
        let mut slot = self.dirty.lock();
        let Some(log) = slot.as_mut() else { return writable_now(self, p, addr, vmpl) };
        match log.write_fault(self, p, gpa, vmpl) {
            Ok(retry) => retry,
            Err(e) => {
                // Tracking cannot go on: give every page its WRITE back so the guest is not
                // stuck, and make the migration fail at its next round.
                log.fail(self, p, e);
                true
            }
        }
    }

    /// The pages written since the last round, protected again (see [`DirtyLog::take_dirty`]).
    pub fn take_dirty<P: Platform + ?Sized>(&self, p: &mut P, max: usize) -> Result<Vec<u64>, DirtyLogError> {
        match self.dirty.lock().as_mut() {
            Some(log) => log.take_dirty(self, p, max).inspect_err(|e| log.fail(self, p, *e)),
            None => Ok(Vec::new()),
        }
    }

    /// Whether dirty tracking found `pfn` inside a 2 MiB RMP entry (what an export says).
    pub(crate) fn in_huge_entry(&self, pfn: u64) -> bool {
        self.tracking.load(Ordering::Acquire) && self.dirty.lock().as_ref().is_some_and(|log| log.in_huge_entry(pfn))
    }

    /// Whether dirty tracking took WRITE from `pfn` (what an export gives back).
    pub(crate) fn write_withheld(&self, pfn: u64) -> bool {
        self.tracking.load(Ordering::Acquire) && self.dirty.lock().as_ref().is_some_and(|log| log.protected(pfn))
    }

    /// Stop tracking (the migration ended, or failed and the guest runs on here): WRITE
    /// goes back first, then the flag drops, so no fault in between finds no log.
    pub fn stop_dirty_tracking<P: Platform + ?Sized>(&self, p: &mut P) -> Result<(), DirtyLogError> {
        let mut slot = self.dirty.lock();
        let result = slot.as_mut().map_or(Ok(()), |log| log.give_back(self, p));
        *slot = None;
        self.pages.stop_recording();
        self.tracking.store(false, Ordering::Release);
        result
    }
}
