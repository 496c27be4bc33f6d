//! The floating-point and SSE state, which the SVSM's own (soft-float) code never touches
//! but the vTPM's C code (in its service process) uses.
//!
//! The guest's x87/SSE registers live in the CPU while the SVSM runs (VMRUN does not
//! switch them), so a process that may use them runs inside [`with_c_state`]: the
//! guest's state is saved with FXSAVE, the process gets a clean one (FNINIT, default
//! MXCSR), and FXRSTOR gives the guest its registers back; the FS base (which the process
//! points at its thread page) is put back too. SSE is enabled (CR0.MP, CR4.OSFXSR/
//! OSXMMEXCPT) on every CPU; XSAVE and AVX stay off, so OpenSSL's CPU probe picks SSE code
//! paths and FXSAVE covers every register C can touch. The process keeps no x87/SSE
//! state across its system calls (docs/syscalls.md). The instructions are `cpu`'s.
#![expect(unsafe_code, reason = "the FS base around a process's run")]

use super::cpu::{self, FxArea};

const MSR_FS_BASE: u32 = 0xC000_0100;

pub use super::cpu::enable_sse;

/// Run `f` (which runs a process that may use the FPU) with the guest's x87/SSE state
/// and FS base set aside.
pub fn with_c_state<R>(f: impl FnOnce() -> R) -> R {
    let mut saved = FxArea::new();
    cpu::fxsave(&mut saved);
    // SAFETY: FS_BASE exists on every x86-64 CPU; reading it has no side effects.
    let old_fs = unsafe { cpu::rdmsr(MSR_FS_BASE) };
    cpu::reset_fpu();
    let r = f();
    // SAFETY: restores the FS base read above.
    unsafe { cpu::wrmsr(MSR_FS_BASE, old_fs) };
    cpu::fxrstor(&saved);
    r
}
