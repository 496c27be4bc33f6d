//! A software Reverse Map Table and the two instructions an SVSM runs on it. It is the
//! RMP of the hosted SEV-SNP model, and the page-state authority of the `svm` platform,
//! where no hardware RMP exists (nested paging then enforces what this table says).
//!
//! Semantics (AMD APM vol. 3, PVALIDATE and RMPADJUST), as modelled:
//! - Both instructions run at VMPL0 here (the SVSM). A page that is not assigned to the
//!   guest faults (an RMP #NPF the host would have to resolve): `HwError::Fault`.
//! - A 2 MiB operation needs a 2 MiB aligned address (else FAIL_INPUT) and a page the
//!   host assigned as 2 MiB (else FAIL_SIZEMISMATCH); a 4 KiB operation on a page inside
//!   a 2 MiB RMP entry is FAIL_SIZEMISMATCH.
//! - PVALIDATE to the state the page already has changes nothing and reports CF = 1.
//! - RMPADJUST can only target a less privileged VMPL (1..=3): target 0 is
//!   FAIL_PERMISSION, above 3 FAIL_INPUT. Setting the VMSA flag needs a 4 KiB page.
//!   Clearing the VMSA flag of a VMSA that is running is FAIL_INUSE.
//! - The APM does not say whether RMPADJUST needs a validated page; the model allows it.
//! - When the host (re)assigns a page, validation is cleared and VMPL 1..=3 lose all
//!   permissions; VMPL0 always has full access to validated pages.

#![no_std]
// The svm platform's RMP answers guest-driven requests: no panics, no indexing that can
// go out of bounds, no silent truncation (tests may do all of these).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::cast_possible_truncation
    )
)]

extern crate alloc;

use abi::hw::rc::{FAIL_INPUT, FAIL_INUSE, FAIL_PERMISSION, FAIL_SIZEMISMATCH};
use alloc::vec;
use alloc::vec::Vec;
use kernel::platform::{HwError, PvalidateEffect};

pub const PAGES_PER_2M: u64 = 512;
/// Entries in one 2 MiB chunk of the table.
const CHUNK_ENTRIES: usize = 512;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RmpEntry {
    pub assigned: bool,
    pub validated: bool,
    /// Part of a 2 MiB RMP entry.
    pub huge: bool,
    pub vmsa: bool,
    /// Permissions of VMPL 0..=3 (abi::hw::rmpadjust::PERM_*); VMPL0's is implied.
    pub perms: [u8; 4],
}

/// The table, in 2 MiB chunks: a chunk whose 512 entries are all the same is one entry
/// (its template); a chunk gets its own 512 entries once one of them differs. A guest's
/// RAM starts as a few large uniform runs, so a model of a 4 TiB guest costs 2 MiB of
/// templates plus what the guest changed, not 8 GiB.
#[derive(Debug)]
pub struct Rmp {
    pages: u64,
    templates: Vec<RmpEntry>,
    chunks: Vec<Option<alloc::boxed::Box<[RmpEntry]>>>,
}

/// Page size operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    Small,
    Huge,
}

impl Rmp {
    pub fn new(pages: u64) -> Self {
        // A usize holds any chunk count of a 52-bit address space.
        let chunks = usize::try_from(pages.div_ceil(PAGES_PER_2M)).unwrap_or(0);
        let mut none = Vec::with_capacity(chunks);
        none.resize_with(chunks, || None);
        Self { pages, templates: vec![RmpEntry::default(); chunks], chunks: none }
    }

    pub fn pages(&self) -> u64 {
        self.pages
    }

    pub fn entry(&self, pfn: u64) -> Option<&RmpEntry> {
        if pfn >= self.pages {
            return None;
        }
        let (c, i) = ((pfn / PAGES_PER_2M) as usize, (pfn % PAGES_PER_2M) as usize);
        match self.chunks.get(c)? {
            Some(entries) => entries.get(i),
            None => self.templates.get(c),
        }
    }

    /// The entry of `pfn`, for a change. `None` beyond the table, or when the chunk's own
    /// entries cannot be allocated (the caller treats that page as faulting).
    pub fn entry_mut(&mut self, pfn: u64) -> Option<&mut RmpEntry> {
        if pfn >= self.pages {
            return None;
        }
        let (c, i) = ((pfn / PAGES_PER_2M) as usize, (pfn % PAGES_PER_2M) as usize);
        let template = *self.templates.get(c)?;
        let slot = self.chunks.get_mut(c)?;
        if slot.is_none() {
            let mut entries = Vec::new();
            entries.try_reserve_exact(CHUNK_ENTRIES).ok()?;
            entries.resize(CHUNK_ENTRIES, template);
            *slot = Some(entries.into_boxed_slice());
        }
        slot.as_mut()?.get_mut(i)
    }

    /// Set every entry of the whole 2 MiB chunk `c` to `entry` (no per-page storage).
    fn set_chunk(&mut self, c: usize, entry: RmpEntry) {
        if let (Some(t), Some(slot)) = (self.templates.get_mut(c), self.chunks.get_mut(c)) {
            *t = entry;
            *slot = None;
        }
    }

    /// Apply `f` to the entries of `[pfn, pfn + count)`, whole chunks at once.
    fn update(&mut self, pfn: u64, count: u64, f: impl Fn(&mut RmpEntry)) {
        let end = pfn.saturating_add(count).min(self.pages);
        let mut p = pfn;
        while p < end {
            let c = p / PAGES_PER_2M;
            let chunk_end = (c + 1) * PAGES_PER_2M;
            if p.is_multiple_of(PAGES_PER_2M) && chunk_end <= end {
                let mut e = self.entry(p).copied().unwrap_or_default();
                f(&mut e);
                let uniform = self.chunks.get(c as usize).is_some_and(Option::is_none);
                if uniform {
                    self.set_chunk(c as usize, e);
                } else {
                    for q in p..chunk_end {
                        if let Some(e) = self.entry_mut(q) {
                            f(e);
                        }
                    }
                    // A chunk whose entries all agree again keeps one.
                    let same = self.chunks.get(c as usize).and_then(Option::as_ref).and_then(|entries| {
                        let first = *entries.first()?;
                        entries.iter().all(|e| *e == first).then_some(first)
                    });
                    if let Some(first) = same {
                        self.set_chunk(c as usize, first);
                    }
                }
                p = chunk_end;
            } else {
                if let Some(e) = self.entry_mut(p) {
                    f(e);
                }
                p += 1;
            }
        }
    }

    /// Host: assign `count` pages from `pfn` to the guest (RMPUPDATE), as 4 KiB pages.
    pub fn host_assign(&mut self, pfn: u64, count: u64) {
        let assigned =
            RmpEntry { assigned: true, perms: [abi::hw::rmpadjust::PERM_ALL, 0, 0, 0], ..Default::default() };
        self.update(pfn, count, |e| *e = assigned);
    }

    /// Host: assign a 2 MiB page (RMPUPDATE with the 2 MiB size).
    pub fn host_assign_huge(&mut self, pfn: u64) {
        self.host_assign(pfn, PAGES_PER_2M);
        self.update(pfn, PAGES_PER_2M, |e| e.huge = true);
    }

    /// Host: take pages back (make them shared / hypervisor-owned).
    pub fn host_unassign(&mut self, pfn: u64, count: u64) {
        self.update(pfn, count, |e| *e = RmpEntry::default());
    }

    /// Checks common to both instructions; returns the pfn range operated on.
    fn operand(&self, gpa: u64, size: Size) -> Result<core::ops::Range<u64>, HwError> {
        let pfn = gpa >> 12;
        let count = match size {
            Size::Small => 1,
            Size::Huge => {
                if !pfn.is_multiple_of(PAGES_PER_2M) {
                    return Err(HwError::Rc(FAIL_INPUT));
                }
                PAGES_PER_2M
            }
        };
        let range = pfn..pfn + count;
        let first = self.entry(pfn).ok_or(HwError::Fault)?;
        if !first.assigned || self.entry(range.end - 1).is_none() {
            return Err(HwError::Fault);
        }
        let huge_ok = match size {
            Size::Small => !first.huge,
            Size::Huge => range.clone().all(|p| self.entry(p).is_some_and(|e| e.huge && e.assigned)),
        };
        if !huge_ok {
            return Err(HwError::Rc(FAIL_SIZEMISMATCH));
        }
        Ok(range)
    }

    pub fn pvalidate(&mut self, gpa: u64, size: Size, validate: bool) -> Result<PvalidateEffect, HwError> {
        let range = self.operand(gpa, size)?;
        if self.entry(range.start).is_some_and(|e| e.validated == validate) {
            return Ok(PvalidateEffect::Unchanged);
        }
        if self.materialize(range.clone()).is_none() {
            return Err(HwError::Fault);
        }
        self.update(range.start, range.end - range.start, |e| e.validated = validate);
        Ok(PvalidateEffect::Changed)
    }

    pub fn rmpadjust(
        &mut self,
        gpa: u64,
        size: Size,
        target_vmpl: u8,
        perms: u8,
        vmsa: bool,
        vmsa_running: impl Fn(u64) -> bool,
    ) -> Result<(), HwError> {
        if target_vmpl == 0 {
            return Err(HwError::Rc(FAIL_PERMISSION));
        }
        if target_vmpl > 3 || (vmsa && size == Size::Huge) || perms & !abi::hw::rmpadjust::PERM_ALL != 0 {
            return Err(HwError::Rc(FAIL_INPUT));
        }
        let range = self.operand(gpa, size)?;
        if !vmsa && self.entry(range.start).is_some_and(|e| e.vmsa) && vmsa_running(range.start) {
            return Err(HwError::Rc(FAIL_INUSE));
        }
        if self.materialize(range.clone()).is_none() {
            return Err(HwError::Fault);
        }
        self.update(range.start, range.end - range.start, |e| {
            // `target_vmpl` is at most 3 (checked above).
            if let Some(p) = e.perms.get_mut(usize::from(target_vmpl)) {
                *p = perms;
            }
            e.vmsa = vmsa;
        });
        Ok(())
    }

    /// Give the chunks a 4 KiB part of `range` touches their own entries now, so the change
    /// that follows cannot half-fail; `None` if the heap cannot hold them.
    fn materialize(&mut self, range: core::ops::Range<u64>) -> Option<()> {
        let whole = range.start.is_multiple_of(PAGES_PER_2M) && range.end - range.start == PAGES_PER_2M;
        if !whole {
            for p in [range.start, range.end - 1] {
                self.entry_mut(p)?;
            }
        }
        Some(())
    }

    /// May software at `vmpl` access every byte of `[gpa, gpa + len)` with `need`?
    /// `Err` names the first refused address.
    pub fn check_access(&self, gpa: u64, len: usize, vmpl: u8, need: u8) -> Result<(), u64> {
        if len == 0 {
            return Ok(());
        }
        let last = gpa.checked_add(len as u64 - 1).ok_or(gpa)?;
        match (gpa >> 12..=last >> 12).find(|pfn| !self.allows(*pfn, vmpl, need)) {
            Some(pfn) => Err((pfn << 12).max(gpa)),
            None => Ok(()),
        }
    }

    /// The permissions of `vmpl` on the page as RMPQUERY reports them for an access: 0
    /// unless the page is assigned, validated and not a VMSA.
    pub fn vmpl_perms(&self, pfn: u64, vmpl: u8) -> u8 {
        match self.entry(pfn) {
            Some(e) if e.assigned && e.validated && !e.vmsa => e.perms.get(usize::from(vmpl & 3)).copied().unwrap_or(0),
            _ => 0,
        }
    }

    /// May software at `vmpl` access the page with `need` permission bits?
    pub fn allows(&self, pfn: u64, vmpl: u8, need: u8) -> bool {
        match self.entry(pfn) {
            Some(e) if e.assigned && e.validated => {
                vmpl == 0 || (!e.vmsa && e.perms.get(usize::from(vmpl & 3)).is_some_and(|p| p & need == need))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::hw::rmpadjust::{PERM_ALL, PERM_READ};

    fn rmp() -> Rmp {
        let mut r = Rmp::new(2048);
        r.host_assign(0, 1024);
        r.host_assign_huge(1024);
        r
    }

    #[test]
    fn pvalidate_reports_no_change_with_cf() {
        let mut r = rmp();
        assert_eq!(r.pvalidate(0x1000, Size::Small, true), Ok(PvalidateEffect::Changed));
        assert_eq!(r.pvalidate(0x1000, Size::Small, true), Ok(PvalidateEffect::Unchanged));
        assert_eq!(r.pvalidate(0x1000, Size::Small, false), Ok(PvalidateEffect::Changed));
    }

    #[test]
    fn size_mismatch_both_ways() {
        let mut r = rmp();
        assert_eq!(r.pvalidate(0, Size::Huge, true), Err(HwError::Rc(FAIL_SIZEMISMATCH)));
        assert_eq!(r.pvalidate(1024 << 12, Size::Small, true), Err(HwError::Rc(FAIL_SIZEMISMATCH)));
        assert_eq!(r.pvalidate(1024 << 12, Size::Huge, true), Ok(PvalidateEffect::Changed));
        assert!(r.entry(1024 + 511).unwrap().validated);
        assert_eq!(r.pvalidate((1024 + 1) << 12, Size::Huge, true), Err(HwError::Rc(FAIL_INPUT)));
    }

    #[test]
    fn unassigned_pages_fault() {
        let mut r = rmp();
        r.host_unassign(5, 1);
        assert_eq!(r.pvalidate(5 << 12, Size::Small, true), Err(HwError::Fault));
        assert_eq!(r.pvalidate(4096 << 12, Size::Small, true), Err(HwError::Fault));
    }

    #[test]
    fn rmpadjust_targets_and_permissions() {
        let mut r = rmp();
        r.pvalidate(0x2000, Size::Small, true).unwrap();
        assert!(!r.allows(2, 1, PERM_READ));
        assert_eq!(r.rmpadjust(0x2000, Size::Small, 0, PERM_ALL, false, |_| false), Err(HwError::Rc(FAIL_PERMISSION)));
        assert_eq!(r.rmpadjust(0x2000, Size::Small, 4, PERM_ALL, false, |_| false), Err(HwError::Rc(FAIL_INPUT)));
        r.rmpadjust(0x2000, Size::Small, 1, PERM_ALL, false, |_| false).unwrap();
        assert!(r.allows(2, 1, PERM_READ));
        assert!(!r.allows(2, 2, PERM_READ));
        r.rmpadjust(0x2000, Size::Small, 1, 0, true, |_| false).unwrap();
        assert!(!r.allows(2, 1, PERM_READ), "a VMSA page is not accessible to lower VMPLs");
        assert_eq!(r.rmpadjust(0x2000, Size::Small, 1, PERM_ALL, false, |_| true), Err(HwError::Rc(FAIL_INUSE)));
    }

    #[test]
    fn a_4_tib_table_costs_its_templates_until_pages_differ() {
        let pages = 1u64 << 30; // 4 TiB
        let mut r = Rmp::new(pages);
        r.host_assign(0, pages);
        assert!(r.chunks.iter().all(Option::is_none), "uniform chunks keep no entries");
        let top = pages - 1;
        assert_eq!(r.pvalidate(top << 12, Size::Small, true), Ok(PvalidateEffect::Changed));
        assert!(r.entry(top).unwrap().validated && !r.entry(top - 1).unwrap().validated);
        assert_eq!(r.chunks.iter().filter(|c| c.is_some()).count(), 1);
        // Validating the rest of that chunk page by page, then assigning it whole, makes
        // it uniform again.
        r.host_assign(top + 1 - PAGES_PER_2M, PAGES_PER_2M);
        assert!(r.chunks.iter().all(Option::is_none));
    }

    #[test]
    fn reassignment_drops_validation_and_permissions() {
        let mut r = rmp();
        r.pvalidate(0x3000, Size::Small, true).unwrap();
        r.rmpadjust(0x3000, Size::Small, 1, PERM_ALL, false, |_| false).unwrap();
        r.host_assign(3, 1);
        assert!(!r.allows(3, 1, PERM_READ));
        assert!(!r.allows(3, 0, PERM_READ));
    }
}
