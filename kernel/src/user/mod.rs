//! User mode: service processes and the system calls they make (docs/syscalls.md).
//!
//! This is the part of user mode that decides: a process's object handles, its address
//! space record, channels to the kernel, and the dispatcher that checks and runs every
//! system call. It touches no hardware: page tables and frames are behind
//! [`memory::AddressSpace`], clocks, entropy and the log behind [`Services`]; the
//! bare-metal SVSM implements them with per-process page tables, the model with a hosted
//! process (model/src/user_host.rs), so every decision here is host-tested and fuzzed.
//!
//! Trust boundary: a process is as hostile as the guest. Every register it passes is
//! checked, every pointer against its own mappings before a byte moves, every resource
//! (handles, mappings, pages, threads, message sizes) has a limit, and no call it makes
//! can panic the SVSM.

pub mod channel;
pub mod handles;
pub mod loader;
pub mod memory;
pub mod service_tpm;
pub mod vm;

use crate::addr::{Gpa, PageAddr, PageRange};
use crate::error::AddressConflict;
use crate::heap;
use crate::pages::{MapError, PageTracker};
use abi::syscall::{self as sys, BatchIn, BatchOut, PhysmemRange, SysError};
use alloc::sync::Arc;
use alloc::vec::Vec;
use channel::{Channel, Receive};
use core::sync::atomic::{AtomicU32, Ordering};
use handles::HandleTable;
use memory::{AddressSpace, Mappings};
use zerocopy::{FromZeros, IntoBytes};

/// Most bytes one LOG line or GETRANDOM call moves.
pub const MAX_SMALL_COPY: usize = 256;
/// Most bytes of one channel message: the vTPM service's start message carries the whole
/// NV state (vtpm::service::MAX_MESSAGE).
pub const MAX_MESSAGE: u64 = vtpm::service::MAX_MESSAGE as u64;
/// Most threads of one process.
pub const MAX_THREADS: u32 = 8;
/// Most guest pages one process may map at once (OPEN_PHYSMEM): 4 MiB. Each is a record
/// in the SVSM's page tracker, so the number is bounded.
pub const MAX_GUEST_PAGES: u64 = 1024;

/// An object a handle names.
#[derive(Debug, Clone)]
pub enum Object {
    /// The service end of a channel.
    Channel(Arc<Channel>),
    /// A range of guest memory (OPEN_PHYSMEM).
    PhysMem(PageRange),
    /// A VM, open in this process alone (VM_OPEN).
    Vm(u8),
    /// Ports or MMIO pages of a VM whose accesses come to this process (IOIO_EVENT,
    /// MMIO_EVENT), or one of its vCPUs (VCPU_OPEN): a channel whose requests are
    /// [`sys::IoAccess`], [`sys::MmioAccess`] or [`sys::VcpuExit`] records.
    IoEvent(Arc<Channel>),
}

/// What the kernel offers a process besides memory and objects.
pub trait Services {
    /// Nanoseconds since the SVSM started, never going back.
    fn clock_ns(&mut self) -> u64;
    /// Fill `buf` from the entropy source; `false` if it has none to give.
    fn random(&mut self, buf: &mut [u8]) -> bool;
    /// One line of the process's log.
    fn log(&mut self, process: u32, line: &[u8]);
    /// CAPABILITIES: bit n set when VM index n may be opened.
    fn vm_bitmap(&self) -> u64;
    /// CAPABILITIES: the platform bits (0 native, 1 SNP).
    fn features(&self) -> u64;
    /// The guest memory processes with the right may map (OPEN_PHYSMEM); `None` where the
    /// platform offers none.
    fn guest_pages(&self) -> Option<&PageTracker> {
        None
    }
    /// The VM objects and port claims processes with the right may make (VM_OPEN,
    /// IOIO_EVENT); `None` where the platform offers none.
    fn vm_objects(&self) -> Option<&vm::VmObjects> {
        None
    }
    /// May a device model claim ports `first..first + count` (IOIO_EVENT)? Only ports
    /// whose accesses the SVSM intercepts: never one the guest reaches directly.
    fn ports_claimable(&self, _first: u16, _count: u16) -> bool {
        false
    }
    /// The module EXEC may start under `name`: the platform's number for it, `None` for
    /// a name it has no module for (or one only the kernel starts).
    fn module(&self, _name: &[u8]) -> Option<u32> {
        None
    }
}

/// A system call as a thread made it: RAX and RDI, RSI, R8, R9, R10.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Call {
    pub number: u64,
    pub args: [u64; 5],
}

/// What the thread that called does next.
#[derive(Debug)]
pub enum Outcome {
    /// Back to user mode with RAX = the value (a result or [`SysError::to_rax`]).
    Return(u64),
    /// The process ends with this code.
    Exit(u64),
    /// The thread sleeps until the object has an event, then makes the same call again.
    Block(Wait),
    /// A new thread of this process starts at `entry` with RSP = `stack`, RDI = `arg`;
    /// the caller gets the new thread's id.
    ThreadStart { entry: u64, stack: u64, arg: u64 },
    /// EXEC, checked: the platform loads the module as a new process, moves the handles
    /// into it with [`Process::pass`], and gives the caller the new process's id (or an
    /// error, with every handle still the caller's).
    Exec(Exec),
}

/// Most processes one process may have started and not yet ended, whatever its right
/// says: each is a process's worth of the SVSM's heap.
pub const MAX_CHILDREN: u32 = 4;

/// The right to start processes (EXEC): given by the kernel at start, never by a call.
#[derive(Debug)]
struct ExecRight {
    max_children: u32,
    /// Started and not yet ended: one per [`ChildSlot`] alive.
    live: Arc<AtomicU32>,
}

/// A started process's place among its parent's children: it counts against the
/// parent's limit until the platform drops it with the child (or drops the EXEC that
/// failed).
#[derive(Debug)]
pub struct ChildSlot(Arc<AtomicU32>);

impl Drop for ChildSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An EXEC the kernel checked: the module, the new process's RDI, the handles it is to
/// get (in their order) and its place among the caller's children.
#[derive(Debug)]
pub struct Exec {
    /// The platform's number for the module ([`Services::module`]).
    pub module: u32,
    pub arg: u64,
    handles: [u32; sys::EXEC_MAX_HANDLES],
    count: usize,
    pub slot: ChildSlot,
}

impl Exec {
    /// The caller's handles to pass, in order (they become the new process's 0, 1, ...).
    pub fn handles(&self) -> &[u32] {
        self.handles.get(..self.count).unwrap_or(&[])
    }
}

/// What a blocked thread waits for.
#[derive(Debug, Clone)]
pub enum Wait {
    Request(Arc<Channel>),
}

impl Wait {
    /// Would the blocked call get further if made again now: a request waits? (A
    /// channel closed under a handle the process still holds blocks its calls as an
    /// empty one does; a thread waiting there waits for good, as it would if run.)
    pub fn ready(&self) -> bool {
        match self {
            Self::Request(c) => c.has_request(),
        }
    }
}

/// One service process: its handles, its mappings and its limits.
#[derive(Debug)]
pub struct Process {
    pub id: u32,
    handles: HandleTable<Object>,
    mappings: Mappings,
    /// Most pages MMAP may give it.
    page_quota: u64,
    threads: u32,
    /// Made at its first BATCH and kept.
    batch: Option<BatchBuffers>,
    /// May open guest memory (OPEN_PHYSMEM): given by the kernel at start, never by a
    /// call.
    physmem: bool,
    /// Guest pages it maps now.
    guest_pages: u64,
    /// May open VMs and claim their ports (a device model): given at start, like
    /// `physmem`.
    vms: bool,
    /// May start processes (EXEC): given at start, like `physmem`.
    exec: Option<ExecRight>,
}

/// The buffers a BATCH copies its records into and gathers its results in, room for
/// [`sys::BATCH_MAX`] each. A process gets them at its first BATCH and keeps them
/// (4.5 KiB), so a BATCH allocates nothing: two allocations and a zeroing per BATCH cost
/// more than its records do under emulation (`cargo xtask bench`, BATCH's fixed cost).
#[derive(Debug)]
struct BatchBuffers {
    records: Vec<BatchIn>,
    results: Vec<BatchOut>,
}

impl BatchBuffers {
    fn new() -> Result<Self, SysError> {
        let n = usize::try_from(sys::BATCH_MAX).map_err(|_| SysError::NoMem)?;
        let mut records = heap::with_capacity(n).map_err(|_| SysError::NoMem)?;
        records.resize(n, BatchIn::new_zeroed());
        let mut results = heap::with_capacity(n).map_err(|_| SysError::NoMem)?;
        results.resize(n, BatchOut::default());
        Ok(Self { records, results })
    }
}

fn err(e: SysError) -> Outcome {
    Outcome::Return(e.to_rax())
}

/// Guest pages a process no longer maps: the guest's alone again.
fn release(tracker: Option<&PageTracker>, gpa: u64, pages: u64) {
    if let Some(tracker) = tracker {
        for page in PageRange::new(Gpa(gpa).page(), pages).into_iter().flat_map(PageRange::iter) {
            tracker.unmap_for_service(page);
        }
    }
}

impl Process {
    pub fn new(id: u32, page_quota: u64) -> Self {
        Self {
            id,
            handles: HandleTable::default(),
            mappings: Mappings::default(),
            page_quota,
            threads: 1,
            batch: None,
            physmem: false,
            guest_pages: 0,
            vms: false,
            exec: None,
        }
    }

    /// Let the process start up to `max_children` processes at a time (at most
    /// [`MAX_CHILDREN`]) with EXEC. The new ones get no right of any kind: only the
    /// objects their parent passes them.
    pub fn allow_exec(&mut self, max_children: u32) {
        let max_children = max_children.min(MAX_CHILDREN);
        self.exec = Some(ExecRight { max_children, live: Arc::new(AtomicU32::new(0)) });
    }

    /// Processes it started that have not ended (their [`ChildSlot`]s alive).
    pub fn children(&self) -> u32 {
        self.exec.as_ref().map_or(0, |r| r.live.load(Ordering::Acquire))
    }

    /// Let the process open VMs and serve their ports (VM_OPEN, IOIO_EVENT).
    pub fn allow_vms(&mut self) {
        self.vms = true;
    }

    /// Let the process open guest memory (OPEN_PHYSMEM). No service the SVSM ships has
    /// this right; the boot's probe does, to show what it may and may not reach.
    pub fn allow_physmem(&mut self) {
        self.physmem = true;
    }

    /// Give the process an object (its channel at start: handle 0).
    pub fn grant(&mut self, object: Object) -> Option<handles::Handle> {
        self.handles.insert(object).ok()
    }

    pub fn mappings(&self) -> &Mappings {
        &self.mappings
    }

    /// The object a handle names, if any.
    pub fn object(&self, handle: u64) -> Option<&Object> {
        self.handles.get(handle)
    }

    pub fn handle_count(&self) -> usize {
        self.handles.len()
    }

    pub fn threads(&self) -> u32 {
        self.threads
    }

    /// Guest pages it maps now (OPEN_PHYSMEM).
    pub fn guest_pages(&self) -> u64 {
        self.guest_pages
    }

    /// Map memory for the process the kernel fills itself (an ELF segment, a stack).
    pub fn map_for(
        &mut self,
        space: &mut dyn AddressSpace,
        va: u64,
        pages: u64,
        prot: memory::Prot,
    ) -> Result<(), SysError> {
        self.mappings.map(space, va, pages, prot)
    }

    /// Map pages of the SVSM's own image for the process, read-only (a module's code).
    pub fn share_for(
        &mut self,
        space: &mut dyn AddressSpace,
        va: u64,
        bytes: &'static [u8],
        prot: memory::Prot,
    ) -> Result<(), SysError> {
        self.mappings.share(space, va, bytes, prot)
    }

    /// The process is gone (EXIT, a fault, killed): its channels close, so the kernel
    /// stops waiting on them, its memory is freed, and the guest pages it mapped are the
    /// guest's alone again.
    pub fn end(&mut self, space: &mut dyn AddressSpace, services: &dyn Services) {
        let vms = services.vm_objects();
        for object in self.handles.drain() {
            match object {
                Object::Channel(c) | Object::IoEvent(c) => c.close(),
                Object::PhysMem(_) | Object::Vm(_) => {}
            }
        }
        // Its VMs close and its ports are the SVSM's again.
        if let Some(vms) = vms {
            vms.end_process(self.id);
        }
        let tracker = services.guest_pages();
        self.mappings.clear(space, &mut |gpa, pages| release(tracker, gpa, pages));
        self.guest_pages = 0;
        self.threads = 0;
    }

    /// A thread the scheduler started after [`Outcome::ThreadStart`] ended.
    pub fn thread_ended(&mut self) {
        self.threads = self.threads.saturating_sub(1);
    }

    /// Run one system call.
    pub fn syscall(&mut self, space: &mut dyn AddressSpace, services: &mut dyn Services, call: Call) -> Outcome {
        let [a0, a1, a2, _, _] = call.args;
        match call.number {
            sys::EXIT => Outcome::Exit(a0),
            sys::THREAD_CREATE => self.thread_create(a0, a1, a2),
            sys::WAIT_FOR_EVENT => match self.channel(a0) {
                Ok(c) if c.has_request() => Outcome::Return(1),
                Ok(c) => Outcome::Block(Wait::Request(c.clone())),
                Err(e) => err(e),
            },
            sys::BATCH => self.batch(space, services, a0, a1, a2).map_or_else(err, Outcome::Return),
            sys::CHANNEL_RECEIVE => self.receive(space, a0, a1, a2),
            sys::EXEC => {
                let [_, _, _, a3, a4] = call.args;
                self.exec(space, services, [a0, a1, a2, a3, a4]).map_or_else(err, Outcome::Exec)
            }
            _ => Outcome::Return(self.immediate(space, services, call).unwrap_or(SysError::NoSys.to_rax())),
        }
    }

    /// A call that finishes at once and leaves the thread running: its RAX, or `None` for
    /// any other number. These, and only these, are the calls a BATCH may hold; it runs
    /// its records through here directly, without [`Outcome`].
    fn immediate(&mut self, space: &mut dyn AddressSpace, services: &mut dyn Services, call: Call) -> Option<u64> {
        let [a0, a1, a2, a3, a4] = call.args;
        let result = match call.number {
            sys::MMAP => self.mmap(space, services, a0, a1, a2, a3, a4),
            sys::MUNMAP => self.munmap(space, services, a0, a1).map(|()| 0),
            sys::CLOSE => match self.handles.remove(a0) {
                Some(Object::Channel(c)) => {
                    c.close();
                    Ok(0)
                }
                // Its mappings stay until unmapped, as a file's do after close.
                Some(Object::PhysMem(_)) => Ok(0),
                Some(Object::Vm(vm)) => {
                    if let Some(vms) = services.vm_objects() {
                        vms.close(vm, self.id);
                    }
                    Ok(0)
                }
                Some(Object::IoEvent(c)) => {
                    match services.vm_objects() {
                        Some(vms) => vms.unclaim(&c),
                        None => c.close(),
                    }
                    Ok(0)
                }
                None => Err(SysError::NotFound),
            },
            sys::OPEN_PHYSMEM => self.open_physmem(space, services, a0, a1),
            sys::VM_OPEN => self.vm_open(services, a0),
            sys::IOIO_EVENT => self.ioio_event(services, a0, a1, a2),
            sys::MMIO_EVENT => self.mmio_event(services, a0, a1, a2),
            sys::VCPU_OPEN => self.vcpu_open(services, a0, a1),
            sys::CAPABILITIES => match a0 {
                sys::caps::COUNT => Ok(sys::caps::LAST),
                sys::caps::VM_BITMAP => Ok(services.vm_bitmap()),
                sys::caps::FEATURES => Ok(services.features()),
                sys::caps::PHYSMEM_RANGES => {
                    Ok(self.guest_memory(services).map_or(0, |t| t.guest_range_count() as u64))
                }
                _ => Err(SysError::NotFound),
            },
            sys::LOG => self.log(space, services, a0, a1).map(|()| 0),
            sys::CLOCK => Ok(services.clock_ns()),
            sys::GETRANDOM => self.getrandom(space, services, a0, a1),
            sys::CHANNEL_REPLY => self.reply(space, a0, a1, a2).map(|()| 0),
            _ => return None,
        };
        Some(result.unwrap_or_else(SysError::to_rax))
    }

    /// A handle that receives requests: a channel, or a port event.
    fn channel(&self, handle: u64) -> Result<&Arc<Channel>, SysError> {
        match self.handles.get(handle) {
            Some(Object::Channel(c) | Object::IoEvent(c)) => Ok(c),
            Some(Object::PhysMem(_) | Object::Vm(_)) => Err(SysError::NotSupp),
            None => Err(SysError::NotFound),
        }
    }

    /// VM_OPEN(index): the VM is this process's alone until it closes the handle or
    /// ends.
    fn vm_open(&mut self, services: &dyn Services, index: u64) -> Result<u64, SysError> {
        let vms = services.vm_objects().filter(|_| self.vms).ok_or(SysError::Perm)?;
        let vm = u8::try_from(index).ok().filter(|i| *i < 64 && services.vm_bitmap() & (1 << i) != 0);
        let vm = vm.ok_or(SysError::NotFound)?;
        vms.open(vm, self.id)?;
        match self.handles.insert(Object::Vm(vm)) {
            Ok(handle) => Ok(handle.into()),
            Err(_) => {
                vms.close(vm, self.id);
                Err(SysError::NoMem)
            }
        }
    }

    /// IOIO_EVENT(vm, first, count): the VM's accesses to these ports come to this
    /// process.
    fn ioio_event(&mut self, services: &dyn Services, vm: u64, first: u64, count: u64) -> Result<u64, SysError> {
        let range = vm::port_range(first, count)?;
        if let vm::Range::Ports { first, count } = range
            && !services.ports_claimable(first, count)
        {
            return Err(SysError::Perm);
        }
        self.event(services, vm, range, sys::features::IOIO_EVENTS)
    }

    /// MMIO_EVENT(vm, gpa, length): the VM's loads and stores to these pages come to
    /// this process.
    fn mmio_event(&mut self, services: &dyn Services, vm: u64, gpa: u64, length: u64) -> Result<u64, SysError> {
        let range = vm::mmio_range(gpa, length)?;
        self.event(services, vm, range, sys::features::MMIO_EVENTS)
    }

    /// VCPU_OPEN(vm, index): vCPU `index` of the VM as a VCPU object, this process's
    /// alone; its exits the kernel leaves to user mode come here. A vCPU the guest has
    /// not started yet may be opened: its exits come once it runs.
    fn vcpu_open(&mut self, services: &dyn Services, vm: u64, index: u64) -> Result<u64, SysError> {
        let index =
            u32::try_from(index).ok().filter(|i| u64::from(*i) <= sys::VCPU_MAX_INDEX).ok_or(SysError::Inval)?;
        self.event(services, vm, vm::Range::Vcpu { index }, sys::features::VCPU_EVENTS)
    }

    /// A claim of `range` of the VM behind handle `vm`, where the platform serves
    /// `feature`: its event's handle.
    fn event(&mut self, services: &dyn Services, vm: u64, range: vm::Range, feature: u64) -> Result<u64, SysError> {
        let vm = match self.handles.get(vm) {
            Some(Object::Vm(vm)) => *vm,
            Some(_) => return Err(SysError::NotSupp),
            None => return Err(SysError::NotFound),
        };
        let vms = services.vm_objects().ok_or(SysError::NotSupp)?;
        if services.features() & feature == 0 {
            return Err(SysError::NotSupp);
        }
        let channel = vms.claim(vm, range, self.id)?;
        match self.handles.insert(Object::IoEvent(channel.clone())) {
            Ok(handle) => Ok(handle.into()),
            Err(_) => {
                vms.unclaim(&channel);
                Err(SysError::NoMem)
            }
        }
    }

    /// The guest memory this process may map: `None` without the right, or where the
    /// platform offers none.
    fn guest_memory<'s>(&self, services: &'s dyn Services) -> Option<&'s PageTracker> {
        services.guest_pages().filter(|_| self.physmem)
    }

    /// OPEN_PHYSMEM(index, info): a handle to the `index`-th range of guest memory, whose
    /// extent is written at `info` (the review's "valid ranges discoverable").
    fn open_physmem(
        &mut self,
        space: &mut dyn AddressSpace,
        services: &dyn Services,
        index: u64,
        info: u64,
    ) -> Result<u64, SysError> {
        let tracker = self.guest_memory(services).ok_or(SysError::Perm)?;
        let range = usize::try_from(index).ok().and_then(|i| tracker.guest_range(i)).ok_or(SysError::NotFound)?;
        let extent = PhysmemRange { base: range.start().raw(), length: range.pages() * abi::PAGE_SIZE };
        // Checked before the handle exists, so a bad buffer leaves nothing behind.
        self.mappings.check(info, core::mem::size_of::<PhysmemRange>() as u64, true)?;
        let handle = self.handles.insert(Object::PhysMem(range)).map_err(|_| SysError::NoMem)?;
        match self.copy_out(space, info, extent.as_bytes()) {
            Ok(()) => Ok(handle.into()),
            Err(e) => {
                self.handles.remove(handle.into());
                Err(e)
            }
        }
    }

    /// MMAP of guest memory: pages `[offset, offset + len)` of `range`, readable or
    /// writable, never executable. Each page is held for the mapping in the SVSM's page
    /// tracker, which refuses pages the SVSM has a claim on or the guest has not
    /// validated, and keeps the guest from invalidating the page or handing it to the
    /// SVSM until the mapping is gone.
    #[expect(clippy::too_many_arguments, reason = "MMAP's five registers and where they go")]
    fn mmap_guest(
        &mut self,
        space: &mut dyn AddressSpace,
        services: &dyn Services,
        range: PageRange,
        addr: u64,
        offset: u64,
        len: u64,
        flags: u64,
        prot: memory::Prot,
    ) -> Result<u64, SysError> {
        if flags & sys::map::ANONYMOUS != 0 || !offset.is_multiple_of(abi::PAGE_SIZE) {
            return Err(SysError::Inval);
        }
        if prot.exec {
            return Err(SysError::Perm);
        }
        let pages = memory::pages_in(len).ok_or(SysError::Inval)?;
        let first = offset / abi::PAGE_SIZE;
        if first.checked_add(pages).is_none_or(|end| end > range.pages()) {
            return Err(SysError::Inval);
        }
        if self.guest_pages.saturating_add(pages) > MAX_GUEST_PAGES {
            return Err(SysError::NoMem);
        }
        let tracker = self.guest_memory(services).ok_or(SysError::Perm)?;
        let va =
            if flags & sys::map::FIXED != 0 { addr } else { self.mappings.find_room(pages).ok_or(SysError::NoMem)? };
        let start = PageAddr::from_pfn(range.start_pfn() + first);
        // All or nothing: the pages held so far go back if one is refused.
        for i in 0..pages {
            if let Err(e) = tracker.map_for_service(PageAddr::from_pfn(start.pfn() + i)) {
                release(Some(tracker), start.raw(), i);
                return Err(match e {
                    MapError::Refused(AddressConflict::NotValidated) => SysError::Fault,
                    MapError::Refused(_) => SysError::Perm,
                    MapError::NoRoom => SysError::NoMem,
                });
            }
        }
        if let Err(e) = self.mappings.map_guest(space, va, start.raw(), pages, prot) {
            release(Some(tracker), start.raw(), pages);
            return Err(e);
        }
        self.guest_pages += pages;
        Ok(va)
    }

    #[expect(clippy::too_many_arguments, reason = "MMAP's five registers")]
    fn mmap(
        &mut self,
        space: &mut dyn AddressSpace,
        services: &dyn Services,
        handle: u64,
        addr: u64,
        offset: u64,
        len: u64,
        flags: u64,
    ) -> Result<u64, SysError> {
        let prot = memory::prot_of(flags)?;
        if handle != sys::NO_HANDLE {
            return match self.handles.get(handle) {
                Some(Object::PhysMem(range)) => {
                    let range = *range;
                    self.mmap_guest(space, services, range, addr, offset, len, flags, prot)
                }
                Some(Object::Channel(_) | Object::Vm(_) | Object::IoEvent(_)) => Err(SysError::NotSupp),
                None => Err(SysError::NotFound),
            };
        }
        if flags & sys::map::ANONYMOUS == 0 || offset != 0 {
            return Err(SysError::Inval);
        }
        let pages = memory::pages_in(len).ok_or(SysError::Inval)?;
        // Guest pages have their own limit: they take no frames of the SVSM.
        let own = self.mappings.pages().saturating_sub(self.guest_pages).saturating_add(space.table_pages());
        if own.saturating_add(pages) > self.page_quota {
            return Err(SysError::NoMem);
        }
        let va =
            if flags & sys::map::FIXED != 0 { addr } else { self.mappings.find_room(pages).ok_or(SysError::NoMem)? };
        self.mappings.map(space, va, pages, prot)?;
        Ok(va)
    }

    fn munmap(
        &mut self,
        space: &mut dyn AddressSpace,
        services: &dyn Services,
        addr: u64,
        len: u64,
    ) -> Result<(), SysError> {
        let pages = memory::pages_in(len).ok_or(SysError::Inval)?;
        let tracker = services.guest_pages();
        let mut unmapped = 0;
        let done = self.mappings.unmap(space, addr, pages, &mut |gpa, n| {
            release(tracker, gpa, n);
            unmapped += n;
        });
        self.guest_pages = self.guest_pages.saturating_sub(unmapped);
        done
    }

    /// EXEC(name, name_len, handles, count, arg), checked: the right, the name, the
    /// handles (each the caller's, each passable, none twice) and the caller's limit of
    /// children. Nothing has moved yet: [`Self::pass`] moves the handles once the
    /// platform has the new process.
    fn exec(&mut self, space: &dyn AddressSpace, services: &dyn Services, args: [u64; 5]) -> Result<Exec, SysError> {
        let [name_va, name_len, handles_va, count, arg] = args;
        let right = self.exec.as_ref().ok_or(SysError::Perm)?;
        let (Ok(name_bytes), Ok(count)) = (usize::try_from(name_len), usize::try_from(count)) else {
            return Err(SysError::Inval);
        };
        if name_bytes == 0 || name_bytes > sys::MODULE_NAME_MAX || count > sys::EXEC_MAX_HANDLES {
            return Err(SysError::Inval);
        }
        let mut name = [0u8; sys::MODULE_NAME_MAX];
        let name = name.get_mut(..name_bytes).ok_or(SysError::Inval)?;
        self.mappings.check(name_va, name_len, false)?;
        space.read(name_va, name)?;
        let mut raw = [0u8; 4 * sys::EXEC_MAX_HANDLES];
        let raw = raw.get_mut(..count * 4).ok_or(SysError::Inval)?;
        self.mappings.check(handles_va, raw.len() as u64, false)?;
        space.read(handles_va, raw)?;
        let mut handles = [0u32; sys::EXEC_MAX_HANDLES];
        for (i, bytes) in raw.chunks_exact(4).enumerate() {
            let h = u32::from_le_bytes(bytes.try_into().map_err(|_| SysError::Inval)?);
            match self.handles.get(h.into()) {
                // VM objects and their events move (close here, open there, as the
                // review settled). An event whose claim went (its channel closed) names
                // nothing to pass; one with an access in flight (posted or received, not
                // yet answered) stays: the access belongs to this process.
                Some(Object::IoEvent(c)) if c.is_closed() => return Err(SysError::NotFound),
                Some(Object::IoEvent(c)) if !c.is_idle() => return Err(SysError::Busy),
                Some(Object::Vm(_) | Object::IoEvent(_)) => {}
                // The kernel's channel stays with the process the kernel runs for it, and
                // guest memory with the process it gave the right to.
                Some(Object::Channel(_) | Object::PhysMem(_)) => return Err(SysError::NotSupp),
                None => return Err(SysError::NotFound),
            }
            if handles.get(..i).is_some_and(|earlier| earlier.contains(&h)) {
                return Err(SysError::Inval);
            }
            *handles.get_mut(i).ok_or(SysError::Inval)? = h;
        }
        let module = services.module(name).ok_or(SysError::NotFound)?;
        let taken = right.live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            if n < right.max_children { n.checked_add(1) } else { None }
        });
        if taken.is_err() {
            return Err(SysError::NoMem);
        }
        let slot = ChildSlot(right.live.clone());
        Ok(Exec { module, arg, handles, count, slot })
    }

    /// Move the handles of `exec` into `child`, the process the platform made for it
    /// (new, with no handles yet): each is closed here and is the child's next handle,
    /// and its VM or claim is the child's in the VM objects. All or nothing: on `Err`
    /// every handle is the caller's again, under its own number.
    pub fn pass(&mut self, exec: &Exec, child: &mut Process, services: &dyn Services) -> Result<(), SysError> {
        if exec.count == 0 {
            return Ok(());
        }
        let vms = services.vm_objects().ok_or(SysError::NotSupp)?;
        if !child.handles.is_empty() {
            return Err(SysError::Inval);
        }
        child.handles.reserve(exec.count).map_err(|_| SysError::NoMem)?;
        for (i, &h) in exec.handles().iter().enumerate() {
            // `exec` checked each, and nothing of this process ran since: each is here.
            let Some(object) = self.handles.remove(h.into()) else {
                self.take_back(exec, i, child, vms);
                return Err(SysError::NotFound);
            };
            let moved = match &object {
                Object::Vm(vm) => vms.move_vm(*vm, self.id, child.id).then_some(()).ok_or(SysError::NotFound),
                Object::IoEvent(c) => vms.move_claim(c, self.id, child.id),
                Object::Channel(_) | Object::PhysMem(_) => Err(SysError::NotSupp),
            };
            // Cannot fail after `reserve`.
            let placed = match moved {
                Ok(()) => child.handles.insert_or_return(object).map_err(|o| (o, SysError::NoMem)),
                Err(e) => Err((object, e)),
            };
            if let Err((object, e)) = placed {
                if moved.is_ok() {
                    Self::move_back(vms, &object, child.id, self.id);
                }
                // Its number was freed just now and nothing took it.
                let _ = self.handles.put_back(h, object);
                self.take_back(exec, i, child, vms);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Undo the first `moved` handles [`Self::pass`] gave `child` (its handles 0..moved).
    fn take_back(&mut self, exec: &Exec, moved: usize, child: &mut Process, vms: &vm::VmObjects) {
        for (i, &h) in exec.handles().iter().enumerate().take(moved).rev() {
            let Some(object) = child.handles.remove(i as u64) else { continue };
            Self::move_back(vms, &object, child.id, self.id);
            // Its number was freed by the move and nothing took it since.
            let _ = self.handles.put_back(h, object);
        }
    }

    /// A passed object's VM or claim back from `from` to `to`.
    fn move_back(vms: &vm::VmObjects, object: &Object, from: u32, to: u32) {
        match object {
            Object::Vm(vm) => {
                vms.move_vm(*vm, from, to);
            }
            Object::IoEvent(c) => {
                // `to` held it a moment ago, so it has room for it.
                let _ = vms.move_claim(c, from, to);
            }
            Object::Channel(_) | Object::PhysMem(_) => {}
        }
    }

    fn thread_create(&mut self, entry: u64, stack: u64, arg: u64) -> Outcome {
        if !self.mappings.is_executable(entry) {
            return err(SysError::Fault);
        }
        // The stack grows down from `stack`: its first push must land in writable memory.
        let first_push = stack.checked_sub(8).ok_or(SysError::Fault);
        if first_push.and_then(|at| self.mappings.check(at, 8, true)).is_err() {
            return err(SysError::Fault);
        }
        if self.threads >= MAX_THREADS {
            return err(SysError::NoMem);
        }
        self.threads += 1;
        Outcome::ThreadStart { entry, stack, arg }
    }

    /// Copy `len` bytes from user `va` into a new buffer (checked against the mappings).
    fn copy_in(&self, space: &dyn AddressSpace, va: u64, len: u64) -> Result<Vec<u8>, SysError> {
        self.mappings.check(va, len, false)?;
        let n = usize::try_from(len).map_err(|_| SysError::Inval)?;
        let mut buf = heap::zeroed(n).map_err(|_| SysError::NoMem)?;
        space.read(va, &mut buf)?;
        Ok(buf)
    }

    fn copy_out(&self, space: &mut dyn AddressSpace, va: u64, data: &[u8]) -> Result<(), SysError> {
        self.mappings.check(va, data.len() as u64, true)?;
        space.write(va, data)
    }

    fn log(&self, space: &dyn AddressSpace, services: &mut dyn Services, va: u64, len: u64) -> Result<(), SysError> {
        if len > MAX_SMALL_COPY as u64 {
            return Err(SysError::Inval);
        }
        let line = self.copy_in(space, va, len)?;
        services.log(self.id, &line);
        Ok(())
    }

    fn getrandom(
        &self,
        space: &mut dyn AddressSpace,
        services: &mut dyn Services,
        va: u64,
        len: u64,
    ) -> Result<u64, SysError> {
        if len > MAX_SMALL_COPY as u64 {
            return Err(SysError::Inval);
        }
        self.mappings.check(va, len, true)?;
        let mut bytes = [0u8; MAX_SMALL_COPY];
        let bytes = bytes.get_mut(..usize::try_from(len).map_err(|_| SysError::Inval)?).ok_or(SysError::Inval)?;
        if !services.random(bytes) {
            return Err(SysError::Busy);
        }
        self.copy_out(space, va, bytes)?;
        Ok(len)
    }

    fn receive(&mut self, space: &mut dyn AddressSpace, handle: u64, va: u64, len: u64) -> Outcome {
        let channel = match self.channel(handle) {
            Ok(c) => c.clone(),
            Err(e) => return err(e),
        };
        // The buffer is checked before the request is taken, so a bad buffer loses nothing.
        if let Err(e) = self.mappings.check(va, len, true) {
            return err(e);
        }
        match channel.receive(usize::try_from(len).unwrap_or(usize::MAX)) {
            Receive::Request(request) => match space.write(va, &request) {
                Ok(()) => Outcome::Return(request.len() as u64),
                Err(e) => {
                    // Checked as mapped, yet the copy failed: the request cannot be served.
                    channel.close();
                    err(e)
                }
            },
            Receive::Empty => Outcome::Block(Wait::Request(channel)),
            Receive::Unanswered => err(SysError::Busy),
            Receive::TooLong(_) => err(SysError::Inval),
        }
    }

    fn reply(&mut self, space: &dyn AddressSpace, handle: u64, va: u64, len: u64) -> Result<(), SysError> {
        let channel = self.channel(handle)?.clone();
        if len > MAX_MESSAGE {
            return Err(SysError::Inval);
        }
        let reply = self.copy_in(space, va, len)?;
        if channel.reply(reply) { Ok(()) } else { Err(SysError::Inval) }
    }

    /// BATCH: every record runs, in order, as a call of its own would; the results are
    /// written back together when all have run ("nothing complete before BATCH returns").
    fn batch(
        &mut self,
        space: &mut dyn AddressSpace,
        services: &mut dyn Services,
        in_va: u64,
        out_va: u64,
        count: u64,
    ) -> Result<u64, SysError> {
        if count > sys::BATCH_MAX {
            return Err(SysError::Inval);
        }
        let n = usize::try_from(count).map_err(|_| SysError::Inval)?;
        let in_bytes = count * core::mem::size_of::<BatchIn>() as u64;
        let out_bytes = count * core::mem::size_of::<BatchOut>() as u64;
        self.mappings.check(out_va, out_bytes, true)?;
        self.mappings.check(in_va, in_bytes, false)?;
        // Out of the process while its records run (none of them is a BATCH), and back
        // whatever they came to.
        let mut buffers = match self.batch.take() {
            Some(b) => b,
            None => BatchBuffers::new()?,
        };
        let ran = self.run_batch(space, services, &mut buffers, in_va, out_va, n);
        self.batch = Some(buffers);
        ran.map(|()| count)
    }

    fn run_batch(
        &mut self,
        space: &mut dyn AddressSpace,
        services: &mut dyn Services,
        buffers: &mut BatchBuffers,
        in_va: u64,
        out_va: u64,
        n: usize,
    ) -> Result<(), SysError> {
        let (Some(records), Some(results)) = (buffers.records.get_mut(..n), buffers.results.get_mut(..n)) else {
            return Err(SysError::Inval);
        };
        // Every byte of the records is read anew: nothing of an earlier BATCH is left.
        space.read(in_va, records.as_mut_bytes())?;
        for (r, out) in records.iter().zip(results.iter_mut()) {
            // A call that blocks, ends or starts a thread, or is unknown: refused here.
            let call = Call { number: r.number, args: r.args };
            let result = self.immediate(space, services, call).unwrap_or(SysError::Inval.to_rax());
            *out = BatchOut { result, user_data: r.user_data };
        }
        // An MUNMAP in the batch may have taken the output away.
        self.copy_out(space, out_va, results.as_bytes())
    }
}
