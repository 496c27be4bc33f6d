//! Rules about the dependency graph that compiling alone would not keep, checked with
//! `cargo tree` (no build):
//!
//! - the kernel links no signing code: P-384/ECDSA belong to the software PSP
//!   (`bulwark-softpsp`), which only the platforms without AMD's PSP run; the kernel
//!   needs the message layer (`bulwark-psp`) alone;
//! - `bulwark` built with `--no-default-features` is the verifier (`attest verify`,
//!   `igvm`) and does not link libtpms: neither the model nor the vTPM's `libtpms` feature
//!   (which is what links the library, `vtpm/build.rs`) is in its graph.

use std::path::Path;
use std::process::Command;

/// `cargo tree ARGS --prefix none` at the workspace root: one package (or feature) a line.
fn tree(args: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(env!("CARGO"))
        .current_dir(root)
        .arg("tree")
        .args(args)
        .args(["--prefix", "none"])
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "cargo tree {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// The lines that name a package of `names` (`name v1.2.3 ...`) or one of its features
/// (`name feature "f"`).
fn naming<'a>(lines: &'a [String], names: &[&str]) -> Vec<&'a String> {
    lines.iter().filter(|l| names.iter().any(|n| l.split(' ').next() == Some(n))).collect()
}

#[test]
fn the_kernel_has_the_message_layer_and_no_signing_code() {
    let kernel = tree(&["-p", "bulwark-kernel", "-e", "normal"]);
    assert!(!naming(&kernel, &["bulwark-psp", "aes-gcm"]).is_empty(), "the kernel's PSP channel: {kernel:?}");
    let signing = naming(&kernel, &["bulwark-softpsp", "p384", "ecdsa", "elliptic-curve", "rsa"]);
    assert!(signing.is_empty(), "signing code in the kernel's graph: {signing:?}");
}

#[test]
fn the_verifier_alone_does_not_link_libtpms() {
    let lean = tree(&["-p", "bulwark", "--no-default-features", "-e", "normal,build,features"]);
    assert!(!naming(&lean, &["bulwark-attest"]).is_empty(), "the verifier's own crate: {lean:?}");
    let libtpms = lean.iter().filter(|l| l.contains("feature \"libtpms\"")).collect::<Vec<_>>();
    assert!(libtpms.is_empty(), "libtpms in `bulwark --no-default-features`: {libtpms:?}");
    let model = naming(&lean, &["bulwark-model", "bulwark-vtpm"]);
    assert!(model.is_empty(), "the model or the vTPM in the verifier: {model:?}");

    // The same query sees libtpms where it is: the default build, with the model.
    let full = tree(&["-p", "bulwark", "-e", "normal,build,features"]);
    assert!(full.iter().any(|l| l == "bulwark-vtpm feature \"libtpms\""), "{full:?}");
}
