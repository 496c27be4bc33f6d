//! `bulwark conformance` as a user runs it: on every platform, JSON that says which, and
//! a usage error for a platform it does not know.

use std::process::Command;

fn bulwark(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bulwark")).args(args).output().expect("bulwark runs")
}

#[test]
fn the_suite_passes_on_every_platform_and_says_which() {
    for platform in ["model", "snp", "svm"] {
        let out = bulwark(&["conformance", "--platform", platform, "--json", "--filter", "6.3/"]);
        assert!(out.status.success(), "{platform}: {}", String::from_utf8_lossy(&out.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(doc["platform"], platform);
        assert_eq!(doc["summary"]["failed"], 0);
        assert!(doc["summary"]["passed"].as_u64().unwrap_or(0) >= 3, "{platform}: {}", doc["summary"]);
    }
}

#[test]
fn an_unknown_platform_is_a_usage_error() {
    let out = bulwark(&["conformance", "--platform", "tdx"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--platform takes model, snp or svm, not `tdx`"));
}
