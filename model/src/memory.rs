//! Sparse guest-physical memory: pages that were never written read as zeros and cost
//! nothing, so a model guest can have gigabytes of RAM. A bitmap of populated pages makes
//! zeroing a range that holds no data (the common case) a few word tests.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;

const PAGE: usize = 4096;

/// Hashes a pfn with one multiply (Fibonacci hashing). Every guest access looks its page
/// up, and std's SipHash (built against hostile keys) cost more than the copy itself;
/// the keys here are the model's own page numbers.
#[derive(Default)]
struct PfnHasher(u64);

impl Hasher for PfnHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, pfn: u64) {
        self.0 = pfn.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Debug, Default)]
pub struct Memory {
    /// Written pages by pfn.
    pages: HashMap<u64, Box<[u8; PAGE]>, BuildHasherDefault<PfnHasher>>,
    /// Bit set = `pages` has an entry for that pfn.
    populated: Vec<u64>,
}

impl Memory {
    pub fn read(&self, gpa: u64, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let addr = gpa + done as u64;
            let off = (addr % PAGE as u64) as usize;
            let n = (PAGE - off).min(buf.len() - done);
            match self.pages.get(&(addr / PAGE as u64)) {
                Some(p) => buf[done..done + n].copy_from_slice(&p[off..off + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
    }

    pub fn write(&mut self, gpa: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let addr = gpa + done as u64;
            let off = (addr % PAGE as u64) as usize;
            let n = (PAGE - off).min(data.len() - done);
            let pfn = addr / PAGE as u64;
            let word = (pfn / 64) as usize;
            if word >= self.populated.len() {
                self.populated.resize(word + 1, 0);
            }
            self.populated[word] |= 1 << (pfn % 64);
            let page = self.pages.entry(pfn).or_insert_with(|| Box::new([0; PAGE]));
            page[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    pub fn zero_pages(&mut self, pfns: Range<u64>) {
        let words = (pfns.start / 64) as usize..(pfns.end.div_ceil(64) as usize).min(self.populated.len());
        if self.populated.get(words).is_none_or(|w| w.iter().all(|w| *w == 0)) {
            return;
        }
        for pfn in pfns {
            let (word, bit) = ((pfn / 64) as usize, 1 << (pfn % 64));
            if self.populated.get(word).is_some_and(|w| w & bit != 0) {
                self.pages.remove(&pfn);
                self.populated[word] &= !bit;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroing_removes_only_the_range() {
        let mut m = Memory::default();
        m.write(0x1FFE, &[1, 2, 3, 4]);
        m.write(0x5000, &[9]);
        m.zero_pages(1..2);
        let mut b = [0xFF; 4];
        m.read(0x1FFE, &mut b);
        assert_eq!(b, [0, 0, 3, 4]);
        m.zero_pages(2..5);
        m.read(0x1FFE, &mut b);
        assert_eq!(b, [0; 4]);
        m.read(0x5000, &mut b[..1]);
        assert_eq!(b[0], 9);
    }
}
