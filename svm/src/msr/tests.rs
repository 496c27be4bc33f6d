use super::*;
use std::vec::Vec;

/// The launch state of a 64-bit vCPU on this platform: EFER LME|LMA|SVME, paging on, the
/// reset PAT.
fn long_mode() -> GuestState {
    GuestState {
        efer: efer::LME | efer::LMA | efer::SVME,
        cr0: 0x8001_0033,
        pat: 0x0007_0406_0007_0406,
        calling_area: 0x9000,
        tsc: 123_456,
    }
}

/// Linux's PAT: WB WC UC- UC WB WP UC- WT (arch/x86/mm/pat/memtype.c, pat_bp_init),
/// written on every CPU by pat_cpu_init.
const LINUX_PAT: u64 = 0x0407_0506_0007_0106;

#[test]
fn rules_do_not_overlap_and_are_ordered_ranges() {
    for (i, a) in RULES.iter().enumerate() {
        assert!(a.first <= a.last, "{}", a.name);
        for b in &RULES[i + 1..] {
            assert!(a.last < b.first || b.last < a.first, "{} overlaps {}", a.name, b.name);
        }
    }
}

/// A pass is only real inside the permission map: outside it every access exits.
#[test]
fn every_passed_msr_is_inside_the_permission_map() {
    for r in RULES.iter().filter(|r| r.read == Pass || r.write == Pass) {
        for msr in r.first..=r.last {
            assert!(crate::msrpm::position(msr, false).is_some(), "{} ({msr:#x})", r.name);
        }
    }
}

/// Every access the policy says the SVSM emulates is answered (with a value the CPU
/// accepts), never refused for want of an emulation.
#[test]
fn every_emulated_access_is_answered() {
    for r in RULES {
        for msr in r.first..=r.last {
            let mut s = long_mode();
            let valid = match msr {
                index::PAT => s.pat,
                _ => s.efer,
            };
            for access in [Access::Read, Access::Write(valid)] {
                if access.action(msr) == Emulate {
                    assert!(on_exit(msr, access, &mut s).is_ok(), "{} {access:?}", r.name);
                }
            }
        }
    }
}

/// Only the MSRs VMRUN/#VMEXIT or VMSAVE/VMLOAD switch pass, and only those directions.
#[test]
fn exactly_the_switched_msrs_pass() {
    let mut passed: Vec<(u32, bool, bool)> = RULES
        .iter()
        .flat_map(|r| (r.first..=r.last).map(move |msr| (msr, r.read == Pass, r.write == Pass)))
        .filter(|(_, read, write)| *read || *write)
        .collect();
    passed.sort_unstable();
    let expected = [
        (0x174, true, true),
        (0x175, true, true),
        (0x176, true, true),
        (0xC000_0080, true, false), // EFER: reads only
        (0xC000_0081, true, true),
        (0xC000_0082, true, true),
        (0xC000_0083, true, true),
        (0xC000_0084, true, true),
        (0xC000_0100, true, true),
        (0xC000_0101, true, true),
        (0xC000_0102, true, true),
    ];
    assert_eq!(passed, expected);
}

/// The MSRs a guest could take the SVSM's CPU with are refused both ways, and the
/// state is untouched.
#[test]
fn the_svsms_msrs_are_refused() {
    let dangerous = [
        index::VM_HSAVE_PA,
        index::APIC_BASE,
        0x830, // x2APIC ICR
        index::X2APIC_FIRST,
        index::X2APIC_LAST,
        index::SYSCFG,
        index::VM_CR,
        index::HWCR,
        index::TSC_RATIO,
        index::TSC_AUX,
        index::DEBUGCTL,
        index::SPEC_CTRL,
        index::MTRR_VARIABLE_FIRST,
        index::MTRR_VARIABLE_LAST,
        0x250, // MTRRfix64K_00000
        index::SEV_STATUS,
    ];
    for msr in dangerous {
        for access in [Access::Read, Access::Write(0), Access::Write(u64::MAX)] {
            let mut s = long_mode();
            assert_eq!(on_exit(msr, access, &mut s), Err(Refusal::NotTheGuests), "{msr:#x} {access:?}");
            assert_eq!(s, long_mode());
        }
    }
}

/// MSRs nobody named, at the edges of the map's ranges and beyond: refused.
#[test]
fn unnamed_msrs_are_refused() {
    for msr in [0x1FFF, 0x2000, 0xC000_0000, 0xC000_1FFF, 0xC001_0000, 0xC001_1FFF, 0xC001_2000, 0x4000_0000, u32::MAX]
    {
        assert_eq!(rule_for(msr).name, "other", "{msr:#x}");
        assert_eq!(on_exit(msr, Access::Read, &mut long_mode()), Err(Refusal::NotTheGuests));
        assert_eq!(on_exit(msr, Access::Write(0), &mut long_mode()), Err(Refusal::NotTheGuests));
    }
}

/// An exit for a passed access means the map in force is not the policy: refused, and
/// said so.
#[test]
fn an_exit_for_a_passed_access_is_refused() {
    let mut s = long_mode();
    assert_eq!(on_exit(index::FS_BASE, Access::Write(1), &mut s), Err(Refusal::NotIntercepted));
    assert_eq!(on_exit(index::EFER, Access::Read, &mut s), Err(Refusal::NotIntercepted));
    assert_eq!(s, long_mode());
}

/// Spec 58019 section 4.2: RDMSR 0xC001_F000 gives the calling area; it is read-only.
#[test]
fn the_discovery_msr_reads_the_calling_area() {
    let mut s = long_mode();
    assert_eq!(on_exit(index::SVSM_CAA, Access::Read, &mut s), Ok(Answer::Read(0x9000)));
    assert_eq!(on_exit(index::SVSM_CAA, Access::Write(0x5000), &mut s), Err(Refusal::NotTheGuests));
    assert_eq!(s.calling_area, 0x9000);
}

#[test]
fn the_tsc_reads_as_rdtsc_and_is_not_written() {
    let mut s = long_mode();
    assert_eq!(on_exit(index::TSC, Access::Read, &mut s), Ok(Answer::Read(123_456)));
    assert_eq!(on_exit(index::TSC, Access::Write(0), &mut s), Err(Refusal::NotTheGuests));
}

/// Linux reads MTRRcap and MTRRdefType at boot (arch/x86/kernel/cpu/mtrr/generic.c,
/// get_mtrr_state): no ranges (so it reads no range registers) and disabled.
#[test]
fn the_mtrrs_read_as_none_and_disabled() {
    let mut s = long_mode();
    for msr in [index::MTRR_CAP, index::MTRR_DEF_TYPE] {
        assert_eq!(on_exit(msr, Access::Read, &mut s), Ok(Answer::Read(0)));
        assert_eq!(on_exit(msr, Access::Write(0), &mut s), Err(Refusal::NotTheGuests));
    }
}

#[test]
fn pat_is_the_guests_g_pat() {
    let mut s = long_mode();
    assert_eq!(on_exit(index::PAT, Access::Read, &mut s), Ok(Answer::Read(0x0007_0406_0007_0406)));
    assert_eq!(on_exit(index::PAT, Access::Write(LINUX_PAT), &mut s), Ok(Answer::Written));
    assert_eq!(s.pat, LINUX_PAT);
    assert_eq!(on_exit(index::PAT, Access::Read, &mut s), Ok(Answer::Read(LINUX_PAT)));
}

/// Types 2, 3 and 8..255 are reserved in any entry: #GP, PAT unchanged.
#[test]
fn pat_with_a_reserved_type_is_refused() {
    for entry in 0..8 {
        for bad in [2u64, 3, 8, 0xFF] {
            let value = LINUX_PAT & !(0xFF << (entry * 8)) | bad << (entry * 8);
            let mut s = long_mode();
            assert_eq!(on_exit(index::PAT, Access::Write(value), &mut s), Err(Refusal::InvalidValue), "{value:#x}");
            assert_eq!(s, long_mode());
        }
    }
    assert!(pat_valid(0) && pat_valid(0x0707_0707_0707_0707) && pat_valid(LINUX_PAT));
}

/// Linux in long mode sets SCE and NXE with a read-modify-write of EFER
/// (arch/x86/kernel/head_64.S, secondary_startup_64).
#[test]
fn efer_read_modify_write_in_long_mode() {
    let mut s = long_mode();
    let want = s.efer | efer::SCE | efer::NXE;
    assert_eq!(on_exit(index::EFER, Access::Write(want), &mut s), Ok(Answer::Written));
    assert_eq!(s.efer, want);
}

/// A Linux AP starts in its real-mode trampoline and writes the boot CPU's EFER (which
/// it read with SVME set) without LMA, LME included, before it turns paging on
/// (arch/x86/realmode/init.c, setup_real_mode; arch/x86/realmode/rm/trampoline_64.S).
#[test]
fn efer_lme_set_before_paging() {
    let mut s = GuestState { efer: efer::SVME, cr0: 0x11, ..long_mode() };
    let bsp = efer::SCE | efer::LME | efer::LMA | efer::NXE | efer::SVME;
    assert_eq!(on_exit(index::EFER, Access::Write(bsp & !efer::LMA), &mut s), Ok(Answer::Written));
    assert_eq!(s.efer, efer::SCE | efer::LME | efer::NXE | efer::SVME);
}

/// LMA is the CPU's: a written LMA is ignored either way.
#[test]
fn efer_lma_keeps_its_value() {
    assert_eq!(
        efer_after_write(efer::LME | efer::LMA | efer::SVME, 1 << 31, efer::LME | efer::SVME),
        Ok(efer::LME | efer::LMA | efer::SVME)
    );
    assert_eq!(efer_after_write(efer::SVME, 0, efer::LMA | efer::SVME), Ok(efer::SVME));
}

#[test]
fn efer_reserved_bits_are_refused() {
    for bit in [1, 2, 7, 9, 13, 15, 16, 17, 21, 32, 63] {
        let mut s = long_mode();
        let value = s.efer | 1 << bit;
        assert_eq!(on_exit(index::EFER, Access::Write(value), &mut s), Err(Refusal::InvalidValue), "bit {bit}");
        assert_eq!(s, long_mode());
    }
}

/// Changing LME while paging is on raises #GP on the CPU (APM vol. 2, 14.6.1).
#[test]
fn efer_lme_change_under_paging_is_refused() {
    let mut s = long_mode();
    assert_eq!(on_exit(index::EFER, Access::Write(efer::SVME), &mut s), Err(Refusal::InvalidValue));
    let mut legacy = GuestState { efer: efer::SVME, cr0: 0x8000_0011, ..long_mode() };
    assert_eq!(on_exit(index::EFER, Access::Write(efer::LME | efer::SVME), &mut legacy), Err(Refusal::InvalidValue));
    assert_eq!(legacy.efer, efer::SVME);
}

/// VMRUN refuses a guest without EFER.SVME, and QEMU raises #UD on VMMCALL while it is
/// clear: the guest would cut itself off from the SVSM.
#[test]
fn efer_svme_stays_set() {
    let mut s = long_mode();
    let cleared = s.efer & !efer::SVME;
    assert_eq!(on_exit(index::EFER, Access::Write(cleared), &mut s), Err(Refusal::SvmeRequired));
    assert_eq!(s, long_mode());
}
