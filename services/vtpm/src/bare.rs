//! The service: its system calls, its heap, and the command loop.
#![expect(unsafe_code, reason = "the heap's memory, the buffers, the C library's CPU probe, RDTSC")]

use vtpm::TpmEngine;
use vtpm::libtpms::{LibTpms, OpenError};
use vtpm::service::{self, Request};

/// The channel the SVSM gives the service at start.
const CHANNEL: u64 = 0;
/// The heap libtpms and libcrypto allocate from (their peak is about 0.6 MiB), with room
/// for two copies of the largest NV state (the start message's and libtpms' own).
const HEAP_BYTES: usize = 2048 * 1024;
/// The request buffer holds the largest message (the start message with the NV state).
const REQUEST: usize = vtpm::service::MAX_MESSAGE;
/// The TPM's response buffer (a response fits one page; room to spare).
const RESPONSE: usize = 8192;
/// The code a SAVE that could not be answered gets (libtpms' TPM_FAIL).
const SAVE_FAILED: u32 = 9;
/// Exit codes.
const EXIT_NO_MEMORY: u64 = 1;
const EXIT_NO_TPM: u64 = 2;
const EXIT_CHANNEL: u64 = 3;

/// A command code in the vendor-specific range that makes the service fault on purpose
/// (a wild store, as a memory bug in the engine would make one): the SVSM's tests of
/// crash isolation send it. Same value as the model's (`model/src/user_host.rs`).
const FAULT_COMMAND_CODE: u32 = 0x2000_0bad;

pub use user_rt::{exit, log};

#[global_allocator]
static HEAP: buddy_system_allocator::LockedHeap<32> = buddy_system_allocator::LockedHeap::empty();

unsafe extern "C" {
    /// libcrypto's CPU feature probe, normally run from the `.init` section.
    fn OPENSSL_cpuid_setup();
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
extern "C" fn _start() -> ! {
    let Ok(heap) = user_rt::mmap(HEAP_BYTES) else { exit(EXIT_NO_MEMORY) };
    // SAFETY: the region is fresh anonymous memory of HEAP_BYTES, ours alone, and is
    // handed to the allocator once.
    unsafe { HEAP.lock().init(heap, HEAP_BYTES) };
    let (Ok(request), Ok(response)) = (user_rt::mmap(REQUEST), user_rt::mmap(RESPONSE)) else { exit(EXIT_NO_MEMORY) };
    // SAFETY: the probe only reads CPUID and fills libcrypto's capability vector; it runs
    // once, before any libcrypto use.
    unsafe { OPENSSL_cpuid_setup() };
    // SAFETY: two distinct fresh mappings of REQUEST and RESPONSE bytes, ours alone; the
    // kernel writes the request only while this thread is inside CHANNEL_RECEIVE.
    let (request, response) = unsafe {
        (
            core::slice::from_raw_parts_mut(request as *mut u8, REQUEST),
            core::slice::from_raw_parts_mut(response as *mut u8, RESPONSE),
        )
    };
    // The first message starts the engine from the NV state the SVSM kept, or resumes the
    // TPM a migration source saved.
    let Ok(len) = user_rt::channel_receive(CHANNEL, request) else { exit(EXIT_CHANNEL) };
    let max_command = u32::try_from(abi::vtpm::MAX_COMMAND_SIZE).unwrap_or(u32::MAX);
    let (opened, started): (_, &[u8]) = match request.get(..len).and_then(service::parse_request) {
        Some(Request::Start(nv)) if nv.is_empty() => (
            LibTpms::open_with_nv(max_command, nv),
            b"vtpm service: libtpms manufactured a new TPM at CPL 3; waiting for commands",
        ),
        Some(Request::Start(nv)) => (
            LibTpms::open_with_nv(max_command, nv),
            b"vtpm service: libtpms started at CPL 3 from its kept NV state; waiting for commands",
        ),
        Some(Request::Resume(state)) => (
            LibTpms::resume(max_command, state.nv, &state.volatile),
            b"vtpm service: libtpms resumed a migrated TPM at CPL 3; waiting for commands",
        ),
        _ => exit(EXIT_CHANNEL),
    };
    let mut tpm = match opened {
        Ok(tpm) => tpm,
        Err(e) => {
            log(b"vtpm service: libtpms did not start");
            let code = match e {
                OpenError::Library { code, .. } => code,
                OpenError::AlreadyOpen => u32::MAX,
            };
            let _ = service::failed(code).map(|m| user_rt::channel_reply(CHANNEL, &m));
            exit(EXIT_NO_TPM)
        }
    };
    log(started);
    reply(service::started(&changes(&mut tpm)));
    loop {
        let Ok(len) = user_rt::channel_receive(CHANNEL, request) else { exit(EXIT_CHANNEL) };
        let command = match request.get(..len).and_then(service::parse_request) {
            Some(Request::Command(command)) => command,
            Some(Request::Save) => {
                // A migration's last round: the whole state; the engine runs on (the
                // source keeps serving if the migration fails).
                let saved = tpm.save_state().ok().and_then(|state| service::saved(&state));
                reply(saved.or_else(|| service::failed(SAVE_FAILED)));
                continue;
            }
            _ => exit(EXIT_CHANNEL),
        };
        if command.get(6..10) == Some(&FAULT_COMMAND_CODE.to_be_bytes()) {
            // SAFETY: not sound on purpose (see FAULT_COMMAND_CODE): the SVSM must end
            // this process before the store completes.
            unsafe { core::ptr::write_volatile(0x10 as *mut u8, 0xff) };
        }
        let start = rdtsc();
        let n = tpm.execute(command, response);
        let engine_cycles = rdtsc().saturating_sub(start);
        let changes = changes(&mut tpm);
        reply(service::response(response.get(..n).unwrap_or(&[]), &changes, engine_cycles));
    }
}

/// The time-stamp counter: the engine's cycles per command go back with its answer, for
/// the SVSM's report of what CPL 3 costs.
fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter (allowed at CPL 3: CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The NV blobs the last step changed; a service that cannot report them ends (the SVSM
/// then stops the vTPM rather than lose them).
fn changes(tpm: &mut LibTpms) -> alloc::vec::Vec<vtpm::NvChange> {
    tpm.take_nv_changes().unwrap_or_else(|_| {
        log(b"vtpm service: out of memory reporting NV changes");
        exit(EXIT_NO_MEMORY)
    })
}

/// Answer the SVSM; a message that could not be built or sent ends the service.
fn reply(message: Option<alloc::vec::Vec<u8>>) {
    match message {
        Some(m) if user_rt::channel_reply(CHANNEL, &m).is_ok() => {}
        _ => exit(EXIT_CHANNEL),
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    log(b"vtpm service: panic");
    exit(EXIT_NO_TPM)
}
