//! The system call fuzz harness: arbitrary bytes become a sequence of system calls with
//! arbitrary numbers and arguments (biased towards the process's own mappings, its
//! handles and the edges of the address space), interleaved with the kernel's side of a
//! channel (posting requests, taking replies) and with BATCH records built from the same
//! vocabulary.
//!
//! The process may open guest memory (OPEN_PHYSMEM) over a page tracker with validated
//! and unvalidated pages, an SVSM region and a VMSA in it, open VM 1 and claim its
//! ports, MMIO pages and vCPUs (VM_OPEN, IOIO_EVENT, MMIO_EVENT, VCPU_OPEN), whose
//! accesses and exits the harness makes as the platform would, and start processes
//! (EXEC, module `m`) that its handles move into; the harness ends them at times, as
//! their faults would.
//!
//! After every call it checks what must always hold: the kernel's record of the process's
//! mappings and the pages actually mapped agree (the hosted space also panics on a double
//! map or an unmap of nothing), the quota and handle limits hold, the tracker holds
//! exactly the guest pages the process maps and never a page the SVSM has a claim on,
//! and a process that exited holds nothing. A panic anywhere is a finding. Used by the cargo-fuzz target
//! `syscalls` and by a hosted smoke test on random inputs.

use crate::fuzz::Input;
use crate::user_host::{HostServices, HostSpace, Module};
use abi::syscall::{self as sys, BatchIn, IoAccess, MmioAccess};
use kernel::addr::{PageAddr, PageRange};
use kernel::pages::{PageRole, PageTracker};
use kernel::user::channel::Channel;
use kernel::user::handles::MAX_HANDLES;
use kernel::user::memory::{MMAP_BASE, USER_BOTTOM, USER_TOP};
use kernel::user::vm::VmObjects;
use kernel::user::{Call, ChildSlot, Exec, Object, Outcome, Process};
use kernel::vcpu::VcpuIndex;
use std::sync::Arc;
use zerocopy::IntoBytes;

const QUOTA: u64 = 48;

/// Guest RAM of the fuzzed tracker: 0..16 MiB and 32..34 MiB, the SVSM at 8..9 MiB.
fn tracker() -> PageTracker {
    let range = |pfn: u64, pages: u64| PageRange::new(PageAddr::from_pfn(pfn), pages).expect("a range");
    let t = PageTracker::new(&[range(0, 4096), range(8192, 512)], range(2048, 256), 8).expect("the layout");
    // Validated: the first 4 MiB and the second range; a VMSA at 1 MiB.
    t.record_validated(range(0, 1024), true).expect("room");
    t.record_validated(range(8192, 512), true).expect("room");
    t.set_role(PageAddr::from_pfn(256), PageRole::Vmsa(VcpuIndex(1))).expect("room");
    t
}

const NUMBERS: [u64; 20] = [
    sys::VM_OPEN,
    sys::VCPU_OPEN,
    sys::IOIO_EVENT,
    sys::MMIO_EVENT,
    sys::WAIT_FOR_EVENT,
    sys::MMAP,
    sys::MUNMAP,
    sys::EXEC,
    sys::CLOSE,
    sys::THREAD_CREATE,
    sys::WAIT_FOR_EVENT,
    sys::BATCH,
    sys::OPEN_PHYSMEM,
    sys::CAPABILITIES,
    sys::LOG,
    sys::CLOCK,
    sys::GETRANDOM,
    sys::CHANNEL_RECEIVE,
    sys::CHANNEL_REPLY,
    3,
];

/// An argument: often one the kernel must look at closely.
fn arg(input: &mut Input<'_>, mapped: &[u64]) -> u64 {
    let pick = input.u8();
    match pick % 16 {
        0 => u64::from(input.u8()),
        1 => u64::from(input.u8()) * 4096,
        2 => {
            mapped.get(usize::from(input.u8()) % mapped.len().max(1)).copied().unwrap_or(MMAP_BASE)
                + u64::from(input.u8()) * 8
        }
        3 => MMAP_BASE + u64::from(input.u8()) * 4096,
        4 => USER_TOP - u64::from(input.u8()) * 4096,
        5 => USER_BOTTOM - 4096 + u64::from(input.u8()),
        6 => sys::NO_HANDLE,
        7 => u64::MAX - u64::from(input.u8()),
        8 => sys::map::ALL & input.u64(),
        9 => (sys::map::READ | sys::map::WRITE | sys::map::ANONYMOUS) | (u64::from(input.u8() & 1) * sys::map::FIXED),
        10 => 1 << (input.u8() % 64),
        _ => input.u64(),
    }
}

/// A device model that never answers.
struct Silent;

impl kernel::user::vm::DeviceModel for Silent {
    fn run(&mut self) -> bool {
        true
    }
    fn end(&mut self, _: &'static str) {}
}

/// The processes the fuzzed one started, as the platform keeps them.
#[derive(Default)]
struct Children {
    live: Vec<(Process, HostSpace, ChildSlot)>,
    next_id: u32,
}

impl Children {
    /// The platform's side of an EXEC: a new process, a seat among the hosts, the
    /// handles moved; `false` if it did not start (every handle still the parent's).
    fn start(&mut self, parent: &mut Process, exec: Exec, services: &HostServices) -> bool {
        let Some(vms) = &services.vms else { return false };
        let id = 100u32.saturating_add(self.next_id);
        self.next_id = self.next_id.saturating_add(1);
        let Ok(seat) = vms.seat(id) else { return false };
        let mut child = Process::new(id, QUOTA);
        if parent.pass(&exec, &mut child, services).is_err() {
            vms.end_process(id);
            return false;
        }
        seat.fill(Box::new(Silent));
        self.live.push((child, HostSpace::default(), exec.slot));
        true
    }

    /// The `i`-th one ends (as a fault would end it): its claims go.
    fn end(&mut self, i: usize, services: &HostServices) {
        if self.live.is_empty() {
            return;
        }
        let (mut child, mut space, slot) = self.live.remove(i % self.live.len());
        child.end(&mut space, services);
        drop(slot);
    }
}

/// Run the harness on one input.
pub fn run_syscalls(data: &[u8]) {
    let mut input = Input { data };
    let channel = Arc::new(Channel::default());
    let mut process = Process::new(1, QUOTA);
    process.grant(Object::Channel(channel.clone()));
    process.allow_physmem();
    process.allow_vms();
    process.allow_exec(2);
    let mut children = Children::default();
    let mut space = HostSpace::default();
    let mut services = HostServices::default();
    services.modules = vec![Module { name: "m", program: Arc::new(|_| {}) }];
    services.guest = Some(tracker());
    // MMIO may not be claimed over the fuzzed tracker's RAM (below 34 MiB).
    let vms = Arc::new(VmObjects::new(vec![(0, 34 << 20)]));
    // A device model that never answers: an access to its ports ends it.
    vms.host(1, Box::new(Silent)).expect("room");
    services.vms = Some(vms.clone());
    let mut mapped: Vec<u64> = Vec::new();
    let mut exited = false;
    while !input.done() && !exited {
        match input.u8() % 8 {
            // The kernel's side of the channel.
            0 => {
                let len = usize::from(input.u8() % 64);
                let _ = channel.post(input.bytes(len).to_vec());
            }
            1 => {
                let _ = channel.take_reply();
                // A guest's port access, as the platform's exit handler makes it.
                let access = IoAccess {
                    port: u16::from(input.u8()) << 4,
                    size: [1, 2, 4, 0, 3][usize::from(input.u8() % 5)],
                    write: input.u8() & 1,
                    vcpu: 0,
                    data: 0,
                    reserved: 0,
                };
                let _ = vms.serve(input.u8() % 3, access);
                // And an MMIO access somewhere in the low 4 GiB.
                let mmio = MmioAccess {
                    gpa: input.u64() & 0xFFFF_FFFC,
                    data: input.u64(),
                    vcpu: 0,
                    size: [1, 2, 4, 8, 0][usize::from(input.u8() % 5)],
                    write: input.u8() & 1,
                    reserved: [0; 2],
                };
                let _ = vms.serve_mmio(input.u8() % 3, mmio);
                // And a CPUID of a vCPU (the low indices, which VCPU_OPEN's fuzzed
                // arguments often name).
                let exit = sys::VcpuExit {
                    kind: sys::vcpu_exit::CPUID,
                    vcpu: u32::from(input.u8() % 4),
                    leaf: 0x4000_00F0,
                    subleaf: 0,
                    rip: 0,
                };
                let _ = vms.serve_vcpu(input.u8() % 3, exit);
            }
            // A BATCH built in the process's own memory.
            2 if !mapped.is_empty() => {
                let count = usize::from(input.u8() % 8);
                let records: Vec<BatchIn> = (0..count)
                    .map(|_| BatchIn {
                        number: NUMBERS[usize::from(input.u8()) % NUMBERS.len()],
                        args: [0; 5].map(|_| arg(&mut input, &mapped)),
                        user_data: input.u64(),
                    })
                    .collect();
                let at = mapped[usize::from(input.u8()) % mapped.len()];
                use kernel::user::memory::AddressSpace;
                if space.write(at, records.as_bytes()).is_ok() {
                    let out = arg(&mut input, &mapped);
                    let call = Call { number: sys::BATCH, args: [at, out, count as u64, 0, 0] };
                    exited |= matches!(process.syscall(&mut space, &mut services, call), Outcome::Exit(_));
                }
            }
            // Well-formed MMAP and MUNMAP, so the address space fills and fragments.
            3 => {
                let access = [sys::map::READ, sys::map::READ | sys::map::WRITE, sys::map::READ | sys::map::EXEC];
                let fixed = u64::from(input.u8() & 1) * sys::map::FIXED;
                let flags = access[usize::from(input.u8() % 3)] | sys::map::ANONYMOUS | fixed;
                let len = u64::from(input.u8() % 16 + 1) * 4096 - u64::from(input.u8() % 2);
                let at = arg(&mut input, &mapped) & !0xfff;
                let call = Call { number: sys::MMAP, args: [sys::NO_HANDLE, at, 0, len, flags] };
                if let Outcome::Return(va) = process.syscall(&mut space, &mut services, call)
                    && sys::SysError::from_rax(va).is_none()
                {
                    mapped.push(va);
                }
            }
            // A well-formed OPEN_PHYSMEM with its info in the process's memory, then an
            // MMAP of it (some pages of it validated, some not, one a VMSA).
            5 if !mapped.is_empty() => {
                let info = mapped[usize::from(input.u8()) % mapped.len()];
                let open = Call { number: sys::OPEN_PHYSMEM, args: [u64::from(input.u8() % 3), info, 0, 0, 0] };
                if let Outcome::Return(handle) = process.syscall(&mut space, &mut services, open)
                    && sys::SysError::from_rax(handle).is_none()
                {
                    let flags = [sys::map::READ, sys::map::READ | sys::map::WRITE][usize::from(input.u8() % 2)];
                    let offset = u64::from(input.u8()) * 5 * 4096;
                    let len = u64::from(input.u8() % 8 + 1) * 4096;
                    let call = Call { number: sys::MMAP, args: [handle, 0, offset, len, flags] };
                    if let Outcome::Return(va) = process.syscall(&mut space, &mut services, call)
                        && sys::SysError::from_rax(va).is_none()
                    {
                        mapped.push(va);
                    }
                }
            }
            // A well-formed EXEC of module `m` passing some handle numbers, or the end of
            // a process it started.
            6 if !mapped.is_empty() => {
                if input.u8().is_multiple_of(4) {
                    children.end(usize::from(input.u8()), &services);
                } else {
                    let count = usize::from(input.u8() % 4);
                    let handles: Vec<u32> = (0..count).map(|_| u32::from(input.u8() % 8)).collect();
                    let at = mapped[usize::from(input.u8()) % mapped.len()];
                    use kernel::user::memory::AddressSpace;
                    if space.write(at, b"m").is_ok() && space.write(at + 8, handles.as_bytes()).is_ok() {
                        let call = Call { number: sys::EXEC, args: [at, 1, at + 8, count as u64, 0] };
                        if let Outcome::Exec(exec) = process.syscall(&mut space, &mut services, call) {
                            children.start(&mut process, exec, &services);
                        }
                    }
                }
            }
            4 if !mapped.is_empty() => {
                let at = mapped[usize::from(input.u8()) % mapped.len()] + u64::from(input.u8() % 8) * 4096;
                let len = u64::from(input.u8() % 8 + 1) * 4096;
                let _ =
                    process.syscall(&mut space, &mut services, Call { number: sys::MUNMAP, args: [at, len, 0, 0, 0] });
            }
            _ => {
                let number = match input.u8() {
                    255 => sys::EXIT,
                    n if n < 240 => NUMBERS[usize::from(n) % NUMBERS.len()],
                    _ => input.u64(),
                };
                let args = [0; 5].map(|_| arg(&mut input, &mapped));
                match process.syscall(&mut space, &mut services, Call { number, args }) {
                    Outcome::Return(va) if number == sys::MMAP && sys::SysError::from_rax(va).is_none() => {
                        mapped.push(va)
                    }
                    Outcome::Exit(_) => exited = true,
                    // Started or not, the parent's limit counts only what lives.
                    Outcome::Exec(exec) => {
                        children.start(&mut process, exec, &services);
                    }
                    _ => {}
                }
            }
        }
        check(&process, &space, &services);
        assert_eq!(process.children() as usize, children.live.len(), "the parent's count of its children is wrong");
        assert!(children.live.len() <= 2, "more children than the right allows");
    }
    process.end(&mut space, &services);
    while !children.live.is_empty() {
        children.end(0, &services);
    }
    assert_eq!(process.children(), 0, "every child ended, yet the parent counts some");
    assert_eq!(space.page_count(), 0, "an ended process left pages mapped");
    let guest = services.guest.as_ref().map_or(0, PageTracker::service_mappings_total);
    assert_eq!(guest, 0, "an ended process left guest pages held");
    assert_eq!(process.handle_count(), 0, "an ended process left handles open");
    assert!(channel.is_closed(), "an ended process left its channel open");
    assert_eq!(vms.claimed_ports(), 0, "an ended process left ports claimed");
    assert!(!vms.is_open(1), "an ended process left its VM open");
}

fn check(process: &Process, space: &HostSpace, services: &HostServices) {
    let recorded = process.mappings().pages();
    assert_eq!(recorded, space.page_count() as u64, "the kernel's mapping record and the page tables disagree");
    let guest = process.guest_pages();
    assert!(recorded - guest <= QUOTA, "the process holds {} pages of its own, over its quota", recorded - guest);
    assert!(guest <= kernel::user::MAX_GUEST_PAGES);
    let guest_mapped: u64 = process.mappings().iter().filter_map(|(_, m)| m.guest.map(|_| m.pages)).sum();
    assert_eq!(guest, guest_mapped, "the process's count of guest pages is wrong");
    if let Some(t) = &services.guest {
        assert_eq!(t.service_mappings_total(), guest, "the tracker holds other guest pages than the process maps");
        // Page by page: the tracker holds each page as often as the process maps it.
        let mut expected = std::collections::BTreeMap::new();
        for (_, m) in process.mappings().iter() {
            let Some(gpa) = m.guest else { continue };
            let pages = PageRange::new(PageAddr::from_pfn(gpa >> 12), m.pages).expect("a mapped range");
            assert!(t.check_target(pages).is_ok(), "a process maps a page the SVSM has a claim on");
            assert!(t.all_validated(pages), "a process maps a page the guest has not validated");
            for page in pages.iter() {
                *expected.entry(page).or_insert(0u32) += 1;
            }
        }
        for (page, count) in expected {
            assert_eq!(t.service_mappings(page), count, "the tracker holds {page:?} as often as it is mapped");
        }
    }
    assert!(process.handle_count() <= MAX_HANDLES);
    if let Some(vms) = &services.vms {
        // Each claim is a handle of the process's, and a process has few.
        let claims = vms.claims_of(process.id);
        assert!(claims <= process.handle_count() && claims <= kernel::user::vm::MAX_CLAIMS_PER_PROCESS);
    }
    let mut last_end = 0;
    for (start, m) in process.mappings().iter() {
        assert!(start >= last_end && start >= USER_BOTTOM, "mappings overlap or sit below the user bottom");
        last_end = start + m.pages * 4096;
        assert!(last_end <= USER_TOP, "a mapping reaches the kernel half");
        assert!(!(m.prot.write && m.prot.exec), "a mapping is writable and executable");
    }
}
