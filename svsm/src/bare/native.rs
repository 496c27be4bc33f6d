//! The native (`svm`) run loop: run the guest, handle each #VMEXIT, serve SVSM calls
//! through the kernel's request loop.
//!
//! Exits and what they mean here:
//! - VMMCALL: the call gate. RIP is advanced by hand (no nRIP-save under TCG), then the
//!   kernel serves the call exactly as on SNP. RAX = `BARE_GATE_RAX` is answered without
//!   dispatch: the platform's round-trip limit, for the benchmark.
//! - CPUID: executed for the guest, with 0x8000_001F EAX[28] set (an SVSM is present).
//! - RDMSR 0xC001_F000: the calling area's gpa (spec section 4.2). Other MSRs outside
//!   the permission map get #GP, as on hardware without them.
//! - Nested page fault: the guest touched memory it has not validated, or SVSM memory.
//!   Refused: logged, and the guest gets #GP; the SVSM keeps serving.
//! - HLT: the guest is done. SHUTDOWN or an invalid VMCB: the guest is broken.

use super::cpu;
use super::svm::platform::SvmPlatform;
use super::svm::vcpu::SvmVcpu;
use abi::hw::discovery::{CPUID_EAX_SVSM_PRESENT, CPUID_LEAF, MSR_SVSM_CAA};
use abi::vmcb::{event, exit, offset};
use abi::vmsa::VmsaField;
use kernel::Svsm;
use kernel::vcpu::VcpuIndex;

/// RAX of a VMMCALL the SVSM answers without dispatch (benchmark of the bare gate).
pub const BARE_GATE_RAX: u64 = 0xB1AE_0000_0000_0000;

/// How the guest ended.
pub enum End {
    Halted,
    Broken(&'static str),
}

fn inject_gp(v: &mut SvmVcpu) {
    v.vmcb.set_u64(offset::EVENT_INJ, event::GP | event::TYPE_EXCEPTION | event::ERROR_CODE_VALID | event::VALID);
}

pub fn run(platform: &mut SvmPlatform, svsm: &mut Svsm) -> End {
    let index = VcpuIndex::STARTUP;
    let mut refused = 0u32;
    loop {
        let Some(v) = platform.vcpus.get_mut(&index.0) else { return End::Broken("the startup vCPU is gone") };
        let e = v.run();
        match e.code {
            exit::VMMCALL => {
                v.skip(3);
                if v.field(VmsaField::Rax) != BARE_GATE_RAX {
                    svsm.handle_entry(platform, index);
                }
            }
            exit::CPUID => {
                let (leaf, sub) = (v.field(VmsaField::Rax) as u32, v.regs.rcx as u32);
                let (mut eax, ebx, ecx, edx) = cpu::cpuid(leaf, sub);
                if leaf == CPUID_LEAF {
                    eax |= CPUID_EAX_SVSM_PRESENT;
                }
                v.set_field(VmsaField::Rax, u64::from(eax));
                v.regs.rbx = u64::from(ebx);
                v.regs.rcx = u64::from(ecx);
                v.regs.rdx = u64::from(edx);
                v.skip(2);
            }
            exit::MSR => {
                let is_write = e.info1 == 1;
                if v.regs.rcx as u32 == MSR_SVSM_CAA && !is_write {
                    let ca = svsm.vcpus().get(index).map_or(0, |c| c.calling_area.0);
                    v.set_field(VmsaField::Rax, ca & 0xFFFF_FFFF);
                    v.regs.rdx = ca >> 32;
                    v.skip(2);
                } else {
                    inject_gp(v);
                }
            }
            exit::NPF => {
                refused = refused.saturating_add(1);
                // The first refusals in full, then every 100th: a guest cannot flood the console.
                if refused <= 32 || refused.is_multiple_of(100) {
                    crate::println!(
                        "svm: refused guest access to {:#x} (not validated, or SVSM memory) at rip {:#x}; #GP injected ({refused} so far)",
                        e.info2,
                        v.field(VmsaField::Rip)
                    );
                }
                inject_gp(v);
            }
            exit::HLT => return End::Halted,
            exit::SHUTDOWN => return End::Broken("the guest shut down (triple fault)"),
            exit::INVALID => return End::Broken("VMRUN refused the guest state"),
            other => {
                crate::println!("svm: unexpected exit {other:#x} (info1 {:#x}, info2 {:#x})", e.info1, e.info2);
                return End::Broken("unexpected #VMEXIT");
            }
        }
    }
}
