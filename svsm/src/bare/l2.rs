//! An L2 guest vCPU on the `svm` platform: its VMCB, its general-purpose registers, and
//! the nested page tables it runs under.
//!
//! The first user is the gate self-test: a 5-byte guest that executes VMMCALL in a loop,
//! answered without dispatch, which measures the bare round-trip cost of this platform
//! (the limit for an SVSM call).

use super::svm::npt::NestedPageTable;
use super::svm::vmcb::{Segment, Vmcb};
use super::svm::vmrun::{self, GuestRegs};
use abi::hw::EFER_SVME;
use abi::vmcb::{exit, misc1, misc2, offset};
use abi::vmsa::VmsaField;

/// The SVSM's region in guest-physical space: never mapped for the guest.
pub const SVSM_REGION: core::ops::Range<u64> = 0x100_0000..0x140_0000;

pub struct L2Vcpu {
    pub vmcb: Vmcb,
    pub regs: GuestRegs,
}

/// Why a guest stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: u64,
    pub info1: u64,
    pub info2: u64,
}

impl L2Vcpu {
    /// A vCPU in 32-bit flat protected mode at `rip`, paging off, under `npt`.
    pub fn protected_mode(npt: &NestedPageTable, rip: u64, rsp: u64) -> Option<Self> {
        let mut vmcb = Vmcb::new()?;
        vmcb.set_u32(offset::INTERCEPT_MISC1, misc1::SHUTDOWN | misc1::HLT);
        vmcb.set_u32(offset::INTERCEPT_MISC2, misc2::VMRUN | misc2::VMMCALL);
        vmcb.set_u32(offset::GUEST_ASID, 1);
        vmcb.set_u64(offset::NP_ENABLE, 1);
        vmcb.set_u64(offset::N_CR3, npt.root());
        let code = Segment { selector: 0x08, attrib: 0x0C9B, limit: 0xFFFF_FFFF, base: 0 };
        let data = Segment { selector: 0x10, attrib: 0x0C93, limit: 0xFFFF_FFFF, base: 0 };
        vmcb.set_segment(offset::CS, code);
        for seg in [offset::DS, offset::ES, offset::SS] {
            vmcb.set_segment(seg, data);
        }
        vmcb.set_segment(offset::GDTR, Segment { selector: 0, attrib: 0, limit: 0xFFFF, base: 0 });
        vmcb.set_segment(offset::IDTR, Segment { selector: 0, attrib: 0, limit: 0xFFFF, base: 0 });
        vmcb.set_segment(offset::TR, Segment { selector: 0, attrib: 0x008B, limit: 0xFFFF, base: 0 });
        vmcb.set_u64(offset::CR0, 0x11);
        vmcb.set_u64(offset::CR4, 0);
        vmcb.set_u64(offset::RFLAGS, 0x2);
        vmcb.set_u64(offset::DR6, 0xFFFF_0FF0);
        vmcb.set_u64(offset::DR7, 0x400);
        vmcb.set_u64(offset::G_PAT, 0x0007_0406_0007_0406);
        vmcb.set_save(VmsaField::Efer, EFER_SVME);
        vmcb.set_save(VmsaField::Rip, rip);
        vmcb.set_save(VmsaField::Rsp, rsp);
        Some(Self { vmcb, regs: GuestRegs::default() })
    }

    /// Run until the next #VMEXIT.
    pub fn run(&mut self) -> Exit {
        // SAFETY: SVM is enabled (the caller holds an `Svm`); the VMCB is owned by this
        // vCPU and lives across the call; its nested page tables map no SVSM memory
        // (`SVSM_REGION` is excluded when they are built).
        unsafe { vmrun::run(self.vmcb.phys(), &mut self.regs) };
        Exit {
            code: self.vmcb.exit_code(),
            info1: self.vmcb.u64(offset::EXIT_INFO1),
            info2: self.vmcb.u64(offset::EXIT_INFO2),
        }
    }

    /// Step over an intercepted instruction of `len` bytes (no nRIP-save under TCG).
    pub fn skip(&mut self, len: u64) {
        let rip = self.vmcb.save(VmsaField::Rip);
        self.vmcb.set_save(VmsaField::Rip, rip + len);
    }
}

/// Nested page tables for guest RAM below `top`, without the SVSM region.
pub fn guest_npt(top: u64) -> Option<NestedPageTable> {
    NestedPageTable::identity(top, |gpa| !(SVSM_REGION.start..SVSM_REGION.end).contains(&gpa))
}

/// Guest code for the gate self-test: `vmmcall; jmp -5`.
pub const VMMCALL_LOOP: [u8; 5] = [0x0F, 0x01, 0xD9, 0xEB, 0xFB];
pub const VMMCALL_LEN: u64 = 3;

/// Run `count` VMMCALL round trips answered without dispatch; returns TSC cycles each.
pub fn bare_gate_cycles(vcpu: &mut L2Vcpu, count: u32) -> Result<u64, Exit> {
    let start = super::cpu::rdtsc();
    for _ in 0..count {
        let e = vcpu.run();
        if e.code != exit::VMMCALL {
            return Err(e);
        }
        vcpu.skip(VMMCALL_LEN);
    }
    Ok((super::cpu::rdtsc() - start) / u64::from(count.max(1)))
}
