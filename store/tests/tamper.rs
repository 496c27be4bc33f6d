//! A host that changes the disk: every change to the newest state is caught; an older
//! authentic state opens as what it is (older generation) for the verifier to refuse.

mod common;

use bulwark_store::testing::{MemDisk, TestRng};
use bulwark_store::{BLOCK_PAYLOAD, BLOCK_SIZE, Store, StoreError, StoreKey, Tamper};
use common::{TestStore, bytes, contents, format, key, open};

const BLOCKS: u64 = 40;

/// A store after several commits, so both header slots are valid, some pool blocks are
/// free and some were used before. Also gives the image before the last commit.
fn populated() -> (TestStore, Vec<u8>) {
    let mut store = format(BLOCKS);
    store.put(b"permall", &bytes(1, 3 * BLOCK_PAYLOAD + 5)).unwrap();
    store.put(b"volatilestate", &bytes(2, 700)).unwrap();
    store.commit().unwrap();
    store.put(b"permall", &bytes(3, 2 * BLOCK_PAYLOAD)).unwrap();
    store.commit().unwrap();
    let older = store.device().image();
    store.put(b"volatilestate", &bytes(4, BLOCK_PAYLOAD + 1)).unwrap();
    store.put(b"loglevel", &[4]).unwrap();
    store.commit().unwrap();
    (store, older)
}

fn tampered(what: Tamper) -> Option<StoreError> {
    Some(StoreError::Tampered { what })
}

#[test]
fn every_bit_flip_is_detected_or_falls_in_an_unused_block() {
    let (store, _) = populated();
    let (expected, state) = (contents(&store), store.state());
    let used: Vec<u64> = store.blocks_in_use().collect();
    let image = store.into_device().image();
    let mut fell_back = Vec::new();
    let mut unused_seen = 0;
    for index in 0..BLOCKS {
        // First byte (nonce or magic), middle (ciphertext), last byte (tag or MAC).
        for bit in [0, BLOCK_SIZE * 4 + 3, BLOCK_SIZE * 8 - 1] {
            let mut disk = MemDisk::from_image(image.clone());
            disk.flip_bit(index, bit);
            let result = open(disk);
            if used.contains(&index) {
                assert_eq!(result.err(), tampered(Tamper::Block { index }), "block {index} bit {bit}");
            } else if index < 2 {
                match result {
                    Ok(s) if s.state() == state => assert_eq!(contents(&s), expected),
                    Ok(s) => {
                        // The newest header lost: the older one is used. Only the verifier
                        // can tell, from the older generation.
                        assert_eq!(s.state().generation, state.generation - 1, "slot {index}");
                        fell_back.push(index);
                    }
                    Err(e) => panic!("header slot {index} bit {bit}: {e:?}"),
                }
            } else {
                let s = result.unwrap_or_else(|e| panic!("unused block {index}: {e:?}"));
                assert_eq!((contents(&s), s.state()), (expected.clone(), state));
                unused_seen += 1;
            }
        }
    }
    fell_back.dedup();
    assert_eq!(fell_back.len(), 1, "exactly the newest slot matters: {fell_back:?}");
    assert!(unused_seen > 0, "some blocks are unused");
}

#[test]
fn swapping_two_used_blocks_is_detected() {
    let (store, _) = populated();
    let used: Vec<u64> = store.blocks_in_use().collect();
    let mut disk = store.into_device();
    let (a, b) = (used[1], used[3]);
    disk.swap_blocks(a, b);
    let error = open(disk).err();
    assert!(
        error == tampered(Tamper::Block { index: a }) || error == tampered(Tamper::Block { index: b }),
        "{error:?}"
    );
}

#[test]
fn replaying_a_block_from_an_older_image_is_detected() {
    let (store, older) = populated();
    let used: Vec<u64> = store.blocks_in_use().collect();
    let mut disk = store.into_device();
    let older = MemDisk::from_image(older);
    let replayed = *used
        .iter()
        .find(|index| older.block(**index) != disk.block(**index))
        .expect("the last commit rewrote some block");
    disk.set_block(replayed, older.block(replayed).unwrap());
    assert_eq!(open(disk).err(), tampered(Tamper::Block { index: replayed }));
}

#[test]
fn a_stale_header_whose_blocks_were_reused_is_tampering_not_a_mix() {
    // Generation 2's header put back, generation 3's destroyed: the only authentic header
    // is generation 2's, and generation 4 reused some of its blocks.
    let (store, older) = populated();
    let state = store.state();
    let mut disk = store.into_device();
    let older = MemDisk::from_image(older);
    // Generations alternate slots: generation 2 was written where generation 4 now is,
    // and the older image still has it there (a header MAC binds its slot).
    let slot = newest_slot(&disk, state);
    disk.set_block(slot, older.block(slot).unwrap());
    disk.set_block(1 - slot, &[0; BLOCK_SIZE]);
    let older_generation = open(MemDisk::from_image(older.image())).map(|s| s.state().generation);
    assert_eq!(older_generation, Ok(state.generation - 1), "the older image itself is whole");
    assert!(matches!(open(disk).err(), Some(StoreError::Tampered { what: Tamper::Block { .. } })));
}

#[test]
fn a_whole_older_image_opens_to_its_older_generation() {
    let (store, older) = populated();
    let newest = store.state();
    let reopened = open(MemDisk::from_image(older)).unwrap();
    assert_eq!(reopened.state().generation, newest.generation - 1, "what the verifier must refuse");
    assert_ne!(reopened.state().root, newest.root);
    assert_eq!(reopened.get(b"loglevel"), None);
}

/// The slot holding the newest header: the one whose loss changes what opens.
fn newest_slot(disk: &MemDisk, newest: bulwark_store::StoreState) -> u64 {
    let slots: Vec<u64> = (0..2)
        .filter(|slot| {
            let mut copy = MemDisk::from_image(disk.image());
            copy.set_block(*slot, &[0; BLOCK_SIZE]);
            open(copy).map(|s| s.state()) != Ok(newest)
        })
        .collect();
    assert_eq!(slots.len(), 1, "exactly one slot holds the newest header");
    slots[0]
}

#[test]
fn destroying_the_newest_header_opens_the_previous_state() {
    let (store, older) = populated();
    let newest = store.state();
    let expected_older = contents(&open(MemDisk::from_image(older)).unwrap());
    let mut disk = store.into_device();
    disk.set_block(newest_slot(&disk, newest), &[0; BLOCK_SIZE]);
    let reopened = open(disk).unwrap();
    // The previous commit wrote only into blocks the state before it did not use, so the
    // previous state is whole; only the verifier can refuse its generation.
    assert_eq!(reopened.state().generation, newest.generation - 1);
    assert_eq!(contents(&reopened), expected_older);
}

#[test]
fn a_header_copied_into_the_other_slot_does_not_authenticate() {
    let (store, _) = populated();
    let newest = store.state();
    let disk = store.into_device();
    let slot = newest_slot(&disk, newest);
    let mut copy = MemDisk::from_image(disk.image());
    let header = copy.block(slot).unwrap().to_vec();
    copy.set_block(1 - slot, &header);
    copy.set_block(slot, &[0; BLOCK_SIZE]);
    assert_eq!(open(copy).err(), tampered(Tamper::Header));
}

#[test]
fn a_truncated_device_is_detected() {
    let (store, _) = populated();
    let highest = store.blocks_in_use().max().unwrap();
    let mut disk = store.into_device();
    disk.truncate(highest);
    assert_eq!(open(disk).err(), tampered(Tamper::BeyondDevice { index: highest }));
    let (store, _) = populated();
    let mut disk = store.into_device();
    disk.truncate(1);
    assert_eq!(open(disk).err(), Some(StoreError::NotFormatted), "no room for the headers");
}

#[test]
fn the_wrong_key_says_wrong_key() {
    let (store, _) = populated();
    let result = Store::open(store.into_device(), &StoreKey::new([0x22; 32]), TestRng::new(3));
    assert_eq!(result.err(), Some(StoreError::WrongKey));
}

#[test]
fn an_all_zero_device_is_not_formatted() {
    assert_eq!(open(MemDisk::new(16)).err(), Some(StoreError::NotFormatted));
    assert_eq!(open(MemDisk::new(0)).err(), Some(StoreError::NotFormatted));
}

#[test]
fn a_corrupt_header_under_the_right_key_is_tampering() {
    let mut disk = format(16).into_device();
    disk.flip_bit(0, 8 * 100);
    assert_eq!(open(disk).err(), tampered(Tamper::Header));
}

#[test]
fn a_header_of_a_future_version_is_reported() {
    let mut disk = format(16).into_device();
    disk.block_mut(0).unwrap()[8] = 9;
    assert_eq!(open(disk).err(), Some(StoreError::UnsupportedVersion { version: 9 }));
}

#[test]
fn random_bytes_are_refused_without_a_panic() {
    for seed in 0..200u64 {
        let mut rng = TestRng::new(seed);
        let blocks = rng.below(12) as usize;
        let mut image = vec![0; blocks * BLOCK_SIZE];
        rng.fill_bytes(&mut image);
        if seed % 2 == 0 && blocks >= 2 {
            // A plausible magic and version, so decoding goes further.
            for slot in 0..2 {
                image[slot * BLOCK_SIZE..][..12].copy_from_slice(b"BULWSTOR\x01\0\0\0");
            }
        }
        let error = open(MemDisk::from_image(image)).err();
        assert!(
            matches!(
                error,
                Some(StoreError::NotFormatted | StoreError::WrongKey | StoreError::UnsupportedVersion { .. })
            ),
            "seed {seed}: {error:?}"
        );
    }
}

#[test]
fn a_device_that_lies_on_read_is_caught() {
    let (store, _) = populated();
    let target = store.blocks_in_use().last().unwrap();
    let mut disk = store.into_device();
    disk.set_read_hook(Some(Box::new(move |index, block| {
        if index == target {
            block[100] ^= 0x80;
        }
        Ok(())
    })));
    assert_eq!(open(disk).err(), tampered(Tamper::Block { index: target }));
}

#[test]
fn a_block_of_another_store_under_the_same_key_is_refused() {
    let (store, _) = populated();
    let used: Vec<u64> = store.blocks_in_use().collect();
    let disk = store.into_device();
    // A second store, same key, same history but its own id and nonces.
    let mut other = Store::format(MemDisk::new(BLOCKS), &key(), TestRng::new(77)).unwrap();
    other.put(b"permall", &bytes(1, 3 * BLOCK_PAYLOAD + 5)).unwrap();
    other.commit().unwrap();
    let other = other.into_device();
    let index = used[0];
    let mut mixed = MemDisk::from_image(disk.image());
    mixed.set_block(index, other.block(index).unwrap());
    assert_eq!(open(mixed).err(), tampered(Tamper::Block { index }));
}

#[test]
fn nonces_come_from_entropy_so_a_rolled_back_disk_does_not_repeat_them() {
    // Two branches from one image, as a host that rolls the disk back and watches the
    // next commit would see them: same content, same generation, same blocks. The nonces
    // differ because they are drawn fresh, not derived from anything on the disk.
    let (store, _) = populated();
    let image = store.into_device().image();
    let branch = |seed: u64| {
        let mut store = Store::open(MemDisk::from_image(image.clone()), &key(), TestRng::new(seed)).unwrap();
        store.put(b"permall", &bytes(9, 2 * BLOCK_PAYLOAD)).unwrap();
        store.commit().unwrap();
        let used: Vec<u64> = store.blocks_in_use().collect();
        let disk = store.into_device();
        used.into_iter().map(|index| (index, disk.block(index).unwrap()[..12].to_vec())).collect::<Vec<_>>()
    };
    let (a, b) = (branch(100), branch(200));
    assert_eq!(
        a.iter().map(|(index, _)| *index).collect::<Vec<_>>(),
        b.iter().map(|(index, _)| *index).collect::<Vec<_>>()
    );
    let before: Vec<(u64, Vec<u8>)> = {
        let disk = MemDisk::from_image(image.clone());
        (2..BLOCKS).map(|index| (index, disk.block(index).unwrap()[..12].to_vec())).collect()
    };
    let mut rewritten = 0;
    for ((index, nonce_a), (_, nonce_b)) in a.iter().zip(&b) {
        let old = &before.iter().find(|(i, _)| i == index).unwrap().1;
        if nonce_a != old {
            rewritten += 1;
            assert_ne!(nonce_a, nonce_b, "block {index} was written in both branches with one nonce");
        }
    }
    assert!(rewritten >= 3, "two data blocks and the index were rewritten");
}
