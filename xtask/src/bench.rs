//! `cargo xtask bench`: the `pvalidate`, `ocp_log` and `vtpm` benchmarks of the SNP model,
//! the `tpm_bridge` benchmark (tpm2-tools through tpm2-abrmd to the bridge and to swtpm),
//! then the `svm` call round trip (QUERY_PROTOCOL against the bare gate) over several QEMU
//! boots. Results go to `target/bench/*.json`.

use crate::Result;
use crate::cli::BenchParts;
use crate::shell::{exec_cargo, step, target_dir};
use crate::{image, prereqs, qemu};

/// Boots for the `svm` call benchmark.
const SVM_BENCH_BOOTS: usize = 5;
/// Issue 3's goal: a call costs at most this many bare gates.
const SVM_BENCH_GOAL: f64 = 1.3;

/// `cargo xtask bench`, the parts asked for.
pub fn run(parts: BenchParts) -> Result {
    if parts.model {
        model_benches()?;
    }
    if parts.svm {
        svm_call_bench()?;
    }
    Ok(())
}

/// The model's benchmarks and the tpm-bridge one.
fn model_benches() -> Result {
    // swtpm, tpm2-tools, tpm2-abrmd and D-Bus for the vTPM and bridge benchmarks.
    prereqs::ensure_bench()?;
    for bench in ["pvalidate", "ocp_log", "vtpm"] {
        exec_cargo(&["bench", "-p", "bulwark-model", "--bench", bench])?;
    }
    exec_cargo(&["bench", "-p", "bulwark", "--bench", "tpm_bridge"])?;
    let result = target_dir()?.join("bench/pvalidate.json");
    if result.is_file() {
        step(&format!("bench result: {}", result.display()));
    } else {
        step(&format!("no bench result at {} (the bench did not write one)", result.display()));
    }
    Ok(())
}

/// One boot's figures: the guest's QUERY_PROTOCOL and bare-gate cycles, and when the
/// SVSM's first line came.
struct SvmRun {
    query: f64,
    bare: f64,
    first_output_s: f64,
}

impl SvmRun {
    fn ratio(&self) -> f64 {
        self.query / self.bare
    }
}

/// The test guest times QUERY_PROTOCOL and the bare gate in every boot (fastest of
/// interleaved blocks); this boots it a few times and reports the median ratio.
fn svm_call_bench() -> Result {
    let image = image::build_svsm(false)?;
    let guest = image::build_testguest()?;
    let run = qemu::Run {
        svsm: &image,
        guest: Some(&guest),
        append: None,
        smp: 2,
        debug: qemu::Debug::None,
        agent: None,
        fw_cfg: image::issuing_kit()?,
        notify: Vec::new(),
        limit: std::time::Duration::from_secs(120),
    };
    let (mut runs, mut region) = (Vec::new(), None);
    for i in 1..=SVM_BENCH_BOOTS {
        let boot = qemu::boot(&run)?;
        let figures = bench_line(&boot)?;
        step(&format!(
            "svm call bench {i}/{SVM_BENCH_BOOTS}: QUERY_PROTOCOL {:.0} cycles, bare gate {:.0} cycles, ratio {:.2}",
            figures.query,
            figures.bare,
            figures.ratio()
        ));
        runs.push(figures);
        region = region.or_else(|| svsm_region_bytes(&boot.lines));
    }
    let mut ratios: Vec<f64> = runs.iter().map(SvmRun::ratio).collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    let verdict = if median <= SVM_BENCH_GOAL { "goal met" } else { "goal missed" };
    step(&format!(
        "svm call round trip: median ratio {median:.2} over {SVM_BENCH_BOOTS} boots (goal <= {SVM_BENCH_GOAL}: {verdict})"
    ));
    let out = target_dir()?.join("bench/svm_call.json");
    std::fs::create_dir_all(out.parent().ok_or("bench path has no parent")?).map_err(|e| e.to_string())?;
    std::fs::write(&out, svm_json(&runs, median, region)).map_err(|e| format!("{}: {e}", out.display()))?;
    step(&format!("bench result: {}", out.display()));
    Ok(())
}

/// The figures of the guest's `BENCH` line in one boot.
fn bench_line(boot: &qemu::Boot) -> Result<SvmRun> {
    let line = boot.guest_lines.iter().find(|l| l.starts_with("BENCH ")).ok_or("the guest printed no BENCH line")?;
    let field = |name: &str| -> Result<f64> {
        let value = line.split(' ').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
        value.and_then(|v| v.parse().ok()).ok_or_else(|| format!("no {name} in `{line}`"))
    };
    Ok(SvmRun {
        query: field("query_protocol_cycles")?,
        bare: field("bare_vmmcall_cycles")?,
        first_output_s: boot.first_line_after.map_or(0.0, |d| d.as_secs_f64()),
    })
}

/// `target/bench/svm_call.json`.
fn svm_json(runs: &[SvmRun], median: f64, region: Option<u64>) -> String {
    let entries: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{{\"query_protocol_cycles\": {}, \"bare_vmmcall_cycles\": {}, \"ratio\": {:.4}, \"first_output_s\": {:.3}}}",
                r.query,
                r.bare,
                r.ratio(),
                r.first_output_s
            )
        })
        .collect();
    format!(
        "{{\n  \"bench\": \"svm_call_round_trip\",\n  \"goal_ratio\": {SVM_BENCH_GOAL},\n  \"median_ratio\": {median:.4},\n  \"svsm_region_bytes\": {},\n  \"runs\": [\n    {}\n  ]\n}}\n",
        region.map_or("null".to_string(), |r| r.to_string()),
        entries.join(",\n    ")
    )
}

/// The size of the SVSM's region, from the launch line of the SVSM's log
/// (`SVSM region 0x1000000..0x1400000,`).
fn svsm_region_bytes(lines: &[String]) -> Option<u64> {
    let rest = lines.iter().find_map(|l| l.split_once("SVSM region ").map(|(_, r)| r))?;
    let (start, end) = rest.split(',').next()?.split_once("..")?;
    let hex = |v: &str| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok();
    hex(end)?.checked_sub(hex(start)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_size_comes_from_the_launch_line() {
        let lines = ["image: 8 MiB".to_string(), "launch: SVSM region 0x1000000..0x2000000, 2 CPUs".to_string()];
        assert_eq!(svsm_region_bytes(&lines), Some(0x100_0000));
        assert_eq!(svsm_region_bytes(&["SVSM region 0x2000..0x1000,".to_string()]), None, "end before start");
        assert_eq!(svsm_region_bytes(&["no region here".to_string()]), None);
    }

    #[test]
    fn the_json_is_valid_and_holds_every_run() {
        let runs = [
            SvmRun { query: 60.0, bare: 40.0, first_output_s: 0.2 },
            SvmRun { query: 50.0, bare: 40.0, first_output_s: 0.25 },
        ];
        let json: serde_json::Value = serde_json::from_str(&svm_json(&runs, 1.5, Some(0x100_0000))).unwrap();
        assert_eq!(json["median_ratio"], 1.5);
        assert_eq!(json["svsm_region_bytes"], 0x100_0000);
        assert_eq!(json["runs"].as_array().map(Vec::len), Some(2));
        assert_eq!(json["runs"][1]["ratio"], 1.25);
        assert_eq!(json["runs"][1]["first_output_s"], 0.25);
        let unknown: serde_json::Value = serde_json::from_str(&svm_json(&runs, 1.5, None)).unwrap();
        assert!(unknown["svsm_region_bytes"].is_null());
    }
}
