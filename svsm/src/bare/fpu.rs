//! The floating-point and SSE state, which the SVSM's own (soft-float) code never touches
//! but the C code of the vTPM uses.
//!
//! The guest's x87/SSE registers live in the CPU while the SVSM runs (VMRUN does not
//! switch them), so C code runs inside [`with_c_state`]: the guest's state is saved with
//! FXSAVE, the C code gets a clean one (FNINIT, default MXCSR) and the FS base its
//! stack-protector canary sits behind, and FXRSTOR gives the guest its registers back.
//! SSE is enabled (CR0.MP, CR4.OSFXSR/OSXMMEXCPT) on every CPU; XSAVE and AVX stay off, so
//! OpenSSL's CPU probe picks SSE code paths and FXSAVE covers every register C can touch.
//! The instructions are `cpu`'s.
#![expect(unsafe_code, reason = "the FS base and the block C code reads its canary from")]

use super::cpu::{self, FxArea};
use core::sync::atomic::{AtomicU64, Ordering};

const MSR_FS_BASE: u32 = 0xC000_0100;

/// The block FS points at while C code runs: glibc-built code reads its stack-protector
/// canary at FS:0x28.
#[repr(C, align(64))]
struct ThreadBlock([u64; 8]);
static mut THREAD_BLOCK: ThreadBlock = ThreadBlock([0; 8]);
static CANARY: AtomicU64 = AtomicU64::new(0);

pub use super::cpu::enable_sse;

/// Choose the stack-protector canary (once, at boot, before any C code runs).
pub fn set_canary(value: u64) {
    CANARY.store(value, Ordering::Relaxed);
}

/// Run `f` (which calls C code) with the guest's x87/SSE state set aside.
pub fn with_c_state<R>(f: impl FnOnce() -> R) -> R {
    let mut saved = FxArea::new();
    cpu::fxsave(&mut saved);
    let block = &raw mut THREAD_BLOCK;
    // SAFETY: the thread block is only written here, with the canary, which is the same
    // for every CPU (C code runs under the vTPM's lock, but two writers of one value
    // would be harmless too); its address goes to FS base, which the SVSM's own code never
    // uses (VMSAVE/VMLOAD keep the guest's FS base apart).
    let old_fs = unsafe {
        (*block).0[5] = CANARY.load(Ordering::Relaxed);
        let old_fs = cpu::rdmsr(MSR_FS_BASE);
        cpu::wrmsr(MSR_FS_BASE, block as u64);
        old_fs
    };
    cpu::reset_fpu();
    let r = f();
    // SAFETY: restores the FS base read above.
    unsafe { cpu::wrmsr(MSR_FS_BASE, old_fs) };
    cpu::fxrstor(&saved);
    r
}
