//! The bare-metal Bulwark SVSM image.
//!
//! Built for `x86_64-unknown-none` and booted by QEMU through its PVH entry (`cargo xtask
//! boot`). Everything that touches the machine lives in `bare/`, one small module per
//! concern; the decisions are made by the `kernel` crate. On the host this binary only
//! says how to build it, so that `cargo build --workspace` stays green.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
// Guest and host input reach the bare-metal SVSM: no panics, no indexing that can go out
// of bounds, no silent truncation. The crate has no unit tests (`test = false`); the few
// places that exist to stop the machine say so with `#[expect(clippy::panic, reason)]`.
// The build script is a crate of its own and not covered (see build.rs).
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

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("bulwark-svsm is a bare-metal image: build and boot it with `cargo xtask boot`");
    std::process::exit(2);
}
