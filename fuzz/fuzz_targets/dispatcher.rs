//! Fuzz the SVSM request dispatcher: arbitrary registers, guest memory and host
//! behaviour through the model (see `bulwark_model::fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bulwark_model::fuzz::run_dispatcher(data);
});
