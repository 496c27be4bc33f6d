//! Device and entropy failures, and a full device: a named error, and the committed state
//! stays usable.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use bulwark_store::testing::{MemDisk, TestRng};
use bulwark_store::{BLOCK_PAYLOAD, EntropyError, IoError, Store, StoreError};
use common::{bytes, contents, format, key, open, reopen};

#[test]
fn a_read_error_during_open_is_an_io_error() {
    let mut store = format(16);
    store.put(b"a", &bytes(1, 100)).unwrap();
    store.commit().unwrap();
    let data_block = store.blocks_in_use().next().unwrap();
    let image = store.into_device().image();
    for index in [0, 1, data_block] {
        let mut disk = MemDisk::from_image(image.clone());
        disk.fail_reads_of(index);
        assert_eq!(open(disk).err(), Some(StoreError::Io(IoError)), "block {index}");
    }
}

#[test]
fn a_write_error_during_commit_keeps_the_committed_state_and_the_staged_changes() {
    let mut store = format(16);
    store.put(b"a", b"1").unwrap();
    store.commit().unwrap();
    let state = store.state();
    // The next commit's first data block goes to the lowest free pool block.
    let free = (2..16).find(|b| !store.blocks_in_use().any(|u| u == *b)).unwrap();
    store.device_mut().fail_writes_of(free);
    store.put(b"a", b"2").unwrap();
    assert_eq!(store.commit(), Err(StoreError::Io(IoError)));
    assert_eq!(store.state(), state);
    assert!(store.has_staged_changes());
    assert_eq!(store.get(b"a"), Some(&b"2"[..]));
    store.device_mut().heal();
    store.commit().unwrap();
    assert_eq!(store.state().generation, state.generation + 1, "no header was attempted: no generation skipped");
    assert_eq!(open(store.into_device()).unwrap().get(b"a"), Some(&b"2"[..]));
}

#[test]
fn a_flush_error_fails_the_commit_and_the_old_state_still_opens() {
    let mut store = format(16);
    store.put(b"a", b"1").unwrap();
    store.commit().unwrap();
    let state = store.state();
    store.device_mut().fail_flushes(true);
    store.put(b"a", b"2").unwrap();
    assert_eq!(store.commit(), Err(StoreError::Io(IoError)));
    assert_eq!(store.state(), state);
    let mut disk = store.into_device();
    disk.power_cycle(bulwark_store::testing::CutPolicy::LoseUnflushed);
    disk.heal();
    let reopened = open(disk).unwrap();
    assert_eq!(reopened.state(), state);
    assert_eq!(reopened.get(b"a"), Some(&b"1"[..]));
}

#[test]
fn an_entropy_failure_fails_the_commit_before_anything_is_written() {
    let failing = Rc::new(Cell::new(false));
    let switch = failing.clone();
    let mut rng = TestRng::new(5);
    let entropy = move |buf: &mut [u8]| {
        if switch.get() {
            return Err(EntropyError);
        }
        rng.fill_bytes(buf);
        Ok(())
    };
    let mut store = Store::format(MemDisk::new(16), &key(), entropy).unwrap();
    failing.set(true);
    store.put(b"a", b"1").unwrap();
    let before = store.device().mutations();
    assert_eq!(store.commit(), Err(StoreError::Entropy(EntropyError)));
    assert_eq!(store.device().mutations(), before, "no block is written without a fresh nonce");
    assert_eq!(store.state().generation, 1);
    failing.set(false);
    store.commit().unwrap();
    assert_eq!(store.state().generation, 2);
}

#[test]
fn format_fails_when_entropy_fails() {
    let result = Store::format(MemDisk::new(16), &key(), |_: &mut [u8]| Err(EntropyError));
    assert_eq!(result.err(), Some(StoreError::Entropy(EntropyError)));
}

#[test]
fn a_full_device_fails_the_commit_and_the_committed_state_stays_usable() {
    // 8 blocks: 2 header slots and a pool of 6, one of which holds the committed index.
    let mut store = format(8);
    store.put(b"small", b"kept").unwrap();
    store.commit().unwrap();
    let state = store.state();
    // Committed: 1 data + 1 index = 2 blocks, so 4 are free. A 4-block blob needs 4 data
    // blocks and a new index block (the small blob keeps its block): 5.
    store.put(b"big", &bytes(1, 4 * BLOCK_PAYLOAD)).unwrap();
    assert_eq!(store.commit(), Err(StoreError::Full { needed: 5, free: 4 }));
    assert_eq!(store.state(), state);
    assert_eq!(store.get(b"small"), Some(&b"kept"[..]));
    // Make room and go on.
    store.put(b"big", &bytes(1, 3 * BLOCK_PAYLOAD)).unwrap();
    store.commit().unwrap();
    let reopened = open(store.into_device()).unwrap();
    assert_eq!(reopened.state().generation, state.generation + 1);
    assert_eq!(reopened.get(b"big").unwrap(), bytes(1, 3 * BLOCK_PAYLOAD));
    assert_eq!(reopened.get(b"small"), Some(&b"kept"[..]));
}

#[test]
fn a_blob_that_can_never_fit_is_full_even_on_an_empty_store() {
    let mut store = format(8);
    store.put(b"big", &bytes(1, 6 * BLOCK_PAYLOAD)).unwrap();
    assert_eq!(store.commit(), Err(StoreError::Full { needed: 7, free: 5 }));
    store.remove(b"big").unwrap();
    store.commit().unwrap();
    assert!(open(store.into_device()).unwrap().is_empty());
}

#[test]
fn a_device_that_fails_everything_cannot_be_formatted() {
    let mut disk = MemDisk::new(16);
    disk.cut_power_after(0);
    assert_eq!(Store::format(disk, &key(), TestRng::new(1)).err(), Some(StoreError::Io(IoError)));
}

#[test]
fn reads_after_open_never_touch_the_device() {
    let mut store = format(16);
    store.put(b"a", &bytes(1, 2 * BLOCK_PAYLOAD)).unwrap();
    store.commit().unwrap();
    let mut store = open(store.into_device()).unwrap();
    let expected = contents(&store);
    for index in 0..16 {
        store.device_mut().fail_reads_of(index);
    }
    assert_eq!(contents(&store), expected);
}

#[test]
fn only_a_blank_device_is_formatted_at_open() {
    // A new disk image: formatted, then found again.
    let (mut store, how) = Store::open_or_format(MemDisk::new(16), &key(), TestRng::new(1)).unwrap();
    assert_eq!(how, bulwark_store::Opened::Formatted);
    store.put(b"a", b"kept").unwrap();
    store.commit().unwrap();
    let image = store.into_device().image();
    let (store, how) = Store::open_or_format(MemDisk::from_image(image.clone()), &key(), TestRng::new(2)).unwrap();
    assert_eq!((how, store.get(b"a")), (bulwark_store::Opened::Existing, Some(&b"kept"[..])));
    // Headers the host scribbled over are not a blank disk: the store is refused, not
    // replaced by an empty one.
    let mut disk = MemDisk::from_image(image);
    disk.set_block(0, &[0x55; 4096]);
    disk.set_block(1, &[0x55; 4096]);
    assert_eq!(Store::open_or_format(disk, &key(), TestRng::new(3)).err(), Some(StoreError::NotFormatted));
    // Nor is other data beside a zeroed slot 1 (only this key's torn first header is:
    // tests/crash.rs).
    let mut disk = MemDisk::new(16);
    disk.set_block(0, &[0x55; 4096]);
    assert_eq!(Store::open_or_format(disk, &key(), TestRng::new(3)).err(), Some(StoreError::NotFormatted));
    // Nor is a device that fails to say what its headers hold.
    let mut disk = MemDisk::new(16);
    disk.fail_reads_of(1);
    assert_eq!(Store::open_or_format(disk, &key(), TestRng::new(4)).err(), Some(StoreError::Io(IoError)));
}

/// A caller whose staging failed half-way (the SVSM's heap ran out between two puts)
/// drops what it staged instead of committing half a change, and the store goes on.
#[test]
fn discard_puts_the_committed_contents_back_and_the_next_commit_holds_none_of_it() {
    let mut store = format(32);
    store.put(b"kept", b"1").unwrap();
    store.put(b"gone", b"2").unwrap();
    store.commit().unwrap();
    let committed = contents(&store);
    let state = store.state();

    store.put(b"kept", b"changed").unwrap();
    store.put(b"kept", b"changed twice").unwrap();
    assert!(store.remove(b"gone").unwrap());
    store.put(b"new", b"3").unwrap();
    assert!(store.remove(b"new").unwrap());
    store.put(b"new too", b"4").unwrap();
    assert!(store.discard());
    assert_eq!(contents(&store), committed);
    assert!(!store.has_staged_changes());
    store.commit().unwrap();
    assert_eq!(store.state(), state, "nothing staged: no new generation");

    store.put(b"other", b"5").unwrap();
    store.commit().unwrap();
    let mut expected = committed;
    expected.insert(b"other".to_vec(), b"5".to_vec());
    assert_eq!(contents(&reopen(store)), expected, "only what was staged after the discard");
}

/// After a failed commit that wrote no header, the staged changes can be dropped; the
/// discarded blobs' blocks are the committed ones and still read back.
#[test]
fn a_commit_that_failed_before_its_header_can_be_discarded() {
    let mut store = format(32);
    store.put(b"a", &bytes(1, 3 * BLOCK_PAYLOAD)).unwrap();
    store.commit().unwrap();
    let committed = contents(&store);
    store.device_mut().fail_flushes(true);
    store.put(b"a", &bytes(2, 100)).unwrap();
    assert_eq!(store.commit(), Err(StoreError::Io(IoError)));
    assert!(store.discard());
    store.device_mut().heal();
    store.put(b"b", b"x").unwrap();
    store.commit().unwrap();
    let mut expected = committed;
    expected.insert(b"b".to_vec(), b"x".to_vec());
    assert_eq!(contents(&reopen(store)), expected);
}

/// A header write that failed may still have landed: its state may be the newest on
/// disk, so the store refuses to forget what it holds.
#[test]
fn a_commit_whose_header_write_failed_cannot_be_discarded() {
    let mut store = format(32);
    store.put(b"a", b"1").unwrap();
    store.commit().unwrap();
    // Generation 2 went to slot 1; the next header goes to slot 0.
    store.device_mut().fail_writes_of(0);
    store.put(b"a", b"2").unwrap();
    assert_eq!(store.commit(), Err(StoreError::Io(IoError)));
    assert!(!store.discard());
    assert_eq!(store.get(b"a"), Some(&b"2"[..]), "kept staged");
    assert!(store.has_staged_changes());
    store.device_mut().heal();
    store.commit().unwrap();
    assert!(store.discard(), "nothing in doubt once a later header landed");
    assert_eq!(open(store.into_device()).unwrap().get(b"a"), Some(&b"2"[..]));
}
