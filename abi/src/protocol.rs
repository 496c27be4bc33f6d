//! Protocol numbers and call identifiers (spec 58019 section 5, table 3; section 6 table
//! 5; section 7 table 10; section 8 table 13; protocol 5 from the OCP draft).
//!
//! RAX on entry holds `protocol << 32 | call`.

/// A protocol number (RAX bits 63:32). Open: unknown numbers are representable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolId(pub u32);

impl ProtocolId {
    pub const CORE: Self = Self(0);
    pub const ATTEST: Self = Self(1);
    pub const VTPM: Self = Self(2);
    /// Alternate interrupt injection (rev 1.00); not served by Bulwark yet.
    pub const APIC: Self = Self(3);
    /// UEFI MM variable store (used by edk2); not served by Bulwark yet.
    pub const UEFI_MM: Self = Self(4);
    /// Observability and Configuration Protocol (2026 draft).
    pub const OCP: Self = Self(5);
}

/// A complete call identifier as carried in RAX.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CallId {
    pub protocol: ProtocolId,
    pub call: u32,
}

impl CallId {
    pub const fn new(protocol: ProtocolId, call: u32) -> Self {
        Self { protocol, call }
    }

    /// Split RAX into protocol (bits 63:32) and call (bits 31:0).
    pub const fn from_rax(rax: u64) -> Self {
        Self { protocol: ProtocolId((rax >> 32) as u32), call: rax as u32 }
    }

    pub const fn to_rax(self) -> u64 {
        ((self.protocol.0 as u64) << 32) | self.call as u64
    }
}

/// Core protocol (protocol 0) call numbers, spec section 6 table 5.
pub mod core_call {
    pub const REMAP_CA: u32 = 0;
    pub const PVALIDATE: u32 = 1;
    pub const CREATE_VCPU: u32 = 2;
    pub const DELETE_VCPU: u32 = 3;
    pub const DEPOSIT_MEM: u32 = 4;
    pub const WITHDRAW_MEM: u32 = 5;
    pub const QUERY_PROTOCOL: u32 = 6;
    pub const CONFIGURE_VTOM: u32 = 7;
}

/// Attestation protocol (protocol 1) call numbers, spec section 7 and rev 1.00.
pub mod attest_call {
    pub const ATTEST_SERVICES: u32 = 0;
    pub const ATTEST_SINGLE_SERVICE: u32 = 1;
}

/// vTPM protocol (protocol 2) call numbers, spec section 8.
pub mod vtpm_call {
    pub const QUERY: u32 = 0;
    pub const CMD: u32 = 1;
}

/// OCP (protocol 5) call numbers: version 1 of the draft, then Bulwark's version 2
/// (docs/protocols/ocp.md).
pub mod ocp_call {
    pub const LIST: u32 = 0;
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
    /// Version 2: like LIST, with typed entries (`ocp::typed`).
    pub const LIST_TYPED: u32 = 3;
    /// Version 2: RCX index in; RDX = the value (zero-extended), R8 = its size out.
    pub const READ_REGISTER: u32 = 4;
    /// Version 2: RCX gpa of u32 indexes, R8 their count (at most `ocp::BATCH_MAX`), RDX
    /// gpa of the u64 values out: several register-sized sources read in one call (not
    /// atomically).
    pub const READ_BATCH: u32 = 5;
    /// Version 2: RCX = gpa of a page to receive change events (`ocp::ring`), or 0 to stop.
    pub const NOTIFY: u32 = 6;
}

/// The current version of the core protocol; also SVSM_MAX_VERSION in the secrets page.
pub const CORE_PROTOCOL_VERSION: u32 = 1;

/// QUERY_PROTOCOL input (RCX): `protocol << 32 | version`.
pub const fn query_protocol_rcx(protocol: ProtocolId, version: u32) -> u64 {
    ((protocol.0 as u64) << 32) | version as u64
}

/// QUERY_PROTOCOL output (RCX): `max << 32 | min`, or 0 when unsupported.
pub const fn query_protocol_result(max: u32, min: u32) -> u64 {
    ((max as u64) << 32) | min as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rax_splits_protocol_high_call_low() {
        let id = CallId::from_rax(0x0000_0002_0000_0001);
        assert_eq!(id.protocol, ProtocolId::VTPM);
        assert_eq!(id.call, vtpm_call::CMD);
        assert_eq!(id.to_rax(), 0x0000_0002_0000_0001);
    }

    #[test]
    fn query_protocol_encodings_follow_section_6_7() {
        assert_eq!(query_protocol_rcx(ProtocolId::ATTEST, 1), 0x1_0000_0001);
        assert_eq!(query_protocol_result(3, 1), 0x3_0000_0001);
    }
}
