//! An encrypted, integrity-protected, crash-consistent blob store on an untrusted block
//! device.
//!
//! The SVSM keeps state that must outlive the VM (the vTPM's NV blobs, the OCP log level)
//! on a disk the host provides. The host can read, change, drop, reorder or replay any
//! block, and can lose writes that were not flushed. This crate turns that disk into a
//! small map from names to byte strings whose committed states are:
//!
//! - **confidential**: every block is encrypted under a key the host never sees;
//! - **authentic and whole**: [`Store::open`] verifies every block of the newest committed
//!   state against a Merkle tree rooted in a MAC'd header before it returns, and fails
//!   closed with a named [`StoreError`];
//! - **atomic**: [`Store::commit`] makes all staged changes durable at once; a power cut at
//!   any point leaves either the previous or the new state, never a mix;
//! - **versioned**: [`Store::state`] gives the generation (one more per commit), the root
//!   hash and the store id, which the SVSM publishes in its attestation manifest. The store alone cannot
//!   tell an authentic older state from the newest (the host can present an old disk
//!   image); a verifier that remembers the last generation it accepted can.
//!
//! # Layout
//!
//! Blocks are [`BLOCK_SIZE`] bytes. Blocks 0 and 1 are the two header slots; every other
//! block is in the pool. A committed state is a tree:
//!
//! ```text
//!  header (slot 0 or 1, plaintext, HMAC-SHA256)
//!     generation, store id, key check, index length, root ref ----+
//!                                                                  v
//!  index node blocks (only when the index needs more than one block): refs to the level below
//!                                                                  v
//!  index leaf blocks: the index bytes, [name, length, refs to the blob's data blocks]*
//!                                                                  v
//!  data blocks: the blobs' bytes
//! ```
//!
//! A ref is (physical block, generation that wrote it, SHA-256 of the block's stored
//! bytes). Every pool block is `nonce (12) | AES-256-GCM-SIV ciphertext (4068) | tag (16)`;
//! its hash covers all 4096 stored bytes, so a block is checked against its parent before it
//! is decrypted, and the header's MAC binds the whole tree.
//!
//! # Why AES-256-GCM-SIV with random nonces
//!
//! A nonce derived from state kept on the disk (a counter, the generation) is not enough:
//! the host can roll the disk back to an older image, let the SVSM open it, and watch what
//! the SVSM writes next. The SVSM would then encrypt new plaintext under a nonce it has
//! already used. With AES-GCM that is catastrophic: the two ciphertexts share a key stream
//! (their XOR is the XOR of the plaintexts) and the GHASH key can be recovered, which lets
//! the host forge blocks. So every block write takes a fresh 96-bit nonce from the caller's
//! entropy source (the SVSM's RDRAND/RDSEED-backed generator), independent of anything on the
//! disk, and stores it beside the ciphertext.
//!
//! AES-256-GCM-SIV (RFC 8452) is chosen over AES-GCM so that even a repeated nonce (a weak
//! or failing entropy source, or 2^48-scale use) costs no more than revealing that two
//! blocks with the same nonce, associated data and plaintext are equal: the tag is computed
//! over the plaintext first and the keystream is derived from it, and each nonce derives
//! its own encryption and authentication keys. Random 96-bit nonces collide with
//! probability about `n^2 / 2^97` after `n` block writes; a store that writes a few hundred
//! blocks per commit stays far below any bound that matters over its lifetime.
//!
//! The associated data binds each block to its store (a random id chosen at format), its
//! role (data, index leaf, index node), its physical block number and the generation that
//! wrote it. The Merkle hash already pins every block, so this is defence in depth: a block
//! moved, replayed into another generation or role, or taken from another store fails
//! authentication even if a hash check were ever skipped (two writes of one block in one
//! generation, as a retried commit makes, only the hash tells apart).
//!
//! # Commit protocol
//!
//! A commit writes the new data and index blocks only into pool blocks that the committed
//! state does not reference (nor any header whose write may have reached the disk without
//! its outcome being known), flushes, writes the new header (generation + 1) into the slot
//! holding the older header, and flushes again. Until the second flush the previous header
//! and every block it references are untouched, so a lost or torn header write leaves the
//! previous state; after it, the new state is complete on disk. [`Store::open`] takes the
//! authentic header with the highest generation.
//!
//! # What the store detects, and what only a verifier can
//!
//! Detected by [`Store::open`] (an error, never a panic, never a silent older state when
//! the newest authentic header's blocks are wrong): any changed, swapped, moved or replayed
//! block of the newest state; a device too short for it; a wrong key; a device without a
//! store. Not detectable by the store alone: a host that presents a complete older image,
//! or that destroys the newest header so the older slot is used. Both give an authentic
//! older state, which [`Store::state`] reports with its (older) generation; only a verifier
//! that remembers the last generation it accepted refuses it. The host can always deny
//! service (fail reads, drop writes, destroy the disk).
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

mod crypto;
mod format;
mod mem;
mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use crate::store::{HeaderClaim, Opened, Store, header_claims, newest_header_under};
pub use crypto::StoreKey;
pub use format::{BLOCK_PAYLOAD, MAX_BLOB_LEN, MAX_NAME_LEN, MIN_BLOCKS};

/// The size of one device block in bytes.
pub const BLOCK_SIZE: usize = 4096;

/// One device block.
pub type Block = [u8; BLOCK_SIZE];

/// A failed device operation. The device is host-controlled, so the reason is not
/// trusted and not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoError;

/// A block device the host controls.
///
/// Any read may return anything or fail; a write may be lost unless a later
/// [`flush`](BlockDevice::flush) succeeded.
pub trait BlockDevice {
    /// How many blocks the device has (as the host says).
    fn block_count(&self) -> u64;
    /// Reads block `index` into `buf`.
    fn read(&mut self, index: u64, buf: &mut Block) -> Result<(), IoError>;
    /// Writes `buf` to block `index`; durable only after a successful flush.
    fn write(&mut self, index: u64, buf: &Block) -> Result<(), IoError>;
    /// Makes every earlier successful write durable.
    fn flush(&mut self) -> Result<(), IoError>;
}

/// The entropy source failed: the store never writes a block without a fresh nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntropyError;

/// Where the store takes its random bytes (nonces, the store id).
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

/// The committed state as a remote verifier should see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreState {
    /// One at format, one more per commit that wrote something. Never goes down in
    /// this store's own history; an older value means the host presented an older state.
    pub generation: u64,
    /// The Merkle root: SHA-256 of the stored bytes of the index's top block, which binds
    /// every block of the state.
    pub root: [u8; 32],
    /// The random id chosen at format. Two stores under one key (two VMs launched from
    /// one image get one PSP-derived key) differ here, so a verifier that tracks
    /// generations per store id notices a host swapping one VM's disk for another's.
    pub store_id: [u8; 16],
}

/// What [`StoreError::Tampered`] found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// A header slot has this key's key check but its MAC is wrong, and no authentic
    /// header remains; or both slots claim the same generation.
    Header,
    /// The block's stored bytes do not match the hash its parent holds, or do not
    /// authenticate.
    Block {
        /// The physical block.
        index: u64,
    },
    /// The state references a block the device does not have (a truncated device).
    BeyondDevice {
        /// The physical block.
        index: u64,
    },
    /// Authentic content that does not parse, or references a header slot or one block
    /// twice. Only a holder of the key could have written it.
    Structure,
}

/// Why a store operation failed. Every failure leaves the committed state as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The device failed an operation.
    Io(IoError),
    /// The entropy source failed.
    Entropy(EntropyError),
    /// Neither header slot holds a store header.
    NotFormatted,
    /// A header slot holds a store header for another key (and none for this one).
    WrongKey,
    /// The newest state is not what this key wrote.
    Tampered {
        /// What was found wrong.
        what: Tamper,
    },
    /// The header's format version is not one this code reads.
    UnsupportedVersion {
        /// The version the header claims.
        version: u32,
    },
    /// The device has no room for the staged state next to the committed one.
    Full {
        /// Pool blocks the commit needs.
        needed: u64,
        /// Pool blocks not referenced by the committed state.
        free: u64,
    },
    /// A name longer than [`MAX_NAME_LEN`] or a blob longer than [`MAX_BLOB_LEN`].
    TooLarge,
    /// The device is too small to hold a store ([`MIN_BLOCKS`]).
    DeviceTooSmall,
    /// The generation counter would overflow.
    GenerationExhausted,
    /// No memory for a staged blob: the SVSM's heap is full, the state is unchanged.
    OutOfMemory,
    /// A condition the code rules out happened (a cipher refusing a well-sized block, an
    /// index without a root): a bug in this crate, reported rather than panicking.
    Internal,
}

impl From<IoError> for StoreError {
    fn from(error: IoError) -> Self {
        StoreError::Io(error)
    }
}

impl From<EntropyError> for StoreError {
    fn from(error: EntropyError) -> Self {
        StoreError::Entropy(error)
    }
}
