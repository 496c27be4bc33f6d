//! Hostile input never panics the parsers or the verifier; errors come back as values.

use bulwark_attest::verify::{Certificates, Evidence, examine};
use bulwark_attest::{cert_table, manifest};
use proptest::prelude::*;

fn guid() -> impl Strategy<Value = [u8; 16]> {
    any::<[u8; 16]>().prop_filter("the zero GUID ends the table", |g| *g != [0; 16])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn cert_table_decode_never_panics(blob in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = cert_table::decode(&blob);
    }

    #[test]
    fn cert_table_round_trips(entries in proptest::collection::vec((guid(), proptest::collection::vec(any::<u8>(), 1..64)), 0..5)) {
        let mut seen = std::collections::HashSet::new();
        let entries: Vec<_> = entries.into_iter().filter(|(g, _)| seen.insert(*g)).collect();
        let refs: Vec<(&[u8; 16], &[u8])> = entries.iter().map(|(g, d)| (g, d.as_slice())).collect();
        let blob = cert_table::encode(&refs).unwrap();
        let back = cert_table::decode(&blob).unwrap();
        prop_assert_eq!(back.len(), entries.len());
        for (e, (g, d)) in back.iter().zip(&entries) {
            prop_assert_eq!(&e.guid, g);
            prop_assert_eq!(&e.data, d);
        }
    }

    /// A valid table with a few bytes overwritten: either still a table whose entries
    /// lie inside the blob, or an error.
    #[test]
    fn mutated_cert_table_is_an_error_or_in_bounds(edits in proptest::collection::vec((0usize..200, any::<u8>()), 1..6)) {
        let mut blob = cert_table::encode(&[
            (&abi::attest::cert_table::ARK, &[1u8; 40][..]),
            (&abi::attest::cert_table::ASK, &[2u8; 30][..]),
            (&abi::attest::cert_table::VCEK, &[3u8; 20][..]),
        ]).unwrap();
        for (at, v) in edits {
            let at = at % blob.len();
            blob[at] = v;
        }
        if let Ok(entries) = cert_table::decode(&blob) {
            let total: usize = entries.iter().map(|e| e.data.len()).sum();
            prop_assert!(total <= blob.len());
        }
    }

    #[test]
    fn manifest_parse_never_panics(mut blob in proptest::collection::vec(any::<u8>(), 0..300), fix_header in any::<bool>()) {
        if fix_header && blob.len() >= 24 {
            // Get past the GUID and length checks so the entry checks see the input.
            blob[..16].copy_from_slice(&abi::attest::SERVICES_MANIFEST_GUID.0);
            let len = blob.len() as u32;
            blob[16..20].copy_from_slice(&len.to_le_bytes());
        }
        let _ = manifest::parse(&blob);
    }

    #[test]
    fn sealed_state_parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..130)) {
        let parsed = manifest::parse_sealed_state(&data);
        prop_assert!(parsed.is_err() || data.len() == 64);
    }

    /// A valid ledger file with a few bytes overwritten: a ledger or an error.
    #[test]
    fn mutated_ledger_file_never_panics(edits in proptest::collection::vec((0usize..200, any::<u8>()), 1..6)) {
        let mut ledger = bulwark_attest::ledger::Ledger::default();
        let state = manifest::SealedState { generation: 7, store_id: [1; 16], root: [2; 32], failed: false, rewrapped: false };
        ledger.apply(&state);
        let mut text = ledger.to_json().into_bytes();
        for (at, v) in edits {
            let at = at % text.len();
            text[at] = v;
        }
        let _ = bulwark_attest::ledger::Ledger::from_json(&String::from_utf8_lossy(&text));
    }

    #[test]
    fn examine_never_panics(
        report in proptest::collection::vec(any::<u8>(), 0x49E..0x4A2),
        certs in proptest::collection::vec(any::<u8>(), 0..200),
        nonce in proptest::collection::vec(any::<u8>(), 0..80),
        manifest in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let v = examine(&Evidence { report, certificates: Certificates::Table(certs), nonce, manifest, service: None });
        prop_assert!(!v.passed);
        prop_assert!(!v.hardware_rooted);
    }
}
