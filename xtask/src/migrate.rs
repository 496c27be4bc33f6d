//! `cargo xtask migrate [--fault KIND@N]`: a live migration between two QEMU instances
//! (docs/migration.md, "The QEMU end to end").
//!
//! The source boots the SVSM and the test guest with a migration device; its guest runs
//! its checks and conformance suite, then serves its host agent. Through the agent the
//! guest writes a memory pattern and the vTPM gets an NV index and a persistent key
//! (`bulwark tpm-bridge --persist record`). The destination boots the same image with
//! `migrate=incoming` and waits; `bulwark migrate relay` then relays between the two
//! devices while the guest rewrites its pattern again and again (`churn`). The two SVSMs
//! attest each other, the rounds run with the guest running, the guest stops for the last
//! one, and the source ends. On the destination the guest finds its pattern, the same
//! vTPM (the same EK, the NV index, the persistent key), the OCP, and calls served.
//!
//! With `--fault`, the relay does one thing wrong: the migration must fail, the
//! destination must stop without having run the guest, and the source must keep running
//! its guest, which still finds its pattern there.

use crate::Result;
use crate::shell::{exec_cargo, step, target_dir};
use crate::{image, qemu};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The CPUs of each QEMU instance.
const CPUS: u32 = 2;
/// How long either QEMU instance may run.
const LIMIT: Duration = Duration::from_secs(600);
/// What the guest prints when it serves its agent, and the destination SVSM when it waits.
const AGENT_SERVES: &str = "agent: serving host requests";
const DESTINATION_WAITS: &str = "migration: incoming";
/// How many times the guest rewrites its pattern while the rounds run.
const CHURN_ROUNDS: u32 = 400;

/// `cargo xtask migrate` options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrateOptions {
    /// `KIND@N` for `bulwark migrate relay --fault`.
    pub fault: Option<String>,
}

/// One QEMU instance running in its own thread.
struct Instance {
    name: &'static str,
    boot: JoinHandle<Result<qemu::Boot>>,
}

fn start(name: &'static str, run: qemu::Run<'static>) -> Instance {
    Instance { name, boot: std::thread::spawn(move || qemu::boot(&run)) }
}

impl Instance {
    fn finish(self) -> Result<qemu::Boot> {
        self.boot.join().map_err(|_| format!("the {} QEMU's thread panicked", self.name))?
    }
}

/// A line-based connection to a guest's agent.
struct Agent {
    at: String,
    reader: BufReader<TcpStream>,
}

impl Agent {
    fn connect(port: u16) -> Result<Self> {
        let at = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match TcpStream::connect(&at) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
                    return Ok(Self { at, reader: BufReader::new(stream) });
                }
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => return Err(format!("the agent at {at}: {e}")),
            }
        }
    }

    fn send(&mut self, request: &str) -> Result {
        self.reader.get_mut().write_all(format!("{request}\n").as_bytes()).map_err(|e| format!("{}: {e}", self.at))
    }

    /// A whole answer line, if one arrives before the read timeout.
    fn try_line(&mut self, partial: &mut String) -> Result<Option<String>> {
        match self.reader.read_line(partial) {
            Ok(0) => Err(format!("{}: the agent's connection closed", self.at)),
            Ok(_) if partial.ends_with('\n') => Ok(Some(std::mem::take(partial).trim_end().to_string())),
            Ok(_) => Ok(None),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(format!("{}: {e}", self.at)),
        }
    }

    /// `request`, and its answer (the bytes of `OK <hex>`), within `limit`.
    fn ask(&mut self, request: &str, limit: Duration) -> Result<Vec<u8>> {
        self.send(request)?;
        let deadline = Instant::now() + limit;
        let mut partial = String::new();
        loop {
            if let Some(line) = self.try_line(&mut partial)? {
                return ok_bytes(request, &line);
            }
            if Instant::now() > deadline {
                return Err(format!("`{request}`: no answer from the agent at {} in {} s", self.at, limit.as_secs()));
            }
        }
    }
}

/// The bytes of an agent's `OK <hex>` answer to `request`.
fn ok_bytes(request: &str, line: &str) -> Result<Vec<u8>> {
    // An empty answer is `OK ` (its space trimmed with the line's end).
    let hex = match line {
        "OK" => "",
        _ => line.strip_prefix("OK ").ok_or_else(|| format!("`{request}`: the agent answered `{line}`"))?,
    };
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| format!("`{request}`: bad hex `{line}`")))
        .collect()
}

fn bulwark(args: &[&str]) -> Result<String> {
    let exe = target_dir()?.join("debug/bulwark");
    let out = Command::new(&exe).args(args).output().map_err(|e| format!("{}: {e}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("bulwark {}: {}{}", args.join(" "), text, String::from_utf8_lossy(&out.stderr)));
    }
    Ok(text)
}

/// A fresh, zeroed file for one instance's migration device.
fn device_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, [0u8; 8192]).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Leak a value for the lifetime of the run (the QEMU threads borrow paths and options).
fn keep<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

pub fn run(options: &MigrateOptions) -> Result {
    let svsm = keep(image::build_svsm(false)?);
    let guest = keep(image::build_testguest()?);
    exec_cargo(&["build", "-p", "bulwark"])?;
    let dir = target_dir()?.join("migrate");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let source_file = keep(device_file(&dir, "source.shm")?);
    let destination_file = keep(device_file(&dir, "destination.shm")?);
    let tpm_record = dir.join("tpm-record.json");
    let _ = std::fs::remove_file(&tpm_record);
    let kit = image::issuing_kit()?;
    let (source_port, destination_port) = (free_port()?, free_port()?);
    let stop: &'static std::sync::atomic::AtomicBool = keep(std::sync::atomic::AtomicBool::new(false));

    step("the source: the SVSM and the test guest, with a migration device");
    let (serves, source_serves) = channel();
    let source = start(
        "source",
        qemu::Run {
            svsm,
            guest: Some(guest),
            append: None,
            smp: CPUS,
            debug: qemu::Debug::None,
            agent: Some(source_port),
            fw_cfg: kit.clone(),
            notify: vec![(AGENT_SERVES, serves)],
            limit: LIMIT,
            disk: None,
            label: "source",
            stop: Some(stop),
            migration: Some(source_file),
        },
    );
    let result = drive(options, source_port, destination_port, source_serves, &tpm_record, |waits| {
        step("the destination: the same image, `migrate=incoming`");
        start(
            "destination",
            qemu::Run {
                svsm,
                guest: Some(guest),
                append: Some("migrate=incoming"),
                smp: CPUS,
                debug: qemu::Debug::None,
                agent: Some(destination_port),
                fw_cfg: kit,
                notify: vec![(DESTINATION_WAITS, waits)],
                limit: LIMIT,
                disk: None,
                label: "destination",
                stop: Some(stop),
                migration: Some(destination_file),
            },
        )
    });
    let (destination, relay, seen) = match result {
        Ok(parts) => parts,
        Err((e, others)) => {
            step(&format!("FAILED: {e}; stopping both QEMU instances"));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for other in others {
                let _ = other.finish();
            }
            let _ = source.finish();
            return Err(e);
        }
    };
    let relay = relay.wait_with_output().map_err(|e| format!("the relay: {e}"))?;
    let relay_summary = String::from_utf8_lossy(&relay.stdout).trim().to_string();
    let source = source.finish()?;
    let destination = destination.finish()?;
    judge(options, &source, &destination, &relay_summary, &seen)
}

/// What the run saw through the agents.
struct Seen {
    ek_before: Vec<u8>,
    ek_after: Option<Vec<u8>>,
    pattern: u32,
    notes: Vec<String>,
}

type Failed = (String, Vec<Instance>);

/// The run, from the source's agent serving to the guest's `quit` (on the destination,
/// or on the source when the migration was meant to fail).
fn drive(
    options: &MigrateOptions,
    source_port: u16,
    destination_port: u16,
    source_serves: Receiver<()>,
    tpm_record: &Path,
    start_destination: impl FnOnce(std::sync::mpsc::Sender<()>) -> Instance,
) -> std::result::Result<(Instance, Child, Seen), Failed> {
    let fail = |e: String| (e, Vec::new());
    source_serves.recv_timeout(LIMIT).map_err(|_| fail("the source's guest never served its agent".into()))?;
    let record = tpm_record.to_string_lossy().into_owned();
    let at = format!("127.0.0.1:{source_port}");
    step("before: the vTPM gets an NV index and a persistent key (bulwark tpm-bridge --persist record)");
    let recorded = bulwark(&["tpm-bridge", "--qemu", &at, "--persist", "record", "--state", &record]).map_err(fail)?;
    println!("{}", recorded.trim_end());
    let mut a = Agent::connect(source_port).map_err(fail)?;
    let ek_before = a.ask("manifest", Duration::from_secs(120)).map_err(fail)?;
    a.ask("fill 1", Duration::from_secs(60)).map_err(fail)?;
    a.ask("check 1", Duration::from_secs(60)).map_err(fail)?;

    let (waits, destination_waits) = channel();
    let destination = start_destination(waits);
    let with = |e: String, destination: Instance| (e, vec![destination]);
    if destination_waits.recv_timeout(Duration::from_secs(300)).is_err() {
        return Err(with("the destination SVSM never waited for the migration".into(), destination));
    }
    let mut b = match Agent::connect(destination_port) {
        Ok(b) => b,
        Err(e) => return Err(with(e, destination)),
    };
    step(&format!(
        "bulwark migrate relay{}; the guest rewrites its pattern {CHURN_ROUNDS} times meanwhile",
        options.fault.as_deref().map(|f| format!(" --fault {f}")).unwrap_or_default()
    ));
    let exe = match target_dir() {
        Ok(dir) => dir.join("debug/bulwark"),
        Err(e) => return Err(with(e, destination)),
    };
    let dir = tpm_record.with_file_name("");
    let mut relay = Command::new(&exe);
    relay
        .args(["migrate", "relay", "--json", "--timeout", "500", "--source"])
        .arg(dir.join("source.shm"))
        .arg("--destination")
        .arg(dir.join("destination.shm"))
        .stdout(Stdio::piped());
    if let Some(fault) = &options.fault {
        relay.args(["--fault", fault]);
    }
    let relay = match relay.spawn() {
        Ok(relay) => relay,
        Err(e) => return Err(with(format!("{}: {e}", exe.display()), destination)),
    };
    let churned = churn(&mut a, &mut b);
    let after = churned.and_then(|(pattern, on_destination)| {
        check_after(options, a, b, destination_port, source_port, &record, pattern, on_destination)
            .map(|(ek_after, notes)| Seen { ek_before: ek_before.clone(), ek_after, pattern, notes })
    });
    match after {
        Ok(seen) => Ok((destination, relay, seen)),
        Err(e) => {
            let mut relay = relay;
            let _ = relay.kill();
            Err(with(e, destination))
        }
    }
}

/// `churn` on the source; its answer comes from wherever the guest is when it finishes.
/// The seed its pages hold, and whether the answer came from the destination.
fn churn(a: &mut Agent, b: &mut Agent) -> Result<(u32, bool)> {
    let request = format!("churn 2 {CHURN_ROUNDS}");
    a.send(&request)?;
    let deadline = Instant::now() + LIMIT;
    let (mut pa, mut pb) = (String::new(), String::new());
    // A connection closes when its QEMU ends: the source's after a commit, the
    // destination's after a failed migration.
    let mut open = [true, true];
    loop {
        for (agent, partial, there) in [(&mut *a, &mut pa, false), (&mut *b, &mut pb, true)] {
            let index = usize::from(there);
            if !open[index] {
                continue;
            }
            let line = match agent.try_line(partial) {
                Ok(line) => line,
                Err(_) => {
                    open[index] = false;
                    None
                }
            };
            if let Some(line) = line {
                let bytes = ok_bytes(&request, &line)?;
                let seed = u32::from_le_bytes(bytes.get(..4).and_then(|b| b.try_into().ok()).ok_or("a short answer")?);
                return Ok((seed, there));
            }
        }
        if open == [false, false] {
            return Err("both agents' connections closed before the churn ended".into());
        }
        if Instant::now() > deadline {
            return Err("the guest never finished its churn".into());
        }
    }
}

/// After the churn: wait for the migration to end, then check the guest where it runs.
#[expect(clippy::too_many_arguments, reason = "the two agents, their ports and what the churn left, handed over once")]
fn check_after(
    options: &MigrateOptions,
    a: Agent,
    b: Agent,
    destination_port: u16,
    source_port: u16,
    record: &str,
    pattern: u32,
    on_destination: bool,
) -> Result<(Option<Vec<u8>>, Vec<String>)> {
    let mut notes = vec![format!(
        "the churn ended on the {} (pattern seed {pattern})",
        if on_destination { "destination" } else { "source" }
    )];
    if options.fault.is_some() {
        // The migration must fail and the source run on: its guest still answers there.
        drop(b);
        let mut a = a;
        a.ask(&format!("check {pattern}"), Duration::from_secs(60))?;
        notes.push("the source's guest runs on and finds its pattern".into());
        let at = format!("127.0.0.1:{source_port}");
        drop(a);
        let verified = bulwark(&["tpm-bridge", "--qemu", &at, "--persist", "verify", "--state", record])?;
        notes.push(format!("its vTPM: {}", verified.lines().last().unwrap_or("").trim()));
        let mut a = Agent::connect(source_port)?;
        a.ask("quit", Duration::from_secs(30))?;
        return Ok((None, notes));
    }
    drop(a);
    let mut b = b;
    // The guest answers on the destination once it runs there.
    b.ask(&format!("check {pattern}"), LIMIT)?;
    notes.push("on the destination the guest finds every pattern page as it last wrote it".into());
    let query = b.ask("query", Duration::from_secs(60))?;
    if query.len() != 16 || query.iter().all(|b| *b == 0) {
        return Err(format!("QUERY_PROTOCOL on the destination answered {query:02x?}"));
    }
    let ek_after = b.ask("manifest", Duration::from_secs(120))?;
    drop(b);
    let at = format!("127.0.0.1:{destination_port}");
    let verified = bulwark(&["tpm-bridge", "--qemu", &at, "--persist", "verify", "--state", record])?;
    println!("{}", verified.trim_end());
    notes.push(format!("its vTPM: {}", verified.lines().last().unwrap_or("").trim()));
    let log = bulwark(&["ocp", "read", "log", "--qemu", &at])?;
    if !log.contains("migration: completed") {
        return Err("the destination's OCP log does not say the migration completed".into());
    }
    notes.push("OCP on the destination: its log says the migration completed".into());
    let mut b = Agent::connect(destination_port)?;
    b.ask("quit", Duration::from_secs(30))?;
    Ok((Some(ek_after), notes))
}

fn judge(
    options: &MigrateOptions,
    source: &qemu::Boot,
    destination: &qemu::Boot,
    relay: &str,
    seen: &Seen,
) -> Result {
    let has = |boot: &qemu::Boot, text: &str| boot.lines.iter().any(|l| l.contains(text));
    println!("relay: {relay}");
    if options.fault.is_some() {
        if source.outcome != qemu::Outcome::Success {
            return Err(format!("the source ended {:?}: it must run on after a failed migration", source.outcome));
        }
        if !has(source, "migration: failed") {
            return Err("the source never said its migration failed".into());
        }
        if destination.outcome != qemu::Outcome::FailureReported || !has(destination, "the guest never ran here") {
            return Err(format!("the destination ended {:?}: it must stop without running the guest", destination.outcome));
        }
        for note in &seen.notes {
            step(note);
        }
        step("the migration failed as it must: the destination stopped, the source's guest ran on");
        return Ok(());
    }
    if source.outcome != qemu::Outcome::Migrated {
        return Err(format!("the source ended {:?}, not with a committed migration", source.outcome));
    }
    if destination.outcome != qemu::Outcome::Success {
        return Err(format!("the destination ended {:?}", destination.outcome));
    }
    if seen.ek_after.as_deref() != Some(&seen.ek_before[..]) {
        return Err("the attestation manifest (with the vTPM's EK) differs on the destination".into());
    }
    for note in &seen.notes {
        step(note);
    }
    let committed = source.lines.iter().find(|l| l.contains("migration: committed")).cloned().unwrap_or_default();
    step(&format!("source: {}", committed.trim_start_matches("svsm | ")));
    step(&format!(
        "the guest moved live (pattern {}), with the same vTPM (EK, NV index, persistent key) and manifest",
        seen.pattern
    ));
    Ok(())
}

/// A TCP port nobody listens on right now.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free TCP port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}
