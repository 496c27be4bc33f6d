//! Ending a QEMU run with a status the host can read: QEMU's `isa-debug-exit` device at
//! port 0xF4 exits with `(value << 1) | 1`, so success (1) gives 3 and failure (2) gives 5
//! -- never 0, which QEMU also returns for a triple fault.

use super::port::outl;

pub const DEBUG_EXIT_PORT: u16 = 0xF4;

#[derive(Clone, Copy, Debug)]
pub enum Status {
    Success = 1,
    Failure = 2,
}

pub fn exit(status: Status) -> ! {
    outl(DEBUG_EXIT_PORT, status as u32);
    // Without the device (another VMM): stop here.
    loop {
        // SAFETY: `hlt` with interrupts off parks the CPU; it touches no memory.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) }
    }
}
