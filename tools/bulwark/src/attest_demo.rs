//! `bulwark attest demo --out DIR`: obtain fresh evidence through the attestation protocol
//! on the SEV-SNP model (a guest call, the SVSM, the PSP model's encrypted exchange) and
//! write it as the files a verifier reads, then verify them with `bulwark attest verify`.
//! Exit status as for `verify`; 2 when the evidence cannot be obtained or written.

use crate::attest_cmd::{USAGE, verify};
use std::path::PathBuf;
use std::process::ExitCode;

/// `bulwark attest demo --out DIR`.
pub fn main(args: &[String]) -> ExitCode {
    let dir = match args {
        [flag, dir] if flag == "--out" => PathBuf::from(dir),
        _ => {
            eprintln!("bulwark attest demo: give --out DIR\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match write_demo(&dir) {
        Ok(files) => {
            println!("wrote model evidence to {}:", dir.display());
            for f in &files {
                println!("  {f}");
            }
            let d = |f: &str| dir.join(f).display().to_string();
            let args: Vec<String> = [
                "--report",
                &d("report.bin"),
                "--certs",
                &d("certificates.bin"),
                "--nonce",
                &d("nonce.bin"),
                "--manifest",
                &d("manifest.bin"),
            ]
            .map(String::from)
            .to_vec();
            println!("verify again with: bulwark attest verify {}\n", args.join(" "));
            verify(&args)
        }
        Err(e) => {
            eprintln!("bulwark attest demo: {e}");
            ExitCode::from(2)
        }
    }
}

/// Obtain evidence on the model with a fresh nonce and write it to `dir`.
fn write_demo(dir: &std::path::Path) -> Result<Vec<String>, String> {
    let mut nonce = [0u8; 64];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut nonce))
        .map_err(|e| format!("no randomness for the nonce: {e}"))?;
    let e = model::attest_demo::obtain(&nonce)?;
    let entries = attest::cert_table::decode(&e.certificates).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("report.bin".into(), e.report),
        ("certificates.bin".into(), e.certificates.clone()),
        ("nonce.bin".into(), e.nonce),
        ("manifest.bin".into(), e.manifest),
    ];
    for (guid, name) in [
        (abi::attest::cert_table::ARK, "ark"),
        (abi::attest::cert_table::ASK, "ask"),
        (abi::attest::cert_table::VCEK, "vcek"),
    ] {
        let der = attest::cert_table::find(&entries, &guid).ok_or(format!("no {name} certificate"))?.to_vec();
        files.push((format!("{name}.pem"), attest::certificate_pem(&der)?.into_bytes()));
        files.push((format!("{name}.der"), der));
    }
    for (name, bytes) in &files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(files.into_iter().map(|(n, b)| format!("{n} ({} bytes)", b.len())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("bulwark-attest-{}-{name}", std::process::id()))
    }

    #[test]
    fn demo_writes_model_evidence_that_verifies_and_a_changed_report_does_not() {
        let dir = temp("demo");
        assert_eq!(main(&["--out".into(), dir.display().to_string()]), ExitCode::SUCCESS);
        let args: Vec<String> = [
            ("--report", "report.bin"),
            ("--nonce", "nonce.bin"),
            ("--manifest", "manifest.bin"),
            ("--ark", "ark.pem"),
            ("--ask", "ask.der"),
            ("--vcek", "vcek.pem"),
        ]
        .iter()
        .flat_map(|(flag, f)| [flag.to_string(), dir.join(f).display().to_string()])
        .collect();
        assert_eq!(verify(&args), ExitCode::SUCCESS, "the separate certificate files verify too");
        let mut report = std::fs::read(dir.join("report.bin")).unwrap();
        report[abi::attest::report::MEASUREMENT] ^= 1;
        std::fs::write(dir.join("report.bin"), report).unwrap();
        assert_eq!(verify(&args), ExitCode::FAILURE);
        assert_eq!(main(&["--out".into()]), ExitCode::from(2));
    }
}
