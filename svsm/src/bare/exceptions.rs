//! CPU exceptions: 32 entry stubs, a common path that saves the registers, and
//! [`report`], which prints what happened and a frame-pointer backtrace and stops the
//! SVSM cleanly (failure status for the host). An exception in the SVSM is a bug.

use super::backtrace;

x86::exception_stubs!("exception_stubs", "exception_common");

// An NMI is how one CPU makes another leave the guest (`svm/kick.rs`). The NMI caused
// the #VMEXIT already, or arrived while the CPU was in the SVSM: either way there is
// nothing left to do when the CPU takes it.
core::arch::global_asm!(
    r#"
    .section .text.nmi_return, "ax"
    .global nmi_return
nmi_return:
    iretq

    /* The wake-up IPI (`svm/kick.rs`): it only ends a HLT. Acknowledge it (EOI to the
       local APIC at its identity-mapped address) and return. */
    .section .text.wake_return, "ax"
    .global wake_return
wake_return:
    push rax
    mov eax, 0xFEE000B0
    mov dword ptr [rax], 0
    pop rax
    iretq

    /* A spurious local-APIC interrupt needs no EOI. */
    .section .text.spurious_return, "ax"
    .global spurious_return
spurious_return:
    iretq
    "#
);

core::arch::global_asm!(
    r#"
    .section .text.exception_common, "ax"
exception_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    and rsp, -16
    call {report}
    ud2
    "#,
    report = sym report,
);

/// The stack as `exception_common` leaves it.
#[repr(C)]
pub struct Frame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

const NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor overrun",
    "invalid TSS",
    "segment not present",
    "stack fault",
    "general protection",
    "page fault",
    "reserved",
    "x87 error",
    "alignment check",
    "machine check",
    "SIMD error",
    "virtualization",
    "control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection",
    "VMM communication",
    "security",
    "reserved",
];

extern "C" fn report(frame: &Frame) -> ! {
    let name = NAMES.get(frame.vector as usize).copied().unwrap_or("unknown");
    println!("EXCEPTION {} ({name}) error code {:#x}", frame.vector, frame.error);
    println!("  rip {:#018x} cs {:#x} rflags {:#x} rsp {:#018x}", frame.rip, frame.cs, frame.rflags, frame.rsp);
    println!("  rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x}", frame.rax, frame.rbx, frame.rcx, frame.rdx);
    println!("  rsi {:#x} rdi {:#x} rbp {:#x}", frame.rsi, frame.rdi, frame.rbp);
    println!("  r8 {:#x} r9 {:#x} r10 {:#x} r11 {:#x}", frame.r8, frame.r9, frame.r10, frame.r11);
    println!("  r12 {:#x} r13 {:#x} r14 {:#x} r15 {:#x}", frame.r12, frame.r13, frame.r14, frame.r15);
    if frame.vector == 14 {
        let cr2: u64;
        // SAFETY: reading CR2 has no side effects.
        unsafe { core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
        println!("  faulting address (cr2) {cr2:#x}");
    }
    backtrace::print(frame.rip, frame.rbp);
    super::exit::failure()
}
