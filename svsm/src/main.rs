//! The bare-metal Bulwark SVSM image.
//!
//! Built for `x86_64-unknown-none` and booted by QEMU through its PVH entry (`cargo xtask
//! boot`). Everything that touches the machine lives in `bare/`, one small module per
//! concern; the decisions are made by the `kernel` crate. On the host this binary only
//! says how to build it, so that `cargo build --workspace` stays green.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod bare;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("bulwark-svsm is a bare-metal image: build and boot it with `cargo xtask boot`");
    std::process::exit(2);
}
