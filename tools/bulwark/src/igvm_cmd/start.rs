//! The boot CPU's start state in the image: 32-bit protected mode, paging off, at the
//! SVSM's `igvm_entry32`, which turns on long mode itself (svsm/src/bare/entry.rs).
//!
//! Why not 64-bit mode straight away: QEMU/KVM build the launch VMSA from registers
//! QEMU hands KVM, and a start state with paging on is not one they keep; COCONUT's
//! igvmmeasure accepts only CR0 = 0x31 or 0x30 for QEMU/KVM (`check_vmsa`,
//! tools/igvmmeasure/src/igvm_measure.rs), and COCONUT's own images start their boot
//! loader in 32-bit mode (tools/igvmbuilder/src/context.rs, boot/bldr/src/main.rs). Every
//! value here is one KVM measures unchanged; `measure::kvm` checks the same rules on
//! any file. docs/platforms/igvm.md has the table.

use abi::igvm as layout;
use igvm::snp_defs::{SevFeatures, SevSelector, SevVmsa};
use igvm_defs::IgvmNativeVpContextX64;
use zerocopy::FromZeros;

/// The entry GDT: null, 64-bit code (0x08), flat data (0x10), flat 32-bit code (0x18).
/// The boot CPU starts on 0x18; the entry code and the SVSM's own CPUs use 0x08/0x10.
pub const GDT: [u64; 4] = [0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF, 0x00CF_9A00_0000_FFFF];
pub const GDT_LIMIT: u32 = 31;

/// PE, ET, NE: protected mode, paging off. KVM keeps 0x31 (or 0x30, real mode).
pub const CR0: u64 = 0x31;
/// MCE: KVM ORs the host's CR4.MCE into the VMSA it measures (svm_set_cr4).
pub const CR4: u64 = 0x40;
/// SVME: KVM sets it in every SEV-ES/SNP VMSA (svm_set_efer). No LME/LMA before paging.
pub const EFER_SNP: u64 = 0x1000;
const RFLAGS: u64 = 0x2;
/// The power-on PAT.
const PAT: u64 = 0x0007_0406_0007_0406;
/// VMSA segment attributes (descriptor bits 40..47, then 52..55): present, DPL 0,
/// accessed; code execute/read, data read/write; D/B (32-bit) and G.
const CODE32_ATTRIB: u16 = 0x0C9B;
const DATA_ATTRIB: u16 = 0x0C93;

/// The SVSM's start state under SNP. Only fields QEMU copies into KVM's vCPU are set
/// (QEMU refuses any other, and KVM measures the VMSA it rebuilds from those registers),
/// with the values KVM would write, so that the VMSA in the file is the VMSA that gets
/// measured.
pub fn vmsa(rip: u64) -> Box<SevVmsa> {
    let mut v = Box::new(SevVmsa::new_zeroed());
    let flat = |selector, attrib| SevSelector { selector, attrib, limit: 0xFFFF_FFFF, base: 0 };
    v.cs = flat(layout::CODE32_SELECTOR, CODE32_ATTRIB);
    let data = flat(layout::DATA_SELECTOR, DATA_ATTRIB);
    (v.ds, v.es, v.ss, v.fs, v.gs) = (data, data, data, data, data);
    v.gdtr = SevSelector { selector: 0, attrib: 0, limit: GDT_LIMIT, base: layout::GDT_GPA };
    // LDTR and TR as at reset: an LDT and a busy 32-bit TSS, both empty.
    v.ldtr = SevSelector { selector: 0, attrib: 0x0082, limit: 0xFFFF, base: 0 };
    v.tr = SevSelector { selector: 0, attrib: 0x008B, limit: 0xFFFF, base: 0 };
    v.efer = EFER_SNP;
    v.cr0 = CR0;
    // CR3 stays 0: the entry code loads the image's PML4 itself.
    v.cr4 = CR4;
    v.rip = rip;
    v.rsi = layout::BOOT_INFO_GPA;
    v.rflags = RFLAGS;
    v.pat = PAT;
    v.xcr0 = 1;
    v.dr6 = 0xFFFF_0FF0;
    v.dr7 = 0x400;
    v.x87_fcw = 0x37F;
    v.mxcsr = 0x1F80;
    // SNP active and nothing else: QEMU refuses any other SEV feature in an IGVM VMSA.
    v.sev_features = SevFeatures::new().with_snp(true);
    v
}

/// The same start state for the native platform.
pub fn native_context(rip: u64) -> Box<IgvmNativeVpContextX64> {
    let mut c = Box::new(IgvmNativeVpContextX64::new_zeroed());
    c.rip = rip;
    c.rsi = layout::BOOT_INFO_GPA;
    c.rflags = RFLAGS;
    c.gdtr_base = layout::GDT_GPA;
    c.gdtr_limit = GDT_LIMIT as u16;
    // Descriptor bits 40..55 (limit bits 48..51 zero): the same segments as the VMSA's.
    (c.code_selector, c.code_attributes, c.code_limit) = (layout::CODE32_SELECTOR, 0xC09B, 0xFFFF_FFFF);
    (c.data_selector, c.data_attributes, c.data_limit) = (layout::DATA_SELECTOR, 0xC093, 0xFFFF_FFFF);
    c.cr0 = CR0;
    c.cr4 = CR4;
    c
}
