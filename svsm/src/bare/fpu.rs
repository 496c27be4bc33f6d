//! The floating-point and SSE state, which the SVSM's own (soft-float) code never touches
//! but the C code of the vTPM uses.
//!
//! The guest's x87/SSE registers live in the CPU while the SVSM runs (VMRUN does not
//! switch them), so C code runs inside [`with_c_state`]: the guest's state is saved with
//! FXSAVE, the C code gets a clean one (FNINIT, default MXCSR) and the FS base its
//! stack-protector canary sits behind, and FXRSTOR gives the guest its registers back.
//! SSE is enabled (CR0.MP, CR4.OSFXSR/OSXMMEXCPT) on every CPU; XSAVE and AVX stay off, so
//! OpenSSL's CPU probe picks SSE code paths and FXSAVE covers every register C can touch.

use core::sync::atomic::{AtomicU64, Ordering};

const MSR_FS_BASE: u32 = 0xC000_0100;

/// The block FS points at while C code runs: glibc-built code reads its stack-protector
/// canary at FS:0x28.
#[repr(C, align(64))]
struct ThreadBlock([u64; 8]);
static mut THREAD_BLOCK: ThreadBlock = ThreadBlock([0; 8]);
static CANARY: AtomicU64 = AtomicU64::new(0);

/// FXSAVE area.
#[repr(C, align(16))]
struct FxArea([u8; 512]);

/// Allow SSE instructions on this CPU (CR0.EM clear, MP set, TS clear; CR4.OSFXSR and
/// OSXMMEXCPT set).
pub fn enable_sse() {
    // SAFETY: the bits changed only allow x87/SSE instructions and select #XM for SIMD
    // exceptions; the soft-float kernel code is unaffected.
    unsafe {
        core::arch::asm!(
            "mov {t}, cr0",
            "and {t}, ~((1 << 2) | (1 << 3))",
            "or {t}, 1 << 1",
            "mov cr0, {t}",
            "mov {t}, cr4",
            "or {t}, (1 << 9) | (1 << 10)",
            "mov cr4, {t}",
            t = out(reg) _,
            options(nostack)
        )
    };
}

/// Choose the stack-protector canary (once, at boot, before any C code runs).
pub fn set_canary(value: u64) {
    CANARY.store(value, Ordering::Relaxed);
}

/// Run `f` (which calls C code) with the guest's x87/SSE state set aside.
pub fn with_c_state<R>(f: impl FnOnce() -> R) -> R {
    let mut saved = FxArea([0; 512]);
    let block = &raw mut THREAD_BLOCK;
    // SAFETY: FXSAVE writes the 512-byte, 16-aligned area; the thread block is only
    // written here, by the one CPU that holds the SVSM lock while C code runs, and its
    // address goes to FS base, which the SVSM's own code never uses (VMSAVE/VMLOAD keep
    // the guest's FS base apart); FNINIT and LDMXCSR give C the state the ABI promises.
    let old_fs = unsafe {
        core::arch::asm!("fxsave64 [{}]", in(reg) saved.0.as_mut_ptr(), options(nostack));
        (*block).0[5] = CANARY.load(Ordering::Relaxed);
        let old_fs = super::cpu::rdmsr(MSR_FS_BASE);
        super::cpu::wrmsr(MSR_FS_BASE, block as u64);
        let mxcsr: u32 = 0x1F80;
        core::arch::asm!("fninit", "ldmxcsr [{}]", in(reg) &mxcsr, options(nostack));
        old_fs
    };
    let r = f();
    // SAFETY: restores exactly what was saved above.
    unsafe {
        super::cpu::wrmsr(MSR_FS_BASE, old_fs);
        core::arch::asm!("fxrstor64 [{}]", in(reg) saved.0.as_ptr(), options(nostack));
    }
    r
}
