//! SNP guest messages and a software PSP.
//!
//! - [`message`]: the guest-message page both sides use (the SVSM to ask, a PSP to
//!   answer): a 0x60-byte header, the payload AES-256-GCM encrypted under a VMPCK with
//!   the message sequence number as IV and the header's tail as associated data.
//! - [`report`]: the version-3 attestation report layout, filled and signed with ECDSA
//!   P-384 over SHA-384 of its first 0x2A0 bytes.
//! - [`SoftPsp`]: the firmware side of MSG_REPORT_REQ, for platforms without AMD's PSP
//!   (the model, and the `svm` platform under QEMU). It checks a request exactly as the
//!   firmware does (key, sequence number, type, sizes) before it answers.
//!
//! `no_std` (with `alloc` nowhere needed): the SVSM links it.

#![no_std]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod message;
pub mod report;
mod soft;

pub use soft::{FirmwareError, SoftPsp};
