//! Bare-metal SVSM: from the PVH entry to the running kernel.
//!
//! Boot path: `entry` (32-bit PVH entry, identity paging, long mode) calls [`svsm_main`]
//! with the PVH start-info address (an IGVM launch enters at `igvm_entry32`, shares the
//! switch to long mode and goes to `svsm_igvm_main`, the snp platform). From there: console, heap, CPU tables, boot report,
//! SVM, the launch of the guest (`launch`) and the run loop that serves it (`native`).
//! The guest ends the run with its own verdict; the SVSM stops QEMU with a failure status
//! only when it cannot go on (`exit`).
#![expect(unsafe_code, reason = "the image's entry point, exported by name")]

#[macro_use]
mod console;
mod backtrace;
mod clock;
mod cpu;
mod cpu_tables;
mod disk;
mod dma;
mod elf;
mod entry;
mod exceptions;
mod exit;
mod fpu;
mod fw_cfg;
mod gdb;
mod guest_phys;
mod heap;
mod lapic;
mod launch;
mod migration;
mod mmio;
mod native;
mod pages;
mod pci;
mod percpu;
mod pvh;
mod sealed;
mod smp;
mod snp;
mod svm;
mod symbols;
mod user;
mod vtpm;

use core::panic::PanicInfo;
use sealed::Sealed;

/// First Rust code of an IGVM launch (`entry::igvm_entry32`, after its switch to long
/// mode), on the boot stack with the image's page tables: the snp platform on SEV-SNP. A native (non-SNP) IGVM launch
/// has no guest to run yet: this build's native platform (`svm`) boots through PVH.
extern "C" fn svsm_igvm_main(boot_info: u64) -> ! {
    heap::init();
    // No local-APIC handlers: this launch is SEV-SNP's (or ends at once).
    let tss_rsp0 = cpu_tables::load(false);
    fpu::enable_sse();
    if snp::detected() {
        snp::boot(boot_info, tss_rsp0)
    }
    console::init();
    println!(
        "bulwark-svsm: native IGVM launch (boot info {boot_info:#x}); this build serves a native guest only through PVH: cargo xtask boot"
    );
    exit::failure()
}

/// First Rust code, on the boot stack, with 4 GiB identity-mapped.
#[unsafe(no_mangle)]
extern "C" fn svsm_main(start_info: u32) -> ! {
    console::init();
    let Some(info) = pvh::StartInfo::read(u64::from(start_info)) else {
        println!("no valid PVH start info at {start_info:#x}");
        exit::failure()
    };
    println!("bulwark-svsm {}: booted through PVH, long mode on", env!("CARGO_PKG_VERSION"));
    choose_console(&info);
    heap::init();
    if percpu::install(0, entry::boot_page_tables()).is_none() {
        println!("FAILED: no memory for the boot CPU's page tables");
        exit::failure()
    }
    percpu::set_tss_rsp0(cpu_tables::load(true));
    fpu::enable_sse();
    lapic::mask_legacy_pic();
    lapic::enable();
    let (image_start, image_end) = entry::image_bounds();
    println!("image: {:#x}..{:#x} ({} KiB)", image_start, image_end, (image_end - image_start) / 1024);
    info.report();
    if cmdline_has(&info, "gdb") {
        gdb::start();
    }
    match percpu::harden_identity_map(entry::boot_page_tables(), entry::text_bounds()) {
        Some(split) => println!(
            "memory: the identity map is no-execute outside the image's code and the AP trampoline's 2 MiB ({split} 2 MiB page split)"
        ),
        None => println!("memory: no page to split the identity map; it stays executable"),
    }
    match percpu::close_low_memory(entry::boot_page_tables()) {
        Some(()) => println!(
            "memory: the low 2 MiB are no-execute on every CPU's own page tables (only the boot tables, which the AP trampoline runs on, keep them executable)"
        ),
        None => {
            println!("FAILED: no memory to close the low 2 MiB (guest RAM) to execution");
            exit::failure()
        }
    }
    crash_if_asked(&info);
    let svm = match svm::enable() {
        Ok(svm) => svm,
        Err(e) => {
            println!("FAILED: SVM with nested paging is not available ({e:?}); QEMU needs -cpu EPYC,+svm");
            exit::failure()
        }
    };
    println!("svm: enabled, nested paging available; cpu {} runs on its own page tables", percpu::this_cpu());
    let online = smp::start_aps(entry::boot_page_tables());
    println!("smp: {online} CPU(s) online");
    if cmdline_has(&info, "crash=low") {
        println!("crashing on request (crash=low): calling into the AP trampoline's page");
        cpu::call_data(smp::trampoline_as_ret());
        println!("FAILED: the low 2 MiB were executable");
    }
    // The memory map, read once (`pvh::StartInfo::ram_ranges`).
    let ram = info.ram_ranges();
    let (platform, mut svsm) = match launch::launch(&info, &ram, image_end, online) {
        Ok(launched) => launched,
        Err(why) => {
            println!("FAILED: launch: {why}");
            exit::failure()
        }
    };
    let layout = ::svm::launch::QEMU;
    println!(
        "launch: guest entry {:#x}, SVSM region {:#x}..{:#x}, calling area {:#x}, secrets page {:#x}",
        platform.with_vcpu(0, |v| v.field(abi::vmsa::VmsaField::Rip)).unwrap_or(0),
        layout.svsm_region.start,
        layout.svsm_region.end,
        layout.calling_area,
        layout.secrets
    );
    clock::calibrate();
    let sealed = open_sealed_state(&svsm, &platform, &ram);
    user::boot_check(svsm.pages(), user::Checks::Svm);
    user::start_test_device(svsm.vm_objects());
    vtpm::crash_check();
    let device = migration_device(&ram);
    let incoming = cmdline_has(&info, "migrate=incoming");
    if incoming {
        let Some(pages) = device else {
            println!("FAILED: migrate=incoming, but there is no usable migration device (ivshmem)");
            exit::failure()
        };
        // The vTPM that arrives is kept in this SVSM's own sealed store, if it has one.
        let keep = match sealed {
            Sealed::Open(sealed) => {
                svsm.install_sealed(&mut platform.platform(0), sealed.clone());
                Some(sealed)
            }
            Sealed::NoDisk => None,
            Sealed::Refused => {
                println!(
                    "FAILED: migration: the state disk is refused; the vTPM that arrives would have nowhere to be kept"
                );
                exit::failure()
            }
        };
        arrive(&mut svsm, &platform, pages, keep);
    } else {
        sealed::start_vtpm(&mut svsm, &mut platform.platform(0), sealed);
        if let Some(pages) = device {
            println!("migration: a migration device is present: this SVSM can be a live migration's source");
            migration::arm(&svsm, &platform, pages);
        }
    }
    native::publish(native::Shared { platform, svsm });
    let native::End::Broken(why) = native::serve(0, svm.host_state_phys());
    println!("FAILED: {why}");
    exit::failure()
}

/// Whether a device BAR at `start..end` would overlap memory that is not the host's to
/// give a device: RAM of the launch's memory map (`ram`), the SVSM's own region (which a
/// host's map need not list as RAM) or the local and I/O APICs' registers. The SVSM
/// writes a device's registers into its BARs.
fn not_for_devices(ram: &[(u64, u64)], start: u64, end: u64) -> bool {
    const APICS: core::ops::Range<u64> = 0xFEC0_0000..0xFF00_0000;
    let svsm = &::svm::launch::QEMU.svsm_region;
    let overlaps = |r: &core::ops::Range<u64>| r.start < end && start < r.end;
    pvh::overlaps_ram(ram, start, end) || overlaps(svsm) || overlaps(&APICS)
}

/// The migration device, if QEMU has one (`-device ivshmem-plain`); its memory must not
/// be RAM of the launch's memory map (`ram`, the copy the launch used).
fn migration_device(ram: &[(u64, u64)]) -> Option<svm::migration_device::Rings> {
    match svm::migration_device::find(|start, end| not_for_devices(ram, start, end)) {
        Ok(pages) => Some(pages),
        Err(svm::migration_device::DeviceError::Absent) => None,
        Err(e) => {
            println!("migration: the migration device is unusable ({e:?}); no migration");
            None
        }
    }
}

/// A migration's destination: take the guest's state from the source before the guest's
/// first instruction here, then its vTPM and settings. A failed migration stops this
/// SVSM: the guest runs on at the source and never ran here.
fn arrive(
    svsm: &mut kernel::svsm::Svsm,
    platform: &::svm::shared::SvmShared<svm::hw::BareSvm>,
    mut pages: svm::migration_device::Rings,
    keep: Option<kernel::sealed::SharedSealed>,
) {
    let arrived = match migration::receive(svsm, platform, &pages) {
        Ok(arrived) => arrived,
        Err(e) => {
            println!("FAILED: migration: {e}; the guest never ran here");
            exit::failure()
        }
    };
    // The guest is this SVSM's now: its vTPM's whole NV state goes into this SVSM's sealed
    // store (under this SVSM's key), replacing whatever the store kept for that TPM. If
    // that fails the vTPM does not start here: a TPM whose NV changes would not survive a
    // reboot is not the one the guest had. It is kept as the new incarnation the commit
    // made (one version above where it left the source), so its lineage goes on here.
    // The attestation chain of the source's store goes on here, with the arrival's link.
    let chain = arrived.services.vtpm.as_ref().and_then(|snapshot| snapshot.chain);
    if let Some((mut v, lineage)) = arrived.vtpm.zip(arrived.lineage) {
        match keep {
            Some(sealed) => {
                // A small box each try (it goes with a refused try): the heap had
                // `migration::ARRIVAL_HEAP` free when the commit was approved, and the
                // guest, which alone could have taken it since, has not run here yet.
                let keep = |v: &mut ::vtpm::Vtpm| {
                    let storage = kernel::sealed::VtpmNv::arriving(sealed.clone(), lineage, chain);
                    v.keep_in(alloc::boxed::Box::new(storage))
                };
                // A commit the disk refused before its header left the sealed state open
                // with nothing of it on disk: tried again every 50 ms for up to 10 s (the
                // source has given its copy up; a transient refusal must not lose the TPM).
                let mut kept = keep(&mut v);
                let give_up_at = clock::monotonic_ns().saturating_add(10_000_000_000);
                while kept.is_err() && sealed.lock().failed().is_none() && clock::monotonic_ns() < give_up_at {
                    clock::spin_until(clock::monotonic_ns().saturating_add(50_000_000));
                    kept = keep(&mut v);
                }
                match kept {
                    Ok(()) => {
                        println!(
                            "vtpm: resumed from the source's state (the same EK) in its service process at CPL 3; its NV state is kept in this SVSM's sealed store"
                        );
                        svsm.install_arrived_vtpm(v, lineage);
                    }
                    Err(e) => println!(
                        "vtpm: the state that arrived could not be kept in the sealed store ({e:?}); the vTPM does not start"
                    ),
                }
            }
            None => {
                println!("vtpm: resumed from the source's state (the same EK) in its service process at CPL 3");
                svsm.install_arrived_vtpm(v, lineage);
            }
        }
    }
    let services = arrived.services;
    if let Err(e) = services.apply_settings(svsm, &mut platform.platform(0)) {
        println!("migration: the source's settings were not applied ({e:?})");
    }
    // This SVSM's stream has ended; the guest may move on again when the host starts the
    // next migration.
    migration::stream_ended(&mut pages);
    migration::arm(svsm, platform, pages);
}

/// Find the svm platform's state disk and open the sealed store on it (`sealed::open`),
/// its bounce pool on the SVSM's own heap and its registers by memory access.
fn open_sealed_state(
    svsm: &kernel::svsm::Svsm,
    platform: &::svm::shared::SvmShared<svm::hw::BareSvm>,
    ram: &[(u64, u64)],
) -> Sealed {
    sealed::open(svsm, &mut platform.platform(0), |_| {
        disk::find(|start, end| not_for_devices(ram, start, end), mmio::Mmio::new, dma::identity_pool)
    })
}

/// `-append console=log`: the log goes to the in-memory buffer only (replayed on the
/// serial port if the SVSM fails); `console=serial` (the default) writes both.
fn choose_console(info: &pvh::StartInfo) {
    let mut buf = [0u8; 128];
    match info.cmdline(&mut buf).split(' ').find_map(|w| w.strip_prefix("console=")) {
        Some("log") => {
            println!("console: log buffer only (console=log); the serial port stays quiet unless the SVSM fails");
            console::switch(console::Backends::LogOnly);
        }
        Some("serial") | None => {}
        Some(other) => println!("console: unknown backend `{other}` (serial, log); keeping the serial port"),
    }
}

/// Is `word` one of the command line's words?
fn cmdline_has(info: &pvh::StartInfo, word: &str) -> bool {
    let mut buf = [0u8; 128];
    info.cmdline(&mut buf).split(' ').any(|w| w == word)
}

/// `-append crash=ud` or `crash=panic`: show that faults are reported and stop cleanly.
#[expect(clippy::panic, reason = "crash=panic asks for a panic, to show the panic handler's report")]
fn crash_if_asked(info: &pvh::StartInfo) {
    if cmdline_has(info, "crash=ud") {
        println!("crashing on request (crash=ud)");
        cpu::invalid_opcode();
    }
    if cmdline_has(info, "crash=nx") {
        println!("crashing on request (crash=nx): calling into heap data");
        let ret = alloc::vec![0xC3u8; 64];
        cpu::call_data(&ret);
        println!("FAILED: the heap was executable");
    }
    if cmdline_has(info, "crash=panic") {
        panic!("crashing on request (crash=panic)");
    }
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    println!("PANIC: {info}");
    backtrace::print_here();
    exit::failure()
}
