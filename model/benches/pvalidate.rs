//! Benchmark: SVSM_CORE_PVALIDATE through the whole request path on the model (guest
//! client -> VMGEXIT -> request loop -> core protocol -> platform), for a full list of
//! 511 entries of 4 KiB and of 2 MiB, in pages per second, beside the limit: a loop that
//! performs only the RMP updates the same list needs (PVALIDATE + RMPADJUST per entry)
//! directly on the model's RMP.
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

/// Pages per second validating the full list through the request path (each round
/// validates, then invalidates outside the timing).
fn through_svsm(huge: bool) -> (f64, f64) {
    let mut w = world();
    let pages_per_round = ENTRIES * if huge { 512 } else { 1 };
    let (mut pages, mut spent, mut calls, mut rounds) = (0u64, Duration::ZERO, 0u64, 0u64);
    while spent < MEASURE {
        write_list(&mut w, LIST, &entries(huge, true));
        let served_before = w.svsm.stats().per_protocol[0].calls;
        let t = Instant::now();
        w.client().pvalidate_list(LIST).expect("validation succeeds");
        spent += t.elapsed();
        calls += w.svsm.stats().per_protocol[0].calls - served_before;
        pages += pages_per_round;
        rounds += 1;
        write_list(&mut w, LIST, &entries(huge, false));
        w.client().pvalidate_list(LIST).expect("invalidation succeeds");
    }
    (pages as f64 / spent.as_secs_f64(), calls as f64 / rounds as f64)
}

/// Pages per second doing only the RMP updates a validation needs.
fn rmp_only(huge: bool) -> f64 {
    let mut w = world();
    let rmp = &mut w.machine.rmp;
    let size = if huge { Size::Huge } else { Size::Small };
    let list = entries(huge, true);
    let pages_per_round = ENTRIES * if huge { 512 } else { 1 };
    let (mut pages, mut spent) = (0u64, Duration::ZERO);
    while spent < MEASURE {
        let t = Instant::now();
        for e in &list {
            let gpa = PvalidateEntry(*e).gpa();
            rmp.pvalidate(gpa, size, true).expect("valid");
            rmp.rmpadjust(gpa, size, 1, PERM_ALL, false, |_| false).expect("grant");
        }
        spent += t.elapsed();
        pages += pages_per_round;
        for e in &list {
            let gpa = PvalidateEntry(*e).gpa();
            for vmpl in 1..=3 {
                rmp.rmpadjust(gpa, size, vmpl, PERM_NONE, false, |_| false).expect("revoke");
            }
            rmp.pvalidate(gpa, size, false).expect("invalid");
        }
    }
    pages as f64 / spent.as_secs_f64()
}

fn main() {
    // `cargo bench -- 4k` or `-- 2m` runs one size only (for profiling).
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let mut rows = Vec::new();
    println!("PVALIDATE of a full list ({ENTRIES} entries) on the model, pages per second\n");
    println!("{:<8} {:>16} {:>16} {:>9} {:>14}", "entries", "request path", "RMP only", "ratio", "calls/list");
    for (name, huge) in [("4 KiB", false), ("2 MiB", true)] {
        if only
            .as_deref()
            .is_some_and(|o| !name.to_lowercase().replace(" kib", "k").replace(" mib", "m").starts_with(o))
        {
            continue;
        }
        let (svsm, calls) = through_svsm(huge);
        let limit = rmp_only(huge);
        let ratio = svsm / limit;
        println!("{name:<8} {svsm:>16.0} {limit:>16.0} {ratio:>9.2} {calls:>14.1}");
        rows.push(format!(
            "{{\"entries\":\"{name}\",\"request_path_pages_per_s\":{svsm:.0},\"rmp_only_pages_per_s\":{limit:.0},\"ratio\":{ratio:.3}}}"
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
