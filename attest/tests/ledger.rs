//! The sealed state in signed evidence, and the verifier's ledger over it: rollback and
//! forks are refused, and the ledger file learns only from evidence that passed.

use bulwark_attest::ledger::{self, Ledger};
use bulwark_attest::manifest::{self, SealedState};
use bulwark_attest::testing::{sample, test_ek_public};
use bulwark_attest::verify::{Evidence, Verdict, examine};

const STORE: [u8; 16] = *b"store-of-one-svm";

fn state(generation: u64, root: u8) -> SealedState {
    SealedState { generation, store_id: STORE, root: [root; 32], failed: false, rewrapped: false }
}

fn check<'a>(v: &'a Verdict, name: &str) -> &'a bulwark_attest::Check {
    v.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no {name} check in {v}"))
}

/// Examine `evidence` and judge it against `ledger`: whether it passed.
fn judged(ledger: &mut Ledger, evidence: &Evidence) -> Verdict {
    let mut v = examine(evidence);
    ledger::judge(ledger, &mut v);
    v
}

#[test]
fn the_sealed_state_is_a_check_of_its_own() {
    let s = sample();
    let v = examine(&s.with_sealed_state(&state(5, 0xab)));
    assert!(v.passed, "{v}");
    assert_eq!(v.sealed_state, Some(state(5, 0xab)));
    let c = check(&v, "sealed_state");
    assert!(c.detail.starts_with("generation 5 of store 73746f72"), "{}", c.detail);
    assert_eq!(v.checks.last().map(|c| c.name), Some("sealed_state"));
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["sealed_state"]["generation"], 5);
    assert_eq!(json["sealed_state"]["store_id"], bulwark_attest::hex(&STORE));
    assert_eq!(json["sealed_state"]["failed"], false);
    assert_eq!(json["ledger"], serde_json::Value::Null);
    assert_eq!(v.services[1].name, Some("vTPM lineage"));
    assert_eq!(v.services[2].name, Some("sealed state"));

    // Without the entry (the sample's manifest names the vTPM alone) the check passes.
    let v = examine(&s.evidence);
    assert!(v.passed);
    assert!(check(&v, "sealed_state").detail.contains("keeps no sealed state"));
}

#[test]
fn a_closed_or_malformed_sealed_state_fails() {
    let s = sample();
    let v = examine(&s.with_sealed_state(&SealedState { failed: true, ..state(5, 0xab) }));
    let failed: Vec<&str> = v.checks.iter().filter(|c| !c.passed).map(|c| c.name).collect();
    assert_eq!(failed, ["sealed_state"]);
    assert!(check(&v, "sealed_state").detail.starts_with("CLOSED"), "{v}");
    assert_eq!(v.sealed_state.map(|s| s.failed), Some(true));

    let mut entry = manifest::encode_sealed_state(&state(5, 0xab));
    entry.pop();
    let m = manifest::encode(&[(abi::attest::SEALED_STATE_GUID, &entry)]).unwrap();
    let v = examine(&s.with_manifest(m));
    let failed: Vec<&str> = v.checks.iter().filter(|c| !c.passed).map(|c| c.name).collect();
    assert_eq!(failed, ["sealed_state"]);
    assert_eq!(v.sealed_state, None);
    let mut ledger = Ledger::default();
    assert!(!ledger::judge(&mut ledger, &mut v.clone()));
}

#[test]
fn single_service_evidence_for_the_sealed_state_carries_it() {
    let s = sample();
    let data = manifest::encode_sealed_state(&state(3, 1));
    let mut e = s.with_manifest(data);
    e.service = Some(abi::attest::SEALED_STATE_GUID);
    let v = examine(&e);
    assert!(v.passed, "{v}");
    assert_eq!(v.sealed_state, Some(state(3, 1)));
    // The vTPM's single-service evidence has none.
    let mut e = s.with_manifest(test_ek_public());
    e.service = Some(abi::attest::VTPM_SERVICE_GUID);
    assert_eq!(examine(&e).sealed_state, None);
}

#[test]
fn the_ledger_refuses_an_older_image_and_a_fork() {
    let s = sample();
    let mut ledger = Ledger::default();
    let outcome = |v: &Verdict| v.ledger.as_ref().and_then(|l| l.outcome);

    let v = judged(&mut ledger, &s.with_sealed_state(&state(5, 0x05)));
    assert!(v.passed, "{v}");
    assert_eq!(outcome(&v), Some("first_seen"));
    let last: Vec<&str> = v.checks.iter().rev().take(2).map(|c| c.name).collect();
    assert_eq!(last, ["vtpm_ledger", "state_ledger"], "the store's check, then the vTPM's");

    // The host presents an older whole image: an authentic state of generation 4.
    let v = judged(&mut ledger, &s.with_sealed_state(&state(4, 0x04)));
    assert!(!v.passed);
    assert_eq!(outcome(&v), Some("rollback"));
    assert!(check(&v, "state_ledger").detail.starts_with("ROLLBACK: generation 4"), "{v}");
    assert_eq!(v.ledger.as_ref().and_then(|l| l.previous_generation), Some(5));

    let v = judged(&mut ledger, &s.with_sealed_state(&state(6, 0x06)));
    assert!(v.passed, "{v}");
    assert_eq!(outcome(&v), Some("newer"));

    // A second branch from the generation-5 image also reaches generation 6.
    let v = judged(&mut ledger, &s.with_sealed_state(&state(6, 0x66)));
    assert!(!v.passed);
    assert_eq!(outcome(&v), Some("fork"));
    assert!(check(&v, "state_ledger").detail.starts_with("FORK"), "{v}");

    let v = judged(&mut ledger, &s.with_sealed_state(&state(6, 0x06)));
    assert!(v.passed);
    assert_eq!(outcome(&v), Some("same"));

    // Nothing to check is a refusal when a ledger was asked for.
    let v = judged(&mut ledger, &s.evidence);
    assert!(!v.passed);
    assert_eq!(outcome(&v), None);
    assert!(check(&v, "state_ledger").detail.contains("no sealed state"), "{v}");
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["ledger"]["accepted"], false);
    assert_eq!(json["ledger"]["outcome"], serde_json::Value::Null);
}

#[test]
fn the_ledger_file_learns_only_from_evidence_that_passed() {
    let s = sample();
    let dir = std::env::temp_dir().join(format!("bulwark-attest-ledger-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ledger.json");
    let _ = std::fs::remove_file(&path);
    let run = |evidence: &Evidence, policy: bool| {
        let mut v = examine(evidence);
        ledger::apply_file(&path, &mut v, policy).unwrap();
        v
    };

    let v = run(&s.with_sealed_state(&state(5, 0x05)), true);
    assert!(v.ledger.as_ref().is_some_and(|l| l.recorded), "{v}");
    assert_eq!(Ledger::load(&path).unwrap().get(&STORE).map(|s| s.generation), Some(5));

    // A newer state in evidence that fails another check, or that the caller's policy
    // refuses, or that says the sealed state closed: the file keeps generation 5.
    let mut bad = s.with_sealed_state(&state(7, 0x07));
    bad.nonce[0] ^= 1;
    for (evidence, policy) in [
        (bad, true),
        (s.with_sealed_state(&state(7, 0x07)), false),
        (s.with_sealed_state(&SealedState { failed: true, ..state(7, 0x07) }), true),
    ] {
        let v = run(&evidence, policy);
        assert!(v.ledger.as_ref().is_some_and(|l| l.accepted && !l.recorded), "{v}");
        assert_eq!(Ledger::load(&path).unwrap().get(&STORE).map(|s| s.generation), Some(5));
    }

    let v = run(&s.with_sealed_state(&state(4, 0x04)), true);
    assert!(!v.passed);
    let v = run(&s.with_sealed_state(&state(6, 0x06)), true);
    assert!(v.passed && v.ledger.as_ref().is_some_and(|l| l.recorded), "{v}");
    assert_eq!(Ledger::load(&path).unwrap().get(&STORE).map(|s| s.generation), Some(6));

    // A damaged ledger is an error, never a fresh start.
    std::fs::write(&path, "{").unwrap();
    let mut v = examine(&s.with_sealed_state(&state(1, 1)));
    assert!(ledger::apply_file(&path, &mut v, true).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

/// A VM instance bound to its store follows its vTPM to the store a live migration moved
/// it to (`migrated`), and only there: a blank store without such a move, or a copy of the
/// TPM moved from an older state, is still refused.
#[test]
fn an_instance_follows_its_vtpm_to_the_store_it_moved_to() {
    use bulwark_attest::ledger::Instance;
    use bulwark_attest::manifest::{Ancestor, VtpmLineage};
    let s = sample();
    let vm = Instance::new("vm-1", false).unwrap();
    let mut ledger = Ledger::default();
    let on = |store: u8, generation| SealedState { store_id: [store; 16], ..state(generation, store) };
    let home = VtpmLineage { version: 5, incarnation: [0x0a; 16], ancestors: vec![], kept: true };
    let judge = |ledger: &mut Ledger, lineage: &VtpmLineage, store: &SealedState| {
        let mut v = examine(&s.with_vtpm_and_state(Some(lineage), Some(store)));
        ledger::judge_instance(ledger, &mut v, &vm);
        let l = v.ledger.clone().unwrap();
        (v.passed, l.instance_outcome, l.vtpm_outcome)
    };
    assert_eq!(judge(&mut ledger, &home, &on(0xa1, 9)), (true, Some("first_seen"), Some("first_seen")));

    // Moved to a fresh store B at version 5.
    let there = VtpmLineage {
        version: 6,
        incarnation: [0x0b; 16],
        ancestors: vec![Ancestor { incarnation: [0x0a; 16], left_at: 5 }],
        kept: true,
    };
    assert_eq!(judge(&mut ledger, &there, &on(0xb2, 1)), (true, Some("migrated"), Some("moved")));
    assert_eq!(ledger.bound("vm-1"), Some([0xb2; 16]));
    assert_eq!(judge(&mut ledger, &there, &on(0xb2, 1)), (true, Some("same"), Some("same")));

    // A blank store C showing the TPM manufactured there again, or a second move from
    // store A's TPM: refused, the binding stays on B.
    let copy = VtpmLineage { incarnation: [0x0c; 16], ..there.clone() };
    assert_eq!(judge(&mut ledger, &copy, &on(0xc3, 1)), (false, Some("another_store"), Some("fork")));
    assert_eq!(judge(&mut ledger, &home, &on(0xc3, 1)), (false, Some("another_store"), Some("moved_away")));
    assert_eq!(ledger.bound("vm-1"), Some([0xb2; 16]));
}

/// The attestation chain against an old image of a store that makes a TPM anew (a blank
/// first-boot image, booted until its generation passes): the TPM's EK is new to the
/// ledger, so only the store's own chain value can refuse it, and does (`diverged`). The
/// honest store's next attestation, its chain going on, is taken.
#[test]
fn a_store_image_that_makes_a_new_tpm_is_refused_by_the_stores_chain() {
    use abi::attest::{ATTEST_CHAIN_GUID, SEALED_STATE_GUID, VTPM_LINEAGE_GUID, VTPM_SERVICE_GUID};
    use bulwark_attest::manifest::{AttestChain, VtpmLineage, encode_attest_chain, encode_vtpm_lineage};
    let s = sample();
    let evidence = |ek: &[u8], incarnation: u8, generation: u64, links: Vec<[u8; 32]>| {
        let lineage = VtpmLineage { version: 1, incarnation: [incarnation; 16], ancestors: vec![], kept: true };
        let (lineage, state) = (encode_vtpm_lineage(&lineage), manifest::encode_sealed_state(&state(generation, 9)));
        let chain = encode_attest_chain(&AttestChain { before: [0; 32], links });
        let m = manifest::encode(&[
            (VTPM_SERVICE_GUID, ek),
            (VTPM_LINEAGE_GUID, &lineage),
            (SEALED_STATE_GUID, &state),
            (ATTEST_CHAIN_GUID, &chain),
        ])
        .unwrap();
        s.with_manifest(m)
    };
    let outcome = |v: &Verdict| v.ledger.as_ref().and_then(|l| l.outcome);
    let mut ledger = Ledger::default();
    let honest = test_ek_public();
    let v = judged(&mut ledger, &evidence(&honest, 1, 5, vec![[1; 32]]));
    assert!(v.passed, "{v}");
    // The blank image's TPM: another EK, its own first link, a generation far ahead.
    let v = judged(&mut ledger, &evidence(b"another EK", 2, 50, vec![[7; 32]]));
    assert_eq!((v.passed, outcome(&v)), (false, Some("diverged")), "{v}");
    // The honest store goes on: its chain passes through the value accepted.
    let v = judged(&mut ledger, &evidence(&honest, 1, 6, vec![[1; 32], [2; 32]]));
    assert_eq!((v.passed, outcome(&v)), (true, Some("newer")), "{v}");
}

/// A verifier that missed more attestations than the chain shows finds its value folded
/// away: `diverged`, until the relying party accepts the chain anew
/// (`Acceptance::new_chain`, `--accept-new-chain`). Then the shown chain is kept and the
/// store's next attestations pass as before; an older generation stays a rollback, and
/// evidence without a chain is not taken in place of one.
#[test]
fn a_chain_the_verifier_lost_sight_of_is_taken_anew_only_when_asked() {
    use abi::attest::{ATTEST_CHAIN_GUID, SEALED_STATE_GUID};
    use bulwark_attest::manifest::{AttestChain, encode_attest_chain};
    let s = sample();
    let evidence = |generation: u64, before: [u8; 32], links: Vec<[u8; 32]>| {
        let state = manifest::encode_sealed_state(&state(generation, 9));
        let chain = encode_attest_chain(&AttestChain { before, links });
        s.with_manifest(manifest::encode(&[(SEALED_STATE_GUID, &state), (ATTEST_CHAIN_GUID, &chain)]).unwrap())
    };
    let outcome = |v: &Verdict| v.ledger.as_ref().and_then(|l| l.outcome);
    let again = ledger::Acceptance { new_chain: true };
    let judged_with = |ledger: &mut Ledger, evidence: &Evidence, acceptance| {
        let mut v = examine(evidence);
        ledger::judge_accepting(ledger, &mut v, acceptance);
        v
    };
    let mut ledger = Ledger::default();
    assert!(judged(&mut ledger, &evidence(5, [0; 32], vec![[1; 32]])).passed);
    // Sixteen attestations later (to other relying parties), the value it kept is folded
    // into `before`: the chain cannot show it.
    let moved_on = evidence(30, [0xEE; 32], (2..18u8).map(|i| [i; 32]).collect());
    let v = judged(&mut ledger, &moved_on);
    assert_eq!((v.passed, outcome(&v)), (false, Some("diverged")), "{v}");
    assert!(format!("{v}").contains("--accept-new-chain"), "the refusal names the way out: {v}");
    // Asked to, it takes the chain anew; an older generation is still a rollback, and a
    // state that shows no chain is not taken.
    let v = judged_with(&mut ledger, &evidence(4, [0xEE; 32], vec![[3; 32]]), again);
    assert_eq!((v.passed, outcome(&v)), (false, Some("rollback")), "{v}");
    let no_chain = s.with_manifest(
        manifest::encode(&[(SEALED_STATE_GUID, &manifest::encode_sealed_state(&state(31, 9)))]).unwrap(),
    );
    let v = judged_with(&mut ledger, &no_chain, again);
    assert_eq!((v.passed, outcome(&v)), (false, Some("diverged")), "{v}");
    let v = judged_with(&mut ledger, &moved_on, again);
    assert_eq!((v.passed, outcome(&v)), (true, Some("rebased")), "{v}");
    // From now on the shown chain is the one it follows: the store's next attestation
    // passes without asking, an image from before the rebase does not.
    let mut next: Vec<[u8; 32]> = (3..18u8).map(|i| [i; 32]).collect();
    next.push([18; 32]);
    let before = AttestChain { before: [0xEE; 32], links: vec![[2; 32]] }.value();
    let v = judged(&mut ledger, &evidence(31, before, next));
    assert_eq!((v.passed, outcome(&v)), (true, Some("newer")), "{v}");
    let v = judged(&mut ledger, &evidence(32, [0; 32], vec![[1; 32], [0x42; 32]]));
    assert_eq!((v.passed, outcome(&v)), (false, Some("diverged")), "{v}");
}
