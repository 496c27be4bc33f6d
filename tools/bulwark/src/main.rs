//! `bulwark`: the command-line tool a Bulwark user runs on the host.
//!
//! Commands:
//! - `bulwark conformance [--json] [--filter TEXT] [--platform model|snp|svm]`: run the SVSM conformance suite
//!   through the guest calling convention against the Bulwark kernel on the SEV-SNP model,
//!   one fresh launch per case, and print a report (or JSON). Exit status 1 if any case
//!   fails.
//! - `bulwark attest verify --report F --nonce F --manifest F (--certs F | --ark F --ask F
//!   --vcek F) [--json] [--require-amd-root]`: verify attestation evidence and print the
//!   verdict. Exit status 1 if any check fails.
//! - `bulwark attest demo --out DIR`: fresh evidence from the model, written as files.
//! - `bulwark ocp list|read NAME|write NAME VALUE [--json]`: the Observability protocol's
//!   sources on the model.
//! - `bulwark tpm-bridge [--port P] [--qemu HOST:PORT] [--check]`: the vTPM for tpm2-tools
//!   (MS simulator protocol), forwarded as SVSM_VTPM_CMD; `--check` runs a scripted
//!   tpm2-tools session through it.
//! - `bulwark igvm build --svsm ELF --out FILE ...`: the SVSM as an IGVM file (SEV-SNP and
//!   native); `bulwark igvm measure FILE`: the launch digest it gives on SEV-SNP.

mod agent;
mod attest_cmd;
mod conformance_report;
mod igvm_cmd;
mod ocp_cmd;
mod quickack;
mod tpm_bridge;
mod tpm_session;

use std::process::ExitCode;

const USAGE: &str = "usage: bulwark <command> [options]

commands:
  conformance [--json] [--filter TEXT] [--platform model|snp|svm]
                                         run the SVSM conformance suite on the SEV-SNP model
  attest verify ...                      verify attestation evidence (`bulwark attest help`)
  attest demo --out DIR                  obtain evidence on the model and write it as files
  ocp list|read NAME|write NAME VALUE    the Observability protocol's sources on the model
                                         (`--json` for JSON; `bulwark ocp help`)
  tpm-bridge [--port P] [--qemu H:P]     serve the vTPM to tpm2-tools (MS simulator protocol);
             [--check]                   --check runs the scripted tpm2-tools session
  igvm build --svsm ELF --out FILE ...   the SVSM as an IGVM file (`bulwark igvm help`)
  igvm measure FILE [--json]             the SEV-SNP launch digest (MEASUREMENT) of an IGVM file
  help                                   this text";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("conformance") => conformance_report::main(&args[1..]),
        Some("attest") => attest_cmd::main(&args[1..]),
        Some("ocp") => ocp_cmd::main(&args[1..]),
        Some("tpm-bridge") => tpm_bridge::main(&args[1..]),
        Some("igvm") => igvm_cmd::main(&args[1..]),
        Some("help" | "--help" | "-h") | None => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("bulwark: unknown command `{other}`\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
