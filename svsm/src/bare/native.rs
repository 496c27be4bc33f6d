//! The native (`svm`) run loop: run the guest, handle each #VMEXIT, serve SVSM calls
//! through the kernel's request loop.
//!
//! Exits and what they mean here:
//! - VMMCALL: the call gate. RIP is advanced by hand (no nRIP-save under TCG), then the
//!   kernel serves the call exactly as on SNP. RAX = `BARE_GATE_RAX` is answered without
//!   dispatch: the platform's round-trip limit, for the benchmark.
//! - CPUID: executed for the guest, with 0x8000_001F EAX[28] set (an SVSM is present).
//! - RDMSR/WRMSR: the MSR policy (`bulwark_svm::msr`, docs/platforms/svm.md "MSRs"):
//!   the guest's own MSRs never exit; the SVSM emulates a few (the calling area's gpa,
//!   spec section 4.2; PAT, EFER writes, the TSC, the MTRRs' "none"), RIP advanced by
//!   hand; every other access gets #GP(0), RIP unchanged. Logged at debug level.
//! - I/O to a port other than the guest's own (COM2, debug-exit): refused with #GP.
//! - Nested page fault: the guest touched memory it has not validated, or SVSM memory.
//!   Refused: logged, and the guest gets #GP; the SVSM keeps serving.
//! - VMRUN, VMLOAD, VMSAVE, STGI, CLGI, SKINIT, INVLPGA, INVD: refused with #UD (the
//!   guest runs no VMs of its own and cannot clear GIF).
//! - HLT: a yield; the next runnable vCPU of this CPU gets it (round robin).
//! - NMI: a kick from another CPU (`svm/kick.rs`): back to the lock, then on.
//! - SHUTDOWN or a state VMRUN refuses: the startup vCPU ends the run; any other vCPU is
//!   stopped and the SVSM keeps serving the rest.
//!
//! Every CPU runs this loop for the vCPUs that live on it (vCPU `i` on CPU `i % cpus`).
//! The SVSM's state (platform and kernel) sits behind one lock, taken to pick a vCPU and
//! to handle an exit that needs the SVSM; exits that need nothing shared (CPUID, the bare
//! gate, a kick, a HLT with no other vCPU to switch to) are handled without it, and the
//! lock is never held while a vCPU is in the guest.

use super::cpu;
use super::svm::kick;
use super::svm::platform::{SvmPlatform, VCPUS_CHANGED, vcpus_changed};
use super::svm::vcpu::{Exit, SvmVcpu};
use abi::hw::discovery::{CPUID_EAX_SVSM_PRESENT, CPUID_LEAF};
use abi::vmcb::{event, exit, offset};
use abi::vmsa::VmsaField;
use core::sync::atomic::{AtomicU32, Ordering};
use kernel::Svsm;
use kernel::platform::{Level, Platform};
use kernel::vcpu::VcpuIndex;
use spin::Mutex;

/// RAX of a VMMCALL the SVSM answers without dispatch (benchmark of the bare gate).
pub const BARE_GATE_RAX: u64 = 0xB1AE_0000_0000_0000;

/// Why the guest can run no more (a guest that finishes leaves through QEMU's debug-exit
/// device itself).
pub enum End {
    Broken(&'static str),
}

/// What every CPU serves: the platform and the kernel.
pub struct Shared {
    pub platform: SvmPlatform,
    pub svsm: Svsm,
}

/// Set once by the boot CPU after the launch.
static SHARED: Mutex<Option<Shared>> = Mutex::new(None);
/// Refused guest accesses so far (the log is rate-limited by it).
static REFUSED: AtomicU32 = AtomicU32::new(0);
/// Refused MSR accesses so far (their debug log is rate-limited by it).
static REFUSED_MSRS: AtomicU32 = AtomicU32::new(0);

/// Hand the launched guest to the run loops of every CPU.
pub fn publish(shared: Shared) {
    *SHARED.lock() = Some(shared);
    vcpus_changed();
}

fn inject_gp(v: &mut SvmVcpu) {
    v.vmcb.set_u64(offset::EVENT_INJ, event::GP | event::TYPE_EXCEPTION | event::ERROR_CODE_VALID | event::VALID);
}

/// #UD: the instruction does not exist for the guest (SVM instructions, INVD).
fn inject_ud(v: &mut SvmVcpu) {
    v.vmcb.set_u64(offset::EVENT_INJ, event::UD | event::TYPE_EXCEPTION | event::VALID);
}

/// Instructions the guest may not execute: all of SVM's, and INVD (it would throw away
/// dirty cache lines of memory that is not the guest's).
/// (VMMCALL is the call gate and handled on its own.)
const REFUSED_INSTRUCTIONS: [u64; 8] =
    [exit::VMRUN, exit::VMLOAD, exit::VMSAVE, exit::STGI, exit::CLGI, exit::SKINIT, exit::INVLPGA, exit::INVD];

/// A vCPU taken out to run on this CPU.
struct Taken {
    index: u32,
    vcpu: SvmVcpu,
    /// No other vCPU of this CPU could run when it was taken: a HLT need not switch.
    alone: bool,
    /// `VCPUS_CHANGED` when it was taken.
    generation: u64,
}

/// Take this CPU's next runnable vCPU after `last` (round robin), if any.
fn take_next(platform: &mut SvmPlatform, cpu: u32, last: Option<u32>, generation: u64) -> Option<Taken> {
    let mine = || platform.runnable().map(|(i, _)| i).filter(|i| platform.home(*i) == cpu);
    let index = mine().find(|i| last.is_none_or(|l| *i > l)).or_else(|| mine().next())?;
    let alone = mine().nth(1).is_none();
    let vcpu = platform.take(index, cpu)?;
    Some(Taken { index, vcpu, alone, generation })
}

/// Serve the vCPUs that live on `cpu` until the guest cannot go on.
pub fn serve(cpu: u32, host_state_pa: u64) -> End {
    let mut last = None;
    // The vCPU to run again at once (taken back in the same lock hold as its exit).
    let mut again: Option<Taken> = None;
    loop {
        let mut t = match again.take() {
            Some(t) => t,
            None => {
                let generation = VCPUS_CHANGED.load(Ordering::SeqCst);
                let taken = SHARED.lock().as_mut().and_then(|s| take_next(&mut s.platform, cpu, last, generation));
                let Some(t) = taken else {
                    // Nothing to run here until a vCPU is created (or the guest is launched).
                    kick::idle_until(cpu, || VCPUS_CHANGED.load(Ordering::SeqCst) != generation);
                    continue;
                };
                t
            }
        };
        let exit = run_until_shared(&mut t, cpu, host_state_pa);
        let Taken { index, vcpu, alone, generation } = t;
        let mut guard = SHARED.lock();
        let Some(s) = guard.as_mut() else { return End::Broken("the guest vanished") };
        s.platform.put_back(index, vcpu);
        last = Some(index);
        let keep = match exit {
            Some(e) => match handle_exit(s, index, cpu, e) {
                Ok(keep) => keep,
                Err(end) => return end,
            },
            None => true,
        };
        // Same vCPU again unless it yielded or the set of vCPUs changed: no new pick.
        if keep && VCPUS_CHANGED.load(Ordering::SeqCst) == generation {
            again = s.platform.take(index, cpu).map(|vcpu| Taken { index, vcpu, alone, generation });
        }
    }
}

/// Run a taken vCPU, handling the exits that need nothing shared, until one does (or a
/// kick calls the vCPU back: `None`).
fn run_until_shared(t: &mut Taken, cpu: u32, host_state_pa: u64) -> Option<Exit> {
    loop {
        let e = t.vcpu.run(cpu, host_state_pa)?;
        let v = &mut t.vcpu;
        match e.code {
            exit::VMMCALL if v.field(VmsaField::Rax) == BARE_GATE_RAX => v.skip(3),
            exit::CPUID => answer_cpuid(v),
            // A kick: the next `run` sees it and calls the vCPU back.
            exit::NMI => {}
            exit::HLT if t.alone && VCPUS_CHANGED.load(Ordering::SeqCst) == t.generation => v.skip(1),
            code if REFUSED_INSTRUCTIONS.contains(&code) => inject_ud(v),
            _ => return Some(e),
        }
    }
}

fn answer_cpuid(v: &mut SvmVcpu) {
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

/// An intercepted RDMSR (or, if `write`, WRMSR) of vCPU `index`: answered as the MSR
/// policy says, or refused with #GP(0); logged at debug level (refusals rate-limited).
fn answer_msr(platform: &mut SvmPlatform, svsm: &Svsm, index: u32, write: bool) {
    let ca = svsm.vcpus().get(VcpuIndex(index)).map_or(0, |c| c.calling_area.0);
    let Some(v) = platform.vcpu_mut(index) else { return };
    let (msr, access, answer) = v.answer_msr(write, ca);
    let refused = answer.is_err();
    if refused {
        inject_gp(v);
    }
    let count = if refused { REFUSED_MSRS.fetch_add(1, Ordering::Relaxed).saturating_add(1) } else { 0 };
    if count <= 32 || count.is_multiple_of(100) {
        let name = ::svm::msr::rule_for(msr).name;
        let gp = if refused { "; #GP(0) injected" } else { "" };
        platform
            .log(Level::Debug, format_args!("svm: vCPU {index} MSR {msr:#x} ({name}) {access:x?}: {answer:x?}{gp}"));
    }
}

/// Handle an exit of vCPU `index` (back in the platform) that needs the SVSM, under the
/// lock; `Ok(true)` if the vCPU may go on running now, `Ok(false)` if another one's turn.
fn handle_exit(s: &mut Shared, index: u32, cpu: u32, e: Exit) -> Result<bool, End> {
    let Shared { platform, svsm } = s;
    // Deleted (dropped) or stopped while it was out: its exit is not served.
    let Some(v) = platform.vcpu_mut(index).filter(|v| !v.stopped) else { return Ok(false) };
    match e.code {
        exit::VMMCALL => {
            v.skip(3);
            svsm.handle_entry(platform, VcpuIndex(index));
        }
        exit::CPUID => answer_cpuid(v),
        exit::MSR => answer_msr(platform, svsm, index, e.info1 == 1),
        exit::IOIO | exit::NPF => {
            let refused = REFUSED.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            // The first refusals in full, then every 100th: a guest cannot flood the console.
            if refused <= 32 || refused.is_multiple_of(100) {
                let rip = v.field(VmsaField::Rip);
                if e.code == exit::IOIO {
                    crate::println!(
                        "svm: refused vCPU {index}'s I/O to port {:#x} at rip {rip:#x}; #GP injected ({refused} so far)",
                        e.info1 >> 16
                    );
                } else {
                    crate::println!(
                        "svm: refused vCPU {index}'s access to {:#x} (not validated, or SVSM memory) at rip {rip:#x}; #GP injected ({refused} so far)",
                        e.info2
                    );
                }
            }
            inject_gp(v);
        }
        // A yield: the loop moves on to this CPU's next vCPU.
        exit::HLT => {
            v.skip(1);
            return Ok(false);
        }
        exit::NMI => {}
        code @ (exit::SHUTDOWN | exit::INVALID) => {
            let why = if code == exit::SHUTDOWN { "shut down (triple fault)" } else { "has a state VMRUN refuses" };
            if index == VcpuIndex::STARTUP.0 {
                crate::println!("svm: the startup vCPU {why}");
                return Err(End::Broken("the startup vCPU cannot run"));
            }
            // A broken secondary vCPU is the guest's problem: stop it, keep serving.
            crate::println!("svm: vCPU {index} (cpu {cpu}) {why}; stopped");
            v.stopped = true;
            return Ok(false);
        }
        code if REFUSED_INSTRUCTIONS.contains(&code) => inject_ud(v),
        other => {
            // An exit the SVSM never asked for: the vCPU cannot go on, the others can.
            crate::println!(
                "svm: vCPU {index}: unexpected exit {other:#x} (info1 {:#x}, info2 {:#x})",
                e.info1,
                e.info2
            );
            if index == VcpuIndex::STARTUP.0 {
                return Err(End::Broken("unexpected #VMEXIT of the startup vCPU"));
            }
            v.stopped = true;
            return Ok(false);
        }
    }
    Ok(true)
}
