//! Architectural values of the SEV-SNP instructions and exits an SVSM depends on (AMD
//! APM vol. 2 and 3; GHCB specification).

/// PVALIDATE / RMPADJUST return codes in EAX.
pub mod rc {
    pub const SUCCESS: u32 = 0;
    pub const FAIL_INPUT: u32 = 1;
    pub const FAIL_PERMISSION: u32 = 2;
    pub const FAIL_INUSE: u32 = 3;
    pub const FAIL_SIZEMISMATCH: u32 = 6;
}

/// RMPADJUST attribute operand (RDX): target VMPL in bits 7:0, permissions in 15:8, VMSA
/// flag in bit 16.
pub mod rmpadjust {
    pub const PERM_READ: u8 = 1 << 0;
    pub const PERM_WRITE: u8 = 1 << 1;
    pub const PERM_EXEC_USER: u8 = 1 << 2;
    pub const PERM_EXEC_SUPERVISOR: u8 = 1 << 3;
    pub const PERM_ALL: u8 = PERM_READ | PERM_WRITE | PERM_EXEC_USER | PERM_EXEC_SUPERVISOR;
    pub const PERM_NONE: u8 = 0;
    pub const VMSA: u64 = 1 << 16;

    pub const fn attrs(target_vmpl: u8, perms: u8, vmsa: bool) -> u64 {
        target_vmpl as u64 | (perms as u64) << 8 | if vmsa { VMSA } else { 0 }
    }
}

/// VMEXIT code of VMGEXIT (also written to VMSA.GUEST_EXIT_CODE).
pub const SVM_EXIT_VMGEXIT: u64 = 0x403;
/// VMEXIT code of VMMCALL (the call gate on the `svm` platform).
pub const SVM_EXIT_VMMCALL: u64 = 0x81;

/// EFER bits.
pub const EFER_SVME: u64 = 1 << 12;

/// SEV_FEATURES bits (VMSA offset 0x3B0).
pub mod sev_features {
    pub const SNP_ACTIVE: u64 = 1 << 0;
    pub const VTOM: u64 = 1 << 1;
    pub const REFLECT_VC: u64 = 1 << 2;
    pub const RESTRICTED_INJECTION: u64 = 1 << 3;
    pub const ALTERNATE_INJECTION: u64 = 1 << 4;
    pub const DEBUG_SWAP: u64 = 1 << 5;
    pub const PREVENT_HOST_IBS: u64 = 1 << 6;
    pub const BTB_ISOLATION: u64 = 1 << 7;
    pub const VMSA_REG_PROT: u64 = 1 << 14;
}

/// Discovery outside the secrets page (spec 58019 section 4.2).
pub mod discovery {
    /// CPUID leaf whose EAX bit 28 announces an SVSM.
    pub const CPUID_LEAF: u32 = 0x8000_001F;
    pub const CPUID_EAX_SVSM_PRESENT: u32 = 1 << 28;
    /// MSR that returns the calling-area gpa.
    pub const MSR_SVSM_CAA: u32 = 0xC001_F000;
}
