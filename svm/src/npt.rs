//! Nested paging from the RMP: on this platform the nested page tables enforce what the
//! software RMP says, so a guest page is present exactly while the RMP lets the guest's
//! VMPL read it, writable while it may write, executable while it may execute. SVSM
//! memory, VMSA pages and unvalidated pages are absent: a guest access there is a nested
//! page fault the SVSM refuses.
//!
//! [`access_for`] is that decision; [`leaf`], [`table`] and [`index`] are the entry
//! format (4-level, 4 KiB leaves, identity gpa = hpa) the bare-metal tables are written
//! in (`svsm/src/bare/svm/npt.rs` owns their memory).

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

pub const PRESENT: u64 = 1;
pub const WRITABLE: u64 = 1 << 1;
/// Nested walks are user accesses: every level needs U/S.
pub const USER: u64 = 1 << 2;
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
