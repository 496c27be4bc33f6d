//! A software PSP, for platforms without AMD's: the model, and the `svm` platform under
//! QEMU.
//!
//! - [`report`]: the version-3 attestation report, filled from an [`report::Identity`] and
//!   signed with ECDSA P-384 over SHA-384 of its first 0x2A0 bytes.
//! - [`SoftPsp`]: the firmware side of MSG_REPORT_REQ. It opens and seals pages with the
//!   message layer of `bulwark-psp` (the code the kernel uses for its side) and checks a
//!   request exactly as the firmware does (key, sequence number, type, sizes) before it
//!   answers.
//!
//! `no_std`, no `alloc`: the SVSM links it on the `svm` platform.

#![no_std]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod report;
mod soft;

pub use soft::{FirmwareError, SoftPsp};
