//! The nested page tables' memory: 4-level tables of 4 KiB pages from the heap, written
//! in the entry format `bulwark_svm::npt` defines, which also decides what each guest
//! page maps to. Tables are allocated on demand and never freed.

use super::super::pages::Page;
use alloc::vec::Vec;
use svm::npt::{self, Access};

pub struct NestedPageTable {
    root: Page,
    /// Every lower-level table, sorted by physical address. A vector grown with
    /// `try_reserve`, not a map: the guest decides how many tables there are (one per
    /// 2 MiB it validates page by page), and a map's node allocation that fails on a
    /// full heap would panic the SVSM (found by review).
    tables: Vec<Page>,
}

impl NestedPageTable {
    pub fn new() -> Option<Self> {
        Some(Self { root: Page::zeroed()?, tables: Vec::new() })
    }

    /// Value for the VMCB's N_CR3.
    pub fn root(&self) -> u64 {
        self.root.phys()
    }

    /// Map (`Some`) or unmap (`None`) the 4 KiB page at `gpa`. `None` if a table could not
    /// be allocated or nested paging cannot map `gpa`.
    pub fn set(&mut self, gpa: u64, access: Option<Access>) -> Option<()> {
        if !npt::mappable(gpa) {
            return None;
        }
        let [upper @ .., last] = npt::LEVELS;
        let mut table = self.root.phys();
        for shift in upper {
            let index = npt::index(gpa, shift);
            let entry = self.entry(table, index);
            table = if entry & npt::PRESENT != 0 {
                entry & npt::ADDR_MASK
            } else {
                if access.is_none() {
                    return Some(()); // nothing mapped below: already absent
                }
                self.tables.try_reserve(1).ok()?;
                let page = Page::zeroed()?;
                let phys = page.phys();
                let at = self.tables.partition_point(|t| t.phys() < phys);
                self.tables.insert(at, page);
                self.set_entry(table, index, npt::table(phys));
                phys
            };
        }
        self.set_entry(table, npt::index(gpa, last), npt::leaf(gpa, access));
        Some(())
    }

    fn table_mut(&mut self, phys: u64) -> Option<&mut Page> {
        if self.root.phys() == phys {
            return Some(&mut self.root);
        }
        let at = self.tables.binary_search_by_key(&phys, Page::phys).ok()?;
        self.tables.get_mut(at)
    }

    fn entry(&mut self, table: u64, index: usize) -> u64 {
        self.table_mut(table).and_then(|t| t.words_mut().get(index).copied()).unwrap_or(0)
    }

    fn set_entry(&mut self, table: u64, index: usize, value: u64) {
        if let Some(word) = self.table_mut(table).and_then(|t| t.words_mut().get_mut(index)) {
            *word = value;
        }
    }
}
