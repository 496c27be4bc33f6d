//! User mode on bare metal: processes at CPL 3 over the kernel's system call layer
//! (`kernel::user`, docs/syscalls.md).
//!
//! What is here: the CPL 0/3 doors (`entry.rs`, SYSCALL), a process's page tables
//! (`space.rs`), the services the kernel gives processes, and the run loop: a process
//! runs on the CPU that starts it until it exits, faults or blocks, its system calls
//! served by `kernel::user::Process::syscall` in between. At boot the SVSM runs the probe
//! module (services/probe), once to say hello through system calls and once per
//! isolation probe, each of which must be ended by a fault; `cargo xtask boot` checks the
//! verdicts. A process's threads take turns on the CPU that runs it (time slices of the
//! local APIC timer); not here yet: running a process on several CPUs at once, and
//! waking a blocked process from another CPU.

mod entry;
mod space;

use super::{lapic, percpu};
use abi::syscall::SysError;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};
pub use entry::UserRegs;
use kernel::user::loader;
use kernel::user::vm::{DeviceModel, VmObjects};
use kernel::user::{Call, ChildSlot, Exec, Outcome, Process, Services};
use space::UserSpace;
use spin::Mutex;

/// Bytes that start on a page: a module whose read-only segments are mapped into its
/// process straight from the image (`loader`), never copied.
#[repr(C, align(4096))]
pub struct PageAligned<T: ?Sized>(pub T);

/// The probe module, packaged into the image by `cargo xtask` (empty when the SVSM is
/// built without it, e.g. by clippy).
static PROBE: &PageAligned<[u8]> = &PageAligned(*include_bytes!(concat!(env!("OUT_DIR"), "/probe.elf")));

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
    /// Every thread waits for an event; run it again once one came.
    Blocked,
    /// It used up its time budget without exiting or blocking; without a scheduler to
    /// give it more later, it is ended.
    Preempted {
        slices: u64,
    },
}

/// A fault (or the end of a time slice) taken at CPL 3, noted by [`fault`] for the run
/// loop of the same CPU, with the process's registers at that point.
#[derive(Clone, Copy)]
struct Fault {
    vector: u64,
    error: u64,
    address: u64,
    rip: u64,
    regs: UserRegs,
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
    let f = frame;
    let regs = UserRegs {
        rax: f.rax,
        rbx: f.rbx,
        rcx: f.rcx,
        rdx: f.rdx,
        rsi: f.rsi,
        rdi: f.rdi,
        rbp: f.rbp,
        r8: f.r8,
        r9: f.r9,
        r10: f.r10,
        r11: f.r11,
        r12: f.r12,
        r13: f.r13,
        r14: f.r14,
        r15: f.r15,
        rip: f.rip,
        rsp: f.rsp,
        rflags: f.rflags,
    };
    if let Some(slot) = fault_slot() {
        *slot.lock() = Some(Fault { vector: f.vector, error: f.error, address, rip: f.rip, regs });
    }
    entry::abort_to_kernel()
}

/// Clocks, entropy and the log, as the bare-metal SVSM has them, the guest memory a
/// process with the right may map, and the VM objects a device model may open.
struct BareServices<'a> {
    guest: Option<&'a kernel::pages::PageTracker>,
    vms: Option<&'a Arc<VmObjects>>,
}

impl Services for BareServices<'_> {
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
        println!("user: process {process}: {}", Escaped(text.trim_end()));
    }

    fn vm_bitmap(&self) -> u64 {
        // On SEV-SNP VM index n is VMPL n: the guest's VMPL. The guest the svm platform
        // runs is VM index 1 (VMPL 1's place).
        1u64 << super::snp::guest_vmpl().unwrap_or(1).min(63)
    }

    fn features(&self) -> u64 {
        // Platform bits 0..=2 (docs/syscalls.md "CAPABILITIES"): 1 SNP, 0 native. Only
        // the svm platform sees the guest's port I/O and CPUID and runs its nested paging
        // (under SEV-SNP all three are the host's or the guest's own).
        match super::snp::guest_vmpl() {
            Some(_) => 1,
            None => {
                use abi::syscall::features::{IOIO_EVENTS, MMIO_EVENTS, VCPU_EVENTS};
                IOIO_EVENTS | MMIO_EVENTS | VCPU_EVENTS
            }
        }
    }

    fn guest_pages(&self) -> Option<&kernel::pages::PageTracker> {
        self.guest
    }

    fn vm_objects(&self) -> Option<&VmObjects> {
        self.vms.map(|v| &**v)
    }

    fn ports_claimable(&self, first: u16, count: u16) -> bool {
        // Every port the SVSM intercepts: all but the guest's own (svm's I/O policy).
        super::snp::guest_vmpl().is_none()
            && (0..count).all(|i| first.checked_add(i).is_some_and(|p| !::svm::iopm::is_guest_port(p)))
    }

    fn module(&self, name: &[u8]) -> Option<u32> {
        EXEC_MODULES
            .iter()
            .position(|(n, image)| n.as_bytes() == name && !image.is_empty())
            .and_then(|i| u32::try_from(i).ok())
    }
}

/// The modules EXEC may start, by name: the probe's. The vTPM's is not among them: only
/// the kernel starts it, with the channel it serves.
static EXEC_MODULES: [(&str, &[u8]); 1] = [("probe", &PROBE.0)];

/// A process EXEC starts may map this many pages (as a probe), and hold this many more
/// of the SVSM's heap for its tables.
const CHILD_QUOTA: u64 = PROBE_QUOTA;

/// The id the next process EXEC starts gets (the kernel's own processes have ids below).
static NEXT_CHILD_ID: AtomicU32 = AtomicU32::new(1000);

/// A process EXEC made, waiting for its first run: it runs on this CPU as soon as its
/// parent waits or ends ([`Loaded::run`]), not inside the parent's run.
struct Started {
    child: Loaded,
    seat: kernel::user::vm::Seat,
    slot: ChildSlot,
}

/// EXEC: load the module as a new process and move the passed handles into it; it is
/// queued in `started` for its first run. A process has the right only where VM objects
/// exist: the SVSM runs processes for their events, and a child's are the ones passed to
/// it (or claimed through a VM passed to it). On any error every handle is still the
/// caller's.
fn start_child(
    parent: &mut Process,
    exec: Exec,
    services: &BareServices<'_>,
    started: &mut Vec<Started>,
) -> Result<u32, SysError> {
    let vms = services.vms.ok_or(SysError::NotSupp)?;
    let module = usize::try_from(exec.module).ok().and_then(|i| EXEC_MODULES.get(i));
    let (name, image) = *module.ok_or(SysError::NotFound)?;
    started.try_reserve(1).map_err(|_| SysError::NoMem)?;
    let id = NEXT_CHILD_ID.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |id| id.checked_add(1));
    let id = id.map_err(|_| SysError::NoMem)?;
    let seat = vms.seat(id)?;
    let loaded = Loaded::new(id, CHILD_QUOTA, CHILD_QUOTA + 32, image, Vec::new(), exec.arg)
        .map_err(|_| SysError::NoMem)
        .and_then(|mut child| parent.pass(&exec, &mut child.process, services).map(|()| child));
    let child = match loaded {
        Ok(child) => child,
        Err(e) => {
            vms.end_process(id);
            return Err(e);
        }
    };
    println!(
        "user: process {} started process {id} from module {name} with {} of its handles",
        parent.id,
        exec.handles().len()
    );
    started.push(Started { child, seat, slot: exec.slot });
    Ok(id)
}

/// A process's log text with control characters escaped (`\x0a`): a process cannot end
/// its line and forge one of the SVSM's own in the log the guest reads (found by review).
struct Escaped<'a>(&'a str);

impl core::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "\\x{:02x}", u32::from(c))?;
            } else {
                core::fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

/// Local-APIC timer ticks per millisecond (0 until [`boot_check`] measured them).
static TIMER_TICKS_PER_MS: AtomicU32 = AtomicU32::new(0);

/// The local-APIC timer's ticks per millisecond, as measured at boot (0 before).
pub fn timer_ticks_per_ms() -> u32 {
    TIMER_TICKS_PER_MS.load(Ordering::Relaxed)
}
/// A process runs at most this long before the SVSM takes the CPU back.
const SLICE_MS: u32 = 10;

/// A thread of a process: its registers at CPL 3 while another thread runs or it waits.
#[derive(Debug)]
struct Thread {
    regs: UserRegs,
    /// What its blocked call waits for: it is not run again until that is ready.
    blocked: Option<kernel::user::Wait>,
}

/// Run `process`'s threads until the last one exits, one faults, all wait for an event,
/// or the process has run `budget_ms` (in time slices where there are slices, on the clock
/// where there are none). They take turns on this CPU: the running thread
/// keeps it until it blocks or its time slice ends (the local APIC's timer takes the CPU
/// back even from a thread that never makes a system call), then the next one in line
/// runs. A blocked thread's call is made again when its turn comes and what it waits for
/// is there (until then its turn passes without running it), so a process whose
/// threads all wait returns [`Ended::Blocked`] and resumes where each one was.
fn run(
    process: &mut Process,
    space: &mut UserSpace,
    threads: &mut Vec<Thread>,
    next_id: &mut u64,
    budget_ms: u64,
    services: &mut BareServices<'_>,
    children: &mut Vec<Started>,
) -> Ended {
    percpu::set_user_half(Some(space.user_half()));
    let slice = TIMER_TICKS_PER_MS.load(Ordering::Relaxed).saturating_mul(SLICE_MS);
    let started = super::clock::monotonic_ns();
    let mut slices = 0u64;
    // The timer runs on across system calls (the SVSM serves them with interrupts off;
    // a slice that ends meanwhile is delivered as the process resumes): programming the
    // local APIC on every call would cost more than the call.
    let arm = || {
        if slice > 0 {
            lapic::arm_timer(slice);
        }
    };
    arm();
    let (mut current, mut waiting) = (0usize, 0usize);
    let ended = loop {
        let Some(thread) = threads.get_mut(current) else { break Ended::Exited(0) };
        // A thread whose blocked call would block again is not run: it keeps its turn
        // for when its event comes (a device model's thread that waits on another event
        // than the access the process was run for, say).
        if thread.blocked.as_ref().is_some_and(|w| !w.ready()) {
            waiting += 1;
            if waiting >= threads.len() {
                break Ended::Blocked;
            }
            current = (current + 1) % threads.len();
            continue;
        }
        thread.blocked = None;
        let regs = &mut thread.regs;
        let kind = entry::enter(regs, slice > 0);
        percpu::restore_gs_base();
        if kind == entry::FAULT {
            let f = fault_slot().and_then(|s| s.lock().take());
            let f = f.unwrap_or(Fault { vector: u64::MAX, error: 0, address: 0, rip: regs.rip, regs: *regs });
            if let Some(answered) = vc_for(space, &f) {
                *regs = answered;
                continue;
            }
            if f.vector == u64::from(lapic::TIMER_VECTOR) {
                lapic::eoi();
                *regs = f.regs;
                slices += 1;
                // The budget counts slices, not the clock: a host that stops this CPU for
                // a while (a loaded host under emulation does, for tens of milliseconds)
                // costs the process the one slice that ends late, not its whole budget.
                if slices.saturating_mul(u64::from(SLICE_MS)) >= budget_ms {
                    break Ended::Preempted { slices };
                }
                arm();
                // The next thread's turn.
                (current, waiting) = ((current + 1) % threads.len().max(1), 0);
                continue;
            }
            // A fault in any thread ends the process: its memory may be in any state.
            break Ended::Faulted { vector: f.vector, error: f.error, address: f.address, rip: f.rip };
        }
        let call = Call { number: regs.rax, args: [regs.rdi, regs.rsi, regs.r8, regs.r9, regs.r10] };
        match process.syscall(space, services, call) {
            Outcome::Return(rax) => {
                regs.rax = rax;
                waiting = 0;
            }
            // EXIT ends the thread; the process ends with its last one.
            Outcome::Exit(code) => {
                threads.remove(current);
                if threads.is_empty() {
                    break Ended::Exited(code);
                }
                process.thread_ended();
                (current, waiting) = (current % threads.len(), 0);
            }
            Outcome::Block(wait) => {
                // Made again once what it waits for is there: back to the SYSCALL
                // instruction (2 bytes).
                regs.rip = regs.rip.wrapping_sub(2);
                if let Some(t) = threads.get_mut(current) {
                    t.blocked = Some(wait);
                }
                waiting += 1;
                if waiting >= threads.len() {
                    break Ended::Blocked;
                }
                current = (current + 1) % threads.len();
            }
            Outcome::Exec(exec) => {
                let rax = start_child(process, exec, services, children).map_or_else(SysError::to_rax, u64::from);
                if let Some(t) = threads.get_mut(current) {
                    t.regs.rax = rax;
                }
                waiting = 0;
            }
            Outcome::ThreadStart { entry, stack, arg } => {
                // The kernel checked the entry and stack and counted the thread; here it
                // gets its registers (and FS, shared with the process's first thread).
                let id = *next_id;
                let regs = UserRegs { rip: entry, rsp: stack, rdi: arg, ..UserRegs::default() };
                let new = Thread { regs, blocked: None };
                if threads.try_reserve(1).is_ok() {
                    threads.push(new);
                    *next_id += 1;
                    if let Some(t) = threads.get_mut(current) {
                        t.regs.rax = id;
                    }
                } else {
                    process.thread_ended();
                    if let Some(t) = threads.get_mut(current) {
                        t.regs.rax = SysError::NoMem.to_rax();
                    }
                }
                waiting = 0;
            }
        }
        // A new top-level table, or translations to drop: reinstall the user half (a CR3
        // reload, which flushes this CPU's TLB).
        if space.take_changed() {
            percpu::set_user_half(Some(space.user_half()));
        }
        // Without time slices (SEV-SNP) the budget is checked at every system call: a
        // process that calls in a loop (CLOCK, say) without ever answering is ended as
        // one the timer took back would be. One that never calls keeps the CPU there.
        if slice == 0 && super::clock::monotonic_ns().saturating_sub(started) / 1_000_000 >= budget_ms {
            break Ended::Preempted { slices };
        }
    };
    if slice > 0 {
        lapic::disarm_timer();
    }
    if ended != Ended::Blocked {
        process.end(space, services);
        threads.clear();
    }
    percpu::set_user_half(None);
    ended
}

/// The registers after the instruction, for a CPUID, RDTSC or RDTSCP that raised #VC at
/// CPL 3 (on SEV-SNP: libcrypto's feature probe runs CPUID when the vTPM's process starts,
/// and its time stamps read the TSC if the host intercepts that). They are answered as for
/// the SVSM's own code (`snp::process_vc`: CPUID from the CPUID page, the TSC from the
/// host); any other #VC at CPL 3 ends the process, as a fault. The instruction is read
/// from the process's own pages, so an exception the host injected with one of these exit
/// codes at another instruction ends the process too.
fn vc_for(space: &UserSpace, f: &Fault) -> Option<UserRegs> {
    const VC: u64 = 29;
    /// The end of the user half: an instruction that ends past it has no next one.
    const USER_END: u64 = 1 << 47;
    if f.vector != VC {
        return None;
    }
    // The longest of the three (RDTSCP, 3 bytes); fewer where the process's code ends.
    let mut insn = [0u8; 3];
    let mut have = 0;
    for (i, byte) in (0u64..).zip(insn.iter_mut()) {
        if kernel::user::memory::AddressSpace::read(space, f.rip.wrapping_add(i), core::slice::from_mut(byte)).is_err()
        {
            break;
        }
        have += 1;
    }
    let mut regs = f.regs;
    let len = super::snp::process_vc(f.error, insn.get(..have)?, &mut regs)?;
    regs.rip = f.rip.checked_add(len).filter(|next| *next < USER_END)?;
    Some(regs)
}

/// A module loaded as a process, ready to run or to resume.
pub struct Loaded {
    process: Process,
    space: UserSpace,
    threads: Vec<Thread>,
    /// The id the next thread gets (the first thread is 0).
    next_id: u64,
    /// The first thread's FS page (its C stack canary), which later threads share.
    thread_page: u64,
}

impl core::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Loaded").field("process", &self.process.id).finish_non_exhaustive()
    }
}

impl Loaded {
    /// Load `image` as process `id` (at most `page_quota` pages of mappings, and at most
    /// `memory_limit` pages of the SVSM's heap for its frames and tables), with `objects`
    /// as its first handles and `arg` in RDI.
    pub fn new(
        id: u32,
        page_quota: u64,
        memory_limit: u64,
        image: &'static [u8],
        objects: alloc::vec::Vec<kernel::user::Object>,
        arg: u64,
    ) -> Result<Self, loader::LoadError> {
        let mut process = Process::new(id, page_quota);
        for object in objects {
            process.grant(object).ok_or(loader::LoadError::NoMemory)?;
        }
        let mut space = UserSpace::with_limit(memory_limit);
        let canary = super::cpu::rdrand().ok_or(loader::LoadError::NoMemory)?;
        let start = loader::load(&mut process, &mut space, image, canary)?;
        let regs = UserRegs { rip: start.entry, rsp: start.rsp, rdi: arg, ..UserRegs::default() };
        let mut threads = Vec::new();
        threads.try_reserve(1).map_err(|_| loader::LoadError::NoMemory)?;
        threads.push(Thread { regs, blocked: None });
        Ok(Self { process, space, threads, next_id: 1, thread_page: start.thread })
    }

    /// Pages of the SVSM's heap the process holds (frames and tables).
    pub fn svsm_pages(&self) -> u64 {
        self.space.svsm_pages()
    }

    /// Let the process open VMs and serve their ports (a device model).
    pub fn allow_vms(&mut self) {
        self.process.allow_vms();
    }

    /// Let the process start up to `max_children` processes at a time (EXEC).
    pub fn allow_exec(&mut self, max_children: u32) {
        self.process.allow_exec(max_children);
    }

    /// End the process without running it again: its handles close (its VMs and port
    /// claims with them), its memory is freed, and the guest pages it mapped go back to
    /// `guest` (the tracker it was run with).
    pub fn end(&mut self, guest: Option<&kernel::pages::PageTracker>, vms: Option<&Arc<VmObjects>>) {
        let services = BareServices { guest, vms };
        self.process.end(&mut self.space, &services);
        self.threads.clear();
    }

    /// Run (or resume) the process until it exits, faults, blocks or has run
    /// `budget_ms`; `guest` is the guest memory a process with the right may map, `vms`
    /// the VM objects one with that right may open.
    ///
    /// Whatever the process does to the x87/SSE registers and FS stays its own: the
    /// guest's are set aside around the run (`fpu::with_c_state`).
    pub fn run(
        &mut self,
        budget_ms: u64,
        guest: Option<&kernel::pages::PageTracker>,
        vms: Option<&Arc<VmObjects>>,
    ) -> Ended {
        let Self { process, space, threads, next_id, thread_page } = self;
        let mut services = BareServices { guest, vms };
        let mut started = Vec::new();
        let ended = super::fpu::with_c_state(|| {
            entry::set_fs_base(*thread_page);
            run(process, space, threads, next_id, budget_ms, &mut services, &mut started)
        });
        // The processes it started (EXEC) run now, each until it waits: then they are
        // hosted for the accesses to their claims. One that ends first is gone, and so is
        // one that waits holding no claim (nothing would ever run it again). `started`
        // is empty without VM objects: EXEC needs them.
        let Some(vms) = vms else { return ended };
        for Started { mut child, seat, slot } in started {
            let id = child.process.id;
            match child.run(DEVICE_BUDGET_MS, None, Some(vms)) {
                Ended::Blocked if vms.claims_of(id) == 0 => {
                    println!("user: process {id} waits holding no claim any access could run it for: ended");
                    child.end(None, Some(vms));
                    vms.end_process(id);
                }
                Ended::Blocked => {
                    seat.fill(alloc::boxed::Box::new(Hosted { process: child, vms: vms.clone(), _slot: Some(slot) }))
                }
                other => {
                    println!("user: process {id} ended before it waited ({other:?})");
                    vms.end_process(id);
                }
            }
        }
        ended
    }
}

/// Start the probe module as process `id` in `mode` and run it to its end; in the
/// modes that probe guest memory it may open `guest` (OPEN_PHYSMEM).
fn run_probe(id: u32, mode: u64, guest: &kernel::pages::PageTracker) -> Result<Ended, loader::LoadError> {
    let mut loaded = Loaded::new(id, PROBE_QUOTA, PROBE_QUOTA + 32, &PROBE.0, alloc::vec::Vec::new(), mode)?;
    if PHYSMEM_MODES.contains(&mode) {
        loaded.process.allow_physmem();
    }
    Ok(loaded.run(PROBE_BUDGET_MS, Some(guest), None))
}

/// The probe's modes that need time slices: one spins, and in two a thread spins while
/// the others must get their turn (without a timer none would come, and the boot would
/// never go on).
const SLICED_MODES: [u64; 3] = [7, 8, 9];

/// A probe's page quota (its mappings, the image's code included).
const PROBE_QUOTA: u64 = 64;

/// The probe's mode that checks its x87/SSE registers start clean.
const FPU_MODE: u64 = 12;

/// The probe's modes that map guest memory.
const PHYSMEM_MODES: [u64; 2] = [10, 11];

/// How long a probe may run.
const PROBE_BUDGET_MS: u64 = 200;

/// What each probe must come to.
#[derive(Clone, Copy)]
enum Expect {
    Exit(u64),
    PageFault,
    AnyFault,
    Preempted,
}

/// Turn on user mode on this CPU (an AP; the boot CPU's is in [`boot_check`]).
pub fn init_cpu() {
    entry::enable_syscall();
    super::cpu::enable_smep_smap(super::snp::guest_vmpl().is_some());
}

/// Which probes a platform can run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Checks {
    /// All of them: the SVSM drives the local APIC (time slices), and the probes of
    /// OPEN_PHYSMEM know the QEMU launch's layout.
    Svm,
    /// SEV-SNP: no time slices (the local APIC is the host's), and the layout differs:
    /// the probes that need time slices and the OPEN_PHYSMEM probes are skipped.
    Snp,
}

/// Turn on user mode on this CPU and run the probe module's checks; prints a verdict
/// per probe and a summary `cargo xtask boot` looks for. `guest` is the guest memory
/// the probes of OPEN_PHYSMEM may map.
pub fn boot_check(guest: &kernel::pages::PageTracker, checks: Checks) {
    entry::enable_syscall();
    let (smep, smap) = super::cpu::enable_smep_smap(checks == Checks::Snp);
    if checks == Checks::Svm {
        let ticks = lapic::timer_ticks_per_ms();
        TIMER_TICKS_PER_MS.store(ticks, Ordering::Relaxed);
        println!(
            "user: SYSCALL entry on; SMEP {}, SMAP {}; time slices of {SLICE_MS} ms ({ticks} local-APIC timer ticks per ms)",
            on(smep),
            on(smap)
        );
    } else {
        println!(
            "user: SYSCALL entry on; SMEP {}, SMAP {}; no time slices (the local APIC is the host's): a process keeps its CPU until it calls, blocks or ends",
            on(smep),
            on(smap)
        );
    }
    if PROBE.0.is_empty() {
        println!("user: no service module in this image (built without `cargo xtask`)");
        return;
    }
    const PROBES: [(u64, &str, Expect); 14] = [
        (0, "hello", Expect::Exit(0)),
        (1, "reads SVSM memory", Expect::PageFault),
        (2, "writes its own code", Expect::PageFault),
        (3, "executes its data", Expect::PageFault),
        (4, "reads guest memory not mapped for it", Expect::PageFault),
        (5, "executes int 0x80", Expect::AnyFault),
        (6, "passes an SVSM address to LOG", Expect::Exit(6)),
        (7, "spins forever without a system call", Expect::Preempted),
        (8, "runs three threads that take turns", Expect::Exit(8)),
        (9, "has a thread read SVSM memory", Expect::PageFault),
        (10, "maps guest memory with OPEN_PHYSMEM, never the SVSM's", Expect::Exit(10)),
        (11, "writes guest memory it mapped read-only", Expect::PageFault),
        (12, "starts with none of the x87/SSE registers the CPU held", Expect::Exit(12)),
        (13, "maps and unmaps a page at 200 places, within its quota of 64", Expect::Exit(13)),
    ];
    let mut as_expected = 0;
    let mut skipped = 0;
    for (id, (mode, what, expect)) in (1u32..).zip(PROBES) {
        if checks == Checks::Snp && (SLICED_MODES.contains(&mode) || PHYSMEM_MODES.contains(&mode)) {
            println!("user: probe {what}: skipped on this platform");
            skipped += 1;
            continue;
        }
        if mode == FPU_MODE {
            // What a guest's registers would be on svm, live in the CPU while the SVSM
            // runs (the SVSM's own code never touches them: it is soft-float).
            super::cpu::fxrstor(&super::cpu::FxArea::with_registers(0xA5));
        }
        let ended = run_probe(id, mode, guest);
        let good = match (expect, ended) {
            (Expect::Exit(want), Ok(Ended::Exited(code))) => code == want,
            (Expect::PageFault, Ok(Ended::Faulted { vector: 14, .. })) => true,
            (Expect::AnyFault, Ok(Ended::Faulted { .. })) => true,
            (Expect::Preempted, Ok(Ended::Preempted { slices })) => slices > 1,
            _ => false,
        };
        as_expected += usize::from(good);
        let how = match ended {
            Ok(Ended::Exited(code)) => alloc::format!("exited with {code}"),
            Ok(Ended::Faulted { vector, error, address, rip }) => {
                alloc::format!("ended by exception {vector} (error {error:#x}, address {address:#x}, rip {rip:#x})")
            }
            Ok(Ended::Blocked) => "blocked".into(),
            Ok(Ended::Preempted { slices }) => {
                alloc::format!(
                    "taken off the CPU by the timer {slices} times, then ended after its {PROBE_BUDGET_MS} ms of slices"
                )
            }
            Err(e) => alloc::format!("not loaded: {e:?}"),
        };
        println!("user: probe {what}: {how}{}", if good { "" } else { " -- NOT AS EXPECTED" });
    }
    // Every guest page the probes of OPEN_PHYSMEM mapped is the guest's alone again.
    let held = guest.service_mappings_total();
    if held != 0 {
        as_expected = as_expected.saturating_sub(1);
        println!("user: {held} guest pages are still held for probes that ended -- NOT AS EXPECTED");
    }
    println!("user: {as_expected} of {} probes ended as expected", PROBES.len() - skipped);
    // The probe's measurements (system call and BATCH costs): one LOG line.
    match run_probe(u32::try_from(PROBES.len() + 1).unwrap_or(u32::MAX), BENCH_MODE, guest) {
        Ok(Ended::Exited(0)) => {}
        other => println!("user: the probe's benchmark did not finish: {other:?}"),
    }
}

/// The probe's benchmark mode (services/probe).
const BENCH_MODE: u64 = 100;

/// The probe's mode that serves the test device (`abi::syscall::test_device`).
const DEVICE_MODE: u64 = 14;
/// The test device's process id.
const DEVICE_PROCESS_ID: u32 = 50;
/// Processes the test device may have started at a time (EXEC): its MMIO page's.
const DEVICE_CHILDREN: u32 = 1;
/// How long a device model may take over one access (or its start) before it is
/// treated as hung and ended: the guest's vCPU waits that long, plus the first run of
/// each process it started with EXEC meanwhile (each with a budget of its own, and at
/// most as many as its right allows: one for the test device).
const DEVICE_BUDGET_MS: u64 = 100;

/// A device model's process, run by the VM objects for each access to its claims: the
/// test device, and the processes EXEC starts.
struct Hosted {
    process: Loaded,
    vms: Arc<VmObjects>,
    /// Its place among its parent's children (EXEC), given back when it is dropped.
    _slot: Option<ChildSlot>,
}

impl DeviceModel for Hosted {
    fn run(&mut self) -> bool {
        let id = self.process.process.id;
        match self.process.run(DEVICE_BUDGET_MS, None, Some(&self.vms)) {
            // (One that waits holding no claim is ended by the VM objects: `end`.)
            Ended::Blocked => true,
            ended => {
                println!("devices: process {id} ended ({ended:?}); its claims are refused from now on");
                false
            }
        }
    }

    fn end(&mut self, why: &'static str) {
        let id = self.process.process.id;
        println!("devices: process {id} is ended ({why}); its claims are refused from now on");
        // It runs without guest memory (no OPEN_PHYSMEM right): none to give back.
        self.process.end(None, Some(&self.vms));
    }
}

/// Start the test device (docs/syscalls.md "VM objects and device models"): the probe
/// module in its device mode, a device model at CPL 3 with the right to open VMs. It runs
/// until it has opened VM 1, claimed the device's ports and waits; from then on an IN or
/// OUT of the guest to those ports runs it on the CPU of the vCPU that made it
/// (`VmObjects::serve`). If it ends (the guest can make it fault on purpose), its ports
/// are refused again like every other port of the SVSM.
pub fn start_test_device(vms: &alloc::sync::Arc<VmObjects>) {
    if PROBE.0.is_empty() {
        return;
    }
    let id = DEVICE_PROCESS_ID;
    let mut device = match Loaded::new(id, PROBE_QUOTA, PROBE_QUOTA + 32, &PROBE.0, Vec::new(), DEVICE_MODE) {
        Ok(device) => device,
        Err(e) => {
            println!("devices: the test device's module did not load ({e:?}) -- NOT AS EXPECTED");
            return;
        }
    };
    device.allow_vms();
    device.allow_exec(DEVICE_CHILDREN);
    match device.run(DEVICE_BUDGET_MS, None, Some(vms)) {
        // Waiting with no claim, nothing would ever run it again (as for any process).
        Ended::Blocked if vms.claims_of(id) == 0 => {
            println!("devices: the test device waits holding no claim -- NOT AS EXPECTED");
            device.end(None, Some(vms));
            vms.end_process(id);
            return;
        }
        Ended::Blocked => {}
        other => {
            println!("devices: the test device did not start serving ({other:?}) -- NOT AS EXPECTED");
            return;
        }
    }
    let model = Hosted { process: device, vms: vms.clone(), _slot: None };
    if vms.host(id, alloc::boxed::Box::new(model)).is_err() {
        println!("devices: no memory to host the test device -- NOT AS EXPECTED");
        vms.end_process(id);
        return;
    }
    println!(
        "devices: test device on ports {:#x}..{:#x} of VM 1, served by process {id} at CPL 3, and its MMIO page {:#x}, served by process {} it started ({} ports, {} page claimed)",
        abi::syscall::test_device::FIRST,
        abi::syscall::test_device::FIRST + abi::syscall::test_device::COUNT - 1,
        abi::syscall::test_device::MMIO,
        vms.mmio_owner(1, abi::syscall::test_device::MMIO).map_or_else(|| "none".into(), |o| alloc::format!("{o}")),
        vms.claimed_ports(),
        vms.claimed_mmio_pages()
    );
}

fn on(b: bool) -> &'static str {
    if b { "on" } else { "unavailable" }
}
