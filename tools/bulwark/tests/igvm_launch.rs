//! An IGVM image from `bulwark igvm build`, loaded into the SEV-SNP model the way
//! QEMU/KVM launch it, then taken over by the snp platform's launch code
//! (`snp::launch`, what the bare-metal SVSM runs after `igvm_entry32`): the
//! builder and the SVSM agree on the boot block and on the pages the firmware's SEV
//! metadata asked for, and the launched SVSM serves a guest.

mod common;

use abi::core_protocol::PvalidateEntry;
use abi::hw::rmpadjust::{PERM_ALL, PERM_READ, PERM_WRITE};
use abi::igvm::{self as layout, BootInfo, MemoryMapEntry};
use abi::protocol::ProtocolId;
use abi::vmsa::VmsaField;
use igvm::{IgvmDirectiveHeader, IgvmFile};
use igvm_defs::IgvmPageDataType;
use kernel::Svsm;
use model::Machine;
use model::snp_host::{ModelSnpHw, SnpHost};
use model::world::World;
use snp::launch::{self, CALLING_AREA_GPA, GUEST_VMSA_GPA, Launch, LaunchError};
use snp::{SnpConfig, SnpPlatform, SnpShared};
use std::process::Command;
use std::sync::Arc;
use zerocopy::{FromBytes, IntoBytes};

const GIB: u64 = 1 << 30;
const RAM: u64 = 64 << 20;
const FIRMWARE_PAGES: u64 = 4;
const SNP: u32 = 1;
/// The small firmware's SEV metadata: SEC memory, secrets and CPUID pages.
const SEC_MEM: (u64, u64) = (0x80_0000, 0x3000);
const FW_SECRETS: u64 = 0x80_3000;
const FW_CPUID: u64 = 0x80_4000;
/// The SVSM image "ends" here: the shared pages of the model host sit below.
const IMAGE_END: u64 = layout::SVSM_REGION_BASE + 0x20_0000;

/// A minimal ELF64 with one PT_LOAD at the SVSM's base and an `igvm_entry32` symbol.
fn svsm_elf() -> Vec<u8> {
    let code = vec![0xF4u8; 0x2000]; // hlt: never run, the model runs the kernel natively
    let (ph_off, seg_off) = (64u64, 0x1000u64);
    let strtab = b"\0igvm_entry32\0".to_vec();
    let sym_off = seg_off + code.len() as u64;
    let str_off = sym_off + 48;
    let sh_off = (str_off + strtab.len() as u64).next_multiple_of(8);
    let mut e = vec![0u8; sh_off as usize + 3 * 64];
    e[..4].copy_from_slice(b"\x7fELF");
    (e[4], e[5], e[6]) = (2, 1, 1);
    e[16..18].copy_from_slice(&2u16.to_le_bytes());
    e[18..20].copy_from_slice(&0x3Eu16.to_le_bytes());
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&layout::SVSM_REGION_BASE.to_le_bytes());
    e[32..40].copy_from_slice(&ph_off.to_le_bytes());
    e[40..48].copy_from_slice(&sh_off.to_le_bytes());
    e[52..54].copy_from_slice(&64u16.to_le_bytes());
    e[54..56].copy_from_slice(&56u16.to_le_bytes());
    e[56..58].copy_from_slice(&1u16.to_le_bytes());
    e[58..60].copy_from_slice(&64u16.to_le_bytes());
    e[60..62].copy_from_slice(&3u16.to_le_bytes());
    // PT_LOAD, RX.
    let p = ph_off as usize;
    e[p..p + 4].copy_from_slice(&1u32.to_le_bytes());
    e[p + 4..p + 8].copy_from_slice(&5u32.to_le_bytes());
    e[p + 8..p + 16].copy_from_slice(&seg_off.to_le_bytes());
    for at in [p + 16, p + 24] {
        e[at..at + 8].copy_from_slice(&layout::SVSM_REGION_BASE.to_le_bytes());
    }
    for at in [p + 32, p + 40] {
        e[at..at + 8].copy_from_slice(&(code.len() as u64).to_le_bytes());
    }
    e[seg_off as usize..sym_off as usize].copy_from_slice(&code);
    // Symbol 1: igvm_entry32 (global function) at the base + 0x100.
    let s = sym_off as usize + 24;
    e[s..s + 4].copy_from_slice(&1u32.to_le_bytes());
    e[s + 4] = 0x12;
    e[s + 6..s + 8].copy_from_slice(&1u16.to_le_bytes());
    e[s + 8..s + 16].copy_from_slice(&(layout::SVSM_REGION_BASE + 0x100).to_le_bytes());
    e[str_off as usize..str_off as usize + strtab.len()].copy_from_slice(&strtab);
    // Section headers: null, .symtab (link 2), .strtab.
    let sh = |i: usize| sh_off as usize + i * 64;
    let symtab = sh(1);
    e[symtab + 4..symtab + 8].copy_from_slice(&2u32.to_le_bytes());
    e[symtab + 24..symtab + 32].copy_from_slice(&sym_off.to_le_bytes());
    e[symtab + 32..symtab + 40].copy_from_slice(&48u64.to_le_bytes());
    e[symtab + 40..symtab + 44].copy_from_slice(&2u32.to_le_bytes());
    e[symtab + 56..symtab + 64].copy_from_slice(&24u64.to_le_bytes());
    let strsec = sh(2);
    e[strsec + 4..strsec + 8].copy_from_slice(&3u32.to_le_bytes());
    e[strsec + 24..strsec + 32].copy_from_slice(&str_off.to_le_bytes());
    e[strsec + 32..strsec + 40].copy_from_slice(&(strtab.len() as u64).to_le_bytes());
    e
}

/// A small firmware laid out like OVMF, ending at 4 GiB.
fn small_firmware(calling_area: Option<u32>) -> Vec<u8> {
    let mut sections = vec![
        (SEC_MEM.0 as u32, SEC_MEM.1 as u32, common::SEC_MEM),
        (FW_SECRETS as u32, 0x1000, common::SECRETS),
        (FW_CPUID as u32, 0x1000, common::CPUID),
    ];
    sections.extend(calling_area.map(|ca| (ca, 0x1000, common::SVSM_CAA)));
    common::ovmf_like(FIRMWARE_PAGES as usize, &sections)
}

/// Build the image with the real CLI (with a small firmware ending at 4 GiB).
fn image() -> IgvmFile {
    image_with(&small_firmware(None))
}

fn image_with(firmware_bytes: &[u8]) -> IgvmFile {
    // One directory per image: the tests run at the same time.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("bulwark-igvm-launch-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (elf, firmware, out) = (dir.join("svsm.elf"), dir.join("fw.bin"), dir.join("b.igvm"));
    std::fs::write(&elf, svsm_elf()).unwrap();
    std::fs::write(&firmware, firmware_bytes).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["igvm", "build", "--svsm"])
        .arg(&elf)
        .arg("--firmware")
        .arg(&firmware)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let file = IgvmFile::new_from_binary(&std::fs::read(&out).unwrap(), None).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    file
}

fn firmware_base() -> u64 {
    4 * GIB - FIRMWARE_PAGES * 4096
}

fn snp_boot_info(file: &IgvmFile) -> BootInfo {
    let page = file.directives().iter().find_map(|d| match d {
        IgvmDirectiveHeader::PageData { gpa, compatibility_mask: SNP, data, .. } if *gpa == layout::BOOT_INFO_GPA => {
            Some(data.clone())
        }
        _ => None,
    });
    BootInfo::read_from_prefix(&page.expect("an SNP boot information page")).unwrap().0
}

/// QEMU/KVM's part: every SNP page of the file private and validated for VMPL0 only
/// (SNP_LAUNCH_UPDATE), the PSP's secrets, the loader's parameter pages.
fn load(file: &IgvmFile) -> Machine {
    let mut m = Machine::new(4 * GIB, 4 * GIB);
    let validate = |m: &mut Machine, gpa: u64| m.rmp.entry_mut(gpa >> 12).expect("RAM").validated = true;
    for d in file.directives() {
        match d {
            IgvmDirectiveHeader::PageData { gpa, compatibility_mask, data_type, data, .. }
                if compatibility_mask & SNP != 0 =>
            {
                if *data_type != IgvmPageDataType::SECRETS {
                    let mut page = data.clone();
                    page.resize(4096, 0);
                    m.raw_write(*gpa, &page);
                }
                validate(&mut m, *gpa);
            }
            IgvmDirectiveHeader::ParameterInsert(p) if p.compatibility_mask & SNP != 0 => validate(&mut m, p.gpa),
            _ => {}
        }
    }
    // The PSP's secrets page: the four VMPCKs.
    let info = snp_boot_info(file);
    for (i, off) in [0x20u64, 0x40, 0x60, 0x80].iter().enumerate() {
        m.raw_write(info.secrets_gpa + off, &[0xB0 + i as u8; 32]);
    }
    m.psp = Some(model::psp_model::launch([0xB0; 32]));
    m.certificates = model::psp_model::certificate_table();
    // The loader's parameters: one vCPU; RAM below 64 MiB, and the firmware.
    m.raw_write(layout::VP_COUNT_GPA, &1u32.to_le_bytes());
    let map = [
        MemoryMapEntry { starting_gpa_page_number: 0, number_of_pages: RAM >> 12, ..Default::default() },
        MemoryMapEntry {
            starting_gpa_page_number: info.firmware_base >> 12,
            number_of_pages: info.firmware_size >> 12,
            ..Default::default()
        },
    ];
    m.raw_write(layout::MEMORY_MAP_GPA, map.as_bytes());
    m
}

fn host() -> SnpHost {
    SnpHost { shared_base: layout::SVSM_REGION_BASE + 0x10_0000, ..SnpHost::default() }
}

/// The bare-metal boot's order, on the model.
fn launch_svsm(mut m: Machine) -> (Machine, SnpHost, Launch, Svsm, Arc<SnpShared>) {
    let mut host = host();
    let hw = ModelSnpHw::new(&mut m, &mut host);
    let taken = launch::take_over(&hw, layout::BOOT_INFO_GPA, 8).expect("the boot block is what the SVSM expects");
    let mut p =
        SnpPlatform::start(hw, SnpConfig::new(taken.info.guest_vmpl as u8, 1)).expect("the model's host offers SNP");
    let config = launch::prepare(&mut p, &taken, IMAGE_END).expect("the launch is prepared");
    let mut svsm = Svsm::new(config, &mut p).expect("the kernel takes the launch");
    assert!(svsm.check_psp_channel(&mut p), "a report arrives under VMPCK0");
    launch::open_secrets(&mut p, &taken).expect("the guest may read the secrets page");
    svsm.install_vtpm(model::vtpm_model::vtpm().expect("libtpms"));
    let shared = p.shared().clone();
    (m, host, taken, svsm, shared)
}

/// What every launch leaves behind: the secrets page where the boot information says,
/// VMPCK0 gone, the SVSM fields published (calling area `ca`), the guest's to read and
/// write; the rest of the boot block the SVSM's; the firmware, the memory its metadata
/// asked for and the CPUID page the guest's; its first VMSA the reset state.
fn check_launch(m: &Machine, host: &SnpHost, taken: &Launch, ca: u64) {
    let info = &taken.info;
    let mut key = [0u8; 32];
    m.raw_read(info.secrets_gpa + 0x20, &mut key);
    assert_eq!(key, [0; 32]);
    let field = |off: u64| m.raw_read_u64(info.secrets_gpa + off);
    assert_eq!((field(0x140), field(0x148), field(0x150)), (layout::SVSM_REGION_BASE, layout::SVSM_REGION_SIZE, ca));
    let pfn = |gpa: u64| gpa >> 12;
    assert!(
        m.rmp.allows(pfn(info.secrets_gpa), 1, PERM_READ | PERM_WRITE),
        "the guest keeps its sequence numbers there"
    );
    assert!(!m.rmp.allows(pfn(layout::BOOT_INFO_GPA), 1, PERM_READ), "the rest of the boot block stays the SVSM's");
    assert!(m.rmp.allows(pfn(info.cpuid_gpa), 1, PERM_READ), "the firmware reads the CPUID page");
    assert!(!m.rmp.allows(pfn(info.cpuid_gpa), 1, PERM_WRITE), "the SVSM's CPUID page is not the guest's to change");
    assert!(m.rmp.allows(pfn(info.firmware_base), 1, PERM_ALL));
    assert!(info.prevalidated_count > 0);
    for r in &info.prevalidated[..info.prevalidated_count as usize] {
        for page in pfn(r.base)..pfn(r.base + r.size) {
            let entry = m.rmp.entry(page).unwrap();
            assert!(
                entry.validated && m.rmp.allows(page, 1, PERM_ALL),
                "SEC memory {page:#x} is the guest's, validated"
            );
        }
    }
    assert!(m.rmp.entry(pfn(ca)).unwrap().validated && m.rmp.allows(pfn(ca), 1, PERM_ALL));
    assert!(m.rmp.entry(pfn(GUEST_VMSA_GPA)).unwrap().vmsa);
    assert_eq!(m.vmsa_field(GUEST_VMSA_GPA, VmsaField::Rip), 0xFFF0);
    assert_eq!(host.ap_events.first().map(|e| (e.1, e.2, e.3)), Some((0, GUEST_VMSA_GPA, 1)));
}

/// The guest: find the SVSM through calling area `ca`, validate a page of RAM through
/// it, and use the vTPM there.
fn serve_guest(m: Machine, svsm: Svsm, host: SnpHost, shared: Arc<SnpShared>, ca: u64) {
    let firmware = m.raw_read_u64(layout::BOOT_INFO_GPA + 64);
    let mut w = World::adopt_snp(m, svsm, host, shared);
    let mut c = w.client_at(kernel::vcpu::VcpuIndex::STARTUP, ca);
    assert_eq!(c.query_protocol(ProtocolId::CORE, 1).unwrap(), Some((1, 1)));
    assert_eq!(c.query_protocol(ProtocolId::VTPM, 1).unwrap(), Some((1, 1)));
    let page = 0x300_0000;
    c.pvalidate(&[PvalidateEntry(page | PvalidateEntry::VALIDATE)], firmware).expect("validated through the SVSM");
    let mut get_random = vtpm::wire::Command::new(vtpm::wire::TPM_ST_NO_SESSIONS, vtpm::wire::TPM_CC_GET_RANDOM);
    get_random.u16(16);
    let mut response = [0u8; 4092];
    let size = c.vtpm_command(page, &get_random.finish(), &mut response).expect("the vTPM answers");
    assert_eq!(&response[6..10], &[0, 0, 0, 0], "TPM_RC_SUCCESS");
    assert_eq!(size, 10 + 2 + 16);
    assert!(w.machine.violations().is_empty(), "{:?}", w.machine.violations());
}

#[test]
fn an_image_from_the_builder_launches_and_serves_its_guest() {
    let (m, host, taken, svsm, state) = launch_svsm(load(&image()));
    assert_eq!(taken.c_bit, 51, "from the builder's CPUID page");
    assert_eq!(taken.vcpus, 1, "from the loader's parameter page");
    assert_eq!(taken.ram.len(), 2);
    assert_eq!((taken.info.firmware_base, taken.info.firmware_size), (firmware_base(), FIRMWARE_PAGES * 4096));
    assert_eq!((taken.info.secrets_gpa, taken.info.cpuid_gpa), (FW_SECRETS, FW_CPUID), "where the firmware asked");
    assert_eq!(taken.firmware_ranges.len(), 1);
    check_launch(&m, &host, &taken, CALLING_AREA_GPA);
    serve_guest(m, svsm, host, state, CALLING_AREA_GPA);
}

/// OVMF asks for its SEC memory validated, its secrets and CPUID pages in place
/// (OvmfPkg/ResetVector/X64/OvmfSevMetadata.nasm.inc); after the launch they are the
/// guest's (COCONUT does the same for its firmware: kernel/src/platform/snp_fw.rs).
#[test]
fn debian_ovmf_finds_its_pages_in_place_and_its_sec_memory_validated_for_it() {
    let (m, host, taken, svsm, state) = launch_svsm(load(&image_with(&common::debian_ovmf())));
    assert!(taken.info.secrets_gpa < layout::SVSM_REGION_BASE && taken.info.cpuid_gpa < layout::SVSM_REGION_BASE);
    assert!(!m.rmp.entry(layout::SECRETS_GPA >> 12).unwrap().validated, "no second secrets page in the boot block");
    check_launch(&m, &host, &taken, CALLING_AREA_GPA);
    serve_guest(m, svsm, host, state, CALLING_AREA_GPA);
}

/// OVMF with an SVSM_CAA section reaches the SVSM through the calling area that
/// `AmdSvsmSnpGetCaa` (OvmfPkg/Library/AmdSvsmLib/AmdSvsmLib.c) takes from the SVSM
/// fields of the secrets page, which must name the page the metadata set aside.
#[test]
fn a_firmware_calling_area_is_the_guests_first_calling_area() {
    let ca = 0x80_5000;
    let (m, host, taken, svsm, state) = launch_svsm(load(&image_with(&small_firmware(Some(ca as u32)))));
    assert_eq!((taken.calling_area.raw(), taken.calling_area_launched), (ca, true));
    check_launch(&m, &host, &taken, ca);
    assert!(!m.rmp.entry(CALLING_AREA_GPA >> 12).unwrap().validated, "the default calling area is not made");
    serve_guest(m, svsm, host, state, ca);
}

#[test]
fn a_boot_block_the_svsm_does_not_recognise_stops_the_launch() {
    let file = image();
    let attempt = |change: &dyn Fn(&mut Machine)| {
        let mut m = load(&file);
        change(&mut m);
        let mut host = host();
        launch::take_over(&ModelSnpHw::new(&mut m, &mut host), layout::BOOT_INFO_GPA, 8).err()
    };
    assert_eq!(attempt(&|_| {}), None);
    assert!(matches!(attempt(&|m| m.raw_write(layout::BOOT_INFO_GPA, b"NOTBWIGV")), Some(LaunchError::BootInfo(_))));
    assert!(matches!(
        attempt(&|m| m.raw_write(layout::BOOT_INFO_GPA + 8, &0x200_0000u64.to_le_bytes())),
        Some(LaunchError::BootInfo(_))
    ));
    assert!(
        matches!(
            attempt(&|m| m.raw_write(layout::BOOT_INFO_GPA + 80, &0u64.to_le_bytes())),
            Some(LaunchError::BootInfo(_))
        ),
        "guest VMPL 0"
    );
    assert_eq!(attempt(&|m| m.raw_write(layout::MEMORY_MAP_GPA, &[0; 48])), Some(LaunchError::NoRam));
    assert_eq!(attempt(&|m| m.raw_write(FW_CPUID, &65u32.to_le_bytes())), Some(LaunchError::CpuidPage));
    // A CPUID page without leaf 0x8000_001F gives no C-bit.
    assert_eq!(attempt(&|m| m.raw_write(FW_CPUID, &0u32.to_le_bytes())), Some(LaunchError::CBit(0)));
    // Firmware ranges and calling areas must be guest pages outside the SVSM region.
    let info = |field: usize, value: u64| {
        move |m: &mut Machine| m.raw_write(layout::BOOT_INFO_GPA + field as u64, &value.to_le_bytes())
    };
    let (ca, count, first) = (88, 96, 104);
    for (what, change) in [
        ("a calling area in the SVSM region", info(ca, layout::SVSM_REGION_BASE)),
        ("an unaligned calling area", info(ca, 0x80_0800)),
        ("17 firmware ranges", info(count, 17)),
        ("a firmware range in the SVSM region", info(first, layout::BOOT_BLOCK_BASE)),
        ("an unaligned firmware range", info(first, 0x80_0010)),
        ("an empty firmware range", info(first + 8, 0)),
        ("a firmware range that wraps", info(first + 8, !0xFFF)),
    ] {
        assert!(matches!(attempt(&change), Some(LaunchError::BootInfo(_))), "{what}");
    }
    // The boot information the host could not make unreadable: a page the host took away.
    assert_eq!(
        attempt(&|m| m.rmp.host_assign(layout::BOOT_INFO_GPA >> 12, 1)),
        Some(LaunchError::Unreadable(layout::BOOT_INFO_GPA))
    );
}

#[test]
fn the_loaders_vcpu_count_is_bounded() {
    let mut m = load(&image());
    m.raw_write(layout::VP_COUNT_GPA, &u32::MAX.to_le_bytes());
    let mut host = host();
    let taken = launch::take_over(&ModelSnpHw::new(&mut m, &mut host), layout::BOOT_INFO_GPA, 8).unwrap();
    assert_eq!(taken.vcpus, 8);
    m.raw_write(layout::VP_COUNT_GPA, &0u32.to_le_bytes());
    let taken = launch::take_over(&ModelSnpHw::new(&mut m, &mut host), layout::BOOT_INFO_GPA, 8).unwrap();
    assert_eq!(taken.vcpus, 1);
}
