//! The native (`svm`) launch: what QEMU + IGVM + the PSP would do on SNP, done by the
//! SVSM itself before the guest's first instruction.
//!
//! Guest-physical layout (documented in docs/platforms/svm.md):
//!
//! | gpa | what |
//! |---|---|
//! | `0x8000` | secrets page (the SVSM publishes SVSM_BASE/SIZE/CAA/... here) |
//! | `0x9000` | startup calling area |
//! | `0xA000` | startup VMSA (stands for vCPU 0; never mapped for the guest) |
//! | `0xB000..0x11000` | the guest's initial page tables: 4 GiB identity map, 2 MiB pages |
//! | ELF segments | the test guest (a PVH boot module), validated at launch |
//! | `0x100_0000..0x200_0000` | the SVSM (16 MiB; never mapped for the guest) |
//! | other RAM | not validated: the guest validates what it uses (SVSM_CORE_PVALIDATE) |
//!
//! RAM from 256 MiB up is assigned as 2 MiB pages, the rest as 4 KiB pages, so both
//! PVALIDATE sizes meet the behaviour they would on SNP.

use super::elf;
use super::guest_phys;
use super::pvh::StartInfo;
use super::svm::npt::NestedPageTable;
use super::svm::platform::{GUEST_VMPL, PermissionMaps, Slot, SvmPlatform};
use super::svm::vcpu::SvmVcpu;
use abi::hw::rmpadjust::{PERM_ALL, PERM_READ};
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use kernel::addr::{Gpa, PageAddr, PageRange};
use kernel::platform::Level;
use kernel::{Svsm, SvsmConfig};
use rmp::Rmp;
use sha2::{Digest, Sha384};

pub const SECRETS_GPA: u64 = 0x8000;
pub const CALLING_AREA_GPA: u64 = 0x9000;
pub const VMSA_GPA: u64 = 0xA000;
pub const GUEST_PML4: u64 = 0xB000;
const GUEST_PAGE_TABLES: core::ops::Range<u64> = 0xB000..0x11000;
pub const SVSM_REGION: core::ops::Range<u64> = 0x100_0000..0x200_0000;
const HUGE_FROM: u64 = 256 << 20;
const MIB2: u64 = 2 << 20;

fn pages(range: core::ops::Range<u64>) -> core::ops::Range<u64> {
    range.start >> 12..range.end.div_ceil(4096)
}

fn write(gpa: u64, data: &[u8]) -> Result<(), &'static str> {
    if SVSM_REGION.start < gpa.saturating_add(data.len() as u64) && gpa < SVSM_REGION.end {
        return Err("launch write into SVSM memory");
    }
    // SAFETY: outside the SVSM region (checked) and inside the identity map (checked by
    // guest_phys): guest RAM that nothing in the SVSM references.
    if unsafe { guest_phys::write(gpa, data) } { Ok(()) } else { Err("launch write beyond mapped memory") }
}

/// Build the guest's world; returns the platform and the SVSM serving it, and the guest
/// entry point.
pub fn launch(info: &StartInfo, image_end: u64, cpus: u32) -> Result<(SvmPlatform, Svsm), &'static str> {
    if image_end > SVSM_REGION.end {
        return Err("the SVSM image is larger than its 16 MiB region");
    }
    let top = info.ram_top_below_4g() & !(MIB2 - 1);
    let mut rmp = Rmp::new(top >> 12);
    let mut ram = Vec::new();
    for r in (0..info.memmap_entries.min(128)).filter_map(|i| info.memory(i)).filter(|r| r.kind == 1) {
        let (start, end) = (r.addr.next_multiple_of(4096), r.addr.saturating_add(r.size).min(top) & !0xFFF);
        if start >= end {
            continue;
        }
        ram.push(PageRange::new(PageAddr::from_pfn(start >> 12), (end - start) >> 12).ok_or("bad RAM range")?);
        let mut pfn = start >> 12;
        while pfn < end >> 12 {
            let gpa = pfn << 12;
            let huge = gpa >= HUGE_FROM && gpa.is_multiple_of(MIB2) && gpa + MIB2 <= end;
            if SVSM_REGION.contains(&gpa) {
                pfn += 1;
            } else if huge {
                rmp.host_assign_huge(pfn);
                pfn += 512;
            } else {
                rmp.host_assign(pfn, 1);
                pfn += 1;
            }
        }
    }

    // The test guest, from the first boot module.
    let (mod_pa, mod_size) = info.module(0).ok_or("no test guest: boot QEMU with -initrd <testguest ELF>")?;
    let mut header = [0u8; 4096];
    // SAFETY: the module is RAM QEMU filled; it is copied, never referenced.
    if !unsafe { guest_phys::read(mod_pa, &mut header[..(mod_size as usize).min(4096)]) } {
        return Err("test guest module outside mapped memory");
    }
    let (entry, segments) = elf::parse(&header, mod_size).ok_or("the test guest is not an x86-64 ELF executable")?;
    let mut validated: Vec<core::ops::Range<u64>> =
        vec![SECRETS_GPA..SECRETS_GPA + 0x1000, CALLING_AREA_GPA..CALLING_AREA_GPA + 0x1000, GUEST_PAGE_TABLES];
    let mut chunk = [0u8; 4096];
    // What was launched, for the attestation report: SHA-384 of the guest image as the
    // host handed it over. (Not SNP's launch digest, which chains page by page: that
    // comes with IGVM images.)
    let mut measured = Sha384::new();
    for at in (0..mod_size).step_by(4096) {
        let n = (mod_size - at).min(4096) as usize;
        // SAFETY: inside the module QEMU filled; copied, not referenced.
        if !unsafe { guest_phys::read(mod_pa + at, &mut chunk[..n]) } {
            return Err("test guest module outside mapped memory");
        }
        measured.update(&chunk[..n]);
    }
    let measurement: [u8; 48] = measured.finalize().into();
    for seg in segments.into_iter().flatten() {
        let end = seg.paddr.checked_add(seg.memsz).ok_or("segment overflows")?;
        if seg.paddr < GUEST_PAGE_TABLES.end || end > top || (seg.paddr < SVSM_REGION.end && SVSM_REGION.start < end) {
            return Err("a test guest segment overlaps launch pages, the SVSM or the end of RAM");
        }
        if (seg.offset as u64).checked_add(seg.filesz as u64).is_none_or(|end| end > mod_size) {
            return Err("a test guest segment lies outside the module");
        }
        let zero_from = seg.paddr + seg.filesz as u64;
        for done in (0..seg.filesz).step_by(4096) {
            let n = (seg.filesz - done).min(4096);
            // SAFETY: inside the module (checked above); copied, not referenced.
            if !unsafe { guest_phys::read(mod_pa + (seg.offset + done) as u64, &mut chunk[..n]) } {
                return Err("test guest module outside mapped memory");
            }
            write(seg.paddr + done as u64, &chunk[..n])?;
        }
        // SAFETY: `zero_from..end` is guest RAM outside the SVSM region (checked above).
        if !unsafe { guest_phys::zero(zero_from, (end - zero_from) as usize) } {
            return Err("test guest segment beyond mapped memory");
        }
        validated.push(seg.paddr & !0xFFF..end);
    }

    // The guest's initial page tables: identity map of 4 GiB with 2 MiB pages.
    let mut pt = vec![0u8; (GUEST_PAGE_TABLES.end - GUEST_PAGE_TABLES.start) as usize];
    let pdpt = GUEST_PML4 + 0x1000;
    pt[..8].copy_from_slice(&(pdpt | 3).to_le_bytes());
    for g in 0..4u64 {
        let pd = pdpt + 0x1000 * (g + 1);
        let at = 0x1000 + 8 * g as usize;
        pt[at..at + 8].copy_from_slice(&(pd | 3).to_le_bytes());
        for i in 0..512u64 {
            let at = 0x2000 + (g as usize * 512 + i as usize) * 8;
            pt[at..at + 8].copy_from_slice(&((g << 30) | (i << 21) | 0x83).to_le_bytes());
        }
    }
    write(GUEST_PML4, &pt)?;
    // No PSP here: the four VMPCKs are per-boot random keys (VMPCK0 is then taken out of
    // the page by the SVSM, as on SNP).
    let mut secrets = [0u8; 4096];
    for word in secrets[0x20..0xA0].chunks_mut(8) {
        word.copy_from_slice(&super::cpu::rdrand().ok_or("no RDRAND for the VMPCKs")?.to_le_bytes());
    }
    write(SECRETS_GPA, &secrets)?;
    let mut vmpck0 = [0u8; 32];
    vmpck0.copy_from_slice(&secrets[0x20..0x40]);
    let psp = super::svm::psp::launch(vmpck0, measurement)?;
    let certificates = certify(&psp);
    secrets.fill(0);
    write(CALLING_AREA_GPA, &[0u8; 4096])?;

    // Page state as the launch leaves it.
    for range in &validated {
        for pfn in pages(range.clone()) {
            let e = rmp.entry_mut(pfn).ok_or("launch page beyond RAM")?;
            e.validated = true;
            e.perms[usize::from(GUEST_VMPL)] = if pfn == SECRETS_GPA >> 12 { PERM_READ } else { PERM_ALL };
        }
    }
    let vmsa = rmp.entry_mut(VMSA_GPA >> 12).ok_or("VMSA page beyond RAM")?;
    vmsa.validated = true;
    vmsa.vmsa = true;

    let npt = NestedPageTable::new().ok_or("out of memory for nested page tables")?;
    let maps = PermissionMaps::new().ok_or("out of memory for the permission maps")?;
    let mut platform = SvmPlatform {
        rmp,
        npt,
        vcpus: BTreeMap::new(),
        cpus,
        maps,
        psp: Some(psp),
        certificates,
        log_level: Level::Info,
    };
    for range in &validated {
        platform.sync(pages(range.clone())).map_err(|_| "out of memory for nested page tables")?;
    }
    let startup = SvmVcpu::long_mode(&platform.npt, &platform.maps, VMSA_GPA, entry, 0, GUEST_PML4)
        .ok_or("out of memory for the startup vCPU")?;
    platform.vcpus.insert(0, Slot::Here(startup));

    let first_free = image_end.next_multiple_of(4096);
    let config = SvsmConfig {
        ram,
        svsm_region: PageRange::new(
            PageAddr::from_pfn(SVSM_REGION.start >> 12),
            (SVSM_REGION.end - SVSM_REGION.start) >> 12,
        )
        .ok_or("bad SVSM region")?,
        pool_reserve: (first_free >> 12..SVSM_REGION.end >> 12).map(PageAddr::from_pfn).collect(),
        prevalidated: validated
            .iter()
            .filter_map(|r| PageRange::new(PageAddr::from_pfn(r.start >> 12), pages(r.clone()).count() as u64))
            .collect(),
        startup_vmsa: PageAddr::from_pfn(VMSA_GPA >> 12),
        startup_calling_area: Gpa(CALLING_AREA_GPA),
        startup_apic_id: 0,
        max_vcpus: 8,
        // Small enough that long lists return SVSM_ERR_INCOMPLETE, as the suite checks.
        pages_per_call: 256,
        secrets_page: Some(PageAddr::from_pfn(SECRETS_GPA >> 12)),
    };
    let svsm = Svsm::new(config, &mut platform).map_err(|_| "the SVSM refused the launch state")?;
    Ok((platform, svsm))
}

/// The certificate table for the PSP's reports, from the launcher's issuing kit (fw_cfg
/// `opt/bulwark/issuing-kit`); empty, with a log line, without a usable kit: reports are
/// then signed but no tool can check them.
fn certify(psp: &softpsp::SoftPsp) -> alloc::vec::Vec<u8> {
    use abi::attest::issuing_kit;
    let Some(bytes) = super::fw_cfg::read_file(issuing_kit::FW_CFG_NAME, 64 * 1024) else {
        println!("attestation: no issuing kit from the launcher; reports come without certificates");
        return alloc::vec::Vec::new();
    };
    let Some(kit) = issuing_kit::parse(&bytes) else {
        println!("attestation: the issuing kit is malformed; reports come without certificates");
        return alloc::vec::Vec::new();
    };
    match super::svm::vcek_cert::issue(&kit, &psp.vcek_public()).map(|vcek| super::svm::vcek_cert::table(&kit, &vcek)) {
        Ok(Some(table)) => {
            println!(
                "attestation: per-boot VCEK certified by the launcher's ASK (NOT AMD hardware); {} bytes of certificates",
                table.len()
            );
            table
        }
        Ok(None) | Err(_) => {
            println!("attestation: could not certify the VCEK; reports come without certificates");
            alloc::vec::Vec::new()
        }
    }
}
