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
