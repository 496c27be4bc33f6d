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
//!
//! Concurrency: guest memory is cut into 2 MiB regions, and the regions into [`STRIPES`]
//! stripes by region number. One lock per stripe guards both the records of its regions
//! (the bitmaps' leaves) and every change to its pages: a call that checks pages, changes
//! them in hardware and records the change holds its regions' stripes throughout
//! ([`PageTracker::lock`] gives a [`Held`]), so two vCPUs never change one page at once,
//! while changes elsewhere go on in parallel, and a 4 KiB PVALIDATE takes one lock, not
//! one per record. Whether a region is all set, all clear or mixed is an atomic anyone
//! reads without a lock, so most checks of a uniform region take none. Roles change
//! rarely: they sit behind a read-write lock, and per-region hints (atomic counts) let a
//! check skip it where no role can be.

use crate::addr::{PageAddr, PageRange};
use crate::bitmap::{NoRoom, OwnedBitmap, PageBitmap, REGION_PAGES, RegionState, STRIPES, StripePart, stripe_of};
use crate::error::AddressConflict;
use crate::vcpu::VcpuIndex;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
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

/// One stripe's records: the leaves of its mixed regions in both bitmaps, and the pages
/// of its regions that service processes map (OPEN_PHYSMEM), by pfn, with how many
/// mappings hold each.
#[derive(Debug, Default)]
struct Stripe {
    validated: StripePart,
    deposited: StripePart,
    mapped: Vec<(u64, u32)>,
}

/// Buckets of the role hints (by region number).
const ROLE_HINTS: usize = 1024;

#[derive(Debug)]
pub struct PageTracker {
    /// Sorted, disjoint.
    ram: Vec<PageRange>,
    svsm: PageRange,
    /// Bit set = the page is validated (region states; leaves in the stripes).
    validated: PageBitmap,
    /// Bit set = the page was deposited with the SVSM, free or in use (likewise).
    deposited: PageBitmap,
    /// The lock of each stripe and the leaves it guards (on the heap, as are the hints:
    /// the SVSM moves through a small boot stack).
    stripes: Box<[Mutex<Stripe>; STRIPES]>,
    /// The few pages with another role (VMSAs, calling areas, the secrets page), sorted
    /// by pfn. Their number is bounded by the vCPUs the SVSM serves, and the room for them
    /// is reserved at start, so a new role never allocates. Written only when a vCPU or
    /// calling area comes or goes.
    roles: RwLock<Vec<(u64, PageRole)>>,
    /// Roles per bucket of regions (`region % ROLE_HINTS`), changed with `roles`: a range
    /// whose buckets are all empty has no role, and its check need not read `roles`.
    role_hints: Box<[AtomicU32; ROLE_HINTS]>,
    /// While a live migration records them: the guest pages the SVSM changed (wrote for
    /// a call, validated or invalidated, handed back), which the guest's own write faults
    /// do not show (`migration::dirty`). Checked with one atomic load otherwise.
    recording: AtomicBool,
    changed: Mutex<Option<ChangedPages>>,
    /// Pages service processes map, in all stripes: while 0, no check of a change needs
    /// to look at the stripes' `mapped` lists.
    mapped_pages: AtomicU64,
}

/// The pages recorded as changed (one bit each, so a guest that makes the SVSM change
/// the same pages again and again costs nothing more), and whether some could not be
/// recorded (the migration then cannot know what changed, and fails).
#[derive(Debug)]
struct ChangedPages {
    pfns: OwnedBitmap,
    overflowed: bool,
}

/// The stripes a change holds (at most two), and the records of their pages. Records of
/// other stripes are reached by locking them for the one access; a holder must not do
/// that (two holders could wait on each other), and need not: a change concerns only the
/// pages it locked. [`PageTracker::unlocked`] is the form that holds nothing.
#[derive(Debug)]
pub struct Held<'a> {
    pages: &'a PageTracker,
    kept: [Option<(usize, MutexGuard<'a, Stripe>)>; 2],
}

/// The largest guest-physical address space: 52 bits.
const MAX_TOP_PFN: u64 = 1 << 40;

fn region_of(pfn: u64) -> u64 {
    pfn / REGION_PAGES
}

fn hint_of(region: u64) -> usize {
    // Below ROLE_HINTS, a usize.
    usize::try_from(region % ROLE_HINTS as u64).unwrap_or(0)
}

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
        if ram.windows(2).any(|w| matches!(w, [a, b] if a.end_pfn() > b.start_pfn())) {
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
            stripes: crate::heap::boxed_array(|| Mutex::new(Stripe::default())).ok_or(LayoutError::NoMemory)?,
            roles: RwLock::new(roles),
            role_hints: crate::heap::boxed_array(|| AtomicU32::new(0)).ok_or(LayoutError::NoMemory)?,
            recording: AtomicBool::new(false),
            changed: Mutex::new(None),
            mapped_pages: AtomicU64::new(0),
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

    /// Record from now on the guest pages the SVSM changes (see `recording`).
    pub fn start_recording(&self) -> Result<(), NoRoom> {
        let top = self.ram.last().map_or(0, |r| r.end_pfn());
        *self.changed.lock() = Some(ChangedPages { pfns: OwnedBitmap::new(top)?, overflowed: false });
        self.recording.store(true, Ordering::Release);
        Ok(())
    }

    /// Stop recording.
    pub fn stop_recording(&self) {
        self.recording.store(false, Ordering::Release);
        *self.changed.lock() = None;
    }

    /// The SVSM changed the guest's pages `range` (a no-op unless recording).
    pub fn note_changed(&self, range: PageRange) {
        if !self.recording.load(Ordering::Acquire) {
            return;
        }
        if let Some(changed) = self.changed.lock().as_mut() {
            if changed.pfns.reserve(range).is_err() {
                changed.overflowed = true;
                return;
            }
            changed.pfns.set(range, true);
        }
    }

    /// The pages recorded as changed since the last call, in increasing order; `Err` if
    /// some could not be recorded (it stays an error until recording stops).
    pub fn take_changed(&self) -> Result<Vec<u64>, NoRoom> {
        let mut slot = self.changed.lock();
        let Some(changed) = slot.as_mut() else { return Ok(Vec::new()) };
        if changed.overflowed {
            return Err(NoRoom);
        }
        let mut pfns = Vec::new();
        let mut from = 0;
        while let Some(pfn) = changed.pfns.next_set(from) {
            pfns.try_reserve(1).map_err(|_| NoRoom)?;
            pfns.push(pfn);
            from = pfn + 1;
        }
        for &pfn in &pfns {
            if let Some(one) = PageRange::new(PageAddr::from_pfn(pfn), 1) {
                changed.pfns.set(one, false);
            }
        }
        Ok(pfns)
    }

    /// The guest's RAM ranges, sorted.
    pub fn ram(&self) -> &[PageRange] {
        &self.ram
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

    fn stripe(&self, index: usize) -> &Mutex<Stripe> {
        // `index` comes from `stripe_of`, below STRIPES (the array's length): the fallback
        // is never taken.
        let [first, ..] = &*self.stripes;
        self.stripes.get(index).unwrap_or(first)
    }

    /// Hold the stripes of the pages `a` and `b` (the same page twice is fine) for a
    /// change that must not meet another vCPU's change to them. Taken in stripe order, so
    /// two changes cannot wait on each other.
    pub fn lock(&self, a: PageAddr, b: PageAddr) -> Held<'_> {
        let (sa, sb) = (stripe_of(region_of(a.pfn())), stripe_of(region_of(b.pfn())));
        let (x, y) = (sa.min(sb), sa.max(sb));
        let first = (x, self.stripe(x).lock());
        let second = (y != x).then(|| (y, self.stripe(y).lock()));
        Held { pages: self, kept: [Some(first), second] }
    }

    /// Access to the records holding no stripe: each access locks what it reads for that
    /// access only. Not for a holder of a [`Held`] (see there).
    pub fn unlocked(&self) -> Held<'_> {
        Held { pages: self, kept: [None, None] }
    }

    /// Some page of `range` may have a role other than deposited (`false`: none has).
    #[inline(always)]
    fn roles_maybe_in(&self, range: PageRange) -> bool {
        let (first, last) = (region_of(range.start_pfn()), region_of(range.end_pfn() - 1));
        if last - first >= ROLE_HINTS as u64 {
            return true;
        }
        (first..=last).any(|r| self.role_hints.get(hint_of(r)).is_none_or(|h| h.load(Ordering::Acquire) != 0))
    }

    /// The first page of `range` with a role other than deposited that `skip` does not
    /// accept, and its role.
    /// (Inlined for the hint test that answers almost every call; the list is
    /// searched out of line.)
    #[inline(always)]
    fn other_role_in(&self, range: PageRange, skip: impl Fn(PageRole) -> bool) -> Option<(u64, PageRole)> {
        if !self.roles_maybe_in(range) {
            return None;
        }
        self.other_role_listed(range, skip)
    }

    #[inline(never)]
    fn other_role_listed(&self, range: PageRange, skip: impl Fn(PageRole) -> bool) -> Option<(u64, PageRole)> {
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

    fn hint(&self, pfn: u64) -> Option<&AtomicU32> {
        self.role_hints.get(hint_of(region_of(pfn)))
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
                // The hint first: a reader that finds it empty finds no role either.
                if let Some(h) = self.hint(page.pfn()) {
                    h.fetch_add(1, Ordering::AcqRel);
                }
                roles.insert(i, (page.pfn(), role));
                Ok(())
            }
        }
    }

    pub fn clear_role(&self, page: PageAddr) {
        let mut roles = self.roles.write();
        if let Ok(i) = roles.binary_search_by_key(&page.pfn(), |(pfn, _)| *pfn) {
            roles.remove(i);
            if let Some(h) = self.hint(page.pfn()) {
                h.fetch_sub(1, Ordering::AcqRel);
            }
        }
        drop(roles);
        // The guest's again (an old calling area, a released VMSA): a live migration
        // sends it.
        if let Some(one) = PageRange::new(page, 1) {
            self.note_changed(one);
        }
    }

    /// The role of `page`, if it has one (its stripe locked for the look).
    pub fn role(&self, page: PageAddr) -> Option<PageRole> {
        self.unlocked().role(page)
    }

    /// Check a page range the SVSM will copy parameters from (`write` false) or to.
    pub fn check_param(&self, range: PageRange, write: bool) -> Result<(), (PageAddr, AddressConflict)> {
        self.unlocked().check_param(range, write)
    }

    /// Check a page range a call will act upon (see [`Held::check_target`]).
    pub fn check_target(&self, range: PageRange) -> Result<(), (PageAddr, AddressConflict)> {
        self.unlocked().check_target(range)
    }

    pub fn is_validated(&self, page: PageAddr) -> bool {
        self.unlocked().is_validated(page)
    }

    pub fn is_deposited(&self, page: PageAddr) -> bool {
        self.unlocked().is_deposited(page)
    }

    /// First page of `range` that is not validated (pages beyond RAM count as such).
    pub fn first_unvalidated(&self, range: PageRange) -> Option<u64> {
        self.unlocked().first_unvalidated(range)
    }

    /// Every page of `range` is validated.
    pub fn all_validated(&self, range: PageRange) -> bool {
        self.first_unvalidated(range).is_none()
    }

    /// Some page of `range` is validated.
    pub fn any_validated(&self, range: PageRange) -> bool {
        self.unlocked().find(range, Which::Validated, true).is_some()
    }

    /// Reserve and record in one step (start-up, where failing is refusing to start).
    pub fn record_validated(&self, range: PageRange, valid: bool) -> Result<(), NoRoom> {
        let mut h = self.unlocked();
        h.prepare_validation(range)?;
        h.set_validated(range, valid);
        Ok(())
    }

    /// Number of validated pages (for statistics).
    pub fn validated_pages(&self) -> u64 {
        self.stripes.iter().map(|s| s.lock().validated.ones()).sum()
    }

    /// Heap the page records hold now, in bytes (for statistics).
    pub fn heap_bytes(&self) -> u64 {
        let leaves: u64 =
            self.stripes.iter().map(|s| s.lock()).map(|s| s.validated.heap_bytes() + s.deposited.heap_bytes()).sum();
        self.validated.heap_bytes() + self.deposited.heap_bytes() + leaves + (self.roles.read().capacity() * 16) as u64
    }

    /// The guest memory a service process may map (OPEN_PHYSMEM's ranges): guest RAM
    /// without the SVSM's region, in address order.
    fn guest_ranges(&self) -> impl Iterator<Item = PageRange> + '_ {
        let svsm = self.svsm;
        self.ram.iter().flat_map(move |r| {
            let below = PageRange::from_pfns(r.start_pfn(), r.end_pfn().min(svsm.start_pfn()));
            let above = PageRange::from_pfns(r.start_pfn().max(svsm.end_pfn()), r.end_pfn());
            [below, above].into_iter().flatten()
        })
    }

    /// The `index`-th of [`Self::guest_ranges`].
    pub fn guest_range(&self, index: usize) -> Option<PageRange> {
        self.guest_ranges().nth(index)
    }

    /// How many guest ranges there are.
    pub fn guest_range_count(&self) -> usize {
        self.guest_ranges().count()
    }

    /// A service process maps `page` (OPEN_PHYSMEM): it must be validated guest RAM the
    /// SVSM has no claim on (not its region, not deposited, no VMSA, calling area or
    /// secrets page), and while any mapping holds it, nothing may invalidate it, deposit
    /// it or make it a VMSA or calling area ([`Held::check_unmapped`]): the process could
    /// otherwise reach a page that became the SVSM's, or whose contents the guest gave up.
    pub fn map_for_service(&self, page: PageAddr) -> Result<(), MapError> {
        let one = PageRange::new(page, 1).ok_or(MapError::Refused(AddressConflict::NotRam))?;
        let mut held = self.lock(page, page);
        held.check_target(one).map_err(|(_, why)| MapError::Refused(why))?;
        if !held.is_validated(page) {
            return Err(MapError::Refused(AddressConflict::NotValidated));
        }
        held.with(region_of(page.pfn()), |pages, stripe| {
            let mapped = &mut stripe.mapped;
            match mapped.binary_search_by_key(&page.pfn(), |(pfn, _)| *pfn) {
                Ok(i) => {
                    let count = mapped.get_mut(i).map(|(_, n)| n).ok_or(MapError::NoRoom)?;
                    *count = count.checked_add(1).ok_or(MapError::NoRoom)?;
                }
                Err(i) => {
                    mapped.try_reserve(1).map_err(|_| MapError::NoRoom)?;
                    mapped.insert(i, (page.pfn(), 1));
                    pages.mapped_pages.fetch_add(1, Ordering::AcqRel);
                }
            }
            Ok(())
        })
    }

    /// A mapping made with [`Self::map_for_service`] is gone. (A release of a page no
    /// mapping holds is an SVSM bug: the tests and the fuzzer run with it asserted.)
    pub fn unmap_for_service(&self, page: PageAddr) {
        let mut held = self.lock(page, page);
        held.with(region_of(page.pfn()), |pages, stripe| {
            let mapped = &mut stripe.mapped;
            let at = mapped.binary_search_by_key(&page.pfn(), |(pfn, _)| *pfn).ok();
            debug_assert!(at.is_some(), "a release of {page:?}, which no mapping holds");
            if let Some(i) = at
                && let Some((_, count)) = mapped.get_mut(i)
            {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    mapped.remove(i);
                    pages.mapped_pages.fetch_sub(1, Ordering::AcqRel);
                }
            }
        });
    }

    /// Service mappings of all pages together (each page counted once per mapping).
    pub fn service_mappings_total(&self) -> u64 {
        self.stripes.iter().map(|s| s.lock().mapped.iter().map(|(_, n)| u64::from(*n)).sum::<u64>()).sum()
    }

    /// How many service mappings hold `page`.
    pub fn service_mappings(&self, page: PageAddr) -> u32 {
        let mut held = self.unlocked();
        held.with(region_of(page.pfn()), |_, stripe| {
            stripe
                .mapped
                .binary_search_by_key(&page.pfn(), |(pfn, _)| *pfn)
                .ok()
                .and_then(|i| stripe.mapped.get(i))
                .map_or(0, |(_, n)| *n)
        })
    }
}

/// Why [`PageTracker::map_for_service`] refused a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    Refused(AddressConflict),
    /// The heap cannot hold the record (or one page is mapped 4 billion times).
    NoRoom,
}

impl Held<'_> {
    /// The stripe of `page` is one this holds (a change of `page` may go on under it).
    pub fn holds(&self, page: PageAddr) -> bool {
        let s = stripe_of(region_of(page.pfn()));
        self.kept.iter().flatten().any(|(i, _)| *i == s)
    }

    /// `f` with the records of `region`'s stripe: the kept lock, or one taken for `f`.
    fn with<T>(&mut self, region: u64, f: impl FnOnce(&PageTracker, &mut Stripe) -> T) -> T {
        let pages = self.pages;
        let s = stripe_of(region);
        if let Some((_, guard)) = self.kept.iter_mut().flatten().find(|(i, _)| *i == s) {
            return f(pages, guard);
        }
        f(pages, &mut pages.stripe(s).lock())
    }

    /// The first page of `range` the bitmap `which` of the tracker has `want` for;
    /// regions of a uniform state answer from the atomic state alone.
    fn find(&mut self, range: PageRange, which: Which, want: bool) -> Option<u64> {
        let pages = self.pages;
        let map = which.map(pages);
        for (region, from, to) in map.regions_of(range) {
            let found = match map.state(region) {
                RegionState::Set if want => Some(from),
                RegionState::Clear if !want => Some(from),
                RegionState::Set | RegionState::Clear => None,
                RegionState::Mixed => self.with(region, |_, s| map.find(which.part(s), region, from, to, want)),
            };
            if let Some(bit) = found {
                return Some(region * REGION_PAGES + bit);
            }
        }
        None
    }

    /// The first page of `range` with a role, and the role.
    fn first_role_in(&mut self, range: PageRange) -> Option<(u64, PageRole)> {
        let other = self.pages.other_role_in(range, |_| false);
        let deposited = self.find(range, Which::Deposited, true).map(|pfn| (pfn, PageRole::Deposited));
        match (other, deposited) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    pub fn role(&mut self, page: PageAddr) -> Option<PageRole> {
        if self.is_deposited(page) {
            return Some(PageRole::Deposited);
        }
        let range = PageRange::new(page, 1)?;
        self.pages.other_role_in(range, |_| false).map(|(_, role)| role)
    }

    /// Check a page range the SVSM will copy parameters from (`write` false) or to.
    pub fn check_param(&mut self, range: PageRange, write: bool) -> Result<(), (PageAddr, AddressConflict)> {
        self.pages.check_common(range)?;
        if let Some(pfn) = self.find(range, Which::Deposited, true) {
            return Err((PageAddr::from_pfn(pfn), AddressConflict::Deposited));
        }
        let allowed = |role| matches!(role, PageRole::CallingArea(_)) || (role == PageRole::Secrets && !write);
        if let Some((pfn, role)) = self.pages.other_role_in(range, allowed) {
            return Err((PageAddr::from_pfn(pfn), conflict(role)));
        }
        if let Some(pfn) = self.first_unvalidated(range) {
            return Err((PageAddr::from_pfn(pfn), AddressConflict::NotValidated));
        }
        Ok(())
    }

    /// Check a page range a call will act upon: RAM that the SVSM has no claim on.
    /// Validation state is not checked; callers that need it ask for it.
    pub fn check_target(&mut self, range: PageRange) -> Result<(), (PageAddr, AddressConflict)> {
        self.pages.check_common(range)?;
        match self.first_role_in(range) {
            Some((pfn, role)) => Err((PageAddr::from_pfn(pfn), conflict(role))),
            None => Ok(()),
        }
    }

    /// Check a range the SVSM writes on its own account (not a call's answer): validated
    /// guest pages with no role at all, a calling area included
    /// (`GuestView::owned_outright`).
    pub fn check_owned(&mut self, range: PageRange) -> Result<(), (PageAddr, AddressConflict)> {
        self.check_target(range)?;
        match self.first_unvalidated(range) {
            Some(pfn) => Err((PageAddr::from_pfn(pfn), AddressConflict::NotValidated)),
            None => Ok(()),
        }
    }

    /// Check that no service process maps a page of `range` (see
    /// [`PageTracker::map_for_service`]): for a call that would invalidate the pages,
    /// take them for the SVSM, or make one a VMSA or calling area.
    pub fn check_unmapped(&mut self, range: PageRange) -> Result<(), (PageAddr, AddressConflict)> {
        if self.pages.mapped_pages.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let first_region = region_of(range.start_pfn());
        let last_region = region_of(range.end_pfn() - 1);
        for region in first_region..=last_region {
            let found = self.with(region, |_, stripe| {
                let at = stripe.mapped.partition_point(|(pfn, _)| *pfn < range.start_pfn());
                stripe.mapped.get(at).map(|(pfn, _)| *pfn).filter(|pfn| *pfn < range.end_pfn())
            });
            if let Some(pfn) = found {
                return Err((PageAddr::from_pfn(pfn), AddressConflict::MappedByService));
            }
        }
        Ok(())
    }

    pub fn is_validated(&mut self, page: PageAddr) -> bool {
        PageRange::new(page, 1).is_some_and(|r| self.find(r, Which::Validated, true).is_some())
    }

    pub fn is_deposited(&mut self, page: PageAddr) -> bool {
        PageRange::new(page, 1).is_some_and(|r| self.find(r, Which::Deposited, true).is_some())
    }

    /// First page of `range` that is not validated (pages beyond RAM count as such).
    pub fn first_unvalidated(&mut self, range: PageRange) -> Option<u64> {
        let top = self.pages.validated.pages();
        self.find(range, Which::Validated, false)
            .or_else(|| (range.end_pfn() > top).then_some(range.start_pfn().max(top)))
    }

    /// Some page of `range` is validated.
    pub fn any_validated(&mut self, range: PageRange) -> bool {
        self.find(range, Which::Validated, true).is_some()
    }

    /// Before a PVALIDATE of `range`: whether some page of it is recorded validated, with
    /// room made so the record of the outcome cannot fail.
    pub fn prepare_validation(&mut self, range: PageRange) -> Result<bool, NoRoom> {
        self.reserve(range, Which::Validated)
    }

    /// See [`PageTracker::note_changed`].
    pub fn note_changed(&self, range: PageRange) {
        self.pages.note_changed(range);
    }

    /// Record the validation state of `range` ([prepared](Self::prepare_validation)
    /// first). Pages beyond RAM are ignored. `false` if a region was not prepared.
    pub fn set_validated(&mut self, range: PageRange, valid: bool) -> bool {
        self.set(range, Which::Validated, valid)
    }

    /// Make sure recording `range` as deposited, or no longer deposited, cannot fail.
    pub fn reserve_deposited(&mut self, range: PageRange) -> Result<(), NoRoom> {
        self.reserve(range, Which::Deposited).map(|_| ())
    }

    /// Record `range` as deposited or not ([reserved](Self::reserve_deposited) first).
    pub fn set_deposited(&mut self, range: PageRange, deposited: bool) -> bool {
        self.set(range, Which::Deposited, deposited)
    }

    /// [`Self::check_target`] and [`Self::prepare_validation`] of a PVALIDATE entry in one
    /// pass: the entry lies in one 2 MiB region, whose stripe this holds, so its region,
    /// states and leaves are found once, and the record it returns changes them without a
    /// search. Also answers whether a page of it is recorded validated.
    #[inline(always)]
    pub fn prepare_entry(&mut self, range: PageRange) -> Result<(EntryRecord<'_>, bool), EntryError> {
        let pages = self.pages;
        pages.check_common(range).map_err(|(pg, why)| EntryError::Conflict(pg, why))?;
        let region = region_of(range.start_pfn());
        let base = region * REGION_PAGES;
        let (from, to) = (range.start_pfn() - base, range.end_pfn() - base);
        if to > REGION_PAGES {
            return Err(EntryError::NotHeld);
        }
        let stripe = stripe_of(region);
        let s = self.kept.iter_mut().flatten().find(|(i, _)| *i == stripe).ok_or(EntryError::NotHeld)?;
        let s = &mut *s.1;
        // The first page with a role, as `check_target` finds it.
        let deposited = match pages.deposited.state(region) {
            RegionState::Clear => None,
            RegionState::Set => Some(from),
            RegionState::Mixed => pages.deposited.find(&s.deposited, region, from, to, true),
        }
        .map(|bit| (base + bit, PageRole::Deposited));
        let other = pages.other_role_in(range, |_| false);
        let first = match (other, deposited) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        if let Some((pfn, role)) = first {
            return Err(EntryError::Conflict(PageAddr::from_pfn(pfn), conflict(role)));
        }
        let any = pages.validated.reserve(&mut s.validated, region, from, to).map_err(|_| EntryError::NoRoom)?;
        Ok((EntryRecord { map: &pages.validated, part: &mut s.validated, region, from, to }, any))
    }

    /// Make room in `which` for a change of `range`; whether some page of it is set.
    fn reserve(&mut self, range: PageRange, which: Which) -> Result<bool, NoRoom> {
        let map = which.map(self.pages);
        let mut any = false;
        for (region, from, to) in map.regions_of(range) {
            any |= self.with(region, |_, s| map.reserve(which.part(s), region, from, to))?;
        }
        Ok(any)
    }

    fn set(&mut self, range: PageRange, which: Which, value: bool) -> bool {
        let map = which.map(self.pages);
        let mut complete = true;
        for (region, from, to) in map.regions_of(range) {
            complete &= self.with(region, |_, s| map.set(which.part(s), region, from, to, value));
        }
        complete
    }
}

/// The validation record of one PVALIDATE entry (one 4 KiB page, or one whole 2 MiB
/// region) whose stripe a [`Held`] keeps, found once for the change that follows
/// ([`Held::prepare_entry`]).
#[derive(Debug)]
pub struct EntryRecord<'h> {
    map: &'h PageBitmap,
    part: &'h mut StripePart,
    region: u64,
    from: u64,
    to: u64,
}

impl EntryRecord<'_> {
    /// Record the entry's pages as validated or not (never allocates: the room was made).
    pub fn set(&mut self, valid: bool) -> bool {
        self.map.set(self.part, self.region, self.from, self.to, valid)
    }
}

/// Why [`Held::prepare_entry`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryError {
    /// A page of the entry is not one a call may act on.
    Conflict(PageAddr, AddressConflict),
    /// The heap cannot hold the record of the change.
    NoRoom,
    /// The entry spans two regions, or its stripe is not held (an SVSM bug).
    NotHeld,
}

/// Which of the two bitmaps.
#[derive(Clone, Copy)]
enum Which {
    Validated,
    Deposited,
}

impl Which {
    fn map(self, pages: &PageTracker) -> &PageBitmap {
        match self {
            Which::Validated => &pages.validated,
            Which::Deposited => &pages.deposited,
        }
    }

    fn part(self, stripe: &mut Stripe) -> &mut StripePart {
        match self {
            Which::Validated => &mut stripe.validated,
            Which::Deposited => &mut stripe.deposited,
        }
    }
}

fn conflict(role: PageRole) -> AddressConflict {
    match role {
        PageRole::CallingArea(_) => AddressConflict::CallingArea,
        PageRole::Secrets => AddressConflict::Secrets,
        PageRole::Deposited => AddressConflict::Deposited,
        PageRole::Vmsa(_) => AddressConflict::Vmsa,
    }
}

impl PageTracker {
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

    #[test]
    fn deposited_pages_in_a_mixed_region_are_found_with_or_without_the_lock() {
        let t = tracker();
        t.record_validated(range(0x200, 0x200), true).unwrap();
        let mut held = t.lock(PageAddr::from_pfn(0x210), PageAddr::from_pfn(0x210));
        held.reserve_deposited(range(0x210, 2)).unwrap();
        assert!(held.set_deposited(range(0x210, 2), true));
        let deposited = (PageAddr::from_pfn(0x210), AddressConflict::Deposited);
        assert_eq!(held.check_target(range(0x200, 0x20)), Err(deposited));
        drop(held);
        assert_eq!(t.check_param(range(0x20F, 4), false), Err(deposited));
        assert_eq!(t.role(PageAddr::from_pfn(0x211)), Some(PageRole::Deposited));
        assert_eq!(t.role(PageAddr::from_pfn(0x212)), None);
        assert!(t.check_target(range(0x212, 0x1EE)).is_ok());
    }

    #[test]
    fn a_role_is_found_in_a_region_that_shares_its_hint_bucket() {
        let t = PageTracker::new(&[range(0, 2048 * REGION_PAGES)], range(0, 16), 4).unwrap();
        // Region 1027 shares hint bucket 3 with region 3.
        let far = (ROLE_HINTS as u64 + 3) * REGION_PAGES + 7;
        t.set_role(PageAddr::from_pfn(far), PageRole::Vmsa(VcpuIndex(1))).unwrap();
        assert_eq!(t.check_target(range(3 * REGION_PAGES, 512)), Ok(()), "same bucket, another region");
        let vmsa = (PageAddr::from_pfn(far), AddressConflict::Vmsa);
        assert_eq!(t.check_target(range(far - 7, 512)), Err(vmsa));
        assert_eq!(t.role(PageAddr::from_pfn(far)), Some(PageRole::Vmsa(VcpuIndex(1))));
        t.set_role(PageAddr::from_pfn(far), PageRole::CallingArea(VcpuIndex(1))).unwrap();
        t.clear_role(PageAddr::from_pfn(far));
        assert_eq!(t.check_target(range(far - 7, 512)), Ok(()));
        assert!(t.role_hints.iter().all(|h| h.load(Ordering::Relaxed) == 0), "a replaced role is counted once");
    }

    #[test]
    fn cpus_changing_pages_at_once_lose_no_record() {
        extern crate std;
        let regions = 128;
        let t =
            PageTracker::new(&[range(0, regions * REGION_PAGES)], range((regions - 1) * REGION_PAGES, 16), 4).unwrap();
        std::thread::scope(|s| {
            for n in 0..4u64 {
                let t = &t;
                s.spawn(move || {
                    // Every fourth region, every other page one at a time under its lock
                    // as PVALIDATE takes it: regions that share stripes (128 regions, 64
                    // stripes) and region-state words with the other threads'.
                    for region in (n..regions - 1).step_by(4) {
                        for pfn in (region * REGION_PAGES..(region + 1) * REGION_PAGES).step_by(2) {
                            let (page, one) = (PageAddr::from_pfn(pfn), range(pfn, 1));
                            let mut held = t.lock(page, page);
                            assert_eq!(held.prepare_validation(one), Ok(false));
                            assert!(held.set_validated(one, true));
                        }
                    }
                });
            }
        });
        assert_eq!(t.validated_pages(), (regions - 1) * REGION_PAGES / 2 + 16);
        assert!((0..(regions - 1) * REGION_PAGES).all(|p| t.is_validated(PageAddr::from_pfn(p)) == (p % 2 == 0)));
    }
}
