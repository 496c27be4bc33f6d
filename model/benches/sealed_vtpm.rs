//! Benchmark: the vTPM on its sealed store (issue 15).
//!
//! 1. `TPM2_NV_Write` of 32 bytes end to end: guest client -> SVSM_VTPM_CMD -> the vTPM
//!    protocol -> libtpms -> the NV change committed to the sealed store (AES-256-GCM-SIV
//!    blocks, Merkle tree, two flushes) on a disk file with `fdatasync` as its flush ->
//!    response. Beside it, the same command to swtpm with its state directory on the same
//!    file system. The two are interleaved, 300 each. Goal: at most 1.5x swtpm.
//! 2. Start-up: opening the store and starting the vTPM from it, on a blank disk (format,
//!    manufacture) and on a populated one (verify every block, start from the kept state):
//!    5 starts each.
//!
//! The engine runs in the SVSM's address space here (the model's service process is a
//! host thread, whose switches would measure the host's scheduler, not the store); the
//! QEMU boots measure the process path (docs/persistence.md). Prints a table and writes
//! `target/bench/sealed_vtpm.json`.

mod support;

use bulwark_model::world::{World, WorldConfig};
use kernel::sealed::{Sealed, VtpmNv};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use store::{Block, BlockDevice, IoError, Store, StoreKey};
use support::{Swtpm, ThroughSvsm, Tpm, ok};
use vtpm::commands::{nv_define_space, nv_write};
use vtpm::libtpms::{LibTpms, OpenError};

const NV_WRITES: usize = 300;
const STARTS: usize = 5;
const INDEX: u32 = 0x0150_0001;
const DISK_BLOCKS: u64 = 4096;

/// A disk image file; a flush is `fdatasync` when `durable` (a power cut loses nothing
/// flushed), else nothing (the page cache keeps it: what swtpm's state directory gets,
/// which writes a temporary file and renames it, without fsync).
struct FileDisk {
    file: File,
    durable: bool,
}

impl BlockDevice for FileDisk {
    fn block_count(&self) -> u64 {
        self.file.metadata().map_or(0, |m| m.len() / 4096)
    }
    fn read(&mut self, index: u64, buf: &mut Block) -> Result<(), IoError> {
        self.file.read_exact_at(buf, index * 4096).map_err(|_| IoError)
    }
    fn write(&mut self, index: u64, buf: &Block) -> Result<(), IoError> {
        self.file.write_all_at(buf, index * 4096).map_err(|_| IoError)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        if self.durable { self.file.sync_data().map_err(|_| IoError) } else { Ok(()) }
    }
}

/// Fresh entropy for the store's nonces and id.
fn entropy(buf: &mut [u8]) -> Result<(), store::EntropyError> {
    use std::io::Read;
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).map_err(|_| store::EntropyError)
}

/// libtpms is one TPM per process: wait until the previous one is gone.
fn open_libtpms(nv: vtpm::NvBlobs) -> LibTpms {
    let started = Instant::now();
    loop {
        match LibTpms::open_with_nv(abi::vtpm::MAX_COMMAND_SIZE as u32, nv.clone()) {
            Ok(tpm) => return tpm,
            Err(OpenError::AlreadyOpen) if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("libtpms: {e:?}"),
        }
    }
}

/// The SVSM's start on `disk`: open (or format) the store, start the vTPM from what it
/// keeps. The time of each part, and the model guest with the vTPM installed.
fn start(disk: &Path, durable: bool) -> (World, Duration, Duration) {
    let file = File::options().read(true).write(true).open(disk).expect("disk image");
    let t = Instant::now();
    let (store, _) =
        Store::open_or_format(FileDisk { file, durable }, &StoreKey::new([5; 32]), entropy).expect("the store opens");
    let opened = t.elapsed();
    let sealed = Sealed::new(Box::new(store));
    let t = Instant::now();
    let (kept, storage) = VtpmNv::open(sealed.clone());
    let vtpm = vtpm::Vtpm::start(Box::new(open_libtpms(kept.nv)), Box::new(storage)).expect("the vTPM starts");
    let started = t.elapsed();
    let mut world = World::new(WorldConfig { vtpm: false, ..WorldConfig::default() });
    world.svsm.install_sealed(&mut world.machine, sealed);
    world.svsm.install_vtpm(vtpm);
    (world, opened, started)
}

fn blank(path: &Path) {
    let file = File::create(path).expect("disk image");
    file.set_len(DISK_BLOCKS * 4096).expect("disk size");
}

fn timed(tpm: &mut dyn Tpm, command: &[u8], what: &str) -> f64 {
    let t = Instant::now();
    let r = tpm.run(command);
    let us = t.elapsed().as_secs_f64() * 1e6;
    ok(&r, what);
    us
}

/// The `q` quantile of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn bench_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("bench")
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.as_deref().is_some_and(|f| !"sealed_vtpm".contains(f)) {
        return;
    }
    let dir = bench_dir();
    std::fs::create_dir_all(&dir).expect("target/bench");
    let disk = dir.join("sealed-vtpm-disk.img");

    // Start-up on a blank disk, then on the populated one (the state of the first start
    // plus the NV writes below, once they ran).
    let mut empty = Vec::new();
    for _ in 0..STARTS {
        blank(&disk);
        let (_, opened, started) = start(&disk, true);
        empty.push((opened.as_secs_f64() * 1e3, started.as_secs_f64() * 1e3));
    }

    // NV_Write through the SVSM and its store, and to swtpm, interleaved: once with the
    // store's flushes reaching the disk, once with swtpm's durability (the page cache).
    let mut swtpm = Swtpm::start().unwrap_or_else(|e| {
        eprintln!("sealed_vtpm bench: {e}");
        std::process::exit(1)
    });
    ok(&swtpm.run(&nv_define_space(INDEX, 32)), "NV_DefineSpace");
    let mut generation = 0;
    let mut runs = Vec::new();
    for durable in [true, false] {
        let (world, _, _) = start(&disk, durable);
        let mut svsm = ThroughSvsm(world);
        if !durable {
            ok(&svsm.run(&vtpm::commands::nv_undefine_space(INDEX)), "NV_UndefineSpace");
        }
        ok(&svsm.run(&nv_define_space(INDEX, 32)), "NV_DefineSpace");
        for tpm in [&mut svsm as &mut dyn Tpm, &mut swtpm] {
            for i in 0..10u8 {
                ok(&tpm.run(&nv_write(INDEX, 0, &[i; 32])), "NV_Write warm-up");
            }
        }
        let (mut through, mut direct) = (Vec::new(), Vec::new());
        for i in 0..NV_WRITES {
            let data = [(i % 251) as u8; 32];
            let command = nv_write(INDEX, 0, &data);
            through.push(timed(&mut svsm, &command, "NV_Write"));
            direct.push(timed(&mut swtpm, &command, "NV_Write"));
        }
        generation = svsm.0.svsm.sealed_generation();
        runs.push((durable, sorted(through), sorted(direct)));
    }

    let mut populated = Vec::new();
    for _ in 0..STARTS {
        let (_, opened, started) = start(&disk, true);
        populated.push((opened.as_secs_f64() * 1e3, started.as_secs_f64() * 1e3));
    }
    let med = |v: &[(f64, f64)], part: fn(&(f64, f64)) -> f64| quantile(&sorted(v.iter().map(part).collect()), 0.5);

    println!("vTPM on the sealed store              through the SVSM (model)      swtpm (state dir)   ratio (median)");
    let mut nv_json = Vec::new();
    for (durable, through, direct) in &runs {
        let ratio = quantile(through, 0.5) / quantile(direct, 0.5);
        let how = if *durable { "flushed to disk (fdatasync)" } else { "page cache, as swtpm" };
        println!("NV_Write 32 bytes (n={NV_WRITES}), the store {how}:");
        println!(
            "                          median {:>8.1} us                {:>8.1} us        {ratio:.2}  (goal <= 1.5)",
            quantile(through, 0.5),
            quantile(direct, 0.5)
        );
        println!(
            "                          p25-p75 {:>6.1}-{:<6.1} us            {:>6.1}-{:<6.1} us",
            quantile(through, 0.25),
            quantile(through, 0.75),
            quantile(direct, 0.25),
            quantile(direct, 0.75)
        );
        nv_json.push(serde_json::json!({
            "store_flushes_to_disk": durable,
            "svsm_median": quantile(through, 0.5), "swtpm_median": quantile(direct, 0.5),
            "svsm_p25": quantile(through, 0.25), "svsm_p75": quantile(through, 0.75),
            "swtpm_p25": quantile(direct, 0.25), "swtpm_p75": quantile(direct, 0.75),
            "ratio_median": ratio, "n": NV_WRITES, "interleaved": true,
        }));
    }
    println!("start-up (median of {STARTS})       open the store    start the vTPM (libtpms, Startup, EK)");
    println!(
        "  blank disk (format, manufacture) {:>8.2} ms       {:>8.1} ms",
        med(&empty, |p| p.0),
        med(&empty, |p| p.1)
    );
    println!(
        "  populated (generation {generation:>4})      {:>8.2} ms       {:>8.1} ms",
        med(&populated, |p| p.0),
        med(&populated, |p| p.1)
    );
    let json = serde_json::json!({
        "nv_write_32_us": nv_json,
        "goal": "NV_Write ratio <= 1.5 (swtpm 0.7 writes its state file and renames it, without fsync)",
        "start_ms": {
            "blank_open": med(&empty, |p| p.0), "blank_vtpm": med(&empty, |p| p.1),
            "populated_open": med(&populated, |p| p.0), "populated_vtpm": med(&populated, |p| p.1),
            "populated_generation": generation, "n": STARTS,
        },
    });
    let path = dir.join("sealed_vtpm.json");
    match std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap_or_default()) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
    let _ = std::fs::remove_file(&disk);
}
