//! Hosted user processes: the kernel's system call layer (`kernel::user`) driving a
//! program that runs on a host thread and reaches the kernel only through system calls,
//! as a CPL-3 process reaches the SVSM.
//!
//! The program's memory is a [`HostSpace`]: pages that exist only while mapped, with the
//! permissions the kernel gave them; the program reads and writes it through
//! [`UserCalls::load`] / [`UserCalls::store`], which fault (end the program, as a page
//! fault ends a process) outside its mappings. A program that panics is a process that
//! faulted: the driver ends it, its channels close, and the kernel's side learns it.
//!
//! [`ChannelTpm`] is the vTPM's engine as the kernel sees it when the vTPM is a process:
//! the command goes over a channel to the service, the answer comes back the same way.

use abi::syscall::{self as sys, SysError};
use kernel::pages::PageTracker;
use kernel::user::channel::Channel;
use kernel::user::memory::{AddressSpace, Prot};
use kernel::user::service_tpm::{ServiceTpm, StartError};
use kernel::user::{Call, ChildSlot, Exec, Object, Outcome, Process, Services, Wait};
use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use vtpm::{NvBlobs, TpmEngine, TpmState, service};

const PAGE: u64 = 4096;

/// A process's pages, shared by the driver (the kernel's copies) and the program (its
/// own loads and stores).
#[derive(Clone, Debug, Default)]
pub struct HostSpace(Arc<Mutex<PageMap>>);

/// Mapped pages by address, with the permissions they were mapped with.
type PageMap = BTreeMap<u64, (Box<[u8; 4096]>, Prot)>;

impl HostSpace {
    fn pages(&self) -> std::sync::MutexGuard<'_, PageMap> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pages mapped now.
    pub fn page_count(&self) -> usize {
        self.pages().len()
    }

    /// Copy across pages; every page must exist (and be writable, for a write).
    fn access(&self, va: u64, len: usize, write: bool, mut f: impl FnMut(&mut [u8], usize)) -> Result<(), SysError> {
        let mut pages = self.pages();
        let mut done = 0usize;
        while done < len {
            let at = va.checked_add(done as u64).ok_or(SysError::Fault)?;
            let (page, prot) = pages.get_mut(&(at & !(PAGE - 1))).ok_or(SysError::Fault)?;
            if write && !prot.write {
                return Err(SysError::Fault);
            }
            let off = (at % PAGE) as usize;
            let n = (PAGE as usize - off).min(len - done);
            f(&mut page[off..off + n], done);
            done += n;
        }
        Ok(())
    }
}

impl AddressSpace for HostSpace {
    fn map_zeroed(&mut self, va: u64, pages: u64, prot: Prot) -> Result<(), SysError> {
        let mut map = self.pages();
        for i in 0..pages {
            let old = map.insert(va + i * PAGE, (Box::new([0; 4096]), prot));
            assert!(old.is_none(), "the kernel mapped {:#x} twice", va + i * PAGE);
        }
        Ok(())
    }

    /// A hosted program cannot reach the model's guest memory: it gets zeroed stand-in
    /// pages with the permissions asked for. What the model checks is the kernel's side
    /// (which pages may be mapped, and that the guest cannot take them while mapped).
    fn map_guest(&mut self, va: u64, _gpa: u64, pages: u64, prot: Prot) -> Result<(), SysError> {
        self.map_zeroed(va, pages, prot)
    }

    fn unmap(&mut self, va: u64, pages: u64) {
        let mut map = self.pages();
        for i in 0..pages {
            assert!(map.remove(&(va + i * PAGE)).is_some(), "the kernel unmapped {:#x}, never mapped", va + i * PAGE);
        }
    }

    fn fill(&mut self, va: u64, data: &[u8]) -> Result<(), SysError> {
        let mut pages = self.pages();
        for (i, byte) in data.iter().enumerate() {
            let at = va + i as u64;
            let (page, _) = pages.get_mut(&(at & !(PAGE - 1))).ok_or(SysError::Fault)?;
            page[(at % PAGE) as usize] = *byte;
        }
        Ok(())
    }

    fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), SysError> {
        self.access(va, buf.len(), false, |page, at| buf[at..at + page.len()].copy_from_slice(page))
    }

    fn write(&mut self, va: u64, data: &[u8]) -> Result<(), SysError> {
        self.access(va, data.len(), true, |page, at| page.copy_from_slice(&data[at..at + page.len()]))
    }
}

/// A program EXEC may start, under its module name.
#[derive(Clone)]
pub struct Module {
    pub name: &'static str,
    pub program: Arc<dyn Fn(UserCalls) + Send + Sync>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module").field("name", &self.name).finish_non_exhaustive()
    }
}

/// The kernel's services for hosted processes: a monotonic clock, a seeded generator,
/// the log lines kept for tests, and guest memory to map if a test gives some.
#[derive(Debug)]
pub struct HostServices {
    start: Instant,
    state: u64,
    pub lines: Vec<(u32, String)>,
    pub guest: Option<PageTracker>,
    /// VM objects a device model may open (VM 1, every port but the guest's COM2, and
    /// MMIO, as on the svm platform); `None`: none offered.
    pub vms: Option<Arc<kernel::user::vm::VmObjects>>,
    /// The modules EXEC may start (none unless a test gives some).
    pub modules: Vec<Module>,
    /// The id the next process EXEC starts gets (each parent counts from
    /// [`CHILD_IDS`]: a test with two parents with the right over one set of VM objects
    /// gives them counts apart).
    pub next_id: u32,
}

impl Default for HostServices {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            state: 0x9e37_79b9_7f4a_7c15,
            lines: Vec::new(),
            guest: None,
            vms: None,
            modules: Vec::new(),
            next_id: CHILD_IDS,
        }
    }
}

/// Processes EXEC starts get ids from here up.
pub const CHILD_IDS: u32 = 1000;
/// The page quota of a process EXEC starts.
pub const CHILD_QUOTA: u64 = 32;

impl Services for HostServices {
    fn clock_ns(&mut self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn random(&mut self, buf: &mut [u8]) -> bool {
        for b in buf {
            // xorshift64*: the model's entropy only has to differ, not to be secret.
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            *b = (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
        }
        true
    }

    fn log(&mut self, process: u32, line: &[u8]) {
        self.lines.push((process, String::from_utf8_lossy(line).into_owned()));
    }

    fn vm_bitmap(&self) -> u64 {
        0b10
    }

    fn features(&self) -> u64 {
        // SNP's platform bit; with VM objects, the svm platform's events too (for the
        // fuzz harness, which needs both kinds of claim to reach them).
        use abi::syscall::features::{IOIO_EVENTS, MMIO_EVENTS, VCPU_EVENTS};
        let events = IOIO_EVENTS | MMIO_EVENTS | VCPU_EVENTS;
        1 | if self.vms.is_some() { events } else { 0 }
    }

    fn guest_pages(&self) -> Option<&PageTracker> {
        self.guest.as_ref()
    }

    fn vm_objects(&self) -> Option<&kernel::user::vm::VmObjects> {
        self.vms.as_deref()
    }

    fn ports_claimable(&self, first: u16, count: u16) -> bool {
        self.vms.is_some() && (0..count).all(|i| first.checked_add(i).is_some_and(|p| !(0x2F8..=0x2FF).contains(&p)))
    }

    fn module(&self, name: &[u8]) -> Option<u32> {
        self.modules.iter().position(|m| m.name.as_bytes() == name).and_then(|i| u32::try_from(i).ok())
    }
}

/// The program's side: system calls, loads and stores.
#[derive(Debug)]
pub struct UserCalls {
    calls: Sender<Call>,
    results: Receiver<u64>,
    space: HostSpace,
}

/// The program faulted (the driver sees the thread end without EXIT).
fn fault(what: &str) -> ! {
    panic!("user fault: {what}")
}

impl UserCalls {
    /// Make a system call; RAX comes back.
    pub fn call(&self, number: u64, args: [u64; 5]) -> u64 {
        if self.calls.send(Call { number, args }).is_err() {
            fault("the kernel is gone");
        }
        self.results.recv().unwrap_or_else(|_| fault("killed"))
    }

    /// A call's result as a Result.
    pub fn checked(&self, number: u64, args: [u64; 5]) -> Result<u64, SysError> {
        let rax = self.call(number, args);
        match SysError::from_rax(rax) {
            Some(Ok(e)) => Err(e),
            Some(Err(_)) => fault("unknown error code"),
            None => Ok(rax),
        }
    }

    /// Anonymous memory, read-write.
    pub fn mmap(&self, len: u64) -> Result<u64, SysError> {
        self.checked(sys::MMAP, [sys::NO_HANDLE, 0, 0, len, sys::map::READ | sys::map::WRITE | sys::map::ANONYMOUS])
    }

    /// A load from the program's memory: a fault if not mapped.
    pub fn load(&self, va: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.space.read(va, &mut buf).unwrap_or_else(|_| fault("load from unmapped memory"));
        buf
    }

    /// A store to the program's memory: a fault if not mapped writable.
    pub fn store(&self, va: u64, data: &[u8]) {
        self.space.clone().write(va, data).unwrap_or_else(|_| fault("store to memory not mapped writable"));
    }

    pub fn exit(&self, code: u64) -> ! {
        self.call(sys::EXIT, [code, 0, 0, 0, 0]);
        fault("EXIT returned")
    }
}

/// Where a hosted process is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Waiting for an event (a request on its channel).
    Blocked,
    Exited(u64),
    /// The program faulted (its thread ended without EXIT): the message.
    Faulted(String),
}

/// A process and the driver that serves its system calls.
#[derive(Debug)]
pub struct HostedProcess {
    pub process: Process,
    pub space: HostSpace,
    pub services: HostServices,
    calls: Receiver<Call>,
    results: Sender<u64>,
    blocked: Option<(Call, Wait)>,
    state: Option<RunState>,
    thread: Option<JoinHandle<()>>,
    /// Threads the program asked for (entry, stack, arg): a hosted program has no code at
    /// those addresses to run, so they are only recorded.
    pub threads_started: Vec<(u64, u64, u64)>,
    /// The ids of the processes it started with EXEC (hosted in its VM objects).
    pub children: Vec<u32>,
    /// Its place among its parent's children, when EXEC started it.
    slot: Option<ChildSlot>,
    /// Processes EXEC made during this run, run once it waits or ends.
    started: Vec<(HostedProcess, kernel::user::vm::Seat)>,
}

impl HostedProcess {
    /// Start `program` as process `id` with `objects` as its first handles (0, 1, ...).
    pub fn start(
        id: u32,
        page_quota: u64,
        objects: Vec<Object>,
        program: impl FnOnce(UserCalls) + Send + 'static,
    ) -> Self {
        let mut process = Process::new(id, page_quota);
        for o in objects {
            process.grant(o).expect("a new process has room for its first handles");
        }
        let (call_tx, call_rx) = channel();
        let (result_tx, result_rx) = channel();
        let space = HostSpace::default();
        let user = UserCalls { calls: call_tx, results: result_rx, space: space.clone() };
        let thread = std::thread::Builder::new()
            .name(format!("user process {id}"))
            .spawn(move || program(user))
            .expect("a host thread for the program");
        Self {
            process,
            space,
            services: HostServices::default(),
            calls: call_rx,
            results: result_tx,
            blocked: None,
            state: None,
            thread: Some(thread),
            threads_started: Vec::new(),
            children: Vec::new(),
            slot: None,
            started: Vec::new(),
        }
    }

    /// EXEC as the bare-metal SVSM serves it: the module is a new process with the
    /// passed handles, which first runs once this one waits or ends, and from then on
    /// when an access to one of its claims comes (hosted by the VM objects).
    fn exec(&mut self, exec: Exec) -> Result<u64, SysError> {
        let vms = self.services.vms.clone().ok_or(SysError::NotSupp)?;
        let module = usize::try_from(exec.module).ok().and_then(|i| self.services.modules.get(i));
        let program = module.ok_or(SysError::NotFound)?.program.clone();
        let id = self.services.next_id;
        self.services.next_id = id.checked_add(1).ok_or(SysError::NoMem)?;
        let seat = vms.seat(id)?;
        let mut child = HostedProcess::start(id, CHILD_QUOTA, Vec::new(), move |u| program(u));
        child.services.vms = Some(vms.clone());
        if let Err(e) = self.process.pass(&exec, &mut child.process, &self.services) {
            vms.end_process(id);
            return Err(e);
        }
        child.slot = Some(exec.slot);
        self.started.push((child, seat));
        self.children.push(id);
        Ok(id.into())
    }

    /// Serve the program's calls until it blocks, exits or faults; then run the
    /// processes it started, each until it waits (one that ends first is gone, and so
    /// is one that waits holding no claim: nothing would run it again).
    pub fn run(&mut self) -> RunState {
        let state = self.run_calls();
        let Some(vms) = self.services.vms.clone() else { return state };
        for (mut child, seat) in std::mem::take(&mut self.started) {
            let id = child.process.id;
            match child.run() {
                RunState::Blocked if vms.claims_of(id) > 0 => seat.fill(Box::new(child)),
                RunState::Blocked => {
                    kernel::user::vm::DeviceModel::end(&mut child, "it holds no claim an access could run it for");
                    vms.end_process(id);
                }
                _ => vms.end_process(id),
            }
        }
        state
    }

    fn run_calls(&mut self) -> RunState {
        if let Some(done) = &self.state {
            return done.clone();
        }
        loop {
            let call = match self.blocked.take() {
                Some((call, Wait::Request(c))) if !c.has_request() && !c.is_closed() => {
                    self.blocked = Some((call, Wait::Request(c)));
                    return RunState::Blocked;
                }
                Some((call, _)) => call,
                None => match self.calls.recv() {
                    Ok(call) => call,
                    Err(_) => return self.faulted(),
                },
            };
            let mut space = self.space.clone();
            match self.process.syscall(&mut space, &mut self.services, call) {
                Outcome::Return(rax) => {
                    if self.results.send(rax).is_err() {
                        return self.faulted();
                    }
                }
                Outcome::Block(wait) => {
                    self.blocked = Some((call, wait));
                    return RunState::Blocked;
                }
                Outcome::Exit(code) => return self.finish(RunState::Exited(code)),
                Outcome::ThreadStart { entry, stack, arg } => {
                    self.threads_started.push((entry, stack, arg));
                    let tid = self.threads_started.len() as u64;
                    if self.results.send(tid).is_err() {
                        return self.faulted();
                    }
                }
                Outcome::Exec(exec) => {
                    let rax = self.exec(exec).unwrap_or_else(SysError::to_rax);
                    if self.results.send(rax).is_err() {
                        return self.faulted();
                    }
                }
            }
        }
    }

    fn faulted(&mut self) -> RunState {
        let why = match self.thread.take().map(JoinHandle::join) {
            Some(Err(panic)) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "fault".into()),
            _ => "the program ended without EXIT".into(),
        };
        self.finish(RunState::Faulted(why))
    }

    fn finish(&mut self, state: RunState) -> RunState {
        let mut space = self.space.clone();
        self.process.end(&mut space, &self.services);
        self.state = Some(state.clone());
        state
    }
}

/// A process EXEC started, run by the VM objects when an access to its claims comes.
impl kernel::user::vm::DeviceModel for HostedProcess {
    fn run(&mut self) -> bool {
        HostedProcess::run(self) == RunState::Blocked
    }

    fn end(&mut self, why: &'static str) {
        self.finish(RunState::Faulted(format!("ended by the kernel: {why}")));
    }
}

impl Drop for HostedProcess {
    fn drop(&mut self) {
        // The program's next call finds the kernel gone and its thread ends. The channels
        // are the model's, not the SVSM heap's (a kernel that kills a process with the heap
        // full drops it).
        crate::heap::as_host(|| {
            let (tx, _) = channel();
            self.results = tx;
            let (_, rx) = channel();
            self.calls = rx;
            self.blocked = None;
        });
    }
}

/// The vTPM engine as the kernel sees it with the vTPM in a process: the kernel's
/// [`ServiceTpm`] over a channel to a hosted service process. A service that ended or
/// faulted answers nothing, which the protocol layer turns into TPM_RC_FAILURE.
pub type ChannelTpm = ServiceTpm<Box<dyn FnMut() -> bool + Send>>;

/// Start a vTPM service process whose engine `open` makes from the NV state the kernel
/// sends (`Err(code)`: the engine refused it), and start it from `nv`.
pub fn channel_tpm<E: TpmEngine + 'static>(
    open: impl FnOnce(NvBlobs) -> Result<E, u32> + Send + 'static,
    nv: &NvBlobs,
) -> Result<ChannelTpm, StartError> {
    let (channel, run) = vtpm_process(move |begin| match begin {
        Begin::Start(nv) => open(nv),
        Begin::Resume(_) => Err(u32::MAX),
    });
    ServiceTpm::start(channel, run, nv)
}

/// [`channel_tpm`] on a migration destination: the service resumes `state` with `resume`.
pub fn channel_tpm_resumed<E: TpmEngine + 'static>(
    resume: impl FnOnce(TpmState) -> Result<E, u32> + Send + 'static,
    state: &TpmState,
) -> Result<ChannelTpm, StartError> {
    let (channel, run) = vtpm_process(move |begin| match begin {
        Begin::Resume(state) => resume(state),
        Begin::Start(_) => Err(u32::MAX),
    });
    ServiceTpm::resume(channel, run, state)
}

/// How the service's first message asks it to begin.
enum Begin {
    Start(NvBlobs),
    Resume(TpmState),
}

/// The vTPM service as a hosted process, and how the kernel runs it.
fn vtpm_process<E: TpmEngine + 'static>(
    open: impl FnOnce(Begin) -> Result<E, u32> + Send + 'static,
) -> (Arc<Channel>, Box<dyn FnMut() -> bool + Send>) {
    let channel = Arc::new(Channel::default());
    let mut service =
        HostedProcess::start(1, 160, vec![Object::Channel(channel.clone())], move |user| vtpm_service(user, open));
    // The service runs as a process, not as SVSM code: its driver's memory is not the
    // SVSM heap's.
    let run: Box<dyn FnMut() -> bool + Send> =
        Box::new(move || crate::heap::as_host(|| service.run()) == RunState::Blocked);
    (channel, run)
}

/// A TPM command the service treats as "fault now" (tests of crash isolation): the
/// vendor-specific bit of the ordinal with a code no TPM uses.
pub const FAULT_COMMAND_CODE: u32 = 0x2000_0bad;

/// The vTPM service program, as services/vtpm runs it: the first message starts the
/// engine from the kept NV state; then receive a command into its own buffer, run it,
/// and reply with the response and the NV blobs it changed.
fn vtpm_service<E: TpmEngine>(user: UserCalls, open: impl FnOnce(Begin) -> Result<E, u32>) {
    const CHANNEL: u64 = 0;
    const SIZE: u64 = vtpm::service::MAX_MESSAGE as u64;
    let request = user.mmap(SIZE).unwrap_or_else(|e| fault(&format!("no buffer: {e:?}")));
    let answer = user.mmap(SIZE).unwrap_or_else(|e| fault(&format!("no buffer: {e:?}")));
    let receive = || match user.checked(sys::CHANNEL_RECEIVE, [CHANNEL, request, SIZE, 0, 0]) {
        Ok(len) => user.load(request, len as usize),
        Err(e) => fault(&format!("receive: {e:?}")),
    };
    let reply = |message: Option<Vec<u8>>| {
        let message = message.unwrap_or_else(|| fault("an answer too large"));
        user.store(answer, &message);
        if let Err(e) = user.checked(sys::CHANNEL_REPLY, [CHANNEL, answer, message.len() as u64, 0, 0]) {
            fault(&format!("reply: {e:?}"));
        }
    };
    let begin = match service::parse_request(&receive()) {
        Some(service::Request::Start(nv)) => Begin::Start(nv),
        Some(service::Request::Resume(state)) => Begin::Resume(state),
        _ => fault("no start message"),
    };
    let mut engine = match open(begin) {
        Ok(engine) => engine,
        Err(code) => {
            reply(service::failed(code));
            fault("the engine did not start")
        }
    };
    let changes = |engine: &mut E| engine.take_nv_changes().unwrap_or_else(|e| fault(&format!("NV changes: {e:?}")));
    reply(service::started(&changes(&mut engine)));
    let mut response = vec![0u8; 8192];
    loop {
        let message = receive();
        let command = match service::parse_request(&message) {
            Some(service::Request::Command(command)) => command,
            Some(service::Request::Save) => {
                let saved = engine.save_state().ok().and_then(|state| service::saved(&state));
                reply(saved.or_else(|| service::failed(9)));
                continue;
            }
            _ => fault("not a command"),
        };
        if command.get(6..10) == Some(&FAULT_COMMAND_CODE.to_be_bytes()) {
            // A wild write, as a memory bug in the engine would make one.
            user.store(0x10, &[0xff]);
        }
        let n = engine.execute(command, &mut response);
        // The model does not time its engine (0: not measured).
        reply(service::response(&response[..n], &changes(&mut engine), 0));
    }
}
