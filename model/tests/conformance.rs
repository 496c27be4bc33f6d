//! The whole conformance suite on the model: every case must pass.

use bulwark_model::conformance_env::run_case;
use conformance::{CASES, Verdict};

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
