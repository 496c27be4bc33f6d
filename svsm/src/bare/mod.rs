//! Bare-metal SVSM: from the PVH entry to the running kernel.
//!
//! Boot path: `entry` (32-bit PVH entry, identity paging, long mode) calls [`svsm_main`]
//! with the PVH start-info address. From there: console, heap, boot report, then exit
//! through QEMU's debug-exit device with a status the host reads.

#[macro_use]
mod console;
mod backtrace;
mod cpu;
mod cpu_tables;
mod entry;
mod exceptions;
mod exit;
mod heap;
mod l2;
mod pages;
mod port;
mod pvh;
mod svm;
mod symbols;

use core::panic::PanicInfo;

/// First Rust code, on the boot stack, with 4 GiB identity-mapped.
#[unsafe(no_mangle)]
extern "C" fn svsm_main(start_info: u32) -> ! {
    console::init();
    println!("bulwark-svsm {}: booted through PVH, long mode on", env!("CARGO_PKG_VERSION"));
    heap::init();
    cpu_tables::load();
    let (image_start, image_end) = entry::image_bounds();
    println!("image: {:#x}..{:#x} ({} KiB)", image_start, image_end, (image_end - image_start) / 1024);
    let Some(info) = pvh::StartInfo::read(u64::from(start_info)) else {
        println!("no valid PVH start info at {start_info:#x}");
        exit::exit(exit::Status::Failure)
    };
    info.report();
    crash_if_asked(&info);
    match gate_self_test(&info) {
        Ok(()) => {
            println!("boot complete");
            exit::exit(exit::Status::Success)
        }
        Err(why) => {
            println!("FAILED: {why}");
            exit::exit(exit::Status::Failure)
        }
    }
}

/// Turn SVM on, run an L2 guest that only executes VMMCALL, and measure the round trip.
fn gate_self_test(info: &pvh::StartInfo) -> Result<(), &'static str> {
    let _svm = svm::enable().map_err(|_| "SVM with nested paging is not available (QEMU needs -cpu EPYC,+svm)")?;
    println!("svm: enabled, nested paging available");
    let top = info.ram_top_below_4g() & !0x1F_FFFF;
    let npt = l2::guest_npt(top).ok_or("out of memory for nested page tables")?;
    const CODE: u64 = 0x20_0000;
    // SAFETY: CODE is guest RAM, identity-mapped for the SVSM and outside its own region;
    // no other reference to it exists while the bytes are written.
    unsafe { core::ptr::copy_nonoverlapping(l2::VMMCALL_LOOP.as_ptr(), CODE as *mut u8, l2::VMMCALL_LOOP.len()) };
    let mut vcpu = l2::L2Vcpu::protected_mode(&npt, CODE, CODE + 0x1000).ok_or("out of memory for a VMCB")?;
    let cycles = l2::bare_gate_cycles(&mut vcpu, 1000).map_err(|e| {
        println!("unexpected exit {:#x} (info1 {:#x}, info2 {:#x})", e.code, e.info1, e.info2);
        "the gate self-test guest did not stay on VMMCALL"
    })?;
    println!(
        "svm: L2 guest runs under nested paging (guest RAM {} MiB, SVSM region {:#x}..{:#x} unmapped)",
        top >> 20,
        l2::SVSM_REGION.start,
        l2::SVSM_REGION.end
    );
    println!("bench: bare VMMCALL round trip {cycles} TSC cycles (1000 exits)");
    Ok(())
}

/// `-append crash=ud` or `crash=panic`: show that faults are reported and stop cleanly.
fn crash_if_asked(info: &pvh::StartInfo) {
    let mut buf = [0u8; 128];
    let cmdline = info.cmdline(&mut buf);
    if cmdline.split(' ').any(|w| w == "crash=ud") {
        println!("crashing on request (crash=ud)");
        // SAFETY: UD2 raises #UD, which the exception handler reports; nothing returns.
        unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    }
    if cmdline.split(' ').any(|w| w == "crash=panic") {
        panic!("crashing on request (crash=panic)");
    }
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    println!("PANIC: {info}");
    backtrace::print_here();
    exit::exit(exit::Status::Failure)
}
