//! What the project needs from the machine, installed with apt (Debian/Ubuntu, as root)
//! when missing: QEMU for the boots, libtpms and libcrypto (static archives too, for the
//! bare-metal vTPM), tpm2-tools as the vTPM's client, swtpm as the benchmark's reference,
//! pip for the launch-digest cross-check, OVMF (with its SEV metadata) for the IGVM
//! firmware tests, and the bare-metal Rust target. `cargo xtask bench` also needs
//! tpm2-abrmd (with its client library and a D-Bus daemon for its private bus) in front of
//! the bridge and swtpm; CI does not run the benchmarks, so those are installed by the
//! bench alone and are not on .ci/run's apt line.

use std::path::Path;
use std::process::{Command, Stdio};

/// (package, a file or command that shows it is installed).
const PACKAGES: &[(&str, Probe)] = &[
    ("qemu-system-x86", Probe::Command("qemu-system-x86_64")),
    ("libtpms-dev", Probe::File("/usr/lib/x86_64-linux-gnu/libtpms.a")),
    ("libssl-dev", Probe::File("/usr/lib/x86_64-linux-gnu/libcrypto.a")),
    ("tpm2-tools", Probe::Command("tpm2_getrandom")),
    ("swtpm", Probe::Command("swtpm")),
    // The launch-digest cross-check installs sev-snp-measure with pip.
    ("python3-pip", Probe::Pip),
    // OVMF.fd carries the SEV metadata `bulwark igvm build --firmware` honours.
    ("ovmf", Probe::File("/usr/share/ovmf/OVMF.fd")),
];

/// What only `cargo xtask bench` needs: the tpm-bridge benchmark runs tpm2-tools through
/// tpm2-abrmd on a private session bus.
const BENCH_PACKAGES: &[(&str, Probe)] = &[
    ("tpm2-abrmd", Probe::Command("tpm2-abrmd")),
    ("libtss2-tcti-tabrmd0", Probe::File("/usr/lib/x86_64-linux-gnu/libtss2-tcti-tabrmd.so.0")),
    ("dbus-daemon", Probe::Command("dbus-daemon")),
];

enum Probe {
    Command(&'static str),
    File(&'static str),
    Pip,
}

impl Probe {
    fn present(&self) -> bool {
        match self {
            Probe::File(path) => Path::new(path).exists(),
            Probe::Pip => Command::new("python3")
                .args(["-m", "pip", "--version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            Probe::Command(name) => Command::new(name)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        }
    }
}

/// Install every missing package in one apt run, and the bare-metal target.
pub fn ensure() -> Result<(), String> {
    install_packages(PACKAGES)?;
    bare_metal_target()
}

/// `ensure`, and what the benchmarks need beyond it.
pub fn ensure_bench() -> Result<(), String> {
    ensure()?;
    install_packages(BENCH_PACKAGES)
}

/// The target the SVSM and the test guest are built for. rustup adds the targets of
/// rust-toolchain.toml only when it installs the toolchain, so a machine that already had
/// the pinned toolchain lacks it (and every bare-metal build fails with E0463).
const BARE_METAL_TARGET: &str = "x86_64-unknown-none";

fn bare_metal_target() -> Result<(), String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("could not run rustup: {e}"))?;
    if String::from_utf8_lossy(&installed.stdout).lines().any(|t| t.trim() == BARE_METAL_TARGET) {
        return Ok(());
    }
    eprintln!("==> installing the {BARE_METAL_TARGET} target (rustup target add)");
    let added = Command::new("rustup").args(["target", "add", BARE_METAL_TARGET]).status();
    if added.is_ok_and(|s| s.success()) {
        Ok(())
    } else {
        Err(format!("`rustup target add {BARE_METAL_TARGET}` failed"))
    }
}

fn install_packages(packages: &[(&str, Probe)]) -> Result<(), String> {
    let missing: Vec<&str> = packages.iter().filter(|(_, probe)| !probe.present()).map(|(p, _)| *p).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("==> installing {} (apt-get install)", missing.join(" "));
    let apt = |args: &[&str]| {
        Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").status().is_ok_and(|s| s.success())
    };
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    // A fresh machine may have no package lists yet.
    if apt(&install) || (apt(&["update", "-qq"]) && apt(&install)) {
        Ok(())
    } else {
        Err(format!("missing packages and `apt-get install {}` failed (are you root?)", missing.join(" ")))
    }
}
