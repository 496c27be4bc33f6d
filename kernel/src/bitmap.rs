//! A set of 4 KiB guest pages, sized by how fragmented it is rather than by guest RAM.
//!
//! Used for the validation bitmap (pages the guest validated), the record of deposited
//! pages and the pool's free deposited pages. A flat bitmap costs 32 KiB per GiB of guest
//! RAM: 32 MiB for a 1 TiB guest, more than the SVSM's whole heap. Guests validate and
//! deposit memory mostly in 2 MiB runs, so this bitmap keeps two levels:
//!
//! - per 2 MiB region, 2 bits: all clear, all set, or mixed (64 KiB per TiB of RAM), in
//!   atomic words ([`PageBitmap`]): anyone may read a region's state at any time;
//! - for each mixed region only, a leaf of 512 bits (64 bytes), kept in one of
//!   [`STRIPES`] parts by region number ([`StripePart`]), allocated fallibly when a region
//!   first becomes mixed and dropped when it is uniform again.
//!
//! Who locks what is the owner's business: [`crate::pages::PageTracker`] keeps each
//! stripe's parts behind the lock that also serializes changes to those regions (so a
//! change takes one lock, not two), and [`OwnedBitmap`] is the plain single-owner form
//! (the pool, under its own lock). A region's state and leaf change only by the holder of
//! its stripe; a reader that sees "mixed" reads the leaf through the same stripe.
//!
//! A change that could make a region mixed needs a leaf; `reserve` makes it (or fails)
//! *before* the caller changes hardware state, so `set` never allocates and never fails:
//! the record cannot fall out of step with the hardware.

use crate::addr::PageRange;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

/// Pages per region (2 MiB).
pub const REGION_PAGES: u64 = 512;
const WORDS_PER_LEAF: usize = (REGION_PAGES / 64) as usize;
/// Regions per word of the region map (2 bits each).
const REGIONS_PER_WORD: u64 = 32;
/// Parts the leaves are spread over (by region number).
pub const STRIPES: usize = 64;

type Leaf = [u64; WORDS_PER_LEAF];

/// The stripe of `region`.
pub fn stripe_of(region: u64) -> usize {
    // Below STRIPES, a usize.
    usize::try_from(region % STRIPES as u64).unwrap_or(0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionState {
    Clear,
    Set,
    Mixed,
}

/// The heap cannot hold the bitmap (at start) or a leaf for a mixed region (later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoRoom;

/// A stripe's share of one bitmap: the leaves of its mixed regions (sorted by region) and
/// the set bits of its regions.
#[derive(Debug, Default)]
pub struct StripePart {
    leaves: Vec<(u64, Leaf)>,
    ones: u64,
}

impl StripePart {
    fn leaf(&self, region: u64) -> Option<&Leaf> {
        let i = self.leaves.binary_search_by_key(&region, |(r, _)| *r).ok()?;
        self.leaves.get(i).map(|(_, l)| l)
    }

    pub fn ones(&self) -> u64 {
        self.ones
    }

    pub fn mixed(&self) -> usize {
        self.leaves.len()
    }

    pub fn heap_bytes(&self) -> u64 {
        (self.leaves.capacity() * core::mem::size_of::<(u64, Leaf)>()) as u64
    }
}

/// The region states of a bitmap (the first level).
#[derive(Debug)]
pub struct PageBitmap {
    /// Pages covered: `[0, pages)`.
    pages: u64,
    /// 2 bits per region: 0 clear, 1 set, 2 mixed.
    regions: Vec<AtomicU64>,
}

impl PageBitmap {
    /// An all-clear bitmap for pages `[0, pages)`.
    pub fn new(pages: u64) -> Result<Self, NoRoom> {
        let regions = pages.div_ceil(REGION_PAGES);
        let words = usize::try_from(regions.div_ceil(REGIONS_PER_WORD)).map_err(|_| NoRoom)?;
        let mut map = Vec::new();
        map.try_reserve_exact(words).map_err(|_| NoRoom)?;
        map.resize_with(words, || AtomicU64::new(0));
        Ok(Self { pages, regions: map })
    }

    /// Bytes of heap the bitmap of `pages` pages needs before any region is mixed.
    pub fn base_bytes(pages: u64) -> u64 {
        pages.div_ceil(REGION_PAGES).div_ceil(REGIONS_PER_WORD) * 8
    }

    pub fn heap_bytes(&self) -> u64 {
        (self.regions.capacity() * 8) as u64
    }

    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// A region's state; anyone may read it.
    pub fn state(&self, region: u64) -> RegionState {
        let word = self.regions.get((region / REGIONS_PER_WORD) as usize).map_or(0, |w| w.load(Ordering::Acquire));
        match (word >> ((region % REGIONS_PER_WORD) * 2)) & 3 {
            1 => RegionState::Set,
            2 => RegionState::Mixed,
            _ => RegionState::Clear,
        }
    }

    /// Change a region's 2 bits (by the holder of its stripe; regions sharing the word
    /// may change at the same time, hence the update loop).
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

    /// The regions `range` touches, clipped to the bitmap, each with the part of it that
    /// `range` covers (as offsets into the region: `first..end`).
    pub fn regions_of(&self, range: PageRange) -> impl Iterator<Item = (u64, u64, u64)> + use<> {
        let (start, end) = (range.start_pfn(), range.end_pfn().min(self.pages));
        let first = start / REGION_PAGES;
        let count = if start >= end { 0 } else { (end - 1) / REGION_PAGES - first + 1 };
        (first..first + count).map(move |region| {
            let base = region * REGION_PAGES;
            (region, start.max(base) - base, end.min(base + REGION_PAGES) - base)
        })
    }

    /// The first of bits `from..to` of `region` (its stripe's `part`) that equals `want`.
    pub fn find(&self, part: &StripePart, region: u64, from: u64, to: u64, want: bool) -> Option<u64> {
        if from >= to {
            return None;
        }
        match self.state(region) {
            RegionState::Mixed => find_in_leaf(part.leaf(region)?, from, to, want),
            RegionState::Set => want.then_some(from),
            RegionState::Clear => (!want).then_some(from),
        }
    }

    /// Give `region` a leaf if `from..to` covers it only in part, so a change of those
    /// bits will not need the heap. Answers whether one of those bits is set (a caller
    /// about to change them often needs to know, and this has the leaf at hand).
    pub fn reserve(&self, part: &mut StripePart, region: u64, from: u64, to: u64) -> Result<bool, NoRoom> {
        let state = self.state(region);
        if state == RegionState::Mixed {
            return Ok(part.leaf(region).and_then(|leaf| find_in_leaf(leaf, from, to, true)).is_some());
        }
        let set = state == RegionState::Set && from < to;
        if from == 0 && to == REGION_PAGES {
            return Ok(set);
        }
        let fill = if state == RegionState::Set { u64::MAX } else { 0 };
        let at = part.leaves.binary_search_by_key(&region, |(r, _)| *r).unwrap_or_else(|i| i);
        part.leaves.try_reserve(1).map_err(|_| NoRoom)?;
        part.leaves.insert(at, (region, [fill; WORDS_PER_LEAF]));
        self.set_state(region, RegionState::Mixed);
        Ok(set)
    }

    /// Set or clear bits `from..to` of `region`. A part of a region that was not
    /// reserved is left as it was and the answer is `false` (an SVSM bug, which callers
    /// log).
    pub fn set(&self, part: &mut StripePart, region: u64, from: u64, to: u64, value: bool) -> bool {
        if from == 0 && to == REGION_PAGES {
            self.set_whole(part, region, value);
            return true;
        }
        let Ok(i) = part.leaves.binary_search_by_key(&region, |(r, _)| *r) else { return false };
        let Some((_, leaf)) = part.leaves.get_mut(i) else { return false };
        // Only the words the range touches; a region can only have become uniform if one
        // of them became all ones or all zeros.
        let (mut changed, mut edge) = (0u64, false);
        for w in (from / 64)..to.div_ceil(64) {
            let Some(word) = usize::try_from(w).ok().and_then(|w| leaf.get_mut(w)) else { continue };
            let (lo, hi) = (w * 64, w * 64 + 64);
            let (a, b) = (from.max(lo), to.min(hi));
            let mask = (u64::MAX >> (64 - (b - a))) << (a - lo);
            let before = *word;
            *word = if value { before | mask } else { before & !mask };
            // One page (the common 4 KiB change) needs no population count, which
            // baseline x86-64 computes in software.
            changed += if b - a == 1 { u64::from(before != *word) } else { u64::from((before ^ *word).count_ones()) };
            edge |= *word == 0 || *word == u64::MAX;
        }
        part.ones = if value { part.ones + changed } else { part.ones.saturating_sub(changed) };
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
            part.leaves.remove(i);
            self.set_state(region, state);
        }
        true
    }

    fn set_whole(&self, part: &mut StripePart, region: u64, value: bool) {
        let before = match self.state(region) {
            RegionState::Clear => 0,
            RegionState::Set => REGION_PAGES,
            RegionState::Mixed => match part.leaves.binary_search_by_key(&region, |(r, _)| *r) {
                Ok(i) => {
                    let (_, leaf) = part.leaves.remove(i);
                    leaf.iter().map(|w| u64::from(w.count_ones())).sum()
                }
                Err(_) => 0,
            },
        };
        let after = if value { REGION_PAGES } else { 0 };
        part.ones = part.ones.saturating_sub(before) + after;
        self.set_state(region, if value { RegionState::Set } else { RegionState::Clear });
    }
}

/// The first of bits `from..to` of `leaf` that equals `want`: a word at a time, the words
/// flipped when looking for a clear bit, the bits outside `from..to` masked off.
fn find_in_leaf(leaf: &Leaf, from: u64, to: u64, want: bool) -> Option<u64> {
    for w in (from / 64)..to.div_ceil(64) {
        let word = leaf.get(usize::try_from(w).ok()?).copied()?;
        let word = if want { word } else { !word };
        let (lo, hi) = (w * 64, w * 64 + 64);
        let (a, b) = (from.max(lo), to.min(hi));
        let mask = (u64::MAX >> (64 - (b - a))) << (a - lo);
        let hits = word & mask;
        if hits != 0 {
            return Some(lo + u64::from(hits.trailing_zeros()));
        }
    }
    None
}

/// A bitmap and its parts owned together: the single-owner form (the pool keeps its free
/// pages in one, under its own lock).
#[derive(Debug)]
pub struct OwnedBitmap {
    map: PageBitmap,
    /// On the heap: the pool sits in the SVSM, which moves through a small boot stack.
    parts: alloc::boxed::Box<[StripePart; STRIPES]>,
}

impl OwnedBitmap {
    pub fn new(pages: u64) -> Result<Self, NoRoom> {
        let parts = crate::heap::boxed_array(StripePart::default).ok_or(NoRoom)?;
        Ok(Self { map: PageBitmap::new(pages)?, parts })
    }

    fn part(&self, region: u64) -> &StripePart {
        // `stripe_of` is below STRIPES, the array's length: the fallback is never taken.
        let [first, ..] = &*self.parts;
        self.parts.get(stripe_of(region)).unwrap_or(first)
    }

    /// Before a change of `range`: whether some bit of it is set, with room made so the
    /// change cannot fail.
    pub fn reserve_and_any(&mut self, range: PageRange) -> Result<bool, NoRoom> {
        let mut any = false;
        for (region, from, to) in self.map.regions_of(range) {
            let part = self.parts.get_mut(stripe_of(region)).ok_or(NoRoom)?;
            any |= self.map.reserve(part, region, from, to)?;
        }
        Ok(any)
    }

    /// Bit `pfn` (clear beyond the end).
    pub fn get(&self, pfn: u64) -> bool {
        let region = pfn / REGION_PAGES;
        let bit = pfn % REGION_PAGES;
        pfn < self.map.pages && self.map.find(self.part(region), region, bit, bit + 1, true).is_some()
    }

    /// Make sure [`Self::set`] of `range` will not need the heap.
    pub fn reserve(&mut self, range: PageRange) -> Result<(), NoRoom> {
        for (region, from, to) in self.map.regions_of(range) {
            let part = self.parts.get_mut(stripe_of(region)).ok_or(NoRoom)?;
            self.map.reserve(part, region, from, to)?;
        }
        Ok(())
    }

    /// Set or clear `range` ([reserved](Self::reserve) first); `false` if a region was not.
    pub fn set(&mut self, range: PageRange, value: bool) -> bool {
        let mut complete = true;
        for (region, from, to) in self.map.regions_of(range) {
            complete &= self.parts.get_mut(stripe_of(region)).is_some_and(|p| self.map.set(p, region, from, to, value));
        }
        complete
    }

    /// Some bit of `range` is set.
    pub fn any(&self, range: PageRange) -> bool {
        self.map.regions_of(range).any(|(r, from, to)| self.map.find(self.part(r), r, from, to, true).is_some())
    }

    /// First pfn of `range` whose bit is clear; pages beyond the bitmap count as clear.
    pub fn first_clear(&self, range: PageRange) -> Option<u64> {
        for (r, from, to) in self.map.regions_of(range) {
            if let Some(bit) = self.map.find(self.part(r), r, from, to, false) {
                return Some(r * REGION_PAGES + bit);
            }
        }
        (range.end_pfn() > self.map.pages).then_some(range.start_pfn().max(self.map.pages))
    }

    /// First pfn at or after `from` whose bit is set.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        let mut pfn = from;
        while pfn < self.map.pages {
            let region = pfn / REGION_PAGES;
            let base = region * REGION_PAGES;
            let found = match self.map.state(region) {
                RegionState::Clear => None,
                _ => self.map.find(self.part(region), region, pfn - base, REGION_PAGES, true),
            };
            if let Some(bit) = found {
                return Some(base + bit);
            }
            pfn = base + REGION_PAGES;
        }
        None
    }

    /// Set bits.
    pub fn count(&self) -> u64 {
        self.parts.iter().map(StripePart::ones).sum()
    }

    /// Mixed regions (each holds a 64-byte leaf).
    pub fn mixed_regions(&self) -> usize {
        self.parts.iter().map(StripePart::mixed).sum()
    }

    pub fn heap_bytes(&self) -> u64 {
        self.map.heap_bytes() + self.parts.iter().map(StripePart::heap_bytes).sum::<u64>()
    }

    /// Bytes of heap a bitmap of `pages` pages needs before any region is mixed.
    pub fn base_bytes(pages: u64) -> u64 {
        PageBitmap::base_bytes(pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PageAddr;

    fn range(pfn: u64, pages: u64) -> PageRange {
        PageRange::new(PageAddr::from_pfn(pfn), pages).unwrap()
    }

    fn set(b: &mut OwnedBitmap, r: PageRange, v: bool) {
        b.reserve(r).unwrap();
        assert!(b.set(r, v));
    }

    #[test]
    fn ranges_cross_word_and_region_boundaries() {
        let mut b = OwnedBitmap::new(2000).unwrap();
        set(&mut b, range(0x1F0, 0x42), true);
        assert_eq!(b.count(), 0x42);
        assert_eq!(b.first_clear(range(0x1F0, 0x42)), None);
        assert_eq!(b.first_clear(range(0x1EF, 4)), Some(0x1EF));
        assert_eq!(b.first_clear(range(0x1F0, 0x43)), Some(0x232));
        assert!(b.any(range(0x231, 10)) && !b.any(range(0x232, 10)));
        set(&mut b, range(0x200, 1), false);
        assert_eq!(b.first_clear(range(0x1F0, 0x42)), Some(0x200));
        assert_eq!(b.next_set(0x200), Some(0x201));
        assert_eq!(b.next_set(0x232), None);
    }

    #[test]
    fn whole_regions_need_no_leaf_and_uniform_leaves_go_away() {
        let mut b = OwnedBitmap::new(4096).unwrap();
        assert!(b.set(range(512, 1024), true), "whole regions need no reservation");
        assert_eq!((b.count(), b.mixed_regions()), (1024, 0));
        set(&mut b, range(600, 1), false);
        assert_eq!(b.mixed_regions(), 1);
        set(&mut b, range(600, 1), true);
        assert_eq!(b.mixed_regions(), 0, "a region set whole again keeps no leaf");
        assert_eq!(b.count(), 1024);
    }

    #[test]
    fn reserve_and_any_answers_like_any_and_makes_room_like_reserve() {
        let mut b = OwnedBitmap::new(2048).unwrap();
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
        let mut b = OwnedBitmap::new(1024).unwrap();
        assert!(!b.set(range(3, 2), true));
        assert_eq!(b.count(), 0);
    }

    #[test]
    fn pages_beyond_the_end_are_clear_and_ignored() {
        let mut b = OwnedBitmap::new(100).unwrap();
        set(&mut b, range(90, 20), true);
        assert_eq!(b.count(), 10);
        assert_eq!(b.first_clear(range(95, 10)), Some(100));
        assert!(!b.get(100));
    }

    #[test]
    fn a_4_tib_map_costs_half_a_mebibyte() {
        let pages = 4 << 28; // 4 TiB of 4 KiB pages
        assert_eq!(OwnedBitmap::base_bytes(pages), 512 * 1024);
        let mut b = OwnedBitmap::new(pages).unwrap();
        assert!(b.set(range(0, pages), true));
        assert_eq!(b.count(), pages);
        set(&mut b, range(pages - 1, 1), false);
        assert_eq!(b.first_clear(range(0, pages)), Some(pages - 1));
    }

    #[test]
    fn matches_a_plain_bit_vector_under_random_changes() {
        // A fixed pseudo-random walk (no test dependency): every result equals the naive
        // answer.
        let pages = 3000u64;
        let mut b = OwnedBitmap::new(pages).unwrap();
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
            set(&mut b, r, value);
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
