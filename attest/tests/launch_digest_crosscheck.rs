//! The launch digest against an independent implementation: virtee's `sev-snp-measure`
//! (PyPI), whose `GCTX` class measures pages the way the SNP firmware does. The same
//! sequence of pages (every page type, random contents, several VMSAs) goes through both.
//!
//! The package is installed into `target/pydeps` on first use (pip, from PyPI).

use bulwark_attest::launch_digest::{LaunchDigest, PageType};
use bulwark_attest::testing::python_with_sev_snp_measure;

/// A deterministic byte stream (xorshift), so a failure can be reproduced.
fn bytes(seed: &mut u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

#[test]
fn the_digest_matches_sev_snp_measure_for_every_page_type() {
    let dir = std::env::temp_dir().join(format!("bulwark-ld-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut seed = 0x5eed_1234_abcd_0001u64;
    let mut ours = LaunchDigest::new();
    let mut script = String::from("from sevsnpmeasure.gctx import GCTX\ng = GCTX()\n");
    for i in 0..24u64 {
        let gpa = 0x10_0000 + i * 0x1000;
        let path = dir.join(format!("p{i}"));
        match i % 6 {
            0 | 1 => {
                let data = bytes(&mut seed, 4096);
                std::fs::write(&path, &data).unwrap();
                ours.normal_page(gpa, &data);
                script += &format!("g.update_normal_pages({gpa:#x}, open({path:?}, 'rb').read())\n");
            }
            2 => {
                ours.unhashed_page(PageType::Zero, gpa);
                script += &format!("g.update_zero_pages({gpa:#x}, 4096)\n");
            }
            3 => {
                ours.unhashed_page(PageType::Unmeasured, gpa);
                script += &format!("g.update_unmeasured_pages({gpa:#x}, 4096)\n");
            }
            4 => {
                ours.unhashed_page(PageType::Secrets, gpa);
                script += &format!("g.update_secrets_page({gpa:#x})\n");
            }
            _ => {
                ours.unhashed_page(PageType::Cpuid, gpa);
                script += &format!("g.update_cpuid_page({gpa:#x})\n");
            }
        }
    }
    // Two vCPUs' VMSAs, last, as KVM measures them.
    for v in 0..2 {
        let vmsa: [u8; 4096] = bytes(&mut seed, 4096).try_into().unwrap();
        let path = dir.join(format!("vmsa{v}"));
        std::fs::write(&path, vmsa).unwrap();
        ours.vmsa_page(&vmsa);
        script += &format!("g.update_vmsa_page(open({path:?}, 'rb').read())\n");
    }
    script += "print(g.ld().hex())\n";
    let out = python_with_sev_snp_measure().args(["-c", &script]).output().expect("python3 runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "sev-snp-measure failed: {}", String::from_utf8_lossy(&out.stderr));
    let theirs = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let ours: String = ours.digest().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(ours, theirs);
}
