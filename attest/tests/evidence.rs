//! Issue 4: reports verify with `bulwark attest verify`'s verifier and with the `sev`
//! crate, and what `sev` lets through, ours does not.

use bulwark_attest::chain::TestAuthority;
use bulwark_attest::testing::{ReportFields, sample, sign_in_place};
use bulwark_attest::verify::{Certificates, Evidence, examine, verify};
use bulwark_attest::{cert_table, manifest};
use sev::certs::snp::{Certificate, Chain, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::{CertTableEntry, CertType};
use sev::parser::ByteParser;

/// What `sev` 8 says about a report under the sample chain.
fn sev_accepts(report: &[u8]) -> bool {
    let s = sample();
    let chain = Chain::from_der(s.authority.ark_der(), s.authority.ask_der(), &s.vcek_der).unwrap();
    AttestationReport::from_bytes(report).and_then(|r| (&chain, &r).verify()).is_ok()
}

/// The names of the checks that failed.
fn failures(e: &Evidence) -> Vec<&'static str> {
    examine(e).checks.iter().filter(|c| !c.passed).map(|c| c.name).collect()
}

#[test]
fn sample_evidence_verifies_with_sev_and_with_ours() {
    let s = sample();
    assert!(sev_accepts(&s.evidence.report));
    let verdict = verify(&s.evidence).unwrap_or_else(|r| panic!("{}", r.verdict));
    assert!(!verdict.hardware_rooted);
    assert_eq!(verdict.services.len(), 1);
    assert_eq!(verdict.services[0].name, Some("vTPM"));
    let der = Evidence { certificates: s.der_certificates(), ..s.evidence.clone() };
    assert!(verify(&der).is_ok());
}

#[test]
fn sev_reads_our_certificate_table_and_we_read_sevs() {
    let s = sample();
    let Certificates::Table(table) = &s.evidence.certificates else { unreachable!() };
    let entries = CertTableEntry::vec_bytes_to_cert_table(&mut table.clone()).unwrap();
    let chain = Chain::from_cert_table_der(entries).unwrap();
    let report = AttestationReport::from_bytes(&s.evidence.report).unwrap();
    (&chain, &report).verify().unwrap();

    let theirs = CertTableEntry::cert_table_to_vec_bytes(&[
        CertTableEntry::new(CertType::ARK, s.authority.ark_der().to_vec()),
        CertTableEntry::new(CertType::ASK, s.authority.ask_der().to_vec()),
        CertTableEntry::new(CertType::VCEK, s.vcek_der.clone()),
    ])
    .unwrap();
    let e = Evidence { certificates: Certificates::Table(theirs), ..s.evidence.clone() };
    assert!(verify(&e).is_ok(), "{}", examine(&e));
}

#[test]
fn sev_blind_spots_are_closed() {
    // Bytes sev never reads or normalises away: a reserved TCB byte (Genoa layout),
    // byte 60 of R, the signature's reserved tail.
    let e = &sample().evidence;
    let cases: [(usize, &[&str]); 3] = [
        (0x3C, &["report.canonical"]),
        (0x2A0 + 60, &["report.signature_encoding"]),
        (0x400, &["report.signature_encoding", "report.canonical"]),
    ];
    for (at, checks) in cases {
        let mut report = e.report.clone();
        report[at] ^= 0x40;
        assert!(sev_accepts(&report), "sev started checking byte {at:#x}; update the crate doc");
        let x = Evidence { report, ..e.clone() };
        assert_eq!(failures(&x), checks, "byte {at:#x}");
    }
}

#[test]
fn report_for_vmpl_1_is_rejected_though_sev_accepts_it() {
    let s = sample();
    let e = s.with_fields(&ReportFields { vmpl: 1, ..s.fields.clone() });
    assert!(sev_accepts(&e.report));
    assert_eq!(failures(&e), vec!["report.vmpl"]);
    let rejected = verify(&e).unwrap_err();
    assert!(rejected.to_string().contains("report.vmpl"));
}

#[test]
fn report_not_signed_by_a_vcek_is_rejected() {
    let s = sample();
    for key_info in [1 << 2, 7 << 2] {
        let e = s.with_fields(&ReportFields { key_info, ..s.fields.clone() });
        assert_eq!(failures(&e), vec!["report.signing_key"], "key_info {key_info:#x}");
    }
    let e = s.with_fields(&ReportFields { key_info: 1 << 5, ..s.fields.clone() });
    assert_eq!(failures(&e), vec!["report.reserved"]);
}

#[test]
fn signed_nonzero_reserved_bytes_are_rejected() {
    let s = sample();
    for at in [0x4C, 0x18B, 0x1EB, 0x1EF, 0x1F8, 0x29F, 0x3C] {
        let mut report: [u8; 0x4A0] = s.evidence.report.clone().try_into().unwrap();
        report[at] = 0x5A;
        sign_in_place(&mut report, &s.vcek_key);
        let e = Evidence { report: report.to_vec(), ..s.evidence.clone() };
        assert!(!examine(&e).passed, "reserved byte {at:#x}");
    }
}

#[test]
fn versions_2_and_5_verify_and_version_4_does_not() {
    let s = sample();
    let v2 = s.with_fields(&ReportFields { version: 2, cpuid: [0; 3], ..s.fields.clone() });
    assert!(sev_accepts(&v2.report));
    assert!(verify(&v2).is_ok(), "{}", examine(&v2));
    let mut v5 = s.with_fields(&ReportFields { version: 5, ..s.fields.clone() });
    let mut report: [u8; 0x4A0] = v5.report.clone().try_into().unwrap();
    report[0x1F8] = 3; // LAUNCH_MIT_VECTOR
    report[0x200] = 3; // CURRENT_MIT_VECTOR
    sign_in_place(&mut report, &s.vcek_key);
    v5.report = report.to_vec();
    assert!(sev_accepts(&v5.report));
    assert!(verify(&v5).is_ok(), "{}", examine(&v5));
    let v4 = s.with_fields(&ReportFields { version: 4, ..s.fields.clone() });
    assert_eq!(failures(&v4), vec!["report.version"]);
}

#[test]
fn unknown_processor_and_signature_algorithm_are_rejected() {
    let s = sample();
    let e = s.with_fields(&ReportFields { cpuid: [0x19, 0x30, 0], ..s.fields.clone() });
    assert_eq!(failures(&e), vec!["report.canonical", "report.signature", "report.chip_id", "report.tcb"]);
    let e = s.with_fields(&ReportFields { signature_algo: 2, ..s.fields.clone() });
    assert_eq!(failures(&e), vec!["report.signature_algo"]);
}

#[test]
fn report_signed_by_another_key_is_rejected() {
    let s = sample();
    let other = p384::ecdsa::SigningKey::from_slice(&[7; 48]).unwrap();
    let mut report: [u8; 0x4A0] = s.evidence.report.clone().try_into().unwrap();
    sign_in_place(&mut report, &other);
    let e = Evidence { report: report.to_vec(), ..s.evidence.clone() };
    assert_eq!(failures(&e), vec!["report.signature"]);
}

#[test]
fn vcek_for_another_chip_is_rejected() {
    let s = sample();
    let sec1 = s.vcek_key.verifying_key().to_encoded_point(false);
    let vcek = s.authority.issue_vcek(sec1.as_bytes(), &[0x77; 64]).unwrap();
    let e = Evidence {
        certificates: Certificates::Der {
            ark: s.authority.ark_der().to_vec(),
            ask: s.authority.ask_der().to_vec(),
            vcek,
        },
        ..s.evidence.clone()
    };
    assert_eq!(failures(&e), vec!["report.chip_id"]);
}

#[test]
fn stale_nonce_and_other_manifest_are_rejected() {
    let s = sample();
    let e = Evidence { nonce: vec![0; 64], ..s.evidence.clone() };
    assert_eq!(failures(&e), vec!["report_data"]);
    let e = Evidence { manifest: manifest::encode(&[]).unwrap(), ..s.evidence.clone() };
    assert_eq!(failures(&e), vec!["report_data"]);
    let e = Evidence { manifest: vec![1, 2, 3], ..s.evidence.clone() };
    assert_eq!(failures(&e), vec!["report_data", "manifest", "vtpm_lineage", "attest_chain", "sealed_state"]);
}

#[test]
fn wrong_size_report_fails_every_report_check_without_panicking() {
    let s = sample();
    for len in [0, 0x49F, 0x4A1] {
        let mut report = s.evidence.report.clone();
        report.resize(len, 0);
        let v = examine(&Evidence { report, ..s.evidence.clone() });
        assert!(!v.passed);
        assert!(v.report.is_none());
        assert!(v.checks.iter().filter(|c| c.name.starts_with("report")).all(|c| !c.passed));
    }
}

#[test]
fn table_without_vcek_or_with_a_vlek() {
    let s = sample();
    let a = s.authority;
    let table = cert_table::encode(&[
        (&abi::attest::cert_table::ARK, a.ark_der()),
        (&abi::attest::cert_table::ASK, a.ask_der()),
    ])
    .unwrap();
    let e = Evidence { certificates: Certificates::Table(table), ..s.evidence.clone() };
    let f = failures(&e);
    assert_eq!(f[..2], ["certificates.table", "certificates.encoding"]);
    assert!(f.contains(&"report.signature"));
    let table = cert_table::encode(&[
        (&abi::attest::cert_table::ARK, a.ark_der()),
        (&abi::attest::cert_table::ASK, a.ask_der()),
        (&abi::attest::cert_table::VCEK, &s.vcek_der),
        (&cert_table::VLEK, b"not a certificate"),
    ])
    .unwrap();
    let e = Evidence { certificates: Certificates::Table(table), ..s.evidence.clone() };
    let v = verify(&e).unwrap();
    assert!(v.checks[0].detail.contains("ignored VLEK"), "{}", v.checks[0].detail);
}

#[test]
fn swapped_ark_and_ask_are_rejected() {
    let s = sample();
    let e = Evidence {
        certificates: Certificates::Der {
            ark: s.authority.ask_der().to_vec(),
            ask: s.authority.ark_der().to_vec(),
            vcek: s.vcek_der.clone(),
        },
        ..s.evidence.clone()
    };
    let v = examine(&e);
    assert!(failures(&e).contains(&"certificates.chain"));
    assert!(v.root.contains("NOT rooted in AMD hardware"));
}

#[test]
fn chain_from_another_authority_is_rejected() {
    // A second authority with the same names but the keys swapped: the names say
    // nothing, the signatures decide.
    use rsa::pkcs8::DecodePrivateKey;
    let key = |pem| rsa::RsaPrivateKey::from_pkcs8_pem(pem).unwrap();
    let other =
        TestAuthority::from_keys(key(bulwark_attest::chain::ASK_KEY_PEM), key(bulwark_attest::chain::ARK_KEY_PEM))
            .unwrap();
    let s = sample();
    let e = Evidence {
        certificates: Certificates::Der {
            ark: other.ark_der().to_vec(),
            ask: other.ask_der().to_vec(),
            vcek: s.vcek_der.clone(),
        },
        ..s.evidence.clone()
    };
    assert_eq!(failures(&e), vec!["certificates.chain"]);
}

#[test]
fn verdict_says_not_hardware_rooted_in_text_and_json() {
    let v = examine(&sample().evidence);
    let text = v.to_string();
    assert!(text.contains("Attestation verdict: PASS"), "{text}");
    assert!(text.contains("NOT rooted in AMD hardware (emulated platform)"), "{text}");
    let json: serde_json::Value = serde_json::to_value(&v).unwrap();
    assert_eq!(json["passed"], true);
    assert_eq!(json["hardware_rooted"], false);
    assert_eq!(json["report"]["vmpl"], 0);
    assert_eq!(json["report"]["version"], 3);
    assert_eq!(json["services"][0]["name"], "vTPM");
    let names: Vec<&str> = json["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 21);
    assert!(names.contains(&"report.signature") && names.contains(&"certificates.chain"));
}

#[test]
fn issue_vcek_refuses_a_key_that_is_not_an_uncompressed_p384_point() {
    let a = TestAuthority::shared();
    let chip = [1; 64];
    assert!(a.issue_vcek(&[4; 97], &chip).is_err());
    let key = sample().vcek_key.verifying_key().to_encoded_point(true);
    assert!(a.issue_vcek(key.as_bytes(), &chip).is_err());
    assert!(a.issue_vcek(&[], &chip).is_err());
}

#[test]
fn test_certificates_are_marked_not_amd() {
    let a = TestAuthority::shared();
    for der in [a.ark_der(), a.ask_der(), &sample().vcek_der] {
        let cert = Certificate::from_der(der).unwrap();
        let x: x509_cert::Certificate = cert.into();
        assert!(x.tbs_certificate.subject.to_string().contains("NOT AMD"));
        assert!(x.tbs_certificate.issuer.to_string().contains("NOT AMD"));
    }
}
