//! The SVSM page pool: pages the SVSM may hand to its own dynamic structures (per-vCPU
//! contexts today), drawn from a reserve inside the SVSM image and from pages the guest
//! deposited (spec 58019 sections 6.5-6.6).
//!
//! Invariant: a page is in at most one of `reserve` and `deposited_free`; deposited pages
//! in use are owned by whoever allocated them and come back through [`PagePool::free`].
//! Allocation takes reserve pages first so that deposited pages stay withdrawable.

use crate::addr::PageAddr;
use alloc::vec::Vec;

#[derive(Debug, Default)]
pub struct PagePool {
    reserve: Vec<PageAddr>,
    deposited_free: Vec<PageAddr>,
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

impl PagePool {
    pub fn new(reserve: Vec<PageAddr>) -> Self {
        let reserve_total = reserve.len() as u64;
        Self { reserve, deposited_free: Vec::new(), reserve_total, deposited_total: 0 }
    }

    pub fn available(&self) -> usize {
        self.reserve.len() + self.deposited_free.len()
    }

    /// Take `n` pages, all or nothing. `Err(shortfall)` names how many more are needed.
    pub fn alloc(&mut self, n: usize) -> Result<Vec<PageAddr>, u32> {
        let have = self.available();
        if have < n {
            return Err(u32::try_from(n - have).unwrap_or(u32::MAX));
        }
        let mut out = Vec::new();
        if out.try_reserve_exact(n).is_err() {
            return Err(1);
        }
        while out.len() < n {
            match self.reserve.pop().or_else(|| self.deposited_free.pop()) {
                Some(p) => out.push(p),
                None => break,
            }
        }
        Ok(out)
    }

    /// Return a page; `deposited` says where it came from.
    pub fn free(&mut self, page: PageAddr, deposited: bool) {
        if deposited {
            self.deposited_free.push(page);
        } else {
            self.reserve.push(page);
        }
    }

    /// A page the guest deposited joins the pool.
    pub fn add_deposited(&mut self, page: PageAddr) {
        self.deposited_free.push(page);
        self.deposited_total += 1;
    }

    /// Take up to `max` free deposited pages for withdrawal.
    pub fn take_withdrawable(&mut self, max: usize) -> Vec<PageAddr> {
        let n = max.min(self.deposited_free.len());
        let split = self.deposited_free.len() - n;
        self.deposited_free.split_off(split)
    }

    /// A withdrawal finished: `pages` left the pool for good.
    pub fn withdrawn(&mut self, pages: usize) {
        self.deposited_total = self.deposited_total.saturating_sub(pages as u64);
    }

    /// Free deposited memory exists (SVSM_MEM_AVAILABLE).
    pub fn mem_available(&self) -> bool {
        !self.deposited_free.is_empty()
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            reserve_total: self.reserve_total,
            reserve_free: self.reserve.len() as u64,
            deposited_total: self.deposited_total,
            deposited_free: self.deposited_free.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_used_before_deposits() {
        let mut pool = PagePool::new(alloc::vec![PageAddr::from_pfn(1)]);
        pool.add_deposited(PageAddr::from_pfn(100));
        let got = pool.alloc(1).unwrap();
        assert_eq!(got, [PageAddr::from_pfn(1)]);
        assert!(pool.mem_available());
        assert_eq!(pool.alloc(2), Err(1));
        assert_eq!(pool.available(), 1, "a failed allocation takes nothing");
    }

    #[test]
    fn withdrawal_drains_deposits_only() {
        let mut pool = PagePool::new(alloc::vec![PageAddr::from_pfn(1)]);
        pool.add_deposited(PageAddr::from_pfn(100));
        pool.add_deposited(PageAddr::from_pfn(101));
        let w = pool.take_withdrawable(10);
        assert_eq!(w.len(), 2);
        pool.withdrawn(2);
        assert!(!pool.mem_available());
        assert_eq!(pool.stats().reserve_free, 1);
        assert_eq!(pool.stats().deposited_total, 0);
    }
}
