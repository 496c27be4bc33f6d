//! The exit policy: what each #VMEXIT of a guest vCPU means (docs/platforms/svm.md).
//!
//! - VMMCALL: the call gate. RIP is advanced by hand (no nRIP-save under TCG), then the
//!   kernel serves the call exactly as on SNP. RAX = [`BARE_GATE_RAX`] is answered
//!   without dispatch: the platform's round-trip floor, for the benchmark.
//! - CPUID: answered by the CPU, with 0x8000_001F EAX[28] set (an SVSM is present).
//! - RDMSR/WRMSR: the MSR policy (`msr`): emulated or refused with #GP(0).
//! - I/O: every port the map intercepts is the SVSM's (`iopm`): refused with #GP(0).
//! - Nested page fault: the guest touched memory it has not validated, or SVSM memory:
//!   logged, refused with #GP(0); the SVSM keeps serving. The same access refused
//!   endlessly breaks the vCPU (`run::SAME_REFUSAL_LIMIT`).
//! - VMRUN, VMLOAD, VMSAVE, STGI, CLGI, SKINIT, INVLPGA, INVD, XSETBV: #UD (CPUID hides
//!   XSAVE: XCR0 is not switched between the vCPUs of a CPU).
//! - HLT: a yield to the next vCPU of the same CPU (the guest has no interrupts to wait
//!   for); with no other vCPU there, the guest goes on at once.
//! - NMI: a kick from another CPU (`hw::SvmHw::kick`): the vCPU comes back to the SVSM.
//! - INTR: a physical interrupt, the SVSM's own (its local-APIC timer, a wake-up IPI); it
//!   is taken once the guest is out. The guest runs on at once, unless the CPU has
//!   something to look at between its guest's exits (a live migration on CPU 0), or
//!   other vCPUs share the CPU: then the vCPU yields, and the timer, kept running while
//!   they do, gives each a turn of at most 10 ms, so a vCPU that spins without exits
//!   (on a lock its neighbour holds, say) cannot keep its neighbour off the CPU.
//! - SHUTDOWN or a state VMRUN refuses: the vCPU is broken. The startup vCPU ends the
//!   run; any other is stopped and the SVSM serves the rest.
//! - Anything else is an exit the SVSM never asked for: treated as broken too.
//!
//! [`classify`] is that table; the exit code and its information come from the CPU (or
//! from a host that forges them: every value classifies).

use crate::iopm::IoExit;
use abi::vmcb::exit;

/// RAX of a VMMCALL the SVSM answers without dispatch (benchmark of the bare gate).
pub const BARE_GATE_RAX: u64 = 0xB1AE_0000_0000_0000;

/// Lengths of the instructions whose exits the SVSM steps over.
pub const VMMCALL_LEN: u64 = 3;
pub const HLT_LEN: u64 = 1;

/// Instructions the guest may not execute: all of SVM's (VMMCALL is the call gate), and
/// INVD (it would throw away dirty cache lines of memory that is not the guest's), and
/// XSETBV (XCR0 is shared by the vCPUs of a CPU; CPUID does not offer XSAVE).
pub const UNDEFINED: [u64; 9] = [
    exit::VMRUN,
    exit::VMLOAD,
    exit::VMSAVE,
    exit::STGI,
    exit::CLGI,
    exit::SKINIT,
    exit::INVLPGA,
    exit::INVD,
    exit::XSETBV,
];

/// What an exit asks of the SVSM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// VMMCALL with the bare-gate RAX: step over it, nothing else.
    BareGate,
    /// VMMCALL: step over it and serve the call through the kernel.
    Call,
    /// CPUID: answer it and step over it.
    Cpuid,
    /// RDMSR (or, if `write`, WRMSR): the MSR policy.
    Msr { write: bool },
    /// IN/OUT/INS/OUTS to a port the map intercepts: #GP(0).
    Io(IoExit),
    /// The guest reached a gpa nested paging does not map (or not that way): #GP(0).
    NestedFault { gpa: u64, error: u64 },
    /// HLT: step over it and yield.
    Halt,
    /// An NMI: another CPU kicked this one.
    Kicked,
    /// A physical interrupt (the SVSM's timer or a wake-up IPI).
    Interrupted,
    /// An instruction that does not exist for the guest: #UD.
    Undefined,
    /// The vCPU cannot go on (`why` says how it broke).
    Broken(&'static str),
}

/// What exit `code` with `info1`/`info2` asks for; `rax` is the guest's RAX (the bare
/// gate's marker).
pub fn classify(code: u64, info1: u64, info2: u64, rax: u64) -> Action {
    match code {
        exit::VMMCALL if rax == BARE_GATE_RAX => Action::BareGate,
        exit::VMMCALL => Action::Call,
        exit::CPUID => Action::Cpuid,
        // EXITINFO1 is 0 for RDMSR and 1 for WRMSR (APM vol. 2, 15.11); only 1 writes, so
        // a forged value can at most read.
        exit::MSR => Action::Msr { write: info1 == 1 },
        exit::IOIO => Action::Io(IoExit::decode(info1)),
        exit::NPF => Action::NestedFault { gpa: info2, error: info1 },
        exit::HLT => Action::Halt,
        exit::NMI => Action::Kicked,
        exit::INTR => Action::Interrupted,
        exit::SHUTDOWN => Action::Broken("shut down (triple fault)"),
        exit::INVALID => Action::Broken("has a state VMRUN refuses"),
        c if UNDEFINED.contains(&c) => Action::Undefined,
        _ => Action::Broken("made an exit the SVSM never asked for"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::vmcb::exit;

    #[test]
    fn each_intercept_has_its_action() {
        let c = |code, info1, info2| classify(code, info1, info2, 0);
        assert_eq!(c(exit::VMMCALL, 0, 0), Action::Call);
        assert_eq!(classify(exit::VMMCALL, 0, 0, BARE_GATE_RAX), Action::BareGate);
        assert_eq!(c(exit::CPUID, 0, 0), Action::Cpuid);
        assert_eq!(c(exit::MSR, 0, 0), Action::Msr { write: false });
        assert_eq!(c(exit::MSR, 1, 0), Action::Msr { write: true });
        assert_eq!(c(exit::IOIO, 0xCF8 << 16 | 1 << 4, 0), Action::Io(IoExit::decode(0xCF8 << 16 | 1 << 4)));
        assert_eq!(c(exit::NPF, 0b110, 0x100_0000), Action::NestedFault { gpa: 0x100_0000, error: 0b110 });
        assert_eq!(c(exit::HLT, 0, 0), Action::Halt);
        assert_eq!(c(exit::NMI, 0, 0), Action::Kicked);
        assert_eq!(c(exit::INTR, 0, 0), Action::Interrupted);
        assert!(matches!(c(exit::SHUTDOWN, 0, 0), Action::Broken(_)));
        assert!(matches!(c(exit::INVALID, 0, 0), Action::Broken(_)));
        for code in UNDEFINED {
            assert_eq!(c(code, 0, 0), Action::Undefined, "{code:#x}");
        }
    }

    /// The bare gate is a VMMCALL marker only: the same RAX on any other exit means
    /// nothing.
    #[test]
    fn the_bare_gate_is_only_a_vmmcall() {
        assert_eq!(classify(exit::CPUID, 0, 0, BARE_GATE_RAX), Action::Cpuid);
        assert_eq!(classify(exit::HLT, 0, 0, BARE_GATE_RAX), Action::Halt);
        assert_eq!(classify(exit::VMMCALL, 0, 0, BARE_GATE_RAX + 1), Action::Call);
    }

    /// Exits the SVSM never intercepts (SMI, INIT, exceptions, CR and DR accesses,
    /// VMGEXIT, codes past the APM's list, negative codes other than INVALID) stop the
    /// vCPU instead of being served.
    #[test]
    fn unknown_and_forged_exits_break_the_vcpu() {
        for code in [0x00, 0x0E, 0x40, 0x5E, 0x62, 0x73, 0x7D, 0x7E, 0x8F, 0x401, 0x403, 0x1000, u64::MAX - 1, 1 << 63]
        {
            assert!(matches!(classify(code, u64::MAX, u64::MAX, 0), Action::Broken(_)), "{code:#x}");
        }
        // An MSR exit that is neither RDMSR's nor WRMSR's reads: it can never write.
        assert_eq!(classify(exit::MSR, 2, 0, 0), Action::Msr { write: false });
        assert_eq!(classify(exit::MSR, u64::MAX, 0, 0), Action::Msr { write: false });
    }

    #[test]
    fn hostile_information_classifies() {
        for (i1, i2) in [(0, 0), (u64::MAX, u64::MAX), (1 << 63, 1), (0xFFFF_FFFF, 0)] {
            for code in [exit::IOIO, exit::NPF, exit::VMMCALL, exit::HLT] {
                let _ = classify(code, i1, i2, i1);
            }
        }
        assert_eq!(classify(exit::NPF, u64::MAX, u64::MAX, 0), Action::NestedFault { gpa: u64::MAX, error: u64::MAX });
    }
}
