//! The vTPM as a service process (docs/syscalls.md "The vTPM as a process").
//!
//! libtpms and libcrypto (Debian's static archives, position-independent) run here at
//! CPL 3 on the C runtime of `libc.rs` and csupport/libc.c: memory from an MMAP'd heap,
//! time from CLOCK, entropy from GETRANDOM, text to LOG. The process receives each TPM
//! command over its channel (handle 0), runs it, and replies; it never sees guest memory,
//! the secrets page or any other process. The SVSM keeps the protocol checks and copies
//! (kernel/src/protocols/vtpm.rs) and reaches this process through `svsm/src/bare/vtpm.rs`.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
// The guest's TPM commands pass through here: no panics, no unchecked indexing, no silent
// truncation.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod bare;
#[cfg(target_os = "none")]
mod libc;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("bulwark-vtpm-service is a service module for the SVSM: `cargo xtask boot` packages and runs it");
    std::process::exit(2);
}
