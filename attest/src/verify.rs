//! The verifier: evidence in, a [`Verdict`] out that records every check.
//!
//! Checks come in two groups: the certificate chain ([`check_chain`], which does not
//! depend on the report) and the report with its nonce and manifest
//! ([`examine_with_chain`]). [`examine`] runs both. Every check always appears in the
//! verdict, in a fixed order and under a stable name (JSON consumers key on it); a
//! check that cannot run because an earlier one failed is recorded as failed with the
//! reason. The crate doc lists the checks and why `sev` alone is not enough. A ledger of
//! sealed states, when one is consulted, adds its `state_ledger` check last
//! ([`crate::ledger::judge`]).

use crate::cert_table;
use crate::chain::HWID_OID;
use crate::hex;
use crate::manifest;
use abi::attest::report as off;
use abi::attest::{REPORT_SIZE, cert_table as guids};
use serde::Serialize;
use sev::certs::snp::{Certificate as SevCertificate, Chain as SevChain, Verifiable, ca};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;
use sha2::{Digest, Sha256, Sha512};
use std::fmt;
use std::time::SystemTime;
use x509_cert::Certificate;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};

/// RSASSA-PSS (RFC 4055), the only certificate signature `sev` 8 verifies.
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
/// AMD's VCEK TCB extensions (VCEK spec 57230 table 8): bootloader, TEE, SNP,
/// microcode, FMC (Turin and later).
const TCB_EXTENSIONS: [(&str, &str); 5] = [
    ("bootloader", "1.3.6.1.4.1.3704.1.3.1"),
    ("tee", "1.3.6.1.4.1.3704.1.3.2"),
    ("snp", "1.3.6.1.4.1.3704.1.3.3"),
    ("microcode", "1.3.6.1.4.1.3704.1.3.8"),
    ("fmc", "1.3.6.1.4.1.3704.1.3.9"),
];

/// Everything a relying party receives from one attestation call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// The ATTESTATION_REPORT (0x4A0 bytes if well formed).
    pub report: Vec<u8>,
    pub certificates: Certificates,
    /// The nonce the relying party chose.
    pub nonce: Vec<u8>,
    /// The services manifest the SVSM returned; for SVSM_ATTEST_SINGLE_SERVICE evidence,
    /// that one service's data.
    pub manifest: Vec<u8>,
    /// `Some(guid)`: the evidence came from SVSM_ATTEST_SINGLE_SERVICE for this service,
    /// so `manifest` is its raw data rather than a services manifest.
    pub service: Option<abi::guid::Guid>,
}

/// The certificate chain, as the certificates buffer carries it or as separate files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Certificates {
    /// A GHCB certificate table (see [`cert_table`]).
    Table(Vec<u8>),
    /// ARK, ASK and VCEK certificates, DER.
    Der { ark: Vec<u8>, ask: Vec<u8>, vcek: Vec<u8> },
}

/// One check and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// A TCB_VERSION, decoded for the report's processor generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tcb {
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
    /// Turin and later only.
    pub fmc: Option<u8>,
    pub raw: String,
}

/// The report's fields as a relying party wants to see them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReportSummary {
    pub version: u32,
    pub guest_svn: u32,
    pub policy: String,
    pub vmpl: u32,
    pub signature_algo: u32,
    /// key_info SIGNING_KEY: 0 VCEK, 1 VLEK, 7 none.
    pub signing_key: u32,
    pub measurement: String,
    pub report_data: String,
    pub host_data: String,
    pub chip_id: String,
    pub family_id: String,
    pub image_id: String,
    pub report_id: String,
    /// CPUID family/model/stepping (version 3 and later), e.g. "19/11/01".
    pub cpuid: Option<String>,
    pub current_tcb: Tcb,
    pub reported_tcb: Tcb,
    pub committed_tcb: Tcb,
    pub launch_tcb: Tcb,
    /// Firmware version major.minor.build.
    pub current_version: String,
}

/// One service of the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceSummary {
    pub guid: String,
    pub name: Option<&'static str>,
    pub length: usize,
    pub summary: String,
}

/// The outcome of verifying evidence. `Display` is the human report; `Serialize` the
/// JSON one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Every check passed.
    pub passed: bool,
    /// The chain verified and its ARK is one of AMD's. False for every chain Bulwark's
    /// emulated platforms make.
    pub hardware_rooted: bool,
    /// What the chain is rooted in, in words.
    pub root: String,
    pub checks: Vec<Check>,
    /// Present when the report is 0x4A0 bytes.
    pub report: Option<ReportSummary>,
    /// The manifest's services, when it parsed.
    pub services: Vec<ServiceSummary>,
    /// The committed state of the SVSM's sealed store, when the manifest has a
    /// well-formed sealed-state entry.
    pub sealed_state: Option<manifest::SealedState>,
    /// The vTPM's lineage, when the manifest has a well-formed lineage entry beside the
    /// vTPM's.
    pub vtpm_lineage: Option<manifest::VtpmLineage>,
    /// SHA-256 of the vTPM's EK public area (hex): the name the ledger keeps the TPM's
    /// lineage under.
    pub vtpm_ek_sha256: Option<String>,
    /// The sealed state's attestation chain, when the manifest has a well-formed one.
    pub attest_chain: Option<manifest::AttestChain>,
    /// What the relying party's ledger said about the sealed state (`bulwark attest
    /// verify --state-ledger`; [`crate::ledger`]); `None` when no ledger was consulted.
    pub ledger: Option<crate::ledger::LedgerVerdict>,
}

/// Evidence that failed at least one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub verdict: Verdict,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed: Vec<String> =
            self.verdict.checks.iter().filter(|c| !c.passed).map(|c| format!("{} ({})", c.name, c.detail)).collect();
        write!(f, "attestation evidence rejected: {}", failed.join("; "))
    }
}

impl std::error::Error for Rejected {}

/// REPORT_DATA the SVSM must have requested: SHA-512(nonce || manifest).
pub fn expected_report_data(nonce: &[u8], manifest: &[u8]) -> [u8; 64] {
    Sha512::new_with_prefix(nonce).chain_update(manifest).finalize().into()
}

/// Verify `evidence`: the verdict if every check passed, else [`Rejected`] with it.
#[allow(clippy::result_large_err, reason = "Ok carries the same Verdict; boxing only Err would save nothing")]
pub fn verify(evidence: &Evidence) -> Result<Verdict, Rejected> {
    let verdict = examine(evidence);
    if verdict.passed { Ok(verdict) } else { Err(Rejected { verdict }) }
}

/// Run every check on `evidence` and report, pass or fail.
pub fn examine(evidence: &Evidence) -> Verdict {
    examine_with_chain(&check_chain(&evidence.certificates), evidence)
}

/// The certificate checks and, if they got that far, the VCEK: the part of a verdict
/// that depends only on the certificates, so it can be reused across reports.
#[derive(Clone, Debug)]
pub struct CheckedChain {
    checks: Vec<Check>,
    vcek: Option<Certificate>,
    hardware_rooted: bool,
    root: String,
}

impl CheckedChain {
    /// Every chain check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    pub fn checks(&self) -> &[Check] {
        &self.checks
    }
}

/// Record of checks in order; a failed prerequisite turns later checks into failures
/// that say why they did not run.
#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn record(&mut self, name: &'static str, outcome: Result<String, String>) -> bool {
        let passed = outcome.is_ok();
        self.0.push(Check { name, passed, detail: outcome.unwrap_or_else(|e| e) });
        passed
    }

    fn not_run(&mut self, name: &'static str, why: &str) {
        self.0.push(Check { name, passed: false, detail: format!("not checked: {why}") });
    }
}

/// Check the certificates: table, encoding, validity, the chain itself, the VCEK key.
pub fn check_chain(certificates: &Certificates) -> CheckedChain {
    let mut checks = Checks::default();
    let (ark, ask, vcek) = match certificates {
        Certificates::Der { ark, ask, vcek } => {
            checks.record("certificates.table", Ok("given as separate DER files".into()));
            (Some(ark.clone()), Some(ask.clone()), Some(vcek.clone()))
        }
        Certificates::Table(blob) => match cert_table::decode(blob) {
            Ok(entries) => {
                let get = |g| cert_table::find(&entries, g).map(<[u8]>::to_vec);
                let (ark, ask, vcek) = (get(&guids::ARK), get(&guids::ASK), get(&guids::VCEK));
                let others: Vec<String> = entries
                    .iter()
                    .filter(|e| ![guids::ARK, guids::ASK, guids::VCEK].contains(&e.guid))
                    .map(|e| cert_table::name(&e.guid).map_or_else(|| uuid(&e.guid), str::to_string))
                    .collect();
                let missing: Vec<&str> = [("ARK", &ark), ("ASK", &ask), ("VCEK", &vcek)]
                    .iter()
                    .filter(|(_, c)| c.is_none())
                    .map(|(n, _)| *n)
                    .collect();
                let outcome = if missing.is_empty() {
                    let ignored =
                        if others.is_empty() { String::new() } else { format!("; ignored {}", others.join(", ")) };
                    Ok(format!("{} entries, ARK, ASK and VCEK present{ignored}", entries.len()))
                } else {
                    Err(format!("no {} entry", missing.join(", no ")))
                };
                checks.record("certificates.table", outcome);
                (ark, ask, vcek)
            }
            Err(e) => {
                checks.record("certificates.table", Err(e.to_string()));
                (None, None, None)
            }
        },
    };

    let parse = |label: &str, der: &Option<Vec<u8>>| match der {
        Some(der) => parse_certificate(der).map_err(|e| format!("{label}: {e}")),
        None => Err(format!("{label}: missing")),
    };
    let (ark, ask, vcek) = (parse("ARK", &ark), parse("ASK", &ask), parse("VCEK", &vcek));
    let problems: Vec<&str> = [&ark, &ask, &vcek].iter().filter_map(|p| p.as_ref().err().map(String::as_str)).collect();
    let encoding = if problems.is_empty() {
        Ok("ARK, ASK, VCEK: canonical DER, RSASSA-PSS signatures".to_string())
    } else {
        Err(problems.join("; "))
    };
    let (Ok(ark), Ok(ask), Ok(vcek)) = (ark, ask, vcek) else {
        checks.record("certificates.encoding", encoding);
        for name in ["certificates.validity", "certificates.chain", "certificates.vcek_key"] {
            checks.not_run(name, "a certificate is missing or malformed");
        }
        return CheckedChain {
            checks: checks.0,
            vcek: None,
            hardware_rooted: false,
            root: "NOT rooted in AMD hardware: the certificates do not parse".into(),
        };
    };
    checks.record("certificates.encoding", encoding);
    checks.record("certificates.validity", validity(&[("ARK", &ark), ("ASK", &ask), ("VCEK", &vcek)]));
    let chain = SevChain {
        ca: ca::Chain { ark: SevCertificate::from(ark.clone()), ask: SevCertificate::from(ask) },
        vek: SevCertificate::from(vcek.clone()),
    };
    let chain_ok = checks.record(
        "certificates.chain",
        (&chain)
            .verify()
            .map(|_| "ARK self-signed, ARK signs ASK, ASK signs VCEK (sev)".to_string())
            .map_err(|e| format!("sev: {e}")),
    );
    checks.record("certificates.vcek_key", vcek_key(&vcek));
    let amd = amd_root(&ark);
    let (hardware_rooted, root) = match (chain_ok, amd) {
        (true, Some(generation)) => (true, format!("AMD hardware: the ARK is AMD's {generation} root key")),
        (true, None) => (
            false,
            "NOT rooted in AMD hardware (emulated platform): the ARK is not one of AMD's root keys \
             (Milan, Genoa, Turin)"
                .to_string(),
        ),
        (false, _) => (false, "NOT rooted in AMD hardware: the certificate chain does not verify".to_string()),
    };
    CheckedChain { checks: checks.0, vcek: Some(vcek), hardware_rooted, root }
}

/// Strict DER that re-encodes to itself (so no byte escapes the signature through
/// `sev` re-encoding the TBS part), signed with RSASSA-PSS under the same algorithm
/// identifier inside and outside the signed part.
fn parse_certificate(der: &[u8]) -> Result<Certificate, String> {
    let cert = Certificate::from_der(der).map_err(|e| format!("not DER: {e}"))?;
    let again = cert.to_der().map_err(|e| format!("does not re-encode: {e}"))?;
    if again != der {
        return Err("not canonical DER (re-encodes differently)".into());
    }
    if cert.signature_algorithm != cert.tbs_certificate.signature {
        return Err("outer signature algorithm differs from the signed one (RFC 5280 4.1.1.2)".into());
    }
    if cert.signature_algorithm.oid != RSASSA_PSS {
        return Err(format!("signature algorithm {} is not RSASSA-PSS", cert.signature_algorithm.oid));
    }
    Ok(cert)
}

fn validity(certs: &[(&str, &Certificate)]) -> Result<String, String> {
    let now = SystemTime::now();
    let mut until = Vec::new();
    for (label, cert) in certs {
        let v = &cert.tbs_certificate.validity;
        if now < v.not_before.to_system_time() {
            return Err(format!("{label} not valid before {}", v.not_before));
        }
        if now > v.not_after.to_system_time() {
            return Err(format!("{label} expired {}", v.not_after));
        }
        until.push(format!("{label} until {}", v.not_after));
    }
    Ok(until.join(", "))
}

/// The VCEK certifies a P-384 key (id-ecPublicKey on secp384r1). `sev` reads the raw
/// point and ignores the algorithm; we do not.
fn vcek_key(vcek: &Certificate) -> Result<String, String> {
    use p384::pkcs8::DecodePublicKey;
    let spki = vcek.tbs_certificate.subject_public_key_info.to_der().map_err(|e| e.to_string())?;
    p384::PublicKey::from_public_key_der(&spki)
        .map(|_| "P-384 public key".to_string())
        .map_err(|e| format!("not a P-384 public key: {e}"))
}

/// Which AMD generation's ARK has the same public key as `ark`, if any.
fn amd_root(ark: &Certificate) -> Option<&'static str> {
    use sev::certs::snp::builtin::{genoa, milan, turin};
    let ours = ark.tbs_certificate.subject_public_key_info.to_der().ok()?;
    let builtin = [("Milan", milan::ark()), ("Genoa", genoa::ark()), ("Turin", turin::ark())];
    builtin.into_iter().find_map(|(generation, cert)| {
        let cert: Certificate = cert.ok()?.into();
        let theirs = cert.tbs_certificate.subject_public_key_info.to_der().ok()?;
        (theirs == ours).then_some(generation)
    })
}

/// Run the report, nonce and manifest checks of `evidence` against a chain checked
/// before (its certificates are not looked at again).
pub fn examine_with_chain(chain: &CheckedChain, evidence: &Evidence) -> Verdict {
    let mut checks = Checks(chain.checks.clone());
    let expected = expected_report_data(&evidence.nonce, &evidence.manifest);
    let what = format!("SHA-512(nonce || manifest) over {} + {} bytes", evidence.nonce.len(), evidence.manifest.len());
    let report = check_report(&mut checks, chain.vcek.as_ref(), &evidence.report, &expected, &what);
    let parsed = match evidence.service {
        // Single-service evidence: REPORT_DATA covers the service's raw data.
        Some(guid) => Ok(vec![manifest::Service { guid, data: evidence.manifest.clone() }]),
        None => manifest::parse(&evidence.manifest),
    };
    let services = match &parsed {
        Ok(services) => {
            let summaries: Vec<ServiceSummary> = services
                .iter()
                .map(|s| ServiceSummary {
                    guid: s.guid.to_string(),
                    name: manifest::service_name(&s.guid),
                    length: s.data.len(),
                    summary: manifest::describe(s),
                })
                .collect();
            let what = match evidence.service {
                Some(guid) => format!(
                    "{} bytes of one service ({}; SVSM_ATTEST_SINGLE_SERVICE)",
                    evidence.manifest.len(),
                    manifest::service_name(&guid).unwrap_or("unknown service")
                ),
                None => format!("{} bytes, {} services", evidence.manifest.len(), services.len()),
            };
            checks.record("manifest", Ok(what));
            summaries
        }
        Err(e) => {
            checks.record("manifest", Err(e.to_string()));
            Vec::new()
        }
    };
    let (vtpm_lineage, vtpm_ek_sha256) = match &parsed {
        Ok(services) => check_vtpm_lineage(&mut checks, services),
        Err(_) => {
            checks.not_run("vtpm_lineage", "the manifest does not parse");
            (None, None)
        }
    };
    let attest_chain = match &parsed {
        Ok(services) => check_attest_chain(&mut checks, services),
        Err(_) => {
            checks.not_run("attest_chain", "the manifest does not parse");
            None
        }
    };
    let sealed_state = match &parsed {
        Ok(services) => check_sealed_state(&mut checks, services),
        Err(_) => {
            checks.not_run("sealed_state", "the manifest does not parse");
            None
        }
    };
    let passed = checks.0.iter().all(|c| c.passed);
    Verdict {
        passed,
        hardware_rooted: chain.hardware_rooted,
        root: chain.root.clone(),
        checks: checks.0,
        report,
        services,
        sealed_state,
        vtpm_lineage,
        vtpm_ek_sha256,
        attest_chain,
        ledger: None,
    }
}

/// The `attest_chain` check: absent is fine (no sealed state, or an SVSM that keeps no
/// chain), a malformed entry is not. (Whether the chain descends from the state accepted
/// last is the ledger's part.)
fn check_attest_chain(checks: &mut Checks, services: &[manifest::Service]) -> Option<manifest::AttestChain> {
    match manifest::attest_chain(services) {
        Ok(None) => {
            checks.record("attest_chain", Ok("none in the manifest".into()));
            None
        }
        Ok(Some(chain)) => {
            let detail = format!("{} link(s), chain value {}", chain.links.len(), crate::hex(&chain.value()));
            checks.record("attest_chain", Ok(detail));
            Some(chain)
        }
        Err(e) => {
            checks.record("attest_chain", Err(format!("malformed entry: {e}")));
            None
        }
    }
}

/// The `vtpm_lineage` check: absent is fine (no vTPM, or an SVSM that does not say), a
/// malformed entry is not, and neither is a lineage without the vTPM it belongs to.
/// Returns the lineage and the EK digest it is kept under.
fn check_vtpm_lineage(
    checks: &mut Checks,
    services: &[manifest::Service],
) -> (Option<manifest::VtpmLineage>, Option<String>) {
    let ek = services.iter().find(|s| s.guid == abi::attest::VTPM_SERVICE_GUID);
    let digest = ek.map(|ek| crate::hex(&Sha256::digest(&ek.data)));
    match (manifest::vtpm_lineage(services), &digest) {
        (Ok(None), _) => {
            checks.record("vtpm_lineage", Ok("none in the manifest".into()));
            (None, digest)
        }
        (Ok(Some(_)), None) => {
            checks.record("vtpm_lineage", Err("a vTPM lineage without a vTPM entry".into()));
            (None, None)
        }
        (Ok(Some(lineage)), Some(ek)) => {
            checks.record("vtpm_lineage", Ok(format!("{lineage}; the TPM with EK SHA-256 {ek}")));
            (Some(lineage), digest)
        }
        (Err(e), _) => {
            checks.record("vtpm_lineage", Err(format!("malformed entry: {e}")));
            (None, digest)
        }
    }
}

/// The `sealed_state` check: absent is fine (an SVSM without a state disk keeps no
/// sealed state), malformed is not, and neither is a sealed state that closed since boot
/// (`SEALED_STATE_FAILED`): the SVSM's persistent services have stopped, and whatever a
/// relying party would trust them to keep from now on is no longer kept.
fn check_sealed_state(checks: &mut Checks, services: &[manifest::Service]) -> Option<manifest::SealedState> {
    match manifest::sealed_state(services) {
        Ok(None) => {
            checks.record("sealed_state", Ok("none in the manifest: the SVSM keeps no sealed state".into()));
            None
        }
        Ok(Some(state)) if state.failed => {
            checks.record(
                "sealed_state",
                Err(format!(
                    "CLOSED: {state}; a header write failed since boot, the services that keep state there have stopped"
                )),
            );
            Some(state)
        }
        Ok(Some(state)) => {
            checks.record("sealed_state", Ok(state.to_string()));
            Some(state)
        }
        Err(e) => {
            checks.record("sealed_state", Err(format!("malformed entry: {e}")));
            None
        }
    }
}

const REPORT_CHECKS: [&str; 11] = [
    "report.version",
    "report.signature_algo",
    "report.vmpl",
    "report.signing_key",
    "report.reserved",
    "report.signature_encoding",
    "report.canonical",
    "report.signature",
    "report.chip_id",
    "report.tcb",
    "report_data",
];

fn check_report(
    checks: &mut Checks,
    vcek: Option<&Certificate>,
    report: &[u8],
    expected: &[u8; 64],
    what: &str,
) -> Option<ReportSummary> {
    let Ok(r) = <&[u8; REPORT_SIZE]>::try_from(report) else {
        checks.record("report.size", Err(format!("{} bytes, expected {REPORT_SIZE}", report.len())));
        for name in REPORT_CHECKS {
            checks.not_run(name, "the report has the wrong size");
        }
        return None;
    };
    checks.record("report.size", Ok(format!("{REPORT_SIZE} bytes")));
    let summary = summarize(r);
    let version = summary.version;
    checks.record(
        "report.version",
        if matches!(version, 2 | 3 | 5) { Ok(format!("{version}")) } else { Err(format!("{version} (2, 3 or 5)")) },
    );
    checks.record(
        "report.signature_algo",
        if summary.signature_algo == off::ALGO_ECDSA_P384_SHA384 {
            Ok("1 (ECDSA P-384 with SHA-384)".into())
        } else {
            Err(format!("{} (only 1, ECDSA P-384 with SHA-384, is defined)", summary.signature_algo))
        },
    );
    checks.record(
        "report.vmpl",
        if summary.vmpl == 0 {
            Ok("0".into())
        } else {
            Err(format!("{}: the report was requested for a less privileged VMPL than the SVSM's", summary.vmpl))
        },
    );
    checks.record(
        "report.signing_key",
        match summary.signing_key {
            0 => Ok("VCEK".into()),
            1 => Err("VLEK (only VCEK-signed reports are supported)".into()),
            k => Err(format!("{k} (not VCEK)")),
        },
    );
    checks.record("report.reserved", reserved_zero(r, version));
    checks.record("report.signature_encoding", signature_encoding(r));
    let parsed = AttestationReport::from_bytes(r);
    checks.record(
        "report.canonical",
        match &parsed {
            Ok(p) => canonical(r, p),
            Err(e) => Err(format!("sev does not parse it: {e}")),
        },
    );
    match (vcek, &parsed) {
        (Some(vcek), Ok(p)) => {
            let cert = SevCertificate::from(vcek.clone());
            checks.record(
                "report.signature",
                (&cert, p).verify().map(|()| "signed by the VCEK (sev)".to_string()).map_err(|e| format!("sev: {e}")),
            );
            checks.record("report.chip_id", chip_id(vcek, r));
            checks.record("report.tcb", tcb_extensions(vcek, &summary.reported_tcb));
        }
        (None, _) => {
            for name in ["report.signature", "report.chip_id", "report.tcb"] {
                checks.not_run(name, "no usable VCEK certificate");
            }
        }
        (_, Err(_)) => {
            for name in ["report.signature", "report.chip_id", "report.tcb"] {
                checks.not_run(name, "sev does not parse the report");
            }
        }
    }
    checks.record(
        "report_data",
        if r[off::REPORT_DATA..off::REPORT_DATA + 64] == expected[..] {
            Ok(what.to_string())
        } else {
            Err(format!("REPORT_DATA is not {what}, which is {}", hex(expected)))
        },
    );
    Some(summary)
}

/// A report whose REPORT_DATA the verifier fixes itself, with what it says of the launch:
/// the evidence of a live migration peer, which binds its session there rather than a
/// nonce and a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundReport {
    pub measurement: [u8; 48],
    pub policy: u64,
    pub summary: ReportSummary,
}

/// Check `report` and its `certificates` as [`examine`] does (chain, signature, version,
/// VMPL 0, VCEK, reserved bytes, chip id, TCB), with REPORT_DATA required to be
/// `expected_report_data`. The failed checks if any failed.
pub fn check_bound_report(
    certificates: &Certificates,
    report: &[u8],
    expected_report_data: &[u8; 64],
) -> Result<BoundReport, Vec<Check>> {
    let chain = check_chain(certificates);
    let mut checks = Checks(chain.checks.clone());
    let summary = check_report(&mut checks, chain.vcek.as_ref(), report, expected_report_data, "the session's");
    let failed: Vec<Check> = checks.0.into_iter().filter(|c| !c.passed).collect();
    match (summary, <&[u8; REPORT_SIZE]>::try_from(report)) {
        (Some(summary), Ok(r)) if failed.is_empty() => {
            let mut measurement = [0u8; 48];
            measurement.copy_from_slice(&r[off::MEASUREMENT..off::MEASUREMENT + 48]);
            let mut policy = [0u8; 8];
            policy.copy_from_slice(&r[off::POLICY..off::POLICY + 8]);
            Ok(BoundReport { measurement, policy: u64::from_le_bytes(policy), summary })
        }
        _ => Err(failed),
    }
}

/// Reserved bytes of each layout, outside the signature (SNP ABI ATTESTATION_REPORT).
fn reserved_ranges(version: u32) -> &'static [std::ops::Range<usize>] {
    const V2: [std::ops::Range<usize>; 5] = [0x04C..0x050, 0x188..0x1A0, 0x1EB..0x1EC, 0x1EF..0x1F0, 0x1F8..0x2A0];
    const V5: [std::ops::Range<usize>; 5] = [0x04C..0x050, 0x18B..0x1A0, 0x1EB..0x1EC, 0x1EF..0x1F0, 0x208..0x2A0];
    match version {
        2 => &V2,
        5 => &V5,
        _ => &off::RESERVED,
    }
}

fn reserved_zero(r: &[u8; REPORT_SIZE], version: u32) -> Result<String, String> {
    for range in reserved_ranges(version) {
        if let Some(i) = r[range.clone()].iter().position(|&b| b != 0) {
            return Err(format!("reserved byte {:#05x} is {:#04x}", range.start + i, r[range.start + i]));
        }
    }
    let key_info = le32(r, off::KEY_INFO);
    if key_info >> 5 != 0 {
        return Err(format!("key_info {key_info:#x} has reserved bits 31:5 set"));
    }
    Ok("all zero".into())
}

/// R and S use 48 of their 72 bytes; the rest of the signature area is reserved. `sev`
/// reads none of those bytes, so without this check they could be anything.
fn signature_encoding(r: &[u8; REPORT_SIZE]) -> Result<String, String> {
    let unused = [
        off::SIGNATURE_R + 48..off::SIGNATURE_R + off::SIGNATURE_COMPONENT,
        off::SIGNATURE_S + 48..off::SIGNATURE_S + off::SIGNATURE_COMPONENT,
        off::SIGNATURE_RESERVED..REPORT_SIZE,
    ];
    for range in unused {
        if let Some(i) = r[range.clone()].iter().position(|&b| b != 0) {
            return Err(format!(
                "byte {:#05x} of the signature area is {:#04x}, must be 0",
                range.start + i,
                r[range.start + i]
            ));
        }
    }
    Ok("R and S in 48 bytes each, padding zero".into())
}

/// `sev` hashes its own re-encoding of the report, not the bytes it was given; any byte
/// the re-encoding changes (reserved TCB bytes, for one) would escape the signature.
fn canonical(r: &[u8; REPORT_SIZE], parsed: &AttestationReport) -> Result<String, String> {
    let again = parsed.to_bytes().map_err(|e| format!("sev cannot re-encode it: {e}"))?;
    match r.iter().zip(again.iter()).position(|(a, b)| a != b) {
        None => Ok("sev parses it and re-encodes the same bytes".into()),
        Some(i) => {
            Err(format!("byte {i:#05x} is {:#04x} but sev re-encodes {:#04x} (a reserved bit?)", r[i], again[i]))
        }
    }
}

fn chip_id(vcek: &Certificate, r: &[u8; REPORT_SIZE]) -> Result<String, String> {
    let report_chip = &r[off::CHIP_ID..off::CHIP_ID + 64];
    match extension(vcek, HWID_OID) {
        None => Ok("the VCEK has no hwID extension to compare".into()),
        // AMD's VCEKs wrap the bytes in a DER OCTET STRING; older ones had them bare.
        Some(hwid) if abi::attest::hwid_names(hwid, report_chip) => Ok("matches the VCEK's hwID extension".into()),
        Some(hwid) => Err(format!("CHIP_ID differs from the VCEK's hwID {}", hex(hwid))),
    }
}

/// When the VCEK carries AMD's TCB extensions (AMD's do; ours do not), they must equal
/// REPORTED_TCB, the TCB the VCEK was derived for.
fn tcb_extensions(vcek: &Certificate, reported: &Tcb) -> Result<String, String> {
    let mut compared = Vec::new();
    for (field, oid) in TCB_EXTENSIONS {
        let oid = ObjectIdentifier::new(oid).map_err(|e| e.to_string())?;
        let Some(value) = extension(vcek, oid) else { continue };
        let cert_value = x509_cert::der::asn1::Uint::from_der(value)
            .ok()
            .and_then(|u| match u.as_bytes() {
                [] => Some(0),
                [v] => Some(*v),
                _ => None,
            })
            .ok_or_else(|| format!("VCEK {field} extension is not a small INTEGER"))?;
        let report_value = match field {
            "bootloader" => Some(reported.bootloader),
            "tee" => Some(reported.tee),
            "snp" => Some(reported.snp),
            "microcode" => Some(reported.microcode),
            _ => reported.fmc,
        };
        if report_value != Some(cert_value) {
            return Err(format!("VCEK {field} SVN {cert_value} differs from REPORTED_TCB ({report_value:?})"));
        }
        compared.push(field);
    }
    if compared.is_empty() {
        Ok("the VCEK has no TCB extensions to compare".into())
    } else {
        Ok(format!("REPORTED_TCB matches the VCEK's {}", compared.join(", ")))
    }
}

fn extension(cert: &Certificate, oid: ObjectIdentifier) -> Option<&[u8]> {
    let exts = cert.tbs_certificate.extensions.as_ref()?;
    exts.iter().find(|e| e.extn_id == oid).map(|e| e.extn_value.as_bytes())
}

fn le32(r: &[u8; REPORT_SIZE], at: usize) -> u32 {
    u32::from_le_bytes([r[at], r[at + 1], r[at + 2], r[at + 3]])
}

fn summarize(r: &[u8; REPORT_SIZE]) -> ReportSummary {
    let version = le32(r, off::VERSION);
    let has_cpuid = version >= 3;
    // TCB layout (sev `Generation`): Turin and later put FMC first.
    let turin_layout = if has_cpuid {
        r[off::CPUID_FAMILY] >= 0x1A
    } else {
        r[off::CHIP_ID + 8..off::CHIP_ID + 64].iter().all(|&b| b == 0)
    };
    let tcb = |at: usize| {
        let b = &r[at..at + 8];
        let raw = hex(b);
        if turin_layout {
            Tcb { fmc: Some(b[0]), bootloader: b[1], tee: b[2], snp: b[3], microcode: b[7], raw }
        } else {
            Tcb { fmc: None, bootloader: b[0], tee: b[1], snp: b[6], microcode: b[7], raw }
        }
    };
    let field = |at: usize, len: usize| hex(&r[at..at + len]);
    let policy = u64::from_le_bytes(r[off::POLICY..off::POLICY + 8].try_into().unwrap_or([0; 8]));
    let v = off::CURRENT_BUILD;
    ReportSummary {
        version,
        guest_svn: le32(r, off::GUEST_SVN),
        policy: format!("{policy:#x}"),
        vmpl: le32(r, off::VMPL),
        signature_algo: le32(r, off::SIGNATURE_ALGO),
        signing_key: (le32(r, off::KEY_INFO) >> 2) & 7,
        measurement: field(off::MEASUREMENT, 48),
        report_data: field(off::REPORT_DATA, 64),
        host_data: field(off::HOST_DATA, 32),
        chip_id: field(off::CHIP_ID, 64),
        family_id: field(off::FAMILY_ID, 16),
        image_id: field(off::IMAGE_ID, 16),
        report_id: field(off::REPORT_ID, 32),
        cpuid: has_cpuid.then(|| {
            format!("{:02x}/{:02x}/{:02x}", r[off::CPUID_FAMILY], r[off::CPUID_MODEL], r[off::CPUID_STEPPING])
        }),
        current_tcb: tcb(off::CURRENT_TCB),
        reported_tcb: tcb(off::REPORTED_TCB),
        committed_tcb: tcb(off::COMMITTED_TCB),
        launch_tcb: tcb(off::LAUNCH_TCB),
        current_version: format!("{}.{}.{}", r[v + 2], r[v + 1], r[v]),
    }
}

/// A certificate-table GUID (RFC byte order) as text.
fn uuid(g: &[u8; 16]) -> String {
    let h = hex(g);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed = self.checks.iter().filter(|c| !c.passed).count();
        if self.passed {
            writeln!(f, "Attestation verdict: PASS (all {} checks passed)", self.checks.len())?;
        } else {
            writeln!(f, "Attestation verdict: FAIL ({failed} of {} checks failed)", self.checks.len())?;
        }
        writeln!(f, "Root of trust: {}", self.root)?;
        writeln!(f)?;
        for c in &self.checks {
            writeln!(f, "  {}  {:<26} {}", if c.passed { "PASS" } else { "FAIL" }, c.name, c.detail)?;
        }
        if let Some(r) = &self.report {
            writeln!(f, "\nReport")?;
            writeln!(
                f,
                "  version {}, VMPL {}, guest SVN {}, policy {}, firmware {}{}",
                r.version,
                r.vmpl,
                r.guest_svn,
                r.policy,
                r.current_version,
                r.cpuid.as_ref().map(|c| format!(", CPUID {c}")).unwrap_or_default()
            )?;
            writeln!(f, "  measurement   {}", r.measurement)?;
            writeln!(f, "  report_data   {}", r.report_data)?;
            writeln!(f, "  host_data     {}", r.host_data)?;
            writeln!(f, "  chip_id       {}", r.chip_id)?;
            let t = &r.reported_tcb;
            let fmc = t.fmc.map(|v| format!("fmc {v}, ")).unwrap_or_default();
            writeln!(
                f,
                "  reported TCB  {fmc}bootloader {}, tee {}, snp {}, microcode {}",
                t.bootloader, t.tee, t.snp, t.microcode
            )?;
        }
        writeln!(f, "\nServices in the manifest")?;
        if self.services.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for s in &self.services {
            writeln!(f, "  {}  {:<6} {}", s.guid, s.name.unwrap_or("?"), s.summary)?;
        }
        if !self.hardware_rooted {
            writeln!(f, "\nThis evidence is NOT rooted in AMD hardware.")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sev::certs::snp::builtin::{genoa, milan, turin};

    fn der(cert: std::io::Result<SevCertificate>) -> Vec<u8> {
        cert.unwrap().to_der().unwrap()
    }

    #[test]
    fn amds_own_certificates_pass_our_certificate_checks() {
        for (generation, ark, ask) in [
            ("Milan", milan::ark(), milan::ask()),
            ("Genoa", genoa::ark(), genoa::ask()),
            ("Turin", turin::ark(), turin::ask()),
        ] {
            let (ark, ask) = (der(ark), der(ask));
            let ark = parse_certificate(&ark).unwrap_or_else(|e| panic!("{generation} ARK: {e}"));
            parse_certificate(&ask).unwrap_or_else(|e| panic!("{generation} ASK: {e}"));
            assert_eq!(amd_root(&ark), Some(generation));
        }
    }

    #[test]
    fn amd_ark_with_a_foreign_vcek_is_not_hardware_rooted() {
        let s = crate::testing::sample();
        let chain = check_chain(&Certificates::Der {
            ark: der(genoa::ark()),
            ask: der(genoa::ask()),
            vcek: s.vcek_der.clone(),
        });
        let failed: Vec<&str> = chain.checks().iter().filter(|c| !c.passed).map(|c| c.name).collect();
        assert_eq!(failed, ["certificates.chain"]);
        assert!(!chain.hardware_rooted);
        assert!(chain.root.contains("NOT rooted"));
    }

    #[test]
    fn the_test_authority_is_not_an_amd_root() {
        let a = crate::chain::TestAuthority::shared();
        assert_eq!(amd_root(&parse_certificate(a.ark_der()).unwrap()), None);
    }
}
