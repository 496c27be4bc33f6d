//! Live migration from one SVSM to another, through a host that only relays bytes.
//!
//! The host's part is the COCONUT proposal's migration page (`abi::migration`): a status
//! register, a data register and a 2 KiB buffer the host copies between the two SVSMs.
//! Everything else happens here, modelled on Intel's MigTD: the two SVSMs attest each
//! other, agree on session keys, and only then move state, as an authenticated and
//! ordered stream that ends in a commit both sides confirm.
//!
//! - [`channel`]: frames over migration pages. [`channel::MigrationChannel`] is what the
//!   session needs (send a frame, receive a frame, non-blocking);
//!   [`channel::PageChannel`] is the proposal's page protocol, one page per direction, with
//!   frames longer than the buffer cut into fragments that say where they belong.
//! - [`session`]: the handshake and the record layer. Each side sends a HELLO with an
//!   ephemeral P-384 key and a nonce, then evidence (an attestation report) whose
//!   REPORT_DATA binds both HELLOs and its own key; each checks the other's evidence
//!   through a [`session::PeerVerifier`] and refuses a peer whose measurement or policy
//!   differs from its own before anything but the handshake is sent. ECDH and
//!   HKDF-SHA384 over the transcript give one AES-256-GCM key and nonce base per
//!   direction; records carry explicit sequence numbers; the source's COMMIT carries the
//!   count and hash of everything it sent, the destination's COMMIT_ACK confirms it, and
//!   only then does the source commit (and send FINISH, on which the destination runs).
//! - `testing` (feature `testing`): in-memory migration pages and a hostile relay that
//!   flips, drops, duplicates, reorders and truncates what it carries.
//!
//! # What it promises
//!
//! Against a host that controls both pages and everything between them (docs/migration.md
//! "Threat model"): the destination accepts state only from an SVSM with its own
//! measurement and policy, and the source sends state only to one; the state arrives
//! confidential, whole, exact and in order, or the session fails with a named
//! [`session::MigrationError`]; and the guest never runs on both sides. Any failure before
//! the destination's authenticated COMMIT_ACK leaves the source running as if the
//! migration never started. The host can always stop a migration (denial of service);
//! if it stops it between COMMIT_ACK and FINISH, the source has stopped and the
//! destination does not run: the guest is lost rather than forked.
#![no_std]
// No panics from host input: no unwrap/expect/panic, no indexing that can go out of
// bounds, no silent truncation (tests may do all of these).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::cast_possible_truncation
    )
)]

extern crate alloc;

pub mod channel;
pub mod evidence;
pub mod relay;
pub mod session;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// The entropy source failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntropyError;

/// Where a session takes its random bytes (the ephemeral key, the HELLO nonce).
///
/// Implemented for every `FnMut(&mut [u8]) -> Result<(), EntropyError>`.
pub trait Entropy {
    /// Fills `buf` with unpredictable bytes.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError>;
}

impl<F: FnMut(&mut [u8]) -> Result<(), EntropyError>> Entropy for F {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        self(buf)
    }
}
