//! The system call fuzz harness: arbitrary bytes become a sequence of system calls with
//! arbitrary numbers and arguments (biased towards the process's own mappings, its
//! handles and the edges of the address space), interleaved with the kernel's side of a
//! channel (posting requests, taking replies) and with BATCH records built from the same
//! vocabulary.
//!
//! After every call it checks what must always hold: the kernel's record of the process's
//! mappings and the pages actually mapped agree (the hosted space also panics on a double
//! map or an unmap of nothing), the quota and handle limits hold, and a process that
//! exited holds nothing. A panic anywhere is a finding. Used by the cargo-fuzz target
//! `syscalls` and by a hosted smoke test on random inputs.

use crate::fuzz::Input;
use crate::user_host::{HostServices, HostSpace};
use abi::syscall::{self as sys, BatchIn};
use kernel::user::channel::Channel;
use kernel::user::handles::MAX_HANDLES;
use kernel::user::memory::{MMAP_BASE, USER_BOTTOM, USER_TOP};
use kernel::user::{Call, Object, Outcome, Process};
use std::sync::Arc;
use zerocopy::IntoBytes;

const QUOTA: u64 = 48;

const NUMBERS: [u64; 16] = [
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

/// Run the harness on one input.
pub fn run_syscalls(data: &[u8]) {
    let mut input = Input { data };
    let channel = Arc::new(Channel::default());
    let mut process = Process::new(1, QUOTA);
    process.grant(Object::Channel(channel.clone()));
    let mut space = HostSpace::default();
    let mut services = HostServices::default();
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
                    _ => {}
                }
            }
        }
        check(&process, &space);
    }
    process.end(&mut space);
    assert_eq!(space.page_count(), 0, "an ended process left pages mapped");
    assert_eq!(process.handle_count(), 0, "an ended process left handles open");
    assert!(channel.is_closed(), "an ended process left its channel open");
}

fn check(process: &Process, space: &HostSpace) {
    let recorded = process.mappings().pages();
    assert_eq!(recorded, space.page_count() as u64, "the kernel's mapping record and the page tables disagree");
    assert!(recorded <= QUOTA, "the process holds {recorded} pages, over its quota");
    assert!(process.handle_count() <= MAX_HANDLES);
    let mut last_end = 0;
    for (start, m) in process.mappings().iter() {
        assert!(start >= last_end && start >= USER_BOTTOM, "mappings overlap or sit below the user bottom");
        last_end = start + m.pages * 4096;
        assert!(last_end <= USER_TOP, "a mapping reaches the kernel half");
        assert!(!(m.prot.write && m.prot.exec), "a mapping is writable and executable");
    }
}
