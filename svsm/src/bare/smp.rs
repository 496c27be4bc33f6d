//! Bringing the other CPUs online (QEMU `-smp N`).
//!
//! The boot CPU learns the CPU count from QEMU's fw_cfg, copies a real-mode trampoline to
//! 0x7000 (guest RAM the launch leaves unused and unvalidated), and starts each AP with
//! INIT-SIPI-SIPI through its local APIC, one at a time. The trampoline goes through
//! protected mode into long mode on the boot page tables and calls [`ap_entry`] on a
//! fresh stack; the AP loads its own GDT/TSS/IDT, turns SVM on, reports, and runs the
//! guest vCPUs that live on it (`native.rs`). CPU `n` is the one with APIC ID `n`; an AP
//! that does not come up (or has no SVM) ends the bring-up, so the CPUs that serve are
//! always 0..online.
#![expect(unsafe_code, reason = "copies the AP trampoline to low memory and fills in its data")]

use super::cpu_tables;
use super::lapic;
use super::svm;
use alloc::vec;
use core::sync::atomic::{AtomicU32, Ordering};
use x86::port::outb;

/// Where the trampoline runs (below 1 MiB, page aligned: the SIPI vector is its page).
const TRAMPOLINE: u64 = 0x7000;
const AP_STACK: usize = 64 * 1024;

/// APs that reached `ap_entry` and finished their setup.
static ONLINE: AtomicU32 = AtomicU32::new(0);

// AT&T syntax: the trampoline's absolute addresses are label differences, which the
// Intel-syntax parser refuses in operands.
core::arch::global_asm!(
    r#"
    .section .text.ap_trampoline, "ax"
    .global ap_trampoline_start
    .global ap_trampoline_end
    .global ap_trampoline_data
    .code16
ap_trampoline_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl 0x7000 + (tramp_gdt_ptr - ap_trampoline_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x18, $(0x7000 + (tramp32 - ap_trampoline_start))
    .code32
tramp32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $(1 << 5), %eax
    movl %eax, %cr4
    movl 0x7000 + (ap_trampoline_data - ap_trampoline_start), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $((1 << 8) | (1 << 11)), %eax
    wrmsr
    movl %cr0, %eax
    orl $((1 << 31) | (1 << 16)), %eax
    movl %eax, %cr0
    ljmpl $0x08, $(0x7000 + (tramp64 - ap_trampoline_start))
    .code64
tramp64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $(0x7000 + (ap_trampoline_data - ap_trampoline_start)), %ebx
    movq 8(%rbx), %rsp
    movq 16(%rbx), %rdi
    movq 24(%rbx), %rax
    xorl %ebp, %ebp
    callq *%rax
2:
    cli
    hlt
    jmp 2b
    .p2align 3
    /* The 64-bit code and data selectors (0x08, 0x10) are those of the runtime GDT
       (cpu_tables.rs), so CS stays valid once that GDT is loaded (0x18 there is the
       TSS); 0x18 here is 32-bit code, used only by the trampoline. */
tramp_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
    .quad 0x00CF9A000000FFFF
tramp_gdt_ptr:
    .word 31
    .long 0x7000 + (tramp_gdt - ap_trampoline_start)
    .p2align 3
ap_trampoline_data:
    .quad 0
    .quad 0
    .quad 0
    .quad 0
ap_trampoline_end:
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_trampoline_data: u8;
}

fn delay(rounds: u32) {
    for _ in 0..rounds {
        // A port-0x80 write takes about a microsecond (the classic I/O delay).
        outb(0x80, 0);
    }
}

/// Start every AP; returns how many CPUs are online (the boot CPU included).
pub fn start_aps(boot_pml4: u64) -> u32 {
    let total = super::fw_cfg::cpu_count();
    if total <= 1 {
        return 1;
    }
    let start = core::ptr::addr_of!(ap_trampoline_start) as u64;
    let len = core::ptr::addr_of!(ap_trampoline_end) as u64 - start;
    let data = core::ptr::addr_of!(ap_trampoline_data) as u64 - start + TRAMPOLINE;
    // The STARTUP IPI names the trampoline's page below 1 MiB.
    let (Ok(len), Ok(startup_page)) = (usize::try_from(len), u8::try_from(TRAMPOLINE >> 12)) else {
        crate::println!("smp: cannot place the AP trampoline; serving with 1 CPU");
        return 1;
    };
    // SAFETY: 0x7000.. is low guest RAM the launch does not use and no Rust object lives
    // in; the trampoline (a few hundred bytes) is copied there before any AP or guest runs.
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE as *mut u8, len) };
    for cpu in 1..total {
        let stack = vec![0u8; AP_STACK].leak();
        let words =
            [boot_pml4, (stack.as_ptr() as u64 + AP_STACK as u64) & !0xF, u64::from(cpu), ap_entry as *const () as u64];
        for (i, w) in words.iter().enumerate() {
            // SAFETY: the trampoline's data words, in the copy just made; no AP runs yet.
            unsafe { core::ptr::write_volatile((data + 8 * i as u64) as *mut u64, *w) };
        }
        let before = ONLINE.load(Ordering::Acquire);
        lapic::send_init(cpu);
        delay(10_000);
        for _ in 0..2 {
            lapic::send_startup(cpu, startup_page);
            delay(200);
        }
        let mut waited = 0u32;
        while ONLINE.load(Ordering::Acquire) == before && waited < 1_000_000 {
            core::hint::spin_loop();
            waited += 1;
        }
        if ONLINE.load(Ordering::Acquire) == before {
            crate::println!("smp: cpu {cpu} did not come online; serving with {cpu} CPU(s)");
            break;
        }
    }
    // The page becomes guest RAM the guest may write: an AP that starts late (its STARTUP
    // IPI outlived the wait) must find `cli; hlt` there, not the trampoline, and never
    // run what the guest put there on the boot tables.
    // SAFETY: TRAMPOLINE.. is the low RAM the trampoline was copied to above; every AP
    // that came online is past it, and these four bytes are all a late AP executes.
    unsafe { core::ptr::copy_nonoverlapping(PARKED.as_ptr(), TRAMPOLINE as *mut u8, PARKED.len()) };
    1 + ONLINE.load(Ordering::Acquire)
}

/// `cli; hlt; jmp $-1` (back to the `hlt`): what a late AP finds at the trampoline.
const PARKED: [u8; 4] = [0xFA, 0xF4, 0xEB, 0xFD];

/// The AP trampoline's first byte turned into `ret`, as code to call for the boot's
/// `crash=low` check: the APs are past the trampoline by then, and on their own roots
/// the low 2 MiB are no-execute, so the call must fault on the fetch.
pub fn trampoline_as_ret() -> &'static [u8] {
    // SAFETY: TRAMPOLINE is the low RAM `start_aps` copied the trampoline to; every AP
    // that came online has left it, and the byte is only read (or fetched) afterwards.
    unsafe {
        core::ptr::write_volatile(TRAMPOLINE as *mut u8, 0xC3);
        core::slice::from_raw_parts(TRAMPOLINE as *const u8, 1)
    }
}

/// First Rust code on an AP, on its own stack, with the boot page tables.
extern "C" fn ap_entry(cpu: u64) -> ! {
    // `start_aps` wrote a u32 index there; anything else stays out of service.
    let Ok(cpu) = u32::try_from(cpu) else { super::cpu::halt_forever() };
    let tables = super::percpu::install(cpu, super::entry::boot_page_tables());
    // Without its own root it would run on the boot tables, where the low 2 MiB (guest
    // RAM) are executable: it stays out of service.
    if tables.is_none() {
        crate::println!("smp: cpu {cpu} has no memory for its page tables; it stays halted");
        super::cpu::halt_forever()
    }
    super::percpu::set_tss_rsp0(cpu_tables::load(true));
    super::fpu::enable_sse();
    lapic::enable();
    super::user::init_cpu();
    let svm = svm::enable();
    let own = super::percpu::this_cpu() == cpu;
    match &svm {
        Ok(_) => crate::println!("smp: cpu {cpu} online (SVM on, own page tables: {own})"),
        Err(e) => crate::println!("smp: cpu {cpu} online, SVM unavailable ({e:?}), own page tables: {own}"),
    }
    if let Ok(svm) = svm {
        ONLINE.fetch_add(1, Ordering::AcqRel);
        // Serve the guest vCPUs that live on this CPU (SVM stays on for its lifetime).
        let super::native::End::Broken(why) = super::native::serve(cpu, svm.host_state_phys());
        crate::println!("FAILED: cpu {cpu}: {why}");
        super::exit::failure()
    }
    super::cpu::halt_forever()
}
