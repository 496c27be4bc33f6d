//! QEMU/KVM's rules for the VMSA of an SEV-SNP launch from an IGVM file. QEMU does not
//! hand KVM the file's VMSA: it loads some of its registers into the vCPU, KVM rebuilds
//! the VMSA from the vCPU at SNP_LAUNCH_FINISH and measures that one. A file whose VMSA is
//! not what KVM rebuilds launches into another state than the file says, under another
//! measurement, or not at all; `bulwark igvm measure` refuses it rather than predict a
//! digest no launch gives.
//!
//! Sources: COCONUT's igvmmeasure `--check-kvm` (`check_vmsa` and the order checks in
//! tools/igvmmeasure/src/igvm_measure.rs); QEMU's `check_vmsa_supported` and
//! `sev_apply_cpu_context` (target/i386/sev.c); KVM's `kvm_is_valid_sregs`,
//! `__kvm_set_xcr` (arch/x86/kvm/x86.c), `svm_set_efer`, `svm_set_cr4`
//! (arch/x86/kvm/svm/svm.c) and `sev_es_sync_vmsa` (arch/x86/kvm/svm/sev.c).

use attest::launch_digest::VMSA_GPA;
use igvm::snp_defs::{SevFeatures, SevSelector, SevVmsa};
use zerocopy::IntoBytes;

const CR0_PG: u64 = 1 << 31;
const CR4_MCE: u64 = 1 << 6;
const EFER_LMA: u64 = 1 << 10;
const EFER_SVME: u64 = 1 << 12;
/// VMSA segment attribute bit 9: descriptor bit 53, L (64-bit code).
const ATTRIB_L: u16 = 1 << 9;
/// DR7 bit 10 reads as one; KVM refuses any other bit at launch.
const DR7_FIXED_1: u64 = 0x400;

fn refuse(rule: &str) -> Result<(), String> {
    Err(format!("QEMU/KVM would not launch this file as it says: {rule}"))
}

/// Check the SNP VMSA of `vp_index` at `gpa`.
pub fn check_vmsa(gpa: u64, vp_index: u16, v: &SevVmsa) -> Result<(), String> {
    if gpa != VMSA_GPA {
        return refuse(&format!(
            "the VMSA is at {gpa:#x}; KVM puts the boot vCPU's VMSA at {VMSA_GPA:#x} and measures it there, and \
             QEMU refuses any other address (check_vmsa_supported)"
        ));
    }
    if vp_index != 0 {
        return refuse(&format!(
            "the VMSA is vCPU {vp_index}'s; QEMU/KVM take a VMSA from the file for the boot vCPU (0) only"
        ));
    }
    if v.cr0 != 0x31 && v.cr0 != 0x30 {
        return refuse(&format!(
            "CR0 is {:#x}; KVM keeps only 0x31 (protected mode) or 0x30 (real mode) in the VMSA it measures \
             (igvmmeasure --check-kvm): start in 32-bit mode and turn paging on in the image",
            v.cr0
        ));
    }
    check_mode(v)?;
    check_segments(v)?;
    check_copied_fields(v)
}

/// QEMU carries a segment's attributes to KVM in 12 bits (FLAGS_VMSA_TO_SEGCACHE in
/// target/i386/sev.c), and only the base and limit of GDTR and IDTR (KVM's svm_set_gdt
/// and svm_set_idt write nothing else into the VMSA).
fn check_segments(v: &SevVmsa) -> Result<(), String> {
    let segments = [("ES", v.es), ("CS", v.cs), ("SS", v.ss), ("DS", v.ds), ("FS", v.fs), ("GS", v.gs)];
    for (name, s) in segments.into_iter().chain([("LDTR", v.ldtr), ("TR", v.tr)]) {
        if s.attrib & 0xF000 != 0 {
            return refuse(&format!(
                "{name}'s attributes are {:#x}; QEMU passes bits 0..11 only (FLAGS_VMSA_TO_SEGCACHE)",
                s.attrib
            ));
        }
    }
    for (name, t) in [("GDTR", v.gdtr), ("IDTR", v.idtr)] {
        if t.selector != 0 || t.attrib != 0 {
            return refuse(&format!("{name} has a selector or attributes; QEMU/KVM pass its base and limit only"));
        }
    }
    Ok(())
}

/// The registers QEMU does copy, where KVM changes or refuses them.
fn check_mode(v: &SevVmsa) -> Result<(), String> {
    if v.efer & EFER_SVME == 0 {
        return refuse(&format!(
            "EFER is {:#x} without SVME; KVM sets EFER.SVME in every SEV-ES/SNP VMSA (svm_set_efer)",
            v.efer
        ));
    }
    if v.cr0 & CR0_PG == 0 && v.efer & EFER_LMA != 0 {
        return refuse(&format!(
            "EFER is {:#x} with LMA while paging is off; KVM refuses the registers (kvm_is_valid_sregs)",
            v.efer
        ));
    }
    if v.cr0 & CR0_PG == 0 && v.cs.attrib & ATTRIB_L != 0 {
        return refuse("CS is a 64-bit code segment while paging is off; KVM refuses it (kvm_is_valid_sregs)");
    }
    if v.cr4 & CR4_MCE == 0 {
        return refuse(&format!(
            "CR4 is {:#x} without MCE; KVM adds the host's CR4.MCE to the VMSA it measures (svm_set_cr4)",
            v.cr4
        ));
    }
    if v.xcr0 & 1 == 0 {
        return refuse(&format!("XCR0 is {:#x} without x87; KVM refuses it (__kvm_set_xcr)", v.xcr0));
    }
    if v.dr7 & !DR7_FIXED_1 != 0 {
        return refuse(&format!("DR7 is {:#x}; KVM refuses a launch VMSA with breakpoints (sev_es_sync_vmsa)", v.dr7));
    }
    if v.sev_features.into_bits() != 1 {
        return refuse(&format!(
            "SEV_FEATURES is {:#x}; QEMU takes SNP_ACTIVE (0x1) alone in an IGVM VMSA (check_vmsa_supported)",
            v.sev_features.into_bits()
        ));
    }
    Ok(())
}

/// Every field QEMU does not copy into KVM's vCPU must be zero (check_vmsa_supported).
fn check_copied_fields(v: &SevVmsa) -> Result<(), String> {
    let mut rest = *v;
    let none = SevSelector { selector: 0, attrib: 0, limit: 0, base: 0 };
    (rest.es, rest.cs, rest.ss, rest.ds, rest.fs, rest.gs) = (none, none, none, none, none, none);
    (rest.gdtr, rest.idtr, rest.ldtr, rest.tr) = (none, none, none, none);
    (rest.efer, rest.cr0, rest.cr3, rest.cr4, rest.dr6, rest.dr7) = (0, 0, 0, 0, 0, 0);
    (rest.rax, rest.rcx, rest.rdx, rest.rbx, rest.rsp, rest.rbp, rest.rsi, rest.rdi) = (0, 0, 0, 0, 0, 0, 0, 0);
    (rest.r8, rest.r9, rest.r10, rest.r11, rest.r12, rest.r13, rest.r14, rest.r15) = (0, 0, 0, 0, 0, 0, 0, 0);
    (rest.rip, rest.rflags, rest.pat, rest.xcr0, rest.x87_fcw, rest.mxcsr) = (0, 0, 0, 0, 0, 0);
    rest.sev_features = SevFeatures::new();
    match rest.as_bytes().iter().position(|b| *b != 0) {
        None => Ok(()),
        Some(offset) => refuse(&format!(
            "the VMSA sets a field at offset {offset:#x} that QEMU does not hand to KVM (check_vmsa_supported \
             allows segments, descriptor tables, EFER, CR0/3/4, DR6/7, the general registers, RIP, RFLAGS, PAT, \
             XCR0, x87 FCW, MXCSR and SEV_FEATURES)"
        )),
    }
}

/// A second SNP VMSA.
pub fn second_vmsa(vp_index: u16) -> String {
    format!(
        "QEMU/KVM would not launch this file as it says: it has a second VMSA (vCPU {vp_index}); QEMU/KVM take one \
         VMSA, the boot vCPU's, from the file (igvmmeasure --check-kvm)"
    )
}

/// A page directive (`what` at `gpa`) after the VMSA.
pub fn after_vmsa(what: &str, gpa: u64) -> String {
    format!(
        "QEMU/KVM would not launch this file as it says: {what} at {gpa:#x} comes after the VMSA; KVM measures the \
         VMSA at LAUNCH_FINISH, after every page, so the file must put it last (igvmmeasure --check-kvm)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::igvm_cmd::start;

    /// A rule's message, and a change that breaks it.
    type Case = (&'static str, fn(&mut SevVmsa));

    #[test]
    fn the_builders_start_state_passes_and_each_broken_rule_is_named() {
        let good = *start::vmsa(0x100_0000);
        assert_eq!(check_vmsa(VMSA_GPA, 0, &good), Ok(()));
        let cases: [Case; 11] = [
            ("CR0 is 0x80000031", |v| v.cr0 = 0x8000_0031),
            ("without SVME", |v| v.efer = 0),
            ("LMA while paging is off", |v| v.efer = 0x1500),
            ("64-bit code segment", |v| v.cs.attrib = 0x0A9B),
            ("without MCE", |v| v.cr4 = 0),
            ("without x87", |v| v.xcr0 = 0),
            ("breakpoints", |v| v.dr7 = 0x401),
            ("SEV_FEATURES is 0x9", |v| {
                v.sev_features = SevFeatures::new().with_snp(true).with_restrict_injection(true)
            }),
            ("does not hand to KVM", |v| v.cr2 = 0x1000),
            ("SS's attributes are 0x1c93", |v| v.ss.attrib = 0x1C93),
            ("GDTR has a selector", |v| v.gdtr.attrib = 0x82),
        ];
        for (message, break_it) in cases {
            let mut v = good;
            break_it(&mut v);
            let e = check_vmsa(VMSA_GPA, 0, &v).unwrap_err();
            assert!(e.contains(message), "{message}: {e}");
        }
        assert!(check_vmsa(VMSA_GPA - 0x1000, 0, &good).unwrap_err().contains("is at 0xffffffffe000"));
        assert!(check_vmsa(VMSA_GPA, 1, &good).unwrap_err().contains("vCPU 1's"));
        let real_mode = SevVmsa { cr0: 0x30, ..good };
        assert_eq!(check_vmsa(VMSA_GPA, 0, &real_mode), Ok(()));
    }
}
