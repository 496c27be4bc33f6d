//! The doors between the SVSM and a process at CPL 3, all in assembly, all here:
//!
//! - `run_user(regs)`: saves the kernel's callee-saved registers on its stack, notes that
//!   stack in the per-CPU page (`kernel_rsp`) and in TSS.RSP0, loads the process's
//!   registers and IRETQs to CPL 3. It "returns" when the process makes a system call
//!   ([`SYSCALL`]) or faults ([`FAULT`]), with the process's registers saved in `regs`.
//! - `syscall_entry` (LSTAR): SYSCALL lands here on the process's stack with interrupts
//!   off (FMASK); it switches to `kernel_rsp` at once, saves every register into `regs`
//!   and returns from `run_user`.
//! - `user_abort(kind)`: a fault taken in user mode (`exceptions.rs` calls it after
//!   saving the frame) abandons the exception's stack frames and returns from `run_user`.
//!
//! Every return to the kernel loads RFLAGS = 0 (interrupts off, and AC clear so SMAP
//! holds whatever the process put in its flags). Why SYSCALL and not an `int 0x80`
//! gate: docs/syscalls.md "Entry".
#![expect(unsafe_code, reason = "the CPL 0 / CPL 3 transitions")]

use super::super::cpu_tables::{STAR_KERNEL_BASE, STAR_USER_BASE, USER_CODE_SELECTOR, USER_DATA_SELECTOR};
use super::super::percpu::{IN_USER_OFFSET, KERNEL_RSP_OFFSET, PER_CPU_VA, TSS_RSP0_OFFSET, USER_RSP_OFFSET};

/// `run_user` returned because the process made a system call.
pub const SYSCALL: u64 = 1;
/// `run_user` returned because the process faulted.
pub const FAULT: u64 = 2;

/// A process's registers while it is not running.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UserRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
}

core::arch::global_asm!(
    r#"
    .section .text.user_entry, "ax"
    .global run_user
run_user:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    push rdi
    mov [{percpu} + {kernel_rsp}], rsp
    mov rax, [{percpu} + {tss_rsp0}]
    mov [rax], rsp
    mov qword ptr [{percpu} + {in_user}], 1
    push {user_ss}
    push qword ptr [rdi + 8 * 16]
    push qword ptr [rdi + 8 * 17]
    push {user_cs}
    push qword ptr [rdi + 8 * 15]
    mov rax, [rdi + 8 * 0]
    mov rbx, [rdi + 8 * 1]
    mov rcx, [rdi + 8 * 2]
    mov rdx, [rdi + 8 * 3]
    mov rsi, [rdi + 8 * 4]
    mov rbp, [rdi + 8 * 6]
    mov r8, [rdi + 8 * 7]
    mov r9, [rdi + 8 * 8]
    mov r10, [rdi + 8 * 9]
    mov r11, [rdi + 8 * 10]
    mov r12, [rdi + 8 * 11]
    mov r13, [rdi + 8 * 12]
    mov r14, [rdi + 8 * 13]
    mov r15, [rdi + 8 * 14]
    mov rdi, [rdi + 8 * 5]
    iretq

    .global syscall_entry
syscall_entry:
    mov [{percpu} + {user_rsp}], rsp
    mov rsp, [{percpu} + {kernel_rsp}]
    push rax
    mov rax, [rsp + 8]
    pop qword ptr [rax + 8 * 0]
    mov [rax + 8 * 1], rbx
    mov [rax + 8 * 2], rcx
    mov [rax + 8 * 3], rdx
    mov [rax + 8 * 4], rsi
    mov [rax + 8 * 5], rdi
    mov [rax + 8 * 6], rbp
    mov [rax + 8 * 7], r8
    mov [rax + 8 * 8], r9
    mov [rax + 8 * 9], r10
    mov [rax + 8 * 10], r11
    mov [rax + 8 * 11], r12
    mov [rax + 8 * 12], r13
    mov [rax + 8 * 13], r14
    mov [rax + 8 * 14], r15
    mov [rax + 8 * 15], rcx
    mov [rax + 8 * 17], r11
    mov rcx, [{percpu} + {user_rsp}]
    mov [rax + 8 * 16], rcx
    mov eax, {syscall}
    jmp back_to_kernel

    .global user_abort
user_abort:
    mov rsp, [{percpu} + {kernel_rsp}]
    mov rax, rdi
    jmp back_to_kernel

    /* The time-slice timer (`lapic::TIMER_VECTOR`). Taken in a process: like a fault
       (vector, no error code) through `exceptions.rs`, which saves the process's
       registers and comes back to the run loop (which acknowledges it). Taken in the
       SVSM (a slice that ended as the process came back): acknowledged and ignored. */
    .global user_timer
user_timer:
    test qword ptr [rsp + 8], 3
    jz 1f
    push 0
    push {timer_vector}
    jmp exception_common
1:
    push rax
    mov eax, 0xFEE000B0
    mov dword ptr [rax], 0
    pop rax
    iretq

back_to_kernel:
    mov qword ptr [{percpu} + {in_user}], 0
    push 0
    popfq
    add rsp, 8
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
    "#,
    percpu = const PER_CPU_VA,
    kernel_rsp = const KERNEL_RSP_OFFSET,
    user_rsp = const USER_RSP_OFFSET,
    tss_rsp0 = const TSS_RSP0_OFFSET,
    in_user = const IN_USER_OFFSET,
    user_ss = const USER_DATA_SELECTOR,
    user_cs = const USER_CODE_SELECTOR,
    syscall = const SYSCALL,
    timer_vector = const super::super::lapic::TIMER_VECTOR,
);

unsafe extern "C" {
    fn run_user(regs: *mut UserRegs) -> u64;
    fn syscall_entry();
    fn user_abort(kind: u64) -> !;
}

/// Run the process whose registers are `regs` until its next system call or fault
/// ([`SYSCALL`] or [`FAULT`]); `regs` then holds its registers at that point. With
/// `interrupts` it runs with IF set (time slices: the local-APIC timer takes the CPU
/// back); without, with IF clear, so no interrupt reaches it (SEV-SNP, where the host's
/// interrupts are nothing the process should see, and CPL 3 cannot set IF itself).
pub fn enter(regs: &mut UserRegs, interrupts: bool) -> u64 {
    // Never with a privileged flag the process chose.
    regs.rflags = (regs.rflags & USER_FLAGS) | 0x2 | if interrupts { 1 << 9 } else { 0 };
    // SAFETY: `regs` is valid for the whole call; `run_user` restores the kernel's
    // callee-saved registers and stack on every way back, and the process it enters has
    // only user-half mappings (`space.rs`) besides the kernel's supervisor-only ones.
    unsafe { run_user(regs) }
}

/// RFLAGS bits a process may set: the arithmetic flags (CF, PF, AF, ZF, SF, OF), DF and
/// AC; TF, IF, IOPL, NT, RF and the rest are the kernel's.
const USER_FLAGS: u64 = 0b1100_1101_0101 | (1 << 18);

/// Leave the fault handler of a fault taken at CPL 3 for the `run_user` that entered
/// the process (which returns [`FAULT`]).
pub fn abort_to_kernel() -> ! {
    // SAFETY: only called for a fault taken at CPL 3, so a `run_user` of this CPU is
    // waiting at `kernel_rsp`; the exception's frames below it are abandoned, and they
    // own nothing.
    unsafe { user_abort(FAULT) }
}

/// Point FS at a process's thread page (`loader::THREAD_PAGE`): its C code reads its
/// stack-protector canary at FS:0x28. The SVSM's own code never uses FS.
pub fn set_fs_base(address: u64) {
    const FS_BASE: u32 = 0xC000_0100;
    // SAFETY: FS_BASE exists on every x86-64 CPU; the SVSM's Rust code does not use FS,
    // and `fpu::with_c_state` restores the value it found around the process's run.
    unsafe { super::super::cpu::wrmsr(FS_BASE, address) };
}

/// Turn on SYSCALL on this CPU: EFER.SCE, the selectors (STAR), the entry (LSTAR) and
/// the flags cleared on entry (FMASK: IF, TF, DF, AC, NT).
pub fn enable_syscall() {
    const EFER: u32 = 0xC000_0080;
    const STAR: u32 = 0xC000_0081;
    const LSTAR: u32 = 0xC000_0082;
    const FMASK: u32 = 0xC000_0084;
    // FS and GS hold the null selector, which IRETQ to CPL 3 leaves alone: a kernel data
    // selector there would be nulled by it, and on CPUs where a null selector clears the
    // base (AMD's NullSelectorClearsBase) the process would lose its FS base (its C
    // code's stack canary) and the snp platform GS's CPU index.
    super::super::cpu::null_fs_gs();
    super::super::percpu::restore_gs_base();
    let star = u64::from(STAR_USER_BASE) << 48 | u64::from(STAR_KERNEL_BASE) << 32;
    let fmask = (1 << 9) | (1 << 8) | (1 << 10) | (1 << 18) | (1 << 14);
    // SAFETY: these MSRs exist on every x86-64 CPU; the GDT holds the selectors STAR
    // names (`cpu_tables`), LSTAR points at `syscall_entry`, and setting EFER.SCE only
    // makes the SYSCALL instruction available.
    unsafe {
        let efer = super::super::cpu::rdmsr(EFER);
        super::super::cpu::wrmsr(EFER, efer | 1);
        super::super::cpu::wrmsr(STAR, star);
        super::super::cpu::wrmsr(LSTAR, syscall_entry as *const () as u64);
        super::super::cpu::wrmsr(FMASK, fmask);
    }
}
