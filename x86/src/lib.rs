//! Bare-metal x86-64 pieces the SVSM image (`svsm/`) and the test guest (`testguest/`)
//! both need: port I/O, a 16550 UART console, the 32 exception entry stubs and IDT gate
//! encoding, a once-only static memory area for heaps, and AES-256-GCM with AES-NI and
//! PCLMULQDQ for the migration stream. Small on purpose; the unsafe here is one instruction
//! per function, AES-GCM's `asm!` blocks aside.
#![no_std]

pub mod aesni;
pub mod area;
pub mod elf;
pub mod idt;
pub mod port;
pub mod uart;
