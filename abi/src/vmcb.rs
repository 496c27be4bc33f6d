//! The VMCB (AMD APM vol. 2, appendix B): a control area (intercepts, exit information,
//! nested paging) at 0x000 and the guest's state-save area at 0x400. The save area has
//! the layout of the SEV-ES VMSA's first part, so VMSA field offsets (`vmsa`) apply at
//! `SAVE + offset`. Used by the `svm` platform, where the SVSM is an L1 hypervisor.

pub mod offset {
    pub const INTERCEPT_EXCEPTIONS: usize = 0x008;
    pub const INTERCEPT_MISC1: usize = 0x00C;
    pub const INTERCEPT_MISC2: usize = 0x010;
    pub const IOPM_BASE: usize = 0x040;
    pub const MSRPM_BASE: usize = 0x048;
    pub const TSC_OFFSET: usize = 0x050;
    pub const GUEST_ASID: usize = 0x058;
    /// One byte (bits 39:32 of the quadword at 0x58); the next three are reserved and
    /// V_INTR follows, so it is never written as a wider field.
    pub const TLB_CONTROL: usize = 0x05C;
    /// Virtual interrupt control; bit 24 is V_INTR_MASKING.
    pub const V_INTR: usize = 0x060;
    pub const EXIT_CODE: usize = 0x070;
    pub const EXIT_INFO1: usize = 0x078;
    pub const EXIT_INFO2: usize = 0x080;
    /// An event the exit cut short (bit 31: valid).
    pub const EXIT_INT_INFO: usize = 0x088;
    pub const NP_ENABLE: usize = 0x090;
    pub const EVENT_INJ: usize = 0x0A8;
    pub const N_CR3: usize = 0x0B0;
    pub const CLEAN_BITS: usize = 0x0C0;
    /// The address after an intercepted instruction, where the CPU saves it (NRIP save,
    /// CPUID 0x8000000A EDX bit 3).
    pub const NEXT_RIP: usize = 0x0C8;
    /// Start of the state-save area.
    pub const SAVE: usize = 0x400;
    pub const ES: usize = SAVE;
    pub const CS: usize = SAVE + 0x10;
    pub const SS: usize = SAVE + 0x20;
    pub const DS: usize = SAVE + 0x30;
    pub const GDTR: usize = SAVE + 0x60;
    pub const IDTR: usize = SAVE + 0x80;
    pub const TR: usize = SAVE + 0x90;
    pub const CR4: usize = SAVE + 0x148;
    pub const CR0: usize = SAVE + 0x158;
    pub const DR7: usize = SAVE + 0x160;
    pub const DR6: usize = SAVE + 0x168;
    pub const RFLAGS: usize = SAVE + 0x170;
    pub const G_PAT: usize = SAVE + 0x268;
}

/// V_INTR_MASKING: in the guest, the host's RFLAGS.IF (not the guest's) masks physical
/// interrupts.
pub const V_INTR_MASKING: u64 = 1 << 24;

/// EVENTINJ encoding: vector in 7:0, type in 10:8, error-code-valid 11, valid 31, error
/// code in 63:32.
pub mod event {
    /// Bits 7:0: the vector.
    pub const VECTOR: u64 = 0xFF;
    /// Bits 10:8: the type.
    pub const TYPE: u64 = 7 << 8;
    /// An external (maskable) interrupt.
    pub const TYPE_INTR: u64 = 0;
    pub const TYPE_NMI: u64 = 2 << 8;
    pub const TYPE_EXCEPTION: u64 = 3 << 8;
    /// A software interrupt (INTn; QEMU's TCG also reports INT3 and INTO so).
    pub const TYPE_SOFT_INT: u64 = 4 << 8;
    pub const ERROR_CODE_VALID: u64 = 1 << 11;
    pub const VALID: u64 = 1 << 31;
    pub const GP: u64 = 13;
    pub const UD: u64 = 6;
    /// The breakpoint and overflow exceptions, which INT3 and INTO raise.
    pub const BP: u64 = 3;
    pub const OF: u64 = 4;
}

/// Intercept bits of INTERCEPT_MISC1.
pub mod misc1 {
    pub const INTR: u32 = 1 << 0;
    pub const NMI: u32 = 1 << 1;
    pub const CPUID: u32 = 1 << 18;
    pub const INVD: u32 = 1 << 22;
    pub const HLT: u32 = 1 << 24;
    pub const INVLPGA: u32 = 1 << 26;
    pub const IOIO_PROT: u32 = 1 << 27;
    pub const MSR_PROT: u32 = 1 << 28;
    pub const SHUTDOWN: u32 = 1 << 31;
}

/// Intercept bits of INTERCEPT_MISC2.
pub mod misc2 {
    pub const VMRUN: u32 = 1 << 0;
    pub const VMMCALL: u32 = 1 << 1;
    pub const VMLOAD: u32 = 1 << 2;
    pub const VMSAVE: u32 = 1 << 3;
    pub const STGI: u32 = 1 << 4;
    pub const CLGI: u32 = 1 << 5;
    pub const SKINIT: u32 = 1 << 6;
    pub const XSETBV: u32 = 1 << 13;
}

/// Exit codes the SVSM handles.
pub mod exit {
    pub const INTR: u64 = 0x60;
    pub const NMI: u64 = 0x61;
    pub const CPUID: u64 = 0x72;
    pub const INVD: u64 = 0x76;
    pub const INVLPGA: u64 = 0x7A;
    pub const HLT: u64 = 0x78;
    pub const SHUTDOWN: u64 = 0x7F;
    pub const IOIO: u64 = 0x7B;
    pub const MSR: u64 = 0x7C;
    pub const VMRUN: u64 = 0x80;
    pub const VMMCALL: u64 = 0x81;
    pub const VMLOAD: u64 = 0x82;
    pub const VMSAVE: u64 = 0x83;
    pub const STGI: u64 = 0x84;
    pub const CLGI: u64 = 0x85;
    pub const SKINIT: u64 = 0x86;
    pub const XSETBV: u64 = 0x8D;
    pub const NPF: u64 = 0x400;
    pub const INVALID: u64 = u64::MAX;
}

#[cfg(test)]
mod tests {
    use super::offset;
    use crate::vmsa::VmsaField;

    /// The save-area fields the VMCB shares with the VMSA sit where APM appendix B puts them.
    #[test]
    fn save_area_matches_the_vmsa_layout() {
        assert_eq!(offset::SAVE + VmsaField::Efer.offset(), 0x4D0);
        assert_eq!(offset::SAVE + VmsaField::Rip.offset(), 0x578);
        assert_eq!(offset::SAVE + VmsaField::Rsp.offset(), 0x5D8);
        assert_eq!(offset::SAVE + VmsaField::Rax.offset(), 0x5F8);
        assert_eq!(offset::SAVE + VmsaField::Cr3.offset(), 0x550);
        assert_eq!(offset::CR0, 0x558);
        assert_eq!(offset::RFLAGS, 0x570);
        assert_eq!(offset::G_PAT, 0x668);
    }
}
