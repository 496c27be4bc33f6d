//! Bare-metal SVSM: from the PVH entry to the running kernel.
//!
//! Boot path: `entry` (32-bit PVH entry, identity paging, long mode) calls [`svsm_main`]
//! with the PVH start-info address. From there: console, heap, boot report, then exit
//! through QEMU's debug-exit device with a status the host reads.

#[macro_use]
mod console;
mod entry;
mod exit;
mod heap;
mod port;
mod pvh;

use core::panic::PanicInfo;

/// First Rust code, on the boot stack, with 4 GiB identity-mapped.
#[unsafe(no_mangle)]
extern "C" fn svsm_main(start_info: u32) -> ! {
    console::init();
    println!("bulwark-svsm {}: booted through PVH, long mode on", env!("CARGO_PKG_VERSION"));
    heap::init();
    let (image_start, image_end) = entry::image_bounds();
    println!("image: {:#x}..{:#x} ({} KiB)", image_start, image_end, (image_end - image_start) / 1024);
    match pvh::StartInfo::read(u64::from(start_info)) {
        Some(info) => info.report(),
        None => println!("no valid PVH start info at {start_info:#x}"),
    }
    println!("boot complete");
    exit::exit(exit::Status::Success)
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    println!("PANIC: {info}");
    exit::exit(exit::Status::Failure)
}
