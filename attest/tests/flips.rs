//! Issue 4, "Must show": changing any byte of report, certificates, nonce or manifest is
//! detected. Each test flips one byte at a time and expects the verdict to fail.
//!
//! The chain is checked once and reused for report, nonce and manifest flips (those
//! cannot change it); certificate flips run the whole verifier.

use bulwark_attest::testing::sample;
use bulwark_attest::verify::{Certificates, Evidence, check_chain, examine, examine_with_chain};
use std::time::Instant;

fn flipped(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[at] ^= 0x01;
    v
}

/// Flip bit 0 of each selected byte of the part `pick` chooses; every flip must fail.
fn every_flip_fails(
    what: &str,
    len: usize,
    step: usize,
    make: impl Fn(usize) -> Evidence,
    judge: impl Fn(&Evidence) -> bool,
) {
    let started = Instant::now();
    let mut survivors = Vec::new();
    for at in (0..len).step_by(step) {
        if judge(&make(at)) {
            survivors.push(at);
        }
    }
    eprintln!("{what}: {} flips in {:?}", len.div_ceil(step), started.elapsed());
    assert!(survivors.is_empty(), "{what}: flipping byte(s) {survivors:x?} went undetected");
}

#[test]
fn the_sample_evidence_passes() {
    let v = examine(&sample().evidence);
    assert!(v.passed, "{v}");
}

#[test]
fn every_report_byte_is_covered() {
    let s = sample();
    let chain = check_chain(&s.evidence.certificates);
    assert!(chain.passed());
    let e = &s.evidence;
    every_flip_fails(
        "report",
        e.report.len(),
        1,
        |at| Evidence { report: flipped(&e.report, at), ..e.clone() },
        |x| examine_with_chain(&chain, x).passed,
    );
}

#[test]
fn every_nonce_and_manifest_byte_is_covered() {
    let s = sample();
    let chain = check_chain(&s.evidence.certificates);
    let e = &s.evidence;
    every_flip_fails(
        "nonce",
        e.nonce.len(),
        1,
        |at| Evidence { nonce: flipped(&e.nonce, at), ..e.clone() },
        |x| examine_with_chain(&chain, x).passed,
    );
    every_flip_fails(
        "manifest",
        e.manifest.len(),
        1,
        |at| Evidence { manifest: flipped(&e.manifest, at), ..e.clone() },
        |x| examine_with_chain(&chain, x).passed,
    );
}

#[test]
fn every_seventh_certificate_table_byte_is_covered() {
    let e = &sample().evidence;
    let Certificates::Table(table) = &e.certificates else { panic!("the sample carries a table") };
    // The 96-byte table itself byte by byte, then every 7th byte of the certificates.
    let header = 4 * abi::attest::cert_table::ENTRY_LEN;
    let with = |at| Evidence { certificates: Certificates::Table(flipped(table, at)), ..e.clone() };
    every_flip_fails("certificate table entries", header, 1, with, |x| examine(x).passed);
    every_flip_fails("certificates", table.len() - header, 7, |at| with(header + at), |x| examine(x).passed);
}

#[test]
fn every_seventh_byte_of_separate_certificate_files_is_covered() {
    let s = sample();
    let Certificates::Der { ark, ask, vcek } = s.der_certificates() else { unreachable!() };
    let e = Evidence { certificates: s.der_certificates(), ..s.evidence.clone() };
    assert!(examine(&e).passed);
    // The table test already covers every 7th byte of the same certificates; this one
    // shows the separate-files path is as strict, at other positions (every 29th, from 3).
    let pick = |which: usize, at: usize| {
        let (mut a, mut k, mut v) = (ark.clone(), ask.clone(), vcek.clone());
        [&mut a, &mut k, &mut v][which][at] ^= 0x80;
        Evidence { certificates: Certificates::Der { ark: a, ask: k, vcek: v }, ..e.clone() }
    };
    for (which, len) in [(0, ark.len()), (1, ask.len()), (2, vcek.len())] {
        every_flip_fails(["ARK", "ASK", "VCEK"][which], len - 3, 29, |at| pick(which, at + 3), |x| examine(x).passed);
    }
}
