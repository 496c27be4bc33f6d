//! Nested page tables: the guest-physical to host-physical map of an L2 guest. Guest
//! RAM is mapped identically (gpa = hpa) with 2 MiB pages; the SVSM's own region is never
//! mapped, so a guest access there is a nested page fault the SVSM sees and refuses.

use super::super::pages::Page;
use alloc::vec::Vec;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
/// Nested walks are user accesses: every level needs U/S.
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;
const TABLE: u64 = PRESENT | WRITABLE | USER;
const SIZE_2M: u64 = 2 << 20;
const SIZE_1G: u64 = 1 << 30;

pub struct NestedPageTable {
    pml4: Page,
    pdpt: Page,
    /// One page directory per GiB below `top`.
    pds: Vec<Page>,
}

impl NestedPageTable {
    /// Identity-map every 2 MiB page of `[0, top)` for which `mapped(gpa)` holds.
    pub fn identity(top: u64, mapped: impl Fn(u64) -> bool) -> Option<Self> {
        let gigs = top.div_ceil(SIZE_1G).min(512) as usize;
        let mut t = Self { pml4: Page::zeroed()?, pdpt: Page::zeroed()?, pds: Vec::new() };
        for g in 0..gigs {
            let mut pd = Page::zeroed()?;
            for (i, entry) in pd.words_mut().iter_mut().enumerate() {
                let gpa = g as u64 * SIZE_1G + i as u64 * SIZE_2M;
                if gpa < top && mapped(gpa) {
                    *entry = gpa | TABLE | HUGE;
                }
            }
            t.pdpt.words_mut()[g] = pd.phys() | TABLE;
            t.pds.push(pd);
        }
        t.pml4.words_mut()[0] = t.pdpt.phys() | TABLE;
        Some(t)
    }

    /// Value for the VMCB's N_CR3.
    pub fn root(&self) -> u64 {
        self.pml4.phys()
    }
}
