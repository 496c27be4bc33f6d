//! Observability and Configuration Protocol layouts (protocol 5, 2026 draft; our
//! resolutions of its open points in docs/protocols/ocp.md).

/// One entry of the SVSM_OCP_LIST array: u32 flags, then the name (UTF-8, zero-padded).
pub const ENTRY_SIZE: usize = 128;
pub const NAME_OFFSET: usize = 4;
/// Names are at most this long, so at least one zero byte always ends them.
pub const NAME_MAX: usize = ENTRY_SIZE - NAME_OFFSET - 1;

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
}

/// Whether a version 1 source holds a number (8 bytes, little-endian) rather than text:
/// Bulwark's number sources are named under `memory.`, `calls.` and `errors.` (version 1
/// has no types; version 2's typed sources will say so themselves).
pub fn holds_number(name: &str) -> bool {
    ["memory.", "calls.", "errors."].iter().any(|p| name.starts_with(p))
}
