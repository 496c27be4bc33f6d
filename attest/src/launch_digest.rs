//! The SEV-SNP launch digest: the MEASUREMENT field of every attestation report, which the
//! PSP computes while the host loads the guest (SNP firmware ABI, SNP_LAUNCH_UPDATE).
//!
//! Each page the host adds extends the digest: `digest = SHA-384(PAGE_INFO)`, where
//! PAGE_INFO (0x70 bytes, little-endian) is
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0x00 | 48 | the digest so far (48 zero bytes at the start) |
//! | 0x30 | 48 | CONTENTS: SHA-384 of the page for NORMAL and VMSA pages, zero otherwise |
//! | 0x60 | 2 | LENGTH = 0x70 |
//! | 0x62 | 1 | PAGE_TYPE |
//! | 0x63 | 1 | IMI_PAGE (0) |
//! | 0x64 | 3 | VMPL3, VMPL2, VMPL1 permissions (0) |
//! | 0x67 | 1 | reserved |
//! | 0x68 | 8 | GPA |
//!
//! KVM measures every VMSA last, at GPA 0xFFFF_FFFF_F000 ([`VMSA_GPA`]), whatever its
//! real address. A verifier that knows the image computes the same digest and compares it
//! with the report (`bulwark igvm measure`).

use sha2::{Digest, Sha384};

/// SNP_LAUNCH_UPDATE page types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PageType {
    Normal = 1,
    Vmsa = 2,
    Zero = 3,
    Unmeasured = 4,
    Secrets = 5,
    Cpuid = 6,
}

/// Where KVM measures each vCPU's VMSA.
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
const PAGE: usize = 4096;
const PAGE_INFO_LEN: usize = 0x70;

/// A launch digest being extended page by page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchDigest([u8; 48]);

impl Default for LaunchDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl LaunchDigest {
    /// The digest before any page: 48 zero bytes.
    pub fn new() -> Self {
        Self([0; 48])
    }

    /// Extend with one PAGE_INFO.
    pub fn update(&mut self, page_type: PageType, gpa: u64, contents: &[u8; 48]) {
        let mut info = [0u8; PAGE_INFO_LEN];
        info[..0x30].copy_from_slice(&self.0);
        info[0x30..0x60].copy_from_slice(contents);
        info[0x60..0x62].copy_from_slice(&(PAGE_INFO_LEN as u16).to_le_bytes());
        info[0x62] = page_type as u8;
        info[0x68..0x70].copy_from_slice(&gpa.to_le_bytes());
        self.0 = Sha384::digest(info).into();
    }

    /// A measured page: `data` (at most 4 KiB) zero-padded to a page and hashed.
    pub fn normal_page(&mut self, gpa: u64, data: &[u8]) {
        let mut page = [0u8; PAGE];
        let n = data.len().min(PAGE);
        page[..n].copy_from_slice(&data[..n]);
        self.update(PageType::Normal, gpa, &Sha384::digest(page).into());
    }

    /// A vCPU's VMSA, measured at [`VMSA_GPA`].
    pub fn vmsa_page(&mut self, vmsa: &[u8; PAGE]) {
        self.update(PageType::Vmsa, VMSA_GPA, &Sha384::digest(vmsa).into());
    }

    /// A page of the other types, whose contents are not hashed.
    pub fn unhashed_page(&mut self, page_type: PageType, gpa: u64) {
        self.update(page_type, gpa, &[0; 48]);
    }

    pub fn digest(&self) -> [u8; 48] {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn a_zero_normal_page_at_0x1000_gives_the_reference_digest() {
        // sev-snp-measure 0.0.13: GCTX().update_normal_pages(0x1000, bytes(4096)).
        let mut d = LaunchDigest::new();
        d.normal_page(0x1000, &[]);
        assert_eq!(
            hex(&d.digest()),
            "e6e4d78904d9d6b33c0cbfd121998fd2d11744dae606b3aee35e2a45d6869b60b35c63928a9232bef72d6be386f48ec6"
        );
    }

    #[test]
    fn order_type_and_address_all_change_the_digest() {
        let digest = |steps: &[(PageType, u64)]| {
            let mut d = LaunchDigest::new();
            for (t, gpa) in steps {
                d.unhashed_page(*t, *gpa);
            }
            d.digest()
        };
        let base = digest(&[(PageType::Zero, 0x1000), (PageType::Secrets, 0x2000)]);
        assert_ne!(base, digest(&[(PageType::Secrets, 0x2000), (PageType::Zero, 0x1000)]));
        assert_ne!(base, digest(&[(PageType::Unmeasured, 0x1000), (PageType::Secrets, 0x2000)]));
        assert_ne!(base, digest(&[(PageType::Zero, 0x1000), (PageType::Secrets, 0x3000)]));
    }
}
