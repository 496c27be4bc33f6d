//! What the IGVM tests share: running `bulwark`, a small SVSM-like ELF image, reading the
//! IGVM file back, sev-snp-measure's digest over the measured pages, and guest firmware:
//! Debian's OVMF.fd (package `ovmf`, which carries the SEV metadata) and small images laid
//! out like it, with the sections a test chooses. Each test binary uses a part of it.
#![allow(dead_code)]

use attest::testing::python_with_sev_snp_measure;
use igvm::{IgvmDirectiveHeader, IgvmFile};
use igvm_defs::IgvmPageDataType;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use zerocopy::IntoBytes;

/// Where Debian's `ovmf` package puts the all-in-one image (`cargo xtask prereqs`
/// installs it).
pub const DEBIAN_OVMF: &str = "/usr/share/ovmf/OVMF.fd";

pub fn debian_ovmf() -> Vec<u8> {
    std::fs::read(DEBIAN_OVMF)
        .unwrap_or_else(|e| panic!("{DEBIAN_OVMF}: {e}; install Debian's `ovmf` package (cargo xtask prereqs)"))
}

/// OVMF_SECTION_TYPE_* (OvmfPkg/ResetVector/X64/OvmfSevMetadata.nasm.inc).
pub const SEC_MEM: u32 = 1;
pub const SECRETS: u32 = 2;
pub const CPUID: u32 = 3;
pub const SVSM_CAA: u32 = 4;

/// An image of `pages` pages (code bytes 0x90) laid out like OVMF's end: the `ASEV`
/// descriptor with `sections` (base, size, type) in its last page, located by the SEV
/// metadata block of the GUIDed table that ends 32 bytes before the end of the image
/// (OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.nasm.inc).
pub fn ovmf_like(pages: usize, sections: &[(u32, u32, u32)]) -> Vec<u8> {
    let footer_guid = [0xDE, 0x82, 0xB5, 0x96, 0xB2, 0x1F, 0xF7, 0x45, 0xBA, 0xEA, 0xA3, 0x66, 0xC5, 0x5A, 0x08, 0x2D];
    let sev_guid = [0x66, 0x65, 0x88, 0xDC, 0x4A, 0x98, 0x98, 0x47, 0xA7, 0x5E, 0x55, 0x85, 0xA7, 0xBF, 0x67, 0xCC];
    let mut img = vec![0x90u8; pages * 4096];
    let len = img.len();
    let at = len - 2048;
    let mut desc = b"ASEV".to_vec();
    for v in [16 + 12 * sections.len() as u32, 1, sections.len() as u32] {
        desc.extend_from_slice(&v.to_le_bytes());
    }
    for (base, size, kind) in sections {
        for v in [base, size, kind] {
            desc.extend_from_slice(&v.to_le_bytes());
        }
    }
    img[at..at + desc.len()].copy_from_slice(&desc);
    let mut table = ((len - at) as u32).to_le_bytes().to_vec();
    table.extend_from_slice(&22u16.to_le_bytes());
    table.extend_from_slice(&sev_guid);
    table.extend_from_slice(&((table.len() + 18) as u16).to_le_bytes());
    table.extend_from_slice(&footer_guid);
    let end = len - 32;
    img[end - table.len()..end].copy_from_slice(&table);
    img
}

pub const SNP: u32 = 1;
pub const NATIVE: u32 = 2;
pub const C_BIT: u64 = 1 << 51;
pub const ENTRY: u64 = 0x100_0040;

pub fn bulwark(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark")).args(args).output().expect("bulwark runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "bulwark {args:?} panicked: {stderr}");
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `bulwark args`, expecting success.
pub fn ok(args: &[&str]) -> String {
    let out = bulwark(args);
    assert!(out.status.success(), "bulwark {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    stdout(&out)
}

/// Runs `bulwark args`, expecting exit status `code` and `message` on stderr.
pub fn fails(args: &[&str], code: i32, message: &str) {
    let out = bulwark(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "bulwark {args:?}: {stderr}");
    assert!(stderr.contains(message), "bulwark {args:?}: expected `{message}` in: {stderr}");
}

pub fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bulwark-igvm-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A PT_LOAD segment: `bytes` at `paddr`, `memsz` bytes in memory.
pub struct Segment {
    pub paddr: u64,
    pub bytes: Vec<u8>,
    pub memsz: u64,
}

pub fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// An x86-64 ELF64 executable with `segments` and a symbol table holding `symbol`.
pub fn elf(segments: &[Segment], symbol: (&str, u64)) -> Vec<u8> {
    let phoff = 64;
    let mut out = vec![0u8; phoff + 56 * segments.len()];
    put(&mut out, 0, b"\x7fELF\x02\x01\x01");
    put(&mut out, 0x10, &2u16.to_le_bytes());
    put(&mut out, 0x12, &0x3Eu16.to_le_bytes());
    put(&mut out, 0x14, &1u32.to_le_bytes());
    put(&mut out, 0x18, &symbol.1.to_le_bytes());
    put(&mut out, 0x20, &(phoff as u64).to_le_bytes());
    put(&mut out, 0x34, &64u16.to_le_bytes());
    put(&mut out, 0x36, &56u16.to_le_bytes());
    put(&mut out, 0x38, &(segments.len() as u16).to_le_bytes());
    for (i, seg) in segments.iter().enumerate() {
        let offset = out.len() as u64;
        out.extend_from_slice(&seg.bytes);
        let h = phoff + 56 * i;
        put(&mut out, h, &1u32.to_le_bytes());
        put(&mut out, h + 4, &7u32.to_le_bytes());
        for (at, v) in
            [(8, offset), (0x10, seg.paddr), (0x18, seg.paddr), (0x20, seg.bytes.len() as u64), (0x28, seg.memsz)]
        {
            put(&mut out, h + at, &v.to_le_bytes());
        }
    }
    let strtab = out.len();
    out.extend_from_slice(b"\0");
    out.extend_from_slice(symbol.0.as_bytes());
    out.extend_from_slice(b"\0");
    let strtab_size = out.len() - strtab;
    let symtab = out.len();
    out.extend_from_slice(&[0; 24]);
    let mut sym = [0u8; 24];
    put(&mut sym, 0, &1u32.to_le_bytes());
    sym[4] = 0x12; // global function
    put(&mut sym, 6, &1u16.to_le_bytes());
    put(&mut sym, 8, &symbol.1.to_le_bytes());
    out.extend_from_slice(&sym);
    let shoff = out.len();
    out.extend_from_slice(&[0; 64 * 3]);
    for (i, kind, offset, size, link, entsize) in
        [(1, 2u32, symtab, 48u64, 2u32, 24u64), (2, 3, strtab, strtab_size as u64, 0, 0)]
    {
        let h = shoff + 64 * i;
        put(&mut out, h + 4, &kind.to_le_bytes());
        put(&mut out, h + 0x18, &(offset as u64).to_le_bytes());
        put(&mut out, h + 0x20, &size.to_le_bytes());
        put(&mut out, h + 0x28, &link.to_le_bytes());
        put(&mut out, h + 0x38, &entsize.to_le_bytes());
    }
    put(&mut out, 0x28, &(shoff as u64).to_le_bytes());
    put(&mut out, 0x3A, &64u16.to_le_bytes());
    put(&mut out, 0x3C, &3u16.to_le_bytes());
    out
}

/// Code and data at 16 MiB: text of 6 KiB (a page and a half), data of 256 bytes
/// followed by 12 KiB of .bss.
pub fn text() -> Vec<u8> {
    (0..0x1800u32).map(|i| (i * 7 + 3) as u8).collect()
}

pub fn sample_segments() -> Vec<Segment> {
    vec![
        Segment { paddr: 0x100_0000, bytes: text(), memsz: 0x1800 },
        Segment { paddr: 0x100_3000, bytes: vec![0xD5; 0x100], memsz: 0x3000 },
    ]
}

pub fn sample_elf() -> Vec<u8> {
    elf(&sample_segments(), ("igvm_entry32", ENTRY))
}

/// Writes `sample_elf()` (or `elf_bytes`) into `dir` and builds it; returns the IGVM path.
pub fn build(dir: &Path, elf_bytes: &[u8], extra: &[&str]) -> PathBuf {
    let (svsm, out) = (dir.join("svsm.elf"), dir.join("bulwark.igvm"));
    std::fs::write(&svsm, elf_bytes).unwrap();
    let mut args = vec!["igvm", "build", "--svsm", s(&svsm), "--out", s(&out)];
    args.extend_from_slice(extra);
    ok(&args);
    out
}

pub fn read_igvm(path: &Path) -> IgvmFile {
    IgvmFile::new_from_binary(&std::fs::read(path).unwrap(), None).expect("the file parses")
}

/// The page data at `gpa` for `mask`'s platform: (compatibility mask, type, data).
pub fn page_at(file: &IgvmFile, gpa: u64, mask: u32) -> Option<(u32, IgvmPageDataType, Vec<u8>)> {
    file.directives().iter().find_map(|d| match d {
        IgvmDirectiveHeader::PageData { gpa: g, compatibility_mask, data_type, data, .. }
            if *g == gpa && compatibility_mask & mask != 0 =>
        {
            Some((*compatibility_mask, *data_type, data.clone()))
        }
        _ => None,
    })
}

pub fn u64s(page: &[u8]) -> Vec<u64> {
    page.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect()
}

/// sev-snp-measure's digest over the `--pages` list, given the pages' real bytes from the
/// IGVM file (NORMAL pages and VMSAs), so that Python hashes them itself.
pub fn sev_snp_measure(dir: &Path, igvm: &Path, pages: &serde_json::Value) -> String {
    let file = read_igvm(igvm);
    let vmsa = file
        .directives()
        .iter()
        .find_map(|d| match d {
            IgvmDirectiveHeader::SnpVpContext { vmsa, .. } => Some(vmsa.as_bytes().to_vec()),
            _ => None,
        })
        .unwrap();
    let (mut blob, mut plan) = (Vec::new(), Vec::new());
    for p in pages.as_array().unwrap() {
        let (gpa, kind) = (p["gpa"].as_u64().unwrap(), p["page_type"].as_str().unwrap());
        let bytes = match kind {
            "normal" => {
                let mut data = page_at(&file, gpa, SNP).unwrap().2;
                data.resize(4096, 0);
                data
            }
            "vmsa" => vmsa.clone(),
            _ => {
                assert_eq!(p["contents_sha384"], "0".repeat(96), "{p}");
                vec![]
            }
        };
        plan.push(serde_json::json!([kind, gpa, blob.len()]));
        blob.extend_from_slice(&bytes);
    }
    std::fs::write(dir.join("blob"), blob).unwrap();
    std::fs::write(dir.join("plan.json"), serde_json::to_string(&plan).unwrap()).unwrap();
    let script = format!(
        "import json
from sevsnpmeasure.gctx import GCTX
plan = json.load(open({plan:?}))
blob = open({blob:?}, 'rb').read()
g = GCTX()
for kind, gpa, at in plan:
    page = blob[at:at + 4096]
    if kind == 'normal': g.update_normal_pages(gpa, page)
    elif kind == 'vmsa': g.update_vmsa_page(page)
    elif kind == 'unmeasured': g.update_unmeasured_pages(gpa, 4096)
    elif kind == 'secrets': g.update_secrets_page(gpa)
    elif kind == 'cpuid': g.update_cpuid_page(gpa)
    elif kind == 'zero': g.update_zero_pages(gpa, 4096)
    else: raise ValueError(kind)
print(g.ld().hex())
",
        plan = s(&dir.join("plan.json")),
        blob = s(&dir.join("blob")),
    );
    let out = python_with_sev_snp_measure().args(["-c", &script]).output().expect("python3 runs");
    assert!(out.status.success(), "sev-snp-measure failed: {}", String::from_utf8_lossy(&out.stderr));
    stdout(&out)
}
