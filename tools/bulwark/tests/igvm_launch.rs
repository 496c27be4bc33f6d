//! An IGVM image from `bulwark igvm build`, loaded into the SEV-SNP model the way
//! QEMU/KVM launch it, then taken over by the snp platform's launch code
//! (`snp::launch`, what the bare-metal SVSM runs after `igvm_entry64`): the
//! builder and the SVSM agree on the boot block, and the launched SVSM serves a guest.

use abi::core_protocol::PvalidateEntry;
use abi::igvm::{self as layout, MemoryMapEntry};
use abi::protocol::ProtocolId;
use abi::vmsa::VmsaField;
use igvm::{IgvmDirectiveHeader, IgvmFile};
use igvm_defs::IgvmPageDataType;
use kernel::Svsm;
use model::Machine;
use model::snp_host::{ModelSnpHw, SnpHost};
use model::world::World;
use snp::launch::{self, CALLING_AREA_GPA, GUEST_VMSA_GPA, Launch, LaunchError};
use snp::{SnpPlatform, SnpState};
use std::process::Command;
use zerocopy::IntoBytes;

const GIB: u64 = 1 << 30;
const RAM: u64 = 64 << 20;
const FIRMWARE_PAGES: u64 = 4;
const SNP: u32 = 1;
/// The SVSM image "ends" here: the shared pages of the model host sit below.
const IMAGE_END: u64 = layout::SVSM_REGION_BASE + 0x20_0000;

/// A minimal ELF64 with one PT_LOAD at the SVSM's base and an `igvm_entry64` symbol.
fn svsm_elf() -> Vec<u8> {
    let code = vec![0xF4u8; 0x2000]; // hlt: never run, the model runs the kernel natively
    let (ph_off, seg_off) = (64u64, 0x1000u64);
    let strtab = b"\0igvm_entry64\0".to_vec();
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
    // Symbol 1: igvm_entry64 (global function) at the base + 0x100.
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

/// Build the image with the real CLI (with a small firmware ending at 4 GiB).
fn image() -> IgvmFile {
    let dir = std::env::temp_dir().join(format!("bulwark-igvm-launch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (elf, firmware, out) = (dir.join("svsm.elf"), dir.join("fw.bin"), dir.join("b.igvm"));
    std::fs::write(&elf, svsm_elf()).unwrap();
    std::fs::write(&firmware, vec![0x90u8; (FIRMWARE_PAGES * 4096) as usize]).unwrap();
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
    for (i, off) in [0x20u64, 0x40, 0x60, 0x80].iter().enumerate() {
        m.raw_write(layout::SECRETS_GPA + off, &[0xB0 + i as u8; 32]);
    }
    m.psp = Some(model::psp_model::launch([0xB0; 32]));
    m.certificates = model::psp_model::certificate_table();
    // The loader's parameters: one vCPU; RAM below 64 MiB, and the firmware.
    m.raw_write(layout::VP_COUNT_GPA, &1u32.to_le_bytes());
    let map = [
        MemoryMapEntry { starting_gpa_page_number: 0, number_of_pages: RAM >> 12, ..Default::default() },
        MemoryMapEntry {
            starting_gpa_page_number: firmware_base() >> 12,
            number_of_pages: FIRMWARE_PAGES,
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
fn launch_svsm(mut m: Machine) -> (Machine, SnpHost, Launch, Svsm, SnpState) {
    let mut host = host();
    let hw = ModelSnpHw { machine: &mut m, host: &mut host };
    let taken = launch::take_over(&hw, layout::BOOT_INFO_GPA, 8).expect("the boot block is what the SVSM expects");
    let mut p = SnpPlatform::start(hw, taken.info.guest_vmpl as u8, 1).expect("the model's host offers SNP");
    let config = launch::prepare(&mut p, &taken, IMAGE_END).expect("the launch is prepared");
    let mut svsm = Svsm::new(config, &mut p).expect("the kernel takes the launch");
    assert!(svsm.check_psp_channel(&mut p), "a report arrives under VMPCK0");
    launch::open_secrets(&mut p, &taken).expect("the guest may read the secrets page");
    svsm.install_vtpm(model::vtpm_model::vtpm().expect("libtpms"));
    let state = p.state;
    (m, host, taken, svsm, state)
}

#[test]
fn an_image_from_the_builder_launches_and_serves_its_guest() {
    let (m, host, taken, svsm, state) = launch_svsm(load(&image()));
    assert_eq!(taken.c_bit, 51, "from the builder's CPUID page");
    assert_eq!(taken.vcpus, 1, "from the loader's parameter page");
    assert_eq!(taken.ram.len(), 2);
    assert_eq!((taken.info.firmware_base, taken.info.firmware_size), (firmware_base(), FIRMWARE_PAGES * 4096));

    // The secrets page: VMPCK0 gone, the SVSM fields published, readable by the guest.
    let mut key = [0u8; 32];
    m.raw_read(layout::SECRETS_GPA + 0x20, &mut key);
    assert_eq!(key, [0; 32]);
    let field = |off: u64| m.raw_read_u64(layout::SECRETS_GPA + off);
    assert_eq!(
        (field(0x140), field(0x148), field(0x150)),
        (layout::SVSM_REGION_BASE, layout::SVSM_REGION_SIZE, CALLING_AREA_GPA)
    );
    assert!(
        m.rmp.allows(layout::SECRETS_GPA >> 12, 1, abi::hw::rmpadjust::PERM_READ | abi::hw::rmpadjust::PERM_WRITE),
        "the guest keeps its sequence numbers there"
    );
    assert!(
        !m.rmp.allows(layout::BOOT_INFO_GPA >> 12, 1, abi::hw::rmpadjust::PERM_READ),
        "the rest of the boot block stays the SVSM's"
    );
    // The firmware is the guest's to run; the guest's first VMSA is the reset state.
    assert!(m.rmp.allows(firmware_base() >> 12, 1, abi::hw::rmpadjust::PERM_ALL));
    assert!(m.rmp.entry(GUEST_VMSA_GPA >> 12).unwrap().vmsa);
    assert_eq!(m.vmsa_field(GUEST_VMSA_GPA, VmsaField::Rip), 0xFFF0);
    assert_eq!(host.ap_events.first().map(|e| (e.1, e.2, e.3)), Some((0, GUEST_VMSA_GPA, 1)));

    // The guest: find the SVSM, validate a page of RAM through it, and use the vTPM there.
    let mut w = World::adopt_snp(m, svsm, host, state);
    let mut c = w.client_at(kernel::vcpu::VcpuIndex::STARTUP, CALLING_AREA_GPA);
    assert_eq!(c.query_protocol(ProtocolId::CORE, 1).unwrap(), Some((1, 1)));
    assert_eq!(c.query_protocol(ProtocolId::VTPM, 1).unwrap(), Some((1, 1)));
    let page = 0x80_0000;
    c.pvalidate(&[PvalidateEntry(page | PvalidateEntry::VALIDATE)], firmware_base())
        .expect("validated through the SVSM");
    let mut get_random = vtpm::wire::Command::new(vtpm::wire::TPM_ST_NO_SESSIONS, vtpm::wire::TPM_CC_GET_RANDOM);
    get_random.u16(16);
    let mut response = [0u8; 4092];
    let size = c.vtpm_command(page, &get_random.finish(), &mut response).expect("the vTPM answers");
    assert_eq!(&response[6..10], &[0, 0, 0, 0], "TPM_RC_SUCCESS");
    assert_eq!(size, 10 + 2 + 16);
    assert!(w.machine.violations().is_empty(), "{:?}", w.machine.violations());
}

#[test]
fn a_boot_block_the_svsm_does_not_recognise_stops_the_launch() {
    let file = image();
    let attempt = |change: &dyn Fn(&mut Machine)| {
        let mut m = load(&file);
        change(&mut m);
        let mut host = host();
        launch::take_over(&ModelSnpHw { machine: &mut m, host: &mut host }, layout::BOOT_INFO_GPA, 8).err()
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
    assert_eq!(attempt(&|m| m.raw_write(layout::CPUID_GPA, &65u32.to_le_bytes())), Some(LaunchError::CpuidPage));
    // A CPUID page without leaf 0x8000_001F gives no C-bit.
    assert_eq!(attempt(&|m| m.raw_write(layout::CPUID_GPA, &0u32.to_le_bytes())), Some(LaunchError::CBit(0)));
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
    let taken = launch::take_over(&ModelSnpHw { machine: &mut m, host: &mut host }, layout::BOOT_INFO_GPA, 8).unwrap();
    assert_eq!(taken.vcpus, 8);
    m.raw_write(layout::VP_COUNT_GPA, &0u32.to_le_bytes());
    let taken = launch::take_over(&ModelSnpHw { machine: &mut m, host: &mut host }, layout::BOOT_INFO_GPA, 8).unwrap();
    assert_eq!(taken.vcpus, 1);
}
