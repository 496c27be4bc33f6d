//! The whole conformance suite on the model: every case must pass.

use bulwark_model::conformance_env::run_case;
use conformance::{CASES, Verdict};

/// SVSM code runs with the bare-metal heap's limit (`bulwark_model::heap`).
#[global_allocator]
static HEAP: bulwark_model::heap::CountingHeap = bulwark_model::heap::CountingHeap;

#[test]
fn every_conformance_case_passes_on_the_model() {
    let mut failures = Vec::new();
    for case in CASES {
        match run_case(case).0 {
            Verdict::Pass => {}
            Verdict::Skip(why) => failures.push(format!("{}: skipped on the model ({why})", case.name)),
            Verdict::Fail(why) => failures.push(format!("{}: {why}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

/// The same suite with the kernel served by the snp platform (`bulwark-snp`) over the
/// model's RMP and its software host: everything above the instructions, on every case.
/// SNP fixes vTOM at launch, so the vTOM cases must skip; the log-overflow case skips
/// because the snp platform's log ring is larger than the case is willing to fill.
#[test]
fn every_conformance_case_passes_on_the_snp_platform() {
    use bulwark_model::conformance_env::run_case_on;
    use bulwark_model::world::PlatformKind;
    const EXPECTED_SKIPS: [&str; 4] = ["6.8/vtom-query", "6.8/vtom-configure", "6.8/vtom-refusals", "ocp/log-overflow"];
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    for case in CASES {
        match run_case_on(case, PlatformKind::Snp).0 {
            Verdict::Pass => {}
            Verdict::Skip(_) if EXPECTED_SKIPS.contains(&case.name) => skipped.push(case.name),
            Verdict::Skip(why) => failures.push(format!("{}: skipped on snp ({why})", case.name)),
            Verdict::Fail(why) => failures.push(format!("{}: {why}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
    assert_eq!(skipped, EXPECTED_SKIPS, "the expected skips, and only those");
}

/// The same suite on the svm platform (`bulwark-svm`'s `SvmPlatform`, the QEMU run's
/// platform) over the model's memory, with a software VMRUN and nested paging recorded
/// page by page: guest accesses go through what the platform mapped and each vCPU's TLB.
/// Expected skips, and why:
/// - vTOM: the svm platform offers none (as on SNP, it is fixed at launch);
/// - calls from VMPL2: no guest code runs below VMPL1 here (one nested page table);
/// - a host that drops a call, reassigns a page, or finds a running vCPU in use: no such
///   host sits under the svm platform (the SVSM is the guest's hypervisor, its RMP its
///   own, and a vCPU running elsewhere is kicked out and stopped).
#[test]
fn every_conformance_case_passes_on_the_svm_platform() {
    use bulwark_model::conformance_env::run_case_on;
    use bulwark_model::world::PlatformKind;
    const EXPECTED_SKIPS: [&str; 9] = [
        "5/host-drops-call",
        "2/vmpl2-memory",
        "2/vmpl2-vcpus",
        "2/vmpl2-services",
        "6.2/pvalidate-host-reassigned",
        "6.4/delete-vcpu-in-use",
        "6.8/vtom-query",
        "6.8/vtom-configure",
        "6.8/vtom-refusals",
    ];
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    for case in CASES {
        match run_case_on(case, PlatformKind::Svm).0 {
            Verdict::Pass => {}
            Verdict::Skip(_) if EXPECTED_SKIPS.contains(&case.name) => skipped.push(case.name),
            Verdict::Skip(why) => failures.push(format!("{}: skipped on svm ({why})", case.name)),
            Verdict::Fail(why) => failures.push(format!("{}: {why}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
    let mut expected = EXPECTED_SKIPS.to_vec();
    expected.sort_unstable();
    skipped.sort_unstable();
    assert_eq!(skipped, expected, "the expected skips, and only those");
}
