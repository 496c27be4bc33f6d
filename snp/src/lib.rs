//! The `snp` platform: everything an SVSM does on SEV-SNP hardware above the few
//! instructions only the chip has.
//!
//! The instructions (PVALIDATE, RMPADJUST, VMGEXIT, the GHCB MSR, memory through the
//! SVSM's own mappings) are the `SnpHw` trait. The bare-metal SVSM implements it in one
//! small unsafe module (`svsm/src/bare/snp/instr.rs`); the model implements it with its
//! software RMP and a software host (`model/src/snp_host.rs`), so all of this crate runs
//! in the model's tests, the conformance suite included.
//!
//! - `ghcb`: the GHCB page and the MSR protocol (negotiation, registration, page-state
//!   changes, termination);
//! - `cpuid`: answers CPUID from the launch's CPUID page, never from the host;
//! - `device`: a device's registers through the host (GHCB MMIO events), for the state
//!   disk's transport;
//! - `vc`: what the SVSM does with a #VC raised by its own code (CPUID, port I/O, MSR,
//!   RDTSC);
//! - `vmsa`: initial register states (the guest's reset state at VMPL1, the SVSM's own);
//! - `platform`: `SnpPlatform`, the kernel's `Platform` on top of all this, one handle
//!   per CPU;
//! - `shared`: `SnpShared`, what all CPUs' handles share, each part behind its own leaf
//!   lock that no host exit happens under;
//! - `console`: log lines to the serial port, one host exit per line, without a lock;
//! - `guest_request`: messages to the PSP through the host, and the certificate cache;
//! - `launch`: taking over an IGVM launch (boot block, calling area, first vCPU).
#![no_std]
// Guest and host input reach this crate: no panics, no indexing that can go out of
// bounds, no silent truncation (tests may do all of these).
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

pub mod console;
pub mod cpuid;
pub mod device;
pub mod ghcb;
mod guest_request;
pub mod hw;
pub mod launch;
pub mod platform;
pub mod shared;
pub mod vc;
pub mod vmsa;

pub use hw::{Fault, Shared, SnpHw};
pub use platform::{SnpPlatform, StartError};
pub use shared::{LOG_BYTES, SnpConfig, SnpShared};

/// The low 32 bits of a register (EAX of RAX, ECX of RCX).
pub(crate) fn low32(v: u64) -> u32 {
    u32::try_from(v & 0xFFFF_FFFF).unwrap_or(0)
}
