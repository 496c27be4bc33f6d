//! The test guest's bare-metal side: entry, COM2 console, the VMMCALL gate, fault probes,
//! and the checks it runs against the SVSM.

#[macro_use]
mod console;
mod checks;
mod entry;
mod gate;
mod io;
mod probe;

use core::panic::PanicInfo;

#[unsafe(no_mangle)]
extern "C" fn guest_main() -> ! {
    console::init();
    println!("testguest: running as an L2 guest");
    let passed = checks::run_all();
    io::exit(passed)
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    println!("testguest PANIC: {info}");
    io::exit(false)
}
