//! Benchmark: SVSM_CORE_PVALIDATE through the whole request path on the model (guest
//! client -> VMGEXIT -> request loop -> core protocol -> platform), for a full list of
//! 511 entries of 4 KiB and of 2 MiB, in pages per second, beside the limit: a loop that
//! performs only the RMP updates the same list needs (PVALIDATE + RMPADJUST per entry)
//! directly on the model's RMP. The two run in alternating rounds; the ratio is the
//! median of the rounds' ratios (limit time / request-path time), with its spread.
//!
//! Prints a table and writes `target/bench/pvalidate.json`.

use abi::core_protocol::PvalidateEntry;
use abi::hw::rmpadjust::{PERM_ALL, PERM_NONE};
use bulwark_model::rmp::Size;
use bulwark_model::world::{MIB, World, WorldConfig};
use guest::Transport;
use std::time::{Duration, Instant};

const ENTRIES: u64 = 511;
const LIST: u64 = 2 * MIB;
const SMALL_BASE: u64 = 4 * MIB;
const HUGE_BASE: u64 = 64 * MIB;
const MEASURE: Duration = Duration::from_millis(1500);

fn world() -> World {
    World::new(WorldConfig {
        ram_bytes: HUGE_BASE + ENTRIES * 2 * MIB + 2 * MIB,
        huge_from: HUGE_BASE,
        ..WorldConfig::default()
    })
}

fn entries(huge: bool, validate: bool) -> Vec<u64> {
    let (base, step) = if huge { (HUGE_BASE, 2 * MIB) } else { (SMALL_BASE, 4096) };
    (0..ENTRIES).map(|i| PvalidateEntry::new(base + i * step, huge, validate, false).0).collect()
}

fn write_list(w: &mut World, at: u64, list: &[u64]) {
    let mut c = w.client();
    let mut bytes = Vec::with_capacity(8 + 8 * list.len());
    bytes.extend_from_slice(&(list.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&[0; 6]);
    for e in list {
        bytes.extend_from_slice(&e.to_le_bytes());
    }
    c.transport.write(at, &bytes).expect("list page is the guest's");
}

/// One round of each, back to back: validating the full list through the request path
/// (guest client -> request loop -> core protocol -> model RMP), and doing only the RMP
/// updates the same list needs on a second machine's RMP. Each is undone outside the
/// timing. Pairing the two in every round keeps the machine's drift (other load, clock
/// changes) out of their ratio.
struct Round {
    svsm: Duration,
    rmp_only: Duration,
    calls: u64,
}

fn rounds(huge: bool) -> Vec<Round> {
    let (mut svsm_world, mut rmp_world) = (world(), world());
    let size = if huge { Size::Huge } else { Size::Small };
    let list = entries(huge, true);
    let mut rounds = Vec::new();
    let started = Instant::now();
    while started.elapsed() < MEASURE * 2 {
        write_list(&mut svsm_world, LIST, &list);
        let served_before = svsm_world.svsm.stats().per_protocol[0].calls;
        let t = Instant::now();
        svsm_world.client().pvalidate_list(LIST).expect("validation succeeds");
        let svsm = t.elapsed();
        let calls = svsm_world.svsm.stats().per_protocol[0].calls - served_before;
        write_list(&mut svsm_world, LIST, &entries(huge, false));
        svsm_world.client().pvalidate_list(LIST).expect("invalidation succeeds");

        let rmp = &mut rmp_world.machine.rmp;
        let t = Instant::now();
        for e in &list {
            let gpa = PvalidateEntry(*e).gpa();
            rmp.pvalidate(gpa, size, true).expect("valid");
            rmp.rmpadjust(gpa, size, 1, PERM_ALL, false, |_| false).expect("grant");
        }
        let rmp_only = t.elapsed();
        for e in &list {
            let gpa = PvalidateEntry(*e).gpa();
            for vmpl in 1..=3 {
                rmp.rmpadjust(gpa, size, vmpl, PERM_NONE, false, |_| false).expect("revoke");
            }
            rmp.pvalidate(gpa, size, false).expect("invalid");
        }
        rounds.push(Round { svsm, rmp_only, calls });
    }
    rounds
}

/// The `q` quantile of `values` (sorted in place).
fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values[i]
}

fn main() {
    // `cargo bench -- 4k` or `-- 2m` runs one size only (for profiling).
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let mut rows = Vec::new();
    println!("PVALIDATE of a full list ({ENTRIES} entries) on the model, pages per second\n");
    println!(
        "{:<8} {:>16} {:>16} {:>9} {:>17} {:>8} {:>11}",
        "entries", "request path", "RMP only", "ratio", "ratio p10..p90", "rounds", "calls/list"
    );
    for (name, huge) in [("4 KiB", false), ("2 MiB", true)] {
        if only
            .as_deref()
            .is_some_and(|o| !name.to_lowercase().replace(" kib", "k").replace(" mib", "m").starts_with(o))
        {
            continue;
        }
        let rounds = rounds(huge);
        let pages = (ENTRIES * if huge { 512 } else { 1 }) as f64;
        let per_s = |d: Duration| pages / d.as_secs_f64();
        let mut svsm: Vec<f64> = rounds.iter().map(|r| per_s(r.svsm)).collect();
        let mut limit: Vec<f64> = rounds.iter().map(|r| per_s(r.rmp_only)).collect();
        let mut ratios: Vec<f64> = rounds.iter().map(|r| r.rmp_only.as_secs_f64() / r.svsm.as_secs_f64()).collect();
        let calls = rounds.iter().map(|r| r.calls).sum::<u64>() as f64 / rounds.len() as f64;
        let (svsm, limit) = (quantile(&mut svsm, 0.5), quantile(&mut limit, 0.5));
        let (p10, ratio, p90) = (quantile(&mut ratios, 0.1), quantile(&mut ratios, 0.5), quantile(&mut ratios, 0.9));
        println!(
            "{name:<8} {svsm:>16.0} {limit:>16.0} {ratio:>9.2} {:>17} {:>8} {calls:>11.1}",
            format!("{p10:.2}..{p90:.2}"),
            rounds.len()
        );
        rows.push(format!(
            "{{\"entries\":\"{name}\",\"request_path_pages_per_s\":{svsm:.0},\"rmp_only_pages_per_s\":{limit:.0},\"ratio\":{ratio:.3},\"ratio_p10\":{p10:.3},\"ratio_p90\":{p90:.3},\"rounds\":{}}}",
            rounds.len()
        ));
    }
    println!("\ngoal: request path >= 0.5 x RMP-only limit");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"), std::path::PathBuf::from)
        .join("bench");
    let json = format!("{{\"benchmark\":\"pvalidate\",\"list_entries\":{ENTRIES},\"results\":[{}]}}\n", rows.join(","));
    if std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join("pvalidate.json"), json)).is_ok() {
        println!("wrote {}", dir.join("pvalidate.json").display());
    }
}
