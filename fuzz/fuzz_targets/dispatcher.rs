//! Fuzz the SVSM request dispatcher: arbitrary registers, guest memory and host
//! behaviour through the model (see `bulwark_model::fuzz`).
#![no_main]

/// SVSM code runs with the bare-metal heap's limit, so exhaustion is explored too.
#[global_allocator]
static HEAP: bulwark_model::heap::CountingHeap = bulwark_model::heap::CountingHeap;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bulwark_model::fuzz::run_dispatcher(data);
});
