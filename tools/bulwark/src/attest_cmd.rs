//! `bulwark attest verify`: check attestation evidence (report, certificates, nonce,
//! manifest) with `attest::verify` and print the verdict. It needs `bulwark-attest`
//! alone, so it is in every build of `bulwark`, the verifier-only one too
//! (`--no-default-features`); `bulwark attest demo`, which runs the model, is
//! `attest_demo.rs`.
//!
//! With `--state-ledger FILE` the verifier also detects what the SVSM cannot: an older
//! state of its sealed store (`attest::ledger`; docs/persistence.md, "Rollback and the
//! verifier's ledger"). The ledger file learns a state only from evidence that is
//! accepted as a whole.
//!
//! Exit status: 0 when every check passes (and, with `--require-amd-root`, the chain
//! is AMD's), 1 when the evidence is rejected, 2 on a usage or file error (a ledger
//! file that does not parse, or cannot be written, included).

use attest::ledger;
use attest::verify::{Certificates, Evidence, Verdict, examine};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

pub const USAGE: &str = "usage: bulwark attest verify --report FILE --nonce FILE --manifest FILE
                             (--certs FILE | --ark FILE --ask FILE --vcek FILE)
                             [--service vtpm|vtpm-lineage|sealed-state|GUID] [--json] [--require-amd-root]
                             [--state-ledger FILE [--instance NAME [--accept-new-store]]
                                                  [--accept-new-chain]]
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
  --service vtpm|vtpm-lineage|sealed-state|GUID
                      the evidence came from SVSM_ATTEST_SINGLE_SERVICE for this service:
                      --manifest holds that service's data (for the vTPM, its EK public
                      area), not a services manifest
  --json              print the verdict as JSON (with the ledger's outcome)
  --require-amd-root  also fail unless the chain is rooted in one of AMD's ARKs
  --state-ledger FILE rollback detection: FILE (JSON; missing = empty) holds, per sealed
                      store id, the newest generation and root accepted before. Fail
                      (check state_ledger) on an older generation (rollback), on the same
                      generation with another root (fork), and on evidence without a
                      sealed state (nothing to check). A new or newer state is written to
                      FILE (atomically) only when the evidence is accepted as a whole. A
                      store id never seen is accepted, unless --instance says whose it is.
                      FILE also follows each vTPM (by its EK) through its lineage: fail
                      (check vtpm_ledger) on an older version of the TPM's state, on a
                      copy that ran on after it moved by live migration, on a second copy
                      moved from one state, and on a vTPM without a lineage entry
  --instance NAME     the VM instance the evidence comes from (1-128 bytes): FILE binds it
                      to the first store accepted for it, and fails (check state_instance)
                      on any other store for it (a blank disk, or another VM's) and on a
                      store bound to another instance (a copy of another VM's disk)
  --accept-new-store  the instance was provisioned again: accept its new store and bind it
  --accept-new-chain  accept a state whose attestation chain does not pass through the
                      value FILE keeps (check state_ledger: `rebased`, not `diverged`),
                      and keep its chain from now on: for a verifier that missed more
                      attestations than the chain shows (16). An older image of the store
                      passes the same way: use it only knowing why the chain moved on";

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
    state_ledger: Option<PathBuf>,
    instance: Option<String>,
    accept_new_store: bool,
    accept_new_chain: bool,
}

/// `vtpm`, `vtpm-lineage`, `sealed-state`, or a GUID in its text form.
fn parse_service(text: &str) -> Result<abi::guid::Guid, String> {
    use abi::attest::{SEALED_STATE_GUID, VTPM_LINEAGE_GUID, VTPM_SERVICE_GUID};
    let known = [("vtpm", VTPM_SERVICE_GUID), ("vtpm-lineage", VTPM_LINEAGE_GUID), ("sealed-state", SEALED_STATE_GUID)];
    known.into_iter().find(|(name, g)| *name == text || g.to_string().eq_ignore_ascii_case(text)).map(|(_, g)| g).ok_or_else(
        || {
            format!(
                "unknown service `{text}` (the SVSM has: vtpm = {VTPM_SERVICE_GUID}, vtpm-lineage = {VTPM_LINEAGE_GUID}, sealed-state = {SEALED_STATE_GUID})"
            )
        },
    )
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
            "--accept-new-store" => {
                o.accept_new_store = true;
                continue;
            }
            "--accept-new-chain" => {
                o.accept_new_chain = true;
                continue;
            }
            "--instance" => {
                o.instance = Some(it.next().ok_or("--instance needs a name")?.clone());
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
            "--state-ledger" => &mut o.state_ledger,
            other => return Err(format!("unknown option `{other}`")),
        };
        *slot = Some(it.next().ok_or_else(|| format!("{a} needs a file"))?.into());
    }
    if o.instance.is_some() && o.state_ledger.is_none() {
        return Err("--instance needs --state-ledger (the ledger binds instances to stores)".into());
    }
    if o.accept_new_store && o.instance.is_none() {
        return Err("--accept-new-store needs --instance".into());
    }
    if o.accept_new_chain && o.state_ledger.is_none() {
        return Err("--accept-new-chain needs --state-ledger (it changes what the ledger keeps)".into());
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
    let instance = match opts.instance.as_deref().map(|name| ledger::Instance::new(name, opts.accept_new_store)) {
        Some(Err(e)) => {
            eprintln!("bulwark attest verify: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
        Some(Ok(instance)) => Some(instance),
        None => None,
    };
    let mut verdict = examine(&evidence);
    let policy_accepts = verdict.hardware_rooted || !opts.require_amd_root;
    if let Some(path) = &opts.state_ledger
        && let Err(e) = ledger::apply_file_for(
            path,
            &mut verdict,
            policy_accepts,
            instance.as_ref(),
            ledger::Acceptance { new_chain: opts.accept_new_chain },
        )
    {
        eprintln!("bulwark attest verify: {e}");
        return ExitCode::from(2);
    }
    let text = if opts.json {
        serde_json::to_string_pretty(&verdict).unwrap_or_default()
    } else {
        let mut t = verdict.to_string();
        if !policy_accepts {
            t.push_str("--require-amd-root: rejected, the chain is not rooted in an AMD ARK.\n");
        }
        if let Some(path) = &opts.state_ledger {
            t.push_str(&ledger_note(&verdict, path));
        }
        t
    };
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = writeln!(std::io::stdout().lock(), "{}", text.trim_end());
    if verdict.passed && policy_accepts { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// What happened to the ledger file, for the text verdict.
fn ledger_note(verdict: &Verdict, path: &std::path::Path) -> String {
    let recorded = verdict.ledger.as_ref().is_some_and(|l| l.recorded);
    let tpm = match &verdict.vtpm_lineage {
        Some(l) => format!(" and version {} of the vTPM's incarnation {}", l.version, attest::hex(&l.incarnation)),
        None => String::new(),
    };
    match verdict.sealed_state {
        Some(s) if recorded => format!(
            "--state-ledger: {} now holds generation {} of store {}{tpm}.\n",
            path.display(),
            s.generation,
            attest::hex(&s.store_id)
        ),
        _ => format!("--state-ledger: {} unchanged.\n", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attest::testing::sample;

    /// Write the sample evidence as the files Linux's configfs-tsm would give.
    fn write_sample(dir: &std::path::Path) -> Vec<String> {
        write_evidence(dir, &sample().evidence)
    }

    /// Write `e` as the files Linux's configfs-tsm would give; the arguments naming them.
    fn write_evidence(dir: &std::path::Path, e: &Evidence) -> Vec<String> {
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

    const STORE: [u8; 16] = [0x5e; 16];

    fn sealed(generation: u64, root: u8) -> attest::manifest::SealedState {
        attest::manifest::SealedState { generation, store_id: STORE, root: [root; 32], failed: false, rewrapped: false }
    }

    /// `verify` on evidence whose manifest carries `state`, with `--state-ledger` and `extra`.
    fn verify_state(dir: &std::path::Path, state: &attest::manifest::SealedState, extra: &[&str]) -> ExitCode {
        let mut args = write_evidence(dir, &sample().with_sealed_state(state));
        args.extend(["--state-ledger".into(), dir.join("ledger.json").display().to_string()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        verify(&args)
    }

    fn generation_in(ledger: &std::path::Path) -> Option<u64> {
        attest::ledger::Ledger::load(ledger).unwrap().get(&STORE).map(|s| s.generation)
    }

    #[test]
    fn state_ledger_accepts_newer_states_and_refuses_rollback_and_forks() {
        let dir = temp("ledger");
        let ledger = dir.join("ledger.json");
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(&ledger);
        assert_eq!(verify_state(&dir, &sealed(5, 5), &[]), ExitCode::SUCCESS, "first seen");
        assert_eq!(generation_in(&ledger), Some(5));
        let kept = std::fs::read(&ledger).unwrap();
        assert_eq!(verify_state(&dir, &sealed(4, 4), &[]), ExitCode::FAILURE, "an older whole image");
        assert_eq!(std::fs::read(&ledger).unwrap(), kept);
        assert_eq!(verify_state(&dir, &sealed(6, 6), &[]), ExitCode::SUCCESS, "newer");
        assert_eq!(generation_in(&ledger), Some(6));
        let kept = std::fs::read(&ledger).unwrap();
        assert_eq!(verify_state(&dir, &sealed(6, 0x66), &[]), ExitCode::FAILURE, "another root under generation 6");
        assert_eq!(verify_state(&dir, &sealed(6, 6), &["--json"]), ExitCode::SUCCESS, "the same state again");
        // A newer state the caller's policy refuses is not recorded.
        assert_eq!(verify_state(&dir, &sealed(7, 7), &["--require-amd-root"]), ExitCode::FAILURE);
        assert_eq!(std::fs::read(&ledger).unwrap(), kept);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn state_ledger_refuses_evidence_without_a_sealed_state_and_unreadable_ledgers() {
        let dir = temp("ledger-none");
        let ledger = dir.join("ledger.json");
        let mut args = write_sample(&dir);
        args.extend(["--state-ledger".into(), ledger.display().to_string()]);
        assert_eq!(verify(&args), ExitCode::FAILURE, "nothing to check");
        assert!(!ledger.exists(), "nothing was recorded");
        std::fs::write(&ledger, "not json").unwrap();
        assert_eq!(verify_state(&dir, &sealed(1, 1), &[]), ExitCode::from(2));
        assert_eq!(std::fs::read(&ledger).unwrap(), b"not json");
        let closed = attest::manifest::SealedState { failed: true, ..sealed(1, 1) };
        std::fs::remove_file(&ledger).unwrap();
        assert_eq!(verify_state(&dir, &closed, &[]), ExitCode::FAILURE, "the sealed state closed");
        assert!(!ledger.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn bound_in(ledger: &std::path::Path, instance: &str) -> Option<[u8; 16]> {
        attest::ledger::Ledger::load(ledger).unwrap().bound(instance)
    }

    /// A verifier that names the VM instance refuses another store for it (a blank disk
    /// or another VM's), unless told the VM was provisioned again.
    #[test]
    fn an_instance_is_bound_to_its_store() {
        let dir = temp("instance");
        let ledger = dir.join("ledger.json");
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(&ledger);
        let vm = ["--instance", "vm-7"];
        assert_eq!(verify_state(&dir, &sealed(5, 5), &vm), ExitCode::SUCCESS, "first seen");
        assert_eq!(bound_in(&ledger, "vm-7"), Some(STORE));
        assert_eq!(verify_state(&dir, &sealed(6, 6), &vm), ExitCode::SUCCESS, "its store, newer");
        // A blank disk: a new store at generation 1. Without --instance the ledger would
        // take it as first seen.
        let blank = attest::manifest::SealedState { store_id: [0xb1; 16], ..sealed(1, 1) };
        let kept = std::fs::read(&ledger).unwrap();
        assert_eq!(verify_state(&dir, &blank, &vm), ExitCode::FAILURE, "another store for vm-7");
        assert_eq!(std::fs::read(&ledger).unwrap(), kept, "nothing recorded");
        assert_eq!(verify_state(&dir, &blank, &["--json", "--instance", "vm-7"]), ExitCode::FAILURE);
        // The relying party knows the VM was provisioned again.
        assert_eq!(verify_state(&dir, &blank, &["--instance", "vm-7", "--accept-new-store"]), ExitCode::SUCCESS);
        assert_eq!(bound_in(&ledger, "vm-7"), Some([0xb1; 16]));
        assert_eq!(verify_state(&dir, &sealed(7, 7), &vm), ExitCode::FAILURE, "the old store is refused now");
        // vm-7's store shown for another VM: a copy of its disk.
        assert_eq!(verify_state(&dir, &blank, &["--instance", "vm-8"]), ExitCode::FAILURE, "another VM's store");
        assert_eq!(bound_in(&ledger, "vm-8"), None);
        // Usage: --instance needs a ledger, --accept-new-store an instance, a name its form.
        let args = write_sample(&dir);
        let with = |extra: &[&str]| [args.clone(), extra.iter().map(|a| a.to_string()).collect()].concat();
        assert_eq!(verify(&with(&["--instance", "vm-7"])), ExitCode::from(2));
        let ledger_arg = ledger.display().to_string();
        assert_eq!(verify(&with(&["--state-ledger", &ledger_arg, "--accept-new-store"])), ExitCode::from(2));
        assert_eq!(verify(&with(&["--state-ledger", &ledger_arg, "--instance", ""])), ExitCode::from(2));
        assert_eq!(verify(&with(&["--accept-new-chain"])), ExitCode::from(2), "--accept-new-chain needs a ledger");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn json_verdicts_carry_the_sealed_state_and_the_ledger_outcome() {
        let s = sample();
        let mut verdict = examine(&s.with_sealed_state(&sealed(5, 5)));
        let mut memory = attest::ledger::Ledger::default();
        attest::ledger::judge(&mut memory, &mut verdict);
        let json = serde_json::to_value(&verdict).unwrap();
        assert_eq!(json["sealed_state"]["generation"], 5);
        assert_eq!(json["ledger"]["outcome"], "first_seen");
        assert_eq!(json["ledger"]["accepted"], true);
        assert_eq!(json["ledger"]["vtpm_outcome"], "first_seen");
        assert_eq!(json["vtpm_lineage"]["version"], 1);
        let names: Vec<&str> = json["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        let last = &names[names.len() - 5..];
        assert_eq!(last, ["vtpm_lineage", "attest_chain", "sealed_state", "state_ledger", "vtpm_ledger"]);
        let note = ledger_note(&verdict, std::path::Path::new("l.json"));
        assert_eq!(note, "--state-ledger: l.json unchanged.\n");
    }

    #[test]
    fn services_by_name_or_guid() {
        assert_eq!(parse_service("sealed-state"), Ok(abi::attest::SEALED_STATE_GUID));
        assert_eq!(parse_service(&abi::attest::VTPM_SERVICE_GUID.to_string()), Ok(abi::attest::VTPM_SERVICE_GUID));
        assert!(parse_service("tpm").is_err());
    }
}
