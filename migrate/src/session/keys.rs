//! The key schedule and the record layer's AEAD (docs/migration.md "Keys" and "Records").

use super::Aes;
use super::wire::{self, PUBLIC_KEY_LEN, RECORD_HEADER_LEN, RecordHeader, RecordType, TAG_LEN};
use super::{MigrationError, Role};
use crate::Entropy;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::aead::consts::U12;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use alloc::vec::Vec;
use hkdf::Hkdf;
use p384::elliptic_curve::sec1::ToEncodedPoint;
use p384::{PublicKey, SecretKey};
use sha2::{Digest, Sha384, Sha512};
use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, IntoBytes};
use zeroize::{Zeroize, Zeroizing};

/// The length of a SHA-384 digest (transcript hashes, key hashes, the state hash).
pub const HASH_LEN: usize = 48;
/// REPORT_DATA's length.
pub const REPORT_DATA_LEN: usize = 64;

/// Label of the handshake transcript hash.
pub(crate) const TRANSCRIPT_LABEL: &[u8] = b"bulwark-migrate v1 transcript";
/// Labels of REPORT_DATA, one per role so that one side's evidence never passes as the
/// other's.
const REPORT_DATA_SOURCE: &[u8] = b"bulwark-migrate v1 evidence source";
const REPORT_DATA_DESTINATION: &[u8] = b"bulwark-migrate v1 evidence destination";
/// HKDF-Expand labels.
const KEY_S2D: &[u8] = b"bulwark-migrate v1 key source to destination";
const NONCE_S2D: &[u8] = b"bulwark-migrate v1 nonce source to destination";
const KEY_D2S: &[u8] = b"bulwark-migrate v1 key destination to source";
const NONCE_D2S: &[u8] = b"bulwark-migrate v1 nonce destination to source";
/// Label that starts the hash of the STATE frames.
pub(crate) const STATE_HASH_LABEL: &[u8] = b"bulwark-migrate v1 state tags";

/// How many 48-byte draws key generation tries before it blames the entropy source (a
/// draw is refused only if it is zero or not below the group order: about 2^-190).
const KEYGEN_ATTEMPTS: usize = 4;

/// This side's ephemeral ECDH key, used for one session and dropped (wiped) once the
/// session keys are derived.
pub(crate) struct Ephemeral {
    secret: SecretKey,
    public: [u8; PUBLIC_KEY_LEN],
}

impl Ephemeral {
    pub fn generate(entropy: &mut dyn Entropy) -> Result<Self, MigrationError> {
        for _ in 0..KEYGEN_ATTEMPTS {
            let mut draw = Zeroizing::new([0u8; 48]);
            entropy.fill(&mut draw[..]).map_err(|_| MigrationError::Entropy)?;
            if let Ok(secret) = SecretKey::from_slice(&draw[..]) {
                let point = secret.public_key().to_encoded_point(false);
                let public =
                    <[u8; PUBLIC_KEY_LEN]>::try_from(point.as_bytes()).map_err(|_| MigrationError::Internal)?;
                return Ok(Self { secret, public });
            }
        }
        Err(MigrationError::Entropy)
    }

    pub fn public(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.public
    }
}

/// The peer's ephemeral key from its HELLO: an uncompressed point on P-384 (the library
/// refuses points off the curve and the identity), and not this side's own key (a HELLO
/// reflected back).
pub(crate) fn parse_peer_key(
    bytes: &[u8; PUBLIC_KEY_LEN],
    own: &[u8; PUBLIC_KEY_LEN],
) -> Result<PublicKey, MigrationError> {
    if bytes.first() != Some(&0x04) || bytes == own {
        return Err(MigrationError::BadPublicKey);
    }
    PublicKey::from_sec1_bytes(bytes).map_err(|_| MigrationError::BadPublicKey)
}

/// REPORT_DATA of the evidence the side `role` sends:
/// SHA-512(label(role) || transcript hash after both HELLOs || SHA-384(its HELLO key)).
pub fn report_data(
    role: Role,
    hello_transcript: &[u8; HASH_LEN],
    public_key: &[u8; PUBLIC_KEY_LEN],
) -> [u8; REPORT_DATA_LEN] {
    let label = match role {
        Role::Source => REPORT_DATA_SOURCE,
        Role::Destination => REPORT_DATA_DESTINATION,
    };
    let key_hash = Sha384::digest(public_key);
    let mut h = Sha512::new();
    h.update(label);
    h.update(hello_transcript);
    h.update(key_hash);
    h.finalize().into()
}

/// Adds one handshake frame to the transcript: its length (u32 LE) and its bytes.
pub(crate) fn absorb(transcript: &mut Sha384, frame: &[u8]) -> Result<(), MigrationError> {
    let len = u32::try_from(frame.len()).map_err(|_| MigrationError::Internal)?;
    transcript.update(len.to_le_bytes());
    transcript.update(frame);
    Ok(())
}

/// The transcript hash so far (the transcript goes on).
pub(crate) fn snapshot(transcript: &Sha384) -> [u8; HASH_LEN] {
    transcript.clone().finalize().into()
}

/// The two directions' record protection, for the side `role`.
pub(crate) struct Keys {
    pub send: RecordProtection,
    pub receive: RecordProtection,
}

/// ECDH, then HKDF-SHA384 (salt: the full transcript hash; input: the shared secret's
/// x-coordinate), then per direction an AES-256-GCM key and a 96-bit nonce base.
pub(crate) fn derive(
    role: Role,
    own: &Ephemeral,
    peer: &PublicKey,
    transcript: &[u8; HASH_LEN],
    aes: Aes,
) -> Result<Keys, MigrationError> {
    let shared = p384::ecdh::diffie_hellman(own.secret.to_nonzero_scalar(), peer.as_affine());
    let hkdf = Hkdf::<Sha384>::new(Some(&transcript[..]), shared.raw_secret_bytes());
    let s2d = RecordProtection::derive(&hkdf, KEY_S2D, NONCE_S2D, aes)?;
    let d2s = RecordProtection::derive(&hkdf, KEY_D2S, NONCE_D2S, aes)?;
    Ok(match role {
        Role::Source => Keys { send: s2d, receive: d2s },
        Role::Destination => Keys { send: d2s, receive: s2d },
    })
}

/// Seals `records` STATE records of `len` bytes each with a throwaway key, exactly as the
/// record layer seals a session's state stream (a frame allocated per record, AES-256-GCM
/// over its header and payload): what a benchmark times to set a migration's throughput
/// beside its cipher's, on the AES a session would use. No session's key or nonce is
/// involved. The bytes sealed.
pub fn seal_for_benchmark(records: usize, len: usize, aes: Aes) -> Result<usize, MigrationError> {
    let hkdf = Hkdf::<Sha384>::new(None, b"bulwark migration cipher benchmark");
    let mut protection = RecordProtection::derive(&hkdf, b"key", b"nonce", aes)?;
    let mut payload = Vec::new();
    payload.try_reserve_exact(len).map_err(|_| MigrationError::OutOfMemory)?;
    payload.resize(len, 0x5A);
    let mut sealed = 0usize;
    for _ in 0..records {
        sealed = sealed.saturating_add(protection.seal(RecordType::State, &payload)?.len());
    }
    Ok(sealed)
}

/// AES-256-GCM on the AES the session was configured with (the same bytes either way).
#[expect(
    clippy::large_enum_variant,
    reason = "two per session, inside the session's own allocation; a Box could not fail gracefully"
)]
enum RecordCipher {
    Portable(Aes256Gcm),
    Hardware(x86::aesni::Aes256Gcm),
}

/// The record layer's AEAD failed (a tag that does not verify, when opening).
struct AeadFailed;

impl RecordCipher {
    fn new(key: &[u8; 32], aes: Aes) -> Result<Self, MigrationError> {
        Ok(match aes {
            Aes::Portable => Self::Portable(Aes256Gcm::new_from_slice(key).map_err(|_| MigrationError::Internal)?),
            Aes::Hardware => Self::Hardware(x86::aesni::Aes256Gcm::new(key)),
        })
    }

    fn seal(&self, nonce: &Nonce<U12>, ad: &[u8], body: &mut [u8]) -> Result<Tag, AeadFailed> {
        match self {
            Self::Portable(c) => c.encrypt_in_place_detached(nonce, ad, body).map_err(|_| AeadFailed),
            Self::Hardware(c) => c.seal(nonce.as_ref(), ad, body).map(Tag::from).map_err(|_| AeadFailed),
        }
    }

    fn open(&self, nonce: &Nonce<U12>, ad: &[u8], body: &mut [u8], tag: &Tag) -> Result<(), AeadFailed> {
        match self {
            Self::Portable(c) => c.decrypt_in_place_detached(nonce, ad, body, tag).map_err(|_| AeadFailed),
            Self::Hardware(c) => c.open(nonce.as_ref(), ad, body, tag.as_ref()).map_err(|_| AeadFailed),
        }
    }
}

/// One direction of the record layer: AES-256-GCM, nonce = base XOR the 64-bit sequence
/// number (big-endian, in the nonce's last 8 bytes), associated data = the record header.
pub(crate) struct RecordProtection {
    cipher: RecordCipher,
    nonce_base: [u8; 12],
    /// The next record's sequence number; `None` once `u64::MAX` has been used (the
    /// sequence never wraps).
    next: Option<u64>,
}

impl Drop for RecordProtection {
    fn drop(&mut self) {
        self.nonce_base.zeroize();
    }
}

impl RecordProtection {
    fn derive(hkdf: &Hkdf<Sha384>, key_label: &[u8], nonce_label: &[u8], aes: Aes) -> Result<Self, MigrationError> {
        let mut key = Zeroizing::new([0u8; 32]);
        hkdf.expand(key_label, &mut key[..]).map_err(|_| MigrationError::Internal)?;
        let mut nonce_base = [0u8; 12];
        hkdf.expand(nonce_label, &mut nonce_base).map_err(|_| MigrationError::Internal)?;
        let cipher = RecordCipher::new(&key, aes)?;
        Ok(Self { cipher, nonce_base, next: Some(0) })
    }

    /// The next sequence number (sent or expected), `None` when exhausted.
    #[cfg(test)]
    pub fn next_sequence(&self) -> Option<u64> {
        self.next
    }

    #[cfg(test)]
    pub fn set_next_sequence(&mut self, next: u64) {
        self.next = Some(next);
    }

    fn nonce(&self, sequence: u64) -> Nonce<U12> {
        let mut n = self.nonce_base;
        for (b, s) in n.iter_mut().skip(4).zip(sequence.to_be_bytes()) {
            *b ^= s;
        }
        Nonce::from(n)
    }

    /// The record frame carrying `payload` as `record_type`, with the next sequence number.
    pub fn seal(&mut self, record_type: RecordType, payload: &[u8]) -> Result<Vec<u8>, MigrationError> {
        let sequence = self.next.ok_or(MigrationError::SequenceExhausted)?;
        let header = RecordHeader {
            version: wire::PROTOCOL_VERSION,
            kind: wire::kind::RECORD,
            record_type: record_type.to_byte(),
            sequence: U64::new(sequence),
        };
        let mut frame = Vec::new();
        frame.try_reserve(RECORD_HEADER_LEN + payload.len() + TAG_LEN).map_err(|_| MigrationError::OutOfMemory)?;
        frame.extend_from_slice(header.as_bytes());
        frame.extend_from_slice(payload);
        let (ad, body) = frame.split_at_mut(RECORD_HEADER_LEN);
        let tag = self.cipher.seal(&self.nonce(sequence), ad, body).map_err(|_| MigrationError::Internal)?;
        frame.extend_from_slice(&tag);
        self.next = sequence.checked_add(1);
        Ok(frame)
    }

    /// Checks and decrypts a record frame (version and kind already checked): its sequence
    /// number must be the next one, its tag must verify. Only then is its type read.
    pub fn open(&mut self, frame: &[u8]) -> Result<(RecordType, Vec<u8>), MigrationError> {
        let expected = self.next.ok_or(MigrationError::SequenceExhausted)?;
        let (header, rest) = RecordHeader::read_from_prefix(frame).map_err(|_| MigrationError::MalformedRecord)?;
        let got = header.sequence.get();
        if got != expected {
            return Err(MigrationError::UnexpectedSequence { expected, got });
        }
        let split = rest.len().checked_sub(TAG_LEN).ok_or(MigrationError::MalformedRecord)?;
        let (ciphertext, tag) = rest.split_at_checked(split).ok_or(MigrationError::MalformedRecord)?;
        let tag = Tag::from(<[u8; TAG_LEN]>::try_from(tag).map_err(|_| MigrationError::MalformedRecord)?);
        let ad = frame.get(..RECORD_HEADER_LEN).ok_or(MigrationError::MalformedRecord)?;
        let mut plaintext = Vec::new();
        plaintext.try_reserve(ciphertext.len()).map_err(|_| MigrationError::OutOfMemory)?;
        plaintext.extend_from_slice(ciphertext);
        self.cipher
            .open(&self.nonce(expected), ad, &mut plaintext, &tag)
            .map_err(|_| MigrationError::Authentication { sequence: expected })?;
        let record_type = RecordType::from_byte(header.record_type).ok_or(MigrationError::MalformedRecord)?;
        self.next = expected.checked_add(1);
        Ok((record_type, plaintext))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (RecordProtection, RecordProtection) {
        let hkdf = Hkdf::<Sha384>::new(Some(b"salt"), b"input");
        (
            RecordProtection::derive(&hkdf, KEY_S2D, NONCE_S2D, Aes::Portable).unwrap(),
            RecordProtection::derive(&hkdf, KEY_S2D, NONCE_S2D, Aes::Portable).unwrap(),
        )
    }

    /// Either AES seals the same record, and each opens what the other sealed: the
    /// choice is local to each SVSM.
    #[test]
    fn both_aes_give_the_same_records() {
        if !x86::aesni::supported() {
            return;
        }
        let hkdf = Hkdf::<Sha384>::new(Some(b"salt"), b"input");
        let mut portable = RecordProtection::derive(&hkdf, KEY_S2D, NONCE_S2D, Aes::Portable).unwrap();
        let mut hardware = RecordProtection::derive(&hkdf, KEY_S2D, NONCE_S2D, Aes::Hardware).unwrap();
        let mut hardware_in = RecordProtection::derive(&hkdf, KEY_S2D, NONCE_S2D, Aes::Hardware).unwrap();
        for len in [0, 1, 200, 4096, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            let a = portable.seal(RecordType::State, &payload).unwrap();
            let b = hardware.seal(RecordType::State, &payload).unwrap();
            assert_eq!(a, b, "{len} bytes");
            assert_eq!(hardware_in.open(&a).unwrap(), (RecordType::State, payload));
        }
    }

    #[test]
    fn sequence_never_wraps() {
        let (mut send, mut receive) = pair();
        send.set_next_sequence(u64::MAX - 1);
        receive.set_next_sequence(u64::MAX - 1);
        for _ in 0..2 {
            let frame = send.seal(RecordType::State, b"x").unwrap();
            assert_eq!(receive.open(&frame).unwrap(), (RecordType::State, b"x".to_vec()));
        }
        assert_eq!(send.next_sequence(), None);
        assert_eq!(send.seal(RecordType::State, b"x"), Err(MigrationError::SequenceExhausted));
        assert_eq!(receive.open(&[0; 40]), Err(MigrationError::SequenceExhausted));
    }

    #[test]
    fn nonce_differs_per_sequence_and_direction() {
        let hkdf = Hkdf::<Sha384>::new(Some(b"salt"), b"input");
        let s2d = RecordProtection::derive(&hkdf, KEY_S2D, NONCE_S2D, Aes::Portable).unwrap();
        let d2s = RecordProtection::derive(&hkdf, KEY_D2S, NONCE_D2S, Aes::Hardware).unwrap();
        assert_ne!(s2d.nonce(0), s2d.nonce(1));
        assert_ne!(s2d.nonce(0), d2s.nonce(0));
        assert_ne!(s2d.nonce(1), s2d.nonce(1 << 56));
    }

    #[test]
    fn a_record_under_the_other_direction_fails() {
        let hkdf = Hkdf::<Sha384>::new(Some(b"salt"), b"input");
        let mut s2d = RecordProtection::derive(&hkdf, KEY_S2D, NONCE_S2D, Aes::Portable).unwrap();
        let mut d2s = RecordProtection::derive(&hkdf, KEY_D2S, NONCE_D2S, Aes::Hardware).unwrap();
        let frame = s2d.seal(RecordType::Ready, b"").unwrap();
        assert_eq!(d2s.open(&frame), Err(MigrationError::Authentication { sequence: 0 }));
    }

    #[test]
    fn report_data_depends_on_role_transcript_and_key() {
        let t = [1u8; HASH_LEN];
        let k = [4u8; PUBLIC_KEY_LEN];
        let base = report_data(Role::Source, &t, &k);
        assert_ne!(base, report_data(Role::Destination, &t, &k));
        assert_ne!(base, report_data(Role::Source, &[2u8; HASH_LEN], &k));
        assert_ne!(base, report_data(Role::Source, &t, &[5u8; PUBLIC_KEY_LEN]));
    }
}
