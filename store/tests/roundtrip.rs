//! What a user stores is what a later open gives back.

mod common;

use bulwark_store::testing::{MemDisk, TestRng};
use bulwark_store::{BLOCK_PAYLOAD, MAX_BLOB_LEN, MAX_NAME_LEN, MIN_BLOCKS, Store, StoreError};
use common::{bytes, contents, format, key, open, reopen};

#[test]
fn format_gives_an_empty_store_at_generation_one() {
    let store = format(16);
    assert_eq!(store.state().generation, 1);
    assert!(store.is_empty());
    let store = reopen(store);
    assert_eq!(store.state().generation, 1);
    assert!(store.is_empty());
    assert!(!store.has_staged_changes());
}

#[test]
fn put_commit_reopen_gives_the_blob_back() {
    let mut store = format(16);
    store.put(b"permall", b"tpm state").unwrap();
    assert_eq!(store.get(b"permall"), Some(&b"tpm state"[..]), "staged changes are visible");
    assert_eq!(store.state().generation, 1, "not committed yet");
    store.commit().unwrap();
    assert_eq!(store.state().generation, 2);
    let store = reopen(store);
    assert_eq!(store.get(b"permall"), Some(&b"tpm state"[..]));
    assert_eq!(store.state().generation, 2);
}

#[test]
fn uncommitted_changes_are_not_on_disk() {
    let mut store = format(16);
    store.put(b"a", b"1").unwrap();
    store.commit().unwrap();
    store.put(b"b", b"2").unwrap();
    store.remove(b"a").unwrap();
    let store = reopen(store);
    assert_eq!(store.get(b"a"), Some(&b"1"[..]));
    assert_eq!(store.get(b"b"), None);
}

#[test]
fn remove_takes_the_blob_away_after_commit() {
    let mut store = format(16);
    store.put(b"a", b"1").unwrap();
    store.put(b"b", b"2").unwrap();
    store.commit().unwrap();
    assert!(store.remove(b"a").unwrap());
    assert!(!store.remove(b"a").unwrap(), "already gone");
    assert!(!store.remove(b"never").unwrap(), "never there");
    store.commit().unwrap();
    let store = reopen(store);
    assert_eq!(store.get(b"a"), None);
    assert_eq!(store.get(b"b"), Some(&b"2"[..]));
    assert_eq!(store.len(), 1);
}

#[test]
fn many_blobs_round_trip() {
    let mut store = format(1024);
    for i in 0..300u64 {
        store.put(format!("blob-{i}").as_bytes(), &bytes(i, (i as usize * 37) % 700)).unwrap();
    }
    store.commit().unwrap();
    let expected = contents(&store);
    let store = reopen(store);
    assert_eq!(contents(&store), expected);
    assert_eq!(store.len(), 300);
}

#[test]
fn blobs_larger_than_a_block_round_trip() {
    let mut store = format(256);
    let sizes = [BLOCK_PAYLOAD - 1, BLOCK_PAYLOAD, BLOCK_PAYLOAD + 1, 3 * BLOCK_PAYLOAD, 64 * 1024 + 7];
    for (i, size) in sizes.iter().enumerate() {
        store.put(&[i as u8], &bytes(i as u64, *size)).unwrap();
    }
    store.commit().unwrap();
    let store = reopen(store);
    for (i, size) in sizes.iter().enumerate() {
        assert_eq!(store.get(&[i as u8]).unwrap(), bytes(i as u64, *size), "size {size}");
    }
}

#[test]
fn an_index_larger_than_one_block_uses_index_nodes() {
    // 85+ leaves force two levels of nodes above the leaves: a 1.4 MiB blob needs 345
    // data refs (16 KiB of index, 5 leaves), so use many small blobs with long names.
    let mut store = format(4096);
    for i in 0..400u64 {
        let name = format!("{i:0>1000}");
        store.put(name.as_bytes(), &bytes(i, 10)).unwrap();
    }
    store.commit().unwrap();
    let in_use = store.blocks_in_use().count();
    // 400 data blocks + ~99 leaves + 2 nodes + 1 root.
    assert!(in_use > 400 + 85, "{in_use} blocks: the index spans more than one node");
    let expected = contents(&store);
    let store = reopen(store);
    assert_eq!(contents(&store), expected);
}

#[test]
fn empty_blob_and_empty_name_round_trip() {
    let mut store = format(16);
    store.put(b"", b"no name").unwrap();
    store.put(b"empty", b"").unwrap();
    store.commit().unwrap();
    let store = reopen(store);
    assert_eq!(store.get(b""), Some(&b"no name"[..]));
    assert_eq!(store.get(b"empty"), Some(&b""[..]));
    assert_eq!(store.get(b"missing"), None);
}

#[test]
fn names_of_odd_lengths_and_bytes_round_trip() {
    let mut store = format(64);
    let names: Vec<Vec<u8>> =
        [1, 3, 7, 255, 256, 1023, MAX_NAME_LEN].iter().map(|len| bytes(*len as u64, *len)).collect();
    for (i, name) in names.iter().enumerate() {
        store.put(name, &[i as u8; 3]).unwrap();
    }
    store.commit().unwrap();
    let store = reopen(store);
    for (i, name) in names.iter().enumerate() {
        assert_eq!(store.get(name), Some(&[i as u8; 3][..]));
    }
    let listed: Vec<&[u8]> = store.names().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(listed, sorted.iter().map(Vec::as_slice).collect::<Vec<_>>(), "names come in byte order");
}

#[test]
fn too_long_a_name_or_blob_is_refused_and_nothing_is_staged() {
    let mut store = format(16);
    assert_eq!(store.put(&vec![b'x'; MAX_NAME_LEN + 1], b""), Err(StoreError::TooLarge));
    assert_eq!(store.put(b"big", &vec![0; MAX_BLOB_LEN + 1]), Err(StoreError::TooLarge));
    assert!(!store.has_staged_changes());
    assert!(store.is_empty());
}

#[test]
fn many_commits_reuse_blocks_and_count_generations() {
    let mut store = format(32);
    for i in 0..200u64 {
        store.put(b"permall", &bytes(i, 9000)).unwrap();
        store.put(b"volatilestate", &bytes(i + 1000, 300)).unwrap();
        store.commit().unwrap();
        assert_eq!(store.state().generation, i + 2);
    }
    // 200 commits of 5 blocks on a 30-block pool: blocks were reused many times.
    let store = reopen(store);
    assert_eq!(store.state().generation, 201);
    assert_eq!(store.get(b"permall").unwrap(), bytes(199, 9000));
    assert_eq!(store.get(b"volatilestate").unwrap(), bytes(1199, 300));
}

#[test]
fn commit_without_changes_keeps_the_generation_and_writes_nothing() {
    let mut store = format(16);
    let before = store.device().mutations();
    store.commit().unwrap();
    assert_eq!(store.state().generation, 1);
    assert_eq!(store.device().mutations(), before);
    store.remove(b"absent").unwrap();
    store.commit().unwrap();
    assert_eq!(store.state().generation, 1, "removing nothing stages nothing");
}

#[test]
fn unchanged_blobs_keep_their_blocks_across_commits() {
    let mut store = format(64);
    store.put(b"big", &bytes(1, 5 * BLOCK_PAYLOAD)).unwrap();
    store.commit().unwrap();
    let first: Vec<u64> = store.blocks_in_use().collect();
    store.put(b"small", b"x").unwrap();
    let before = store.device().mutations();
    store.commit().unwrap();
    // One data block, one index leaf, a flush, the header, a flush.
    assert_eq!(store.device().mutations() - before, 5);
    let second: Vec<u64> = store.blocks_in_use().collect();
    assert_eq!(first.iter().filter(|b| second.contains(b)).count(), 5, "the big blob's five blocks stay");
}

#[test]
fn root_changes_with_every_commit_and_binds_the_state() {
    let mut store = format(16);
    let empty = store.state();
    store.put(b"a", b"1").unwrap();
    store.commit().unwrap();
    let one = store.state();
    assert_ne!(one.root, empty.root);
    assert_eq!(one.store_id, empty.store_id, "a commit keeps the store id");
    let store = reopen(store);
    assert_eq!(store.state(), one, "open reports the state commit reported");
    assert_eq!(store.state().store_id, store.store_id());
}

#[test]
fn each_store_gets_its_own_id() {
    let a = format(16);
    let b = Store::format(MemDisk::new(16), &key(), TestRng::new(99)).unwrap();
    assert_ne!(a.store_id(), b.store_id());
    assert_eq!(reopen(a).store_id(), Store::format(MemDisk::new(16), &key(), TestRng::new(1)).unwrap().store_id());
}

#[test]
fn format_refuses_a_device_too_small() {
    let result = Store::format(MemDisk::new(MIN_BLOCKS - 1), &key(), TestRng::new(1));
    assert_eq!(result.err(), Some(StoreError::DeviceTooSmall));
    assert!(Store::format(MemDisk::new(MIN_BLOCKS), &key(), TestRng::new(1)).is_ok());
}

#[test]
fn format_replaces_an_earlier_store_with_a_higher_generation() {
    let mut old = format(32);
    for i in 0..5 {
        old.put(b"a", &[i]).unwrap();
        old.commit().unwrap();
    }
    let disk = old.into_device();
    let fresh = Store::format(disk, &key(), TestRng::new(7)).unwrap();
    let reopened = open(fresh.into_device()).unwrap();
    assert_eq!(reopened.state().generation, 1);
    assert!(reopened.is_empty(), "neither old header survives");
}
