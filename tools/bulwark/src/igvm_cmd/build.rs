//! `bulwark igvm build`: the SVSM's ELF image, the boot block of `abi::igvm` and the
//! start state of the first vCPU, as one IGVM file for two platforms (SEV-SNP and native).
//! Layout and reasons: docs/platforms/igvm.md.

use super::{cpuid, elf};
use abi::igvm::{self as layout, BootInfo};
use attest::launch_digest::VMSA_GPA;
use igvm::snp_defs::{SevFeatures, SevSelector, SevVmsa};
use igvm::{IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader, IgvmRevision};
use igvm_defs::{
    IGVM_NATIVE_PLATFORM_VERSION, IGVM_SEV_SNP_PLATFORM_VERSION, IGVM_VHS_PARAMETER, IGVM_VHS_PARAMETER_INSERT,
    IGVM_VHS_SUPPORTED_PLATFORM, IgvmNativeVpContextX64, IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType,
};
use std::collections::BTreeMap;
use zerocopy::{FromZeros, IntoBytes};

/// Compatibility masks: one bit per platform header.
pub const SNP: u32 = 1;
pub const NATIVE: u32 = 2;
const BOTH: u32 = SNP | NATIVE;

const PAGE: u64 = 4096;
const FOUR_GIB: u64 = 1 << 32;

/// The encryption bit of a guest physical address under SNP: bit 51 on EPYC 7003/9004/9005
/// (CPUID 0x8000_001F EBX[5:0]; QEMU's `cbitpos=51`).
pub const C_BIT: u64 = 1 << 51;
const PRESENT_WRITABLE: u64 = 0b11;
const LARGE_PAGE: u64 = 1 << 7;

/// The entry GDT: null, 64-bit code (selector 0x08), flat data (selector 0x10).
const GDT: [u64; 3] = [0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF];
const GDT_LIMIT: u32 = 23;

/// Start registers, both platforms.
const CR0: u64 = 0x8000_0031; // PG, NE, ET, PE
/// PAE; and MCE because KVM ORs the host's CR4.MCE into the VMSA it measures.
const CR4: u64 = 0x60;
/// LME, LMA, NXE; SVME as well on SNP, where KVM always sets it in the VMSA.
const EFER_NATIVE: u64 = 0x0D00;
const EFER_SNP: u64 = 0x1D00;
const RFLAGS: u64 = 0x2;
/// The power-on PAT.
const PAT: u64 = 0x0007_0406_0007_0406;

/// Parameter areas: the vCPU count and the memory map, both filled by the loader.
const VP_COUNT_AREA: u32 = 0;
const MEMORY_MAP_AREA: u32 = 1;

/// A built image and what the summary tells about it.
#[derive(Debug)]
pub struct Built {
    pub bytes: Vec<u8>,
    pub entry: u64,
    /// PageData pages loaded on each platform.
    pub snp_pages: usize,
    pub native_pages: usize,
    /// Pages of the parameter areas (both platforms).
    pub parameter_pages: u64,
    /// `(base, size)` of the guest firmware.
    pub firmware: Option<(u64, u64)>,
}

fn page_data(gpa: u64, mask: u32, data_type: IgvmPageDataType, data: Vec<u8>) -> IgvmDirectiveHeader {
    IgvmDirectiveHeader::PageData { gpa, compatibility_mask: mask, flags: IgvmPageDataFlags::new(), data_type, data }
}

fn normal(gpa: u64, mask: u32, data: Vec<u8>) -> IgvmDirectiveHeader {
    page_data(gpa, mask, IgvmPageDataType::NORMAL, data)
}

/// The SVSM region below the boot block, page by page: the image's bytes, and zeros for
/// .bss, what the segments' file bytes do not cover, and the free rest of the region.
fn svsm_pages(segments: &[elf::Segment]) -> Result<BTreeMap<u64, Vec<u8>>, String> {
    if segments.is_empty() {
        return Err("the SVSM image has no loadable segments".into());
    }
    let mut pages: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for s in segments {
        let end = s.paddr.checked_add(s.memsz).ok_or("a segment's end overflows")?;
        if s.paddr < layout::SVSM_REGION_BASE || end > layout::BOOT_BLOCK_BASE {
            return Err(format!(
                "segment {:#x}..{end:#x} lies outside the SVSM region {:#x}..{:#x} (the top {} KiB of the \
                 region are the boot block)",
                s.paddr,
                layout::SVSM_REGION_BASE,
                layout::BOOT_BLOCK_BASE,
                layout::BOOT_BLOCK_SIZE / 1024
            ));
        }
        // The entry page tables map the first GiB one to one.
        if s.vaddr != s.paddr {
            return Err(format!(
                "segment at {:#x} is linked at virtual address {:#x}: the SVSM must be identity-linked",
                s.paddr, s.vaddr
            ));
        }
        for page in (s.paddr & !(PAGE - 1)..end).step_by(PAGE as usize) {
            pages.entry(page).or_default();
        }
        let (mut at, mut rest) = (s.paddr, s.data);
        while !rest.is_empty() {
            let page = at & !(PAGE - 1);
            let offset = (at - page) as usize;
            let n = rest.len().min(PAGE as usize - offset);
            let bytes = pages.entry(page).or_default();
            bytes.resize(PAGE as usize, 0);
            bytes[offset..offset + n].copy_from_slice(&rest[..n]);
            at += n as u64;
            rest = &rest[n..];
        }
    }
    // The rest of the region below the boot block is the SVSM's page pool: it must be
    // private and validated from the start like the image, so it goes in as zero pages.
    for page in (layout::SVSM_REGION_BASE..layout::BOOT_BLOCK_BASE).step_by(PAGE as usize) {
        pages.entry(page).or_default();
    }
    Ok(pages)
}

fn boot_info(snp: bool, firmware: Option<(u64, u64)>) -> Vec<u8> {
    let (firmware_base, firmware_size) = firmware.unwrap_or((0, 0));
    BootInfo {
        magic: layout::BOOT_INFO_MAGIC,
        svsm_base: layout::SVSM_REGION_BASE,
        svsm_size: layout::SVSM_REGION_SIZE,
        secrets_gpa: if snp { layout::SECRETS_GPA } else { 0 },
        cpuid_gpa: if snp { layout::CPUID_GPA } else { 0 },
        vp_count_gpa: layout::VP_COUNT_GPA,
        memory_map_gpa: layout::MEMORY_MAP_GPA,
        memory_map_pages: layout::MEMORY_MAP_PAGES,
        firmware_base,
        firmware_size,
        guest_vmpl: 1,
    }
    .as_bytes()
    .to_vec()
}

fn table(entries: impl IntoIterator<Item = u64>) -> Vec<u8> {
    entries.into_iter().flat_map(u64::to_le_bytes).collect()
}

/// PML4, PDPT and PD mapping the first GiB one to one with 2 MiB pages; `c_bit` in every
/// entry under SNP, where the tables and the memory are private.
fn page_tables(mask: u32, c_bit: u64) -> [IgvmDirectiveHeader; 3] {
    [
        normal(layout::PML4_GPA, mask, table([layout::PDPT_GPA | PRESENT_WRITABLE | c_bit])),
        normal(layout::PDPT_GPA, mask, table([layout::PD_GPA | PRESENT_WRITABLE | c_bit])),
        normal(layout::PD_GPA, mask, table((0..512u64).map(|i| (i << 21) | PRESENT_WRITABLE | LARGE_PAGE | c_bit))),
    ]
}

/// The SVSM's start state under SNP. Only fields QEMU copies into KVM's vCPU are set (QEMU
/// refuses any other, and KVM measures the VMSA it rebuilds from those registers), with the
/// values KVM would write, so that the VMSA in the file is the VMSA that gets measured.
fn vmsa(rip: u64) -> Box<SevVmsa> {
    let mut v = Box::new(SevVmsa::new_zeroed());
    let flat = |selector, attrib| SevSelector { selector, attrib, limit: 0xFFFF_FFFF, base: 0 };
    // VMSA attributes: descriptor bits 40..47 then 52..55. Code: present, DPL 0,
    // execute/read, accessed, L, G (the GDT's code descriptor, as loaded). Data: present,
    // read/write, accessed.
    v.cs = flat(layout::CODE_SELECTOR, 0x0A9B);
    let data = flat(layout::DATA_SELECTOR, 0x0093);
    (v.ds, v.es, v.ss, v.fs, v.gs) = (data, data, data, data, data);
    v.gdtr = SevSelector { selector: 0, attrib: 0, limit: GDT_LIMIT, base: layout::GDT_GPA };
    // LDTR and TR as at reset: an LDT and a busy 64-bit TSS, both empty.
    v.ldtr = SevSelector { selector: 0, attrib: 0x0082, limit: 0xFFFF, base: 0 };
    v.tr = SevSelector { selector: 0, attrib: 0x008B, limit: 0xFFFF, base: 0 };
    v.efer = EFER_SNP;
    v.cr0 = CR0;
    // The C-bit in CR3: the PML4 itself is private.
    v.cr3 = layout::PML4_GPA | C_BIT;
    v.cr4 = CR4;
    v.rip = rip;
    v.rsi = layout::BOOT_INFO_GPA;
    v.rflags = RFLAGS;
    v.pat = PAT;
    v.xcr0 = 1;
    v.dr6 = 0xFFFF_0FF0;
    v.dr7 = 0x400;
    v.x87_fcw = 0x37F;
    v.mxcsr = 0x1F80;
    // SNP active and nothing else: QEMU refuses any other SEV feature in an IGVM VMSA.
    v.sev_features = SevFeatures::new().with_snp(true);
    v
}

fn native_context(rip: u64) -> Box<IgvmNativeVpContextX64> {
    let mut c = Box::new(IgvmNativeVpContextX64::new_zeroed());
    c.rip = rip;
    c.rsi = layout::BOOT_INFO_GPA;
    c.rflags = RFLAGS;
    c.gdtr_base = layout::GDT_GPA;
    c.gdtr_limit = GDT_LIMIT as u16;
    // Descriptor bits 40..55 (limit bits in 8..11 zero): the same segments as the VMSA's.
    (c.code_selector, c.code_attributes, c.code_limit) = (layout::CODE_SELECTOR, 0xA09B, 0xFFFF_FFFF);
    (c.data_selector, c.data_attributes, c.data_limit) = (layout::DATA_SELECTOR, 0x0093, 0xFFFF_FFFF);
    c.cr0 = CR0;
    c.cr3 = layout::PML4_GPA;
    c.cr4 = CR4;
    c.efer = EFER_NATIVE;
    c
}

fn page_count(directives: &[IgvmDirectiveHeader], mask: u32) -> usize {
    let loads = |d: &&IgvmDirectiveHeader| {
        matches!(d, IgvmDirectiveHeader::PageData { .. }) && d.compatibility_mask().is_some_and(|m| m & mask != 0)
    };
    directives.iter().filter(loads).count()
}

/// The firmware's place: it ends at 4 GiB.
fn firmware_range(size: usize) -> Result<(u64, u64), String> {
    let size = size as u64;
    // Below the SVSM region's end, and small enough that the file's 32-bit data offsets
    // hold (OVMF images are a few MiB).
    let room = (FOUR_GIB - (layout::SVSM_REGION_BASE + layout::SVSM_REGION_SIZE)).min(1 << 30);
    if size == 0 || !size.is_multiple_of(PAGE) {
        return Err(format!("the firmware's size ({size} bytes) is not a non-zero multiple of 4 KiB"));
    }
    if size > room {
        return Err(format!(
            "the firmware ({size} bytes) is larger than {room} bytes, the room below 4 GiB this tool allows"
        ));
    }
    Ok((FOUR_GIB - size, size))
}

/// Build the IGVM file.
pub fn build(svsm_elf: &[u8], firmware: Option<&[u8]>, policy: u64) -> Result<Built, String> {
    let segments = elf::load_segments(svsm_elf)?;
    let entry = elf::symbol(svsm_elf, layout::ENTRY_SYMBOL)?.ok_or_else(|| {
        format!(
            "the SVSM image has no `{}` symbol (the IGVM entry point, abi::igvm::ENTRY_SYMBOL)",
            layout::ENTRY_SYMBOL
        )
    })?;
    if !(layout::SVSM_REGION_BASE..layout::BOOT_BLOCK_BASE).contains(&entry) {
        return Err(format!("`{}` is at {entry:#x}, outside the SVSM region", layout::ENTRY_SYMBOL));
    }
    let svsm = svsm_pages(&segments)?;
    let firmware_at = firmware.map(|f| firmware_range(f.len())).transpose()?;

    let area = |index: u32, bytes: u64, gpa: u64, parameter: IgvmDirectiveHeader| {
        [
            IgvmDirectiveHeader::ParameterArea {
                number_of_bytes: bytes,
                parameter_area_index: index,
                initial_data: vec![],
            },
            parameter,
            IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
                gpa,
                compatibility_mask: BOTH,
                parameter_area_index: index,
            }),
        ]
    };
    let at_start = |index| IGVM_VHS_PARAMETER { parameter_area_index: index, byte_offset: 0 };
    // Parameter inserts first: QEMU measures an insert that follows a run of page data
    // before that run (docs/platforms/snp-launch.md).
    let mut directives: Vec<_> =
        area(VP_COUNT_AREA, PAGE, layout::VP_COUNT_GPA, IgvmDirectiveHeader::VpCount(at_start(VP_COUNT_AREA)))
            .into_iter()
            .chain(area(
                MEMORY_MAP_AREA,
                layout::MEMORY_MAP_PAGES * PAGE,
                layout::MEMORY_MAP_GPA,
                IgvmDirectiveHeader::MemoryMap(at_start(MEMORY_MAP_AREA)),
            ))
            .collect();
    directives.extend(svsm.into_iter().map(|(gpa, data)| normal(gpa, BOTH, data)));
    directives.push(normal(layout::BOOT_INFO_GPA, SNP, boot_info(true, firmware_at)));
    directives.push(normal(layout::BOOT_INFO_GPA, NATIVE, boot_info(false, firmware_at)));
    directives.push(page_data(layout::SECRETS_GPA, SNP, IgvmPageDataType::SECRETS, vec![]));
    directives.push(page_data(layout::CPUID_GPA, SNP, IgvmPageDataType::CPUID_DATA, cpuid::page()));
    directives.extend(page_tables(SNP, C_BIT));
    directives.extend(page_tables(NATIVE, 0));
    directives.push(normal(layout::GDT_GPA, BOTH, table(GDT)));
    if let (Some(bytes), Some((base, _))) = (firmware, firmware_at) {
        let pages = bytes.chunks(PAGE as usize).zip((base..).step_by(PAGE as usize));
        directives.extend(pages.map(|(data, gpa)| normal(gpa, BOTH, data.to_vec())));
    }
    let (snp_pages, native_pages) = (page_count(&directives, SNP), page_count(&directives, NATIVE));
    // QEMU accepts a VMSA only at the address where KVM measures it.
    directives.push(IgvmDirectiveHeader::SnpVpContext {
        gpa: VMSA_GPA,
        compatibility_mask: SNP,
        vp_index: 0,
        vmsa: vmsa(entry),
    });
    directives.push(IgvmDirectiveHeader::X64NativeVpContext {
        compatibility_mask: NATIVE,
        vp_index: 0,
        context: native_context(entry),
    });

    let platform = |compatibility_mask, platform_type, platform_version| {
        IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
            compatibility_mask,
            highest_vtl: 0,
            platform_type,
            platform_version,
            shared_gpa_boundary: 0,
        })
    };
    let platforms = vec![
        platform(SNP, IgvmPlatformType::SEV_SNP, IGVM_SEV_SNP_PLATFORM_VERSION),
        platform(NATIVE, IgvmPlatformType::NATIVE, IGVM_NATIVE_PLATFORM_VERSION),
    ];
    let initialization = vec![IgvmInitializationHeader::GuestPolicy { policy, compatibility_mask: SNP }];
    let file = IgvmFile::new(IgvmRevision::V1, platforms, initialization, directives)
        .map_err(|e| format!("the igvm crate refused the image: {e}"))?;
    let mut bytes = Vec::new();
    file.serialize(&mut bytes).map_err(|e| format!("the igvm crate could not serialize the image: {e}"))?;
    Ok(Built {
        bytes,
        entry,
        snp_pages,
        native_pages,
        parameter_pages: 1 + layout::MEMORY_MAP_PAGES,
        firmware: firmware_at,
    })
}
