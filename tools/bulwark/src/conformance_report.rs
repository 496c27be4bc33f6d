//! `bulwark conformance`: run every conformance case on the model and report, with the
//! kernel served by the model's own platform, by the snp platform (`bulwark-snp` over
//! the model's RMP and software host) or by the svm platform (`bulwark-svm` over the
//! model's memory, with a software VMRUN and nested paging).

use conformance::{CASES, Verdict};
use kernel::stats::Stats;
use model::conformance_env::run_case_on;
use model::world::PlatformKind;
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

/// Print a line; a closed pipe (`bulwark conformance | head`) ends the program quietly.
macro_rules! say {
    ($($arg:tt)*) => {
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    };
}

struct Options {
    json: bool,
    filter: Option<String>,
    platform: PlatformKind,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options { json: false, filter: None, platform: PlatformKind::Model };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => o.json = true,
            "--filter" => o.filter = Some(it.next().ok_or("--filter needs a value")?.clone()),
            "--platform" => {
                o.platform = match it.next().map(String::as_str) {
                    Some("model") => PlatformKind::Model,
                    Some("snp") => PlatformKind::Snp,
                    Some("svm") => PlatformKind::Svm,
                    other => {
                        return Err(format!("--platform takes model, snp or svm, not `{}`", other.unwrap_or("")));
                    }
                }
            }
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    Ok(o)
}

pub fn main(args: &[String]) -> ExitCode {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bulwark conformance: {e}");
            return ExitCode::from(2);
        }
    };
    let selected: Vec<_> =
        CASES.iter().filter(|c| opts.filter.as_ref().is_none_or(|f| c.name.contains(f.as_str()))).collect();
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut total = Stats::default();
    let platform = match opts.platform {
        PlatformKind::Model => "model",
        PlatformKind::Snp => "snp",
        PlatformKind::Svm => "svm",
    };
    if !opts.json {
        say!("Bulwark conformance suite: SVSM spec 58019 protocols, over the guest calling");
        say!("convention, against the Bulwark kernel on the SEV-SNP model (one launch per case),");
        match opts.platform {
            PlatformKind::Model => say!("served by the model's own platform\n"),
            PlatformKind::Snp => {
                say!("served by the snp platform (GHCB, AP creation, guest requests to a software host)\n")
            }
            PlatformKind::Svm => {
                say!("served by the svm platform (VMCBs, a software VMRUN, nested paging from the SVSM's RMP)\n")
            }
        }
    }
    for case in &selected {
        let (verdict, stats) = run_case_on(case, opts.platform);
        add(&mut total, &stats);
        if !opts.json {
            match &verdict {
                Verdict::Pass => say!("  PASS  {:<34} {}", case.name, case.what),
                Verdict::Skip(why) => say!("  SKIP  {:<34} {} ({why})", case.name, case.what),
                Verdict::Fail(why) => say!("  FAIL  {:<34} {}\n        {why}", case.name, case.what),
            }
        }
        rows.push((case, verdict));
    }
    let count = |f: fn(&Verdict) -> bool| rows.iter().filter(|(_, v)| f(v)).count();
    let (passed, failed, skipped) = (
        count(|v| *v == Verdict::Pass),
        count(|v| matches!(v, Verdict::Fail(_))),
        count(|v| matches!(v, Verdict::Skip(_))),
    );
    let core = total.per_protocol[0];
    if opts.json {
        let cases: Vec<_> = rows
            .iter()
            .map(|(c, v)| {
                let (verdict, detail) = match v {
                    Verdict::Pass => ("pass", String::new()),
                    Verdict::Fail(why) => ("fail", why.clone()),
                    Verdict::Skip(why) => ("skip", (*why).to_string()),
                };
                json!({ "name": c.name, "checks": c.what, "verdict": verdict, "detail": detail })
            })
            .collect();
        let doc = json!({
            "platform": platform,
            "cases": cases,
            "summary": { "passed": passed, "failed": failed, "skipped": skipped },
            "svsm": {
                "core_calls": core.calls, "core_errors": core.errors,
                "spurious_entries": total.spurious_entries, "wrong_exit_code": total.wrong_exit_code,
                "host_faults": total.host_faults
            },
            "seconds": started.elapsed().as_secs_f64(),
        });
        say!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        say!(
            "\nThe SVSM served {} core calls ({} answered with an error code, as the cases demand) and ignored\n{} spurious entries and {} with a wrong exit code, in {:.2} s.",
            core.calls,
            core.errors,
            total.spurious_entries,
            total.wrong_exit_code,
            started.elapsed().as_secs_f64()
        );
        say!("{passed} passed, {failed} failed, {skipped} skipped");
    }
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn add(total: &mut Stats, s: &Stats) {
    for (t, c) in total.per_protocol.iter_mut().zip(s.per_protocol.iter()) {
        t.calls += c.calls;
        t.errors += c.errors;
    }
    total.spurious_entries += s.spurious_entries;
    total.wrong_exit_code += s.wrong_exit_code;
    total.host_faults += s.host_faults;
}
