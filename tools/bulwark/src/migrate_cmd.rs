//! `bulwark migrate relay`: the host's part of a live migration between two QEMU
//! instances (docs/migration.md, "The QEMU end to end").
//!
//! Each QEMU gives its SVSM an `ivshmem-plain` device backed by a shared file: its first
//! half is the SVSM's outbound ring of migration pages, its second half the inbound ring
//! (one page each in an 8 KiB file; the first page of each ring is the proposal's page).
//! This command opens both files and plays both hosts of the proposal and the socket
//! between them (`migrate::relay::Relay`): it starts the pages, then moves every 2 KiB
//! buffer one SVSM marks ready to the same place in the other's inbound ring, until both
//! streams have ended. It reads and
//! writes the files with `pread`/`pwrite`: the kernel's page cache is the memory QEMU maps
//! shared, so no mapping (and no `unsafe`) is needed here.
//!
//! The relay is untrusted by design: `--fault` makes it flip, drop, replay, reorder or
//! truncate one buffer, so the tests can show that the SVSMs notice.

use abi::migration::{BUFFER_OFFSET, BUFFER_SIZE, DATA_REGISTER_OFFSET, DataRegister, MigrationStatus, STATUS_OFFSET};
use migrate::channel::{FRAGMENT_HEADER_LEN, MigrationPage};
use migrate::relay::{Fault, Relay};
use migrate::session::{FrameKind, RecordType};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: bulwark migrate relay --source FILE --destination FILE [--fault KIND@N] [--timeout SECS] [--json]

  FILE     the file behind a QEMU instance's ivshmem-plain migration device: the SVSM's
           outbound ring of N 4 KiB pages, then its inbound ring of N (N = 1 in an 8 KiB
           file: the proposal's two pages; the SVSMs use a ring when both files have one)
  --fault  do one thing wrong to the N-th buffer relayed (counting both directions from 0),
           or with N = finish to the first buffer of the source's FINISH record (its type
           is in clear): flip (one bit of its fragment), drop, replay (deliver it twice),
           reorder (swap it with the next one the same way), truncate (end both streams there)
  --timeout  give up after SECS seconds (default 600)
  --json   print the summary as JSON";

/// The page behind one side of a QEMU's migration device.
struct FilePage {
    file: File,
    /// Where the page starts in the file.
    base: u64,
}

impl FilePage {
    /// The file's `[outbound, inbound]` rings, as the SVSM finds them in its BAR.
    fn rings(path: &str) -> Result<[Vec<Self>; 2], String> {
        const PAGE: u64 = abi::migration::PAGE_SIZE as u64;
        let file = File::options().read(true).write(true).open(path).map_err(|e| format!("{path}: {e}"))?;
        let len = file.metadata().map_err(|e| format!("{path}: {e}"))?.len();
        let ring = (len / (2 * PAGE)).min(u64::from(migrate::session::MAX_RING_PAGES));
        if ring == 0 {
            return Err(format!("{path}: {len} bytes; a migration device's file has at least two 4 KiB pages"));
        }
        let pages = |first: u64| -> Result<Vec<Self>, String> {
            (first..first + ring)
                .map(|page| {
                    let file = file.try_clone().map_err(|e| format!("{path}: {e}"))?;
                    Ok(Self { file, base: page * PAGE })
                })
                .collect()
        };
        Ok([pages(0)?, pages(ring)?])
    }

    // The relay's page interface cannot fail: an I/O error on a local file is said, and
    // reads as zeros (NOT_STARTED, no data), which moves nothing.
    fn read(&mut self, offset: usize, buf: &mut [u8]) {
        if let Err(e) = self.file.read_exact_at(buf, self.base + offset as u64) {
            eprintln!("relay: reading the migration file: {e}");
            buf.fill(0);
        }
    }

    fn write(&mut self, offset: usize, buf: &[u8]) {
        if let Err(e) = self.file.write_all_at(buf, self.base + offset as u64) {
            eprintln!("relay: writing the migration file: {e}");
        }
    }

    fn byte(&mut self, offset: usize) -> u8 {
        let mut b = [0u8];
        self.read(offset, &mut b);
        b[0]
    }
}

impl MigrationPage for FilePage {
    fn read_status(&mut self) -> MigrationStatus {
        MigrationStatus(self.byte(STATUS_OFFSET))
    }
    fn write_status(&mut self, status: MigrationStatus) {
        self.write(STATUS_OFFSET, &[status.0]);
    }
    fn read_data_register(&mut self) -> DataRegister {
        DataRegister(self.byte(DATA_REGISTER_OFFSET))
    }
    fn write_data_register(&mut self, value: DataRegister) {
        self.write(DATA_REGISTER_OFFSET, &[value.0]);
    }
    fn read_buffer(&mut self, buf: &mut [u8; BUFFER_SIZE]) {
        self.read(BUFFER_OFFSET, buf);
    }
    fn write_buffer(&mut self, buf: &[u8; BUFFER_SIZE]) {
        self.write(BUFFER_OFFSET, buf);
    }
}

/// `KIND@N` (or `KIND@finish`: the first FINISH record, wherever it comes), as `--fault`
/// takes it.
fn parse_fault(spec: &str) -> Result<(Fault, Option<FrameKind>), String> {
    let (kind, index) = spec.split_once('@').ok_or_else(|| format!("--fault {spec}: expected KIND@N"))?;
    let (buffer, on) = match index {
        "finish" => (usize::MAX, Some(FrameKind::Record(RecordType::Finish))),
        n => (n.parse().map_err(|_| format!("--fault {spec}: N is a number or `finish`"))?, None),
    };
    let fault = match kind {
        // A bit of the fragment's bytes (past its header), so the framing stays valid and
        // only the session's authentication can notice.
        "flip" => Fault::FlipBit { buffer, bit: FRAGMENT_HEADER_LEN * 8 + 5 },
        "drop" => Fault::Drop { buffer },
        "replay" => Fault::Duplicate { buffer },
        "reorder" => Fault::SwapWithNext { buffer },
        "truncate" => Fault::TruncateAt { buffer },
        other => return Err(format!("--fault {spec}: unknown kind `{other}` (flip, drop, replay, reorder, truncate)")),
    };
    Ok((fault, on))
}

struct Options {
    source: String,
    destination: String,
    fault: Option<Fault>,
    /// The fault goes to the first frame of this kind (`KIND@finish`).
    fault_on: Option<FrameKind>,
    timeout: Duration,
    json: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let (mut source, mut destination, mut fault, mut timeout, mut json) = (None, None, None, 600, false);
    let mut fault_on = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--source" => source = Some(value()?),
            "--destination" => destination = Some(value()?),
            "--fault" => {
                let (parsed, on) = parse_fault(&value()?)?;
                (fault, fault_on) = (Some(parsed), on);
            }
            "--timeout" => timeout = value()?.parse().map_err(|_| "--timeout takes seconds".to_string())?,
            "--json" => json = true,
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    Ok(Options {
        source: source.ok_or("--source is required")?,
        destination: destination.ok_or("--destination is required")?,
        fault,
        fault_on,
        timeout: Duration::from_secs(timeout),
        json,
    })
}

pub fn main(args: &[String]) -> ExitCode {
    match args {
        [relay, rest @ ..] if relay == "relay" => match parse(rest) {
            Ok(options) => relay_main(&options),
            Err(e) => {
                eprintln!("bulwark migrate relay: {e}\n\n{USAGE}");
                ExitCode::from(2)
            }
        },
        [help, ..] if help == "help" || help == "--help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn relay_main(o: &Options) -> ExitCode {
    let (source, destination) = match (FilePage::rings(&o.source), FilePage::rings(&o.destination)) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("bulwark migrate relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ring = source[0].len().min(destination[1].len());
    eprintln!("relay: rings of {ring} page(s) per direction");
    let mut relay = Relay::between_rings(source, destination, o.fault).without_log();
    if let Some(kind) = o.fault_on {
        relay = relay.fault_on_first(kind);
    }
    let started = Instant::now();
    let mut last_report = started;
    let mut idle = 0u32;
    let finished = loop {
        if relay.finished() {
            break true;
        }
        if started.elapsed() > o.timeout {
            break false;
        }
        if relay.pump() {
            idle = 0;
        } else {
            // Back off while both SVSMs are busy elsewhere; stay quick while bytes flow.
            idle = idle.saturating_add(1);
            if idle > 1000 {
                std::thread::sleep(Duration::from_micros(200));
            } else {
                std::thread::yield_now();
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let [out, back] = relay.taken();
            eprintln!(
                "relay: {:>4} s, {} KiB source -> destination, {} KiB back",
                started.elapsed().as_secs(),
                out * BUFFER_SIZE / 1024,
                back * BUFFER_SIZE / 1024
            );
        }
    };
    let [out, back] = relay.taken();
    let seconds = started.elapsed().as_secs_f64();
    if o.json {
        println!(
            "{}",
            serde_json::json!({
                "finished": finished,
                "seconds": seconds,
                "buffers_source_to_destination": out,
                "buffers_destination_to_source": back,
                "buffer_bytes": BUFFER_SIZE,
                "ring_pages": ring,
                "fault_applied": o.fault.is_some() && relay.fault_applied(),
            })
        );
    } else {
        let how = if finished { "both streams ended" } else { "timed out" };
        println!(
            "relay: {how} after {seconds:.1} s: {out} buffers ({} KiB) source -> destination, {back} buffers back{}",
            out * BUFFER_SIZE / 1024,
            if relay.fault_applied() { "; the fault was applied" } else { "" }
        );
    }
    if finished { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
