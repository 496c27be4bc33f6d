//! The dispatcher fuzz harness: arbitrary bytes become a sequence of guest calls with
//! arbitrary registers and list contents, interleaved with a host that misbehaves
//! (spurious entries, wrong exit codes, running VMSAs, racing writes, pages reassigned
//! behind the guest's back, a PSP that refuses, loses or forges answers), and an SVSM
//! heap that runs full.
//!
//! After every step the harness checks what must always hold: the SVSM did not break the
//! calling convention, still answers a call, and its own memory and every VMSA stay out
//! of the guest's reach. A panic anywhere is a finding. Used by the cargo-fuzz target
//! `dispatcher` and by a hosted smoke test on random inputs.

use crate::machine::Race;
use crate::world::{self, MIB, PlatformKind, World, WorldConfig};
use abi::hw::rmpadjust::PERM_READ;
use abi::protocol::{CallId, ProtocolId, core_call};
use abi::result::ResultCode;
use guest::{CallError, Regs, Transport};
use kernel::request::EntryOutcome;
use kernel::vcpu::VcpuIndex;

/// Reads fuzz input; exhausted input reads as zeros.
pub(crate) struct Input<'a> {
    pub(crate) data: &'a [u8],
}

impl Input<'_> {
    pub(crate) fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    pub(crate) fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, i| v | u64::from(self.u8()) << (8 * i))
    }
    pub(crate) fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
    pub(crate) fn done(&self) -> bool {
        self.data.is_empty()
    }
}

const RAM: u64 = 96 * MIB;
const HUGE_FROM: u64 = 32 * MIB;
/// A validated page the fuzzer fills with lists and structures.
const PARAM: u64 = 2 * MIB;

/// Interesting addresses, with random low bits added by the caller.
fn address(input: &mut Input<'_>) -> u64 {
    let base = match input.u8() % 12 {
        0 => PARAM,
        1 => PARAM + 0x1000,
        2 => world::LOW_VALIDATED_END,
        3 => HUGE_FROM,
        4 => world::SVSM_BASE,
        5 => world::STARTUP_VMSA_GPA,
        6 => world::STARTUP_CA_GPA,
        7 => world::SECRETS_GPA,
        8 => RAM - 4096,
        9 => RAM,
        10 => 3 * MIB,
        _ => return input.u64(),
    };
    let offset = match input.u8() % 4 {
        0 => 0,
        1 => u64::from(input.u8()) << 12,
        2 => u64::from(input.u8()) & !7,
        _ => u64::from(input.u8()),
    };
    base.wrapping_add(offset)
}

/// Run one fuzz input. Panics (a finding) if an invariant breaks. The input's length picks
/// the platform (modulo 3): the model's own, the snp platform (`bulwark-snp` over the
/// model's host), or the svm platform (`bulwark-svm` over the model's VMRUN and nested
/// paging), so one corpus covers all three.
pub fn run_dispatcher(data: &[u8]) {
    let platform = match data.len() % 3 {
        0 => PlatformKind::Model,
        1 => PlatformKind::Snp,
        _ => PlatformKind::Svm,
    };
    run_dispatcher_on(data, platform);
}

/// [`run_dispatcher`] on the given platform.
pub fn run_dispatcher_on(data: &[u8], platform: PlatformKind) {
    crate::heap::reset_limit();
    let mut input = Input { data };
    let mut w = World::new(WorldConfig {
        ram_bytes: RAM,
        huge_from: HUGE_FROM,
        pages_per_call: 64,
        platform,
        ..WorldConfig::default()
    });
    let mut steps = 0;
    while !input.done() && steps < 64 {
        steps += 1;
        step(&mut w, &mut input);
        // On svm an exit the startup vCPU cannot go on from (a shutdown, an exit code no
        // guest can make) ends the run, as it stops the SVSM's loop under QEMU. Nothing
        // else may have gone wrong on the way.
        if w.svm.as_ref().is_some_and(|svm| svm.ended.is_some()) {
            let violations: Vec<String> =
                w.machine.violations().into_iter().filter(|v| !v.contains("loop ended")).collect();
            assert!(violations.is_empty(), "calling-convention violations: {violations:?}");
            break;
        }
        check(&mut w);
    }
    check_whole(&w);
    crate::heap::reset_limit();
}

/// At the end of an input, what `check` samples after each step, on every page: no page
/// of the SVSM's region and no VMSA is within reach of any guest VMPL.
fn check_whole(w: &World) {
    let svsm = w.svsm.pages().svsm_region();
    let vmsas = w.svsm.vcpus().iter().map(|(_, v)| v.vmsa.pfn());
    for pfn in (svsm.start_pfn()..svsm.end_pfn()).chain(vmsas) {
        assert_out_of_reach(w, pfn);
    }
}

/// No guest VMPL can read `pfn`: by the RMP on the model and snp platforms; on svm by
/// nested paging, through the TLB of every vCPU in the guest (the svm platform's own RMP
/// is what it builds nested paging from).
fn assert_out_of_reach(w: &World, pfn: u64) {
    match &w.svm {
        Some(svm) => {
            assert!(!svm.host.npt.contains_key(&pfn), "nested paging maps page {:#x} for the guest", pfn << 12);
            for t in svm.running.values() {
                let asid = t.vcpu.vmcb.u32(abi::vmcb::offset::GUEST_ASID);
                assert!(
                    svm.host.guest_access(asid, pfn << 12, 1, PERM_READ).is_err(),
                    "page {:#x} readable by vCPU {} through nested paging",
                    pfn << 12,
                    t.index
                );
            }
        }
        None => {
            for vmpl in 1..=3 {
                assert!(!w.machine.rmp.allows(pfn, vmpl, PERM_READ), "page {:#x} readable at VMPL{vmpl}", pfn << 12);
            }
        }
    }
}

fn step(w: &mut World, input: &mut Input<'_>) {
    match input.u8() % 12 {
        0..=4 => {
            // Fill the parameter page, then call.
            let len = usize::from(input.u8()) * 4;
            let fill = input.bytes(len).to_vec();
            let _ = w.client().transport.write(PARAM, &fill);
            let protocol = match input.u8() % 8 {
                0..=4 => 0,
                // Attestation, the vTPM or the Observability protocol.
                5 => [1, 2, 5][usize::from(input.u8() % 3)],
                6 => u32::from(input.u8()),
                _ => input.u64() as u32,
            };
            if protocol == 2 && input.u8() & 1 == 1 {
                // A well-formed TPM_SEND_COMMAND request around the fill, so the bytes
                // reach the TPM engine itself.
                let header = abi::vtpm::request_header(abi::vtpm::TPM_SEND_COMMAND, 0, fill.len() as u32);
                let request = [&header[..], &fill].concat();
                let _ = w.client().transport.write(PARAM, &request);
            }
            let call = match input.u8() % 8 {
                0..=6 => u32::from(input.u8() % 10),
                _ => input.u64() as u32,
            };
            let regs = Regs {
                rax: CallId::new(ProtocolId(protocol), call).to_rax(),
                rcx: address(input),
                rdx: address(input),
                r8: input.u64() % 8,
                r9: input.u64(),
            };
            let vcpu = VcpuIndex(u32::from(input.u8() % 3));
            let ca = w.svsm.vcpus().get(vcpu).map(|v| v.calling_area.0);
            if let Some(ca) = ca {
                let _ = w.client_at(vcpu, ca).issue(regs);
            }
        }
        5 => {
            let vcpu = VcpuIndex(u32::from(input.u8() % 3));
            let code = input.u64();
            w.host.exit_code = Some(if w.svm.is_some() { svm_exit(code) } else { code });
            if let Some(ca) = w.svsm.vcpus().get(vcpu).map(|v| v.calling_area.0) {
                let _ = w.client_at(vcpu, ca).issue(Regs { rax: 6, rcx: 1, ..Regs::default() });
            }
            w.host.exit_code = None;
        }
        6 => {
            let _ = w.enter(VcpuIndex(u32::from(input.u8() % 4)));
        }
        7 => {
            let running = input.u8() & 1 == 1;
            let pick = usize::from(input.u8());
            if let Some(v) = w.machine.vcpus.values_mut().nth(pick % 4) {
                v.running = running;
            }
        }
        8 => {
            let trigger = address(input);
            let gpa = address(input);
            let len = usize::from(input.u8() % 32);
            let bytes = input.bytes(len).to_vec();
            // Another vCPU writes guest RAM; the host model has no memory beyond it.
            if gpa.checked_add(bytes.len() as u64).is_some_and(|end| end <= RAM) {
                w.machine.race(Race { trigger, gpa, bytes });
            }
        }
        11 => {
            // The SVSM's heap fills up (or empties again): every call from here on must
            // answer with a result code, never stop the SVSM. Seen only where the binary
            // runs the counting allocator (`crate::heap`), as the fuzz target does.
            match input.u8() {
                0xF0.. => crate::heap::reset_limit(),
                room => crate::heap::leave_room(usize::from(room) * 64),
            }
        }
        10 => {
            // The PSP, or the host carrying its messages, misbehaves on the next request.
            w.machine.psp_fault = Some(match input.u8() % 3 {
                0 => conformance::PspFault::DropAnswer,
                1 => conformance::PspFault::CorruptAnswer,
                _ => match input.u8() {
                    // The top of the range: a host throttling (BUSY) up to 31 times.
                    s @ 0xE0.. => conformance::PspFault::Busy(s & 0x1F),
                    s => conformance::PspFault::Status(u32::from(s)),
                },
            });
        }
        _ => {
            // The host reassigns a page (RMPUPDATE): validation and permissions are gone.
            let pfn = address(input) >> 12;
            if pfn < RAM >> 12 && !(world::SVSM_BASE >> 12..(world::SVSM_BASE + 4 * MIB) >> 12).contains(&pfn) {
                w.machine.rmp.host_assign(pfn, 1);
            }
        }
    }
}

/// On svm the host's exit code is the exit the guest takes: mostly exits a guest can
/// make (the call gate, CPUID, MSRs, ports, HLT, a nested fault, a kick, the SVM
/// instructions it may not use), now and then a shutdown or any code at all (which
/// stops the vCPU, and ends the input if it is the startup vCPU).
fn svm_exit(pick: u64) -> u64 {
    use abi::vmcb::exit;
    const GUEST_MADE: [u64; 14] = [
        exit::VMMCALL,
        exit::VMMCALL,
        exit::CPUID,
        exit::MSR,
        exit::IOIO,
        exit::HLT,
        exit::NPF,
        exit::NMI,
        exit::VMRUN,
        exit::VMLOAD,
        exit::VMSAVE,
        exit::STGI,
        exit::CLGI,
        exit::INVD,
    ];
    match GUEST_MADE.get(usize::try_from(pick % 16).unwrap_or(0)) {
        Some(code) => *code,
        None if pick % 16 == 14 => exit::SHUTDOWN,
        None => pick >> 4,
    }
}

pub(crate) fn check(w: &mut World) {
    let violations = w.machine.violations();
    assert!(violations.is_empty(), "calling-convention violations: {violations:?}");
    let svsm = w.svsm.pages().svsm_region();
    let vmsas: Vec<u64> = w.svsm.vcpus().iter().map(|(_, v)| v.vmsa.pfn()).collect();
    for pfn in [svsm.start_pfn(), svsm.end_pfn() - 1].into_iter().chain(vmsas) {
        assert_out_of_reach(w, pfn);
    }
    // The SVSM still serves the startup vCPU (unless the host broke its calling area or
    // VMSA, in which case the SVSM must have refused cleanly).
    for v in w.machine.vcpus.values_mut() {
        v.running = false;
    }
    let ca = w.svsm.vcpus().startup().map(|v| v.calling_area.0).unwrap_or(world::STARTUP_CA_GPA);
    let id = CallId::new(ProtocolId::CORE, core_call::QUERY_PROTOCOL);
    match w.client_at(VcpuIndex::STARTUP, ca).issue(Regs { rax: id.to_rax(), rcx: 1 << 32 | 1, ..Regs::default() }) {
        Ok(r) => assert_eq!(ResultCode::from_rax(r.rax), ResultCode::SUCCESS),
        // The host took the guest's own calling area away: the guest cannot even ask.
        Err(CallError::Fault(_)) => {}
        // The SVSM did not answer: only acceptable if the host broke what it needs.
        Err(CallError::NotExecuted) => {
            let outcome = w.enter(VcpuIndex::STARTUP);
            assert!(matches!(outcome, EntryOutcome::HostFault(_)), "call not served, yet the entry was {outcome:?}");
        }
        Err(e) => panic!("unexpected client error {e:?}"),
    }
}
