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
mod native;
mod pages;
mod percpu;
mod pvh;
mod smp;
mod snp;
mod svm;
mod symbols;
mod user;
mod vtpm;

use core::panic::PanicInfo;

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
        let started = clock::monotonic_ns();
        let vtpm = match sealed {
            Sealed::Open(sealed) => {
                svsm.install_sealed(&mut platform.platform(0), sealed.clone());
                vtpm::start_sealed(sealed)
            }
            Sealed::NoDisk => vtpm::manufacture().map(|v| (v, true)),
            Sealed::Refused => {
                Err("its sealed state could not be opened; the vTPM does not start on state it cannot trust")
            }
        };
        match vtpm {
            Ok((v, new)) => {
                let ms = (clock::monotonic_ns() - started) / 1_000_000;
                let how = if new { "manufactured" } else { "started from its sealed NV state" };
                println!(
                    "vtpm: libtpms {how} in {ms} ms in its service process at CPL 3; its EK (RSA-2048, TCG template L-1) is in the attestation manifest"
                );
                svsm.install_vtpm(v);
            }
            Err(e) => println!("vtpm: {e}; protocol 2 is not served"),
        }
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

/// The key request parameters of this launch: guest SVN 0 (the svm platform has no ID
/// block) and the TCB version the firmware commits to.
fn current_key_params() -> kernel::sealed::KeyParams {
    kernel::sealed::KeyParams { guest_svn: 0, tcb_version: svm::psp::committed_tcb() }
}

/// Ask the PSP for the sealed store's key for `params` (bound to this launch), labelled
/// with them; with the first 8 bytes of the key's SHA-256 (a fingerprint to compare).
fn sealing_key(
    svsm: &kernel::svsm::Svsm,
    platform: &::svm::shared::SvmShared<svm::hw::BareSvm>,
    params: kernel::sealed::KeyParams,
) -> Option<(store::StoreKey, u64)> {
    use sha2::{Digest, Sha256};
    match svsm.sealing_key(&mut platform.platform(0), params.guest_svn, params.tcb_version) {
        Ok(mut key) => {
            let digest = Sha256::digest(key);
            let mut fingerprint = [0u8; 8];
            fingerprint.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
            let store_key = store::StoreKey::labelled(key, params.label());
            key.fill(0);
            Some((store_key, u64::from_be_bytes(fingerprint)))
        }
        Err(e) => {
            println!("sealing: no key from the PSP for {params:?}: {e:?}");
            None
        }
    }
}

/// What became of the sealed state at boot.
enum Sealed {
    Open(kernel::sealed::SharedSealed),
    /// No state disk: each boot is a new vTPM.
    NoDisk,
    /// A disk whose store this SVSM cannot open (another key, tampered, unreadable): the
    /// services that keep state there do not start (fail closed).
    Refused,
}

/// Find the state disk and open the sealed store on it with the key of this launch
/// (formatting a blank disk, re-wrapping a store an older TCB's key sealed), printing
/// what a relying party would want to know of it. The key's fingerprint is printed too:
/// `cargo xtask test` checks that two boots of one image get the same key.
fn open_sealed_state(
    svsm: &kernel::svsm::Svsm,
    platform: &::svm::shared::SvmShared<svm::hw::BareSvm>,
    ram: &[(u64, u64)],
) -> Sealed {
    let current = current_key_params();
    let key = sealing_key(svsm, platform, current).map(|(key, fingerprint)| {
        println!(
            "sealing: the PSP derives the sealed store's key, bound to the launch's measurement and policy (SHA-256 fingerprint {fingerprint:016x})"
        );
        key
    });
    let started = clock::monotonic_ns();
    let disk = match svm::disk::find(|start, end| not_for_devices(ram, start, end)) {
        Ok(disk) => disk,
        Err(svm::disk::DiskError::Absent) => {
            println!("sealed: no state disk (virtio-blk, serial bulwark-state); the vTPM's state lasts one boot");
            return Sealed::NoDisk;
        }
        Err(e) => {
            println!("sealed: the state disk could not be started ({e:?})");
            return Sealed::Refused;
        }
    };
    let Some(key) = key else {
        println!("sealed: no key for the state disk");
        return Sealed::Refused;
    };
    let mib = disk.bytes() >> 20;
    let entropy = |buf: &mut [u8]| -> Result<(), store::EntropyError> {
        for chunk in buf.chunks_mut(8) {
            let word = cpu::rdrand().ok_or(store::EntropyError)?.to_le_bytes();
            chunk.copy_from_slice(word.get(..chunk.len()).ok_or(store::EntropyError)?);
        }
        Ok(())
    };
    let older_key = |params| sealing_key(svsm, platform, params).map(|(key, _)| key);
    match kernel::sealed::open_sealed(disk, current, &key, older_key, entropy) {
        Ok(opened) => {
            let store = opened.store;
            let state = store.state();
            let ms = (clock::monotonic_ns() - started) / 1_000_000;
            let how = match (opened.how, opened.rewrapped_from) {
                (_, Some(_)) => "opened, verified and re-wrapped under this launch's key",
                (store::Opened::Existing, None) => "opened and verified",
                (store::Opened::Formatted, None) => "formatted (the disk was blank)",
            };
            if let Some(from) = opened.rewrapped_from {
                println!(
                    "sealed: the state was under the key of an older TCB or SVN ({from:?}, now {current:?}): re-wrapped"
                );
            }
            let mut root = [0u8; 8];
            root.copy_from_slice(state.root.get(..8).unwrap_or(&[0; 8]));
            println!(
                "sealed: state disk of {mib} MiB {how} in {ms} ms: generation {}, {} blobs, root {:016x}",
                state.generation,
                store.len(),
                u64::from_be_bytes(root)
            );
            Sealed::Open(kernel::sealed::Sealed::opened(alloc::boxed::Box::new(store), opened.rewrapped_from.is_some()))
        }
        Err(e) => {
            println!("sealed: the state disk's store is refused: {e:?}");
            Sealed::Refused
        }
    }
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
