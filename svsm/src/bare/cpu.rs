//! The CPU's own instructions the SVSM needs outside SVM and SEV-SNP: CPUID, MSRs,
//! RDRAND, control registers, descriptor tables, the FPU state, halting and waiting.
//! Each wrapper is one instruction or one fixed sequence, with the reason it is sound
//! beside it. The SVM instructions are `svm::vmrun`'s, the SEV-SNP ones `snp::instr`'s,
//! port I/O is `x86::port`'s; the other `asm!` in the SVSM is code that must be written in
//! assembly as a whole (the boot entry, exception stubs, the AP trampoline).
#![expect(unsafe_code, reason = "the CPU's own instructions")]

use core::arch::asm;

/// CPUID leaf `leaf`, subleaf `sub`: (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// The low half of a 64-bit register (EAX of RAX), or of a value the CPU splits into
/// EDX:EAX.
pub fn low32(v: u64) -> u32 {
    u32::try_from(v & 0xFFFF_FFFF).unwrap_or(0)
}

/// The high half of a 64-bit value (EDX of EDX:EAX).
pub fn high32(v: u64) -> u32 {
    u32::try_from(v >> 32).unwrap_or(0)
}

/// Read an MSR.
///
/// # Safety
/// `msr` must exist on this CPU (reading a missing MSR raises #GP).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; RDMSR has no memory effects.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
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
        asm!("wrmsr", in("ecx") msr, in("eax") low32(value), in("edx") high32(value), options(nomem, nostack, preserves_flags))
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

/// The time-stamp counter now (RDTSC).
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Stop this CPU for good: interrupts off, HLT forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: HLT with interrupts off parks the CPU; it touches no memory.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) }
    }
}

/// Sleep until an interrupt arrives, then mask interrupts again. An interrupt that
/// becomes pending after the caller's last check still ends the sleep: STI's
/// one-instruction shadow holds it until HLT.
pub fn wait_for_interrupt() {
    // SAFETY: the interrupts the SVSM takes at CPL 0 (its wake-up IPI, its timer, spurious
    // ones) have handlers that just acknowledge and return; CLI restores the SVSM's interrupts-off state. No memory is touched.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// Raise #BP (INT3): the exception path hands it to the GDB stub, which returns here when
/// GDB continues.
pub fn breakpoint() {
    // SAFETY: the #BP handler returns to the next instruction with the registers as the
    // debugger left them; it is only reached with the stub attached.
    unsafe { asm!("int3") };
}

/// Raise #UD (UD2): the exception handler reports it and ends the run.
pub fn invalid_opcode() -> ! {
    // SAFETY: UD2 raises #UD, whose handler never returns here.
    unsafe { asm!("ud2", options(nomem, nostack, noreturn)) }
}

/// The faulting address of the last page fault.
pub fn read_cr2() -> u64 {
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    cr2
}

/// Call into `bytes` as if they were code (`crash=nx`: shows the SVSM's data is not
/// executable; the call faults with an instruction-fetch #PF before the first byte runs).
pub fn call_data(bytes: &[u8]) {
    // SAFETY: not sound on purpose, and only on request: the identity map makes these
    // bytes no-execute, so the CPU raises #PF, whose handler reports it and stops the
    // SVSM. (Were the page executable, the bytes, a RET, would return at once.)
    unsafe {
        let f: extern "C" fn() = core::mem::transmute(bytes.as_ptr());
        f();
    }
}

/// The page-table root this CPU runs on.
pub fn read_cr3() -> u64 {
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    cr3
}

/// Switch to the page tables rooted at physical address `root`.
///
/// Load the null selector into FS and GS (their bases are set by MSR where they are
/// used: a process's FS, the snp platform's GS). On some CPUs this clears the bases.
pub fn null_fs_gs() {
    // SAFETY: in 64-bit mode the SVSM addresses nothing through FS or GS selectors; the
    // null selector is always loadable into them.
    unsafe { asm!("mov fs, {0:x}", "mov gs, {0:x}", in(reg) 0u32, options(nostack, preserves_flags)) };
}

/// # Safety
/// The new tables must map everything the running code uses (code, stack, statics, the
/// heap) where it is mapped now, and must live as long as they are in use.
pub unsafe fn load_cr3(root: u64) {
    // SAFETY: the caller guarantees the new tables keep the running code's mappings.
    unsafe { asm!("mov cr3, {}", in(reg) root, options(nostack, preserves_flags)) };
}

/// Allow x87/SSE instructions on this CPU: CR0.EM and TS clear, MP set; CR4.OSFXSR and
/// OSXMMEXCPT set (SIMD exceptions as #XM).
pub fn enable_sse() {
    // SAFETY: the bits changed only allow x87/SSE instructions and select #XM for SIMD
    // exceptions; the soft-float SVSM code is unaffected.
    unsafe {
        asm!(
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

/// Turn on SMEP and SMAP where the CPU has them (CPUID 7.0:EBX bits 7 and 20), or both
/// whatever CPUID says (`always`: on SEV-SNP CPUID answers from the host's CPUID page,
/// which may hide them, and every CPU that runs SNP, Zen 3 and later, has both): the
/// SVSM then cannot execute, or touch by accident, a page a process can reach. Safe for
/// the SVSM's own mappings: none of them is a user page. Which ones are on.
pub fn enable_smep_smap(always: bool) -> (bool, bool) {
    let (_, ebx, _, _) = cpuid(7, 0);
    let (smep, smap) = (always || ebx & (1 << 7) != 0, always || ebx & (1 << 20) != 0);
    let bits = u64::from(smep) << 20 | u64::from(smap) << 21;
    // SAFETY: only bits the CPU supports are set (SEV-SNP CPUs have both); the SVSM maps no page with U/S set
    // except a process's, which it neither executes nor accesses through their user
    // addresses (it copies through the frames' own identity addresses).
    unsafe {
        asm!(
            "mov {t}, cr4",
            "or {t}, {bits}",
            "mov cr4, {t}",
            t = out(reg) _,
            bits = in(reg) bits,
            options(nostack)
        )
    };
    (smep, smap)
}

/// An FXSAVE area: the x87, MMX and SSE registers.
#[repr(C, align(16))]
pub struct FxArea([u8; 512]);

impl FxArea {
    pub const fn new() -> Self {
        Self([0; 512])
    }

    /// The clean control words with every x87 and XMM register's bytes set to `byte`:
    /// state a guest might leave, for the boot's check that no process sees it.
    pub fn with_registers(byte: u8) -> Self {
        let mut a = CLEAN_FPU.0;
        if let Some(registers) = a.get_mut(32..416) {
            registers.fill(byte);
        }
        Self(a)
    }
}

impl Default for FxArea {
    fn default() -> Self {
        Self::new()
    }
}

/// Save this CPU's x87/SSE registers into `area` (FXSAVE).
pub fn fxsave(area: &mut FxArea) {
    // SAFETY: FXSAVE writes exactly the 512-byte, 16-byte aligned area it is given.
    unsafe { asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack, preserves_flags)) };
}

/// Load the x87/SSE registers from `area` (FXRSTOR): an area [`fxsave`] filled, or an
/// all-zero one.
pub fn fxrstor(area: &FxArea) {
    // SAFETY: FXRSTOR reads the 512-byte aligned area; the areas this module can make
    // (FXSAVE's, or zeros) hold no reserved MXCSR bits, so it cannot fault.
    unsafe { asm!("fxrstor64 [{}]", in(reg) area.0.as_ptr(), options(nostack, preserves_flags)) };
}

/// This CPU's debug address registers DR0-DR3 (a guest vCPU's: VMRUN leaves them as the
/// guest set them, and the SVSM sets no breakpoints of its own).
pub fn debug_addresses() -> [u64; 4] {
    let (a, b, c, d): (u64, u64, u64, u64);
    // SAFETY: reading DR0-DR3 at CPL 0 has no effect.
    unsafe {
        asm!("mov {}, dr0", "mov {}, dr1", "mov {}, dr2", "mov {}, dr3", out(reg) a, out(reg) b, out(reg) c, out(reg) d,
            options(nomem, nostack, preserves_flags));
    }
    [a, b, c, d]
}

/// Load DR0-DR3 for the guest vCPU about to run here.
pub fn set_debug_addresses(addresses: &[u64; 4]) {
    let [a, b, c, d] = *addresses;
    // SAFETY: DR0-DR3 hold addresses only; DR7, which enables them, is the guest's in
    // its VMCB and the host's is loaded at every #VMEXIT, so no breakpoint fires in the
    // SVSM.
    unsafe {
        asm!("mov dr0, {}", "mov dr1, {}", "mov dr2, {}", "mov dr3, {}", in(reg) a, in(reg) b, in(reg) c, in(reg) d,
            options(nomem, nostack, preserves_flags));
    }
}

/// Save this CPU's x87/SSE registers into a guest vCPU's image (FXSAVE).
pub fn fxsave_vcpu(image: &mut ::svm::vcpu::FpuImage) {
    // SAFETY: FXSAVE writes exactly the 512-byte, 16-byte aligned image it is given.
    unsafe { asm!("fxsave64 [{}]", in(reg) image.as_mut_ptr(), options(nostack, preserves_flags)) };
}

/// Load a guest vCPU's x87/SSE registers from its image (FXRSTOR).
pub fn fxrstor_vcpu(image: &::svm::vcpu::FpuImage) {
    // SAFETY: FXRSTOR reads the 512-byte aligned image; only FXSAVE and the reset state
    // fill one (`FpuImage`), so it holds no reserved MXCSR bits and cannot fault.
    unsafe { asm!("fxrstor64 [{}]", in(reg) image.as_ptr(), options(nostack, preserves_flags)) };
}

/// The x87/SSE state the C ABI promises, every register zero: FCW 0x37F (FNINIT's),
/// MXCSR 0x1F80 (every exception masked, round to nearest).
static CLEAN_FPU: FxArea = {
    let mut a = [0u8; 512];
    a[0] = 0x7F;
    a[1] = 0x03;
    a[24] = 0x80;
    a[25] = 0x1F;
    FxArea(a)
};

/// Give the x87/SSE unit that clean state. Every register is zeroed, not only the
/// control words (FNINIT and LDMXCSR left ST0-7 and XMM0-15 as they were): on svm the
/// guest's registers are live in the CPU while the SVSM runs, and a process must not
/// read them (found by review). AVX's upper halves are out of a process's reach (CR4.
/// OSXSAVE is off, so AVX instructions #UD).
pub fn reset_fpu() {
    fxrstor(&CLEAN_FPU);
}

/// A descriptor-table pointer (LGDT/LIDT operand).
#[repr(C, packed)]
#[derive(Debug)]
pub struct DescriptorPtr {
    pub limit: u16,
    pub base: u64,
}

/// Load the GDT, the task register and the IDT.
///
/// # Safety
/// The tables must live forever and be well formed: the GDT keeps the code and data
/// selectors the running code uses where they are, `tss` names an available TSS
/// descriptor in it, and every IDT gate points at a handler in this image.
pub unsafe fn load_tables(gdt: &DescriptorPtr, idt: &DescriptorPtr, tss: u16) {
    // SAFETY: the caller guarantees the tables are well formed and live forever.
    unsafe {
        asm!(
            "lgdt [{gdt}]",
            "ltr {tss:x}",
            "lidt [{idt}]",
            gdt = in(reg) gdt,
            idt = in(reg) idt,
            tss = in(reg) tss,
            options(readonly, nostack, preserves_flags),
        );
    }
}

/// The caller's instruction pointer and frame pointer (for a backtrace of here).
#[inline(always)]
pub fn here() -> (u64, u64) {
    let (rip, rbp): (u64, u64);
    // SAFETY: reading RIP (via LEA) and RBP has no side effects.
    unsafe {
        asm!("lea {}, [rip]", "mov {}, rbp", out(reg) rip, out(reg) rbp, options(nomem, nostack, preserves_flags))
    };
    (rip, rbp)
}

pub const MSR_EFER: u32 = 0xC000_0080;
pub const MSR_VM_HSAVE_PA: u32 = 0xC001_0117;
pub const EFER_SVME: u64 = 1 << 12;
