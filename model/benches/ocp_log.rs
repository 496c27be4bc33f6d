//! Benchmark: reading the SVSM's log through SVSM_OCP_READ (guest client -> VMGEXIT ->
//! request loop -> OCP -> the platform's log ring -> guest memory), in bytes per second,
//! beside the limit: a plain copy (memcpy, at most two per read) of the same bytes out of
//! the same ring into a buffer of the same size. Two buffer sizes: 4 KiB, where each
//! call's fixed cost (the world switch and request loop) weighs most, and the whole
//! model log (16 KiB) in one call.
//!
//! Prints a table and writes `target/bench/ocp_log.json`.

use bulwark_model::machine::MODEL_LOG_BYTES;
use bulwark_model::world::{World, WorldConfig};
use guest::ocp::ReadOutcome;
use std::time::{Duration, Instant};

const BUFFERS: [usize; 2] = [4096, MODEL_LOG_BYTES];
const MEASURE: Duration = Duration::from_millis(1500);
/// The log is source 0 (docs/protocols/ocp.md).
const LOG: u32 = 0;

fn world() -> World {
    let mut w = World::new(WorldConfig::default());
    // A full ring of text, as after a busy boot.
    let line = b"[Info] vCPU 3 created: APIC ID 3, VMSA 0x4014000, VMPL 1\n";
    while w.machine.log_ring.written() < MODEL_LOG_BYTES as u64 * 2 {
        w.machine.log_ring.push(line);
    }
    w
}

/// Bytes per second through the protocol.
fn through_svsm(chunk: usize) -> f64 {
    let mut w = world();
    let (buffer, oldest) = (2 * bulwark_model::world::MIB, w.machine.log_ring.oldest());
    let (mut bytes, mut spent) = (0u64, Duration::ZERO);
    while spent < MEASURE {
        let t = Instant::now();
        let mut offset = oldest;
        loop {
            match w.client().ocp_read(LOG, buffer, chunk as u32, offset as u32) {
                Ok(ReadOutcome::Copied(0)) => break,
                Ok(ReadOutcome::Copied(n)) => offset += u64::from(n),
                other => panic!("log read: {other:?}"),
            }
        }
        spent += t.elapsed();
        bytes += offset - oldest;
    }
    bytes as f64 / spent.as_secs_f64()
}

/// Bytes per second copying the same bytes out of the ring directly.
fn plain_copy(size: usize) -> f64 {
    let w = world();
    let oldest = w.machine.log_ring.oldest();
    let mut chunk = vec![0u8; size];
    let (mut bytes, mut spent) = (0u64, Duration::ZERO);
    while spent < MEASURE {
        let t = Instant::now();
        let mut offset = oldest;
        while let Ok(n @ 1..) = w.machine.log_ring.read(offset, &mut chunk) {
            std::hint::black_box(&chunk);
            offset += n as u64;
        }
        spent += t.elapsed();
        bytes += offset - oldest;
    }
    bytes as f64 / spent.as_secs_f64()
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.as_deref().is_some_and(|f| !"ocp_log".contains(f)) {
        return;
    }
    let mib = |b: f64| b / (1024.0 * 1024.0);
    println!("OCP log read       through SVSM_OCP_READ      plain copy   ratio");
    let mut rows = Vec::new();
    for size in BUFFERS {
        let (svsm, limit) = (through_svsm(size), plain_copy(size));
        println!(
            "{:>6} KiB buffer {:>12.1} MiB/s {:>12.1} MiB/s   {:.2}",
            size / 1024,
            mib(svsm),
            mib(limit),
            svsm / limit
        );
        rows.push(format!(
            "{{\"buffer_bytes\":{size},\"through_svsm_bytes_per_s\":{svsm:.0},\"plain_copy_bytes_per_s\":{limit:.0},\"ratio\":{:.4}}}",
            svsm / limit
        ));
    }
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("bench");
    let json = format!("{{\"benchmark\":\"ocp_log\",\"results\":[{}]}}\n", rows.join(","));
    if std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join("ocp_log.json"), json)).is_ok() {
        println!("wrote {}", dir.join("ocp_log.json").display());
    }
}
