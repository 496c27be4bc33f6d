//! The store: open and verify a committed state, stage changes in memory, commit them
//! copy-on-write.

use alloc::boxed::Box;
use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use crate::crypto::{Keys, Role, block_hash};
use crate::format::{
    self, BLOCK_PAYLOAD, HEADER_SLOTS, Header, MAX_BLOB_LEN, MAX_INDEX_LEN, MAX_NAME_LEN, MIN_BLOCKS, REFS_PER_NODE,
    Ref, Slot,
};
use crate::mem;
use crate::{BLOCK_SIZE, Block, BlockDevice, Entropy, StoreError, StoreKey, StoreState, Tamper};

/// One blob in memory.
struct Blob {
    data: Vec<u8>,
    /// Its data blocks in the committed state, or `None` if it was put since the last
    /// commit (so the next commit writes it).
    stored: Option<Vec<Ref>>,
}

/// The blobs, sorted by name. Sorted `Vec`s rather than maps here and below: a request
/// that inserts reserves the slot fallibly first ([`mem`]), where a map's node would be an
/// infallible allocation.
type Blobs = Vec<(Vec<u8>, Blob)>;

/// Where `name` is in `entries` (sorted by name), or where it would go.
fn find<V>(entries: &[(Vec<u8>, V)], name: &[u8]) -> Result<usize, usize> {
    entries.binary_search_by(|(n, _)| n.as_slice().cmp(name))
}

/// Where `name` goes in a sorted list of named entries.
enum Place {
    /// It is there, at this index.
    Found(usize),
    /// It is not: insert it at this index with this copy of the name (room made).
    Insert(usize, Vec<u8>),
}

/// Where `name` is in `entries` ([`find`]); if it is not there yet, room for one more
/// entry and a copy of the name are made now, before anything changes.
fn place_for<V>(entries: &mut Vec<(Vec<u8>, V)>, name: &[u8]) -> Result<Place, StoreError> {
    match find(entries, name) {
        Ok(at) => Ok(Place::Found(at)),
        Err(at) => {
            mem::reserve(entries, 1)?;
            Ok(Place::Insert(at, mem::copy(name)?))
        }
    }
}

/// What the committed state is, and what of the device it occupies.
struct Committed {
    generation: u64,
    root: Ref,
    /// The header slot holding it; the next commit writes the other one.
    slot: u64,
    /// Every pool block it references (index and data), sorted. A commit never writes
    /// these.
    blocks: Vec<u64>,
}

/// An open store: the whole verified committed state in memory, plus staged changes.
///
/// Reads ([`get`](Store::get)) never touch the device; [`commit`](Store::commit) is the only
/// operation after [`open`](Store::open) that writes.
pub struct Store<D: BlockDevice, E: Entropy> {
    device: D,
    entropy: E,
    keys: Keys,
    store_id: [u8; 16],
    /// The device's size as it said at open/format; a larger answer later is not used.
    block_count: u64,
    /// The current contents: committed blobs plus staged changes.
    blobs: Blobs,
    /// Whether anything was put or removed since the last commit.
    staged: bool,
    /// For each name changed since the last commit, what the committed state holds under
    /// it (`None`: nothing), recorded at its first change: what [`Store::discard`] puts
    /// back. Sorted by name.
    undo: Vec<(Vec<u8>, Option<Blob>)>,
    committed: Committed,
    /// Pool blocks referenced by a header whose write was attempted but whose outcome is
    /// unknown (its write or the flush after it failed): it may be on disk and be the
    /// newest header there, so its blocks must survive until a later header replaces it.
    /// Sorted.
    in_doubt: Vec<u64>,
    /// The highest generation ever written into a header slot. A retried commit takes a
    /// higher one, so no generation number ever names two different roots.
    highest_written: u64,
}

impl<D: BlockDevice, E: Entropy> core::fmt::Debug for Store<D, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Store")
            .field("generation", &self.committed.generation)
            .field("blobs", &self.blobs.len())
            .field("staged", &self.staged)
            .finish_non_exhaustive()
    }
}

/// Reads one block into a fresh heap buffer (the SVSM's stacks are small).
fn read_block(device: &mut impl BlockDevice, index: u64) -> Result<Box<Block>, StoreError> {
    let mut block = Box::new([0u8; BLOCK_SIZE]);
    device.read(index, &mut block)?;
    Ok(block)
}

/// Walks a committed state's tree, checking every block before decrypting it.
struct Loader<'a, D: BlockDevice> {
    device: &'a mut D,
    keys: &'a Keys,
    header: &'a Header,
    block_count: u64,
    seen: BTreeSet<u64>,
}

impl<D: BlockDevice> Loader<'_, D> {
    fn structure() -> StoreError {
        StoreError::Tampered { what: Tamper::Structure }
    }

    /// Reads the block `r` names, checks its hash, then authenticates and decrypts it.
    fn read(&mut self, r: &Ref, role: Role) -> Result<Box<[u8; BLOCK_PAYLOAD]>, StoreError> {
        if r.index < HEADER_SLOTS || r.generation > self.header.generation {
            return Err(Self::structure());
        }
        if r.index >= self.block_count {
            return Err(StoreError::Tampered { what: Tamper::BeyondDevice { index: r.index } });
        }
        if !self.seen.insert(r.index) {
            return Err(Self::structure());
        }
        let block = read_block(self.device, r.index)?;
        let tampered = StoreError::Tampered { what: Tamper::Block { index: r.index } };
        if block_hash(&block) != r.hash {
            return Err(tampered);
        }
        self.keys.open(&self.header.store_id, role, r.index, r.generation, &block).ok_or(tampered)
    }

    /// Reads `refs` in order and returns the first `len` bytes they carry.
    fn read_bytes(&mut self, refs: &[Ref], len: u64, role: Role) -> Result<Vec<u8>, StoreError> {
        let len = usize::try_from(len).map_err(|_| Self::structure())?;
        // The length is the disk's claim: allocate no more than the blocks can carry.
        if len > refs.len().saturating_mul(BLOCK_PAYLOAD) {
            return Err(Self::structure());
        }
        let mut bytes = Vec::with_capacity(len);
        for r in refs {
            bytes.extend_from_slice(self.read(r, role)?.as_slice());
        }
        if bytes.len() < len {
            return Err(Self::structure());
        }
        bytes.truncate(len);
        Ok(bytes)
    }

    /// Loads and verifies the whole state: every index and data block.
    fn load(mut self) -> Result<(Blobs, Vec<u64>), StoreError> {
        let index_len = self.header.index_len;
        if !(8..=MAX_INDEX_LEN).contains(&index_len) {
            return Err(Self::structure());
        }
        let sizes = format::level_sizes(index_len);
        // From the root down: each level's refs come from the nodes above it.
        let mut level = alloc::vec![self.header.root];
        for below in sizes.iter().rev().skip(1) {
            let below = usize::try_from(*below).map_err(|_| Self::structure())?;
            let mut next = Vec::with_capacity(below);
            for node in &level {
                let count = below.saturating_sub(next.len()).min(REFS_PER_NODE);
                let payload = self.read(node, Role::IndexNode)?;
                next.extend(format::decode_node(payload.as_slice(), count).ok_or_else(Self::structure)?);
            }
            if next.len() != below {
                return Err(Self::structure());
            }
            level = next;
        }
        let index = self.read_bytes(&level, index_len, Role::IndexLeaf)?;
        let entries = format::decode_index(&index).ok_or_else(Self::structure)?;
        // At boot, before any guest request: infallible allocation is fine here.
        let mut blobs = Vec::with_capacity(entries.len());
        for entry in entries {
            let data = self.read_bytes(&entry.refs, entry.len, Role::Data)?;
            // `decode_index` checked the names strictly increase: `blobs` stays sorted.
            blobs.push((entry.name, Blob { data, stored: Some(entry.refs) }));
        }
        Ok((blobs, self.seen.into_iter().collect()))
    }
}

/// Whether the header slots show that no state was ever committed on `device` (see
/// [`Store::open_or_format`]).
fn never_committed(device: &mut impl BlockDevice, keys: &Keys) -> Result<bool, StoreError> {
    if device.block_count() < HEADER_SLOTS {
        return Ok(false);
    }
    let first = read_block(device, 0)?;
    if read_block(device, 1)?.iter().any(|b| *b != 0) {
        return Ok(false);
    }
    // Zeros: a new disk, or the first header write lost. This key's key check without a MAC
    // that matches: the first sectors of that write without the rest. Zeros up to a MAC:
    // its last sector without the first. Anything else (other data, a disk that is not a
    // store) is not formatted over.
    Ok(format::only_a_mac(&first) || format::decode_header(keys, 0, &first) == Slot::Corrupt)
}

/// Pool blocks a commit may write, lowest first: neither committed nor in doubt (both
/// sorted).
fn free_blocks<'a>(committed: &'a [u64], in_doubt: &'a [u64], block_count: u64) -> impl Iterator<Item = u64> + 'a {
    (HEADER_SLOTS..block_count)
        .filter(|index| committed.binary_search(index).is_err() && in_doubt.binary_search(index).is_err())
}

/// What one commit writes, gathered before anything is applied to the store.
struct Written {
    /// New data refs of the blobs put since the last commit: (position in `blobs`, refs),
    /// by position.
    data: Vec<(usize, Vec<Ref>)>,
    /// Every pool block this commit wrote.
    blocks: Vec<u64>,
    root: Ref,
    index_len: u64,
}

/// What [`Store::open_or_format`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// A store, opened and verified.
    Existing,
    /// A blank device, now an empty store.
    Formatted,
}

impl<D: BlockDevice, E: Entropy> Store<D, E> {
    /// Writes an empty store (generation 1) over whatever `device` holds.
    ///
    /// Both header slots are zeroed first, so no header of an earlier store on the device
    /// survives to compete with the new one.
    pub fn format(mut device: D, key: &StoreKey, mut entropy: E) -> Result<Self, StoreError> {
        let keys = Keys::derive(key)?;
        let block_count = device.block_count();
        if block_count < MIN_BLOCKS {
            return Err(StoreError::DeviceTooSmall);
        }
        let mut store_id = [0u8; 16];
        entropy.fill(&mut store_id)?;
        // At boot (format is how a blank disk opens).
        let zero = Box::new([0u8; BLOCK_SIZE]);
        for slot in 0..HEADER_SLOTS {
            device.write(slot, &zero)?;
        }
        device.flush()?;
        let mut store = Store {
            device,
            entropy,
            keys,
            store_id,
            block_count,
            blobs: Vec::new(),
            staged: true,
            undo: Vec::new(),
            // Generation 0 "in slot 1": the first commit writes generation 1 into slot 0.
            committed: Committed {
                generation: 0,
                root: Ref { index: 0, generation: 0, hash: [0; 32] },
                slot: 1,
                blocks: Vec::new(),
            },
            in_doubt: Vec::new(),
            highest_written: 0,
        };
        store.commit()?;
        Ok(store)
    }

    /// Opens the store on `device`, or formats one if no state was ever committed there:
    /// both header slots all zeros, as a new disk image is, or slot 1 all zeros and slot 0
    /// holding this key's header that does not authenticate: a format whose first header
    /// write (always to slot 0) a power cut tore. Every store past its first, empty
    /// generation has headers in both slots and only format zeroes a slot, so such a
    /// device holds nothing to keep; a host that zeroes slot 1 could as well zero both.
    /// Anything else that is not this key's store is an error, never a reason to format:
    /// a host that scribbles over the headers must not get an empty state accepted in
    /// place of the kept one.
    pub fn open_or_format(mut device: D, key: &StoreKey, entropy: E) -> Result<(Self, Opened), StoreError> {
        if never_committed(&mut device, &Keys::derive(key)?)? {
            Ok((Self::format(device, key, entropy)?, Opened::Formatted))
        } else {
            Ok((Self::open(device, key, entropy)?, Opened::Existing))
        }
    }

    /// Opens the newest committed state on `device` and verifies all of it.
    ///
    /// Takes the authentic header with the highest generation. If that header's blocks do
    /// not verify, fails with [`StoreError::Tampered`] rather than falling back to the
    /// older header: an older state is only ever returned when the newer header itself is
    /// not authentic (a torn write, or a host destroying it).
    pub fn open(mut device: D, key: &StoreKey, entropy: E) -> Result<Self, StoreError> {
        let keys = Keys::derive(key)?;
        let block_count = device.block_count();
        if block_count < HEADER_SLOTS {
            return Err(StoreError::NotFormatted);
        }
        let slot0 = format::decode_header(&keys, 0, &*read_block(&mut device, 0)?);
        let slot1 = format::decode_header(&keys, 1, &*read_block(&mut device, 1)?);
        let (slot, header) = match (slot0, slot1) {
            (Slot::Valid(a), Slot::Valid(b)) if a.generation == b.generation => {
                // We never write one generation twice: a host-made situation.
                return Err(StoreError::Tampered { what: Tamper::Header });
            }
            (Slot::Valid(a), Slot::Valid(b)) if b.generation > a.generation => (1, b),
            (Slot::Valid(a), _) => (0, a),
            (_, Slot::Valid(b)) => (1, b),
            (a, b) => return Err(no_valid_header(a, b)),
        };
        if header.generation == 0 {
            return Err(StoreError::Tampered { what: Tamper::Structure });
        }
        let loader = Loader { device: &mut device, keys: &keys, header: &header, block_count, seen: BTreeSet::new() };
        let (blobs, blocks) = loader.load()?;
        Ok(Store {
            device,
            entropy,
            keys,
            store_id: header.store_id,
            block_count,
            blobs,
            staged: false,
            undo: Vec::new(),
            committed: Committed { generation: header.generation, root: header.root, slot, blocks },
            in_doubt: Vec::new(),
            highest_written: header.generation,
        })
    }

    /// Fresh bytes from the store's entropy source (for callers that bind their records
    /// to something a replay cannot reproduce, such as the attestation chain's links).
    pub fn random(&mut self, buf: &mut [u8]) -> Result<(), StoreError> {
        self.entropy.fill(buf).map_err(StoreError::Entropy)
    }

    /// The committed state: what a verifier should be told.
    pub fn state(&self) -> StoreState {
        StoreState { generation: self.committed.generation, root: self.committed.root.hash, store_id: self.store_id }
    }

    /// The random id chosen at format; part of every block's associated data.
    pub fn store_id(&self) -> [u8; 16] {
        self.store_id
    }

    /// A blob's bytes, including staged changes.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        let at = find(&self.blobs, name).ok()?;
        self.blobs.get(at).map(|(_, blob)| blob.data.as_slice())
    }

    /// The names of all blobs (including staged changes), in increasing byte order.
    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.blobs.iter().map(|(name, _)| name.as_slice())
    }

    /// How many blobs there are (including staged changes).
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// Whether there are no blobs (including staged changes).
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Whether anything was put or removed since the last successful commit.
    pub fn has_staged_changes(&self) -> bool {
        self.staged
    }

    /// Stages `data` as the whole content of `name`.
    pub fn put(&mut self, name: &[u8], data: &[u8]) -> Result<(), StoreError> {
        if name.len() > MAX_NAME_LEN || data.len() > MAX_BLOB_LEN {
            return Err(StoreError::TooLarge);
        }
        // Every allocation is made before anything changes: a full heap leaves the store as
        // it was.
        let blob = Blob { data: mem::copy(data)?, stored: None };
        let place = place_for(&mut self.blobs, name)?;
        let undo_place = place_for(&mut self.undo, name)?;
        // From here nothing allocates: the inserts go into reserved room.
        let before = match place {
            Place::Found(at) => self.blobs.get_mut(at).map(|(_, old)| core::mem::replace(old, blob)),
            Place::Insert(at, key) => {
                self.blobs.insert(at, (key, blob));
                None
            }
        };
        if let Place::Insert(at, key) = undo_place {
            self.undo.insert(at, (key, before));
        }
        self.staged = true;
        Ok(())
    }

    /// Stages the removal of `name`; says whether it was there. Fails only without memory
    /// to record what [`discard`](Store::discard) would put back (nothing changes then).
    pub fn remove(&mut self, name: &[u8]) -> Result<bool, StoreError> {
        let Ok(at) = find(&self.blobs, name) else { return Ok(false) };
        let undo_at = find(&self.undo, name);
        if undo_at.is_err() {
            mem::reserve(&mut self.undo, 1)?;
        }
        let (key, before) = self.blobs.remove(at);
        if let Err(undo_at) = undo_at {
            self.undo.insert(undo_at, (key, Some(before)));
        }
        self.staged = true;
        Ok(true)
    }

    /// Drops every staged change: the contents are the committed state again. Refused
    /// (`false`, nothing changes) after a commit whose header write was attempted and
    /// failed: that header may be on disk with the staged changes as its state, so the
    /// store in memory must keep them (a retried commit writes them again, under a higher
    /// generation).
    ///
    /// Never allocates (a discard often follows a full heap): the staged blobs go first,
    /// and the committed ones go back into room `blobs` had when it last held exactly the
    /// committed state (at the last commit or open): a `Vec` never gives capacity back.
    pub fn discard(&mut self) -> bool {
        if !self.in_doubt.is_empty() {
            return false;
        }
        for (name, _) in &self.undo {
            if let Ok(at) = find(&self.blobs, name) {
                self.blobs.remove(at);
            }
        }
        for (name, before) in self.undo.drain(..) {
            if let (Some(blob), Err(at)) = (before, find(&self.blobs, &name)) {
                self.blobs.insert(at, (name, blob));
            }
        }
        self.staged = false;
        true
    }

    /// The pool blocks the committed state references, in increasing order.
    pub fn blocks_in_use(&self) -> impl Iterator<Item = u64> + '_ {
        self.committed.blocks.iter().copied()
    }

    /// The device, for inspection.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device. Writing to it behind the store's back breaks the committed state.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Closes the store and gives the device back.
    pub fn into_device(self) -> D {
        self.device
    }

    /// Makes every staged change durable at once, as generation + 1.
    ///
    /// Does nothing (and keeps the generation) if nothing is staged. On any error the
    /// committed state in memory is unchanged and the staged changes stay staged, so the
    /// caller may retry. On disk the previous state stays openable; if the error came
    /// while writing the header, the new state may also have reached the disk, and a
    /// later open may find it (a retry then takes a higher generation).
    pub fn commit(&mut self) -> Result<(), StoreError> {
        if !self.staged {
            return Ok(());
        }
        let generation = self
            .committed
            .generation
            .max(self.highest_written)
            .checked_add(1)
            .ok_or(StoreError::GenerationExhausted)?;
        let needed = self.blocks_needed();
        // The two are disjoint (a commit writes only free blocks); counted without a copy.
        let doubtful = self.in_doubt.iter().filter(|b| self.committed.blocks.binary_search(b).is_err()).count();
        let busy = (self.committed.blocks.len() + doubtful) as u64;
        let free = self.block_count.saturating_sub(HEADER_SLOTS).saturating_sub(busy);
        if needed > free {
            return Err(StoreError::Full { needed, free });
        }
        let written = self.write_tree(generation, needed)?;
        self.device.flush()?;

        // Whatever the new state needs in memory is made now, before its header is written:
        // once it may be on disk, nothing may fail for want of heap.
        let kept = self.blobs.iter().filter_map(|(_, blob)| blob.stored.as_ref()).map(Vec::len).sum::<usize>();
        let mut blocks = mem::with_capacity(written.blocks.len() + kept)?;
        blocks.extend_from_slice(&written.blocks);
        for (_, blob) in &self.blobs {
            blocks.extend(blob.stored.iter().flatten().map(|r| r.index));
        }
        blocks.sort_unstable();
        blocks.dedup();
        mem::reserve(&mut self.in_doubt, written.blocks.len())?;
        let slot = HEADER_SLOTS - 1 - self.committed.slot;
        let header = Header { store_id: self.store_id, generation, index_len: written.index_len, root: written.root };
        let block = format::encode_header(&self.keys, slot, &header)?;
        // From here the new header may reach the disk whatever we are told.
        self.highest_written = generation;
        self.in_doubt.extend_from_slice(&written.blocks);
        self.in_doubt.sort_unstable();
        self.device.write(slot, &block)?;
        self.device.flush()?;

        // The new blobs' refs move into them: no copy.
        for (at, refs) in written.data {
            if let Some((_, blob)) = self.blobs.get_mut(at) {
                blob.stored = Some(refs);
            }
        }
        self.committed = Committed { generation, root: written.root, slot, blocks };
        self.in_doubt.clear();
        self.undo.clear();
        self.staged = false;
        Ok(())
    }

    /// Re-wraps the whole committed state under `key`: every blob is written again,
    /// encrypted and authenticated under the new key, in one commit (generation + 1) into
    /// the other header slot. For a store opened with the key of an older TCB or SVN after
    /// an update (docs/persistence.md "The key and updates").
    ///
    /// A power cut before the first new header is durable leaves the old state whole, to
    /// be opened with the old key and re-wrapped again; one between the two commits leaves
    /// the old key's header in the other slot until the next commit. The re-wrap writes
    /// every blob again while the old blocks stay in use: it needs free blocks for a whole
    /// copy of the state (`StoreError::Full` otherwise, and the old key still opens it). Staged changes are committed with
    /// it. On any error the store is gone: it must not commit on under either key, or the
    /// two keys would each see a different newest state.
    pub fn rekey(mut self, key: &StoreKey) -> Result<Self, StoreError> {
        self.keys = Keys::derive(key)?;
        for (_, blob) in &mut self.blobs {
            blob.stored = None;
        }
        self.staged = true;
        self.commit()?;
        // A second commit (the index only: the blobs stay where the first put them) puts
        // the other header slot under the new key too, so the old key no longer opens
        // anything here: firmware rolled back to the old TCB finds no state to open.
        self.staged = true;
        self.commit()?;
        Ok(self)
    }

    /// The pool blocks a commit of the current contents writes.
    fn blocks_needed(&self) -> u64 {
        let data: u64 = self
            .blobs
            .iter()
            .filter(|(_, blob)| blob.stored.is_none())
            .map(|(_, blob)| format::blocks_for(blob.data.len() as u64))
            .sum();
        data.saturating_add(format::index_blocks(self.index_len()))
    }

    /// The encoded length of the current contents' index.
    fn index_len(&self) -> u64 {
        format::index_len(self.blobs.iter().map(|(name, blob)| (name.len(), blob.data.len() as u64)))
    }

    /// Writes the new data blocks and the index tree into free pool blocks (no flush);
    /// `needed`: how many ([`Store::blocks_needed`]).
    fn write_tree(&mut self, generation: u64, needed: u64) -> Result<Written, StoreError> {
        let index_len = self.index_len();
        if index_len > MAX_INDEX_LEN {
            return Err(StoreError::TooLarge);
        }
        let index_len_bytes = usize::try_from(index_len).map_err(|_| StoreError::TooLarge)?;
        let Store { device, entropy, keys, store_id, blobs, committed, in_doubt, block_count, .. } = self;
        let mut free = free_blocks(&committed.blocks, in_doubt, *block_count);
        let mut written_blocks = mem::with_capacity(usize::try_from(needed).map_err(|_| StoreError::TooLarge)?)?;
        // One payload buffer for every block of the commit.
        let mut payload = mem::zeroed::<BLOCK_PAYLOAD>()?;
        let mut write = |bytes: &[u8], role: Role| -> Result<Vec<Ref>, StoreError> {
            let mut refs = mem::with_capacity(bytes.len().div_ceil(BLOCK_PAYLOAD))?;
            for chunk in bytes.chunks(BLOCK_PAYLOAD) {
                payload.fill(0);
                payload.iter_mut().zip(chunk).for_each(|(to, from)| *to = *from);
                // `commit` counted the free blocks first; running out here means a bug.
                let index = free.next().ok_or(StoreError::Full { needed: 1, free: 0 })?;
                let block = keys.seal(entropy, store_id, role, index, generation, &payload)?;
                device.write(index, &block)?;
                // Room for `needed` blocks was made above; this only guards a miscount.
                mem::reserve(&mut written_blocks, 1)?;
                written_blocks.push(index);
                refs.push(Ref { index, generation, hash: block_hash(&block) });
            }
            Ok(refs)
        };

        let mut data = mem::with_capacity(blobs.iter().filter(|(_, blob)| blob.stored.is_none()).count())?;
        for (at, (_, blob)) in blobs.iter().enumerate().filter(|(_, (_, blob))| blob.stored.is_none()) {
            let refs = write(&blob.data, Role::Data)?;
            data.push((at, refs));
        }
        let entries = blobs.iter().enumerate().map(|(at, (name, blob))| {
            let new = || data.binary_search_by_key(&at, |(i, _)| *i).ok().and_then(|i| data.get(i));
            let refs = blob.stored.as_deref().or_else(|| new().map(|(_, refs)| refs.as_slice())).unwrap_or_default();
            (name.as_slice(), blob.data.len() as u64, refs)
        });
        let index = format::encode_index(mem::with_capacity(index_len_bytes)?, blobs.len(), entries)
            .ok_or(StoreError::TooLarge)?;
        // Never empty: the index starts with its entry count, so there is at least one leaf.
        let mut level = write(&index, Role::IndexLeaf)?;
        let mut node = mem::with_capacity(BLOCK_PAYLOAD)?;
        while level.len() > 1 {
            let mut next = mem::with_capacity(level.len().div_ceil(REFS_PER_NODE))?;
            for children in level.chunks(REFS_PER_NODE) {
                // At most REFS_PER_NODE refs: within the node's BLOCK_PAYLOAD bytes of room.
                node.clear();
                children.iter().for_each(|r| r.encode_into(&mut node));
                next.extend(write(&node, Role::IndexNode)?);
            }
            level = next;
        }
        let root = level.first().copied().ok_or(StoreError::Internal)?;
        Ok(Written { data, blocks: written_blocks, root, index_len })
    }
}

/// What one header slot claims, read without the key: nothing here is authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderClaim {
    /// The generation the header says it commits.
    pub generation: u64,
    /// The label of the key that wrote it ([`StoreKey::labelled`]; zeros without one).
    pub label: [u8; 16],
}

/// What the two header slots on `device` claim, for a caller that must pick which of its
/// keys to open the store with (after an update, the key of the older TCB or SVN the store
/// is still under). A host can write anything here: a false claim only leads to a key that
/// does not open the store, which the host could cause anyway by destroying the headers.
pub fn header_claims(device: &mut impl BlockDevice) -> Result<[Option<HeaderClaim>; 2], StoreError> {
    if device.block_count() < HEADER_SLOTS {
        return Ok([None, None]);
    }
    let claim =
        |block: &Block| format::header_claims(block).map(|(generation, label)| HeaderClaim { generation, label });
    Ok([claim(&*read_block(device, 0)?), claim(&*read_block(device, 1)?)])
}

/// The generation of the newest header on `device` that `key` authenticates, if any: how a
/// caller with several candidate keys (see [`header_claims`]) finds the one the newest
/// committed state is under, whatever the unauthenticated claims say. Checks only the
/// headers; [`Store::open`] then verifies the state.
pub fn newest_header_under(device: &mut impl BlockDevice, key: &StoreKey) -> Result<Option<u64>, StoreError> {
    if device.block_count() < HEADER_SLOTS {
        return Ok(None);
    }
    let keys = Keys::derive(key)?;
    let mut newest = None;
    for slot in 0..HEADER_SLOTS {
        if let Slot::Valid(header) = format::decode_header(&keys, slot, &*read_block(device, slot)?) {
            newest = newest.max(Some(header.generation));
        }
    }
    Ok(newest)
}

/// The error for two header slots of which neither is authentic, most telling first.
fn no_valid_header(a: Slot, b: Slot) -> StoreError {
    let slots = [a, b];
    if slots.contains(&Slot::Corrupt) {
        StoreError::Tampered { what: Tamper::Header }
    } else if let Some(version) = slots.iter().find_map(|s| match s {
        Slot::Unsupported(version) => Some(*version),
        _ => None,
    }) {
        StoreError::UnsupportedVersion { version }
    } else if slots.contains(&Slot::OtherKey) {
        StoreError::WrongKey
    } else {
        StoreError::NotFormatted
    }
}
