//! The SNP guest-message layer: what the SVSM needs to talk to a PSP.
//!
//! [`message`] is the guest-message page both sides use (the SVSM to ask, a PSP to
//! answer): a 0x60-byte header, the payload AES-256-GCM encrypted under a VMPCK with the
//! message sequence number as IV and the header's tail as associated data. The request
//! and response payloads (MSG_REPORT_REQ/RSP) are laid out in `abi::attest::guest_message`.
//!
//! The other side, a software PSP that signs reports (P-384), is `bulwark-softpsp`: the
//! kernel depends on this crate only, so no signing code is in its dependency graph.
//!
//! `no_std`, no `alloc`: the SVSM links it.

#![no_std]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod key;
pub mod message;
