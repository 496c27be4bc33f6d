//! The whole conformance suite on the model: every case must pass.

use bulwark_model::conformance_env::run_case;
use conformance::{CASES, Verdict};

/// SVSM code runs with the bare-metal heap's limit (`bulwark_model::heap`).
#[global_allocator]
static HEAP: bulwark_model::heap::CountingHeap = bulwark_model::heap::CountingHeap;

#[test]
fn every_conformance_case_passes_on_the_model() {
    let mut failures = Vec::new();
    for case in CASES {
        match run_case(case).0 {
            Verdict::Pass => {}
            Verdict::Skip(why) => failures.push(format!("{}: skipped on the model ({why})", case.name)),
            Verdict::Fail(why) => failures.push(format!("{}: {why}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

/// The same suite with the kernel served by the snp platform (`bulwark-snp`) over the
/// model's RMP and its software host: everything above the instructions, on every case.
/// SNP fixes vTOM at launch, so the vTOM cases must skip; the log-overflow case skips
/// because the snp platform's log ring is larger than the case is willing to fill.
#[test]
fn every_conformance_case_passes_on_the_snp_platform() {
    use bulwark_model::conformance_env::run_case_on;
    use bulwark_model::world::PlatformKind;
    const EXPECTED_SKIPS: [&str; 4] = ["6.8/vtom-query", "6.8/vtom-configure", "6.8/vtom-refusals", "ocp/log-overflow"];
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    for case in CASES {
        match run_case_on(case, PlatformKind::Snp).0 {
            Verdict::Pass => {}
            Verdict::Skip(_) if EXPECTED_SKIPS.contains(&case.name) => skipped.push(case.name),
            Verdict::Skip(why) => failures.push(format!("{}: skipped on snp ({why})", case.name)),
            Verdict::Fail(why) => failures.push(format!("{}: {why}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
    assert_eq!(skipped, EXPECTED_SKIPS, "the expected skips, and only those");
}
