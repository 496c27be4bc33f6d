//! The probe on bare metal: hello, its isolation probes, threads, its benchmark, its
//! runtime.
#![expect(unsafe_code, reason = "the probes' deliberate bad accesses, RDTSC, FXSAVE, and its fresh memory")]

use abi::syscall::{self as sys, BatchIn, BatchOut, PhysmemRange, SysError};
use user_rt as rt;

/// The mode that measures system calls instead of probing.
const BENCH_MODE: u64 = 100;
/// The mode that serves the test device's ports for the guest (on the svm platform).
const DEVICE_MODE: u64 = 14;
/// The mode of the process the test device starts (EXEC) to serve its MMIO page, the
/// page's event passed as its handle 0.
const MMIO_MODE: u64 = 15;

/// Exit code of a probe whose forbidden access did not fault.
const PROBE_SURVIVED: u64 = 0xbad;

fn hello() -> ! {
    rt::log(b"probe: hello from CPL 3");
    let t0 = rt::clock();
    let Ok(buf) = rt::mmap(8192) else {
        rt::log(b"probe: MMAP failed");
        rt::exit(1)
    };
    // SAFETY: MMAP gave us 8 KiB of fresh read-write memory, used only through this slice.
    let fresh = unsafe { core::slice::from_raw_parts_mut(buf as *mut u8, 8192) };
    if fresh.iter().any(|b| *b != 0) {
        rt::log(b"probe: fresh memory was not zeroed");
        rt::exit(2);
    }
    fresh.fill(0x5a);
    let calls: [BatchIn; 32] =
        core::array::from_fn(|i| BatchIn { number: sys::CLOCK, args: [0; 5], user_data: i as u64 });
    let mut results = [BatchOut::default(); 32];
    let ran = rt::batch(&calls, &mut results);
    let last = results[31];
    if ran != Ok(32) || last.user_data != 31 || last.result < t0 {
        rt::log(b"probe: BATCH answered wrongly");
        rt::exit(3);
    }
    rt::log(b"probe: MMAP and a BATCH of 32 CLOCK calls worked");
    // No right to start processes: the kernel gave it none.
    if rt::exec(b"probe", &[], 0) != Err(SysError::Perm) {
        rt::log(b"probe: EXEC without the right was not refused");
        rt::exit(4);
    }
    rt::exit(0)
}

/// A line built on the stack (the module has no heap).
struct Line {
    buf: [u8; 256],
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
/// work of its own), and a BATCH of one (with the BATCH of 32: its fixed cost and its
/// cost per record); the medians of `ROUNDS` rounds, as one LOG line the SVSM prints
/// and `cargo xtask bench` reads.
fn bench() -> ! {
    const ROUNDS: usize = 64;
    let call = |number| BatchIn { number, args: [0; 5], user_data: 0 };
    let caps = [call(sys::CAPABILITIES); 32];
    let clocks = [call(sys::CLOCK); 32];
    let mut out = [BatchOut::default(); 32];
    let mut samples = [[0u64; 7]; ROUNDS];
    for (round, row) in samples.iter_mut().enumerate() {
        let t = rdtsc();
        let _ = rt::capabilities(0);
        row[0] = rdtsc() - t;
        let t = rdtsc();
        core::hint::black_box(plain_call(round as u64));
        row[1] = rdtsc() - t;
        let t = rdtsc();
        let _ = rt::batch(&caps, &mut out);
        row[2] = rdtsc() - t;
        let t = rdtsc();
        for _ in 0..32 {
            let _ = rt::capabilities(0);
        }
        row[3] = rdtsc() - t;
        let t = rdtsc();
        let _ = rt::batch(&clocks, &mut out);
        row[4] = rdtsc() - t;
        let t = rdtsc();
        for _ in 0..32 {
            rt::clock();
        }
        row[5] = rdtsc() - t;
        let t = rdtsc();
        let _ = rt::batch(&caps[..1], &mut out);
        row[6] = rdtsc() - t;
    }
    let mut m = [0u64; 7];
    for (column, median) in m.iter_mut().enumerate() {
        let mut values = samples.map(|row| row[column]);
        values.sort_unstable();
        *median = values[ROUNDS / 2];
    }
    let mut line = Line { buf: [0; 256], len: 0 };
    let _ = core::fmt::Write::write_fmt(
        &mut line,
        format_args!(
            "BENCH_USER rounds={ROUNDS} syscall_cycles={} function_cycles={} batch32_cycles={} single32_cycles={} batch32_clock_cycles={} single32_clock_cycles={} batch1_cycles={}",
            m[0], m[1], m[2], m[3], m[4], m[5], m[6]
        ),
    );
    rt::log(line.buf.get(..line.len).unwrap_or(&[]));
    rt::exit(0)
}

/// Stacks for the probe's threads (the module has no heap).
static mut STACKS: [[u8; 16384]; 2] = [[0; 16384]; 2];

/// Thread stack `i`, for one thread only.
fn stack(i: usize) -> &'static mut [u8] {
    let stacks = &raw mut STACKS;
    // SAFETY: each probe run is a new process; it takes each stack once, for one thread.
    unsafe { &mut (*stacks)[i] }
}

/// What the threads of mode 8 added.
static DONE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

extern "C" fn worker(n: u64) -> ! {
    rt::log(b"probe: a second thread runs");
    DONE.fetch_add(n, core::sync::atomic::Ordering::SeqCst);
    rt::exit(0)
}

/// Two more threads each add to DONE and exit; the first thread waits for both (the
/// timer gives them their turns: it makes no call that would give up the CPU) and exits
/// with 8, ending the process.
fn threads() -> ! {
    if (rt::thread_create(worker, stack(0), 1), rt::thread_create(worker, stack(1), 2)) != (Ok(1), Ok(2)) {
        rt::exit(1);
    }
    // No clock of its own: if the turns never came, the SVSM would end the process at its
    // budget, which the boot reports.
    while DONE.load(core::sync::atomic::Ordering::SeqCst) != 3 {
        core::hint::spin_loop();
    }
    rt::log(b"probe: both threads ran and ended");
    rt::exit(8)
}

/// Where the SVSM's own image lives (identity-mapped, supervisor-only).
const SVSM_IMAGE: u64 = 0x100_0000;
/// Guest RAM, also in the kernel's identity map, never mapped for a process.
const GUEST_RAM: u64 = 0x4000_0000;

static mut DATA: [u8; 16] = [0xc3; 16];

/// The svm platform's launch pages under QEMU (`svm::launch::QEMU`): the VMSA and the
/// calling area of the startup vCPU, pages the SVSM has a claim on.
const LAUNCH_VMSA: u64 = 0xA000;
const LAUNCH_CALLING_AREA: u64 = 0x9000;

/// A page of validated guest memory in range 0, mapped read-only (and writable if
/// `write`): its handle, the range, the page's gpa and address. The probe cannot know
/// which pages the guest has validated, so it tries them in turn; the SVSM refuses the
/// others (EFAULT for a page not validated, EPERM for one the SVSM claims).
fn map_a_guest_page(write: bool) -> Option<(u64, PhysmemRange, u64, usize)> {
    let (handle, range) = rt::open_physmem(0).ok()?;
    let pages = range.length / 4096;
    (0..pages.min(4096)).find_map(|i| {
        let va = rt::mmap_guest(handle, i * 4096, 4096, write).ok()?;
        Some((handle, range, range.base + i * 4096, va))
    })
}

/// Mode 10: what OPEN_PHYSMEM gives and refuses. Exits 10 if all is as it must be, or
/// with the number of the first check that failed.
fn physmem() -> ! {
    let fail = |check: u64| -> ! { rt::exit(check) };
    let Ok(count) = rt::capabilities(sys::caps::PHYSMEM_RANGES) else { fail(1) };
    if count == 0 {
        fail(1);
    }
    // No range reaches the SVSM's region.
    for index in 0..count {
        let Ok((_, r)) = rt::open_physmem(index) else { fail(2) };
        if r.base < SVSM_IMAGE + 0x100_0000 && SVSM_IMAGE < r.base + r.length {
            fail(2);
        }
    }
    if rt::open_physmem(count) != Err(SysError::NotFound) {
        fail(3);
    }
    let Some((handle, range, gpa, va)) = map_a_guest_page(false) else { fail(4) };
    // The guest's bytes, through our own mapping.
    // SAFETY: `va` maps a readable guest page; the guest may change it, so one volatile
    // load, kept in a register.
    let first = unsafe { core::ptr::read_volatile(va as *const u64) };
    // Never a system call's buffer.
    // SAFETY: LOG reads 8 bytes at `va`, which are mapped; the SVSM must refuse them.
    if rt::result(unsafe { rt::syscall(sys::LOG, [va as u64, 8, 0, 0, 0]) }) != Err(SysError::Fault) {
        fail(5);
    }
    // Never executable; never the startup vCPU's VMSA or calling area.
    let exec = sys::map::READ | sys::map::EXEC;
    // SAFETY: MMAP touches no memory of ours.
    let rax = unsafe { rt::syscall(sys::MMAP, [handle, 0, gpa - range.base, 4096, exec]) };
    if rt::result(rax) != Err(SysError::Perm) {
        fail(6);
    }
    for claimed in [LAUNCH_VMSA, LAUNCH_CALLING_AREA] {
        let Some(offset) = claimed.checked_sub(range.base) else { fail(7) };
        if rt::mmap_guest(handle, offset, 4096, false) != Err(SysError::Perm) {
            fail(7);
        }
    }
    // SAFETY: nothing refers to the page any more (`first` is a copy).
    if unsafe { rt::munmap(va, 4096) }.is_err() {
        fail(8);
    }
    let mut line = Line { buf: [0; 256], len: 0 };
    let _ = core::fmt::Write::write_fmt(
        &mut line,
        format_args!(
            "probe: {count} guest memory ranges; mapped the guest's page {gpa:#x} (its first bytes {first:#018x}); exec, the VMSA and the calling area refused"
        ),
    );
    rt::log(line.buf.get(..line.len).unwrap_or(&[]));
    rt::exit(10)
}

fn probe(mode: u64) -> ! {
    // Each probe is a deliberately invalid access: the SVSM must end this process with a
    // fault before the access completes (or refuse the call). Reaching the EXIT below
    // means it did not.
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
        5 => unsafe { core::arch::asm!("int 0x80") },
        6 => {
            // A pointer into the SVSM: the kernel must refuse it, not copy from it.
            // SAFETY: LOG only reads, and the SVSM must refuse the pointer.
            let rax = unsafe { rt::syscall(sys::LOG, [SVSM_IMAGE, 16, 0, 0, 0]) };
            rt::exit(if rt::result(rax) == Err(SysError::Fault) { 6 } else { PROBE_SURVIVED })
        }
        // A process that never makes a system call: only the timer takes the CPU back.
        // It spins with the direction flag set, which the SVSM's interrupt path must
        // clear for itself (its copies may be `rep movs`).
        // SAFETY: the loop never returns to Rust code, so DF set breaks no Rust rule.
        7 => unsafe { core::arch::asm!("std", "2:", "pause", "jmp 2b", options(noreturn, nomem, nostack)) },
        8 => threads(),
        // A second thread reads the SVSM's memory while the first spins: the fault ends
        // the whole process.
        9 => {
            extern "C" fn bad(_: u64) -> ! {
                // SAFETY: not sound on purpose: the SVSM's image is not ours.
                unsafe { core::ptr::read_volatile(SVSM_IMAGE as *const u64) };
                rt::exit(PROBE_SURVIVED)
            }
            if rt::thread_create(bad, stack(0), 0).is_err() {
                rt::exit(PROBE_SURVIVED);
            }
            loop {
                core::hint::spin_loop();
            }
        }
        10 => physmem(),
        // A guest page mapped read-only, written.
        11 => {
            let Some((_, _, _, va)) = map_a_guest_page(false) else { rt::exit(1) };
            // SAFETY: not sound on purpose: the page is mapped read-only.
            unsafe { core::ptr::write_volatile(va as *mut u8, 0) };
        }
        12 => fpu_clean(),
        13 => scattered_mappings(),
        _ => rt::exit(PROBE_SURVIVED),
    };
    rt::exit(PROBE_SURVIVED)
}

/// One page mapped and unmapped again at 200 addresses 1 GiB apart, each needing page
/// tables of its own: exit 13 if every MMAP succeeded within the probe's quota of 64
/// pages. The SVSM must free a table once it maps nothing (and counts tables against the
/// quota), or the tables of pages long gone would fill the quota (and, uncounted, the
/// SVSM's heap).
fn scattered_mappings() -> ! {
    let flags = sys::map::READ | sys::map::WRITE | sys::map::ANONYMOUS | sys::map::FIXED;
    for i in 0..200u64 {
        let va = 0x200_0000_0000 + (i << 30);
        // SAFETY: MMAP of fresh anonymous memory at an address nothing of ours uses.
        let mapped = rt::result(unsafe { rt::syscall(sys::MMAP, [sys::NO_HANDLE, va, 0, 4096, flags]) });
        // SAFETY: nothing refers to the page just mapped.
        if mapped != Ok(va) || unsafe { rt::munmap(va as usize, 4096) }.is_err() {
            rt::exit(1);
        }
    }
    rt::exit(13)
}

/// Exit 12 if every x87 and XMM register is zero, as the SVSM must start a process (on
/// svm the guest's are live in the CPU; the boot fills them before this probe). The
/// module is soft-float, so nothing of its own touched them first.
fn fpu_clean() -> ! {
    #[repr(C, align(16))]
    struct Area([u8; 512]);
    let mut area = Area([0; 512]);
    // SAFETY: FXSAVE writes exactly the 512-byte, 16-byte aligned area.
    unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack, preserves_flags)) };
    let clean = area.0.get(32..416).is_some_and(|registers| registers.iter().all(|b| *b == 0));
    rt::exit(if clean { 12 } else { 1 })
}

/// Accesses this process served (the test device's ports and its MMIO page are two
/// processes, each with its own count).
static SERVED: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// The count after one more access.
fn served_one() -> u32 {
    SERVED.fetch_add(1, core::sync::atomic::Ordering::Relaxed).wrapping_add(1)
}

/// Serve the test device (`abi::syscall::test_device`) for VM 1, the guest on the svm
/// platform. First the refusals of the ABI, each of which must hold or the process exits
/// with the number of the one that did not (the SVSM reports the exit): a second open of
/// the VM, a VM that does not exist, ports the guest reaches directly (its COM2), ports
/// another event holds, MMIO over the guest's RAM or not page-aligned, a second VCPU
/// object of one vCPU, and EXEC's (a module the image has not, a handle that names
/// nothing, a handle passed twice). Then it starts a process from this module (EXEC)
/// that serves the MMIO page with the page's event, passed to it (closed here), answers
/// the boot vCPU's CPUID leaves of its VCPU object on a second thread, and serves its
/// ports on this one.
fn test_device() -> ! {
    use sys::test_device::{COUNT, FIRST, MMIO};
    let Ok(vm) = rt::vm_open(1) else { rt::exit(1) };
    if rt::vm_open(1) != Err(SysError::Busy) {
        rt::exit(2);
    }
    if rt::vm_open(0) != Err(SysError::NotFound) {
        rt::exit(3);
    }
    if rt::ioio_event(vm, 0x2F8, 8) != Err(SysError::Perm) {
        rt::exit(4);
    }
    let Ok(ports) = rt::ioio_event(vm, FIRST.into(), COUNT.into()) else { rt::exit(5) };
    if rt::ioio_event(vm, u64::from(FIRST) + 4, 1) != Err(SysError::Busy) {
        rt::exit(6);
    }
    if rt::mmio_event(vm, 0x10_0000, 4096) != Err(SysError::Perm)
        || rt::mmio_event(vm, MMIO + 8, 4096) != Err(SysError::Inval)
    {
        rt::exit(7);
    }
    let Ok(page) = rt::mmio_event(vm, MMIO, 4096) else { rt::exit(8) };
    // The boot vCPU as a VCPU object: once, and no index past the last.
    let Ok(vcpu) = rt::vcpu_open(vm, 0) else { rt::exit(20) };
    if rt::vcpu_open(vm, 0) != Err(SysError::Busy) || rt::vcpu_open(vm, sys::VCPU_MAX_INDEX + 1) != Err(SysError::Inval)
    {
        rt::exit(21);
    }
    // The VM handle is not needed to serve: closing it lets nobody else claim what the
    // events hold (theirs until they close).
    if rt::close(vm).is_err() {
        rt::exit(9);
    }
    let Ok(page) = u32::try_from(page) else { rt::exit(10) };
    if rt::exec(b"vtpm", &[], MMIO_MODE) != Err(SysError::NotFound)
        || rt::exec(b"probe", &[page, 60], MMIO_MODE) != Err(SysError::NotFound)
        || rt::exec(b"probe", &[page, page], MMIO_MODE) != Err(SysError::Inval)
    {
        rt::exit(17);
    }
    if rt::exec(b"probe", &[page], MMIO_MODE).is_err() {
        rt::exit(18);
    }
    // Passed: closed here. And one child at a time is all the kernel allows it.
    if rt::close(page.into()) != Err(SysError::NotFound) || rt::exec(b"probe", &[], MMIO_MODE) != Err(SysError::NoMem) {
        rt::exit(19);
    }
    if rt::thread_create(vcpu_device, stack(0), vcpu).is_err() {
        rt::exit(22);
    }
    rt::log(b"probe: test device on ports 0xb10..0xb17 of VM 1 and vCPU 0's CPUID leaves 0x400000f0..0x400000ff, served at CPL 3; its MMIO page passed to a process of its own");
    port_device(ports)
}

/// The test device's ports: a 4-byte register, each byte its own port, then a read-only
/// count of the accesses served; the dword CRASH written to the count makes the process
/// fault.
fn port_device(event: u64) -> ! {
    use sys::test_device::{COUNTER, CRASH, REGISTER};
    let mut register = [0u8; 4];
    let mut request = [0u8; 16];
    loop {
        if rt::wait_for_event(event) != Ok(1) || rt::channel_receive(event, &mut request) != Ok(16) {
            rt::exit(11);
        }
        let Ok(access) = <sys::IoAccess as zerocopy::FromBytes>::read_from_bytes(&request) else { rt::exit(12) };
        let served = served_one();
        if access.write != 0 && access.port == COUNTER && access.size == 4 && access.data == CRASH {
            // SAFETY: not sound on purpose: the guest asked the test device to fault,
            // and the SVSM's image is not ours.
            unsafe { core::ptr::read_volatile(SVSM_IMAGE as *const u64) };
        }
        // Byte by byte: an access may span the register and the counter.
        let (data, count) = (access.data.to_le_bytes(), served.to_le_bytes());
        let mut answer = [0u8; 4];
        for i in 0..usize::from(access.size).min(4) {
            let offset = usize::from(access.port.wrapping_sub(REGISTER)) + i;
            match (offset < 4, access.write != 0) {
                (true, true) => register[offset % 4] = data[i],
                (true, false) => answer[i] = register[offset % 4],
                (false, false) => answer[i] = count[offset % 4],
                // The counter is read-only.
                (false, true) => {}
            }
        }
        if rt::channel_reply(event, &answer).is_err() {
            rt::exit(13);
        }
    }
}

/// The test device's MMIO page: an 8-byte register at offset 0, the count of accesses
/// served at offset 8 (read-only); the rest reads zero and ignores writes.
fn mmio_device(event: u64) -> ! {
    let mut register = [0u8; 8];
    let mut request = [0u8; 24];
    loop {
        if rt::wait_for_event(event) != Ok(1) || rt::channel_receive(event, &mut request) != Ok(24) {
            rt::exit(14);
        }
        let Ok(access) = <sys::MmioAccess as zerocopy::FromBytes>::read_from_bytes(&request) else { rt::exit(15) };
        let count = u64::from(served_one()).to_le_bytes();
        let data = access.data.to_le_bytes();
        let mut answer = [0u8; 8];
        let at = access.gpa.wrapping_sub(sys::test_device::MMIO);
        for i in 0..usize::from(access.size).min(8) {
            let offset = at.wrapping_add(i as u64);
            match (offset, access.write != 0) {
                (0..8, true) => register[offset as usize] = data[i],
                (0..8, false) => answer[i] = register[offset as usize],
                (8..16, false) => answer[i] = count[offset as usize - 8],
                _ => {}
            }
        }
        if rt::channel_reply(event, &answer).is_err() {
            rt::exit(16);
        }
    }
}

/// The boot vCPU's VCPU object: CPUID of a leaf it answers gives EAX = the vCPU's
/// index, EBX = the leaf, ECX = the subleaf, EDX = the count of exits this thread
/// served (as the test guest checks: the answer comes from here, for that vCPU).
extern "C" fn vcpu_device(event: u64) -> ! {
    let mut request = [0u8; 24];
    let mut served = 0u32;
    loop {
        if rt::wait_for_event(event) != Ok(1) || rt::channel_receive(event, &mut request) != Ok(24) {
            rt::exit(23);
        }
        let Ok(exit) = <sys::VcpuExit as zerocopy::FromBytes>::read_from_bytes(&request) else { rt::exit(24) };
        served = served.wrapping_add(1);
        let mut answer = [0u8; 16];
        for (bytes, value) in answer.chunks_exact_mut(4).zip([exit.vcpu, exit.leaf, exit.subleaf, served]) {
            bytes.copy_from_slice(&value.to_le_bytes());
        }
        if rt::channel_reply(event, &answer).is_err() {
            rt::exit(25);
        }
    }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
extern "C" fn _start(mode: u64) -> ! {
    match mode {
        0 => hello(),
        BENCH_MODE => bench(),
        DEVICE_MODE => test_device(),
        // The page's event is its handle 0.
        MMIO_MODE => mmio_device(0),
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
    rt::exit(PROBE_SURVIVED)
}
