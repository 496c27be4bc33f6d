//! The dispatcher fuzz harness on pseudo-random inputs, so every test run exercises it
//! (the coverage-guided run is `cargo xtask fuzz`).

use bulwark_model::fuzz::{run_dispatcher, run_dispatcher_on};
use bulwark_model::world::PlatformKind;

/// SVSM code runs with the bare-metal heap's limit (`bulwark_model::heap`).
#[global_allocator]
static HEAP: bulwark_model::heap::CountingHeap = bulwark_model::heap::CountingHeap;

/// xorshift64*: deterministic, so a failure reproduces.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[test]
fn random_inputs_keep_the_svsm_serving() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..300 {
        let len = (next(&mut state) % 1024) as usize;
        let data: Vec<u8> = (0..len).map(|_| next(&mut state) as u8).collect();
        run_dispatcher(&data);
    }
}

/// Inputs the fuzzer once found a problem with; each must run clean.
#[test]
fn past_fuzzer_findings_stay_fixed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut ran = 0;
    for entry in std::fs::read_dir(&dir).expect("regression inputs directory") {
        let path = entry.expect("directory entry").path();
        // Found on one platform, they must stay fixed on every one.
        let data = std::fs::read(&path).expect("readable input");
        for platform in [PlatformKind::Model, PlatformKind::Snp, PlatformKind::Svm] {
            run_dispatcher_on(&data, platform);
        }
        ran += 1;
    }
    assert!(ran > 0, "no regression inputs in {}", dir.display());
}

#[test]
fn random_system_call_sequences_keep_the_kernel_consistent() {
    let mut state = 0x0123_4567_89AB_CDEFu64;
    for _ in 0..2000 {
        let len = (next(&mut state) % 2048) as usize;
        let data: Vec<u8> = (0..len).map(|_| next(&mut state) as u8).collect();
        bulwark_model::fuzz_syscalls::run_syscalls(&data);
    }
}

#[test]
fn random_migration_streams_leave_the_destination_consistent() {
    let mut state = 0x5EED_0F57_E4A3_u64;
    bulwark_model::fuzz_stream::run_stream(&[]);
    for _ in 0..300 {
        let len = (next(&mut state) % 4096) as usize;
        let data: Vec<u8> = (0..len).map(|_| next(&mut state) as u8).collect();
        bulwark_model::fuzz_stream::run_stream(&data);
    }
}
