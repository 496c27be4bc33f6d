//! Booting the bare-metal SVSM under QEMU (the images are built by `image.rs`, QEMU
//! installed by `prereqs.rs`): boot it headless with a time limit, stream its serial
//! console labelled, and judge the run by QEMU's debug-exit status (3 = the SVSM reported
//! success). A hang, a triple fault (QEMU exits 0 with `-no-reboot`) or a failure report
//! all fail.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// QEMU's exit status when the SVSM wrote 1 (success) to the debug-exit port.
const EXIT_SUCCESS: i32 = 3;
/// ... and 2 (failure).
const EXIT_FAILURE: i32 = 5;
/// ... and 3 (a live migration's source after its commit).
const EXIT_MIGRATED: i32 = 7;

/// How the SVSM ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The SVSM (or, with a guest, the guest) wrote "success" to the debug-exit device.
    Success,
    /// ... wrote "failure".
    FailureReported,
    /// The SVSM, a live migration's source, committed: the guest went to the destination.
    Migrated,
}

/// What a boot printed, how it ended and how long it took.
pub struct Boot {
    pub lines: Vec<String>,
    /// What the guest printed on its serial port.
    pub guest_lines: Vec<String>,
    pub first_line_after: Option<Duration>,
    pub total: Duration,
    pub outcome: Outcome,
}

/// What to boot, for at most `limit`: the SVSM image (its serial lines echoed as
/// `svsm | ...`), optionally a guest (a PVH boot module whose COM2 output is streamed as
/// `guest | ...`), and a kernel command line.
pub struct Run<'a> {
    pub svsm: &'a Path,
    pub guest: Option<&'a Path>,
    pub append: Option<&'a str>,
    pub smp: u32,
    pub debug: Debug,
    /// Connect the guest's COM4 (its host-agent channel) to this TCP port of 127.0.0.1.
    pub agent: Option<u16>,
    /// Files handed to the SVSM through QEMU's fw_cfg: (name, path).
    pub fw_cfg: Vec<(&'static str, std::path::PathBuf)>,
    /// Each told when the SVSM or the guest prints a line starting with its text.
    pub notify: Vec<(&'a str, mpsc::Sender<()>)>,
    pub limit: Duration,
    /// The sealed store's disk, as a virtio-blk drive with the serial the SVSM looks for.
    pub disk: Option<Drive<'a>>,
    /// A word that marks this instance's lines and files when two run at once ("" for
    /// none): `source svsm | ...`, `source-guest-serial.log`.
    pub label: &'a str,
    /// Set by whoever drives the run beside QEMU when it gave up: QEMU is stopped.
    pub stop: Option<&'a std::sync::atomic::AtomicBool>,
    /// The live-migration device: an `ivshmem-plain` PCI device whose memory is this
    /// file (its size a power of two, at least two pages; shared with `bulwark migrate
    /// relay`).
    pub migration: Option<&'a Path>,
    /// The guest's RAM in MiB (512 unless a run needs more).
    pub memory_mib: u32,
}

/// What backs the state disk's drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drive<'a> {
    /// A raw image file.
    Image(&'a Path),
    /// A host that loses I/O: QEMU's `null-co` driver, whose requests complete only after
    /// a minute, far past the SVSM's deadline.
    NeverAnswers { bytes: u64 },
}

/// Which GDB stub the run offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Debug {
    None,
    /// QEMU's stub on 127.0.0.1:1234, paused before the first instruction (it sees the
    /// SVSM directly: the svm platform has no memory encryption).
    Qemu,
    /// The SVSM's own stub: its COM3 on this TCP port of 127.0.0.1.
    Svsm {
        port: u16,
    },
}

/// Follows the guest's serial output (a file QEMU writes) line by line.
struct GuestConsole {
    path: std::path::PathBuf,
    seen: usize,
    partial: String,
    /// Marks the lines of one of two instances.
    prefix: String,
}

impl GuestConsole {
    fn poll(&mut self, boot: &mut Boot) {
        let Ok(bytes) = std::fs::read(&self.path) else { return };
        if bytes.len() <= self.seen {
            return;
        }
        self.partial.push_str(&String::from_utf8_lossy(&bytes[self.seen..]));
        self.seen = bytes.len();
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial[..end].trim_end().to_string();
            self.partial.drain(..=end);
            println!("{}guest | {line}", self.prefix);
            boot.guest_lines.push(line);
        }
    }
}

/// Boot `run` under QEMU; returns what it printed and how it ended, or why it failed.
pub fn boot(run: &Run<'_>) -> Result<Boot, String> {
    let started = Instant::now();
    let guest_log = run.svsm.with_file_name(if run.label.is_empty() {
        "guest-serial.log".to_string()
    } else {
        format!("{}-guest-serial.log", run.label)
    });
    let prefix = if run.label.is_empty() { String::new() } else { format!("{} ", run.label) };
    let _ = std::fs::remove_file(&guest_log);
    let mut child = command(run, &guest_log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start qemu-system-x86_64: {e}"))?;
    let lines = stdout_lines(child.stdout.take().ok_or("no QEMU stdout")?);
    let errors = stderr_messages(child.stderr.take().ok_or("no QEMU stderr")?);
    let mut console = GuestConsole { path: guest_log, seen: 0, partial: String::new(), prefix: prefix.clone() };
    let mut boot = Boot {
        lines: Vec::new(),
        guest_lines: Vec::new(),
        first_line_after: None,
        total: Duration::ZERO,
        outcome: Outcome::Success,
    };
    let status = watch(run, &mut child, &lines, &mut console, &mut boot, started)?;
    // The reader thread ends when QEMU's stdout closes; drain what is left.
    for line in lines.iter() {
        record(&mut boot, line, started, &console.prefix);
    }
    console.poll(&mut boot);
    boot.total = started.elapsed();
    for line in errors.join().unwrap_or_default() {
        eprintln!("{prefix}qemu | {line}");
    }
    match status.code() {
        Some(EXIT_SUCCESS) => Ok(boot),
        Some(EXIT_FAILURE) => Ok(Boot { outcome: Outcome::FailureReported, ..boot }),
        Some(EXIT_MIGRATED) => Ok(Boot { outcome: Outcome::Migrated, ..boot }),
        Some(0) => Err("QEMU exited with 0: the SVSM triple-faulted or reset".into()),
        other => Err(format!("QEMU exited with {other:?}")),
    }
}

/// QEMU's command line: the machine, the SVSM as its kernel, the guest as its initrd,
/// four serial ports (the SVSM's console on stdout, the guest's COM2 in a file, COM3 for
/// the SVSM's GDB stub, COM4 for the guest's host agent) and the debug-exit device.
fn command(run: &Run<'_>, guest_log: &Path) -> Command {
    let mut command = Command::new("qemu-system-x86_64");
    if let Some(guest) = run.guest {
        command.arg("-initrd").arg(guest);
    }
    for (name, path) in &run.fw_cfg {
        command.arg("-fw_cfg").arg(format!("name={name},file={}", path.display()));
    }
    if run.debug == Debug::Qemu {
        command.args(["-gdb", "tcp:127.0.0.1:1234", "-S"]);
    }
    match run.disk {
        None => {}
        Some(Drive::Image(image)) => {
            command.arg("-drive").arg(format!("file={},if=none,id=state,format=raw", image.display()));
        }
        Some(Drive::NeverAnswers { bytes }) => {
            command.arg("-blockdev").arg(format!("driver=null-co,node-name=state,size={bytes},latency-ns=60000000000"));
        }
    }
    if run.disk.is_some() {
        command.args(["-device", "virtio-blk-pci,drive=state,serial=bulwark-state"]);
    }
    if let Some(file) = run.migration {
        // A file that is not there fails QEMU itself, which says so.
        let size = std::fs::metadata(file).map_or(8192, |m| m.len());
        command
            .arg("-object")
            .arg(format!("memory-backend-file,id=migration,share=on,mem-path={},size={size}", file.display()))
            .args(["-device", "ivshmem-plain,memdev=migration"]);
    }
    let tcp = |port: u16| ["-serial".to_string(), format!("tcp:127.0.0.1:{port},server=on,wait=off")];
    command
        .args(["-machine", "q35", "-cpu", "EPYC,+svm", "-m", &format!("{}M", run.memory_mib)])
        .args(["-smp", &run.smp.to_string()])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", guest_log.display()))
        .args(match (run.debug, run.agent) {
            // The third serial port is the SVSM's COM3 (its GDB stub), the fourth the
            // guest's COM4 (the host agent): COM3 must exist for COM4 to.
            (Debug::Svsm { port }, _) => tcp(port).to_vec(),
            (_, Some(_)) => vec!["-serial".to_string(), "null".to_string()],
            _ => vec![],
        })
        .args(run.agent.map(tcp).into_iter().flatten())
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(run.svsm)
        .args(run.append.map(|a| ["-append", a]).into_iter().flatten());
    command
}

/// QEMU's stdout (the SVSM's console), line by line, from a reader thread.
fn stdout_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// QEMU's own messages, once it exits. TCG warns about CPU features it does not emulate;
/// only other messages are kept.
fn stderr_messages(stderr: ChildStderr) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .filter(|l| !l.contains("TCG doesn't support requested feature"))
            .collect::<Vec<_>>()
    })
}

/// Follows both consoles until QEMU exits (its status) or the time limit passes (an
/// error, QEMU killed), telling `run.notify` of the lines they wait for.
fn watch(
    run: &Run<'_>,
    child: &mut Child,
    lines: &mpsc::Receiver<String>,
    console: &mut GuestConsole,
    boot: &mut Boot,
    started: Instant,
) -> Result<ExitStatus, String> {
    loop {
        while let Ok(line) = lines.try_recv() {
            record(boot, line, started, &console.prefix);
            if let Some(last) = boot.lines.last() {
                for (_, tell) in run.notify.iter().filter(|(p, _)| last.starts_with(p)) {
                    let _ = tell.send(());
                }
            }
        }
        let seen = boot.guest_lines.len();
        console.poll(boot);
        for (prefix, tell) in &run.notify {
            if boot.guest_lines[seen..].iter().any(|l| l.starts_with(prefix)) {
                let _ = tell.send(());
            }
        }
        if let Some(status) = child.try_wait().map_err(|e| format!("waiting for QEMU: {e}"))? {
            return Ok(status);
        }
        if run.stop.is_some_and(|stop| stop.load(std::sync::atomic::Ordering::Relaxed)) {
            let _ = child.kill();
            let _ = child.wait();
            console.poll(boot);
            return Err("stopped: the run beside QEMU failed".into());
        }
        if started.elapsed() > run.limit {
            let _ = child.kill();
            let _ = child.wait();
            console.poll(boot);
            return Err(format!("the run did not finish within {} s (hang)", run.limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What the SVSM prints when it finds its own state in a VMCB after a #VMEXIT: a rare
/// fault of QEMU 7.2's SVM emulation (`svsm/src/bare/svm/hw.rs`, `EMULATOR_FAULT`;
/// docs/platforms/svm.md, "An emulator fault").
pub const EMULATOR_FAULT: &str = "emulator fault: the VMCB holds the SVSM's own state after a #VMEXIT";

/// Some SVSM printed [`EMULATOR_FAULT`] since [`once_more`] last looked.
static EMULATOR_FAULT_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Run `run` (a boot, or a migration between QEMU instances); if it fails after an SVSM
/// reported QEMU's emulator fault, say so and run it once more, telling it so (`true`):
/// the guest's state was lost to the emulator, not to the SVSM. Any other failure, or
/// a second one, is the answer.
pub fn once_more<T>(what: &str, run: impl Fn(bool) -> Result<T, String>) -> Result<T, String> {
    let seen = || EMULATOR_FAULT_SEEN.swap(false, std::sync::atomic::Ordering::SeqCst);
    seen();
    match run(false) {
        Err(why) if seen() => {
            crate::shell::step(&format!(
                "{why}: the SVSM reported QEMU's emulator fault (a rare TCG fault that loses a vCPU's state, \
                 docs/platforms/svm.md); {what} once more"
            ));
            run(true)
        }
        done => done,
    }
}

fn record(boot: &mut Boot, line: String, started: Instant, prefix: &str) {
    // SeaBIOS clears the screen with escape sequences before the SVSM runs.
    let clean: String = line.chars().filter(|c| !c.is_control() || *c == '\t').collect();
    let text = clean.rsplit("Booting from ROM..").next().unwrap_or(&clean).trim_end().to_string();
    if text.starts_with("bulwark-svsm") && boot.first_line_after.is_none() {
        boot.first_line_after = Some(started.elapsed());
    }
    if boot.first_line_after.is_some() {
        if text.contains(EMULATOR_FAULT) {
            EMULATOR_FAULT_SEEN.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        println!("{prefix}svsm | {text}");
        boot.lines.push(text);
    }
}
