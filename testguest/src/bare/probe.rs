//! Exceptions in the test guest, and probes: touch an address, a port or an MSR and learn
//! whether the access was refused. The SVSM answers a refused access (unvalidated page,
//! SVSM memory, a port or an MSR that is not the guest's) with #GP; a probe arms the
//! handler, which skips the probe instruction and records the fault and its error code.
//! Any other exception ends the run with a failing verdict.
#![expect(unsafe_code, reason = "instructions that may fault, and the recovery from them")]

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static ARMED: AtomicBool = AtomicBool::new(false);
/// The vector the armed probe expects (#GP for refused accesses, #UD for instructions).
static EXPECTED: AtomicU64 = AtomicU64::new(13);
static FAULTED: AtomicBool = AtomicBool::new(false);
/// The error code the last absorbed fault pushed.
static ERROR_CODE: AtomicU64 = AtomicU64::new(0);
/// Length of the armed probe instruction, skipped when it faults.
static PROBE_LEN: AtomicU64 = AtomicU64::new(0);

x86::exception_stubs!("guest_exception_stubs", "guest_exception_common");

core::arch::global_asm!(
    r#"
    .section .text.guest_exception_common, "ax"
guest_exception_common:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    mov rdi, rsp
    call {handler}
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    add rsp, 16
    iretq
    "#,
    handler = sym handler,
);

/// The stack as the common path leaves it.
#[repr(C)]
struct Frame {
    saved: [u64; 9],
    vector: u64,
    error: u64,
    rip: u64,
}

extern "C" fn handler(frame: &mut Frame) {
    if frame.vector == EXPECTED.load(Ordering::SeqCst) && ARMED.swap(false, Ordering::SeqCst) {
        FAULTED.store(true, Ordering::SeqCst);
        ERROR_CODE.store(frame.error, Ordering::SeqCst);
        frame.rip += PROBE_LEN.load(Ordering::SeqCst);
        return;
    }
    println!("testguest: exception {} (error {:#x}) at {:#x}", frame.vector, frame.error, frame.rip);
    super::io::exit(false);
}

fn arm(len: u64) {
    arm_for(13, len);
}

fn arm_for(vector: u64, len: u64) {
    EXPECTED.store(vector, Ordering::SeqCst);
    FAULTED.store(false, Ordering::SeqCst);
    PROBE_LEN.store(len, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
}

/// Can the guest read `addr`? `false` if the access was refused.
pub fn readable(addr: u64) -> bool {
    arm(2); // mov al, [rdi] = 8A 07
    // SAFETY: a one-byte read whose fault, if any, the armed handler absorbs; the value
    // is discarded and no reference is created.
    unsafe { core::arch::asm!("mov al, byte ptr [rdi]", in("rdi") addr, out("al") _, options(nostack, readonly)) };
    ARMED.store(false, Ordering::SeqCst);
    !FAULTED.load(Ordering::SeqCst)
}

/// Can the guest read I/O port `port`? `false` if the access was refused.
pub fn port_readable(port: u16) -> bool {
    arm(1); // in al, dx = EC
    // SAFETY: a one-byte port read whose fault, if any, the armed handler absorbs.
    unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") _, options(nomem, nostack)) };
    ARMED.store(false, Ordering::SeqCst);
    !FAULTED.load(Ordering::SeqCst)
}

/// IN of `size` bytes (1, 2 or 4) from `port`: the value, or `None` if refused.
pub fn port_in(port: u16, size: u8) -> Option<u32> {
    let value: u32;
    // SAFETY: one port read whose fault, if any, the armed handler absorbs (EAX is then
    // whatever it held, and ignored). EAX starts at all ones so the bits IN AL and IN AX
    // leave alone are known and cut off below.
    unsafe {
        match size {
            1 => {
                arm(1); // in al, dx = EC
                core::arch::asm!("in al, dx", in("dx") port, inout("eax") u32::MAX => value, options(nomem, nostack));
            }
            2 => {
                arm(2); // in ax, dx = 66 ED
                core::arch::asm!("in ax, dx", in("dx") port, inout("eax") u32::MAX => value, options(nomem, nostack));
            }
            _ => {
                arm(1); // in eax, dx = ED
                core::arch::asm!("in eax, dx", in("dx") port, inout("eax") u32::MAX => value, options(nomem, nostack));
            }
        }
    }
    ARMED.store(false, Ordering::SeqCst);
    let mask = match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => u32::MAX,
    };
    (!FAULTED.load(Ordering::SeqCst)).then_some(value & mask)
}

/// OUT of the low `size` bytes (1, 2 or 4) of `value` to `port`: `false` if refused.
pub fn port_out(port: u16, size: u8, value: u32) -> bool {
    // SAFETY: one port write whose fault, if any, the armed handler absorbs; the caller
    // only writes ports of devices the SVSM emulates or refuses.
    unsafe {
        match size {
            1 => {
                arm(1); // out dx, al = EE
                core::arch::asm!("out dx, al", in("dx") port, in("al") value as u8, options(nomem, nostack));
            }
            2 => {
                arm(2); // out dx, ax = 66 EF
                core::arch::asm!("out dx, ax", in("dx") port, in("ax") value as u16, options(nomem, nostack));
            }
            _ => {
                arm(1); // out dx, eax = EF
                core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack));
            }
        }
    }
    ARMED.store(false, Ordering::SeqCst);
    !FAULTED.load(Ordering::SeqCst)
}

/// REP INSB of one byte from `port`: `false` if refused.
pub fn port_rep_insb(port: u16) -> bool {
    let mut byte = 0u8;
    arm(2); // rep insb = F3 6C
    // SAFETY: reads at most one byte into `byte` (RCX = 1, RDI at it, DF clear as the
    // ABI keeps it); a fault, if any, the armed handler absorbs.
    unsafe {
        core::arch::asm!("rep insb", in("dx") port, inout("rcx") 1u64 => _, inout("rdi") &raw mut byte => _, options(nostack))
    };
    ARMED.store(false, Ordering::SeqCst);
    !FAULTED.load(Ordering::SeqCst)
}

/// A load of `size` bytes (1, 2, 4 or 8) from `addr` with the MOV forms a driver's MMIO
/// accessors use (MOVZX for a byte or a word): the value, or `None` if refused.
pub fn mmio_read(addr: u64, size: u8) -> Option<u64> {
    let value: u64;
    // SAFETY: one load whose fault, if any, the armed handler absorbs (RAX is then
    // whatever it held, and ignored); the caller names an address of a device.
    unsafe {
        match size {
            1 => {
                arm(3); // movzx eax, byte ptr [rdi] = 0F B6 07
                core::arch::asm!("movzx eax, byte ptr [rdi]", in("rdi") addr, out("rax") value, options(nostack, readonly));
            }
            2 => {
                arm(3); // movzx eax, word ptr [rdi] = 0F B7 07
                core::arch::asm!("movzx eax, word ptr [rdi]", in("rdi") addr, out("rax") value, options(nostack, readonly));
            }
            4 => {
                arm(2); // mov eax, dword ptr [rdi] = 8B 07
                core::arch::asm!("mov eax, dword ptr [rdi]", in("rdi") addr, out("rax") value, options(nostack, readonly));
            }
            _ => {
                arm(3); // mov rax, qword ptr [rdi] = 48 8B 07
                core::arch::asm!("mov rax, qword ptr [rdi]", in("rdi") addr, out("rax") value, options(nostack, readonly));
            }
        }
    }
    ARMED.store(false, Ordering::SeqCst);
    (!FAULTED.load(Ordering::SeqCst)).then_some(value)
}

/// A store of the low `size` bytes (1, 2, 4 or 8) of `value` to `addr`: `false` if
/// refused.
pub fn mmio_write(addr: u64, size: u8, value: u64) -> bool {
    // SAFETY: one store whose fault, if any, the armed handler absorbs; the caller names
    // an address of a device, never memory Rust uses.
    unsafe {
        match size {
            1 => {
                arm(2); // mov byte ptr [rdi], al = 88 07
                core::arch::asm!("mov byte ptr [rdi], al", in("rdi") addr, in("rax") value, options(nostack));
            }
            2 => {
                arm(3); // mov word ptr [rdi], ax = 66 89 07
                core::arch::asm!("mov word ptr [rdi], ax", in("rdi") addr, in("rax") value, options(nostack));
            }
            4 => {
                arm(2); // mov dword ptr [rdi], eax = 89 07
                core::arch::asm!("mov dword ptr [rdi], eax", in("rdi") addr, in("rax") value, options(nostack));
            }
            _ => {
                arm(3); // mov qword ptr [rdi], rax = 48 89 07
                core::arch::asm!("mov qword ptr [rdi], rax", in("rdi") addr, in("rax") value, options(nostack));
            }
        }
    }
    ARMED.store(false, Ordering::SeqCst);
    !FAULTED.load(Ordering::SeqCst)
}

/// A store of the immediate 0x5A5A_5A5A to the dword at `addr` (C7 /0): `false` if
/// refused.
pub fn mmio_write_immediate(addr: u64) -> bool {
    arm(6); // mov dword ptr [rdi], 0x5A5A5A5A = C7 07 5A 5A 5A 5A
    // SAFETY: as `mmio_write`.
    unsafe { core::arch::asm!("mov dword ptr [rdi], 0x5A5A5A5A", in("rdi") addr, options(nostack)) };
    ARMED.store(false, Ordering::SeqCst);
    !FAULTED.load(Ordering::SeqCst)
}

/// The error code of the last fault a probe absorbed.
pub fn last_error_code() -> u64 {
    ERROR_CODE.load(Ordering::SeqCst)
}

/// RDMSR `msr`: its value, or `None` if the read raised #GP.
pub fn rdmsr(msr: u32) -> Option<u64> {
    arm(2); // rdmsr = 0F 32
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR has no memory effects; its #GP, if any, the armed handler absorbs
    // (EAX and EDX are then whatever they held, and ignored).
    unsafe { core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    ARMED.store(false, Ordering::SeqCst);
    (!FAULTED.load(Ordering::SeqCst)).then_some(u64::from(hi) << 32 | u64::from(lo))
}

/// WRMSR `value` to `msr`: `false` if the write raised #GP.
///
/// # Safety
/// If the write is not refused it takes effect: the caller must only write values the
/// guest can live with (for the probes of MSRs that must be refused: values that leave a
/// CPU that wrongly lets them through as it was).
pub unsafe fn wrmsr(msr: u32, value: u64) -> bool {
    arm(2); // wrmsr = 0F 30
    // SAFETY: the caller vouches for the value; a #GP is absorbed by the armed handler.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack))
    };
    ARMED.store(false, Ordering::SeqCst);
    !FAULTED.load(Ordering::SeqCst)
}

/// SVM instructions a guest might try (all three bytes long: 0F 01 D8..DF).
#[derive(Clone, Copy, Debug)]
pub enum SvmInstruction {
    Vmrun,
    Vmload,
    Vmsave,
    Stgi,
    Clgi,
    Skinit,
    Invlpga,
}

/// Did executing `which` raise #UD (refused) rather than run?
pub fn svm_instruction_refused(which: SvmInstruction) -> bool {
    arm_for(6, 3);
    // SAFETY: each is one 3-byte instruction whose #UD the armed handler absorbs; RAX
    // (the VMCB address for the VM* ones) is 0 and nothing runs if it is refused. They
    // are declared to clobber memory (not `nomem`) in case one were not refused.
    unsafe {
        match which {
            SvmInstruction::Vmrun => core::arch::asm!("vmrun rax", in("rax") 0u64, options(nostack)),
            SvmInstruction::Vmload => core::arch::asm!("vmload rax", in("rax") 0u64, options(nostack)),
            SvmInstruction::Vmsave => core::arch::asm!("vmsave rax", in("rax") 0u64, options(nostack)),
            SvmInstruction::Stgi => core::arch::asm!("stgi", options(nostack)),
            SvmInstruction::Clgi => core::arch::asm!("clgi", options(nostack)),
            SvmInstruction::Skinit => core::arch::asm!("skinit eax", in("eax") 0u32, options(nostack)),
            SvmInstruction::Invlpga => {
                core::arch::asm!("invlpga rax, ecx", in("rax") 0u64, in("ecx") 0u32, options(nostack))
            }
        }
    }
    ARMED.store(false, Ordering::SeqCst);
    FAULTED.load(Ordering::SeqCst)
}

struct Idt(UnsafeCell<[u64; 64]>);
// SAFETY: written once by `load_idt` on the only CPU before interrupts can occur.
unsafe impl Sync for Idt {}
static IDT: Idt = Idt(UnsafeCell::new([0; 64]));

unsafe extern "C" {
    static guest_exception_stubs: u8;
}

#[repr(C, packed)]
struct IdtPtr {
    limit: u16,
    base: u64,
}

/// Load the (already filled) IDT on a secondary vCPU.
pub extern "C" fn lidt() {
    let ptr = IdtPtr { limit: (64 * 8 - 1) as u16, base: IDT.0.get() as u64 };
    // SAFETY: the boot vCPU filled the table before creating any other vCPU.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags)) };
}

/// Fill and load the IDT (called once from the entry).
pub extern "C" fn load_idt() {
    let stubs = core::ptr::addr_of!(guest_exception_stubs) as u64;
    // SAFETY: single CPU, interrupts off, called once before any exception can occur, so
    // this is the only access to the table.
    let idt = unsafe { &mut *IDT.0.get() };
    for v in 0..32u64 {
        let [low, high] = x86::idt::interrupt_gate(stubs + v * x86::idt::STUB_SIZE, 0x08, 0);
        idt[v as usize * 2] = low;
        idt[v as usize * 2 + 1] = high;
    }
    let ptr = IdtPtr { limit: (64 * 8 - 1) as u16, base: idt.as_ptr() as u64 };
    // SAFETY: the table is static and complete; its gates point at the stubs above.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags)) };
}
