//! `bulwark attest verify`: check attestation evidence (report, certificates, nonce,
//! manifest) with `attest::verify` and print the verdict. It needs `bulwark-attest`
//! alone, so it is in every build of `bulwark`, the verifier-only one too
//! (`--no-default-features`); `bulwark attest demo`, which runs the model, is
//! `attest_demo.rs`.
//!
//! Exit status: 0 when every check passes (and, with `--require-amd-root`, the chain
//! is AMD's), 1 when the evidence is rejected, 2 on a usage or file error.

use attest::verify::{Certificates, Evidence, examine};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

pub const USAGE: &str = "usage: bulwark attest verify --report FILE --nonce FILE --manifest FILE
                             (--certs FILE | --ark FILE --ask FILE --vcek FILE)
                             [--service vtpm|GUID] [--json] [--require-amd-root]
       bulwark attest demo --out DIR      (builds with the `model` feature only)

  demo                writes DIR/report.bin, certificates.bin (GHCB table), nonce.bin
                      (64 fresh random bytes), manifest.bin, and ark/ask/vcek as .der
                      and .pem (the layout snpguest's `verify` commands read), then
                      verifies them

  --report FILE       the SNP attestation report (0x4A0 bytes; Linux: configfs outblob)
  --nonce FILE        the nonce given to the SVSM (raw bytes; Linux: inblob)
  --manifest FILE     the services manifest the SVSM returned (Linux: manifestblob)
  --certs FILE        the GHCB certificate table (Linux: auxblob)
  --ark/--ask/--vcek  the three certificates as separate files, DER or PEM
  --service vtpm|GUID the evidence came from SVSM_ATTEST_SINGLE_SERVICE for this service:
                      --manifest holds that service's data (for the vTPM, its EK public
                      area), not a services manifest
  --json              print the verdict as JSON
  --require-amd-root  also fail unless the chain is rooted in one of AMD's ARKs";

#[derive(Default)]
struct Options {
    report: Option<PathBuf>,
    nonce: Option<PathBuf>,
    manifest: Option<PathBuf>,
    certs: Option<PathBuf>,
    ark: Option<PathBuf>,
    ask: Option<PathBuf>,
    vcek: Option<PathBuf>,
    service: Option<abi::guid::Guid>,
    json: bool,
    require_amd_root: bool,
}

/// `vtpm`, or a GUID in its text form.
fn parse_service(text: &str) -> Result<abi::guid::Guid, String> {
    if text == "vtpm" {
        return Ok(abi::attest::VTPM_SERVICE_GUID);
    }
    let known = [abi::attest::VTPM_SERVICE_GUID];
    known
        .into_iter()
        .find(|g| g.to_string().eq_ignore_ascii_case(text))
        .ok_or_else(|| format!("unknown service `{text}` (the SVSM has: vtpm = {})", abi::attest::VTPM_SERVICE_GUID))
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let slot = match a.as_str() {
            "--json" => {
                o.json = true;
                continue;
            }
            "--require-amd-root" => {
                o.require_amd_root = true;
                continue;
            }
            "--service" => {
                o.service = Some(parse_service(it.next().ok_or("--service needs vtpm or a GUID")?)?);
                continue;
            }
            "--report" => &mut o.report,
            "--nonce" => &mut o.nonce,
            "--manifest" => &mut o.manifest,
            "--certs" => &mut o.certs,
            "--ark" => &mut o.ark,
            "--ask" => &mut o.ask,
            "--vcek" => &mut o.vcek,
            other => return Err(format!("unknown option `{other}`")),
        };
        *slot = Some(it.next().ok_or_else(|| format!("{a} needs a file"))?.into());
    }
    Ok(o)
}

fn read(path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A certificate file, DER or PEM.
fn read_certificate(path: &PathBuf) -> Result<Vec<u8>, String> {
    attest::certificate_der(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))
}

fn load(o: &Options) -> Result<Evidence, String> {
    fn need<'a>(p: &'a Option<PathBuf>, name: &str) -> Result<&'a PathBuf, String> {
        p.as_ref().ok_or_else(|| format!("{name} is required"))
    }
    let certificates = match (&o.certs, &o.ark, &o.ask, &o.vcek) {
        (Some(table), None, None, None) => Certificates::Table(read(table)?),
        (None, Some(ark), Some(ask), Some(vcek)) => Certificates::Der {
            ark: read_certificate(ark)?,
            ask: read_certificate(ask)?,
            vcek: read_certificate(vcek)?,
        },
        _ => return Err("give either --certs, or all of --ark, --ask and --vcek".into()),
    };
    Ok(Evidence {
        report: read(need(&o.report, "--report")?)?,
        certificates,
        nonce: read(need(&o.nonce, "--nonce")?)?,
        manifest: read(need(&o.manifest, "--manifest")?)?,
        service: o.service,
    })
}

pub fn main(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        Some("verify") => verify(&args[1..]),
        // `attest demo` runs the model: main.rs sends it to `attest_demo`, or says that
        // this build has no model.
        Some("help" | "--help" | "-h") | None => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("bulwark attest: unknown subcommand `{other}`\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// `bulwark attest verify ...`.
pub fn verify(args: &[String]) -> ExitCode {
    let evidence = match parse(args).and_then(|o| load(&o).map(|e| (o, e))) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("bulwark attest verify: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (opts, evidence) = evidence;
    let verdict = examine(&evidence);
    let text = if opts.json {
        serde_json::to_string_pretty(&verdict).unwrap_or_default()
    } else {
        let mut t = verdict.to_string();
        if opts.require_amd_root && !verdict.hardware_rooted {
            t.push_str("--require-amd-root: rejected, the chain is not rooted in an AMD ARK.\n");
        }
        t
    };
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = writeln!(std::io::stdout().lock(), "{}", text.trim_end());
    if verdict.passed && (verdict.hardware_rooted || !opts.require_amd_root) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attest::testing::sample;

    /// Write the sample evidence as the files Linux's configfs-tsm would give.
    fn write_sample(dir: &std::path::Path) -> Vec<String> {
        let e = &sample().evidence;
        let Certificates::Table(table) = &e.certificates else { unreachable!() };
        std::fs::create_dir_all(dir).unwrap();
        let mut args = Vec::new();
        for (flag, name, bytes) in [
            ("--report", "outblob", &e.report),
            ("--certs", "auxblob", table),
            ("--nonce", "inblob", &e.nonce),
            ("--manifest", "manifestblob", &e.manifest),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            args.push(flag.to_string());
            args.push(path.display().to_string());
        }
        args
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("bulwark-attest-{}-{name}", std::process::id()))
    }

    #[test]
    fn verify_passes_on_good_evidence_and_fails_on_a_flipped_byte() {
        let dir = temp("good");
        let args = write_sample(&dir);
        assert_eq!(verify(&args), ExitCode::SUCCESS);
        let mut json = args.clone();
        json.push("--json".into());
        assert_eq!(verify(&json), ExitCode::SUCCESS);
        let mut strict = args.clone();
        strict.push("--require-amd-root".into());
        assert_eq!(verify(&strict), ExitCode::FAILURE);
        let nonce = dir.join("inblob");
        let mut bytes = std::fs::read(&nonce).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&nonce, bytes).unwrap();
        assert_eq!(verify(&args), ExitCode::FAILURE);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn separate_certificate_files_in_pem_or_der() {
        let dir = temp("files");
        let mut args = write_sample(&dir);
        args.truncate(2);
        args.extend(write_sample(&dir)[4..].iter().cloned());
        let s = sample();
        let pem = |der: &[u8]| attest::certificate_pem(der).unwrap().into_bytes();
        for (flag, name, bytes) in [
            ("--ark", "ark.pem", pem(s.authority.ark_der())),
            ("--ask", "ask.der", s.authority.ask_der().to_vec()),
            ("--vcek", "vcek.der", s.vcek_der.clone()),
        ] {
            std::fs::write(dir.join(name), bytes).unwrap();
            args.push(flag.into());
            args.push(dir.join(name).display().to_string());
        }
        assert_eq!(verify(&args), ExitCode::SUCCESS);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn usage_errors_exit_2() {
        assert_eq!(verify(&[]), ExitCode::from(2));
        assert_eq!(verify(&["--bogus".into()]), ExitCode::from(2));
        let dir = temp("usage");
        let mut args = write_sample(&dir);
        args.extend(["--ark".into(), "x".into()]);
        assert_eq!(verify(&args), ExitCode::from(2), "--certs and --ark together");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
