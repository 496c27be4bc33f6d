//! The SVSM's sealed state: one [`store::Store`] on the host's disk, opened at boot with
//! the PSP-derived key, shared by everything that must outlive the VM (the vTPM's NV
//! blobs today; docs/persistence.md).
//!
//! Every change is staged and committed at once. An update that fails before a header
//! write was attempted (no heap for a staged copy, a data block the host refused, a full
//! disk) drops what it staged: the state is the committed one and stays open, and only
//! the caller fails (the vTPM stops, its engine holds what the disk does not). A failed
//! header write closes the sealed state for good: that header may be on disk or not, so
//! what the disk holds is no longer known, and staged changes must not ride along with a
//! later, unrelated commit. The status says why.

use crate::vtpm_lineage::Lineage;
use abi::attest::{ATTEST_CHAIN_LINK_LABEL, ATTEST_CHAIN_MAX_LINKS, AttestChainEntry, SealedStateEntry};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use sha2::{Digest, Sha256};
use spin::Mutex;
use store::{BlockDevice, Entropy, Store, StoreError, StoreKey, StoreState};
use vtpm::nv::{NvBlobs, NvChange, NvError, NvStorage};
use zerocopy::IntoBytes;

/// A store, as the kernel uses it (any device, any entropy source).
pub trait SealedStore: Send {
    fn get(&self, name: &[u8]) -> Option<&[u8]>;
    /// Every name starting with `prefix` (a copy: the caller may change the store next).
    /// Like every allocation a request makes here, fallible: `OutOfMemory`.
    fn names_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError>;
    fn put(&mut self, name: &[u8], data: &[u8]) -> Result<(), StoreError>;
    /// Whether `name` was there; fails (changing nothing) only without memory.
    fn remove(&mut self, name: &[u8]) -> Result<bool, StoreError>;
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Drop what is staged; `false` when a failed header write may have committed it.
    fn discard(&mut self) -> bool;
    fn state(&self) -> StoreState;
    /// Fresh bytes from the store's entropy source.
    fn random(&mut self, buf: &mut [u8]) -> Result<(), StoreError>;
}

impl<D: BlockDevice + Send, E: Entropy + Send> SealedStore for Store<D, E> {
    fn get(&self, name: &[u8]) -> Option<&[u8]> {
        Store::get(self, name)
    }
    fn names_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let oom = |_| StoreError::OutOfMemory;
        let mut names = Vec::new();
        names.try_reserve_exact(self.names().filter(|n| n.starts_with(prefix)).count()).map_err(oom)?;
        for name in self.names().filter(|n| n.starts_with(prefix)) {
            names.push(crate::heap::copy_of(name).map_err(|_| StoreError::OutOfMemory)?);
        }
        Ok(names)
    }
    fn put(&mut self, name: &[u8], data: &[u8]) -> Result<(), StoreError> {
        Store::put(self, name, data)
    }
    fn remove(&mut self, name: &[u8]) -> Result<bool, StoreError> {
        Store::remove(self, name)
    }
    fn commit(&mut self) -> Result<(), StoreError> {
        Store::commit(self)
    }
    fn discard(&mut self) -> bool {
        Store::discard(self)
    }
    fn state(&self) -> StoreState {
        Store::state(self)
    }
    fn random(&mut self, buf: &mut [u8]) -> Result<(), StoreError> {
        Store::random(self, buf)
    }
}

/// The open sealed state, or why it closed.
pub struct Sealed {
    store: Box<dyn SealedStore>,
    failed: Option<StoreError>,
    /// The state was re-wrapped from an older key at this boot.
    rewrapped: bool,
    summary: SealedSummary,
}

/// What a verifier and the OCP are shown of the sealed state (its manifest entries), kept
/// under a lock of its own that is never held across disk I/O: OCP reads, and the
/// manifest of an attestation once its own link is committed, never wait for another
/// commit in progress, however long the host takes with it.
pub type SealedSummary = Arc<Mutex<Summary>>;

/// The committed state in short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The sealed state's manifest entry.
    pub entry: SealedStateEntry,
    /// The lineage of the vTPM the state keeps, if it keeps one.
    pub vtpm: Option<Lineage>,
    /// The attestations served on this state so far (empty before the first).
    pub chain: AttestChain,
}

/// The attestation chain (docs/persistence.md, "The attestation chain"): each attestation
/// the SVSM serves on this sealed state commits a link (SHA-256 of a label and the
/// guest's nonce), and the manifest shows the most recent links and the chain value
/// before them. A verifier that kept the chain value of the state it accepted last finds
/// it in the history of a state that descends from it, and in no other: an older disk
/// image, however many boots raised its generation, never saw that attestation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttestChain {
    /// The chain value before `links[0]`.
    before: [u8; 32],
    links: [[u8; 32]; ATTEST_CHAIN_MAX_LINKS],
    count: usize,
}

impl AttestChain {
    const EMPTY: Self = Self { before: [0; 32], links: [[0; 32]; ATTEST_CHAIN_MAX_LINKS], count: 0 };

    /// The chain a store keeps (`None` for a malformed blob; empty without one).
    fn read(store: &dyn SealedStore) -> Option<Self> {
        let Some(bytes) = store.get(CHAIN) else { return Some(Self::EMPTY) };
        let (before, rest) = bytes.split_first_chunk::<32>()?;
        if !rest.len().is_multiple_of(32) || rest.len() / 32 > ATTEST_CHAIN_MAX_LINKS {
            return None;
        }
        let mut chain = Self { before: *before, ..Self::EMPTY };
        for (slot, link) in chain.links.iter_mut().zip(rest.chunks_exact(32)) {
            slot.copy_from_slice(link);
            chain.count += 1;
        }
        Some(chain)
    }

    /// A chain from its parts (as a migration carries it): at most
    /// [`ATTEST_CHAIN_MAX_LINKS`] links.
    pub fn from_parts(before: [u8; 32], links: &[[u8; 32]]) -> Option<Self> {
        if links.len() > ATTEST_CHAIN_MAX_LINKS {
            return None;
        }
        let mut chain = Self { before, ..Self::EMPTY };
        for (slot, link) in chain.links.iter_mut().zip(links) {
            *slot = *link;
            chain.count += 1;
        }
        Some(chain)
    }

    /// The chain value before the first link shown.
    pub fn before(&self) -> [u8; 32] {
        self.before
    }

    /// The links shown, oldest first.
    pub fn links(&self) -> &[[u8; 32]] {
        self.links.get(..self.count).unwrap_or(&[])
    }

    /// Append `link`; the oldest is folded into `before` when the window is full.
    fn push(&mut self, link: [u8; 32]) {
        if self.count == ATTEST_CHAIN_MAX_LINKS {
            let oldest = self.links.first().copied().unwrap_or_default();
            self.before = Sha256::new().chain_update(self.before).chain_update(oldest).finalize().into();
            self.links.copy_within(1.., 0);
            self.count -= 1;
        }
        if let Some(slot) = self.links.get_mut(self.count) {
            *slot = link;
            self.count += 1;
        }
    }

    /// What the store keeps: `before`, then the links.
    fn bytes(&self) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        out.try_reserve_exact(32 * (1 + self.count)).map_err(|_| StoreError::OutOfMemory)?;
        out.extend_from_slice(&self.before);
        for link in self.links() {
            out.extend_from_slice(link);
        }
        Ok(out)
    }

    /// The manifest entry: header, then always [`ATTEST_CHAIN_MAX_LINKS`] link slots
    /// (unused ones zero), so the manifest's size does not change from one attestation to
    /// the next (Linux sizes its buffers with one call and fills them with the next).
    pub fn entry(&self) -> Option<Vec<u8>> {
        let header = AttestChainEntry { before: self.before, links: u32::try_from(self.count).ok()?, reserved: 0 };
        let mut out = Vec::new();
        out.try_reserve_exact(size_of::<AttestChainEntry>() + 32 * ATTEST_CHAIN_MAX_LINKS).ok()?;
        out.extend_from_slice(header.as_bytes());
        for link in &self.links {
            out.extend_from_slice(link);
        }
        Some(out)
    }
}

/// The link a vTPM's arrival by live migration adds to the chain it brings (its new
/// incarnation's): the chain goes on with the TPM, so a verifier follows the TPM's
/// attestations from store to store.
pub fn arrival_link(incarnation: &[u8; 16]) -> [u8; 32] {
    Sha256::new().chain_update(b"bulwark arrival link v1").chain_update(incarnation).finalize().into()
}

/// The link an attestation with `nonce` adds to the chain, with `salt` fresh from the
/// store's entropy: a host that learned the nonces cannot replay them on an old image
/// (its own guest asking again) and rebuild the chain a verifier holds.
pub fn attestation_link(nonce: &[u8], salt: &[u8; 32]) -> [u8; 32] {
    Sha256::new().chain_update(ATTEST_CHAIN_LINK_LABEL).chain_update(salt).chain_update(nonce).finalize().into()
}

/// Commit the link of an attestation with `nonce` to the chain, before its manifest is
/// built (the manifest shows the state with it). One commit per attestation.
pub fn note_attestation(sealed: &SharedSealed, nonce: &[u8]) -> Result<(), StoreError> {
    sealed.lock().update(|store| {
        let mut salt = [0u8; 32];
        store.random(&mut salt)?;
        let mut chain = AttestChain::read(store).unwrap_or(AttestChain::EMPTY);
        chain.push(attestation_link(nonce, &salt));
        store.put(CHAIN, &chain.bytes()?)
    })
}

fn summarize(store: &dyn SealedStore, failed: bool, rewrapped: bool) -> Summary {
    let state = store.state();
    let flags = if failed { abi::attest::SEALED_STATE_FAILED } else { 0 }
        | if rewrapped { abi::attest::SEALED_STATE_REWRAPPED } else { 0 };
    let entry = SealedStateEntry {
        generation: state.generation,
        store_id: state.store_id,
        root: state.root,
        flags,
        reserved: 0,
    };
    // A malformed chain blob cannot come from this SVSM (the store authenticates what it
    // holds): shown empty, and the next attestation starts it again.
    Summary { entry, vtpm: lineage_in(store), chain: AttestChain::read(store).unwrap_or(AttestChain::EMPTY) }
}

impl core::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sealed").field("state", &self.store.state()).field("failed", &self.failed).finish()
    }
}

/// The sealed state as the vTPM, the OCP and the manifest share it.
pub type SharedSealed = Arc<Mutex<Sealed>>;

impl Sealed {
    pub fn new(store: Box<dyn SealedStore>) -> SharedSealed {
        Self::opened(store, false)
    }

    /// A store [`open_sealed`] opened; `rewrapped` if it re-wrapped it from an older key
    /// (the manifest entry says so).
    pub fn opened(store: Box<dyn SealedStore>, rewrapped: bool) -> SharedSealed {
        let summary = Arc::new(Mutex::new(summarize(store.as_ref(), false, rewrapped)));
        Arc::new(Mutex::new(Self { store, failed: None, rewrapped, summary }))
    }

    /// The summary, updated after every commit (see [`SealedSummary`]).
    pub fn summary(&self) -> SealedSummary {
        self.summary.clone()
    }

    /// The committed state (what a verifier should be shown).
    pub fn state(&self) -> StoreState {
        self.store.state()
    }

    /// Why the sealed state closed, if it did.
    pub fn failed(&self) -> Option<StoreError> {
        self.failed
    }

    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.store.get(name)
    }

    /// Stage changes with `stage` and commit them as one step, or none of them. A failure
    /// drops what was staged and leaves the state open, unless a header write was
    /// attempted: that closes the sealed state and every later update is refused with
    /// the first error.
    pub fn update(
        &mut self,
        stage: impl FnOnce(&mut dyn SealedStore) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let result = stage(self.store.as_mut()).and_then(|()| self.store.commit());
        let mut summary = self.summary.lock();
        match result {
            Ok(()) => *summary = summarize(self.store.as_ref(), false, self.rewrapped),
            // Nothing of it can be on disk: the committed state, unchanged, stays open.
            Err(_) if self.store.discard() => {}
            Err(e) => {
                self.failed = Some(e);
                // The store in memory may hold what was staged and never committed (a
                // chain link, a vTPM version): the summary keeps the last committed
                // state and only says the sealed state closed.
                summary.entry.flags |= abi::attest::SEALED_STATE_FAILED;
            }
        }
        result
    }
}

/// What the SVSM's key request for the sealed store names besides the launch it always
/// binds (measurement and policy): the guest SVN and the TCB version. The PSP derives a
/// key for any values up to the current ones, never above: that is how a store survives
/// an update (docs/persistence.md "The key and updates"). Kept as the key's label in every
/// header the key writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyParams {
    pub guest_svn: u32,
    pub tcb_version: u64,
}

/// Marks a label as [`KeyParams`] (a store written without labels has zeros).
const LABEL_TAG: [u8; 4] = *b"KRQ1";

impl KeyParams {
    /// The label a key for these parameters carries.
    pub fn label(&self) -> [u8; 16] {
        let mut label = [0u8; 16];
        let (tag, rest) = label.split_at_mut(4);
        tag.copy_from_slice(&LABEL_TAG);
        let (svn, tcb) = rest.split_at_mut(4);
        svn.copy_from_slice(&self.guest_svn.to_le_bytes());
        tcb.copy_from_slice(&self.tcb_version.to_le_bytes());
        label
    }

    /// The parameters a label names (`None` for zeros or anything else).
    pub fn from_label(label: &[u8; 16]) -> Option<Self> {
        let (tag, rest) = label.split_at(4);
        let (svn, tcb) = rest.split_at(4);
        (tag == LABEL_TAG).then_some(())?;
        Some(Self {
            guest_svn: u32::from_le_bytes(svn.try_into().ok()?),
            tcb_version: u64::from_le_bytes(tcb.try_into().ok()?),
        })
    }

    /// Whether a key for `self` is one the PSP gives a guest at `current`: the SVN and every
    /// component (byte) of the TCB version at most the current one's.
    pub fn at_most(&self, current: &KeyParams) -> bool {
        self.guest_svn <= current.guest_svn
            && self.tcb_version.to_le_bytes().iter().zip(current.tcb_version.to_le_bytes()).all(|(a, c)| *a <= c)
    }
}

/// A store [`open_sealed`] opened.
#[derive(Debug)]
pub struct OpenedSealed<D: BlockDevice, E: Entropy> {
    pub store: Store<D, E>,
    pub how: store::Opened,
    /// The older key's parameters, if the state was under one and is now re-wrapped under
    /// the current key.
    pub rewrapped_from: Option<KeyParams>,
}

/// Opens the sealed store on `device` with `current_key` (for `current`), formatting a
/// blank disk; or, when its newest authentic header is under the key of an older TCB or
/// SVN (an update since the last commit), opens it with that key from `older_key` and
/// re-wraps the whole state under `current_key` in one commit.
///
/// The headers' labels say which keys to try; they are not authenticated, so each named
/// key is checked against the headers' MACs and the one whose authentic header is newest
/// wins. Only keys at or below `current` are asked for: a label naming a newer TCB is a
/// host's invention (or a downgrade, which must not open newer state) and is ignored.
pub fn open_sealed<D: BlockDevice, E: Entropy>(
    mut device: D,
    current: KeyParams,
    current_key: &StoreKey,
    mut older_key: impl FnMut(KeyParams) -> Option<StoreKey>,
    entropy: E,
) -> Result<OpenedSealed<D, E>, StoreError> {
    let mut older: Vec<KeyParams> = Vec::new();
    for claim in store::header_claims(&mut device)?.into_iter().flatten() {
        if let Some(params) = KeyParams::from_label(&claim.label)
            && params != current
            && params.at_most(&current)
            && !older.contains(&params)
        {
            older.push(params);
        }
    }
    let mut best: Option<(u64, KeyParams, StoreKey)> = None;
    if !older.is_empty() {
        let newest_current = store::newest_header_under(&mut device, current_key)?;
        for params in older {
            let Some(key) = older_key(params) else { continue };
            if let Some(generation) = store::newest_header_under(&mut device, &key)?
                && Some(generation) > newest_current
                && best.as_ref().is_none_or(|(g, _, _)| generation > *g)
            {
                best = Some((generation, params, key));
            }
        }
    }
    match best {
        None => {
            let (store, how) = Store::open_or_format(device, current_key, entropy)?;
            Ok(OpenedSealed { store, how, rewrapped_from: None })
        }
        Some((_, params, key)) => {
            let store = Store::open(device, &key, entropy)?.rekey(current_key)?;
            Ok(OpenedSealed { store, how: store::Opened::Existing, rewrapped_from: Some(params) })
        }
    }
}

/// The attestation chain ([`AttestChain`]).
const CHAIN: &[u8] = b"attest/chain";

/// Where the vTPM's blobs and its marker are kept.
const NV_PREFIX: &[u8] = b"vtpm/nv/";
const MARKER: &[u8] = b"vtpm/manufactured";
/// The tombstone of a vTPM that left by live migration: its EK public area.
const MOVED: &[u8] = b"vtpm/moved";
/// The version of the vTPM's NV state (u64, little-endian): one more with every commit
/// of a change, carried by a migration and kept by the destination, so a state older
/// than one a store has kept for the same TPM is recognised ([`can_keep_vtpm`]). Not
/// under the blobs' prefix: it stays with the tombstone.
const VERSION: &[u8] = b"vtpm/version";
/// Where the kept vTPM's incarnation came from ([`Lineage::origin_bytes`]), written when
/// a migration brings it. A TPM manufactured here has none: its lineage follows from its
/// EK ([`Lineage::manufactured`]).
const LINEAGE: &[u8] = b"vtpm/lineage";

/// The lineage of the vTPM a store keeps (`None` if it keeps none).
fn lineage_in(store: &dyn SealedStore) -> Option<Lineage> {
    let ek = store.get(MARKER)?;
    let version = version_in(store);
    Some(
        store.get(LINEAGE).and_then(|b| Lineage::from_origin(b, version)).unwrap_or(Lineage::manufactured(ek, version)),
    )
}

/// The version of the vTPM's NV state a store keeps (0 if none).
fn version_in(store: &dyn SealedStore) -> u64 {
    store.get(VERSION).and_then(|v| v.try_into().ok()).map_or(0, u64::from_le_bytes)
}

/// The version of the NV state of the vTPM this sealed state keeps, or kept until it
/// left (0 if none).
pub fn vtpm_version(sealed: &SharedSealed) -> u64 {
    version_in(sealed.lock().store.as_ref())
}

/// The lineage of the vTPM this sealed state keeps (`None` if it keeps none): what a
/// migration carries with the vTPM.
pub fn vtpm_lineage(sealed: &SharedSealed) -> Option<Lineage> {
    lineage_in(sealed.lock().store.as_ref())
}

/// Whether this sealed state keeps a vTPM (its marker is there).
pub fn keeps_vtpm(sealed: &SharedSealed) -> bool {
    sealed.lock().get(MARKER).is_some()
}

/// Whether [`mark_vtpm_moved`] for the vTPM with `moving` (the EK public area of the vTPM
/// a migration takes, `None` without one) can succeed: the state does not keep that vTPM,
/// or it is still open. A migration's source asks before its COMMIT: once the
/// destination confirmed it, a tombstone that cannot be written loses the guest.
pub fn vtpm_can_move(sealed: &SharedSealed, moving: Option<&[u8]>) -> bool {
    let s = sealed.lock();
    s.failed().is_none() || moving.is_none_or(|ek| s.get(MARKER) != Some(ek))
}

/// Whether this sealed state can keep the vTPM with `ek_public` at NV state `version`
/// that a migration brings: it is open, it keeps no other vTPM, and if it keeps this one
/// (or kept it until it left), the arriving state is newer than what it kept: a TPM that
/// left and comes back honestly has taken at least one new incarnation since (each one
/// version up), so the same version is a copy of what this store holds. A
/// migration's destination asks before it confirms the commit: after that the source
/// never runs the guest again, and the vTPM would have nowhere to be kept. The version
/// refuses a host that migrates an old copy of the TPM's state (from an old disk image)
/// onto a store that has seen a newer one: old dictionary-attack and monotonic counters
/// would come back.
pub fn can_keep_vtpm(sealed: &SharedSealed, ek_public: &[u8], version: u64) -> bool {
    let s = sealed.lock();
    let this_tpm = s.get(MARKER).or_else(|| s.get(MOVED)) == Some(ek_public);
    s.failed().is_none()
        && s.get(MARKER).is_none_or(|kept| kept == ek_public)
        && (!this_tpm || version > version_in(s.store.as_ref()))
}

/// After a live migration committed: the vTPM this sealed state keeps is the
/// destination's now. In one commit its marker and blobs go, and a tombstone stays
/// (`vtpm/moved`, the EK public area), so this state never starts that TPM again: a host
/// that booted the source again on its disk would otherwise have two of one TPM (the same
/// EK and seeds, the same NV indices and counters), one of them under its control.
/// `moving` is the EK public area of the vTPM the migration took (`None`: none ran): a
/// state that keeps no vTPM, or another one (a kept vTPM that did not start this boot
/// did not move, and stays), has nothing to do (`Ok(false)`). On a failure (which closes
/// the sealed state, or drops the tombstone and leaves the vTPM kept) the caller must not
/// let the destination run the guest (lost, never forked).
pub fn mark_vtpm_moved(sealed: &SharedSealed, moving: Option<&[u8]>) -> Result<bool, StoreError> {
    let mut sealed = sealed.lock();
    let Some(ek) = moving else { return Ok(false) };
    if sealed.get(MARKER) != Some(ek) {
        return Ok(false);
    }
    sealed.update(|store| {
        for blob in store.names_with_prefix(NV_PREFIX)? {
            store.remove(&blob)?;
        }
        store.remove(MARKER)?;
        store.put(MOVED, ek)
    })?;
    Ok(true)
}

/// [`mark_vtpm_moved`], tried again while the disk refused an I/O and the sealed state
/// stayed open (nothing of the tombstone reached the disk: a host that failed one write
/// may take the next) and `keep_trying` (which waits between tries, without the sealed
/// state's lock) says to. After a migration's commit the guest is lost without the
/// tombstone, so a transient refusal is worth waiting out; a failed header write closes
/// the state and ends the tries, and so does an error no retry changes (a full disk).
pub fn mark_vtpm_moved_retrying(
    sealed: &SharedSealed,
    moving: Option<&[u8]>,
    mut keep_trying: impl FnMut() -> bool,
) -> Result<bool, StoreError> {
    loop {
        match mark_vtpm_moved(sealed, moving) {
            Err(StoreError::Io(e)) => {
                let open = sealed.lock().failed().is_none();
                if !(open && keep_trying()) {
                    return Err(StoreError::Io(e));
                }
            }
            done => return done,
        }
    }
}

/// The vTPM's NV blobs in the sealed state: `vtpm/nv/<name>` per blob, and the marker
/// `vtpm/manufactured` (the EK public area), written in the same commit as the first
/// blobs. A store without the marker has no vTPM yet, whatever else it holds: a power
/// cut before that commit leaves no half-made TPM to start from.
#[derive(Debug)]
pub struct VtpmNv {
    sealed: SharedSealed,
    manufactured: bool,
    /// The lineage a migrated state takes here, and the attestation chain it brings
    /// ([`Self::arriving`]).
    arriving: Option<(Lineage, Option<AttestChain>)>,
}

/// What the sealed state holds for the vTPM.
#[derive(Debug)]
pub struct KeptTpm {
    /// The NV blobs to start the engine from (empty: manufacture a new TPM).
    pub nv: NvBlobs,
    /// The EK public area recorded when it was manufactured (`None` for a new TPM).
    pub ek_public: Option<Vec<u8>>,
    /// The vTPM this state kept left by live migration ([`mark_vtpm_moved`]): no TPM may
    /// start here, neither it nor a new one in its place.
    pub moved: bool,
}

impl VtpmNv {
    /// What `sealed` keeps for the vTPM, and the storage that keeps its changes there.
    pub fn open(sealed: SharedSealed) -> (KeptTpm, Self) {
        let (kept, manufactured) = {
            let s = sealed.lock();
            let moved = s.get(MOVED).is_some();
            match s.get(MARKER) {
                Some(ek) => {
                    // At boot, before any guest request: the copies are infallible, as
                    // every blob's below is; no memory for the list aborts as a blob copy
                    // would, never drops a blob.
                    let names = s
                        .store
                        .names_with_prefix(NV_PREFIX)
                        .unwrap_or_else(|_| alloc::alloc::handle_alloc_error(core::alloc::Layout::new::<Vec<u8>>()));
                    let mut nv = NvBlobs::new();
                    for name in names {
                        if let (Some(short), Some(data)) = (name.get(NV_PREFIX.len()..), s.get(&name)) {
                            nv.insert(short.to_vec(), data.to_vec());
                        }
                    }
                    (KeptTpm { nv, ek_public: Some(ek.to_vec()), moved }, true)
                }
                None => (KeptTpm { nv: NvBlobs::new(), ek_public: None, moved }, false),
            }
        };
        (kept, Self { sealed, manufactured, arriving: None })
    }

    /// The storage for a vTPM a migration brings, as the incarnation `lineage` (from
    /// [`Lineage::arrived`]): kept under its version and origin ([`NvStorage::replaced`]),
    /// so its lineage goes on here. What the store kept for a vTPM is replaced whole, so
    /// it is not read (a destination makes this again after each refused commit: a copy
    /// of the kept NV state each time took the heap for nothing, infallibly).
    /// `chain`: the attestation chain of the state it left (none if no store kept it
    /// there); kept here with the arrival's link, in place of this store's own.
    pub fn arriving(sealed: SharedSealed, lineage: Lineage, chain: Option<AttestChain>) -> Self {
        let manufactured = sealed.lock().get(MARKER).is_some();
        Self { sealed, manufactured, arriving: Some((lineage, chain)) }
    }

    /// In one commit: no blob but `blobs` under the vTPM's prefix, the marker with
    /// `ek_public`, and its lineage: `arrived`, or (manufactured here) one version more
    /// than the store's.
    fn keep_only(
        &mut self,
        ek_public: &[u8],
        blobs: &[NvChange],
        arrived: Option<(Lineage, Option<AttestChain>)>,
    ) -> Result<(), NvError> {
        self.sealed
            .lock()
            .update(|store| {
                for stale in store.names_with_prefix(NV_PREFIX)? {
                    store.remove(&stale)?;
                }
                // A TPM that left and arrives back is kept here again.
                store.remove(MOVED)?;
                store.put(MARKER, ek_public)?;
                match arrived {
                    Some((lineage, chain)) => {
                        store.put(VERSION, &lineage.version.to_le_bytes())?;
                        store.put(LINEAGE, &lineage.origin_bytes().ok_or(StoreError::OutOfMemory)?)?;
                        let mut chain = chain.unwrap_or(AttestChain::EMPTY);
                        chain.push(arrival_link(&lineage.incarnation));
                        store.put(CHAIN, &chain.bytes()?)?;
                    }
                    None => {
                        store.put(VERSION, &version_in(store).saturating_add(1).to_le_bytes())?;
                        store.remove(LINEAGE)?;
                    }
                }
                Self::stage(store, blobs)
            })
            .map_err(|_| NvError::Storage)?;
        self.manufactured = true;
        Ok(())
    }

    /// Stage `changes` under the vTPM's prefix.
    fn stage(store: &mut dyn SealedStore, changes: &[NvChange]) -> Result<(), StoreError> {
        for change in changes {
            let mut name = Vec::new();
            name.try_reserve_exact(NV_PREFIX.len() + change.name.len()).map_err(|_| StoreError::OutOfMemory)?;
            name.extend_from_slice(NV_PREFIX);
            name.extend_from_slice(&change.name);
            match &change.data {
                Some(data) => store.put(&name, data)?,
                None => {
                    store.remove(&name)?;
                }
            }
        }
        Ok(())
    }
}

impl NvStorage for VtpmNv {
    fn persist(&mut self, changes: &[NvChange]) -> Result<(), NvError> {
        if !self.manufactured {
            // Only `started` may write the first state (with the marker).
            return Err(NvError::Storage);
        }
        self.sealed
            .lock()
            .update(|store| {
                let version = version_in(store).saturating_add(1);
                store.put(VERSION, &version.to_le_bytes())?;
                Self::stage(store, changes)
            })
            .map_err(|_| NvError::Storage)
    }

    /// A new TPM's first blobs go in one commit with the marker (after removing blobs of
    /// a manufacture that never completed); a kept TPM must have the EK its marker
    /// records, or the state is not the one it claims to be.
    /// A migrated TPM given storage as it resumes ([`VtpmNv::arriving`]) is kept as
    /// [`NvStorage::replaced`] keeps it, with its lineage.
    fn started(&mut self, ek_public: &[u8], changes: &[NvChange]) -> Result<(), NvError> {
        if self.arriving.is_some() {
            return self.replaced(ek_public, changes);
        }
        if !self.manufactured && self.sealed.lock().get(MOVED).is_some() {
            // The TPM kept here left by live migration: neither it nor a new one starts.
            return Err(NvError::Storage);
        }
        if self.manufactured {
            if self.sealed.lock().get(MARKER) != Some(ek_public) {
                return Err(NvError::Storage);
            }
            return self.persist(changes);
        }
        self.keep_only(ek_public, changes, None)
    }

    /// A migrated TPM: the store keeps exactly its blobs under its EK, in one commit.
    /// A store that keeps another TPM refuses; one that kept this TPM before loses every
    /// blob the arriving state does not have.
    /// A state whose lineage was not given ([`VtpmNv::arriving`]) is refused.
    fn replaced(&mut self, ek_public: &[u8], blobs: &[NvChange]) -> Result<(), NvError> {
        let Some((lineage, chain)) = self.arriving else { return Err(NvError::Storage) };
        let left_at = lineage.ancestors().first().map_or(0, |parent| parent.left_at);
        if !can_keep_vtpm(&self.sealed, ek_public, left_at) {
            return Err(NvError::Storage);
        }
        self.keep_only(ek_public, blobs, Some((lineage, chain)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use store::StoreKey;
    use store::testing::{MemDisk, TestRng};

    /// A migration's new incarnation of the TPM that left its parent at `parent_version`.
    fn arrival(parent_version: u64) -> Lineage {
        Lineage::arrived(&Lineage::manufactured(b"parent", parent_version), [0xB2; 16]).unwrap()
    }

    fn key() -> StoreKey {
        StoreKey::new([7; 32])
    }

    fn fresh() -> SharedSealed {
        Sealed::new(Box::new(Store::format(MemDisk::new(64), &key(), TestRng::new(1)).unwrap()))
    }

    /// The disk image of `sealed`'s store, reopened as the next boot would.
    fn reboot(image: Vec<u8>) -> SharedSealed {
        Sealed::new(Box::new(Store::open(MemDisk::from_image(image), &key(), TestRng::new(2)).unwrap()))
    }

    fn change(name: &[u8], data: Option<&[u8]>) -> NvChange {
        NvChange { name: name.to_vec(), data: data.map(<[u8]>::to_vec) }
    }

    #[test]
    fn a_new_tpm_is_kept_with_its_marker_in_one_commit_and_found_again() {
        let disk = Store::format(MemDisk::new(64), &key(), TestRng::new(1)).unwrap();
        let generation = disk.state().generation;
        let sealed = Sealed::new(Box::new(disk));
        let (kept, mut nv) = VtpmNv::open(sealed.clone());
        assert!(kept.nv.is_empty() && kept.ek_public.is_none(), "nothing kept yet: manufacture");
        assert_eq!(nv.persist(&[change(b"permall", Some(b"x"))]), Err(NvError::Storage), "no state before the start");
        nv.started(b"EK", &[change(b"permall", Some(b"seeds"))]).unwrap();
        assert_eq!(sealed.lock().state().generation, generation + 1, "one commit");
        nv.persist(&[change(b"permall", Some(b"seeds+index"))]).unwrap();
        assert_eq!(sealed.lock().state().generation, generation + 2);

        let (kept, _) = VtpmNv::open(sealed.clone());
        assert_eq!(kept.ek_public.as_deref(), Some(&b"EK"[..]));
        assert_eq!(kept.nv.get(&b"permall"[..]).map(Vec::as_slice), Some(&b"seeds+index"[..]));
        assert_eq!(kept.nv.len(), 1);
    }

    #[test]
    fn a_kept_tpm_that_starts_with_another_ek_is_refused() {
        let sealed = fresh();
        let (_, mut nv) = VtpmNv::open(sealed.clone());
        nv.started(b"EK", &[change(b"permall", Some(b"seeds"))]).unwrap();
        let (_, mut again) = VtpmNv::open(sealed.clone());
        let before = sealed.lock().state();
        assert_eq!(again.started(b"another EK", &[]), Err(NvError::Storage));
        assert_eq!(sealed.lock().state(), before, "nothing written");
        let (_, mut again) = VtpmNv::open(sealed);
        assert_eq!(again.started(b"EK", &[]), Ok(()));
    }

    #[test]
    fn blobs_of_a_manufacture_that_never_completed_are_dropped_at_the_next_one() {
        let sealed = fresh();
        sealed.lock().update(|s| s.put(b"vtpm/nv/permall", b"half-made")).unwrap();
        let (kept, mut nv) = VtpmNv::open(sealed.clone());
        assert!(kept.nv.is_empty(), "no marker: the blobs are not a TPM");
        nv.started(b"EK", &[change(b"other", Some(b"new"))]).unwrap();
        let (kept, _) = VtpmNv::open(sealed);
        assert_eq!(kept.nv.keys().cloned().collect::<Vec<_>>(), vec![b"other".to_vec()]);
    }

    /// A migrated TPM replaces what the store kept for it, blobs the arriving state lacks
    /// included, in one commit; a store keeping another TPM refuses and keeps it.
    #[test]
    fn a_migrated_tpm_replaces_its_older_copy_and_not_another_tpm() {
        let sealed = fresh();
        let (_, mut nv) = VtpmNv::open(sealed.clone());
        nv.started(b"EK", &[change(b"permall", Some(b"old")), change(b"volatilestate", Some(b"old"))]).unwrap();
        let mut arriving = VtpmNv::arriving(sealed.clone(), arrival(5), None);
        let generation = sealed.lock().state().generation;
        arriving.replaced(b"EK", &[change(b"permall", Some(b"new"))]).unwrap();
        assert_eq!(sealed.lock().state().generation, generation + 1, "one commit");
        let (kept, _) = VtpmNv::open(sealed.clone());
        assert_eq!(kept.nv.keys().cloned().collect::<Vec<_>>(), vec![b"permall".to_vec()], "the stale blob is gone");
        assert_eq!(kept.nv.get(&b"permall"[..]).map(Vec::as_slice), Some(&b"new"[..]));

        let before = sealed.lock().state();
        let (_, mut other) = VtpmNv::open(sealed.clone());
        assert_eq!(other.replaced(b"another EK", &[change(b"permall", Some(b"x"))]), Err(NvError::Storage));
        assert_eq!(sealed.lock().state(), before, "nothing written");
        // A blank store takes it as a first start would, marker and all.
        let blank = fresh();
        VtpmNv::arriving(blank.clone(), arrival(0), None).replaced(b"EK", &[change(b"permall", Some(b"p"))]).unwrap();
        assert_eq!(VtpmNv::open(blank).0.ek_public.as_deref(), Some(&b"EK"[..]));
    }

    /// After a migration committed, the source's state keeps a tombstone instead of the
    /// TPM: nothing starts there again (not the TPM, not a new one), in one commit; the
    /// TPM arriving back (a later migration to this state) clears it.
    #[test]
    fn a_tpm_that_left_never_starts_again_from_the_state_it_left() {
        let sealed = fresh();
        let (_, mut nv) = VtpmNv::open(sealed.clone());
        nv.started(b"EK", &[change(b"permall", Some(b"seeds")), change(b"volatilestate", Some(b"v"))]).unwrap();
        let generation = sealed.lock().state().generation;
        // A kept vTPM that did not start this boot (no vTPM, or another, moved) stays.
        assert_eq!(mark_vtpm_moved(&sealed, None), Ok(false));
        assert_eq!(mark_vtpm_moved(&sealed, Some(b"another EK")), Ok(false));
        assert_eq!(sealed.lock().state().generation, generation, "nothing written");
        assert_eq!(mark_vtpm_moved(&sealed, Some(b"EK")), Ok(true));
        assert_eq!(sealed.lock().state().generation, generation + 1, "one commit");
        assert!(sealed.lock().store.names_with_prefix(b"vtpm/nv/").unwrap().is_empty(), "no blob left");

        let (kept, mut again) = VtpmNv::open(sealed.clone());
        assert!(kept.moved && kept.ek_public.is_none() && kept.nv.is_empty());
        let before = sealed.lock().state();
        assert_eq!(again.started(b"EK", &[change(b"permall", Some(b"x"))]), Err(NvError::Storage), "not the TPM");
        assert_eq!(again.started(b"new EK", &[change(b"permall", Some(b"y"))]), Err(NvError::Storage), "not a new one");
        assert_eq!(sealed.lock().state(), before, "nothing written");

        VtpmNv::arriving(sealed.clone(), arrival(vtpm_version(&sealed) + 1), None)
            .replaced(b"EK", &[change(b"permall", Some(b"back"))])
            .unwrap();
        let (kept, _) = VtpmNv::open(sealed.clone());
        assert!(!kept.moved, "the tombstone goes when the TPM is kept here again");
        assert_eq!(kept.ek_public.as_deref(), Some(&b"EK"[..]));

        // Whether a migration's destination may take a TPM here: not another EK's.
        assert!(can_keep_vtpm(&sealed, b"EK", 9) && !can_keep_vtpm(&sealed, b"another EK", 9));
        assert!(vtpm_can_move(&sealed, Some(b"EK")));

        // A state that keeps no vTPM: nothing to mark, no commit.
        let empty = fresh();
        let generation = empty.lock().state().generation;
        assert_eq!(mark_vtpm_moved(&empty, Some(b"EK")), Ok(false));
        assert_eq!(empty.lock().state().generation, generation);
        assert!(!VtpmNv::open(empty).0.moved);
    }

    /// The NV state's version: one more with every commit of a change, set by a
    /// migration to what arrives, kept with the tombstone; a store refuses an arriving
    /// state of a TPM it keeps (or kept) that is older than its own.
    #[test]
    fn an_older_state_of_a_tpm_a_store_knows_is_refused() {
        let sealed = fresh();
        assert_eq!(vtpm_version(&sealed), 0);
        let (_, mut nv) = VtpmNv::open(sealed.clone());
        nv.started(b"EK", &[change(b"permall", Some(b"one"))]).unwrap();
        assert_eq!(vtpm_version(&sealed), 1);
        nv.persist(&[change(b"permall", Some(b"two"))]).unwrap();
        nv.persist(&[change(b"permall", Some(b"three"))]).unwrap();
        assert_eq!(vtpm_version(&sealed), 3);

        // The same TPM arriving: newer than 3; another TPM: never; a fresh store: any
        // version.
        assert!(!can_keep_vtpm(&sealed, b"EK", 2), "an older state");
        assert!(!can_keep_vtpm(&sealed, b"EK", 3), "a copy of the state kept here");
        assert!(can_keep_vtpm(&sealed, b"EK", 4) && can_keep_vtpm(&sealed, b"EK", 40));
        assert!(!can_keep_vtpm(&sealed, b"another EK", 40));
        assert!(can_keep_vtpm(&fresh(), b"EK", 0));
        let before = sealed.lock().state();
        assert_eq!(
            VtpmNv::arriving(sealed.clone(), arrival(2), None).replaced(b"EK", &[change(b"permall", Some(b"old"))]),
            Err(NvError::Storage)
        );
        assert_eq!(sealed.lock().state(), before, "nothing written");
        let (_, mut unknown) = VtpmNv::open(sealed.clone());
        assert!(unknown.replaced(b"EK", &[]).is_err(), "a migrated state of unknown lineage is not taken");

        // A newer state is kept as a new incarnation one version above where it left its
        // parent, and the lineage goes on from it.
        let mut newer = VtpmNv::arriving(sealed.clone(), arrival(40), None);
        newer.replaced(b"EK", &[change(b"permall", Some(b"forty"))]).unwrap();
        assert_eq!(vtpm_version(&sealed), 41);
        assert_eq!(vtpm_lineage(&sealed), Some(arrival(40)));
        newer.persist(&[change(b"permall", Some(b"forty-one"))]).unwrap();
        assert_eq!(vtpm_version(&sealed), 42);
        let lineage = vtpm_lineage(&sealed).unwrap();
        assert_eq!((lineage.version, lineage.incarnation), (42, [0xB2; 16]));
        assert_eq!(lineage.ancestors(), arrival(40).ancestors(), "its origin is kept");
        assert_eq!(sealed.lock().summary().lock().vtpm, Some(lineage), "the summary follows each commit");

        // The tombstone keeps the version: the TPM coming back older is refused there too.
        mark_vtpm_moved(&sealed, Some(b"EK")).unwrap();
        assert_eq!(vtpm_version(&sealed), 42);
        assert_eq!(vtpm_lineage(&sealed), None, "no TPM kept");
        assert!(!can_keep_vtpm(&sealed, b"EK", 42) && can_keep_vtpm(&sealed, b"EK", 43));
        assert!(can_keep_vtpm(&sealed, b"another EK", 0), "a tombstone of another TPM holds nothing back");
    }

    /// Each attestation commits its link; the chain keeps the 16 newest and folds older
    /// ones into the value before them, so the chain's value always covers every link.
    #[test]
    fn each_attestation_commits_a_link_and_the_chain_keeps_the_newest() {
        let sealed = fresh();
        let generation = sealed.lock().state().generation;
        assert_eq!(sealed.lock().summary().lock().chain.links(), &[] as &[[u8; 32]]);
        let fold = |value: [u8; 32], link: &[u8; 32]| -> [u8; 32] {
            Sha256::new().chain_update(value).chain_update(link).finalize().into()
        };
        let (mut expected, mut seen) = ([0u8; 32], Vec::new());
        for i in 0..20u8 {
            note_attestation(&sealed, &[i; 8]).unwrap();
            let newest = *sealed.lock().summary().lock().chain.links().last().unwrap();
            assert!(!seen.contains(&newest), "every link is new");
            seen.push(newest);
            expected = fold(expected, &newest);
        }
        assert_eq!(sealed.lock().state().generation, generation + 20, "one commit each");
        let chain = sealed.lock().summary().lock().chain;
        assert_eq!(chain.links().len(), ATTEST_CHAIN_MAX_LINKS);
        assert_eq!(chain.links(), &seen[4..], "the newest, oldest first");
        let value = chain.links().iter().fold(chain.before, fold);
        assert_eq!(value, expected, "the value covers the links folded away");
        // The same nonce again makes another link: the salt is fresh.
        note_attestation(&sealed, &[19; 8]).unwrap();
        assert_ne!(sealed.lock().summary().lock().chain.links().last(), seen.last());
        let entry = chain.entry().unwrap();
        assert_eq!(entry.len(), 40 + 32 * ATTEST_CHAIN_MAX_LINKS, "always the same size");
        // One link: the unused slots are zero, so the entry's size does not change.
        let one = fresh();
        note_attestation(&one, b"nonce").unwrap();
        let entry = one.lock().summary().lock().chain.entry().unwrap();
        assert_eq!(entry.len(), 40 + 32 * ATTEST_CHAIN_MAX_LINKS);
        assert!(entry[40 + 32..].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_deleted_blob_is_deleted_from_the_store() {
        let sealed = fresh();
        let (_, mut nv) = VtpmNv::open(sealed.clone());
        nv.started(b"EK", &[change(b"permall", Some(b"p")), change(b"volatilestate", Some(b"v"))]).unwrap();
        nv.persist(&[change(b"volatilestate", None)]).unwrap();
        let (kept, _) = VtpmNv::open(sealed);
        assert_eq!(kept.nv.keys().cloned().collect::<Vec<_>>(), vec![b"permall".to_vec()]);
    }

    /// A closed sealed state cannot write the tombstone: a source must not commit a
    /// migration then (the guest would be lost), and a destination must not take a TPM.
    #[test]
    fn a_closed_state_neither_lets_its_tpm_move_nor_takes_one() {
        let disk = SharedDisk(Arc::new(Mutex::new(MemDisk::new(64))));
        let sealed = Sealed::new(Box::new(Store::format(disk.clone(), &key(), TestRng::new(1)).unwrap()));
        assert!(vtpm_can_move(&sealed, Some(b"EK")), "nothing kept: nothing to mark");
        let (_, mut nv) = VtpmNv::open(sealed.clone());
        nv.started(b"EK", &[change(b"permall", Some(b"one"))]).unwrap();
        assert!(vtpm_can_move(&sealed, Some(b"EK")) && can_keep_vtpm(&sealed, b"EK", 2));
        fail_header_writes(&disk);
        assert!(nv.persist(&[change(b"permall", Some(b"two"))]).is_err());
        assert!(!vtpm_can_move(&sealed, Some(b"EK")), "closed with a TPM in it");
        assert!(mark_vtpm_moved(&sealed, Some(b"EK")).is_err(), "as the check said");
        assert!(vtpm_can_move(&sealed, None), "no vTPM moves (it did not start): nothing to mark");
        assert_eq!(mark_vtpm_moved(&sealed, None), Ok(false));
        assert!(!can_keep_vtpm(&sealed, b"EK", 2));
    }

    /// A sealed state on a fresh 64-block disk keeping the vTPM "EK" (permall "one").
    fn a_kept_tpm() -> (SharedDisk, SharedSealed, VtpmNv) {
        let disk = SharedDisk(Arc::new(Mutex::new(MemDisk::new(64))));
        let sealed = Sealed::new(Box::new(Store::format(disk.clone(), &key(), TestRng::new(1)).unwrap()));
        let (_, mut nv) = VtpmNv::open(sealed.clone());
        nv.started(b"EK", &[change(b"permall", Some(b"one"))]).unwrap();
        (disk, sealed, nv)
    }

    /// Both header slots refuse writes: the next commit's header write fails (and may
    /// have landed, for all the SVSM knows).
    fn fail_header_writes(disk: &SharedDisk) {
        let mut disk = disk.0.lock();
        disk.fail_writes_of(0);
        disk.fail_writes_of(1);
    }

    #[test]
    fn a_failed_header_write_closes_the_sealed_state_and_nothing_staged_rides_along_later() {
        let (disk, sealed, mut nv) = a_kept_tpm();
        let committed = sealed.lock().state();
        fail_header_writes(&disk);
        assert_eq!(nv.persist(&[change(b"permall", Some(b"two"))]), Err(NvError::Storage));
        let failed = sealed.lock().failed();
        assert!(matches!(failed, Some(StoreError::Io(_))), "{failed:?}");
        disk.0.lock().heal();
        // The disk works again, but the sealed state stays closed: "two" never lands.
        assert!(nv.persist(&[change(b"permall", Some(b"three"))]).is_err());
        assert!(sealed.lock().update(|s| s.put(b"ocp/level", b"debug")).is_err());
        assert_eq!(sealed.lock().state(), committed);
        let image = disk.0.lock().image();
        let (kept, _) = VtpmNv::open(reboot(image));
        assert_eq!(kept.nv.get(&b"permall"[..]).map(Vec::as_slice), Some(&b"one"[..]));
    }

    /// After a migration's commit a refused tombstone is tried again while the sealed state
    /// is open; a failed header write (closed) ends the tries at once.
    #[test]
    fn the_tombstone_is_tried_again_until_the_host_takes_it_but_not_after_a_header_failed() {
        let (disk, sealed, _nv) = a_kept_tpm();
        disk.0.lock().fail_flushes(true);
        let mut tries = 0;
        let marked = mark_vtpm_moved_retrying(&sealed, Some(b"EK"), || {
            tries += 1;
            if tries == 3 {
                disk.0.lock().heal();
            }
            true
        });
        assert_eq!((marked, tries), (Ok(true), 3));
        let (kept, _) = VtpmNv::open(reboot(disk.0.lock().image()));
        assert!(kept.moved && kept.nv.is_empty() && kept.ek_public.is_none(), "the tombstone is on disk: {kept:?}");

        let (disk, sealed, _nv) = a_kept_tpm();
        fail_header_writes(&disk);
        let mut tries = 0;
        assert!(
            mark_vtpm_moved_retrying(&sealed, Some(b"EK"), || {
                tries += 1;
                true
            })
            .is_err()
        );
        assert_eq!(tries, 0, "closed: no second try");
    }

    /// A failure before any header write (here: the flush of the new data blocks) leaves
    /// nothing on disk that names the staged changes: they are dropped, the caller fails
    /// (the vTPM stops), and the sealed state goes on keeping everything else.
    #[test]
    fn a_commit_that_fails_before_its_header_drops_what_it_staged_and_the_state_stays_open() {
        let (disk, sealed, mut nv) = a_kept_tpm();
        let before = *sealed.lock().summary().lock();
        disk.0.lock().fail_flushes(true);
        assert_eq!(nv.persist(&[change(b"permall", Some(b"two"))]), Err(NvError::Storage));
        assert_eq!(sealed.lock().failed(), None);
        assert_eq!(sealed.lock().get(b"vtpm/nv/permall"), Some(&b"one"[..]), "the staged blob is gone");
        let after = *sealed.lock().summary().lock();
        assert_eq!(after, before, "neither flagged nor changed");
        disk.0.lock().heal();
        sealed.lock().update(|s| s.put(b"ocp/level", b"debug")).unwrap();
        let image = disk.0.lock().image();
        let (kept, _) = VtpmNv::open(reboot(image.clone()));
        assert_eq!(kept.nv.get(&b"permall"[..]).map(Vec::as_slice), Some(&b"one"[..]));
        let reopened = reboot(image);
        assert_eq!(reopened.lock().get(b"ocp/level"), Some(&b"debug"[..]));
        assert_eq!(
            version_in(reopened.lock().store.as_ref()),
            before.vtpm.map_or(0, |v| v.version),
            "no version of a drop"
        );
    }

    /// A staging step that fails half-way (the heap ran out between two puts) commits
    /// nothing of what it had staged.
    #[test]
    fn a_staging_failure_commits_none_of_the_update() {
        let disk = SharedDisk(Arc::new(Mutex::new(MemDisk::new(64))));
        let sealed = Sealed::new(Box::new(Store::format(disk.clone(), &key(), TestRng::new(1)).unwrap()));
        sealed.lock().update(|s| s.put(b"a", b"1")).unwrap();
        let state = sealed.lock().state();
        let result = sealed.lock().update(|s| {
            s.put(b"a", b"2")?;
            s.put(b"b", b"3")?;
            Err(StoreError::OutOfMemory)
        });
        assert_eq!(result, Err(StoreError::OutOfMemory));
        let sealed = sealed.lock();
        assert_eq!((sealed.get(b"a"), sealed.get(b"b")), (Some(&b"1"[..]), None));
        assert_eq!((sealed.state(), sealed.failed()), (state, None));
    }

    /// A commit that fails leaves the summary (what the manifest and OCP show) on the last
    /// committed state, flagged: the staged link and version never reached the disk.
    #[test]
    fn a_failed_commit_shows_the_committed_state_flagged_never_what_was_staged() {
        let (disk, sealed, mut nv) = a_kept_tpm();
        note_attestation(&sealed, b"first").unwrap();
        let before = *sealed.lock().summary().lock();
        assert_eq!(before.chain.links().len(), 1);
        assert_eq!(before.entry.flags & abi::attest::SEALED_STATE_FAILED, 0);

        fail_header_writes(&disk);
        assert!(note_attestation(&sealed, b"second").is_err());
        let after = *sealed.lock().summary().lock();
        assert_eq!(after.chain, before.chain, "the link that never committed is not shown");
        assert_eq!(after.vtpm, before.vtpm);
        assert_eq!((after.entry.generation, after.entry.root), (before.entry.generation, before.entry.root));
        assert_ne!(after.entry.flags & abi::attest::SEALED_STATE_FAILED, 0, "but the state is shown closed");
        assert_eq!(nv.persist(&[change(b"permall", Some(b"two"))]), Err(NvError::Storage));
        assert_eq!(sealed.lock().summary().lock().vtpm, before.vtpm, "nor a version that never committed");
    }

    /// A MemDisk the test keeps a handle on while the store drives it.
    #[derive(Clone)]
    struct SharedDisk(Arc<Mutex<MemDisk>>);

    impl BlockDevice for SharedDisk {
        fn block_count(&self) -> u64 {
            self.0.lock().block_count()
        }
        fn read(&mut self, index: u64, buf: &mut store::Block) -> Result<(), store::IoError> {
            self.0.lock().read(index, buf)
        }
        fn write(&mut self, index: u64, buf: &store::Block) -> Result<(), store::IoError> {
            self.0.lock().write(index, buf)
        }
        fn flush(&mut self) -> Result<(), store::IoError> {
            self.0.lock().flush()
        }
    }
}
