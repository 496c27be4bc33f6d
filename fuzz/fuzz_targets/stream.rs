//! Fuzz a migration destination: a state stream of mostly well-formed items with fields
//! the fuzzer picks, fed in pieces, against a model SVSM (see `bulwark_model::fuzz_stream`).
#![no_main]

/// SVSM code runs with the bare-metal heap's limit, so exhaustion is explored too.
#[global_allocator]
static HEAP: bulwark_model::heap::CountingHeap = bulwark_model::heap::CountingHeap;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bulwark_model::fuzz_stream::run_stream(data);
});
