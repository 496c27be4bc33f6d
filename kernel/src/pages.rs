//! Who owns each guest page, and which pages are validated.
//!
//! Owns the SVSM's view of guest-physical memory: the RAM map, the SVSM's own region,
//! the role of every page the SVSM has taken over (deposited pages, VMSAs, calling
//! areas), and the validation bitmap: one bit per 4 KiB page, set while the page is
//! validated (the "validation bitmap" of the COCONUT design talk). Every gpa a guest
//! hands the SVSM is checked here before any access (spec 58019 sections 6.2-6.6).
//!
//! Two kinds of check:
//! - a *parameter* page is one the SVSM copies from or to (a list, an operation
//!   structure). It must be validated RAM that the SVSM does not own and that is not a
//!   VMSA; calling areas are allowed because guests pass parameters in them.
//! - a *target* page is one a call acts upon (PVALIDATE, DEPOSIT, CREATE_VCPU). It must be
//!   RAM with no role at all.

use crate::addr::{PageAddr, PageRange};
use crate::bitmap::PageBitmap;
use crate::error::AddressConflict;
use crate::vcpu::VcpuIndex;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// The role of a page the SVSM has taken from the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageRole {
    /// Deposited with DEPOSIT_MEM; belongs to the page pool.
    Deposited,
    /// The VMSA of a vCPU.
    Vmsa(VcpuIndex),
    /// The page holding a vCPU's calling area.
    CallingArea(VcpuIndex),
    /// The SNP secrets page: the guest may read it, never have the SVSM write it.
    Secrets,
}

/// Invalid memory layout handed to the SVSM at start-up (a host or launch error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    NoRam,
    RamOverlaps,
    SvsmOutsideRam,
    /// RAM so large the bitmap cannot be allocated.
    TooLarge,
}

#[derive(Debug)]
pub struct PageTracker {
    /// Sorted, disjoint.
    ram: Vec<PageRange>,
    svsm: PageRange,
    /// Bit set = the page is validated.
    validated: PageBitmap,
    /// Bit set = the page has an entry in `roles` (a fast negative test).
    has_role: PageBitmap,
    roles: BTreeMap<u64, PageRole>,
}

/// The largest guest the bitmap covers: 1 TiB (a 32 MiB bitmap).
const MAX_TOP_PFN: u64 = 1 << 28;

impl PageTracker {
    pub fn new(ram: &[PageRange], svsm: PageRange) -> Result<Self, LayoutError> {
        let mut ram = ram.to_vec();
        ram.sort_by_key(|r| r.start_pfn());
        if ram.is_empty() {
            return Err(LayoutError::NoRam);
        }
        if ram.windows(2).any(|w| w[0].end_pfn() > w[1].start_pfn()) {
            return Err(LayoutError::RamOverlaps);
        }
        let top_pfn = ram.last().map_or(0, |r| r.end_pfn());
        if top_pfn > MAX_TOP_PFN {
            return Err(LayoutError::TooLarge);
        }
        let mut t = Self {
            ram,
            svsm,
            validated: PageBitmap::new(top_pfn),
            has_role: PageBitmap::new(top_pfn),
            roles: BTreeMap::new(),
        };
        if !t.is_ram(svsm) {
            return Err(LayoutError::SvsmOutsideRam);
        }
        // The SVSM's region was validated at launch.
        t.set_validated(svsm, true);
        Ok(t)
    }

    pub fn svsm_region(&self) -> PageRange {
        self.svsm
    }

    /// Every page of `range` is guest RAM.
    pub fn is_ram(&self, range: PageRange) -> bool {
        // RAM ranges are disjoint and sorted, but may touch; walk them in order.
        let mut next = range.start_pfn();
        for r in &self.ram {
            if r.end_pfn() <= next {
                continue;
            }
            if r.start_pfn() > next {
                return false;
            }
            next = r.end_pfn();
            if next >= range.end_pfn() {
                return true;
            }
        }
        false
    }

    /// Pages of `range` that have a role, in order; the bitmap answers the common case
    /// (none) without walking the tree.
    fn roles_in(&self, range: PageRange) -> impl Iterator<Item = (u64, PageRole)> + '_ {
        let span = if self.has_role.any(range) { range.start_pfn()..range.end_pfn() } else { 0..0 };
        self.roles.range(span).map(|(pfn, role)| (*pfn, *role))
    }

    /// Check a page range the SVSM will copy parameters from (`write` false) or to.
    pub fn check_param(&self, range: PageRange, write: bool) -> Result<(), (PageAddr, AddressConflict)> {
        self.check_common(range)?;
        for (pfn, role) in self.roles_in(range) {
            let why = match role {
                PageRole::CallingArea(_) => continue,
                PageRole::Secrets if !write => continue,
                PageRole::Secrets => AddressConflict::Secrets,
                PageRole::Deposited => AddressConflict::Deposited,
                PageRole::Vmsa(_) => AddressConflict::Vmsa,
            };
            return Err((PageAddr::from_pfn(pfn), why));
        }
        if let Some(pfn) = self.first_unvalidated(range) {
            return Err((PageAddr::from_pfn(pfn), AddressConflict::NotValidated));
        }
        Ok(())
    }

    /// Check a page range a call will act upon: RAM that the SVSM has no claim on.
    /// Validation state is not checked; callers that need it ask for it.
    pub fn check_target(&self, range: PageRange) -> Result<(), (PageAddr, AddressConflict)> {
        self.check_common(range)?;
        if let Some((pfn, role)) = self.roles_in(range).next() {
            let why = match role {
                PageRole::CallingArea(_) => AddressConflict::CallingArea,
                PageRole::Secrets => AddressConflict::Secrets,
                PageRole::Deposited => AddressConflict::Deposited,
                PageRole::Vmsa(_) => AddressConflict::Vmsa,
            };
            return Err((PageAddr::from_pfn(pfn), why));
        }
        Ok(())
    }

    fn check_common(&self, range: PageRange) -> Result<(), (PageAddr, AddressConflict)> {
        if !self.is_ram(range) {
            return Err((range.start(), AddressConflict::NotRam));
        }
        if range.overlaps(self.svsm) {
            let first = range.start_pfn().max(self.svsm.start_pfn());
            return Err((PageAddr::from_pfn(first), AddressConflict::SvsmImage));
        }
        Ok(())
    }

    pub fn role(&self, page: PageAddr) -> Option<PageRole> {
        self.roles.get(&page.pfn()).copied()
    }

    pub fn set_role(&mut self, page: PageAddr, role: PageRole) {
        self.roles.insert(page.pfn(), role);
        if let Some(one) = PageRange::new(page, 1) {
            self.has_role.set(one, true);
        }
    }

    pub fn clear_role(&mut self, page: PageAddr) {
        self.roles.remove(&page.pfn());
        if let Some(one) = PageRange::new(page, 1) {
            self.has_role.set(one, false);
        }
    }

    pub fn is_validated(&self, page: PageAddr) -> bool {
        self.validated.get(page.pfn())
    }

    /// First page of `range` that is not validated (pages beyond RAM count as such).
    pub fn first_unvalidated(&self, range: PageRange) -> Option<u64> {
        self.validated.first_clear(range)
    }

    /// Some page of `range` is validated.
    pub fn any_validated(&self, range: PageRange) -> bool {
        self.validated.any(range)
    }

    /// Every page of `range` is validated.
    pub fn all_validated(&self, range: PageRange) -> bool {
        self.first_unvalidated(range).is_none()
    }

    /// Record the validation state of `range`. Pages beyond RAM are ignored.
    pub fn set_validated(&mut self, range: PageRange, valid: bool) {
        self.validated.set(range, valid);
    }

    /// Number of validated pages (for statistics).
    pub fn validated_pages(&self) -> u64 {
        self.validated.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(pfn: u64, pages: u64) -> PageRange {
        PageRange::new(PageAddr::from_pfn(pfn), pages).unwrap()
    }

    fn tracker() -> PageTracker {
        // RAM 0..0x100 and 0x200..0x400 pages; SVSM at 0xC0..0xD0.
        PageTracker::new(&[range(0x200, 0x200), range(0, 0x100)], range(0xC0, 0x10)).unwrap()
    }

    #[test]
    fn ram_holes_are_not_ram() {
        let t = tracker();
        assert!(t.is_ram(range(0, 0x100)));
        assert!(t.is_ram(range(0x200, 0x200)));
        assert!(!t.is_ram(range(0xFF, 2)));
        assert!(!t.is_ram(range(0x400, 1)));
        assert_eq!(t.check_target(range(0x100, 1)), Err((PageAddr::from_pfn(0x100), AddressConflict::NotRam)));
    }

    #[test]
    fn svsm_region_is_refused_and_prevalidated() {
        let t = tracker();
        assert_eq!(t.check_target(range(0xBF, 2)).unwrap_err().1, AddressConflict::SvsmImage);
        assert!(t.all_validated(range(0xC0, 0x10)));
        assert!(!t.is_validated(PageAddr::from_pfn(0xD0)));
    }

    #[test]
    fn calling_areas_are_parameters_but_not_targets() {
        let mut t = tracker();
        t.set_validated(range(0, 0x20), true);
        t.set_role(PageAddr::from_pfn(5), PageRole::CallingArea(VcpuIndex(0)));
        assert!(t.check_param(range(5, 1), true).is_ok());
        assert_eq!(t.check_target(range(4, 2)).unwrap_err(), (PageAddr::from_pfn(5), AddressConflict::CallingArea));
        t.set_role(PageAddr::from_pfn(6), PageRole::Vmsa(VcpuIndex(1)));
        assert_eq!(t.check_param(range(6, 1), false).unwrap_err().1, AddressConflict::Vmsa);
        t.set_role(PageAddr::from_pfn(7), PageRole::Secrets);
        assert!(t.check_param(range(7, 1), false).is_ok(), "the secrets page may be read");
        assert_eq!(t.check_param(range(7, 1), true).unwrap_err().1, AddressConflict::Secrets);
        assert_eq!(t.check_target(range(7, 1)).unwrap_err().1, AddressConflict::Secrets);
    }
}
