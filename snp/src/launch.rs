//! The SEV-SNP launch as the SVSM takes it over from an IGVM image (`abi::igvm`,
//! docs/platforms/igvm.md): the boot information, CPUID page, memory map and vCPU count
//! the image and its loader left in the boot block, checked; then the guest's calling
//! area and first vCPU, and the kernel's description of the launch.
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

/// The guest's first calling area: guest RAM just below the SVSM region. The guest finds
/// it in the secrets page and must keep it reserved.
pub const CALLING_AREA_GPA: u64 = SVSM_REGION_BASE - 0x1000;
/// The guest's first VMSA: the guest RAM page below the calling area. Like every guest
/// VMSA it is a guest page the SVSM made a VMSA (the kernel refuses one in SVSM memory);
/// the guest cannot touch it while it is one.
pub const GUEST_VMSA_GPA: u64 = CALLING_AREA_GPA - 0x1000;
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
    Ok(Launch { info, cpuid, c_bit, signature, ram, vcpus })
}

/// Make the guest's calling area (validated, zeroed, the guest's) and first vCPU (reset
/// state, a VMSA, announced to the host), give the guest its firmware pages, and
/// describe the launch to the kernel. The
/// SVSM's page pool is the region from `image_end` up to the boot block.
pub fn prepare<H: SnpHw>(p: &mut SnpPlatform<H>, launch: &Launch, image_end: u64) -> Result<SvsmConfig, LaunchError> {
    let setup = LaunchError::Setup;
    let page = |gpa: u64| PageAddr::new(gpa).ok_or(setup("a launch address is not page-aligned"));
    let (vmsa, ca) = (page(GUEST_VMSA_GPA)?, page(CALLING_AREA_GPA)?);
    if ![ca, vmsa].iter().all(|page| launch.ram.iter().any(|r| r.contains_pfn(page.pfn()))) {
        return Err(setup("the calling area or first VMSA is not RAM"));
    }
    let vmpl = launch.info.guest_vmpl as u8;
    let one = |a| PageRange::new(a, 1).ok_or(setup("page range"));
    for page in [ca, vmsa] {
        p.pvalidate(page, PageSize::Size4K, true).map_err(|_| setup("cannot validate the calling area or VMSA"))?;
        p.zero_pages(one(page)?).map_err(|_| setup("cannot zero the calling area or VMSA"))?;
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
        let firmware = firmware.ok_or(setup("firmware range"))?;
        for pfn in firmware.start_pfn()..firmware.end_pfn() {
            p.rmpadjust(PageAddr::from_pfn(pfn), PageSize::Size4K, vmpl, PERM_ALL, false)
                .map_err(|_| setup("cannot give the guest its firmware"))?;
        }
        prevalidated.push(firmware);
    }
    prevalidated.push(one(ca)?);
    prevalidated.push(one(vmsa)?);
    Ok(SvsmConfig {
        ram: launch.ram.clone(),
        svsm_region,
        pool_reserve: (first_free >> 12..pool_end >> 12).map(PageAddr::from_pfn).collect(),
        prevalidated,
        startup_vmsa: vmsa,
        startup_calling_area: Gpa(CALLING_AREA_GPA),
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
    let vmpl = launch.info.guest_vmpl as u8;
    p.rmpadjust(secrets, PageSize::Size4K, vmpl, PERM_READ | PERM_WRITE, false)
        .map_err(|_| LaunchError::Setup("cannot give the guest the secrets page"))
}
