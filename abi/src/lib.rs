//! Bulwark ABI: every byte layout and constant Bulwark exchanges with a guest, a host or
//! the hardware, and nothing else.
//!
//! This crate is deliberately logic-free (house style 8): `#[repr(C)]` zerocopy structs
//! with a compile-time size assertion each and offset assertions where the spec gives
//! offsets, open enums for codes that come from outside (unknown values stay
//! representable), and bit accessors for packed fields. Validation of values belongs to
//! the layer that receives them (the kernel), not here.
//!
//! Sources: AMD 58019 "Secure VM Service Module for SEV-SNP Guests" rev 0.60, with the
//! rev 1.00 facts recorded in `docs/facts.md` (attestation with SHA-512, the
//! single-service call, `SVSM_ERR_BUSY`, the Linux vTPM buffer layout), the SNP firmware
//! ABI (secrets page), the AMD APM (VMSA layout, PVALIDATE/RMPADJUST codes) and the
//! COCONUT migration-page proposal (`migration`).
#![no_std]

#[cfg(not(target_endian = "little"))]
compile_error!("Bulwark's wire structures use native integers and assume little-endian");

pub mod attest;
pub mod calling_area;
pub mod core_protocol;
pub mod ghcb;
pub mod guid;
pub mod hw;
pub mod igvm;
pub mod migration;
pub mod ocp;
pub mod protocol;
pub mod result;
pub mod secrets;
pub mod syscall;
pub mod vmcb;
pub mod vmsa;
pub mod vtpm;

/// Size of the smallest page, the unit of every gpa check.
pub const PAGE_SIZE: u64 = 4096;
/// Size of a large page.
pub const PAGE_SIZE_2M: u64 = 2 * 1024 * 1024;
/// Number of 4 KiB pages in a 2 MiB page.
pub const PAGES_PER_2M: u64 = PAGE_SIZE_2M / PAGE_SIZE;

/// Compile-time layout check: `size!(Type, bytes)`.
#[macro_export]
macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}

/// Compile-time layout check: `assert_offset!(Type, field, offset)`.
#[macro_export]
macro_rules! assert_offset {
    ($t:ty, $f:ident, $n:expr) => {
        const _: () = assert!(core::mem::offset_of!($t, $f) == $n);
    };
}
