//! The session's frames, byte for byte. All integers little-endian.
//!
//! ```text
//! every frame      0 protocol version u8 (= PROTOCOL_VERSION)   1 kind u8
//!
//! HELLO (kind 1), exactly 137 bytes
//!   2 role u8 (1 source, 2 destination)      3 reserved u8 = 0
//!   4 modes u16: bit 0 PAGE (must be set), bit 1 RING, other bits zero
//!   6 ring pages u16: 0 without RING, else MIN_RING_PAGES..=MAX_RING_PAGES
//!   8 nonce [32]                             40 ephemeral P-384 key, SEC1 uncompressed [97]
//!
//! EVIDENCE (kind 2): 2.. the evidence, 1..=MAX_EVIDENCE_LEN opaque bytes
//!
//! ABORT (kind 3), exactly 4 bytes: 2 reason u16 (handshake only, unauthenticated)
//!
//! RECORD (kind 4): 2 record type u8   3 sequence u64   11 AES-256-GCM ciphertext, 16-byte tag
//!   associated data: bytes 0..11 (version, kind, record type, sequence)
//! ```

use super::{AbortReason, Mode, Role};
use zerocopy::little_endian::{U16, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The protocol version every frame starts with.
pub const PROTOCOL_VERSION: u8 = 1;

/// The frame kinds.
pub(crate) mod kind {
    pub const HELLO: u8 = 1;
    pub const EVIDENCE: u8 = 2;
    pub const ABORT: u8 = 3;
    pub const RECORD: u8 = 4;
}

/// Hello's mode bits.
pub(crate) mod modes {
    /// The proposal's page mode (one migration page per direction); every peer offers it.
    pub const PAGE: u16 = 1 << 0;
    /// A ring of migration pages.
    pub const RING: u16 = 1 << 1;
    pub const KNOWN: u16 = PAGE | RING;
}

/// The fewest pages a ring offer may name.
pub const MIN_RING_PAGES: u16 = 2;
/// The most pages a ring offer may name.
pub const MAX_RING_PAGES: u16 = 256;
/// The most evidence bytes (report and certificate chain) a peer may send.
pub const MAX_EVIDENCE_LEN: usize = 32 * 1024;
/// The length of an uncompressed SEC1 P-384 point.
pub const PUBLIC_KEY_LEN: usize = 97;
/// The length of Hello's nonce.
pub const NONCE_LEN: usize = 32;
/// The AEAD tag's length.
pub const TAG_LEN: usize = 16;
/// The evidence frame's header (version, kind).
pub const EVIDENCE_HEADER_LEN: usize = 2;

/// HELLO.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct Hello {
    pub version: u8,
    pub kind: u8,
    pub role: u8,
    pub reserved: u8,
    pub modes: U16,
    pub ring_pages: U16,
    pub nonce: [u8; NONCE_LEN],
    pub public_key: [u8; PUBLIC_KEY_LEN],
}
abi::assert_size!(Hello, 137);

/// ABORT (plaintext).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct Abort {
    pub version: u8,
    pub kind: u8,
    pub reason: U16,
}
abi::assert_size!(Abort, 4);

/// A record's header: also its associated data.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct RecordHeader {
    pub version: u8,
    pub kind: u8,
    pub record_type: u8,
    pub sequence: U64,
}
abi::assert_size!(RecordHeader, 11);
pub const RECORD_HEADER_LEN: usize = core::mem::size_of::<RecordHeader>();

/// The plaintext of COMMIT and COMMIT_ACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct CommitBody {
    /// STATE records sent before the COMMIT.
    pub state_records: U64,
    /// Their plaintext bytes.
    pub state_bytes: U64,
    /// The running hash of the STATE frames (docs/migration.md).
    pub state_hash: [u8; 48],
}
abi::assert_size!(CommitBody, 64);

/// The record types. The type travels in clear (it is authenticated as associated data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    /// Destination to source, first record: the destination accepted the source's evidence
    /// and holds the same keys. Empty.
    Ready,
    /// Source to destination: a chunk of state.
    State,
    /// Source to destination: the end of the state, with its count and hash.
    Commit,
    /// Destination to source: the COMMIT matched what arrived; the destination is ready
    /// to take over. Echoes the COMMIT's body.
    CommitAck,
    /// Source to destination: the source has stopped for good; the destination runs.
    /// Empty.
    Finish,
    /// Either way: the sender gives up (a reason u16).
    Abort,
    /// Destination to source: the FINISH arrived, the guest runs here; the source may
    /// stop offering it again. Empty.
    FinishAck,
}

impl RecordType {
    pub(crate) const fn to_byte(self) -> u8 {
        match self {
            Self::Ready => 1,
            Self::State => 2,
            Self::Commit => 3,
            Self::CommitAck => 4,
            Self::Finish => 5,
            Self::Abort => 6,
            Self::FinishAck => 7,
        }
    }

    pub(crate) const fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Ready,
            2 => Self::State,
            3 => Self::Commit,
            4 => Self::CommitAck,
            5 => Self::Finish,
            6 => Self::Abort,
            7 => Self::FinishAck,
            _ => return None,
        })
    }
}

/// What a frame is, from its first bytes (what the host can see of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A HELLO.
    Hello,
    /// An EVIDENCE.
    Evidence,
    /// A plaintext ABORT.
    Abort,
    /// A record of this type.
    Record(RecordType),
}

impl FrameKind {
    /// The kind of the frame that starts with `prefix` (at least 3 bytes for a record),
    /// `None` if it is none of this protocol's.
    pub fn of(prefix: &[u8]) -> Option<Self> {
        let (&version, rest) = prefix.split_first()?;
        let (&kind, rest) = rest.split_first()?;
        if version != PROTOCOL_VERSION {
            return None;
        }
        Some(match kind {
            kind::HELLO => Self::Hello,
            kind::EVIDENCE => Self::Evidence,
            kind::ABORT => Self::Abort,
            kind::RECORD => Self::Record(RecordType::from_byte(*rest.first()?)?),
            _ => return None,
        })
    }
}

/// Builds a HELLO.
pub(crate) fn hello(
    role: Role,
    ring_pages: Option<u16>,
    nonce: [u8; NONCE_LEN],
    public_key: [u8; PUBLIC_KEY_LEN],
) -> Hello {
    let (mode_bits, pages) = match ring_pages {
        Some(pages) => (modes::PAGE | modes::RING, pages),
        None => (modes::PAGE, 0),
    };
    Hello {
        version: PROTOCOL_VERSION,
        kind: kind::HELLO,
        role: role.to_byte(),
        reserved: 0,
        modes: U16::new(mode_bits),
        ring_pages: U16::new(pages),
        nonce,
        public_key,
    }
}

/// A peer's HELLO, checked except for its key (the caller parses the point).
pub(crate) struct PeerHello {
    pub ring_pages: Option<u16>,
    pub public_key: [u8; PUBLIC_KEY_LEN],
}

/// Why a HELLO was refused (mapped to the session's errors by the caller).
pub(crate) enum HelloFault {
    Length,
    Role,
    Reserved,
    Modes,
}

pub(crate) fn parse_hello(frame: &[u8], expected_role: Role) -> Result<PeerHello, HelloFault> {
    let hello = Hello::read_from_bytes(frame).map_err(|_| HelloFault::Length)?;
    if hello.role != expected_role.to_byte() {
        return Err(HelloFault::Role);
    }
    if hello.reserved != 0 {
        return Err(HelloFault::Reserved);
    }
    let mode_bits = hello.modes.get();
    let pages = hello.ring_pages.get();
    if mode_bits & modes::PAGE == 0 || mode_bits & !modes::KNOWN != 0 {
        return Err(HelloFault::Modes);
    }
    let ring_pages = if mode_bits & modes::RING != 0 {
        if !(MIN_RING_PAGES..=MAX_RING_PAGES).contains(&pages) {
            return Err(HelloFault::Modes);
        }
        Some(pages)
    } else {
        if pages != 0 {
            return Err(HelloFault::Modes);
        }
        None
    };
    Ok(PeerHello { ring_pages, public_key: hello.public_key })
}

/// The mode both offers allow: the ring if both offer one (of the smaller size), else the
/// page mode, which every peer offers.
pub(crate) fn negotiate(own: Option<u16>, peer: Option<u16>) -> Mode {
    match (own, peer) {
        (Some(a), Some(b)) => Mode::Ring { pages: a.min(b) },
        _ => Mode::Page,
    }
}

/// Builds a plaintext ABORT.
pub(crate) fn abort(reason: AbortReason) -> Abort {
    Abort { version: PROTOCOL_VERSION, kind: kind::ABORT, reason: U16::new(reason.0) }
}
