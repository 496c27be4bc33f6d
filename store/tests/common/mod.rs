//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use bulwark_store::testing::{MemDisk, TestRng};
use bulwark_store::{Store, StoreError, StoreKey};

pub type TestStore = Store<MemDisk, TestRng>;

pub fn key() -> StoreKey {
    StoreKey::new([0x11; 32])
}

pub fn format(blocks: u64) -> TestStore {
    Store::format(MemDisk::new(blocks), &key(), TestRng::new(1)).unwrap()
}

pub fn open(disk: MemDisk) -> Result<TestStore, StoreError> {
    Store::open(disk, &key(), TestRng::new(2))
}

pub fn reopen(store: TestStore) -> TestStore {
    open(store.into_device()).unwrap()
}

/// Everything the store holds, as a map.
pub fn contents(store: &TestStore) -> BTreeMap<Vec<u8>, Vec<u8>> {
    store.names().map(|name| (name.to_vec(), store.get(name).unwrap().to_vec())).collect()
}

/// Deterministic bytes that differ per seed.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    TestRng::new(seed).fill_bytes(&mut out);
    out
}
