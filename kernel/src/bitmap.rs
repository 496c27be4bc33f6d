//! A bitmap with one bit per 4 KiB page of guest RAM, with range operations a word at a
//! time (a 2 MiB page is 8 words). Used for the validation bitmap and for the fast "does
//! the SVSM own any page of this range" test.

use crate::addr::PageRange;
use alloc::vec;
use alloc::vec::Vec;

#[derive(Debug, Clone)]
pub struct PageBitmap {
    words: Vec<u64>,
    /// Pages covered: `[0, pages)`.
    pages: u64,
}

impl PageBitmap {
    pub fn new(pages: u64) -> Self {
        Self { words: vec![0; pages.div_ceil(64) as usize], pages }
    }

    /// The words `range` touches (clipped to the bitmap), each with the mask of its bits
    /// inside `range`. Plain arithmetic, no iterator state: this runs once or more per
    /// PVALIDATE entry.
    fn words(&self, range: PageRange) -> impl Iterator<Item = (usize, u64)> + use<> {
        let (start, end) = (range.start_pfn(), range.end_pfn().min(self.pages));
        let (first, last) = (start / 64, end.saturating_sub(1) / 64);
        let count = if start >= end { 0 } else { last - first + 1 };
        (first..first + count).map(move |w| {
            let lo = if w == first { start % 64 } else { 0 };
            let hi = if w == last { (end - 1) % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            (w as usize, mask)
        })
    }

    pub fn get(&self, pfn: u64) -> bool {
        pfn < self.pages && self.words[(pfn / 64) as usize] & (1 << (pfn % 64)) != 0
    }

    /// Set or clear every bit of `range` (bits beyond the bitmap are ignored).
    pub fn set(&mut self, range: PageRange, value: bool) {
        for (word, mask) in self.words(range) {
            if value {
                self.words[word] |= mask;
            } else {
                self.words[word] &= !mask;
            }
        }
    }

    /// Some bit of `range` is set.
    pub fn any(&self, range: PageRange) -> bool {
        self.words(range).any(|(word, mask)| self.words[word] & mask != 0)
    }

    /// First pfn of `range` whose bit is clear; pages beyond the bitmap count as clear.
    pub fn first_clear(&self, range: PageRange) -> Option<u64> {
        for (word, mask) in self.words(range) {
            let clear = !self.words[word] & mask;
            if clear != 0 {
                return Some(word as u64 * 64 + u64::from(clear.trailing_zeros()));
            }
        }
        (range.end_pfn() > self.pages).then_some(range.start_pfn().max(self.pages))
    }

    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PageAddr;

    fn range(pfn: u64, pages: u64) -> PageRange {
        PageRange::new(PageAddr::from_pfn(pfn), pages).unwrap()
    }

    #[test]
    fn ranges_cross_word_boundaries() {
        let mut b = PageBitmap::new(300);
        b.set(range(0x3F, 0x42), true);
        assert_eq!(b.count(), 0x42);
        assert_eq!(b.first_clear(range(0x3F, 0x42)), None);
        assert_eq!(b.first_clear(range(0x3E, 4)), Some(0x3E));
        assert_eq!(b.first_clear(range(0x3F, 0x43)), Some(0x81));
        assert!(b.any(range(0x80, 10)) && !b.any(range(0x81, 10)));
        b.set(range(0x40, 1), false);
        assert_eq!(b.first_clear(range(0x3F, 0x42)), Some(0x40));
    }

    #[test]
    fn pages_beyond_the_end_are_clear_and_ignored() {
        let mut b = PageBitmap::new(100);
        b.set(range(90, 20), true);
        assert_eq!(b.count(), 10);
        assert_eq!(b.first_clear(range(95, 10)), Some(100));
        assert!(!b.get(100));
    }
}
