//! The SVSM's own GDB stub (cargo feature `gdb`, command line `gdb`), on COM3.
//!
//! QEMU's gdbstub sees the SVSM too, but only where the hypervisor can read its memory;
//! on SEV-SNP hardware the SVSM's memory is encrypted and only a stub inside it can show
//! it. This one speaks the GDB remote protocol (the `gdbstub` crate) over the third serial
//! port, which `cargo xtask boot --gdb` connects to a TCP port.
//!
//! At boot the SVSM stops on a breakpoint and waits for GDB. From then on every
//! exception goes to the debugger: a breakpoint (GDB writes INT3 itself), the end of a
//! single step (TF), or a fault, reported as the matching signal. The CPU that trapped
//! waits in the stub; the others run on (and wait too if they trap meanwhile). GDB reads
//! and writes memory only inside the SVSM's region and the CPU's private page: the rest of
//! the identity map is guest memory and device registers, where a read can have effects.
#![cfg_attr(feature = "gdb", expect(unsafe_code, reason = "the debugger reads and writes SVSM memory"))]

use super::exceptions::Frame;
use core::sync::atomic::{AtomicBool, Ordering};

/// The stub is attached: exceptions go to it.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Wait for GDB at a breakpoint (the command line asked for the stub).
pub fn start() {
    if !cfg!(feature = "gdb") {
        crate::println!("gdb: this SVSM was built without its GDB stub (cargo xtask boot --gdb builds it)");
        return;
    }
    x86::uart::Uart16550::COM3.init();
    ACTIVE.store(true, Ordering::SeqCst);
    crate::println!("gdb: stopped; waiting for GDB on COM3");
    crate::bare::cpu::breakpoint();
    crate::println!("gdb: running");
}

/// An exception while the stub is attached: hand the CPU to GDB until it resumes.
/// `false` if the stub is not attached (the exception is then a bug to report).
pub fn trap(frame: &mut Frame) -> bool {
    if !ACTIVE.load(Ordering::SeqCst) {
        return false;
    }
    #[cfg(feature = "gdb")]
    {
        stub::trap(frame)
    }
    #[cfg(not(feature = "gdb"))]
    {
        let _ = frame;
        false
    }
}

#[cfg(feature = "gdb")]
mod stub {
    use super::super::cpu::low32;
    use super::super::exceptions::Frame;
    use super::super::percpu::PER_CPU_VA;
    use super::super::svm::hw::SVSM_REGION;
    use super::ACTIVE;
    use core::sync::atomic::{AtomicBool, Ordering};
    use gdbstub::common::Signal;
    use gdbstub::conn::Connection;
    use gdbstub::stub::state_machine::GdbStubStateMachine;
    use gdbstub::stub::{GdbStub, SingleThreadStopReason};
    use gdbstub::target::ext::base::BaseOps;
    use gdbstub::target::ext::base::singlethread::{
        SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep, SingleThreadSingleStepOps,
    };
    use gdbstub::target::{Target, TargetError, TargetResult};
    use gdbstub_arch::x86::X86_64_SSE;
    use gdbstub_arch::x86::reg::X86_64CoreRegs;
    use spin::Mutex;
    use x86::uart::Uart16550;

    const TRAP_FLAG: u64 = 1 << 8;
    const PACKET_BYTES: usize = 4096;

    /// COM3, byte by byte.
    struct Com3;

    impl Connection for Com3 {
        type Error = ();
        fn write(&mut self, byte: u8) -> Result<(), ()> {
            Uart16550::COM3.put(byte);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), ()> {
            Ok(())
        }
    }

    fn read_byte() -> u8 {
        loop {
            if let Some(b) = Uart16550::COM3.try_get() {
                return b;
            }
            core::hint::spin_loop();
        }
    }

    /// What GDB asked for when it resumed the CPU.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Resume {
        Continue,
        Step,
    }

    /// The stopped CPU as GDB sees it: a copy of its registers, written back on resume.
    struct Stopped {
        regs: X86_64CoreRegs,
        resume: Resume,
    }

    impl Stopped {
        fn new(f: &Frame) -> Self {
            let mut regs = X86_64CoreRegs {
                regs: [
                    f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp, f.rsp, f.r8, f.r9, f.r10, f.r11, f.r12, f.r13,
                    f.r14, f.r15,
                ],
                rip: f.rip,
                eflags: low32(f.rflags & !TRAP_FLAG),
                ..Default::default()
            };
            regs.segments.cs = low32(f.cs);
            regs.segments.ss = low32(f.ss);
            Self { regs, resume: Resume::Continue }
        }

        /// Write GDB's register values back (RSP, CS and SS stay: the frame lives on
        /// that stack) and set TF for a single step.
        fn apply(&self, f: &mut Frame) {
            let r = &self.regs.regs;
            [f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp] = [r[0], r[1], r[2], r[3], r[4], r[5], r[6]];
            [f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15] =
                [r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]];
            f.rip = self.regs.rip;
            // Only the arithmetic flags and DF are GDB's to change; IF, IOPL and the rest stay.
            const GDB_FLAGS: u64 = 0x8D5 | 1 << 10;
            f.rflags = (f.rflags & !GDB_FLAGS & !TRAP_FLAG) | (u64::from(self.regs.eflags) & GDB_FLAGS);
            if self.resume == Resume::Step {
                f.rflags |= TRAP_FLAG;
            }
        }
    }

    /// May GDB touch `len` bytes at `addr`? Only SVSM memory: its region and this CPU's
    /// private page.
    fn debuggable(addr: u64, len: usize) -> bool {
        let Some(end) = addr.checked_add(len as u64) else { return false };
        let inside = |r: core::ops::Range<u64>| r.start <= addr && end <= r.end;
        inside(SVSM_REGION) || inside(PER_CPU_VA..PER_CPU_VA + 4096)
    }

    impl Target for Stopped {
        type Arch = X86_64_SSE;
        type Error = ();
        fn base_ops(&mut self) -> BaseOps<'_, X86_64_SSE, ()> {
            BaseOps::SingleThread(self)
        }
        /// Breakpoints are GDB's own INT3 bytes, written through memory writes; the #BP
        /// they raise reaches the stub like any exception.
        fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
            true
        }
    }

    impl SingleThreadBase for Stopped {
        fn read_registers(&mut self, regs: &mut X86_64CoreRegs) -> TargetResult<(), Self> {
            *regs = self.regs.clone();
            Ok(())
        }
        fn write_registers(&mut self, regs: &X86_64CoreRegs) -> TargetResult<(), Self> {
            self.regs = regs.clone();
            Ok(())
        }
        fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
            if !debuggable(start, data.len()) {
                return Err(TargetError::NonFatal);
            }
            for (i, b) in data.iter_mut().enumerate() {
                // SAFETY: SVSM memory (checked), mapped for the SVSM; a volatile byte read
                // takes no reference and tolerates concurrent writers on other CPUs.
                *b = unsafe { core::ptr::read_volatile((start + i as u64) as *const u8) };
            }
            Ok(data.len())
        }
        fn write_addrs(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
            if !debuggable(start, data.len()) {
                return Err(TargetError::NonFatal);
            }
            for (i, b) in data.iter().enumerate() {
                // SAFETY: SVSM memory (checked), writable in the SVSM's map. Changing the
                // SVSM's memory is what the person at the debugger asked for.
                unsafe { core::ptr::write_volatile((start + i as u64) as *mut u8, *b) };
            }
            Ok(())
        }
        fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
            Some(self)
        }
    }

    impl SingleThreadResume for Stopped {
        fn resume(&mut self, _signal: Option<Signal>) -> Result<(), ()> {
            self.resume = Resume::Continue;
            Ok(())
        }
        fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
            Some(self)
        }
    }

    impl SingleThreadSingleStep for Stopped {
        fn step(&mut self, _signal: Option<Signal>) -> Result<(), ()> {
            self.resume = Resume::Step;
            Ok(())
        }
    }

    type Machine = GdbStubStateMachine<'static, Stopped, Com3>;

    /// The session between stops (GDB waits for the next stop while the CPU runs).
    static SESSION: Mutex<Option<Machine>> = Mutex::new(None);
    /// What the last resume asked for (a #DB after a step is the step's end).
    static STEPPING: AtomicBool = AtomicBool::new(false);

    fn stop_reason(vector: u64) -> SingleThreadStopReason<u64> {
        match vector {
            1 if STEPPING.load(Ordering::SeqCst) => SingleThreadStopReason::DoneStep,
            1 | 3 => SingleThreadStopReason::Signal(Signal::SIGTRAP),
            0 => SingleThreadStopReason::Signal(Signal::SIGFPE),
            6 => SingleThreadStopReason::Signal(Signal::SIGILL),
            13 | 14 => SingleThreadStopReason::Signal(Signal::SIGSEGV),
            _ => SingleThreadStopReason::Signal(Signal::SIGBUS),
        }
    }

    pub fn trap(frame: &mut Frame) -> bool {
        // One CPU at a time talks to GDB; another that traps waits here.
        let mut session = SESSION.lock();
        let mut cpu = Stopped::new(frame);
        let started = match session.take() {
            // A new session: the boot breakpoint, or the first stop after GDB left.
            None => {
                let buffer = alloc::boxed::Box::leak(alloc::boxed::Box::new([0u8; PACKET_BYTES]));
                match GdbStub::builder(Com3).with_packet_buffer(buffer).build() {
                    Ok(stub) => stub.run_state_machine(&mut cpu).map_err(|e| crate::println!("gdb: {e:?}")),
                    Err(e) => {
                        crate::println!("gdb: {e:?}");
                        Err(())
                    }
                }
            }
            Some(GdbStubStateMachine::Running(running)) => {
                running.report_stop(&mut cpu, stop_reason(frame.vector)).map_err(|e| crate::println!("gdb: {e:?}"))
            }
            Some(other) => Ok(other),
        };
        let Ok(mut machine) = started else { return give_up(frame) };
        loop {
            let next = match machine {
                GdbStubStateMachine::Idle(idle) => idle.incoming_data(&mut cpu, read_byte()),
                GdbStubStateMachine::Running(running) => {
                    // GDB resumed the CPU: back to the interrupted code until the next stop.
                    cpu.apply(frame);
                    STEPPING.store(cpu.resume == Resume::Step, Ordering::SeqCst);
                    *session = Some(GdbStubStateMachine::Running(running));
                    return true;
                }
                GdbStubStateMachine::CtrlCInterrupt(interrupt) => {
                    interrupt.interrupt_handled(&mut cpu, Some(SingleThreadStopReason::Signal(Signal::SIGINT)))
                }
                GdbStubStateMachine::Disconnected(_) => {
                    crate::println!("gdb: GDB detached; exceptions are bugs again");
                    ACTIVE.store(false, Ordering::SeqCst);
                    cpu.resume = Resume::Continue;
                    cpu.apply(frame);
                    return true;
                }
            };
            machine = match next {
                Ok(m) => m,
                Err(e) => {
                    crate::println!("gdb: {e:?}");
                    return give_up(frame);
                }
            };
        }
    }

    /// The stub failed: detach. A debug trap just goes on; a fault is reported as a bug.
    fn give_up(frame: &mut Frame) -> bool {
        crate::println!("gdb: the stub failed; detaching");
        ACTIVE.store(false, Ordering::SeqCst);
        frame.rflags &= !TRAP_FLAG;
        matches!(frame.vector, 1 | 3)
    }
}
