//! Link the bare-metal image with its own linker script (load address, PVH note), and
//! package the service modules `cargo xtask` built first into it.
//!
//! The image's lint wall (no unwrap/expect/panic, indexing or truncating casts, in
//! src/main.rs) does not cover this script on purpose: it runs on the build machine,
//! reads only files `cargo xtask` names, never guest or host input, and `expect` with a
//! message is how a build script should stop a build that cannot go on (cargo prints it).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    if std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-none") {
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
    println!("cargo:rerun-if-changed=linker.ld");
    package("BULWARK_PROBE_ELF", "probe.elf");
    package("BULWARK_VTPM_ELF", "vtpm.elf");
}

/// A service module (services/), built first by `cargo xtask`, which names it in `var`;
/// without it (a plain `cargo build`, or clippy) the image carries an empty module and
/// says so at boot.
fn package(var: &str, name: &str) {
    println!("cargo:rerun-if-env-changed={var}");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join(name);
    let bytes = match std::env::var(var) {
        Ok(path) if !path.is_empty() => {
            println!("cargo:rerun-if-changed={path}");
            std::fs::read(&path).unwrap_or_else(|e| panic!("{var}={path}: {e}"))
        }
        _ => Vec::new(),
    };
    std::fs::write(&out, bytes).expect("OUT_DIR is writable");
}
