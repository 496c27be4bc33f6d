//! Nested paging from the RMP: on this platform the nested page tables enforce what the
//! software RMP says, so a guest page is present exactly while the RMP lets the guest's
//! VMPL read it, writable while it may write, executable while it may execute. SVSM
//! memory, VMSA pages and unvalidated pages are absent: a guest access there is a nested
//! page fault the SVSM refuses.
//!
//! [`access_for`] is that decision; [`leaf`], [`large_leaf`], [`table`] and [`index`] are
//! the entry format (4-level, identity gpa = hpa) the bare-metal tables are written in
//! (`svsm/src/bare/svm/npt.rs` owns their memory).
//!
//! A 2 MiB region whose 512 pages the guest may all use alike is one 2 MiB leaf
//! ([`uniform_access`]), not a table of 512 entries: the tables come from the SVSM's heap,
//! and at 4 KiB per 2 MiB a guest of a few GiB would use it up. A change to one page of
//! such a region splits the leaf into a table again ([`split`]).

use abi::hw::rmpadjust::{PERM_EXEC_SUPERVISOR, PERM_EXEC_USER, PERM_READ, PERM_WRITE};
use rmp::Rmp;

/// What the guest may do with a page it can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub write: bool,
    pub execute: bool,
}

/// The nested mapping of page `pfn` for a guest at `vmpl`: `None` (absent) unless the RMP
/// lets `vmpl` read it; then writable and executable as the RMP says (either execute
/// permission: nested paging has no user/supervisor split for the guest's fetches).
pub fn access_for(rmp: &Rmp, pfn: u64, vmpl: u8) -> Option<Access> {
    if vmpl == 0 || !rmp.allows(pfn, vmpl, PERM_READ) {
        return None;
    }
    Some(Access {
        write: rmp.allows(pfn, vmpl, PERM_WRITE),
        execute: rmp.allows(pfn, vmpl, PERM_EXEC_SUPERVISOR) || rmp.allows(pfn, vmpl, PERM_EXEC_USER),
    })
}

/// The 2 MiB pages of `[first_pfn, first_pfn + 512)` as one mapping: `Some(access)` if
/// every page of the region gets the same nested mapping, `None` if they differ.
pub fn uniform_access(rmp: &Rmp, first_pfn: u64, vmpl: u8) -> Option<Option<Access>> {
    let first = access_for(rmp, first_pfn, vmpl);
    (first_pfn + 1..first_pfn + REGION_PAGES).all(|pfn| access_for(rmp, pfn, vmpl) == first).then_some(first)
}

/// Pages in the region one 2 MiB leaf maps.
pub const REGION_PAGES: u64 = 512;

pub const PRESENT: u64 = 1;
pub const WRITABLE: u64 = 1 << 1;
/// Nested walks are user accesses: every level needs U/S.
pub const USER: u64 = 1 << 2;
/// In a directory (level-2) entry: the entry maps a 2 MiB page instead of a table.
pub const LARGE: u64 = 1 << 7;
pub const NO_EXECUTE: u64 = 1 << 63;
/// Bits of an entry that hold the next table's or the page's address.
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// Guest-physical addresses the 4-level tables map: below 2^48.
pub const GPA_BITS: u32 = 48;
/// Shift of the index at each level, from the root down to the leaf tables.
pub const LEVELS: [u32; 4] = [39, 30, 21, 12];

/// Entry of a non-leaf table pointing at the table at `phys`.
pub fn table(phys: u64) -> u64 {
    phys & ADDR_MASK | PRESENT | WRITABLE | USER
}

/// Leaf entry for the 4 KiB page at `gpa` (identity-mapped); 0 (absent) for `None`.
pub fn leaf(gpa: u64, access: Option<Access>) -> u64 {
    match access {
        None => 0,
        Some(a) => {
            gpa & ADDR_MASK
                | PRESENT
                | USER
                | if a.write { WRITABLE } else { 0 }
                | if a.execute { 0 } else { NO_EXECUTE }
        }
    }
}

/// Directory entry mapping the 2 MiB region at `gpa` (identity; the low 21 bits of `gpa`
/// are ignored) as one page; 0 (absent) for `None`.
pub fn large_leaf(gpa: u64, access: Option<Access>) -> u64 {
    match access {
        None => 0,
        Some(_) => leaf(gpa & !LARGE_OFFSET_MASK, access) | LARGE,
    }
}

/// Bits of an address inside its 2 MiB page.
const LARGE_OFFSET_MASK: u64 = (REGION_PAGES << 12) - 1;

/// What a present leaf entry (of either size) lets the guest do; `None` if absent.
pub fn access_of(entry: u64) -> Option<Access> {
    (entry & PRESENT != 0).then_some(Access { write: entry & WRITABLE != 0, execute: entry & NO_EXECUTE == 0 })
}

/// Entry `index` of the table a 2 MiB leaf becomes when one of its pages changes: that
/// page mapped as the leaf mapped it.
pub fn split(large: u64, index: usize) -> u64 {
    let base = large & ADDR_MASK & !LARGE_OFFSET_MASK;
    leaf(base + ((index as u64) << 12), access_of(large))
}

/// Index of `gpa` in a table of the level that shifts by `shift`.
pub fn index(gpa: u64, shift: u32) -> usize {
    ((gpa >> shift) & 0x1FF) as usize
}

/// Can nested paging map `gpa` at all?
pub fn mappable(gpa: u64) -> bool {
    gpa >> GPA_BITS == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::hw::rmpadjust::PERM_ALL;
    use rmp::Size;

    /// 16 pages, assigned; page 1 validated with all permissions, 2 read-only (the secrets
    /// page), 3 read/write, 4 execute-user only besides read, 5 a VMSA, 6 validated with
    /// none, 7 assigned but not validated; 8.. not assigned.
    fn rmp() -> Rmp {
        let mut r = Rmp::new(16);
        r.host_assign(0, 8);
        for (pfn, perms) in
            [(1, PERM_ALL), (2, PERM_READ), (3, PERM_READ | PERM_WRITE), (4, PERM_READ | PERM_EXEC_USER)]
        {
            r.pvalidate(pfn << 12, Size::Small, true).unwrap();
            r.rmpadjust(pfn << 12, Size::Small, 1, perms, false, |_| false).unwrap();
        }
        r.pvalidate(5 << 12, Size::Small, true).unwrap();
        r.rmpadjust(5 << 12, Size::Small, 1, 0, true, |_| false).unwrap();
        r.pvalidate(6 << 12, Size::Small, true).unwrap();
        r
    }

    #[test]
    fn the_guest_sees_what_the_rmp_lets_its_vmpl_read() {
        let r = rmp();
        let rwx = Some(Access { write: true, execute: true });
        assert_eq!(access_for(&r, 1, 1), rwx);
        assert_eq!(access_for(&r, 2, 1), Some(Access { write: false, execute: false }), "secrets: read-only");
        assert_eq!(access_for(&r, 3, 1), Some(Access { write: true, execute: false }));
        assert_eq!(access_for(&r, 4, 1), Some(Access { write: false, execute: true }), "user execute counts");
    }

    #[test]
    fn what_the_guest_may_not_read_is_absent() {
        let r = rmp();
        assert_eq!(access_for(&r, 0, 1), None, "assigned, never validated");
        assert_eq!(access_for(&r, 5, 1), None, "a VMSA page");
        assert_eq!(access_for(&r, 6, 1), None, "validated without permissions (SVSM memory)");
        assert_eq!(access_for(&r, 7, 1), None, "not validated");
        assert_eq!(access_for(&r, 8, 1), None, "not assigned");
        assert_eq!(access_for(&r, 1 << 40, 1), None, "beyond the table");
        assert_eq!(access_for(&r, 1, 2), None, "another VMPL's view: VMPL2 was granted nothing");
        assert_eq!(access_for(&r, 1, 0), None, "VMPL0 is the SVSM, never a nested guest");
    }

    #[test]
    fn an_invalidated_or_reassigned_page_disappears() {
        let mut r = rmp();
        r.pvalidate(1 << 12, Size::Small, false).unwrap();
        assert_eq!(access_for(&r, 1, 1), None);
        r.pvalidate(1 << 12, Size::Small, true).unwrap();
        // Validation keeps the RMP's permissions; the kernel revokes before it invalidates
        // (docs/protocols/core.md), so the page comes back as the RMP says.
        assert!(access_for(&r, 1, 1).is_some());
        r.host_assign(1, 1);
        assert_eq!(access_for(&r, 1, 1), None, "a reassigned page loses validation");
    }

    /// Leaf and table entries as APM vol. 2 section 5.3.3 lays them out (P, R/W, U/S,
    /// NX in bit 63, the address in 51:12).
    #[test]
    fn entries_follow_the_long_mode_format() {
        let gpa = 0x1234_5000;
        assert_eq!(leaf(gpa, None), 0);
        assert_eq!(leaf(gpa, Some(Access { write: true, execute: true })), gpa | 0b111);
        assert_eq!(leaf(gpa, Some(Access { write: false, execute: true })), gpa | 0b101);
        assert_eq!(leaf(gpa, Some(Access { write: true, execute: false })), gpa | 0b111 | NO_EXECUTE);
        assert_eq!(leaf(gpa | 0xFFF, Some(Access { write: false, execute: false })), gpa | 0b101 | NO_EXECUTE);
        assert_eq!(table(0xABC_D000), 0xABC_D000 | 0b111);
        assert_eq!(leaf(u64::MAX, None), 0);
        assert_eq!(leaf(u64::MAX, Some(Access { write: false, execute: true })) & !ADDR_MASK, 0b101);
    }

    /// A 2 MiB leaf: the directory entry with PS (bit 7) and the address in 51:21 (APM
    /// vol. 2 section 5.3.4), and the table it splits into maps each page as it did.
    #[test]
    fn a_large_leaf_and_its_split() {
        let rw = Some(Access { write: true, execute: false });
        let large = large_leaf(0x4020_1000, rw);
        assert_eq!(large, 0x4020_0000 | 0b111 | LARGE | NO_EXECUTE, "the offset inside the 2 MiB page is dropped");
        assert_eq!(large_leaf(0x4020_0000, None), 0);
        assert_eq!(access_of(large), rw);
        assert_eq!(access_of(0), None);
        assert_eq!(split(large, 0), leaf(0x4020_0000, rw));
        assert_eq!(split(large, 511), leaf(0x403F_F000, rw));
        assert!((0..512).all(|i| split(large, i) & LARGE == 0 && access_of(split(large, i)) == rw));
        let rx = large_leaf(0x20_0000, Some(Access { write: false, execute: true }));
        assert_eq!(split(rx, 3), 0x20_3000 | 0b101);
    }

    /// 1024 pages: the first region validated whole with every permission, the second too
    /// but for one page left read-only.
    #[test]
    fn a_region_is_one_mapping_only_when_every_page_agrees() {
        let mut r = Rmp::new(1024);
        r.host_assign(0, 1024);
        for pfn in 0..1024 {
            r.pvalidate(pfn << 12, Size::Small, true).unwrap();
            r.rmpadjust(pfn << 12, Size::Small, 1, PERM_ALL, false, |_| false).unwrap();
        }
        r.rmpadjust(700 << 12, Size::Small, 1, PERM_READ, false, |_| false).unwrap();
        assert_eq!(uniform_access(&r, 0, 1), Some(Some(Access { write: true, execute: true })));
        assert_eq!(uniform_access(&r, 512, 1), None, "page 700 differs");
        assert_eq!(uniform_access(&r, 0, 2), Some(None), "VMPL2 may use none of it");
        assert_eq!(uniform_access(&r, 1024, 1), Some(None), "beyond memory: absent alike");
    }

    #[test]
    fn indices_and_the_reach_of_four_levels() {
        let gpa = 0x0000_7FFF_FFFF_F000;
        assert_eq!(LEVELS.map(|l| index(gpa, l)), [0xFF, 0x1FF, 0x1FF, 0x1FF]);
        assert_eq!(LEVELS.map(|l| index(0x20_3000, l)), [0, 0, 1, 3]);
        assert!(mappable(0xFFFF_FFFF_F000));
        assert!(!mappable(1 << 48));
        assert!(!mappable(u64::MAX));
    }
}
