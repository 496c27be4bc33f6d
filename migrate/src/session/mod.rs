//! The migration session: mutual attestation, session keys, the record stream and the
//! commit (docs/migration.md).
//!
//! ```text
//!  source                                               destination
//!  HELLO(role, modes, nonce, ephemeral key)      ->
//!                                                <-     HELLO(role, modes, nonce, ephemeral key)
//!                                                <-     EVIDENCE(report binding the HELLOs and its key)
//!  verify: chain, REPORT_DATA, same measurement and policy; else ABORT, nothing else sent
//!  EVIDENCE(report binding the HELLOs and its key) ->
//!  keys                                                 verify as above; keys
//!                                                <-     READY                       (records from here)
//!  STATE * n                                     ->
//!  COMMIT(n, bytes, hash of the STATE frames)    ->     check n, bytes and hash
//!                                                <-     COMMIT_ACK(the same)
//!  committed: the source stops for good
//!  FINISH                                        ->     completed: the destination runs
//!                                                <-     FINISH_ACK
//!  (no FINISH_ACK in time: the same FINISH again)
//! ```
//!
//! Both sides are sans-I/O state machines: [`Source::handle_frame`] /
//! [`Destination::handle_frame`] take a frame from the peer, `next_frame` gives the next
//! frame to send, and [`pump`] moves frames between a side and a [`MigrationChannel`].
//!
//! Every failure is a named [`MigrationError`] and ends the session for good: there are
//! no retries on a tampered stream, with one exception after the commit point. There the
//! source can no longer run the guest, so a lost FINISH would lose it: the source offers
//! the same sealed FINISH again ([`Source::offer_finish_again`]) until the destination's
//! FINISH_ACK arrives, and the destination, waiting for it, passes over records that do
//! not open as the next one (a flipped or replayed record; at most
//! [`MAX_IGNORED_AFTER_ACK`]) instead of failing. It still runs only on an authentic
//! FINISH. The failing side queues an ABORT for its peer
//! (authenticated once keys exist). The source commits only when the destination's
//! authenticated COMMIT_ACK arrives, and the destination runs only on the source's FINISH,
//! which the source sends only after it committed: so the guest never runs on both sides.
//! If anything fails before the COMMIT_ACK, [`Source::outcome`] is
//! [`SourceOutcome::KeepRunning`] and the destination cannot run.

mod keys;
mod wire;

pub use keys::{HASH_LEN, REPORT_DATA_LEN, report_data, seal_for_benchmark};
pub use wire::{
    FrameKind, MAX_EVIDENCE_LEN, MAX_RING_PAGES, MIN_RING_PAGES, PROTOCOL_VERSION, PUBLIC_KEY_LEN, RecordType,
};

use crate::Entropy;
use crate::channel::{ChannelError, MigrationChannel};
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use keys::{Ephemeral, Keys};
use p384::PublicKey;
use sha2::{Digest, Sha384};
use wire::{CommitBody, EVIDENCE_HEADER_LEN, HelloFault, NONCE_LEN, kind};
use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, IntoBytes};

/// The largest chunk of state one STATE record carries.
pub const MAX_STATE_CHUNK: usize = 64 * 1024;

/// Records a destination waiting for the FINISH passes over (they did not open as the next
/// record) before it gives up: the source offers the FINISH a bounded number of times.
pub const MAX_IGNORED_AFTER_ACK: u32 = 64;

/// Which end of the migration a side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The SVSM whose guest leaves.
    Source,
    /// The SVSM that receives the guest.
    Destination,
}

impl Role {
    const fn to_byte(self) -> u8 {
        match self {
            Self::Source => 1,
            Self::Destination => 2,
        }
    }

    /// The other end.
    pub const fn peer(self) -> Self {
        match self {
            Self::Source => Self::Destination,
            Self::Destination => Self::Source,
        }
    }
}

/// The channel mode both sides agreed on in their HELLOs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The proposal's migration page, one per direction.
    Page,
    /// A ring of this many migration pages (both sides offered one; the smaller size).
    Ring {
        /// Pages in the ring.
        pages: u16,
    },
}

/// What a verified report says about the SVSM that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The launch measurement.
    pub measurement: [u8; 48],
    /// The guest policy.
    pub policy: u64,
}

/// Why a peer's evidence was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// The evidence does not parse.
    Malformed,
    /// A signature or the certificate chain does not verify.
    Untrusted,
    /// The report's REPORT_DATA is not the expected one (another session, another key).
    ReportDataMismatch,
    /// The verifier's own rules refuse the report (debug policy, VMPL, TCB, ...).
    Refused,
    /// The heap has no room to verify it: this side fails, the peer was not judged.
    OutOfMemory,
}

/// Checks a peer's evidence: its certificate chain and signature, and that its
/// REPORT_DATA is `expected_report_data`. Says who the peer is; the session compares that
/// with itself.
pub trait PeerVerifier {
    /// Verifies `evidence`.
    fn verify(
        &self,
        evidence: &[u8],
        expected_report_data: &[u8; REPORT_DATA_LEN],
    ) -> Result<PeerIdentity, VerifyError>;
}

impl<T: PeerVerifier + ?Sized> PeerVerifier for &T {
    fn verify(
        &self,
        evidence: &[u8],
        expected_report_data: &[u8; REPORT_DATA_LEN],
    ) -> Result<PeerIdentity, VerifyError> {
        (**self).verify(evidence, expected_report_data)
    }
}

/// This side's evidence could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvidenceError;

/// Makes this side's evidence: an attestation report with the given REPORT_DATA and what
/// a verifier needs with it (certificates), as one opaque byte string.
pub trait EvidenceProvider {
    /// Evidence whose REPORT_DATA is `report_data`.
    fn evidence(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, EvidenceError>;
}

impl<T: EvidenceProvider + ?Sized> EvidenceProvider for &mut T {
    fn evidence(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, EvidenceError> {
        (**self).evidence(report_data)
    }
}

/// Why a side gave up, as carried by ABORT. Open: a peer may send any value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortReason(pub u16);

impl AbortReason {
    /// The caller asked for it ([`Source::abort`], [`Destination::abort`]).
    pub const REQUESTED: Self = Self(1);
    /// The peer's evidence, measurement or policy was refused.
    pub const PEER_REFUSED: Self = Self(2);
    /// A frame broke the protocol.
    pub const PROTOCOL: Self = Self(3);
    /// A record failed authentication, came out of sequence, or the commit did not match.
    pub const INTEGRITY: Self = Self(4);
    /// This side failed on its own (entropy, evidence, memory).
    pub const INTERNAL: Self = Self(5);
}

/// A side's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// This SVSM's own measurement and policy: the peer must have the same.
    pub identity: PeerIdentity,
    /// Offer a ring of this many pages besides the page mode.
    pub ring_pages: Option<u16>,
    /// The AES the record layer runs on (a local choice: the bytes are the same).
    pub aes: Aes,
}

/// Which AES the record layer runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aes {
    /// RustCrypto's `aes`: its portable code on the bare-metal target (which cannot build
    /// its SIMD code), AES-NI where it finds it on a hosted one.
    #[default]
    Portable,
    /// AES-NI and PCLMULQDQ through `x86::aesni`, on any target. Only where CPUID says
    /// AES, PCLMULQDQ and SSSE3 and SSE is enabled (CR4.OSFXSR): the caller checks.
    Hardware,
}

/// Why a session failed, or (after the commit, see the module's docs) what a side passed
/// over while it waits for the FINISH or the FINISH_ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationError {
    /// The channel failed.
    Channel(ChannelError),
    /// The stream ended before the session did.
    EarlyEnd,
    /// The entropy source failed.
    Entropy,
    /// This side's evidence could not be made (or is empty or too long).
    OwnEvidence(EvidenceError),
    /// No memory for a frame.
    OutOfMemory,
    /// A frame of another protocol version.
    UnsupportedVersion {
        /// The version it carried.
        version: u8,
    },
    /// A frame of a kind that is not expected now (a second HELLO, a record before the
    /// keys, a plaintext ABORT after them, an unknown kind).
    UnexpectedFrame {
        /// Its kind byte.
        kind: u8,
    },
    /// A HELLO of the wrong length or with reserved bits set.
    MalformedHello,
    /// A HELLO that claims this side's own role (a reflected HELLO).
    WrongPeerRole,
    /// A HELLO whose modes are malformed (page mode missing, bad ring size).
    BadModes,
    /// The peer's ephemeral key is not an uncompressed P-384 point, or is this side's own.
    BadPublicKey,
    /// An EVIDENCE that is empty or longer than [`MAX_EVIDENCE_LEN`].
    MalformedEvidence,
    /// An ABORT of the wrong length.
    MalformedAbort,
    /// A record too short for its tag, of an unknown type, or whose plaintext has the
    /// wrong length for its type.
    MalformedRecord,
    /// The peer's evidence was refused by the verifier.
    PeerEvidence(VerifyError),
    /// The peer runs another image.
    PeerMeasurement,
    /// The peer runs under another policy.
    PeerPolicy,
    /// A record did not authenticate.
    Authentication {
        /// The sequence number it was opened under.
        sequence: u64,
    },
    /// A record with another sequence number than the next one (dropped, replayed,
    /// reordered).
    UnexpectedSequence {
        /// The next sequence number.
        expected: u64,
        /// The record's.
        got: u64,
    },
    /// An authentic record of a type that is not expected now.
    UnexpectedRecord {
        /// Its type.
        record_type: RecordType,
    },
    /// A STATE record after the COMMIT.
    RecordAfterCommit,
    /// The COMMIT does not match what arrived, or the COMMIT_ACK does not match the COMMIT.
    CommitMismatch,
    /// This direction has used every sequence number.
    SequenceExhausted,
    /// The peer aborted.
    PeerAborted {
        /// Its reason.
        reason: AbortReason,
    },
    /// This side aborted.
    Aborted {
        /// The reason given.
        reason: AbortReason,
    },
    /// A frame after this side's end (the outcome is decided and stays).
    AfterEnd,
    /// A call that this side's phase does not allow (nothing changed).
    WrongPhase,
    /// A state chunk that is empty or longer than [`MAX_STATE_CHUNK`] (nothing changed).
    StateChunkLength {
        /// Its length.
        len: usize,
    },
    /// A condition the code rules out, reported instead of panicking.
    Internal,
}

impl MigrationError {
    fn abort_reason(self) -> AbortReason {
        match self {
            Self::PeerEvidence(_) | Self::PeerMeasurement | Self::PeerPolicy => AbortReason::PEER_REFUSED,
            Self::Authentication { .. }
            | Self::UnexpectedSequence { .. }
            | Self::RecordAfterCommit
            | Self::CommitMismatch => AbortReason::INTEGRITY,
            Self::Entropy
            | Self::OwnEvidence(_)
            | Self::OutOfMemory
            | Self::Channel(ChannelError::OutOfMemory)
            | Self::SequenceExhausted
            | Self::Internal
            | Self::WrongPhase
            | Self::StateChunkLength { .. } => AbortReason::INTERNAL,
            Self::Aborted { reason } => reason,
            _ => AbortReason::PROTOCOL,
        }
    }
}

/// What the source should do with its guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceOutcome {
    /// The session is still running: the guest must stay paused if state is being sent,
    /// and the migration can still fail or be aborted.
    InProgress,
    /// The destination confirmed everything (authenticated COMMIT_ACK): the source must
    /// never run this guest again.
    Committed,
    /// The migration failed: the source keeps running as if it never started. The
    /// destination cannot run the guest (it runs only on FINISH, sent only after commit).
    KeepRunning(MigrationError),
}

/// What the destination may do with what it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationOutcome {
    /// Still running: received state must not be acted on.
    InProgress,
    /// FINISH arrived: the state is complete and exact, the source has stopped, the
    /// guest runs here.
    Completed,
    /// The migration failed: discard everything received.
    Failed(MigrationError),
}

/// The source's phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePhase {
    /// HELLO sent, waiting for the destination's.
    AwaitHello,
    /// Waiting for the destination's evidence.
    AwaitEvidence,
    /// Evidence sent, keys derived, waiting for READY.
    AwaitReady,
    /// Sending state.
    Transfer,
    /// COMMIT sent, waiting for COMMIT_ACK.
    CommitSent,
    /// Committed (FINISH queued or sent), waiting for the FINISH_ACK.
    Committed,
    /// The FINISH_ACK arrived: the destination runs the guest.
    Finished,
    /// Failed.
    Failed,
}

/// The destination's phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationPhase {
    /// Waiting for the source's HELLO.
    AwaitHello,
    /// HELLO and evidence sent, waiting for the source's evidence.
    AwaitEvidence,
    /// READY sent, receiving state.
    Transfer,
    /// The COMMIT matched everything received; the COMMIT_ACK waits for
    /// [`Destination::approve_commit`] (only with [`Destination::hold_commit_ack`]).
    CommitVerified,
    /// COMMIT_ACK sent, waiting for FINISH.
    AwaitFinish,
    /// FINISH arrived (FINISH_ACK queued).
    Completed,
    /// Failed.
    Failed,
}

/// The STATE frames so far: count, plaintext bytes, and SHA-384 over
/// `"bulwark-migrate v1 state tags" || full transcript hash || (u32 LE length || header ||
/// tag)*`. Each frame's GCM tag stands for the frame: it authenticates the header and the
/// ciphertext under the direction's key and the record's own nonce, so two frames with
/// the same length, header and tag would be a forgery. Hashing whole frames cost the
/// source a quarter of its channel time under emulation (docs/migration.md "Commit").
struct Tally {
    records: u64,
    bytes: u64,
    hash: Sha384,
}

impl Tally {
    fn new(transcript: &[u8; HASH_LEN]) -> Self {
        let mut hash = Sha384::new();
        hash.update(keys::STATE_HASH_LABEL);
        hash.update(transcript);
        Self { records: 0, bytes: 0, hash }
    }

    /// One STATE frame, sealed here or opened (its tag verified) by the receiver.
    fn add(&mut self, frame: &[u8], plaintext_len: usize) -> Result<(), MigrationError> {
        let len = u32::try_from(frame.len()).map_err(|_| MigrationError::Internal)?;
        let header = frame.get(..wire::RECORD_HEADER_LEN).ok_or(MigrationError::Internal)?;
        let tag_at = frame.len().checked_sub(wire::TAG_LEN).ok_or(MigrationError::Internal)?;
        let tag = frame.get(tag_at..).ok_or(MigrationError::Internal)?;
        if tag_at < wire::RECORD_HEADER_LEN {
            return Err(MigrationError::Internal);
        }
        self.hash.update(len.to_le_bytes());
        self.hash.update(header);
        self.hash.update(tag);
        self.records = self.records.checked_add(1).ok_or(MigrationError::Internal)?;
        let len = u64::try_from(plaintext_len).map_err(|_| MigrationError::Internal)?;
        self.bytes = self.bytes.checked_add(len).ok_or(MigrationError::Internal)?;
        Ok(())
    }

    fn body(&self) -> CommitBody {
        CommitBody {
            state_records: U64::new(self.records),
            state_bytes: U64::new(self.bytes),
            state_hash: self.hash.clone().finalize().into(),
        }
    }
}

/// A frame waiting to be handed to the channel. Records are sealed only when they leave,
/// so records dropped by a failure never take a sequence number and the ABORT that
/// follows is the next record the peer expects.
enum Outgoing {
    /// A handshake frame, encoded.
    Handshake(Vec<u8>),
    /// A record's type and plaintext.
    Record(RecordType, Vec<u8>),
    /// The source's COMMIT, whose body is taken when it leaves (after every STATE).
    Commit,
    /// This side's ABORT: a record once this side has keys, in clear before. Encoded only
    /// when it leaves, so failing (often for want of memory) allocates nothing.
    Abort(AbortReason),
}

/// What both sides share: the handshake's state, the keys, the outbound queue.
struct Core<V, P> {
    role: Role,
    config: Config,
    verifier: V,
    evidence: P,
    /// Dropped (wiped) once the keys are derived.
    ephemeral: Option<Ephemeral>,
    nonce: [u8; NONCE_LEN],
    peer_key: Option<PublicKey>,
    /// The peer's HELLO key as sent (its REPORT_DATA binds this encoding).
    peer_key_bytes: [u8; PUBLIC_KEY_LEN],
    transcript: Sha384,
    hello_transcript: [u8; HASH_LEN],
    mode: Option<Mode>,
    /// The ring pages in use `[outbound, inbound]`: 1 (the page mode) until the ring
    /// mode starts.
    ring: [usize; 2],
    peer: Option<PeerIdentity>,
    keys: Option<Keys>,
    tally: Option<Tally>,
    outbound: VecDeque<Outgoing>,
    /// The COMMIT body sent (source) or accepted (destination).
    commit: Option<CommitBody>,
    /// The source's FINISH as sealed, to offer again while no FINISH_ACK came.
    finish: Option<Vec<u8>>,
    error: Option<MigrationError>,
}

impl<V: PeerVerifier, P: EvidenceProvider> Core<V, P> {
    fn new(
        role: Role,
        config: Config,
        verifier: V,
        evidence: P,
        entropy: &mut dyn Entropy,
    ) -> Result<Self, MigrationError> {
        let ephemeral = Ephemeral::generate(entropy)?;
        let mut nonce = [0u8; NONCE_LEN];
        entropy.fill(&mut nonce).map_err(|_| MigrationError::Entropy)?;
        let mut transcript = Sha384::new();
        transcript.update(keys::TRANSCRIPT_LABEL);
        Ok(Self {
            role,
            config,
            verifier,
            evidence,
            ephemeral: Some(ephemeral),
            nonce,
            peer_key: None,
            peer_key_bytes: [0; PUBLIC_KEY_LEN],
            transcript,
            hello_transcript: [0; HASH_LEN],
            mode: None,
            ring: [1, 1],
            peer: None,
            keys: None,
            tally: None,
            outbound: VecDeque::new(),
            commit: None,
            finish: None,
            error: None,
        })
    }

    /// The agreed ring's size, if the ring mode was agreed.
    fn ring_size(&self) -> Option<usize> {
        match self.mode {
            Some(Mode::Ring { pages }) => Some(usize::from(pages)),
            _ => None,
        }
    }

    fn own_hello(&self) -> Result<wire::Hello, MigrationError> {
        let ephemeral = self.ephemeral.as_ref().ok_or(MigrationError::Internal)?;
        Ok(wire::hello(self.role, self.config.ring_pages, self.nonce, *ephemeral.public()))
    }

    fn queue(&mut self, frame: Vec<u8>) -> Result<(), MigrationError> {
        self.push(Outgoing::Handshake(frame))
    }

    fn queue_record(&mut self, record_type: RecordType, payload: &[u8]) -> Result<(), MigrationError> {
        self.push(Outgoing::Record(record_type, owned(payload)?))
    }

    fn push(&mut self, item: Outgoing) -> Result<(), MigrationError> {
        self.outbound.try_reserve(1).map_err(|_| MigrationError::OutOfMemory)?;
        self.outbound.push_back(item);
        Ok(())
    }

    /// The next frame to hand to the channel: records are sealed here, STATE frames
    /// counted, the COMMIT's body taken. A failure to seal ends the session (and its
    /// ABORT, if it can be sealed, is what comes out).
    fn next_frame(&mut self) -> Option<Vec<u8>> {
        while let Some(item) = self.outbound.pop_front() {
            match self.encode(item) {
                Ok(frame) => return Some(frame),
                Err(e) => {
                    self.fail(e);
                }
            }
        }
        None
    }

    fn encode(&mut self, item: Outgoing) -> Result<Vec<u8>, MigrationError> {
        match item {
            Outgoing::Handshake(frame) => Ok(frame),
            Outgoing::Record(record_type, payload) => {
                let frame = self.seal(record_type, &payload)?;
                match record_type {
                    RecordType::State => {
                        self.tally.as_mut().ok_or(MigrationError::Internal)?.add(&frame, payload.len())?;
                    }
                    RecordType::Finish => self.finish = Some(owned(&frame)?),
                    _ => {}
                }
                Ok(frame)
            }
            Outgoing::Commit => {
                let body = self.tally.as_ref().ok_or(MigrationError::Internal)?.body();
                let frame = self.seal(RecordType::Commit, body.as_bytes())?;
                self.commit = Some(body);
                Ok(frame)
            }
            Outgoing::Abort(reason) if self.keys.is_some() => self.seal(RecordType::Abort, &reason.0.to_le_bytes()),
            Outgoing::Abort(reason) => owned(wire::abort(reason).as_bytes()),
        }
    }

    /// Reads the peer's HELLO and adds both HELLOs to the transcript, the source's first.
    fn accept_hello(&mut self, frame: &[u8], own_hello: &[u8]) -> Result<(), MigrationError> {
        let hello = wire::parse_hello(frame, self.role.peer()).map_err(|fault| match fault {
            HelloFault::Length | HelloFault::Reserved => MigrationError::MalformedHello,
            HelloFault::Role => MigrationError::WrongPeerRole,
            HelloFault::Modes => MigrationError::BadModes,
        })?;
        let own_key = self.ephemeral.as_ref().ok_or(MigrationError::Internal)?.public();
        self.peer_key = Some(keys::parse_peer_key(&hello.public_key, own_key)?);
        self.peer_key_bytes = hello.public_key;
        self.mode = Some(wire::negotiate(self.config.ring_pages, hello.ring_pages));
        let (first, second) = match self.role {
            Role::Source => (own_hello, frame),
            Role::Destination => (frame, own_hello),
        };
        keys::absorb(&mut self.transcript, first)?;
        keys::absorb(&mut self.transcript, second)?;
        self.hello_transcript = keys::snapshot(&self.transcript);
        Ok(())
    }

    /// This side's EVIDENCE frame, added to the transcript.
    fn own_evidence(&mut self) -> Result<Vec<u8>, MigrationError> {
        let public = *self.ephemeral.as_ref().ok_or(MigrationError::Internal)?.public();
        let data = keys::report_data(self.role, &self.hello_transcript, &public);
        let evidence = self.evidence.evidence(&data).map_err(MigrationError::OwnEvidence)?;
        if evidence.is_empty() || evidence.len() > MAX_EVIDENCE_LEN {
            return Err(MigrationError::OwnEvidence(EvidenceError));
        }
        let mut frame = Vec::new();
        frame.try_reserve(EVIDENCE_HEADER_LEN + evidence.len()).map_err(|_| MigrationError::OutOfMemory)?;
        frame.extend_from_slice(&[wire::PROTOCOL_VERSION, kind::EVIDENCE]);
        frame.extend_from_slice(&evidence);
        keys::absorb(&mut self.transcript, &frame)?;
        Ok(frame)
    }

    /// Verifies the peer's EVIDENCE and compares who it is with this side: nothing but
    /// the handshake has been sent when this runs, and nothing else is sent if it fails.
    fn check_peer_evidence(&mut self, frame: &[u8]) -> Result<(), MigrationError> {
        let evidence = frame.get(EVIDENCE_HEADER_LEN..).ok_or(MigrationError::MalformedEvidence)?;
        if evidence.is_empty() || evidence.len() > MAX_EVIDENCE_LEN {
            return Err(MigrationError::MalformedEvidence);
        }
        let expected = keys::report_data(self.role.peer(), &self.hello_transcript, &self.peer_key_bytes);
        let peer = self.verifier.verify(evidence, &expected).map_err(|e| match e {
            VerifyError::OutOfMemory => MigrationError::OutOfMemory,
            e => MigrationError::PeerEvidence(e),
        })?;
        if peer.measurement != self.config.identity.measurement {
            return Err(MigrationError::PeerMeasurement);
        }
        if peer.policy != self.config.identity.policy {
            return Err(MigrationError::PeerPolicy);
        }
        self.peer = Some(peer);
        keys::absorb(&mut self.transcript, frame)
    }

    /// Derives the session keys from the full transcript and drops the ephemeral key.
    fn derive_keys(&mut self) -> Result<(), MigrationError> {
        let transcript = keys::snapshot(&self.transcript);
        let ephemeral = self.ephemeral.take().ok_or(MigrationError::Internal)?;
        let peer = self.peer_key.as_ref().ok_or(MigrationError::Internal)?;
        self.keys = Some(keys::derive(self.role, &ephemeral, peer, &transcript, self.config.aes)?);
        self.tally = Some(Tally::new(&transcript));
        Ok(())
    }

    fn seal(&mut self, record_type: RecordType, payload: &[u8]) -> Result<Vec<u8>, MigrationError> {
        self.keys.as_mut().ok_or(MigrationError::Internal)?.send.seal(record_type, payload)
    }

    fn open(&mut self, frame: &[u8]) -> Result<(RecordType, Vec<u8>), MigrationError> {
        self.keys.as_mut().ok_or(MigrationError::Internal)?.receive.open(frame)
    }

    /// Ends the session with `error`: drops the records still to be sent and queues an
    /// ABORT for the peer, unless the peer aborted itself. Handshake frames still queued
    /// go first, so the ABORT comes in the form the peer can read: a record once this side
    /// has keys (its peer has them once it has read this side's last handshake frame),
    /// in clear before. A queue with no room for the ABORT (a full heap) goes without it:
    /// the peer then sees the channel close, an end as clean.
    fn fail(&mut self, error: MigrationError) -> MigrationError {
        if self.error.is_some() {
            return error;
        }
        self.error = Some(error);
        self.outbound.retain(|item| matches!(item, Outgoing::Handshake(_)));
        self.ephemeral = None;
        if matches!(error, MigrationError::PeerAborted { .. }) {
            return error;
        }
        if self.outbound.try_reserve(1).is_ok() {
            self.outbound.push_back(Outgoing::Abort(error.abort_reason()));
        }
        error
    }
}

/// A copy of `bytes` on the heap; a full heap is an error, not an abort.
fn owned(bytes: &[u8]) -> Result<Vec<u8>, MigrationError> {
    let mut copy = Vec::new();
    copy.try_reserve(bytes.len()).map_err(|_| MigrationError::OutOfMemory)?;
    copy.extend_from_slice(bytes);
    Ok(copy)
}

/// The first two bytes of every frame: the version must be this protocol's.
fn frame_kind(frame: &[u8]) -> Result<u8, MigrationError> {
    match frame {
        [PROTOCOL_VERSION, kind, ..] => Ok(*kind),
        [version, _, ..] => Err(MigrationError::UnsupportedVersion { version: *version }),
        _ => Err(MigrationError::UnexpectedFrame { kind: 0 }),
    }
}

/// A plaintext ABORT's reason.
fn parse_abort(frame: &[u8]) -> MigrationError {
    match wire::Abort::read_from_bytes(frame) {
        Ok(abort) => MigrationError::PeerAborted { reason: AbortReason(abort.reason.get()) },
        Err(_) => MigrationError::MalformedAbort,
    }
}

/// An ABORT record's reason.
fn parse_abort_record(payload: &[u8]) -> MigrationError {
    match <[u8; 2]>::try_from(payload) {
        Ok(bytes) => MigrationError::PeerAborted { reason: AbortReason(u16::from_le_bytes(bytes)) },
        Err(_) => MigrationError::MalformedRecord,
    }
}

/// The source of a migration.
pub struct Source<V, P> {
    core: Core<V, P>,
    phase: SourcePhase,
    own_hello: Vec<u8>,
    /// The channel failed after the commit: no FINISH_ACK can come through it.
    channel_lost: bool,
    /// The destination gave up after the commit (its authentic ABORT): no FINISH is taken
    /// there any more.
    peer_gave_up: Option<AbortReason>,
}

impl<V, P> core::fmt::Debug for Source<V, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Source").field("phase", &self.phase).field("error", &self.core.error).finish_non_exhaustive()
    }
}

impl<V: PeerVerifier, P: EvidenceProvider> Source<V, P> {
    /// Starts a migration: makes an ephemeral key and queues the HELLO.
    pub fn start(config: Config, verifier: V, evidence: P, entropy: &mut dyn Entropy) -> Result<Self, MigrationError> {
        let mut core = Core::new(Role::Source, config, verifier, evidence, entropy)?;
        let own_hello = owned(core.own_hello()?.as_bytes())?;
        core.queue(owned(&own_hello)?)?;
        Ok(Self { core, phase: SourcePhase::AwaitHello, own_hello, channel_lost: false, peer_gave_up: None })
    }

    /// The phase.
    pub fn phase(&self) -> SourcePhase {
        self.phase
    }

    /// What to do with the guest.
    pub fn outcome(&self) -> SourceOutcome {
        match (self.phase, self.core.error) {
            (SourcePhase::Committed | SourcePhase::Finished, _) => SourceOutcome::Committed,
            (_, Some(error)) => SourceOutcome::KeepRunning(error),
            _ => SourceOutcome::InProgress,
        }
    }

    /// The agreed channel mode, once both HELLOs are known.
    pub fn mode(&self) -> Option<Mode> {
        self.core.mode
    }

    /// The destination's verified identity.
    pub fn peer(&self) -> Option<PeerIdentity> {
        self.core.peer
    }

    /// Whether `send_state` or `commit` may be called now without queueing behind frames
    /// not yet handed to the channel.
    pub fn can_send_state(&self) -> bool {
        self.phase == SourcePhase::Transfer && self.core.outbound.is_empty()
    }

    /// Queues one chunk of state (1..=[`MAX_STATE_CHUNK`] bytes) as a STATE record.
    pub fn send_state(&mut self, chunk: &[u8]) -> Result<(), MigrationError> {
        if self.phase != SourcePhase::Transfer {
            return Err(MigrationError::WrongPhase);
        }
        if chunk.is_empty() || chunk.len() > MAX_STATE_CHUNK {
            return Err(MigrationError::StateChunkLength { len: chunk.len() });
        }
        self.core.queue_record(RecordType::State, chunk).map_err(|e| self.fail(e))
    }

    /// Queues the COMMIT: the count, bytes and hash of every STATE record sent before it.
    pub fn commit(&mut self) -> Result<(), MigrationError> {
        if self.phase != SourcePhase::Transfer {
            return Err(MigrationError::WrongPhase);
        }
        self.core.push(Outgoing::Commit).map_err(|e| self.fail(e))?;
        self.phase = SourcePhase::CommitSent;
        Ok(())
    }

    /// Whether the destination confirmed the FINISH (FINISH_ACK): it runs the guest.
    pub fn finish_acknowledged(&self) -> bool {
        self.phase == SourcePhase::Finished
    }

    /// Offers the FINISH again, the same sealed record (the destination expects that
    /// sequence number and takes the first copy that arrives whole), when no FINISH_ACK
    /// came: the host may have lost it. Only while committed, and only once the last copy
    /// was handed to the channel (`false` otherwise: nothing queued).
    pub fn offer_finish_again(&mut self) -> Result<bool, MigrationError> {
        if self.phase != SourcePhase::Committed {
            return Err(MigrationError::WrongPhase);
        }
        if let Some(reason) = self.peer_gave_up {
            return Err(MigrationError::PeerAborted { reason });
        }
        if !self.core.outbound.is_empty() {
            return Ok(false);
        }
        let copy = owned(self.core.finish.as_deref().ok_or(MigrationError::Internal)?)?;
        self.core.push(Outgoing::Handshake(copy))?;
        Ok(true)
    }

    /// Gives up: the source keeps running. Refused once committed.
    pub fn abort(&mut self, reason: AbortReason) -> Result<(), MigrationError> {
        match self.phase {
            SourcePhase::Committed | SourcePhase::Finished => Err(MigrationError::WrongPhase),
            SourcePhase::Failed => Ok(()),
            _ => {
                self.fail(MigrationError::Aborted { reason });
                Ok(())
            }
        }
    }

    fn fail(&mut self, error: MigrationError) -> MigrationError {
        self.phase = SourcePhase::Failed;
        self.core.fail(error)
    }

    /// Takes a frame from the destination.
    pub fn handle_frame(&mut self, frame: &[u8]) -> Result<(), MigrationError> {
        match self.phase {
            // Committed for good: a frame that is not the FINISH_ACK is reported and
            // changes nothing (the FINISH is offered again).
            SourcePhase::Committed => return self.finish_ack(frame),
            SourcePhase::Finished => return Err(MigrationError::AfterEnd),
            SourcePhase::Failed => return Err(self.core.error.unwrap_or(MigrationError::Internal)),
            _ => {}
        }
        self.step(frame).map_err(|e| self.fail(e))
    }

    fn finish_ack(&mut self, frame: &[u8]) -> Result<(), MigrationError> {
        let kind = frame_kind(frame)?;
        if kind != kind::RECORD {
            return Err(MigrationError::UnexpectedFrame { kind });
        }
        match self.core.open(frame)? {
            (RecordType::FinishAck, payload) if payload.is_empty() => {
                self.phase = SourcePhase::Finished;
                Ok(())
            }
            (RecordType::FinishAck, _) => Err(MigrationError::MalformedRecord),
            (RecordType::Abort, payload) => {
                // The destination failed after its ACK: the guest is lost (never run
                // twice); offering the FINISH again is pointless.
                let error = parse_abort_record(&payload);
                if let MigrationError::PeerAborted { reason } = error {
                    self.peer_gave_up = Some(reason);
                }
                Err(error)
            }
            (record_type, _) => Err(MigrationError::UnexpectedRecord { record_type }),
        }
    }

    fn step(&mut self, frame: &[u8]) -> Result<(), MigrationError> {
        let kind = frame_kind(frame)?;
        match (self.phase, kind) {
            // Until READY the destination may not have keys: its refusal is in clear.
            (SourcePhase::AwaitHello | SourcePhase::AwaitEvidence | SourcePhase::AwaitReady, kind::ABORT) => {
                Err(parse_abort(frame))
            }
            (SourcePhase::AwaitHello, kind::HELLO) => {
                let own_hello = core::mem::take(&mut self.own_hello);
                self.core.accept_hello(frame, &own_hello)?;
                self.phase = SourcePhase::AwaitEvidence;
                Ok(())
            }
            (SourcePhase::AwaitEvidence, kind::EVIDENCE) => {
                self.core.check_peer_evidence(frame)?;
                let evidence = self.core.own_evidence()?;
                self.core.derive_keys()?;
                self.core.queue(evidence)?;
                self.phase = SourcePhase::AwaitReady;
                Ok(())
            }
            (SourcePhase::AwaitReady | SourcePhase::Transfer | SourcePhase::CommitSent, kind::RECORD) => {
                let (record_type, payload) = self.core.open(frame)?;
                self.record(record_type, &payload)
            }
            (_, kind) => Err(MigrationError::UnexpectedFrame { kind }),
        }
    }

    fn record(&mut self, record_type: RecordType, payload: &[u8]) -> Result<(), MigrationError> {
        match (self.phase, record_type) {
            (_, RecordType::Abort) => Err(parse_abort_record(payload)),
            (SourcePhase::AwaitReady, RecordType::Ready) if payload.is_empty() => {
                // The ring carries the source's records from the first one after READY:
                // the destination read the last fragment before it (its EVIDENCE's)
                // before it sent READY.
                if let Some(pages) = self.core.ring_size() {
                    self.core.ring = [pages, 1];
                }
                self.phase = SourcePhase::Transfer;
                Ok(())
            }
            (SourcePhase::CommitSent, RecordType::CommitAck) => {
                let ack = CommitBody::read_from_bytes(payload).map_err(|_| MigrationError::MalformedRecord)?;
                if Some(ack) != self.core.commit {
                    return Err(MigrationError::CommitMismatch);
                }
                // The point of no return: from here the guest must not run on this side.
                self.core.queue_record(RecordType::Finish, &[])?;
                // The FINISH, and any offer of it again, go on the proposal's page: a
                // FINISH the host drops would leave a ring's turns out of step.
                self.core.ring = [1, 1];
                self.phase = SourcePhase::Committed;
                Ok(())
            }
            (SourcePhase::AwaitReady, RecordType::Ready) => Err(MigrationError::MalformedRecord),
            (_, record_type) => Err(MigrationError::UnexpectedRecord { record_type }),
        }
    }
}

/// The destination of a migration.
pub struct Destination<V, P> {
    core: Core<V, P>,
    phase: DestinationPhase,
    received: VecDeque<Vec<u8>>,
    /// The COMMIT_ACK waits for the driver's approval.
    hold_ack: bool,
    /// Records passed over while waiting for the FINISH.
    ignored: u32,
}

impl<V, P> core::fmt::Debug for Destination<V, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Destination")
            .field("phase", &self.phase)
            .field("error", &self.core.error)
            .finish_non_exhaustive()
    }
}

impl<V: PeerVerifier, P: EvidenceProvider> Destination<V, P> {
    /// Prepares to receive a migration: makes an ephemeral key and waits for the
    /// source's HELLO.
    pub fn start(config: Config, verifier: V, evidence: P, entropy: &mut dyn Entropy) -> Result<Self, MigrationError> {
        let core = Core::new(Role::Destination, config, verifier, evidence, entropy)?;
        Ok(Self { core, phase: DestinationPhase::AwaitHello, received: VecDeque::new(), hold_ack: false, ignored: 0 })
    }

    /// From now on a verified COMMIT is not acknowledged at once: the session stops in
    /// [`DestinationPhase::CommitVerified`] until [`approve_commit`](Self::approve_commit)
    /// (or [`abort`](Self::abort)). A destination that must check the whole state (or
    /// start what it carries) before it can run the guest holds the ACK: once the source
    /// has it, the source never runs the guest again.
    pub fn hold_commit_ack(&mut self) {
        self.hold_ack = true;
    }

    /// Sends the held COMMIT_ACK: the destination can run the guest.
    pub fn approve_commit(&mut self) -> Result<(), MigrationError> {
        if self.phase != DestinationPhase::CommitVerified {
            return Err(MigrationError::WrongPhase);
        }
        let commit = self.core.commit.ok_or(MigrationError::Internal)?;
        self.core.queue_record(RecordType::CommitAck, commit.as_bytes()).map_err(|e| self.fail(e))?;
        self.await_finish();
        Ok(())
    }

    /// The COMMIT_ACK is queued: only the FINISH may follow, on the proposal's page (the
    /// source sends it there once it has the ACK; until the ACK left, an ABORT of the
    /// source's still comes over the ring, where this side still reads).
    fn await_finish(&mut self) {
        self.core.ring = [1, 1];
        self.phase = DestinationPhase::AwaitFinish;
    }

    /// The phase.
    pub fn phase(&self) -> DestinationPhase {
        self.phase
    }

    /// What may be done with the received state.
    pub fn outcome(&self) -> DestinationOutcome {
        match (self.phase, self.core.error) {
            (DestinationPhase::Completed, _) => DestinationOutcome::Completed,
            (_, Some(error)) => DestinationOutcome::Failed(error),
            _ => DestinationOutcome::InProgress,
        }
    }

    /// The agreed channel mode, once both HELLOs are known.
    pub fn mode(&self) -> Option<Mode> {
        self.core.mode
    }

    /// The source's verified identity.
    pub fn peer(&self) -> Option<PeerIdentity> {
        self.core.peer
    }

    /// The next chunk of state received, in order. Authentic, but only final once
    /// [`outcome`](Self::outcome) is `Completed`.
    pub fn take_state(&mut self) -> Option<Vec<u8>> {
        self.received.pop_front()
    }

    /// Gives up. Refused once completed.
    pub fn abort(&mut self, reason: AbortReason) -> Result<(), MigrationError> {
        match self.phase {
            DestinationPhase::Completed => Err(MigrationError::WrongPhase),
            DestinationPhase::Failed => Ok(()),
            _ => {
                self.fail(MigrationError::Aborted { reason });
                Ok(())
            }
        }
    }

    fn fail(&mut self, error: MigrationError) -> MigrationError {
        self.phase = DestinationPhase::Failed;
        self.received.clear();
        self.core.fail(error)
    }

    /// Takes a frame from the source.
    pub fn handle_frame(&mut self, frame: &[u8]) -> Result<(), MigrationError> {
        match self.phase {
            DestinationPhase::Completed => return Err(MigrationError::AfterEnd),
            DestinationPhase::Failed => return Err(self.core.error.unwrap_or(MigrationError::Internal)),
            _ => {}
        }
        match self.step(frame) {
            Ok(()) => Ok(()),
            // Waiting for the FINISH: the source has stopped for good and offers it again,
            // so a record that does not open as the next one (a flipped or replayed one)
            // is reported and passed over; only an authentic FINISH runs the guest.
            Err(
                e @ (MigrationError::Authentication { .. }
                | MigrationError::UnexpectedSequence { .. }
                | MigrationError::MalformedRecord
                | MigrationError::UnexpectedFrame { .. }
                | MigrationError::UnsupportedVersion { .. }),
            ) if self.phase == DestinationPhase::AwaitFinish && self.ignored < MAX_IGNORED_AFTER_ACK => {
                self.ignored += 1;
                Err(e)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn step(&mut self, frame: &[u8]) -> Result<(), MigrationError> {
        let kind = frame_kind(frame)?;
        match (self.phase, kind) {
            (DestinationPhase::AwaitHello | DestinationPhase::AwaitEvidence, kind::ABORT) => Err(parse_abort(frame)),
            (DestinationPhase::AwaitHello, kind::HELLO) => {
                let own_hello = owned(self.core.own_hello()?.as_bytes())?;
                self.core.accept_hello(frame, &own_hello)?;
                let evidence = self.core.own_evidence()?;
                self.core.queue(own_hello)?;
                self.core.queue(evidence)?;
                self.phase = DestinationPhase::AwaitEvidence;
                Ok(())
            }
            (DestinationPhase::AwaitEvidence, kind::EVIDENCE) => {
                self.core.check_peer_evidence(frame)?;
                self.core.derive_keys()?;
                self.core.queue_record(RecordType::Ready, &[])?;
                // Every frame of the source's from here comes over the ring (its own
                // widens on READY). The destination's few frames stay on the page.
                if let Some(pages) = self.core.ring_size() {
                    self.core.ring = [1, pages];
                }
                self.phase = DestinationPhase::Transfer;
                Ok(())
            }
            (
                DestinationPhase::Transfer | DestinationPhase::CommitVerified | DestinationPhase::AwaitFinish,
                kind::RECORD,
            ) => {
                let (record_type, payload) = self.core.open(frame)?;
                self.record(record_type, payload, frame)
            }
            (_, kind) => Err(MigrationError::UnexpectedFrame { kind }),
        }
    }

    fn record(&mut self, record_type: RecordType, payload: Vec<u8>, frame: &[u8]) -> Result<(), MigrationError> {
        match (self.phase, record_type) {
            (_, RecordType::Abort) => Err(parse_abort_record(&payload)),
            (DestinationPhase::Transfer, RecordType::State) => {
                if payload.is_empty() || payload.len() > MAX_STATE_CHUNK {
                    return Err(MigrationError::MalformedRecord);
                }
                self.core.tally.as_mut().ok_or(MigrationError::Internal)?.add(frame, payload.len())?;
                self.received.try_reserve(1).map_err(|_| MigrationError::OutOfMemory)?;
                self.received.push_back(payload);
                Ok(())
            }
            (DestinationPhase::Transfer, RecordType::Commit) => {
                let commit = CommitBody::read_from_bytes(&payload).map_err(|_| MigrationError::MalformedRecord)?;
                if commit != self.core.tally.as_ref().ok_or(MigrationError::Internal)?.body() {
                    return Err(MigrationError::CommitMismatch);
                }
                self.core.commit = Some(commit);
                if self.hold_ack {
                    self.phase = DestinationPhase::CommitVerified;
                    return Ok(());
                }
                self.core.queue_record(RecordType::CommitAck, commit.as_bytes())?;
                self.await_finish();
                Ok(())
            }
            (DestinationPhase::AwaitFinish, RecordType::Finish) if payload.is_empty() => {
                self.core.queue_record(RecordType::FinishAck, &[])?;
                self.phase = DestinationPhase::Completed;
                Ok(())
            }
            (DestinationPhase::AwaitFinish, RecordType::Finish) => Err(MigrationError::MalformedRecord),
            (DestinationPhase::AwaitFinish | DestinationPhase::CommitVerified, RecordType::State) => {
                Err(MigrationError::RecordAfterCommit)
            }
            (_, record_type) => Err(MigrationError::UnexpectedRecord { record_type }),
        }
    }
}

/// One side of a session, as [`pump`] drives it.
pub trait Endpoint {
    /// Takes a frame from the peer.
    fn handle_frame(&mut self, frame: &[u8]) -> Result<(), MigrationError>;
    /// The next frame to send.
    fn next_frame(&mut self) -> Option<Vec<u8>>;
    /// The channel failed: ends the session unless its outcome is already decided (or,
    /// after the commit, the receiver dropped a bad fragment and goes on: reported only).
    fn channel_failed(&mut self, error: ChannelError) -> Result<(), MigrationError>;
    /// Whether the side still reads frames (not failed, not finished).
    fn wants_frames(&self) -> bool;
    /// Whether the side is finished and has handed out every frame.
    fn is_done(&self) -> bool;
    /// The ring pages `[outbound, inbound]` the channel is to use now (1: the page mode).
    fn ring_pages(&self) -> [usize; 2];
    /// Whether the side waits for the one frame that ends a committed migration, and
    /// passes over what breaks the rules meanwhile
    /// ([`MigrationChannel::pass_over_bad_fragments`]).
    fn past_commit(&self) -> bool;
}

fn channel_error(error: ChannelError) -> MigrationError {
    match error {
        ChannelError::Closed => MigrationError::EarlyEnd,
        other => MigrationError::Channel(other),
    }
}

impl<V: PeerVerifier, P: EvidenceProvider> Endpoint for Source<V, P> {
    fn handle_frame(&mut self, frame: &[u8]) -> Result<(), MigrationError> {
        Source::handle_frame(self, frame)
    }

    fn next_frame(&mut self) -> Option<Vec<u8>> {
        self.core.next_frame()
    }

    fn channel_failed(&mut self, error: ChannelError) -> Result<(), MigrationError> {
        match self.phase {
            // The receiver passes over bad fragments from here: only another error ends
            // what the channel can bring (the FINISH is still offered, unacknowledged).
            SourcePhase::Committed => {
                self.channel_lost |= !matches!(error, ChannelError::BadFragment(_));
                Ok(())
            }
            SourcePhase::Finished | SourcePhase::Failed => Ok(()),
            _ => Err(self.fail(channel_error(error))),
        }
    }

    fn wants_frames(&self) -> bool {
        match self.phase {
            SourcePhase::Committed => !self.channel_lost && self.peer_gave_up.is_none(),
            SourcePhase::Finished | SourcePhase::Failed => false,
            _ => true,
        }
    }

    fn is_done(&self) -> bool {
        !self.wants_frames() && self.core.outbound.is_empty()
    }

    fn ring_pages(&self) -> [usize; 2] {
        self.core.ring
    }

    fn past_commit(&self) -> bool {
        self.phase == SourcePhase::Committed
    }
}

impl<V: PeerVerifier, P: EvidenceProvider> Endpoint for Destination<V, P> {
    fn handle_frame(&mut self, frame: &[u8]) -> Result<(), MigrationError> {
        Destination::handle_frame(self, frame)
    }

    fn next_frame(&mut self) -> Option<Vec<u8>> {
        self.core.next_frame()
    }

    fn channel_failed(&mut self, error: ChannelError) -> Result<(), MigrationError> {
        match self.phase {
            DestinationPhase::Completed | DestinationPhase::Failed => Ok(()),
            // Waiting for the FINISH: a bad fragment was dropped by the receiver, which
            // goes on; reported, and counted with the records passed over.
            DestinationPhase::AwaitFinish
                if matches!(error, ChannelError::BadFragment(_)) && self.ignored < MAX_IGNORED_AFTER_ACK =>
            {
                self.ignored += 1;
                Err(MigrationError::Channel(error))
            }
            _ => Err(self.fail(channel_error(error))),
        }
    }

    fn wants_frames(&self) -> bool {
        !matches!(self.phase, DestinationPhase::Completed | DestinationPhase::Failed)
    }

    fn is_done(&self) -> bool {
        !self.wants_frames() && self.core.outbound.is_empty()
    }

    fn ring_pages(&self) -> [usize; 2] {
        self.core.ring
    }

    fn past_commit(&self) -> bool {
        self.phase == DestinationPhase::AwaitFinish
    }
}

/// Moves frames between `endpoint` and `channel` as far as the channel allows now: hands
/// out queued frames, takes in at most one received frame, and closes the channel's
/// outbound direction once the side is done. Ok(true) if something moved; the error
/// that ended the session, if it ended in this call, or that the side passed over (after
/// the commit: the session goes on, see the module's docs).
pub fn pump<E: Endpoint + ?Sized, C: MigrationChannel + ?Sized>(
    endpoint: &mut E,
    channel: &mut C,
) -> Result<bool, MigrationError> {
    let mut progress = false;
    // The channel follows the side's phase before anything moves: the ring widens after
    // READY, and goes back to the page once the COMMIT_ACK is queued or has arrived (the
    // phase changes in `handle_frame` and in `Destination::approve_commit`).
    let [outbound, inbound] = endpoint.ring_pages();
    if let Err(e) = channel.use_ring(outbound, inbound) {
        endpoint.channel_failed(e)?;
    }
    loop {
        match channel.poll_send() {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                endpoint.channel_failed(e)?;
                break;
            }
        }
        let Some(frame) = endpoint.next_frame() else { break };
        progress = true;
        if let Err(e) = channel.send(&frame) {
            endpoint.channel_failed(e)?;
            break;
        }
    }
    if endpoint.wants_frames() {
        if endpoint.past_commit() {
            channel.pass_over_bad_fragments();
        }
        match channel.receive() {
            Ok(Some(frame)) => {
                progress = true;
                endpoint.handle_frame(&frame)?;
            }
            Ok(None) => {}
            Err(e) => {
                progress = true;
                endpoint.channel_failed(e)?;
            }
        }
    }
    if endpoint.is_done() {
        // A failed close only means the host stopped the page first.
        let _ = channel.close();
    }
    Ok(progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A STATE frame as `RecordProtection::seal` lays it out: header, ciphertext, tag.
    fn frame(sequence: u64, body: u8, tag: u8) -> Vec<u8> {
        let header = wire::RecordHeader {
            version: wire::PROTOCOL_VERSION,
            kind: kind::RECORD,
            record_type: RecordType::State.to_byte(),
            sequence: U64::new(sequence),
        };
        let mut f = header.as_bytes().to_vec();
        f.extend_from_slice(&[body; 100]);
        f.extend_from_slice(&[tag; wire::TAG_LEN]);
        f
    }

    fn tally(frames: &[Vec<u8>]) -> CommitBody {
        tally_after(&[7; HASH_LEN], frames)
    }

    fn tally_after(transcript: &[u8; HASH_LEN], frames: &[Vec<u8>]) -> CommitBody {
        let mut t = Tally::new(transcript);
        for f in frames {
            t.add(f, f.len() - wire::RECORD_HEADER_LEN - wire::TAG_LEN).unwrap();
        }
        t.body()
    }

    /// The COMMIT's tally binds which frames came, in which order, by their headers and
    /// tags (a frame's tag stands for its ciphertext: the receiver adds only frames whose
    /// tag verified), and counts the plaintext bytes.
    #[test]
    fn the_state_tally_binds_each_frame_by_its_header_and_tag_in_order() {
        let (a, b) = (frame(3, 1, 0xA), frame(4, 2, 0xB));
        let both = tally(&[a.clone(), b.clone()]);
        assert_eq!(both, tally(&[a.clone(), b.clone()]), "the same frames, the same tally");
        assert_eq!((both.state_records.get(), both.state_bytes.get()), (2, 200));
        assert_ne!(both.state_hash, tally(&[b.clone(), a.clone()]).state_hash, "order");
        assert_ne!(both.state_hash, tally(core::slice::from_ref(&a)).state_hash, "a frame missing");
        assert_ne!(both.state_hash, tally(&[a.clone(), frame(4, 2, 0xC)]).state_hash, "another tag");
        assert_ne!(both.state_hash, tally(&[a.clone(), frame(5, 2, 0xB)]).state_hash, "another header");
        assert_ne!(both.state_hash, tally_after(&[8; HASH_LEN], &[a.clone(), b.clone()]).state_hash, "another session");
        let mut short = b.clone();
        short.truncate(wire::RECORD_HEADER_LEN + wire::TAG_LEN - 1);
        assert_eq!(Tally::new(&[7; HASH_LEN]).add(&short, 0), Err(MigrationError::Internal), "no room for a tag");
    }
}
