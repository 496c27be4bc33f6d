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
//! - I/O to a port other than the guest's own (COM2, debug-exit): refused with #GP.
//! - Nested page fault: the guest touched memory it has not validated, or SVSM memory.
//!   Refused: logged, and the guest gets #GP; the SVSM keeps serving.
//! - HLT: a yield; the next runnable vCPU gets the CPU (round robin on one CPU).
//! - SHUTDOWN or a state VMRUN refuses: the startup vCPU ends the run; any other vCPU is
//!   stopped and the SVSM keeps serving the rest.

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

/// Why the guest can run no more (a guest that finishes leaves through QEMU's debug-exit
/// device itself).
pub enum End {
    Broken(&'static str),
}

fn inject_gp(v: &mut SvmVcpu) {
    v.vmcb.set_u64(offset::EVENT_INJ, event::GP | event::TYPE_EXCEPTION | event::ERROR_CODE_VALID | event::VALID);
}

/// The vCPU after `current` that may run (round robin), if any.
fn next_runnable(platform: &SvmPlatform, current: u32) -> Option<u32> {
    let after = platform.vcpus.range(current + 1..).find(|(_, v)| !v.stopped);
    after.or_else(|| platform.vcpus.range(..=current).find(|(_, v)| !v.stopped)).map(|(i, _)| *i)
}

/// Serve the guest's vCPUs on this CPU, one at a time: a vCPU runs until it yields with
/// HLT (or stops), then the next runnable one gets the CPU.
pub fn run(platform: &mut SvmPlatform, svsm: &mut Svsm, host_state_pa: u64) -> End {
    let mut current = VcpuIndex::STARTUP.0;
    let mut refused = 0u32;
    loop {
        let index = VcpuIndex(current);
        let Some(v) = platform.vcpus.get_mut(&current).filter(|v| !v.stopped) else {
            match next_runnable(platform, current) {
                Some(next) => {
                    current = next;
                    continue;
                }
                None => return End::Broken("no vCPU left to run"),
            }
        };
        let e = v.run(host_state_pa);
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
            exit::IOIO => {
                // Ports the guest may not use: refused like memory it may not touch.
                refused = refused.saturating_add(1);
                if refused <= 32 || refused.is_multiple_of(100) {
                    crate::println!("svm: refused vCPU {current}'s I/O to port {:#x}; #GP injected", e.info1 >> 16);
                }
                inject_gp(v);
            }
            exit::NPF => {
                refused = refused.saturating_add(1);
                // The first refusals in full, then every 100th: a guest cannot flood the console.
                if refused <= 32 || refused.is_multiple_of(100) {
                    crate::println!(
                        "svm: refused vCPU {current}'s access to {:#x} (not validated, or SVSM memory) at rip {:#x}; #GP injected ({refused} so far)",
                        e.info2,
                        v.field(VmsaField::Rip)
                    );
                }
                inject_gp(v);
            }
            exit::HLT => {
                // A yield: the guest waits for another vCPU.
                v.skip(1);
                if let Some(next) = next_runnable(platform, current) {
                    current = next;
                }
            }
            code @ (exit::SHUTDOWN | exit::INVALID) => {
                let why = if code == exit::SHUTDOWN { "shut down (triple fault)" } else { "has a state VMRUN refuses" };
                if index == VcpuIndex::STARTUP {
                    crate::println!("svm: the startup vCPU {why}");
                    return End::Broken("the startup vCPU cannot run");
                }
                // A broken secondary vCPU is the guest's problem: stop it, keep serving.
                crate::println!("svm: vCPU {current} {why}; stopped");
                v.stopped = true;
            }
            other => {
                crate::println!("svm: unexpected exit {other:#x} (info1 {:#x}, info2 {:#x})", e.info1, e.info2);
                return End::Broken("unexpected #VMEXIT");
            }
        }
    }
}
