//! Exception entry: 32 stubs, 16 bytes apart, each pushing an error code (0 where the CPU
//! pushes none) and its vector, then jumping to a common path of the user's; and the
//! encoding of a 64-bit interrupt gate.

/// Distance between two exception stubs.
pub const STUB_SIZE: u64 = 16;

/// Emit `global_asm!` defining the 32 exception stubs at symbol `$stubs`, each jumping to
/// `$common` (which the caller defines) with `[vector, error code]` on the stack.
#[macro_export]
macro_rules! exception_stubs {
    ($stubs:literal, $common:literal) => {
        core::arch::global_asm!(concat!(
            ".section .text.", $stubs, ", \"ax\"\n",
            ".global ", $stubs, "\n",
            ".p2align 4\n",
            $stubs, ":\n",
            ".set vector, 0\n",
            ".rept 32\n",
            ".p2align 4\n",
            // Vectors 8, 10-14, 17, 21, 29, 30 push an error code; the others get a 0.
            ".if (vector == 8) || (vector >= 10 && vector <= 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)\n",
            "push vector\n",
            ".else\n",
            "push 0\n",
            "push vector\n",
            ".endif\n",
            "jmp ", $common, "\n",
            ".set vector, vector + 1\n",
            ".endr\n",
        ));
    };
}

/// The two words of a present 64-bit interrupt gate to `handler` through code selector
/// `selector`, using interrupt stack `ist` (0 = none).
pub const fn interrupt_gate(handler: u64, selector: u16, ist: u8) -> [u64; 2] {
    let low = (handler & 0xFFFF)
        | (selector as u64) << 16
        | ((ist & 7) as u64) << 32
        | 0x8E << 40
        | ((handler >> 16) & 0xFFFF) << 48;
    [low, handler >> 32]
}
