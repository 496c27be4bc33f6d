//! The test guest's attestation evidence (`EVIDENCE <what> <hex>` lines): collected from
//! the run, saved as the files a verifier reads, and verified with `bulwark-attest` (the
//! `sev` crate's checks and Bulwark's own).

use attest::verify::{Certificates, Evidence, Verdict, verify};
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

/// Verify; the verdict either way, and whether it passed.
pub fn check(evidence: &Evidence) -> (Verdict, bool) {
    match verify(evidence) {
        Ok(v) => (v, true),
        Err(rejected) => (rejected.verdict, false),
    }
}
