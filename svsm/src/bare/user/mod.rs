//! User mode on bare metal: processes at CPL 3 over the kernel's system call layer
//! (`kernel::user`, docs/syscalls.md).
//!
//! What is here: the CPL 0/3 doors (`entry.rs`, SYSCALL), a process's page tables
//! (`space.rs`), the services the kernel gives processes, and the run loop: a process
//! runs on the CPU that starts it until it exits, faults or blocks, its system calls
//! served by `kernel::user::Process::syscall` in between. At boot the SVSM runs the probe
//! module (services/probe), once to say hello through system calls and once per
//! isolation probe, each of which must be ended by a fault; `cargo xtask boot` checks the
//! verdicts. Not here yet: a scheduler (threads, blocking, preemption by the local APIC
//! timer) and the vTPM as a process on bare metal.

mod entry;
mod space;

use super::percpu;
use abi::syscall::{self as sys, SysError};
use entry::UserRegs;
use kernel::user::loader;
use kernel::user::{Call, Outcome, Process, Services};
use space::UserSpace;
use spin::Mutex;

/// The probe module, packaged into the image by `cargo xtask` (empty when the SVSM is
/// built without it, e.g. by clippy).
static PROBE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe.elf"));

/// How a process's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(u64),
    /// A fault at CPL 3: vector, error code, CR2 for a page fault, RIP.
    Faulted {
        vector: u64,
        error: u64,
        address: u64,
        rip: u64,
    },
    /// It waits for an event; without a scheduler it cannot be resumed yet.
    Blocked,
}

/// A fault taken at CPL 3, noted by [`fault`] for the run loop of the same CPU.
#[derive(Clone, Copy)]
struct Fault {
    vector: u64,
    error: u64,
    address: u64,
    rip: u64,
}

const MAX_CPUS: usize = 64;
static FAULTS: [Mutex<Option<Fault>>; MAX_CPUS] = [const { Mutex::new(None) }; MAX_CPUS];

fn fault_slot() -> Option<&'static Mutex<Option<Fault>>> {
    FAULTS.get(usize::try_from(percpu::this_cpu()).ok()?)
}

/// An exception taken at CPL 3 (`exceptions.rs`): the process is over; back to the run
/// loop that entered it.
pub fn fault(frame: &super::exceptions::Frame) -> ! {
    let address = if frame.vector == 14 { super::cpu::read_cr2() } else { 0 };
    if let Some(slot) = fault_slot() {
        *slot.lock() = Some(Fault { vector: frame.vector, error: frame.error, address, rip: frame.rip });
    }
    entry::abort_to_kernel()
}

/// Clocks, entropy and the log, as the bare-metal SVSM has them.
struct BareServices;

impl Services for BareServices {
    fn clock_ns(&mut self) -> u64 {
        super::clock::monotonic_ns()
    }

    fn random(&mut self, buf: &mut [u8]) -> bool {
        for chunk in buf.chunks_mut(8) {
            let Some(v) = super::cpu::rdrand() else { return false };
            let bytes = v.to_le_bytes();
            chunk.copy_from_slice(bytes.get(..chunk.len()).unwrap_or(&[]));
        }
        true
    }

    fn log(&mut self, process: u32, line: &[u8]) {
        let text = core::str::from_utf8(line).unwrap_or("(not UTF-8)");
        println!("user: process {process}: {}", text.trim_end());
    }

    fn vm_bitmap(&self) -> u64 {
        // The guest the svm platform runs is VM index 1 (VMPL 1's place).
        0b10
    }

    fn features(&self) -> u64 {
        0
    }
}

/// Run `process` from `regs` until it exits, faults or blocks.
fn run(process: &mut Process, space: &mut UserSpace, regs: &mut UserRegs) -> Ended {
    percpu::set_user_half(Some(space.user_half()));
    let ended = loop {
        if entry::enter(regs) == entry::FAULT {
            let f = fault_slot().and_then(|s| s.lock().take());
            let f = f.unwrap_or(Fault { vector: u64::MAX, error: 0, address: 0, rip: regs.rip });
            break Ended::Faulted { vector: f.vector, error: f.error, address: f.address, rip: f.rip };
        }
        let call = Call { number: regs.rax, args: [regs.rdi, regs.rsi, regs.r8, regs.r9, regs.r10] };
        match process.syscall(space, &mut BareServices, call) {
            Outcome::Return(rax) => regs.rax = rax,
            Outcome::Exit(code) => break Ended::Exited(code),
            Outcome::Block(_) => {
                // Made again when it resumes: back to the SYSCALL instruction (2 bytes).
                regs.rip = regs.rip.wrapping_sub(2);
                break Ended::Blocked;
            }
            // No scheduler yet: the thread is refused, and the count given back.
            Outcome::ThreadStart { .. } => {
                process.thread_ended();
                regs.rax = SysError::NoSys.to_rax();
            }
        }
        // New page tables, or translations to drop: reinstall the user half (a CR3
        // reload, which flushes this CPU's TLB).
        if matches!(call.number, sys::MMAP | sys::MUNMAP | sys::BATCH) {
            percpu::set_user_half(Some(space.user_half()));
        }
    };
    if ended != Ended::Blocked {
        process.end(space);
    }
    percpu::set_user_half(None);
    ended
}

/// Start the probe module as process `id` in `mode` and run it to its end.
fn run_probe(id: u32, mode: u64) -> Result<Ended, loader::LoadError> {
    let mut process = Process::new(id, 64);
    let mut space = UserSpace::default();
    let start = loader::load(&mut process, &mut space, PROBE)?;
    let mut regs = UserRegs { rip: start.entry, rsp: start.stack_top, rdi: mode, ..UserRegs::default() };
    Ok(run(&mut process, &mut space, &mut regs))
}

/// What each probe must come to.
#[derive(Clone, Copy)]
enum Expect {
    Exit(u64),
    PageFault,
    AnyFault,
}

/// Turn on user mode on this CPU and run the probe module's checks; prints a verdict
/// per probe and a summary `cargo xtask boot` looks for.
pub fn boot_check() {
    entry::enable_syscall();
    let (smep, smap) = super::cpu::enable_smep_smap();
    println!("user: SYSCALL entry on; SMEP {}, SMAP {}", on(smep), on(smap));
    if PROBE.is_empty() {
        println!("user: no service module in this image (built without `cargo xtask`)");
        return;
    }
    const PROBES: [(u64, &str, Expect); 7] = [
        (0, "hello", Expect::Exit(0)),
        (1, "reads SVSM memory", Expect::PageFault),
        (2, "writes its own code", Expect::PageFault),
        (3, "executes its data", Expect::PageFault),
        (4, "reads guest memory not mapped for it", Expect::PageFault),
        (5, "executes int 0x80", Expect::AnyFault),
        (6, "passes an SVSM address to LOG", Expect::Exit(6)),
    ];
    let mut as_expected = 0;
    for (id, (mode, what, expect)) in (1u32..).zip(PROBES) {
        let ended = run_probe(id, mode);
        let good = match (expect, ended) {
            (Expect::Exit(want), Ok(Ended::Exited(code))) => code == want,
            (Expect::PageFault, Ok(Ended::Faulted { vector: 14, .. })) => true,
            (Expect::AnyFault, Ok(Ended::Faulted { .. })) => true,
            _ => false,
        };
        as_expected += usize::from(good);
        let how = match ended {
            Ok(Ended::Exited(code)) => alloc::format!("exited with {code}"),
            Ok(Ended::Faulted { vector, error, address, rip }) => {
                alloc::format!("ended by exception {vector} (error {error:#x}, address {address:#x}, rip {rip:#x})")
            }
            Ok(Ended::Blocked) => "blocked".into(),
            Err(e) => alloc::format!("not loaded: {e:?}"),
        };
        println!("user: probe {what}: {how}{}", if good { "" } else { " -- NOT AS EXPECTED" });
    }
    println!("user: {as_expected} of {} probes ended as expected", PROBES.len());
}

fn on(b: bool) -> &'static str {
    if b { "on" } else { "unavailable" }
}
