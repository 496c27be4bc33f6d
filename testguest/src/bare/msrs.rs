//! MSR checks: the SVSM's MSRs (and the physical CPU's) are out of the guest's reach and
//! raise #GP(0); the guest's own MSRs, which the SVSM switches on every exit, pass through
//! and survive exits; the few the SVSM emulates behave as the hardware's do
//! (docs/platforms/svm.md, "MSRs").
#![expect(unsafe_code, reason = "MSR writes through the probe")]

use super::gate::Vmmcall;
use super::probe;
use abi::protocol::ProtocolId;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use guest::Client;

/// MSRs that are not the guest's: reading or writing any of them must raise #GP(0).
const NOT_THE_GUESTS: [(&str, u32); 14] = [
    // The SVSM's host save area: the next #VMEXIT reloads the SVSM's state from it.
    ("VM_HSAVE_PA", 0xC001_0117),
    // The physical local APIC: its base, and the switch to x2APIC mode (bit 10).
    ("APIC_BASE", 0x1B),
    // x2APIC interrupt command: IPIs (INIT, SIPI) to the SVSM's CPUs.
    ("X2APIC_ICR", 0x830),
    // Memory encryption, RMP and MTRR fix-ups of the whole machine.
    ("SYSCFG", 0xC001_0010),
    // SVM's lock and disable bits.
    ("VM_CR", 0xC001_0114),
    ("TSC_RATIO", 0xC000_0104),
    // Not switched between guest and SVSM: each is the physical CPU's.
    ("TSC_AUX", 0xC000_0103),
    ("DEBUGCTL", 0x1D9),
    // Memory types of physical memory, the SVSM's included (nested paging does not
    // virtualize MTRRs).
    ("MTRR_PHYS_BASE0", 0x200),
    // The edges of the permission map's three ranges, and just past the last one (an MSR
    // outside the map always exits).
    ("MSRPM_LAST_0000", 0x1FFF),
    ("MSRPM_FIRST_C000", 0xC000_0000),
    ("MSRPM_LAST_C000", 0xC000_1FFF),
    ("MSRPM_LAST_C001", 0xC001_1FFF),
    ("PAST_MSRPM", 0xC001_2000),
];

const MSR_TSC: u32 = 0x10;
const MSR_PAT: u32 = 0x277;
const MSR_MTRR_CAP: u32 = 0xFE;
const MSR_MTRR_DEF_TYPE: u32 = 0x2FF;
const MSR_EFER: u32 = 0xC000_0080;
const MSR_LSTAR: u32 = 0xC000_0082;
const MSR_KERNEL_GS_BASE: u32 = 0xC000_0102;
const MSR_SYSENTER_EIP: u32 = 0x176;
const EFER_NXE: u64 = 1 << 11;
const EFER_LME: u64 = 1 << 8;
const EFER_SVME: u64 = 1 << 12;

/// Did the last probe fault with #GP(0)?
fn gp0() -> bool {
    probe::last_error_code() == 0
}

/// Every MSR that is not the guest's, read and written (with the value read, or 0, so a
/// CPU that wrongly let the write through stays as it was): each must raise #GP(0).
/// Then a core call: the SVSM still serves. `(passed, detail)`.
pub fn svsm_msrs_refused(c: &mut Client<Vmmcall>) -> (bool, String) {
    let mut reached = Vec::new();
    for (name, msr) in NOT_THE_GUESTS {
        let read = probe::rdmsr(msr);
        match read {
            Some(v) => reached.push(format!("{name} read {v:#x}")),
            None if !gp0() => reached.push(format!("{name} read: #GP({:#x})", probe::last_error_code())),
            None => {}
        }
        // SAFETY: the value the MSR holds (or 0 where the read was refused, as it must be).
        if unsafe { probe::wrmsr(msr, read.unwrap_or(0)) } {
            reached.push(format!("{name} written"));
        } else if !gp0() {
            reached.push(format!("{name} write: #GP({:#x})", probe::last_error_code()));
        }
    }
    // Writes only: the TSC is the SVSM's clock (reading it is RDTSC); the calling-area
    // MSR is read-only (spec 58019 section 4.2).
    // SAFETY: the current TSC and calling area: no change should the write get through.
    if unsafe { probe::wrmsr(MSR_TSC, rdtsc()) } {
        reached.push("TSC written".into());
    }
    // SAFETY: as above.
    if unsafe { probe::wrmsr(abi::hw::discovery::MSR_SVSM_CAA, c.calling_area) } {
        reached.push("SVSM_CAA written".into());
    }
    let serving = c.query_protocol(ProtocolId::CORE, 1);
    let ok = reached.is_empty() && serving == Ok(Some((1, 1)));
    (ok, format!("not refused with #GP(0): {reached:?}; then QUERY_PROTOCOL: {serving:?}"))
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The guest's own MSRs, which VMSAVE/VMLOAD switch (syscall and segment-base MSRs),
/// pass through and keep their values across exits; the TSC reads as RDTSC does.
pub fn guest_msrs_pass_through(c: &mut Client<Vmmcall>) -> (bool, String) {
    let values = [
        (MSR_LSTAR, 0xFFFF_8000_0012_3000u64),
        (MSR_KERNEL_GS_BASE, 0xFFFF_8000_0045_6000),
        (MSR_SYSENTER_EIP, 0x0078_9000),
    ];
    // SAFETY: the test guest uses neither SYSCALL, SYSENTER nor SWAPGS.
    let written = values.iter().all(|(msr, v)| unsafe { probe::wrmsr(*msr, *v) });
    // A call: the guest leaves and re-enters, the SVSM's own values in between.
    let serving = c.query_protocol(ProtocolId::CORE, 1);
    let kept: Vec<_> = values.iter().map(|(msr, _)| probe::rdmsr(*msr)).collect();
    let same = values.iter().zip(&kept).all(|((_, v), k)| *k == Some(*v));
    for (msr, _) in values {
        // SAFETY: back to the launch state.
        unsafe { probe::wrmsr(msr, 0) };
    }
    let before = rdtsc();
    let tsc = probe::rdmsr(MSR_TSC);
    let after = rdtsc();
    let tsc_ok = tsc.is_some_and(|t| before <= t && t <= after);
    let ok = written && same && serving == Ok(Some((1, 1))) && tsc_ok;
    (
        ok,
        format!("written: {written}, kept across a call: {kept:x?}, call: {serving:?}, TSC {before}..{tsc:?}..{after}"),
    )
}

/// The MSRs the SVSM emulates: PAT (the guest's own, with reserved types refused as the
/// CPU does), EFER writes (the CPU's checks, and SVME stays set), the MTRRs (none).
pub fn emulated_msrs(c: &mut Client<Vmmcall>) -> (bool, String) {
    let mut wrong = Vec::new();
    // Linux's PAT (arch/x86/mm/pat/memtype.c, pat_bp_init: WB WC UC- UC WB WP UC- WT),
    // written on every CPU by pat_cpu_init.
    let linux_pat = 0x0407_0506_0007_0106u64;
    // SAFETY: a valid PAT; the test guest's pages all use PAT entry 0 (WB in both).
    if !unsafe { probe::wrmsr(MSR_PAT, linux_pat) } || probe::rdmsr(MSR_PAT) != Some(linux_pat) {
        wrong.push(format!("PAT {linux_pat:#x} not kept: {:x?}", probe::rdmsr(MSR_PAT)));
    }
    // Memory type 2 is reserved: #GP, and the PAT unchanged.
    // SAFETY: refused (the check is that it is); were it not, entry 0 would be reserved.
    if unsafe { probe::wrmsr(MSR_PAT, linux_pat & !0xFF | 2) } || !gp0() {
        wrong.push("PAT with a reserved type accepted".into());
    }
    if probe::rdmsr(MSR_PAT) != Some(linux_pat) {
        wrong.push(format!("PAT changed by a refused write: {:x?}", probe::rdmsr(MSR_PAT)));
    }
    // Linux reads these at boot when CPUID has MTRR (mtrr/generic.c, get_mtrr_state):
    // none, and disabled.
    for (name, msr) in [("MTRRcap", MSR_MTRR_CAP), ("MTRRdefType", MSR_MTRR_DEF_TYPE)] {
        if probe::rdmsr(msr) != Some(0) {
            wrong.push(format!("{name} = {:x?}", probe::rdmsr(msr)));
        }
    }
    let Some(efer) = probe::rdmsr(MSR_EFER) else {
        return (false, "EFER not readable".into());
    };
    // Linux sets NXE and SCE with a read-modify-write (head_64.S, secondary_startup_64).
    // SAFETY: NXE only makes bit 63 of page-table entries meaningful; the guest's have it clear.
    let nx = unsafe { probe::wrmsr(MSR_EFER, efer | EFER_NXE) } && probe::rdmsr(MSR_EFER) == Some(efer | EFER_NXE);
    // SAFETY: back to the value read.
    let back = unsafe { probe::wrmsr(MSR_EFER, efer) } && probe::rdmsr(MSR_EFER) == Some(efer);
    if !(nx && back) {
        wrong.push(format!("EFER {efer:#x}: NXE set {nx}, restored {back}"));
    }
    // Refused as by the CPU: a reserved bit, LME changed with paging on; and by the SVSM:
    // SVME cleared (VMRUN needs it; the guest's SVM instructions are #UD anyway).
    let refusals = [
        ("reserved bit 1", efer | 2),
        ("LME cleared in long mode", efer & !EFER_LME),
        ("SVME cleared", efer & !EFER_SVME),
    ];
    for (what, value) in refusals {
        // SAFETY: each must be refused; were one not, the run ends (which fails the check too).
        if unsafe { probe::wrmsr(MSR_EFER, value) } || !gp0() {
            wrong.push(format!("EFER write with {what} accepted"));
        }
    }
    if probe::rdmsr(MSR_EFER) != Some(efer) {
        wrong.push(format!("EFER changed by refused writes: {:x?}", probe::rdmsr(MSR_EFER)));
    }
    let serving = c.query_protocol(ProtocolId::CORE, 1);
    let ok = wrong.is_empty() && serving == Ok(Some((1, 1)));
    (ok, format!("wrong: {wrong:?}; then QUERY_PROTOCOL: {serving:?}"))
}
