//! The MSR policy: for each MSR and direction (read, write), whether the guest reaches the
//! register itself ([`Action::Pass`]), the SVSM answers for it ([`Action::Emulate`]) or
//! the guest gets #GP ([`Action::Refuse`]). [`RULES`] is the whole policy; an MSR it does
//! not name is refused.
//!
//! An MSR passes only if the hardware switches the guest's copy with the SVSM's on every
//! entry and exit (VMRUN/#VMEXIT, or the VMSAVE/VMLOAD pair around VMRUN): anything else
//! is the physical CPU's, shared with the SVSM, and a guest that reached it could change
//! the SVSM's CPU under it (VM_HSAVE_PA: the next #VMEXIT reloads the SVSM's state from
//! where the guest points it). [`on_exit`] decides what an intercepted access does.

/// MSR numbers the policy names.
pub mod index {
    pub const TSC: u32 = 0x10;
    pub const APIC_BASE: u32 = 0x1B;
    pub const SPEC_CTRL: u32 = 0x48;
    pub const MTRR_CAP: u32 = 0xFE;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const DEBUGCTL: u32 = 0x1D9;
    pub const MTRR_VARIABLE_FIRST: u32 = 0x200;
    pub const MTRR_VARIABLE_LAST: u32 = 0x21F;
    pub const PAT: u32 = 0x277;
    pub const MTRR_DEF_TYPE: u32 = 0x2FF;
    pub const X2APIC_FIRST: u32 = 0x800;
    pub const X2APIC_LAST: u32 = 0x8FF;
    pub const EFER: u32 = 0xC000_0080;
    pub const STAR: u32 = 0xC000_0081;
    pub const SFMASK: u32 = 0xC000_0084;
    pub const FS_BASE: u32 = 0xC000_0100;
    pub const KERNEL_GS_BASE: u32 = 0xC000_0102;
    pub const TSC_AUX: u32 = 0xC000_0103;
    pub const TSC_RATIO: u32 = 0xC000_0104;
    pub const SYSCFG: u32 = 0xC001_0010;
    pub const HWCR: u32 = 0xC001_0015;
    pub const VM_CR: u32 = 0xC001_0114;
    pub const VM_HSAVE_PA: u32 = 0xC001_0117;
    pub const SEV_STATUS: u32 = 0xC001_0131;
    pub const SVSM_CAA: u32 = abi::hw::discovery::MSR_SVSM_CAA;
}

/// EFER bits.
pub mod efer {
    pub const SCE: u64 = 1 << 0;
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
    pub const NXE: u64 = 1 << 11;
    pub const SVME: u64 = abi::hw::EFER_SVME;
    pub const FFXSR: u64 = 1 << 14;
    /// What a guest may set; any other bit is reserved (the set QEMU's VMRUN accepts).
    pub const WRITABLE: u64 = SCE | LME | LMA | NXE | SVME | FFXSR;
}

/// CR0.PG: LME may not change while paging is on.
const CR0_PG: u64 = 1 << 31;

/// What an access in one direction does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The guest reaches its own copy of the register; no exit.
    Pass,
    /// The access exits and the SVSM answers it ([`on_exit`]).
    Emulate,
    /// The access exits and the guest gets #GP(0).
    Refuse,
}

/// The policy for the MSRs `first..=last`.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub first: u32,
    pub last: u32,
    pub name: &'static str,
    pub read: Action,
    pub write: Action,
    pub why: &'static str,
}

use Action::{Emulate, Pass, Refuse};

const fn rule(first: u32, last: u32, name: &'static str, read: Action, write: Action, why: &'static str) -> Rule {
    Rule { first, last, name, read, write, why }
}

const SWITCHED: &str = "the guest's own: VMSAVE/VMLOAD around VMRUN switch it with the SVSM's";
const PHYSICAL: &str = "the physical CPU's, not switched: the guest would share it with the SVSM";

/// The policy. Ranges do not overlap; an MSR outside all of them follows [`OTHERS`].
pub const RULES: &[Rule] = &[
    // Passed: the hardware switches the guest's copy.
    rule(index::SYSENTER_CS, index::SYSENTER_EIP, "SYSENTER_CS/ESP/EIP", Pass, Pass, SWITCHED),
    rule(index::STAR, index::SFMASK, "STAR/LSTAR/CSTAR/SFMASK", Pass, Pass, SWITCHED),
    rule(index::FS_BASE, index::KERNEL_GS_BASE, "FS_BASE/GS_BASE/KERNEL_GS_BASE", Pass, Pass, SWITCHED),
    rule(
        index::EFER,
        index::EFER,
        "EFER",
        Pass,
        Emulate,
        "VMRUN loads the guest's and #VMEXIT restores the SVSM's, so reads pass; writes are checked as \
         the CPU checks them, and SVME must stay set (VMRUN refuses a guest without it, and QEMU \
         raises #UD on VMMCALL while it is clear: the guest would lose the SVSM)",
    ),
    // Emulated.
    rule(
        index::PAT,
        index::PAT,
        "PAT",
        Emulate,
        Emulate,
        "with nested paging the guest's PAT is the VMCB's G_PAT, but QEMU's VMRUN does not switch the \
         PAT register: the SVSM reads and writes G_PAT, refusing reserved memory types as the CPU does",
    ),
    rule(
        index::TSC,
        index::TSC,
        "TSC",
        Emulate,
        Refuse,
        "a read gives what RDTSC gives the guest (QEMU's TCG reads the MSR as 0); a write would move the \
         TSC the SVSM keeps time with",
    ),
    rule(
        index::MTRR_CAP,
        index::MTRR_CAP,
        "MTRRcap",
        Emulate,
        Refuse,
        "read as 0 (no variable or fixed ranges, no WC): the MTRRs are the physical CPU's and set memory \
         types for all memory, the SVSM's included; read-only on hardware too",
    ),
    rule(
        index::MTRR_DEF_TYPE,
        index::MTRR_DEF_TYPE,
        "MTRRdefType",
        Emulate,
        Refuse,
        "read as 0 (MTRRs disabled), so a guest that reads it at boot (Linux: get_mtrr_state) leaves the \
         MTRRs alone; writes would reach the physical CPU's",
    ),
    rule(
        index::SVSM_CAA,
        index::SVSM_CAA,
        "SVSM_CAA",
        Emulate,
        Refuse,
        "spec 58019 section 4.2: a read gives the vCPU's calling-area gpa; outside the permission map, \
         so every access exits",
    ),
    // Refused: named for their reasons (everything else is refused too).
    rule(
        index::VM_HSAVE_PA,
        index::VM_HSAVE_PA,
        "VM_HSAVE_PA",
        Refuse,
        Refuse,
        "the SVSM's host save area: the next #VMEXIT reloads the SVSM's state from where it points",
    ),
    rule(index::VM_CR, index::VM_CR, "VM_CR", Refuse, Refuse, "SVM's disable and lock bits: the SVSM's"),
    rule(
        index::SYSCFG,
        index::SYSCFG,
        "SYSCFG",
        Refuse,
        Refuse,
        "memory encryption, SNP and MTRR controls of the whole machine",
    ),
    rule(index::HWCR, index::HWCR, "HWCR", Refuse, Refuse, PHYSICAL),
    rule(
        index::APIC_BASE,
        index::APIC_BASE,
        "APIC_BASE",
        Refuse,
        Refuse,
        "the physical local APIC, the SVSM's (kicks, wake-ups): moving it or switching it to x2APIC \
         mode would take it from the SVSM; the guest has no APIC of its own here",
    ),
    rule(
        index::X2APIC_FIRST,
        index::X2APIC_LAST,
        "x2APIC",
        Refuse,
        Refuse,
        "the physical APIC's registers: the ICR sends IPIs (INIT, SIPI) to the SVSM's CPUs",
    ),
    rule(
        index::MTRR_VARIABLE_FIRST,
        index::MTRR_VARIABLE_LAST,
        "MTRRphysBase/Mask",
        Refuse,
        Refuse,
        "physical memory types, the SVSM's memory included (MTRRcap says there are none)",
    ),
    rule(index::TSC_AUX, index::TSC_AUX, "TSC_AUX", Refuse, Refuse, PHYSICAL),
    rule(index::TSC_RATIO, index::TSC_RATIO, "TSC_RATIO", Refuse, Refuse, PHYSICAL),
    rule(
        index::DEBUGCTL,
        index::DEBUGCTL,
        "DEBUGCTL",
        Refuse,
        Refuse,
        "switched only with LBR virtualization, which the SVSM does not enable",
    ),
    rule(
        index::SPEC_CTRL,
        index::SPEC_CTRL,
        "SPEC_CTRL",
        Refuse,
        Refuse,
        "switched only with the VMCB's SPEC_CTRL field, which the SVSM does not use",
    ),
    rule(
        index::SEV_STATUS,
        index::SEV_STATUS,
        "SEV_STATUS",
        Refuse,
        Refuse,
        "no SEV here; CPUID 0x8000_001F announces none",
    ),
];

/// Every MSR [`RULES`] does not name.
pub const OTHERS: Rule = rule(0, u32::MAX, "other", Refuse, Refuse, "not the guest's unless named: refused");

/// The rule for `msr`.
pub fn rule_for(msr: u32) -> &'static Rule {
    RULES.iter().find(|r| (r.first..=r.last).contains(&msr)).unwrap_or(&OTHERS)
}

/// One intercepted RDMSR or WRMSR (with the value EDX:EAX).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write(u64),
}

impl Access {
    /// The action the policy gives this access to `msr`.
    pub fn action(self, msr: u32) -> Action {
        let r = rule_for(msr);
        match self {
            Access::Read => r.read,
            Access::Write(_) => r.write,
        }
    }
}

/// The guest state an emulated MSR reads or changes: the SVSM copies it out of the vCPU
/// and writes back `efer` and `pat` after a write succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestState {
    pub efer: u64,
    pub cr0: u64,
    /// The VMCB's G_PAT.
    pub pat: u64,
    /// The vCPU's calling area (0 if it has none).
    pub calling_area: u64,
    /// What RDTSC gives the guest now (the TSC plus the VMCB's TSC offset).
    pub tsc: u64,
}

/// An access the SVSM answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// RDMSR: the value for EDX:EAX.
    Read(u64),
    /// WRMSR: the state changed.
    Written,
}

/// Why the guest gets #GP(0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The MSR, in this direction, is not the guest's.
    NotTheGuests,
    /// A value the CPU itself refuses: a reserved bit or memory type, LME changed while
    /// paging is on.
    InvalidValue,
    /// A write that clears EFER.SVME.
    SvmeRequired,
    /// An exit for an access the policy passes: the map in force is not this policy's.
    NotIntercepted,
}

/// What an intercepted access to `msr` does: the answer, or why the guest gets #GP(0).
/// On a refusal `state` is unchanged.
pub fn on_exit(msr: u32, access: Access, state: &mut GuestState) -> Result<Answer, Refusal> {
    match access.action(msr) {
        Refuse => Err(Refusal::NotTheGuests),
        Pass => Err(Refusal::NotIntercepted),
        Emulate => emulate(msr, access, state),
    }
}

fn emulate(msr: u32, access: Access, s: &mut GuestState) -> Result<Answer, Refusal> {
    match (msr, access) {
        (index::SVSM_CAA, Access::Read) => Ok(Answer::Read(s.calling_area)),
        (index::TSC, Access::Read) => Ok(Answer::Read(s.tsc)),
        (index::MTRR_CAP | index::MTRR_DEF_TYPE, Access::Read) => Ok(Answer::Read(0)),
        (index::PAT, Access::Read) => Ok(Answer::Read(s.pat)),
        (index::PAT, Access::Write(v)) => {
            if !pat_valid(v) {
                return Err(Refusal::InvalidValue);
            }
            s.pat = v;
            Ok(Answer::Written)
        }
        (index::EFER, Access::Write(v)) => {
            s.efer = efer_after_write(s.efer, s.cr0, v)?;
            Ok(Answer::Written)
        }
        // A rule says Emulate but nothing here answers it: refused (a test keeps this empty).
        _ => Err(Refusal::NotTheGuests),
    }
}

/// Every PAT entry holds a defined memory type: UC 0, WC 1, WT 4, WP 5, WB 6, UC- 7
/// (2, 3 and 8..255 are reserved and WRMSR raises #GP).
pub fn pat_valid(pat: u64) -> bool {
    pat.to_le_bytes().iter().all(|t| matches!(t, 0 | 1 | 4..=7))
}

/// EFER after the guest writes `new` over `current` (CR0 = `cr0`), as the CPU does it:
/// reserved bits and a change of LME while paging is on are refused, LMA is the CPU's
/// and keeps its value; and SVME must stay set.
pub fn efer_after_write(current: u64, cr0: u64, new: u64) -> Result<u64, Refusal> {
    if new & !efer::WRITABLE != 0 {
        return Err(Refusal::InvalidValue);
    }
    if cr0 & CR0_PG != 0 && (new ^ current) & efer::LME != 0 {
        return Err(Refusal::InvalidValue);
    }
    if new & efer::SVME == 0 {
        return Err(Refusal::SvmeRequired);
    }
    Ok(new & !efer::LMA | current & efer::LMA)
}

#[cfg(test)]
mod tests;
