//! The native (`svm`) launch on the chip: read what QEMU handed over (the PVH memory map,
//! the guest as a boot module), load and measure the guest, draw the VMPCKs, start the
//! software PSP, and let `bulwark_svm::launch` check the layout and build the platform
//! (docs/platforms/svm.md, "Guest-physical layout").
#![expect(unsafe_code, reason = "loads the guest image into guest-physical memory")]

use super::elf;
use super::guest_phys;
use super::pvh::StartInfo;
use super::svm::hw::{BareSvm, SVSM_REGION};
use super::svm::npt::NestedPageTable;
use alloc::vec::Vec;
use kernel::Svsm;
use sha2::{Digest, Sha384};
use spin::Mutex;
use svm::SvmShared;
use svm::launch::{LaunchError, Plan, QEMU};

/// Copy `data` to guest RAM the plan accepted for the guest image.
fn write(gpa: u64, data: &[u8]) -> Result<(), &'static str> {
    if SVSM_REGION.start < gpa.saturating_add(data.len() as u64) && gpa < SVSM_REGION.end {
        return Err("launch write into SVSM memory");
    }
    // SAFETY: outside the SVSM region (checked) and inside the identity map (checked by
    // guest_phys): guest RAM (the plan checked the segment) that nothing in the SVSM
    // references.
    if unsafe { guest_phys::write(gpa, data) } { Ok(()) } else { Err("launch write beyond mapped memory") }
}

fn why(e: LaunchError) -> &'static str {
    match e {
        LaunchError::Layout(why) => why,
        LaunchError::NoRam => "the memory map names no RAM",
        LaunchError::BadRam(_) => "the memory map has a RAM range that cannot be used (overlapping or beyond 64 bits)",
        LaunchError::LaunchPageNotRam(_) => "a launch page (secrets, calling area, VMSA, page tables) is not RAM",
        LaunchError::ImageTooLarge => "the SVSM image is larger than its 16 MiB region",
        LaunchError::Segment(_) => "a test guest segment overlaps launch pages, the SVSM or the end of RAM",
        LaunchError::Memory(_) => "a launch page could not be written",
        LaunchError::OutOfMemory(what) => what,
    }
}

/// The guest image: load its segments as the plan allows, and measure it. Returns the
/// entry point and SHA-384 of the image as the host handed it over.
fn load_guest(info: &StartInfo, plan: &mut Plan) -> Result<(u64, [u8; 48]), &'static str> {
    let (mod_pa, mod_size) = info.module(0).ok_or("no test guest: boot QEMU with -initrd <testguest ELF>")?;
    let mut header = [0u8; 4096];
    let head_len = usize::try_from(mod_size).map_or(header.len(), |size| size.min(header.len()));
    let head = header.get_mut(..head_len).ok_or("test guest module header")?;
    // SAFETY: the module is RAM QEMU filled; it is copied, never referenced.
    if !unsafe { guest_phys::read(mod_pa, head) } {
        return Err("test guest module outside mapped memory");
    }
    let (entry, segments) = elf::parse(&header, mod_size).ok_or("the test guest is not an x86-64 ELF executable")?;
    let mut chunk = [0u8; 4096];
    // What was launched, for the attestation report: SHA-384 of the guest image as the
    // host handed it over. (Not SNP's launch digest, which chains page by page: that
    // comes with IGVM images.)
    let mut measured = Sha384::new();
    for at in (0..mod_size).step_by(4096) {
        let n = (mod_size - at).min(4096) as usize;
        let part = chunk.get_mut(..n).ok_or("test guest module chunk")?;
        // SAFETY: inside the module QEMU filled; copied, not referenced.
        if !unsafe { guest_phys::read(mod_pa + at, part) } {
            return Err("test guest module outside mapped memory");
        }
        measured.update(&*part);
    }
    for seg in segments.into_iter().flatten() {
        plan.add_segment(seg.paddr, seg.memsz).map_err(why)?;
        if (seg.offset as u64).checked_add(seg.filesz as u64).is_none_or(|end| end > mod_size) {
            return Err("a test guest segment lies outside the module");
        }
        for done in (0..seg.filesz).step_by(4096) {
            let n = (seg.filesz - done).min(4096);
            let part = chunk.get_mut(..n).ok_or("test guest segment chunk")?;
            // SAFETY: inside the module (checked above); copied, not referenced.
            if !unsafe { guest_phys::read(mod_pa + (seg.offset + done) as u64, part) } {
                return Err("test guest module outside mapped memory");
            }
            write(seg.paddr + done as u64, part)?;
        }
        let zero_from = seg.paddr + seg.filesz as u64;
        let end = seg.paddr + seg.memsz;
        let zero_len = usize::try_from(end - zero_from).map_err(|_| "test guest segment too large")?;
        // SAFETY: `zero_from..end` is guest RAM outside the SVSM region (the plan checked
        // the segment).
        if !unsafe { guest_phys::zero(zero_from, zero_len) } {
            return Err("test guest segment beyond mapped memory");
        }
    }
    Ok((entry, measured.finalize().into()))
}

/// Build the guest's world; returns the platform and the SVSM serving it.
/// `ram` is the memory map's RAM, as read once at boot (`StartInfo::ram_ranges`).
pub fn launch(
    info: &StartInfo,
    ram: &[(u64, u64)],
    image_end: u64,
    cpus: u32,
) -> Result<(SvmShared<BareSvm>, Svsm), &'static str> {
    let mut plan = Plan::new(QEMU, ram, super::pvh::ram_top_below_4g(ram), image_end).map_err(why)?;
    let (entry, measurement) = load_guest(info, &mut plan)?;

    // No PSP here: the four VMPCKs are per-boot random keys (VMPCK0 is then taken out of
    // the page by the SVSM, as on SNP).
    let mut vmpcks = [[0u8; 32]; 4];
    for key in &mut vmpcks {
        for word in key.chunks_mut(8) {
            word.copy_from_slice(&super::cpu::rdrand().ok_or("no RDRAND for the VMPCKs")?.to_le_bytes());
        }
    }
    let mut psp = super::svm::psp::launch(vmpcks[0], measurement)?;
    let (certificates, chip_secret) = certify(&psp);
    if let Some(secret) = chip_secret {
        psp.set_chip_secret(secret);
    }
    let npt = NestedPageTable::new().ok_or("out of memory for nested page tables")?;
    let hw = BareSvm { npt: Mutex::new(npt), psp: Mutex::new(Some(psp)) };
    let launched = SvmShared::launch(hw, plan, entry, cpus, &vmpcks, certificates);
    // The launch's copy of the keys goes (the PSP and the secrets page keep theirs).
    for key in &mut vmpcks {
        key.fill(0);
    }
    core::hint::black_box(&vmpcks);
    let (platform, config) = launched.map_err(why)?;
    let svsm = Svsm::new(config, &mut platform.platform(0)).map_err(|_| "the SVSM refused the launch state")?;
    Ok((platform, svsm))
}

/// The certificate table for the PSP's reports, from the launcher's issuing kit (fw_cfg
/// `opt/bulwark/issuing-kit`), and the PSP's chip secret from the same kit; empty and
/// none, with a log line, without a usable kit: reports are then signed but no tool can
/// check them, and derived keys change with every boot's VCEK.
fn certify(psp: &softpsp::SoftPsp) -> (Vec<u8>, Option<[u8; 32]>) {
    use abi::attest::issuing_kit;
    let Some(bytes) = super::fw_cfg::read_file(issuing_kit::FW_CFG_NAME, 64 * 1024) else {
        println!("attestation: no issuing kit from the launcher; reports come without certificates");
        return (Vec::new(), None);
    };
    let Some(kit) = issuing_kit::parse(&bytes) else {
        println!("attestation: the issuing kit is malformed; reports come without certificates");
        return (Vec::new(), None);
    };
    let secret = Some(super::svm::psp::chip_secret(kit.ask_key_pkcs8));
    match super::svm::vcek_cert::issue(&kit, &psp.vcek_public()).map(|vcek| super::svm::vcek_cert::table(&kit, &vcek)) {
        Ok(Some(table)) => {
            println!(
                "attestation: per-boot VCEK certified by the launcher's ASK (NOT AMD hardware); {} bytes of certificates",
                table.len()
            );
            (table, secret)
        }
        Ok(None) | Err(_) => {
            println!("attestation: could not certify the VCEK; reports come without certificates");
            (Vec::new(), secret)
        }
    }
}
