//! CPU exceptions: 32 entry stubs, a common path that saves the registers, and
//! [`report`], which prints what happened and a frame-pointer backtrace and stops the
//! SVSM cleanly (failure status for the host). An exception in the SVSM is a bug -- unless
//! the GDB stub is attached (`gdb.rs`), which takes breakpoints, single steps and faults
//! and returns to where the debugger says.

use super::backtrace;
use super::cpu_tables::{USER_CODE_SELECTOR, USER_DATA_SELECTOR};

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
    .global exception_common
exception_common:
    /* A process at CPL 3 may have set DF and AC; an exception clears neither. Rust code
       (its copies may be `rep movs`) needs DF clear, and AC set would turn SMAP off for
       the kernel code that handles the exception. The IRETQ restores the process's. */
    cld
    pushfq
    and qword ptr [rsp], ~(1 << 18)
    popfq
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
    mov rbx, rsp
    and rsp, -16
    call {handle}
    mov rsp, rbx
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq
    "#,
    handle = sym handle,
);

/// The stack as `exception_common` leaves it (what a handler may change is restored).
#[repr(C)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
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

/// An exception: a process's (it ends); the GDB stub's, if it is attached (then the CPU goes on where the
/// debugger says); otherwise a bug, reported before the SVSM stops.
extern "C" fn handle(frame: &mut Frame) {
    // A fault of a process at CPL 3 ends the process, not the SVSM. Only a frame with
    // both user selectors, taken while this CPU runs a process: a vector the host injects
    // with an error code its stub does not expect (or the reverse) shifts the frame by a
    // word, and `cs` then holds RFLAGS or a kernel RIP, which never equal the user code
    // selector (RFLAGS bit 3 is always 0).
    let user = (frame.cs, frame.ss) == (u64::from(USER_CODE_SELECTOR), u64::from(USER_DATA_SELECTOR));
    if user && super::percpu::in_user() {
        super::user::fault(frame)
    }
    if super::snp::exception(frame) {
        return;
    }
    if super::gdb::trap(frame) {
        return;
    }
    report(frame)
}

fn report(frame: &Frame) -> ! {
    let name = usize::try_from(frame.vector).ok().and_then(|v| NAMES.get(v)).copied().unwrap_or("unknown");
    println!("EXCEPTION {} ({name}) error code {:#x}", frame.vector, frame.error);
    println!("  rip {:#018x} cs {:#x} rflags {:#x} rsp {:#018x}", frame.rip, frame.cs, frame.rflags, frame.rsp);
    println!("  rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x}", frame.rax, frame.rbx, frame.rcx, frame.rdx);
    println!("  rsi {:#x} rdi {:#x} rbp {:#x}", frame.rsi, frame.rdi, frame.rbp);
    println!("  r8 {:#x} r9 {:#x} r10 {:#x} r11 {:#x}", frame.r8, frame.r9, frame.r10, frame.r11);
    println!("  r12 {:#x} r13 {:#x} r14 {:#x} r15 {:#x}", frame.r12, frame.r13, frame.r14, frame.r15);
    if frame.vector == 14 {
        println!("  faulting address (cr2) {:#x}", super::cpu::read_cr2());
    }
    backtrace::print_fault(frame.rip, frame.rsp, frame.rbp);
    super::exit::failure()
}
