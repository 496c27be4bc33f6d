//! How a Bulwark IGVM image hands the SVSM its launch: the fixed places of the pages the
//! image adds around the kernel, the boot-information page that names them (and the pages
//! the guest firmware asked for), and the register state at the 32-bit entry. Written by
//! `bulwark igvm build`, read by the SVSM's IGVM entry (`svsm/src/bare/entry.rs`, then
//! `snp::launch`). Layout and reasons: docs/platforms/igvm.md.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The SVSM region the image is linked into (svsm/linker.ld) and the launch validates.
pub const SVSM_REGION_BASE: u64 = 0x100_0000;
pub const SVSM_REGION_SIZE: u64 = 0x100_0000;

/// The top 64 KiB of the SVSM region hold the pages the image adds around the kernel; the
/// SVSM keeps them out of its page pool.
pub const BOOT_BLOCK_BASE: u64 = SVSM_REGION_BASE + SVSM_REGION_SIZE - BOOT_BLOCK_SIZE;
pub const BOOT_BLOCK_SIZE: u64 = 0x1_0000;

/// The boot-information page (`BootInfo`), measured.
pub const BOOT_INFO_GPA: u64 = BOOT_BLOCK_BASE;
/// The SNP secrets page (SNP only; the PSP fills it) of an image without firmware, or
/// whose firmware names no place for it; otherwise it is where the firmware asks.
pub const SECRETS_GPA: u64 = BOOT_BLOCK_BASE + 0x1000;
/// The SNP CPUID page (SNP only; the PSP checks it), likewise.
pub const CPUID_GPA: u64 = BOOT_BLOCK_BASE + 0x2000;
/// Parameter area: the number of vCPUs (a u32 at offset 0).
pub const VP_COUNT_GPA: u64 = BOOT_BLOCK_BASE + 0x3000;
/// Parameter area: the guest memory map (IGVM_VHS_MEMORY_MAP_ENTRY array).
pub const MEMORY_MAP_GPA: u64 = BOOT_BLOCK_BASE + 0x4000;
pub const MEMORY_MAP_PAGES: u64 = 1;
/// Initial page tables: PML4, PDPT, PD (identity map of the first GiB with 2 MiB pages;
/// on SNP with the C-bit set, so they differ per platform).
pub const PML4_GPA: u64 = BOOT_BLOCK_BASE + 0x5000;
pub const PDPT_GPA: u64 = BOOT_BLOCK_BASE + 0x6000;
pub const PD_GPA: u64 = BOOT_BLOCK_BASE + 0x7000;
/// The entry GDT: null, 64-bit code (selector 0x08), data (0x10), 32-bit code (0x18).
pub const GDT_GPA: u64 = BOOT_BLOCK_BASE + 0x8000;
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
/// The code segment the boot CPU starts in (32-bit protected mode).
pub const CODE32_SELECTOR: u16 = 0x18;
// The SVSM's own VMSA sits at 0xFFFF_FFFF_F000 in the SNP image: QEMU accepts an IGVM
// VMSA only where KVM measures it (`attest::launch_digest::VMSA_GPA`).

/// The entry symbol: 32-bit protected mode, paging off (the only start state KVM keeps
/// for an SNP launch: docs/platforms/igvm.md), interrupts off, ESI = `BOOT_INFO_GPA`, no
/// stack. The entry code loads `PML4_GPA` into CR3, turns on long mode and paging, and
/// sets its own stack.
pub const ENTRY_SYMBOL: &str = "igvm_entry32";

/// `BootInfo::magic`.
pub const BOOT_INFO_MAGIC: [u8; 8] = *b"BWIGVM02";

/// The guest's first calling area when the firmware names none (guest RAM just below the
/// SVSM region): the SVSM validates it itself.
pub const DEFAULT_CALLING_AREA_GPA: u64 = SVSM_REGION_BASE - 0x1000;
/// The guest's first VMSA: the guest RAM page below the default calling area, made a
/// VMSA by the SVSM. Firmware memory must stay clear of it (the builder refuses).
pub const GUEST_VMSA_GPA: u64 = DEFAULT_CALLING_AREA_GPA - 0x1000;

/// Firmware ranges the launch validated for the guest that `BootInfo` can name.
pub const MAX_FIRMWARE_RANGES: usize = 16;

/// Guest memory the launch validated because the firmware asked for it (OVMF's SEV
/// metadata: SEC memory, the kernel-hashes page): page-aligned, outside the SVSM region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct GpaRange {
    pub base: u64,
    pub size: u64,
}

/// Boot-information page, written by the image builder and measured with the image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct BootInfo {
    pub magic: [u8; 8],
    pub svsm_base: u64,
    pub svsm_size: u64,
    /// Zero in the native image.
    pub secrets_gpa: u64,
    /// Zero in the native image.
    pub cpuid_gpa: u64,
    pub vp_count_gpa: u64,
    pub memory_map_gpa: u64,
    pub memory_map_pages: u64,
    /// Guest firmware (OVMF) loaded below 4 GiB; size zero if the image carries none.
    pub firmware_base: u64,
    pub firmware_size: u64,
    /// The VMPL the guest OS runs at (SNP).
    pub guest_vmpl: u64,
    /// The guest's first calling area, launched as a zero page where the firmware asked
    /// (OVMF's SVSM_CAA section); 0: the SVSM makes one at `DEFAULT_CALLING_AREA_GPA`.
    pub calling_area_gpa: u64,
    /// How many of `prevalidated` are used.
    pub prevalidated_count: u64,
    /// Firmware memory launched as zero pages (validated for VMPL0), which the SVSM gives
    /// to the guest's VMPL. Zero on native.
    pub prevalidated: [GpaRange; MAX_FIRMWARE_RANGES],
}
crate::assert_size!(BootInfo, 360);

/// One IGVM_VHS_MEMORY_MAP_ENTRY, as the loader fills the memory-map parameter area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct MemoryMapEntry {
    pub starting_gpa_page_number: u64,
    pub number_of_pages: u64,
    /// 0 = memory, 1 = platform reserved, 2 = persistent, 3 = VTL2-protectable.
    pub entry_type: u16,
    pub flags: u16,
    pub reserved: u32,
}
crate::assert_size!(MemoryMapEntry, 24);

/// `MemoryMapEntry::entry_type` of ordinary RAM.
pub const MEMORY_TYPE_MEMORY: u16 = 0;
