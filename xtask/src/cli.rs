//! The command line: the usage text and the one parser that reads it back. Every command's
//! options are parsed here into a [`Task`], before anything runs, so that the tests below
//! can hold the usage text and the parser to each other: each option a usage line shows is
//! accepted, and each option the parser knows is shown.

use crate::Result;
use std::path::PathBuf;

pub const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  run [--json] [--filter TEXT]       the main job: the conformance suite on the SEV-SNP model (with
                                     the model's platform and with the snp platform; --json and
                                     --filter go to `bulwark conformance`), then the SVSM booted
                                     under QEMU serving the test guest (`boot`)
  test                               everything CI runs: fmt, clippy (also of the verifier-only
                                     bulwark), the bare-metal kernel build and lints, thirteen
                                     QEMU boots of the SVSM image (`boot` plain, with --crash nx,
                                     --crash low, --crash panic --console log, --gdb-check, --agent-check, and
                                     on a test state disk: verify, four tampered, lost, older),
                                     a live migration (`migrate --other-image --fault flip@300 --guest-mib 16 --drop-finish`),
                                     a fuzz smoke run (60 s of dispatcher, 20 s each of evidence,
                                     syscalls, store, stream, peer_evidence and disk; set
                                     BULWARK_SKIP_FUZZ=1 to skip it), and
                                     all tests
  fuzz [--seconds N] [--target NAME]
                                     fuzz NAME (dispatcher, the default, evidence, syscalls,
                                     store, stream, peer_evidence or disk) for N seconds (default: 600); needs the nightly toolchain, installs
                                     cargo-fuzz if missing
  bench [--only model|svm]           the pvalidate, OCP log-read and vTPM benchmarks of the model, the
                                     tpm-bridge behind tpm2-abrmd beside swtpm (the `model` part),
                                     then the svm call round trip and vCPU isolation over 5 QEMU
                                     boots and a live migration (`migrate`) (the `svm` part); --only
                                     runs one part (target/bench/*.json)
  igvm [--firmware FILE] [--out FILE]
                                     build the SVSM and wrap it in an IGVM file for SEV-SNP hosts
                                     (default target/bulwark.igvm); prints its expected measurement
  boot [--crash ud|panic|nx|low] [--console log|serial] [--gdb|--gdb-check|--qemu-gdb] [--agent PORT|--agent-check|--agent-verify] [--no-disk|--fresh-disk|--lost-disk]
                                     build the bare-metal SVSM and boot it under QEMU (installs QEMU
                                     if missing); fails on a hang, a triple fault or a failure report;
                                     --crash checks that a fault is reported and stops the SVSM cleanly;
                                     --console log keeps the SVSM's log in its memory buffer only
                                     (replayed on the serial port if the SVSM fails; serial, the
                                     default, writes it to the serial port as it goes);
                                     --gdb builds the SVSM with its own GDB stub, which stops at boot
                                     and waits for GDB on 127.0.0.1:1234 (works on SNP too);
                                     --gdb-check has a scripted client check that stub;
                                     --qemu-gdb uses QEMU's stub instead (paused before the SVSM runs);
                                     --agent PORT: after its checks the guest serves host tools
                                     (bulwark ocp ... --qemu 127.0.0.1:PORT) until they send quit;
                                     --agent-check runs bulwark ocp and the tpm2-tools sessions
                                     through that path;
                                     the SVSM keeps its sealed state (the vTPM's NV) on the state
                                     disk target/bulwark-state.img (made blank if missing): a later
                                     boot finds the same TPM; --agent-check also checks what the
                                     previous --agent-check left there (an NV index, the EK made
                                     persistent) and leaves it anew; --agent-verify only checks it;
                                     the evidence's sealed state must be no older than the last one
                                     seen (ledger target/bulwark-state.ledger.json);
                                     --fresh-disk blanks the disk (and its ledger) first, --no-disk
                                     boots without one; --lost-disk gives a disk whose host never
                                     answers (the SVSM gives up after 10 s and serves on without
                                     the vTPM); a kept disk sealed to an earlier launch is set aside
                                     (*.previous-launch.img) for a blank one
  migrate [--other-image] [--fault KIND@N] [--page-mode] [--guest-mib N] [--drop-finish]
                                     a live migration between two QEMU instances through
                                     bulwark migrate relay, the guest running: the guest must find
                                     its memory, vTPM and OCP on the destination; first, with
                                     --other-image, to a destination launched under another
                                     measurement (refused before any state leaves), with --fault
                                     (flip, drop, replay, reorder, truncate at relayed buffer N)
                                     through a hostile relay: each must fail and the source's guest
                                     run on; the state goes over a ring of 64 pages, or with
                                     --page-mode over the proposal's single page; --guest-mib
                                     makes the guest validate (2 MiB pages, N rounded up to
                                     even) and fill N MiB more first; --drop-finish has the last
                                     relay drop the source's first FINISH (it must be offered
                                     again, and the guest arrive)
  help                               show this text
";

/// What `cargo xtask` was asked to do, with its options.
#[derive(Debug, PartialEq, Eq)]
pub enum Task {
    Run(RunOptions),
    Test,
    Fuzz(FuzzOptions),
    Bench(BenchParts),
    Igvm(IgvmOptions),
    Boot(BootOptions),
    Migrate(crate::migrate::MigrateOptions),
    Help,
}

/// `run`: the options it hands to `bulwark conformance`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    pub json: bool,
    pub filter: Option<String>,
}

impl RunOptions {
    /// The options as `bulwark conformance` takes them.
    pub fn conformance_args(&self) -> Vec<String> {
        let json = self.json.then(|| "--json".to_string());
        let filter = self.filter.iter().flat_map(|f| ["--filter".to_string(), f.clone()]);
        json.into_iter().chain(filter).collect()
    }
}

/// Which parts of `bench` run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchParts {
    /// The model's benchmarks and the tpm-bridge one.
    pub model: bool,
    /// The QEMU boots on the svm platform.
    pub svm: bool,
}

impl Default for BenchParts {
    fn default() -> Self {
        Self { model: true, svm: true }
    }
}

pub const DEFAULT_FUZZ_TARGET: &str = "dispatcher";
pub const DEFAULT_FUZZ_SECONDS: u64 = 600;

#[derive(Debug, PartialEq, Eq)]
pub struct FuzzOptions {
    pub seconds: u64,
    pub target: String,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct IgvmOptions {
    pub firmware: Option<String>,
    /// None: `target/bulwark.igvm`.
    pub out: Option<PathBuf>,
}

/// The fault `boot --crash` asks the SVSM for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    Ud,
    Panic,
    /// Call into heap data: the identity map must make it a no-execute page fault.
    Nx,
    /// Call into the low 2 MiB once the APs are up: no-execute on every CPU's own tables.
    Low,
}

impl Crash {
    /// The word on the command line, and in the SVSM's `crash=` argument.
    pub fn word(self) -> &'static str {
        match self {
            Crash::Ud => "ud",
            Crash::Panic => "panic",
            Crash::Nx => "nx",
            Crash::Low => "low",
        }
    }
}

/// Which GDB stub `boot` offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Gdb {
    #[default]
    None,
    /// The SVSM's own stub, for a person at GDB.
    Svsm,
    /// The SVSM's own stub, checked by a scripted client (`rsp.rs`).
    SvsmCheck,
    /// QEMU's stub.
    Qemu,
}

/// Whether `boot` connects the guest's host-agent port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AgentMode {
    #[default]
    None,
    /// For a person's host tools, on this port.
    Serve(u16),
    /// A scripted run of `bulwark ocp` and the tpm2-tools sessions against the guest; with
    /// a state disk, it also checks what an earlier boot recorded, and records anew.
    Check,
    /// Only the check of what an earlier boot recorded on the state disk.
    Verify,
}

/// The sealed store's disk a boot gives the SVSM (a virtio-blk drive the guest cannot
/// reach).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateDisk {
    /// None: the vTPM's state lasts one boot.
    #[default]
    None,
    /// `target/bulwark-state.img`, kept across `cargo xtask boot` runs.
    Kept,
    /// `target/bulwark-state.img` made blank first, its ledger forgotten (`--fresh-disk`).
    Fresh,
    /// `target/qemu-test-state.img`, the one `cargo xtask test`'s boots share.
    Test,
    /// A copy of the test disk changed by the host as `Tamper` says: the SVSM must refuse
    /// it and serve on without the vTPM.
    TestTampered(Tamper),
    /// A disk whose host never completes a request: the SVSM must give up on it at its
    /// deadline and serve on without the vTPM.
    TestLosesIo,
    /// `target/qemu-test-older.img`, the test disk as the first boot left it: an
    /// authentic older state the SVSM opens, whose evidence the test disk's ledger must
    /// refuse.
    TestOlder,
}

/// How a host changes the test state disk (`cargo xtask test`'s tamper boots).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// One bit flipped in every block past the headers that holds anything.
    FlipBits,
    /// Every block the later boots changed put back as the first boot left it, under the
    /// newest headers (blocks replayed from an older image).
    ReplayOlder,
    /// The used blocks past the headers in reverse order (blocks swapped).
    Permute,
    /// Cut to its two header slots and two blocks (a truncated image).
    Truncate,
}

impl Tamper {
    pub const ALL: [Tamper; 4] = [Tamper::FlipBits, Tamper::ReplayOlder, Tamper::Permute, Tamper::Truncate];
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootOptions {
    pub crash: Option<Crash>,
    /// `--console log`: the SVSM's log stays in its buffer unless it fails.
    pub log_only: bool,
    pub gdb: Gdb,
    pub agent: AgentMode,
    pub disk: StateDisk,
}

/// The task named by `args` (the command line after `cargo xtask`); no command is `help`.
pub fn parse(args: &[String]) -> Result<Task> {
    let Some((command, rest)) = args.split_first() else { return Ok(Task::Help) };
    let mut options = Options { command, rest: rest.iter() };
    let task = match command.as_str() {
        "run" => Task::Run(options.run()?),
        "test" => Task::Test,
        "fuzz" => Task::Fuzz(options.fuzz()?),
        "bench" => Task::Bench(options.bench()?),
        "igvm" => Task::Igvm(options.igvm()?),
        "boot" => Task::Boot(options.boot()?),
        "migrate" => Task::Migrate(options.migrate()?),
        // Anything after `help` is ignored, as before.
        "help" | "-h" | "--help" => return Ok(Task::Help),
        other => return Err(format!("unknown command `{other}`\n\n{USAGE}")),
    };
    // Commands without options refuse any.
    match options.rest.next() {
        Some(arg) => Err(options.unknown(arg)),
        None => Ok(task),
    }
}

/// The options after a command, read one at a time.
struct Options<'a> {
    command: &'a str,
    rest: std::slice::Iter<'a, String>,
}

impl<'a> Options<'a> {
    fn unknown(&self, arg: &str) -> String {
        format!("`cargo xtask {}` does not take `{arg}`\n\n{USAGE}", self.command)
    }

    /// The value after `option`.
    fn value(&mut self, option: &str) -> Result<&'a String> {
        self.rest.next().ok_or_else(|| format!("`{option}` needs a value\n\n{USAGE}"))
    }

    /// The value after `option`, one of `words`.
    fn word<T: Copy>(&mut self, option: &str, words: &[(&str, T)]) -> Result<T> {
        let value = self.value(option)?;
        words.iter().find(|(w, _)| w == value).map(|(_, t)| *t).ok_or_else(|| {
            let names: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
            format!("`{option}` takes {}, not `{value}`\n\n{USAGE}", names.join(" or "))
        })
    }

    fn run(&mut self) -> Result<RunOptions> {
        let mut o = RunOptions::default();
        while let Some(arg) = self.rest.next() {
            match arg.as_str() {
                "--json" => o.json = true,
                "--filter" => o.filter = Some(self.value(arg)?.clone()),
                _ => return Err(self.unknown(arg)),
            }
        }
        Ok(o)
    }

    fn fuzz(&mut self) -> Result<FuzzOptions> {
        let mut o = FuzzOptions { seconds: DEFAULT_FUZZ_SECONDS, target: DEFAULT_FUZZ_TARGET.to_string() };
        while let Some(arg) = self.rest.next() {
            match arg.as_str() {
                "--seconds" => {
                    let text = self.value(arg)?;
                    o.seconds =
                        text.parse().map_err(|_| format!("`--seconds {text}`: not a whole number of seconds"))?;
                }
                "--target" => o.target = self.value(arg)?.clone(),
                _ => return Err(self.unknown(arg)),
            }
        }
        Ok(o)
    }

    fn bench(&mut self) -> Result<BenchParts> {
        let mut o = BenchParts::default();
        while let Some(arg) = self.rest.next() {
            match arg.as_str() {
                "--only" => {
                    let only_svm = self.word(arg, &[("model", false), ("svm", true)])?;
                    o = BenchParts { model: !only_svm, svm: only_svm };
                }
                _ => return Err(self.unknown(arg)),
            }
        }
        Ok(o)
    }

    fn migrate(&mut self) -> Result<crate::migrate::MigrateOptions> {
        let mut o = crate::migrate::MigrateOptions::default();
        while let Some(arg) = self.rest.next() {
            match arg.as_str() {
                "--fault" => o.fault = Some(crate::migrate::fault(self.value(arg)?)?),
                "--other-image" => o.other_image = true,
                "--page-mode" => o.page_mode = true,
                "--drop-finish" => o.drop_finish = true,
                "--guest-mib" => {
                    // Whole 2 MiB pages: an odd N grows by one MiB more.
                    o.guest_mib = self
                        .value(arg)?
                        .parse::<u32>()
                        .ok()
                        .filter(|mib| (1..=2048).contains(mib))
                        .ok_or("the guest grows by 1..=2048 MiB with --guest-mib")?
                        .next_multiple_of(2)
                }
                _ => return Err(self.unknown(arg)),
            }
        }
        Ok(o)
    }

    fn igvm(&mut self) -> Result<IgvmOptions> {
        let mut o = IgvmOptions::default();
        while let Some(arg) = self.rest.next() {
            match arg.as_str() {
                "--out" => o.out = Some(PathBuf::from(self.value(arg)?)),
                "--firmware" => o.firmware = Some(self.value(arg)?.clone()),
                _ => return Err(self.unknown(arg)),
            }
        }
        Ok(o)
    }

    fn boot(&mut self) -> Result<BootOptions> {
        let mut o = BootOptions { disk: StateDisk::Kept, ..BootOptions::default() };
        while let Some(arg) = self.rest.next() {
            match arg.as_str() {
                "--no-disk" => o.disk = StateDisk::None,
                "--fresh-disk" => o.disk = StateDisk::Fresh,
                "--lost-disk" => o.disk = StateDisk::TestLosesIo,
                "--agent-verify" => o.agent = AgentMode::Verify,
                "--gdb" => o.gdb = Gdb::Svsm,
                "--gdb-check" => o.gdb = Gdb::SvsmCheck,
                "--qemu-gdb" => o.gdb = Gdb::Qemu,
                "--agent" => {
                    let port = self.value(arg)?;
                    let port = port.parse().map_err(|_| format!("`--agent {port}`: not a TCP port\n\n{USAGE}"))?;
                    o.agent = AgentMode::Serve(port);
                }
                "--agent-check" => o.agent = AgentMode::Check,
                "--console" => o.log_only = self.word(arg, &[("log", true), ("serial", false)])?,
                "--crash" => {
                    o.crash = Some(self.word(
                        arg,
                        &[("ud", Crash::Ud), ("panic", Crash::Panic), ("nx", Crash::Nx), ("low", Crash::Low)],
                    )?)
                }
                _ => return Err(self.unknown(arg)),
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests;
