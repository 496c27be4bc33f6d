//! The test guest's bare-metal side: entry, COM2 console, the VMMCALL gate, fault probes,
//! and the checks it runs against the SVSM.
#![expect(unsafe_code, reason = "the guest's entry point, exported by name")]

#[macro_use]
mod console;
mod agent;
mod ap;
mod checks;
mod device;
mod entry;
mod evidence;
mod gate;
mod heap;
mod io;
mod isolation;
mod msrs;
mod ocp;
mod probe;
mod suite;

use core::panic::PanicInfo;

#[unsafe(no_mangle)]
extern "C" fn guest_main() -> ! {
    console::init();
    heap::init();
    println!("testguest: running as an L2 guest");
    let (checks_passed, calling_area) = checks::run_all();
    println!("testguest: conformance suite over VMMCALL");
    let (passed, failed, skipped) = suite::run(calling_area);
    println!("conformance over VMMCALL: {passed} passed, {failed} failed, {skipped} skipped");
    if agent::present() {
        let mut c = guest::Client::new(gate::Vmmcall, suite::STARTUP_CA);
        agent::serve(&mut c, suite::SCRATCH);
    }
    io::exit(checks_passed && failed == 0)
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    println!("testguest PANIC: {info}");
    io::exit(false)
}
