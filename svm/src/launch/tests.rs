use super::*;
use crate::npt::Access;
use crate::test_hw::TestHw;
use abi::vmsa::VmsaField;
use kernel::platform::Platform;
use std::vec;

/// The memory map QEMU's PVH boot hands over with `-m 512M` (as the SVSM prints it):
/// low RAM up to the EBDA, then RAM from 1 MiB to just below 512 MiB.
const QEMU_RAM: [(u64, u64); 2] = [(0, 0x9_FC00), (0x10_0000, 0x1FED_F000)];
const QEMU_TOP: u64 = 0x1FFD_F000;
const IMAGE_END: u64 = 0x1AD_2000;
const ENTRY: u64 = 0x20_0000;

pub(crate) fn plan() -> Plan {
    let mut p = Plan::new(QEMU, &QEMU_RAM, QEMU_TOP, IMAGE_END).unwrap();
    p.add_segment(0x20_0000, 0x3_0000).unwrap();
    p
}

pub(crate) fn launched() -> (SvmShared<TestHw>, SvsmConfig) {
    launched_on(TestHw::new(0x2000_0000))
}

/// The launch on `hw`, for two CPUs.
pub(crate) fn launched_on(hw: TestHw) -> (SvmShared<TestHw>, SvsmConfig) {
    let vmpcks = [[0xA0; 32], [0xA1; 32], [0xA2; 32], [0xA3; 32]];
    SvmShared::launch(hw, plan(), ENTRY, 2, &vmpcks, vec![1, 2, 3]).unwrap()
}

#[test]
fn qemus_memory_map_is_taken_as_ram() {
    let p = plan();
    assert_eq!(p.top(), 0x1FE0_0000, "rounded down to 2 MiB");
    let ram: Vec<_> = p.ram.iter().map(|r| (r.start().raw(), r.pages())).collect();
    assert_eq!(ram, [(0, 0x9F), (0x10_0000, (0x1FE0_0000 - 0x10_0000) / 4096)], "the EBDA's partial page left out");
    let e = |gpa: u64| p.rmp().entry(gpa >> 12).copied().unwrap_or_default();
    assert!(e(0x8000).assigned && !e(0x8000).huge);
    assert!(!e(0x9_F000).assigned && !e(0xA_0000).assigned, "not RAM");
    assert!(!e(0x100_0000).assigned && !e(0x1FF_F000).assigned, "the SVSM region stays the host's");
    assert!(e(0x200_0000).assigned && !e(0x200_0000).huge, "4 KiB below 256 MiB");
    assert!(e(0x1000_0000).assigned && e(0x1000_0000).huge, "2 MiB from 256 MiB");
    assert!(e(0x1FDF_F000).huge);
    assert!(p.rmp().entry(0x1FE0_0000 >> 12).is_none(), "past the top");
    let validated: Vec<_> = p.validated().to_vec();
    assert_eq!(validated, [0x8000..0x9000, 0x9000..0xA000, 0xB000..0x11000, 0x20_0000..0x23_0000], "no VMSA");
}

#[test]
fn bad_memory_maps_are_errors() {
    let new = |ram: &[(u64, u64)], top| Plan::new(QEMU, ram, top, IMAGE_END).map(|_| ());
    assert_eq!(new(&[], QEMU_TOP), Err(LaunchError::NoRam));
    assert_eq!(new(&QEMU_RAM, 0), Err(LaunchError::NoRam), "nothing below the top");
    assert_eq!(new(&[(0x10_0000, 0x1000_0000)], QEMU_TOP), Err(LaunchError::LaunchPageNotRam(0x8000)));
    assert_eq!(new(&[(0, 0x1000), (0x10_0000, 0x100_0000)], QEMU_TOP), Err(LaunchError::LaunchPageNotRam(0x8000)));
    assert_eq!(new(&[(0, 0x20_0000), (0x1F_F000, 0x1000)], QEMU_TOP), Err(LaunchError::BadRam(0x1F_F000)), "overlap");
    assert_eq!(new(&[(0, 0x20_0000), (u64::MAX - 10, 100)], QEMU_TOP), Err(LaunchError::BadRam(u64::MAX - 10)));
    // Sizes that wrap, and RAM past the identity map, are cut at the top.
    assert!(new(&[(0, u64::MAX)], u64::MAX).is_ok());
    assert_eq!(Plan::new(QEMU, &[(0, u64::MAX)], u64::MAX, IMAGE_END).unwrap().top(), 1 << 32);
    // A launch page on a 2 MiB RMP page.
    let high = Layout { huge_from: 0, ..QEMU };
    assert_eq!(
        Plan::new(high, &[(0, 0x1000_0000)], 0x1000_0000, IMAGE_END).map(|_| ()),
        Err(LaunchError::LaunchPageNotRam(0x8000))
    );
    assert_eq!(new(&QEMU_RAM, QEMU_TOP).map(|_| ()), Ok(()));
}

#[test]
fn the_image_must_fit_its_region() {
    assert_eq!(Plan::new(QEMU, &QEMU_RAM, QEMU_TOP, 0x200_1000).map(|_| ()), Err(LaunchError::ImageTooLarge));
    assert_eq!(Plan::new(QEMU, &QEMU_RAM, QEMU_TOP, 0).map(|_| ()), Err(LaunchError::ImageTooLarge));
    assert!(Plan::new(QEMU, &QEMU_RAM, QEMU_TOP, 0x200_0000).is_ok(), "an image that fills the region");
}

#[test]
fn layouts_that_contradict_themselves_are_refused() {
    let refused = |l: Layout| matches!(Plan::new(l, &QEMU_RAM, QEMU_TOP, IMAGE_END), Err(LaunchError::Layout(_)));
    assert!(refused(Layout { calling_area: 0x8000, ..QEMU }), "calling area on the secrets page");
    assert!(refused(Layout { vmsa: 0xC000, ..QEMU }), "VMSA inside the page tables");
    assert!(refused(Layout { secrets: 0x8010, ..QEMU }), "unaligned");
    assert!(refused(Layout { page_tables: 0x100_0000, ..QEMU }), "page tables in the SVSM region");
    assert!(refused(Layout { svsm_region: 0x100_0000..0x100_0000, ..QEMU }), "empty region");
    assert!(refused(Layout { svsm_region: 0x100_0800..0x200_0000, ..QEMU }), "unaligned region");
    assert!(refused(Layout { secrets: !0xFFF, ..QEMU }), "beyond the RAM limit");
}

#[test]
fn segments_go_only_where_the_guest_image_may() {
    let mut p = plan();
    let before = p.validated().len();
    for (at, len) in [
        (0xA000, 0x1000),           // the VMSA
        (0x10_000, 0x2000),         // below image_from, on the page tables
        (0x1000, 0x100),            // below image_from
        (0xF0_0000, 0x20_0000),     // into the SVSM
        (0x1FF_F000, 0x2000),       // out of the SVSM's end
        (0x1FDF_0000, 0x20_0000),   // past the top of RAM
        (0x1000_0000, 0x1000),      // on a 2 MiB RMP page
        (0x9_F000, 0x2000),         // in the hole below 1 MiB
        (u64::MAX - 0xFFF, 0x1000), // wraps
        (0x20_0000, u64::MAX),      // wraps
    ] {
        assert_eq!(p.add_segment(at, len), Err(LaunchError::Segment(at)), "{at:#x}+{len:#x}");
    }
    assert_eq!(p.validated().len(), before, "refusals add nothing");
    assert_eq!(p.add_segment(0x30_0000, 0), Ok(()), "an empty segment is nothing");
    assert_eq!(p.add_segment(0x30_0800, 0x1000), Ok(()));
    assert_eq!(p.validated().last(), Some(&(0x30_0000..0x30_2000)), "whole pages");
}

#[test]
fn the_guests_page_tables_identity_map_4_gib() {
    let pt = page_tables(0xB000).unwrap();
    assert_eq!(pt.len(), 6 * 4096);
    let at = |i: usize| u64::from_le_bytes(pt[i..i + 8].try_into().unwrap());
    assert_eq!(at(0), 0xC000 | 3, "PML4[0] -> PDPT");
    assert_eq!(at(8), 0, "only the first 512 GiB");
    for g in 0..4 {
        assert_eq!(at(0x1000 + 8 * g), (0xD000 + 0x1000 * g as u64) | 3, "PDPT[{g}] -> PD");
    }
    assert_eq!(at(0x1000 + 8 * 4), 0);
    assert_eq!(at(0x2000), 0x83, "2 MiB page at 0");
    assert_eq!(at(0x2000 + 8), 0x20_0000 | 0x83);
    assert_eq!(at(0x2000 + 8 * 2047), 0xFFE0_0000 | 0x83, "the last 2 MiB below 4 GiB");
}

#[test]
fn the_secrets_page_has_the_vmpcks_where_the_firmware_abi_puts_them() {
    let page = secrets_page(&[[1; 32], [2; 32], [3; 32], [4; 32]]);
    let b = page.as_bytes();
    for (i, off) in [0x20, 0x40, 0x60, 0x80].into_iter().enumerate() {
        assert!(b[off..off + 32].iter().all(|x| *x == i as u8 + 1), "VMPCK{i}");
    }
    assert!(b[..0x20].iter().chain(&b[0xA0..]).all(|x| *x == 0), "nothing else");
}

/// What the launch leaves: page tables and secrets written, the calling area zeroed, the
/// RMP and nested paging agreeing (secrets read-only, the VMSA and the SVSM absent), the
/// startup vCPU at the entry, and the kernel's description.
#[test]
fn the_launch_leaves_the_state_the_layout_describes() {
    let (p, config) = launched();
    let hw = &p.hw;
    assert_eq!(hw.u64_at(0xB000), 0xC000 | 3);
    let npt = hw.npt.lock().unwrap();
    assert_eq!(hw.u64_at(0x8000 + 0x20), u64::from_le_bytes([0xA0; 8]));
    assert_eq!(hw.u64_at(0x9000), 0);
    let ro = Access { write: false, execute: false };
    let rwx = Access { write: true, execute: true };
    assert_eq!(npt.get(&0x8), Some(&ro), "secrets: read-only");
    assert_eq!(npt.get(&0x9), Some(&rwx));
    assert_eq!(npt.get(&0xB), Some(&rwx));
    assert_eq!(npt.get(&0x200), Some(&rwx));
    assert_eq!(npt.get(&0x22F), Some(&rwx));
    assert!(!npt.contains_key(&0xA), "the VMSA page is never the guest's");
    assert!(!npt.contains_key(&0x230) && !npt.contains_key(&0x1000), "unvalidated RAM and the SVSM");
    assert_eq!(npt.len(), 1 + 1 + 6 + 0x30);
    let vmsa = *p.state.rmp().entry(0xA).unwrap();
    assert!(vmsa.validated && vmsa.vmsa);
    let startup = p.with_vcpu(0, |v| (v.field(VmsaField::Rip), v.field(VmsaField::Cr3), v.vmsa_gpa));
    assert_eq!(startup, Some((ENTRY, 0xB000, 0xA000)));
    assert_eq!(p.state.certificates, [1, 2, 3]);
    assert_eq!(config.startup_vmsa.raw(), 0xA000);
    assert_eq!(config.startup_calling_area.0, 0x9000);
    assert_eq!(config.secrets_page.map(|s| s.raw()), Some(0x8000));
    assert_eq!(config.svsm_region.start().raw(), 0x100_0000);
    assert_eq!(config.pool_reserve.first().map(|p| p.raw()), Some(IMAGE_END));
    assert_eq!(config.pool_reserve.len() as u64, (0x200_0000 - IMAGE_END) / 4096);
    assert_eq!(config.prevalidated.len(), 4);
}

/// The kernel accepts the launch: it publishes itself in the secrets page and takes
/// VMPCK0 out, through the platform.
#[test]
fn the_kernel_starts_on_the_launch() {
    let (s, config) = launched();
    let mut p = s.platform(0);
    let svsm = kernel::Svsm::new(config, &mut p).unwrap();
    assert_eq!(svsm.vmpck0(), [0xA0; 32]);
    let hw = &s.hw;
    assert_eq!(hw.u64_at(0x8000 + 0x20), 0, "VMPCK0 erased");
    assert_eq!(hw.u64_at(0x8000 + 0x40), u64::from_le_bytes([0xA1; 8]), "VMPCK1 stays");
    assert_eq!(hw.u64_at(0x8000 + abi::secrets::SVSM_BASE_OFFSET as u64), 0x100_0000);
    assert_eq!(hw.u64_at(0x8000 + abi::secrets::SVSM_CAA_OFFSET as u64), 0x9000);
    assert_eq!(p.vmsa_read(config_vmsa(), VmsaField::Vmpl), Ok(1));
}

fn config_vmsa() -> kernel::addr::PageAddr {
    kernel::addr::PageAddr::from_pfn(0xA)
}

#[test]
fn a_launch_without_memory_is_an_error() {
    let vmpcks = [[0; 32]; 4];
    for allowed in 0..3 {
        let hw = TestHw { allocs_left: std::sync::Mutex::new(Some(allowed)), ..TestHw::new(0x2000_0000) };
        let r = SvmShared::launch(hw, plan(), ENTRY, 1, &vmpcks, vec![]);
        assert!(matches!(r, Err(LaunchError::OutOfMemory(_))), "{allowed} pages");
    }
    let hw = TestHw { npt_full_from: Some(0x200), ..TestHw::new(0x2000_0000) };
    assert!(matches!(SvmShared::launch(hw, plan(), ENTRY, 1, &vmpcks, vec![]), Err(LaunchError::OutOfMemory(_))));
    let small = TestHw::new(0x9000);
    assert_eq!(
        SvmShared::launch(small, plan(), ENTRY, 1, &vmpcks, vec![]).map(|_| ()),
        Err(LaunchError::Memory(0xB000))
    );
}
