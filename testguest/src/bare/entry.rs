//! Entry: the SVSM's launch starts the guest in 64-bit mode at `_start` with the code
//! segment it describes but no GDT or IDT of the guest's own. The entry loads both (so
//! exceptions work), a stack, and calls `guest_main`. Secondary vCPUs start at
//! `ap_start` and call `ap::ap_main`.

core::arch::global_asm!(
    r#"
    .section .text.start, "ax"
    .global _start
_start:
    cli
    lea rsp, [guest_stack_top]
    lgdt [guest_gdt_ptr]
    push 0x08
    lea rax, [2f]
    push rax
    retfq
2:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    call {idt}
    xor ebp, ebp
    call guest_main
3:
    hlt
    jmp 3b

    /* A secondary vCPU: its VMSA (built by `ap::write_vmsa`) gives RSP and, in RDI, its
       APIC ID. */
    .global ap_start
ap_start:
    cli
    lgdt [guest_gdt_ptr]
    push 0x08
    lea rax, [4f]
    push rax
    retfq
4:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    push rdi
    call {lidt}
    pop rdi
    xor ebp, ebp
    call ap_main
5:
    hlt
    jmp 5b

    .section .rodata.guest_gdt, "a"
    .p2align 3
guest_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
guest_gdt_ptr:
    .word guest_gdt_ptr - guest_gdt - 1
    .quad guest_gdt

    .section .bss.guest_stack, "aw", @nobits
    .p2align 12
    .skip 65536
guest_stack_top:
    "#,
    idt = sym super::probe::load_idt,
    lidt = sym super::probe::lidt,
);
