//! The guest side of the SVSM interface (spec 58019 sections 4-6), written the way Linux
//! drives an SVSM (docs/facts.md section 2), so that testing against it tests what real guests
//! do.
//!
//! The calling convention: load RAX and the argument registers, set SVSM_CALL_PENDING = 1,
//! request the SVSM (VMGEXIT on SNP, VMMCALL on the `svm` platform), then atomically
//! exchange SVSM_CALL_PENDING with 0. A previous value of 1 means the SVSM never ran the
//! call. INCOMPLETE and BUSY are retried; a "more memory needed" result is answered with
//! a deposit when the caller supplies pages.
//!
//! How memory and the gate are reached is the [`Transport`]'s business: the model
//! implements it in hosted tests, the test guest with real instructions.
#![no_std]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod client;
pub mod discovery;
pub mod ocp;
pub mod vtpm;

pub use client::{CallError, Client, GuestFault, PageSource, Regs, Transport};
