//! Attestation protocol layouts (spec 58019 section 7.1 tables 11 and 12; rev 1.00 as
//! implemented by Linux, FACTS.md section 1).

use crate::guid::Guid;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A `{gpa, len}` buffer record as Linux lays it out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct BufferRecord {
    pub gpa: u64,
    /// Length in bytes. Older implementations read only the low 16 bits for the nonce and
    /// leave 6 reserved bytes; for lengths below 64 KiB both readings agree.
    pub len: u32,
    pub reserved: u32,
}
crate::assert_size!(BufferRecord, 16);

/// SVSM_ATTEST_SERVICES operation (rev 1.00 / Linux layout, 0x40 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct AttestServicesOp {
    pub report: BufferRecord,
    pub nonce: BufferRecord,
    pub manifest: BufferRecord,
    pub certificates: BufferRecord,
}
crate::assert_size!(AttestServicesOp, 0x40);
crate::assert_offset!(AttestServicesOp, nonce, 0x10);
crate::assert_offset!(AttestServicesOp, manifest, 0x20);
crate::assert_offset!(AttestServicesOp, certificates, 0x30);

/// SVSM_ATTEST_SINGLE_SERVICE operation: the services operation plus a service GUID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct AttestSingleServiceOp {
    pub base: AttestServicesOp,
    pub service_guid: [u8; 16],
    pub manifest_version: u32,
    pub reserved: u32,
}
crate::assert_size!(AttestSingleServiceOp, 0x58);
crate::assert_offset!(AttestSingleServiceOp, service_guid, 0x40);
crate::assert_offset!(AttestSingleServiceOp, manifest_version, 0x50);

/// Header of the services manifest (table 12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ManifestHeader {
    pub guid: Guid,
    /// Total length of the manifest in bytes.
    pub length: u32,
    pub service_count: u32,
}
crate::assert_size!(ManifestHeader, 0x18);

/// One service table entry of the manifest (table 12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ManifestEntry {
    pub guid: Guid,
    /// Offset of the service data from the start of the manifest.
    pub offset: u32,
    pub length: u32,
}
crate::assert_size!(ManifestEntry, 0x18);

/// `63849ebb-3d92-4670-a1ff-58f9c94b87bb`: the services manifest.
pub const SERVICES_MANIFEST_GUID: Guid =
    Guid::from_fields(0x63849ebb, 0x3d92, 0x4670, [0xa1, 0xff, 0x58, 0xf9, 0xc9, 0x4b, 0x87, 0xbb]);
/// `c476f1eb-0123-45a5-9641-b4e7dde5bfe3`: the vTPM service (data = EK public area).
pub const VTPM_SERVICE_GUID: Guid =
    Guid::from_fields(0xc476f1eb, 0x0123, 0x45a5, [0x96, 0x41, 0xb4, 0xe7, 0xdd, 0xe5, 0xbf, 0xe3]);

/// Size of an SNP attestation report.
pub const REPORT_SIZE: usize = 0x4A0;
/// Offset of REPORT_DATA in the report.
pub const REPORT_DATA_OFFSET: usize = 0x50;
/// Size of REPORT_DATA.
pub const REPORT_DATA_SIZE: usize = 64;
