//! Ending a QEMU run when the SVSM cannot go on: QEMU's `isa-debug-exit` device at port
//! 0xF4 exits with `(value << 1) | 1`, so the failure value 2 gives status 5 -- never 0,
//! which QEMU also returns for a triple fault. (Success is the guest's to report: it
//! writes 1 to the same device when its checks pass.)

use x86::port::outl;

pub const DEBUG_EXIT_PORT: u16 = 0xF4;
const FAILURE: u32 = 2;
/// A migration source that committed: status 7.
const MIGRATED: u32 = 3;

pub fn failure() -> ! {
    super::console::replay_for_failure();
    // On SEV-SNP the host learns of it through a GHCB termination request.
    super::snp::fail();
    outl(DEBUG_EXIT_PORT, FAILURE);
    // Without the device (another VMM): stop here.
    super::cpu::halt_forever()
}

/// A migration's source after its commit: the guest runs on at the destination, and
/// never again here.
pub fn migrated() -> ! {
    outl(DEBUG_EXIT_PORT, MIGRATED);
    super::cpu::halt_forever()
}
