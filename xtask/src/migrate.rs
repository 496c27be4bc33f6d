//! `cargo xtask migrate [--other-image] [--fault KIND@N] [--page-mode]`: a live migration
//! between QEMU instances (docs/migration.md, "The QEMU end to end").
//!
//! The source boots the SVSM and the test guest with a migration device; its guest runs
//! its checks and conformance suite, then serves its host agent. Through the agent the
//! guest writes a memory pattern and the vTPM gets an NV index and a persistent key
//! (`bulwark tpm-bridge --persist record`). The destination boots the same image with
//! `migrate=incoming` and waits; `bulwark migrate relay` then relays between the two
//! devices while the guest rewrites its pattern again and again without calling the SVSM
//! (`quiet`: the source's CPU 0 gets its guest back only through its own timer and the
//! dirty tracking's write faults, and drives the migration all the same). The two SVSMs
//! attest each other, the rounds run with the guest running, the guest stops for the last
//! one, and the source ends. On the destination the guest finds its pattern, the same
//! vTPM (the same EK, the NV index, the persistent key), the OCP, and calls served.
//!
//! Failed attempts first, each to a destination of its own: with `--other-image` one
//! launched under another measurement (refused before pre-copy starts), with `--fault` one
//! behind a relay that does one thing wrong; there the guest calls the SVSM between pages
//! (`churn`). Each must fail, the destination must stop
//! without having run the guest, and the source must keep running its guest, which still
//! finds its pattern there. Then the honest attempt.

use crate::Result;
use crate::agent::bulwark;
use crate::boot::free_port;
use crate::shell::{exec_cargo, step, target_dir};
use crate::{image, qemu};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
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
/// What the destination SVSM prints once the guest runs there.
const DESTINATION_RUNS: &str = "migration: completed";
/// What the source SVSM prints when a migration failed and its guest runs on.
const SOURCE_FAILED: &str = "migration: failed";
/// How many times the guest rewrites its pattern while the rounds run.
const CHURN_ROUNDS: u32 = 1500;
/// How long a migration may take while the guest rewrites its pattern without calls.
const QUIET_LIMIT: Duration = Duration::from_secs(300);

/// `cargo xtask migrate` options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrateOptions {
    /// `KIND@N` for `bulwark migrate relay --fault`.
    pub fault: Option<String>,
    /// A first attempt to a destination launched with another measurement.
    pub other_image: bool,
    /// Migration devices of the proposal's two pages only, so the SVSMs keep to the page
    /// mode (else each direction has a ring of [`RING_PAGES`]).
    pub page_mode: bool,
    /// MiB of memory the guest validates (as 2 MiB pages) and fills besides its own (the
    /// agent's `grow`), so the migration moves a guest of about that size.
    pub guest_mib: u32,
    /// The honest attempt's relay drops the source's first FINISH (`--fault drop@finish`):
    /// the source must offer it again and the guest arrive all the same.
    pub drop_finish: bool,
}

/// The pages of each direction's ring in a migration device (its file is twice this many
/// 4 KiB pages, 512 KiB: ivshmem's BAR is a power of two).
pub const RING_PAGES: usize = 64;

/// A relay fault as `bulwark migrate relay --fault` takes it (`KIND@N`), checked.
pub fn fault(spec: &str) -> Result<String> {
    let kinds = ["flip", "drop", "replay", "reorder", "truncate"];
    match spec.split_once('@') {
        Some((kind, n)) if kinds.contains(&kind) && n.parse::<u32>().is_ok() => Ok(spec.to_string()),
        _ => Err(format!("a relay fault is KIND@N, KIND one of {}; not `{spec}`", kinds.join(", "))),
    }
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

/// A fresh, zeroed file for one instance's migration device: `ring` pages per direction.
fn device_file(dir: &Path, name: &str, ring: usize) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, vec![0u8; 2 * ring * 4096]).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Leak a value for the lifetime of the run (the QEMU threads borrow paths and options).
fn keep<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

/// What the source said of a committed migration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// The state stream's size.
    pub state_kib: u64,
    /// From the host's start to the commit.
    pub total_ms: u64,
    /// From the guest's stop to the commit.
    pub downtime_ms: u64,
    /// The state stream's size over the time from the first round to the commit.
    pub throughput_kib_s: u64,
    /// What the source's CPU seals alone with the record layer's AES-256-GCM.
    pub cipher_kib_s: u64,
}

impl Summary {
    /// From the source SVSM's `migration: committed` and `migration: throughput` lines.
    fn of(lines: &[String]) -> Result<Self> {
        let line = |start: &str| {
            lines.iter().find_map(|l| l.strip_prefix(start)).ok_or_else(|| format!("no `{start}` line from the source"))
        };
        // The number right after `before` in `text`.
        let figure = |text: &str, before: &str| -> Result<u64> {
            let at = text.find(before).ok_or_else(|| format!("no `{before}` in `{text}`"))? + before.len();
            let digits: String = text[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().map_err(|_| format!("no number after `{before}` in `{text}`"))
        };
        let committed = line("migration: committed: ")?;
        let throughput = line("migration: throughput ")?;
        Ok(Self {
            state_kib: figure(committed, "")?,
            total_ms: figure(committed, "KiB of state in ")?,
            downtime_ms: figure(committed, "the guest stopped for ")?,
            throughput_kib_s: figure(throughput, "")?,
            cipher_kib_s: figure(throughput, "the cipher alone ")?,
        })
    }
}

pub fn run(options: &MigrateOptions) -> Result<Summary> {
    let svsm = keep(image::build_svsm(false)?);
    let guest = keep(image::build_testguest()?);
    exec_cargo(&["build", "-p", "bulwark"])?;
    let dir = target_dir()?.join("migrate");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tpm_record = dir.join("tpm-record.json");
    let _ = std::fs::remove_file(&tpm_record);
    let stop: &'static AtomicBool = keep(AtomicBool::new(false));
    // The svm platform measures the guest image it launches: a copy with a page of zeros
    // after its end (which its ELF headers do not cover) launches the same guest under
    // another measurement.
    let other_guest = dir.join("testguest-other.elf");
    let mut bytes = std::fs::read(guest).map_err(|e| format!("{}: {e}", guest.display()))?;
    bytes.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&other_guest, bytes).map_err(|e| format!("{}: {e}", other_guest.display()))?;
    let other_guest = keep(other_guest);
    let ring = if options.page_mode { 1 } else { RING_PAGES };
    // The grown memory starts at 272 MiB; QEMU puts the guest image at the top of RAM.
    let memory_mib = (272 + options.guest_mib + 128).max(512).next_multiple_of(64);
    let context = Context {
        svsm,
        guest,
        other_guest,
        kit: image::issuing_kit()?,
        dir,
        stop,
        ring,
        memory_mib,
        drop_finish: options.drop_finish,
    };

    step("the source: the SVSM and the test guest, with a migration device");
    let source_port = free_port()?;
    let (serves, source_serves) = channel();
    let (failed, source_failed) = channel();
    let mut attempts = Vec::new();
    if options.other_image {
        attempts.push(Try::OtherImage);
    }
    if let Some(fault) = &options.fault {
        attempts.push(Try::Fault(fault.clone()));
    }
    attempts.push(Try::Honest);
    // The source keeps its vTPM on a state disk of its own: after the migration that
    // state must never start the vTPM again.
    let source_disk: &'static Path = keep(blank_disk(&context.dir, "source")?);
    let mut source_run = context.run(
        "source",
        guest,
        None,
        source_port,
        vec![(AGENT_SERVES, serves), (SOURCE_FAILED, failed)],
        Some(source_disk),
        true,
    )?;
    // The source lives through every attempt.
    source_run.limit = LIMIT * u32::try_from(attempts.len()).unwrap_or(1);
    let source = start("source", source_run);
    let result = (|| {
        source_serves.recv_timeout(LIMIT).map_err(|_| "the source's guest never served its agent")?;
        let before = prepare(source_port, &tpm_record, options.guest_mib)?;
        let mut a = Agent::connect(source_port)?;
        let mut seed = 1;
        let mut seen = Vec::new();
        for (i, kind) in attempts.iter().enumerate() {
            let label = if attempts.len() == 1 { "destination".to_string() } else { format!("destination-{}", i + 1) };
            let attempt = Attempt { label: keep(label), kind: kind.clone(), first_seed: seed + 1 };
            let outcome = migrate_once(&context, &attempt, &mut a, &source_failed, &tpm_record, &before)?;
            seed = outcome.seed;
            seen.extend(outcome.notes);
        }
        Ok(seen)
    })();
    let seen = match result {
        Ok(seen) => seen,
        Err(e) => {
            step(&format!("FAILED: {e}; stopping the QEMU instances"));
            stop.store(true, Ordering::Relaxed);
            let _ = source.finish();
            return Err(e);
        }
    };
    let source = source.finish()?;
    if source.outcome != qemu::Outcome::Migrated {
        return Err(format!("the source ended {:?}, not with a committed migration", source.outcome));
    }
    // State left the source only after an attestation: never for the destination under
    // another measurement, which the source itself refused for its measurement; once for
    // the honest attempt; at most once for a fault (one in the handshake comes before).
    let precopies = source.lines.iter().filter(|l| l.contains("pre-copy starts")).count();
    let faults = attempts.iter().filter(|t| matches!(t, Try::Fault(_))).count();
    if !(1..=1 + faults).contains(&precopies) {
        return Err(format!("the source began pre-copy {precopies} times, for 1 honest and {faults} faulty attempts"));
    }
    let refused_measurement = |l: &String| l.starts_with("migration: failed") && l.contains("PeerMeasurement");
    if options.other_image && !source.lines.iter().any(refused_measurement) {
        return Err("the source did not refuse the other image's destination for its measurement".into());
    }
    if !source.lines.iter().any(|l| l.contains("the vTPM is marked as moved")) {
        return Err("the source did not mark its vTPM as moved in its sealed state".into());
    }
    if options.drop_finish {
        if !source.lines.iter().any(|l| l.contains("the FINISH again (copy 2)")) {
            return Err("the relay dropped the FINISH, and the source never offered it again".into());
        }
        step("the relay dropped the source's first FINISH: the source offered it again, and the guest arrived");
    }
    let seen = [seen, vec![source_again(&context, source_disk)?]].concat();
    for note in &seen {
        step(note);
    }
    let summary = Summary::of(&source.lines)?;
    step(&format!(
        "source: {} KiB of state in {} ms ({} KiB/s; the cipher alone {} KiB/s), the guest stopped for {} ms",
        summary.state_kib, summary.total_ms, summary.throughput_kib_s, summary.cipher_kib_s, summary.downtime_ms
    ));
    Ok(summary)
}

/// What every QEMU instance of the run shares.
struct Context {
    svsm: &'static Path,
    guest: &'static Path,
    /// The guest under another measurement.
    other_guest: &'static Path,
    kit: Vec<(&'static str, PathBuf)>,
    dir: PathBuf,
    stop: &'static AtomicBool,
    /// Pages per direction in each migration device.
    ring: usize,
    /// Each instance's RAM.
    memory_mib: u32,
    /// The honest attempt's relay drops the first FINISH.
    drop_finish: bool,
}

impl Context {
    /// An instance named `label`, with a fresh migration device file and its agent on `port`.
    #[expect(clippy::too_many_arguments, reason = "what differs between the instances of one run")]
    fn run(
        &self,
        label: &'static str,
        guest: &'static Path,
        append: Option<&'static str>,
        port: u16,
        notify: Vec<(&'static str, std::sync::mpsc::Sender<()>)>,
        disk: Option<&'static Path>,
        with_device: bool,
    ) -> Result<qemu::Run<'static>> {
        let file = match with_device {
            true => Some(&**keep(device_file(&self.dir, &format!("{label}.shm"), self.ring)?)),
            false => None,
        };
        Ok(qemu::Run {
            svsm: self.svsm,
            guest: Some(guest),
            append,
            smp: CPUS,
            debug: qemu::Debug::None,
            agent: Some(port),
            fw_cfg: self.kit.clone(),
            notify,
            limit: LIMIT,
            disk: disk.map(qemu::Drive::Image),
            label,
            stop: Some(self.stop),
            migration: file,
            memory_mib: self.memory_mib,
        })
    }
}

/// What the guest had before any migration: its manifest (with the vTPM's EK).
struct Before {
    manifest: Vec<u8>,
    /// The MiB the guest grew by (0: none).
    grown_mib: u32,
}

/// The vTPM gets an NV index and a persistent key; the guest writes its first pattern, and
/// grows by `grow_mib` MiB.
fn prepare(source_port: u16, tpm_record: &Path, grow_mib: u32) -> Result<Before> {
    let at = format!("127.0.0.1:{source_port}");
    step("before: the vTPM gets an NV index and a persistent key (bulwark tpm-bridge --persist record)");
    let record = tpm_record.to_string_lossy();
    let recorded = bulwark(&["tpm-bridge", "--qemu", &at, "--persist", "record", "--state", &record])?;
    println!("{}", recorded.trim_end());
    let mut a = Agent::connect(source_port)?;
    let manifest = a.ask("manifest", Duration::from_secs(120))?;
    a.ask("fill 1", Duration::from_secs(60))?;
    a.ask("check 1", Duration::from_secs(60))?;
    if grow_mib > 0 {
        step(&format!("the guest validates {grow_mib} MiB more and writes a pattern into every page"));
        let before = heap(&mut a)?;
        let started = Instant::now();
        a.ask(&format!("grow {grow_mib} {GROWN_SEED}"), LIMIT)?;
        let after = heap(&mut a)?;
        step(&format!(
            "grown in {:.1} s; the SVSM heap: {} KiB in use before, {} KiB after, of {} KiB",
            started.elapsed().as_secs_f64(),
            before.0 / 1024,
            after.0 / 1024,
            after.1 / 1024
        ));
    }
    Ok(Before { manifest, grown_mib: grow_mib })
}

/// The SVSM heap's bytes in use and its size, as the guest reads them over OCP.
fn heap(a: &mut Agent) -> Result<(u64, u64)> {
    let bytes = a.ask("heap", Duration::from_secs(60))?;
    let word = |at: usize| bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    word(0).zip(word(8)).ok_or_else(|| format!("`heap`: {} bytes, not 16", bytes.len()))
}

/// The pattern seed of the grown memory (written once, before the migrations).
const GROWN_SEED: u32 = 7;

/// What an attempt tries.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Try {
    /// A destination launched with another measurement: the two SVSMs must refuse each
    /// other before any state leaves the source.
    OtherImage,
    /// A relay with this fault (`KIND@N`): the migration must fail.
    Fault(String),
    /// An honest relay and destination: the migration must succeed.
    Honest,
}

/// One migration attempt, to a destination of its own.
struct Attempt {
    label: &'static str,
    kind: Try,
    /// The churn's first seed.
    first_seed: u32,
}

struct Outcome {
    /// The seed the guest's pattern pages hold.
    seed: u32,
    notes: Vec<String>,
}

fn migrate_once(
    context: &Context,
    attempt: &Attempt,
    a: &mut Agent,
    source_failed: &Receiver<()>,
    tpm_record: &Path,
    before: &Before,
) -> Result<Outcome> {
    step(&format!("{}: the same image, `migrate=incoming`", attempt.label));
    let port = free_port()?;
    let (waits, destination_waits) = channel();
    let (runs, destination_runs) = channel();
    let guest = if attempt.kind == Try::OtherImage { context.other_guest } else { context.guest };
    // The honest destination keeps the vTPM that arrives in its own sealed store, on a
    // blank state disk of its own.
    let disk = match attempt.kind {
        Try::Honest => Some(&**keep(blank_disk(&context.dir, attempt.label)?)),
        Try::OtherImage | Try::Fault(_) => None,
    };
    let destination = start(
        attempt.label,
        context.run(
            attempt.label,
            guest,
            Some("migrate=incoming"),
            port,
            vec![(DESTINATION_WAITS, waits), (DESTINATION_RUNS, runs)],
            disk,
            true,
        )?,
    );
    let mut relay_process = None;
    let result = (|| {
        destination_waits
            .recv_timeout(Duration::from_secs(300))
            .map_err(|_| format!("the {} SVSM never waited for the migration", attempt.label))?;
        let mut b = Agent::connect(port)?;
        let relay = relay_process.insert(relay(&context.dir, attempt, context.drop_finish)?);
        let (seed, there) = match attempt.kind {
            Try::Honest => quiet(a, &mut b, attempt.first_seed, &destination_runs)?,
            Try::OtherImage | Try::Fault(_) => churn(a, &mut b, attempt.first_seed)?,
        };
        match attempt.kind {
            Try::OtherImage | Try::Fault(_) => after_failure(a, b, source_failed, seed, there, &attempt.kind),
            Try::Honest => after_success(b, port, tpm_record, before, seed, there, relay),
        }
    })();
    if result.is_err() {
        context.stop.store(true, Ordering::Relaxed);
    }
    // A failed migration's destination stops once the ABORT reaches it (or after its own
    // stall limit): the relay carries it until then.
    let boot = destination.finish();
    if let Some(mut relay) = relay_process {
        let _ = relay.kill();
        let _ = relay.wait();
    }
    let mut outcome = result?;
    let boot = boot?;
    let has = |text: &str| boot.lines.iter().any(|l| l.contains(text));
    let failed = boot.outcome == qemu::Outcome::FailureReported && has("the guest never ran here");
    match attempt.kind {
        Try::OtherImage | Try::Fault(_) if !failed => {
            Err(format!("the {} ended {:?}: it must stop without running the guest", attempt.label, boot.outcome))
        }
        Try::OtherImage if has("the source is attested") || has("KiB received") => {
            Err(format!("the {} (another measurement) accepted the source or received state", attempt.label))
        }
        // The source refuses it (PEER_REFUSED), or it refuses the source, for the measurement.
        Try::OtherImage if !has("AbortReason(2)") && !has("PeerMeasurement") => {
            Err(format!("the {} was not refused for its measurement", attempt.label))
        }
        Try::Honest if boot.outcome != qemu::Outcome::Success => {
            Err(format!("the {} ended {:?}", attempt.label, boot.outcome))
        }
        _ => {
            if let Some(line) = boot.lines.iter().find(|l| l.contains("migration: completed")) {
                outcome.notes.push(format!("{}: {line}", attempt.label));
            }
            if let Some(disk) = disk {
                if !has("its NV state is kept in this SVSM's sealed store") {
                    return Err(format!("the {} did not keep the vTPM in its sealed store", attempt.label));
                }
                outcome.notes.push(reboot(context, attempt.label, disk, tpm_record)?);
            }
            Ok(outcome)
        }
    }
}

/// A blank state disk for `label`.
fn blank_disk(dir: &Path, label: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{label}.img"));
    let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.set_len(16 << 20).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// The destination, booted again on its state disk (no migration): its vTPM starts from
/// the sealed store with the EK, NV index and persistent key that arrived.
fn reboot(context: &Context, label: &'static str, disk: &'static Path, tpm_record: &Path) -> Result<String> {
    step(&format!("{label} again, on its state disk: the vTPM that arrived must start from it"));
    let port = free_port()?;
    let (serves, agent_serves) = channel();
    let name: &'static str = keep(format!("{label}-rebooted"));
    let instance =
        start(name, context.run(name, context.guest, None, port, vec![(AGENT_SERVES, serves)], Some(disk), false)?);
    let checked = (|| {
        agent_serves.recv_timeout(LIMIT).map_err(|_| "the rebooted destination's guest never served its agent")?;
        let at = format!("127.0.0.1:{port}");
        let record = tpm_record.to_string_lossy();
        let verified = bulwark(&["tpm-bridge", "--qemu", &at, "--persist", "verify", "--state", &record])?;
        println!("{}", verified.trim_end());
        Agent::connect(port)?.ask("quit", Duration::from_secs(30))?;
        Ok::<_, String>(verified.lines().last().unwrap_or("").trim().to_string())
    })();
    if checked.is_err() {
        context.stop.store(true, Ordering::Relaxed);
    }
    let boot = instance.finish();
    let verified = checked?;
    let boot = boot?;
    if boot.outcome != qemu::Outcome::Success
        || !boot.lines.iter().any(|l| l.contains("started from its sealed NV state"))
    {
        return Err(format!(
            "the rebooted {label} ended {:?}, or its vTPM did not start from the sealed store",
            boot.outcome
        ));
    }
    Ok(format!(
        "{label} rebooted on its own state disk: the vTPM that arrived started from its sealed store ({verified})"
    ))
}

/// The source's image booted again on the source's state disk after the migration (as a
/// host that wanted a second copy of the guest's TPM would): the vTPM that left must not
/// start there, and the SVSM serves the guest all the same.
fn source_again(context: &Context, disk: &'static Path) -> Result<String> {
    step("the source again, on its state disk: the vTPM that left must not start there");
    let port = free_port()?;
    let (serves, agent_serves) = channel();
    let name = "source-again";
    let instance =
        start(name, context.run(name, context.guest, None, port, vec![(AGENT_SERVES, serves)], Some(disk), false)?);
    let checked = (|| {
        agent_serves.recv_timeout(LIMIT).map_err(|_| "the source's guest, booted again, never served its agent")?;
        let mut agent = Agent::connect(port)?;
        agent.ask("query", Duration::from_secs(60))?;
        agent.ask("quit", Duration::from_secs(30))?;
        Ok::<_, String>(())
    })();
    if checked.is_err() {
        context.stop.store(true, Ordering::Relaxed);
    }
    let boot = instance.finish();
    checked?;
    let boot = boot?;
    let has = |text: &str| boot.lines.iter().any(|l| l.contains(text));
    if !has("left by live migration; it never starts here again") || has("started from its sealed NV state") {
        return Err(format!("the source booted again ({:?}) started the vTPM that left", boot.outcome));
    }
    Ok("the source booted again on its state disk: the vTPM that left did not start, and the guest was served".into())
}

/// `bulwark migrate relay` between the source's device and the attempt's destination's.
fn relay(dir: &Path, attempt: &Attempt, drop_finish: bool) -> Result<Child> {
    let fault = match &attempt.kind {
        Try::Fault(fault) => Some(fault.as_str()),
        Try::Honest if drop_finish => Some("drop@finish"),
        Try::OtherImage | Try::Honest => None,
    };
    let meanwhile = match attempt.kind {
        Try::Honest => "rewrites its pattern without calling the SVSM until it runs on the destination".to_string(),
        Try::OtherImage | Try::Fault(_) => {
            format!("rewrites its pattern {CHURN_ROUNDS} times, calling the SVSM between pages")
        }
    };
    step(&format!(
        "bulwark migrate relay{}; the guest {meanwhile} meanwhile",
        fault.map(|f| format!(" --fault {f}")).unwrap_or_default()
    ));
    let exe = target_dir()?.join("debug/bulwark");
    let mut relay = Command::new(&exe);
    relay
        .args(["migrate", "relay", "--json", "--timeout", "500", "--source"])
        .arg(dir.join("source.shm"))
        .arg("--destination")
        .arg(dir.join(format!("{}.shm", attempt.label)))
        .stdout(Stdio::piped());
    if let Some(fault) = fault {
        relay.args(["--fault", fault]);
    }
    relay.spawn().map_err(|e| format!("{}: {e}", exe.display()))
}

/// The relay's summary line.
fn relay_summary(relay: &mut Child) -> String {
    let mut out = String::new();
    if let Some(stdout) = relay.stdout.as_mut() {
        let _ = std::io::Read::read_to_string(stdout, &mut out);
    }
    out.trim().to_string()
}

/// The vTPM's entry (the EK public area) of an attestation services manifest.
fn vtpm_entry(manifest: &[u8]) -> Result<Vec<u8>> {
    let services = attest::manifest::parse(manifest).map_err(|e| format!("the manifest: {e:?}"))?;
    services
        .into_iter()
        .find(|s| s.guid == abi::attest::VTPM_SERVICE_GUID)
        .map(|s| s.data)
        .ok_or_else(|| "the manifest has no vTPM entry".to_string())
}

/// The vTPM's lineage entries before and after the migration, judged as a relying party's
/// ledger would (`attest::lineage_ledger`): the source's kept TPM first seen, the
/// destination's a move from it, one version above where it left.
fn lineage_moved(before: &[u8], after: &[u8]) -> Result<String> {
    use attest::lineage_ledger::{TpmLineages, TpmOutcome};
    use sha2::Digest;
    let lineage = |manifest: &[u8]| {
        let services = attest::manifest::parse(manifest).map_err(|e| format!("the manifest: {e:?}"))?;
        attest::manifest::vtpm_lineage(&services)
            .map_err(|e| format!("the vTPM lineage entry: {e}"))?
            .ok_or_else(|| "the manifest has no vTPM lineage entry".to_string())
    };
    let (source, destination) = (lineage(before)?, lineage(after)?);
    let ek: [u8; 32] = sha2::Sha256::digest(vtpm_entry(before)?).into();
    let mut ledger = TpmLineages::default();
    let first = ledger.apply(&ek, &source, None);
    let moved = ledger.apply(&ek, &destination, None);
    let from_source = TpmOutcome::Moved { parent_seen: true, from: source.incarnation };
    if first != TpmOutcome::FirstSeen || !source.kept || moved != from_source {
        return Err(format!("the vTPM's lineage: source {source} ({first:?}), destination {destination} ({moved:?})"));
    }
    Ok(format!("its vTPM's lineage is a move: {destination}"))
}

/// The SVSM where the guest runs answers QUERY_PROTOCOL for the core protocol and the
/// vTPM.
fn served(agent: &mut Agent, where_: &str) -> Result {
    let query = agent.ask("query", Duration::from_secs(60))?;
    if query.len() != 16 || query.chunks(8).any(|q| q.iter().all(|b| *b == 0)) {
        return Err(format!("QUERY_PROTOCOL on {where_} answered {query:02x?}"));
    }
    Ok(())
}

/// A failed attempt: the source says so, and its guest runs on with its pattern.
fn after_failure(
    a: &mut Agent,
    b: Agent,
    source_failed: &Receiver<()>,
    seed: u32,
    there: bool,
    kind: &Try,
) -> Result<Outcome> {
    drop(b);
    if there {
        return Err("the guest answered from the destination of a migration meant to fail".into());
    }
    source_failed.recv_timeout(Duration::from_secs(120)).map_err(|_| "the source never said the migration failed")?;
    a.ask(&format!("check {seed}"), Duration::from_secs(60))?;
    served(a, "the source after the failure")?;
    Ok(Outcome {
        seed,
        notes: vec![format!(
            "{}: the destination stopped without running the guest, the source's guest ran on and found its pattern (seed {seed})",
            match kind {
                Try::OtherImage =>
                    "a destination under another measurement was refused before any state left".to_string(),
                Try::Fault(fault) => format!("the relay's fault {fault} made the migration fail"),
                Try::Honest => "an honest migration failed".to_string(),
            }
        )],
    })
}

/// A migration that committed: the guest, on the destination, finds its memory, vTPM and
/// OCP, and ends there.
fn after_success(
    b: Agent,
    port: u16,
    tpm_record: &Path,
    before: &Before,
    seed: u32,
    there: bool,
    relay: &mut Child,
) -> Result<Outcome> {
    let mut notes =
        vec![format!("the churn ended on the {} (pattern seed {seed})", if there { "destination" } else { "source" })];
    let mut b = b;
    // The guest answers on the destination once it runs there.
    b.ask(&format!("check {seed}"), LIMIT)?;
    notes.push("on the destination the guest finds every pattern page as it last wrote it, and its DR0".into());
    if before.grown_mib > 0 {
        b.ask(&format!("checkgrown {} {GROWN_SEED}", before.grown_mib), LIMIT)?;
        notes.push(format!("and every page of the {} MiB it grew by", before.grown_mib));
    }
    served(&mut b, "the destination")?;
    // The destination's manifest also names its own sealed state; the vTPM's entry (its
    // EK) must be the one the guest had.
    let after = b.ask("manifest", Duration::from_secs(120))?;
    if vtpm_entry(&after)? != vtpm_entry(&before.manifest)? {
        return Err("the vTPM's EK in the attestation manifest differs on the destination".into());
    }
    notes.push("its attestation manifest names the vTPM's EK it had".into());
    notes.push(lineage_moved(&before.manifest, &after)?);
    drop(b);
    let at = format!("127.0.0.1:{port}");
    let record = tpm_record.to_string_lossy();
    let verified = bulwark(&["tpm-bridge", "--qemu", &at, "--persist", "verify", "--state", &record])?;
    println!("{}", verified.trim_end());
    notes.push(format!(
        "its vTPM kept the NV index and the persistent key: {}",
        verified.lines().last().unwrap_or("").trim()
    ));
    let log = bulwark(&["ocp", "read", "log", "--qemu", &at])?;
    if !log.contains("migration: completed") {
        return Err("the destination's OCP log does not say the migration completed".into());
    }
    notes.push("OCP on the destination: its log says the migration completed".into());
    let mut b = Agent::connect(port)?;
    b.ask("quit", Duration::from_secs(30))?;
    // Both streams have ended: the relay ends by itself, and says so.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match relay.try_wait().map_err(|e| format!("the relay: {e}"))? {
            Some(status) => break status,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => return Err("the relay did not end after the migration".into()),
        }
    };
    let summary = relay_summary(relay);
    if !status.success() || !summary.contains("\"finished\":true") {
        return Err(format!("the relay ended {status}: {summary}"));
    }
    notes.push(format!("relay: {summary}"));
    Ok(Outcome { seed, notes })
}

/// `quiet` on the source: the guest rewrites its pattern without a call to the SVSM, so
/// the source's CPU 0 sees its guest exit only when the SVSM makes it (its local-APIC
/// timer, then the dirty tracking's write faults). The migration must complete all the
/// same; then a byte on the destination's agent port stops the rewriting there, and the
/// guest answers from the destination. The seed its pages hold.
fn quiet(a: &mut Agent, b: &mut Agent, first_seed: u32, destination_runs: &Receiver<()>) -> Result<(u32, bool)> {
    a.send(&format!("quiet {first_seed}"))?;
    destination_runs.recv_timeout(QUIET_LIMIT).map_err(|_| {
        format!(
            "the migration did not complete within {} s while the guest ran without calling the SVSM",
            QUIET_LIMIT.as_secs()
        )
    })?;
    let bytes = b.ask("", LIMIT).map_err(|e| format!("the guest, told on the destination to stop rewriting: {e}"))?;
    let seed = u32::from_le_bytes(bytes.get(..4).and_then(|b| b.try_into().ok()).ok_or("a short answer")?);
    Ok((seed, true))
}

/// `churn` on the source; its answer comes from wherever the guest is when it finishes.
/// The seed its pages hold, and whether the answer came from the destination.
fn churn(a: &mut Agent, b: &mut Agent, first_seed: u32) -> Result<(u32, bool)> {
    let request = format!("churn {first_seed} {CHURN_ROUNDS}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_read_from_the_sources_lines() {
        let lines = [
            "migration: round 2: 134 page(s) written during the round before".to_string(),
            "migration: committed: 8409 KiB of state in 13220 ms, the guest stopped for 1062 ms; it runs on at the destination, this SVSM stops".to_string(),
            "migration: throughput 655 KiB/s over 12830 ms of state transfer; the cipher alone 9120 KiB/s".to_string(),
        ];
        let s = Summary::of(&lines).unwrap();
        assert_eq!(
            s,
            Summary { state_kib: 8409, total_ms: 13220, downtime_ms: 1062, throughput_kib_s: 655, cipher_kib_s: 9120 }
        );
        assert!(Summary::of(&lines[..2]).is_err(), "no throughput line");
        assert!(fault("flip@3").is_ok() && fault("flip").is_err() && fault("melt@3").is_err());
    }
}
