//! The probe on bare metal: its system calls, its probes, its runtime.
#![expect(unsafe_code, reason = "SYSCALL, and the probes' deliberate bad accesses")]

use abi::syscall::{self as sys, BatchIn, BatchOut};
use core::arch::asm;

/// The mode that measures system calls instead of probing.
const BENCH_MODE: u64 = 100;

/// Exit code of a probe whose forbidden access did not fault.
const PROBE_SURVIVED: u64 = 0xbad;

fn syscall(number: u64, args: [u64; 5]) -> u64 {
    let rax: u64;
    // SAFETY: SYSCALL enters the SVSM, which preserves every register but RAX (the
    // result), RCX and R11 (clobbered by the instruction); it touches no memory of ours
    // except through the pointers we pass, which are valid for the lengths we pass.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") number => rax,
            in("rdi") args[0],
            in("rsi") args[1],
            in("r8") args[2],
            in("r9") args[3],
            in("r10") args[4],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    rax
}

fn log(line: &str) {
    syscall(sys::LOG, [line.as_ptr() as u64, line.len() as u64, 0, 0, 0]);
}

fn exit(code: u64) -> ! {
    syscall(sys::EXIT, [code, 0, 0, 0, 0]);
    // EXIT does not return; if it did, stop here rather than run on.
    loop {
        core::hint::spin_loop();
    }
}

fn hello() -> ! {
    log("probe: hello from CPL 3");
    let t0 = syscall(sys::CLOCK, [0; 5]);
    let flags = sys::map::READ | sys::map::WRITE | sys::map::ANONYMOUS;
    let buf = syscall(sys::MMAP, [sys::NO_HANDLE, 0, 0, 8192, flags]);
    if sys::SysError::from_rax(buf).is_some() {
        log("probe: MMAP failed");
        exit(1);
    }
    let records = buf as *mut BatchIn;
    let results = (buf + 4096) as *mut BatchOut;
    for i in 0..32 {
        // SAFETY: `buf` is 8 KiB of fresh read-write memory: 32 records of 56 bytes fit
        // in its first page.
        unsafe { records.add(i).write(BatchIn { number: sys::CLOCK, args: [0; 5], user_data: i as u64 }) };
    }
    let ran = syscall(sys::BATCH, [buf, buf + 4096, 32, 0, 0]);
    // SAFETY: the second page holds the 32 results of 16 bytes the BATCH wrote.
    let last = unsafe { results.add(31).read() };
    if ran != 32 || last.user_data != 31 || last.result < t0 {
        log("probe: BATCH answered wrongly");
        exit(2);
    }
    log("probe: MMAP and a BATCH of 32 CLOCK calls worked");
    exit(0)
}

/// A line built on the stack (the module has no heap).
struct Line {
    buf: [u8; 200],
    len: usize,
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        self.buf.get_mut(self.len..end).ok_or(core::fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads the time-stamp counter (allowed at CPL 3: CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[inline(never)]
extern "C" fn plain_call(x: u64) -> u64 {
    core::hint::black_box(x) + 1
}

/// Cycles of one system call round trip (CAPABILITIES index 0: the dispatch alone)
/// beside a plain function call, and a BATCH of 32 calls beside 32 single calls, once
/// with CAPABILITIES (what BATCH saves: the entries) and once with CLOCK (a call with
/// work of its own); the medians of `ROUNDS` rounds, as one LOG line the SVSM prints
/// and `cargo xtask bench` reads.
fn bench() -> ! {
    const ROUNDS: usize = 64;
    let flags = sys::map::READ | sys::map::WRITE | sys::map::ANONYMOUS;
    let buf = syscall(sys::MMAP, [sys::NO_HANDLE, 0, 0, 3 * 4096, flags]);
    if sys::SysError::from_rax(buf).is_some() {
        exit(1);
    }
    let (caps, clocks, out) = (buf, buf + 4096, buf + 8192);
    for i in 0..32 {
        let capability = BatchIn { number: sys::CAPABILITIES, args: [0; 5], user_data: i as u64 };
        let clock = BatchIn { number: sys::CLOCK, args: [0; 5], user_data: i as u64 };
        // SAFETY: 32 records of 56 bytes fit each of the first two fresh pages.
        unsafe {
            (caps as *mut BatchIn).add(i).write(capability);
            (clocks as *mut BatchIn).add(i).write(clock);
        }
    }
    let single = |number: u64| {
        let t = rdtsc();
        for _ in 0..32 {
            syscall(number, [0; 5]);
        }
        rdtsc() - t
    };
    let batch = |records: u64| {
        let t = rdtsc();
        syscall(sys::BATCH, [records, out, 32, 0, 0]);
        rdtsc() - t
    };
    let mut samples = [[0u64; 6]; ROUNDS];
    for (round, row) in samples.iter_mut().enumerate() {
        let t = rdtsc();
        syscall(sys::CAPABILITIES, [0; 5]);
        row[0] = rdtsc() - t;
        let t = rdtsc();
        core::hint::black_box(plain_call(round as u64));
        row[1] = rdtsc() - t;
        row[2] = batch(caps);
        row[3] = single(sys::CAPABILITIES);
        row[4] = batch(clocks);
        row[5] = single(sys::CLOCK);
    }
    let mut m = [0u64; 6];
    for (column, median) in m.iter_mut().enumerate() {
        let mut values = samples.map(|row| row[column]);
        values.sort_unstable();
        *median = values[ROUNDS / 2];
    }
    let mut line = Line { buf: [0; 200], len: 0 };
    let _ = core::fmt::Write::write_fmt(
        &mut line,
        format_args!(
            "BENCH_USER rounds={ROUNDS} syscall_cycles={} function_cycles={} batch32_cycles={} single32_cycles={} batch32_clock_cycles={} single32_clock_cycles={}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        ),
    );
    syscall(sys::LOG, [line.buf.as_ptr() as u64, line.len as u64, 0, 0, 0]);
    exit(0)
}

/// Where the SVSM's own image lives (identity-mapped, supervisor-only).
const SVSM_IMAGE: u64 = 0x100_0000;
/// Guest RAM, also in the kernel's identity map, never mapped for a process.
const GUEST_RAM: u64 = 0x4000_0000;

static mut DATA: [u8; 16] = [0xc3; 16];

fn probe(mode: u64) -> ! {
    // Each probe is a deliberately invalid access: the SVSM must end this process with a
    // fault before the access completes. Reaching the EXIT below means it did not.
    match mode {
        1 => {
            // SAFETY: not sound on purpose (see above): the SVSM's image is not ours.
            unsafe { core::ptr::read_volatile(SVSM_IMAGE as *const u64) };
        }
        // SAFETY: not sound on purpose: our code is mapped read-only.
        2 => unsafe { core::ptr::write_volatile(hello as *const () as *mut u8, 0xcc) },
        // SAFETY: not sound on purpose: data is mapped no-execute. Written first, so the
        // bytes are writable data (not folded into .rodata).
        3 => unsafe {
            core::ptr::write_volatile((&raw mut DATA).cast::<u8>(), 0xc3);
            let code: extern "C" fn() = core::mem::transmute((&raw mut DATA) as *const ());
            code()
        },
        4 => {
            // SAFETY: not sound on purpose: guest memory is not mapped for us.
            unsafe { core::ptr::read_volatile(GUEST_RAM as *const u64) };
        }
        // SAFETY: not sound on purpose: there is no gate for vector 0x80.
        5 => unsafe { asm!("int 0x80") },
        6 => {
            // A pointer into the SVSM: the kernel must refuse it, not copy from it.
            let rax = syscall(sys::LOG, [SVSM_IMAGE, 16, 0, 0, 0]);
            exit(if rax == sys::SysError::Fault.to_rax() { 6 } else { PROBE_SURVIVED })
        }
        // A process that never makes a system call: only the timer takes the CPU back.
        7 => loop {
            core::hint::spin_loop();
        },
        _ => exit(PROBE_SURVIVED),
    };
    exit(PROBE_SURVIVED)
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
extern "C" fn _start(mode: u64) -> ! {
    match mode {
        0 => hello(),
        BENCH_MODE => bench(),
        _ => probe(mode),
    }
}

/// The module has no heap (it would take one with MMAP); `alloc` is linked through
/// `abi`'s dependencies, so an allocator must exist: one that always refuses.
struct NoHeap;

// SAFETY: never hands out memory, so it cannot hand out memory wrongly.
unsafe impl core::alloc::GlobalAlloc for NoHeap {
    unsafe fn alloc(&self, _: core::alloc::Layout) -> *mut u8 {
        core::ptr::null_mut()
    }
    unsafe fn dealloc(&self, _: *mut u8, _: core::alloc::Layout) {}
}

#[global_allocator]
static HEAP: NoHeap = NoHeap;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    exit(PROBE_SURVIVED)
}
