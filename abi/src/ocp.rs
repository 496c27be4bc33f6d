//! Observability and Configuration Protocol layouts (protocol 5, 2026 draft; our
//! resolutions of its open points in docs/protocols/ocp.md).

/// One entry of the SVSM_OCP_LIST array: u32 flags, then the name (UTF-8, zero-padded).
pub const ENTRY_SIZE: usize = 128;
pub const NAME_OFFSET: usize = 4;
/// Names are at most this long, so that they fit both the version 1 entry and the
/// typed entry of version 2 with a zero byte to end them.
pub const NAME_MAX: usize = ENTRY_SIZE - typed::NAME_OFFSET - 1;

/// Entry flags.
pub mod flags {
    /// The source accepts SVSM_OCP_WRITE.
    pub const WRITEABLE: u32 = 1 << 0;
}

/// Result codes of the protocol (0x8000_1000 and up belong to the protocol invoked).
pub mod result {
    /// SVSM_OCP_READ of the log at an offset the SVSM no longer holds; R9 returns the
    /// oldest offset still held.
    pub const DATA_LOST: u32 = 0x8000_1000;
    /// Version 2: READ_REGISTER or READ_BATCH of a source that is not a fixed size of at
    /// most 8 bytes.
    pub const NOT_REGISTER_SIZED: u32 = 0x8000_1001;
}

/// The change-event ring of NOTIFY (version 2): one 4 KiB page of guest memory. The SVSM
/// writes events (the index of a source that changed) at `head` and advances it; the
/// guest consumes them and advances `tail`. Indexes are free-running u32 counters; slot =
/// counter % [`ring::SLOTS`]. When the guest lags a full ring behind, events are counted
/// in `dropped` instead, never silently lost.
pub mod ring {
    pub const HEAD: usize = 0x00;
    pub const TAIL: usize = 0x04;
    pub const DROPPED: usize = 0x08;
    pub const SLOTS_OFFSET: usize = 0x10;
    /// The ring is one page.
    pub const LEN: usize = 4096;
    pub const SLOTS: u32 = ((LEN - SLOTS_OFFSET) / 4) as u32;
}

/// The most sources one READ_BATCH reads (one page of values).
pub const BATCH_MAX: usize = 512;

/// The typed entry of LIST_TYPED (version 2), 128 bytes: u32 flags, u32 type, u32
/// protocol the source belongs to ([`typed::PROTOCOL_NONE`] for the SVSM as a whole),
/// u32 size (bytes of a fixed-size type, 0 if variable), then the name, zero-padded.
pub mod typed {
    pub const TYPE: usize = 0x04;
    pub const PROTOCOL: usize = 0x08;
    pub const SIZE: usize = 0x0C;
    pub const NAME_OFFSET: usize = 0x10;
    /// The source belongs to no single protocol.
    pub const PROTOCOL_NONE: u32 = u32::MAX;
}

/// Source types (version 2; the review's list, plus the log stream).
pub mod source_type {
    /// A u64 that may go up and down (free pages).
    pub const VALUE: u32 = 1;
    /// A u64 that only grows (calls served).
    pub const COUNTER: u32 = 2;
    /// One byte, 0 or 1.
    pub const BOOL: u32 = 3;
    /// UTF-8 text.
    pub const STRING: u32 = 4;
    /// UTF-8 text that a read consumes.
    pub const STRING_ONCE: u32 = 5;
    /// 32 bytes.
    pub const SHA256: u32 = 6;
    /// UTF-8 text addressed by absolute offsets since boot; loss is reported (the log).
    pub const LOG_STREAM: u32 = 7;
}

/// Whether a version 1 source holds a number (8 bytes, little-endian) rather than text:
/// Bulwark's number sources are named under `memory.`, `calls.` and `errors.` (version 1
/// has no types; version 2's typed sources will say so themselves).
pub fn holds_number(name: &str) -> bool {
    ["memory.", "calls.", "errors."].iter().any(|p| name.starts_with(p))
}
