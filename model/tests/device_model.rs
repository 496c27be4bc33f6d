//! VM objects and port events through the kernel's system call layer
//! (docs/syscalls.md "VM objects and device models"): who may open a VM, how often, which
//! ports a device model may claim, and a guest port access served end to end by a
//! process that answers with CHANNEL_RECEIVE and CHANNEL_REPLY, as the bare-metal run
//! loop drives it. The svm platform's side (the exit, RAX and RIP) is tested in the
//! `svm` crate (`run::tests`); the boot's test guest checks the whole path at CPL 3.

use abi::syscall::{self as sys, IoAccess, MmioAccess, SysError, VcpuExit, map};
use bulwark_model::user_host::HostSpace;
use kernel::user::memory::AddressSpace;
use kernel::user::vm::{Served, VmObjects};
use kernel::user::{Call, Outcome, Process};
use std::sync::Arc;
use zerocopy::IntoBytes;

#[path = "support/svm_services.rs"]
mod svm_services;
use svm_services::{SVM, Svm, call};

/// A device model's process as this test drives it: the closure is its run.
struct Model<F>(F);

impl<F: FnMut() -> bool + Send> kernel::user::vm::DeviceModel for Model<F> {
    fn run(&mut self) -> bool {
        (self.0)()
    }
    fn end(&mut self, _: &'static str) {}
}

fn device_process(id: u32) -> Process {
    let mut p = Process::new(id, 16);
    p.allow_vms();
    p
}

#[test]
fn a_vm_opens_once_for_a_process_with_the_right() {
    let vms = Arc::new(VmObjects::default());
    let mut s = Svm(vms.clone(), SVM);
    let mut space = HostSpace::default();
    // The vTPM's process has no right to VMs.
    let mut plain = Process::new(1, 16);
    assert_eq!(call(&mut plain, &mut space, &mut s, sys::VM_OPEN, [1, 0, 0, 0, 0]), Err(SysError::Perm));

    let mut a = device_process(2);
    for missing in [0, 2, 63, 64, 1 << 32, u64::MAX] {
        assert_eq!(call(&mut a, &mut space, &mut s, sys::VM_OPEN, [missing, 0, 0, 0, 0]), Err(SysError::NotFound));
    }
    let vm = call(&mut a, &mut space, &mut s, sys::VM_OPEN, [1, 0, 0, 0, 0]).unwrap();
    assert_eq!(call(&mut a, &mut space, &mut s, sys::VM_OPEN, [1, 0, 0, 0, 0]), Err(SysError::Busy));
    let mut b = device_process(3);
    let mut b_space = HostSpace::default();
    assert_eq!(call(&mut b, &mut b_space, &mut s, sys::VM_OPEN, [1, 0, 0, 0, 0]), Err(SysError::Busy));
    // Passing a VM on: close here, open there.
    call(&mut a, &mut space, &mut s, sys::CLOSE, [vm, 0, 0, 0, 0]).unwrap();
    assert_eq!(call(&mut a, &mut space, &mut s, sys::CLOSE, [vm, 0, 0, 0, 0]), Err(SysError::NotFound));
    let vm_b = call(&mut b, &mut b_space, &mut s, sys::VM_OPEN, [1, 0, 0, 0, 0]).unwrap();
    // A process that ends gives its VM back.
    b.end(&mut b_space, &s);
    assert!(!vms.is_open(1));
    let _ = vm_b;
    call(&mut a, &mut space, &mut s, sys::VM_OPEN, [1, 0, 0, 0, 0]).unwrap();
}

#[test]
fn a_full_handle_table_leaves_no_vm_open_and_no_port_claimed() {
    let vms = Arc::new(VmObjects::default());
    let mut s = Svm(vms.clone(), SVM);
    let mut space = HostSpace::default();
    let mut p = device_process(2);
    let vm = call(&mut p, &mut space, &mut s, sys::VM_OPEN, [1, 0, 0, 0, 0]).unwrap();
    let mut events = 0;
    while call(&mut p, &mut space, &mut s, sys::IOIO_EVENT, [vm, 0x1000 + events, 1, 0, 0]).is_ok() {
        events += 1;
    }
    assert_eq!(call(&mut p, &mut space, &mut s, sys::IOIO_EVENT, [vm, 0x3000, 1, 0, 0]), Err(SysError::NoMem));
    assert_eq!(vms.claimed_ports(), events, "the refused claim is not kept");
    call(&mut p, &mut space, &mut s, sys::CLOSE, [vm, 0, 0, 0, 0]).unwrap();
    // One handle free again, the VM closed: an open that fills the table again works,
    // and with no free handle the open is undone.
    let again = call(&mut p, &mut space, &mut s, sys::VM_OPEN, [1, 0, 0, 0, 0]).unwrap();
    assert_eq!(call(&mut p, &mut space, &mut s, sys::IOIO_EVENT, [again, 0x3000, 1, 0, 0]), Err(SysError::NoMem));
    call(&mut p, &mut space, &mut s, sys::CLOSE, [again, 0, 0, 0, 0]).unwrap();
    let ev = call(&mut p, &mut space, &mut s, sys::IOIO_EVENT, [again, 0x3000, 1, 0, 0]);
    assert_eq!(ev, Err(SysError::NotFound), "the VM handle is closed");
    p.end(&mut space, &s);
    assert_eq!(vms.claimed_ports(), 0);
}

#[test]
fn a_device_model_claims_only_ports_the_svsm_intercepts_and_no_one_elses() {
    let vms = Arc::new(VmObjects::default());
    let mut s = Svm(vms.clone(), SVM);
    let mut space = HostSpace::default();
    let mut p = device_process(2);
    let vm = call(&mut p, &mut space, &mut s, sys::VM_OPEN, [1, 0, 0, 0, 0]).unwrap();
    let ev = |p: &mut Process, space: &mut HostSpace, s: &mut Svm, handle, first, count| {
        call(p, space, s, sys::IOIO_EVENT, [handle, first, count, 0, 0])
    };
    assert_eq!(ev(&mut p, &mut space, &mut s, vm, 0x2F0, 16), Err(SysError::Perm), "reaches the guest's COM2");
    for (first, count) in [(0xB10, 0), (0xB10, sys::IOIO_MAX_PORTS + 1), (0xFFFF, 2), (1 << 16, 1)] {
        assert_eq!(ev(&mut p, &mut space, &mut s, vm, first, count), Err(SysError::Inval), "{first:#x}+{count}");
    }
    assert_eq!(ev(&mut p, &mut space, &mut s, vm + 1, 0xB10, 8), Err(SysError::NotFound));
    let mem = call(&mut p, &mut space, &mut s, sys::MMAP, [sys::NO_HANDLE, 0, 0, 4096, map::READ | map::ANONYMOUS]);
    assert!(mem.is_ok());
    let event = ev(&mut p, &mut space, &mut s, vm, 0xB10, 8).unwrap();
    assert_eq!(ev(&mut p, &mut space, &mut s, event, 0xB20, 8), Err(SysError::NotSupp), "an event is not a VM");
    assert_eq!(ev(&mut p, &mut space, &mut s, vm, 0xB17, 2), Err(SysError::Busy));
    // A VM handle and an event are not memory.
    for handle in [vm, event] {
        let m = call(&mut p, &mut space, &mut s, sys::MMAP, [handle, 0, 0, 4096, map::READ]);
        assert_eq!(m, Err(SysError::NotSupp));
    }
    // Another process that opens the VM after this one closed it cannot take the ports.
    call(&mut p, &mut space, &mut s, sys::CLOSE, [vm, 0, 0, 0, 0]).unwrap();
    let mut q = device_process(3);
    let mut q_space = HostSpace::default();
    let vm_q = call(&mut q, &mut q_space, &mut s, sys::VM_OPEN, [1, 0, 0, 0, 0]).unwrap();
    assert_eq!(ev(&mut q, &mut q_space, &mut s, vm_q, 0xB14, 1), Err(SysError::Busy));
    // Closing the event gives them up.
    call(&mut p, &mut space, &mut s, sys::CLOSE, [event, 0, 0, 0, 0]).unwrap();
    ev(&mut q, &mut q_space, &mut s, vm_q, 0xB14, 1).unwrap();
}

/// The whole kernel path: the platform's exit handler calls `serve`, which runs the
/// device model (here: the process's system calls made in the order its loop makes
/// them); the process receives the access as an `IoAccess` and answers an IN with
/// CHANNEL_REPLY.
#[test]
fn a_port_access_is_served_by_the_process_through_its_event() {
    let vms = Arc::new(VmObjects::default());
    let mut s = Svm(vms.clone(), SVM);
    let mut space = HostSpace::default();
    let mut p = device_process(2);
    let vm = call(&mut p, &mut space, &mut s, sys::VM_OPEN, [1, 0, 0, 0, 0]).unwrap();
    let event = call(&mut p, &mut space, &mut s, sys::IOIO_EVENT, [vm, 0xB10, 8, 0, 0]).unwrap();
    let buf = call(
        &mut p,
        &mut space,
        &mut s,
        sys::MMAP,
        [sys::NO_HANDLE, 0, 0, 4096, map::READ | map::WRITE | map::ANONYMOUS],
    )
    .unwrap();
    // Nothing yet: WAIT_FOR_EVENT blocks.
    assert!(matches!(
        p.syscall(&mut space, &mut s, Call { number: sys::WAIT_FOR_EVENT, args: [event, 0, 0, 0, 0] }),
        Outcome::Block(_)
    ));

    // The device: a register that answers an IN with the last OUT plus one.
    let run_vms = vms.clone();
    let mut register = 0u32;
    let run = Model(move || {
        let mut s = Svm(run_vms.clone(), SVM);
        assert_eq!(call(&mut p, &mut space, &mut s, sys::WAIT_FOR_EVENT, [event, 0, 0, 0, 0]), Ok(1));
        assert_eq!(call(&mut p, &mut space, &mut s, sys::CHANNEL_RECEIVE, [event, buf, 16, 0, 0]), Ok(16));
        let mut bytes = [0u8; 16];
        space.read(buf, &mut bytes).unwrap();
        let a = <IoAccess as zerocopy::FromBytes>::read_from_bytes(&bytes).unwrap();
        if a.write != 0 {
            register = a.data;
        }
        space.write(buf, (register + 1).as_bytes()).unwrap();
        assert_eq!(call(&mut p, &mut space, &mut s, sys::CHANNEL_REPLY, [event, buf, 4, 0, 0]), Ok(0));
        // Back to waiting: nothing more is posted.
        !matches!(
            p.syscall(&mut space, &mut s, Call { number: sys::CHANNEL_RECEIVE, args: [event, buf, 16, 0, 0] }),
            Outcome::Return(_)
        )
    });
    vms.host(2, Box::new(run)).unwrap();
    let access = |port, size, write, data| IoAccess { port, size, write, vcpu: 0, data, reserved: 0 };
    assert_eq!(vms.serve(1, access(0xB10, 4, 1, 41)), Served::Written);
    assert_eq!(vms.serve(1, access(0xB10, 4, 0, 0)), Served::Read(42));
    assert_eq!(vms.serve(1, access(0xB10, 1, 0, 0)), Served::Read(42));
    assert_eq!(vms.serve(1, access(0xB10, 4, 1, 0x1FF)), Served::Written);
    assert_eq!(vms.serve(1, access(0xB10, 1, 0, 0)), Served::Read(0x00), "0x200 cut to a byte");
    assert_eq!(vms.serve(1, access(0xB18, 1, 0, 0)), Served::NoDevice);
    assert_eq!(vms.claimed_ports(), 8);
}

/// MMIO_EVENT through the system call layer: whole pages only, never the guest's RAM or
/// the SVSM's region, never where the platform serves no MMIO, never a page another
/// claim holds; a load served end to end by the process that claimed the page.
#[test]
fn an_mmio_page_is_claimed_only_off_guest_memory_and_served_by_its_process() {
    // RAM 0..2 GiB, the SVSM at 16..32 MiB (inside it, as on svm).
    let vms = Arc::new(VmObjects::new(vec![(0, 0x8000_0000), (0x100_0000, 0x200_0000)]));
    let mut s = Svm(vms.clone(), SVM);
    let mut space = HostSpace::default();
    let mut p = device_process(2);
    let vm = call(&mut p, &mut space, &mut s, sys::VM_OPEN, [1, 0, 0, 0, 0]).unwrap();
    let ev = |p: &mut Process, space: &mut HostSpace, s: &mut Svm, gpa: u64, len: u64| {
        call(p, space, s, sys::MMIO_EVENT, [vm, gpa, len, 0, 0])
    };
    for (gpa, len) in [(0xFEB0_0000, 0), (0xFEB0_0800, 4096), (0xFEB0_0000, 17 * 4096), (!0xFFF, 8192)] {
        assert_eq!(ev(&mut p, &mut space, &mut s, gpa, len), Err(SysError::Inval), "{gpa:#x}+{len:#x}");
    }
    assert_eq!(ev(&mut p, &mut space, &mut s, 0x100_0000, 4096), Err(SysError::Perm), "the SVSM's region");
    assert_eq!(ev(&mut p, &mut space, &mut s, 0x7FFF_F000, 8192), Err(SysError::Perm), "ends in RAM");
    let event = ev(&mut p, &mut space, &mut s, 0xFEB0_0000, 4096).unwrap();
    assert_eq!(ev(&mut p, &mut space, &mut s, 0xFEB0_0000, 4096), Err(SysError::Busy));
    // Where the platform does not serve MMIO (SEV-SNP: the host runs nested paging).
    let mut snp = Svm(vms.clone(), 1);
    let refused =
        p.syscall(&mut space, &mut snp, Call { number: sys::MMIO_EVENT, args: [vm, 0xFEC0_0000, 4096, 0, 0] });
    assert!(matches!(refused, Outcome::Return(rax) if SysError::from_rax(rax) == Some(Ok(SysError::NotSupp))));

    let buf = call(
        &mut p,
        &mut space,
        &mut s,
        sys::MMAP,
        [sys::NO_HANDLE, 0, 0, 4096, map::READ | map::WRITE | map::ANONYMOUS],
    )
    .unwrap();
    let run_vms = vms.clone();
    let run = Model(move || {
        let mut s = Svm(run_vms.clone(), SVM);
        assert_eq!(call(&mut p, &mut space, &mut s, sys::WAIT_FOR_EVENT, [event, 0, 0, 0, 0]), Ok(1));
        assert_eq!(call(&mut p, &mut space, &mut s, sys::CHANNEL_RECEIVE, [event, buf, 64, 0, 0]), Ok(24));
        let mut bytes = [0u8; 24];
        space.read(buf, &mut bytes).unwrap();
        let a = <MmioAccess as zerocopy::FromBytes>::read_from_bytes(&bytes).unwrap();
        // Answers with the address it was asked about.
        space.write(buf, a.gpa.as_bytes()).unwrap();
        assert_eq!(call(&mut p, &mut space, &mut s, sys::CHANNEL_REPLY, [event, buf, 8, 0, 0]), Ok(0));
        true
    });
    vms.host(2, Box::new(run)).unwrap();
    let load = |gpa, size| MmioAccess { gpa, data: 0, vcpu: 0, size, write: 0, reserved: [0; 2] };
    assert_eq!(vms.serve_mmio(1, load(0xFEB0_0010, 8)), Served::Read(0xFEB0_0010));
    assert_eq!(vms.serve_mmio(1, load(0xFEB0_0010, 1)), Served::Read(0x10));
    assert_eq!(vms.serve_mmio(1, load(0xFEB0_1000, 1)), Served::NoDevice);
}

/// VCPU_OPEN (docs/syscalls.md "VCPU objects"): a vCPU of a VM open in the process, once,
/// up to the highest index, only where the platform gives CPUID to VCPU objects; its
/// exits served end to end by the process, with another vCPU's left alone.
#[test]
fn a_vcpu_object_opens_once_and_answers_its_vcpus_exits() {
    let vms = Arc::new(VmObjects::default());
    let mut s = Svm(vms.clone(), SVM);
    let mut space = HostSpace::default();
    let mut p = device_process(2);
    let vm = call(&mut p, &mut space, &mut s, sys::VM_OPEN, [1, 0, 0, 0, 0]).unwrap();
    let open = |p: &mut Process, space: &mut HostSpace, s: &mut Svm, index: u64| {
        call(p, space, s, sys::VCPU_OPEN, [vm, index, 0, 0, 0])
    };
    assert_eq!(open(&mut p, &mut space, &mut s, sys::VCPU_MAX_INDEX + 1), Err(SysError::Inval));
    assert_eq!(open(&mut p, &mut space, &mut s, 1 << 32), Err(SysError::Inval));
    assert_eq!(call(&mut p, &mut space, &mut s, sys::VCPU_OPEN, [vm + 9, 0, 0, 0, 0]), Err(SysError::NotFound));
    // Where the platform does not take the guest's CPUID (SEV-SNP).
    let mut snp = Svm(vms.clone(), 1 | sys::features::IOIO_EVENTS);
    assert_eq!(open(&mut p, &mut space, &mut snp, 0), Err(SysError::NotSupp));
    let vcpu = open(&mut p, &mut space, &mut s, 3).unwrap();
    assert_eq!(open(&mut p, &mut space, &mut s, 3), Err(SysError::Busy), "one object per vCPU");
    // A VCPU object is an event: it waits, it is not memory.
    assert!(matches!(
        p.syscall(&mut space, &mut s, Call { number: sys::WAIT_FOR_EVENT, args: [vcpu, 0, 0, 0, 0] }),
        Outcome::Block(_)
    ));
    let flags = map::READ | map::WRITE | map::ANONYMOUS;
    assert_eq!(call(&mut p, &mut space, &mut s, sys::MMAP, [vcpu, 0, 0, 4096, flags]), Err(SysError::NotSupp));
    let buf = call(&mut p, &mut space, &mut s, sys::MMAP, [sys::NO_HANDLE, 0, 0, 4096, flags]).unwrap();
    let run_vms = vms.clone();
    let run = Model(move || {
        let mut s = Svm(run_vms.clone(), SVM);
        assert_eq!(call(&mut p, &mut space, &mut s, sys::WAIT_FOR_EVENT, [vcpu, 0, 0, 0, 0]), Ok(1));
        assert_eq!(call(&mut p, &mut space, &mut s, sys::CHANNEL_RECEIVE, [vcpu, buf, 64, 0, 0]), Ok(24));
        let mut bytes = [0u8; 24];
        space.read(buf, &mut bytes).unwrap();
        let exit = <VcpuExit as zerocopy::FromBytes>::read_from_bytes(&bytes).unwrap();
        let answer = [exit.vcpu, exit.leaf, exit.subleaf, exit.rip as u32];
        space.write(buf, answer.as_bytes()).unwrap();
        // Fewer than 16 bytes for leaf 0x400000F1: not an answer.
        let len = if exit.leaf == 0x4000_00F1 { 8 } else { 16 };
        assert_eq!(call(&mut p, &mut space, &mut s, sys::CHANNEL_REPLY, [vcpu, buf, len, 0, 0]), Ok(0));
        true
    });
    vms.host(2, Box::new(run)).unwrap();
    let exit = |vcpu, leaf| VcpuExit { kind: sys::vcpu_exit::CPUID, vcpu, leaf, subleaf: 5, rip: 0x1234 };
    assert_eq!(vms.serve_vcpu(1, exit(3, 0x4000_00F0)), Served::Registers([3, 0x4000_00F0, 5, 0x1234]));
    assert_eq!(vms.serve_vcpu(1, exit(2, 0x4000_00F0)), Served::NoDevice, "another vCPU's exit");
    assert_eq!(vms.serve_vcpu(2, exit(3, 0x4000_00F0)), Served::NoDevice, "another VM's");
    // A short answer fails the exit and ends the process: the vCPU is free again.
    assert_eq!(vms.serve_vcpu(1, exit(3, 0x4000_00F1)), Served::Failed);
    assert_eq!(vms.serve_vcpu(1, exit(3, 0x4000_00F0)), Served::NoDevice);
    assert!(!vms.is_open(1));
}
