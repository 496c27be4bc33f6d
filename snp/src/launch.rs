//! The SEV-SNP launch as the SVSM takes it over from an IGVM image (`abi::igvm`,
//! docs/platforms/igvm.md): the boot information, CPUID page, memory map and vCPU count
//! the image and its loader left, checked; then the guest's calling area and first vCPU,
//! the firmware's pages for the guest (the ones its SEV metadata asked the launch for),
//! and the kernel's description of the launch.
//!
//! The bare-metal boot (`svsm/src/bare/snp/mod.rs`) calls these in order; the model runs
//! the same sequence over an image `bulwark igvm build` made (tools/bulwark/tests).

use crate::cpuid::CpuidTable;
use crate::hw::SnpHw;
use crate::platform::SnpPlatform;
use abi::hw::rmpadjust::{PERM_ALL, PERM_READ, PERM_WRITE};
use abi::igvm::{BOOT_INFO_MAGIC, BootInfo, MEMORY_TYPE_MEMORY, MemoryMapEntry, SVSM_REGION_BASE, SVSM_REGION_SIZE};
use alloc::vec::Vec;
use kernel::SvsmConfig;
use kernel::addr::{Gpa, PageAddr, PageRange, PageSize};
use kernel::platform::Platform;
use zerocopy::FromBytes;

/// The guest's first calling area when the firmware names none: guest RAM just below the
/// SVSM region. The guest finds it in the secrets page and must keep it reserved.
pub const CALLING_AREA_GPA: u64 = abi::igvm::DEFAULT_CALLING_AREA_GPA;
/// The guest's first VMSA: the guest RAM page below the default calling area. Like every
/// guest VMSA it is a guest page the SVSM made a VMSA (the kernel refuses one in SVSM
/// memory); the guest cannot touch it while it is one.
pub const GUEST_VMSA_GPA: u64 = abi::igvm::GUEST_VMSA_GPA;
/// Memory-map pages the SVSM reads at most.
const MAX_MEMORY_MAP_PAGES: u64 = 4;

/// Why the launch cannot be served; the SVSM stops with `term::BOOT_INFO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaunchError {
    /// A launch page could not be read.
    Unreadable(u64),
    /// No boot information, or one that does not describe this image.
    BootInfo(&'static str),
    /// The CPUID page holds more entries than it can.
    CpuidPage,
    /// The CPUID page's C-bit position is not one an SNP processor has.
    CBit(u8),
    /// The memory map names no RAM.
    NoRam,
    /// Making the calling area or the first vCPU failed.
    Setup(&'static str),
}

/// What the launch handed over, checked.
#[derive(Clone, Debug)]
pub struct Launch {
    pub info: BootInfo,
    pub cpuid: CpuidTable,
    /// Position of the C-bit, from the CPUID page (which the PSP checked), never from
    /// the host's SEV_INFO answer.
    pub c_bit: u8,
    /// CPUID(1).EAX, which a CPU leaves in EDX at reset.
    pub signature: u32,
    pub ram: Vec<PageRange>,
    /// vCPUs the loader says the guest has (1 if it says nothing usable).
    pub vcpus: u32,
    /// The guest's first calling area: the firmware's, which the launch validated, or
    /// `CALLING_AREA_GPA`, which the SVSM validates.
    pub calling_area: PageAddr,
    pub calling_area_launched: bool,
    /// Firmware memory the launch validated for the guest (`BootInfo::prevalidated`).
    pub firmware_ranges: Vec<PageRange>,
}

fn read<H: SnpHw + ?Sized>(hw: &H, gpa: u64, buf: &mut [u8]) -> Result<(), LaunchError> {
    hw.read(gpa, buf).map_err(|_| LaunchError::Unreadable(gpa))
}

/// Read and check the boot block the image's entry points at (`info_gpa`, in RSI).
pub fn take_over<H: SnpHw + ?Sized>(hw: &H, info_gpa: u64, max_vcpus: u32) -> Result<Launch, LaunchError> {
    let mut bytes = [0u8; core::mem::size_of::<BootInfo>()];
    read(hw, info_gpa, &mut bytes)?;
    let info = BootInfo::read_from_bytes(&bytes).map_err(|_| LaunchError::BootInfo("unreadable"))?;
    if info.magic != BOOT_INFO_MAGIC {
        return Err(LaunchError::BootInfo("no Bulwark boot information (magic)"));
    }
    // The image is linked into this region; a different one is not an image of ours.
    if info.svsm_base != SVSM_REGION_BASE || info.svsm_size != SVSM_REGION_SIZE {
        return Err(LaunchError::BootInfo("the SVSM region is not the one the image is linked into"));
    }
    if !(1..=3).contains(&info.guest_vmpl) {
        return Err(LaunchError::BootInfo("the guest VMPL is not 1..3"));
    }
    if info.secrets_gpa == 0 || info.cpuid_gpa == 0 {
        return Err(LaunchError::BootInfo("no secrets or CPUID page (a native image?)"));
    }
    let mut page = [0u8; 4096];
    read(hw, info.cpuid_gpa, &mut page)?;
    let cpuid = CpuidTable::parse(&page).map_err(|_| LaunchError::CpuidPage)?;
    let c_bit = (cpuid.lookup(0x8000_001F, 0, 1, 0)[1] & 0x3F) as u8;
    if !(32..52).contains(&c_bit) {
        return Err(LaunchError::CBit(c_bit));
    }
    let signature = cpuid.lookup(1, 0, 1, 0)[0];

    let pages = info.memory_map_pages.min(MAX_MEMORY_MAP_PAGES) as usize;
    let mut map = alloc::vec![0u8; pages * 4096];
    read(hw, info.memory_map_gpa, &mut map)?;
    let ram: Vec<PageRange> = map
        .chunks_exact(core::mem::size_of::<MemoryMapEntry>())
        .filter_map(|c| MemoryMapEntry::read_from_bytes(c).ok())
        .take_while(|e| e.number_of_pages != 0)
        .filter(|e| e.entry_type == MEMORY_TYPE_MEMORY)
        .filter_map(|e| PageRange::new(PageAddr::from_pfn(e.starting_gpa_page_number), e.number_of_pages))
        .collect();
    if ram.is_empty() {
        return Err(LaunchError::NoRam);
    }
    let mut count = [0u8; 4];
    read(hw, info.vp_count_gpa, &mut count)?;
    let vcpus = u32::from_le_bytes(count).clamp(1, max_vcpus.max(1));
    let (calling_area, calling_area_launched) = match info.calling_area_gpa {
        0 => (PageAddr::new(CALLING_AREA_GPA), false),
        gpa => (PageAddr::new(gpa).filter(|p| outside_svsm(*p, 1)), true),
    };
    let calling_area = calling_area.ok_or(LaunchError::BootInfo("the calling area is not a guest page"))?;
    let firmware_ranges = firmware_ranges(&info)?;
    Ok(Launch { info, cpuid, c_bit, signature, ram, vcpus, calling_area, calling_area_launched, firmware_ranges })
}

/// `pages` pages from `start` lie outside the SVSM region (and do not wrap).
fn outside_svsm(start: PageAddr, pages: u64) -> bool {
    let svsm_end = SVSM_REGION_BASE + SVSM_REGION_SIZE;
    let end = pages.checked_mul(4096).and_then(|len| start.raw().checked_add(len));
    end.is_some_and(|end| end <= SVSM_REGION_BASE || start.raw() >= svsm_end)
}

/// The firmware ranges of the boot information: whole pages, outside the SVSM region.
fn firmware_ranges(info: &BootInfo) -> Result<Vec<PageRange>, LaunchError> {
    let count = usize::try_from(info.prevalidated_count).unwrap_or(usize::MAX);
    let ranges = info.prevalidated.get(..count).ok_or(LaunchError::BootInfo("too many firmware ranges"))?;
    ranges
        .iter()
        .map(|r| {
            let pages = r.size >> 12;
            PageAddr::new(r.base)
                .filter(|base| r.size != 0 && r.size % 4096 == 0 && outside_svsm(*base, pages))
                .and_then(|base| PageRange::new(base, pages))
                .ok_or(LaunchError::BootInfo("a firmware range is not whole guest pages outside the SVSM region"))
        })
        .collect()
}

/// Make the guest's calling area (validated, zeroed, the guest's) and first vCPU (reset
/// state, a VMSA, announced to the host), give the guest its firmware pages, and
/// describe the launch to the kernel. The
/// SVSM's page pool is the region from `image_end` up to the boot block.
pub fn prepare<H: SnpHw>(p: &mut SnpPlatform<H>, launch: &Launch, image_end: u64) -> Result<SvsmConfig, LaunchError> {
    let setup = LaunchError::Setup;
    let page = |gpa: u64| PageAddr::new(gpa).ok_or(setup("a launch address is not page-aligned"));
    let (vmsa, ca) = (page(GUEST_VMSA_GPA)?, launch.calling_area);
    if ![ca, vmsa].iter().all(|page| launch.ram.iter().any(|r| r.contains_pfn(page.pfn()))) {
        return Err(setup("the calling area or first VMSA is not RAM"));
    }
    let vmpl = u8::try_from(launch.info.guest_vmpl).map_err(|_| setup("the guest VMPL"))?;
    let one = |a| PageRange::new(a, 1).ok_or(setup("page range"));
    // A calling area the launch validated (the firmware's) is a measured zero page.
    let made_here: &[PageAddr] = if launch.calling_area_launched { &[vmsa] } else { &[ca, vmsa] };
    for page in made_here {
        p.pvalidate(*page, PageSize::Size4K, true).map_err(|_| setup("cannot validate the calling area or VMSA"))?;
        p.zero_pages(one(*page)?).map_err(|_| setup("cannot zero the calling area or VMSA"))?;
    }
    p.rmpadjust(ca, PageSize::Size4K, vmpl, PERM_ALL, false)
        .map_err(|_| setup("cannot give the guest its calling area"))?;
    p.launch_guest_vcpu(vmsa, 0, launch.signature).map_err(|_| setup("cannot make the guest's first VMSA"))?;

    let info = &launch.info;
    let svsm_region = PageRange::new(page(info.svsm_base)?, info.svsm_size >> 12).ok_or(setup("SVSM region"))?;
    let first_free = image_end.next_multiple_of(4096);
    let pool_end = abi::igvm::BOOT_BLOCK_BASE;
    if !(SVSM_REGION_BASE..pool_end).contains(&first_free) {
        return Err(setup("the image leaves no room for the page pool"));
    }
    let mut prevalidated = Vec::new();
    if info.firmware_size != 0 {
        // The launch validated the firmware for VMPL0 only; the guest runs it.
        let firmware = PageRange::new(page(info.firmware_base)?, info.firmware_size >> 12);
        prevalidated.push(firmware.ok_or(setup("firmware range"))?);
    }
    // The memory the firmware's metadata asked the launch to validate (SEC memory).
    prevalidated.extend(&launch.firmware_ranges);
    for range in &prevalidated {
        for pfn in range.start_pfn()..range.end_pfn() {
            p.rmpadjust(PageAddr::from_pfn(pfn), PageSize::Size4K, vmpl, PERM_ALL, false)
                .map_err(|_| setup("cannot give the guest its firmware memory"))?;
        }
    }
    // A CPUID page in guest memory is the firmware's (OVMF reads it there); the SVSM
    // answers from its own copy, taken before the guest ran.
    let cpuid = page(info.cpuid_gpa)?;
    if outside_svsm(cpuid, 1) {
        p.rmpadjust(cpuid, PageSize::Size4K, vmpl, PERM_READ, false)
            .map_err(|_| setup("cannot give the guest the CPUID page"))?;
        prevalidated.push(one(cpuid)?);
    }
    // The secrets page is the guest's once VMPCK0 is out of it (`open_secrets`).
    let secrets = page(info.secrets_gpa)?;
    if outside_svsm(secrets, 1) {
        prevalidated.push(one(secrets)?);
    }
    prevalidated.push(one(ca)?);
    prevalidated.push(one(vmsa)?);
    Ok(SvsmConfig {
        ram: launch.ram.clone(),
        svsm_region,
        pool_reserve: (first_free >> 12..pool_end >> 12).map(PageAddr::from_pfn).collect(),
        prevalidated,
        startup_vmsa: vmsa,
        startup_calling_area: Gpa(ca.raw()),
        startup_apic_id: 0,
        max_vcpus: launch.vcpus as usize,
        pages_per_call: 4096,
        secrets_page: Some(page(info.secrets_gpa)?),
    })
}

/// Once the kernel has moved VMPCK0 out of the secrets page (`Svsm::new`), give the
/// guest the rest of it: its own VMPCKs, the SVSM fields, and the OS area, where Linux
/// keeps its message sequence numbers (so it must be writable). Nothing in the page is
/// the SVSM's any more: a guest that rewrites the SVSM fields misleads only itself.
pub fn open_secrets<H: SnpHw>(p: &mut SnpPlatform<H>, launch: &Launch) -> Result<(), LaunchError> {
    let secrets = PageAddr::new(launch.info.secrets_gpa).ok_or(LaunchError::Setup("secrets page"))?;
    let vmpl = u8::try_from(launch.info.guest_vmpl).map_err(|_| LaunchError::Setup("the guest VMPL"))?;
    p.rmpadjust(secrets, PageSize::Size4K, vmpl, PERM_READ | PERM_WRITE, false)
        .map_err(|_| LaunchError::Setup("cannot give the guest the secrets page"))
}
