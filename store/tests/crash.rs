//! Power cuts: at every write or flush of a commit, with unflushed writes lost, kept or
//! torn, the next open gives exactly the previous or the new state.

mod common;

use std::collections::BTreeMap;

use bulwark_store::testing::{CutPolicy, MemDisk, SharedDisk, TestRng};
use bulwark_store::{BLOCK_PAYLOAD, Opened, Store, StoreState};
use common::{TestStore, bytes, contents, format, key, open};

/// One commit's changes: `Some(data)` puts, `None` removes.
type Step = Vec<(&'static [u8], Option<Vec<u8>>)>;

fn script() -> Vec<Step> {
    vec![
        vec![(b"permall", Some(bytes(1, 3 * BLOCK_PAYLOAD + 10))), (b"volatilestate", Some(bytes(2, 100)))],
        vec![(b"permall", Some(bytes(3, 2 * BLOCK_PAYLOAD)))],
        vec![(b"volatilestate", None), (b"loglevel", Some(vec![3]))],
        vec![(b"permall", Some(bytes(4, 5 * BLOCK_PAYLOAD))), (b"empty", Some(Vec::new()))],
        vec![(b"permall", None), (b"loglevel", None), (b"empty", None)],
    ]
}

fn apply(store: &mut TestStore, step: &Step) {
    for (name, change) in step {
        match change {
            Some(data) => store.put(name, data).unwrap(),
            None => {
                store.remove(name).unwrap();
            }
        }
    }
}

const POLICIES: [fn(u64) -> CutPolicy; 4] = [
    |_| CutPolicy::LoseUnflushed,
    |_| CutPolicy::KeepUnflushed,
    CutPolicy::Scramble,
    |n| CutPolicy::Scramble(n + 1_000_003),
];

#[test]
fn every_power_cut_in_a_scripted_sequence_leaves_the_old_or_the_new_state() {
    let mut image = format(40).into_device().image();
    for (k, step) in script().iter().enumerate() {
        let old_store = open(MemDisk::from_image(image.clone())).unwrap();
        let (old, old_state) = (contents(&old_store), old_store.state());

        // The uncut commit: how many writes and flushes it takes, and what it gives.
        let mut store = old_store;
        apply(&mut store, step);
        let new = contents(&store);
        let start = store.device().mutations();
        store.commit().unwrap();
        let total = store.device().mutations() - start;
        let next_image = store.into_device().image();

        let (mut saw_old, mut saw_new) = (false, false);
        for cut in 0..=total {
            for policy in POLICIES {
                let mut store = open(MemDisk::from_image(image.clone())).unwrap();
                apply(&mut store, step);
                store.device_mut().cut_power_after(cut);
                let committed = store.commit();
                assert_eq!(committed.is_ok(), cut == total, "step {k} cut {cut}: commit reports the cut");
                let mut disk = store.into_device();
                disk.power_cycle(policy(cut));
                let reopened = open(disk).unwrap_or_else(|e| panic!("step {k} cut {cut} {:?}: {e:?}", policy(cut)));
                let got = contents(&reopened);
                if got == new && reopened.state().generation == old_state.generation + 1 {
                    saw_new = true;
                } else {
                    assert_eq!(got, old, "step {k} cut {cut} {:?}: neither old nor new", policy(cut));
                    assert_eq!(reopened.state(), old_state);
                    assert!(committed.is_err(), "a successful commit must not be lost");
                    saw_old = true;
                }
            }
        }
        assert!(saw_old && saw_new, "step {k}: the cuts cover both outcomes");
        image = next_image;
    }
}

#[test]
fn after_a_cut_the_store_goes_on_committing() {
    let mut store = format(40);
    store.put(b"a", &bytes(1, 2 * BLOCK_PAYLOAD)).unwrap();
    store.commit().unwrap();
    for cut in 0..6 {
        store.put(b"a", &bytes(cut + 10, 2 * BLOCK_PAYLOAD)).unwrap();
        store.device_mut().cut_power_after(cut);
        assert!(store.commit().is_err());
        let mut disk = store.into_device();
        disk.power_cycle(CutPolicy::Scramble(cut));
        store = open(disk).unwrap();
        store.put(b"b", &[cut as u8]).unwrap();
        store.commit().unwrap();
        let state = store.state();
        store = open(store.into_device()).unwrap();
        assert_eq!(store.get(b"b"), Some(&[cut as u8][..]));
        assert_eq!(store.state(), state);
    }
}

#[test]
fn a_failed_header_write_makes_the_retry_take_a_fresh_generation() {
    let mut store = format(40);
    store.put(b"a", b"1").unwrap();
    store.commit().unwrap();
    let before = store.state();
    // Generation 2 sits in slot 1, so the next header goes to slot 0.
    store.device_mut().fail_writes_of(0);
    store.put(b"a", b"2").unwrap();
    assert!(matches!(store.commit(), Err(bulwark_store::StoreError::Io(_))));
    assert_eq!(store.state(), before, "the committed state is unchanged");
    assert_eq!(store.get(b"a"), Some(&b"2"[..]), "the change stays staged");
    store.device_mut().heal();
    store.commit().unwrap();
    assert_eq!(store.state().generation, before.generation + 2, "generation 3 may exist somewhere: skip it");
    let reopened = open(store.into_device()).unwrap();
    assert_eq!(reopened.state().generation, before.generation + 2);
    assert_eq!(reopened.get(b"a"), Some(&b"2"[..]));
}

/// The header write reached the disk but the flush after it failed: the store cannot know
/// whether the new state is there. Whatever the retry does and wherever it is cut, the
/// disk must open to one of the three states.
#[test]
fn a_retry_after_an_unknown_header_outcome_never_breaks_the_state_that_may_be_on_disk() {
    let mut base = format(40);
    base.put(b"a", &bytes(1, 2 * BLOCK_PAYLOAD)).unwrap();
    base.commit().unwrap();
    let image = base.into_device().image();

    // Measure the first attempt: its last mutation is the final flush.
    let mut probe = open(MemDisk::from_image(image.clone())).unwrap();
    probe.put(b"a", &bytes(2, 2 * BLOCK_PAYLOAD)).unwrap();
    let start = probe.device().mutations();
    probe.commit().unwrap();
    let attempt_len = probe.device().mutations() - start;

    let mut outcomes: BTreeMap<u64, usize> = BTreeMap::new();
    for retry_cut in 0..12 {
        for policy in POLICIES {
            let mut store = open(MemDisk::from_image(image.clone())).unwrap();
            let old = (contents(&store), store.state());
            store.put(b"a", &bytes(2, 2 * BLOCK_PAYLOAD)).unwrap();
            let first = contents(&store);
            store.device_mut().cut_power_after(attempt_len - 1);
            assert!(store.commit().is_err());
            // The device comes back with the header write applied; the store stays open.
            store.device_mut().power_cycle(CutPolicy::KeepUnflushed);
            store.put(b"b", b"retry").unwrap();
            let second = contents(&store);
            store.device_mut().cut_power_after(retry_cut);
            let retried = store.commit();
            let mut disk = store.into_device();
            disk.power_cycle(policy(retry_cut));
            let reopened = open(disk).unwrap_or_else(|e| panic!("retry cut {retry_cut}: {e:?}"));
            let got = (contents(&reopened), reopened.state());
            let generation = got.1.generation;
            if got == old {
                assert!(retried.is_err());
            } else if generation == old.1.generation + 1 {
                assert_eq!(got.0, first, "retry cut {retry_cut}: the first attempt's state is whole");
                assert!(retried.is_err());
            } else {
                assert_eq!(generation, old.1.generation + 2, "retry cut {retry_cut}");
                assert_eq!(got.0, second);
            }
            *outcomes.entry(generation - old.1.generation).or_default() += 1;
        }
    }
    assert!(outcomes.contains_key(&1) && outcomes.contains_key(&2), "{outcomes:?}");
}

#[test]
fn a_successful_commit_survives_a_cut_right_after_it() {
    let mut store = format(16);
    store.put(b"a", b"1").unwrap();
    store.commit().unwrap();
    let state: StoreState = store.state();
    let mut disk = store.into_device();
    disk.power_cycle(CutPolicy::LoseUnflushed);
    let store = open(disk).unwrap();
    assert_eq!(store.state(), state);
    assert_eq!(store.get(b"a"), Some(&b"1"[..]));
}

#[test]
fn a_power_cut_while_a_blank_disk_is_formatted_leaves_a_disk_that_opens_or_formats_again() {
    // The first boot on a new disk formats it; a cut that tears the first header write
    // (a sector with this key's key check, no MAC) must not leave a disk that never opens.
    let total = format(16).into_device().mutations();
    let policies =
        [CutPolicy::LoseUnflushed, CutPolicy::KeepUnflushed].into_iter().chain((0..16).map(CutPolicy::Scramble));
    let mut formatted_again = 0;
    for policy in policies {
        for cut in 0..=total {
            let disk = SharedDisk::new(MemDisk::new(16));
            disk.lock().cut_power_after(cut);
            let formatted = Store::format(disk.clone(), &key(), TestRng::new(1)).is_ok();
            assert_eq!(formatted, cut == total, "cut {cut}");
            disk.lock().power_cycle(policy);
            let (store, how) = Store::open_or_format(disk, &key(), TestRng::new(2))
                .unwrap_or_else(|e| panic!("cut {cut} {policy:?}: {e:?}"));
            assert!(store.is_empty(), "cut {cut} {policy:?}");
            assert_eq!(store.state().generation, 1);
            formatted_again += usize::from(how == Opened::Formatted);
        }
    }
    assert!(formatted_again > 0);
}

#[test]
fn a_first_header_write_that_lost_its_first_sector_formats_again() {
    // A drive that persists a 4 KiB write's sectors out of order can keep the MAC's
    // sector of the first header and lose the one with its fields: that disk held no
    // state and must format again, not be refused at every boot.
    let mut disk = format(16).into_device();
    let torn: Vec<u8> = disk.block(0).unwrap().iter().enumerate().map(|(i, b)| if i < 512 { 0 } else { *b }).collect();
    assert!(torn.iter().any(|b| *b != 0), "the MAC's sector is kept");
    disk.set_block(0, &torn);
    let (store, how) = Store::open_or_format(disk, &key(), TestRng::new(2)).unwrap();
    assert_eq!((how, store.state().generation), (Opened::Formatted, 1));
}
