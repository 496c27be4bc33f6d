//! A software SEV-SNP machine for hosted tests, fuzzing and benchmarks.
//!
//! - `rmp` (re-exported from `bulwark-rmp`): one RMP entry per 4 KiB page (assigned, validated, 2 MiB size, VMSA flag,
//!   per-VMPL permissions) and the architectural semantics of PVALIDATE and RMPADJUST,
//!   including their return codes and CF on "no change".
//! - [`machine`]: guest memory, the RMP, guest vCPUs and their VMSAs, the secrets page,
//!   and the host's powers (reassigning pages, running vCPUs). It implements the
//!   kernel's `Platform` trait, and checks the SVSM's side of the calling convention.
//! - [`world`]: a machine plus a running Bulwark kernel plus guest vCPUs that call it
//!   through the real calling convention (the `guest` crate), with knobs for a host that
//!   enters the SVSM spuriously, with a wrong exit code, or races on guest memory.
//! - [`conformance_env`]: the conformance suite's environment on a fresh world per case,
//!   on any of the three platforms.
//! - [`svm_host`]: the `svm` platform (`bulwark-svm`) over the machine.
//! - [`heap`]: the bare-metal heap's limit for SVSM code, for test binaries that install
//!   its counting allocator.
//!
//! The model is the reference for what the hardware would do; where the architecture
//! documents are silent the choice is written next to the code.

pub mod attest_demo;
pub mod conformance_env;
pub mod fuzz;
pub mod fuzz_stream;
pub mod fuzz_syscalls;
pub mod heap;
pub mod machine;
pub mod memory;
pub mod psp_model;
pub mod snp_cpus;
pub mod snp_host;
pub mod svm_host;
pub mod user_host;
pub mod vtpm_model;
/// The RMP (shared with the svm platform).
pub use rmp;
pub mod world;

pub use machine::Machine;
pub use world::{World, WorldConfig};
