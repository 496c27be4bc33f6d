//! `bulwark`: the command-line tool a Bulwark user runs on the host.
//!
//! Commands (`USAGE` below):
//! - `bulwark attest verify --report F --nonce F --manifest F (--certs F | --ark F --ask F
//!   --vcek F) [--json] [--require-amd-root] [--state-ledger F [--instance NAME
//!   [--accept-new-store]]]`: verify attestation evidence and print the verdict; with a
//!   ledger, refuse an older sealed state than one accepted before, and with an instance,
//!   another store than the one bound to it. Exit status 1 if any check fails.
//! - `bulwark igvm build --svsm ELF --out FILE ...`: the SVSM as an IGVM file (SEV-SNP and
//!   native); `bulwark igvm measure FILE`: the launch digest it gives on SEV-SNP.
//! - `bulwark migrate relay --source F --destination F [--fault KIND@N]`: the host's part
//!   of a live migration between two QEMU instances, hostile on request.
//!
//! and, with the `model` feature (a default one), the commands that run the SVSM on the
//! SEV-SNP model, which links libtpms as the vTPM's engine:
//! - `bulwark conformance [--json] [--filter TEXT] [--platform model|snp|svm]`: run the SVSM
//!   conformance suite through the guest calling convention against the Bulwark kernel on
//!   the SEV-SNP model, one fresh launch per case, and print a report (or JSON). Exit
//!   status 1 if any case fails.
//! - `bulwark attest demo --out DIR`: fresh evidence from the model, written as files.
//! - `bulwark ocp list|read NAME|write NAME VALUE [--json]`: the Observability protocol's
//!   sources on the model.
//! - `bulwark tpm-bridge [--port P] [--qemu HOST:PORT] [--check]`: the vTPM for tpm2-tools
//!   (MS simulator protocol), forwarded as SVSM_VTPM_CMD; `--check` runs a scripted
//!   tpm2-tools session through it.
//!
//! Without the `model` feature (`cargo install --path tools/bulwark --no-default-features`)
//! `bulwark` is a verifier that needs no libtpms; the model's commands then say so.

mod attest_cmd;
mod igvm_cmd;
mod migrate_cmd;
// The model's commands and what only they use.
#[cfg(feature = "model")]
mod agent;
#[cfg(feature = "model")]
mod attest_demo;
#[cfg(feature = "model")]
mod conformance_report;
#[cfg(feature = "model")]
mod ocp_cmd;
#[cfg(feature = "model")]
mod quickack;
#[cfg(feature = "model")]
mod tpm_bridge;
#[cfg(feature = "model")]
mod tpm_session;

use std::process::ExitCode;

const USAGE_HEAD: &str = "usage: bulwark <command> [options]

commands:
  attest verify ...                      verify attestation evidence (`bulwark attest help`)
  igvm build --svsm ELF --out FILE ...   the SVSM as an IGVM file (`bulwark igvm help`)
  igvm measure FILE [--json]             the SEV-SNP launch digest (MEASUREMENT) of an IGVM file
  migrate relay --source F --destination F [--fault KIND@N]
                                         relay a live migration between two QEMU instances'
                                         migration devices (`bulwark migrate help`)";

/// The commands that need the model (feature `model`).
const USAGE_MODEL: &str = "
  conformance [--json] [--filter TEXT] [--platform model|snp|svm]
                                         run the SVSM conformance suite on the SEV-SNP model
  attest demo --out DIR                  obtain evidence on the model and write it as files
  ocp list|read NAME|write NAME VALUE    the Observability protocol's sources on the model
                                         (`--json` for JSON; `bulwark ocp help`)
  tpm-bridge [--port P] [--qemu H:P]     serve the vTPM to tpm2-tools (MS simulator protocol);
             [--check]                   --check runs the scripted tpm2-tools session";

const USAGE_TAIL: &str = "
  help                                   this text";

/// The words that start the model's commands.
const MODEL_COMMANDS: [&str; 4] = ["conformance", "attest demo", "ocp", "tpm-bridge"];

fn usage() -> String {
    if cfg!(feature = "model") {
        format!("{USAGE_HEAD}{USAGE_MODEL}{USAGE_TAIL}")
    } else {
        let left_out = MODEL_COMMANDS.join(", ");
        format!("{USAGE_HEAD}{USAGE_TAIL}\n\nbuilt without the `model` feature: {left_out} are left out")
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.as_slice() {
        [attest, demo, rest @ ..] if attest == "attest" && demo == "demo" => ("attest demo", rest),
        [command, rest @ ..] => (command.as_str(), rest),
        [] => ("help", &[][..]),
    };
    if MODEL_COMMANDS.contains(&command) {
        return on_model(command, rest);
    }
    match command {
        "attest" => attest_cmd::main(rest),
        "igvm" => igvm_cmd::main(rest),
        "migrate" => migrate_cmd::main(rest),
        "help" | "--help" | "-h" => {
            println!("{}", usage());
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("bulwark: unknown command `{other}`\n\n{}", usage());
            ExitCode::from(2)
        }
    }
}

/// One of [`MODEL_COMMANDS`].
#[cfg(feature = "model")]
fn on_model(command: &str, args: &[String]) -> ExitCode {
    match command {
        "conformance" => conformance_report::main(args),
        "attest demo" => attest_demo::main(args),
        "ocp" => ocp_cmd::main(args),
        "tpm-bridge" => tpm_bridge::main(args),
        other => {
            eprintln!("bulwark: `{other}` is not a command of the model\n\n{}", usage());
            ExitCode::from(2)
        }
    }
}

/// One of [`MODEL_COMMANDS`], in a build without the model.
#[cfg(not(feature = "model"))]
fn on_model(command: &str, _args: &[String]) -> ExitCode {
    eprintln!(
        "bulwark {command}: this bulwark was built without the `model` feature (the SEV-SNP model, \
         which links libtpms); build it with default features to run {command}"
    );
    ExitCode::from(2)
}
