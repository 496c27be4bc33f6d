//! `bulwark igvm build` and `bulwark igvm measure`, run as a user runs them: on a small
//! ELF image written here (two segments at 16 MiB, one with .bss, and an `igvm_entry32`
//! symbol), with Debian's OVMF.fd as the firmware, and on the release SVSM image when it
//! has been built. The IGVM file is read back with the igvm crate; the measurement is
//! checked against virtee's sev-snp-measure (PyPI, installed into `target/pydeps` on first
//! use, as attest/tests/launch_digest_crosscheck.rs does), whose OVMF parser also says
//! which sections Debian's OVMF.fd asks for.

mod common;

use abi::igvm::{self as layout, BootInfo, GpaRange};
use common::*;
use igvm::{IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader, IgvmRevision};
use igvm_defs::{IgvmPageDataType, IgvmPlatformType};
use std::path::{Path, PathBuf};
use std::process::Command;
use zerocopy::FromBytes;

#[test]
fn build_writes_the_documented_layout_for_both_platforms() {
    let dir = temp("layout");
    let path = build(&dir, &sample_elf(), &[]);
    let file = read_igvm(&path);

    let platforms: Vec<_> = file
        .platforms()
        .iter()
        .map(|IgvmPlatformHeader::SupportedPlatform(p)| (p.platform_type, p.compatibility_mask))
        .collect();
    assert_eq!(platforms, [(IgvmPlatformType::SEV_SNP, SNP), (IgvmPlatformType::NATIVE, NATIVE)]);
    assert_eq!(
        file.initializations(),
        [IgvmInitializationHeader::GuestPolicy { policy: 0x30000, compatibility_mask: SNP }]
    );

    // Parameter areas and inserts at the documented places, all before any page data.
    let d = file.directives();
    let first_page = d.iter().position(|d| matches!(d, IgvmDirectiveHeader::PageData { .. })).unwrap();
    let mut inserts = Vec::new();
    for (i, x) in d.iter().enumerate() {
        match x {
            IgvmDirectiveHeader::ParameterInsert(p) => {
                assert!(i < first_page, "insert {i} after page data {first_page}");
                inserts.push((p.gpa, p.parameter_area_index, p.compatibility_mask));
            }
            IgvmDirectiveHeader::ParameterArea { .. }
            | IgvmDirectiveHeader::VpCount(_)
            | IgvmDirectiveHeader::MemoryMap(_) => {
                assert!(i < first_page)
            }
            _ => {}
        }
    }
    assert_eq!(inserts, [(layout::VP_COUNT_GPA, 0, SNP | NATIVE), (layout::MEMORY_MAP_GPA, 1, SNP | NATIVE)]);
    let area_size = |index| {
        d.iter().find_map(|x| match x {
            IgvmDirectiveHeader::ParameterArea { number_of_bytes, parameter_area_index, .. }
                if *parameter_area_index == index =>
            {
                Some(*number_of_bytes)
            }
            _ => None,
        })
    };
    assert_eq!((area_size(0), area_size(1)), (Some(4096), Some(layout::MEMORY_MAP_PAGES * 4096)));
    assert!(d.iter().any(|x| matches!(x, IgvmDirectiveHeader::VpCount(p) if p.parameter_area_index == 0)));
    assert!(d.iter().any(|x| matches!(x, IgvmDirectiveHeader::MemoryMap(p) if p.parameter_area_index == 1)));

    // The ELF's bytes at their addresses, .bss and the rest of a page as zeros.
    let t = text();
    assert_eq!(page_at(&file, 0x100_0000, SNP), Some((SNP | NATIVE, IgvmPageDataType::NORMAL, t[..4096].to_vec())));
    let (_, _, half) = page_at(&file, 0x100_1000, SNP).unwrap();
    assert_eq!(&half[..0x800], &t[4096..]);
    assert!(half[0x800..].iter().all(|b| *b == 0));
    assert_eq!(
        page_at(&file, 0x100_2000, SNP),
        Some((SNP | NATIVE, IgvmPageDataType::NORMAL, vec![])),
        "no segment there: a zero page of the SVSM's pool"
    );
    for gpa in [layout::SVSM_REGION_BASE + 0x10_0000, layout::BOOT_BLOCK_BASE - 0x1000] {
        assert!(page_at(&file, gpa, SNP).is_some(), "the whole region below the boot block is launched: {gpa:#x}");
    }
    assert_eq!(page_at(&file, layout::BOOT_BLOCK_BASE + 0xF000, SNP), None, "unused boot-block pages are not");

    assert_eq!(&page_at(&file, 0x100_3000, NATIVE).unwrap().2[..0x101], &[[0xD5; 0x100].as_slice(), &[0]].concat());
    for bss in [0x100_4000, 0x100_5000] {
        assert_eq!(page_at(&file, bss, SNP), Some((SNP | NATIVE, IgvmPageDataType::NORMAL, vec![])), "{bss:#x}");
    }

    // Boot information, one page per platform; without firmware the secrets and CPUID
    // pages are in the boot block and the SVSM makes the calling area.
    for (mask, secrets, cpuid) in [(SNP, layout::SECRETS_GPA, layout::CPUID_GPA), (NATIVE, 0, 0)] {
        let (m, _, page) = page_at(&file, layout::BOOT_INFO_GPA, mask).unwrap();
        assert_eq!(m, mask);
        let (info, _) = BootInfo::read_from_prefix(&page).unwrap();
        assert_eq!(
            info,
            BootInfo {
                magic: layout::BOOT_INFO_MAGIC,
                svsm_base: layout::SVSM_REGION_BASE,
                svsm_size: layout::SVSM_REGION_SIZE,
                secrets_gpa: secrets,
                cpuid_gpa: cpuid,
                vp_count_gpa: layout::VP_COUNT_GPA,
                memory_map_gpa: layout::MEMORY_MAP_GPA,
                memory_map_pages: layout::MEMORY_MAP_PAGES,
                firmware_base: 0,
                firmware_size: 0,
                guest_vmpl: 1,
                calling_area_gpa: 0,
                prevalidated_count: 0,
                prevalidated: [GpaRange::default(); layout::MAX_FIRMWARE_RANGES],
            }
        );
    }

    // Secrets and CPUID pages on SNP only.
    assert_eq!(page_at(&file, layout::SECRETS_GPA, SNP).map(|p| (p.0, p.1)), Some((SNP, IgvmPageDataType::SECRETS)));
    let (m, kind, cpuid) = page_at(&file, layout::CPUID_GPA, SNP).unwrap();
    assert_eq!((m, kind), (SNP, IgvmPageDataType::CPUID_DATA));
    assert_eq!(page_at(&file, layout::SECRETS_GPA, NATIVE), None);
    assert_eq!(page_at(&file, layout::CPUID_GPA, NATIVE), None);
    let count = u32::from_le_bytes(cpuid[..4].try_into().unwrap()) as usize;
    let leaves: Vec<(u32, u32)> = (0..count)
        .map(|i| &cpuid[16 + 48 * i..][..48])
        .map(|e| (u32::from_le_bytes(e[..4].try_into().unwrap()), u32::from_le_bytes(e[4..8].try_into().unwrap())))
        .collect();
    for leaf in
        [(0, 0), (1, 0), (7, 0), (0xB, 0), (0xD, 0), (0xD, 1), (0x8000_0000, 0), (0x8000_0001, 0), (0x8000_0008, 0)]
    {
        assert!(leaves.contains(&leaf), "CPUID leaf {leaf:x?} missing");
    }
    let sev = leaves.iter().position(|l| *l == (0x8000_001F, 0)).unwrap();
    assert_eq!(cpuid[16 + 48 * sev + 28] & 0x3F, 51, "C-bit position");

    // Page tables: the first GiB one to one, the C-bit in the SNP copy only.
    for (mask, c) in [(SNP, C_BIT), (NATIVE, 0)] {
        let pml4 = u64s(&page_at(&file, layout::PML4_GPA, mask).unwrap().2);
        assert_eq!(pml4[0], layout::PDPT_GPA | 3 | c);
        assert!(pml4[1..].iter().all(|e| *e == 0));
        assert_eq!(u64s(&page_at(&file, layout::PDPT_GPA, mask).unwrap().2)[0], layout::PD_GPA | 3 | c);
        let pd = u64s(&page_at(&file, layout::PD_GPA, mask).unwrap().2);
        assert!(pd.iter().enumerate().all(|(i, e)| *e == (i as u64) << 21 | 0x83 | c));
    }
    let (m, _, gdt) = page_at(&file, layout::GDT_GPA, SNP).unwrap();
    assert_eq!(m, SNP | NATIVE);
    assert_eq!(u64s(&gdt)[..5], [0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF, 0x00CF_9A00_0000_FFFF, 0]);

    // Start state: the entry symbol, the boot information in RSI, 32-bit protected mode
    // with paging off (what KVM keeps: igvmmeasure --check-kvm), the entry code loads CR3.
    let vmsa = d
        .iter()
        .find_map(|x| match x {
            IgvmDirectiveHeader::SnpVpContext { gpa, compatibility_mask: SNP, vp_index: 0, vmsa } => Some((*gpa, vmsa)),
            _ => None,
        })
        .unwrap();
    assert_eq!(vmsa.0, 0xFFFF_FFFF_F000, "QEMU takes a VMSA only at KVM's address");
    let v = vmsa.1;
    assert_eq!((v.rip, v.rsi, v.cr3, v.efer, v.cr0, v.cr4), (ENTRY, layout::BOOT_INFO_GPA, 0, 0x1000, 0x31, 0x40));
    assert_eq!(
        (v.cs.selector, v.cs.attrib, v.ss.selector, v.ss.attrib, v.gdtr.base, v.gdtr.limit),
        (0x18, 0xC9B, 0x10, 0xC93, layout::GDT_GPA, 31),
        "32-bit code and a 32-bit stack, from the GDT's 0x18 and 0x10"
    );
    assert_eq!((v.vmpl, v.sev_features.into_bits(), v.rflags), (0, 1, 2));
    let native = d
        .iter()
        .find_map(|x| match x {
            IgvmDirectiveHeader::X64NativeVpContext { compatibility_mask: NATIVE, vp_index: 0, context } => {
                Some(context)
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (native.rip, native.rsi, native.cr3, native.cr0, native.efer),
        (ENTRY, layout::BOOT_INFO_GPA, 0, 0x31, 0)
    );
    assert_eq!((native.code_selector, native.code_attributes), (0x18, 0xC09B));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn firmware_ends_at_4_gib_and_the_summary_says_so() {
    let dir = temp("firmware");
    let mut firmware =
        ovmf_like(2, &[(0x80_0000, 0x1000, SEC_MEM), (0x80_1000, 0x1000, SECRETS), (0x80_2000, 0x1000, CPUID)]);
    for (i, b) in firmware[..0x1000].iter_mut().enumerate() {
        *b = (i >> 4) as u8;
    }
    std::fs::write(dir.join("ovmf.fd"), &firmware).unwrap();
    std::fs::write(dir.join("svsm.elf"), sample_elf()).unwrap();
    let out = dir.join("bulwark.igvm");
    let summary: serde_json::Value = serde_json::from_str(&ok(&[
        "igvm",
        "build",
        "--svsm",
        s(&dir.join("svsm.elf")),
        "--out",
        s(&out),
        "--firmware",
        s(&dir.join("ovmf.fd")),
        "--snp-policy",
        "0x30001",
        "--json",
    ]))
    .unwrap();
    assert_eq!(summary["entry"], ENTRY);
    assert_eq!(summary["firmware"], serde_json::json!({"base": 0xFFFF_E000u64, "size": 0x2000}));
    assert_eq!(summary["snp"]["policy"], "0x30001");
    assert_eq!(
        (&summary["snp"]["secrets_page"], &summary["snp"]["cpuid_page"], &summary["snp"]["calling_area"]),
        (&serde_json::json!(0x80_1000), &serde_json::json!(0x80_2000), &serde_json::Value::Null)
    );
    assert_eq!(summary["snp"]["prevalidated"], serde_json::json!([{"base": 0x80_0000, "size": 0x1000}]));
    assert_eq!(summary["file_size"], std::fs::metadata(&out).unwrap().len());
    let file = read_igvm(&out);
    assert_eq!(page_at(&file, 0xFFFF_E000, NATIVE).unwrap().2, firmware[..4096]);
    assert_eq!(
        page_at(&file, 0xFFFF_F000, SNP),
        Some((SNP | NATIVE, IgvmPageDataType::NORMAL, firmware[4096..].to_vec()))
    );
    let (info, _) = BootInfo::read_from_prefix(&page_at(&file, layout::BOOT_INFO_GPA, SNP).unwrap().2).unwrap();
    assert_eq!((info.firmware_base, info.firmware_size), (0xFFFF_E000, 0x2000));
    let text = ok(&[
        "igvm",
        "build",
        "--svsm",
        s(&dir.join("svsm.elf")),
        "--out",
        s(&out),
        "--firmware",
        s(&dir.join("ovmf.fd")),
    ]);
    for expected in [
        "igvm_entry32 = 0x1000040 (32-bit)",
        "8 KiB at 0xffffe000",
        "secrets page 0x801000, CPUID page 0x802000, calling area 0xfff000 (made by the SVSM)",
        "pre-validated for the firmware: 0x800000+4 KiB",
    ] {
        assert!(text.contains(expected), "`{expected}` in {text}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_inputs_fail_with_a_message_and_no_panic() {
    let dir = temp("errors");
    let p = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let out = dir.join("out.igvm");
    let build_from = |elf: &str| ["igvm", "build", "--svsm", elf, "--out", s(&out)].map(String::from);
    let no_symbol = p("nosym.elf", &elf(&sample_segments(), ("other_symbol", ENTRY)));
    fails(&build_from(&no_symbol).each_ref().map(String::as_str), 1, "no `igvm_entry32` symbol");
    let not_elf = p("not.elf", b"#!/bin/sh\necho not an image\n");
    fails(&build_from(&not_elf).each_ref().map(String::as_str), 1, "not an ELF file");
    let truncated = p("truncated.elf", &sample_elf()[..100]);
    fails(&build_from(&truncated).each_ref().map(String::as_str), 1, "malformed ELF file");
    for paddr in [0x300_0000, layout::BOOT_BLOCK_BASE - 0x1000, 0x80_0000] {
        let outside =
            p("outside.elf", &elf(&[Segment { paddr, bytes: vec![1; 16], memsz: 0x2000 }], ("igvm_entry32", ENTRY)));
        fails(&build_from(&outside).each_ref().map(String::as_str), 1, "outside the SVSM region");
    }
    let good = p("good.elf", &sample_elf());
    let firmware = p("odd.fd", &[0x90; 5000]);
    let mut args = build_from(&good).to_vec();
    args.extend(["--firmware".into(), firmware]);
    fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), 1, "not a non-zero multiple of 4 KiB");
    let no_image = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["igvm", "build", "--out", s(&out)])
        .env("CARGO_TARGET_DIR", dir.join("no-target"))
        .output()
        .unwrap();
    assert_eq!(no_image.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_image.stderr).contains("no --svsm given and no SVSM image at"));
    fails(&["igvm", "build", "--svsm", &good, "--out", s(&out), "--snp-policy", "0x10000"], 2, "bit 17");
    assert!(!out.exists(), "no file is written on failure");

    // measure: missing, truncated, garbage and re-checksummed-garbage files.
    ok(&["igvm", "build", "--svsm", &good, "--out", s(&out)]);
    let igvm = std::fs::read(&out).unwrap();
    fails(&["igvm", "measure", s(&dir.join("missing.igvm"))], 1, "missing.igvm");
    let short = p("short.igvm", &igvm[..igvm.len() / 2]);
    fails(&["igvm", "measure", &short], 1, "not a valid IGVM file");
    let garbage = p("garbage.igvm", &(0..5000u32).map(|i| (i * 31) as u8).collect::<Vec<_>>());
    fails(&["igvm", "measure", &garbage], 1, "not a valid IGVM file");
    let mut bad_header = igvm.clone();
    bad_header[0x40..0x60].fill(0xFF);
    let bad_header = p("header.igvm", &bad_header);
    fails(&["igvm", "measure", &bad_header], 1, "not a valid IGVM file");
    fails(&["igvm", "measure", s(&out), "--vcpus", "2"], 1, "no VMSA for vCPU 1");
    fails(&["igvm", "measure", s(&out), "--vcpus", "0"], 2, "at least 1");
    fails(&["igvm", "measure"], 2, "exactly one IGVM file");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn measurement_matches_sev_snp_measure_over_the_listed_pages() {
    let dir = temp("measure");
    let sections = [
        (0x80_0000, 0x2000, SEC_MEM),
        (0x80_2000, 0x1000, SECRETS),
        (0x80_3000, 0x1000, CPUID),
        (0x80_4000, 0x1000, SVSM_CAA),
    ];
    std::fs::write(dir.join("ovmf.fd"), ovmf_like(3, &sections)).unwrap();
    let igvm = build(&dir, &sample_elf(), &["--firmware", s(&dir.join("ovmf.fd"))]);
    let pages_path = dir.join("pages.json");
    let measurement = ok(&["igvm", "measure", s(&igvm), "--pages", s(&pages_path)]);
    assert!(measurement.len() == 96 && measurement.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    let pages: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&pages_path).unwrap()).unwrap();

    // What QEMU sends: the inserts first, then the page data in file order (the firmware's
    // pages first, by address), the VMSA last.
    let list = pages.as_array().unwrap();
    let kinds: Vec<_> = list.iter().map(|p| (p["gpa"].as_u64().unwrap(), p["page_type"].as_str().unwrap())).collect();
    assert_eq!(
        kinds[..8],
        [
            (layout::VP_COUNT_GPA, "unmeasured"),
            (layout::MEMORY_MAP_GPA, "unmeasured"),
            (0x80_0000, "normal"),
            (0x80_1000, "normal"),
            (0x80_2000, "secrets"),
            (0x80_3000, "cpuid"),
            (0x80_4000, "normal"),
            (0x100_0000, "normal")
        ]
    );
    assert_eq!(kinds.last(), Some(&(0xFFFF_FFFF_F000, "vmsa")));
    assert!(!kinds.iter().any(|k| k.0 == layout::SECRETS_GPA || k.0 == layout::CPUID_GPA), "not in the boot block");

    let summary: serde_json::Value = serde_json::from_str(&ok(&["igvm", "measure", s(&igvm), "--json"])).unwrap();
    assert_eq!(summary["measurement"], measurement);
    assert_eq!(summary["vcpus"], 1);
    // 3 text/data pages, boot info, 3 page tables, GDT, 3 of firmware; every other page
    // of the SVSM region below the boot block is a zero page, and so are the firmware's
    // SEC memory (2) and calling area.
    let zero = (layout::BOOT_BLOCK_BASE - layout::SVSM_REGION_BASE) / 4096 - 3 + 3;
    assert_eq!(
        summary["pages"],
        serde_json::json!({"normal": 11, "zero": zero, "unmeasured": 2, "secrets": 1, "cpuid": 1, "vmsa": 1})
    );
    assert_eq!(list.len() as u64, 16 + zero);

    assert_eq!(sev_snp_measure(&dir, &igvm, &pages), measurement);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn one_changed_byte_changes_the_measurement_and_native_pages_do_not() {
    let dir = temp("sensitivity");
    let igvm = build(&dir, &sample_elf(), &[]);
    let measurement = ok(&["igvm", "measure", s(&igvm)]);
    assert_eq!(ok(&["igvm", "measure", s(&build(&dir, &sample_elf(), &[]))]), measurement, "builds are reproducible");

    let mut segments = sample_segments();
    segments[1].bytes[0x80] ^= 1;
    let changed = build(&dir, &elf(&segments, ("igvm_entry32", ENTRY)), &[]);
    assert_ne!(ok(&["igvm", "measure", s(&changed)]), measurement);

    // Every native-only page and the native start state changed: same SNP measurement.
    let file = read_igvm(&build(&dir, &sample_elf(), &[]));
    let mut changed_native = 0;
    let directives: Vec<_> = file
        .directives()
        .iter()
        .cloned()
        .map(|d| match d {
            IgvmDirectiveHeader::PageData { gpa, compatibility_mask: NATIVE, flags, data_type, mut data } => {
                data.resize(4096, 0);
                data[8] ^= 0xFF;
                changed_native += 1;
                IgvmDirectiveHeader::PageData { gpa, compatibility_mask: NATIVE, flags, data_type, data }
            }
            IgvmDirectiveHeader::X64NativeVpContext { compatibility_mask, vp_index, mut context } => {
                context.rip += 0x10;
                IgvmDirectiveHeader::X64NativeVpContext { compatibility_mask, vp_index, context }
            }
            other => other,
        })
        .collect();
    assert_eq!(changed_native, 4, "native boot info and page tables");
    let native_changed =
        IgvmFile::new(IgvmRevision::V1, file.platforms().to_vec(), file.initializations().to_vec(), directives)
            .unwrap();
    let mut bytes = Vec::new();
    native_changed.serialize(&mut bytes).unwrap();
    let path = dir.join("native-changed.igvm");
    std::fs::write(&path, &bytes).unwrap();
    assert_ne!(bytes, std::fs::read(&igvm).unwrap());
    assert_eq!(ok(&["igvm", "measure", s(&path)]), measurement);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_release_svsm_image_builds_and_measures() {
    let image = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/x86_64-unknown-none/release/bulwark-svsm");
    if !image.exists() {
        println!("note: {} is absent (cargo xtask build --release); skipped", image.display());
        return;
    }
    let dir = temp("release");
    let out = dir.join("bulwark.igvm");
    let args = ["igvm", "build", "--svsm", s(&image), "--out", s(&out), "--json"];
    let result = bulwark(&args);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&result)).unwrap();
    let entry = summary["entry"].as_u64().unwrap();
    assert!((layout::SVSM_REGION_BASE..layout::BOOT_BLOCK_BASE).contains(&entry));
    let file = read_igvm(&out);
    assert!(
        file.directives()
            .iter()
            .any(|d| matches!(d, IgvmDirectiveHeader::SnpVpContext { vmsa, .. } if vmsa.rip == entry))
    );
    let measurement = ok(&["igvm", "measure", s(&out)]);
    assert_eq!(measurement.len(), 96);
    // Without --svsm, from the workspace root: the same image.
    let default_out = dir.join("default.igvm");
    let built = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["igvm", "build", "--out", s(&default_out)])
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    assert_eq!(std::fs::read(&default_out).unwrap(), std::fs::read(&out).unwrap());
    std::fs::remove_dir_all(dir).unwrap();
}

/// `file` with its directives changed by `change`, written to `dir/name`.
fn rewritten(file: &IgvmFile, dir: &Path, name: &str, change: impl FnOnce(&mut Vec<IgvmDirectiveHeader>)) -> PathBuf {
    let mut directives = file.directives().to_vec();
    change(&mut directives);
    let changed =
        IgvmFile::new(IgvmRevision::V1, file.platforms().to_vec(), file.initializations().to_vec(), directives)
            .expect("the igvm crate takes the changed file");
    let mut bytes = Vec::new();
    changed.serialize(&mut bytes).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn snp_vmsa_index(directives: &[IgvmDirectiveHeader]) -> usize {
    directives.iter().position(|d| matches!(d, IgvmDirectiveHeader::SnpVpContext { .. })).unwrap()
}

/// COCONUT's igvmmeasure `--check-kvm` (tools/igvmmeasure/src/igvm_measure.rs) refuses a
/// VMSA with another CR0 than 0x31/0x30, a second VMSA, one at another address than KVM's
/// and one followed by measured pages; QEMU's check_vmsa_supported (target/i386/sev.c)
/// refuses the address too. `measure` refuses each instead of predicting a digest no
/// launch gives; the image the builder writes passes.
#[test]
fn measure_refuses_what_qemu_kvm_would_launch_differently() {
    let dir = temp("kvm-rules");
    let good = build(&dir, &sample_elf(), &[]);
    assert_eq!(ok(&["igvm", "measure", s(&good)]).len(), 96);
    let file = read_igvm(&good);
    let vmsa_of = |d: &mut IgvmDirectiveHeader| match d {
        IgvmDirectiveHeader::SnpVpContext { vmsa, .. } => vmsa.clone(),
        _ => unreachable!(),
    };
    // The start state the builder wrote before: 64-bit mode, paging on.
    let long_mode = rewritten(&file, &dir, "long-mode.igvm", |d| {
        let i = snp_vmsa_index(d);
        if let IgvmDirectiveHeader::SnpVpContext { vmsa, .. } = &mut d[i] {
            (vmsa.cr0, vmsa.cr3, vmsa.cr4, vmsa.efer) = (0x8000_0031, layout::PML4_GPA | C_BIT, 0x60, 0x1D00);
            (vmsa.cs.selector, vmsa.cs.attrib) = (8, 0x0A9B);
        }
    });
    fails(&["igvm", "measure", s(&long_mode)], 1, "CR0 is 0x80000031; KVM keeps only 0x31");
    let two = rewritten(&file, &dir, "two.igvm", |d| {
        let i = snp_vmsa_index(d);
        let vmsa = vmsa_of(&mut d[i]);
        d.insert(
            i + 1,
            IgvmDirectiveHeader::SnpVpContext { gpa: 0xFFFF_FFFF_F000, compatibility_mask: SNP, vp_index: 1, vmsa },
        );
    });
    fails(&["igvm", "measure", s(&two)], 1, "second VMSA (vCPU 1)");
    let not_last = rewritten(&file, &dir, "not-last.igvm", |d| {
        let i = snp_vmsa_index(d);
        let vmsa = d.remove(i);
        d.insert(i - 1, vmsa);
    });
    fails(&["igvm", "measure", s(&not_last)], 1, "comes after the VMSA");
    let insert_after = rewritten(&file, &dir, "insert-after.igvm", |d| {
        let insert = d.iter().position(|x| matches!(x, IgvmDirectiveHeader::ParameterInsert(_))).unwrap();
        let insert = d.remove(insert);
        d.push(insert);
    });
    fails(&["igvm", "measure", s(&insert_after)], 1, "a parameter insert at 0x1ff3000 comes after the VMSA");
    let moved = rewritten(&file, &dir, "moved.igvm", |d| {
        let i = snp_vmsa_index(d);
        if let IgvmDirectiveHeader::SnpVpContext { gpa, .. } = &mut d[i] {
            *gpa = 0xFFFF_FFFF_E000;
        }
    });
    fails(&["igvm", "measure", s(&moved), "--json"], 1, "the VMSA is at 0xffffffffe000; KVM puts");
    std::fs::remove_dir_all(dir).unwrap();
}
