//! The SVSM Calling Area (spec 58019 section 5 table 2; docs/facts.md section 2).
//!
//! A guest page; its first 8 bytes are the call handshake, the remaining 4088 bytes are
//! free for the guest to pass parameter structures (Linux does).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The 8-byte header of a calling area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct CallingAreaHeader {
    /// 0 = no call requested, 1 = call requested; other values are reserved
    /// (SVSM_ERR_INVALID_FORMAT).
    pub call_pending: u8,
    /// Non-zero when memory can be withdrawn (meaningful in the startup vCPU's area).
    pub mem_available: u8,
    /// Not checked by the SVSM.
    pub reserved: [u8; 6],
}
crate::assert_size!(CallingAreaHeader, 8);
crate::assert_offset!(CallingAreaHeader, call_pending, 0x0);
crate::assert_offset!(CallingAreaHeader, mem_available, 0x1);

pub const CALL_PENDING_OFFSET: u64 = 0;
pub const MEM_AVAILABLE_OFFSET: u64 = 1;
/// Offset of the free parameter buffer in the calling-area page.
pub const BUFFER_OFFSET: u64 = 8;
/// Size of the free parameter buffer.
pub const BUFFER_SIZE: u64 = 4088;

pub const CALL_PENDING_NONE: u8 = 0;
pub const CALL_PENDING_REQUESTED: u8 = 1;
