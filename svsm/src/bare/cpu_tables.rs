//! The boot CPU's descriptor tables: a GDT with a TSS whose interrupt stacks (IST) give
//! double faults, NMIs and machine checks a known-good stack, and an IDT whose 32
//! exception vectors all lead to [`super::exceptions::report`].
//!
//! Built once at boot into leaked heap memory (they must live forever) and loaded with
//! LGDT/LTR/LIDT; all of it in this module.
#![expect(unsafe_code, reason = "the GDT, IDT and TSS the CPU reads")]

use alloc::boxed::Box;
use alloc::vec::Vec;

/// Stack for each IST entry.
const IST_STACK: usize = 16 * 1024;
const CODE_SELECTOR: u16 = 0x08;
const TSS_SELECTOR: u16 = 0x18;
/// SYSCALL/SYSRET's selector bases (STAR): the kernel's code at 0x08 (data 0x10); the
/// user's data at 0x30 and 64-bit code at 0x38 (SYSRET's base + 8 and + 16; 0x28, the
/// 32-bit user code it never uses, stays null).
pub const STAR_KERNEL_BASE: u16 = 0x08;
pub const STAR_USER_BASE: u16 = 0x28;
/// The user-mode selectors, with RPL 3.
pub const USER_DATA_SELECTOR: u16 = 0x30 | 3;
pub const USER_CODE_SELECTOR: u16 = 0x38 | 3;

/// IST slots: 1 double fault, 2 NMI, 3 machine check; without the local APIC (SEV-SNP)
/// also 4 #VC and 5 every other vector.
pub const IST_DOUBLE_FAULT: u8 = 1;
pub const IST_NMI: u8 = 2;
pub const IST_MACHINE_CHECK: u8 = 3;
const IST_VC: u8 = 4;
const IST_OTHER: u8 = 5;
/// The #VC exception's vector.
const VC_VECTOR: u64 = 29;

use super::cpu::DescriptorPtr;

unsafe extern "C" {
    /// The 32 exception entry stubs (`exceptions.rs`), 16 bytes apart.
    static exception_stubs: u8;
    /// The NMI handler (`exceptions.rs`): an NMI is a kick, and returns at once.
    static nmi_return: u8;
    /// The wake-up IPI's handler (`exceptions.rs`): EOI, return.
    static wake_return: u8;
    /// The spurious-interrupt handler (`exceptions.rs`): return.
    static spurious_return: u8;
    /// The time-slice timer's handler (`user/entry.rs`).
    static user_timer: u8;
}
use x86::idt::STUB_SIZE;

/// One CPU's GDT (with its TSS and IST stacks) and IDT, in leaked memory.
pub struct Tables {
    gdt: &'static mut [u64; 8],
    idt: &'static [u64; 512],
    /// The address of the TSS's RSP0 field: the stack a fault in user mode enters on.
    rsp0: u64,
}

/// Build and load GDT, TSS and IDT on this CPU; the address of its TSS.RSP0. See
/// [`build`] for `local_apic`. For a CPU the SVSM brings up itself at boot (the boot
/// CPU, the svm platform's APs), from a heap that has just been set up: one too small
/// for some 100 KiB of tables halts that CPU (without a word: on SEV-SNP's boot path
/// nothing can be printed before the GHCB exists).
pub fn load(local_apic: bool) -> u64 {
    match build(local_apic) {
        Some(mut tables) => activate(&mut tables),
        None => super::cpu::halt_forever(),
    }
}

/// Build a CPU's tables (leaked: they must live forever), or `None` (nothing kept) when
/// the heap has no room for them. A CPU that comes back under the same index (the snp
/// platform's re-created vCPUs) reuses its tables with [`activate`] instead of building
/// new ones. `local_apic`: the SVSM drives the local
/// APIC (the svm platform: wake-up IPIs, the time-slice timer). Without it (SEV-SNP, where
/// the host injects whatever vector it likes) every vector past the exceptions only
/// returns (the local-APIC handlers acknowledge by writing the xAPIC's EOI register
/// through the identity map, which under SNP is a write into private guest memory at that
/// address), and every gate runs on an IST stack (below).
pub fn build(local_apic: bool) -> Option<Tables> {
    // Everything from the heap first, leaked only once all of it is had.
    let mut stacks = Vec::new();
    stacks.try_reserve_exact(7).ok()?;
    for ist in (1u8..=7).filter(|ist| {
        matches!(*ist, IST_DOUBLE_FAULT | IST_NMI | IST_MACHINE_CHECK)
            || (!local_apic && matches!(*ist, IST_VC | IST_OTHER))
    }) {
        stacks.push((ist, super::heap::zeroed::<u8>(IST_STACK)?));
    }
    let mut tss: Vec<u8> = super::heap::zeroed(104)?;
    let mut idt: Box<[u64; 512]> = super::heap::zeroed::<u64>(512)?.into_boxed_slice().try_into().ok()?;
    let mut gdt: Box<[u64; 8]> = super::heap::zeroed::<u64>(8)?.into_boxed_slice().try_into().ok()?;
    // TSS: IST1..IST7 pointers at byte 36 + 8 * (n - 1); I/O map base past the end.
    for (ist, stack) in stacks {
        let top = (stack.leak().as_ptr() as u64 + IST_STACK as u64) & !0xF;
        let at = 36 + 8 * usize::from(ist - 1);
        tss.get_mut(at..at + 8)?.copy_from_slice(&top.to_le_bytes());
    }
    tss.get_mut(102..104)?.copy_from_slice(&104u16.to_le_bytes());
    let tss = tss.leak();
    let base = tss.as_ptr() as u64;
    let limit = 103u64;
    let tss_low = limit | (base & 0xFF_FFFF) << 16 | 0x89 << 40 | ((base >> 24) & 0xFF) << 56;
    let tss_high = base >> 32;
    // Kernel code and data, the TSS, then the user segments (DPL 3) where SYSRET and
    // `user::entry` expect them (STAR_USER_BASE).
    *gdt = [
        0u64,
        0x00AF_9A00_0000_FFFF,
        0x00CF_9200_0000_FFFF,
        tss_low,
        tss_high,
        0,
        0x00CF_F200_0000_FFFF,
        0x00AF_FA00_0000_FFFF,
    ];
    let gdt = Box::leak(gdt);

    // 256 gates of two quadwords each.
    let stubs = core::ptr::addr_of!(exception_stubs) as u64;
    for (vector, gate) in (0..32u64).zip(idt.chunks_exact_mut(2)) {
        let handler = if vector == 2 { core::ptr::addr_of!(nmi_return) as u64 } else { stubs + vector * STUB_SIZE };
        let ist = match vector {
            8 => IST_DOUBLE_FAULT,
            2 => IST_NMI,
            18 => IST_MACHINE_CHECK,
            VC_VECTOR if !local_apic => IST_VC,
            _ if !local_apic => IST_OTHER,
            _ => 0,
        };
        gate.copy_from_slice(&x86::idt::interrupt_gate(handler, CODE_SELECTOR, ist));
    }
    // On SEV-SNP the host may inject any vector at any instruction boundary, CPL 3 or 0.
    // Each one gets a gate that only returns (a missing gate would be a #GP that ends a
    // process), and every gate has its own stack (IST): a vector taken at CPL 0 right
    // after SYSCALL, before the entry code switched stacks, would otherwise push its frame
    // and the process's registers wherever the process had pointed RSP (into SVSM memory,
    // if it chose to). #VC has a stack of its own, as it nests inside other exceptions'
    // handling (their console lines); nothing taken on one of these stacks takes another
    // exception there and returns.
    if !local_apic {
        for gate in idt.chunks_exact_mut(2).skip(32) {
            let handler = core::ptr::addr_of!(spurious_return) as u64;
            gate.copy_from_slice(&x86::idt::interrupt_gate(handler, CODE_SELECTOR, IST_OTHER));
        }
    }
    // The only interrupts the SVSM takes: the first two end an idle CPU's HLT
    // (`svm/kick.rs`), the timer ends a process's time slice (`user/entry.rs`).
    let local_apic_vectors = [
        (super::lapic::WAKE_VECTOR, core::ptr::addr_of!(wake_return)),
        (super::lapic::SPURIOUS_VECTOR, core::ptr::addr_of!(spurious_return)),
        (super::lapic::TIMER_VECTOR, core::ptr::addr_of!(user_timer)),
    ];
    for (vector, handler) in local_apic_vectors.into_iter().filter(|_| local_apic) {
        // A u8 vector always names one of the 256 gates.
        if let Some(gate) = idt.chunks_exact_mut(2).nth(usize::from(vector)) {
            gate.copy_from_slice(&x86::idt::interrupt_gate(handler as u64, CODE_SELECTOR, 0));
        }
    }
    Some(Tables { gdt, idt: Box::leak(idt), rsp0: base + 4 })
}

/// TSS descriptor type "available 64-bit TSS" (LTR marks it busy, 0xB).
const TSS_AVAILABLE: u64 = 0x89 << 40;
const TSS_TYPE_MASK: u64 = 0xFF << 40;

/// A descriptor table's limit: its last byte's offset. The GDT (40 bytes) and the IDT
/// (4 KiB) are far below the 64 KiB a limit can describe.
fn limit(table: &[u64]) -> u16 {
    u16::try_from(core::mem::size_of_val(table).saturating_sub(1)).unwrap_or(u16::MAX)
}

/// Load `tables` on this CPU; the address of its TSS.RSP0. Their TSS descriptor is made
/// available again first: LTR refuses a busy one, which it is if a CPU used these tables
/// before.
pub fn activate(tables: &mut Tables) -> u64 {
    tables.gdt[3] = tables.gdt[3] & !TSS_TYPE_MASK | TSS_AVAILABLE;
    let (gdt, idt) = (&*tables.gdt, tables.idt);
    let gdt_ptr = DescriptorPtr { limit: limit(gdt), base: gdt.as_ptr() as u64 };
    let idt_ptr = DescriptorPtr { limit: limit(idt), base: idt.as_ptr() as u64 };
    // SAFETY: the tables are leaked (they live forever) and well-formed: the GDT keeps
    // the boot code/data selectors (0x08/0x10) at the same places, so reloading it does
    // not disturb CS/SS; the TSS descriptor is available (type 9) until LTR marks it
    // busy; every IDT gate points at an exception stub in this image.
    unsafe { super::cpu::load_tables(&gdt_ptr, &idt_ptr, TSS_SELECTOR) };
    tables.rsp0
}
