//! Parameter layouts of the core protocol (spec 58019 section 6): the PVALIDATE,
//! DEPOSIT_MEM and WITHDRAW_MEM lists and the CONFIGURE_VTOM register encodings.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Header of a PVALIDATE or DEPOSIT_MEM list (tables 6 and 7), followed by 8-byte entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ListHeader {
    /// Number of entries in the list (at least 1).
    pub entries: u16,
    /// Index of the next entry to process; written back by the SVSM.
    pub next: u16,
    pub reserved: u32,
}
crate::assert_size!(ListHeader, 8);
crate::assert_offset!(ListHeader, entries, 0x0);
crate::assert_offset!(ListHeader, next, 0x2);
crate::assert_offset!(ListHeader, reserved, 0x4);

/// Offset of the `next` field, which the SVSM writes back.
pub const LIST_NEXT_OFFSET: u64 = 2;
/// Size of one list entry.
pub const LIST_ENTRY_SIZE: u64 = 8;
/// Size of the list header.
pub const LIST_HEADER_SIZE: u64 = 8;

/// Page size field of a list entry (bits 1:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntrySize {
    Size4K,
    Size2M,
    /// 2 or 3: reserved.
    Reserved(u8),
}

/// One PVALIDATE list entry (table 6), kept as the raw u64 the guest wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(transparent)]
pub struct PvalidateEntry(pub u64);
crate::assert_size!(PvalidateEntry, 8);

impl PvalidateEntry {
    pub const SIZE_MASK: u64 = 0b11;
    pub const VALIDATE: u64 = 1 << 2;
    pub const IGNORE_CF: u64 = 1 << 3;
    /// Bits 11:4.
    pub const RESERVED_MASK: u64 = 0xFF0;
    pub const PFN_SHIFT: u32 = 12;

    pub const fn new(gpa: u64, size_2m: bool, validate: bool, ignore_cf: bool) -> Self {
        let mut v = gpa & !0xFFF;
        if size_2m {
            v |= 1;
        }
        if validate {
            v |= Self::VALIDATE;
        }
        if ignore_cf {
            v |= Self::IGNORE_CF;
        }
        Self(v)
    }
    pub const fn size(self) -> EntrySize {
        match (self.0 & Self::SIZE_MASK) as u8 {
            0 => EntrySize::Size4K,
            1 => EntrySize::Size2M,
            r => EntrySize::Reserved(r),
        }
    }
    pub const fn validate(self) -> bool {
        self.0 & Self::VALIDATE != 0
    }
    pub const fn ignore_cf(self) -> bool {
        self.0 & Self::IGNORE_CF != 0
    }
    pub const fn reserved_bits(self) -> u64 {
        self.0 & Self::RESERVED_MASK
    }
    /// The page's guest-physical address (bits 63:12).
    pub const fn gpa(self) -> u64 {
        self.0 & !0xFFF
    }
}

/// One DEPOSIT_MEM list entry (table 7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(transparent)]
pub struct DepositEntry(pub u64);
crate::assert_size!(DepositEntry, 8);

impl DepositEntry {
    pub const SIZE_MASK: u64 = 0b11;
    /// Bits 11:2.
    pub const RESERVED_MASK: u64 = 0xFFC;

    pub const fn new(gpa: u64, size_2m: bool) -> Self {
        Self((gpa & !0xFFF) | size_2m as u64)
    }
    pub const fn size(self) -> EntrySize {
        match (self.0 & Self::SIZE_MASK) as u8 {
            0 => EntrySize::Size4K,
            1 => EntrySize::Size2M,
            r => EntrySize::Reserved(r),
        }
    }
    pub const fn reserved_bits(self) -> u64 {
        self.0 & Self::RESERVED_MASK
    }
    pub const fn gpa(self) -> u64 {
        self.0 & !0xFFF
    }
}

/// Header of the WITHDRAW_MEM list (table 8), followed by 8-byte page gpas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct WithdrawHeader {
    pub entries: u16,
    pub unused: [u8; 6],
}
crate::assert_size!(WithdrawHeader, 8);
crate::assert_offset!(WithdrawHeader, entries, 0x0);

/// CONFIGURE_VTOM encodings (section 6.8 table 9).
pub mod vtom {
    /// RCX bit 0 on entry: 1 = query, 0 = configure.
    pub const QUERY: u64 = 1 << 0;
    /// Configure: 1 = enable vTOM, 0 = disable.
    pub const ENABLE: u64 = 1 << 1;
    /// Configure: set VMSA.CR3 from RDX.
    pub const SET_CR3: u64 = 1 << 2;
    /// Configure: set VMSA.RIP from R8.
    pub const SET_RIP: u64 = 1 << 3;
    /// Configure: set VMSA.RSP from R9.
    pub const SET_RSP: u64 = 1 << 4;
    /// Configure: bits 11:5 must be zero.
    pub const CONFIGURE_RESERVED: u64 = 0xFE0;
    /// Configure: bits 63:12 carry the vTOM value.
    pub const VALUE_MASK: u64 = !0xFFF;
    /// Query result RCX bit 1: vTOM configuration is supported.
    pub const RESULT_SUPPORTED: u64 = 1 << 1;
    /// Query result RCX bits 19:12: alignment as a power of two.
    pub const RESULT_ALIGN_SHIFT: u32 = 12;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvalidate_entry_bits_follow_table_6() {
        let e = PvalidateEntry(0x1234_5000 | 0b1101);
        assert_eq!(e.size(), EntrySize::Size2M);
        assert!(e.validate());
        assert!(e.ignore_cf());
        assert_eq!(e.gpa(), 0x1234_5000);
        assert_eq!(e.reserved_bits(), 0);
        assert_eq!(PvalidateEntry(0x10).reserved_bits(), 0x10);
        assert_eq!(PvalidateEntry(0x800).reserved_bits(), 0x800);
        assert_eq!(PvalidateEntry(0b10).size(), EntrySize::Reserved(2));
        assert_eq!(PvalidateEntry::new(0x20_0000, true, true, false).0, 0x20_0005);
    }

    #[test]
    fn deposit_entry_bits_follow_table_7() {
        let e = DepositEntry(0x40_0000 | 1);
        assert_eq!(e.size(), EntrySize::Size2M);
        assert_eq!(e.gpa(), 0x40_0000);
        assert_eq!(DepositEntry(0x4).reserved_bits(), 0x4);
        assert_eq!(DepositEntry(0x800).reserved_bits(), 0x800);
    }

    #[test]
    fn list_header_layout() {
        use zerocopy::IntoBytes;
        let h = ListHeader { entries: 0x0201, next: 0x0403, reserved: 0x0807_0605 };
        assert_eq!(h.as_bytes(), &[1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
