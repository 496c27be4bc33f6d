//! Fuzz the persistent store: the input is a disk the host controls (raw, or a genuine
//! store with bytes flipped) plus a script of get/put/remove/commit/power-cut operations.
//! Opening must answer with a store or a named error, never panic, and a store that opens
//! must keep its promises (a cut commit leaves the old or the new state). The harness is
//! `bulwark_store::testing::fuzz_store`, which the store's tests also run on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(broken) = bulwark_store::testing::fuzz_store(data) {
        panic!("store broke a promise: {broken}");
    }
});
