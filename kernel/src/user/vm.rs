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
//! take the claim away, so later accesses are refused as for any other port of the SVSM.

use super::channel::Channel;
use abi::syscall::{IOIO_MAX_PORTS, IoAccess, SysError};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use spin::Mutex;
use zerocopy::IntoBytes;

/// Runs a device model's process on the calling CPU until it waits again; `false` once
/// the process has ended.
pub type Runner = Box<dyn FnMut() -> bool + Send>;

/// A process that serves claims: its runner, taken (locked) for the whole of one access,
/// so the process runs on one CPU at a time; `None` once it has ended.
type Host = Arc<Mutex<Option<Runner>>>;

/// Ports of one VM claimed by one process.
#[derive(Debug)]
struct Claim {
    vm: u8,
    first: u16,
    count: u16,
    owner: u32,
    channel: Arc<Channel>,
}

impl Claim {
    fn overlaps(&self, vm: u8, first: u16, count: u16) -> bool {
        let (a, b) = (u32::from(self.first), u32::from(first));
        self.vm == vm && a < b + u32::from(count) && b < a + u32::from(self.count)
    }

    fn covers(&self, vm: u8, port: u16, size: u8) -> bool {
        let (start, end) = (u32::from(port), u32::from(port) + u32::from(size));
        self.vm == vm && start >= u32::from(self.first) && end <= u32::from(self.first) + u32::from(self.count)
    }
}

#[derive(Default)]
struct State {
    /// Open VMs and the process holding each.
    open: Vec<(u8, u32)>,
    claims: Vec<Claim>,
    hosts: Vec<(u32, Host)>,
}

/// Every VM object and port claim of the SVSM, shared by the system calls that make them
/// and the exit handlers that use them.
#[derive(Default)]
pub struct VmObjects {
    state: Mutex<State>,
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
    /// An IN's value (already cut to the access's size).
    Read(u32),
    /// An OUT the device model took.
    Written,
    /// The device model failed on it (it ended, or did not answer): the access completes
    /// as for a vanished device and the claim is gone.
    Failed,
}

/// Most VMs open at once and claims held at once, over all processes (a process is also
/// bounded by its handles): the SVSM's records stay small whatever processes do.
const MAX_CLAIMS: usize = 64;

impl VmObjects {
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

    /// IOIO_EVENT: ports `first..first + count` of `vm` for `owner` (checked with
    /// [`port_range`]); the channel their accesses arrive on. `vm` must be open in
    /// `owner` (the caller's handle says so).
    pub fn claim(&self, vm: u8, (first, count): (u16, u16), owner: u32) -> Result<Arc<Channel>, SysError> {
        let mut s = self.state.lock();
        if !s.open.contains(&(vm, owner)) {
            return Err(SysError::Perm);
        }
        if s.claims.iter().any(|c| c.overlaps(vm, first, count)) {
            return Err(SysError::Busy);
        }
        if s.claims.len() >= MAX_CLAIMS {
            return Err(SysError::NoMem);
        }
        s.claims.try_reserve(1).map_err(|_| SysError::NoMem)?;
        let channel = Arc::new(Channel::default());
        s.claims.push(Claim { vm, first, count, owner, channel: channel.clone() });
        Ok(channel)
    }

    /// CLOSE of an event handle: its ports are the SVSM's again.
    pub fn unclaim(&self, channel: &Arc<Channel>) {
        channel.close();
        self.state.lock().claims.retain(|c| !Arc::ptr_eq(&c.channel, channel));
    }

    /// The kernel runs `owner` with `run` when an access to one of its ports arrives.
    pub fn host(&self, owner: u32, run: Runner) -> Result<(), SysError> {
        let mut s = self.state.lock();
        s.hosts.try_reserve(1).map_err(|_| SysError::NoMem)?;
        s.hosts.push((owner, Arc::new(Mutex::new(Some(run)))));
        Ok(())
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
        self.state.lock().claims.iter().map(|c| u64::from(c.count)).sum()
    }

    /// Whether VM `vm` is open in some process.
    pub fn is_open(&self, vm: u8) -> bool {
        self.state.lock().open.iter().any(|(v, _)| *v == vm)
    }

    /// A vCPU of `vm` made `access`: hand it to the process whose claim covers it and
    /// run that process on this CPU until it answers.
    pub fn serve(&self, vm: u8, access: IoAccess) -> Served {
        let found = {
            let s = self.state.lock();
            s.claims.iter().find(|c| c.covers(vm, access.port, access.size)).and_then(|c| {
                let host = s.hosts.iter().find(|(o, _)| *o == c.owner).map(|(_, h)| h.clone());
                Some((c.channel.clone(), c.owner, host?))
            })
        };
        let Some((channel, owner, host)) = found else { return Served::NoDevice };
        // One access at a time per process: another CPU's access to it waits here.
        let mut runner = host.lock();
        let Some(run) = runner.as_mut() else { return Served::NoDevice };
        if channel.post(access.as_bytes().to_vec()).is_err() {
            // Closed by the process, or a request it never answered: no device here now.
            self.unclaim(&channel);
            return Served::NoDevice;
        }
        let alive = run();
        let reply = channel.take_reply();
        if !alive {
            *runner = None;
            drop(runner);
            self.end_process(owner);
        }
        match reply {
            Ok(Some(_)) if access.write != 0 => Served::Written,
            Ok(Some(reply)) => match reply.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
                Some(bytes) => Served::Read(u32::from_le_bytes(bytes) & size_mask(access.size)),
                // An IN answered with less than its value: the device model is broken.
                None => {
                    self.unclaim(&channel);
                    Served::Failed
                }
            },
            // It waits again without having answered: the claim cannot be trusted to.
            Ok(None) => {
                self.unclaim(&channel);
                Served::Failed
            }
            Err(_) => Served::Failed,
        }
    }
}

/// IOIO_EVENT's ports argument checked: at least one port, at most
/// [`IOIO_MAX_PORTS`], none past 0xFFFF.
pub fn port_range(first: u64, count: u64) -> Result<(u16, u16), SysError> {
    let end = first.checked_add(count).ok_or(SysError::Inval)?;
    if count == 0 || count > IOIO_MAX_PORTS || end > 0x1_0000 {
        return Err(SysError::Inval);
    }
    Ok((u16::try_from(first).map_err(|_| SysError::Inval)?, u16::try_from(count).map_err(|_| SysError::Inval)?))
}

/// The bits of an access of `size` bytes.
pub fn size_mask(size: u8) -> u32 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => u32::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::super::channel::Receive;
    use super::*;
    use alloc::vec;

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
        assert_eq!(vms.claim(1, (0xB10, 8), 7).err(), Some(SysError::Perm));
        vms.open(1, 7).unwrap();
        for (first, count) in [(0xB10, 0), (0xB10, IOIO_MAX_PORTS + 1), (0xFFFF, 2), (0x1_0000, 1), (u64::MAX, 2)] {
            assert_eq!(port_range(first, count), Err(SysError::Inval), "{first:#x}+{count}");
        }
        assert_eq!(port_range(0xFFFF, 1), Ok((0xFFFF, 1)));
        let c = vms.claim(1, (0xB10, 8), 7).unwrap();
        assert_eq!(vms.claim(1, (0xB17, 1), 7).err(), Some(SysError::Busy));
        assert_eq!(vms.claim(1, (0xB00, 0x11), 7).err(), Some(SysError::Busy));
        assert!(vms.claim(1, (0xB18, 1), 7).is_ok(), "the next port is free");
        assert!(vms.claim(1, (0xFFFF, 1), 7).is_ok(), "the last port");
        assert_eq!(vms.claimed_ports(), 10);
        vms.unclaim(&c);
        assert!(c.is_closed());
        assert_eq!(vms.claimed_ports(), 2);
        vms.end_process(7);
        assert_eq!(vms.claimed_ports(), 0);
        assert!(!vms.is_open(1));
    }

    /// A stand-in for a device model's process: each run takes the request and answers
    /// as `answer` says.
    fn device(vms: &VmObjects, owner: u32, channel: Arc<Channel>, answer: fn(IoAccess) -> Option<Vec<u8>>) {
        let run: Runner = Box::new(move || {
            if let Receive::Request(r) = channel.receive(16) {
                let a = <IoAccess as zerocopy::FromBytes>::read_from_bytes(&r).unwrap();
                match answer(a) {
                    Some(reply) => assert!(channel.reply(reply)),
                    None => return false,
                }
            }
            true
        });
        vms.host(owner, run).unwrap();
    }

    #[test]
    fn an_access_reaches_the_claim_that_covers_every_byte() {
        let vms = VmObjects::default();
        vms.open(1, 7).unwrap();
        let c = vms.claim(1, (0xB10, 8), 7).unwrap();
        device(&vms, 7, c, |a| Some(if a.write != 0 { vec![] } else { 0xA1B2_C3D4u32.to_le_bytes().to_vec() }));
        assert_eq!(vms.serve(1, access(0xB10, 4, false, 0)), Served::Read(0xA1B2_C3D4));
        assert_eq!(vms.serve(1, access(0xB11, 1, false, 0)), Served::Read(0xD4), "cut to the size");
        assert_eq!(vms.serve(1, access(0xB16, 2, true, 5)), Served::Written);
        assert_eq!(vms.serve(1, access(0xB16, 4, false, 0)), Served::NoDevice, "runs past the claim");
        assert_eq!(vms.serve(1, access(0xB0F, 2, false, 0)), Served::NoDevice, "starts before it");
        assert_eq!(vms.serve(2, access(0xB10, 1, false, 0)), Served::NoDevice, "another VM");
    }

    #[test]
    fn a_device_model_that_fails_loses_its_ports() {
        let vms = VmObjects::default();
        vms.open(1, 7).unwrap();
        // Answers an IN with two bytes.
        let c = vms.claim(1, (0x10, 4), 7).unwrap();
        device(&vms, 7, c, |_| Some(vec![1, 2]));
        assert_eq!(vms.serve(1, access(0x10, 1, false, 0)), Served::Failed);
        assert_eq!(vms.serve(1, access(0x10, 1, false, 0)), Served::NoDevice, "the claim is gone");

        // Ends on its first access: its VM closes and every claim goes.
        vms.open(2, 8).unwrap();
        let c = vms.claim(2, (0x20, 4), 8).unwrap();
        let _other = vms.claim(2, (0x30, 4), 8).unwrap();
        device(&vms, 8, c, |_| None);
        assert_eq!(vms.serve(2, access(0x20, 4, true, 9)), Served::Failed);
        assert_eq!(vms.serve(2, access(0x30, 1, false, 0)), Served::NoDevice);
        assert!(!vms.is_open(2));
        assert_eq!(vms.claimed_ports(), 0);

        // Waits again without answering.
        vms.open(3, 9).unwrap();
        let c = vms.claim(3, (0x40, 1), 9).unwrap();
        vms.host(9, Box::new(|| true)).unwrap();
        assert_eq!(vms.serve(3, access(0x40, 1, true, 1)), Served::Failed);
        assert!(c.is_closed());
        assert_eq!(vms.serve(3, access(0x40, 1, true, 1)), Served::NoDevice);
    }

    #[test]
    fn ports_nobody_runs_are_no_device() {
        let vms = VmObjects::default();
        vms.open(1, 7).unwrap();
        let _c = vms.claim(1, (0x50, 1), 7).unwrap();
        assert_eq!(vms.serve(1, access(0x50, 1, false, 0)), Served::NoDevice, "no runner for the process");
    }
}
