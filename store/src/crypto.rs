//! Key derivation, block sealing and the header MAC.

use aes_gcm_siv::aead::{AeadInPlace, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::format::{BLOCK_PAYLOAD, NONCE_LEN, TAG_LEN};
use crate::{BLOCK_SIZE, Block, Entropy, StoreError};

/// The 32-byte key a store is opened with. The SVSM derives it from the PSP (bound to the
/// launch measurement); the store derives its sub-keys from it with HKDF-SHA256.
///
/// A key may carry a label: 16 bytes that say how to derive it again (for the SVSM, the
/// guest SVN and TCB version of its key request). Every header a key writes carries its
/// label in the clear, so that after an update the caller can find out which older key
/// the store is under ([`crate::header_claims`]) and re-wrap it ([`Store::rekey`]).
/// The label is no secret and grants nothing: the header MAC covers it, and a wrong label
/// only leads to a key that does not open the store.
///
/// [`Store::rekey`]: crate::Store::rekey
pub struct StoreKey {
    bytes: [u8; 32],
    label: [u8; 16],
}

impl StoreKey {
    /// Wraps a caller-supplied key, without a label (all zeros).
    pub fn new(bytes: [u8; 32]) -> Self {
        Self::labelled(bytes, [0; 16])
    }

    /// Wraps a caller-supplied key and the label that says how it was derived.
    pub fn labelled(bytes: [u8; 32], label: [u8; 16]) -> Self {
        StoreKey { bytes, label }
    }

    /// The key's label.
    pub fn label(&self) -> [u8; 16] {
        self.label
    }
}

impl Drop for StoreKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl core::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print key material.
        f.write_str("StoreKey(..)")
    }
}

/// What a block holds: part of the associated data, so a block cannot be read in
/// another role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Data = 1,
    IndexLeaf = 2,
    IndexNode = 3,
}

/// HKDF salt: fixes the derivation to this format.
const KDF_SALT: &[u8] = b"bulwark-store v1";

/// The sub-keys of one [`StoreKey`].
pub(crate) struct Keys {
    cipher: Aes256GcmSiv,
    /// HMAC-SHA256 keyed with the header key, cloned for each MAC.
    header_mac: Hmac<Sha256>,
    /// Stored in every header so that `open` with another key says `WrongKey` rather than
    /// `Tampered`. A one-way function of the key, useless to the host.
    key_check: [u8; 32],
    /// The key's label, written into every header.
    label: [u8; 16],
}

impl core::fmt::Debug for Keys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Keys(..)")
    }
}

fn expand(kdf: &Hkdf<Sha256>, label: &[u8]) -> Result<[u8; 32], StoreError> {
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit: the error cannot occur.
    kdf.expand(label, &mut out).map_err(|_| StoreError::Internal)?;
    Ok(out)
}

/// The associated data of a pool block.
fn associated_data(store_id: &[u8; 16], role: Role, index: u64, generation: u64) -> [u8; 33] {
    let mut ad = [0u8; 33];
    let (id, rest) = ad.split_at_mut(16);
    id.copy_from_slice(store_id);
    let (role_byte, rest) = rest.split_at_mut(1);
    role_byte.fill(role as u8);
    let (index_bytes, generation_bytes) = rest.split_at_mut(8);
    index_bytes.copy_from_slice(&index.to_le_bytes());
    generation_bytes.copy_from_slice(&generation.to_le_bytes());
    ad
}

/// The hash a parent holds for a block: over every stored byte.
pub(crate) fn block_hash(block: &Block) -> [u8; 32] {
    Sha256::digest(block).into()
}

impl Keys {
    pub(crate) fn derive(key: &StoreKey) -> Result<Self, StoreError> {
        let kdf = Hkdf::<Sha256>::new(Some(KDF_SALT), &key.bytes);
        let mut block_key = expand(&kdf, b"block encryption")?;
        let cipher = Aes256GcmSiv::new(&block_key.into());
        block_key.zeroize();
        let mut header_key = expand(&kdf, b"header authentication")?;
        // HMAC takes keys of any length: this cannot fail.
        let header_mac = <Hmac<Sha256> as Mac>::new_from_slice(&header_key).map_err(|_| StoreError::Internal)?;
        header_key.zeroize();
        Ok(Keys { cipher, header_mac, key_check: expand(&kdf, b"key check")?, label: key.label })
    }

    pub(crate) fn label(&self) -> &[u8; 16] {
        &self.label
    }

    pub(crate) fn key_check(&self) -> &[u8; 32] {
        &self.key_check
    }

    /// HMAC-SHA256 over the header slot number and the header's bytes, so a header
    /// copied into the other slot does not authenticate.
    pub(crate) fn header_mac(&self, slot: u64, header: &[u8]) -> [u8; 32] {
        let mut mac = self.header_mac.clone();
        mac.update(&slot.to_le_bytes());
        mac.update(header);
        mac.finalize().into_bytes().into()
    }

    /// Checks a header MAC in constant time.
    pub(crate) fn header_mac_matches(&self, slot: u64, header: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.header_mac.clone();
        mac.update(&slot.to_le_bytes());
        mac.update(header);
        mac.verify_slice(tag).is_ok()
    }

    /// Encrypts `payload` into a pool block with a fresh random nonce.
    pub(crate) fn seal(
        &self,
        entropy: &mut impl Entropy,
        store_id: &[u8; 16],
        role: Role,
        index: u64,
        generation: u64,
        payload: &[u8; BLOCK_PAYLOAD],
    ) -> Result<alloc::boxed::Box<Block>, StoreError> {
        let mut block = crate::mem::zeroed::<BLOCK_SIZE>()?;
        let (nonce, rest) = block.split_first_chunk_mut::<NONCE_LEN>().ok_or(StoreError::Internal)?;
        entropy.fill(nonce)?;
        let (body, tag) = rest.split_first_chunk_mut::<BLOCK_PAYLOAD>().ok_or(StoreError::Internal)?;
        let tag: &mut [u8; TAG_LEN] = tag.try_into().map_err(|_| StoreError::Internal)?;
        body.copy_from_slice(payload);
        let ad = associated_data(store_id, role, index, generation);
        let computed =
            self.cipher.encrypt_in_place_detached(&Nonce::from(*nonce), &ad, body).map_err(|_| StoreError::Internal)?;
        tag.copy_from_slice(&computed);
        Ok(block)
    }

    /// Decrypts and authenticates a pool block; `None` if it does not authenticate.
    pub(crate) fn open(
        &self,
        store_id: &[u8; 16],
        role: Role,
        index: u64,
        generation: u64,
        block: &Block,
    ) -> Option<alloc::boxed::Box<[u8; BLOCK_PAYLOAD]>> {
        let (nonce, rest) = block.split_first_chunk::<NONCE_LEN>()?;
        let (body, tag) = rest.split_first_chunk::<BLOCK_PAYLOAD>()?;
        let tag: &[u8; TAG_LEN] = tag.try_into().ok()?;
        let mut plain = alloc::boxed::Box::new(*body);
        let ad = associated_data(store_id, role, index, generation);
        self.cipher
            .decrypt_in_place_detached(&Nonce::from(*nonce), &ad, plain.as_mut_slice(), &Tag::from(*tag))
            .ok()?;
        Some(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting_entropy() -> impl FnMut(&mut [u8]) -> Result<(), crate::EntropyError> {
        let mut next = 0u8;
        move |buf: &mut [u8]| {
            for b in buf {
                next = next.wrapping_add(1);
                *b = next;
            }
            Ok(())
        }
    }

    #[test]
    fn sealed_block_opens_only_with_its_own_associated_data() {
        let keys = Keys::derive(&StoreKey::new([7; 32])).unwrap();
        let mut entropy = counting_entropy();
        let id = [1; 16];
        let payload = [0x5a; BLOCK_PAYLOAD];
        let block = keys.seal(&mut entropy, &id, Role::Data, 9, 3, &payload).unwrap();
        assert_eq!(*keys.open(&id, Role::Data, 9, 3, &block).unwrap(), payload);
        assert!(keys.open(&id, Role::Data, 10, 3, &block).is_none(), "moved block");
        assert!(keys.open(&id, Role::Data, 9, 4, &block).is_none(), "other generation");
        assert!(keys.open(&id, Role::IndexLeaf, 9, 3, &block).is_none(), "other role");
        assert!(keys.open(&[2; 16], Role::Data, 9, 3, &block).is_none(), "other store");
        let other = Keys::derive(&StoreKey::new([8; 32])).unwrap();
        assert!(other.open(&id, Role::Data, 9, 3, &block).is_none(), "other key");
    }

    #[test]
    fn two_seals_of_one_payload_differ_because_the_nonce_is_fresh() {
        let keys = Keys::derive(&StoreKey::new([7; 32])).unwrap();
        let mut entropy = counting_entropy();
        let payload = [0; BLOCK_PAYLOAD];
        let a = keys.seal(&mut entropy, &[0; 16], Role::Data, 2, 1, &payload).unwrap();
        let b = keys.seal(&mut entropy, &[0; 16], Role::Data, 2, 1, &payload).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn failing_entropy_refuses_to_seal() {
        let keys = Keys::derive(&StoreKey::new([7; 32])).unwrap();
        let mut entropy = |_: &mut [u8]| Err(crate::EntropyError);
        let result = keys.seal(&mut entropy, &[0; 16], Role::Data, 2, 1, &[0; BLOCK_PAYLOAD]);
        assert_eq!(result.err(), Some(StoreError::Entropy(crate::EntropyError)));
    }

    #[test]
    fn header_mac_binds_the_slot_and_the_bytes() {
        let keys = Keys::derive(&StoreKey::new([7; 32])).unwrap();
        let tag = keys.header_mac(0, b"header");
        assert!(keys.header_mac_matches(0, b"header", &tag));
        assert!(!keys.header_mac_matches(1, b"header", &tag));
        assert!(!keys.header_mac_matches(0, b"headeR", &tag));
    }

    #[test]
    fn sub_keys_differ_per_key() {
        let a = Keys::derive(&StoreKey::new([1; 32])).unwrap();
        let b = Keys::derive(&StoreKey::new([2; 32])).unwrap();
        assert_ne!(a.key_check(), b.key_check());
        assert_ne!(a.header_mac(0, b""), b.header_mac(0, b""));
    }
}
