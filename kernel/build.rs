//! Build identity for the Observability protocol's `build.git` source: the commit the
//! kernel was built from, or "unknown" outside a git checkout.

use std::process::Command;

fn main() {
    let hash = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BULWARK_GIT_HASH={hash}");
    // A new commit changes HEAD or the branch it points to.
    for path in ["../.git/HEAD", "../.git/refs/heads"] {
        println!("cargo:rerun-if-changed={path}");
    }
}
