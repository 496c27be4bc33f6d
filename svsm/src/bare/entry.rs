//! The two entries of the boot CPU, both in 32-bit protected mode with paging off, and
//! the one switch to long mode they share:
//!
//! - `pvh_entry32`: QEMU's `-kernel` loader finds it through the Xen PHYS32_ENTRY ELF note;
//!   EBX = physical address of the PVH start-info structure. It identity-maps the first
//!   4 GiB with 2 MiB pages (tables in .bss) and calls `svsm_main(start_info)`.
//! - `igvm_entry32` (`abi::igvm::ENTRY_SYMBOL`): the start state of an IGVM launch, the one
//!   QEMU/KVM keep for SEV-SNP (docs/platforms/igvm.md); ESI = boot information, no stack.
//!   It takes the image's own page tables at `abi::igvm::PML4_GPA` (on SNP they carry the
//!   C-bit) and calls `svsm_igvm_main(boot_info)`.
//!
//! The switch: PAE, CR3, EFER.LME|NXE, CR0.PG, a 64-bit GDT, a far return into 64-bit
//! code, the boot stack. Every `cargo xtask boot` runs it through the PVH entry. Under
//! SEV-SNP the same steps work as in OVMF's reset vector (OvmfPkg/ResetVector/Ia32/
//! PageTables64.nasm.inc, Flat32ToFlat64.nasm.inc), Linux's startup_32
//! (arch/x86/boot/compressed/head_64.S) and COCONUT's boot loader (boot/bldr/src/main.rs):
//! with paging off every access is private, CR3 is loaded from 32-bit code without the
//! C-bit, and the CR and EFER writes are trapped by the host after they complete, never
//! a #VC; EFER is read and written back so SVME stays set. Nothing here executes CPUID.
//! All of it is assembly in this one module; it runs before any Rust code.
#![expect(unsafe_code, reason = "the boot entry and the linker's symbols")]

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a"
    .p2align 2
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .p2align 2
    .long pvh_entry32

    .section .text.entry32, "ax"
    .code32
    .global pvh_entry32
pvh_entry32:
    cli
    cld
    mov esi, ebx

    /* 2048 PD entries of 2 MiB: identity map of 0..4 GiB. */
    lea edi, [boot_pd]
    xor ecx, ecx
2:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov [edi + ecx * 8], eax
    mov dword ptr [edi + ecx * 8 + 4], 0
    inc ecx
    cmp ecx, 2048
    jb 2b

    /* PDPT[0..4] -> the four PDs; PML4[0] -> PDPT. */
    lea eax, [boot_pd]
    or eax, 3
    lea edi, [boot_pdpt]
    xor ecx, ecx
3:
    mov [edi + ecx * 8], eax
    mov dword ptr [edi + ecx * 8 + 4], 0
    add eax, 4096
    inc ecx
    cmp ecx, 4
    jb 3b
    lea eax, [boot_pdpt]
    or eax, 3
    mov [boot_pml4], eax

    lea eax, [boot_pml4]
    lea edi, [{main}]
    jmp long_mode32

    /* The IGVM entry: ESI = boot information; the image's page tables. */
    .global igvm_entry32
igvm_entry32:
    cli
    cld
    mov eax, {igvm_pml4}
    lea edi, [{igvm_main}]

    /* EAX = the PML4 to run on, ESI = the argument, EDI = the 64-bit function to call. */
long_mode32:
    lea esp, [boot_stack_top]
    mov ebx, eax
    /* PAE, then CR3, then EFER.LME|NXE (read back first: SVME must stay), then paging. */
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    mov cr3, ebx
    mov ecx, 0xC0000080
    rdmsr
    or eax, (1 << 8) | (1 << 11)
    wrmsr
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16) | 1
    mov cr0, eax

    lgdt [boot_gdt_ptr]
    push 0x08
    lea eax, [4f]
    push eax
    retf

    .code64
4:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lea rsp, [boot_stack_top]
    xor ebp, ebp
    mov eax, edi
    mov edi, esi
    call rax
5:
    cli
    hlt
    jmp 5b

    /* A new CPU of the snp platform: its VMSA set RSP (a stack in its SVSM pages) and
       RDI (its index). */
    .global igvm_ap_entry64
igvm_ap_entry64:
    cli
    cld
    xor ebp, ebp
    call {ap_main}
7:
    cli
    hlt
    jmp 7b

    /* Null, 64-bit code (selector 0x08), data (0x10). */
    .section .rodata.boot_gdt, "a"
    .p2align 3
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
boot_gdt_ptr:
    .word boot_gdt_ptr - boot_gdt - 1
    .quad boot_gdt

    /* Boot page tables and stack, zeroed by the loader (NOLOAD .bss). */
    .section .bss.boot, "aw", @nobits
    .p2align 12
    .global boot_pml4
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
boot_stack:
    .skip {stack_size}
boot_stack_top:
    "#,
    stack_size = const BOOT_STACK_SIZE,
    main = sym super::svsm_main,
    igvm_main = sym super::svsm_igvm_main,
    igvm_pml4 = const abi::igvm::PML4_GPA,
    ap_main = sym super::snp::ap_main,
);

const BOOT_STACK_SIZE: usize = 64 * 1024;

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
    static __text_end: u8;
}

/// Physical bounds of the image's code (identity-mapped).
pub fn text_bounds() -> (u64, u64) {
    (core::ptr::addr_of!(__image_start) as u64, core::ptr::addr_of!(__text_end) as u64)
}

unsafe extern "C" {
    static igvm_ap_entry64: u8;
}

/// Where a new CPU of the snp platform starts (its SVSM VMSA's RIP).
pub fn igvm_ap_entry() -> u64 {
    core::ptr::addr_of!(igvm_ap_entry64) as u64
}

unsafe extern "C" {
    /// The boot page tables' root (identity map of 4 GiB), shared with the APs.
    static boot_pml4: u8;
}

/// Physical address of the boot page tables' root.
pub fn boot_page_tables() -> u64 {
    core::ptr::addr_of!(boot_pml4) as u64
}

/// Physical bounds of the loaded image (identity-mapped).
pub fn image_bounds() -> (u64, u64) {
    (core::ptr::addr_of!(__image_start) as u64, core::ptr::addr_of!(__image_end) as u64)
}
