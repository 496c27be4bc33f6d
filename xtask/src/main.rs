//! `cargo xtask`: Bulwark's task runner.
//!
//! This crate owns the project's entry points for developers and CI (the usage text is
//! `cli::USAGE`):
//!
//! - `run`   — the conformance report (`bulwark conformance`) on the model's and the snp
//!   platform, then `boot`;
//! - `test`  — everything CI checks (`test.rs`): fmt, clippy, the bare-metal builds, five
//!   QEMU boots, a short fuzz smoke run and all tests;
//! - `fuzz`  — a libFuzzer run through cargo-fuzz on the nightly toolchain (`fuzz.rs`);
//! - `bench` — the model's benchmarks, the tpm-bridge benchmark and the svm call round
//!   trip (`bench.rs`);
//! - `boot`  — the bare-metal SVSM booted under QEMU with the test guest (`boot.rs`);
//! - `igvm`  — the SVSM as an IGVM file for SEV-SNP hosts (`igvm.rs`);
//! - `migrate` — a live migration between two QEMU instances (`migrate.rs`).
//!
//! Around them: the command line (`cli.rs`), running cargo and other programs
//! (`shell.rs`), building the bare-metal images (`image.rs`), QEMU (`qemu.rs`), the
//! machine's packages (`prereqs.rs`), the SVSM's symbol table (`symbols.rs`), and the
//! scripted checks of a boot (`rsp.rs`, `agent.rs`, `evidence.rs`). Every cargo child runs
//! with the workspace root as its working directory.

mod agent;
mod bench;
mod boot;
mod cli;
mod evidence;
mod fuzz;
mod igvm;
mod image;
mod migrate;
mod prereqs;
mod qemu;
mod rsp;
mod shell;
mod symbols;
mod test;

use cli::{RunOptions, Task};
use std::process::ExitCode;

type Result<T = (), E = String> = std::result::Result<T, E>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = cli::parse(&args).and_then(|task| match task {
        Task::Run(options) => run(&options),
        Task::Test => test::run().map(|()| ExitCode::SUCCESS),
        Task::Fuzz(options) => fuzz::run(&options).map(|()| ExitCode::SUCCESS),
        Task::Bench(parts) => bench::run(parts).map(|()| ExitCode::SUCCESS),
        Task::Boot(options) => boot::run(&options).map(|()| ExitCode::SUCCESS),
        Task::Igvm(options) => igvm::run(&options).map(|()| ExitCode::SUCCESS),
        Task::Migrate(options) => migrate::run(&options).map(|_| ExitCode::SUCCESS),
        Task::Help => {
            print!("{}", cli::USAGE);
            Ok(ExitCode::SUCCESS)
        }
    });
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask run`: the main job. The conformance suite on the SEV-SNP model
/// (`bulwark conformance`), served by the model's platform and by the snp platform, then
/// the SVSM booted for real under QEMU serving the test guest over VMMCALL (`cargo xtask
/// boot`). Fails if any fails; a failing suite's exit code is passed on.
fn run(options: &RunOptions) -> Result<ExitCode> {
    prereqs::ensure()?;
    let args = options.conformance_args();
    // The suite with the model's own platform, then through the snp platform (GHCB, AP
    // creation, guest requests to the model's software host).
    for platform in ["model", "snp"] {
        let mut cmd = shell::cargo()?;
        cmd.args(["run", "--release", "-p", "bulwark", "--", "conformance", "--platform", platform]).args(&args);
        shell::step(&format!("cargo run --release -p bulwark -- conformance --platform {platform} {}", args.join(" ")));
        let status = cmd.status().map_err(|e| format!("could not start cargo: {e}"))?;
        if !status.success() {
            return Ok(ExitCode::from(status.code().map_or(1, |c| c.clamp(1, 255) as u8)));
        }
    }
    // The state disk is kept between runs: a second run finds the same vTPM.
    boot::run(&cli::BootOptions { disk: cli::StateDisk::Kept, ..cli::BootOptions::default() })?;
    Ok(ExitCode::SUCCESS)
}
