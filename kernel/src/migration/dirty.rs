//! Trusted dirty tracking for pre-copy (docs/migration.md "Dirty tracking").

use crate::addr::{PageAddr, PageRange, PageSize};
use crate::bitmap::OwnedBitmap;
use crate::platform::Platform;
use crate::svsm::Svsm;
use abi::hw::rmpadjust::PERM_WRITE;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// Trusted dirty tracking for a live migration's pre-copy rounds: the SVSM itself
/// write-protects the guest's pages, never trusting the host's dirty log.
///
/// Every validated guest page loses WRITE for VMPL1..3 (RMPADJUST), and every CPU's
/// cached translations are flushed. A guest write then faults; the host, which sees the
/// fault, must hand it to the SVSM ([`Self::write_fault`]), which records the page dirty
/// and gives WRITE back, and the guest retries. A host that does not forward the fault
/// only stalls the guest: its write cannot happen without the SVSM, so no write goes
/// untracked. [`Self::take_dirty`] protects the dirty pages again (and flushes) before it
/// returns them, so a write after that faults again and is seen in the next round. A
/// lower VMPL cannot grant a write it lacks (RMPADJUST's rule), and every round removes
/// WRITE from all three VMPLs, so a grant made between rounds is caught too.
#[derive(Debug)]
pub struct DirtyLog {
    /// Per VMPL 1..=3: the pages that VMPL had WRITE on when they were last protected.
    writable: [OwnedBitmap; 3],
    /// Pages written since the last round.
    dirty: OwnedBitmap,
    /// Pages in the bitmaps (the top of guest RAM).
    pages: u64,
}

/// Why dirty tracking failed; tracking is then over (the caller stops it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyLogError {
    /// No room for the bitmaps.
    NoRoom,
    /// The platform could not read or change a page's permissions.
    Platform { gpa: u64 },
}

impl DirtyLog {
    /// Start tracking every validated guest page the SVSM holds nothing on.
    pub fn start<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P) -> Result<Self, DirtyLogError> {
        let pages = svsm.pages.ram().iter().map(|r| r.end_pfn()).max().unwrap_or(0);
        let bitmap = || OwnedBitmap::new(pages).map_err(|_| DirtyLogError::NoRoom);
        let mut log = Self { writable: [bitmap()?, bitmap()?, bitmap()?], dirty: bitmap()?, pages };
        for range in svsm.pages.ram() {
            for addr in range.iter() {
                let Some(one) = PageRange::new(addr, 1) else { continue };
                if svsm.pages.is_validated(addr) && svsm.pages.check_target(one).is_ok() {
                    log.protect(p, addr)?;
                }
            }
        }
        p.flush_guest_tlb();
        Ok(log)
    }

    /// Take WRITE from every lower VMPL on `addr`, noting which had it.
    fn protect<P: Platform + ?Sized>(&mut self, p: &mut P, addr: PageAddr) -> Result<(), DirtyLogError> {
        let gpa = addr.raw();
        let one = PageRange::new(addr, 1).ok_or(DirtyLogError::Platform { gpa })?;
        for (vmpl, writable) in (1u8..=3).zip(self.writable.iter_mut()) {
            let perms = p.vmpl_permissions(addr, vmpl).ok_or(DirtyLogError::Platform { gpa })?;
            let had = perms & PERM_WRITE != 0;
            writable.reserve(one).map_err(|_| DirtyLogError::NoRoom)?;
            writable.set(one, had);
            if had {
                p.rmpadjust(addr, PageSize::Size4K, vmpl, perms & !PERM_WRITE, false)
                    .map_err(|_| DirtyLogError::Platform { gpa })?;
            }
        }
        Ok(())
    }

    /// Give WRITE back on `addr` to the VMPLs that had it.
    fn unprotect<P: Platform + ?Sized>(&self, p: &mut P, addr: PageAddr) -> Result<(), DirtyLogError> {
        let gpa = addr.raw();
        for (vmpl, writable) in (1u8..=3).zip(self.writable.iter()) {
            if writable.get(addr.pfn()) {
                let perms = p.vmpl_permissions(addr, vmpl).ok_or(DirtyLogError::Platform { gpa })?;
                p.rmpadjust(addr, PageSize::Size4K, vmpl, perms | PERM_WRITE, false)
                    .map_err(|_| DirtyLogError::Platform { gpa })?;
            }
        }
        Ok(())
    }

    /// A guest write faulted on `gpa` (the host hands the fault on): record the page
    /// dirty and give WRITE back. `false` for a page not tracked (nothing changes).
    pub fn write_fault<P: Platform + ?Sized>(&mut self, p: &mut P, gpa: u64) -> Result<bool, DirtyLogError> {
        let addr = PageAddr::from_pfn(gpa >> 12);
        if !self.writable.iter().any(|w| w.get(addr.pfn())) {
            return Ok(false);
        }
        let one = PageRange::new(addr, 1).ok_or(DirtyLogError::Platform { gpa })?;
        self.dirty.reserve(one).map_err(|_| DirtyLogError::NoRoom)?;
        self.dirty.set(one, true);
        self.unprotect(p, addr)?;
        Ok(true)
    }

    /// The pages written since the last call (at most `max`; call again for more),
    /// protected again, with every CPU's translations flushed, before they are returned.
    pub fn take_dirty<P: Platform + ?Sized>(&mut self, p: &mut P, max: usize) -> Result<Vec<u64>, DirtyLogError> {
        let mut taken = Vec::new();
        let mut from = 0;
        while taken.len() < max
            && let Some(pfn) = self.dirty.next_set(from)
        {
            let addr = PageAddr::from_pfn(pfn);
            self.protect(p, addr)?;
            let one = PageRange::new(addr, 1).ok_or(DirtyLogError::Platform { gpa: addr.raw() })?;
            self.dirty.set(one, false);
            taken.try_reserve(1).map_err(|_| DirtyLogError::NoRoom)?;
            taken.push(pfn);
            from = pfn + 1;
        }
        p.flush_guest_tlb();
        Ok(taken)
    }

    /// End tracking: every page gets WRITE back where a VMPL had it.
    pub fn stop<P: Platform + ?Sized>(self, p: &mut P) -> Result<(), DirtyLogError> {
        for pfn in 0..self.pages {
            if self.writable.iter().any(|w| w.get(pfn)) {
                self.unprotect(p, PageAddr::from_pfn(pfn))?;
            }
        }
        Ok(())
    }
}

impl Svsm {
    /// Start tracking the guest's writes for a live migration's pre-copy ([`DirtyLog`]).
    pub fn start_dirty_tracking<P: Platform + ?Sized>(&self, p: &mut P) -> Result<(), DirtyLogError> {
        let mut slot = self.dirty.lock();
        if slot.is_some() {
            return Ok(());
        }
        *slot = Some(DirtyLog::start(self, p)?);
        self.tracking.store(true, Ordering::Release);
        Ok(())
    }

    /// A guest write faulted on `gpa` (a nested page fault the platform took, or one the
    /// host handed on): `true` if dirty tracking held it back and has now recorded it and
    /// given the write back, so the guest only retries; `false` if it is not tracking's.
    pub fn dirty_write_fault<P: Platform + ?Sized>(&self, p: &mut P, gpa: u64) -> bool {
        if !self.tracking.load(Ordering::Acquire) {
            return false;
        }
        match self.dirty.lock().as_mut() {
            Some(log) => log.write_fault(p, gpa) == Ok(true),
            None => false,
        }
    }

    /// The pages written since the last round, protected again (see [`DirtyLog::take_dirty`]).
    pub fn take_dirty<P: Platform + ?Sized>(&self, p: &mut P, max: usize) -> Result<Vec<u64>, DirtyLogError> {
        match self.dirty.lock().as_mut() {
            Some(log) => log.take_dirty(p, max),
            None => Ok(Vec::new()),
        }
    }

    /// Stop tracking (the migration ended, or failed and the guest runs on here).
    pub fn stop_dirty_tracking<P: Platform + ?Sized>(&self, p: &mut P) -> Result<(), DirtyLogError> {
        let log = self.dirty.lock().take();
        self.tracking.store(false, Ordering::Release);
        log.map_or(Ok(()), |log| log.stop(p))
    }
}
