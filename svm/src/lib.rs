//! The `svm` platform's decisions (docs/platforms/svm.md): what the SVSM, as the L1
//! hypervisor of its guest under QEMU, lets the guest do, kept apart from the instructions
//! that enforce it (`svsm/src/bare/svm/`) so the host can test every rule.
//!
//! - `msr`: the MSR policy: which MSRs pass through, which the SVSM emulates and how,
//!   which it refuses with #GP;
//! - `msrpm`: the MSR permission map the VMCB points at, built from that policy.
#![no_std]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

#[cfg(test)]
extern crate std;

pub mod msr;
pub mod msrpm;
