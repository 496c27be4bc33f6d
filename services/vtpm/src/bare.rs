//! The service: its system calls, its heap, and the command loop.
#![expect(unsafe_code, reason = "the heap's memory, the buffers, the C library's CPU probe")]

use vtpm::TpmEngine;
use vtpm::libtpms::LibTpms;

/// The channel the SVSM gives the service at start.
const CHANNEL: u64 = 0;
/// The heap libtpms and libcrypto allocate from (their peak is about 0.6 MiB).
const HEAP_BYTES: usize = 1536 * 1024;
/// Request and response buffers (a TPM command fits one page; room to spare).
const BUFFER: usize = 8192;
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
    let (Ok(request), Ok(response)) = (user_rt::mmap(BUFFER), user_rt::mmap(BUFFER)) else { exit(EXIT_NO_MEMORY) };
    // SAFETY: the probe only reads CPUID and fills libcrypto's capability vector; it runs
    // once, before any libcrypto use.
    unsafe { OPENSSL_cpuid_setup() };
    let max_command = u32::try_from(abi::vtpm::MAX_COMMAND_SIZE).unwrap_or(u32::MAX);
    let Ok(mut tpm) = LibTpms::open(max_command) else {
        log(b"vtpm service: libtpms did not start");
        exit(EXIT_NO_TPM)
    };
    log(b"vtpm service: libtpms started at CPL 3; waiting for commands");
    // SAFETY: two distinct fresh mappings of BUFFER bytes each, ours alone; the kernel
    // writes the request only while this thread is inside CHANNEL_RECEIVE.
    let (request, response) = unsafe {
        (
            core::slice::from_raw_parts_mut(request as *mut u8, BUFFER),
            core::slice::from_raw_parts_mut(response as *mut u8, BUFFER),
        )
    };
    loop {
        let Ok(len) = user_rt::channel_receive(CHANNEL, request) else { exit(EXIT_CHANNEL) };
        let command = request.get(..len).unwrap_or(&[]);
        if command.get(6..10) == Some(&FAULT_COMMAND_CODE.to_be_bytes()) {
            // SAFETY: not sound on purpose (see FAULT_COMMAND_CODE): the SVSM must end
            // this process before the store completes.
            unsafe { core::ptr::write_volatile(0x10 as *mut u8, 0xff) };
        }
        let n = tpm.execute(command, response);
        if user_rt::channel_reply(CHANNEL, response.get(..n).unwrap_or(&[])).is_err() {
            exit(EXIT_CHANNEL);
        }
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    log(b"vtpm service: panic");
    exit(EXIT_NO_TPM)
}
