//! User mode on the model: hosted processes making real system calls through the
//! kernel's dispatcher (`kernel::user`), and the vTPM run as a service process.
//!
//! Each test's program runs on its own thread and reaches the kernel only through
//! system calls and its own mapped memory, so what it observes is what a CPL-3 process
//! would: results, error codes, and faults that end it.

use abi::syscall::{self as sys, BatchIn, BatchOut, SysError, map};
use bulwark_model::user_host::{FAULT_COMMAND_CODE, HostedProcess, RunState, UserCalls, channel_tpm};
use kernel::user::channel::Channel;
use kernel::user::memory::{MMAP_BASE, USER_BOTTOM, USER_TOP};
use kernel::user::{MAX_THREADS, Object};
use std::sync::Arc;
use std::sync::mpsc;
use vtpm::nv::NvChange;
use zerocopy::IntoBytes;

const RW: u64 = map::READ | map::WRITE | map::ANONYMOUS;
const QUOTA: u64 = 64;

/// Run `program` to its end; its `report` values come back in order.
fn run<T: Send + 'static>(
    program: impl FnOnce(UserCalls, &mpsc::Sender<T>) + Send + 'static,
) -> (RunState, Vec<T>, HostedProcess) {
    let (tx, rx) = mpsc::channel();
    let mut p = HostedProcess::start(7, QUOTA, Vec::new(), move |u| program(u, &tx));
    let state = p.run();
    (state, rx.try_iter().collect(), p)
}

fn mmap(u: &UserCalls, addr: u64, len: u64, flags: u64) -> Result<u64, SysError> {
    u.checked(sys::MMAP, [sys::NO_HANDLE, addr, 0, len, flags])
}

#[test]
fn anonymous_memory_is_zeroed_private_and_kept_apart_by_guard_pages() {
    let (state, seen, p) = run(|u, out| {
        let a = u.mmap(8192).unwrap();
        out.send(u.load(a, 8192).iter().all(|b| *b == 0)).unwrap();
        u.store(a + 4000, b"crosses a page");
        out.send(u.load(a + 4000, 14) == b"crosses a page").unwrap();
        let b = u.mmap(4096).unwrap();
        // Placed above MMAP_BASE, with at least one unmapped page between the two.
        out.send(a > MMAP_BASE && b >= a + 8192 + 4096).unwrap();
        u.exit(0)
    });
    assert_eq!(state, RunState::Exited(0));
    assert_eq!(seen, [true, true, true]);
    // A process that ends gives back every page.
    assert_eq!(p.space.page_count(), 0);
    assert_eq!(p.process.mappings().pages(), 0);
}

#[test]
fn mmap_refuses_what_a_careful_kernel_must() {
    let (state, seen, _) = run(|u, out| {
        let fixed = MMAP_BASE + 0x10_0000;
        let results = [
            // W^X: never writable and executable at once.
            mmap(&u, 0, 4096, RW | map::EXEC),
            // Unknown flag bits, zero length, a non-anonymous mapping without an object.
            mmap(&u, 0, 4096, RW | 0x100),
            mmap(&u, 0, 0, RW),
            mmap(&u, 0, 4096, map::READ | map::WRITE),
            // FIXED: below the user bottom, unaligned, reaching the kernel half.
            mmap(&u, USER_BOTTOM - 4096, 4096, RW | map::FIXED),
            mmap(&u, fixed + 1, 4096, RW | map::FIXED),
            mmap(&u, USER_TOP - 4096, 8192, RW | map::FIXED),
            // A handle that names nothing.
            u.checked(sys::MMAP, [5, 0, 0, 4096, RW & !map::ANONYMOUS]),
            // More than the process's quota of pages.
            mmap(&u, 0, (QUOTA + 1) * 4096, RW),
            mmap(&u, fixed, 4096, RW | map::FIXED),
            // Overlapping a mapping that exists.
            mmap(&u, fixed, 4096, RW | map::FIXED),
        ];
        out.send(results).unwrap();
        u.exit(0)
    });
    assert_eq!(state, RunState::Exited(0));
    use SysError::*;
    let fixed = MMAP_BASE + 0x10_0000;
    assert_eq!(
        seen[0],
        [
            Err(Perm),
            Err(Inval),
            Err(Inval),
            Err(Inval),
            Err(Inval),
            Err(Inval),
            Err(Inval),
            Err(NotFound),
            Err(NoMem),
            Ok(fixed),
            Err(Exist)
        ]
    );
}

#[test]
fn munmap_of_part_of_a_mapping_keeps_the_rest_and_a_touch_after_it_faults() {
    let (state, seen, p) = run(|u, out| {
        let a = u.mmap(3 * 4096).unwrap();
        u.store(a, b"first");
        u.store(a + 2 * 4096, b"third");
        out.send(u.checked(sys::MUNMAP, [a + 4096, 4096, 0, 0, 0])).unwrap();
        out.send(Ok(u64::from(u.load(a, 5).as_slice() == b"first" && u.load(a + 2 * 4096, 5).as_slice() == b"third")))
            .unwrap();
        // Unaligned or empty ranges are refused; an unmapped range is fine.
        out.send(u.checked(sys::MUNMAP, [a + 1, 4096, 0, 0, 0])).unwrap();
        out.send(u.checked(sys::MUNMAP, [a, 0, 0, 0, 0])).unwrap();
        out.send(u.checked(sys::MUNMAP, [a + 4096, 4096, 0, 0, 0])).unwrap();
        u.load(a + 4096, 1);
        unreachable!("a load from an unmapped page returned");
    });
    assert_eq!(seen, [Ok(0), Ok(1), Err(SysError::Inval), Err(SysError::Inval), Ok(0)]);
    assert!(matches!(&state, RunState::Faulted(why) if why.contains("load from unmapped")), "{state:?}");
    assert_eq!(p.space.page_count(), 0, "a faulted process's memory is freed");
}

#[test]
fn pointers_into_unmapped_read_only_or_kernel_memory_are_refused_with_efault() {
    let (state, seen, p) = run(|u, out| {
        let ro = mmap(&u, 0, 4096, map::READ | map::ANONYMOUS).unwrap();
        let rw = u.mmap(4096).unwrap();
        u.store(rw, b"hello");
        let results = [
            u.checked(sys::LOG, [rw, 5, 0, 0, 0]),
            u.checked(sys::LOG, [0xffff_8000_0000_0000, 5, 0, 0, 0]),
            u.checked(sys::LOG, [rw + 4094, 5, 0, 0, 0]),
            u.checked(sys::LOG, [rw, 257, 0, 0, 0]),
            u.checked(sys::LOG, [u64::MAX - 2, 5, 0, 0, 0]),
            u.checked(sys::GETRANDOM, [ro, 16, 0, 0, 0]),
            u.checked(sys::GETRANDOM, [rw, 16, 0, 0, 0]),
        ];
        out.send((results, u.load(rw, 16) != [0; 16], u.load(ro, 16) == [0; 16])).unwrap();
        u.exit(3)
    });
    assert_eq!(state, RunState::Exited(3));
    use SysError::*;
    let (results, random_written, ro_untouched) = &seen[0];
    assert_eq!(*results, [Ok(0), Err(Fault), Err(Fault), Err(Inval), Err(Fault), Err(Fault), Ok(16)]);
    assert!(*random_written && *ro_untouched);
    assert_eq!(p.services.lines, [(7, "hello".to_string())]);
}

#[test]
fn handles_name_objects_until_closed_and_unknown_calls_get_enosys() {
    let channel = Arc::new(Channel::default());
    let (tx, rx) = mpsc::channel();
    let mut p = HostedProcess::start(2, QUOTA, vec![Object::Channel(channel.clone())], move |u| {
        let results = [
            u.checked(sys::CLOSE, [1, 0, 0, 0, 0]),
            u.checked(sys::CLOSE, [1 << 32, 0, 0, 0, 0]),
            u.checked(sys::CLOSE, [0, 0, 0, 0, 0]),
            u.checked(sys::WAIT_FOR_EVENT, [0, 0, 0, 0, 0]),
            u.checked(sys::CLOSE, [0, 0, 0, 0, 0]),
            u.checked(sys::EXEC, [0, 0, 0, 0, 0]),
            u.checked(0xdead << 32, [0; 5]),
            u.checked(sys::CAPABILITIES, [sys::caps::COUNT, 0, 0, 0, 0]),
            u.checked(sys::CAPABILITIES, [sys::caps::LAST + 1, 0, 0, 0, 0]),
        ];
        tx.send(results).unwrap();
        u.exit(0)
    });
    assert_eq!(p.run(), RunState::Exited(0));
    use SysError::*;
    assert_eq!(
        rx.recv().unwrap(),
        [
            Err(NotFound),
            Err(NotFound),
            Ok(0),
            Err(NotFound),
            Err(NotFound),
            // EXEC without the right to start processes (model/tests/exec.rs).
            Err(Perm),
            Err(NoSys),
            Ok(sys::caps::LAST),
            Err(NotFound)
        ]
    );
    // The service closed its end: the kernel's next request is refused, not lost.
    assert!(channel.is_closed());
}

#[test]
fn batch_runs_every_record_copies_user_data_and_refuses_what_cannot_be_batched() {
    let (state, seen, p) = run(|u, out| {
        let buf = u.mmap(4 * 4096).unwrap();
        let (ins, outs, text) = (buf, buf + 8192, buf + 12288);
        u.store(text, b"line");
        let mut records = vec![BatchIn { number: sys::LOG, args: [text, 4, 0, 0, 0], user_data: 0 }; 32];
        for (i, r) in records.iter_mut().enumerate() {
            r.user_data = 1000 + i as u64;
        }
        records[3] = BatchIn { number: sys::EXIT, args: [9, 0, 0, 0, 0], user_data: 3 };
        records[4] = BatchIn { number: sys::BATCH, args: [ins, outs, 1, 0, 0], user_data: 4 };
        records[5] = BatchIn { number: sys::CLOCK, args: [0; 5], user_data: 5 };
        records[6] = BatchIn { number: sys::LOG, args: [0x10, 4, 0, 0, 0], user_data: 6 };
        u.store(ins, records.as_bytes());
        let ran = u.checked(sys::BATCH, [ins, outs, 32, 0, 0]);
        let results: Vec<BatchOut> = u
            .load(outs, 32 * 16)
            .chunks(16)
            .map(|c| BatchOut {
                result: u64::from_le_bytes(c[..8].try_into().unwrap()),
                user_data: u64::from_le_bytes(c[8..].try_into().unwrap()),
            })
            .collect();
        let ro = mmap(&u, 0, 4096, map::READ | map::ANONYMOUS).unwrap();
        let refused = [
            u.checked(sys::BATCH, [ins, outs, sys::BATCH_MAX + 1, 0, 0]),
            u.checked(sys::BATCH, [ins, ro, 1, 0, 0]),
            u.checked(sys::BATCH, [0x10, outs, 1, 0, 0]),
            u.checked(sys::BATCH, [ins, outs, 0, 0, 0]),
        ];
        out.send((ran, results, refused)).unwrap();
        u.exit(0)
    });
    assert_eq!(state, RunState::Exited(0), "EXIT inside a batch does not end the process");
    let (ran, results, refused) = &seen[0];
    assert_eq!(*ran, Ok(32));
    for (i, r) in results.iter().enumerate() {
        let expect_user_data = match i {
            3..=6 => i as u64,
            _ => 1000 + i as u64,
        };
        assert_eq!(r.user_data, expect_user_data, "record {i}");
        let expected = match i {
            3 | 4 => Some(SysError::Inval),
            6 => Some(SysError::Fault),
            _ => None,
        };
        assert_eq!(SysError::from_rax(r.result).map(|e| e.unwrap()), expected, "record {i}");
    }
    assert!(results[5].result > 0, "CLOCK ran inside the batch");
    assert_eq!(p.services.lines.len(), 28, "every LOG record with a good pointer ran");
    assert_eq!(*refused, [Err(SysError::Inval), Err(SysError::Fault), Err(SysError::Fault), Ok(0)]);
}

/// A process keeps its BATCH buffers from one BATCH to the next: a shorter BATCH after a
/// longer one writes exactly its own results, a BATCH whose MUNMAP takes its own output
/// away gets EFAULT (its records ran), and the next BATCH works as the first did.
#[test]
fn a_batch_after_a_batch_answers_only_its_own_records() {
    let (state, seen, _) = run(|u, out| {
        let buf = u.mmap(2 * 4096).unwrap();
        let (ins, outs) = (buf, buf + 4096);
        let clock = |user_data| BatchIn { number: sys::CLOCK, args: [0; 5], user_data };
        let long: Vec<BatchIn> = (0..20).map(clock).collect();
        u.store(ins, long.as_bytes());
        let first = u.checked(sys::BATCH, [ins, outs, 20, 0, 0]);
        u.store(outs, &[0xEE; 20 * 16]);
        u.store(ins, [clock(100), clock(101)].as_bytes());
        let second = u.checked(sys::BATCH, [ins, outs, 2, 0, 0]);
        let answered = u.load(outs, 20 * 16);
        // Output on a page of its own, which the BATCH's second record unmaps.
        let lone = u.mmap(4096).unwrap();
        let unmap = BatchIn { number: sys::MUNMAP, args: [lone, 4096, 0, 0, 0], user_data: 7 };
        u.store(ins, [clock(6), unmap].as_bytes());
        let gone = u.checked(sys::BATCH, [ins, lone, 2, 0, 0]);
        u.store(ins, [clock(200)].as_bytes());
        let again = u.checked(sys::BATCH, [ins, outs, 1, 0, 0]);
        let last = u.load(outs, 16);
        out.send((first, second, answered, gone, again, last)).unwrap();
        u.exit(0)
    });
    assert_eq!(state, RunState::Exited(0));
    let (first, second, answered, gone, again, last) = &seen[0];
    assert_eq!((*first, *second, *again), (Ok(20), Ok(2), Ok(1)));
    let user_data = |i: usize| u64::from_le_bytes(answered[i * 16 + 8..i * 16 + 16].try_into().unwrap());
    assert_eq!((user_data(0), user_data(1)), (100, 101), "the second BATCH's own records");
    assert!(answered[32..].iter().all(|b| *b == 0xEE), "nothing past its two results was written");
    assert_eq!(*gone, Err(SysError::Fault), "its output went with its own MUNMAP");
    assert_eq!(u64::from_le_bytes(last[8..].try_into().unwrap()), 200);
}

#[test]
fn thread_create_checks_its_entry_and_stack_and_has_a_limit() {
    let (state, seen, p) = run(|u, out| {
        let data = u.mmap(4096).unwrap();
        let code = mmap(&u, 0, 4096, map::READ | map::EXEC | map::ANONYMOUS).unwrap();
        let stack = u.mmap(16384).unwrap() + 16384;
        let mut results = vec![
            u.checked(sys::THREAD_CREATE, [data, stack, 0, 0, 0]),
            u.checked(sys::THREAD_CREATE, [code, code + 4096, 0, 0, 0]),
            u.checked(sys::THREAD_CREATE, [code, 0x20_0000, 0, 0, 0]),
        ];
        for i in 0..MAX_THREADS {
            results.push(u.checked(sys::THREAD_CREATE, [code, stack, u64::from(i), 0, 0]));
        }
        out.send(results).unwrap();
        u.exit(0)
    });
    assert_eq!(state, RunState::Exited(0));
    let results = &seen[0];
    assert_eq!(&results[..3], [Err(SysError::Fault); 3]);
    // The process's first thread counts: MAX_THREADS - 1 more start, then NoMem.
    let started: Vec<_> = results[3..].iter().filter(|r| r.is_ok()).collect();
    assert_eq!(started.len(), MAX_THREADS as usize - 1);
    assert_eq!(results.last(), Some(&Err(SysError::NoMem)));
    assert_eq!(p.threads_started.len(), MAX_THREADS as usize - 1);
}

#[test]
fn a_channel_carries_one_request_and_its_reply_between_kernel_and_service() {
    let channel = Arc::new(Channel::default());
    let mut p = HostedProcess::start(3, QUOTA, vec![Object::Channel(channel.clone())], |u| {
        let buf = u.mmap(4096).unwrap();
        // Nothing to answer yet.
        assert_eq!(u.checked(sys::CHANNEL_REPLY, [0, buf, 4, 0, 0]), Err(SysError::Inval));
        loop {
            // Too small a buffer: refused, the request stays for a bigger one.
            match u.checked(sys::CHANNEL_RECEIVE, [0, buf, 2, 0, 0]) {
                Err(SysError::Inval) => {}
                other => panic!("a 2-byte buffer received {other:?}"),
            }
            let n = u.checked(sys::CHANNEL_RECEIVE, [0, buf, 4096, 0, 0]).unwrap() as usize;
            let mut request = u.load(buf, n);
            request.reverse();
            u.store(buf, &request);
            u.checked(sys::CHANNEL_REPLY, [0, buf, n as u64, 0, 0]).unwrap();
        }
    });
    // The service waits for work without spinning.
    assert_eq!(p.run(), RunState::Blocked);
    for request in [b"abc".to_vec(), b"0123456789".to_vec()] {
        channel.post(request.clone()).unwrap();
        assert_eq!(p.run(), RunState::Blocked);
        let mut expect = request;
        expect.reverse();
        assert_eq!(channel.take_reply(), Ok(Some(expect)));
    }
}

fn tpm_get_random(bytes: u16) -> Vec<u8> {
    let mut c = vec![0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b];
    c.extend_from_slice(&bytes.to_be_bytes());
    c
}

fn rc(response: &[u8]) -> u32 {
    u32::from_be_bytes(response[6..10].try_into().unwrap())
}

#[test]
fn the_vtpm_served_by_a_process_answers_and_its_fault_is_contained() {
    let engine = bulwark_model::vtpm_model::engine().expect("libtpms");
    let service = channel_tpm(move |_| Ok(engine), &Default::default()).expect("the service starts");
    let mut vtpm = vtpm::Vtpm::with_ek(Box::new(service), Vec::new());
    let mut response = vec![0u8; 4096];
    let n = vtpm.execute(&tpm_get_random(16), &mut response);
    assert_eq!((n, rc(&response)), (12 + 16, 0), "TPM2_GetRandom through the service");
    // A command that makes the service fault (a wild store): TPM_RC_FAILURE, and every
    // later command gets the same defined answer instead of a hang or a panic.
    let mut fault = tpm_get_random(1);
    fault[6..10].copy_from_slice(&FAULT_COMMAND_CODE.to_be_bytes());
    for command in [fault, tpm_get_random(8)] {
        let n = vtpm.execute(&command, &mut response);
        assert_eq!((n, rc(&response)), (10, 0x101));
    }
}

/// An engine in the service that answers every command with success and the NV changes
/// `changes(n)` makes of the n-th command: what a compromised service can send.
struct Scripted<F: FnMut(usize) -> Vec<NvChange>> {
    commands: usize,
    changes: F,
    pending: Vec<NvChange>,
}

impl<F: FnMut(usize) -> Vec<NvChange> + Send> vtpm::TpmEngine for Scripted<F> {
    fn execute(&mut self, _: &[u8], response: &mut [u8]) -> usize {
        self.commands += 1;
        self.pending = (self.changes)(self.commands);
        let ok = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0];
        response[..10].copy_from_slice(&ok);
        10
    }
    fn take_nv_changes(&mut self) -> Result<Vec<NvChange>, vtpm::nv::NvError> {
        Ok(std::mem::take(&mut self.pending))
    }
}

fn scripted(changes: impl FnMut(usize) -> Vec<NvChange> + Send + 'static) -> bulwark_model::user_host::ChannelTpm {
    channel_tpm(move |_| Ok(Scripted { commands: 0, changes, pending: Vec::new() }), &Default::default())
        .expect("the service starts")
}

/// Found by review: the kernel kept every NV change a service answered until a storage
/// took it, and took every new blob name it was given. A compromised service could grow
/// the NV state (and the SVSM's heap) by a name per command; a vTPM without storage kept
/// every change of every command.
#[test]
fn a_service_cannot_grow_the_nv_state_or_the_kernels_pending_changes_without_bound() {
    use vtpm::TpmEngine;
    let blob = |name: String, len: usize| NvChange { name: name.into_bytes(), data: Some(vec![7; len]) };
    let mut response = vec![0u8; 64];
    // A new name with every command: the state may hold MAX_BLOBS blobs, and the
    // command that would add one more ends the engine.
    let mut tpm = scripted(move |n| vec![blob(format!("blob{n}"), 16)]);
    for n in 1..=vtpm::nv::MAX_BLOBS {
        assert_eq!(tpm.execute(&tpm_get_random(1), &mut response), 10, "command {n}");
    }
    assert_eq!(tpm.execute(&tpm_get_random(1), &mut response), 0, "one blob too many ends the engine");
    assert!(!tpm.alive());
    assert_eq!(tpm.take_nv_changes(), Err(vtpm::nv::NvError::Engine));
    // More bytes than the next boot could hand back in a START message.
    let mut tpm = scripted(move |n| vec![blob(format!("big{}", n % 2), vtpm::service::MAX_MESSAGE / 2)]);
    assert_eq!(tpm.execute(&tpm_get_random(1), &mut response), 10);
    assert_eq!(tpm.execute(&tpm_get_random(1), &mut response), 0, "two halves and their names do not fit");
    // More changes in one answer than a state may hold blobs: the answer does not parse.
    let mut tpm = scripted(move |_| (0..=vtpm::nv::MAX_BLOBS).map(|i| blob(format!("b{i}"), 1)).collect());
    assert_eq!(tpm.execute(&tpm_get_random(1), &mut response), 0);
    // A vTPM without storage never takes the changes: a blob written again replaces its
    // pending change, so a thousand commands leave one.
    let mut tpm = scripted(move |n| vec![blob("permall".into(), n % 200)]);
    for _ in 0..1000 {
        assert_eq!(tpm.execute(&tpm_get_random(1), &mut response), 10);
    }
    assert_eq!(tpm.take_nv_changes(), Ok(vec![blob("permall".into(), 1000 % 200)]));
    // Deletions of blobs the state never held change nothing and are not kept (found by
    // the second review: each had been kept, a new name per deletion).
    let gone = |name: String| NvChange { name: name.into_bytes(), data: None };
    let mut tpm = scripted(move |n| (0..8).map(|i| gone(format!("never{n}.{i}"))).collect());
    for _ in 0..1000 {
        assert_eq!(tpm.execute(&tpm_get_random(1), &mut response), 10);
    }
    assert_eq!(tpm.take_nv_changes(), Ok(vec![]));
    // A new name with every command and the last one deleted leaves a deletion each
    // time: past twice the blobs a state may hold, the engine ends.
    let mut tpm = scripted(move |n| vec![blob(format!("brief{n}"), 1), gone(format!("brief{}", n - 1))]);
    let served = (0..100).take_while(|_| tpm.execute(&tpm_get_random(1), &mut response) == 10).count();
    assert_eq!(served, 2 * vtpm::nv::MAX_BLOBS);
    // An NV state exactly as large as a START message allows is kept; a byte more is not
    // (the bound counts the message's headers, not only the bytes).
    // (Two blobs over three commands: one answer cannot carry a whole state.)
    let first = 160 * 1024;
    let fits = vtpm::service::MAX_MESSAGE - vtpm::service::start_len([(1, first), (1, 0)]);
    let mut tpm = scripted(move |n| match n {
        1 => vec![blob("a".into(), first)],
        2 => vec![blob("b".into(), fits)],
        _ => vec![blob("b".into(), fits + 1)],
    });
    assert_eq!(tpm.execute(&tpm_get_random(1), &mut response), 10);
    assert_eq!(tpm.execute(&tpm_get_random(1), &mut response), 10, "exactly a START message");
    assert_eq!(tpm.execute(&tpm_get_random(1), &mut response), 0, "one byte more");
}

#[test]
fn every_vtpm_conformance_case_passes_with_the_vtpm_in_a_process() {
    use bulwark_model::conformance_env::{ModelEnv, run_case_with};
    use bulwark_model::world::WorldConfig;
    let cases: Vec<_> = conformance::CASES.iter().filter(|c| c.name.contains("vtpm")).collect();
    assert!(cases.len() >= 7, "the suite's vTPM cases: {}", cases.len());
    for case in cases {
        let config = WorldConfig { vtpm_in_process: true, ..ModelEnv::config() };
        let (verdict, _) = run_case_with(case, config);
        assert_eq!(verdict, conformance::Verdict::Pass, "{}", case.name);
    }
}

/// An ELF64 x86-64 executable with the given (flags, vaddr, file bytes, memsz)
/// segments, laid out one page apart in the file.
fn elf(entry: u64, segments: &[(u32, u64, &[u8], u64)]) -> Vec<u8> {
    let mut out = vec![0u8; 4096 * (segments.len() + 1)];
    out[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[24..32].copy_from_slice(&entry.to_le_bytes());
    out[32..40].copy_from_slice(&64u64.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
    for (i, (flags, vaddr, bytes, memsz)) in segments.iter().enumerate() {
        let offset = 4096 * (i as u64 + 1) + (vaddr % 4096);
        let ph = &mut out[64 + i * 56..64 + (i + 1) * 56];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[4..8].copy_from_slice(&flags.to_le_bytes());
        ph[8..16].copy_from_slice(&offset.to_le_bytes());
        ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
        ph[32..40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        out[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
    }
    out
}

/// A module image lives as long as the SVSM (it is part of its image).
fn leak(image: Vec<u8>) -> &'static [u8] {
    Box::leak(image.into_boxed_slice())
}

const R: u32 = 4;
const W: u32 = 2;
const X: u32 = 1;

#[test]
fn a_module_is_loaded_with_its_segments_permissions_and_a_guarded_stack() {
    use kernel::user::loader::{STACK_PAGES, STACK_TOP, Start, THREAD_PAGE, load};
    use kernel::user::memory::AddressSpace;
    let base = USER_BOTTOM + 0x1000_0000;
    let image =
        leak(elf(base + 0x10, &[(R | X, base, b"\x90\x90code", 0x1000), (R | W, base + 0x2008, b"data", 0x3000)]));
    let mut process = kernel::user::Process::new(1, 64);
    let mut space = bulwark_model::user_host::HostSpace::default();
    let start = Start { entry: base + 0x10, rsp: STACK_TOP - 8, thread: THREAD_PAGE };
    assert_eq!(load(&mut process, &mut space, image, 0x5eed), Ok(start));
    let m: Vec<_> = process.mappings().iter().map(|(s, m)| (s, m.pages, m.prot.write, m.prot.exec)).collect();
    assert_eq!(
        m,
        [
            (base, 1, false, true),
            (base + 0x2000, 4, true, false),
            (STACK_TOP - STACK_PAGES * 4096, STACK_PAGES, true, false),
            (THREAD_PAGE, 1, true, false)
        ]
    );
    // The thread page: its own address at FS:0, the C canary at FS:0x28.
    let mut word = [0u8; 8];
    space.read(THREAD_PAGE, &mut word).unwrap();
    assert_eq!(u64::from_le_bytes(word), THREAD_PAGE);
    space.read(THREAD_PAGE + 0x28, &mut word).unwrap();
    assert_eq!(u64::from_le_bytes(word), 0x5eed);
    let mut buf = [0u8; 6];
    space.read(base, &mut buf).unwrap();
    assert_eq!(&buf, b"\x90\x90code");
    let mut buf = [0u8; 8];
    space.read(base + 0x2004, &mut buf).unwrap();
    assert_eq!(&buf, b"\0\0\0\0data", "bytes before the segment's start in its page are zero");
    // The page below the stack is a guard: nothing is mapped there.
    assert!(process.mappings().check(STACK_TOP - (STACK_PAGES + 1) * 4096, 1, false).is_err());
}

#[test]
fn modules_that_break_the_rules_are_refused_whole() {
    use kernel::user::loader::{LoadError, load};
    let base = USER_BOTTOM + 0x1000_0000;
    let cases: [(&'static [u8], LoadError); 7] = [
        (leak(elf(base, &[(R | W | X, base, b"x", 0x1000)])), LoadError::BadSegment),
        (leak(elf(base, &[(R | X, 0x40_0000, b"x", 0x1000)])), LoadError::BadSegment),
        (leak(elf(base, &[(R | X, USER_TOP - 0x1000, b"x", 0x1000)])), LoadError::BadSegment),
        (leak(elf(base, &[(R | X, base, b"xyz", 2)])), LoadError::BadSegment),
        (leak(elf(base, &[(R | X, base, b"x", 0x1000), (R, base + 0x800, b"y", 0x10)])), LoadError::BadSegment),
        (leak(elf(base + 0x5000, &[(R | X, base, b"x", 0x1000)])), LoadError::BadEntry),
        (b"\x7fELF not really", LoadError::NotAnExecutable),
    ];
    for (i, (image, expected)) in cases.iter().enumerate() {
        let mut process = kernel::user::Process::new(1, 64);
        let mut space = bulwark_model::user_host::HostSpace::default();
        assert_eq!(kernel::user::loader::load(&mut process, &mut space, image, 0), Err(*expected), "case {i}");
        process.end(&mut space, &bulwark_model::user_host::HostServices::default());
        assert_eq!(space.page_count(), 0, "case {i}: a refused module leaves nothing mapped once the process ends");
    }
    // A segment whose file bytes lie beyond the file.
    let mut image = elf(base, &[(R | X, base, b"x", 0x1000)]);
    image.truncate(4096);
    let mut process = kernel::user::Process::new(1, 64);
    assert_eq!(
        load(&mut process, &mut bulwark_model::user_host::HostSpace::default(), leak(image), 0),
        Err(LoadError::BadSegment)
    );
}
