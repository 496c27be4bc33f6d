//! The nested page tables' memory: 4-level tables of 4 KiB pages from the heap, written
//! in the entry format `bulwark_svm::npt` defines, which also decides what each guest
//! page maps to. A 2 MiB region the guest may use alike is one 2 MiB leaf; a table of
//! 4 KiB leaves exists only for a region whose pages differ.
//!
//! Tables are allocated on demand. A table of 4 KiB leaves that a 2 MiB leaf replaces is
//! kept as a spare for the next split, never freed: until the flush that follows the
//! change reaches every CPU, a CPU still running the guest may walk it, and freed it could
//! hold anything the heap gave out meanwhile (guest-readable page-table entries pointing
//! at SVSM memory, say). Directory tables are never freed either.

use super::super::pages::Page;
use alloc::vec::Vec;
use svm::npt::{self, Access};

pub struct NestedPageTable {
    root: Page,
    /// Every lower-level table in use, sorted by physical address. A vector grown with
    /// `try_reserve`, not a map: the guest decides how many tables there are (one per
    /// 2 MiB it validates page by page), and a map's node allocation that fails on a
    /// full heap would panic the SVSM (found by review).
    tables: Vec<Page>,
    /// Tables of 4 KiB leaves that 2 MiB leaves replaced, for reuse.
    spare: Vec<Page>,
}

/// Shifts of the levels above the directory: the root (PML4) and the PDPT.
const ABOVE_DIRECTORY: [u32; 2] = [npt::LEVELS[0], npt::LEVELS[1]];
/// Shift of the directory level, whose entries map 2 MiB each.
const DIRECTORY: u32 = npt::LEVELS[2];
/// Shift of the level of 4 KiB leaves.
const SMALL: u32 = npt::LEVELS[3];

impl NestedPageTable {
    pub fn new() -> Option<Self> {
        Some(Self { root: Page::zeroed()?, tables: Vec::new(), spare: Vec::new() })
    }

    /// Value for the VMCB's N_CR3.
    pub fn root(&self) -> u64 {
        self.root.phys()
    }

    /// Map (`Some`) or unmap (`None`) the 4 KiB page at `gpa`, splitting a 2 MiB leaf that
    /// maps it otherwise. `None` (and nothing changed) if a table could not be allocated or
    /// nested paging cannot map `gpa`.
    pub fn set(&mut self, gpa: u64, access: Option<Access>) -> Option<()> {
        if !npt::mappable(gpa) {
            return None;
        }
        let Some(directory) = self.directory(gpa, access.is_some())? else {
            return Some(()); // nothing mapped below: already absent
        };
        let at = npt::index(gpa, DIRECTORY);
        let entry = self.entry(directory, at);
        let table = if entry & npt::PRESENT == 0 {
            if access.is_none() {
                return Some(());
            }
            let table = self.new_table(|_| 0)?;
            self.set_entry(directory, at, npt::table(table));
            table
        } else if entry & npt::LARGE != 0 {
            if npt::access_of(entry) == access {
                return Some(()); // the 2 MiB leaf maps the page so already
            }
            let table = self.new_table(|i| npt::split(entry, i))?;
            self.set_entry(directory, at, npt::table(table));
            table
        } else {
            entry & npt::ADDR_MASK
        };
        self.set_entry(table, npt::index(gpa, SMALL), npt::leaf(gpa, access));
        Some(())
    }

    /// Map (`Some`) or unmap (`None`) the 2 MiB region at `gpa` with one 2 MiB leaf; a
    /// table of 4 KiB leaves it replaces becomes a spare. `None` (and nothing changed) if
    /// a directory table could not be allocated or nested paging cannot map `gpa`.
    pub fn set_region(&mut self, gpa: u64, access: Option<Access>) -> Option<()> {
        if !npt::mappable(gpa) {
            return None;
        }
        let Some(directory) = self.directory(gpa, access.is_some())? else {
            return Some(()); // nothing mapped below: already absent
        };
        let at = npt::index(gpa, DIRECTORY);
        let entry = self.entry(directory, at);
        self.set_entry(directory, at, npt::large_leaf(gpa, access));
        if entry & npt::PRESENT != 0 && entry & npt::LARGE == 0 {
            self.retire(entry & npt::ADDR_MASK);
        }
        Some(())
    }

    /// The directory table that maps `gpa`: `Some(None)` if there is none and `create` is
    /// false, `None` if one was needed and could not be allocated.
    fn directory(&mut self, gpa: u64, create: bool) -> Option<Option<u64>> {
        let mut table = self.root.phys();
        for shift in ABOVE_DIRECTORY {
            let index = npt::index(gpa, shift);
            let entry = self.entry(table, index);
            table = if entry & npt::PRESENT != 0 {
                entry & npt::ADDR_MASK
            } else {
                if !create {
                    return Some(None);
                }
                let next = self.new_table(|_| 0)?;
                self.set_entry(table, index, npt::table(next));
                next
            };
        }
        Some(Some(table))
    }

    /// A table whose entry `i` is `entry(i)`, a spare if there is one: its physical
    /// address.
    fn new_table(&mut self, entry: impl Fn(usize) -> u64) -> Option<u64> {
        self.tables.try_reserve(1).ok()?;
        let mut page = match self.spare.pop() {
            Some(page) => page,
            None => Page::zeroed()?,
        };
        for (i, word) in page.words_mut().iter_mut().enumerate() {
            *word = entry(i);
        }
        let phys = page.phys();
        let at = self.tables.partition_point(|t| t.phys() < phys);
        self.tables.insert(at, page);
        Some(phys)
    }

    /// Take the table at `phys` out of use and keep it as a spare.
    fn retire(&mut self, phys: u64) {
        // `spare` never holds more than `tables` did, so reserving cannot outgrow what
        // was already allocated; if it fails anyway the table stays listed in `tables`
        // (unused, never freed: the same safety, one page lost to reuse).
        if self.spare.try_reserve(1).is_err() {
            return;
        }
        if let Ok(at) = self.tables.binary_search_by_key(&phys, Page::phys) {
            self.spare.push(self.tables.remove(at));
        }
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
