//! The bare-metal images and what a boot hands them: the SVSM (with its symbol table
//! embedded for backtraces), the test guest, and the issuing kit the SVSM's software PSP
//! certifies its VCEK with.

use crate::Result;
use crate::shell::{cargo, exec, exec_cargo, step, target_dir};
use crate::{prereqs, symbols};
use std::path::PathBuf;

/// Build the SVSM image (with its own GDB stub if `gdb_stub`) and embed its symbols.
/// The service modules it carries are built first and packaged into it.
pub fn build_svsm(gdb_stub: bool) -> Result<PathBuf> {
    prereqs::ensure()?;
    let probe = build_service("bulwark-probe")?;
    let vtpm = build_service("bulwark-vtpm-service")?;
    let features: &[&str] = if gdb_stub { &["--features", "gdb"] } else { &[] };
    let mut args = vec!["build", "--release", "-p", "bulwark-svsm", "--target", "x86_64-unknown-none"];
    args.extend(features);
    exec(
        &format!("cargo {}", args.join(" ")),
        cargo()?.args(&args).env("BULWARK_PROBE_ELF", &probe).env("BULWARK_VTPM_ELF", &vtpm),
    )?;
    let image = target_dir()?.join("x86_64-unknown-none/release/bulwark-svsm");
    let named = symbols::embed(&image)?;
    step(&format!("embedded {named} function names for backtraces"));
    symbols::check_hot_path(&image)?;
    let stubs = symbols::c_runtime_stubs(&vtpm)?;
    if !stubs.is_empty() {
        eprintln!(
            "warning: the C archives call {} libc function(s) services/vtpm/csupport/libc.c does not \
             implement; they are linked as stubs that end the vTPM process: {}",
            stubs.len(),
            stubs.join(", ")
        );
    }
    Ok(image)
}

/// Build a service module. Modules live in the user half, far from the kernel's
/// addresses, which no static non-PIC code can reach (it needs addresses within 2 GiB of
/// zero or of the top): they are compiled position-independent and linked statically at
/// their fixed address, in a target directory of their own so the kernel's static
/// build keeps its artifacts.
fn build_service(package: &str) -> Result<PathBuf> {
    let dir = target_dir()?.join("services");
    let args = ["build", "--release", "-p", package, "--target", "x86_64-unknown-none"];
    exec(
        &format!("cargo {}", args.join(" ")),
        cargo()?
            .args(args)
            .env("CARGO_TARGET_DIR", &dir)
            // Without debug info: the module is carried inside the image.
            .env("RUSTFLAGS", "-C relocation-model=pic -C force-frame-pointers=yes -C strip=debuginfo"),
    )?;
    Ok(dir.join("x86_64-unknown-none/release").join(package))
}

/// Build the test guest (an L2 kernel the SVSM loads as a PVH boot module).
pub fn build_testguest() -> Result<PathBuf> {
    exec_cargo(&["build", "--release", "-p", "bulwark-testguest", "--target", "x86_64-unknown-none"])?;
    Ok(target_dir()?.join("x86_64-unknown-none/release/bulwark-testguest"))
}

/// The issuing kit for the SVSM's software PSP (the test authority's ARK and ASK), as a
/// fw_cfg file: with it the SVSM certifies its per-boot VCEK.
pub fn issuing_kit() -> Result<Vec<(&'static str, PathBuf)>> {
    let kit = attest::chain::TestAuthority::shared()
        .issuing_kit(&abi::attest::SVM_CHIP_ID)
        .map_err(|e| format!("issuing kit: {e}"))?;
    let path = target_dir()?.join("issuing-kit.bin");
    std::fs::write(&path, kit).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(vec![(abi::attest::issuing_kit::FW_CFG_NAME, path)])
}
