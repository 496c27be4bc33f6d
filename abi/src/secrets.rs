//! The SNP secrets page (SNP firmware ABI, "secrets page" layout) with the SVSM fields of
//! spec 58019 section 4.1 table 1.
//!
//! The VMPCKs live here; the SVSM must zero VMPCK0 before any lower VMPL runs.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The SVSM fields at offset 0x140 of the secrets page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SvsmSecretsFields {
    /// Base gpa of the SVSM area, 4 KiB aligned.
    pub svsm_base: u64,
    /// Size of the SVSM area in bytes, a multiple of 4 KiB; zero = no SVSM.
    pub svsm_size: u64,
    /// gpa of the initial calling area.
    pub svsm_caa: u64,
    /// Highest core protocol version served.
    pub svsm_max_version: u32,
    /// VMPL at which the guest runs.
    pub svsm_guest_vmpl: u8,
    pub reserved: [u8; 3],
}
crate::assert_size!(SvsmSecretsFields, 0x20);

/// The whole 4 KiB secrets page.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SecretsPage {
    pub version: u32,
    /// Bit 0: IMI enabled.
    pub imien: u32,
    pub fms: u32,
    pub reserved1: u32,
    pub gosvw: [u8; 16],
    pub vmpck0: [u8; 32],
    pub vmpck1: [u8; 32],
    pub vmpck2: [u8; 32],
    pub vmpck3: [u8; 32],
    /// Area reserved for the guest OS.
    pub os_area: [u8; 96],
    pub vmsa_tweak_bitmap: [u8; 64],
    pub svsm: SvsmSecretsFields,
    pub tsc_factor: u32,
    pub reserved2: [u8; 3740],
}
crate::assert_size!(SecretsPage, 4096);
crate::assert_offset!(SecretsPage, vmpck0, 0x20);
crate::assert_offset!(SecretsPage, vmpck1, 0x40);
crate::assert_offset!(SecretsPage, vmpck3, 0x80);
crate::assert_offset!(SecretsPage, os_area, 0xA0);
crate::assert_offset!(SecretsPage, svsm, 0x140);
crate::assert_offset!(SecretsPage, tsc_factor, 0x160);

/// Offsets of table 1, for readers that take the page as bytes.
pub const SVSM_BASE_OFFSET: usize = 0x140;
pub const SVSM_SIZE_OFFSET: usize = 0x148;
pub const SVSM_CAA_OFFSET: usize = 0x150;
pub const SVSM_MAX_VERSION_OFFSET: usize = 0x158;
pub const SVSM_GUEST_VMPL_OFFSET: usize = 0x15C;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn table_1_offsets() {
        let base = offset_of!(SecretsPage, svsm);
        assert_eq!(base + offset_of!(SvsmSecretsFields, svsm_base), SVSM_BASE_OFFSET);
        assert_eq!(base + offset_of!(SvsmSecretsFields, svsm_size), SVSM_SIZE_OFFSET);
        assert_eq!(base + offset_of!(SvsmSecretsFields, svsm_caa), SVSM_CAA_OFFSET);
        assert_eq!(base + offset_of!(SvsmSecretsFields, svsm_max_version), SVSM_MAX_VERSION_OFFSET);
        assert_eq!(base + offset_of!(SvsmSecretsFields, svsm_guest_vmpl), SVSM_GUEST_VMPL_OFFSET);
    }
}
