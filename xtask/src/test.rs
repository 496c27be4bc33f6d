//! `cargo xtask test`: everything CI checks, in the order that fails fastest: formatting
//! and lints, the bare-metal builds, the QEMU boots, a fuzz smoke run, then every test.

use crate::Result;
use crate::cli::{AgentMode, BootOptions, Crash, DEFAULT_FUZZ_TARGET, Gdb, StateDisk, Tamper};
use crate::fuzz::{self, FuzzError};
use crate::shell::{cargo, exec_cargo, step, succeeds};
use crate::{boot, prereqs};

/// How long each fuzz target runs in the smoke run: the dispatcher (guest and host input
/// to the SVSM), then the host-side verifier (evidence from an SVSM and host that may
/// lie), the system call layer (a service process's calls), the sealed store (a hostile
/// disk), a migration destination (a state stream), a migration peer's evidence (within
/// the heap the SVSM leaves for it) and the state disk's driver (a host that misbehaves),
/// which need less time to go deep.
const SMOKE_FUZZ: [(&str, u64); 7] = [
    (DEFAULT_FUZZ_TARGET, 60),
    ("evidence", 20),
    ("syscalls", 20),
    ("store", 20),
    ("stream", 20),
    ("peer_evidence", 20),
    ("disk", 20),
];

/// `cargo xtask test`: the project's full test command, as run by CI.
pub fn run() -> Result {
    prereqs::ensure()?;
    lints()?;
    boots()?;
    fuzz_smoke()?;
    // The tests run last so that their summary closes the output. (The project has no
    // doctests; nextest does not run them, so add a `cargo test --doc` step with the first.)
    if succeeds(cargo()?.args(["nextest", "--version"])) {
        exec_cargo(&["nextest", "run", "--workspace"])
    } else {
        exec_cargo(&["test", "--workspace"])
    }
}

/// fmt, clippy on the host (the workspace, then the verifier-only `bulwark`, whose
/// feature set no workspace build has), the kernel built and the bare-metal crates linted
/// for `x86_64-unknown-none` (the SVSM also with its GDB stub, which `--gdb-check` boots),
/// all with warnings as errors.
fn lints() -> Result {
    exec_cargo(&["fmt", "--all", "--", "--check"])?;
    exec_cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    exec_cargo(&["clippy", "-p", "bulwark", "--no-default-features", "--all-targets", "--", "-D", "warnings"])?;
    // `cargo rustc` gives `-D warnings` to the kernel alone: RUSTFLAGS would replace the
    // target's rustflags in .cargo/config.toml, which the crypto crates need.
    exec_cargo(&["rustc", "-p", "bulwark-kernel", "--lib", "--target", "x86_64-unknown-none", "--", "-D", "warnings"])?;
    exec_cargo(&[
        "clippy",
        "-p",
        "bulwark-svsm",
        "-p",
        "bulwark-testguest",
        "-p",
        "bulwark-x86",
        "-p",
        "bulwark-user-rt",
        "-p",
        "bulwark-probe",
        "-p",
        "bulwark-vtpm-service",
        "-p",
        "bulwark-store",
        "--target",
        "x86_64-unknown-none",
        "--",
        "-D",
        "warnings",
    ])?;
    exec_cargo(&[
        "clippy",
        "-p",
        "bulwark-svsm",
        "--features",
        "gdb",
        "--target",
        "x86_64-unknown-none",
        "--",
        "-D",
        "warnings",
    ])
}

/// The thirteen QEMU boots: plain (with the guest's evidence verified), three crashes
/// (a call into heap data, one into the low 2 MiB, a panic with the log kept in memory), the SVSM's GDB stub, the host agent, a boot that
/// finds the vTPM state the agent boot left on the state disk, four on copies of that
/// disk a host changed (bits flipped, blocks replayed from the older image, blocks
/// swapped, truncated), one on a disk whose host never answers, and one on the disk as
/// the first boot left it (refused by the ledger). The first and the last boot must derive the
/// same sealed-store key: the same image on the same (software) chip. Then a live
/// migration between more instances (`cargo xtask migrate --other-image --fault flip@300 --guest-mib 16 --drop-finish`).
fn boots() -> Result {
    let plain = BootOptions::default();
    // The state disk starts blank: the first boot formats it and manufactures the vTPM
    // there; the agent boot starts the vTPM from it, runs the sessions and leaves an NV
    // index and a persistent EK; the last boot finds them. Its ledger starts empty with
    // it: each boot's evidence must show a sealed state no older than the last one.
    let disk = crate::shell::target_dir()?.join("qemu-test-state.img");
    let _ = std::fs::remove_file(&disk);
    let _ = std::fs::remove_file(disk.with_extension("tpm.json"));
    let _ = std::fs::remove_file(disk.with_extension("ledger.json"));
    let first = boot::run_seen(&BootOptions { disk: StateDisk::Test, ..plain })?;
    // The disk as the first boot left it: an authentic state older than what later boots
    // leave, for the rollback boot at the end.
    let older = disk.with_file_name("qemu-test-older.img");
    std::fs::copy(&disk, &older).map_err(|e| format!("{}: {e}", older.display()))?;
    boot::run(&BootOptions { crash: Some(Crash::Nx), ..plain })?;
    boot::run(&BootOptions { crash: Some(Crash::Low), ..plain })?;
    boot::run(&BootOptions { crash: Some(Crash::Panic), log_only: true, ..plain })?;
    boot::run(&BootOptions { gdb: Gdb::SvsmCheck, ..plain })?;
    boot::run(&BootOptions { agent: AgentMode::Check, disk: StateDisk::Test, ..plain })?;
    let last = boot::run_seen(&BootOptions { agent: AgentMode::Verify, disk: StateDisk::Test, ..plain })?;
    // A host that changed the stored state, four ways: refused, the vTPM does not start,
    // the rest of the SVSM serves the guest's checks.
    for tamper in Tamper::ALL {
        boot::run(&BootOptions { disk: StateDisk::TestTampered(tamper), ..plain })?;
    }
    // A host that never completes a request: the SVSM gives up at its deadline, refuses
    // the store and serves on without the vTPM.
    boot::run(&BootOptions { disk: StateDisk::TestLosesIo, ..plain })?;
    // A host that presents the whole older image: the SVSM opens it (it is authentic),
    // and the verifier's ledger refuses the evidence.
    boot::run(&BootOptions { disk: StateDisk::TestOlder, ..plain })?;
    if first != last {
        return Err(format!("the sealed store's key changed between two boots of one image: {first:?}, then {last:?}"));
    }
    step(&format!(
        "the sealed store's key is the same in two boots of one image (fingerprint {})",
        first.as_deref().unwrap_or("?")
    ));
    // A live migration between QEMU instances: first to a destination launched with
    // another measurement (refused before any state leaves), then through a relay that
    // flips a bit (refused; the source's guest runs on), then through one that only drops
    // the FINISH (offered again: the guest arrives). The guest grows by 16 MiB of 2 MiB
    // pages first, so 2 MiB RMP entries move too.
    let options = crate::migrate::MigrateOptions {
        fault: Some("flip@300".into()),
        other_image: true,
        guest_mib: 16,
        drop_finish: true,
        ..Default::default()
    };
    crate::qemu::once_more("migrating", |_| crate::migrate::run(&options)).map(|_| ())
}

/// A short run of each fuzz target, unless `BULWARK_SKIP_FUZZ` is set; missing tooling
/// (no nightly) is a warning, not a failure.
fn fuzz_smoke() -> Result {
    if std::env::var_os("BULWARK_SKIP_FUZZ").is_some() {
        step("fuzz smoke run skipped: BULWARK_SKIP_FUZZ is set");
        return Ok(());
    }
    for (target, seconds) in SMOKE_FUZZ {
        match fuzz::run_fuzzer(target, seconds) {
            Ok(()) => {}
            Err(FuzzError::Unavailable(reason)) => {
                eprintln!("warning: fuzz smoke skipped: {reason}");
                break;
            }
            Err(FuzzError::Failed(message)) => return Err(message),
        }
    }
    Ok(())
}
