//! Port I/O for the test guest: its serial port and QEMU's debug-exit device (reached
//! directly: the SVSM does not intercept port I/O on this platform).

pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects; COM2 and debug-exit belong to this guest.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `outb`.
    unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Leave QEMU with the guest's verdict: exit status 3 = all checks passed, 5 = not.
pub fn exit(passed: bool) -> ! {
    let value: u32 = if passed { 1 } else { 2 };
    // SAFETY: as for `outb`.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") 0xF4u16, in("eax") value, options(nomem, nostack, preserves_flags))
    };
    loop {
        // SAFETY: halting touches no memory; the SVSM sees HLT and ends the run.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) }
    }
}
