//! Benchmark: `bulwark tpm-bridge` as tpm2-tools users meet it, behind tpm2-abrmd (the
//! resource manager tpm2-tools' own integration tests run behind), beside swtpm behind the
//! same tpm2-abrmd. tpm2-abrmd keeps one connection to its TPM for all its clients, so this
//! is the latency of a kept connection: to the bridge with Debian's mssim TCTI (tpm2-tss
//! 3.2.1, which writes a command's header and body separately with Nagle on), to swtpm with
//! its own TCTI (`swtpm:`; swtpm's control port does not speak the simulator's platform
//! protocol, so `mssim:` cannot start there).
//!
//! Both run on a private D-Bus session bus (`dbus-daemon --session`), so nothing needs
//! systemd or the system bus. The client is Debian's tpm2-tools, interleaved between the
//! two TPMs: `tpm2_getrandom 8` (2 TPM commands) and `tpm2_nvreadpublic` over 32 NV
//! indices the bench defines (97 commands: one GetCapability, then three NV_ReadPublic per
//! index). Each invocation's wall time includes the tool's own start-up, the same for both;
//! the difference between the two tools, divided by the difference in TPM commands
//! (counted in the bridge's log), is the cost of one more TPM command on the kept
//! connection. Goal (issue 12): the bridge's per-command latency within 1.2x of swtpm's.
//!
//! Prints a table and writes `target/bench/tpm_bridge.json`. `BULWARK_BENCH_BRIDGE=PATH`
//! runs another build of `bulwark` as the bridge (to compare with an older one).

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Rounds (each tool once on each TPM): at least MIN_ROUNDS, then more until BUDGET is
/// spent or MAX_ROUNDS are done (a bridge that stalls 40 ms per command takes seconds a round).
const MIN_ROUNDS: usize = 15;
const MAX_ROUNDS: usize = 100;
const BUDGET: Duration = Duration::from_secs(60);
/// NV indices `tpm2_nvreadpublic` reads the public area of.
const NV_INDICES: u32 = 32;
const GOAL: f64 = 1.2;

/// A child process, ended when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, what: &str) -> Result<Proc, String> {
    cmd.stdin(Stdio::null())
        .spawn()
        .map(Proc)
        .map_err(|e| format!("{what}: {e} (run `cargo xtask bench`, which installs it)"))
}

/// A private session bus: its child and address.
fn dbus() -> Result<(Proc, String), String> {
    let mut cmd = Command::new("dbus-daemon");
    cmd.args(["--session", "--nofork", "--print-address=1"]).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut bus = spawn(&mut cmd, "dbus-daemon")?;
    let mut address = String::new();
    let stdout = bus.0.stdout.take().ok_or("dbus-daemon has no stdout")?;
    BufReader::new(stdout).read_line(&mut address).map_err(|e| e.to_string())?;
    let address = address.trim().to_string();
    if address.is_empty() {
        return Err("dbus-daemon printed no address".into());
    }
    Ok((bus, address))
}

/// The bridge over a model guest's vTPM: its child, command port and a count of the
/// commands its log has shown.
fn bridge() -> Result<(Proc, u16, Arc<AtomicUsize>), String> {
    let bin = std::env::var("BULWARK_BENCH_BRIDGE").unwrap_or_else(|_| env!("CARGO_BIN_EXE_bulwark").to_string());
    let mut cmd = Command::new(&bin);
    cmd.args(["tpm-bridge", "--port", "0"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut bridge = spawn(&mut cmd, &bin)?;
    let mut line = String::new();
    let mut stdout = BufReader::new(bridge.0.stdout.take().ok_or("the bridge has no stdout")?);
    stdout.read_line(&mut line).map_err(|e| e.to_string())?;
    // The rest is read and dropped: the bridge must not meet a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let port = line
        .rsplit_once("127.0.0.1:")
        .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
        .ok_or_else(|| format!("no port in the bridge's `{}`", line.trim()))?;
    let commands = Arc::new(AtomicUsize::new(0));
    let stderr = bridge.0.stderr.take().ok_or("the bridge has no stderr")?;
    let count = commands.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(" -> rc ") {
                count.fetch_add(1, Ordering::Relaxed);
            } else {
                eprintln!("{line}");
            }
        }
    });
    Ok((bridge, port, commands))
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port P with P + 1 also free (the swtpm TCTI finds the control port at P + 1).
fn free_pair() -> Result<u16, String> {
    for _ in 0..32 {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free pair of ports".into())
}

/// swtpm with its TCP server and control ports: its child, state directory and port.
fn swtpm() -> Result<(Proc, TempDir, u16), String> {
    let dir = TempDir(std::env::temp_dir().join(format!("bulwark-bench-swtpm-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).map_err(|e| e.to_string())?;
    let port = free_pair()?;
    let ctrl = port + 1;
    let mut cmd = Command::new("swtpm");
    cmd.args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.0.display()))
        .args(["--server", &format!("type=tcp,port={port}"), "--ctrl", &format!("type=tcp,port={ctrl}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = spawn(&mut cmd, "swtpm")?;
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            return Err("swtpm did not listen".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, dir, port))
}

/// A tpm2-abrmd in front of one TPM, and how tpm2-tools reach it.
struct Abrmd {
    _child: Proc,
    bus: String,
    tcti: String,
}

impl Abrmd {
    fn start(bus: &str, name: &str, tpm_tcti: &str) -> Result<Self, String> {
        let mut cmd = Command::new("tpm2-abrmd");
        // --allow-root: CI and this machine run as root; it changes nothing otherwise.
        cmd.args(["--session", "--allow-root", &format!("--dbus-name={name}"), &format!("--tcti={tpm_tcti}")])
            .env("DBUS_SESSION_BUS_ADDRESS", bus)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn(&mut cmd, "tpm2-abrmd")?;
        let abrmd =
            Self { _child: child, bus: bus.to_string(), tcti: format!("tabrmd:bus_name={name},bus_type=session") };
        // Ready once it answers a client.
        let started = Instant::now();
        while abrmd.run(&["tpm2_getrandom", "8"]).is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                return Err(format!("tpm2-abrmd ({tpm_tcti}) did not come up on the session bus"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(abrmd)
    }

    /// One tool invocation: its wall time and stdout.
    fn run(&self, tool: &[&str]) -> Result<(Duration, String), String> {
        let started = Instant::now();
        let out = Command::new(tool[0])
            .args(&tool[1..])
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
            .env("TPM2TOOLS_TCTI", &self.tcti)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", tool[0]))?;
        let elapsed = started.elapsed();
        if !out.status.success() {
            return Err(format!("{} failed: {}", tool.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok((elapsed, String::from_utf8_lossy(&out.stdout).into_owned()))
    }
}

const GETRANDOM: &[&str] = &["tpm2_getrandom", "8", "--hex"];
const NVREADPUBLIC: &[&str] = &["tpm2_nvreadpublic"];

/// Define the NV indices `tpm2_nvreadpublic` lists; how many it lists then.
fn define_nv_indices(abrmd: &Abrmd) -> Result<usize, String> {
    for i in 0..NV_INDICES {
        let index = format!("{:#x}", 0x0150_0100 + i);
        abrmd.run(&["tpm2_nvdefine", &index, "-C", "o", "-s", "8", "-a", "ownerread|ownerwrite"])?;
    }
    let listed = abrmd.run(NVREADPUBLIC)?.1;
    Ok(listed.lines().filter(|l| l.starts_with("0x")).count())
}

/// TPM commands one invocation of `tool` sends, from the bridge's log.
fn commands_of(abrmd: &Abrmd, tool: &[&str], log: &AtomicUsize) -> Result<usize, String> {
    let before = log.load(Ordering::Relaxed);
    abrmd.run(tool)?;
    // The bridge logs a command before it answers, but the thread reading the log may lag.
    std::thread::sleep(Duration::from_millis(200));
    Ok(log.load(Ordering::Relaxed) - before)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median wall time (ms) of each tool on each TPM, `[tool][tpm]`, and the rounds run.
fn measure(tpms: [&Abrmd; 2]) -> Result<([[f64; 2]; 2], usize), String> {
    let mut times: [[Vec<f64>; 2]; 2] = Default::default();
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < MIN_ROUNDS || (rounds < MAX_ROUNDS && started.elapsed() < BUDGET) {
        for (t, tool) in [GETRANDOM, NVREADPUBLIC].iter().enumerate() {
            for (k, tpm) in tpms.iter().enumerate() {
                times[t][k].push(tpm.run(tool)?.0.as_secs_f64() * 1e3);
            }
        }
        rounds += 1;
    }
    let mut m = [[0.0; 2]; 2];
    for t in 0..2 {
        for k in 0..2 {
            m[t][k] = median(&mut times[t][k]);
        }
    }
    Ok((m, rounds))
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.as_deref().is_some_and(|f| !"tpm_bridge".contains(f)) {
        return;
    }
    if let Err(e) = run() {
        eprintln!("tpm_bridge bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let (_bus, address) = dbus()?;
    let (_bridge, bridge_port, log) = bridge()?;
    let (_swtpm, _state, swtpm_port) = swtpm()?;
    let on_bridge =
        Abrmd::start(&address, "com.bulwark.Bench.Bridge", &format!("mssim:host=127.0.0.1,port={bridge_port}"))?;
    let on_swtpm =
        Abrmd::start(&address, "com.bulwark.Bench.Swtpm", &format!("swtpm:host=127.0.0.1,port={swtpm_port}"))?;
    // The same tools send the same commands to both only if both list the same indices.
    let listed = [define_nv_indices(&on_bridge)?, define_nv_indices(&on_swtpm)?];
    if listed != [NV_INDICES as usize; 2] {
        return Err(format!("tpm2_nvreadpublic lists {listed:?} NV indices (bridge, swtpm), not {NV_INDICES}"));
    }
    let commands = [commands_of(&on_bridge, GETRANDOM, &log)?, commands_of(&on_bridge, NVREADPUBLIC, &log)?];
    if commands[1] <= commands[0] {
        return Err(format!("tpm2_nvreadpublic sent {} commands, tpm2_getrandom {}", commands[1], commands[0]));
    }
    let (m, rounds) = measure([&on_bridge, &on_swtpm])?;
    let extra = (commands[1] - commands[0]) as f64;
    let per_command = [(m[1][0] - m[0][0]) / extra, (m[1][1] - m[0][1]) / extra];
    report(&m, rounds, commands, per_command)
}

fn report(m: &[[f64; 2]; 2], rounds: usize, commands: [usize; 2], per_command: [f64; 2]) -> Result<(), String> {
    let ratio = per_command[0] / per_command[1];
    let verdict = if ratio <= GOAL { "goal met" } else { "goal missed" };
    println!("tpm2-tools through tpm2-abrmd (kept connection), medians of {rounds} interleaved rounds");
    println!("{:<34} {:>12} {:>12} {:>7}", "", "bridge", "swtpm", "ratio");
    for (t, name) in ["tpm2_getrandom 8", "tpm2_nvreadpublic"].iter().enumerate() {
        let label = format!("{name} ({} TPM commands)", commands[t]);
        println!("{label:<34} {:>9.2} ms {:>9.2} ms {:>7.2}", m[t][0], m[t][1], m[t][0] / m[t][1]);
    }
    println!(
        "{:<34} {:>9.3} ms {:>9.3} ms {ratio:>7.2}  (goal <= {GOAL}: {verdict})",
        "one more TPM command", per_command[0], per_command[1]
    );
    let json = serde_json::json!({
        "bench": "tpm_bridge_behind_tpm2_abrmd",
        "rounds": rounds,
        "getrandom_ms": { "bridge_median": m[0][0], "swtpm_median": m[0][1], "tpm_commands": commands[0] },
        "nvreadpublic_ms": {
            "bridge_median": m[1][0], "swtpm_median": m[1][1], "tpm_commands": commands[1], "nv_indices": NV_INDICES,
        },
        "per_command_ms": { "bridge": per_command[0], "swtpm": per_command[1], "ratio": ratio },
        "goal_ratio": GOAL,
        "goal_met": ratio <= GOAL,
    });
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("tpm_bridge.json");
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
