//! What the test guest checks, in order, each reported as one machine-readable line:
//! `RESULT <name> pass|fail <detail>`.
#![expect(unsafe_code, reason = "RDTSC and timed VMMCALL loops")]

use super::gate::Vmmcall;
use super::probe;
use abi::core_protocol::{DepositEntry, PvalidateEntry};
use abi::protocol::{CallId, ProtocolId, core_call};
use abi::result::ResultCode;
use guest::discovery::Discovery;
use guest::{Client, Regs, Transport};

/// The secrets page's gpa on the `svm` platform (docs/platforms/svm.md).
const SECRETS_GPA: u64 = 0x8000;
/// Unvalidated guest RAM on 4 KiB RMP entries, and on 2 MiB ones (from 256 MiB).
const SMALL: u64 = 0x40_0000;
const HUGE: u64 = 0x1000_0000;
/// RAX of the gate the SVSM answers without dispatch (benchmark only).
const BARE_GATE_RAX: u64 = 0xB1AE_0000_0000_0000;
/// The benchmark: blocks of calls, each kind timed per block.
const BENCH_BLOCKS: u64 = 20;
const BENCH_ROUNDS: u64 = 100;

struct Report {
    failed: u32,
}

impl Report {
    fn check(&mut self, name: &str, ok: bool, detail: core::fmt::Arguments<'_>) {
        println!("RESULT {name} {} {detail}", if ok { "pass" } else { "fail" });
        if !ok {
            self.failed += 1;
        }
    }

    fn skip(&mut self, name: &str, why: &str) {
        println!("RESULT {name} skip {why}");
    }
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn cpuid_svsm_bit() -> bool {
    let r = core::arch::x86_64::__cpuid_count(abi::hw::discovery::CPUID_LEAF, 0);
    r.eax & abi::hw::discovery::CPUID_EAX_SVSM_PRESENT != 0
}

fn msr_calling_area() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the SVSM answers this MSR (spec 58019 section 4.2); RDMSR has no memory effects.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") abi::hw::discovery::MSR_SVSM_CAA, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    u64::from(hi) << 32 | u64::from(lo)
}

/// Run the checks; returns whether all passed and where the calling area is now.
pub fn run_all() -> (bool, u64) {
    let mut r = Report { failed: 0 };

    // Discovery (section 4).
    r.check("4.2/cpuid-svsm-present", cpuid_svsm_bit(), format_args!("CPUID 0x8000001F EAX[28]"));
    let ca = msr_calling_area();
    let mut page = [0u8; 4096];
    let _ = Vmmcall.read(SECRETS_GPA, &mut page);
    let found = Discovery::from_secrets_page(&page);
    r.check("4.1/secrets-page", found.is_some(), format_args!("{found:x?}"));
    let Some(d) = found else { return (false, ca) };
    r.check("4.2/msr-calling-area", ca == d.calling_area && ca != 0, format_args!("MSR 0xC001F000 = {ca:#x}"));
    r.check("4.1/vmpck0-erased", page[0x20..0x40].iter().all(|b| *b == 0), format_args!(""));

    let mut c = Client::new(Vmmcall, ca);
    let core = c.query_protocol(ProtocolId::CORE, 1);
    r.check("6.7/query-core", core == Ok(Some((1, 1))), format_args!("{core:?}"));
    let none = c.query_protocol(ProtocolId(0x7FFF), 1);
    r.check("6.7/query-unserved", none == Ok(None), format_args!("{none:?}"));

    // The calling area moves into a validated page of the guest's own.
    let lists = ca + 0x100;
    let entries: [PvalidateEntry; 16] =
        core::array::from_fn(|i| PvalidateEntry::new(SMALL + 0x1000 * i as u64, false, true, false));
    r.check("3/unvalidated-refused", !probe::readable(SMALL), format_args!("{SMALL:#x}"));
    let validated = c.pvalidate(&entries, lists);
    let usable = (0..16).all(|i| probe::readable(SMALL + 0x1000 * i));
    r.check("6.2/pvalidate-4k", validated.is_ok() && usable, format_args!("{validated:?}, 16 pages usable: {usable}"));
    let new_ca = SMALL + 0xF000;
    let remapped = c.remap_ca(new_ca);
    let after = c.query_protocol(ProtocolId::CORE, 1);
    r.check(
        "6.1/remap-ca",
        remapped.is_ok() && after == Ok(Some((1, 1))),
        format_args!("to {new_ca:#x}: {remapped:?}"),
    );
    let lists = SMALL + 0xE000;

    let huge = c.pvalidate(&[PvalidateEntry::new(HUGE, true, true, false)], lists);
    let top = probe::readable(HUGE + 0x1F_F000);
    r.check("6.2/pvalidate-2m", huge.is_ok() && top, format_args!("{huge:?}, last page usable: {top}"));
    let split = c.pvalidate(&[PvalidateEntry::new(SMALL + 0x20_0000, true, true, false)], lists);
    r.check(
        "6.2/pvalidate-2m-on-4k-falls-back",
        split.is_ok() && probe::readable(SMALL + 0x3F_F000),
        format_args!("{split:?}"),
    );

    // Refusals: SVSM memory, device ports, and the SVSM keeps serving.
    r.check("3/device-ports-refused", !probe::port_readable(0xCFC), format_args!("PCI configuration data port"));
    r.check("3/svsm-memory-refused", !probe::readable(d.svsm_base), format_args!("{:#x}", d.svsm_base));
    let own = c.pvalidate(&[PvalidateEntry::new(d.svsm_base, false, true, false)], lists);
    r.check(
        "6.2/pvalidate-svsm-memory",
        own == Err(guest::CallError::Failed(ResultCode::ERR_INVALID_ADDRESS)),
        format_args!("{own:?}"),
    );
    // SVM instructions are not the guest's: each raises #UD and the SVSM serves on.
    use probe::SvmInstruction::*;
    let allowed: alloc::vec::Vec<_> = [Vmrun, Vmload, Vmsave, Stgi, Clgi, Skinit, Invlpga]
        .into_iter()
        .filter(|i| !probe::svm_instruction_refused(*i))
        .collect();
    r.check("3/svm-instructions-refused", allowed.is_empty(), format_args!("not refused: {allowed:?}"));
    // MSRs: the SVSM's are refused, the guest's own pass through, a few are emulated.
    let (ok, detail) = super::msrs::svsm_msrs_refused(&mut c);
    r.check("3/svsm-msrs-refused", ok, format_args!("{detail}"));
    let (ok, detail) = super::msrs::guest_msrs_pass_through(&mut c);
    r.check("3/guest-msrs-pass-through", ok, format_args!("{detail}"));
    let (ok, detail) = super::msrs::emulated_msrs(&mut c);
    r.check("3/emulated-msrs-as-hardware", ok, format_args!("{detail}"));
    // A device model at CPL 3 serves the test device's ports.
    let (ok, detail) = super::device::served_at_cpl3();
    r.check("user/device-model-serves-ports", ok, format_args!("{detail}"));
    let (ok, detail) = super::device::mmio_served();
    r.check("user/device-model-serves-mmio", ok, format_args!("{detail}"));
    let (ok, detail) = super::device::vcpu_object_answers();
    r.check("user/vcpu-object-answers-cpuid", ok, format_args!("{detail}"));
    println!("{}", super::device::bench(rdtsc));
    let still = c.query_protocol(ProtocolId::CORE, 1);
    r.check("5/serving-after-refusals", still == Ok(Some((1, 1))), format_args!("{still:?}"));

    // Deposit and withdraw.
    let deposit: [DepositEntry; 4] =
        core::array::from_fn(|i| DepositEntry::new(SMALL + 0x8000 + 0x1000 * i as u64, false));
    let deposited = c.deposit(&deposit, lists);
    let gone = (0..4).all(|i| !probe::readable(SMALL + 0x8000 + 0x1000 * i));
    r.check("6.5/deposit", deposited.is_ok() && gone, format_args!("{deposited:?}, pages gone: {gone}"));
    let mut back = [0u64; 8];
    let withdrawn = c.withdraw(lists, &mut back);
    let n = *withdrawn.as_ref().unwrap_or(&0);
    let returned = back[..n].iter().all(|p| probe::readable(*p));
    r.check("6.6/withdraw", n == 4 && returned, format_args!("{withdrawn:?}, usable again: {returned}"));

    // A second vCPU: created from a VMSA the guest builds, it runs (on another physical
    // CPU when QEMU has one), serves a call through its own calling area, and is deleted.
    let (vmsa, vcpu_ca) = (SMALL + 0xA000, SMALL + 0xB000);
    if let Some(image) = super::ap::vmsa(1) {
        let _ = c.transport.write(vmsa, zerocopy::IntoBytes::as_bytes(&image));
    }
    let created = c.create_vcpu(vmsa, vcpu_ca, 1);
    let private = !probe::readable(vmsa);
    let alive = super::ap::alive(1);
    r.check(
        "6.3/create-vcpu",
        created.is_ok() && private && alive,
        format_args!("{created:?}, VMSA private: {private}, the new vCPU answers: {alive}"),
    );
    let on_second = Client::new(super::ap::OnVcpu(1), vcpu_ca).query_protocol(ProtocolId::CORE, 1);
    r.check("6.3/second-vcpu-calls", on_second == Ok(Some((1, 1))), format_args!("{on_second:?}"));
    // A third vCPU shares the boot vCPU's CPU (the SVSM serves vCPU index i on CPU i
    // modulo the CPU count, and QEMU gives it two): while they take turns, each keeps its
    // own x87/SSE registers and DR0-DR3 (VMRUN does not switch them; the SVSM must).
    let (vmsa3, ca3) = (SMALL + 0xC000, SMALL + 0xD000);
    if let Some(image) = super::ap::vmsa(2) {
        let _ = c.transport.write(vmsa3, zerocopy::IntoBytes::as_bytes(&image));
    }
    let third = c.create_vcpu(vmsa3, ca3, 2);
    let kept = third.as_ref().ok().and_then(|()| super::ap::fpu_isolation(2));
    r.check(
        "svm/fpu-per-vcpu",
        kept == Some((true, true)),
        format_args!("{third:?}, (boot vCPU kept its XMM0 and DR0, the third kept its): {kept:?}"),
    );
    // The third vCPU spins without a single exit: the boot vCPU, on the same CPU, must
    // still get its turns (the SVSM's timer ends the spinner's).
    let back = third.as_ref().ok().and_then(|()| super::ap::spinning_neighbour(2));
    let still = c.query_protocol(ProtocolId::CORE, 1);
    r.check(
        "svm/vcpus-sharing-a-cpu-take-turns",
        back.is_some() && still == Ok(Some((1, 1))),
        format_args!("the boot vCPU ran again {back:?} cycles after it yielded to a neighbour that never exits; QUERY_PROTOCOL: {still:?}"),
    );
    if third.is_ok() {
        let _ = c.delete_vcpu(vmsa3);
    }
    let deleted = c.delete_vcpu(vmsa);
    let gone = !super::ap::alive(1);
    r.check(
        "6.4/delete-vcpu",
        deleted.is_ok() && probe::readable(vmsa) && gone,
        format_args!("{deleted:?}, stopped: {gone}"),
    );

    // Benchmark: an SVSM call round trip beside the bare gate, in the same boot.
    let query = Regs {
        rax: CallId::new(ProtocolId::CORE, core_call::QUERY_PROTOCOL).to_rax(),
        rcx: 1 << 32 | 1,
        ..Regs::default()
    };
    // Interleaved blocks, the fastest block of each kind: under TCG the host's other work
    // only ever adds time, so the minimum is the steadiest estimate of each path.
    let (mut call, mut bare) = (u64::MAX, u64::MAX);
    for _ in 0..BENCH_BLOCKS {
        let t0 = rdtsc();
        for _ in 0..BENCH_ROUNDS {
            let _ = c.issue(query);
        }
        let t1 = rdtsc();
        for _ in 0..BENCH_ROUNDS {
            let mut regs = Regs { rax: BARE_GATE_RAX, ..Regs::default() };
            c.transport.request_svsm(&mut regs);
        }
        let t2 = rdtsc();
        call = call.min((t1 - t0) / BENCH_ROUNDS);
        bare = bare.min((t2 - t1) / BENCH_ROUNDS);
    }
    println!(
        "BENCH query_protocol_cycles={call} bare_vmmcall_cycles={bare} ratio={}.{:02}",
        call / bare.max(1),
        (call * 100 / bare.max(1)) % 100
    );

    // The OCP log read beside a plain copy of the same bytes.
    match super::ocp::bench_log_read(&mut c, rdtsc) {
        Ok(line) => println!("{line}"),
        Err(why) => println!("BENCH_OCP failed: {why}"),
    }

    // The vCPU isolation benchmark: vCPU 1's core calls while vCPU 0's vTPM command runs.
    match super::isolation::measure(&mut c, vmsa, vcpu_ca, lists) {
        Ok(figures) => println!("{figures}"),
        Err(why) => println!("BENCH_ISOLATION failed: {why}"),
    }
    // A run of PCR extends: each succeeds, and the SVSM logs what running them at CPL 3
    // cost (a window of sixteen; `cargo xtask bench` reads the line).
    // (A boot whose sealed state did not open offers no vTPM.)
    match c.query_protocol(ProtocolId::VTPM, 1) {
        Ok(Some(_)) => {
            let extends = pcr_extends(&mut c, lists, PCR_EXTENDS);
            r.check("vtpm/pcr-extends", extends == Ok(PCR_EXTENDS), format_args!("{extends:?} of {PCR_EXTENDS}"));
        }
        Ok(None) => r.skip("vtpm/pcr-extends", "the SVSM offers no vTPM in this boot"),
        Err(e) => r.check("vtpm/pcr-extends", false, format_args!("QUERY_PROTOCOL: {e:?}")),
    }

    // Evidence for the host's verifier (section 7).
    let evidence = super::evidence::obtain(&mut c, lists);
    r.check(
        "7.1/evidence",
        evidence.is_ok(),
        format_args!("{}", evidence.as_ref().map_or_else(|e| e.clone(), |n| alloc::format!("certificates: {n} bytes"))),
    );

    // The SVSM's observability sources, as a guest OS would show them.
    let sources = super::ocp::print_sources(&mut c, SMALL + 0x8000);
    r.check("ocp/print-sources", sources.is_ok(), format_args!("{sources:?}"));

    // Last, since it takes the test device away: a device model that faults.
    let (ok, detail) = super::device::crash_is_contained(&mut c);
    r.check("user/device-model-crash-contained", ok, format_args!("{detail}"));

    println!("testguest: {} checks failed", r.failed);
    (r.failed == 0, c.calling_area)
}

/// PCR extends the checks run in a row: one window of the SVSM's cost log.
const PCR_EXTENDS: u32 = 16;

/// Extend PCR 16 (the debug PCR, which the guest may use freely) `count` times with
/// SHA-256 digests through the vTPM protocol, with the command page at `page`: how many
/// succeeded, or what failed first.
fn pcr_extends(c: &mut Client<Vmmcall>, page: u64, count: u32) -> Result<u32, alloc::string::String> {
    use vtpm::wire;
    let mut response = alloc::vec![0u8; abi::vtpm::BUFFER_SIZE];
    for i in 0..count {
        let mut command = wire::Command::new(wire::TPM_ST_SESSIONS, wire::TPM_CC_PCR_EXTEND);
        command.u32(16).password_auth().u32(1).u16(0x000B).bytes(&[i as u8; 32]);
        let n =
            c.vtpm_command(page, &command.finish(), &mut response).map_err(|e| alloc::format!("extend {i}: {e:?}"))?;
        let code = response.get(..n).and_then(wire::ResponseHeader::parse).map(|h| h.code);
        if code != Some(0) {
            return Err(alloc::format!("extend {i}: response code {code:x?}"));
        }
    }
    Ok(count)
}
