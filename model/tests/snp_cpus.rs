//! Issue 13 on the snp platform: each CPU serves with its own platform handle and no lock
//! is held across a host exit, so while the host handles one CPU's exit (a guest request
//! for attestation, AP creation, a console line) another CPU's core call runs to
//! completion.
//!
//! On a real host the second CPU runs on another thread at the same time. In the model it
//! runs inside the first CPU's exit (`SnpHost::meanwhile`), on the same thread: a lock the
//! first CPU held across its exit (the platform's or the kernel's) would stop the second
//! for good, since spin locks wait forever. Each scenario therefore runs under a watchdog
//! that fails the test instead of hanging. Besides, the model's host records a violation
//! whenever a CPU exits holding one of the platform's locks (`SnpHost::watch`).

use abi::core_protocol::PvalidateEntry;
use abi::ghcb::exit;
use abi::protocol::{CallId, ProtocolId, attest_call};
use abi::result::ResultCode;
use bulwark_model::Machine;
use bulwark_model::snp_cpus::SnpGuest;
use bulwark_model::snp_host::{Meanwhile, ModelSnpHw, SnpHost};
use bulwark_model::world::{MIB, PlatformKind, STARTUP_CA_GPA, World, WorldConfig};
use guest::{Client, Regs, Transport};
use kernel::Svsm;
use kernel::platform::GuestRequestError;
use kernel::vcpu::VcpuIndex;
use snp::{SnpPlatform, SnpShared};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// SVSM code runs with the bare-metal heap's limit (`bulwark_model::heap`).
#[global_allocator]
static HEAP: bulwark_model::heap::CountingHeap = bulwark_model::heap::CountingHeap;

/// Guest scratch memory (validated at launch, the guest's).
const SCRATCH: u64 = 2 * MIB;
const VCPU1_VMSA: u64 = SCRATCH + 0x10_000;
const VCPU1_CA: u64 = SCRATCH + 0x11_000;
const VCPU2_VMSA: u64 = SCRATCH + 0x12_000;
const VCPU2_CA: u64 = SCRATCH + 0x13_000;
/// CPU 1's PVALIDATE list.
const LIST: u64 = SCRATCH + 0x20_000;
/// Guest RAM the launch did not validate: CPU 1 validates pages of it.
const RAM: u64 = 4 * MIB;
const VCPU1: VcpuIndex = VcpuIndex(1);

/// Run `scenario` on a thread of its own; fail if it makes no progress for 20 s.
fn within_20_seconds<T: Send + 'static>(scenario: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(scenario());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(out) => out,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
            "no progress in 20 s: a CPU waits on a lock another CPU holds across its host exit (the \
             spinning thread is left behind)"
        ),
        Err(_) => panic!("the scenario panicked (its message is above)"),
    }
}

/// A guest VMSA the model accepts, at `gpa`, written by the startup vCPU.
fn write_vmsa(w: &mut World, gpa: u64) {
    let mut v = abi::vmsa::Vmsa::zeroed();
    v.vmpl = 1;
    v.efer = 0x500;
    v.sev_features = abi::hw::sev_features::SNP_ACTIVE;
    w.vcpu(VcpuIndex::STARTUP).write(gpa, zerocopy::IntoBytes::as_bytes(&v)).expect("guest page");
}

/// The SVSM on two CPUs, each serving its vCPU, taken apart so a test can drive each CPU
/// itself.
struct TwoCpus {
    machine: Machine,
    host: SnpHost,
    shared: Arc<SnpShared>,
    svsm: &'static Svsm,
}

impl TwoCpus {
    /// A launch on the snp platform whose guest created vCPU 1 and called the SVSM once
    /// from it (so CPU 1 has joined: its GHCB is shared and registered).
    fn new() -> Self {
        let mut w = World::new(WorldConfig { platform: PlatformKind::Snp, vtpm: false, ..WorldConfig::default() });
        write_vmsa(&mut w, VCPU1_VMSA);
        w.client().create_vcpu(VCPU1_VMSA, VCPU1_CA, 1).expect("vCPU 1 is created");
        assert_eq!(w.vcpu_by_apic_id(1), Some(VCPU1));
        assert_eq!(w.client_at(VCPU1, VCPU1_CA).query_protocol(ProtocolId::CORE, 1).unwrap(), Some((1, 1)));
        // The VMSA of the vCPU that CPU 0 will create.
        write_vmsa(&mut w, VCPU2_VMSA);
        let World { machine, svsm, snp, .. } = w;
        let snp = snp.expect("the snp platform");
        // Shared by the two CPUs for the rest of the test (a test may leak it).
        let svsm: &'static Svsm = Box::leak(Box::new(svsm));
        Self { machine, host: snp.host, shared: snp.cpus.shared, svsm }
    }

    /// The guest of `vcpu`, calling the SVSM on its own CPU, through calling area `ca`.
    fn client(&mut self, vcpu: VcpuIndex, ca: u64) -> Client<SnpGuest<'_>> {
        let guest = SnpGuest {
            machine: &mut self.machine,
            host: &mut self.host,
            shared: self.shared.clone(),
            svsm: self.svsm,
            vcpu,
        };
        Client::new(guest, ca)
    }
}

/// What CPU 1 managed while CPU 0 was in its host exit.
#[derive(Debug, Default)]
struct Cpu1Log {
    runs: u32,
    /// Results of its calls, in order.
    results: Vec<Result<(), String>>,
}

/// CPU 1's work while the host handles CPU 0's event `exit_code`: QUERY_PROTOCOL, a
/// PVALIDATE of a fresh page (region locks, the RMP), and a log line of its own (the log
/// ring, a console exit).
fn cpu1_meanwhile(parts: &TwoCpus, exit_code: u64, log: Arc<Mutex<Cpu1Log>>) -> Meanwhile {
    let (shared, svsm) = (parts.shared.clone(), parts.svsm);
    let run = move |m: &mut Machine, h: &mut SnpHost| {
        let mut out = log.lock().unwrap();
        out.runs += 1;
        let page = RAM + u64::from(out.runs) * 0x1000;
        let guest = SnpGuest { machine: &mut *m, host: &mut *h, shared: shared.clone(), svsm, vcpu: VCPU1 };
        let mut c = Client::new(guest, VCPU1_CA);
        let query = match c.query_protocol(ProtocolId::CORE, 1) {
            Ok(Some((1, 1))) => Ok(()),
            other => Err(format!("QUERY_PROTOCOL: {other:?}")),
        };
        let validate = c.pvalidate(&[PvalidateEntry(page | PvalidateEntry::VALIDATE)], LIST);
        out.results.push(query);
        out.results.push(validate.map_err(|e| format!("PVALIDATE: {e:?}")));
        let mut p = SnpPlatform::handle(ModelSnpHw::on_cpu(m, h, 1), shared.clone());
        kernel::log!(&mut p, Info, "CPU 1 logs while CPU 0 is with the host");
    };
    Meanwhile { exit_code, run: Box::new(run) }
}

/// CPU 1's calls all succeeded, `runs` times, and nothing was amiss.
fn check_cpu1(parts: &TwoCpus, log: &Mutex<Cpu1Log>, runs: u32) {
    let log = log.lock().unwrap();
    assert_eq!(log.runs, runs, "CPU 1 ran while CPU 0 was with the host");
    assert!(log.results.iter().all(Result::is_ok), "CPU 1's calls: {:?}", log.results);
    assert_eq!(log.results.len(), 2 * runs as usize);
    for run in 1..=u64::from(runs) {
        assert!(parts.machine.rmp.entry((RAM >> 12) + run).unwrap().validated, "CPU 1's PVALIDATE took effect");
    }
    let console = String::from_utf8_lossy(&parts.host.console);
    assert!(console.contains("[Info] CPU 1 logs while CPU 0 is with the host\n"), "console: {console}");
    assert!(parts.machine.violations().is_empty(), "{:?}", parts.machine.violations());
}

/// Linux's SVSM attestation call (arch/x86/coco/sev/core.c `snp_issue_svsm_attest_req`)
/// from vCPU 0: the kernel's PSP channel and the platform's guest request, through the
/// host's EXT_GUEST_REQUEST exit.
#[test]
fn a_core_call_on_another_cpu_completes_while_one_waits_for_the_psp() {
    within_20_seconds(|| {
        let mut parts = TwoCpus::new();
        let log = Arc::new(Mutex::new(Cpu1Log::default()));
        parts.host.meanwhile = Some(cpu1_meanwhile(&parts, exit::EXT_GUEST_REQUEST, log.clone()));
        let out = attest_from(&mut parts, VcpuIndex::STARTUP, STARTUP_CA_GPA);
        assert_eq!(ResultCode::from_rax(out.rax), ResultCode::SUCCESS, "vCPU 0 got its report");
        assert!(out.rdx > 0, "with the host's certificates");
        check_cpu1(&parts, &log, 1);
    });
}

/// CREATE_VCPU from vCPU 0 (Linux: `snp_set_vmsa` through the SVSM, arch/x86/coco/sev/
/// core.c): the platform's AP_CREATION exit, made while the kernel changes its vCPU set.
#[test]
fn a_core_call_on_another_cpu_completes_while_one_creates_a_vcpu() {
    within_20_seconds(|| {
        let mut parts = TwoCpus::new();
        let log = Arc::new(Mutex::new(Cpu1Log::default()));
        parts.host.meanwhile = Some(cpu1_meanwhile(&parts, exit::AP_CREATION, log.clone()));
        parts.client(VcpuIndex::STARTUP, STARTUP_CA_GPA).create_vcpu(VCPU2_VMSA, VCPU2_CA, 2).expect("created");
        assert_eq!(parts.host.ap_events.last().map(|e| (e.0, e.1, e.2)), Some((exit::AP_CREATE, 2, VCPU2_VMSA)));
        check_cpu1(&parts, &log, 1);
    });
}

/// CPU 1 invalidates a page in the 2 MiB region of the VMSA that CPU 0 is making a vCPU
/// of, while the host handles CPU 0's AP_CREATION: the kernel lets go of the pages' locks
/// before the host hears of the vCPU.
#[test]
fn a_pvalidate_beside_a_new_vmsa_completes_while_the_host_creates_the_vcpu() {
    within_20_seconds(|| {
        let mut parts = TwoCpus::new();
        let (shared, svsm) = (parts.shared.clone(), parts.svsm);
        let result = Arc::new(Mutex::new(None));
        let out = result.clone();
        // In the new VMSA's 2 MiB region (so under the same lock), validated at launch.
        let beside = VCPU2_VMSA + 0x30_000;
        let run = move |m: &mut Machine, h: &mut SnpHost| {
            let guest = SnpGuest { machine: m, host: h, shared: shared.clone(), svsm, vcpu: VCPU1 };
            let invalidated = Client::new(guest, VCPU1_CA).pvalidate(&[PvalidateEntry(beside)], LIST);
            *out.lock().unwrap() = Some(invalidated.map_err(|e| format!("{e:?}")));
        };
        parts.host.meanwhile = Some(Meanwhile { exit_code: exit::AP_CREATION, run: Box::new(run) });
        parts.client(VcpuIndex::STARTUP, STARTUP_CA_GPA).create_vcpu(VCPU2_VMSA, VCPU2_CA, 2).expect("created");
        assert_eq!(*result.lock().unwrap(), Some(Ok(())), "CPU 1's PVALIDATE ran during the exit");
        assert!(!parts.machine.rmp.entry(beside >> 12).unwrap().validated);
    });
}

/// The kernel's "vCPU created" log line goes to the serial port in a host exit of its own;
/// CPU 1 serves a call (and logs) meanwhile, and both lines come out whole.
#[test]
fn a_core_call_on_another_cpu_completes_while_one_writes_a_console_line() {
    within_20_seconds(|| {
        let mut parts = TwoCpus::new();
        let log = Arc::new(Mutex::new(Cpu1Log::default()));
        parts.host.console.clear();
        parts.host.meanwhile = Some(cpu1_meanwhile(&parts, exit::IOIO, log.clone()));
        parts.client(VcpuIndex::STARTUP, STARTUP_CA_GPA).create_vcpu(VCPU2_VMSA, VCPU2_CA, 2).expect("created");
        check_cpu1(&parts, &log, 1);
        let console = String::from_utf8_lossy(&parts.host.console).into_owned();
        let lines: Vec<&str> = console.lines().collect();
        assert!(lines.contains(&"[Info] CPU 1 logs while CPU 0 is with the host"), "{console}");
        assert!(
            lines.iter().any(|l| l.starts_with("[Info] vCPU 2 created: APIC ID 2")),
            "CPU 0's line is whole, not cut by CPU 1's: {console}"
        );
    });
}

/// The failure this design avoids, shown on the console: a host without string I/O gets
/// one exit per byte, and a line another CPU writes meanwhile lands inside the first
/// CPU's line. (Bulwark falls back to this only for such a host, and says so in
/// docs/platforms/snp.md.)
#[test]
fn byte_by_byte_console_exits_let_another_cpus_line_cut_in() {
    within_20_seconds(|| {
        let mut parts = TwoCpus::new();
        parts.host.refuse_string_io = true;
        // The platform learns the host refuses string I/O.
        let mut p = SnpPlatform::handle(ModelSnpHw::new(&mut parts.machine, &mut parts.host), parts.shared.clone());
        kernel::log!(&mut p, Info, "learning");
        let log = Arc::new(Mutex::new(Cpu1Log::default()));
        parts.host.console.clear();
        parts.host.meanwhile = Some(cpu1_meanwhile(&parts, exit::IOIO, log.clone()));
        parts.client(VcpuIndex::STARTUP, STARTUP_CA_GPA).create_vcpu(VCPU2_VMSA, VCPU2_CA, 2).expect("created");
        check_cpu1(&parts, &log, 1);
        let console = String::from_utf8_lossy(&parts.host.console).into_owned();
        assert!(console.starts_with("[[Info] CPU 1 logs"), "CPU 1's line cut in after CPU 0's first byte: {console}");
        assert!(console.contains("Info] vCPU 2 created"), "the rest of CPU 0's line still arrives: {console}");
    });
}

/// Each line is one exit while the host takes string I/O; after a refusal the platform
/// writes bytes and does not ask again.
#[test]
fn a_log_line_is_one_exit_and_a_refusal_is_remembered() {
    let mut parts = TwoCpus::new();
    let exits = |h: &SnpHost| h.console_exits;
    let before = exits(&parts.host);
    let mut p = SnpPlatform::handle(ModelSnpHw::on_cpu(&mut parts.machine, &mut parts.host, 1), parts.shared.clone());
    kernel::log!(&mut p, Warn, "one line");
    assert_eq!(exits(&parts.host) - before, 1);
    parts.host.refuse_string_io = true;
    let ioio = |h: &SnpHost| h.events.iter().filter(|e| **e == exit::IOIO).count();
    let (events, bytes) = (ioio(&parts.host), parts.host.console.len());
    let mut p = SnpPlatform::handle(ModelSnpHw::on_cpu(&mut parts.machine, &mut parts.host, 1), parts.shared.clone());
    kernel::log!(&mut p, Warn, "two");
    let line = b"[Warn] two\n".len();
    assert_eq!(parts.host.console.len() - bytes, line, "the line arrives, byte by byte");
    assert_eq!(ioio(&parts.host) - events, 1 + line, "one refused string event, then one per byte");
    let events = ioio(&parts.host);
    let mut p = SnpPlatform::handle(ModelSnpHw::on_cpu(&mut parts.machine, &mut parts.host, 0), parts.shared.clone());
    kernel::log!(&mut p, Warn, "two");
    assert_eq!(ioio(&parts.host) - events, line, "no second string event on any CPU");
    assert!(parts.machine.violations().is_empty(), "{:?}", parts.machine.violations());
}

/// Each CPU has its own GHCB page and MSR: CPU 1's events never go through CPU 0's page.
#[test]
fn each_cpu_exits_through_its_own_ghcb() {
    let parts = TwoCpus::new();
    let (g0, g1) = (parts.host.registered_ghcb(0), parts.host.registered_ghcb(1));
    assert!(g0.is_some() && g1.is_some() && g0 != g1, "two registered GHCBs: {g0:?} {g1:?}");
    assert_eq!(parts.host.msr(1), g1.unwrap(), "CPU 1's MSR names its own GHCB");
    let e = parts.machine.rmp.entry(g1.unwrap() >> 12).unwrap();
    assert!(!e.assigned && !e.validated, "CPU 1's GHCB was made shared before it was used");
}

/// The guest-request pages are one set: a second CPU that asks for a guest request while
/// one is under way is refused at once (`Unavailable`: nothing left, so the kernel's
/// channel stays in step) instead of waiting for the first CPU's host exit. The kernel's
/// PSP channel never lets this happen; this is the platform's own guard.
#[test]
fn a_second_guest_request_meanwhile_is_refused_without_waiting() {
    within_20_seconds(|| {
        let mut parts = TwoCpus::new();
        let out = Arc::new(Mutex::new(None));
        let (o, shared) = (out.clone(), parts.shared.clone());
        parts.host.meanwhile = Some(Meanwhile {
            exit_code: exit::EXT_GUEST_REQUEST,
            run: Box::new(move |m, h| {
                let mut p = SnpPlatform::handle(ModelSnpHw::on_cpu(m, h, 1), shared.clone());
                let events = p.hw.host.events.len();
                let mut response = [0u8; 4096];
                let r = kernel::platform::Platform::guest_request(&mut p, &[0; 4096], &mut response);
                *o.lock().unwrap() = Some((r, p.hw.host.events.len() - events));
            }),
        });
        let mut p = SnpPlatform::handle(ModelSnpHw::new(&mut parts.machine, &mut parts.host), parts.shared.clone());
        assert!(parts.svsm.check_psp_channel(&mut p), "CPU 0's report arrives");
        let second = out.lock().unwrap().take();
        assert_eq!(second, Some((Err(GuestRequestError::Unavailable), 0)), "refused, no exit made");
        // Once the first is done, the pages are free again.
        let mut p = SnpPlatform::handle(ModelSnpHw::new(&mut parts.machine, &mut parts.host), parts.shared.clone());
        assert!(parts.svsm.check_psp_channel(&mut p), "the next report arrives");
    });
}

/// vCPU 1 asks for an attestation report; while its call waits for the PSP (the host's
/// EXT_GUEST_REQUEST exit), vCPU 0 makes its own call (`meanwhile`). vCPU 1's call must be
/// answered; returns what vCPU 0's call got.
fn while_vcpu1_waits_for_the_psp(
    parts: &mut TwoCpus,
    meanwhile: impl Fn(&mut Client<SnpGuest<'_>>) -> Result<(), guest::CallError> + Send + 'static,
) -> Vec<Result<(), guest::CallError>> {
    let got: Arc<Mutex<Vec<Result<(), guest::CallError>>>> = Arc::default();
    let (shared, svsm, seen) = (parts.shared.clone(), parts.svsm, got.clone());
    let run = move |m: &mut Machine, h: &mut SnpHost| {
        let guest =
            SnpGuest { machine: &mut *m, host: &mut *h, shared: shared.clone(), svsm, vcpu: VcpuIndex::STARTUP };
        seen.lock().unwrap().push(meanwhile(&mut Client::new(guest, STARTUP_CA_GPA)));
    };
    parts.host.meanwhile = Some(Meanwhile { exit_code: exit::EXT_GUEST_REQUEST, run: Box::new(run) });
    let out = attest_from(parts, VCPU1, VCPU1_CA);
    assert_eq!(ResultCode::from_rax(out.rax), ResultCode::SUCCESS, "vCPU 1's call was answered");
    got.lock().unwrap().clone()
}

/// DELETE_VCPU of a vCPU whose call is in service (here vCPU 1's attestation, waiting for
/// the PSP) is refused with CORE_VCPU_IN_USE: the SVSM still has to write the answer into
/// that vCPU's VMSA and calling area, which a deletion would have handed back to the guest
/// (with the answer then written into guest memory the guest may have reused). The call is
/// answered, and the deletion goes through once it is.
#[test]
fn a_vcpu_whose_call_is_in_service_is_not_deleted_under_it() {
    within_20_seconds(|| {
        let mut parts = TwoCpus::new();
        let deleted = while_vcpu1_waits_for_the_psp(&mut parts, |c| c.delete_vcpu(VCPU1_VMSA));
        let in_use = Err(guest::CallError::Failed(ResultCode::CORE_VCPU_IN_USE));
        assert_eq!(deleted, [in_use], "the deletion meanwhile was refused");
        assert_eq!(parts.svsm.vcpus().get(VCPU1).map(|v| v.vmsa.raw()), Some(VCPU1_VMSA), "vCPU 1 is still there");
        parts.client(VcpuIndex::STARTUP, STARTUP_CA_GPA).delete_vcpu(VCPU1_VMSA).expect("deleted once answered");
        assert!(parts.svsm.vcpus().get(VCPU1).is_none());
    });
}

/// A replacement (CREATE_VCPU of vCPU 1's APIC ID, as Linux brings a CPU back online)
/// while vCPU 1's call waits for the PSP is refused with CORE_VCPU_IN_USE: it would retire
/// the VMSA the answer is due in, and on SNP stopping vCPU 1 destroys the SVSM context that
/// serves the call, which would then never be answered, leaving the vCPU pinned for good.
/// Once the call is answered the replacement goes through.
#[test]
fn a_vcpu_whose_call_is_in_service_is_not_replaced_under_it() {
    within_20_seconds(|| {
        let mut parts = TwoCpus::new();
        let replaced = while_vcpu1_waits_for_the_psp(&mut parts, |c| c.create_vcpu(VCPU2_VMSA, VCPU2_CA, 1));
        let in_use = Err(guest::CallError::Failed(ResultCode::CORE_VCPU_IN_USE));
        assert_eq!(replaced, [in_use], "the replacement meanwhile was refused");
        assert_eq!(parts.svsm.vcpus().get(VCPU1).map(|v| v.vmsa.raw()), Some(VCPU1_VMSA), "still on its VMSA");
        parts.client(VcpuIndex::STARTUP, STARTUP_CA_GPA).create_vcpu(VCPU2_VMSA, VCPU2_CA, 1).expect("replaced");
        assert_eq!(parts.svsm.vcpus().get(VCPU1).map(|v| v.vmsa.raw()), Some(VCPU2_VMSA));
        let served = parts.client(VCPU1, VCPU2_CA).query_protocol(ProtocolId::CORE, 1);
        assert_eq!(served.unwrap(), Some((1, 1)), "the vCPU serves on its new VMSA");
    });
}

/// SVSM_ATTEST_SERVICES from `vcpu` through calling area `ca` (its guest request reaches
/// the host's EXT_GUEST_REQUEST exit, where a test's `Meanwhile` runs).
fn attest_from(parts: &mut TwoCpus, vcpu: VcpuIndex, ca: u64) -> Regs {
    let (op, report, nonce, manifest, certs) =
        (SCRATCH + 0x30_000, SCRATCH + 0x31_000, SCRATCH + 0x32_000, SCRATCH + 0x33_000, SCRATCH + 0x34_000);
    let record = |gpa, len| abi::attest::BufferRecord { gpa, len, reserved: 0 };
    let request = abi::attest::AttestServicesOp {
        report: record(report, 0x1000),
        nonce: record(nonce, 64),
        manifest: record(manifest, 0x1000),
        certificates: record(certs, 0x4000),
    };
    let mut c = parts.client(vcpu, ca);
    c.transport.write(nonce, &[0x5A; 64]).unwrap();
    c.transport.write(op, zerocopy::IntoBytes::as_bytes(&request)).unwrap();
    let rax = CallId::new(ProtocolId::ATTEST, attest_call::ATTEST_SERVICES).to_rax();
    c.issue(Regs { rax, rcx: op, rdx: u64::MAX, r8: u64::MAX, r9: 0 }).expect("the call completes")
}
