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
//!
//! Memory: the validation and deposit records are two-level bitmaps (`bitmap`) whose size
//! follows how fragmented they are, not how large the guest is (0.5 MiB for a 4 TiB
//! guest validated in 2 MiB runs); every other role is one of a few pages per vCPU, kept
//! in a sorted vector whose room is reserved at start. So a guest of any size starts, and
//! nothing a guest does later allocates on these paths without a way to fail.

use crate::addr::{PageAddr, PageRange};
use crate::bitmap::{NoRoom, PageBitmap, REGION_PAGES, STRIPES};
use crate::error::AddressConflict;
use crate::vcpu::VcpuIndex;
use alloc::vec::Vec;
use spin::{Mutex, MutexGuard, RwLock};

/// The role of a page the SVSM has taken from the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageRole {
    /// Deposited with DEPOSIT_MEM; belongs to the page pool.
    Deposited,
    /// The VMSA of a vCPU (its current one, or one a replacement retired).
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
    /// RAM beyond what an x86-64 guest can address (52 bits).
    TooLarge,
    /// The heap cannot hold the page records for this much RAM.
    NoMemory,
}

#[derive(Debug)]
pub struct PageTracker {
    /// Sorted, disjoint.
    ram: Vec<PageRange>,
    svsm: PageRange,
    /// Bit set = the page is validated.
    validated: PageBitmap,
    /// Bit set = the page was deposited with the SVSM (free or in use).
    deposited: PageBitmap,
    /// The few pages with another role (VMSAs, calling areas, the secrets page), sorted
    /// by pfn. Their number is bounded by the vCPUs the SVSM serves, and the room for them
    /// is reserved at start, so a new role never allocates. Read on every check, written
    /// only when a vCPU or calling area comes or goes.
    roles: RwLock<Vec<(u64, PageRole)>>,
    /// A change to pages (check, hardware, record) holds the lock of their 2 MiB region
    /// (one of `STRIPES`, by region number), so two vCPUs never change one page at once
    /// while changes elsewhere go on in parallel (`lock`).
    regions: [Mutex<()>; STRIPES],
}

/// Pages being changed: the locks of their regions, released on drop.
#[derive(Debug)]
pub struct RegionLock<'a> {
    _held: [Option<MutexGuard<'a, ()>>; 2],
}

/// The largest guest-physical address space: 52 bits.
const MAX_TOP_PFN: u64 = 1 << 40;

impl PageTracker {
    /// Records for guest RAM `ram` with the SVSM at `svsm`, with room for `max_roles`
    /// pages of a role other than deposited.
    pub fn new(ram: &[PageRange], svsm: PageRange, max_roles: usize) -> Result<Self, LayoutError> {
        let mut sorted = Vec::new();
        sorted.try_reserve_exact(ram.len()).map_err(|_| LayoutError::NoMemory)?;
        sorted.extend_from_slice(ram);
        let mut ram = sorted;
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
        let mut roles = Vec::new();
        roles.try_reserve_exact(max_roles).map_err(|_| LayoutError::NoMemory)?;
        let t = Self {
            ram,
            svsm,
            validated: PageBitmap::new(top_pfn).map_err(|_| LayoutError::NoMemory)?,
            deposited: PageBitmap::new(top_pfn).map_err(|_| LayoutError::NoMemory)?,
            roles: RwLock::new(roles),
            regions: core::array::from_fn(|_| Mutex::new(())),
        };
        if !t.is_ram(svsm) {
            return Err(LayoutError::SvsmOutsideRam);
        }
        // The SVSM's region was validated at launch.
        t.record_validated(svsm, true).map_err(|_| LayoutError::NoMemory)?;
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

    /// Hold the region locks of the pages `a` and `b` (the same page twice is fine), for a
    /// change that must not meet another vCPU's change to them. Taken in region order, so
    /// two changes cannot wait on each other.
    pub fn lock(&self, a: PageAddr, b: PageAddr) -> RegionLock<'_> {
        let stripe = |p: PageAddr| ((p.pfn() / REGION_PAGES) % STRIPES as u64) as usize;
        let (x, y) = (stripe(a).min(stripe(b)), stripe(a).max(stripe(b)));
        // Both are below STRIPES, the array's length.
        let first = self.regions[x].lock();
        let second = (y != x).then(|| self.regions[y].lock());
        RegionLock { _held: [Some(first), second] }
    }

    /// The first page of `range` with a role, and the role.
    fn first_role_in(&self, range: PageRange) -> Option<(u64, PageRole)> {
        let roles = self.roles.read();
        let at = roles.partition_point(|(pfn, _)| *pfn < range.start_pfn());
        let other = roles.get(at).copied().filter(|(pfn, _)| *pfn < range.end_pfn());
        let deposited = if self.deposited.any(range) {
            self.deposited.next_set(range.start_pfn()).map(|pfn| (pfn, PageRole::Deposited))
        } else {
            None
        };
        match (other, deposited) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// The first page of `range` with a role other than deposited that `skip` does not
    /// accept, and its role.
    fn other_role_in(&self, range: PageRange, skip: impl Fn(PageRole) -> bool) -> Option<(u64, PageRole)> {
        let roles = self.roles.read();
        let at = roles.partition_point(|(pfn, _)| *pfn < range.start_pfn());
        roles
            .get(at..)
            .unwrap_or(&[])
            .iter()
            .copied()
            .take_while(|(pfn, _)| *pfn < range.end_pfn())
            .find(|(_, role)| !skip(*role))
    }

    /// Check a page range the SVSM will copy parameters from (`write` false) or to.
    pub fn check_param(&self, range: PageRange, write: bool) -> Result<(), (PageAddr, AddressConflict)> {
        self.check_common(range)?;
        if self.deposited.any(range) {
            let pfn = self.deposited.next_set(range.start_pfn()).unwrap_or(range.start_pfn());
            return Err((PageAddr::from_pfn(pfn), AddressConflict::Deposited));
        }
        let allowed = |role| matches!(role, PageRole::CallingArea(_)) || (role == PageRole::Secrets && !write);
        if let Some((pfn, role)) = self.other_role_in(range, allowed) {
            let why = match role {
                PageRole::Secrets => AddressConflict::Secrets,
                PageRole::Deposited => AddressConflict::Deposited,
                PageRole::Vmsa(_) => AddressConflict::Vmsa,
                PageRole::CallingArea(_) => AddressConflict::CallingArea,
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
        if let Some((pfn, role)) = self.first_role_in(range) {
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
        if self.deposited.get(page.pfn()) {
            return Some(PageRole::Deposited);
        }
        let roles = self.roles.read();
        let i = roles.binary_search_by_key(&page.pfn(), |(pfn, _)| *pfn).ok()?;
        roles.get(i).map(|(_, role)| *role)
    }

    /// Room for `n` more roles (checked before a call acts, so recording them cannot fail).
    pub fn role_room(&self, n: usize) -> bool {
        let roles = self.roles.read();
        roles.len() + n <= roles.capacity()
    }

    /// Give `page` a role other than deposited (replacing one it has). Never allocates:
    /// `Err` when the room reserved at start is used up, which the vCPU limit prevents.
    pub fn set_role(&self, page: PageAddr, role: PageRole) -> Result<(), NoRoom> {
        let mut roles = self.roles.write();
        match roles.binary_search_by_key(&page.pfn(), |(pfn, _)| *pfn) {
            Ok(i) => {
                if let Some(entry) = roles.get_mut(i) {
                    entry.1 = role;
                }
                Ok(())
            }
            Err(_) if roles.len() >= roles.capacity() => Err(NoRoom),
            Err(i) => {
                roles.insert(i, (page.pfn(), role));
                Ok(())
            }
        }
    }

    pub fn clear_role(&self, page: PageAddr) {
        let mut roles = self.roles.write();
        if let Ok(i) = roles.binary_search_by_key(&page.pfn(), |(pfn, _)| *pfn) {
            roles.remove(i);
        }
    }

    /// Make sure recording `range` as deposited, or no longer deposited, cannot fail.
    pub fn reserve_deposited(&self, range: PageRange) -> Result<(), NoRoom> {
        self.deposited.reserve(range)
    }

    /// Record `range` as deposited or not ([reserved](Self::reserve_deposited) first).
    pub fn set_deposited(&self, range: PageRange, deposited: bool) -> bool {
        self.deposited.set(range, deposited)
    }

    pub fn is_deposited(&self, page: PageAddr) -> bool {
        self.deposited.get(page.pfn())
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

    /// Before a PVALIDATE of `range`: whether some page of it is recorded validated, with
    /// room made so the record of the outcome cannot fail.
    pub fn prepare_validation(&self, range: PageRange) -> Result<bool, NoRoom> {
        self.validated.reserve_and_any(range)
    }

    /// Make sure recording a validation change of `range` cannot fail (called before the
    /// hardware changes, so record and hardware never disagree).
    pub fn reserve_validated(&self, range: PageRange) -> Result<(), NoRoom> {
        self.validated.reserve(range)
    }

    /// Record the validation state of `range` ([reserved](Self::reserve_validated)
    /// first). Pages beyond RAM are ignored. `false` if a region was not reserved.
    pub fn set_validated(&self, range: PageRange, valid: bool) -> bool {
        self.validated.set(range, valid)
    }

    /// Reserve and record in one step (start-up, where failing is refusing to start).
    pub fn record_validated(&self, range: PageRange, valid: bool) -> Result<(), NoRoom> {
        self.validated.reserve(range)?;
        self.validated.set(range, valid);
        Ok(())
    }

    /// Number of validated pages (for statistics).
    pub fn validated_pages(&self) -> u64 {
        self.validated.count()
    }

    /// Heap the page records hold now, in bytes (for statistics).
    pub fn heap_bytes(&self) -> u64 {
        self.validated.heap_bytes() + self.deposited.heap_bytes() + (self.roles.read().capacity() * 16) as u64
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
        PageTracker::new(&[range(0x200, 0x200), range(0, 0x100)], range(0xC0, 0x10), 16).unwrap()
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
        let t = tracker();
        t.record_validated(range(0, 0x20), true).unwrap();
        t.set_role(PageAddr::from_pfn(5), PageRole::CallingArea(VcpuIndex(0))).unwrap();
        assert!(t.check_param(range(5, 1), true).is_ok());
        assert_eq!(t.check_target(range(4, 2)).unwrap_err(), (PageAddr::from_pfn(5), AddressConflict::CallingArea));
        t.set_role(PageAddr::from_pfn(6), PageRole::Vmsa(VcpuIndex(1))).unwrap();
        assert_eq!(t.check_param(range(6, 1), false).unwrap_err().1, AddressConflict::Vmsa);
        t.set_role(PageAddr::from_pfn(7), PageRole::Secrets).unwrap();
        assert!(t.check_param(range(7, 1), false).is_ok(), "the secrets page may be read");
        assert_eq!(t.check_param(range(7, 1), true).unwrap_err().1, AddressConflict::Secrets);
        assert_eq!(t.check_target(range(7, 1)).unwrap_err().1, AddressConflict::Secrets);
    }
}
