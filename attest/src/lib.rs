//! Attestation evidence on the host: the verifier behind `bulwark attest verify`, the
//! formats the evidence travels in, and a test certificate authority.
//!
//! This crate sits on the *relying party's* side of the trust boundary: every byte it is
//! given (report, certificates, nonce, manifest) may be hostile, so the parsers return
//! errors as values and never panic on input.
//!
//! # What the verifier checks, and why more than `sev` does
//!
//! Evidence is what SVSM_ATTEST_SERVICES / SVSM_ATTEST_SINGLE_SERVICE (SVSM spec 58019
//! section 7.1) hands the guest: an SNP ATTESTATION_REPORT (SNP firmware ABI), the
//! certificate table of the GHCB extended guest request (ARK, ASK, VCEK), the caller's
//! nonce and the services manifest. [`verify::examine`] checks, and records each check
//! in the [`Verdict`]:
//!
//! - the report is 0x4A0 bytes, version 2, 3 or 5, SIGNATURE_ALGO 1 (ECDSA P-384 with
//!   SHA-384), VMPL 0 (the SVSM asks for its own VMPL; anything else was produced for a
//!   less privileged caller), signed by the VCEK (key_info SIGNING_KEY 0);
//! - every reserved byte is zero, and so are the unused bytes 48..72 of R and S and the
//!   signature's reserved tail 0x330..0x4A0;
//! - the report re-encodes to itself under `sev`'s parser;
//! - each certificate is strict, canonical DER whose outer signature algorithm equals
//!   the signed one (RFC 5280 4.1.1.2) and is RSASSA-PSS; ARK is self-signed, ARK signs
//!   ASK, ASK signs VCEK, each is inside its validity period, and a VCEK hwID
//!   extension, when present, names the report's CHIP_ID;
//! - the VCEK signs the report (through `sev`, the verifier most SNP users run);
//! - REPORT_DATA = SHA-512(nonce || manifest), and the manifest parses (GUID table with
//!   in-bounds, non-overlapping entries);
//! - the manifest's sealed-state entry, when there is one, is 64 well-formed bytes and
//!   does not say that the sealed state closed since boot (a failed header write stops
//!   the SVSM's persistent services: what they would keep is no longer kept).
//!
//! With a ledger ([`ledger`], `bulwark attest verify --state-ledger`), one more check
//! compares the sealed state with the newest one accepted before for its store and
//! refuses an older generation (rollback) or another root under one generation (fork).
//!
//! `sev` 8 alone accepts evidence that has been changed in ways nobody signed: it
//! hashes a *re-encoding* of the parsed report, so non-zero reserved TCB bytes come back
//! as zero; it reads only the first 48 bytes of R and S and never looks at
//! 0x330..0x4A0; it ignores VMPL, key_info and REPORT_DATA; it re-encodes each
//! certificate's TBS part before checking the signature and never reads the outer
//! algorithm's parameters, validity, names or extensions. The checks above close those
//! gaps, so changing any single byte of the evidence is detected (tests/flips.rs).
//!
//! Finally the verdict says whether the ARK is one of AMD's real roots (Milan, Genoa,
//! Turin, as shipped inside `sev`). A chain from [`chain::TestAuthority`], which the
//! model and the QEMU platform use, verifies but is reported as NOT rooted in AMD
//! hardware: it proves the report's integrity, not that an AMD PSP produced it.

pub mod cert_table;
pub mod chain;
pub mod launch_digest;
pub mod ledger;
pub mod lineage_ledger;
pub mod manifest;
pub mod testing;
pub mod verify;

pub use verify::{Certificates, Check, Evidence, Rejected, Verdict, examine, verify};

/// Lower-case hex of `bytes`, for verdicts and error details.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A certificate file's DER: PEM ("CERTIFICATE") is unwrapped without re-encoding, so
/// the verifier still sees the exact bytes; anything else is taken as DER.
pub fn certificate_der(file: &[u8]) -> Result<Vec<u8>, String> {
    if !file.starts_with(b"-----BEGIN") {
        return Ok(file.to_vec());
    }
    match x509_cert::der::pem::decode_vec(file) {
        Ok(("CERTIFICATE", der)) => Ok(der),
        Ok((label, _)) => Err(format!("PEM label {label}, expected CERTIFICATE")),
        Err(e) => Err(format!("not PEM: {e}")),
    }
}

/// A certificate's DER as PEM, for files people and `openssl` read.
pub fn certificate_pem(der: &[u8]) -> Result<String, String> {
    use x509_cert::der::pem::{LineEnding, encode_string};
    encode_string("CERTIFICATE", LineEnding::LF, der).map_err(|e| e.to_string())
}
