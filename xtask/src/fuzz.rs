//! `cargo xtask fuzz`, and the fuzz smoke run of `cargo xtask test`: libFuzzer through
//! cargo-fuzz on the nightly toolchain, in the separate `fuzz/` workspace, with its output
//! passed through and its summary lines repeated at the end.

use crate::Result;
use crate::cli::FuzzOptions;
use crate::shell::{cargo, describe, exec, nightly_cargo, step, succeeds, workspace_root};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{ChildStderr, Command, Stdio};

/// Why a fuzz run did not succeed.
#[derive(Debug)]
pub enum FuzzError {
    /// The tooling is missing (no nightly, cargo-fuzz not installable).
    /// `cargo xtask test` treats this as a warning, not a failure.
    Unavailable(String),
    /// The fuzzer ran and failed (crash, leak, timeout) or did not build.
    Failed(String),
}

/// `cargo xtask fuzz [--seconds N] [--target NAME]`.
pub fn run(options: &FuzzOptions) -> Result {
    run_fuzzer(&options.target, options.seconds).map_err(|e| match e {
        FuzzError::Unavailable(message) | FuzzError::Failed(message) => message,
    })
}

/// Runs `cargo +nightly fuzz run TARGET` in `fuzz/` for `seconds` seconds,
/// streaming its output and then printing libFuzzer's summary lines.
pub fn run_fuzzer(target: &str, seconds: u64) -> Result<(), FuzzError> {
    let fuzz_dir = fuzz_tooling()?;
    let max_time = format!("-max_total_time={seconds}");
    step(&format!("cargo +nightly fuzz run {target} -- {max_time} -rss_limit_mb=4096   (in fuzz/)"));
    let mut child = nightly_cargo(&fuzz_dir)
        .args(["fuzz", "run", target, "--", &max_time, "-rss_limit_mb=4096"])
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| FuzzError::Failed(format!("could not start cargo +nightly fuzz: {e}")))?;
    let summary = match child.stderr.take() {
        Some(stderr) => pass_through(stderr)?,
        None => Vec::new(),
    };
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

/// The nightly toolchain, the fuzz crate and cargo-fuzz (installed if missing); returns
/// the fuzz crate's directory.
fn fuzz_tooling() -> Result<PathBuf, FuzzError> {
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
    Ok(fuzz_dir)
}

/// libFuzzer reports on stderr: pass everything through, keep the summary lines.
fn pass_through(stderr: ChildStderr) -> Result<Vec<String>, FuzzError> {
    let mut summary = Vec::new();
    let mut out = std::io::stderr().lock();
    for line in BufReader::new(stderr).split(b'\n') {
        let line = line.map_err(|e| FuzzError::Failed(format!("reading fuzzer output: {e}")))?;
        // Losing a line of pass-through output is harmless.
        let _ = out.write_all(&line).and_then(|()| out.write_all(b"\n"));
        let text = String::from_utf8_lossy(&line);
        if is_summary_line(&text) {
            summary.push(text.trim_end().to_string());
        }
    }
    Ok(summary)
}

/// The lines of libFuzzer's (and cargo-fuzz's) output worth repeating at the end.
fn is_summary_line(line: &str) -> bool {
    line.starts_with("Done ")
        || line.contains("\tDONE ")
        || line.contains("SUMMARY:")
        || line.contains("ERROR:")
        || line.contains("Test unit written to")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_keeps_libfuzzers_verdict_lines_only() {
        assert!(is_summary_line("Done 1234 runs in 61 second(s)"));
        assert!(is_summary_line("==42== ERROR: libFuzzer: deadly signal"));
        assert!(is_summary_line("SUMMARY: libFuzzer: deadly signal"));
        assert!(is_summary_line("artifact_prefix='x'; Test unit written to fuzz/artifacts/a"));
        assert!(!is_summary_line("#1024\tpulse  cov: 812 ft: 2301 corp: 90/4Kb"));
        assert!(!is_summary_line("   Compiling bulwark-model v0.1.0"));
    }
}
