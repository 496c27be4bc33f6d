//! The migration page: one 4 KiB page the SVSM shares with the host, through which the
//! host relays bytes between two SVSMs during a live migration.
//!
//! Source: the COCONUT proposal "Create communication channel between two SVSM" (QEMU
//! side: `migration/snp.h` and `snp.c` of that pull request, the SVSM side in
//! coconut-svsm/svsm pull request 745). The host's part is only to relay the buffer; every
//! decision is the SVSM's (`bulwark-migrate`, docs/migration.md).
//!
//! ```text
//! 0x000  u8  status register        (MigrationStatus)
//! 0x001  u8  data register          (DataRegister)
//! 0x002  reserved, up to 0x800
//! 0x800  data buffer, 0x800 bytes (2 KiB)
//! ```
//!
//! The data register is a stop-and-wait handshake between the side that fills the buffer
//! (the producer) and the side that empties it (the consumer): the producer writes the
//! buffer and then `DATA_READY`; the consumer copies the buffer and then writes
//! `DATA_READ`; only then may the producer write again. On the source the SVSM produces
//! and the host consumes; on the destination the host produces and the SVSM consumes.
//! Before it starts, the host writes `DATA_READ` (so the producer may begin) and then
//! the status: `RUNNING` on the source, `INCOMING` on the destination. The source SVSM
//! writes `COMPLETED` when it has nothing more to send; the destination's host writes
//! `COMPLETED` when the stream from the other host has ended.
//!
//! Between the two hosts the proposal sends, per buffer, a big-endian u64 `FLAG_DATA`
//! followed by the whole 2 KiB buffer, and `FLAG_COMPLETED` at the end. Every buffer is
//! relayed whole, so what the SVSM puts in it must say its own length.
//!
//! Everything in this page is written by the host too: every register value and every
//! buffer byte the SVSM reads is hostile.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Offset of the status register.
pub const STATUS_OFFSET: usize = 0x0;
/// Offset of the data register.
pub const DATA_REGISTER_OFFSET: usize = 0x1;
/// Offset of the data buffer.
pub const BUFFER_OFFSET: usize = 0x800;
/// Size of the data buffer: the most one handshake of the data register moves.
pub const BUFFER_SIZE: usize = 0x800;
/// Size of the page.
pub const PAGE_SIZE: usize = 0x1000;

/// The value of the status register. Open: any byte is representable (the host writes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MigrationStatus(pub u8);

impl MigrationStatus {
    /// No migration (the page's initial value).
    pub const NOT_STARTED: Self = Self(0x0);
    /// The host feeds the buffer (destination side).
    pub const INCOMING: Self = Self(0x1);
    /// The host drains the buffer (source side).
    pub const RUNNING: Self = Self(0x2);
    /// Source: the SVSM has sent everything. Destination: the host's stream has ended.
    pub const COMPLETED: Self = Self(0x3);
}

/// The value of the data register. Open: any byte is representable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DataRegister(pub u8);

impl DataRegister {
    /// The producer has filled the buffer.
    pub const DATA_READY: Self = Self(0x4);
    /// The consumer has copied the buffer; the producer may fill it again.
    pub const DATA_READ: Self = Self(0x5);
}

/// Host-to-host stream markers of the proposal (big-endian u64 before each buffer). The
/// SVSM never sees them; they are here so the whole wire is in one place.
pub mod host_stream {
    /// A 2 KiB buffer follows.
    pub const FLAG_DATA: u64 = 0x5;
    /// The stream ends.
    pub const FLAG_COMPLETED: u64 = 0x6;
}

/// The whole page.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct MigrationPage {
    /// [`MigrationStatus`].
    pub status: u8,
    /// [`DataRegister`].
    pub data: u8,
    pub reserved: [u8; BUFFER_OFFSET - 2],
    pub buffer: [u8; BUFFER_SIZE],
}
crate::assert_size!(MigrationPage, PAGE_SIZE);
crate::assert_offset!(MigrationPage, status, STATUS_OFFSET);
crate::assert_offset!(MigrationPage, data, DATA_REGISTER_OFFSET);
crate::assert_offset!(MigrationPage, buffer, BUFFER_OFFSET);
