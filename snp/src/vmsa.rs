//! Initial register states the SVSM writes into VMSA pages it creates.

use abi::hw::EFER_SVME;
use abi::vmsa::{Vmsa, VmsaSegment};

/// VMSA segment attributes (the descriptor's type/S/DPL/P in bits 7:0, AVL/L/DB/G in
/// 11:8).
mod attrib {
    /// Present, code, readable, accessed (real-mode CS).
    pub const CODE16: u16 = 0x009B;
    /// Present, data, writable, accessed.
    pub const DATA: u16 = 0x0093;
    /// As CODE16 plus L (64-bit) and G.
    pub const CODE64: u16 = 0x0A9B;
    /// A 32-bit busy TSS.
    pub const TSS: u16 = 0x008B;
    /// An LDT.
    pub const LDT: u16 = 0x0082;
}

/// PAT after reset (WB, WT, UC-, UC twice).
pub const RESET_PAT: u64 = 0x0007_0406_0007_0406;
/// x87 and SSE control after reset: FCW, the full tag word (all empty), MXCSR (all
/// exceptions masked). Zeros would unmask every floating-point exception.
const RESET_FCW: u16 = 0x0040;
const RESET_FTW: u16 = 0x5555;
const RESET_MXCSR: u32 = 0x1F80;

fn reset_fpu(v: &mut Vmsa) {
    (v.x87_fcw, v.x87_ftw, v.mxcsr) = (RESET_FCW, RESET_FTW, RESET_MXCSR);
}

/// The x86 reset state at `vmpl`: real mode at F000:FFF0 (gpa 0xFFFF_FFF0, the top of
/// the guest firmware), as the guest's first vCPU starts when the SVSM launches it.
/// `signature` is CPUID(1).EAX, which a CPU leaves in EDX at reset.
pub fn reset_state(vmpl: u8, sev_features: u64, signature: u32) -> Vmsa {
    let mut v = Vmsa::zeroed();
    let data = VmsaSegment { selector: 0, attrib: attrib::DATA, limit: 0xFFFF, base: 0 };
    (v.es, v.ss, v.ds, v.fs, v.gs) = (data, data, data, data, data);
    v.cs = VmsaSegment { selector: 0xF000, attrib: attrib::CODE16, limit: 0xFFFF, base: 0xFFFF_0000 };
    v.gdtr = VmsaSegment { limit: 0xFFFF, ..Default::default() };
    v.idtr = VmsaSegment { limit: 0xFFFF, ..Default::default() };
    v.ldtr = VmsaSegment { attrib: attrib::LDT, limit: 0xFFFF, ..Default::default() };
    v.tr = VmsaSegment { attrib: attrib::TSS, limit: 0xFFFF, ..Default::default() };
    v.rip = 0xFFF0;
    v.rflags = 0x2;
    v.cr0 = 0x6000_0010;
    v.dr6 = 0xFFFF_0FF0;
    v.dr7 = 0x400;
    v.efer = EFER_SVME;
    v.g_pat = RESET_PAT;
    v.xcr0 = 1;
    v.rdx = u64::from(signature);
    v.vmpl = vmpl;
    v.sev_features = sev_features;
    reset_fpu(&mut v);
    v
}

/// The SVSM's own 64-bit state for a new CPU at VMPL0: what `svsm/src/bare/` needs to
/// continue in its AP entry with the given page tables and stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvsmCpuState {
    pub rip: u64,
    pub rsp: u64,
    pub cr3: u64,
    pub gdtr_base: u64,
    pub gdtr_limit: u32,
    pub code_selector: u16,
    pub data_selector: u16,
    /// Passed in RDI to the entry (the CPU's index).
    pub argument: u64,
}

/// Where new CPUs enter the SVSM: the state every one starts with, and a stack per vCPU
/// index (`stack_count` stacks of `stack_size` bytes from `stack_base`). The stacks are
/// the SVSM's own, not the vCPU's SVSM pages, so an overflow cannot reach a VMSA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvsmEntry {
    /// RSP and the argument are set per vCPU.
    pub cpu: SvsmCpuState,
    pub stack_base: u64,
    pub stack_size: u64,
    pub stack_count: u32,
}

impl SvsmEntry {
    /// The start state of the SVSM's CPU for vCPU `index`, if it has a stack.
    pub fn for_vcpu(&self, index: u32) -> Option<SvsmCpuState> {
        if index >= self.stack_count {
            return None;
        }
        let top = self.stack_size.checked_mul(u64::from(index) + 1)?.checked_add(self.stack_base)?;
        Some(SvsmCpuState { rsp: top, argument: u64::from(index), ..self.cpu })
    }
}

/// A VMPL0 VMSA in 64-bit mode at `state.rip`.
pub fn svsm_state(state: &SvsmCpuState, sev_features: u64) -> Vmsa {
    let mut v = Vmsa::zeroed();
    let data = VmsaSegment { selector: state.data_selector, attrib: attrib::DATA, limit: 0xFFFF_FFFF, base: 0 };
    (v.es, v.ss, v.ds, v.fs, v.gs) = (data, data, data, data, data);
    // GS base is how the SVSM finds its per-CPU state: right from the first instruction.
    v.gs.base = state.argument;
    v.cs = VmsaSegment { selector: state.code_selector, attrib: attrib::CODE64, limit: 0xFFFF_FFFF, base: 0 };
    v.gdtr = VmsaSegment { limit: state.gdtr_limit, base: state.gdtr_base, ..Default::default() };
    v.tr = VmsaSegment { attrib: attrib::TSS, limit: 0xFFFF, ..Default::default() };
    v.rip = state.rip;
    v.rsp = state.rsp;
    v.rdi = state.argument;
    v.rflags = 0x2;
    // PG | WP | NE | ET | MP | PE; PAE | PGE | OSFXSR | OSXMMEXCPT; LME | LMA | SVME | NXE.
    v.cr0 = 0x8001_0033;
    v.cr4 = 0x6A0;
    v.cr3 = state.cr3;
    v.efer = 0x0D00 | EFER_SVME;
    v.dr6 = 0xFFFF_0FF0;
    v.dr7 = 0x400;
    v.g_pat = RESET_PAT;
    v.xcr0 = 1;
    v.vmpl = 0;
    v.sev_features = sev_features;
    reset_fpu(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_state_starts_the_firmware_at_its_reset_vector() {
        let v = reset_state(1, 1, 0xA00F11);
        assert_eq!(v.cs.base + v.rip, 0xFFFF_FFF0);
        assert_eq!(v.vmpl, 1);
        assert_eq!(v.efer & EFER_SVME, EFER_SVME, "SNP requires SVME in every VMSA");
        assert_eq!(v.cr0 & 1, 0, "real mode");
        assert_eq!(v.rdx, 0xA00F11);
        assert_eq!((v.mxcsr, v.x87_fcw, v.x87_ftw), (0x1F80, 0x40, 0x5555), "exceptions masked");
    }

    #[test]
    fn svsm_state_is_long_mode() {
        let s = SvsmCpuState {
            rip: 0x100_2000,
            rsp: 0x180_0000,
            cr3: 0x1FF_5000,
            gdtr_base: 0x1FF_8000,
            gdtr_limit: 23,
            code_selector: 8,
            data_selector: 16,
            argument: 3,
        };
        let v = svsm_state(&s, 1);
        assert_eq!(v.efer & 0x500, 0x500, "LME and LMA");
        assert_eq!(v.cs.attrib & 0x200, 0x200, "CS.L");
        assert_eq!((v.rip, v.rsp, v.cr3, v.rdi, v.vmpl), (0x100_2000, 0x180_0000, 0x1FF_5000, 3, 0));
        assert_eq!(v.gs.base, 3, "the CPU index in GS base from the start");
    }
}
