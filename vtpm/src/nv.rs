//! The vTPM's non-volatile state, and the one interface through which it is kept.
//!
//! libtpms keeps its NV state as a few named blobs ("permall" holds the seeds, hierarchy
//! auth values, NV indices, persistent objects and the dictionary-attack counters). An
//! engine reports the blobs a command changed ([`TpmEngine::take_nv_changes`]); the
//! [`Vtpm`](crate::Vtpm) hands them to its [`NvStorage`] before the guest sees the
//! response, so a response never reports a state change that a power cut could lose. The
//! same blobs are what a new engine starts from ([`NvBlobs`]), whether they come from the
//! sealed store at boot or, later, from a migration source: one shape for all three.
//!
//! [`TpmEngine::take_nv_changes`]: crate::TpmEngine::take_nv_changes

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// The whole NV state: blob name to bytes.
pub type NvBlobs = BTreeMap<Vec<u8>, Vec<u8>>;

/// The longest blob name an engine may report (libtpms' names are a few bytes).
pub const MAX_NAME_LEN: usize = 64;

/// The most blobs an NV state holds. libtpms' TPM 2.0 writes at most three ("permall",
/// "volatilestate", "savestate"); the bound keeps a hostile engine (a compromised service
/// process) from growing the state, and the SVSM's heap with it, name by name.
pub const MAX_BLOBS: usize = 8;

/// The largest blob an engine may report. libtpms' "permall" is 1.3 KiB for a new TPM
/// (2.5 KiB with an NV index and a persistent key) and grows with NV indices and
/// persistent objects; libtpms bounds its NV memory at 128 KiB, plus headers.
pub const MAX_BLOB_LEN: usize = 192 * 1024;

/// One blob a command changed: its new bytes, or `None` if the engine deleted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvChange {
    pub name: Vec<u8>,
    pub data: Option<Vec<u8>>,
}

/// The blob `name` with `data` as a change, copied on a heap that may refuse it (`None`):
/// a migrated TPM's blobs are the largest the SVSM holds, and a full heap must fail the
/// step, not abort the SVSM.
pub fn copy_of(name: &[u8], data: &[u8]) -> Option<NvChange> {
    let copy = |bytes: &[u8]| {
        let mut v = Vec::new();
        v.try_reserve_exact(bytes.len()).ok()?;
        v.extend_from_slice(bytes);
        Some(v)
    };
    Some(NvChange { name: copy(name)?, data: Some(copy(data)?) })
}

/// The NV state could not be read out of the engine or kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NvError {
    /// The engine could not report its changes (no memory, or a service that answered
    /// something that does not parse).
    Engine,
    /// The storage refused or failed to make the changes durable.
    Storage,
}

/// Where a vTPM keeps its NV state: the SVSM's sealed store.
pub trait NvStorage: Send {
    /// Make `changes` durable all together, or none of them. After an error the storage
    /// holds the state of its last success, and the vTPM stops (it cannot keep the state
    /// it now has in memory).
    fn persist(&mut self, changes: &[NvChange]) -> Result<(), NvError>;

    /// The engine started and has the EK `ek_public`; keep what starting wrote. A store
    /// that records which TPM it holds checks or records the EK here.
    fn started(&mut self, ek_public: &[u8], changes: &[NvChange]) -> Result<(), NvError> {
        let _ = ek_public;
        self.persist(changes)
    }

    /// A migrated TPM with the EK `ek_public` arrived: from now on the storage holds
    /// exactly `blobs` (its whole NV state), nothing it held before for this TPM. A store
    /// that keeps another TPM (another EK) refuses.
    fn replaced(&mut self, ek_public: &[u8], blobs: &[NvChange]) -> Result<(), NvError> {
        self.started(ek_public, blobs)
    }
}

/// A running TPM's whole state, as a migration carries it: every NV blob, and the volatile
/// state (PCRs, loaded objects, sessions, the clock) in the engine's own serialization
/// (libtpms' `TPMLIB_GetState`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TpmState {
    pub nv: NvBlobs,
    pub volatile: Vec<u8>,
}

/// The largest volatile state an engine may report (libtpms' is some tens of KiB).
pub const MAX_VOLATILE_LEN: usize = 128 * 1024;

/// Is `name` a blob name an engine may report?
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN
}
