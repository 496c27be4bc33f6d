//! Fuzz the host-side verifier: evidence from an SVSM and a host that may both lie
//! (report, certificate table or DER chain, nonce, manifest, a sealed-state entry).
//! `examine` and the parsers must answer with a verdict or an error, never panic.
#![no_main]

use bulwark_attest::verify::{Certificates, Evidence, examine};
use bulwark_attest::{cert_table, manifest};

#[path = "pieces.rs"]
mod pieces;
use pieces::piece;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let der = data.first().is_some_and(|b| b & 1 == 1);
    let report = piece(&mut data).to_vec();
    let certificates = if der {
        let (ark, ask, vcek) = (piece(&mut data).to_vec(), piece(&mut data).to_vec(), piece(&mut data).to_vec());
        Certificates::Der { ark, ask, vcek }
    } else {
        let table = piece(&mut data).to_vec();
        let _ = cert_table::decode(&table);
        Certificates::Table(table)
    };
    let nonce = piece(&mut data).to_vec();
    let manifest = data.to_vec();
    let _ = manifest::parse(&manifest);
    let _ = manifest::parse_sealed_state(&manifest);
    let _ = manifest::parse_vtpm_lineage(&manifest);
    let _ = manifest::parse_attest_chain(&manifest);
    let service = match manifest.len() % 6 {
        0 | 3 => Some(bulwark_abi::attest::VTPM_SERVICE_GUID),
        1 => Some(bulwark_abi::attest::SEALED_STATE_GUID),
        2 => Some(bulwark_abi::attest::VTPM_LINEAGE_GUID),
        _ => None,
    };
    let mut verdict = examine(&Evidence { report, certificates, nonce, manifest, service });
    // The ledger's judgement of whatever parsed, against an empty ledger and against one
    // that has seen it: never a panic.
    let mut ledger = bulwark_attest::ledger::Ledger::default();
    bulwark_attest::ledger::judge(&mut ledger, &mut verdict.clone());
    bulwark_attest::ledger::judge(&mut ledger, &mut verdict);
});
