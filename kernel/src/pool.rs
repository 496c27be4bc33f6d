//! The SVSM page pool: pages the SVSM may hand to its own dynamic structures (per-vCPU
//! contexts today), drawn from a reserve inside the SVSM image and from pages the guest
//! deposited (spec 58019 sections 6.5-6.6).
//!
//! Invariant: a page is in at most one of `reserve` and `free`; deposited pages in use are
//! owned by whoever allocated them and come back through [`PagePool::free`]. Allocation
//! takes reserve pages first so that deposited pages stay withdrawable.
//!
//! No guest-triggered path grows the heap without a way to fail: the reserve's room is
//! fixed at start, and free deposited pages are a two-level bitmap (`bitmap`) whose
//! changes are reserved before the pages change hands. A guest may deposit as much as it
//! likes; the record of it costs 64 bytes per 2 MiB region deposited in part, nothing for
//! a region deposited whole.

use crate::addr::{PageAddr, PageRange};
use crate::bitmap::{NoRoom, OwnedBitmap};
use alloc::vec::Vec;

#[derive(Debug)]
pub struct PagePool {
    /// Free pages of the SVSM's own reserve; room for all of them is reserved at start.
    reserve: Vec<PageAddr>,
    /// Deposited pages nobody uses.
    free: OwnedBitmap,
    reserve_total: u64,
    deposited_total: u64,
}

/// Pool figures for statistics and reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    pub reserve_total: u64,
    pub reserve_free: u64,
    pub deposited_total: u64,
    pub deposited_free: u64,
}

/// Why an allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// This many more pages are needed (the guest may deposit them).
    Short(u32),
    /// The heap cannot record the change.
    NoRoom,
}

impl PagePool {
    /// A pool of `reserve` for guest RAM up to `top_pfn`.
    pub fn new(reserve: Vec<PageAddr>, top_pfn: u64) -> Result<Self, NoRoom> {
        let reserve_total = reserve.len() as u64;
        Ok(Self { reserve, free: OwnedBitmap::new(top_pfn)?, reserve_total, deposited_total: 0 })
    }

    pub fn available(&self) -> u64 {
        self.reserve.len() as u64 + self.free.count()
    }

    /// Take `N` pages, all or nothing.
    pub fn alloc<const N: usize>(&mut self) -> Result<[PageAddr; N], PoolError> {
        let have = self.available();
        if have < N as u64 {
            return Err(PoolError::Short(u32::try_from(N as u64 - have).unwrap_or(u32::MAX)));
        }
        let mut out = [PageAddr::from_pfn(0); N];
        let mut taken = 0;
        while taken < N {
            let Some(page) = self.reserve.pop() else { break };
            if let Some(slot) = out.get_mut(taken) {
                *slot = page;
            }
            taken += 1;
        }
        let from_reserve = taken;
        let mut from = 0;
        while taken < N {
            let page = self.free.next_set(from).map(PageAddr::from_pfn).and_then(|page| {
                let one = PageRange::new(page, 1)?;
                self.free.reserve(one).ok()?;
                self.free.set(one, false);
                Some(page)
            });
            match (page, out.get_mut(taken)) {
                (Some(page), Some(slot)) => {
                    from = page.pfn() + 1;
                    *slot = page;
                    taken += 1;
                }
                _ => {
                    // Give back what was taken: all or nothing. (Giving a deposited page
                    // back can itself need a leaf; on a heap that full the page stays
                    // out of the pool, which costs the guest a page, not the SVSM.)
                    for (i, page) in out.iter().take(taken).enumerate() {
                        self.free(*page, i >= from_reserve);
                    }
                    return Err(PoolError::NoRoom);
                }
            }
        }
        Ok(out)
    }

    /// Return a page; `deposited` says where it came from. A deposited page whose record
    /// cannot be made (the heap is exhausted) stays out of the pool and is logged by the
    /// caller through the `false` answer.
    pub fn free(&mut self, page: PageAddr, deposited: bool) -> bool {
        if deposited {
            let Some(one) = PageRange::new(page, 1) else { return false };
            self.free.reserve(one).is_ok() && self.free.set(one, true)
        } else if self.reserve.len() < self.reserve.capacity() {
            // Within the room reserved at start: no allocation.
            self.reserve.push(page);
            true
        } else {
            false
        }
    }

    /// Make sure [`Self::add_deposited`] of `range` cannot fail.
    pub fn reserve_deposit(&mut self, range: PageRange) -> Result<(), NoRoom> {
        self.free.reserve(range)
    }

    /// Pages the guest deposited join the pool ([reserved](Self::reserve_deposit) first).
    pub fn add_deposited(&mut self, range: PageRange) -> bool {
        let done = self.free.set(range, true);
        if done {
            self.deposited_total += range.pages();
        }
        done
    }

    /// Take up to `max` free deposited pages for withdrawal (fewer if the heap cannot
    /// record more; none on an empty pool).
    pub fn take_withdrawable(&mut self, max: usize) -> Vec<PageAddr> {
        let mut out = Vec::new();
        let want = max.min(usize::try_from(self.free.count()).unwrap_or(usize::MAX));
        if out.try_reserve_exact(want).is_err() {
            return out;
        }
        let mut from = 0;
        while out.len() < want {
            let Some(pfn) = self.free.next_set(from) else { break };
            let page = PageAddr::from_pfn(pfn);
            let Some(one) = PageRange::new(page, 1) else { break };
            if self.free.reserve(one).is_err() {
                break;
            }
            self.free.set(one, false);
            out.push(page);
            from = pfn + 1;
        }
        out
    }

    /// A withdrawal finished: `pages` left the pool for good.
    pub fn withdrawn(&mut self, pages: usize) {
        self.deposited_total = self.deposited_total.saturating_sub(pages as u64);
    }

    /// The first free deposited page at or after `from_pfn`.
    pub fn next_free_deposited(&self, from_pfn: u64) -> Option<PageAddr> {
        self.free.next_set(from_pfn).map(PageAddr::from_pfn)
    }

    /// Free deposited memory exists (SVSM_MEM_AVAILABLE).
    pub fn mem_available(&self) -> bool {
        self.free.count() > 0
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            reserve_total: self.reserve_total,
            reserve_free: self.reserve.len() as u64,
            deposited_total: self.deposited_total,
            deposited_free: self.free.count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(reserve: &[u64]) -> PagePool {
        PagePool::new(reserve.iter().map(|p| PageAddr::from_pfn(*p)).collect(), 4096).unwrap()
    }

    fn one(pfn: u64) -> PageRange {
        PageRange::new(PageAddr::from_pfn(pfn), 1).unwrap()
    }

    fn deposit(p: &mut PagePool, r: PageRange) {
        p.reserve_deposit(r).unwrap();
        assert!(p.add_deposited(r));
    }

    #[test]
    fn reserve_is_used_before_deposits() {
        let mut pool = pool(&[1]);
        deposit(&mut pool, one(100));
        let got = pool.alloc::<1>().unwrap();
        assert_eq!(got, [PageAddr::from_pfn(1)]);
        assert!(pool.mem_available());
        assert_eq!(pool.alloc::<2>(), Err(PoolError::Short(1)));
        assert_eq!(pool.available(), 1, "a failed allocation takes nothing");
    }

    #[test]
    fn withdrawal_drains_deposits_only() {
        let mut pool = pool(&[1]);
        deposit(&mut pool, one(100));
        deposit(&mut pool, one(101));
        let w = pool.take_withdrawable(10);
        assert_eq!(w.len(), 2);
        pool.withdrawn(2);
        assert!(!pool.mem_available());
        assert_eq!(pool.stats().reserve_free, 1);
        assert_eq!(pool.stats().deposited_total, 0);
    }

    #[test]
    fn a_deposited_2m_region_costs_no_leaf_and_pages_come_back() {
        let mut pool = pool(&[]);
        let region = PageRange::new(PageAddr::from_pfn(1024), 512).unwrap();
        assert!(pool.add_deposited(region), "a whole region needs no reservation");
        let pages = pool.alloc::<3>().unwrap();
        assert_eq!(pool.stats().deposited_free, 509);
        for p in pages {
            assert!(pool.free(p, true));
        }
        assert_eq!(pool.stats().deposited_free, 512);
        assert_eq!(pool.free.mixed_regions(), 0, "the region is whole again");
    }
}
