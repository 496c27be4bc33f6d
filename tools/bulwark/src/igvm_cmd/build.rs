//! `bulwark igvm build`: the SVSM's ELF image, the boot block of `abi::igvm`, the guest
//! firmware with the pages its SEV metadata asks for, and the start state of the first
//! vCPU, as one IGVM file for two platforms (SEV-SNP and native). Layout and reasons:
//! docs/platforms/igvm.md.

use super::{cpuid, elf, ovmf, start};
use abi::igvm::{self as layout, BootInfo, GpaRange, MAX_FIRMWARE_RANGES};
use attest::launch_digest::VMSA_GPA;
use igvm::{IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader, IgvmRevision};
use igvm_defs::{
    IGVM_NATIVE_PLATFORM_VERSION, IGVM_SEV_SNP_PLATFORM_VERSION, IGVM_VHS_PARAMETER, IGVM_VHS_PARAMETER_INSERT,
    IGVM_VHS_SUPPORTED_PLATFORM, IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType,
};
use std::collections::BTreeMap;
use zerocopy::IntoBytes;

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
/// The entry page tables map the first GiB; the SVSM reads the CPUID page through them.
const ENTRY_MAP_TOP: u64 = 1 << 30;

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
    /// Where the SNP pages went that the firmware's metadata names.
    pub places: Places,
}

/// Where the SNP image puts the pages an SNP guest expects at launch: where the firmware's
/// SEV metadata asks (OVMF), or in the boot block without firmware.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Places {
    pub secrets: u64,
    pub cpuid: u64,
    /// The firmware's SVSM calling area, launched as a zero page; `None`: the SVSM makes
    /// the guest's first calling area itself (`DEFAULT_CALLING_AREA_GPA`).
    pub calling_area: Option<u64>,
    /// Firmware memory launched as zero pages: SEC memory and the kernel-hashes page.
    pub prevalidated: Vec<(u64, u64)>,
}

impl Places {
    /// The places `metadata` asks for, refused where they collide with what the image
    /// or the SVSM needs for itself (`firmware`: the firmware image's own range).
    fn new(metadata: &ovmf::Metadata, firmware: Option<(u64, u64)>) -> Result<Self, String> {
        let mut reserved = vec![
            (layout::SVSM_REGION_BASE, layout::SVSM_REGION_BASE + layout::SVSM_REGION_SIZE, "the SVSM region"),
            (layout::GUEST_VMSA_GPA, layout::GUEST_VMSA_GPA + PAGE, "the page the SVSM makes the guest's first VMSA"),
        ];
        if metadata.calling_area().is_none() {
            let ca = layout::DEFAULT_CALLING_AREA_GPA;
            reserved.push((ca, ca + PAGE, "the calling area the SVSM makes when the firmware names none"));
        }
        if let Some((base, size)) = firmware {
            reserved.push((base, base + size, "the firmware image itself"));
        }
        metadata.check_clear_of(&reserved)?;
        let cpuid = metadata.cpuid().unwrap_or(layout::CPUID_GPA);
        if cpuid >= ENTRY_MAP_TOP {
            return Err(format!(
                "the firmware's CPUID page is at {cpuid:#x}: the SVSM reads it through the entry page tables, \
                 which map the first GiB only"
            ));
        }
        let prevalidated = metadata.prevalidated();
        if prevalidated.len() > MAX_FIRMWARE_RANGES {
            return Err(format!(
                "the firmware asks for {} pre-validated ranges; the boot information holds {MAX_FIRMWARE_RANGES}",
                prevalidated.len()
            ));
        }
        Ok(Places {
            secrets: metadata.secrets().unwrap_or(layout::SECRETS_GPA),
            cpuid,
            calling_area: metadata.calling_area(),
            prevalidated,
        })
    }

    /// The SNP-only pages these places launch, by address: the secrets and CPUID pages,
    /// and zero pages for the calling area and the pre-validated ranges.
    fn directives(&self) -> Vec<IgvmDirectiveHeader> {
        let mut pages: BTreeMap<u64, IgvmDirectiveHeader> = BTreeMap::new();
        for (base, size) in &self.prevalidated {
            for gpa in (*base..base + size).step_by(PAGE as usize) {
                pages.insert(gpa, normal(gpa, SNP, vec![]));
            }
        }
        if let Some(ca) = self.calling_area {
            pages.insert(ca, normal(ca, SNP, vec![]));
        }
        pages.insert(self.secrets, page_data(self.secrets, SNP, IgvmPageDataType::SECRETS, vec![]));
        pages.insert(self.cpuid, page_data(self.cpuid, SNP, IgvmPageDataType::CPUID_DATA, cpuid::page()));
        pages.into_values().collect()
    }
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

/// The boot information for SNP (`Some(places)`) or native (`None`).
fn boot_info(snp: Option<&Places>, firmware: Option<(u64, u64)>) -> Vec<u8> {
    let (firmware_base, firmware_size) = firmware.unwrap_or((0, 0));
    let mut prevalidated = [GpaRange::default(); MAX_FIRMWARE_RANGES];
    let ranges = snp.map_or(&[][..], |p| &p.prevalidated[..]);
    for (slot, (base, size)) in prevalidated.iter_mut().zip(ranges) {
        *slot = GpaRange { base: *base, size: *size };
    }
    BootInfo {
        magic: layout::BOOT_INFO_MAGIC,
        svsm_base: layout::SVSM_REGION_BASE,
        svsm_size: layout::SVSM_REGION_SIZE,
        secrets_gpa: snp.map_or(0, |p| p.secrets),
        cpuid_gpa: snp.map_or(0, |p| p.cpuid),
        vp_count_gpa: layout::VP_COUNT_GPA,
        memory_map_gpa: layout::MEMORY_MAP_GPA,
        memory_map_pages: layout::MEMORY_MAP_PAGES,
        firmware_base,
        firmware_size,
        guest_vmpl: 1,
        calling_area_gpa: snp.and_then(|p| p.calling_area).unwrap_or(0),
        prevalidated_count: ranges.len().min(MAX_FIRMWARE_RANGES) as u64,
        prevalidated,
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

/// The guest firmware: its bytes, where it goes (ending at 4 GiB), and where its SEV
/// metadata puts the SNP pages.
#[derive(Debug)]
pub struct Firmware {
    bytes: Vec<u8>,
    range: (u64, u64),
    places: Places,
}

impl Firmware {
    pub fn new(bytes: Vec<u8>) -> Result<Self, String> {
        let range = firmware_range(bytes.len())?;
        let places = Places::new(&ovmf::parse(&bytes)?, Some(range))?;
        Ok(Firmware { bytes, range, places })
    }
}

/// The two parameter areas with their inserts. They come first: QEMU measures an insert
/// that follows a run of page data before that run (docs/platforms/snp-launch.md).
fn parameter_areas() -> Vec<IgvmDirectiveHeader> {
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
    area(VP_COUNT_AREA, PAGE, layout::VP_COUNT_GPA, IgvmDirectiveHeader::VpCount(at_start(VP_COUNT_AREA)))
        .into_iter()
        .chain(area(
            MEMORY_MAP_AREA,
            layout::MEMORY_MAP_PAGES * PAGE,
            layout::MEMORY_MAP_GPA,
            IgvmDirectiveHeader::MemoryMap(at_start(MEMORY_MAP_AREA)),
        ))
        .collect()
}

/// The file: an SNP and a native platform, the guest policy, `directives`.
fn serialize(directives: Vec<IgvmDirectiveHeader>, policy: u64) -> Result<Vec<u8>, String> {
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
    Ok(bytes)
}

/// Build the IGVM file. Order of the directives: the parameter areas, the SNP pages the
/// firmware asks for (and the secrets and CPUID pages) by address, the SVSM's pages by
/// address, the boot block, the firmware image, the two VP contexts (the VMSA last of
/// all page directives, as QEMU/KVM measure it).
pub fn build(svsm_elf: &[u8], firmware: Option<&Firmware>, policy: u64) -> Result<Built, String> {
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
    let firmware_at = firmware.map(|f| f.range);
    let places = match firmware {
        Some(f) => f.places.clone(),
        None => Places::new(&ovmf::Metadata::default(), None)?,
    };

    let mut directives = parameter_areas();
    directives.extend(places.directives());
    directives.extend(svsm.into_iter().map(|(gpa, data)| normal(gpa, BOTH, data)));
    directives.push(normal(layout::BOOT_INFO_GPA, SNP, boot_info(Some(&places), firmware_at)));
    directives.push(normal(layout::BOOT_INFO_GPA, NATIVE, boot_info(None, firmware_at)));
    directives.extend(page_tables(SNP, C_BIT));
    directives.extend(page_tables(NATIVE, 0));
    directives.push(normal(layout::GDT_GPA, BOTH, table(start::GDT)));
    if let Some(Firmware { bytes, range: (base, _), .. }) = firmware {
        let pages = bytes.chunks(PAGE as usize).zip((*base..).step_by(PAGE as usize));
        directives.extend(pages.map(|(data, gpa)| normal(gpa, BOTH, data.to_vec())));
    }
    let (snp_pages, native_pages) = (page_count(&directives, SNP), page_count(&directives, NATIVE));
    // QEMU accepts a VMSA only at the address where KVM measures it.
    directives.push(IgvmDirectiveHeader::SnpVpContext {
        gpa: VMSA_GPA,
        compatibility_mask: SNP,
        vp_index: 0,
        vmsa: start::vmsa(entry),
    });
    directives.push(IgvmDirectiveHeader::X64NativeVpContext {
        compatibility_mask: NATIVE,
        vp_index: 0,
        context: start::native_context(entry),
    });
    Ok(Built {
        bytes: serialize(directives, policy)?,
        entry,
        snp_pages,
        native_pages,
        parameter_pages: 1 + layout::MEMORY_MAP_PAGES,
        firmware: firmware_at,
        places,
    })
}
