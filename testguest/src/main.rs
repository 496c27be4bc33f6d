//! The test guest: a small no_std L2 kernel booted by the SVSM on the `svm` platform.
//!
//! It finds the SVSM the way spec 58019 section 4 says (CPUID 0x8000_001F EAX[28], MSR
//! 0xC001_F000, the secrets page), then talks to it only through the guest calling
//! convention over real VMMCALLs (`bulwark-guest`), printing one `RESULT` line per check
//! on its own serial port (COM2) and leaving QEMU with its verdict. On the host this
//! binary only says how to run it.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod bare;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("bulwark-testguest is an L2 guest kernel: `cargo xtask boot` runs it under the SVSM");
    std::process::exit(2);
}
