//! Attestation protocol layouts (spec 58019 section 7.1 tables 11 and 12; rev 1.00 as
//! implemented by Linux, docs/facts.md section 1).

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

/// `ac321fae-e2c1-4570-a3a4-03f5122c3a12`: Bulwark's sealed state (data =
/// [`SealedStateEntry`]): which committed state of its store the SVSM runs on, so a
/// verifier can refuse an older one (docs/persistence.md, "Rollback and the verifier's
/// ledger").
pub const SEALED_STATE_GUID: Guid =
    Guid::from_fields(0xac321fae, 0xe2c1, 0x4570, [0xa3, 0xa4, 0x03, 0xf5, 0x12, 0x2c, 0x3a, 0x12]);

/// The sealed state's manifest entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SealedStateEntry {
    /// The committed state's generation: one at format, one more per commit.
    pub generation: u64,
    /// The random id chosen when the store was formatted.
    pub store_id: [u8; 16],
    /// The Merkle root of the committed state.
    pub root: [u8; 32],
    /// [`SEALED_STATE_FAILED`], [`SEALED_STATE_REWRAPPED`], or zero.
    pub flags: u32,
    pub reserved: u32,
}
crate::assert_size!(SealedStateEntry, 0x40);

/// `45802996-1944-4e7a-a1f8-8e7d6b729feb`: Bulwark's attestation chain (data =
/// [`AttestChainEntry`] and its links): the sealed state's record of the attestations it
/// served, so a verifier can check that the state descends from the one it accepted last
/// (docs/persistence.md, "The attestation chain").
pub const ATTEST_CHAIN_GUID: Guid =
    Guid::from_fields(0x45802996, 0x1944, 0x4e7a, [0xa1, 0xf8, 0x8e, 0x7d, 0x6b, 0x72, 0x9f, 0xeb]);

/// The attestation chain's manifest entry: this header, then [`ATTEST_CHAIN_MAX_LINKS`]
/// slots of which the first `links` hold SHA-256 links, oldest first (the rest zero). The
/// chain value after link i is SHA-256(value before || link i), starting from `before`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct AttestChainEntry {
    /// The chain value before the first link shown.
    pub before: [u8; 32],
    /// How many links follow (0..=[`ATTEST_CHAIN_MAX_LINKS`]; 0 before the first attestation).
    pub links: u32,
    pub reserved: u32,
}
crate::assert_size!(AttestChainEntry, 0x28);

/// Most links an attestation chain entry shows (the most recent ones).
pub const ATTEST_CHAIN_MAX_LINKS: usize = 16;

/// One link of the attestation chain: SHA-256 of this label and the nonce the guest
/// passed for the attestation.
pub const ATTEST_CHAIN_LINK_LABEL: &[u8] = b"bulwark attestation link v1";

/// Flag: a commit's header write failed since boot; the sealed state is closed and the
/// services that keep state there have stopped. (A commit that fails before its header
/// leaves the state open and stops only the service whose commit it was: the vTPM then
/// answers TPM_RC_FAILURE.)
pub const SEALED_STATE_FAILED: u32 = 1;

/// Flag: at this boot the SVSM found the state under the key of an older TCB or guest SVN
/// (a firmware or image update since it was last committed) and re-wrapped it under its
/// current key. The state is only as trustworthy as that older TCB was.
pub const SEALED_STATE_REWRAPPED: u32 = 2;

/// `bc7c7748-6b98-488c-b596-938f757b1d93`: Bulwark's vTPM lineage (data =
/// [`VtpmLineageEntry`]): which state of which copy of the vTPM the SVSM runs, so a
/// verifier can refuse an older state of the TPM, or a second copy made by migrating an
/// old one (docs/migration.md, "The vTPM's lineage").
pub const VTPM_LINEAGE_GUID: Guid =
    Guid::from_fields(0xbc7c7748, 0x6b98, 0x488c, [0xb5, 0x96, 0x93, 0x8f, 0x75, 0x7b, 0x1d, 0x93]);

/// The vTPM lineage's manifest entry: this header, then `ancestors` ×
/// [`VtpmAncestor`], newest first (the parent first). A vTPM's *incarnation* is one place
/// it lives: made when it is manufactured, and again each time a live migration's
/// destination takes it. Within an incarnation the version grows with every NV commit
/// (when the sealed state keeps it); a new incarnation starts one version above where it
/// left its parent, and names its ancestors (at most [`VTPM_LINEAGE_MAX_ANCESTORS`], the
/// oldest dropped first) so that a verifier that missed some moves can still place it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VtpmLineageEntry {
    /// The version of the vTPM's NV state.
    pub version: u64,
    /// This incarnation's id.
    pub incarnation: [u8; 16],
    /// [`VTPM_LINEAGE_KEPT`] or zero.
    pub flags: u32,
    /// How many [`VtpmAncestor`]s follow; zero if manufactured here.
    pub ancestors: u32,
}
crate::assert_size!(VtpmLineageEntry, 0x20);

/// One ancestor in a lineage entry: an incarnation and the version at which the TPM left
/// it (its child started at one more).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VtpmAncestor {
    pub incarnation: [u8; 16],
    pub left_at: u64,
}
crate::assert_size!(VtpmAncestor, 0x18);

/// Most ancestors a lineage entry names.
pub const VTPM_LINEAGE_MAX_ANCESTORS: usize = 32;

/// Flag: the sealed state keeps this vTPM across reboots (its NV commits count versions).
/// Without it the vTPM lives in memory only, and its version changes only when it moves.
pub const VTPM_LINEAGE_KEPT: u32 = 1;

/// CHIP_ID of the reports the `svm` platform's software PSP signs: non-zero (verifiers
/// need that) and saying in ASCII what it is. The launcher puts the same value in the
/// VCEK certificate's hwID extension.
pub const SVM_CHIP_ID: [u8; 64] = chip_id_tag(b"BULWARK-SVM-QEMU (NOT AMD HARDWARE)");

/// Whether a VCEK's hwID extension value (extnValue's contents, OID
/// 1.3.6.1.4.1.3704.1.4) names the 64-byte `chip_id`. AMD's VCEKs carry it as a DER
/// OCTET STRING (`04 40` and the 64 bytes); older ones carried the 64 bytes bare. Both
/// are read, as the `sev` crate reads them; anything else names no chip.
pub fn hwid_names(extension: &[u8], chip_id: &[u8]) -> bool {
    let bytes = match extension {
        [0x04, 0x40, rest @ ..] if rest.len() == 64 => rest,
        bare if bare.len() == 64 => bare,
        _ => return false,
    };
    chip_id.len() == 64 && bytes == chip_id
}

/// A CHIP_ID made of an ASCII tag, zero-padded.
pub const fn chip_id_tag(tag: &[u8]) -> [u8; 64] {
    let mut id = [0u8; 64];
    let mut i = 0;
    while i < tag.len() && i < 64 {
        id[i] = tag[i];
        i += 1;
    }
    id
}

/// Size of an SNP attestation report.
pub const REPORT_SIZE: usize = 0x4A0;
/// Offset of REPORT_DATA in the report.
pub const REPORT_DATA_OFFSET: usize = 0x50;
/// Size of REPORT_DATA.
pub const REPORT_DATA_SIZE: usize = 64;

/// Field offsets of the SNP ATTESTATION_REPORT (SNP firmware ABI, table
/// "ATTESTATION_REPORT"; version 3 layout). All integers little-endian.
pub mod report {
    pub const VERSION: usize = 0x000;
    pub const GUEST_SVN: usize = 0x004;
    pub const POLICY: usize = 0x008;
    pub const FAMILY_ID: usize = 0x010;
    pub const IMAGE_ID: usize = 0x020;
    pub const VMPL: usize = 0x030;
    pub const SIGNATURE_ALGO: usize = 0x034;
    pub const CURRENT_TCB: usize = 0x038;
    pub const PLATFORM_INFO: usize = 0x040;
    /// Bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY (0 = VCEK).
    pub const KEY_INFO: usize = 0x048;
    pub const REPORT_DATA: usize = 0x050;
    pub const MEASUREMENT: usize = 0x090;
    pub const HOST_DATA: usize = 0x0C0;
    pub const ID_KEY_DIGEST: usize = 0x0E0;
    pub const AUTHOR_KEY_DIGEST: usize = 0x110;
    pub const REPORT_ID: usize = 0x140;
    pub const REPORT_ID_MA: usize = 0x160;
    pub const REPORTED_TCB: usize = 0x180;
    pub const CPUID_FAMILY: usize = 0x188;
    pub const CPUID_MODEL: usize = 0x189;
    pub const CPUID_STEPPING: usize = 0x18A;
    pub const CHIP_ID: usize = 0x1A0;
    pub const COMMITTED_TCB: usize = 0x1E0;
    pub const CURRENT_BUILD: usize = 0x1E8;
    pub const COMMITTED_BUILD: usize = 0x1EC;
    pub const LAUNCH_TCB: usize = 0x1F0;
    /// The signature covers bytes `0..SIGNED_LEN`.
    pub const SIGNED_LEN: usize = 0x2A0;
    /// ECDSA R, 72 bytes little-endian (a P-384 value uses the first 48; the rest is 0).
    pub const SIGNATURE_R: usize = 0x2A0;
    /// ECDSA S, 72 bytes little-endian.
    pub const SIGNATURE_S: usize = 0x2E8;
    /// Width of each of R and S in the report.
    pub const SIGNATURE_COMPONENT: usize = 72;
    /// The rest of the report after R and S is reserved (zero).
    pub const SIGNATURE_RESERVED: usize = 0x330;
    /// The report version Bulwark produces.
    pub const VERSION_3: u32 = 3;
    /// SIGNATURE_ALGO: ECDSA P-384 with SHA-384.
    pub const ALGO_ECDSA_P384_SHA384: u32 = 1;
    /// Bytes that are reserved (must be zero) in a version 3 report, outside the
    /// signature.
    pub const RESERVED: [core::ops::Range<usize>; 5] =
        [0x04C..0x050, 0x18B..0x1A0, 0x1EB..0x1EC, 0x1EF..0x1F0, 0x1F8..0x2A0];
}

/// An SNP guest message (SNP firmware ABI "SNP_GUEST_REQUEST" message header): one page,
/// a 0x60-byte header, then the AES-256-GCM encrypted payload.
pub mod guest_message {
    pub const AUTHTAG: usize = 0x00;
    pub const AUTHTAG_LEN: usize = 16;
    pub const SEQNO: usize = 0x20;
    pub const ALGO: usize = 0x30;
    pub const HDR_VERSION: usize = 0x31;
    pub const HDR_SIZE: usize = 0x32;
    pub const MSG_TYPE: usize = 0x34;
    pub const MSG_VERSION: usize = 0x35;
    pub const MSG_SIZE: usize = 0x36;
    pub const MSG_VMPCK: usize = 0x3C;
    /// The authenticated (not encrypted) header bytes: ALGO..end of header.
    pub const AAD: core::ops::Range<usize> = 0x30..0x60;
    pub const HEADER_LEN: usize = 0x60;
    /// Room for the payload in one page.
    pub const PAYLOAD_MAX: usize = 4096 - HEADER_LEN;
    pub const ALGO_AES_256_GCM: u8 = 1;
    pub const HEADER_VERSION: u8 = 1;
    pub const MSG_REPORT_REQ: u8 = 5;
    pub const MSG_REPORT_RSP: u8 = 6;
    /// MSG_REPORT_REQ payload: REPORT_DATA[64], VMPL u32, KEY_SEL u32, reserved[24].
    pub const REPORT_REQ_LEN: usize = 0x60;
    pub const REPORT_REQ_VMPL: usize = 0x40;
    pub const REPORT_REQ_KEY_SEL: usize = 0x44;
    /// MSG_REPORT_RSP payload: STATUS u32, REPORT_SIZE u32, reserved[24], REPORT.
    pub const REPORT_RSP_STATUS: usize = 0x00;
    pub const REPORT_RSP_SIZE: usize = 0x04;
    pub const REPORT_RSP_REPORT: usize = 0x20;
    pub const REPORT_RSP_LEN: usize = 0x20 + super::REPORT_SIZE;
    /// REPORT_RSP status: the request had an invalid parameter.
    pub const STATUS_INVALID_PARAM: u32 = 0x16;

    pub const MSG_KEY_REQ: u8 = 3;
    pub const MSG_KEY_RSP: u8 = 4;
    /// MSG_KEY_REQ payload (Linux's `struct snp_derived_key_req`): ROOT_KEY_SELECT u32
    /// (bit 0: VMRK instead of VCEK; bits 2:1 KEY_SEL), reserved u32, GUEST_FIELD_SELECT
    /// u64, VMPL u32, GUEST_SVN u32, TCB_VERSION u64.
    pub const KEY_REQ_LEN: usize = 0x20;
    pub const KEY_REQ_ROOT_KEY_SELECT: usize = 0x00;
    pub const KEY_REQ_FIELD_SELECT: usize = 0x08;
    pub const KEY_REQ_VMPL: usize = 0x10;
    pub const KEY_REQ_GUEST_SVN: usize = 0x14;
    pub const KEY_REQ_TCB_VERSION: usize = 0x18;
    /// GUEST_FIELD_SELECT bits: what of the guest's launch is mixed into the key.
    pub const FIELD_GUEST_POLICY: u64 = 1 << 0;
    pub const FIELD_IMAGE_ID: u64 = 1 << 1;
    pub const FIELD_FAMILY_ID: u64 = 1 << 2;
    pub const FIELD_MEASUREMENT: u64 = 1 << 3;
    pub const FIELD_GUEST_SVN: u64 = 1 << 4;
    pub const FIELD_TCB_VERSION: u64 = 1 << 5;
    pub const FIELD_ALL: u64 = (1 << 6) - 1;
    /// MSG_KEY_RSP payload: STATUS u32, reserved[28], DERIVED_KEY[32].
    pub const KEY_RSP_LEN: usize = 0x40;
    pub const KEY_RSP_STATUS: usize = 0x00;
    pub const KEY_RSP_KEY: usize = 0x20;
}

/// The certificate table of an extended guest request (GHCB spec, "SNP Extended Guest
/// Request"), as the certificates buffer carries it: entries `{GUID, u32 offset, u32
/// length}` ended by an all-zero entry, offsets from the table start, DER after it.
/// These GUIDs are written in RFC (big-endian) byte order, as the `sev` crate and the
/// AMD tools read them.
pub mod cert_table {
    pub const ENTRY_LEN: usize = 24;
    /// `c0b406a4-a803-4952-9743-3fb6014cd0ae`
    pub const ARK: [u8; 16] =
        [0xc0, 0xb4, 0x06, 0xa4, 0xa8, 0x03, 0x49, 0x52, 0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae];
    /// `4ab7b379-bbac-4fe4-a02f-05aef327c782`
    pub const ASK: [u8; 16] =
        [0x4a, 0xb7, 0xb3, 0x79, 0xbb, 0xac, 0x4f, 0xe4, 0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82];
    /// `63da758d-e664-4564-adc5-f4b93be8accd`
    pub const VCEK: [u8; 16] =
        [0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd];

    /// Bytes the table for `certs` takes: the entries, the zero entry, the certificates.
    pub fn encoded_len(certs: &[&[u8]]) -> usize {
        (certs.len() + 1) * ENTRY_LEN + certs.iter().map(|c| c.len()).sum::<usize>()
    }

    /// Write the table for `(GUID, DER)` pairs into `out`; returns the bytes written, or
    /// `None` if `out` is too small or an offset would not fit in 32 bits.
    pub fn encode_into(entries: &[([u8; 16], &[u8])], out: &mut [u8]) -> Option<usize> {
        let table = (entries.len() + 1) * ENTRY_LEN;
        let total = table + entries.iter().map(|(_, der)| der.len()).sum::<usize>();
        let out = out.get_mut(..total)?;
        out[..table].fill(0);
        let mut data = table;
        for (i, (guid, der)) in entries.iter().enumerate() {
            let entry = &mut out[i * ENTRY_LEN..(i + 1) * ENTRY_LEN];
            entry[..16].copy_from_slice(guid);
            entry[16..20].copy_from_slice(&u32::try_from(data).ok()?.to_le_bytes());
            entry[20..24].copy_from_slice(&u32::try_from(der.len()).ok()?.to_le_bytes());
            out[data..data + der.len()].copy_from_slice(der);
            data += der.len();
        }
        Some(total)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn entries_point_at_their_certificates_and_a_zero_entry_ends_the_table() {
            let mut out = [0xFFu8; 256];
            let n = encode_into(&[(ARK, b"ark-der"), (VCEK, b"vcek")], &mut out).unwrap();
            assert_eq!(n, encoded_len(&[b"ark-der", b"vcek"]));
            assert_eq!(&out[..16], &ARK);
            assert_eq!(&out[16..24], &[72, 0, 0, 0, 7, 0, 0, 0]);
            assert_eq!(&out[24 + 16..48], &[79, 0, 0, 0, 4, 0, 0, 0]);
            assert_eq!(&out[48..72], &[0; 24]);
            assert_eq!(&out[72..83], b"ark-dervcek");
            assert_eq!(encode_into(&[(ARK, b"ark-der")], &mut out[..50]), None);
        }
    }
}

/// The issuing kit a launcher hands an SVSM that has no AMD PSP (the `svm` platform reads
/// it from the QEMU fw_cfg file [`issuing_kit::FW_CFG_NAME`]): the ARK and ASK
/// certificates, the ASK's private key, and a VCEK certificate template, so the SVSM can
/// certify its own per-boot VCEK with a chain the usual tools accept. Whoever has the kit
/// can issue VCEKs: reports certified this way are not rooted in hardware, and say so.
///
/// Layout: the 8-byte magic, then six records, each a u32 (little-endian) length and that
/// many bytes, in this order: ARK DER, ASK DER, ASK private key (PKCS#8 DER), the VCEK
/// TBSCertificate DER with a placeholder public point, the signature AlgorithmIdentifier
/// DER, and a u32 (as a 4-byte record) giving the offset of the placeholder's 97 bytes
/// (an uncompressed P-384 point) inside the TBSCertificate.
pub mod issuing_kit {
    pub const MAGIC: [u8; 8] = *b"BWKIT\x00\x01\x00";
    pub const FW_CFG_NAME: &str = "opt/bulwark/issuing-kit";
    /// Bytes of an uncompressed P-384 point (0x04 || x || y).
    pub const POINT_LEN: usize = 97;

    /// A parsed kit, borrowing from its bytes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Kit<'a> {
        pub ark_der: &'a [u8],
        pub ask_der: &'a [u8],
        pub ask_key_pkcs8: &'a [u8],
        pub vcek_tbs_template: &'a [u8],
        pub signature_algorithm: &'a [u8],
        pub point_offset: usize,
    }

    /// Parse a kit; `None` if anything is out of bounds or malformed.
    pub fn parse(bytes: &[u8]) -> Option<Kit<'_>> {
        let mut rest = bytes.strip_prefix(&MAGIC[..])?;
        let mut next = || -> Option<&[u8]> {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = u32::from_le_bytes(*len) as usize;
            if len > tail.len() {
                return None;
            }
            let (record, tail) = tail.split_at(len);
            rest = tail;
            Some(record)
        };
        let (ark_der, ask_der, ask_key_pkcs8) = (next()?, next()?, next()?);
        let (vcek_tbs_template, signature_algorithm) = (next()?, next()?);
        let offset: [u8; 4] = next()?.try_into().ok()?;
        let point_offset = u32::from_le_bytes(offset) as usize;
        if point_offset.checked_add(POINT_LEN)? > vcek_tbs_template.len() {
            return None;
        }
        Some(Kit { ark_der, ask_der, ask_key_pkcs8, vcek_tbs_template, signature_algorithm, point_offset })
    }

    /// The kit's bytes for its parts (the launcher's side).
    #[cfg(test)]
    fn encode(parts: [&[u8]; 5], point_offset: u32, out: &mut [u8]) -> usize {
        let mut at = 0;
        let mut put = |b: &[u8]| {
            out[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        };
        put(&MAGIC);
        for p in parts {
            put(&(p.len() as u32).to_le_bytes());
            put(p);
        }
        put(&4u32.to_le_bytes());
        put(&point_offset.to_le_bytes());
        at
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_kit_parses_back_into_its_parts() {
            let tbs = [0x30u8; 200];
            let mut buf = [0u8; 512];
            let n = encode([b"ark", b"ask", b"key", &tbs, b"alg"], 50, &mut buf);
            let kit = parse(&buf[..n]).unwrap();
            assert_eq!((kit.ark_der, kit.ask_der, kit.ask_key_pkcs8), (&b"ark"[..], &b"ask"[..], &b"key"[..]));
            assert_eq!(
                (kit.vcek_tbs_template.len(), kit.signature_algorithm, kit.point_offset),
                (200, &b"alg"[..], 50)
            );
        }

        #[test]
        fn truncated_or_inconsistent_kits_are_refused() {
            let tbs = [0x30u8; 200];
            let mut buf = [0u8; 512];
            let n = encode([b"ark", b"ask", b"key", &tbs, b"alg"], 50, &mut buf);
            for cut in 0..n {
                assert_eq!(parse(&buf[..cut]), None, "cut at {cut}");
            }
            let n = encode([b"ark", b"ask", b"key", &tbs, b"alg"], 150, &mut buf);
            assert_eq!(parse(&buf[..n]), None, "the point would run past the template");
            buf[0] ^= 1;
            assert_eq!(parse(&buf[..n]), None, "bad magic");
        }
    }
}

#[cfg(test)]
mod hwid_tests {
    use super::hwid_names;

    #[test]
    fn the_hwid_names_its_chip_in_either_encoding() {
        let chip = [0xA5u8; 64];
        let mut der = [0u8; 66];
        der[0] = 0x04;
        der[1] = 0x40;
        der[2..].copy_from_slice(&chip);
        assert!(hwid_names(&der, &chip), "AMD's VCEKs: a DER OCTET STRING");
        assert!(hwid_names(&chip, &chip), "older VCEKs: the bare bytes");
        let mut other = chip;
        other[63] ^= 1;
        assert!(!hwid_names(&der, &other) && !hwid_names(&chip, &other), "another chip");
        assert!(!hwid_names(&der[..65], &chip[..]), "cut short");
        assert!(!hwid_names(&[0x04, 0x41, 0, 0], &chip), "another length");
        assert!(!hwid_names(&der, &chip[..32]), "a chip id of the wrong size");
        assert!(!hwid_names(&[], &[]));
    }
}
