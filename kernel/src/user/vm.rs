//! VM objects and their port events: how a device model at CPL 3 serves a guest's port
//! accesses (docs/syscalls.md "VM objects and device models").
//!
//! A process with the right opens a VM (VM_OPEN; one process at a time per VM, as the
//! review of COCONUT's design settled) and claims ports of it (IOIO_EVENT). The claim is
//! a channel: when a vCPU of that VM makes an IN or OUT the SVSM intercepts and the
//! claim covers every byte of, the platform's exit handler calls [`VmObjects::serve`],
//! which posts the access as an [`IoAccess`] request, runs the process on the exiting
//! CPU until it answers, and gives the vCPU the answer. The process sees the access and
//! nothing else of the guest.
//!
//! The process is hostile input like the guest: an answer that is not one, a process
//! that waits again without answering, ends or overruns its budget, all complete the
//! access as a device that vanished would (an IN reads all ones, an OUT is dropped) and
//! end the process, so its VM is free again and later accesses to its ports are refused
//! as for any other port of the SVSM.

use super::channel::Channel;
use abi::syscall::{IOIO_MAX_PORTS, IoAccess, MMIO_MAX_PAGES, MmioAccess, SysError, VCPU_MAX_INDEX, VcpuExit};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use spin::Mutex;
use zerocopy::IntoBytes;

/// A device model's process as the kernel drives it (on bare metal: a loaded process and
/// what it may reach).
pub trait DeviceModel: Send {
    /// Run it on this CPU until it waits again; `false` once it has ended.
    fn run(&mut self) -> bool;
    /// End it, for the reason `why` (it failed an access, or it holds no claim an access
    /// could run it for). Its handles close (its VM, its claims), its memory and the
    /// guest pages it mapped are given back.
    fn end(&mut self, why: &'static str);
}

/// A process that serves claims, taken (locked) for the whole of one access, so the
/// process runs on one CPU at a time; `None` once it has ended.
type Host = Arc<Mutex<Option<Box<dyn DeviceModel>>>>;

/// A host's place taken with [`VmObjects::seat`]; the process runs there once filled.
pub struct Seat(Host);

impl core::fmt::Debug for Seat {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Seat")
    }
}

impl Seat {
    pub fn fill(self, model: Box<dyn DeviceModel>) {
        *self.0.lock() = Some(model);
    }
}

/// What a claim covers: ports, or guest-physical pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// Ports `first..first + count` (checked with [`port_range`]).
    Ports { first: u16, count: u16 },
    /// Bytes `start..end` of guest-physical space, whole pages (checked with
    /// [`mmio_range`]).
    Mmio { start: u64, end: u64 },
    /// One vCPU, by index (VCPU_OPEN): its exits the kernel leaves to user mode.
    Vcpu { index: u32 },
}

impl Range {
    /// `[start, end)` in the range's own space.
    fn bounds(&self) -> (u64, u64) {
        match *self {
            Self::Ports { first, count } => (u64::from(first), u64::from(first) + u64::from(count)),
            Self::Mmio { start, end } => (start, end),
            Self::Vcpu { index } => (u64::from(index), u64::from(index) + 1),
        }
    }

    fn same_space(&self, other: &Self) -> bool {
        matches!(
            (self, other),
            (Self::Ports { .. }, Self::Ports { .. })
                | (Self::Mmio { .. }, Self::Mmio { .. })
                | (Self::Vcpu { .. }, Self::Vcpu { .. })
        )
    }

    fn overlaps(&self, other: &Self) -> bool {
        let ((a, b), (c, d)) = (self.bounds(), other.bounds());
        self.same_space(other) && a < d && c < b
    }

    /// Does the range hold every byte of `access` (the bytes one access touches)?
    fn covers(&self, access: &Self) -> bool {
        let ((a, b), (c, d)) = (self.bounds(), access.bounds());
        self.same_space(access) && a <= c && d <= b
    }
}

/// A range of one VM claimed by one process.
#[derive(Debug)]
struct Claim {
    vm: u8,
    range: Range,
    owner: u32,
    channel: Arc<Channel>,
}

#[derive(Default)]
struct State {
    /// Open VMs and the process holding each.
    open: Vec<(u8, u32)>,
    claims: Vec<Claim>,
    hosts: Vec<(u32, Host)>,
}

/// Every VM object and claim of the SVSM, shared by the system calls that make them and
/// the exit handlers that use them.
#[derive(Default)]
pub struct VmObjects {
    state: Mutex<State>,
    /// Guest-physical ranges `[start, end)` no MMIO claim may touch: the guest's RAM and
    /// the SVSM's region (fixed at start).
    forbidden: Vec<(u64, u64)>,
}

impl core::fmt::Debug for VmObjects {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("VmObjects").field("open", &s.open).field("claims", &s.claims.len()).finish()
    }
}

/// How an access came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// No claim covers it: the platform refuses it as before.
    NoDevice,
    /// The device model is running an access for another vCPU: the vCPU makes the access
    /// again (its RIP stays on the instruction). A CPU never spins here for another's
    /// access, which may take up to the process's budget.
    Retry,
    /// A load's or an IN's value (already cut to the access's size).
    Read(u64),
    /// A VCPU object's answer to CPUID: EAX, EBX, ECX, EDX.
    Registers([u32; 4]),
    /// An OUT the device model took.
    Written,
    /// The device model failed on it (it ended, or did not answer as it must): the access
    /// completes as for a vanished device, and the process has been ended.
    Failed,
}

/// Most claims held at once, over all processes, and by one process: the SVSM's records
/// stay small whatever processes do, and one device model cannot take every claim.
const MAX_CLAIMS: usize = 64;
pub const MAX_CLAIMS_PER_PROCESS: usize = 16;

impl VmObjects {
    /// VM objects over a guest whose RAM and SVSM region are `forbidden` to MMIO claims.
    pub fn new(forbidden: Vec<(u64, u64)>) -> Self {
        Self { state: Mutex::default(), forbidden }
    }

    /// VM_OPEN: VM `vm` is `owner`'s until it closes it or ends.
    pub fn open(&self, vm: u8, owner: u32) -> Result<(), SysError> {
        let mut s = self.state.lock();
        if s.open.iter().any(|(v, _)| *v == vm) {
            return Err(SysError::Busy);
        }
        s.open.try_reserve(1).map_err(|_| SysError::NoMem)?;
        s.open.push((vm, owner));
        Ok(())
    }

    /// CLOSE of a VM handle. Claims made through it stay until their own handles close.
    pub fn close(&self, vm: u8, owner: u32) {
        self.state.lock().open.retain(|entry| *entry != (vm, owner));
    }

    /// IOIO_EVENT or MMIO_EVENT: `range` of `vm` for `owner`; the channel its accesses
    /// arrive on. `vm` must be open in `owner` (the caller's handle says so); guest
    /// memory is never claimed (`forbidden`: its RAM and the SVSM's region).
    pub fn claim(&self, vm: u8, range: Range, owner: u32) -> Result<Arc<Channel>, SysError> {
        let (start, end) = range.bounds();
        // Ports end at 0x10000; MMIO claims are whole pages.
        let (unit, top) = match range {
            Range::Ports { .. } => (1, 0x1_0000),
            Range::Mmio { .. } => (4096, u64::MAX),
            Range::Vcpu { .. } => (1, VCPU_MAX_INDEX + 1),
        };
        if start >= end || end > top || !start.is_multiple_of(unit) || !end.is_multiple_of(unit) {
            return Err(SysError::Inval);
        }
        if let Range::Mmio { start, end } = range
            && self.forbidden.iter().any(|(a, b)| *a < end && start < *b)
        {
            return Err(SysError::Perm);
        }
        let mut s = self.state.lock();
        if !s.open.contains(&(vm, owner)) {
            return Err(SysError::Perm);
        }
        if s.claims.iter().any(|c| c.vm == vm && c.range.overlaps(&range)) {
            return Err(SysError::Busy);
        }
        if s.claims.len() >= MAX_CLAIMS
            || s.claims.iter().filter(|c| c.owner == owner).count() >= MAX_CLAIMS_PER_PROCESS
        {
            return Err(SysError::NoMem);
        }
        s.claims.try_reserve(1).map_err(|_| SysError::NoMem)?;
        let channel = Arc::new(Channel::default());
        s.claims.push(Claim { vm, range, owner, channel: channel.clone() });
        Ok(channel)
    }

    /// CLOSE of an event handle: its ports are the SVSM's again.
    pub fn unclaim(&self, channel: &Arc<Channel>) {
        channel.close();
        self.state.lock().claims.retain(|c| !Arc::ptr_eq(&c.channel, channel));
    }

    /// The kernel runs process `owner` as `model` when an access to one of its ports
    /// arrives. Process ids name the process here: a second host of one id is refused
    /// (EEXIST), since ending it would end the other too.
    pub fn host(&self, owner: u32, model: Box<dyn DeviceModel>) -> Result<(), SysError> {
        self.seat(owner)?.fill(model);
        Ok(())
    }

    /// A host's place for process `owner`, taken before the process is ready (EXEC takes
    /// it before the handles move, so nothing can fail after they did). Until it is
    /// filled, an access to the process's claims is made again (`Served::Retry`).
    pub fn seat(&self, owner: u32) -> Result<Seat, SysError> {
        let mut s = self.state.lock();
        if s.hosts.iter().any(|(o, _)| *o == owner) {
            return Err(SysError::Exist);
        }
        s.hosts.try_reserve(1).map_err(|_| SysError::NoMem)?;
        let host: Host = Arc::new(Mutex::new(None));
        s.hosts.push((owner, host.clone()));
        Ok(Seat(host))
    }

    /// A VM handle passed from process `from` to process `to` (EXEC): the VM is open in
    /// `to` now. `false` (and nothing changed) if it was not open in `from`.
    pub fn move_vm(&self, vm: u8, from: u32, to: u32) -> bool {
        let mut s = self.state.lock();
        let entry = s.open.iter_mut().find(|entry| **entry == (vm, from));
        entry.map(|entry| entry.1 = to).is_some()
    }

    /// An event handle passed from process `from` to process `to` (EXEC): its claim's
    /// accesses run `to` now. Refused, with nothing changed, if the claim was not
    /// `from`'s (it went when its handle closed, or the process ended: ENOTFOUND) or `to`
    /// holds as many claims as a process may (ENOMEM).
    pub fn move_claim(&self, channel: &Arc<Channel>, from: u32, to: u32) -> Result<(), SysError> {
        let mut s = self.state.lock();
        if !s.claims.iter().any(|c| Arc::ptr_eq(&c.channel, channel) && c.owner == from) {
            return Err(SysError::NotFound);
        }
        if s.claims.iter().filter(|c| c.owner == to).count() >= MAX_CLAIMS_PER_PROCESS {
            return Err(SysError::NoMem);
        }
        let claim = s.claims.iter_mut().find(|c| Arc::ptr_eq(&c.channel, channel) && c.owner == from);
        claim.map(|c| c.owner = to).ok_or(SysError::NotFound)
    }

    /// The process whose claim covers `gpa` of `vm` (MMIO), if any: for the boot's report.
    pub fn mmio_owner(&self, vm: u8, gpa: u64) -> Option<u32> {
        let access = Range::Mmio { start: gpa, end: gpa.saturating_add(1) };
        self.state.lock().claims.iter().find(|c| c.vm == vm && c.range.covers(&access)).map(|c| c.owner)
    }

    /// `owner` ended: its VMs close, its claims go, and nothing runs it again.
    pub fn end_process(&self, owner: u32) {
        let mut s = self.state.lock();
        s.open.retain(|(_, o)| *o != owner);
        s.claims.retain(|c| {
            if c.owner == owner {
                c.channel.close();
            }
            c.owner != owner
        });
        s.hosts.retain(|(o, _)| *o != owner);
    }

    /// Ports claimed now (all VMs): for tests and the boot's report.
    pub fn claimed_ports(&self) -> u64 {
        let s = self.state.lock();
        s.claims
            .iter()
            .filter_map(|c| if let Range::Ports { count, .. } = c.range { Some(u64::from(count)) } else { None })
            .sum()
    }

    /// Pages claimed for MMIO now (all VMs).
    pub fn claimed_mmio_pages(&self) -> u64 {
        let s = self.state.lock();
        s.claims
            .iter()
            .filter_map(|c| {
                if let Range::Mmio { start, end } = c.range { Some(end.saturating_sub(start) / 4096) } else { None }
            })
            .sum()
    }

    /// Is `gpa` in a page of `vm` claimed for MMIO? (The exit handler's test before it
    /// reads and decodes the guest's instruction.)
    pub fn mmio_claimed(&self, vm: u8, gpa: u64) -> bool {
        let access = Range::Mmio { start: gpa, end: gpa.saturating_add(1) };
        self.state.lock().claims.iter().any(|c| c.vm == vm && c.range.covers(&access))
    }

    /// Whether the claim whose event is `channel` is `owner`'s.
    fn holds(&self, owner: u32, channel: &Arc<Channel>) -> bool {
        self.state.lock().claims.iter().any(|c| c.owner == owner && Arc::ptr_eq(&c.channel, channel))
    }

    /// Claims `owner` holds now.
    pub fn claims_of(&self, owner: u32) -> usize {
        self.state.lock().claims.iter().filter(|c| c.owner == owner).count()
    }

    /// Whether VM `vm` is open in some process.
    pub fn is_open(&self, vm: u8) -> bool {
        self.state.lock().open.iter().any(|(v, _)| *v == vm)
    }

    /// A vCPU of `vm` made port access `access`: hand it to the process whose claim
    /// covers it and run that process on this CPU until it answers (an IN's value: 4
    /// bytes).
    pub fn serve(&self, vm: u8, access: IoAccess) -> Served {
        if !matches!(access.size, 1 | 2 | 4) {
            return Served::NoDevice;
        }
        let (first, count) = (access.port, u16::from(access.size));
        let range = Range::Ports { first, count };
        // A port access wraps at 0xFFFF in hardware; none that does is covered here.
        if u32::from(first) + u32::from(count) > 0x1_0000 {
            return Served::NoDevice;
        }
        self.serve_access(vm, range, access.as_bytes(), access.write != 0, access.size, 4)
    }

    /// A vCPU of `vm` made MMIO access `access`: as [`Self::serve`], a load's value in 8
    /// bytes.
    pub fn serve_mmio(&self, vm: u8, access: MmioAccess) -> Served {
        if !matches!(access.size, 1 | 2 | 4 | 8) {
            return Served::NoDevice;
        }
        let Some(end) = access.gpa.checked_add(u64::from(access.size)) else { return Served::NoDevice };
        let range = Range::Mmio { start: access.gpa, end };
        self.serve_access(vm, range, access.as_bytes(), access.write != 0, access.size, 8)
    }

    /// vCPU `exit.vcpu` of `vm` exited as `exit` says (CPUID of a leaf VCPU objects
    /// answer): the answer of the process holding the vCPU's object, 16 bytes.
    pub fn serve_vcpu(&self, vm: u8, exit: VcpuExit) -> Served {
        let range = Range::Vcpu { index: exit.vcpu };
        self.exchange(vm, range, exit.as_bytes(), |reply| {
            let regs = reply.get(..16)?;
            let mut out = [0u32; 4];
            for (r, bytes) in out.iter_mut().zip(regs.chunks_exact(4)) {
                *r = u32::from_le_bytes(bytes.try_into().ok()?);
            }
            Some(Served::Registers(out))
        })
    }

    /// Post `request` to the claim of `vm` that covers `range`, run its process until it
    /// answers; a load's answer has `value_len` bytes, cut to `size`.
    fn serve_access(&self, vm: u8, range: Range, request: &[u8], write: bool, size: u8, value_len: usize) -> Served {
        self.exchange(vm, range, request, |reply| {
            if write {
                return Some(Served::Written);
            }
            // A load's value: `value_len` bytes, cut to the access's size.
            let bytes = reply.get(..value_len)?;
            let mut le = [0u8; 8];
            le.get_mut(..bytes.len())?.copy_from_slice(bytes);
            Some(Served::Read(u64::from_le_bytes(le) & size_mask(size)))
        })
    }

    /// Post `request` to the claim of `vm` that covers `range`, run its process until it
    /// answers, and make the answer what `decode` says (`None`: not an answer).
    fn exchange(&self, vm: u8, range: Range, request: &[u8], decode: impl FnOnce(&[u8]) -> Option<Served>) -> Served {
        let found = {
            let s = self.state.lock();
            s.claims.iter().find(|c| c.vm == vm && c.range.covers(&range)).and_then(|c| {
                let host = s.hosts.iter().find(|(o, _)| *o == c.owner).map(|(_, h)| h.clone());
                Some((c.channel.clone(), c.owner, host?))
            })
        };
        let Some((channel, owner, host)) = found else { return Served::NoDevice };
        // One access at a time per process; another CPU's access to it is made again
        // rather than waited for here (with interrupts off, for up to the budget).
        let Some(mut model) = host.try_lock() else { return Served::Retry };
        // Empty: a process EXEC started whose first run has not ended yet (its seat is
        // filled, or taken away, within its parent's and its own budgets), or one being
        // ended right now (its host goes next). Either way the access is made again.
        let Some(process) = model.as_mut() else { return Served::Retry };
        // The claim may have moved (EXEC) or gone between the lookup and the lock. Only
        // its holder's run changes it, and that run holds this lock: checked now, it
        // stays true. Made again, the access finds the claim's holder as it is.
        if !self.holds(owner, &channel) {
            return Served::Retry;
        }
        let Ok(request) = crate::heap::copy_of(request) else { return Served::NoDevice };
        if channel.post(request).is_err() {
            // Closed (the process closed the event, or its copy of a request failed):
            // those ports are the SVSM's again, and a process left without a claim is
            // ended, as below.
            self.unclaim(&channel);
            if self.claims_of(owner) == 0 {
                process.end("it holds no claim an access could run it for");
                *model = None;
                drop(model);
                self.end_process(owner);
            }
            return Served::NoDevice;
        }
        let mut alive = process.run();
        let answer = match channel.take_reply() {
            Ok(Some(reply)) => decode(&reply),
            // It waits again without having answered, or it ended.
            Ok(None) | Err(_) => None,
        };
        // A process that failed an access is not trusted with the next: it is ended.
        if answer.is_none() && alive {
            process.end("it failed an access");
            alive = false;
        }
        // One that closed or passed its last claim meanwhile waits for an access that
        // can never come: it is ended, and gives back what it holds (its place among its
        // parent's children too).
        if alive && self.claims_of(owner) == 0 {
            process.end("it holds no claim an access could run it for");
            alive = false;
        }
        // Gone, by its own doing or by ours: its VM is free again and its ports are the
        // SVSM's. (An answer it gave before it ended still completes the access.)
        if answer.is_none() || !alive {
            *model = None;
            drop(model);
            self.end_process(owner);
        }
        answer.unwrap_or(Served::Failed)
    }
}

/// IOIO_EVENT's ports argument checked: at least one port, at most
/// [`IOIO_MAX_PORTS`], none past 0xFFFF.
pub fn port_range(first: u64, count: u64) -> Result<Range, SysError> {
    let end = first.checked_add(count).ok_or(SysError::Inval)?;
    if count == 0 || count > IOIO_MAX_PORTS || end > 0x1_0000 {
        return Err(SysError::Inval);
    }
    let first = u16::try_from(first).map_err(|_| SysError::Inval)?;
    Ok(Range::Ports { first, count: u16::try_from(count).map_err(|_| SysError::Inval)? })
}

/// MMIO_EVENT's range checked: page-aligned, at least one page, at most
/// [`MMIO_MAX_PAGES`], not past the top of the address space.
pub fn mmio_range(gpa: u64, length: u64) -> Result<Range, SysError> {
    let end = gpa.checked_add(length).ok_or(SysError::Inval)?;
    if !gpa.is_multiple_of(4096) || !length.is_multiple_of(4096) || length == 0 || length / 4096 > MMIO_MAX_PAGES {
        return Err(SysError::Inval);
    }
    Ok(Range::Mmio { start: gpa, end })
}

/// The bits of an access of `size` bytes.
pub fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::super::channel::Receive;
    use super::*;
    use alloc::vec;

    fn ports(first: u16, count: u16) -> Range {
        Range::Ports { first, count }
    }

    fn mmio(start: u64, pages: u64) -> Range {
        Range::Mmio { start, end: start + pages * 4096 }
    }

    fn access(port: u16, size: u8, write: bool, data: u32) -> IoAccess {
        IoAccess { port, size, write: u8::from(write), vcpu: 0, data, reserved: 0 }
    }

    #[test]
    fn a_vm_is_open_in_one_process_at_a_time() {
        let vms = VmObjects::default();
        assert_eq!(vms.open(1, 7), Ok(()));
        assert_eq!(vms.open(1, 8), Err(SysError::Busy));
        assert_eq!(vms.open(1, 7), Err(SysError::Busy), "not twice in one process either");
        vms.close(1, 8);
        assert!(vms.is_open(1), "only the holder closes it");
        vms.close(1, 7);
        assert_eq!(vms.open(1, 8), Ok(()));
    }

    #[test]
    fn claims_are_bounded_disjoint_and_need_the_vm_open() {
        let vms = VmObjects::default();
        assert_eq!(vms.claim(1, ports(0xB10, 8), 7).err(), Some(SysError::Perm));
        vms.open(1, 7).unwrap();
        for (first, count) in [(0xB10, 0), (0xB10, IOIO_MAX_PORTS + 1), (0xFFFF, 2), (0x1_0000, 1), (u64::MAX, 2)] {
            assert_eq!(port_range(first, count), Err(SysError::Inval), "{first:#x}+{count}");
        }
        assert_eq!(port_range(0xFFFF, 1), Ok(ports(0xFFFF, 1)));
        let c = vms.claim(1, ports(0xB10, 8), 7).unwrap();
        assert_eq!(vms.claim(1, ports(0xB17, 1), 7).err(), Some(SysError::Busy));
        assert_eq!(vms.claim(1, ports(0xB00, 0x11), 7).err(), Some(SysError::Busy));
        assert!(vms.claim(1, ports(0xB18, 1), 7).is_ok(), "the next port is free");
        assert!(vms.claim(1, ports(0xFFFF, 1), 7).is_ok(), "the last port");
        assert_eq!(vms.claimed_ports(), 10);
        vms.unclaim(&c);
        assert!(c.is_closed());
        assert_eq!(vms.claimed_ports(), 2);
        vms.end_process(7);
        assert_eq!(vms.claimed_ports(), 0);
        assert!(!vms.is_open(1));
    }

    /// A stand-in for a device model's process: `run` is its run; `ended` says whether
    /// the kernel ended it.
    struct Model<F> {
        run: F,
        ended: Arc<core::sync::atomic::AtomicBool>,
    }

    impl<F: FnMut() -> bool + Send> DeviceModel for Model<F> {
        fn run(&mut self) -> bool {
            (self.run)()
        }
        fn end(&mut self, _: &'static str) {
            self.ended.store(true, core::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Host `run` as process `owner`: whether the kernel ended it comes back.
    fn host(
        vms: &VmObjects,
        owner: u32,
        run: impl FnMut() -> bool + Send + 'static,
    ) -> Arc<core::sync::atomic::AtomicBool> {
        let ended = Arc::new(core::sync::atomic::AtomicBool::new(false));
        vms.host(owner, Box::new(Model { run, ended: ended.clone() })).unwrap();
        ended
    }

    /// A device model whose process takes each request and answers as `answer` says for
    /// a store or a load (`None`: it ends instead).
    fn device(
        vms: &VmObjects,
        owner: u32,
        channel: Arc<Channel>,
        answer: fn(bool) -> Option<Vec<u8>>,
    ) -> Arc<core::sync::atomic::AtomicBool> {
        host(vms, owner, move || {
            if let Receive::Request(r) = channel.receive(64) {
                // Port and MMIO requests differ in length; `write` is where each keeps it.
                let write = match r.len() {
                    16 => <IoAccess as zerocopy::FromBytes>::read_from_bytes(&r).unwrap().write,
                    _ => <MmioAccess as zerocopy::FromBytes>::read_from_bytes(&r).unwrap().write,
                } != 0;
                match answer(write) {
                    Some(reply) => assert!(channel.reply(reply)),
                    None => return false,
                }
            }
            true
        })
    }

    #[test]
    fn an_access_reaches_the_claim_that_covers_every_byte() {
        let vms = VmObjects::default();
        vms.open(1, 7).unwrap();
        let c = vms.claim(1, ports(0xB10, 8), 7).unwrap();
        device(&vms, 7, c, |write| Some(if write { vec![] } else { 0xA1B2_C3D4u32.to_le_bytes().to_vec() }));
        assert_eq!(vms.serve(1, access(0xB10, 4, false, 0)), Served::Read(0xA1B2_C3D4));
        assert_eq!(vms.serve(1, access(0xB11, 1, false, 0)), Served::Read(0xD4), "cut to the size");
        assert_eq!(vms.serve(1, access(0xB16, 2, true, 5)), Served::Written);
        assert_eq!(vms.serve(1, access(0xB16, 4, false, 0)), Served::NoDevice, "runs past the claim");
        assert_eq!(vms.serve(1, access(0xB0F, 2, false, 0)), Served::NoDevice, "starts before it");
        assert_eq!(vms.serve(2, access(0xB10, 1, false, 0)), Served::NoDevice, "another VM");
    }

    #[test]
    fn a_device_model_that_fails_an_access_is_ended_and_loses_its_vm_and_ports() {
        let vms = VmObjects::default();
        vms.open(1, 7).unwrap();
        // Answers an IN with two bytes; it holds a second claim, and its VM stays open.
        let c = vms.claim(1, ports(0x10, 4), 7).unwrap();
        let _second = vms.claim(1, ports(0x18, 4), 7).unwrap();
        let ended = device(&vms, 7, c, |_| Some(vec![1, 2]));
        assert_eq!(vms.serve(1, access(0x10, 1, false, 0)), Served::Failed);
        assert!(ended.load(core::sync::atomic::Ordering::SeqCst), "the kernel ended it");
        assert_eq!(vms.serve(1, access(0x18, 1, false, 0)), Served::NoDevice, "its other claim went too");
        assert!(!vms.is_open(1), "its VM is free for another process");
        assert_eq!(vms.open(1, 8), Ok(()));
        vms.close(1, 8);

        // Ends on its first access: its VM closes and every claim goes.
        vms.open(2, 8).unwrap();
        let c = vms.claim(2, ports(0x20, 4), 8).unwrap();
        let _other = vms.claim(2, ports(0x30, 4), 8).unwrap();
        let ended = device(&vms, 8, c, |_| None);
        assert_eq!(vms.serve(2, access(0x20, 4, true, 9)), Served::Failed);
        assert_eq!(vms.serve(2, access(0x30, 1, false, 0)), Served::NoDevice);
        assert!(!vms.is_open(2));
        assert_eq!(vms.claimed_ports(), 0);
        assert!(!ended.load(core::sync::atomic::Ordering::SeqCst), "it ended by itself");

        // Waits again without answering.
        vms.open(3, 9).unwrap();
        let c = vms.claim(3, ports(0x40, 1), 9).unwrap();
        let ended = host(&vms, 9, || true);
        assert_eq!(vms.serve(3, access(0x40, 1, true, 1)), Served::Failed);
        assert!(c.is_closed() && ended.load(core::sync::atomic::Ordering::SeqCst));
        assert_eq!(vms.serve(3, access(0x40, 1, true, 1)), Served::NoDevice);
    }

    /// An answer given before the process ended still completes the access.
    #[test]
    fn an_answer_before_the_end_counts() {
        let vms = VmObjects::default();
        vms.open(1, 7).unwrap();
        let c = vms.claim(1, ports(0x10, 4), 7).unwrap();
        let ended = host(&vms, 7, move || {
            let _ = c.receive(16);
            assert!(c.reply(vec![9, 0, 0, 0]));
            false
        });
        assert_eq!(vms.serve(1, access(0x10, 1, false, 0)), Served::Read(9));
        assert!(!ended.load(core::sync::atomic::Ordering::SeqCst));
        assert_eq!(vms.claimed_ports(), 0);
        assert_eq!(vms.serve(1, access(0x10, 1, false, 0)), Served::NoDevice);
    }

    /// A second access to a device model while it runs one (another CPU's) is made again
    /// by its vCPU, never waited for: here the process itself makes one as it runs,
    /// which would deadlock a waiting lock.
    #[test]
    fn an_access_to_a_busy_device_model_is_retried() {
        let vms = Arc::new(VmObjects::default());
        vms.open(1, 7).unwrap();
        let c = vms.claim(1, ports(0x10, 4), 7).unwrap();
        let inner = vms.clone();
        host(&vms, 7, move || {
            assert_eq!(inner.serve(1, access(0x10, 1, false, 0)), Served::Retry);
            let _ = c.receive(16);
            c.reply(vec![1, 0, 0, 0])
        });
        assert_eq!(vms.serve(1, access(0x10, 1, false, 0)), Served::Read(1));
    }

    #[test]
    fn claims_per_process_and_sizes_are_bounded() {
        let vms = VmObjects::default();
        vms.open(1, 7).unwrap();
        vms.open(2, 8).unwrap();
        for i in 0..MAX_CLAIMS_PER_PROCESS as u16 {
            vms.claim(1, ports(0x100 + i, 1), 7).unwrap();
        }
        assert_eq!(vms.claim(1, ports(0x200, 1), 7).err(), Some(SysError::NoMem));
        assert!(vms.claim(2, ports(0x200, 1), 8).is_ok(), "another process still claims");
        assert_eq!(vms.claims_of(7), MAX_CLAIMS_PER_PROCESS);
        host(&vms, 7, || panic!("never run for an access it cannot make"));
        for size in [0, 3, 8] {
            assert_eq!(vms.serve(1, access(0x100, size, false, 0)), Served::NoDevice, "size {size}");
        }
        assert_eq!(vms.host(7, Box::new(Model { run: || true, ended: Arc::default() })), Err(SysError::Exist));
    }

    #[test]
    fn ports_nobody_runs_are_no_device() {
        let vms = VmObjects::default();
        vms.open(1, 7).unwrap();
        let _c = vms.claim(1, ports(0x50, 1), 7).unwrap();
        assert_eq!(vms.serve(1, access(0x50, 1, false, 0)), Served::NoDevice, "no runner for the process");
    }

    /// MMIO claims: whole pages, never the guest's RAM or the SVSM's region, disjoint
    /// from each other (ports are another space: a port number and a gpa never clash);
    /// an access is served when every byte lies in one claim, its value 8 bytes.
    #[test]
    fn mmio_claims_keep_off_guest_memory_and_serve_loads_and_stores() {
        let vms = VmObjects::new(vec![(0, 0x8000_0000), (0x1_0000_0000, 0x1_4000_0000)]);
        vms.open(1, 7).unwrap();
        for (gpa, len) in [
            (0xFEB0_0001, 4096),
            (0xFEB0_0000, 0),
            (0xFEB0_0000, 100),
            (0xFEB0_0000, (MMIO_MAX_PAGES + 1) * 4096),
            (u64::MAX - 4095, 8192),
        ] {
            assert_eq!(mmio_range(gpa, len).err(), Some(SysError::Inval), "{gpa:#x}+{len:#x}");
        }
        assert_eq!(vms.claim(1, mmio(0x7FFF_F000, 1), 7).err(), Some(SysError::Perm), "RAM");
        assert_eq!(vms.claim(1, mmio(0xFFFF_F000, 2), 7).err(), Some(SysError::Perm), "runs into RAM above 4 GiB");
        let c = vms.claim(1, mmio(0xFEB0_0000, 2), 7).unwrap();
        assert_eq!(vms.claim(1, mmio(0xFEB0_1000, 1), 7).err(), Some(SysError::Busy));
        assert!(vms.claim(1, ports(0xB10, 8), 7).is_ok(), "ports do not clash with pages");
        assert_eq!(vms.claimed_mmio_pages(), 2);
        assert!(
            vms.mmio_claimed(1, 0xFEB0_1FFF) && !vms.mmio_claimed(1, 0xFEB0_2000) && !vms.mmio_claimed(2, 0xFEB0_0000)
        );
        device(&vms, 7, c, |write| Some(if write { vec![] } else { 0x1122_3344_5566_7788u64.to_le_bytes().to_vec() }));
        let at = |gpa, size, write| MmioAccess { gpa, data: 0, vcpu: 0, size, write, reserved: [0; 2] };
        assert_eq!(vms.serve_mmio(1, at(0xFEB0_0000, 8, 0)), Served::Read(0x1122_3344_5566_7788));
        assert_eq!(vms.serve_mmio(1, at(0xFEB0_0008, 2, 0)), Served::Read(0x7788));
        assert_eq!(vms.serve_mmio(1, at(0xFEB0_1FFC, 4, 1)), Served::Written);
        assert_eq!(vms.serve_mmio(1, at(0xFEB0_1FFC, 8, 0)), Served::NoDevice, "runs past the claim");
        assert_eq!(vms.serve_mmio(1, at(0xFEB0_0000, 3, 0)), Served::NoDevice);
        assert_eq!(vms.serve_mmio(1, at(u64::MAX - 3, 8, 0)), Served::NoDevice);
    }

    /// A process that passed or closed its last claim while it served an access still
    /// completes it, and is then ended: no access could ever run it again.
    #[test]
    fn a_process_left_without_claims_is_ended() {
        let vms = Arc::new(VmObjects::default());
        vms.open(1, 7).unwrap();
        let c = vms.claim(1, ports(0xB10, 1), 7).unwrap();
        let (run_vms, run_c) = (vms.clone(), c.clone());
        let ended = host(&vms, 7, move || {
            if let Receive::Request(_) = run_c.receive(16) {
                assert!(run_c.reply(vec![0x42, 0, 0, 0]));
            }
            // Its claim goes to another process (as EXEC would pass it).
            assert_eq!(run_vms.move_claim(&run_c, 7, 8), Ok(()));
            true
        });
        assert_eq!(vms.serve(1, access(0xB10, 1, false, 0)), Served::Read(0x42));
        assert!(ended.load(core::sync::atomic::Ordering::SeqCst), "ended");
        assert!(!vms.is_open(1), "its VM closed with it");
        assert_eq!(vms.claims_of(8), 1, "the claim it gave away stays with its new holder");
    }

    /// A claim moves only from its holder, and only to a process with room for it; an
    /// empty seat (a process whose first run has not ended) makes the access wait.
    #[test]
    fn claims_move_within_the_limits_and_an_empty_seat_means_retry() {
        let vms = VmObjects::default();
        vms.open(1, 7).unwrap();
        let c = vms.claim(1, ports(0xB10, 1), 7).unwrap();
        assert_eq!(vms.move_claim(&c, 9, 8), Err(SysError::NotFound), "not 9's to give");
        vms.open(2, 8).unwrap();
        let full: Vec<_> =
            (0..MAX_CLAIMS_PER_PROCESS as u16).map(|i| vms.claim(2, ports(0x100 + i, 1), 8).unwrap()).collect();
        assert_eq!(vms.move_claim(&c, 7, 8), Err(SysError::NoMem), "8 holds all it may");
        vms.unclaim(&full[0]);
        assert_eq!(vms.move_claim(&c, 7, 8), Ok(()));
        assert_eq!(vms.claims_of(7), 0);
        let seat = vms.seat(8).unwrap();
        assert_eq!(vms.seat(8).err(), Some(SysError::Exist));
        assert_eq!(vms.serve(1, access(0xB10, 1, false, 0)), Served::Retry, "seated, not yet filled");
        drop(seat);
        vms.end_process(8);
        assert_eq!(vms.serve(1, access(0xB10, 1, false, 0)), Served::NoDevice);
    }

    /// An event whose channel closed under its claim (the process's copy of a request
    /// failed, say) gives its ports back at the next access; a process left without a
    /// claim by that is ended too, one with another claim is not.
    #[test]
    fn a_claim_whose_channel_closed_goes_and_takes_a_bare_process_with_it() {
        let vms = VmObjects::default();
        vms.open(1, 7).unwrap();
        let (a, b) = (vms.claim(1, ports(0xB10, 1), 7).unwrap(), vms.claim(1, ports(0xB20, 1), 7).unwrap());
        let ended = host(&vms, 7, || true);
        a.close();
        assert_eq!(vms.serve(1, access(0xB10, 1, false, 0)), Served::NoDevice);
        assert!(!ended.load(core::sync::atomic::Ordering::SeqCst), "it still holds the other claim");
        assert_eq!(vms.claims_of(7), 1);
        b.close();
        assert_eq!(vms.serve(1, access(0xB20, 1, false, 0)), Served::NoDevice);
        assert!(ended.load(core::sync::atomic::Ordering::SeqCst), "no claim left: ended");
        assert!(!vms.is_open(1));
    }
}
