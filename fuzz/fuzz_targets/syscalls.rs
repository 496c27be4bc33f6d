//! Fuzz the user-mode system call layer: arbitrary call sequences and arguments against
//! one process (see `bulwark_model::fuzz_syscalls`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bulwark_model::fuzz_syscalls::run_syscalls(data);
});
