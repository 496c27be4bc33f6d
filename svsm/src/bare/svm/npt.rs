//! Nested page tables: the guest-physical to host-physical map of the L2 guest, 4 KiB
//! pages, identity (gpa = hpa). A page is present exactly while the guest may use it:
//! validated guest RAM, with the permissions the SVSM granted. SVSM memory, VMSAs and
//! unvalidated pages are absent, so a guest access there is a nested page fault that the
//! SVSM sees and refuses. Tables are allocated on demand and never freed.

use super::super::pages::Page;
use alloc::collections::BTreeMap;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
/// Nested walks are user accesses: every level needs U/S.
const USER: u64 = 1 << 2;
const NO_EXECUTE: u64 = 1 << 63;
const TABLE: u64 = PRESENT | WRITABLE | USER;
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// What the guest may do with a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub write: bool,
    pub execute: bool,
}

pub struct NestedPageTable {
    root: Page,
    /// Every lower-level table, by physical address.
    tables: BTreeMap<u64, Page>,
}

impl NestedPageTable {
    pub fn new() -> Option<Self> {
        Some(Self { root: Page::zeroed()?, tables: BTreeMap::new() })
    }

    /// Value for the VMCB's N_CR3.
    pub fn root(&self) -> u64 {
        self.root.phys()
    }

    /// Map (`Some`) or unmap (`None`) the 4 KiB page at `gpa`. `None` if a table could not
    /// be allocated or `gpa` is beyond 48 bits.
    pub fn set(&mut self, gpa: u64, access: Option<Access>) -> Option<()> {
        if gpa >> 48 != 0 {
            return None;
        }
        let mut table = self.root.phys();
        for level in [39u32, 30, 21] {
            let index = ((gpa >> level) & 0x1FF) as usize;
            let entry = self.entry(table, index);
            table = if entry & PRESENT != 0 {
                entry & ADDR_MASK
            } else {
                if access.is_none() {
                    return Some(()); // nothing mapped below: already absent
                }
                let page = Page::zeroed()?;
                let phys = page.phys();
                self.tables.insert(phys, page);
                self.set_entry(table, index, phys | TABLE);
                phys
            };
        }
        let leaf = match access {
            None => 0,
            Some(a) => {
                gpa | PRESENT | USER | if a.write { WRITABLE } else { 0 } | if a.execute { 0 } else { NO_EXECUTE }
            }
        };
        self.set_entry(table, ((gpa >> 12) & 0x1FF) as usize, leaf);
        Some(())
    }

    fn table_mut(&mut self, phys: u64) -> Option<&mut Page> {
        if self.root.phys() == phys {
            return Some(&mut self.root);
        }
        self.tables.get_mut(&phys)
    }

    fn entry(&mut self, table: u64, index: usize) -> u64 {
        self.table_mut(table).map_or(0, |t| t.words_mut()[index])
    }

    fn set_entry(&mut self, table: u64, index: usize, value: u64) {
        if let Some(t) = self.table_mut(table) {
            t.words_mut()[index] = value;
        }
    }
}
