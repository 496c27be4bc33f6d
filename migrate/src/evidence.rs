//! The evidence two SVSMs exchange, and its check inside the SVSM (`no_std`).
//!
//! Evidence is a VMPL0 SNP attestation report whose REPORT_DATA is the session's value,
//! and the certificate table the host hands out with reports (ARK, ASK, VCEK; the GHCB
//! extended guest request's format), as
//! `u32 report_len | report | u32 table_len | table` (big-endian lengths).
//!
//! [`ReportVerifier`] checks it the way a relying party checks a report, without `std`:
//! - the ARK's public key is one the verifier trusts (it is given the roots: AMD's for a
//!   chip, the test authority's on the emulated platforms);
//! - the ASK is signed by the ARK and the VCEK by the ASK (RSA-PSS with SHA-384, as AMD
//!   signs them);
//! - the report is signed by the VCEK (ECDSA P-384 with SHA-384 over its first 0x2A0
//!   bytes; r and s little-endian in 72-byte fields);
//! - the report is for VMPL 0, signed with the VCEK (not a VLEK), with the algorithm
//!   ECDSA P-384; its CHIP_ID is the VCEK's hwID, and its REPORTED_TCB matches the VCEK's
//!   TCB extensions where the certificate has them;
//! - REPORT_DATA is the session's.
//!
//! Certificate validity periods are not checked: the SVSM has no trusted time.
//!
//! # The heap
//!
//! The evidence is the peer's (before it is attested: anyone's), and a full heap must
//! refuse it, not abort the SVSM. What this module allocates itself can fail
//! ([`VerifyError::OutOfMemory`]); x509-cert's parse of the certificates and rsa's
//! arithmetic allocate on their own and cannot. Their input is bounded (each certificate
//! at most [`MAX_CERTIFICATE_LEN`] bytes and [`MAX_CERTIFICATE_ELEMENTS`] DER elements,
//! counted before it is parsed; RSA keys at most 4096 bits), so what they take is too:
//! [`VERIFY_HEAP`]. A verifier told how much heap is free
//! ([`ReportVerifier::with_heap_check`]) refuses to start with less.

use crate::session::{PeerIdentity, PeerVerifier, REPORT_DATA_LEN, VerifyError};
use alloc::vec::Vec;
use x509_cert::Certificate;
use x509_cert::der::{Decode, Encode};

/// The SNP report's size and the offsets the check reads (SNP firmware ABI,
/// ATTESTATION_REPORT).
const REPORT_SIZE: usize = 0x4A0;
const POLICY: usize = 0x008;
const VMPL: usize = 0x030;
const SIGNATURE_ALGO: usize = 0x034;
const KEY_INFO: usize = 0x048;
const REPORT_DATA: usize = 0x050;
const MEASUREMENT: usize = 0x090;
const REPORTED_TCB: usize = 0x180;
const CHIP_ID: usize = 0x1A0;
const SIGNED_LEN: usize = 0x2A0;
const SIGNATURE: usize = 0x2A0;
/// ECDSA P-384 with SHA-384.
const ALGO_ECDSA_P384_SHA384: u32 = 1;

/// The longest certificate parsed: AMD's ARK, ASK and VCEK are under 2 KiB each (RSA-4096
/// and P-384 keys); the bound keeps what parsing allocates small (module docs).
pub const MAX_CERTIFICATE_LEN: usize = 8 * 1024;

/// The most DER elements a certificate parsed may hold, nested ones counted: AMD's ARKs,
/// ASKs and VCEKs hold 114 to 133. What x509-cert allocates grows with the elements more
/// than with the bytes: three certificates of 8 KiB whose subjects were a few hundred
/// one-letter names each took 600 KiB to parse.
pub const MAX_CERTIFICATE_ELEMENTS: usize = 256;

/// How deep a certificate's elements may nest (X.509's own structure goes about 8 deep):
/// the count below recurses once per level.
const MAX_DEPTH: usize = 16;

/// The heap one verification may take at its peak: what x509-cert and rsa allocate for
/// certificates within the bounds above and RSA-4096 signatures. model/tests/
/// migration_heap.rs measures 39 KiB for the model's evidence and under 80 KiB for
/// certificates stuffed to the bounds with the smallest objects the parser makes; the
/// rest is for the bare-metal allocator, which rounds small blocks up to a power of two.
pub const VERIFY_HEAP: usize = 256 * 1024;

/// The certificate table's entry GUIDs (RFC byte order) and entry size.
const ENTRY_LEN: usize = 24;
const ARK: [u8; 16] = [0xc0, 0xb4, 0x06, 0xa4, 0xa8, 0x03, 0x49, 0x52, 0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae];
const ASK: [u8; 16] = [0x4a, 0xb7, 0xb3, 0x79, 0xbb, 0xac, 0x4f, 0xe4, 0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82];
const VCEK: [u8; 16] = [0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd];

/// The VCEK's extensions (AMD's VCEK certificate specification): the chip's hwID, and
/// the TCB components as small INTEGERs with the byte of TCB_VERSION each is. Milan and
/// Genoa lay TCB_VERSION out one way; Turin (family 0x1A) another, with an FMC component
/// first ([`tcb_layout`]).
const HWID_OID: &str = "1.3.6.1.4.1.3704.1.4";
const TCB_OIDS: [(&str, usize); 4] = [
    ("1.3.6.1.4.1.3704.1.3.1", 0), // bootloader
    ("1.3.6.1.4.1.3704.1.3.2", 1), // tee
    ("1.3.6.1.4.1.3704.1.3.3", 6), // snp
    ("1.3.6.1.4.1.3704.1.3.8", 7), // microcode
];
const TURIN_TCB_OIDS: [(&str, usize); 5] = [
    ("1.3.6.1.4.1.3704.1.3.9", 0), // fmc
    ("1.3.6.1.4.1.3704.1.3.1", 1), // bootloader
    ("1.3.6.1.4.1.3704.1.3.2", 2), // tee
    ("1.3.6.1.4.1.3704.1.3.3", 3), // snp
    ("1.3.6.1.4.1.3704.1.3.8", 7), // microcode
];
const VERSION: usize = 0x000;
const CPUID_FAMILY: usize = 0x188;

/// The TCB_VERSION layout of the chip that signed `report` (read once the signature is
/// checked): a version 3 report names its CPU family, and family 0x1A (Turin) and later
/// put FMC first. An older report names none: there a CHIP_ID whose bytes past the
/// eighth are zero is Turin's (8-byte chip ids), as the `sev` crate reads it.
fn tcb_layout(report: &[u8]) -> &'static [(&'static str, usize)] {
    let version = le_u32(report, VERSION).unwrap_or(0);
    let turin = if version >= 3 {
        report.get(CPUID_FAMILY).is_some_and(|family| *family >= 0x1A)
    } else {
        report.get(CHIP_ID + 8..CHIP_ID + 64).is_some_and(|rest| rest.iter().all(|b| *b == 0))
    };
    if turin { &TURIN_TCB_OIDS } else { &TCB_OIDS }
}

/// `u32 report_len | report | u32 table_len | table`.
pub fn encode(report: &[u8], table: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    out.try_reserve_exact(report.len().checked_add(table.len())?.checked_add(8)?).ok()?;
    out.extend_from_slice(&u32::try_from(report.len()).ok()?.to_be_bytes());
    out.extend_from_slice(report);
    out.extend_from_slice(&u32::try_from(table.len()).ok()?.to_be_bytes());
    out.extend_from_slice(table);
    Some(out)
}

/// The report and the certificate table of [`encode`]'s bytes.
pub fn decode(evidence: &[u8]) -> Option<(&[u8], &[u8])> {
    let (report, rest) = field(evidence)?;
    let (table, rest) = field(rest)?;
    rest.is_empty().then_some((report, table))
}

fn field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    rest.split_at_checked(len)
}

/// The certificate with `guid` in a certificate table: entries `{GUID, u32 offset, u32
/// length}` (little-endian) ended by an all-zero entry, offsets from the table's start.
fn certificate<'a>(table: &'a [u8], guid: &[u8; 16]) -> Option<&'a [u8]> {
    for entry in table.chunks_exact(ENTRY_LEN) {
        let (id, rest) = entry.split_first_chunk::<16>()?;
        if id == &[0; 16] {
            return None;
        }
        if id == guid {
            let (offset, rest) = rest.split_first_chunk::<4>()?;
            let (length, _) = rest.split_first_chunk::<4>()?;
            let start = usize::try_from(u32::from_le_bytes(*offset)).ok()?;
            let len = usize::try_from(u32::from_le_bytes(*length)).ok()?;
            return table.get(start..start.checked_add(len)?);
        }
    }
    None
}

/// AMD's ARKs, as SubjectPublicKeyInfo (DER), built into the image: the roots a chip's
/// evidence must end at (`migrate/roots/README.md` says where they come from and how the
/// tests check them). A host hands the certificate table out, so an ARK taken from it is
/// only a claim: a host that minted its own ARK and ASK could certify a VCEK of its own.
pub const AMD_ARKS: [(&str, &[u8]); 3] = [
    ("Milan", include_bytes!("../roots/ark-milan.spki.der")),
    ("Genoa", include_bytes!("../roots/ark-genoa.spki.der")),
    ("Turin", include_bytes!("../roots/ark-turin.spki.der")),
];

/// Checks migration evidence against trusted ARKs (see the module comment).
#[derive(Clone, Debug)]
pub struct ReportVerifier {
    /// The trusted ARKs' SubjectPublicKeyInfo, DER.
    roots: Vec<Vec<u8>>,
    /// How many bytes the heap has free, if the caller can say ([`Self::with_heap_check`]).
    heap_free: Option<fn() -> usize>,
}

impl ReportVerifier {
    /// A verifier that trusts the ARKs whose SubjectPublicKeyInfo (DER) is in `roots`.
    pub fn new(roots: Vec<Vec<u8>>) -> Self {
        Self { roots, heap_free: None }
    }

    /// Verifies only with at least [`VERIFY_HEAP`] bytes free as `heap_free` counts them,
    /// and answers [`VerifyError::OutOfMemory`] otherwise: the allocations of x509-cert
    /// and rsa cannot fail gracefully. The check holds only if nothing else takes from the
    /// heap while a verification runs.
    pub fn with_heap_check(self, heap_free: fn() -> usize) -> Self {
        Self { heap_free: Some(heap_free), ..self }
    }

    /// A verifier for a chip: it trusts AMD's ARKs ([`AMD_ARKS`]) and nothing the host
    /// hands out. `None` if the heap cannot hold them.
    pub fn amd() -> Option<Self> {
        let mut roots = Vec::new();
        roots.try_reserve_exact(AMD_ARKS.len()).ok()?;
        for (_, spki) in AMD_ARKS {
            let mut key = Vec::new();
            key.try_reserve_exact(spki.len()).ok()?;
            key.extend_from_slice(spki);
            roots.push(key);
        }
        Some(Self::new(roots))
    }

    /// Whether the ARK certificate (DER) has the public key of a root this verifier trusts.
    pub fn trusts_ark(&self, ark_certificate: &[u8]) -> bool {
        Self::root_of(ark_certificate).is_some_and(|key| self.roots.contains(&key))
    }

    /// Whether the heap has room for a verification (always, without a check).
    fn room(&self) -> Result<(), VerifyError> {
        match self.heap_free {
            Some(free) if free() < VERIFY_HEAP => Err(VerifyError::OutOfMemory),
            _ => Ok(()),
        }
    }

    /// A verifier that trusts the ARK of a certificate table (the one an SVSM's own
    /// reports come with: a peer must be under the same root). Only for a platform whose
    /// root is the launcher's anyway (svm: the test authority of the launcher's kit); on
    /// a chip the table is the host's word, and [`Self::amd`] is the verifier.
    pub fn trusting_ark_of(table: &[u8]) -> Option<Self> {
        let ark = Self::root_of(certificate(table, &ARK)?)?;
        let mut roots = Vec::new();
        roots.try_reserve(1).ok()?;
        roots.push(ark);
        Some(Self::new(roots))
    }

    /// A root from an ARK certificate (DER): its SubjectPublicKeyInfo. `None` for one
    /// that does not parse or is past the bounds of [`MAX_CERTIFICATE_LEN`] and
    /// [`MAX_CERTIFICATE_ELEMENTS`], or without memory.
    pub fn root_of(ark_certificate: &[u8]) -> Option<Vec<u8>> {
        der(&parse(ark_certificate).ok()?.tbs_certificate.subject_public_key_info).ok()
    }
}

/// A certificate (DER) of at most [`MAX_CERTIFICATE_LEN`] bytes and
/// [`MAX_CERTIFICATE_ELEMENTS`] elements, parsed.
fn parse(der: &[u8]) -> Result<Certificate, VerifyError> {
    if der.len() > MAX_CERTIFICATE_LEN || elements(der, MAX_DEPTH, MAX_CERTIFICATE_ELEMENTS).is_none() {
        return Err(VerifyError::Malformed);
    }
    Certificate::from_der(der).map_err(|_| VerifyError::Malformed)
}

/// How many DER elements `der` holds, those inside constructed ones too, if that is at
/// most `left` and they nest at most `depth` deep; `None` otherwise, or for bytes that
/// are not DER. Reads in place: nothing on the heap.
fn elements(der: &[u8], depth: usize, left: usize) -> Option<usize> {
    use x509_cert::der::{Header, Reader, SliceReader};
    let mut reader = SliceReader::new(der).ok()?;
    let mut count = 0usize;
    while !reader.is_finished() {
        let header = Header::decode(&mut reader).ok()?;
        let body = reader.read_slice(header.length).ok()?;
        count = count.checked_add(1).filter(|n| *n <= left)?;
        if header.tag.is_constructed() {
            count += elements(body, depth.checked_sub(1)?, left - count)?;
        }
    }
    Some(count)
}

/// `value`'s DER encoding, on a heap that may refuse it (der's `to_der` would abort).
fn der<T: Encode>(value: &T) -> Result<Vec<u8>, VerifyError> {
    let len = value.encoded_len().map_err(|_| VerifyError::Malformed)?;
    let len = usize::try_from(len).map_err(|_| VerifyError::Malformed)?;
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|_| VerifyError::OutOfMemory)?;
    out.resize(len, 0);
    let written = value.encode_to_slice(&mut out).map_err(|_| VerifyError::Malformed)?.len();
    out.truncate(written);
    Ok(out)
}

/// `cert` is signed by the RSA key in `issuer`'s SubjectPublicKeyInfo, with RSA-PSS and
/// SHA-384.
fn signed_by(cert: &Certificate, issuer: &Certificate) -> Result<(), VerifyError> {
    use rsa::pkcs8::DecodePublicKey;
    use rsa::signature::Verifier;
    let spki = der(&issuer.tbs_certificate.subject_public_key_info)?;
    let key = rsa::RsaPublicKey::from_public_key_der(&spki).map_err(|_| VerifyError::Untrusted)?;
    let tbs = der(&cert.tbs_certificate)?;
    let signature = cert.signature.as_bytes().ok_or(VerifyError::Malformed)?;
    let signature = rsa::pss::Signature::try_from(signature).map_err(|_| VerifyError::Malformed)?;
    rsa::pss::VerifyingKey::<sha2::Sha384>::new(key).verify(&tbs, &signature).map_err(|_| VerifyError::Untrusted)
}

/// The value of `cert`'s extension `oid`, if it has one.
fn extension<'a>(cert: &'a Certificate, oid: &str) -> Option<&'a [u8]> {
    let oid = x509_cert::der::oid::ObjectIdentifier::new(oid).ok()?;
    let extensions = cert.tbs_certificate.extensions.as_ref()?;
    extensions.iter().find(|e| e.extn_id == oid).map(|e| e.extn_value.as_bytes())
}

/// A 72-byte little-endian ECDSA scalar field as the 48 big-endian bytes P-384 takes;
/// `None` if the bytes past the first 48 are not zero.
fn scalar(field: &[u8]) -> Option<[u8; 48]> {
    let (value, rest) = field.split_at_checked(48)?;
    if rest.iter().any(|b| *b != 0) {
        return None;
    }
    let mut be = [0u8; 48];
    be.iter_mut().zip(value.iter().rev()).for_each(|(to, from)| *to = *from);
    Some(be)
}

fn le_u32(report: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(*report.get(at..)?.first_chunk::<4>()?))
}

impl PeerVerifier for ReportVerifier {
    fn verify(&self, evidence: &[u8], expected: &[u8; REPORT_DATA_LEN]) -> Result<PeerIdentity, VerifyError> {
        let (report, table) = decode(evidence).ok_or(VerifyError::Malformed)?;
        if report.len() != REPORT_SIZE {
            return Err(VerifyError::Malformed);
        }
        self.room()?;
        let parse = |guid| certificate(table, guid).ok_or(VerifyError::Malformed).and_then(parse);
        let (ark, ask, vcek) = (parse(&ARK)?, parse(&ASK)?, parse(&VCEK)?);
        // The chain: a trusted root, the ASK under it, the VCEK under the ASK.
        let ark_key = der(&ark.tbs_certificate.subject_public_key_info)?;
        if !self.roots.contains(&ark_key) {
            return Err(VerifyError::Untrusted);
        }
        signed_by(&ask, &ark)?;
        signed_by(&vcek, &ask)?;
        // The report, signed by the VCEK.
        let point = vcek.tbs_certificate.subject_public_key_info.subject_public_key.as_bytes();
        let key =
            point.and_then(|p| p384::ecdsa::VerifyingKey::from_sec1_bytes(p).ok()).ok_or(VerifyError::Untrusted)?;
        let signature = report.get(SIGNATURE..SIGNATURE + 144).ok_or(VerifyError::Malformed)?;
        let (r, s) = signature.split_at(72);
        let (r, s) = (scalar(r).ok_or(VerifyError::Malformed)?, scalar(s).ok_or(VerifyError::Malformed)?);
        let signature = p384::ecdsa::Signature::from_scalars(r, s).map_err(|_| VerifyError::Malformed)?;
        let signed = report.get(..SIGNED_LEN).ok_or(VerifyError::Malformed)?;
        p384::ecdsa::signature::Verifier::verify(&key, signed, &signature).map_err(|_| VerifyError::Untrusted)?;
        // What the report says, now that it is authentic.
        let vmpl = le_u32(report, VMPL).ok_or(VerifyError::Malformed)?;
        let algo = le_u32(report, SIGNATURE_ALGO).ok_or(VerifyError::Malformed)?;
        let signing_key = le_u32(report, KEY_INFO).ok_or(VerifyError::Malformed)? >> 2 & 0x7;
        if vmpl != 0 || algo != ALGO_ECDSA_P384_SHA384 || signing_key != 0 {
            return Err(VerifyError::Refused);
        }
        let chip_id = report.get(CHIP_ID..CHIP_ID + 64).ok_or(VerifyError::Malformed)?;
        // AMD's VCEKs wrap the bytes in a DER OCTET STRING; older ones had them bare.
        if !extension(&vcek, HWID_OID).is_some_and(|hwid| abi::attest::hwid_names(hwid, chip_id)) {
            return Err(VerifyError::Untrusted);
        }
        let tcb = report.get(REPORTED_TCB..REPORTED_TCB + 8).ok_or(VerifyError::Malformed)?;
        for &(oid, byte) in tcb_layout(report) {
            let Some(value) = extension(&vcek, oid) else { continue };
            let value = x509_cert::der::asn1::Uint::from_der(value).map_err(|_| VerifyError::Malformed)?;
            let value = match value.as_bytes() {
                [] => 0,
                [v] => *v,
                _ => return Err(VerifyError::Malformed),
            };
            if tcb.get(byte) != Some(&value) {
                return Err(VerifyError::Untrusted);
            }
        }
        if report.get(REPORT_DATA..REPORT_DATA + REPORT_DATA_LEN) != Some(&expected[..]) {
            return Err(VerifyError::ReportDataMismatch);
        }
        let mut measurement = [0u8; 48];
        measurement.copy_from_slice(report.get(MEASUREMENT..MEASUREMENT + 48).ok_or(VerifyError::Malformed)?);
        let policy =
            u64::from_le_bytes(*report.get(POLICY..).and_then(<[u8]>::first_chunk::<8>).ok_or(VerifyError::Malformed)?);
        Ok(PeerIdentity { measurement, policy })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use sev::certs::snp::builtin::{genoa, milan, turin};

    fn der(cert: std::io::Result<sev::certs::snp::Certificate>) -> Vec<u8> {
        cert.unwrap().to_der().unwrap()
    }

    /// The built-in roots are AMD's: the public keys of the ARK certificates of AMD's
    /// KDS chains (as the `sev` crate ships them), each generation's own, in order.
    #[test]
    fn the_built_in_roots_are_amds_arks() {
        let verifier = ReportVerifier::amd().unwrap();
        for ((name, spki), ark) in AMD_ARKS.iter().zip([milan::ark(), genoa::ark(), turin::ark()]) {
            let ark = der(ark);
            assert_eq!(ReportVerifier::root_of(&ark).as_deref(), Some(*spki), "{name}");
            assert!(verifier.trusts_ark(&ark), "{name}");
        }
    }

    /// Which byte of REPORTED_TCB each VCEK extension is compared with: Turin's layout for
    /// a version 3 report of family 0x1A or later (and, for older reports, an 8-byte chip
    /// id), Milan's and Genoa's otherwise.
    #[test]
    fn the_tcb_layout_follows_the_chip_that_signed() {
        let report = |version: u32, family: u8, chip_id_tail: u8| {
            let mut r = alloc::vec![0u8; REPORT_SIZE];
            r[VERSION..VERSION + 4].copy_from_slice(&version.to_le_bytes());
            r[CPUID_FAMILY] = family;
            r[CHIP_ID..CHIP_ID + 8].fill(0xAB);
            r[CHIP_ID + 8..CHIP_ID + 64].fill(chip_id_tail);
            r
        };
        let fmc = |layout: &[(&str, usize)]| layout.iter().find(|(oid, _)| oid.ends_with(".3.9")).map(|(_, at)| *at);
        let snp = |layout: &[(&str, usize)]| layout.iter().find(|(oid, _)| oid.ends_with(".3.3")).map(|(_, at)| *at);
        for (r, turin) in [
            (report(3, 0x19, 0xCD), false), // Milan, Genoa
            (report(3, 0x1A, 0xCD), true),  // Turin
            (report(3, 0x1A, 0x00), true),
            (report(2, 0x00, 0xCD), false), // no CPUID fields: a 64-byte chip id
            (report(2, 0x00, 0x00), true),  // an 8-byte chip id
        ] {
            let layout = tcb_layout(&r);
            assert_eq!(fmc(layout), turin.then_some(0));
            assert_eq!(snp(layout), Some(if turin { 3 } else { 6 }));
        }
        // Cut short: the older layout, never a panic.
        assert_eq!(snp(tcb_layout(&[][..])), Some(6));
    }

    /// A verifier told the heap has too little room refuses before it parses anything;
    /// with room it goes on (here to find the evidence is no evidence).
    #[test]
    fn a_verifier_with_too_little_heap_refuses_to_start() {
        let evidence = encode(&[0; REPORT_SIZE], &[]).unwrap();
        let verifier = ReportVerifier::amd().unwrap();
        assert_eq!(
            verifier.clone().with_heap_check(|| VERIFY_HEAP - 1).verify(&evidence, &[0; 64]),
            Err(VerifyError::OutOfMemory)
        );
        assert_eq!(verifier.with_heap_check(|| VERIFY_HEAP).verify(&evidence, &[0; 64]), Err(VerifyError::Malformed));
    }

    /// Certificates are parsed only within their bounds: AMD's are; one past the element
    /// count or the nesting is refused unparsed, and deep nesting costs no stack (the
    /// length bound: model/tests/migration_heap.rs).
    #[test]
    fn certificates_past_the_bounds_are_not_parsed() {
        for cert in [milan::ark(), milan::ask(), genoa::ark(), genoa::ask(), turin::ark(), turin::ask()] {
            assert!(parse(&der(cert)).is_ok());
        }
        // DER: a SEQUENCE around `body`, its length in the shortest form.
        let sequence = |body: Vec<u8>| {
            let mut out = match body.len() {
                n @ 0..0x80 => alloc::vec![0x30, n as u8],
                n @ 0x80..0x100 => alloc::vec![0x30, 0x81, n as u8],
                n => alloc::vec![0x30, 0x82, (n >> 8) as u8, n as u8],
            };
            out.extend(body);
            out
        };
        // A SEQUENCE of n NULLs: n + 1 elements.
        let nulls = |n: usize| sequence((0..n).flat_map(|_| [0x05, 0x00]).collect());
        assert_eq!(
            elements(&nulls(MAX_CERTIFICATE_ELEMENTS - 1), MAX_DEPTH, MAX_CERTIFICATE_ELEMENTS),
            Some(MAX_CERTIFICATE_ELEMENTS)
        );
        assert_eq!(elements(&nulls(MAX_CERTIFICATE_ELEMENTS), MAX_DEPTH, MAX_CERTIFICATE_ELEMENTS), None);
        assert_eq!(parse(&nulls(MAX_CERTIFICATE_ELEMENTS)).err(), Some(VerifyError::Malformed));
        // SEQUENCEs nested as deep as allowed, one level deeper, and much deeper.
        let nested = |depth: usize| (0..depth).fold(alloc::vec![], |inner, _| sequence(inner));
        assert_eq!(elements(&nested(MAX_DEPTH), MAX_DEPTH, MAX_CERTIFICATE_ELEMENTS), Some(MAX_DEPTH));
        assert_eq!(elements(&nested(MAX_DEPTH + 1), MAX_DEPTH, MAX_CERTIFICATE_ELEMENTS), None);
        let deep = nested(1500);
        assert!(deep.len() <= MAX_CERTIFICATE_LEN);
        assert_eq!(parse(&deep).err(), Some(VerifyError::Malformed));
    }

    /// AMD's ASKs sign VCEKs but are no roots; bytes that are no certificate trust nothing.
    #[test]
    fn only_the_arks_are_roots() {
        let verifier = ReportVerifier::amd().unwrap();
        for ask in [milan::ask(), genoa::ask(), turin::ask()] {
            assert!(!verifier.trusts_ark(&der(ask)));
        }
        assert!(!verifier.trusts_ark(&[]));
        assert!(!verifier.trusts_ark(&[0x30, 0x00]));
    }
}
