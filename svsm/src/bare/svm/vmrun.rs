//! Entering the guest: the one VMRUN trampoline.
//!
//! VMRUN loads the guest state from the VMCB (RAX, RSP, RIP, control and segment
//! registers) and saves the host's to the host save area; the other general-purpose
//! registers are the software's business. The trampoline loads them from a
//! [`GuestRegs`] block, runs the guest, and on #VMEXIT stores the guest's values back,
//! restoring the host's callee-saved registers. FS, GS, TR, LDTR, KernelGsBase and the
//! syscall MSRs are switched with VMSAVE/VMLOAD (host state in a page of the CPU's), so a
//! guest that loads its own TSS cannot leave it to the SVSM's exception handling. The
//! caller clears GIF ([`clgi`]) before its last check that it may enter the guest (see
//! `kick.rs`); the trampoline sets it again (STGI) after the #VMEXIT. IF is on only
//! for the guest's run, so that the SVSM's own interrupts (its timer, a wake-up IPI)
//! end it (the INTR intercept) and are taken right after the #VMEXIT; the SVSM itself
//! runs with IF off.
#![expect(unsafe_code, reason = "VMRUN, VMLOAD and VMSAVE")]

pub use svm::vcpu::GuestRegs;

// The trampoline loads and stores the registers at these offsets.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(GuestRegs, rbx) == 0 && offset_of!(GuestRegs, rcx) == 8 && offset_of!(GuestRegs, rdx) == 16);
    assert!(offset_of!(GuestRegs, rsi) == 24 && offset_of!(GuestRegs, rdi) == 32 && offset_of!(GuestRegs, rbp) == 40);
    assert!(offset_of!(GuestRegs, r8) == 48 && offset_of!(GuestRegs, r9) == 56 && offset_of!(GuestRegs, r10) == 64);
    assert!(offset_of!(GuestRegs, r11) == 72 && offset_of!(GuestRegs, r12) == 80 && offset_of!(GuestRegs, r13) == 88);
    assert!(offset_of!(GuestRegs, r14) == 96 && offset_of!(GuestRegs, r15) == 104);
    assert!(core::mem::size_of::<GuestRegs>() == 112);
};

core::arch::global_asm!(
    r#"
    .section .text.svm_vmrun, "ax"
    .global svm_vmrun
    /* rdi = VMCB pa, rsi = GuestRegs, rdx = host state page pa */
svm_vmrun:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    push rdx
    push rsi
    mov rax, rdx
    vmsave rax
    mov rax, rdi
    vmload rax
    mov rbx, [rsi + 0]
    mov rcx, [rsi + 8]
    mov rdx, [rsi + 16]
    mov rdi, [rsi + 32]
    mov rbp, [rsi + 40]
    mov r8, [rsi + 48]
    mov r9, [rsi + 56]
    mov r10, [rsi + 64]
    mov r11, [rsi + 72]
    mov r12, [rsi + 80]
    mov r13, [rsi + 88]
    mov r14, [rsi + 96]
    mov r15, [rsi + 104]
    mov rsi, [rsi + 24]
    /* IF on for the guest's run: with V_INTR_MASKING it is the host's IF that lets a
       physical interrupt end the run (the INTR intercept); GIF is clear, so none is taken
       here. */
    sti
    vmrun rax
    .global svm_vmrun_exit
svm_vmrun_exit:
    vmsave rax
    push rsi
    mov rsi, [rsp + 8]
    mov [rsi + 0], rbx
    mov [rsi + 8], rcx
    mov [rsi + 16], rdx
    mov [rsi + 32], rdi
    mov [rsi + 40], rbp
    mov [rsi + 48], r8
    mov [rsi + 56], r9
    mov [rsi + 64], r10
    mov [rsi + 72], r11
    mov [rsi + 80], r12
    mov [rsi + 88], r13
    mov [rsi + 96], r14
    mov [rsi + 104], r15
    pop rax
    mov [rsi + 24], rax
    mov rax, [rsp + 8]
    vmload rax
    /* The SVSM's interrupts that ended the run (or came with it) are taken here, with
       GIF set (timer and wake-up: acknowledged and done); then IF is off again, as the
       SVSM runs. */
    stgi
    cli
    add rsp, 16
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
    "#
);

/// Clear GIF: interrupts and NMIs are held until the guest runs (or [`stgi`]).
pub fn clgi() {
    // SAFETY: CLGI only masks interrupts and NMIs; SVM is enabled on any CPU that runs a vCPU.
    unsafe { core::arch::asm!("clgi", options(nomem, nostack, preserves_flags)) }
}

/// Set GIF again when the CPU decided not to enter the guest after all.
pub fn stgi() {
    // SAFETY: STGI only unmasks interrupts and NMIs (the IDT handles any held NMI).
    unsafe { core::arch::asm!("stgi", options(nomem, nostack, preserves_flags)) }
}

unsafe extern "C" {
    fn svm_vmrun(vmcb_pa: u64, regs: *mut GuestRegs, host_state_pa: u64);
    /// The instruction after VMRUN: where a #VMEXIT resumes the SVSM.
    static svm_vmrun_exit: u8;
}

/// Where a #VMEXIT resumes the SVSM (the RIP VMRUN saves as the host's).
pub fn exit_address() -> u64 {
    core::ptr::addr_of!(svm_vmrun_exit) as u64
}

/// Run the guest described by the VMCB at `vmcb_pa` until its next #VMEXIT.
///
/// # Safety
/// SVM must be enabled with a host save area and GIF clear ([`clgi`]); `vmcb_pa` must be the physical address of a
/// VMCB that stays alive and unmodified by anyone else during the call, whose nested page
/// tables map no SVSM memory (so the guest cannot touch the SVSM's state);
/// `host_state_pa` must be a page of this CPU's that nothing else uses.
pub unsafe fn run(vmcb_pa: u64, regs: &mut GuestRegs, host_state_pa: u64) {
    // SAFETY: the caller upholds the VMCB, SVM and host-state requirements; `regs` is a
    // valid, exclusive GuestRegs block for the trampoline to load and store; the
    // trampoline preserves the host's callee-saved registers, stack and (VMSAVE/VMLOAD)
    // its FS, GS, TR, LDTR and syscall MSRs.
    unsafe { svm_vmrun(vmcb_pa, regs, host_state_pa) }
}
