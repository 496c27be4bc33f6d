//! How xtask finds the workspace and runs other programs: the workspace root and target
//! directory, `cargo` (stable, as started by `cargo xtask`) and `cargo +nightly`, and
//! running a child with a progress line (`==> what`, on stderr so that `cargo xtask run
//! --json` keeps a machine-readable stdout).

use crate::Result;
use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "xtask's manifest directory has no parent".to_string())
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `target/` in the workspace.
pub fn target_dir() -> Result<PathBuf> {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => Ok(workspace_root()?.join("target")),
    }
}

/// The cargo that runs xtask (`$CARGO`, else `cargo`), with cwd at the workspace root.
pub fn cargo() -> Result<Command> {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root()?);
    Ok(cmd)
}

/// `cargo +nightly` in `dir`. This must be the rustup proxy `cargo` from PATH,
/// not `$CARGO`, so that `+nightly` can switch toolchains.
pub fn nightly_cargo(dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly")
        .current_dir(dir)
        // Set by the rustup proxy that started us; `+nightly` must win.
        .env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

/// Prints a progress line.
pub fn step(what: &str) {
    eprintln!("==> {what}");
}

/// Prints `==> title`, runs `cmd` and fails unless it exits successfully.
pub fn exec(title: &str, cmd: &mut Command) -> Result {
    step(title);
    let status = cmd.status().map_err(|e| format!("`{title}`: could not start: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("`{title}` failed ({})", describe(status))) }
}

/// `exec` of `cargo ARGS`, titled with the command line.
pub fn exec_cargo(args: &[&str]) -> Result {
    exec(&format!("cargo {}", args.join(" ")), cargo()?.args(args))
}

/// Runs `cmd` silently and reports whether it started and exited successfully.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|status| status.success())
}

/// An exit status in words: its code, or how it ended without one (a signal).
pub fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => format!("{status}"),
    }
}
