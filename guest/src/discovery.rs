//! SVSM discovery from the secrets page (spec 58019 section 4.1).

use abi::secrets::SVSM_BASE_OFFSET;
use abi::secrets::SvsmSecretsFields;
use zerocopy::FromBytes;

/// What the secrets page says about the SVSM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Discovery {
    pub svsm_base: u64,
    pub svsm_size: u64,
    pub calling_area: u64,
    pub max_version: u32,
    pub guest_vmpl: u8,
}

impl Discovery {
    /// Read the SVSM fields of a secrets page; `None` when SVSM_SIZE is 0 (no SVSM).
    pub fn from_secrets_page(page: &[u8]) -> Option<Self> {
        let bytes = page.get(SVSM_BASE_OFFSET..SVSM_BASE_OFFSET + core::mem::size_of::<SvsmSecretsFields>())?;
        let f = SvsmSecretsFields::read_from_bytes(bytes).ok()?;
        if f.svsm_size == 0 {
            return None;
        }
        Some(Self {
            svsm_base: f.svsm_base,
            svsm_size: f.svsm_size,
            calling_area: f.svsm_caa,
            max_version: f.svsm_max_version,
            guest_vmpl: f.svsm_guest_vmpl,
        })
    }

    /// Does `[gpa, gpa + len)` touch the SVSM's memory (which the guest must not use)?
    pub fn overlaps_svsm(&self, gpa: u64, len: u64) -> bool {
        let end = gpa.saturating_add(len);
        gpa < self.svsm_base.saturating_add(self.svsm_size) && self.svsm_base < end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_svsm_when_size_is_zero() {
        let mut page = [0u8; 4096];
        assert_eq!(Discovery::from_secrets_page(&page), None);
        page[0x140..0x148].copy_from_slice(&0x80_0000u64.to_le_bytes());
        page[0x148..0x150].copy_from_slice(&0x40_0000u64.to_le_bytes());
        page[0x150..0x158].copy_from_slice(&0x10_1000u64.to_le_bytes());
        page[0x158] = 1;
        page[0x15C] = 1;
        let d = Discovery::from_secrets_page(&page).unwrap();
        assert_eq!(
            (d.svsm_base, d.svsm_size, d.calling_area, d.max_version, d.guest_vmpl),
            (0x80_0000, 0x40_0000, 0x10_1000, 1, 1)
        );
        assert!(d.overlaps_svsm(0xBF_F000, 0x2000));
        assert!(!d.overlaps_svsm(0xC0_0000, 0x1000));
        assert_eq!(Discovery::from_secrets_page(&page[..0x150]), None, "a short page is refused");
    }
}
