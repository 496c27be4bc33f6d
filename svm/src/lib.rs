//! The `svm` platform above the instructions (docs/platforms/svm.md): what the SVSM, as
//! the L1 hypervisor of its guest under QEMU, decides, kept apart from the instructions
//! that carry it out so the host tests every rule, and so the model runs the whole
//! platform under the conformance suite (the same split as `bulwark-snp`).
//!
//! The instructions (VMRUN, CPUID, guest-physical copies, nested page table memory,
//! kicks, the PSP, the console) are the `hw` seam. The bare-metal SVSM implements it in
//! `svsm/src/bare/svm/`; the model implements it in software (`model/src/svm_host.rs`).
//!
//! - `exit`: what each #VMEXIT does (the call gate, CPUID, refusals, yields, kicks);
//! - `msr`, `msrpm`: the MSR policy and the MSR permission map built from it;
//! - `iopm`: the I/O policy (the guest's own ports) and its permission map;
//! - `mmio`: the guest instruction behind an MMIO exit (a page walk and a MOV decoder);
//! - `npt`: nested paging from the RMP, and the format of nested page table entries;
//! - `vmcb`, `vcpu`: a vCPU's VMCB and registers, its launch state and VMSA fields;
//! - `slots`: where each vCPU is (in the SVSM's hands or out on a CPU) and what changes
//!   reach it while it is out, a lock per slot;
//! - `access`: which guest pages the SVSM may copy, readable without a lock;
//! - `shared`: `SvmShared`, what every CPU shares (the seam, the RMP and nested paging
//!   under the page-state lock, the slots, the maps);
//! - `platform`: `SvmPlatform`, the kernel's `Platform` as a per-CPU handle: the shared
//!   part by reference and the vCPU its CPU serves;
//! - `run`: a CPU's run step and the SVSM's side of each exit;
//! - `launch`: the launch layout, checked, and the platform's first state.
//!
//! No lock is held around the platform or the kernel: a CPU serves its vCPU's call with
//! the vCPU in its own hands, and takes a shared lock only for the one operation that
//! needs it (docs/platforms/svm.md, "Locking").
#![no_std]
#![forbid(unsafe_code)]
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
#[cfg(test)]
extern crate std;

pub mod access;
pub mod exit;
pub mod hw;
pub mod iopm;
pub mod launch;
pub mod mmio;
pub mod msr;
pub mod msrpm;
pub mod npt;
pub mod platform;
pub mod run;
pub mod shared;
pub mod slots;
pub mod vcpu;
pub mod vmcb;

#[cfg(test)]
mod test_hw;
#[cfg(test)]
mod test_page;

pub use hw::{Fault, PageMem, SvmCpu, SvmHw};
pub use platform::SvmPlatform;
pub use run::{End, Handled, Taken, Then};
pub use shared::{SvmShared, SvmState};
