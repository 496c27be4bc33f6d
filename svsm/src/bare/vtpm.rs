//! The vTPM on bare metal: libtpms and its libcrypto (Debian's static archives) linked
//! into the image, running on the C runtime of `libc.rs` and csupport/libc.c, each entry
//! inside [`fpu::with_c_state`] so the guest's SSE registers survive it.
#![expect(unsafe_code, reason = "OpenSSL's CPU probe, a C function")]

use super::fpu;
use alloc::boxed::Box;
use vtpm::libtpms::LibTpms;
use vtpm::{TpmEngine, Vtpm};

unsafe extern "C" {
    /// libcrypto's CPU feature probe, normally run from the `.init` section.
    fn OPENSSL_cpuid_setup();
}

/// libtpms with the C state set up around every command.
struct BareTpm(LibTpms);

impl TpmEngine for BareTpm {
    fn execute(&mut self, command: &[u8], response: &mut [u8]) -> usize {
        fpu::with_c_state(|| self.0.execute(command, response))
    }
}

/// Start libtpms and manufacture the vTPM (Startup, EK). Called once, at boot.
pub fn manufacture() -> Result<Vtpm, &'static str> {
    let canary = super::cpu::rdrand().ok_or("no RDRAND for the C code's stack canary")?;
    fpu::set_canary(canary);
    let max_command =
        u32::try_from(abi::vtpm::MAX_COMMAND_SIZE).map_err(|_| "the vTPM's command size is above 4 GiB")?;
    let tpm = fpu::with_c_state(|| {
        // SAFETY: the probe only reads CPUID (and XCR0 when XSAVE is on, which it is not)
        // and fills libcrypto's capability vector; it runs once, before any libcrypto use.
        unsafe { OPENSSL_cpuid_setup() };
        LibTpms::open(max_command)
    })
    .map_err(|_| "libtpms did not start")?;
    Vtpm::manufacture(Box::new(BareTpm(tpm))).map_err(|_| "manufacturing the vTPM failed")
}
