//! Privileged CPU instructions the SVSM needs outside SVM: CPUID and MSRs. Each
//! wrapper is a single instruction; all unsafe CPU access outside `svm::vmrun` lives here.

/// CPUID leaf `leaf`, subleaf `sub`: (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Read an MSR.
///
/// # Safety
/// `msr` must exist on this CPU (reading a missing MSR raises #GP).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; RDMSR has no memory effects.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Write an MSR.
///
/// # Safety
/// `msr` must exist and `value` must be valid for it, and the change must not break the
/// running code's assumptions (e.g. clearing EFER.LME).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the write is valid and harmless to running code.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack, preserves_flags))
    };
}

/// A random u64 from RDRAND, or `None` if the CPU has none or it keeps failing.
pub fn rdrand() -> Option<u64> {
    let (_, _, ecx, _) = cpuid(1, 0);
    if ecx & (1 << 30) == 0 {
        return None;
    }
    for _ in 0..32 {
        let mut v = 0u64;
        // SAFETY: RDRAND exists (CPUID.1:ECX[30]); it writes only `v`.
        if unsafe { core::arch::x86_64::_rdrand64_step(&mut v) } == 1 {
            return Some(v);
        }
    }
    None
}

pub const MSR_EFER: u32 = 0xC000_0080;
pub const MSR_VM_HSAVE_PA: u32 = 0xC001_0117;
pub const EFER_SVME: u64 = 1 << 12;
