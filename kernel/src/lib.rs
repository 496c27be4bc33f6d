//! The Bulwark SVSM kernel: everything that decides, nothing that touches hardware.
//!
//! The request loop (spec 58019 section 5), the protocols, guest-page ownership and
//! validation tracking, the vCPU registry and the SVSM page pool live here. Hardware
//! operations (PVALIDATE, RMPADJUST, VMSA access, copies of guest memory) are reached
//! only through [`platform::Platform`], implemented by the `snp` and `svm` platforms on
//! bare metal and by the `model` crate in hosted tests. Protocol code is platform-blind.
//!
//! Trust boundary: every value that arrives through the platform (guest registers, guest
//! memory, host behaviour) is hostile. Nothing reachable from it panics; every failure
//! becomes a result code (see [`error`]).
#![no_std]
// No panics from guest or host input: no unwrap/expect/panic, no indexing that can go out
// of bounds, no silent truncation (tests may do all of these).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::cast_possible_truncation
    )
)]

extern crate alloc;

pub mod addr;
pub mod bitmap;
pub mod caller;
pub mod error;
pub mod guest_memory;
pub mod heap;
pub mod log_ring;
pub mod migration;
pub mod pages;
pub mod platform;
pub mod pool;
pub mod protocols;
pub mod psp_channel;
pub mod request;
pub mod rollback;
pub mod sealed;
pub mod stats;
pub mod svsm;
pub mod user;
pub mod vcpu;
pub mod vtpm_lineage;

pub use svsm::{Svsm, SvsmConfig};
