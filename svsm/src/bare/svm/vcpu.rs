//! An L2 guest vCPU on the `svm` platform: its VMCB, the general-purpose registers the
//! VMCB does not hold, and the VMSA fields SVM has no place for (VMPL, SEV_FEATURES,
//! vTOM). The guest page named as its VMSA identifies it to the kernel.

use super::super::clock;
use super::kick;
use super::npt::NestedPageTable;
use super::platform::PermissionMaps;
use super::vmcb::{Segment, Vmcb};
use super::vmrun::{self, GuestRegs};
use ::svm::msr::{self, Access, Answer, GuestState, Refusal};
use abi::hw::EFER_SVME;
use abi::vmcb::{misc1, misc2, offset};
use abi::vmsa::VmsaField;
use zerocopy::FromBytes;

/// Why the guest stopped running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: u64,
    pub info1: u64,
    pub info2: u64,
}

pub struct SvmVcpu {
    pub vmcb: Vmcb,
    pub regs: GuestRegs,
    /// The guest page that stands for this vCPU's VMSA.
    pub vmsa_gpa: u64,
    pub vmpl: u8,
    pub sev_features: u64,
    pub virtual_tom: u64,
    /// Stopped by DELETE_VCPU (or never started).
    pub stopped: bool,
}

/// Size of the VMCB state-save area that mirrors the VMSA's first bytes.
const SAVE_AREA: usize = 0x298;

fn controls(vmcb: &mut Vmcb, npt: &NestedPageTable, maps: &PermissionMaps) {
    vmcb.set_u32(
        offset::INTERCEPT_MISC1,
        misc1::NMI
            | misc1::CPUID
            | misc1::INVD
            | misc1::HLT
            | misc1::INVLPGA
            | misc1::SHUTDOWN
            | misc1::MSR_PROT
            | misc1::IOIO_PROT,
    );
    // Every SVM instruction exits: the guest must not run VMs of its own, nor clear GIF
    // (which would hold the NMI that makes its CPU leave the guest for a kick).
    vmcb.set_u32(
        offset::INTERCEPT_MISC2,
        misc2::VMRUN | misc2::VMMCALL | misc2::VMLOAD | misc2::VMSAVE | misc2::STGI | misc2::CLGI | misc2::SKINIT,
    );
    vmcb.set_u32(offset::GUEST_ASID, 1);
    // Physical interrupts (an SVSM wake-up IPI) stay with the SVSM: the SVSM enters the
    // guest with IF clear, so they wait until it sleeps again.
    vmcb.set_u64(offset::V_INTR, abi::vmcb::V_INTR_MASKING);
    vmcb.set_u64(offset::NP_ENABLE, 1);
    vmcb.set_u64(offset::N_CR3, npt.root());
    vmcb.set_u64(offset::MSRPM_BASE, maps.msr_phys());
    vmcb.set_u64(offset::IOPM_BASE, maps.io_phys());
}

impl SvmVcpu {
    /// A vCPU in 64-bit mode at `rip` with page tables at `cr3` (the launch state).
    pub fn long_mode(
        npt: &NestedPageTable,
        maps: &PermissionMaps,
        vmsa_gpa: u64,
        rip: u64,
        rsp: u64,
        cr3: u64,
    ) -> Option<Self> {
        let mut vmcb = Vmcb::new()?;
        controls(&mut vmcb, npt, maps);
        let code = Segment { selector: 0x08, attrib: 0x0A9B, limit: 0xFFFF_FFFF, base: 0 };
        let data = Segment { selector: 0x10, attrib: 0x0C93, limit: 0xFFFF_FFFF, base: 0 };
        vmcb.set_segment(offset::CS, code);
        for seg in [offset::DS, offset::ES, offset::SS] {
            vmcb.set_segment(seg, data);
        }
        vmcb.set_segment(offset::GDTR, Segment { selector: 0, attrib: 0, limit: 0, base: 0 });
        vmcb.set_segment(offset::IDTR, Segment { selector: 0, attrib: 0, limit: 0, base: 0 });
        vmcb.set_segment(offset::TR, Segment { selector: 0, attrib: 0x008B, limit: 0xFFFF, base: 0 });
        // PE, MP, ET, NE, WP, PG; PAE, OSFXSR, OSXMMEXCPT; LME, LMA, SVME.
        vmcb.set_u64(offset::CR0, 0x8001_0033);
        vmcb.set_u64(offset::CR4, 0x620);
        vmcb.set_save(VmsaField::Cr3, cr3);
        vmcb.set_save(VmsaField::Efer, 0x500 | EFER_SVME);
        vmcb.set_u64(offset::RFLAGS, 0x2);
        vmcb.set_u64(offset::DR6, 0xFFFF_0FF0);
        vmcb.set_u64(offset::DR7, 0x400);
        vmcb.set_u64(offset::G_PAT, 0x0007_0406_0007_0406);
        vmcb.set_save(VmsaField::Rip, rip);
        vmcb.set_save(VmsaField::Rsp, rsp);
        Some(Self {
            vmcb,
            regs: GuestRegs::default(),
            vmsa_gpa,
            vmpl: 1,
            sev_features: abi::hw::sev_features::SNP_ACTIVE,
            virtual_tom: 0,
            stopped: false,
        })
    }

    /// A vCPU whose state is a VMSA page the guest built (CREATE_VCPU).
    pub fn from_vmsa(npt: &NestedPageTable, maps: &PermissionMaps, vmsa_gpa: u64, vmsa: &[u8; 4096]) -> Option<Self> {
        let mut vmcb = Vmcb::new()?;
        controls(&mut vmcb, npt, maps);
        vmcb.copy_into_save(&vmsa[..SAVE_AREA]);
        let Ok(state) = abi::vmsa::Vmsa::read_from_bytes(vmsa) else { return None };
        let regs = GuestRegs {
            rbx: state.rbx,
            rcx: state.rcx,
            rdx: state.rdx,
            rsi: state.rsi,
            rdi: state.rdi,
            rbp: state.rbp,
            r8: state.r8,
            r9: state.r9,
            r10: state.r10,
            r11: state.r11,
            r12: state.r12,
            r13: state.r13,
            r14: state.r14,
            r15: state.r15,
        };
        Some(Self {
            vmcb,
            regs,
            vmsa_gpa,
            vmpl: state.vmpl,
            sev_features: state.sev_features,
            virtual_tom: state.virtual_tom,
            stopped: false,
        })
    }

    /// Run on `cpu` until the next #VMEXIT, with the host state kept in `host_state_pa`
    /// (this CPU's page from `Svm::host_state_phys`); `None` if a kick arrived first and
    /// the vCPU did not enter the guest.
    pub fn run(&mut self, cpu: u32, host_state_pa: u64) -> Option<Exit> {
        // GIF off before the kick check: from here on a kick's NMI is held until the guest
        // runs and makes it exit at once.
        vmrun::clgi();
        if !kick::enter(cpu) {
            vmrun::stgi();
            return None;
        }
        // SAFETY: SVM is enabled on every CPU that runs vCPUs, GIF is clear; the VMCB is
        // owned by this vCPU and lives across the call; its nested page tables map only
        // validated guest RAM, never SVSM memory; the host-state page is this CPU's own.
        unsafe { vmrun::run(self.vmcb.phys(), &mut self.regs, host_state_pa) };
        kick::exited(cpu);
        self.vmcb.set_u64(offset::TLB_CONTROL, 0);
        Some(Exit {
            code: self.vmcb.exit_code(),
            info1: self.vmcb.u64(offset::EXIT_INFO1),
            info2: self.vmcb.u64(offset::EXIT_INFO2),
        })
    }

    /// Flush the guest's TLB on the next VMRUN (after a nested-paging change).
    pub fn flush_tlb(&mut self) {
        self.vmcb.set_u64(offset::TLB_CONTROL, 1);
    }

    /// Step over an intercepted instruction of `len` bytes (no nRIP-save under TCG).
    pub fn skip(&mut self, len: u64) {
        let rip = self.vmcb.save(VmsaField::Rip);
        self.vmcb.set_save(VmsaField::Rip, rip.wrapping_add(len));
    }

    /// Answer an intercepted RDMSR (or, if `write`, WRMSR) as the MSR policy says
    /// (`bulwark_svm::msr`): a read's value into EDX:EAX, a write's new EFER or PAT into
    /// the VMCB, and RIP past the 2-byte instruction (no nRIP-save under TCG). On a refusal
    /// nothing changes and RIP stays on the instruction: the caller injects #GP(0).
    /// `calling_area` is this vCPU's (the discovery MSR's value).
    pub fn answer_msr(&mut self, write: bool, calling_area: u64) -> (u32, Access, Result<Answer, Refusal>) {
        let msr = self.regs.rcx as u32;
        let access = match write {
            true => Access::Write(self.vmcb.save(VmsaField::Rax) & 0xFFFF_FFFF | self.regs.rdx << 32),
            false => Access::Read,
        };
        let mut state = GuestState {
            efer: self.vmcb.save(VmsaField::Efer),
            cr0: self.vmcb.u64(offset::CR0),
            pat: self.vmcb.u64(offset::G_PAT),
            calling_area,
            tsc: clock::rdtsc().wrapping_add(self.vmcb.u64(offset::TSC_OFFSET)),
        };
        let answer = msr::on_exit(msr, access, &mut state);
        match answer {
            Ok(Answer::Read(value)) => {
                self.vmcb.set_save(VmsaField::Rax, value & 0xFFFF_FFFF);
                self.regs.rdx = value >> 32;
                self.skip(2);
            }
            Ok(Answer::Written) => {
                self.vmcb.set_save(VmsaField::Efer, state.efer);
                self.vmcb.set_u64(offset::G_PAT, state.pat);
                self.skip(2);
            }
            Err(_) => {}
        }
        (msr, access, answer)
    }

    /// A VMSA field, from wherever SVM keeps it.
    pub fn field(&self, f: VmsaField) -> u64 {
        match f {
            VmsaField::Vmpl => u64::from(self.vmpl),
            VmsaField::SevFeatures => self.sev_features,
            VmsaField::VirtualTom => self.virtual_tom,
            VmsaField::ExitCode => self.vmcb.exit_code(),
            VmsaField::Rcx => self.regs.rcx,
            VmsaField::Rdx => self.regs.rdx,
            VmsaField::R8 => self.regs.r8,
            VmsaField::R9 => self.regs.r9,
            VmsaField::Efer | VmsaField::Rax | VmsaField::Cr3 | VmsaField::Rip | VmsaField::Rsp => self.vmcb.save(f),
        }
    }

    pub fn set_field(&mut self, f: VmsaField, v: u64) {
        match f {
            VmsaField::Vmpl => self.vmpl = v as u8,
            VmsaField::SevFeatures => self.sev_features = v,
            VmsaField::VirtualTom => self.virtual_tom = v,
            VmsaField::ExitCode => self.vmcb.set_u64(offset::EXIT_CODE, v),
            VmsaField::Rcx => self.regs.rcx = v,
            VmsaField::Rdx => self.regs.rdx = v,
            VmsaField::R8 => self.regs.r8 = v,
            VmsaField::R9 => self.regs.r9 = v,
            VmsaField::Efer | VmsaField::Rax | VmsaField::Cr3 | VmsaField::Rip | VmsaField::Rsp => {
                self.vmcb.set_save(f, v)
            }
        }
    }
}
