//! Result codes returned in RAX (spec 58019 section 5 table 4, rev 1.00 additions, and
//! the protocol-specific codes of sections 6 and 7).
//!
//! Results are 32-bit; a 64-bit sign extension is ignored by the guest, so the SVSM
//! writes them zero-extended.

/// A result value. Open: any u32 is representable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResultCode(pub u32);

impl ResultCode {
    pub const SUCCESS: Self = Self(0x0000_0000);
    pub const ERR_INCOMPLETE: Self = Self(0x8000_0000);
    pub const ERR_UNSUPPORTED_PROTOCOL: Self = Self(0x8000_0001);
    pub const ERR_UNSUPPORTED_CALL: Self = Self(0x8000_0002);
    pub const ERR_INVALID_ADDRESS: Self = Self(0x8000_0003);
    pub const ERR_INVALID_FORMAT: Self = Self(0x8000_0004);
    pub const ERR_INVALID_PARAMETER: Self = Self(0x8000_0005);
    pub const ERR_INVALID_REQUEST: Self = Self(0x8000_0006);
    /// Rev 1.00: the SVSM is busy; the guest retries.
    pub const ERR_BUSY: Self = Self(0x8000_0007);

    /// First protocol-specific error code.
    pub const PROTOCOL_BASE: u32 = 0x8000_1000;

    /// Core protocol: PVALIDATE/RMPADJUST returned hardware code `rc` (0..=0xF).
    pub const fn core_hw_fail(rc: u32) -> Self {
        Self(Self::PROTOCOL_BASE + rc)
    }
    /// Core protocol: PVALIDATE left the page unchanged (CF=1) and the entry did not ask
    /// to ignore that.
    pub const CORE_PVALIDATE_NO_CHANGE: Self = Self(0x8000_1010);
    /// Core protocol: the hardware returned a code outside 0..=0xF.
    pub const CORE_HW_UNKNOWN: Self = Self(0x8000_1011);
    /// Core protocol, DELETE_VCPU: the VMSA is executing (FAIL_INUSE).
    pub const CORE_VCPU_IN_USE: Self = Self(0x8000_1003);
    /// Attestation protocol: the SNP attestation request failed.
    pub const ATTEST_REPORT_FAILED: Self = Self(0x8000_1000);

    /// First code of the "more memory needed" range.
    pub const MORE_MEMORY_BASE: u32 = 0x4000_0000;
    /// Largest page count a "more memory needed" result can carry (bits 29:0).
    pub const MORE_MEMORY_MAX_PAGES: u32 = 0x3FFF_FFFF;

    /// "Additional memory is required": `pages` 4 KiB pages, saturated at the field width.
    pub const fn more_memory(pages: u32) -> Self {
        let p = if pages > Self::MORE_MEMORY_MAX_PAGES { Self::MORE_MEMORY_MAX_PAGES } else { pages };
        Self(Self::MORE_MEMORY_BASE | p)
    }

    /// Pages requested if this is a "more memory needed" result.
    pub const fn memory_needed(self) -> Option<u32> {
        if self.0 & 0xC000_0000 == Self::MORE_MEMORY_BASE { Some(self.0 & Self::MORE_MEMORY_MAX_PAGES) } else { None }
    }

    pub const fn is_success(self) -> bool {
        self.0 == 0
    }

    /// Read a result from RAX: the upper half is ignored (a sign extension is allowed).
    pub const fn from_rax(rax: u64) -> Self {
        Self(rax as u32)
    }

    /// The spec's name of a common code, for reports and logs.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0000_0000 => "SVSM_SUCCESS",
            0x8000_0000 => "SVSM_ERR_INCOMPLETE",
            0x8000_0001 => "SVSM_ERR_UNSUPPORTED_PROTOCOL",
            0x8000_0002 => "SVSM_ERR_UNSUPPORTED_CALL",
            0x8000_0003 => "SVSM_ERR_INVALID_ADDRESS",
            0x8000_0004 => "SVSM_ERR_INVALID_FORMAT",
            0x8000_0005 => "SVSM_ERR_INVALID_PARAMETER",
            0x8000_0006 => "SVSM_ERR_INVALID_REQUEST",
            0x8000_0007 => "SVSM_ERR_BUSY",
            _ => return None,
        })
    }
}

impl core::fmt::Debug for ResultCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match (self.name(), self.memory_needed()) {
            (Some(n), _) => write!(f, "{n}"),
            (None, Some(p)) => write!(f, "NEED_MEMORY({p} pages)"),
            (None, None) => write!(f, "{:#010x}", self.0),
        }
    }
}

impl core::fmt::Display for ResultCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_4_values() {
        assert_eq!(ResultCode::ERR_INCOMPLETE.0, 0x8000_0000);
        assert_eq!(ResultCode::ERR_INVALID_REQUEST.0, 0x8000_0006);
        assert_eq!(ResultCode::ERR_BUSY.0, 0x8000_0007);
        assert_eq!(ResultCode::core_hw_fail(6).0, 0x8000_1006);
    }

    #[test]
    fn more_memory_range_uses_bits_29_0() {
        assert_eq!(ResultCode::more_memory(3).0, 0x4000_0003);
        assert_eq!(ResultCode::more_memory(3).memory_needed(), Some(3));
        assert_eq!(ResultCode::more_memory(u32::MAX).0, 0x7FFF_FFFF);
        assert_eq!(ResultCode(0x7FFF_FFFF).memory_needed(), Some(0x3FFF_FFFF));
        assert_eq!(ResultCode::ERR_INCOMPLETE.memory_needed(), None);
        assert_eq!(ResultCode::SUCCESS.memory_needed(), None);
        assert_eq!(ResultCode(0x3FFF_FFFF).memory_needed(), None);
    }

    #[test]
    fn sign_extension_in_rax_is_ignored() {
        assert_eq!(ResultCode::from_rax(0xFFFF_FFFF_8000_0005), ResultCode::ERR_INVALID_PARAMETER);
    }
}
