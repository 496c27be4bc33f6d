//! The boot check's service module. The SVSM starts it once per mode (RDI):
//! - 0, hello: system calls through SYSCALL (LOG, CLOCK, MMAP, a BATCH), then EXIT 0;
//! - 1.. the isolation probes: each does one thing a process must not be able to do, and
//!   must be ended by a fault before its EXIT (which would report the probe failed).
//!
//! The SVSM (svsm/src/bare/user/) reads how each run ended and prints the verdicts the
//! boot check counts.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod bare;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("bulwark-probe is a service module for the SVSM: `cargo xtask boot` packages and runs it");
    std::process::exit(2);
}
