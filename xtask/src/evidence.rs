//! The test guest's attestation evidence (`EVIDENCE <what> <hex>` lines): collected from
//! the run, saved as the files a verifier reads, and verified with `bulwark-attest` (the
//! `sev` crate's checks and Bulwark's own), with a boot's state disk also against the
//! ledger of sealed states beside it (`bulwark attest verify --state-ledger`).

use attest::ledger::{self, LedgerVerdict};
use attest::verify::{Certificates, Evidence, Verdict, examine};
use std::path::Path;

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string())).collect()
}

/// The evidence the guest printed, if it printed any.
pub fn collect(guest_lines: &[String]) -> Result<Option<Evidence>, String> {
    let field = |what: &str| -> Result<Option<Vec<u8>>, String> {
        let prefix = format!("EVIDENCE {what}");
        match guest_lines.iter().find(|l| l.starts_with(&prefix)) {
            Some(line) => unhex(line[prefix.len()..].trim()).map(Some).map_err(|e| format!("EVIDENCE {what}: {e}")),
            None => Ok(None),
        }
    };
    let Some(report) = field("report")? else { return Ok(None) };
    Ok(Some(Evidence {
        report,
        certificates: Certificates::Table(field("certificates")?.unwrap_or_default()),
        nonce: field("nonce")?.unwrap_or_default(),
        manifest: field("manifest")?.unwrap_or_default(),
        service: None,
    }))
}

/// Write report, certificates, nonce and manifest as files in `dir` (what `bulwark attest
/// verify` reads).
pub fn save(evidence: &Evidence, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let table = match &evidence.certificates {
        Certificates::Table(t) => t.clone(),
        Certificates::Der { .. } => return Err("expected a certificate table".into()),
    };
    for (name, bytes) in [
        ("report.bin", &evidence.report),
        ("certificates.bin", &table),
        ("nonce.bin", &evidence.nonce),
        ("manifest.bin", &evidence.manifest),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Verify, with `ledger` (a ledger file) also the sealed state against it: the verdict
/// either way. The ledger file learns a new state only when every check passed; an
/// unreadable or unwritable ledger is an error. `new_chain` accepts an attestation chain
/// that moved on without the ledger (never an older generation), as `bulwark attest
/// verify --accept-new-chain` does.
pub fn check(evidence: &Evidence, ledger: Option<&Path>, new_chain: bool) -> Result<Verdict, String> {
    let mut verdict = examine(evidence);
    if let Some(path) = ledger {
        ledger::apply_file_for(path, &mut verdict, true, None, ledger::Acceptance { new_chain })?;
    }
    Ok(verdict)
}

/// The ledger's outcome in words, for the boot's step line (`None` without a ledger).
pub fn ledger_outcome(verdict: &Verdict, path: &Path) -> Option<String> {
    let LedgerVerdict { outcome, recorded, previous_generation, .. } = verdict.ledger.as_ref()?;
    let Some(state) = verdict.sealed_state else {
        return Some(format!("no sealed state in the evidence to check against {}", path.display()));
    };
    let what = format!("sealed state generation {} of store {}", state.generation, attest::hex(&state.store_id));
    let said = match (*outcome, previous_generation) {
        (Some("first_seen"), _) => "first seen".to_string(),
        (Some("same"), _) => "the state the ledger holds".to_string(),
        (Some("newer"), Some(p)) => format!("newer than generation {p}"),
        (Some(other), Some(p)) => format!("REFUSED ({other}; the ledger holds generation {p})"),
        (Some(other), None) => format!("REFUSED ({other})"),
        (None, _) => "REFUSED".to_string(),
    };
    let kept = if *recorded { "recorded in" } else { "ledger unchanged:" };
    Some(format!("{what}: {said}, {kept} {}", path.display()))
}

/// The names of the checks that failed, for an error message.
pub fn failed_checks(verdict: &Verdict) -> String {
    verdict.checks.iter().filter(|c| !c.passed).map(|c| c.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use attest::manifest::SealedState;
    use attest::testing::sample;

    fn state(generation: u64, root: u8) -> SealedState {
        SealedState { generation, store_id: [0x42; 16], root: [root; 32], failed: false, rewrapped: false }
    }

    #[test]
    fn boots_with_a_state_disk_are_checked_against_its_ledger() {
        let s = sample();
        let dir = std::env::temp_dir().join(format!("xtask-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.ledger.json");
        let _ = std::fs::remove_file(&path);
        let store = "42".repeat(16);

        let v = check(&s.with_sealed_state(&state(2, 2)), Some(&path), false).unwrap();
        assert!(v.passed, "{v}");
        let said = ledger_outcome(&v, &path).unwrap();
        assert!(
            said.starts_with(&format!("sealed state generation 2 of store {store}: first seen, recorded in")),
            "{said}"
        );

        let v = check(&s.with_sealed_state(&state(3, 3)), Some(&path), false).unwrap();
        assert!(v.passed);
        assert!(ledger_outcome(&v, &path).unwrap().contains("newer than generation 2, recorded in"));

        let v = check(&s.with_sealed_state(&state(2, 2)), Some(&path), false).unwrap();
        assert!(!v.passed);
        assert_eq!(failed_checks(&v), "state_ledger");
        let said = ledger_outcome(&v, &path).unwrap();
        assert!(said.contains("REFUSED (rollback; the ledger holds generation 3), ledger unchanged"), "{said}");

        // A boot without a state disk has no ledger; with one, the evidence must carry its state.
        let v = check(&s.evidence, None, false).unwrap();
        assert!(v.passed && ledger_outcome(&v, &path).is_none());
        let v = check(&s.evidence, Some(&path), false).unwrap();
        assert!(!v.passed);
        assert!(ledger_outcome(&v, &path).unwrap().starts_with("no sealed state"));

        std::fs::write(&path, "[").unwrap();
        assert!(check(&s.with_sealed_state(&state(4, 4)), Some(&path), false).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
