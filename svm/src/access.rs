//! Which guest pages the SVSM itself may copy to and from: a bit per page, kept equal to
//! the RMP's answer for VMPL0 (assigned and validated) by whoever changes the RMP, under
//! the page-state lock, and read without any lock.
//!
//! Every guest-memory copy the kernel asks for (the calling area on every call, request
//! lists, vTPM buffers) is checked here, so the common path of a call touches no lock
//! another CPU holds: a CPU changing page state for seconds does not delay another
//! CPU's call. A copy checked just before another CPU invalidates the page lands in a
//! page that is no longer validated, as if it had come first: the page is guest RAM
//! either way (the SVSM's own memory never is, and the seam refuses it separately), and
//! which page may be written when is the kernel's decision under its own locks.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

/// One bit per guest page: may the SVSM copy it?
#[derive(Debug)]
pub struct AccessMap {
    words: Vec<AtomicU64>,
}

impl AccessMap {
    /// A map of `pages` pages, none accessible; `None` if the heap cannot hold it.
    pub fn new(pages: u64) -> Option<Self> {
        let count = usize::try_from(pages.div_ceil(64)).ok()?;
        let mut words = Vec::new();
        words.try_reserve_exact(count).ok()?;
        words.resize_with(count, || AtomicU64::new(0));
        Some(Self { words })
    }

    fn word(&self, pfn: u64) -> Option<(&AtomicU64, u64)> {
        let word = self.words.get(usize::try_from(pfn / 64).ok()?)?;
        Some((word, 1 << (pfn % 64)))
    }

    /// Record whether the SVSM may copy page `pfn` (the caller holds the page-state lock,
    /// so changes never race each other).
    pub fn set(&self, pfn: u64, allowed: bool) {
        if let Some((word, bit)) = self.word(pfn) {
            match allowed {
                true => word.fetch_or(bit, Ordering::Release),
                false => word.fetch_and(!bit, Ordering::Release),
            };
        }
    }

    pub fn allows(&self, pfn: u64) -> bool {
        self.word(pfn).is_some_and(|(word, bit)| word.load(Ordering::Acquire) & bit != 0)
    }

    /// May the SVSM copy every byte of `[gpa, gpa + len)`? `Err` names the first refused
    /// address.
    pub fn check(&self, gpa: u64, len: usize) -> Result<(), u64> {
        if len == 0 {
            return Ok(());
        }
        let last = gpa.checked_add(len as u64 - 1).ok_or(gpa)?;
        match (gpa >> 12..=last >> 12).find(|pfn| !self.allows(*pfn)) {
            Some(pfn) => Err((pfn << 12).max(gpa)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_refused_until_allowed() {
        let map = AccessMap::new(130).unwrap();
        assert_eq!(map.check(0x1000, 8), Err(0x1000));
        map.set(1, true);
        map.set(2, true);
        assert_eq!(map.check(0x1000, 0x2000), Ok(()));
        assert_eq!(map.check(0x1FF8, 16), Ok(()), "across a page boundary");
        assert_eq!(map.check(0x2FF8, 16), Err(0x3000), "the first refused byte");
        map.set(129, true);
        assert!(map.allows(129) && !map.allows(128) && !map.allows(130), "beyond the map: refused");
        map.set(1, false);
        assert_eq!(map.check(0x1800, 0x1000), Err(0x1800));
        assert_eq!(map.check(u64::MAX - 4, 8), Err(u64::MAX - 4), "wraps");
        assert_eq!(map.check(0x5000, 0), Ok(()), "nothing to copy");
    }
}
