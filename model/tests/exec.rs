//! EXEC through the kernel's system call layer (docs/syscalls.md "Who starts processes"):
//! who may start a process, what EXEC refuses before anything moves, how a passed
//! handle is closed in the caller and opened in the new process (the review's "close
//! here, open there"), the limit of children, and that a started process is a process
//! of its own: it serves the claims passed to it, outlives its parent, and its end gives
//! its parent's place back.
//!
//! The parent is a hosted program (`HostedProcess`) making real system calls; the child
//! runs when the VM objects run it for an access, as the bare-metal SVSM runs the test
//! device's MMIO process.

#[path = "support/svm_services.rs"]
mod svm_services;

use abi::syscall::{self as sys, IoAccess, SysError};
use bulwark_model::user_host::{CHILD_IDS, HostSpace, HostedProcess, Module, RunState, UserCalls};
use kernel::user::channel::Channel;
use kernel::user::vm::{Served, VmObjects};
use kernel::user::{Call, Object, Outcome, Process};
use std::sync::Arc;
use std::sync::mpsc;
use zerocopy::IntoBytes;

/// The value the device answers every IN with.
const ANSWER: u32 = 0xAB;
/// The port whose OUT makes the device fault.
const CRASH_PORT: u16 = 0x503;

/// Module `dm`: a device model on its handle 0.
fn device(u: UserCalls) {
    serve(u, 0)
}

/// Module `vmdm`: given a VM as its handle 0, it claims ports 0x520..0x524 of it and
/// serves them.
fn vm_device(u: UserCalls) {
    let Ok(event) = u.checked(sys::IOIO_EVENT, [0, 0x520, 4, 0, 0]) else { u.exit(4) };
    serve(u, event)
}

/// Answer each IN on `event` with [`ANSWER`], take each OUT, and fault on an OUT to
/// [`CRASH_PORT`].
fn serve(u: UserCalls, event: u64) {
    let buf = u.mmap(4096).expect("memory");
    loop {
        if u.checked(sys::WAIT_FOR_EVENT, [event, 0, 0, 0, 0]) != Ok(1) {
            u.exit(1);
        }
        if u.checked(sys::CHANNEL_RECEIVE, [event, buf, 64, 0, 0]) != Ok(16) {
            u.exit(2);
        }
        let access = <IoAccess as zerocopy::FromBytes>::read_from_bytes(&u.load(buf, 16)).expect("16 bytes");
        if access.write != 0 && access.port == CRASH_PORT {
            u.load(0, 1);
        }
        u.store(buf + 64, ANSWER.as_bytes());
        if u.checked(sys::CHANNEL_REPLY, [event, buf + 64, 4, 0, 0]).is_err() {
            u.exit(3);
        }
    }
}

/// Write `name` and `handles` into fresh memory of the program: their addresses.
fn exec_args(u: &UserCalls, name: &[u8], handles: &[u32]) -> (u64, u64) {
    let buf = u.mmap(4096).expect("memory");
    u.store(buf, name);
    u.store(buf + 512, handles.as_bytes());
    (buf, buf + 512)
}

fn exec(u: &UserCalls, name: &[u8], handles: &[u32], arg: u64) -> Result<u64, SysError> {
    let (n, h) = exec_args(u, name, handles);
    u.checked(sys::EXEC, [n, name.len() as u64, h, handles.len() as u64, arg])
}

/// A parent that may open VMs and start up to `children` processes of modules `dm` and
/// `vmdm`, over VM objects of its own; `program` is what it runs.
fn parent(
    children: u32,
    objects: Vec<Object>,
    program: impl FnOnce(UserCalls) + Send + 'static,
) -> (HostedProcess, Arc<VmObjects>) {
    let vms = Arc::new(VmObjects::default());
    let mut p = HostedProcess::start(7, 64, objects, program);
    p.process.allow_vms();
    if children > 0 {
        p.process.allow_exec(children);
    }
    p.services.vms = Some(vms.clone());
    p.services.modules =
        vec![Module { name: "dm", program: Arc::new(device) }, Module { name: "vmdm", program: Arc::new(vm_device) }];
    (p, vms)
}

fn access(port: u16, write: bool) -> IoAccess {
    IoAccess { port, size: 1, write: u8::from(write), vcpu: 0, data: 0x5A, reserved: 0 }
}

/// Only a process the kernel gave the right may start one; and with the right, a bad
/// module, name, handle list or buffer is refused with every handle still the caller's.
#[test]
fn exec_refuses_before_anything_moves() {
    let (tx, rx) = mpsc::channel();
    let (mut plain, _) = parent(0, Vec::new(), {
        let tx = tx.clone();
        move |u| {
            tx.send(("no right", exec(&u, b"dm", &[], 0))).unwrap();
            u.exit(0)
        }
    });
    assert_eq!(plain.run(), RunState::Exited(0));
    let channel = Arc::new(Channel::default());
    let (mut p, vms) = parent(2, vec![Object::Channel(channel)], move |u| {
        let vm = u.checked(sys::VM_OPEN, [1, 0, 0, 0, 0]).unwrap();
        let event = u.checked(sys::IOIO_EVENT, [vm, 0x500, 4, 0, 0]).unwrap() as u32;
        let (vm, max) = (vm as u32, sys::EXEC_MAX_HANDLES);
        let long = [b'd'; sys::MODULE_NAME_MAX + 1];
        let results = [
            ("unknown module", exec(&u, b"vtpm", &[event], 0)),
            ("empty name", exec(&u, b"", &[event], 0)),
            ("name too long", exec(&u, &long, &[event], 0)),
            ("a handle that names nothing", exec(&u, b"dm", &[event, 9], 0)),
            ("a handle above u32", exec(&u, b"dm", &[event, u32::MAX], 0)),
            ("the kernel's channel (handle 0)", exec(&u, b"dm", &[event, 0], 0)),
            ("one handle twice", exec(&u, b"dm", &[vm, event, vm], 0)),
            ("too many handles", exec(&u, b"dm", &vec![event; max + 1], 0)),
            ("a name in no mapping", u.checked(sys::EXEC, [0x1000, 2, 0, 0, 0])),
            ("handles in no mapping", u.checked(sys::EXEC, [exec_args(&u, b"dm", &[]).0, 2, 0x1000, 1, 0])),
        ];
        for r in results {
            tx.send(r).unwrap();
        }
        // Every handle is still here and still works.
        tx.send(("the event still claims its ports", u.checked(sys::IOIO_EVENT, [vm.into(), 0x501, 1, 0, 0]))).unwrap();
        tx.send(("the VM is still open here", u.checked(sys::VM_OPEN, [1, 0, 0, 0, 0]))).unwrap();
        u.exit(0)
    });
    assert_eq!(p.run(), RunState::Exited(0));
    let got: Vec<_> = rx.try_iter().collect();
    let want = [
        ("no right", Err(SysError::Perm)),
        ("unknown module", Err(SysError::NotFound)),
        ("empty name", Err(SysError::Inval)),
        ("name too long", Err(SysError::Inval)),
        ("a handle that names nothing", Err(SysError::NotFound)),
        ("a handle above u32", Err(SysError::NotFound)),
        ("the kernel's channel (handle 0)", Err(SysError::NotSupp)),
        ("one handle twice", Err(SysError::Inval)),
        ("too many handles", Err(SysError::Inval)),
        ("a name in no mapping", Err(SysError::Fault)),
        ("handles in no mapping", Err(SysError::Fault)),
        ("the event still claims its ports", Err(SysError::Busy)),
        ("the VM is still open here", Err(SysError::Busy)),
    ];
    assert_eq!(got, want);
    assert!(p.children.is_empty(), "nothing started");
    assert_eq!(p.process.children(), 0);
    // The process ended: its claim went with it.
    assert_eq!(vms.claimed_ports(), 0);
}

/// A passed event is closed in the parent and is the child's handle 0: the guest's
/// accesses run the child, which answers; the parent may end and the child serves on.
#[test]
fn a_passed_event_is_served_by_the_new_process_and_outlives_its_parent() {
    let (tx, rx) = mpsc::channel();
    let (mut p, vms) = parent(1, Vec::new(), move |u| {
        let vm = u.checked(sys::VM_OPEN, [1, 0, 0, 0, 0]).unwrap();
        let event = u.checked(sys::IOIO_EVENT, [vm, 0x500, 4, 0, 0]).unwrap();
        tx.send(exec(&u, b"dm", &[event as u32], 0)).unwrap();
        // Closed here: the number names nothing now.
        tx.send(u.checked(sys::CLOSE, [event, 0, 0, 0, 0])).unwrap();
        u.exit(0)
    });
    assert_eq!(vms.serve(1, access(0x500, false)), Served::NoDevice, "nothing claims the port yet");
    assert_eq!(p.run(), RunState::Exited(0));
    let child = u64::from(CHILD_IDS);
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), [Ok(child), Err(SysError::NotFound)]);
    assert_eq!(p.children, [CHILD_IDS]);
    // The claim is the child's; the parent, which ended, held none when it did.
    assert_eq!((vms.claims_of(7), vms.claims_of(CHILD_IDS)), (0, 1));
    assert_eq!(vms.claimed_ports(), 4);
    assert_eq!(vms.serve(1, access(0x501, false)), Served::Read(ANSWER.into()));
    assert_eq!(vms.serve(1, access(0x502, true)), Served::Written);
    assert_eq!(vms.serve(1, access(0x504, false)), Served::NoDevice, "outside the claim");
    // Its VM handle stayed with the parent and closed when the parent ended: the VM is
    // free; the child's claim holds its ports still.
    assert!(!vms.is_open(1));
    // The child faults: its claim goes, and the port is refused as any other.
    assert_eq!(vms.serve(1, access(CRASH_PORT, true)), Served::Failed);
    assert_eq!(vms.claimed_ports(), 0);
    assert_eq!(vms.serve(1, access(0x501, false)), Served::NoDevice);
}

/// A passed VM handle moves the VM: the new process claims ports through its handle 0
/// when it first runs (once its parent waits or ends), the parent's number names
/// nothing, and the VM is open in the new process alone.
#[test]
fn a_passed_vm_is_open_in_the_new_process_alone() {
    let (tx, rx) = mpsc::channel();
    let (mut p, vms) = parent(1, Vec::new(), move |u| {
        let vm = u.checked(sys::VM_OPEN, [1, 0, 0, 0, 0]).unwrap();
        tx.send(exec(&u, b"vmdm", &[vm as u32], 0)).unwrap();
        tx.send(u.checked(sys::IOIO_EVENT, [vm, 0x500, 4, 0, 0])).unwrap();
        tx.send(u.checked(sys::VM_OPEN, [1, 0, 0, 0, 0])).unwrap();
        u.exit(0)
    });
    assert_eq!(p.run(), RunState::Exited(0));
    assert_eq!(
        rx.try_iter().collect::<Vec<_>>(),
        [Ok(CHILD_IDS.into()), Err(SysError::NotFound), Err(SysError::Busy)],
        "the parent's VM handle is gone, and the VM is open elsewhere"
    );
    // Open in the child, which claimed its ports through it and serves them.
    assert!(vms.is_open(1));
    assert_eq!(vms.open(1, 99), Err(SysError::Busy), "one process at a time");
    assert_eq!((vms.claims_of(7), vms.claims_of(CHILD_IDS)), (0, 1));
    assert_eq!(vms.serve(1, access(0x521, false)), Served::Read(ANSWER.into()));
    assert_eq!(vms.serve(1, access(0x502, false)), Served::NoDevice, "the parent claimed nothing");
    // It ends: the VM is free again.
    vms.end_process(CHILD_IDS);
    assert!(!vms.is_open(1));
}

/// The right's limit counts children alive: a second EXEC is refused while the first
/// lives, and allowed again once it ended.
#[test]
fn a_child_that_ends_gives_its_place_back() {
    let channel = Arc::new(Channel::default());
    let (tx, rx) = mpsc::channel();
    let (mut p, vms) = parent(1, vec![Object::Channel(channel.clone())], move |u| {
        let buf = u.mmap(4096).unwrap();
        let vm = u.checked(sys::VM_OPEN, [1, 0, 0, 0, 0]).unwrap();
        let first = u.checked(sys::IOIO_EVENT, [vm, 0x500, 4, 0, 0]).unwrap() as u32;
        let second = u.checked(sys::IOIO_EVENT, [vm, 0x508, 4, 0, 0]).unwrap() as u32;
        tx.send(exec(&u, b"dm", &[first], 0)).unwrap();
        tx.send(exec(&u, b"dm", &[second], 0)).unwrap();
        // Wait for the test to say the first child ended.
        u.checked(sys::CHANNEL_RECEIVE, [0, buf, 64, 0, 0]).unwrap();
        tx.send(exec(&u, b"dm", &[second], 0)).unwrap();
        u.exit(0)
    });
    assert_eq!(p.run(), RunState::Blocked);
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), [Ok(CHILD_IDS.into()), Err(SysError::NoMem)]);
    assert_eq!(p.process.children(), 1);
    // The refused EXEC left its handle with the parent: its claim is the parent's.
    assert_eq!((vms.claims_of(7), vms.claims_of(CHILD_IDS)), (1, 1));
    assert_eq!(vms.serve(1, access(CRASH_PORT, true)), Served::Failed);
    assert_eq!(p.process.children(), 0, "the child ended: its place is free");
    channel.post(vec![1]).unwrap();
    assert_eq!(p.run(), RunState::Exited(0));
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), [Ok(u64::from(CHILD_IDS) + 1)]);
    assert_eq!(vms.serve(1, access(0x509, false)), Served::Read(ANSWER.into()));
}

/// A move that cannot complete is undone whole: every handle is the caller's again
/// under its own number, and the VM and claims are the caller's in the VM objects.
#[test]
fn a_pass_that_fails_midway_is_undone() {
    use kernel::user::memory::AddressSpace;
    let vms = Arc::new(VmObjects::default());
    let mut s = svm_services::Svm(vms.clone(), svm_services::SVM);
    let mut space = HostSpace::default();
    let mut p = Process::new(7, 16);
    p.allow_vms();
    p.allow_exec(2);
    let vm = svm_services::call(&mut p, &mut space, &mut s, sys::VM_OPEN, [1, 0, 0, 0, 0]).unwrap();
    let a = svm_services::call(&mut p, &mut space, &mut s, sys::IOIO_EVENT, [vm, 0x500, 4, 0, 0]).unwrap();
    let b = svm_services::call(&mut p, &mut space, &mut s, sys::IOIO_EVENT, [vm, 0x508, 4, 0, 0]).unwrap();
    let flags = sys::map::READ | sys::map::WRITE | sys::map::ANONYMOUS;
    let buf = svm_services::call(&mut p, &mut space, &mut s, sys::MMAP, [sys::NO_HANDLE, 0, 0, 4096, flags]).unwrap();
    space.write(buf, b"dm").unwrap();
    let handles = [vm as u32, a as u32, b as u32];
    space.write(buf + 64, handles.as_bytes()).unwrap();
    let exec_call = || Call { number: sys::EXEC, args: [buf, 2, buf + 64, 3, 0] };
    // An event with an access in flight stays with the process serving it.
    let Some(Object::IoEvent(in_flight)) = p.object(a).cloned() else { panic!("a is an event") };
    in_flight.post(vec![0; 16]).unwrap();
    let busy = p.syscall(&mut space, &mut s, exec_call());
    assert!(matches!(busy, Outcome::Return(rax) if SysError::from_rax(rax) == Some(Ok(SysError::Busy))), "{busy:?}");
    assert!(matches!(in_flight.receive(16), kernel::user::channel::Receive::Request(_)));
    assert!(in_flight.reply(vec![0; 4]));
    assert_eq!(in_flight.take_reply(), Ok(Some(vec![0; 4])), "served and idle again");
    let Outcome::Exec(exec) = p.syscall(&mut space, &mut s, exec_call()) else { panic!("EXEC was refused") };
    assert_eq!(exec.handles(), handles);
    // A child that already has a handle is refused before anything moves.
    let mut used = Process::new(8, 16);
    used.grant(Object::Channel(Arc::new(Channel::default())));
    assert_eq!(p.pass(&exec, &mut used, &s), Err(SysError::Inval));
    // The third handle's claim went after EXEC checked it (as when an access finds its
    // event closed): the first two move, then the third cannot.
    let Some(Object::IoEvent(c)) = p.object(b).cloned() else { panic!("b is an event") };
    vms.unclaim(&c);
    let mut child = Process::new(9, 16);
    assert_eq!(p.pass(&exec, &mut child, &s), Err(SysError::NotFound));
    assert_eq!(child.handle_count(), 0, "nothing stayed with the child");
    assert_eq!(p.handle_count(), 3, "the VM and both events, nothing lost");
    assert!(matches!(p.object(vm), Some(Object::Vm(1))) && matches!(p.object(a), Some(Object::IoEvent(_))));
    assert_eq!((vms.claims_of(7), vms.claims_of(9)), (1, 0), "the moved claim came back");
    // Asked again, EXEC finds the event whose claim went before anything moves.
    let again = p.syscall(&mut space, &mut s, exec_call());
    assert!(matches!(again, Outcome::Return(rax) if SysError::from_rax(rax) == Some(Ok(SysError::NotFound))));
    assert_eq!(vms.open(1, 99), Err(SysError::Busy));
    // The VM is the parent's again: it may claim through it.
    svm_services::call(&mut p, &mut space, &mut s, sys::IOIO_EVENT, [vm, 0x510, 1, 0, 0]).unwrap();
    drop(exec);
    assert_eq!(p.children(), 0, "a dropped EXEC gives its place back");
}
