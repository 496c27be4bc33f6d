//! The nested page tables' memory: 4-level tables of 4 KiB pages from the heap, written
//! in the entry format `bulwark_svm::npt` defines, which also decides what each guest
//! page maps to. A 2 MiB region the guest may use alike is one 2 MiB leaf, until one of
//! its pages changes alone: then the leaf is split into a table of 4 KiB leaves.
//!
//! Tables are allocated on demand and never freed or reused: a table stays the region's
//! once made, also when the whole region later maps alike again (its 512 leaves are then
//! written alike). A table a 2 MiB leaf replaced could still be walked by a CPU running
//! the guest until the flush that follows the change reaches it; reused meanwhile (as a
//! directory, say, whose entries read as writable leaves) it would let the guest reach
//! SVSM memory (found by review). Only regions the guest changes page by page get a
//! table, as before 2 MiB leaves.

use super::super::pages::Page;
use alloc::vec::Vec;
use core::sync::atomic::{Ordering, compiler_fence};
use svm::npt::{self, Access};

pub struct NestedPageTable {
    root: Page,
    /// Every lower-level table, sorted by physical address. A vector grown with
    /// `try_reserve`, not a map: the guest decides how many tables there are (one per
    /// 2 MiB it validates page by page), and a map's node allocation that fails on a
    /// full heap would panic the SVSM (found by review).
    tables: Vec<Page>,
}

/// Shifts of the levels above the directory: the root (PML4) and the PDPT.
const ABOVE_DIRECTORY: [u32; 2] = [npt::LEVELS[0], npt::LEVELS[1]];
/// Shift of the directory level, whose entries map 2 MiB each.
const DIRECTORY: u32 = npt::LEVELS[2];
/// Shift of the level of 4 KiB leaves.
const SMALL: u32 = npt::LEVELS[3];

impl NestedPageTable {
    pub fn new() -> Option<Self> {
        Some(Self { root: Page::zeroed()?, tables: Vec::new() })
    }

    /// Value for the VMCB's N_CR3.
    pub fn root(&self) -> u64 {
        self.root.phys()
    }

    /// Map (`Some`) or unmap (`None`) the 4 KiB page at `gpa`, splitting a 2 MiB leaf that
    /// maps it otherwise. `None` (and nothing changed) if a table could not be allocated or
    /// nested paging cannot map `gpa`.
    pub fn set(&mut self, gpa: u64, access: Option<Access>) -> Option<()> {
        let Some((directory, at, entry)) = self.directory_entry(gpa, access.is_some())? else {
            return Some(()); // nothing mapped below: already absent
        };
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

    /// Map (`Some`) or unmap (`None`) the 2 MiB region at `gpa`: with one 2 MiB leaf, or,
    /// where the region has a table already, with its 512 leaves alike. `None` (and
    /// nothing changed) if a directory table could not be allocated or nested paging
    /// cannot map `gpa`.
    pub fn set_region(&mut self, gpa: u64, access: Option<Access>) -> Option<()> {
        let Some((directory, at, entry)) = self.directory_entry(gpa, access.is_some())? else {
            return Some(()); // nothing mapped below: already absent
        };
        if entry & npt::PRESENT == 0 || entry & npt::LARGE != 0 {
            self.set_entry(directory, at, npt::large_leaf(gpa, access));
            return Some(());
        }
        let table = entry & npt::ADDR_MASK;
        let base = gpa & !(npt::REGION_PAGES * 4096 - 1);
        for (i, page) in (base..base + (npt::REGION_PAGES << 12)).step_by(4096).enumerate() {
            self.set_entry(table, i, npt::leaf(page, access));
        }
        Some(())
    }

    /// The directory entry that maps the 2 MiB around `gpa`: the directory table, the
    /// entry's index and value. `Some(None)` if there is no directory and `create` is
    /// false; `None` if `gpa` is beyond nested paging or a table could not be allocated.
    fn directory_entry(&mut self, gpa: u64, create: bool) -> Option<Option<(u64, usize, u64)>> {
        if !npt::mappable(gpa) {
            return None;
        }
        let Some(directory) = self.directory(gpa, create)? else { return Some(None) };
        let at = npt::index(gpa, DIRECTORY);
        Some(Some((directory, at, self.entry(directory, at))))
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

    /// A new table whose entry `i` is `entry(i)`: its physical address.
    fn new_table(&mut self, entry: impl Fn(usize) -> u64) -> Option<u64> {
        self.tables.try_reserve(1).ok()?;
        let mut page = Page::zeroed()?;
        for (i, word) in page.words_mut().iter_mut().enumerate() {
            *word = entry(i);
        }
        // The entries are in place before the caller links the table, where a CPU running
        // the guest may walk it at once.
        compiler_fence(Ordering::Release);
        let phys = page.phys();
        let at = self.tables.partition_point(|t| t.phys() < phys);
        self.tables.insert(at, page);
        Some(phys)
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
