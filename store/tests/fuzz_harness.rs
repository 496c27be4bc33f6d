//! The fuzz target's harness (`fuzz/fuzz_targets/store.rs`) on generated inputs, so it
//! runs without nightly and cargo-fuzz.

use bulwark_store::BLOCK_SIZE;
use bulwark_store::testing::{FUZZ_KEY, FuzzOutcome, MemDisk, TestRng, fuzz_store};
use bulwark_store::{Store, StoreKey};

#[test]
fn the_harness_survives_random_inputs_in_both_modes() {
    for seed in 0..300u64 {
        let mut rng = TestRng::new(seed);
        let len = rng.below(3 * BLOCK_SIZE as u64) as usize;
        let mut input = vec![0; len];
        rng.fill_bytes(&mut input);
        if let Some(mode) = input.first_mut() {
            *mode = seed as u8;
        }
        assert!(fuzz_store(&input).is_ok(), "seed {seed}");
    }
}

#[test]
fn the_harness_runs_its_script_against_a_genuine_store() {
    // Mode 1 with no damage records: the store opens and every script op runs.
    for seed in 0..100u64 {
        let mut rng = TestRng::new(seed);
        let mut script = vec![0; 2 + rng.below(120) as usize];
        rng.fill_bytes(&mut script);
        let mut input = vec![1, 0];
        input.extend_from_slice(&script);
        assert_eq!(
            fuzz_store(&input),
            Ok(FuzzOutcome { opened: true, ops: script.len().min(64).div_ceil(2) }),
            "seed {seed}"
        );
    }
}

#[test]
fn the_harness_damages_the_genuine_store_as_told() {
    // One record flipping a byte of the newest header's MAC region in slot 1 (generation
    // 4 of the harness's store): the older header opens.
    let outcome = fuzz_store(&[1, 1, 1, 0xff, 0x0f, 0x01]).unwrap();
    assert!(outcome.opened);
    // A record that hits a block in use by every state (the first index block written is
    // reused, so pick several): at least one input must fail to open.
    let refused = (2..24u8).filter(|block| !fuzz_store(&[1, 1, *block, 0, 8, 0xff]).unwrap().opened).count();
    assert!(refused > 0);
}

#[test]
fn the_harness_accepts_a_valid_image_in_raw_mode() {
    let mut store = Store::format(MemDisk::new(8), &StoreKey::new(FUZZ_KEY), TestRng::new(4)).unwrap();
    store.put(b"n", b"x").unwrap();
    store.commit().unwrap();
    let mut input = vec![0];
    // A 64-byte script: puts, commits, cuts.
    input.extend((0..64u8).map(|i| if i % 2 == 0 { [1, 3, 4, 0][usize::from(i / 2 % 4)] } else { i }));
    input.extend(store.into_device().image());
    assert_eq!(fuzz_store(&input), Ok(FuzzOutcome { opened: true, ops: 32 }));
}
