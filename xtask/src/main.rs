//! `cargo xtask`: Bulwark's task runner.
//!
//! This crate owns the project's entry points for developers and CI:
//!
//! - `run`   — build and run the conformance report (`bulwark conformance`);
//! - `test`  — everything CI checks: fmt, clippy, the bare-metal kernel build,
//!   all tests and a short fuzz smoke run;
//! - `fuzz`  — a libFuzzer run through cargo-fuzz on the nightly toolchain;
//! - `bench` — the model's benchmarks, the tpm-bridge benchmark and the svm call round trip.
//!
//! It uses std, `rustc-demangle` and `bulwark-x86` (ELF readers) for the SVSM's embedded symbol table. Every cargo child runs with the workspace root as its
//! working directory. Progress lines (`==> step`) go to stderr so that the
//! stdout of `cargo xtask run --json` stays machine-readable.

mod agent;
mod evidence;
mod prereqs;
mod qemu;
mod rsp;
mod symbols;

use std::env;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};

type Result<T = (), E = String> = std::result::Result<T, E>;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  run [--json]                       the main job: the conformance suite on the SEV-SNP model (with
                                     the model's platform and with the snp platform), then
                                     the SVSM booted under QEMU serving the test guest (`boot`)
  test                               everything CI runs: fmt, clippy, bare-metal kernel build,
                                     a QEMU boot of the SVSM image, a 60 s fuzz smoke run,
                                     and all tests
                                     (set BULWARK_SKIP_FUZZ=1 to skip the fuzz smoke run)
  fuzz [--seconds N] [--target NAME] fuzz NAME (dispatcher, the default, or evidence) for N seconds (default: 600);
                                     needs the nightly toolchain, installs cargo-fuzz if missing
  bench                              the pvalidate, OCP log-read and vTPM benchmarks of the model, the
                                     tpm-bridge behind tpm2-abrmd beside swtpm, then the svm call
                                     round trip over 5 QEMU boots (target/bench/*.json)
  igvm [--firmware FILE] [--out FILE] build the SVSM and wrap it in an IGVM file for SEV-SNP hosts
                                     (default target/bulwark.igvm); prints its expected measurement
  boot [--crash ud|panic] [--console log] [--gdb|--gdb-check|--qemu-gdb] [--agent PORT|--agent-check]
                                     build the bare-metal SVSM and boot it under QEMU (installs QEMU
                                     if missing); fails on a hang, a triple fault or a failure report;
                                     --crash checks that a fault is reported and stops the SVSM cleanly;
                                     --console log keeps the SVSM's log in its memory buffer only
                                     (replayed on the serial port if the SVSM fails);
                                     --gdb builds the SVSM with its own GDB stub, which stops at boot
                                     and waits for GDB on 127.0.0.1:1234 (works on SNP too);
                                     --gdb-check has a scripted client check that stub;
                                     --qemu-gdb uses QEMU's stub instead (paused before the SVSM runs);
                                     --agent PORT: after its checks the guest serves host tools
                                     (bulwark ocp ... --qemu 127.0.0.1:PORT) until they send quit;
                                     --agent-check runs bulwark ocp through that path
  help                               show this text
";

const DEFAULT_FUZZ_TARGET: &str = "dispatcher";
const DEFAULT_FUZZ_SECONDS: u64 = 600;
const SMOKE_FUZZ_SECONDS: u64 = 60;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((command, rest)) => (command.as_str(), rest),
        None => ("help", &[][..]),
    };
    let result = match command {
        "run" => run(rest),
        "test" => test(rest).map(|()| ExitCode::SUCCESS),
        "fuzz" => fuzz(rest).map(|()| ExitCode::SUCCESS),
        "bench" => bench(rest).map(|()| ExitCode::SUCCESS),
        "boot" => boot(rest).map(|()| ExitCode::SUCCESS),
        "igvm" => igvm(rest).map(|()| ExitCode::SUCCESS),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("unknown command `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask run [--json]`: the main job. The conformance suite on the SEV-SNP model
/// (`bulwark conformance`), served by the model's platform and by the snp platform, then
/// the SVSM booted for real under QEMU serving the test guest over VMMCALL (`cargo xtask
/// boot`). Fails if any fails.
fn run(args: &[String]) -> Result<ExitCode> {
    prereqs::ensure()?;
    // The suite with the model's own platform, then through the snp platform (GHCB, AP
    // creation, guest requests to the model's software host).
    for platform in ["model", "snp"] {
        let mut cmd = cargo()?;
        cmd.args(["run", "--release", "-p", "bulwark", "--", "conformance", "--platform", platform]).args(args);
        step(&format!("cargo run --release -p bulwark -- conformance --platform {platform} {}", args.join(" ")));
        let status = cmd.status().map_err(|e| format!("could not start cargo: {e}"))?;
        if !status.success() {
            return Ok(ExitCode::from(status.code().map_or(1, |c| c.clamp(1, 255) as u8)));
        }
    }
    boot(&[])?;
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask igvm [--firmware FILE] [--out FILE]`: build the SVSM image, wrap it in an
/// IGVM file for SEV-SNP hosts and print its expected launch measurement.
fn igvm(args: &[String]) -> Result {
    let mut out = target_dir()?.join("bulwark.igvm");
    let mut firmware = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match (arg.as_str(), rest.next()) {
            ("--out", Some(v)) => out = PathBuf::from(v),
            ("--firmware", Some(v)) => firmware = Some(v.clone()),
            _ => return Err(format!("usage: cargo xtask igvm [--firmware FILE] [--out FILE] (got `{arg}`)")),
        }
    }
    let image = build_svsm_image(false)?;
    let mut build = cargo()?;
    build.args(["run", "-q", "-p", "bulwark", "--", "igvm", "build", "--svsm"]).arg(&image).arg("--out").arg(&out);
    if let Some(f) = &firmware {
        build.args(["--firmware", f]);
    }
    exec("bulwark igvm build", &mut build)?;
    let mut measure = cargo()?;
    measure.args(["run", "-q", "-p", "bulwark", "--", "igvm", "measure"]).arg(&out);
    exec("bulwark igvm measure (the expected MEASUREMENT of a launch with -smp 1)", &mut measure)
}

/// `cargo xtask test`: the project's full test command, as run by CI.
fn test(args: &[String]) -> Result {
    no_args("test", args)?;
    prereqs::ensure()?;

    exec("cargo fmt --all -- --check", cargo()?.args(["fmt", "--all", "--", "--check"]))?;
    exec(
        "cargo clippy --workspace --all-targets -- -D warnings",
        cargo()?.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]),
    )?;
    // `cargo rustc` gives `-D warnings` to the kernel alone: RUSTFLAGS would replace the
    // target's rustflags in .cargo/config.toml, which the crypto crates need.
    exec(
        "cargo rustc -p bulwark-kernel --lib --target x86_64-unknown-none -- -D warnings",
        cargo()?.args([
            "rustc",
            "-p",
            "bulwark-kernel",
            "--lib",
            "--target",
            "x86_64-unknown-none",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    exec(
        "cargo clippy -p bulwark-svsm -p bulwark-testguest -p bulwark-x86 --target x86_64-unknown-none -- -D warnings",
        cargo()?.args([
            "clippy",
            "-p",
            "bulwark-svsm",
            "-p",
            "bulwark-testguest",
            "-p",
            "bulwark-x86",
            "--target",
            "x86_64-unknown-none",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    boot(&[])?;
    boot(&["--crash".to_string(), "ud".to_string()])?;
    boot(&["--crash", "panic", "--console", "log"].map(String::from))?;
    boot(&["--gdb-check".to_string()])?;
    boot(&["--agent-check".to_string()])?;

    if env::var_os("BULWARK_SKIP_FUZZ").is_some() {
        step("fuzz smoke run skipped: BULWARK_SKIP_FUZZ is set");
    } else {
        // The dispatcher (guest and host input to the SVSM), then the host-side verifier
        // (evidence from an SVSM and host that may lie), which needs less time to go deep.
        for (target, seconds) in [(DEFAULT_FUZZ_TARGET, SMOKE_FUZZ_SECONDS), ("evidence", 20)] {
            match run_fuzzer(target, seconds) {
                Ok(()) => {}
                Err(FuzzError::Unavailable(reason)) => {
                    eprintln!("warning: fuzz smoke skipped: {reason}");
                    break;
                }
                Err(FuzzError::Failed(message)) => return Err(message),
            }
        }
    }

    // The tests run last so that their summary closes the output. (The project has no
    // doctests; nextest does not run them, so add a `cargo test --doc` step with the first.)
    if nextest_available()? {
        exec("cargo nextest run --workspace", cargo()?.args(["nextest", "run", "--workspace"]))?;
    } else {
        exec("cargo test --workspace", cargo()?.args(["test", "--workspace"]))?;
    }
    Ok(())
}

/// `cargo xtask fuzz [--seconds N] [--target NAME]`.
fn fuzz(args: &[String]) -> Result {
    let mut seconds = DEFAULT_FUZZ_SECONDS;
    let mut target = DEFAULT_FUZZ_TARGET.to_string();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("`{arg}` needs a value\n\n{USAGE}"));
        match arg.as_str() {
            "--seconds" => {
                let text = value()?;
                seconds = text.parse().map_err(|_| format!("`--seconds {text}`: not a whole number of seconds"))?;
            }
            "--target" => target = value()?.clone(),
            other => return Err(format!("unknown option `{other}` for fuzz\n\n{USAGE}")),
        }
    }
    run_fuzzer(&target, seconds).map_err(|e| match e {
        FuzzError::Unavailable(message) | FuzzError::Failed(message) => message,
    })
}

/// `cargo xtask bench`: the `pvalidate`, `ocp_log` and `vtpm` benchmarks of the SNP model,
/// the `tpm_bridge` benchmark (tpm2-tools through tpm2-abrmd to the bridge and to swtpm),
/// then the `svm` call round trip (QUERY_PROTOCOL against the bare gate) over several QEMU
/// boots.
fn bench(args: &[String]) -> Result {
    no_args("bench", args)?;
    // swtpm, tpm2-tools, tpm2-abrmd and D-Bus for the vTPM and bridge benchmarks.
    prereqs::ensure_bench()?;
    exec(
        "cargo bench -p bulwark-model --bench pvalidate",
        cargo()?.args(["bench", "-p", "bulwark-model", "--bench", "pvalidate"]),
    )?;
    exec(
        "cargo bench -p bulwark-model --bench ocp_log",
        cargo()?.args(["bench", "-p", "bulwark-model", "--bench", "ocp_log"]),
    )?;
    exec(
        "cargo bench -p bulwark-model --bench vtpm",
        cargo()?.args(["bench", "-p", "bulwark-model", "--bench", "vtpm"]),
    )?;
    exec(
        "cargo bench -p bulwark --bench tpm_bridge",
        cargo()?.args(["bench", "-p", "bulwark", "--bench", "tpm_bridge"]),
    )?;
    let result = target_dir()?.join("bench/pvalidate.json");
    if result.is_file() {
        step(&format!("bench result: {}", result.display()));
    } else {
        step(&format!("no bench result at {} (the bench did not write one)", result.display()));
    }
    svm_call_bench()
}

/// The size of the SVSM's region, from the launch line of the SVSM's log
/// (`SVSM region 0x1000000..0x1400000,`).
fn svsm_region_bytes(lines: &[String]) -> Option<u64> {
    let rest = lines.iter().find_map(|l| l.split_once("SVSM region ").map(|(_, r)| r))?;
    let (start, end) = rest.split(',').next()?.split_once("..")?;
    let hex = |v: &str| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok();
    hex(end)?.checked_sub(hex(start)?)
}

/// The issuing kit for the SVSM's software PSP (the test authority's ARK and ASK), as a
/// fw_cfg file: with it the SVSM certifies its per-boot VCEK.
fn issuing_kit() -> Result<Vec<(&'static str, PathBuf)>> {
    let kit = attest::chain::TestAuthority::shared()
        .issuing_kit(&abi::attest::SVM_CHIP_ID)
        .map_err(|e| format!("issuing kit: {e}"))?;
    let path = target_dir()?.join("issuing-kit.bin");
    std::fs::write(&path, kit).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(vec![(abi::attest::issuing_kit::FW_CFG_NAME, path)])
}

/// The test guest's attestation evidence: saved under target/attest/qemu and verified
/// as a relying party would (`bulwark attest verify` reads the same files).
fn verify_guest_evidence(guest_lines: &[String]) -> Result {
    let evidence = evidence::collect(guest_lines)?.ok_or("the guest printed no attestation evidence")?;
    let dir = target_dir()?.join("attest/qemu");
    evidence::save(&evidence, &dir)?;
    let (verdict, passed) = evidence::check(&evidence);
    for line in verdict.to_string().lines() {
        println!("verify | {line}");
    }
    if !passed {
        return Err("the guest's attestation evidence did not verify".into());
    }
    step(&format!(
        "the QEMU guest's attestation report verified (sev crate and Bulwark's checks; not rooted in AMD hardware); files in {}",
        dir.display()
    ));
    Ok(())
}

/// Whether `boot` connects the guest's host-agent port.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AgentMode {
    None,
    /// For a person's host tools, on this port.
    Serve(u16),
    /// A scripted run of `bulwark ocp` against the guest.
    Check,
}

/// Which GDB stub `boot` offers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gdb {
    None,
    /// The SVSM's own stub, for a person at GDB.
    Svsm,
    /// The SVSM's own stub, checked by a scripted client (`rsp.rs`).
    SvsmCheck,
    /// QEMU's stub.
    Qemu,
}

/// The SVSM's region in the QEMU launch (`svsm/src/bare/launch.rs`).
const SVSM_REGION: std::ops::Range<u64> = 0x100_0000..0x200_0000;

/// A TCP port nobody listens on right now.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free TCP port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Boots for the `svm` call benchmark.
const SVM_BENCH_BOOTS: usize = 5;
/// Issue 3's goal: a call costs at most this many bare gates.
const SVM_BENCH_GOAL: f64 = 1.3;

/// The test guest times QUERY_PROTOCOL and the bare gate in every boot (fastest of
/// interleaved blocks); this boots it a few times and reports the median ratio.
fn svm_call_bench() -> Result {
    let image = build_svsm_image(false)?;
    let guest = build_testguest()?;
    let run = qemu::Run {
        svsm: &image,
        guest: Some(&guest),
        append: None,
        smp: 2,
        debug: qemu::Debug::None,
        agent: None,
        fw_cfg: issuing_kit()?,
        notify: Vec::new(),
        limit: std::time::Duration::from_secs(120),
    };
    let (mut runs, mut region) = (Vec::new(), None);
    for i in 1..=SVM_BENCH_BOOTS {
        let boot = qemu::boot(&run)?;
        let line =
            boot.guest_lines.iter().find(|l| l.starts_with("BENCH ")).ok_or("the guest printed no BENCH line")?;
        let field = |name: &str| -> Result<f64> {
            let value = line.split(' ').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
            value.and_then(|v| v.parse().ok()).ok_or_else(|| format!("no {name} in `{line}`"))
        };
        let (query, bare) = (field("query_protocol_cycles")?, field("bare_vmmcall_cycles")?);
        let first = boot.first_line_after.map_or(0.0, |d| d.as_secs_f64());
        step(&format!(
            "svm call bench {i}/{SVM_BENCH_BOOTS}: QUERY_PROTOCOL {query:.0} cycles, bare gate {bare:.0} cycles, ratio {:.2}",
            query / bare
        ));
        runs.push((query, bare, first));
        region = region.or_else(|| svsm_region_bytes(&boot.lines));
    }
    let mut ratios: Vec<f64> = runs.iter().map(|(q, b, _)| q / b).collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    let verdict = if median <= SVM_BENCH_GOAL { "goal met" } else { "goal missed" };
    step(&format!(
        "svm call round trip: median ratio {median:.2} over {SVM_BENCH_BOOTS} boots (goal <= {SVM_BENCH_GOAL}: {verdict})"
    ));
    let entries: Vec<String> = runs
        .iter()
        .map(|(q, b, f)| {
            format!("{{\"query_protocol_cycles\": {q}, \"bare_vmmcall_cycles\": {b}, \"ratio\": {:.4}, \"first_output_s\": {f:.3}}}", q / b)
        })
        .collect();
    let json = format!(
        "{{\n  \"bench\": \"svm_call_round_trip\",\n  \"goal_ratio\": {SVM_BENCH_GOAL},\n  \"median_ratio\": {median:.4},\n  \"svsm_region_bytes\": {},\n  \"runs\": [\n    {}\n  ]\n}}\n",
        region.map_or("null".to_string(), |r| r.to_string()),
        entries.join(",\n    ")
    );
    let out = target_dir()?.join("bench/svm_call.json");
    std::fs::create_dir_all(out.parent().ok_or("bench path has no parent")?).map_err(|e| e.to_string())?;
    std::fs::write(&out, json).map_err(|e| format!("{}: {e}", out.display()))?;
    step(&format!("bench result: {}", out.display()));
    Ok(())
}

/// `cargo xtask boot [--crash ud|panic]`: the bare-metal SVSM under QEMU. With
/// `--crash`, the SVSM is asked to fault after booting, and the run succeeds only if it
/// reports the fault with a symbolized backtrace and stops with a failure status.
fn boot(args: &[String]) -> Result {
    let usage = || {
        format!(
            "usage: cargo xtask boot [--crash ud|panic] [--console log] [--gdb|--gdb-check|--qemu-gdb] [--agent PORT|--agent-check]\n\n{USAGE}"
        )
    };
    let (mut crash, mut gdb, mut log_only) = (None, Gdb::None, false);
    let mut agent_mode = AgentMode::None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--gdb" => gdb = Gdb::Svsm,
            "--gdb-check" => gdb = Gdb::SvsmCheck,
            "--qemu-gdb" => gdb = Gdb::Qemu,
            "--agent" => match it.next().and_then(|p| p.parse().ok()) {
                Some(port) => agent_mode = AgentMode::Serve(port),
                None => return Err(usage()),
            },
            "--agent-check" => agent_mode = AgentMode::Check,
            "--console" => match it.next().map(String::as_str) {
                Some("log") => log_only = true,
                Some("serial") => log_only = false,
                _ => return Err(usage()),
            },
            "--crash" => match it.next().map(String::as_str) {
                Some(kind @ ("ud" | "panic")) => crash = Some(kind),
                _ => return Err(usage()),
            },
            _ => return Err(usage()),
        }
    }
    let with_stub = matches!(gdb, Gdb::Svsm | Gdb::SvsmCheck);
    let image = build_svsm_image(with_stub)?;
    let guest = build_testguest()?;
    let words: Vec<String> = crash
        .map(|kind| format!("crash={kind}"))
        .into_iter()
        .chain(log_only.then(|| "console=log".into()))
        .chain(with_stub.then(|| "gdb".into()))
        .collect();
    let append = (!words.is_empty()).then(|| words.join(" "));
    step(&format!(
        "qemu-system-x86_64 -cpu EPYC,+svm -smp 2 -kernel {}{}",
        image.display(),
        append.as_deref().map(|a| format!(" -append {a}")).unwrap_or_default()
    ));
    let connect = format!("gdb {} -ex 'target remote 127.0.0.1:1234'", image.display());
    let debug = match gdb {
        Gdb::None => qemu::Debug::None,
        Gdb::Qemu => {
            step(&format!("QEMU's GDB stub waits on 127.0.0.1:1234 before the SVSM runs: {connect}"));
            qemu::Debug::Qemu
        }
        Gdb::Svsm => {
            step(&format!("the SVSM's own GDB stub (COM3) waits on 127.0.0.1:1234 once it booted: {connect}"));
            qemu::Debug::Svsm { port: 1234 }
        }
        Gdb::SvsmCheck => qemu::Debug::Svsm { port: free_port()? },
    };
    let agent = match agent_mode {
        AgentMode::None => None,
        AgentMode::Serve(port) => {
            step(&format!(
                "after its checks the guest serves host tools on 127.0.0.1:{port}: cargo run -p bulwark -- ocp list --qemu 127.0.0.1:{port}"
            ));
            Some(port)
        }
        AgentMode::Check => {
            // The scripted check runs the real CLI: build it first.
            exec("cargo build -p bulwark", cargo()?.args(["build", "-p", "bulwark"]))?;
            Some(free_port()?)
        }
    };
    let (ready, stub_ready) = std::sync::mpsc::channel();
    let (agent_ready, agent_up) = std::sync::mpsc::channel();
    let run = qemu::Run {
        svsm: &image,
        guest: Some(&guest),
        append: append.as_deref(),
        smp: 2,
        debug,
        agent,
        fw_cfg: issuing_kit()?,
        // The scripted client starts talking once the stub listens (COM3's set-up clears
        // its receive FIFO).
        notify: vec![("gdb: stopped; waiting for GDB", ready), ("agent: serving host requests", agent_ready)],
        // A debugging session, or host tools at work, take as long as the person needs.
        limit: std::time::Duration::from_secs(
            if matches!(gdb, Gdb::Svsm | Gdb::Qemu) || matches!(agent_mode, AgentMode::Serve(_)) {
                24 * 3600
            } else {
                120
            },
        ),
    };
    let agent_checker = match (agent_mode, agent) {
        (AgentMode::Check, Some(port)) => Some(std::thread::spawn(move || {
            agent_up
                .recv_timeout(std::time::Duration::from_secs(120))
                .map_err(|_| "the guest never served its agent")?;
            agent::check(port)
        })),
        _ => None,
    };
    // The automated check plays GDB from a thread while QEMU runs.
    let checker = match debug {
        qemu::Debug::Svsm { port } if gdb == Gdb::SvsmCheck => Some(std::thread::spawn(move || {
            stub_ready
                .recv_timeout(std::time::Duration::from_secs(60))
                .map_err(|_| "the SVSM's stub never said it waits")?;
            rsp::check_svsm_stub(port, SVSM_REGION)
        })),
        _ => None,
    };
    let boot = qemu::boot(&run)?;
    if let Some(checker) = checker {
        let seen = checker.join().map_err(|_| "the GDB check panicked")??;
        step(&format!("the SVSM's GDB stub answered like GDB expects: {seen}"));
    }
    if let Some(checker) = agent_checker {
        let seen = checker.join().map_err(|_| "the agent check panicked")??;
        step(&format!("host tools reached the SVSM in QEMU through the guest: {seen}"));
    }
    match (boot.outcome, crash) {
        (qemu::Outcome::Success, None) => {
            let verdict = |v: &str| {
                boot.guest_lines.iter().filter(|l| l.starts_with("RESULT ") && l.split(' ').nth(2) == Some(v)).count()
            };
            let (passed, failed, skipped) = (verdict("pass"), verdict("fail"), verdict("skip"));
            let size = std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
            step(&format!(
                "the guest's verdict: {passed} passed, {failed} failed, {skipped} skipped (over real VMMCALLs); run took {:.2} s (first SVSM output after {:.3} s); SVSM image file {} KiB",
                boot.total.as_secs_f64(),
                boot.first_line_after.map_or(0.0, |d| d.as_secs_f64()),
                size / 1024
            ));
            let online = format!("smp: {} CPU(s) online", run.smp);
            if !boot.lines.contains(&online) {
                return Err(format!("the SVSM did not bring all CPUs online (expected `{online}`)"));
            }
            if !boot.lines.iter().any(|l| l.ends_with("runs on cpu 1")) {
                return Err("no guest vCPU ran on a second CPU".into());
            }
            if passed == 0 || failed > 0 {
                return Err("the guest reported success without passing checks".into());
            }
            verify_guest_evidence(&boot.guest_lines)?;
            Ok(())
        }
        (qemu::Outcome::FailureReported, None) => Err("the SVSM or the guest reported a failure".into()),
        (qemu::Outcome::FailureReported, Some(kind)) => {
            // A clean stop names the fault and at least one function of the backtrace.
            let reported = boot.lines.iter().any(|l| l.starts_with("EXCEPTION") || l.starts_with("PANIC"));
            let symbolized = boot.lines.iter().any(|l| l.trim_start().starts_with('#') && l.contains("+0x"));
            if !(reported && symbolized) {
                return Err(format!("crash {kind}: fault reported: {reported}, symbolized backtrace: {symbolized}"));
            }
            step(&format!("the SVSM reported the requested crash ({kind}) with a symbolized backtrace and stopped"));
            if log_only {
                // The serial port stayed quiet until the failure, then got the whole buffer.
                let replay = boot.lines.iter().position(|l| l.starts_with("--- console log buffer"));
                let quiet_before = replay.is_some_and(|r| !boot.lines[..r].iter().any(|l| l.starts_with("image: ")));
                let replayed = replay.is_some_and(|r| boot.lines[r..].iter().any(|l| l.starts_with("image: ")));
                if !(quiet_before && replayed) {
                    return Err(format!(
                        "console=log: serial quiet before the failure: {quiet_before}, log buffer replayed: {replayed}"
                    ));
                }
                step("console=log kept the serial port quiet and replayed the log buffer on the failure");
            }
            Ok(())
        }
        (qemu::Outcome::Success, Some(_)) => Err("the SVSM was asked to crash but reported success".into()),
    }
}

/// Build the test guest (an L2 kernel the SVSM loads as a PVH boot module).
fn build_testguest() -> Result<PathBuf> {
    exec(
        "cargo build --release -p bulwark-testguest --target x86_64-unknown-none",
        cargo()?.args(["build", "--release", "-p", "bulwark-testguest", "--target", "x86_64-unknown-none"]),
    )?;
    Ok(target_dir()?.join("x86_64-unknown-none/release/bulwark-testguest"))
}

/// Build the SVSM image (with its own GDB stub if `gdb_stub`) and embed its symbols.
fn build_svsm_image(gdb_stub: bool) -> Result<PathBuf> {
    prereqs::ensure()?;
    let features: &[&str] = if gdb_stub { &["--features", "gdb"] } else { &[] };
    exec(
        &format!("cargo build --release -p bulwark-svsm --target x86_64-unknown-none {}", features.join(" ")),
        cargo()?.args(["build", "--release", "-p", "bulwark-svsm", "--target", "x86_64-unknown-none"]).args(features),
    )?;
    let image = target_dir()?.join("x86_64-unknown-none/release/bulwark-svsm");
    let named = symbols::embed(&image)?;
    step(&format!("embedded {named} function names for backtraces"));
    let stubs = symbols::c_runtime_stubs(&image)?;
    if !stubs.is_empty() {
        eprintln!(
            "warning: the C archives call {} libc function(s) csupport/libc.c does not implement; \
             they are linked as stubs that stop the SVSM: {}",
            stubs.len(),
            stubs.join(", ")
        );
    }
    Ok(image)
}

/// Why a fuzz run did not succeed.
#[derive(Debug)]
enum FuzzError {
    /// The tooling is missing (no nightly, cargo-fuzz not installable).
    /// `cargo xtask test` treats this as a warning, not a failure.
    Unavailable(String),
    /// The fuzzer ran and failed (crash, leak, timeout) or did not build.
    Failed(String),
}

/// Runs `cargo +nightly fuzz run TARGET` in `fuzz/` for `seconds` seconds,
/// streaming its output and then printing libFuzzer's summary lines.
fn run_fuzzer(target: &str, seconds: u64) -> Result<(), FuzzError> {
    step("checking for the nightly toolchain (rustup run nightly rustc --version)");
    if !succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        return Err(FuzzError::Unavailable(
            "fuzzing needs the nightly toolchain and `rustup run nightly rustc --version` failed; \
             install it with `rustup toolchain install nightly --profile minimal`"
                .to_string(),
        ));
    }

    let root = workspace_root().map_err(FuzzError::Failed)?;
    let fuzz_dir = root.join("fuzz");
    if !fuzz_dir.join("Cargo.toml").is_file() {
        return Err(FuzzError::Failed(format!(
            "no fuzz crate: {} does not exist",
            fuzz_dir.join("Cargo.toml").display()
        )));
    }

    if !succeeds(nightly_cargo(&root).args(["fuzz", "--version"])) {
        exec(
            "cargo install cargo-fuzz --locked",
            cargo().map_err(FuzzError::Failed)?.args(["install", "cargo-fuzz", "--locked"]),
        )
        .map_err(|e| FuzzError::Unavailable(format!("cargo-fuzz could not be installed: {e}")))?;
    }

    let max_time = format!("-max_total_time={seconds}");
    step(&format!("cargo +nightly fuzz run {target} -- {max_time} -rss_limit_mb=4096   (in fuzz/)"));
    let mut child = nightly_cargo(&fuzz_dir)
        .args(["fuzz", "run", target, "--", &max_time, "-rss_limit_mb=4096"])
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| FuzzError::Failed(format!("could not start cargo +nightly fuzz: {e}")))?;

    // libFuzzer reports on stderr: pass everything through, keep the summary.
    let mut summary = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        let mut out = std::io::stderr().lock();
        for line in BufReader::new(stderr).split(b'\n') {
            let line = line.map_err(|e| FuzzError::Failed(format!("reading fuzzer output: {e}")))?;
            // Losing a line of pass-through output is harmless.
            let _ = out.write_all(&line).and_then(|()| out.write_all(b"\n"));
            let text = String::from_utf8_lossy(&line);
            if is_fuzz_summary_line(&text) {
                summary.push(text.trim_end().to_string());
            }
        }
    }
    let status = child.wait().map_err(|e| FuzzError::Failed(format!("waiting for cargo +nightly fuzz: {e}")))?;

    step(&format!("libFuzzer summary for `{target}`:"));
    if summary.is_empty() {
        eprintln!("    (no summary lines in the fuzzer output)");
    }
    for line in &summary {
        eprintln!("    {line}");
    }

    if status.success() {
        Ok(())
    } else {
        Err(FuzzError::Failed(format!(
            "fuzzing `{target}` failed ({}): a crash, leak, timeout or build error, see the \
             output above; crashing inputs are saved under fuzz/artifacts/{target}/",
            describe(status)
        )))
    }
}

/// The lines of libFuzzer's (and cargo-fuzz's) output worth repeating at the end.
fn is_fuzz_summary_line(line: &str) -> bool {
    line.starts_with("Done ")
        || line.contains("\tDONE ")
        || line.contains("SUMMARY:")
        || line.contains("ERROR:")
        || line.contains("Test unit written to")
}

/// Is `cargo nextest` installed?
fn nextest_available() -> Result<bool> {
    Ok(succeeds(cargo()?.args(["nextest", "--version"])))
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "xtask's manifest directory has no parent".to_string())
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `target/` in the workspace.
fn target_dir() -> Result<PathBuf> {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => Ok(workspace_root()?.join("target")),
    }
}

/// The cargo that runs xtask (`$CARGO`, else `cargo`), with cwd at the workspace root.
fn cargo() -> Result<Command> {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root()?);
    Ok(cmd)
}

/// `cargo +nightly` in `dir`. This must be the rustup proxy `cargo` from PATH,
/// not `$CARGO`, so that `+nightly` can switch toolchains.
fn nightly_cargo(dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly")
        .current_dir(dir)
        // Set by the rustup proxy that started us; `+nightly` must win.
        .env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

/// Prints a progress line.
fn step(what: &str) {
    eprintln!("==> {what}");
}

/// Prints `==> title`, runs `cmd` and fails unless it exits successfully.
fn exec(title: &str, cmd: &mut Command) -> Result {
    step(title);
    let status = cmd.status().map_err(|e| format!("`{title}`: could not start: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("`{title}` failed ({})", describe(status))) }
}

/// Runs `cmd` silently and reports whether it started and exited successfully.
fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|status| status.success())
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => format!("{status}"),
    }
}

fn no_args(command: &str, args: &[String]) -> Result {
    match args.first() {
        None => Ok(()),
        Some(arg) => Err(format!("`{command}` takes no arguments (got `{arg}`)\n\n{USAGE}")),
    }
}
