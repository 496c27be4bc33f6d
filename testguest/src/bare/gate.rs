//! The guest side of the SVSM gate on the `svm` platform: the guest's memory (identity
//! mapped) and VMMCALL, as a `guest::Transport`.
#![expect(unsafe_code, reason = "guest memory and the VMMCALL instruction")]

use guest::{GuestFault, Regs, Transport};

pub struct Vmmcall;

impl Transport for Vmmcall {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestFault> {
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: the guest's own identity-mapped memory; the checks only pass
            // addresses they validated. Volatile: the SVSM writes it behind our back.
            *b = unsafe { core::ptr::read_volatile((gpa + i as u64) as *const u8) };
        }
        Ok(())
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestFault> {
        for (i, b) in data.iter().enumerate() {
            // SAFETY: as in `read`.
            unsafe { core::ptr::write_volatile((gpa + i as u64) as *mut u8, *b) };
        }
        Ok(())
    }

    fn exchange_u8(&mut self, gpa: u64, value: u8) -> Result<u8, GuestFault> {
        let old: u8;
        // SAFETY: an atomic XCHG on the guest's own calling-area byte.
        unsafe {
            core::arch::asm!("xchg byte ptr [{0}], {1}", in(reg) gpa, inout(reg_byte) value => old, options(nostack))
        };
        Ok(old)
    }

    fn request_svsm(&mut self, regs: &mut Regs) {
        // SAFETY: VMMCALL exits to the SVSM, which may change RAX, RCX, RDX, R8 and R9
        // (declared) and guest memory (the asm is not `nomem`).
        unsafe {
            core::arch::asm!(
                "vmmcall",
                inout("rax") regs.rax,
                inout("rcx") regs.rcx,
                inout("rdx") regs.rdx,
                inout("r8") regs.r8,
                inout("r9") regs.r9,
                options(nostack),
            )
        }
    }
}
