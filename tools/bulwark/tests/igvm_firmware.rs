//! `bulwark igvm build --firmware`: the pages the firmware's SEV metadata asks an SEV-SNP
//! launch for (OvmfPkg/ResetVector/X64/OvmfSevMetadata.nasm.inc: SNP_SEC_MEM, SNP_SECRETS,
//! CPUID, SVSM_CAA) go where it asks, as QEMU's own SNP launch places them
//! (`snp_populate_metadata_pages`, target/i386/sev.c) and COCONUT's igvmbuilder reads them
//! (tools/igvmbuilder/src/ovmf_firmware.rs). Tested with Debian's OVMF.fd, whose sections
//! are read independently by sev-snp-measure's OVMF parser, and with small images laid
//! out like it where Debian's has no SVSM_CAA section (edk2 2022.11 predates it).

mod common;

use abi::igvm::{self as layout, BootInfo, GpaRange};
use common::*;
use igvm::{IgvmDirectiveHeader, IgvmFile};
use igvm_defs::IgvmPageDataType;
use std::path::Path;
use zerocopy::FromBytes;

/// The SEV metadata sections of `firmware` as sev-snp-measure's `OVMF` class reads them:
/// (gpa, size, type).
fn sections_by_sev_snp_measure(firmware: &Path) -> Vec<(u64, u64, u32)> {
    let script = "import json, sys
from sevsnpmeasure.ovmf import OVMF
items = OVMF(sys.argv[1]).metadata_items()
print(json.dumps([[i.gpa, i.size, i.section_type_int] for i in items]))
";
    let out = attest::testing::python_with_sev_snp_measure()
        .args(["-c", script])
        .arg(firmware)
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "sev-snp-measure's OVMF parser: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("a JSON list")
}

/// Every SNP page directive at `gpa`: (type, data).
fn snp_pages_at(file: &IgvmFile, gpa: u64) -> Vec<(IgvmPageDataType, Vec<u8>)> {
    file.directives()
        .iter()
        .filter_map(|d| match d {
            IgvmDirectiveHeader::PageData { gpa: g, compatibility_mask, data_type, data, .. }
                if *g == gpa && compatibility_mask & SNP != 0 =>
            {
                assert_eq!(*compatibility_mask, SNP, "the firmware's pages are for SNP only: {gpa:#x}");
                Some((*data_type, data.clone()))
            }
            _ => None,
        })
        .collect()
}

fn pages_of_type(file: &IgvmFile, kind: IgvmPageDataType) -> Vec<u64> {
    file.directives()
        .iter()
        .filter_map(|d| match d {
            IgvmDirectiveHeader::PageData { gpa, data_type, .. } if *data_type == kind => Some(*gpa),
            _ => None,
        })
        .collect()
}

fn snp_boot_info(file: &IgvmFile) -> BootInfo {
    BootInfo::read_from_prefix(&page_at(file, layout::BOOT_INFO_GPA, SNP).unwrap().2).unwrap().0
}

#[test]
fn debian_ovmf_gets_its_sec_memory_secrets_and_cpuid_pages_where_its_metadata_asks() {
    let dir = temp("debian-ovmf");
    let sections = sections_by_sev_snp_measure(Path::new(DEBIAN_OVMF));
    let of = |t: u32| sections.iter().filter(|s| s.2 == t).map(|s| (s.0, s.1)).collect::<Vec<_>>();
    let (sec_mem, secrets, cpuid) = (of(SEC_MEM), of(SECRETS), of(CPUID));
    assert!(!sec_mem.is_empty() && secrets.len() == 1 && cpuid.len() == 1, "Debian's OVMF.fd: {sections:x?}");
    let igvm = build(&dir, &sample_elf(), &["--firmware", DEBIAN_OVMF]);
    let file = read_igvm(&igvm);

    // The secrets and CPUID pages where OVMF reads them, and nowhere else.
    assert_eq!(pages_of_type(&file, IgvmPageDataType::SECRETS), [secrets[0].0]);
    assert_eq!(pages_of_type(&file, IgvmPageDataType::CPUID_DATA), [cpuid[0].0]);
    let (_, cpuid_page) = &snp_pages_at(&file, cpuid[0].0)[0];
    assert_eq!(u32::from_le_bytes(cpuid_page[..4].try_into().unwrap()), 10, "the image's CPUID table");
    // SEC memory: every page launched, as a zero page (validated, measured as zeros).
    for (base, size) in &sec_mem {
        for gpa in (*base..base + size).step_by(4096) {
            assert_eq!(snp_pages_at(&file, gpa), [(IgvmPageDataType::NORMAL, vec![])], "{gpa:#x}");
        }
    }
    // The boot information tells the SVSM all of it; no calling area in this OVMF.
    let info = snp_boot_info(&file);
    assert_eq!((info.secrets_gpa, info.cpuid_gpa, info.calling_area_gpa), (secrets[0].0, cpuid[0].0, 0));
    let mut expected = [GpaRange::default(); layout::MAX_FIRMWARE_RANGES];
    for (slot, (base, size)) in expected.iter_mut().zip(&sec_mem) {
        *slot = GpaRange { base: *base, size: *size };
    }
    assert_eq!((info.prevalidated_count, info.prevalidated), (sec_mem.len() as u64, expected));
    let ovmf = debian_ovmf();
    let base = (1u64 << 32) - ovmf.len() as u64;
    assert_eq!((info.firmware_base, info.firmware_size), (base, ovmf.len() as u64));
    assert_eq!(page_at(&file, (1 << 32) - 4096, SNP).unwrap().2, ovmf[ovmf.len() - 4096..]);

    // The launch digest of the whole image agrees with sev-snp-measure's.
    let pages_path = dir.join("pages.json");
    let measurement = ok(&["igvm", "measure", s(&igvm), "--pages", s(&pages_path)]);
    let pages: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&pages_path).unwrap()).unwrap();
    assert_eq!(sev_snp_measure(&dir, &igvm, &pages), measurement);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_firmware_calling_area_is_launched_as_a_zero_page_and_named_in_the_boot_information() {
    let dir = temp("caa");
    // Today's edk2 layout (OvmfPkg/Include/Fdf/MemFd.fdf.inc): the CAA after the CPUID page.
    let sections = [
        (0x80_0000, 0x9000, SEC_MEM),
        (0x80_A000, 0x3000, SEC_MEM),
        (0x80_D000, 0x1000, SECRETS),
        (0x80_E000, 0x1000, CPUID),
        (0x80_F000, 0x1000, SVSM_CAA),
        (0x81_1000, 0x1F000, SEC_MEM),
    ];
    std::fs::write(dir.join("ovmf.fd"), ovmf_like(4, &sections)).unwrap();
    assert_eq!(sections_by_sev_snp_measure(&dir.join("ovmf.fd")).len(), sections.len(), "the test image parses");
    let igvm = build(&dir, &sample_elf(), &["--firmware", s(&dir.join("ovmf.fd"))]);
    let file = read_igvm(&igvm);
    assert_eq!(snp_pages_at(&file, 0x80_F000), [(IgvmPageDataType::NORMAL, vec![])]);
    let info = snp_boot_info(&file);
    assert_eq!((info.calling_area_gpa, info.prevalidated_count), (0x80_F000, 3));
    assert_eq!(
        info.prevalidated[..3],
        [
            GpaRange { base: 0x80_0000, size: 0x9000 },
            GpaRange { base: 0x80_A000, size: 0x3000 },
            GpaRange { base: 0x81_1000, size: 0x1F000 }
        ]
    );
    // With a calling area of its own the firmware may use the default one's page.
    let elsewhere = [(layout::DEFAULT_CALLING_AREA_GPA as u32, 0x1000, SEC_MEM), (0x80_0000, 0x1000, SVSM_CAA)];
    std::fs::write(dir.join("ovmf.fd"), ovmf_like(2, &elsewhere)).unwrap();
    build(&dir, &sample_elf(), &["--firmware", s(&dir.join("ovmf.fd"))]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn firmware_whose_metadata_collides_or_is_missing_is_refused() {
    let dir = temp("firmware-conflicts");
    let (elf, out, fw) = (dir.join("svsm.elf"), dir.join("out.igvm"), dir.join("fw.fd"));
    std::fs::write(&elf, sample_elf()).unwrap();
    let refused = |firmware: &[u8], message: &str| {
        std::fs::write(&fw, firmware).unwrap();
        fails(&["igvm", "build", "--svsm", s(&elf), "--out", s(&out), "--firmware", s(&fw)], 1, message);
        assert!(!out.exists(), "no file is written on failure");
    };
    refused(&[0x90; 0x4000], "no OVMF GUID table");
    let vmsa = layout::GUEST_VMSA_GPA as u32;
    let ca = layout::DEFAULT_CALLING_AREA_GPA as u32;
    for (sections, message) in [
        (vec![(0xFF_0000, 0x2_0000, SEC_MEM)], "overlaps the SVSM region"),
        (vec![(vmsa, 0x1000, SEC_MEM)], "the page the SVSM makes the guest's first VMSA"),
        (vec![(ca, 0x1000, SECRETS)], "the calling area the SVSM makes"),
        (vec![(0xFFFF_F000, 0x1000, SEC_MEM)], "the firmware image itself"),
        (vec![(0x4000_0000, 0x1000, CPUID)], "map the first GiB only"),
        (vec![(0x80_0000, 0x1000, SECRETS), (0x80_1000, 0x1000, SECRETS)], "two SNP_SECRETS sections"),
        (vec![(0x80_0000, 0x2000, SEC_MEM), (0x80_1000, 0x1000, CPUID)], "overlaps its SNP_SEC_MEM section"),
        (vec![(0x80_0000, 0x1000, 7)], "type 0x7"),
        (vec![(0x80_0800, 0x1000, SEC_MEM)], "not whole 4 KiB pages"),
    ] {
        refused(&ovmf_like(2, &sections), message);
    }
    let many: Vec<_> = (0..17).map(|i| (0x80_0000 + 0x2000 * i, 0x1000, SEC_MEM)).collect();
    refused(&ovmf_like(2, &many), "the boot information holds 16");
    std::fs::remove_dir_all(dir).unwrap();
}
