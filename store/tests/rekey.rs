//! Re-wrapping a store under a new key (after a TCB or SVN update, the SVSM's key changes):
//! the header slots say which key wrote them, the whole state moves to the new key in one
//! commit, and a power cut at any point of that commit leaves a state one of the two keys
//! opens whole.

mod common;

use bulwark_store::testing::{CutPolicy, MemDisk, SharedDisk, TestRng};
use bulwark_store::{BLOCK_PAYLOAD, HeaderClaim, Store, StoreError, StoreKey, header_claims, newest_header_under};
use common::{TestStore, bytes, contents};

const OLD_LABEL: [u8; 16] = [1; 16];
const NEW_LABEL: [u8; 16] = [2; 16];

fn old_key() -> StoreKey {
    StoreKey::labelled([0x11; 32], OLD_LABEL)
}

fn new_key() -> StoreKey {
    StoreKey::labelled([0x22; 32], NEW_LABEL)
}

/// A store under the old key, three commits in, with blobs across several blocks.
fn populated() -> TestStore {
    let mut store = Store::format(MemDisk::new(64), &old_key(), TestRng::new(1)).unwrap();
    store.put(b"permall", &bytes(1, 2 * BLOCK_PAYLOAD + 7)).unwrap();
    store.commit().unwrap();
    store.put(b"loglevel", b"debug").unwrap();
    store.commit().unwrap();
    store.put(b"permall", &bytes(2, BLOCK_PAYLOAD + 1)).unwrap();
    store.commit().unwrap();
    store
}

fn open_with(image: &[u8], key: &StoreKey) -> Result<TestStore, StoreError> {
    Store::open(MemDisk::from_image(image.to_vec()), key, TestRng::new(3))
}

#[test]
fn the_headers_name_the_key_that_wrote_them() {
    let mut disk = populated().into_device();
    let claims = header_claims(&mut disk).unwrap();
    let mut generations: Vec<u64> = claims.iter().flatten().map(|c| c.generation).collect();
    generations.sort();
    assert_eq!(generations, [3, 4]);
    assert!(claims.iter().flatten().all(|c| c.label == OLD_LABEL));
    // A blank disk and a key without a label.
    assert_eq!(header_claims(&mut MemDisk::new(8)).unwrap(), [None, None]);
    let mut unlabelled =
        Store::format(MemDisk::new(8), &StoreKey::new([3; 32]), TestRng::new(1)).unwrap().into_device();
    assert_eq!(header_claims(&mut unlabelled).unwrap()[0], Some(HeaderClaim { generation: 1, label: [0; 16] }));
}

#[test]
fn a_rekeyed_store_opens_only_under_the_new_key_with_everything_in_it() {
    let store = populated();
    let (before, state) = (contents(&store), store.state());
    let mut store = store.rekey(&new_key()).unwrap();
    assert_eq!(store.state().generation, state.generation + 2, "two commits: one header slot each");
    assert_eq!(store.state().store_id, state.store_id);
    assert_eq!(contents(&store), before);
    // It commits on under the new key.
    store.put(b"after", b"update").unwrap();
    store.commit().unwrap();
    let image = store.into_device().image();
    let reopened = open_with(&image, &new_key()).unwrap();
    let mut expected = before.clone();
    expected.insert(b"after".to_vec(), b"update".to_vec());
    assert_eq!(contents(&reopened), expected);
    // Both headers are the new key's now; the old key opens nothing.
    let claims = header_claims(&mut MemDisk::from_image(image.clone())).unwrap();
    assert!(claims.iter().flatten().all(|c| c.label == NEW_LABEL), "{claims:?}");
    assert_eq!(open_with(&image, &old_key()).unwrap_err(), StoreError::WrongKey);
}

#[test]
fn right_after_the_rekey_both_slots_are_the_new_keys_and_the_old_key_opens_nothing() {
    let store = populated().rekey(&new_key()).unwrap();
    let generation = store.state().generation;
    let image = store.into_device().image();
    let claims = header_claims(&mut MemDisk::from_image(image.clone())).unwrap();
    assert!(claims.iter().flatten().all(|c| c.label == NEW_LABEL), "{claims:?}");
    assert_eq!(open_with(&image, &new_key()).unwrap().state().generation, generation);
    // Firmware rolled back to the old TCB gets the old key: it opens nothing.
    assert_eq!(open_with(&image, &old_key()).unwrap_err(), StoreError::WrongKey);
}

#[test]
fn a_power_cut_anywhere_in_a_rekey_leaves_the_whole_state_under_one_of_the_keys() {
    let store = populated();
    let before = contents(&store);
    let image = store.into_device().image();
    let total = {
        let store = open_with(&image, &old_key()).unwrap();
        let start = store.device().mutations();
        let store = store.rekey(&new_key()).unwrap();
        store.device().mutations() - start
    };
    let (mut saw_old, mut saw_new) = (false, false);
    for cut in 0..=total {
        for policy in [CutPolicy::LoseUnflushed, CutPolicy::KeepUnflushed, CutPolicy::Scramble(cut)] {
            let disk = SharedDisk::new(MemDisk::from_image(image.clone()));
            let store = Store::open(disk.clone(), &old_key(), TestRng::new(3)).unwrap();
            disk.lock().cut_power_after(cut);
            let rekeyed = store.rekey(&new_key()).map(drop);
            assert_eq!(rekeyed.is_ok(), cut == total, "cut {cut}: the rekey reports the cut");
            disk.lock().power_cycle(policy);
            let after = disk.image();
            // The caller tries the keys the headers name and takes the one whose authentic
            // header is newest, as the SVSM does (a torn header may name a key it is not
            // authentic under).
            let mut disk = MemDisk::from_image(after.clone());
            let under_old = newest_header_under(&mut disk, &old_key()).unwrap();
            let under_new = newest_header_under(&mut disk, &new_key()).unwrap();
            assert!(under_old.is_some() || under_new.is_some(), "cut {cut} {policy:?}: no authentic header");
            let under_new = under_new > under_old;
            let opened = open_with(&after, &if under_new { new_key() } else { old_key() })
                .unwrap_or_else(|e| panic!("cut {cut} {policy:?}: the newest authentic header's key fails: {e:?}"));
            assert_eq!(contents(&opened), before, "cut {cut} {policy:?}");
            if under_new {
                saw_new = true;
            } else {
                // Under the old key still: the next boot re-wraps again.
                assert!(rekeyed.is_err(), "a rekey that reported success was lost");
                let again = opened.rekey(&new_key()).unwrap();
                assert_eq!(contents(&again), before);
                saw_old = true;
            }
        }
    }
    assert!(saw_old && saw_new, "the cuts reached both outcomes: old {saw_old}, new {saw_new}");
}
