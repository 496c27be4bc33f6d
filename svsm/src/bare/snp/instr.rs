//! The SEV-SNP instructions, one wrapper each, and the two assembly routines the snp
//! platform needs (a memory copy whose faults are recoverable, a stack switch). All the
//! unsafe CPU access of the snp platform lives here.
#![expect(unsafe_code, reason = "the SEV-SNP instructions")]

use super::super::cpu;

/// PVALIDATE of the page at virtual address `va` (identity-mapped, so also its gpa):
/// (EAX, CF).
///
/// # Safety
/// Rescinding validation of a page the SVSM still uses makes its next access fault.
pub unsafe fn pvalidate(va: u64, huge: bool, validate: bool) -> (u32, bool) {
    let (rax, cf): (u64, u8);
    // SAFETY: PVALIDATE only changes the RMP entry of the page (caller's contract);
    // it reads RAX (address), ECX (size) and EDX (validate), writes EAX and CF.
    unsafe {
        core::arch::asm!(
            ".byte 0xF2, 0x0F, 0x01, 0xFF",
            "setc {cf}",
            inout("rax") va => rax,
            in("ecx") u32::from(huge),
            in("edx") u32::from(validate),
            cf = out(reg_byte) cf,
            options(nostack)
        );
    }
    (cpu::low32(rax), cf != 0)
}

/// RMPADJUST of the page at `va` with the attribute operand `attrs`: EAX.
///
/// # Safety
/// Changing permissions or the VMSA flag of a page the SVSM depends on breaks it.
pub unsafe fn rmpadjust(va: u64, huge: bool, attrs: u64) -> u32 {
    let rax: u64;
    // SAFETY: RMPADJUST changes only the RMP entry (caller's contract); RAX address,
    // RCX size, RDX attributes; EAX result.
    unsafe {
        core::arch::asm!(
            ".byte 0xF3, 0x0F, 0x01, 0xFE",
            inout("rax") va => rax,
            in("rcx") u64::from(huge),
            in("rdx") attrs,
            options(nostack)
        );
    }
    cpu::low32(rax)
}

/// RMPQUERY of the page at `va`: (EAX, RDX), RDX holding the permission masks of VMPL1..3
/// (AMD APM vol. 3). Reads the RMP only.
pub fn rmpquery(va: u64) -> (u32, u64) {
    let (rax, rdx): (u64, u64);
    // SAFETY: RMPQUERY changes no state; RAX address in, EAX result and RDX masks out.
    // Only called where CPUID announces it (`SnpState::rmpquery`).
    unsafe {
        core::arch::asm!(
            ".byte 0xF3, 0x0F, 0x01, 0xFD",
            inout("rax") va => rax,
            out("rdx") rdx,
            options(nostack, readonly)
        );
    }
    (cpu::low32(rax), rdx)
}

/// INVLPGB of every translation of this guest's ASID, global ones included (RAX: ASID
/// valid, global; ECX, EDX 0), on every CPU, then TLBSYNC until all have done it.
pub fn flush_tlb_all() {
    const ASID_VALID: u64 = 1 << 2;
    const INCLUDE_GLOBAL: u64 = 1 << 3;
    // SAFETY: invalidating TLB entries changes no memory; the CPUs refill them from the
    // page tables (and the RMP) on their next access.
    unsafe {
        core::arch::asm!(
            ".byte 0x0F, 0x01, 0xFE",
            ".byte 0x0F, 0x01, 0xFF",
            in("rax") ASID_VALID | INCLUDE_GLOBAL,
            in("ecx") 0u32,
            in("edx") 0u32,
            options(nostack)
        );
    }
}

/// VMGEXIT: the host runs until it resumes this CPU.
pub fn vmgexit() {
    // SAFETY: VMGEXIT (REP VMMCALL) exits to the host, which resumes after it with the
    // registers the VMSA holds; memory it may have changed is only the shared pages,
    // which the SVSM reads through volatile copies.
    unsafe { core::arch::asm!(".byte 0xF3, 0x0F, 0x01, 0xD9") };
}

pub const MSR_GHCB: u32 = abi::ghcb::GHCB_MSR;
pub const MSR_GS_BASE: u32 = 0xC000_0101;

pub fn read_ghcb_msr() -> u64 {
    // SAFETY: the GHCB MSR exists on every SEV-ES/SNP guest; reading it has no effect.
    unsafe { cpu::rdmsr(MSR_GHCB) }
}

pub fn write_ghcb_msr(value: u64) {
    // SAFETY: the GHCB MSR only carries a value to the host at the next VMGEXIT.
    unsafe { cpu::wrmsr(MSR_GHCB, value) }
}

/// SEV_STATUS (never intercepted).
pub fn sev_status() -> u64 {
    // SAFETY: SEV_STATUS exists on every AMD CPU with SEV; reading it has no effect.
    unsafe { cpu::rdmsr(abi::ghcb::SEV_STATUS_MSR) }
}

/// This CPU's per-CPU pointer (GS base: part of the VMSA, so never intercepted).
pub fn gs_base() -> u64 {
    // SAFETY: GS_BASE exists in long mode; reading it has no effect.
    unsafe { cpu::rdmsr(MSR_GS_BASE) }
}

/// # Safety
/// Nothing may rely on the previous GS base (the SVSM does not use GS otherwise).
pub unsafe fn set_gs_base(value: u64) {
    // SAFETY: caller's contract; a canonical address.
    unsafe { cpu::wrmsr(MSR_GS_BASE, value) }
}

pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// # Safety
/// `value` must point at page tables that map the running code, stack and data the
/// same way as before.
pub unsafe fn write_cr3(value: u64) {
    // SAFETY: caller's contract.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) value, options(nostack, preserves_flags)) };
}

pub const CR4_OSXSAVE: u64 = 1 << 18;
pub const CR4_PKE: u64 = 1 << 22;

pub fn read_cr4() -> u64 {
    let cr4: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags)) };
    cr4
}

/// XCR0 if the OS enabled XSAVE (CR4.OSXSAVE), else 1 (x87 only).
pub fn xcr0() -> u64 {
    if read_cr4() & CR4_OSXSAVE == 0 {
        return 1;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 is valid once CR4.OSXSAVE is set (checked).
    unsafe { core::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    u64::from(hi) << 32 | u64::from(lo)
}

pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` parks the CPU; it touches no memory.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) }
    }
}

core::arch::global_asm!(
    r#"
    .section .text.snp_copy, "ax"
    /* rdi = dst, rsi = src, rdx = len; rax = 0, or 1 if the copy faulted (the exception
       handler moves RIP from snp_copy_insn to snp_copy_fault). */
    .global snp_copy
snp_copy:
    mov rcx, rdx
    .global snp_copy_insn
snp_copy_insn:
    rep movsb
    xor eax, eax
    ret
    .global snp_copy_fault
snp_copy_fault:
    mov eax, 1
    ret

    /* rdi = new stack top, rsi = function, rdx = its argument; does not return. */
    .section .text.snp_switch_stack, "ax"
    .global snp_switch_stack
snp_switch_stack:
    mov rsp, rdi
    xor ebp, ebp
    mov rdi, rdx
    call rsi
2:
    cli
    hlt
    jmp 2b
    "#
);

unsafe extern "C" {
    fn snp_copy(dst: *mut u8, src: *const u8, len: usize) -> u64;
    static snp_copy_insn: u8;
    static snp_copy_fault: u8;
    fn snp_switch_stack(top: u64, f: extern "C" fn(u64) -> !, arg: u64) -> !;
}

/// Copy `len` bytes; `false` if an access faulted (a page the host took, or one not
/// validated), in which case part of `dst` may be written.
///
/// # Safety
/// Both ranges must be mapped or their faults recoverable (guest memory through the
/// identity map); `dst` must not overlap a Rust object other than the caller's buffer.
pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> bool {
    // SAFETY: caller's contract; the routine touches only the two ranges.
    unsafe { snp_copy(dst, src, len) == 0 }
}

/// If `rip` is the copy's faulting instruction, where to resume.
pub fn copy_fixup(rip: u64) -> Option<u64> {
    let insn = core::ptr::addr_of!(snp_copy_insn) as u64;
    (rip == insn).then_some(core::ptr::addr_of!(snp_copy_fault) as u64)
}

/// Continue on a new stack in `f(arg)`.
///
/// # Safety
/// `top` must be the 16-byte-aligned top of a stack that stays allocated forever.
pub unsafe fn switch_stack(top: u64, f: extern "C" fn(u64) -> !, arg: u64) -> ! {
    // SAFETY: caller's contract.
    unsafe { snp_switch_stack(top, f, arg) }
}
