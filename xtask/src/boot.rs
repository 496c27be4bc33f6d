//! `cargo xtask boot`: the bare-metal SVSM and the test guest under QEMU, judged by what
//! they print. A plain boot passes when the guest passed its checks over real VMMCALLs
//! from two vCPUs and its attestation evidence verifies; `--crash` passes when the SVSM
//! reports the fault it was asked for with a symbolized backtrace and stops. The GDB stub
//! and the host agent can be checked by scripted clients that run beside QEMU.

use crate::Result;
use crate::cli::{AgentMode, BootOptions, Crash, Gdb, StateDisk, Tamper};
use crate::shell::{exec_cargo, step, target_dir};
use crate::{agent, evidence, image, qemu, rsp};
use std::path::Path;
use std::sync::mpsc::{Receiver, channel};
use std::thread::JoinHandle;
use std::time::Duration;

/// The SVSM's region in the QEMU launch (`svsm/src/bare/launch.rs`).
const SVSM_REGION: std::ops::Range<u64> = 0x100_0000..0x200_0000;

/// The port a person's GDB connects to.
const GDB_PORT: u16 = 1234;

/// The CPUs QEMU gives the machine, and so the SVSM.
const CPUS: u32 = 2;

/// What the SVSM prints when its GDB stub waits, and the guest when it serves its agent:
/// the scripted clients start talking then.
const STUB_WAITS: &str = "gdb: stopped; waiting for GDB";
const AGENT_SERVES: &str = "agent: serving host requests";

/// A scripted client running beside QEMU; it returns what it saw.
type Checker = JoinHandle<Result<String>>;

/// `cargo xtask boot [--crash ud|panic|nx|low] [--console log|serial] [--gdb|--gdb-check|--qemu-gdb]
/// [--agent PORT|--agent-check]`.
pub fn run(options: &BootOptions) -> Result {
    run_seen(options).map(|_| ())
}

/// [`run`], giving back the fingerprint of the sealed store's key a successful boot
/// printed (two boots of one image must print the same). A boot that failed after the
/// SVSM reported QEMU's emulator fault runs once more ([`qemu::once_more`]).
pub fn run_seen(options: &BootOptions) -> Result<Option<String>> {
    qemu::once_more("booting", |after_fault| attempt(options, after_fault))
}

/// One boot; `after_fault` when the one before it ended in the emulator fault.
fn attempt(options: &BootOptions, after_fault: bool) -> Result<Option<String>> {
    let with_stub = matches!(options.gdb, Gdb::Svsm | Gdb::SvsmCheck);
    let image = image::build_svsm(with_stub)?;
    let guest = image::build_testguest()?;
    let append = svsm_arguments(options, with_stub);
    step(&format!(
        "qemu-system-x86_64 -cpu EPYC,+svm -smp {CPUS} -kernel {}{}",
        image.display(),
        append.as_deref().map(|a| format!(" -append {a}")).unwrap_or_default()
    ));
    let debug = debug_stub(options.gdb, &image)?;
    let agent = agent_port(options.agent)?;
    let mut disk = prepare_disk(options.disk, &guest)?;
    if let Some(disk) = disk.as_mut() {
        // The boot that ended in the fault may have attested after the ledger's last
        // record: its chain moved on, and the verifier knows why (as a relying party told
        // of a crash would, with `bulwark attest verify --accept-new-chain`).
        disk.new_chain = after_fault;
    }
    let (stub_ready, stub_waits) = channel();
    let (agent_ready, agent_serves) = channel();
    let run = qemu::Run {
        svsm: &image,
        guest: Some(&guest),
        append: append.as_deref(),
        smp: CPUS,
        debug,
        agent,
        fw_cfg: image::issuing_kit()?,
        // COM3's set-up clears its receive FIFO: the stub's client must wait for it.
        notify: vec![(STUB_WAITS, stub_ready), (AGENT_SERVES, agent_ready)],
        limit: time_limit(options),
        disk: disk.as_ref().map(Disk::drive),
        label: "",
        stop: None,
        migration: None,
        memory_mib: 512,
    };
    let plan =
        agent::Plan { session: options.agent == AgentMode::Check, state: disk.as_ref().map(|d| d.tpm_record.clone()) };
    let agent_checker = agent
        .filter(|_| matches!(options.agent, AgentMode::Check | AgentMode::Verify))
        .map(|port| check_agent(port, agent_serves, plan));
    let stub_checker = match debug {
        qemu::Debug::Svsm { port } if options.gdb == Gdb::SvsmCheck => Some(check_stub(port, stub_waits)),
        _ => None,
    };
    let boot = qemu::boot(&run)?;
    if let Some(seen) = finish(stub_checker, "the GDB check")? {
        step(&format!("the SVSM's GDB stub answered like GDB expects: {seen}"));
    }
    if let Some(seen) = finish(agent_checker, "the agent check")? {
        step(&format!("host tools reached the SVSM in QEMU through the guest: {seen}"));
    }
    match (&boot.outcome, options.crash) {
        (qemu::Outcome::Success, None) => judge_success(&boot, &image, disk.as_ref())
            .and_then(|()| judge_disk(&boot.lines, disk.as_ref()))
            .and_then(|()| sealing_fingerprint(&boot.lines).map(Some)),
        (qemu::Outcome::FailureReported, None) => Err("the SVSM or the guest reported a failure".into()),
        (qemu::Outcome::FailureReported, Some(kind)) => judge_crash(&boot, kind, options.log_only).map(|()| None),
        (qemu::Outcome::Success, Some(_)) => Err("the SVSM was asked to crash but reported success".into()),
        (qemu::Outcome::Migrated, _) => {
            Err("the SVSM said it migrated its guest away, in a boot without a migration".into())
        }
    }
}

/// A state disk for one boot: the raw image, whether it held a store before the boot,
/// where the agent check records what it left in the vTPM, and the ledger of the sealed
/// states the boots' evidence showed (the newest per store id: an older one fails the
/// boot, as it would fail a relying party's `bulwark attest verify --state-ledger`).
struct Disk {
    image: std::path::PathBuf,
    held_state: bool,
    tpm_record: std::path::PathBuf,
    /// None for a refused disk: the SVSM reports no sealed state.
    ledger: Option<std::path::PathBuf>,
    /// The SVSM must refuse the store, for this reason, and serve on without a vTPM.
    refused: Option<Refusal>,
    /// An authentic older state: the SVSM opens it, the ledger must refuse the evidence.
    rollback: bool,
    /// The ledger accepts a chain that does not pass through its value (never an older
    /// generation): the boot before this one ended in QEMU's emulator fault.
    new_chain: bool,
}

/// Why a test disk must be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// Its stored state was changed.
    Tampered,
    /// Its host never completes a request.
    LostIo,
}

impl Disk {
    fn drive(&self) -> qemu::Drive<'_> {
        match self.refused {
            Some(Refusal::LostIo) => qemu::Drive::NeverAnswers { bytes: DISK_BYTES },
            _ => qemu::Drive::Image(&self.image),
        }
    }
}

/// The state disk's size: ample for the vTPM's NV state (a few KiB) and its copies.
const DISK_BYTES: u64 = 16 << 20;

/// Make the boot's state disk ready: created blank if missing (or made blank for
/// `--fresh-disk`). The kept disk is set aside and replaced by a blank one when the
/// launch it was sealed to changed (see [`set_aside_if_resealed`]).
fn prepare_disk(choice: StateDisk, guest: &Path) -> Result<Option<Disk>> {
    let name = match choice {
        StateDisk::None => return Ok(None),
        StateDisk::Kept | StateDisk::Fresh => "bulwark-state.img",
        StateDisk::Test => "qemu-test-state.img",
        StateDisk::TestTampered(_) => "qemu-test-tampered.img",
        StateDisk::TestLosesIo => "qemu-test-lost.img",
        StateDisk::TestOlder => "qemu-test-older.img",
    };
    let image = target_dir()?.join(name);
    let tpm_record = image.with_extension("tpm.json");
    let ledger = image.with_extension("ledger.json");
    if let StateDisk::TestTampered(how) = choice {
        let dir = target_dir()?;
        tamper(how, &dir.join("qemu-test-state.img"), &dir.join("qemu-test-older.img"), &image)?;
        let refused = Some(Refusal::Tampered);
        return Ok(Some(Disk {
            image,
            held_state: true,
            tpm_record,
            ledger: None,
            refused,
            rollback: false,
            new_chain: false,
        }));
    }
    if choice == StateDisk::TestLosesIo {
        step("state disk: a host that never completes a request (QEMU's null-co driver, a minute per request)");
        let refused = Some(Refusal::LostIo);
        return Ok(Some(Disk {
            image,
            held_state: false,
            tpm_record,
            ledger: None,
            refused,
            rollback: false,
            new_chain: false,
        }));
    }
    if choice == StateDisk::TestOlder {
        let ledger = target_dir()?.join("qemu-test-state.ledger.json");
        step(&format!("state disk {}: the test disk as its first boot left it (an older state)", image.display()));
        return Ok(Some(Disk {
            image,
            held_state: true,
            tpm_record,
            ledger: Some(ledger),
            refused: None,
            rollback: true,
            new_chain: false,
        }));
    }
    if choice == StateDisk::Fresh {
        let _ = std::fs::remove_file(&image);
        let _ = std::fs::remove_file(&tpm_record);
        let _ = std::fs::remove_file(&ledger);
    }
    if matches!(choice, StateDisk::Kept | StateDisk::Fresh) {
        set_aside_if_resealed(&image, &[&tpm_record, &ledger], guest)?;
    }
    let held_state = std::fs::read(&image).is_ok_and(|bytes| bytes.iter().take(8192).any(|b| *b != 0));
    if !image.exists() {
        let file = std::fs::File::create(&image).map_err(|e| format!("{}: {e}", image.display()))?;
        file.set_len(DISK_BYTES).map_err(|e| format!("{}: {e}", image.display()))?;
    }
    step(&format!(
        "state disk {} ({}): the SVSM keeps its sealed state there",
        image.display(),
        if held_state { "holds a store from an earlier boot" } else { "blank" }
    ));
    Ok(Some(Disk {
        image,
        held_state,
        tpm_record,
        ledger: Some(ledger),
        refused: None,
        rollback: false,
        new_chain: false,
    }))
}

/// The store's key is sealed to the launch measurement, which on the svm platform is the
/// SHA-384 of the guest image QEMU hands over (`svsm/src/bare/launch.rs`): after the test
/// guest changes, the kept disk can never open again (the SVSM refuses it: `WrongKey`).
/// So the digest of the launch a kept disk was made for is stamped beside it, and a disk
/// stamped for another launch is renamed `*.previous-launch.*` (with what the agent check
/// recorded and the ledger) and a blank one takes its place: nothing is deleted, and
/// `cargo xtask run` keeps working across rebuilds. A disk without a stamp is used as it is.
fn set_aside_if_resealed(image: &Path, companions: &[&Path], guest: &Path) -> Result {
    use sha2::Digest;
    let launched = std::fs::read(guest).map_err(|e| format!("{}: {e}", guest.display()))?;
    let digest = attest::hex(&sha2::Sha384::digest(&launched));
    let stamp = image.with_extension("launch.sha384");
    let stamped = std::fs::read_to_string(&stamp).ok();
    if stamped.as_deref().is_some_and(|s| s.trim() != digest) && image.exists() {
        let image_aside = previous_launch_name(image);
        for path in std::iter::once(image).chain(companions.iter().copied()) {
            let aside = previous_launch_name(path);
            if path.exists() {
                std::fs::rename(path, &aside).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        step(&format!(
            "state disk {}: sealed to another launch (the test guest changed since it was written), so it can never open again; set aside as {} and replaced by a blank disk",
            image.display(),
            image_aside.display()
        ));
    }
    if stamped.is_none() && image.exists() {
        return Ok(());
    }
    std::fs::write(&stamp, format!("{digest}\n")).map_err(|e| format!("{}: {e}", stamp.display()))
}

/// `bulwark-state.img` -> `bulwark-state.previous-launch.img` (the first name not taken:
/// `.previous-launch-2.img`, ... after that), so an earlier set-aside disk stays too.
fn previous_launch_name(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
    (1..)
        .map(|n| match n {
            1 => path.with_file_name(format!("{stem}.previous-launch.{ext}")),
            n => path.with_file_name(format!("{stem}.previous-launch-{n}.{ext}")),
        })
        .find(|candidate| !candidate.exists())
        .unwrap_or_else(|| path.with_extension("previous-launch"))
}

/// Copy the disk image `from` to `to`, changed as a host would (`how`); `older` is the
/// same disk as an earlier boot left it.
fn tamper(how: Tamper, from: &Path, older: &Path, to: &Path) -> Result {
    const BLOCK: usize = 4096;
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let mut bytes = read(from)?;
    let used: Vec<usize> =
        (2..bytes.len() / BLOCK).filter(|b| bytes[b * BLOCK..(b + 1) * BLOCK].iter().any(|x| *x != 0)).collect();
    if used.len() < 2 {
        return Err(format!("{} holds no state to tamper with", from.display()));
    }
    let what = match how {
        Tamper::FlipBits => {
            for b in &used {
                bytes[b * BLOCK + 100] ^= 0x01;
            }
            format!("with one bit flipped in each of its {} used blocks", used.len())
        }
        Tamper::ReplayOlder => {
            let old = read(older)?;
            let mut replayed = 0;
            for b in 2..bytes.len().min(old.len()) / BLOCK {
                let range = b * BLOCK..(b + 1) * BLOCK;
                if bytes[range.clone()] != old[range.clone()] {
                    bytes[range.clone()].copy_from_slice(&old[range]);
                    replayed += 1;
                }
            }
            if replayed == 0 {
                return Err(format!("{} and {} are the same: nothing to replay", from.display(), older.display()));
            }
            format!("with its {replayed} blocks the later boots changed replayed from {}", older.display())
        }
        Tamper::Permute => {
            let blocks: Vec<Vec<u8>> = used.iter().map(|b| bytes[b * BLOCK..(b + 1) * BLOCK].to_vec()).collect();
            for (b, block) in used.iter().zip(blocks.iter().rev()) {
                bytes[b * BLOCK..(b + 1) * BLOCK].copy_from_slice(block);
            }
            format!("with its {} used blocks in reverse order", used.len())
        }
        Tamper::Truncate => {
            bytes.truncate(4 * BLOCK);
            "cut to its two header slots and two blocks".to_string()
        }
    };
    std::fs::write(to, &bytes).map_err(|e| format!("{}: {e}", to.display()))?;
    step(&format!("state disk {}: a copy of {} {what}", to.display(), from.display()));
    Ok(())
}

/// With a state disk, the SVSM must have opened its store, and started the vTPM from it
/// when it held one (manufactured a new one when it was blank).
fn judge_disk(lines: &[String], disk: Option<&Disk>) -> Result {
    let Some(disk) = disk else { return Ok(()) };
    if let Some(reason) = disk.refused {
        let (refusal, what) = match reason {
            Refusal::Tampered => ("sealed: the state disk's store is refused: Tampered", "tampered"),
            Refusal::LostIo => ("sealed: the state disk's store is refused: Io", "unanswering"),
        };
        let refused = lines
            .iter()
            .find(|l| l.starts_with(refusal))
            .ok_or_else(|| format!("the SVSM did not refuse the {what} state disk (no `{refusal}...`)"))?;
        if reason == Refusal::LostIo && !lines.iter().any(|l| l.starts_with("sealed: the state disk lost a request")) {
            return Err("the SVSM did not say the state disk lost a request".into());
        }
        if !lines.iter().any(|l| l.starts_with("vtpm: ") && l.ends_with("protocol 2 is not served")) {
            return Err(format!("the vTPM started on a {what} state disk"));
        }
        step(&format!("{refused}; the vTPM did not start, and the guest's other checks passed"));
        return Ok(());
    }
    if let Some(refused) = lines.iter().find(|l| l.starts_with("sealed: the state disk's store is refused")) {
        let hint = if refused.contains("WrongKey") {
            " (it was sealed by another launch; `--fresh-disk` starts a blank one)"
        } else {
            ""
        };
        return Err(format!("{refused}{hint}"));
    }
    let sealed = lines
        .iter()
        .find(|l| l.starts_with("sealed: state disk"))
        .ok_or("the SVSM did not open its state disk (no `sealed: state disk ...` line)")?;
    let (expected, vtpm_says) = match disk.held_state {
        true => ("opened and verified", "started from its sealed NV state"),
        false => ("formatted", "manufactured"),
    };
    if !sealed.contains(expected) {
        return Err(format!("the state disk should have been {expected}: {sealed}"));
    }
    if !lines.iter().any(|l| l.starts_with("vtpm: libtpms") && l.contains(vtpm_says)) {
        return Err(format!("the vTPM should have {vtpm_says}"));
    }
    step(&format!("{sealed}; the vTPM {vtpm_says}"));
    Ok(())
}

/// The fingerprint of the sealed store's key the SVSM printed (`sealing: ...`).
fn sealing_fingerprint(lines: &[String]) -> Result<String> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("sealing: ")?.split("fingerprint ").nth(1)?.strip_suffix(')'))
        .map(str::to_string)
        .ok_or_else(|| "the SVSM got no sealing key from its PSP (no `sealing: ... fingerprint` line)".into())
}

/// The SVSM's command line (`-append`): what to crash on, where its log goes, whether its
/// GDB stub waits at boot.
fn svsm_arguments(options: &BootOptions, with_stub: bool) -> Option<String> {
    let words: Vec<String> = options
        .crash
        .map(|kind| format!("crash={}", kind.word()))
        .into_iter()
        .chain(options.log_only.then(|| "console=log".into()))
        .chain(with_stub.then(|| "gdb".into()))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// The GDB stub QEMU is set up for, and how a person attaches to it.
fn debug_stub(gdb: Gdb, image: &Path) -> Result<qemu::Debug> {
    let connect = format!("gdb {} -ex 'target remote 127.0.0.1:{GDB_PORT}'", image.display());
    Ok(match gdb {
        Gdb::None => qemu::Debug::None,
        Gdb::Qemu => {
            step(&format!("QEMU's GDB stub waits on 127.0.0.1:{GDB_PORT} before the SVSM runs: {connect}"));
            qemu::Debug::Qemu
        }
        Gdb::Svsm => {
            step(&format!("the SVSM's own GDB stub (COM3) waits on 127.0.0.1:{GDB_PORT} once it booted: {connect}"));
            qemu::Debug::Svsm { port: GDB_PORT }
        }
        Gdb::SvsmCheck => qemu::Debug::Svsm { port: free_port()? },
    })
}

/// The TCP port of the guest's host agent (its COM4), if it serves one.
fn agent_port(mode: AgentMode) -> Result<Option<u16>> {
    match mode {
        AgentMode::None => Ok(None),
        AgentMode::Serve(port) => {
            step(&format!(
                "after its checks the guest serves host tools on 127.0.0.1:{port}: cargo run -p bulwark -- ocp list --qemu 127.0.0.1:{port}"
            ));
            Ok(Some(port))
        }
        AgentMode::Check | AgentMode::Verify => {
            // The scripted check runs the real CLI: build it first.
            exec_cargo(&["build", "-p", "bulwark"])?;
            Ok(Some(free_port()?))
        }
    }
}

/// A debugging session, or host tools at work, take as long as the person needs; a
/// scripted boot has two minutes.
fn time_limit(options: &BootOptions) -> Duration {
    let person = matches!(options.gdb, Gdb::Svsm | Gdb::Qemu) || matches!(options.agent, AgentMode::Serve(_));
    Duration::from_secs(if person { 24 * 3600 } else { 120 })
}

/// A TCP port nobody listens on right now.
pub(crate) fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free TCP port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// `bulwark ocp` and the tpm2-tools sessions through the guest's agent, once it serves.
fn check_agent(port: u16, serves: Receiver<()>, plan: agent::Plan) -> Checker {
    std::thread::spawn(move || {
        serves.recv_timeout(Duration::from_secs(120)).map_err(|_| "the guest never served its agent")?;
        agent::check(port, &plan)
    })
}

/// A scripted GDB against the SVSM's stub, once it waits.
fn check_stub(port: u16, waits: Receiver<()>) -> Checker {
    std::thread::spawn(move || {
        waits.recv_timeout(Duration::from_secs(60)).map_err(|_| "the SVSM's stub never said it waits")?;
        rsp::check_svsm_stub(port, SVSM_REGION)
    })
}

/// What a scripted client saw, or why it failed.
fn finish(checker: Option<Checker>, what: &str) -> Result<Option<String>> {
    match checker {
        None => Ok(None),
        Some(checker) => checker.join().map_err(|_| format!("{what} panicked"))?.map(Some),
    }
}

/// A boot that ended with success: the guest passed checks and none failed, every CPU came
/// online and a guest vCPU ran on the second, the vTPM runs at CPL 3 (unless its state
/// disk was tampered with), and the guest's evidence verifies (with a state disk, also
/// against the disk's ledger).
fn judge_success(boot: &qemu::Boot, image: &Path, disk: Option<&Disk>) -> Result {
    let vtpm_expected = disk.is_none_or(|d| d.refused.is_none());
    let verdict = |v: &str| {
        boot.guest_lines.iter().filter(|l| l.starts_with("RESULT ") && l.split(' ').nth(2) == Some(v)).count()
    };
    let (passed, failed, skipped) = (verdict("pass"), verdict("fail"), verdict("skip"));
    let size = std::fs::metadata(image).map(|m| m.len()).unwrap_or(0);
    step(&format!(
        "the guest's verdict: {passed} passed, {failed} failed, {skipped} skipped (over real VMMCALLs); run took {:.2} s (first SVSM output after {:.3} s); SVSM image file {} KiB",
        boot.total.as_secs_f64(),
        boot.first_line_after.map_or(0.0, |d| d.as_secs_f64()),
        size / 1024
    ));
    let online = format!("smp: {CPUS} CPU(s) online");
    if !boot.lines.contains(&online) {
        return Err(format!("the SVSM did not bring all CPUs online (expected `{online}`)"));
    }
    if !boot.lines.iter().any(|l| l.ends_with("runs on cpu 1")) {
        return Err("no guest vCPU ran on a second CPU".into());
    }
    if passed == 0 || failed > 0 {
        return Err("the guest reported success without passing checks".into());
    }
    judge_user_mode(&boot.lines)?;
    if !boot.lines.iter().any(|l| l.starts_with("vtpm: crash check passed")) {
        return Err("the vTPM service process's crash check did not pass".into());
    }
    if vtpm_expected {
        if !boot.lines.iter().any(|l| l.contains("in its service process at CPL 3")) {
            return Err("the vTPM was not manufactured in its service process".into());
        }
        step(
            "vTPM at CPL 3: manufactured in its service process; a service that faults is ended and answers TPM_RC_FAILURE",
        );
    }
    let ledger = disk.and_then(|d| d.ledger.as_deref());
    let new_chain = disk.is_some_and(|d| d.new_chain);
    if !disk.is_some_and(|d| d.rollback) {
        return verify_guest_evidence(&boot.guest_lines, ledger, new_chain);
    }
    match verify_guest_evidence(&boot.guest_lines, ledger, new_chain) {
        Err(e) if e.contains("REFUSED (rollback") => {
            step(&format!("the verifier's ledger refused the older state: {e}"));
            Ok(())
        }
        Err(e) => Err(format!("the older state's evidence failed otherwise than by the ledger: {e}")),
        Ok(()) => Err("the verifier's ledger accepted an older state of the disk".into()),
    }
}

/// The probe module at CPL 3 (svsm/src/bare/user/): it said hello through system calls,
/// every isolation probe ended as it must (a fault, or a refused pointer), and its
/// threads took turns.
fn judge_user_mode(lines: &[String]) -> Result {
    let summary = lines
        .iter()
        .find_map(|l| l.strip_prefix("user: ")?.strip_suffix(" probes ended as expected"))
        .ok_or("the SVSM ran no user-mode probes (no `user: N of M probes ended as expected`)")?;
    let counts: Vec<&str> = summary.split(" of ").collect();
    match counts.as_slice() {
        [ok, all] if ok == all && *ok != "0" => {
            step(&format!(
                "user mode: {ok} of {all} probes at CPL 3 ended as expected (hello, every isolation probe, threads)"
            ));
            Ok(())
        }
        _ => {
            let missed: Vec<&str> = lines
                .iter()
                .filter(|l| l.starts_with("user: ") && l.contains("NOT AS EXPECTED"))
                .map(String::as_str)
                .collect();
            Err(format!("user mode: only {summary} probes ended as expected:\n  {}", missed.join("\n  ")))
        }
    }
}

/// A boot asked to crash: the SVSM named the fault and at least one function of the
/// backtrace; with `--console log`, the serial port stayed quiet until the failure and
/// then got the whole log buffer.
fn judge_crash(boot: &qemu::Boot, kind: Crash, log_only: bool) -> Result {
    let kind = kind.word();
    let reported = boot.lines.iter().any(|l| l.starts_with("EXCEPTION") || l.starts_with("PANIC"));
    let symbolized = boot.lines.iter().any(|l| l.trim_start().starts_with('#') && l.contains("+0x"));
    if !(reported && symbolized) {
        return Err(format!("crash {kind}: fault reported: {reported}, symbolized backtrace: {symbolized}"));
    }
    if kind == Crash::Nx.word() || kind == Crash::Low.word() {
        // An instruction fetch (error code bit 4) refused on a present page (bit 0).
        let fetch = boot.lines.iter().any(|l| {
            l.strip_prefix("EXCEPTION 14 (page fault) error code 0x")
                .and_then(|code| u64::from_str_radix(code.trim(), 16).ok())
                .is_some_and(|code| code & 0x11 == 0x11)
        });
        if !fetch {
            let what = if kind == Crash::Nx.word() { "the SVSM's heap" } else { "the low 2 MiB" };
            return Err(format!("crash {kind}: no instruction-fetch page fault: {what} was executable"));
        }
    }
    step(&format!("the SVSM reported the requested crash ({kind}) with a symbolized backtrace and stopped"));
    if log_only {
        let replay = boot.lines.iter().position(|l| l.starts_with("--- console log buffer"));
        let quiet_before = replay.is_some_and(|r| !boot.lines[..r].iter().any(|l| l.starts_with("image: ")));
        let replayed = replay.is_some_and(|r| boot.lines[r..].iter().any(|l| l.starts_with("image: ")));
        if !(quiet_before && replayed) {
            return Err(format!(
                "console=log: serial quiet before the failure: {quiet_before}, log buffer replayed: {replayed}"
            ));
        }
        step("console=log kept the serial port quiet and replayed the log buffer on the failure");
    }
    Ok(())
}

/// The test guest's attestation evidence: saved under target/attest/qemu and verified
/// as a relying party would (`bulwark attest verify` reads the same files; with a state
/// disk, `--state-ledger` with the disk's ledger).
fn verify_guest_evidence(guest_lines: &[String], ledger: Option<&Path>, new_chain: bool) -> Result {
    let evidence = evidence::collect(guest_lines)?.ok_or("the guest printed no attestation evidence")?;
    let dir = target_dir()?.join("attest/qemu");
    evidence::save(&evidence, &dir)?;
    let verdict = evidence::check(&evidence, ledger, new_chain)?;
    for line in verdict.to_string().lines() {
        println!("verify | {line}");
    }
    let said = ledger.and_then(|path| evidence::ledger_outcome(&verdict, path));
    if !verdict.passed {
        return Err(format!(
            "the guest's attestation evidence did not verify (failed: {}){}",
            evidence::failed_checks(&verdict),
            said.map(|s| format!("; {s}")).unwrap_or_default()
        ));
    }
    step(&format!(
        "the QEMU guest's attestation report verified (sev crate and Bulwark's checks; not rooted in AMD hardware){}; files in {}",
        said.map(|s| format!("; {s}")).unwrap_or_default(),
        dir.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The retry matches the line the SVSM prints, word for word.
    #[test]
    fn the_emulator_fault_is_the_svsms_own_line() {
        let svsm = include_str!("../../svsm/src/bare/svm/hw.rs");
        let fault = qemu::EMULATOR_FAULT;
        assert!(svsm.contains(&format!("pub const EMULATOR_FAULT: &str = \"{fault}\";")));
        assert!(svsm.contains("\"svm: {EMULATOR_FAULT} (cpu {}"));
    }

    #[test]
    fn the_sealing_fingerprint_is_read_from_its_line() {
        let lines =
            ["x".to_string(), "sealing: the PSP derives ... (SHA-256 fingerprint 0123456789abcdef)".to_string()];
        assert_eq!(sealing_fingerprint(&lines).unwrap(), "0123456789abcdef");
        assert!(sealing_fingerprint(&lines[..1]).is_err());
        assert!(sealing_fingerprint(&["sealing: no key from the PSP: Unavailable".to_string()]).is_err());
    }

    #[test]
    fn the_svsm_is_told_what_the_options_ask() {
        assert_eq!(svsm_arguments(&BootOptions::default(), false), None);
        let all = BootOptions { crash: Some(Crash::Panic), log_only: true, ..BootOptions::default() };
        assert_eq!(svsm_arguments(&all, true).as_deref(), Some("crash=panic console=log gdb"));
    }

    #[test]
    fn only_a_person_at_work_lifts_the_time_limit() {
        let scripted = [
            BootOptions::default(),
            BootOptions { gdb: Gdb::SvsmCheck, ..BootOptions::default() },
            BootOptions { agent: AgentMode::Check, ..BootOptions::default() },
        ];
        for options in scripted {
            assert_eq!(time_limit(&options), Duration::from_secs(120), "{options:?}");
        }
        for options in [
            BootOptions { gdb: Gdb::Svsm, ..BootOptions::default() },
            BootOptions { gdb: Gdb::Qemu, ..BootOptions::default() },
            BootOptions { agent: AgentMode::Serve(4000), ..BootOptions::default() },
        ] {
            assert!(time_limit(&options) > Duration::from_secs(3600), "{options:?}");
        }
    }

    fn boot(lines: &[&str]) -> qemu::Boot {
        qemu::Boot {
            lines: lines.iter().map(|l| l.to_string()).collect(),
            guest_lines: Vec::new(),
            first_line_after: None,
            total: Duration::ZERO,
            outcome: qemu::Outcome::FailureReported,
        }
    }

    #[test]
    fn a_crash_passes_only_with_the_fault_and_a_symbolized_backtrace() {
        let good = boot(&["image: x", "EXCEPTION #UD at 0x1000", "  #0 0x1000 bulwark_svsm::crash+0x12"]);
        assert!(judge_crash(&good, Crash::Ud, false).is_ok());
        assert!(judge_crash(&boot(&["EXCEPTION #UD at 0x1000", "  #0 0x1000 ??"]), Crash::Ud, false).is_err());
        assert!(judge_crash(&boot(&["  #0 0x1000 f+0x1"]), Crash::Ud, false).is_err());
    }

    #[test]
    fn console_log_passes_only_if_the_buffer_was_held_back_then_replayed() {
        let held = ["PANIC at x", "  #0 0x1000 f+0x1", "--- console log buffer ---", "image: x"];
        assert!(judge_crash(&boot(&held), Crash::Panic, true).is_ok());
        let leaked = ["image: x", "PANIC at x", "  #0 0x1000 f+0x1", "--- console log buffer ---", "image: x"];
        assert!(judge_crash(&boot(&leaked), Crash::Panic, true).is_err());
        assert!(judge_crash(&boot(&held[..2]), Crash::Panic, true).is_err(), "never replayed");
    }

    /// A scratch directory with a kept disk, its companions and a guest image.
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("bulwark-xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("guest"), b"launch one").unwrap();
        std::fs::write(dir.join("bulwark-state.img"), b"sealed to launch one").unwrap();
        std::fs::write(dir.join("bulwark-state.ledger.json"), b"{}").unwrap();
        dir
    }

    fn set_aside(dir: &Path) {
        let image = dir.join("bulwark-state.img");
        let ledger = dir.join("bulwark-state.ledger.json");
        let record = dir.join("bulwark-state.tpm.json");
        set_aside_if_resealed(&image, &[&record, &ledger], &dir.join("guest")).unwrap();
    }

    #[test]
    fn a_disk_sealed_to_another_launch_is_set_aside_not_deleted() {
        let dir = scratch("resealed");
        // A disk made before stamps existed is used as it is, and gets no stamp.
        set_aside(&dir);
        assert!(!dir.join("bulwark-state.launch.sha384").exists());
        // A new disk is stamped with its launch; the same launch keeps it.
        std::fs::remove_file(dir.join("bulwark-state.img")).unwrap();
        set_aside(&dir);
        std::fs::write(dir.join("bulwark-state.img"), b"sealed to launch one").unwrap();
        set_aside(&dir);
        assert_eq!(std::fs::read(dir.join("bulwark-state.img")).unwrap(), b"sealed to launch one");
        // Another launch: the disk and its ledger move aside, the stamp follows the launch.
        std::fs::write(dir.join("guest"), b"launch two").unwrap();
        set_aside(&dir);
        assert!(!dir.join("bulwark-state.img").exists());
        assert!(!dir.join("bulwark-state.ledger.json").exists());
        assert_eq!(std::fs::read(dir.join("bulwark-state.previous-launch.img")).unwrap(), b"sealed to launch one");
        assert_eq!(std::fs::read(dir.join("bulwark-state.previous-launch.ledger.json")).unwrap(), b"{}");
        use sha2::Digest;
        let stamp = std::fs::read_to_string(dir.join("bulwark-state.launch.sha384")).unwrap();
        assert_eq!(stamp.trim(), attest::hex(&sha2::Sha384::digest(b"launch two")));
        // A third launch: the second disk goes aside too, beside the first, not over it.
        std::fs::write(dir.join("bulwark-state.img"), b"sealed to launch two").unwrap();
        std::fs::write(dir.join("guest"), b"launch three").unwrap();
        set_aside(&dir);
        assert_eq!(std::fs::read(dir.join("bulwark-state.previous-launch.img")).unwrap(), b"sealed to launch one");
        assert_eq!(std::fs::read(dir.join("bulwark-state.previous-launch-2.img")).unwrap(), b"sealed to launch two");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
