//! Reports from the model's PSP verify with the `sev` crate (virtee) directly and with
//! Bulwark's verifier, and a changed byte of any part of the evidence is caught.

use attest::verify::{Certificates, Evidence, verify};
use bulwark_model::attest_demo::obtain;
use sev::certs::snp::{Chain, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

const NONCE: [u8; 64] = [0x3C; 64];

fn evidence() -> Evidence {
    let e = obtain(&NONCE).expect("the model serves an attestation call");
    Evidence {
        report: e.report,
        certificates: Certificates::Table(e.certificates),
        nonce: e.nonce,
        manifest: e.manifest,
        service: None,
    }
}

#[test]
fn the_sev_crate_verifies_the_models_chain_and_report() {
    let e = obtain(&NONCE).unwrap();
    let entries = attest::cert_table::decode(&e.certificates).unwrap();
    let der = |guid| attest::cert_table::find(&entries, guid).unwrap().to_vec();
    let chain = Chain::from_der(
        &der(&abi::attest::cert_table::ARK),
        &der(&abi::attest::cert_table::ASK),
        &der(&abi::attest::cert_table::VCEK),
    )
    .unwrap();
    let report = AttestationReport::from_bytes(&e.report).unwrap();
    (&chain, &report).verify().expect("sev verifies chain and report signature");
    assert_eq!(report.vmpl, 0);
    assert_eq!(&report.report_data[..], &attest::verify::expected_report_data(&NONCE, &e.manifest)[..]);
}

#[test]
fn bulwarks_verifier_accepts_the_models_evidence_and_says_it_is_not_amd() {
    let verdict = verify(&evidence()).unwrap_or_else(|r| panic!("{}", r.verdict));
    assert!(!verdict.hardware_rooted);
    assert!(verdict.to_string().contains("NOT rooted in AMD hardware"));
}

#[test]
fn a_changed_byte_of_report_nonce_or_manifest_is_rejected() {
    let good = evidence();
    for i in (0..good.report.len()).step_by(37) {
        let mut bad = good.clone();
        bad.report[i] ^= 0x01;
        assert!(verify(&bad).is_err(), "report byte {i:#x} changed and still accepted");
    }
    for i in 0..good.nonce.len() {
        let mut bad = good.clone();
        bad.nonce[i] ^= 0x80;
        assert!(verify(&bad).is_err(), "nonce byte {i} changed and still accepted");
    }
    for i in 0..good.manifest.len() {
        let mut bad = good.clone();
        bad.manifest[i] ^= 0x80;
        assert!(verify(&bad).is_err(), "manifest byte {i} changed and still accepted");
    }
}

#[test]
fn single_service_evidence_of_the_vtpm_verifies_as_its_ek_and_only_as_that() {
    let e = bulwark_model::attest_demo::obtain_single(&NONCE, abi::attest::VTPM_SERVICE_GUID)
        .expect("the model serves SVSM_ATTEST_SINGLE_SERVICE for the vTPM");
    // The data is the EK public area: the same bytes as the full manifest's vTPM entry.
    let full = attest::manifest::parse(&obtain(&NONCE).unwrap().manifest).unwrap();
    let guids: Vec<_> = full.iter().map(|s| s.guid).collect();
    assert_eq!(guids, [abi::attest::VTPM_SERVICE_GUID, abi::attest::VTPM_LINEAGE_GUID], "the EK and its lineage");
    assert_eq!(full[0].data, e.manifest);
    // The model's vTPM was manufactured there and no store keeps it: version 0, no parent.
    let lineage = attest::manifest::vtpm_lineage(&full).unwrap().unwrap();
    assert_eq!((lineage.version, lineage.parent(), lineage.kept), (0, None, false));
    let single = Evidence {
        report: e.report,
        certificates: Certificates::Table(e.certificates),
        nonce: e.nonce,
        manifest: e.manifest,
        service: Some(abi::attest::VTPM_SERVICE_GUID),
    };
    let verdict = verify(&single).expect("single-service evidence verifies");
    assert_eq!(verdict.services.len(), 1);
    assert_eq!(verdict.services[0].name, Some("vTPM"));
    // Read as a services manifest, the raw EK is refused.
    let rejected = verify(&Evidence { service: None, ..single }).unwrap_err();
    assert!(rejected.verdict.checks.iter().any(|c| c.name == "manifest" && !c.passed));
}

#[test]
fn a_host_that_stays_busy_past_the_retries_costs_the_channel_on_both_platforms() {
    use bulwark_model::attest_demo::obtain_from;
    use bulwark_model::conformance_env::ModelEnv;
    use bulwark_model::world::PlatformKind;
    use kernel::psp_channel::BUSY_RETRIES;
    for platform in [PlatformKind::Model, PlatformKind::Snp] {
        // Within the retries: the same message again, and a report.
        let mut env = ModelEnv::on(platform);
        env.world.machine.psp_fault = Some(conformance::PspFault::Busy(BUSY_RETRIES as u8));
        assert!(obtain_from(&mut env, b"busy").is_ok(), "{platform:?}: BUSY {BUSY_RETRIES} times is retried");
        assert!(obtain_from(&mut env, b"next").is_ok(), "{platform:?}: still in step");
        // Beyond them: no report, and the SVSM stops trusting the channel.
        let mut env = ModelEnv::on(platform);
        env.world.machine.psp_fault = Some(conformance::PspFault::Busy(BUSY_RETRIES as u8 + 1));
        assert!(obtain_from(&mut env, b"busy").is_err(), "{platform:?}");
        assert!(obtain_from(&mut env, b"next").is_err(), "{platform:?}: the key is retired");
    }
}
