//! The scripted check of the guest's host agent: the real `bulwark ocp` commands and the
//! scripted tpm2-tools session of `bulwark tpm-bridge --check`, run against the SVSM in
//! QEMU through the guest (host tool -> guest COM4 -> VMMCALL), then `quit` so the guest
//! finishes.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;

pub(crate) fn bulwark(args: &[&str]) -> Result<String, String> {
    let exe = crate::shell::target_dir()?.join("debug/bulwark");
    let out = Command::new(&exe).args(args).output().map_err(|e| format!("{}: {e}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("bulwark {}: {}{}", args.join(" "), text, String::from_utf8_lossy(&out.stderr)));
    }
    Ok(text)
}

/// What the agent check runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `bulwark ocp` and the full tpm2-tools session.
    pub session: bool,
    /// With a state disk: where the record of what the vTPM was left with is kept. An
    /// existing record is verified first; a full check then records anew.
    pub state: Option<PathBuf>,
}

/// `bulwark tpm-bridge --persist MODE --state FILE`: its last line, or why it failed.
fn persist(at: &str, mode: &str, state: &std::path::Path) -> Result<String, String> {
    let state = state.to_string_lossy();
    let report = bulwark(&["tpm-bridge", "--qemu", at, "--persist", mode, "--state", &state])?;
    println!("{}", report.trim_end());
    Ok(report.lines().rev().find(|l| l.starts_with("pass")).unwrap_or("").to_string())
}

/// Run the commands a user would, check what they print, then release the guest.
pub fn check(port: u16, plan: &Plan) -> Result<String, String> {
    let at = format!("127.0.0.1:{port}");
    let result = (|| {
        let mut seen = Vec::new();
        if let Some(state) = plan.state.as_ref().filter(|s| s.exists()) {
            seen.push(format!("kept from an earlier boot: {}", persist(&at, "verify", state)?));
        } else if !plan.session {
            return Err("nothing to verify: no earlier boot recorded what it left in the vTPM".into());
        }
        if !plan.session {
            return Ok(seen.join("; "));
        }
        let listing = bulwark(&["ocp", "list", "--qemu", &at])?;
        if !listing.contains("config.log_level") || !listing.contains("log") {
            return Err(format!("bulwark ocp list printed:\n{listing}"));
        }
        let platform = bulwark(&["ocp", "read", "build.platform", "--qemu", &at])?;
        if platform.trim() != "svm" {
            return Err(format!("build.platform read `{}`", platform.trim()));
        }
        let written = bulwark(&["ocp", "write", "config.log_level", "debug", "--qemu", &at, "--json"])?;
        if !written.contains("\"debug") {
            return Err(format!("writing the log level printed:\n{written}"));
        }
        let log = bulwark(&["ocp", "read", "log", "--qemu", &at])?;
        if !log.starts_with("bulwark-svsm") {
            return Err(format!("the log does not start with the SVSM's banner: {}", log.lines().next().unwrap_or("")));
        }
        // The level is kept on the state disk: leave the default for the next boot.
        bulwark(&["ocp", "write", "config.log_level", "info", "--qemu", &at])?;
        if bulwark(&["ocp", "write", "build.version", "9", "--qemu", &at]).is_ok() {
            return Err("writing build.version was accepted".into());
        }
        let ocp =
            format!("list, read (build.platform = svm, {} bytes of log), write (log level), refused write", log.len());
        let session = bulwark(&["tpm-bridge", "--qemu", &at, "--check"])?;
        println!("{}", session.trim_end());
        seen.push(format!("bulwark ocp: {ocp}; bulwark tpm-bridge --check: {}", session.lines().last().unwrap_or("")));
        if let Some(state) = &plan.state {
            seen.push(format!("left for the next boot: {}", persist(&at, "record", state)?));
        }
        Ok(seen.join("; "))
    })();
    // Whatever happened, let the guest finish its run.
    let quit = TcpStream::connect(&at).and_then(|mut s| {
        s.write_all(b"quit\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).map(|_| ())
    });
    let seen = result?;
    quit.map_err(|e| format!("sending quit to the guest: {e}"))?;
    Ok(seen)
}
