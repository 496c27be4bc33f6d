//! The on-disk format: header slots, refs, the index and the shape of the index tree.
//!
//! All integers are little-endian. See the crate documentation for the picture.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::crypto::Keys;
use crate::{BLOCK_SIZE, Block, StoreError, mem};

/// Bytes of random nonce at the start of every pool block.
pub(crate) const NONCE_LEN: usize = 12;
/// Bytes of GCM-SIV tag at the end of every pool block.
pub(crate) const TAG_LEN: usize = 16;
/// Plaintext bytes one pool block carries.
pub const BLOCK_PAYLOAD: usize = BLOCK_SIZE - NONCE_LEN - TAG_LEN;
/// The longest name a blob may have.
pub const MAX_NAME_LEN: usize = 1024;
/// The longest blob. The whole store lives in memory; this keeps one blob (and what a
/// corrupted length could make `open` allocate) bounded.
pub const MAX_BLOB_LEN: usize = 16 << 20;
/// The longest index `open` accepts: room for far more refs than the blob limit and any
/// plausible device need.
pub(crate) const MAX_INDEX_LEN: u64 = 16 << 20;

/// Block numbers of the two header slots; every other block is in the pool.
pub(crate) const HEADER_SLOTS: u64 = 2;
/// The smallest device a store fits on: two header slots, the index of the committed
/// state and the index of the next one.
pub const MIN_BLOCKS: u64 = HEADER_SLOTS + 2;

/// A reference to a pool block: where it is, which generation wrote it (part of its
/// associated data) and the SHA-256 of its stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ref {
    pub(crate) index: u64,
    pub(crate) generation: u64,
    pub(crate) hash: [u8; 32],
}

pub(crate) const REF_LEN: usize = 8 + 8 + 32;
/// Refs one index node block holds.
pub(crate) const REFS_PER_NODE: usize = BLOCK_PAYLOAD / REF_LEN;

impl Ref {
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.hash);
    }

    fn decode(reader: &mut Reader<'_>) -> Option<Ref> {
        Some(Ref { index: reader.u64()?, generation: reader.u64()?, hash: reader.array()? })
    }
}

/// A cursor over bytes that answers `None` instead of reading past the end.
pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader(bytes)
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(len)?;
        self.0 = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.0.split_first_chunk::<N>()?;
        self.0 = tail;
        Some(*head)
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// How many pool blocks `len` bytes take.
pub(crate) fn blocks_for(len: u64) -> u64 {
    len.div_ceil(BLOCK_PAYLOAD as u64)
}

/// How many blocks the index tree of an index of `index_len` bytes takes, all levels
/// together ([`level_sizes`] summed, without allocating: a commit asks).
pub(crate) fn index_blocks(index_len: u64) -> u64 {
    let mut count = blocks_for(index_len).max(1);
    let mut total = count;
    while count > 1 {
        count = count.div_ceil(REFS_PER_NODE as u64);
        total = total.saturating_add(count);
    }
    total
}

/// The number of blocks on each level of the index tree, leaves first, the root (one
/// block) last. An index always has at least one leaf. (Opening a store asks, at boot.)
pub(crate) fn level_sizes(index_len: u64) -> Vec<u64> {
    let mut sizes = Vec::new();
    let mut count = blocks_for(index_len).max(1);
    sizes.push(count);
    while count > 1 {
        count = count.div_ceil(REFS_PER_NODE as u64);
        sizes.push(count);
    }
    sizes
}

// ---------------------------------------------------------------------------------------
// Header

const MAGIC: [u8; 8] = *b"BULWSTOR";
pub(crate) const FORMAT_VERSION: u32 = 1;
/// The MAC sits in the last 32 bytes and covers everything before it, so every bit of a
/// header slot is authenticated.
const MAC_OFFSET: usize = BLOCK_SIZE - 32;

/// A committed state's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) store_id: [u8; 16],
    pub(crate) generation: u64,
    /// Bytes of index (the leaves carry it, zero-padded).
    pub(crate) index_len: u64,
    /// The top block of the index tree.
    pub(crate) root: Ref,
}

/// What a header slot holds, as far as this key can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// No store header (never formatted, zeroed, or garbage).
    Blank,
    /// A store header of a format version this code does not read.
    Unsupported(u32),
    /// A store header written under another key.
    OtherKey,
    /// This key's key check, but the MAC is wrong: a torn write or tampering.
    Corrupt,
    /// An authentic header.
    Valid(Header),
}

pub(crate) fn encode_header(keys: &Keys, slot: u64, header: &Header) -> Result<Box<Block>, StoreError> {
    // Every commit makes one: both buffers are taken fallibly (a full heap fails the
    // commit before its header write).
    let mut body = mem::with_capacity(BLOCK_SIZE)?;
    body.extend_from_slice(&MAGIC);
    body.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&header.store_id);
    body.extend_from_slice(keys.key_check());
    body.extend_from_slice(&header.generation.to_le_bytes());
    body.extend_from_slice(&header.index_len.to_le_bytes());
    header.root.encode_into(&mut body);
    body.extend_from_slice(keys.label());
    body.resize(MAC_OFFSET, 0);
    let mac = keys.header_mac(slot, &body);
    body.extend_from_slice(&mac);
    let mut block = mem::zeroed::<BLOCK_SIZE>()?;
    // `body` is exactly BLOCK_SIZE long, so the zip covers every byte.
    for (to, from) in block.iter_mut().zip(&body) {
        *to = *from;
    }
    Ok(block)
}

/// Whether a header slot holds nothing before its MAC: what a first header write leaves
/// when a power cut lost the sector with its fields (a drive may persist a 4 KiB
/// write's 512-byte sectors in any order) and kept the one with the MAC.
pub(crate) fn only_a_mac(block: &Block) -> bool {
    block.get(..MAC_OFFSET).is_some_and(|body| body.iter().all(|b| *b == 0))
}

/// Where a header carries its key's label (after the root ref), and the generation.
const LABEL_OFFSET: usize = 128;
const GENERATION_OFFSET: usize = 64;

/// What a header slot claims, read without any key: its generation and its key's label.
/// Nothing here is authenticated (see [`crate::header_claims`]).
pub(crate) fn header_claims(block: &Block) -> Option<(u64, [u8; 16])> {
    if block.get(..8) != Some(&MAGIC[..]) {
        return None;
    }
    let generation = u64::from_le_bytes(block.get(GENERATION_OFFSET..GENERATION_OFFSET + 8)?.try_into().ok()?);
    let label = block.get(LABEL_OFFSET..LABEL_OFFSET + 16)?.try_into().ok()?;
    Some((generation, label))
}

pub(crate) fn decode_header(keys: &Keys, slot: u64, block: &Block) -> Slot {
    let Some((body, mac)) = block.split_at_checked(MAC_OFFSET) else {
        return Slot::Blank;
    };
    let mut reader = Reader::new(body);
    if reader.array::<8>() != Some(MAGIC) {
        return Slot::Blank;
    }
    match reader.u32() {
        Some(FORMAT_VERSION) => {}
        Some(version) => return Slot::Unsupported(version),
        None => return Slot::Blank,
    }
    let parsed = (|| {
        let _reserved = reader.u32()?;
        let store_id = reader.array::<16>()?;
        let key_check = reader.array::<32>()?;
        let generation = reader.u64()?;
        let index_len = reader.u64()?;
        let root = Ref::decode(&mut reader)?;
        Some((key_check, Header { store_id, generation, index_len, root }))
    })();
    let Some((key_check, header)) = parsed else {
        return Slot::Blank;
    };
    // The key check is compared before the MAC only to name the error; it grants nothing.
    if &key_check != keys.key_check() {
        return Slot::OtherKey;
    }
    if !keys.header_mac_matches(slot, body, mac) {
        return Slot::Corrupt;
    }
    Slot::Valid(header)
}

// ---------------------------------------------------------------------------------------
// Index: entry count (u64), then per entry in strictly increasing name order:
// name length (u16), name, data length (u64), one ref per data block.

/// One blob as the index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) name: Vec<u8>,
    pub(crate) len: u64,
    pub(crate) refs: Vec<Ref>,
}

/// The encoded length of an index with entries of these (name length, data length).
pub(crate) fn index_len<'a>(entries: impl Iterator<Item = (usize, u64)> + 'a) -> u64 {
    entries.fold(8u64, |total, (name_len, data_len)| {
        let entry = 2 + name_len as u64 + 8 + blocks_for(data_len).saturating_mul(REF_LEN as u64);
        total.saturating_add(entry)
    })
}

/// Encodes an index into `out`; the caller gives entries in increasing name order, and
/// `out` with room for [`index_len`] bytes (made fallibly) so that encoding never grows it.
pub(crate) fn encode_index<'a>(
    mut out: Vec<u8>,
    count: usize,
    entries: impl Iterator<Item = (&'a [u8], u64, &'a [Ref])>,
) -> Option<Vec<u8>> {
    out.extend_from_slice(&(count as u64).to_le_bytes());
    for (name, len, refs) in entries {
        let name_len = u16::try_from(name.len()).ok()?;
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&len.to_le_bytes());
        for r in refs {
            r.encode_into(&mut out);
        }
    }
    Some(out)
}

/// Parses an index, checking that names are strictly increasing and within limits,
/// that every blob has exactly the refs its length needs, and that nothing trails.
pub(crate) fn decode_index(bytes: &[u8]) -> Option<Vec<IndexEntry>> {
    let mut reader = Reader::new(bytes);
    let count = reader.u64()?;
    let mut entries: Vec<IndexEntry> = Vec::new();
    for _ in 0..count {
        let name_len = usize::from(reader.u16()?);
        if name_len > MAX_NAME_LEN {
            return None;
        }
        let name = reader.take(name_len)?.to_vec();
        if entries.last().is_some_and(|previous| previous.name >= name) {
            return None;
        }
        let len = reader.u64()?;
        if len > MAX_BLOB_LEN as u64 {
            return None;
        }
        let mut refs = Vec::new();
        for _ in 0..blocks_for(len) {
            refs.push(Ref::decode(&mut reader)?);
        }
        entries.push(IndexEntry { name, len, refs });
    }
    reader.is_empty().then_some(entries)
}

/// Decodes the first `count` refs of an index node block.
pub(crate) fn decode_node(payload: &[u8], count: usize) -> Option<Vec<Ref>> {
    if count > REFS_PER_NODE {
        return None;
    }
    let mut reader = Reader::new(payload);
    (0..count).map(|_| Ref::decode(&mut reader)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreKey;

    fn sample_ref(n: u8) -> Ref {
        Ref { index: u64::from(n) + 2, generation: 7, hash: [n; 32] }
    }

    #[test]
    fn payload_and_node_fan_out() {
        assert_eq!(BLOCK_PAYLOAD, 4068);
        assert_eq!(REFS_PER_NODE, 84);
    }

    #[test]
    fn level_sizes_end_in_one_root() {
        assert_eq!(level_sizes(8), [1]);
        assert_eq!(level_sizes(BLOCK_PAYLOAD as u64), [1]);
        assert_eq!(level_sizes(BLOCK_PAYLOAD as u64 + 1), [2, 1]);
        assert_eq!(level_sizes(84 * BLOCK_PAYLOAD as u64), [84, 1]);
        assert_eq!(level_sizes(85 * BLOCK_PAYLOAD as u64), [85, 2, 1]);
        for len in [8, BLOCK_PAYLOAD as u64 + 1, 85 * BLOCK_PAYLOAD as u64, 9000 * BLOCK_PAYLOAD as u64] {
            assert_eq!(index_blocks(len), level_sizes(len).iter().sum::<u64>(), "{len}");
        }
    }

    #[test]
    fn header_round_trips_and_names_every_failure() {
        let keys = Keys::derive(&StoreKey::new([3; 32])).unwrap();
        let header = Header { store_id: [9; 16], generation: 42, index_len: 100, root: sample_ref(5) };
        let block = encode_header(&keys, 1, &header).unwrap();
        assert_eq!(decode_header(&keys, 1, &block), Slot::Valid(header));
        assert_eq!(decode_header(&keys, 0, &block), Slot::Corrupt, "copied to the other slot");
        let other = Keys::derive(&StoreKey::new([4; 32])).unwrap();
        assert_eq!(decode_header(&other, 1, &block), Slot::OtherKey);
        assert_eq!(decode_header(&keys, 1, &[0; BLOCK_SIZE]), Slot::Blank);
        let mut flipped = block.clone();
        flipped[BLOCK_SIZE - 100] ^= 1;
        assert_eq!(decode_header(&keys, 1, &flipped), Slot::Corrupt, "padding is authenticated");
        let mut future = block.clone();
        future[8] = 2;
        assert_eq!(decode_header(&keys, 1, &future), Slot::Unsupported(2));
    }

    #[test]
    fn index_round_trips() {
        let refs = [sample_ref(1), sample_ref(2)];
        let entries: [(&[u8], u64, &[Ref]); 3] =
            [(b"", 0, &[]), (b"a", 5, &refs[..1]), (b"bc", BLOCK_PAYLOAD as u64 + 1, &refs)];
        let bytes = encode_index(Vec::new(), 3, entries.iter().copied()).unwrap();
        let lens = entries.iter().map(|(name, len, _)| (name.len(), *len));
        assert_eq!(bytes.len() as u64, index_len(lens));
        let decoded = decode_index(&bytes).unwrap();
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded[2], IndexEntry { name: b"bc".to_vec(), len: BLOCK_PAYLOAD as u64 + 1, refs: refs.to_vec() });
    }

    #[test]
    fn index_rejects_unsorted_names_missing_refs_and_trailing_bytes() {
        let r = [sample_ref(1)];
        let unsorted =
            encode_index(Vec::new(), 2, [(&b"b"[..], 1, &r[..]), (&b"a"[..], 1, &r[..])].into_iter()).unwrap();
        assert_eq!(decode_index(&unsorted), None);
        let duplicate =
            encode_index(Vec::new(), 2, [(&b"a"[..], 1, &r[..]), (&b"a"[..], 1, &r[..])].into_iter()).unwrap();
        assert_eq!(decode_index(&duplicate), None);
        let missing_ref = encode_index(Vec::new(), 1, [(&b"a"[..], 1, &[][..])].into_iter()).unwrap();
        assert_eq!(decode_index(&missing_ref), None);
        let mut trailing = encode_index(Vec::new(), 1, [(&b"a"[..], 1, &r[..])].into_iter()).unwrap();
        trailing.push(0);
        assert_eq!(decode_index(&trailing), None);
        let huge_count = u64::MAX.to_le_bytes();
        assert_eq!(decode_index(&huge_count), None);
    }

    #[test]
    fn node_decodes_only_what_fits() {
        let mut payload = Vec::new();
        sample_ref(1).encode_into(&mut payload);
        payload.resize(BLOCK_PAYLOAD, 0);
        assert_eq!(decode_node(&payload, 1).unwrap(), [sample_ref(1)]);
        assert_eq!(decode_node(&payload, REFS_PER_NODE + 1), None);
    }
}
