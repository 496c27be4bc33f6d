//! The snp platform (`bulwark-snp`) on the model's RMP and software host: start-up and
//! its refusals, the VMSAs it makes, the host events it issues, #VC handling, and
//! termination. The conformance suite over the same platform is in conformance.rs.

use abi::ghcb::{exit, msr, term};
use abi::hw::EFER_SVME;
use abi::protocol::ProtocolId;
use abi::result::ResultCode;
use abi::vmsa::VmsaField;
use bulwark_model::Machine;
use bulwark_model::snp_host::{ModelSnpHw, SHARED_BASE, SnpHost};
use bulwark_model::world::{self, MIB, PlatformKind, World, WorldConfig};
use guest::{CallError, Transport};
use snp::cpuid::CpuidTable;
use snp::ghcb::GhcbError;
use snp::hw::SHARED_PAGES;
use snp::vc::{VcError, VcRegs, handle};
use snp::{SnpConfig, SnpPlatform, StartError};

/// SVSM code runs with the bare-metal heap's limit (`bulwark_model::heap`).
#[global_allocator]
static HEAP: bulwark_model::heap::CountingHeap = bulwark_model::heap::CountingHeap;

fn machine() -> Machine {
    let mut m = Machine::new(64 * MIB, 32 * MIB);
    // The launch validated the SVSM region, where the shared pages are.
    for pfn in world::SVSM_BASE >> 12..(world::SVSM_BASE + 4 * MIB) >> 12 {
        m.rmp.entry_mut(pfn).expect("RAM").validated = true;
    }
    m
}

fn start(m: &mut Machine, host: &mut SnpHost) -> Result<(), StartError> {
    SnpPlatform::start(ModelSnpHw::new(m, host), SnpConfig::new(1, 1)).map(|_| ())
}

#[test]
fn start_shares_its_pages_and_registers_the_ghcb() {
    let (mut m, mut host) = (machine(), SnpHost::default());
    start(&mut m, &mut host).expect("the default host offers what SNP needs");
    assert_eq!(host.registered_ghcb(0), Some(SHARED_BASE));
    assert_eq!(host.msr(0), SHARED_BASE, "the MSR holds the GHCB gpa after start");
    for (i, _) in SHARED_PAGES.iter().enumerate() {
        let e = m.rmp.entry((SHARED_BASE >> 12) + i as u64).expect("RAM");
        assert!(!e.assigned && !e.validated, "shared page {i} is the host's, not validated");
    }
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}

#[test]
fn start_refuses_a_host_without_protocol_2_or_snp() {
    let (mut m, mut host) = (machine(), SnpHost { protocol: (3, 4), ..SnpHost::default() });
    let e = start(&mut m, &mut host).expect_err("protocol 3..4 only");
    assert_eq!(e, StartError::Protocol(GhcbError::Version(3, 4)));
    assert_eq!(e.reason(), (term::SET_GHCB, term::PROTOCOL_UNSUPPORTED));

    let (mut m, mut host) = (machine(), SnpHost { features: msr::HV_FEATURE_SNP, ..SnpHost::default() });
    let e = start(&mut m, &mut host).expect_err("no AP creation");
    assert_eq!(e.reason(), (term::SET_GHCB, term::SNP_UNSUPPORTED));

    let (mut m, mut host) = (machine(), SnpHost { psc_error: Some(7), ..SnpHost::default() });
    let e = start(&mut m, &mut host).expect_err("page-state change fails");
    assert_eq!(e, StartError::PageState(SHARED_BASE, GhcbError::Host(7)));
    assert_eq!(e.reason(), (term::SET_BULWARK, term::PAGE_STATE));
}

#[test]
fn termination_reaches_the_host_with_its_reason() {
    let (mut m, mut host) = (machine(), SnpHost::default());
    let mut p = SnpPlatform::start(ModelSnpHw::new(&mut m, &mut host), SnpConfig::new(1, 1)).expect("starts");
    p.terminate(term::SET_BULWARK, term::BOOT_INFO);
    assert_eq!(host.terminated, Some((term::SET_BULWARK, term::BOOT_INFO)));
}

/// Where new CPUs would enter the SVSM, with `stacks` entry stacks of 16 KiB.
fn svsm_entry(stacks: u32) -> snp::vmsa::SvsmEntry {
    snp::vmsa::SvsmEntry {
        cpu: snp::vmsa::SvsmCpuState {
            rip: world::SVSM_BASE + 0x2000,
            rsp: 0,
            cr3: world::SVSM_BASE + 0x3000,
            gdtr_base: world::SVSM_BASE + 0x4000,
            gdtr_limit: 23,
            code_selector: 8,
            data_selector: 16,
            argument: 0,
        },
        stack_base: STACK_BASE,
        stack_size: 0x4000,
        stack_count: stacks,
    }
}
const STACK_BASE: u64 = world::SVSM_BASE + 0x10_0000;

/// A guest VMSA at `gpa` the way the guest hands one to CREATE_VCPU.
fn write_guest_vmsa(w: &mut World, gpa: u64) {
    let mut v = abi::vmsa::Vmsa::zeroed();
    v.vmpl = 1;
    v.efer = 0x500;
    v.sev_features = abi::hw::sev_features::SNP_ACTIVE;
    w.machine.raw_write(gpa, zerocopy::IntoBytes::as_bytes(&v));
}

fn snp_world() -> World {
    World::new(WorldConfig { platform: PlatformKind::Snp, ..WorldConfig::default() })
}

#[test]
fn the_svsm_builds_the_guests_first_vcpu_and_keeps_vmpck0() {
    let w = snp_world();
    let vmsa = world::STARTUP_VMSA_GPA;
    let e = w.machine.rmp.entry(vmsa >> 12).expect("RAM");
    assert!(e.vmsa, "the page is a VMSA");
    assert_eq!(e.perms[1], 0, "the guest cannot touch its own VMSA");
    assert_eq!(w.machine.vmsa_field(vmsa, VmsaField::Vmpl), 1);
    assert_eq!(w.machine.vmsa_field(vmsa, VmsaField::Rip), 0xFFF0, "reset state");
    assert_ne!(w.machine.vmsa_field(vmsa, VmsaField::Efer) & EFER_SVME, 0);
    let host = &w.snp.as_ref().expect("snp world").host;
    assert_eq!(host.ap_events, vec![(exit::AP_CREATE, 0, vmsa, 1)]);
    assert_eq!(w.svsm.vmpck0(), [0xA0; 32]);
    let mut key = [0u8; 32];
    w.machine.raw_read(world::SECRETS_GPA + 0x20, &mut key);
    assert_eq!(key, [0; 32], "VMPCK0 is gone from the secrets page");
    let console = String::from_utf8_lossy(&host.console);
    assert!(console.contains("PSP channel: a report arrived"), "console: {console}");
}

#[test]
fn every_call_returns_to_the_guest_through_run_vmpl() {
    let mut w = snp_world();
    let before = w.snp.as_ref().expect("snp").host.resumes;
    for _ in 0..3 {
        w.client().query_protocol(ProtocolId::CORE, 1).expect("core protocol");
    }
    let host = &w.snp.as_ref().expect("snp").host;
    assert_eq!(host.resumes - before, 3);
    assert!(w.machine.violations().is_empty(), "{:?}", w.machine.violations());
}

#[test]
fn vcpu_creation_and_deletion_are_announced_to_the_host() {
    let mut w = snp_world();
    // A second vCPU, as the conformance environment writes one.
    let (vmsa, ca) = (3 * MIB, 3 * MIB + 0x1000);
    write_guest_vmsa(&mut w, vmsa);
    w.client().create_vcpu(vmsa, ca, 7).expect("created");
    let events = w.snp.as_ref().expect("snp").host.ap_events.clone();
    assert_eq!(events.last(), Some(&(exit::AP_CREATE, 7, vmsa, 1)));
    assert!(w.vcpu_by_apic_id(7).is_some(), "the host runs it");

    w.client().delete_vcpu(vmsa).expect("deleted");
    let events = &w.snp.as_ref().expect("snp").host.ap_events;
    assert_eq!(events.last(), Some(&(exit::AP_DESTROY, 7, vmsa, 1)));
    assert!(w.vcpu_by_apic_id(7).is_none());
    assert!(!w.machine.rmp.entry(vmsa >> 12).expect("RAM").vmsa, "no longer a VMSA");
    assert!(w.machine.violations().is_empty(), "{:?}", w.machine.violations());
}

#[test]
fn with_an_svsm_entry_each_vcpu_gets_its_own_vmpl0_vmsa() {
    let mut w = snp_world();
    w.set_snp_entry(svsm_entry(8));
    let (vmsa, ca) = (3 * MIB, 3 * MIB + 0x1000);
    write_guest_vmsa(&mut w, vmsa);
    w.client().create_vcpu(vmsa, ca, 9).expect("created");
    let events = w.snp.as_ref().expect("snp").host.ap_events.clone();
    let n = events.len();
    let (req, apic, svsm_vmsa, vmpl) = events[n - 2];
    assert_eq!((req, apic, vmpl), (exit::AP_CREATE, 9, 0), "the SVSM's VMSA first, at VMPL0");
    assert_eq!(events[n - 1], (exit::AP_CREATE, 9, vmsa, 1));
    assert!(w.machine.rmp.entry(svsm_vmsa >> 12).expect("RAM").vmsa);
    assert!(
        (world::SVSM_BASE..world::SVSM_BASE + 4 * MIB).contains(&svsm_vmsa),
        "the SVSM's VMSA lives in SVSM memory"
    );
    assert_eq!(w.machine.vmsa_field(svsm_vmsa, VmsaField::Rip), world::SVSM_BASE + 0x2000);
    let index = w.vcpu_by_apic_id(9).expect("created").0;
    assert_eq!(
        w.machine.vmsa_field(svsm_vmsa, VmsaField::Rsp),
        STACK_BASE + 0x4000 * (u64::from(index) + 1),
        "its own stack"
    );

    w.client().delete_vcpu(vmsa).expect("deleted");
    assert!(!w.machine.rmp.entry(svsm_vmsa >> 12).expect("RAM").vmsa, "unflagged before the pool reuses it");
    assert!(w.machine.violations().is_empty(), "{:?}", w.machine.violations());
}

#[test]
fn vc_port_io_msr_rdtsc_and_cpuid() {
    let (mut m, mut host) = (machine(), SnpHost::default());
    let mut p = SnpPlatform::start(ModelSnpHw::new(&mut m, &mut host), SnpConfig::new(1, 1)).expect("starts");
    let mut page = [0u8; 4096];
    page[0] = 1; // one entry: leaf 0
    page[16..20].copy_from_slice(&0u32.to_le_bytes());
    page[16 + 24..16 + 28].copy_from_slice(&0x16u32.to_le_bytes()); // EAX = 0x16
    let table = CpuidTable::parse(&page).expect("valid");
    let hw = &mut p.hw;

    // out dx, al to COM1.
    let mut r = VcRegs { rax: 0xFFFF_FF41, rdx: 0x3F8, ..VcRegs::default() };
    assert_eq!(handle(hw, &table, exit::IOIO, &[0xEE], &mut r, 1, 0), Ok(1));
    // in al, 0x80 keeps RAX's upper bits (the model host answers 0).
    let mut r = VcRegs { rax: 0x1234_5678, ..VcRegs::default() };
    assert_eq!(handle(hw, &table, exit::IOIO, &[0xE4, 0x80], &mut r, 1, 0), Ok(2));
    assert_eq!(r.rax, 0x1234_5600);
    // 16-bit in through the operand-size prefix.
    let mut r = VcRegs { rax: 0xAAAA_BBBB, rdx: 0x60, ..VcRegs::default() };
    assert_eq!(handle(hw, &table, exit::IOIO, &[0x66, 0xED], &mut r, 1, 0), Ok(2));
    assert_eq!(r.rax, 0xAAAA_0000);
    // String port I/O is not for the SVSM.
    assert_eq!(handle(hw, &table, exit::IOIO, &[0x6E], &mut VcRegs::default(), 1, 0), Err(VcError::Decode));

    // The SVSM reads no MSR SNP intercepts: a #VC for one is a host injecting it.
    let before = hw.host.events.len();
    let mut r = VcRegs { rcx: 0xC000_0101, ..VcRegs::default() };
    assert_eq!(handle(hw, &table, exit::MSR, &[0x0F, 0x32], &mut r, 1, 0), Err(VcError::Unsupported(exit::MSR)));
    assert_eq!(hw.host.events.len(), before, "nothing forwarded to the host");

    let mut r = VcRegs::default();
    assert_eq!(handle(hw, &table, exit::RDTSC, &[0x0F, 0x31], &mut r, 1, 0), Ok(2));
    assert_ne!(r.rax | r.rdx, 0);

    let mut r = VcRegs { rax: 0, rcx: 0, ..VcRegs::default() };
    assert_eq!(handle(hw, &table, exit::CPUID, &[0x0F, 0xA2], &mut r, 1, 0), Ok(2));
    assert_eq!(r.rax, 0x16, "from the CPUID page");
    let events_before = hw.host.events.len();
    let mut r = VcRegs { rax: 0x4000_0000, ..VcRegs::default() };
    assert_eq!(handle(hw, &table, exit::CPUID, &[0x0F, 0xA2], &mut r, 1, 0), Ok(2));
    assert_eq!(r, VcRegs::default(), "a leaf the page lacks answers zeros");
    assert_eq!(hw.host.events.len(), events_before, "CPUID never asks the host");

    assert_eq!(handle(hw, &table, exit::CPUID, &[0x90], &mut VcRegs::default(), 1, 0), Err(VcError::Decode));
    assert_eq!(handle(hw, &table, 0x7A, &[0x0F, 0x09], &mut VcRegs::default(), 1, 0), Err(VcError::Unsupported(0x7A)));
    drop(p);
    assert_eq!(host.console, b"A", "the OUT reached the serial port");
}

#[test]
fn a_world_on_snp_serves_many_calls_without_violations() {
    let mut w = snp_world();
    for _ in 0..50 {
        w.client().query_protocol(ProtocolId::VTPM, 1).expect("vTPM protocol");
    }
    assert!(w.snp_shared().is_some_and(|s| s.c_bit == 51));
    assert!(w.machine.violations().is_empty(), "{:?}", w.machine.violations());
}

#[test]
fn attestation_on_snp_carries_the_hosts_certificates() {
    let mut env = bulwark_model::conformance_env::ModelEnv::on(PlatformKind::Snp);
    let evidence = bulwark_model::attest_demo::obtain_from(&mut env, b"nonce").expect("evidence");
    assert_eq!(evidence.certificates, env.world.machine.certificates, "the table the host sent with the boot report");
    let events = &env.world.snp.as_ref().expect("snp").host.events;
    assert!(events.iter().all(|e| *e != exit::GUEST_REQUEST), "extended requests only");
}

#[test]
fn certificates_too_large_for_the_svsm_leave_reports_working() {
    let mut env = bulwark_model::conformance_env::ModelEnv::on(PlatformKind::Snp);
    // The host now holds a table of 5 pages; the SVSM's buffer has 4.
    env.world.machine.certificates = vec![0x55; 5 * 4096];
    let evidence = bulwark_model::attest_demo::obtain_from(&mut env, b"first").expect("a report, once more");
    let host = &env.world.snp.as_ref().expect("snp").host;
    let requests: Vec<u64> =
        host.events.iter().copied().filter(|e| matches!(*e, exit::EXT_GUEST_REQUEST | exit::GUEST_REQUEST)).collect();
    assert_eq!(
        requests,
        [exit::EXT_GUEST_REQUEST, exit::EXT_GUEST_REQUEST, exit::GUEST_REQUEST],
        "boot, refused, retried"
    );
    assert!(!evidence.report.is_empty());
    // The table the SVSM cached went with this report; the next report has none.
    let evidence = bulwark_model::attest_demo::obtain_from(&mut env, b"second").expect("reports keep working");
    assert!(evidence.certificates.is_empty(), "no certificates the SVSM could not hold");
    let log = String::from_utf8_lossy(&env.world.snp.as_ref().expect("snp").host.console).into_owned();
    assert!(log.contains("certificates need 5 pages"), "{log}");
}

/// A vCPU the SVSM could not serve is not created: without a stack slot for its VMPL0
/// VMSA (the entry has one stack, the boot CPU's), or without memory for the SVSM's own
/// state of that CPU, CREATE_VCPU answers INVALID_REQUEST and changes nothing: no AP
/// creation reaches the host, the page is the guest's again. Before, the vCPU was created
/// without an SVSM VMSA (its calls reached nobody), or with one whose first entry stopped
/// the SVSM (on bare metal its CPU state came from an allocation that could not fail).
#[test]
fn a_vcpu_the_svsm_cannot_serve_is_refused_whole() {
    for (stacks, refuse_cpu_state) in [(1, false), (8, true)] {
        let mut w = snp_world();
        w.set_snp_entry(svsm_entry(stacks));
        w.snp.as_mut().expect("snp").host.refuse_cpu_state = refuse_cpu_state;
        let (vmsa, ca) = (3 * MIB, 3 * MIB + 0x1000);
        write_guest_vmsa(&mut w, vmsa);
        let before = w.snp.as_ref().expect("snp").host.ap_events.len();
        let refused = w.client().create_vcpu(vmsa, ca, 4);
        assert_eq!(refused, Err(CallError::Failed(ResultCode::ERR_INVALID_REQUEST)), "{stacks} stacks");
        assert_eq!(w.snp.as_ref().expect("snp").host.ap_events.len(), before, "nothing reached the host");
        assert!(w.vcpu_by_apic_id(4).is_none());
        assert!(!w.machine.rmp.entry(vmsa >> 12).expect("RAM").vmsa, "the page is no VMSA");
        assert!(w.client().transport.write(vmsa, &[1]).is_ok(), "and the guest's to write again");
        if refuse_cpu_state {
            w.snp.as_mut().expect("snp").host.refuse_cpu_state = false;
            write_guest_vmsa(&mut w, vmsa);
            w.client().create_vcpu(vmsa, ca, 4).expect("created once there is room");
        }
        assert!(w.machine.violations().is_empty(), "{:?}", w.machine.violations());
    }
}

/// The guest's own VMSA runs (the vCPU is in the guest): the delete is refused and the
/// vCPU keeps everything, its SVSM context included, so its next call is served. Before,
/// the SVSM's VMSA was destroyed first, and the vCPU ran on without the context that
/// serves its calls.
#[test]
fn deleting_a_running_vcpu_fails_whole_and_keeps_its_svsm_context() {
    let mut w = snp_world();
    w.set_snp_entry(svsm_entry(8));
    let (vmsa, ca) = (3 * MIB, 3 * MIB + 0x1000);
    write_guest_vmsa(&mut w, vmsa);
    w.client().create_vcpu(vmsa, ca, 9).expect("created");
    let host = &w.snp.as_ref().expect("snp").host;
    let svsm_vmsa = host.ap_events.iter().find(|e| e.3 == 0 && e.1 == 9).expect("SVSM VMSA").2;
    let events = host.ap_events.len();

    w.snp.as_mut().expect("snp").host.busy_vmsas.insert(vmsa);
    let refused = w.client().delete_vcpu(vmsa).expect_err("in use");
    assert_eq!(refused.result(), Some(abi::result::ResultCode::CORE_VCPU_IN_USE), "{refused:?}");
    for page in [vmsa, svsm_vmsa] {
        assert!(w.machine.rmp.entry(page >> 12).expect("RAM").vmsa, "{page:#x} is still a VMSA");
        assert_ne!(w.machine.vmsa_field(page, VmsaField::Efer) & EFER_SVME, 0, "{page:#x} still runnable");
    }
    assert_eq!(w.snp.as_ref().expect("snp").host.ap_events.len(), events, "nothing destroyed");

    w.snp.as_mut().expect("snp").host.busy_vmsas.clear();
    w.client().delete_vcpu(vmsa).expect("deleted once it stopped");
    for page in [vmsa, svsm_vmsa] {
        assert!(!w.machine.rmp.entry(page >> 12).expect("RAM").vmsa, "{page:#x} is no VMSA");
    }
    assert!(w.machine.violations().is_empty(), "{:?}", w.machine.violations());
}

#[test]
fn deleting_a_vcpu_whose_svsm_vmsa_runs_fails_whole_and_a_retry_finishes() {
    let mut w = snp_world();
    w.set_snp_entry(svsm_entry(8));
    let (vmsa, ca) = (3 * MIB, 3 * MIB + 0x1000);
    write_guest_vmsa(&mut w, vmsa);
    w.client().create_vcpu(vmsa, ca, 9).expect("created");
    let svsm_vmsa =
        w.snp.as_ref().expect("snp").host.ap_events.iter().find(|e| e.3 == 0 && e.1 == 9).expect("SVSM VMSA").2;

    // The SVSM's VMSA of that vCPU is running: the delete must fail and change nothing.
    w.snp.as_mut().expect("snp").host.busy_vmsas.insert(svsm_vmsa);
    let refused = w.client().delete_vcpu(vmsa).expect_err("in use");
    assert_eq!(refused.result(), Some(abi::result::ResultCode::CORE_VCPU_IN_USE), "{refused:?}");
    for page in [vmsa, svsm_vmsa] {
        assert!(w.machine.rmp.entry(page >> 12).expect("RAM").vmsa, "{page:#x} is still a VMSA");
        assert_ne!(w.machine.vmsa_field(page, VmsaField::Efer) & EFER_SVME, 0, "{page:#x} still runnable");
    }

    // Once it stops running, the retry finishes: neither page is a VMSA any more.
    w.snp.as_mut().expect("snp").host.busy_vmsas.clear();
    w.client().delete_vcpu(vmsa).expect("deleted");
    for page in [vmsa, svsm_vmsa] {
        assert!(!w.machine.rmp.entry(page >> 12).expect("RAM").vmsa, "{page:#x} is no VMSA");
    }
    let destroyed: Vec<_> = w
        .snp
        .as_ref()
        .expect("snp")
        .host
        .ap_events
        .iter()
        .filter(|e| e.0 == exit::AP_DESTROY)
        .map(|e| (e.2, e.3))
        .collect();
    assert_eq!(destroyed, [(svsm_vmsa, 0), (vmsa, 1)], "the SVSM's first, each with its VMPL");
    assert!(w.machine.violations().is_empty(), "{:?}", w.machine.violations());
}

/// A host that runs the SVSM's own VMSA of a new vCPU and answers its AP_CREATE with
/// "refused": the VMSA cannot be unflagged while it runs, so the SVSM keeps it on record,
/// a DELETE_VCPU meanwhile is refused (VCPU_IN_USE) and a retry once it stopped retires
/// it. Before the fix the SVSM forgot it, and the delete put a live VMPL0 VMSA back in
/// the pool (found by review).
#[test]
fn an_svsm_vmsa_the_host_runs_but_refuses_is_not_forgotten() {
    let mut w = snp_world();
    w.set_snp_entry(svsm_entry(8));
    w.snp.as_mut().expect("snp").host.run_refused_svsm_vmsas = true;
    let (vmsa, ca) = (3 * MIB, 3 * MIB + 0x1000);
    write_guest_vmsa(&mut w, vmsa);
    w.client().create_vcpu(vmsa, ca, 9).expect("the guest's vCPU is created");
    w.snp.as_mut().expect("snp").host.run_refused_svsm_vmsas = false;
    let svsm_vmsa =
        w.snp.as_ref().expect("snp").host.ap_events.iter().find(|e| e.3 == 0 && e.1 == 9).expect("SVSM VMSA").2;
    assert!(w.machine.rmp.entry(svsm_vmsa >> 12).expect("RAM").vmsa, "still a VMSA: the host runs it");

    let refused = w.client().delete_vcpu(vmsa).expect_err("its SVSM VMSA runs");
    assert_eq!(refused.result(), Some(abi::result::ResultCode::CORE_VCPU_IN_USE), "{refused:?}");
    w.snp.as_mut().expect("snp").host.busy_vmsas.clear();
    w.client().delete_vcpu(vmsa).expect("deleted once it stopped");
    for page in [vmsa, svsm_vmsa] {
        assert!(!w.machine.rmp.entry(page >> 12).expect("RAM").vmsa, "{page:#x} is no VMSA");
    }
    assert!(w.machine.violations().is_empty(), "{:?}", w.machine.violations());
}

/// An AP's CPU joins the platform (bare metal: `ap_main`): its own GHCB page made shared,
/// unless an earlier vCPU of the same index did that already, and registered. A host that
/// refuses the page-state change gets the reason the AP then terminates with, and nothing
/// registered.
#[test]
fn a_new_cpu_shares_and_registers_its_own_ghcb_or_fails_cleanly() {
    let (mut m, mut host) = (machine(), SnpHost::default());
    let p = SnpPlatform::start(ModelSnpHw::new(&mut m, &mut host), SnpConfig::new(1, 1)).expect("starts");
    let shared = p.shared().clone();
    let gpa = |m: &mut Machine, host: &mut SnpHost| {
        snp::SnpHw::shared_gpa(&ModelSnpHw::on_cpu(m, host, 2), snp::Shared::Ghcb)
    };
    let ghcb = gpa(&mut m, &mut host);
    assert_ne!(ghcb, SHARED_BASE, "CPU 2 has a GHCB of its own");

    host.psc_error = Some(9);
    let e = SnpPlatform::join(ModelSnpHw::on_cpu(&mut m, &mut host, 2), shared.clone(), true).expect_err("refused");
    assert_eq!(e, StartError::PageState(ghcb, GhcbError::Host(9)));
    assert_eq!(e.reason(), (term::SET_BULWARK, term::PAGE_STATE));
    assert_eq!(host.registered_ghcb(2), None);

    host.psc_error = None;
    SnpPlatform::join(ModelSnpHw::on_cpu(&mut m, &mut host, 2), shared.clone(), true).expect("joins");
    assert_eq!((host.registered_ghcb(2), host.msr(2)), (Some(ghcb), ghcb));
    assert_eq!(host.registered_ghcb(0), Some(SHARED_BASE), "CPU 0 keeps its own");
    let e = m.rmp.entry(ghcb >> 12).expect("RAM");
    assert!(!e.assigned && !e.validated, "the host's page now");

    // A later vCPU of the same index registers again without sharing again (a second
    // page-state change would be refused here).
    host.psc_error = Some(9);
    host.registered.clear();
    SnpPlatform::join(ModelSnpHw::on_cpu(&mut m, &mut host, 2), shared, false).expect("joins again");
    assert_eq!(host.registered_ghcb(2), Some(ghcb));
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}
