//! The SEV-SNP VMSA (AMD APM vol. 2, "VMSA layout, state save area"): the fields an SVSM
//! reads or writes. Everything else is kept as named reserved bytes so the struct is the
//! full 4 KiB page.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VmsaSegment {
    pub selector: u16,
    pub attrib: u16,
    pub limit: u32,
    pub base: u64,
}
crate::assert_size!(VmsaSegment, 16);

/// A VMSA page.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Vmsa {
    pub es: VmsaSegment,
    pub cs: VmsaSegment,
    pub ss: VmsaSegment,
    pub ds: VmsaSegment,
    pub fs: VmsaSegment,
    pub gs: VmsaSegment,
    pub gdtr: VmsaSegment,
    pub ldtr: VmsaSegment,
    pub idtr: VmsaSegment,
    pub tr: VmsaSegment,
    pub reserved_0a0: [u8; 42],
    pub vmpl: u8,
    pub cpl: u8,
    pub reserved_0cc: [u8; 4],
    pub efer: u64,
    pub reserved_0d8: [u8; 104],
    pub xss: u64,
    pub cr4: u64,
    pub cr3: u64,
    pub cr0: u64,
    pub dr7: u64,
    pub dr6: u64,
    pub rflags: u64,
    pub rip: u64,
    /// The debug address registers (the svm platform carries a vCPU's across a live
    /// migration here, as Linux's `sev_es_save_area` lays them out).
    pub dr0: u64,
    pub dr1: u64,
    pub dr2: u64,
    pub dr3: u64,
    pub dr_addr_mask: [u64; 4],
    pub reserved_1c0: [u8; 24],
    pub rsp: u64,
    pub reserved_1e0: [u8; 24],
    pub rax: u64,
    pub reserved_200: [u8; 104],
    pub g_pat: u64,
    pub reserved_270: [u8; 152],
    pub rcx: u64,
    pub rdx: u64,
    pub rbx: u64,
    pub reserved_320: u64,
    pub rbp: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub reserved_380: [u8; 48],
    pub sev_features: u64,
    pub vintr_ctrl: u64,
    pub guest_exit_code: u64,
    pub virtual_tom: u64,
    pub tlb_id: u64,
    pub pcpu_id: u64,
    /// EVENTINJ's layout: an event to deliver on the next entry (the svm platform carries
    /// a pending one here across a live migration).
    pub event_inj: u64,
    pub xcr0: u64,
    pub reserved_3f0: [u8; 16],
    pub x87_dp: u64,
    pub mxcsr: u32,
    pub x87_ftw: u16,
    pub x87_fsw: u16,
    pub x87_fcw: u16,
    pub reserved_412: [u8; 3054],
}
crate::assert_size!(Vmsa, 4096);
crate::assert_offset!(Vmsa, vmpl, 0xCA);
crate::assert_offset!(Vmsa, cpl, 0xCB);
crate::assert_offset!(Vmsa, efer, 0xD0);
crate::assert_offset!(Vmsa, cr4, 0x148);
crate::assert_offset!(Vmsa, cr3, 0x150);
crate::assert_offset!(Vmsa, cr0, 0x158);
crate::assert_offset!(Vmsa, rflags, 0x170);
crate::assert_offset!(Vmsa, rip, 0x178);
crate::assert_offset!(Vmsa, dr0, 0x180);
crate::assert_offset!(Vmsa, dr3, 0x198);
crate::assert_offset!(Vmsa, rsp, 0x1D8);
crate::assert_offset!(Vmsa, rax, 0x1F8);
crate::assert_offset!(Vmsa, g_pat, 0x268);
crate::assert_offset!(Vmsa, rcx, 0x308);
crate::assert_offset!(Vmsa, rdx, 0x310);
crate::assert_offset!(Vmsa, r8, 0x340);
crate::assert_offset!(Vmsa, r9, 0x348);
crate::assert_offset!(Vmsa, sev_features, 0x3B0);
crate::assert_offset!(Vmsa, guest_exit_code, 0x3C0);
crate::assert_offset!(Vmsa, virtual_tom, 0x3C8);
crate::assert_offset!(Vmsa, event_inj, 0x3E0);
crate::assert_offset!(Vmsa, xcr0, 0x3E8);
crate::assert_offset!(Vmsa, mxcsr, 0x408);
crate::assert_offset!(Vmsa, x87_ftw, 0x40C);
crate::assert_offset!(Vmsa, x87_fcw, 0x410);

impl Vmsa {
    /// An all-zero VMSA.
    pub fn zeroed() -> Self {
        <Self as zerocopy::FromZeros>::new_zeroed()
    }
}

/// The VMSA fields the SVSM reads or writes, named so platforms can map them to their
/// own storage (a VMSA page on SNP and in the model, a VMCB on `svm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmsaField {
    Vmpl,
    Efer,
    SevFeatures,
    ExitCode,
    Rax,
    Rcx,
    Rdx,
    R8,
    R9,
    Cr3,
    Rip,
    Rsp,
    VirtualTom,
}

impl VmsaField {
    /// Byte offset of the field in the VMSA page.
    pub const fn offset(self) -> usize {
        use core::mem::offset_of;
        match self {
            Self::Vmpl => offset_of!(Vmsa, vmpl),
            Self::Efer => offset_of!(Vmsa, efer),
            Self::SevFeatures => offset_of!(Vmsa, sev_features),
            Self::ExitCode => offset_of!(Vmsa, guest_exit_code),
            Self::Rax => offset_of!(Vmsa, rax),
            Self::Rcx => offset_of!(Vmsa, rcx),
            Self::Rdx => offset_of!(Vmsa, rdx),
            Self::R8 => offset_of!(Vmsa, r8),
            Self::R9 => offset_of!(Vmsa, r9),
            Self::Cr3 => offset_of!(Vmsa, cr3),
            Self::Rip => offset_of!(Vmsa, rip),
            Self::Rsp => offset_of!(Vmsa, rsp),
            Self::VirtualTom => offset_of!(Vmsa, virtual_tom),
        }
    }

    /// Width of the field in bytes.
    pub const fn width(self) -> usize {
        match self {
            Self::Vmpl => 1,
            _ => 8,
        }
    }
}
