//! A set of 4 KiB guest pages, sized by how fragmented it is rather than by guest RAM,
//! that every CPU may read and change at once.
//!
//! Used for the validation bitmap (pages the guest validated) and the record of deposited
//! pages. A flat bitmap costs 32 KiB per GiB of guest RAM: 32 MiB for a 1 TiB guest, more
//! than the SVSM's whole heap. Guests validate and deposit memory mostly in 2 MiB runs, so
//! this bitmap keeps two levels:
//!
//! - per 2 MiB region, 2 bits: all clear, all set, or mixed (64 KiB per TiB of RAM), in
//!   atomic words;
//! - for each mixed region only, a leaf of 512 bits (64 bytes), kept in one of
//!   [`STRIPES`] vectors by region number, allocated fallibly when a region first becomes
//!   mixed and dropped when it is uniform again.
//!
//! Concurrency: a region's state and leaf change only under its stripe's lock, so changes
//! to different regions proceed in parallel and a reader sees a region either before or
//! after a change (it re-reads the state under the stripe's lock before it trusts a
//! leaf). No lock covers the whole bitmap.
//!
//! A change that could make a region mixed needs a leaf; [`PageBitmap::reserve`] makes it
//! (or fails) *before* the caller changes hardware state, so [`PageBitmap::set`] never
//! allocates and never fails: the record cannot fall out of step with the hardware.

use crate::addr::PageRange;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

/// Pages per region (2 MiB).
pub const REGION_PAGES: u64 = 512;
const WORDS_PER_LEAF: usize = (REGION_PAGES / 64) as usize;
/// Regions per word of the region map (2 bits each).
const REGIONS_PER_WORD: u64 = 32;
/// Locks the leaves are spread over (by region number).
pub const STRIPES: usize = 64;

type Leaf = [u64; WORDS_PER_LEAF];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RegionState {
    Clear,
    Set,
    Mixed,
}

/// The heap cannot hold the bitmap (at start) or a leaf for a mixed region (later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoRoom;

#[derive(Debug)]
pub struct PageBitmap {
    /// Pages covered: `[0, pages)`.
    pages: u64,
    /// 2 bits per region: 0 clear, 1 set, 2 mixed.
    regions: Vec<AtomicU64>,
    /// Leaves of the mixed regions, stripe `region % STRIPES`, each sorted by region.
    stripes: [Mutex<Vec<(u64, Leaf)>>; STRIPES],
    /// Set bits, kept as they change.
    ones: AtomicU64,
}

fn stripe_of(region: u64) -> usize {
    (region % STRIPES as u64) as usize
}

impl PageBitmap {
    /// An all-clear bitmap for pages `[0, pages)`.
    pub fn new(pages: u64) -> Result<Self, NoRoom> {
        let regions = pages.div_ceil(REGION_PAGES);
        let words = usize::try_from(regions.div_ceil(REGIONS_PER_WORD)).map_err(|_| NoRoom)?;
        let mut map = Vec::new();
        map.try_reserve_exact(words).map_err(|_| NoRoom)?;
        map.resize_with(words, || AtomicU64::new(0));
        Ok(Self {
            pages,
            regions: map,
            stripes: core::array::from_fn(|_| Mutex::new(Vec::new())),
            ones: AtomicU64::new(0),
        })
    }

    /// Bytes of heap the bitmap of `pages` pages needs before any region is mixed.
    pub fn base_bytes(pages: u64) -> u64 {
        pages.div_ceil(REGION_PAGES).div_ceil(REGIONS_PER_WORD) * 8
    }

    /// Bytes of heap the bitmap holds now.
    pub fn heap_bytes(&self) -> u64 {
        let leaves: usize = self.stripes.iter().map(|s| s.lock().capacity()).sum();
        (self.regions.capacity() * 8 + leaves * core::mem::size_of::<(u64, Leaf)>()) as u64
    }

    /// Mixed regions (each holds a 64-byte leaf).
    pub fn mixed_regions(&self) -> usize {
        self.stripes.iter().map(|s| s.lock().len()).sum()
    }

    fn state(&self, region: u64) -> RegionState {
        let word = self.regions.get((region / REGIONS_PER_WORD) as usize).map_or(0, |w| w.load(Ordering::Acquire));
        match (word >> ((region % REGIONS_PER_WORD) * 2)) & 3 {
            1 => RegionState::Set,
            2 => RegionState::Mixed,
            _ => RegionState::Clear,
        }
    }

    /// Change a region's 2 bits (the caller holds the region's stripe lock; regions
    /// sharing the word may change at the same time, hence the update loop).
    fn set_state(&self, region: u64, state: RegionState) {
        let shift = (region % REGIONS_PER_WORD) * 2;
        let bits = match state {
            RegionState::Clear => 0,
            RegionState::Set => 1,
            RegionState::Mixed => 2,
        };
        if let Some(word) = self.regions.get((region / REGIONS_PER_WORD) as usize) {
            let _ =
                word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| Some((w & !(3 << shift)) | (bits << shift)));
        }
    }

    fn stripe(&self, region: u64) -> spin::MutexGuard<'_, Vec<(u64, Leaf)>> {
        // `stripe_of` is below STRIPES, the array's length.
        self.stripes[stripe_of(region)].lock()
    }

    /// Bit `pfn` (clear beyond the end).
    pub fn get(&self, pfn: u64) -> bool {
        if pfn >= self.pages {
            return false;
        }
        let region = pfn / REGION_PAGES;
        match self.state(region) {
            RegionState::Clear => false,
            RegionState::Set => true,
            RegionState::Mixed => {
                let leaves = self.stripe(region);
                let bit = pfn % REGION_PAGES;
                // Under the lock the state is settled: a leaf, or a region made uniform.
                match leaves.binary_search_by_key(&region, |(r, _)| *r) {
                    Ok(i) => leaves.get(i).is_some_and(|(_, l)| l[(bit / 64) as usize] & (1 << (bit % 64)) != 0),
                    Err(_) => self.state(region) == RegionState::Set,
                }
            }
        }
    }

    /// The regions `range` touches, clipped to the bitmap, each with the page range of
    /// it that `range` covers (as offsets into the region: `first..end`).
    fn regions_of(&self, range: PageRange) -> impl Iterator<Item = (u64, u64, u64)> + use<> {
        let (start, end) = (range.start_pfn(), range.end_pfn().min(self.pages));
        let first = start / REGION_PAGES;
        let count = if start >= end { 0 } else { (end - 1) / REGION_PAGES - first + 1 };
        (first..first + count).map(move |region| {
            let base = region * REGION_PAGES;
            (region, start.max(base) - base, end.min(base + REGION_PAGES) - base)
        })
    }

    /// Make sure [`Self::set`] of `range` (to either value) will not need the heap: give
    /// every region the range covers only in part a leaf now.
    pub fn reserve(&self, range: PageRange) -> Result<(), NoRoom> {
        for (region, from, to) in self.regions_of(range) {
            if from == 0 && to == REGION_PAGES {
                continue;
            }
            let mut leaves = self.stripe(region);
            let state = self.state(region);
            if state == RegionState::Mixed {
                continue;
            }
            let fill = if state == RegionState::Set { u64::MAX } else { 0 };
            let at = leaves.binary_search_by_key(&region, |(r, _)| *r).unwrap_or_else(|i| i);
            leaves.try_reserve(1).map_err(|_| NoRoom)?;
            leaves.insert(at, (region, [fill; WORDS_PER_LEAF]));
            self.set_state(region, RegionState::Mixed);
        }
        Ok(())
    }

    /// [`Self::reserve`] and [`Self::any`] in one pass (one lock per region): whether some
    /// bit of `range` is set now, with room made for changing them.
    pub fn reserve_and_any(&self, range: PageRange) -> Result<bool, NoRoom> {
        let mut any = false;
        for (region, from, to) in self.regions_of(range) {
            let whole = from == 0 && to == REGION_PAGES;
            let state = self.state(region);
            if state != RegionState::Mixed && whole {
                any |= state == RegionState::Set;
                continue;
            }
            let mut leaves = self.stripe(region);
            let at = leaves.binary_search_by_key(&region, |(r, _)| *r);
            match (at, self.state(region)) {
                (Ok(i), RegionState::Mixed) => {
                    let leaf = leaves.get(i).map(|(_, l)| *l).unwrap_or_default();
                    any |= (from..to).any(|bit| leaf[(bit / 64) as usize] & (1 << (bit % 64)) != 0);
                }
                (_, state) => {
                    any |= state == RegionState::Set;
                    if !whole {
                        let fill = if state == RegionState::Set { u64::MAX } else { 0 };
                        let i = at.unwrap_or_else(|i| i);
                        leaves.try_reserve(1).map_err(|_| NoRoom)?;
                        leaves.insert(i, (region, [fill; WORDS_PER_LEAF]));
                        self.set_state(region, RegionState::Mixed);
                    }
                }
            }
        }
        Ok(any)
    }

    /// Set or clear every bit of `range` (bits beyond the bitmap are ignored). A region
    /// the range covers in part must have been [reserved](Self::reserve); one that was not
    /// is left as it was and the call returns `false` (an SVSM bug, which callers log).
    pub fn set(&self, range: PageRange, value: bool) -> bool {
        let mut complete = true;
        for (region, from, to) in self.regions_of(range) {
            let mut leaves = self.stripe(region);
            if from == 0 && to == REGION_PAGES {
                self.set_whole(&mut leaves, region, value);
                continue;
            }
            let Ok(i) = leaves.binary_search_by_key(&region, |(r, _)| *r) else {
                complete = false;
                continue;
            };
            let Some((_, leaf)) = leaves.get_mut(i) else { continue };
            // Only the words the range touches; a region can only have become uniform if
            // one of them became all ones or all zeros.
            let (mut added, mut removed, mut edge) = (0u64, 0u64, false);
            for w in (from / 64)..to.div_ceil(64) {
                let Some(word) = leaf.get_mut(w as usize) else { continue };
                let (lo, hi) = (w * 64, w * 64 + 64);
                let (a, b) = (from.max(lo), to.min(hi));
                let mask = (u64::MAX >> (64 - (b - a))) << (a - lo);
                let before = *word;
                *word = if value { before | mask } else { before & !mask };
                let changed = u64::from((before ^ *word).count_ones());
                if value {
                    added += changed
                } else {
                    removed += changed
                }
                edge |= *word == 0 || *word == u64::MAX;
            }
            if added != removed {
                self.ones.fetch_add(added.wrapping_sub(removed), Ordering::AcqRel);
            }
            // A leaf that became uniform goes.
            let uniform = if !edge {
                None
            } else if leaf.iter().all(|w| *w == u64::MAX) {
                Some(RegionState::Set)
            } else if leaf.iter().all(|w| *w == 0) {
                Some(RegionState::Clear)
            } else {
                None
            };
            if let Some(state) = uniform {
                leaves.remove(i);
                self.set_state(region, state);
            }
        }
        complete
    }

    fn set_whole(&self, leaves: &mut Vec<(u64, Leaf)>, region: u64, value: bool) {
        let before = match self.state(region) {
            RegionState::Clear => 0,
            RegionState::Set => REGION_PAGES,
            RegionState::Mixed => match leaves.binary_search_by_key(&region, |(r, _)| *r) {
                Ok(i) => {
                    let (_, leaf) = leaves.remove(i);
                    leaf.iter().map(|w| u64::from(w.count_ones())).sum()
                }
                Err(_) => 0,
            },
        };
        let after = if value { REGION_PAGES } else { 0 };
        // One atomic add of the (wrapping) difference.
        self.ones.fetch_add(after.wrapping_sub(before), Ordering::AcqRel);
        self.set_state(region, if value { RegionState::Set } else { RegionState::Clear });
    }

    /// Bits `from..to` of a mixed region, read under its stripe's lock: `f(bit, value)`
    /// until it answers `Some`.
    fn scan_mixed<T>(&self, region: u64, from: u64, to: u64, f: impl Fn(u64, bool) -> Option<T>) -> Option<T> {
        let leaves = self.stripe(region);
        match leaves.binary_search_by_key(&region, |(r, _)| *r) {
            Ok(i) => {
                let leaf = leaves.get(i).map(|(_, l)| *l)?;
                (from..to).find_map(|bit| f(bit, leaf[(bit / 64) as usize] & (1 << (bit % 64)) != 0))
            }
            // Made uniform since the state was read: its state now holds.
            Err(_) => {
                let value = self.state(region) == RegionState::Set;
                (from..to).find_map(|bit| f(bit, value))
            }
        }
    }

    /// Some bit of `range` is set.
    pub fn any(&self, range: PageRange) -> bool {
        self.regions_of(range).any(|(region, from, to)| match self.state(region) {
            RegionState::Clear => false,
            RegionState::Set => true,
            RegionState::Mixed => self.scan_mixed(region, from, to, |_, set| set.then_some(())).is_some(),
        })
    }

    /// First pfn of `range` whose bit is clear; pages beyond the bitmap count as clear.
    pub fn first_clear(&self, range: PageRange) -> Option<u64> {
        for (region, from, to) in self.regions_of(range) {
            let base = region * REGION_PAGES;
            match self.state(region) {
                RegionState::Set => {}
                RegionState::Clear => return Some(base + from),
                RegionState::Mixed => {
                    if let Some(bit) = self.scan_mixed(region, from, to, |bit, set| (!set).then_some(bit)) {
                        return Some(base + bit);
                    }
                }
            }
        }
        (range.end_pfn() > self.pages).then_some(range.start_pfn().max(self.pages))
    }

    /// First pfn at or after `from` whose bit is set.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        let mut pfn = from;
        while pfn < self.pages {
            let region = pfn / REGION_PAGES;
            let base = region * REGION_PAGES;
            match self.state(region) {
                RegionState::Set => return Some(pfn),
                RegionState::Clear => {}
                RegionState::Mixed => {
                    if let Some(bit) = self.scan_mixed(region, pfn - base, REGION_PAGES, |bit, set| set.then_some(bit))
                    {
                        return Some(base + bit);
                    }
                }
            }
            pfn = base + REGION_PAGES;
        }
        None
    }

    /// Set bits.
    pub fn count(&self) -> u64 {
        self.ones.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PageAddr;

    fn range(pfn: u64, pages: u64) -> PageRange {
        PageRange::new(PageAddr::from_pfn(pfn), pages).unwrap()
    }

    fn set(b: &PageBitmap, r: PageRange, v: bool) {
        b.reserve(r).unwrap();
        assert!(b.set(r, v));
    }

    #[test]
    fn ranges_cross_word_and_region_boundaries() {
        let b = PageBitmap::new(2000).unwrap();
        set(&b, range(0x1F0, 0x42), true);
        assert_eq!(b.count(), 0x42);
        assert_eq!(b.first_clear(range(0x1F0, 0x42)), None);
        assert_eq!(b.first_clear(range(0x1EF, 4)), Some(0x1EF));
        assert_eq!(b.first_clear(range(0x1F0, 0x43)), Some(0x232));
        assert!(b.any(range(0x231, 10)) && !b.any(range(0x232, 10)));
        set(&b, range(0x200, 1), false);
        assert_eq!(b.first_clear(range(0x1F0, 0x42)), Some(0x200));
        assert_eq!(b.next_set(0x200), Some(0x201));
        assert_eq!(b.next_set(0x232), None);
    }

    #[test]
    fn whole_regions_need_no_leaf_and_uniform_leaves_go_away() {
        let b = PageBitmap::new(4096).unwrap();
        assert!(b.set(range(512, 1024), true), "whole regions need no reservation");
        assert_eq!((b.count(), b.mixed_regions()), (1024, 0));
        set(&b, range(600, 1), false);
        assert_eq!(b.mixed_regions(), 1);
        set(&b, range(600, 1), true);
        assert_eq!(b.mixed_regions(), 0, "a region set whole again keeps no leaf");
        assert_eq!(b.count(), 1024);
    }

    #[test]
    fn reserve_and_any_answers_like_any_and_makes_room_like_reserve() {
        let b = PageBitmap::new(2048).unwrap();
        assert!(b.set(range(512, 512), true));
        assert!(b.reserve_and_any(range(600, 1)).unwrap(), "inside a set region");
        assert!(b.set(range(600, 1), false), "reserved by reserve_and_any");
        assert!(!b.reserve_and_any(range(600, 1)).unwrap());
        assert!(b.reserve_and_any(range(500, 20)).unwrap(), "across a clear and a set region");
        assert!(b.set(range(500, 20), false));
        assert!(!b.reserve_and_any(range(0, 10)).unwrap());
        assert!(b.set(range(0, 10), true));
        assert_eq!(b.count(), 512 - 1 - 8 + 10);
    }

    #[test]
    fn an_unreserved_partial_change_is_refused_not_half_done() {
        let b = PageBitmap::new(1024).unwrap();
        assert!(!b.set(range(3, 2), true));
        assert_eq!(b.count(), 0);
    }

    #[test]
    fn pages_beyond_the_end_are_clear_and_ignored() {
        let b = PageBitmap::new(100).unwrap();
        set(&b, range(90, 20), true);
        assert_eq!(b.count(), 10);
        assert_eq!(b.first_clear(range(95, 10)), Some(100));
        assert!(!b.get(100));
    }

    #[test]
    fn a_4_tib_map_costs_half_a_mebibyte() {
        let pages = 4 << 28; // 4 TiB of 4 KiB pages
        assert_eq!(PageBitmap::base_bytes(pages), 512 * 1024);
        let b = PageBitmap::new(pages).unwrap();
        assert!(b.set(range(0, pages), true));
        assert_eq!(b.count(), pages);
        set(&b, range(pages - 1, 1), false);
        assert_eq!(b.first_clear(range(0, pages)), Some(pages - 1));
    }

    #[test]
    fn cpus_changing_different_regions_at_once_lose_no_bit() {
        extern crate std;
        let pages = 64 * REGION_PAGES;
        let b = PageBitmap::new(pages).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let b = &b;
                s.spawn(move || {
                    // Each thread owns every fourth region and sets half of it page by
                    // page, in regions that share region-map words with the others'.
                    for region in (t..64).step_by(4) {
                        for pfn in (region * REGION_PAGES..(region + 1) * REGION_PAGES).step_by(2) {
                            set(b, range(pfn, 1), true);
                        }
                    }
                });
            }
        });
        assert_eq!(b.count(), pages / 2);
        assert_eq!(b.mixed_regions(), 64);
        assert_eq!(b.first_clear(range(0, pages)), Some(1));
        assert!((0..pages).all(|p| b.get(p) == (p % 2 == 0)));
    }

    #[test]
    fn matches_a_plain_bit_vector_under_random_changes() {
        // A fixed pseudo-random walk (no test dependency): every result equals the naive
        // answer.
        let pages = 3000u64;
        let b = PageBitmap::new(pages).unwrap();
        let mut naive = alloc::vec![false; pages as usize];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..4000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let start = x % pages;
            let len = 1 + (x >> 20) % if x & 1 == 0 { 8 } else { 1100 };
            let value = x & 2 != 0;
            let r = range(start, len.min(pages - start).max(1));
            set(&b, r, value);
            for p in r.start_pfn()..r.end_pfn() {
                naive[p as usize] = value;
            }
            let probe = range((x >> 32) % pages, 1 + (x >> 40) % 700);
            let in_range = |p: u64| p < pages;
            let want_first_clear = (probe.start_pfn()..probe.end_pfn()).find(|p| !in_range(*p) || !naive[*p as usize]);
            assert_eq!(b.first_clear(probe), want_first_clear);
            let want_any = (probe.start_pfn()..probe.end_pfn().min(pages)).any(|p| naive[p as usize]);
            assert_eq!(b.any(probe), want_any);
            assert_eq!(b.count(), naive.iter().filter(|v| **v).count() as u64);
            let from = (x >> 16) % pages;
            assert_eq!(b.next_set(from), (from..pages).find(|p| naive[*p as usize]));
        }
    }
}
