//! Fuzz the state disk's driver: a virtio-blk device whose host follows a script of
//! misbehaviour (requests never answered, error statuses, missing status bytes, answers to
//! requests never made, extra or malformed used-ring entries, descriptors overwritten)
//! under a driver making reads, writes and flushes the input chooses. Nothing may panic,
//! a lost device gets no request again, and an honest answer reads back what the disk
//! holds. The harness is `bulwark_blk::testing::fuzz_driver`, which the crate's tests also
//! run on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(broken) = bulwark_blk::testing::fuzz_driver(data) {
        panic!("the disk driver broke a promise: {broken}");
    }
});
