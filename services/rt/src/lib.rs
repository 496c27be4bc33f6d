//! The user side of the SVSM's system call ABI (docs/syscalls.md) for service modules
//! (services/): the SYSCALL instruction, and safe wrappers for the calls that take
//! buffers, so a module names its memory as slices and never as raw addresses.
#![no_std]
#![expect(unsafe_code, reason = "SYSCALL, whose calls read and write the memory they are given")]

use abi::syscall::{self as sys, BatchIn, BatchOut, PhysmemRange, SysError};
use zerocopy::IntoBytes;

/// Make system call `number` with `args` (RDI, RSI, R8, R9, R10); RAX comes back.
///
/// # Safety
/// Every address in `args` that the call reads or writes must be valid for the length
/// the call is given, and nothing else may use that memory during the call (the SVSM
/// reads or writes it as the call says).
pub unsafe fn syscall(number: u64, args: [u64; 5]) -> u64 {
    let rax: u64;
    // SAFETY: SYSCALL enters the SVSM, which preserves every register but RAX (the
    // result), RCX and R11 (clobbered by the instruction); memory it touches is the
    // caller's contract.
    unsafe {
        core::arch::asm!(
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

/// RAX as a result.
pub fn result(rax: u64) -> Result<u64, SysError> {
    match SysError::from_rax(rax) {
        Some(Ok(e)) => Err(e),
        Some(Err(_)) => Err(SysError::Inval),
        None => Ok(rax),
    }
}

/// A call that touches no memory of ours (MMAP included: it adds to our address space).
fn plain(number: u64, args: [u64; 5]) -> u64 {
    // SAFETY: `number` is one of the calls below, which read or write no memory.
    unsafe { syscall(number, args) }
}

/// One line of the SVSM's log (at most 256 bytes of it).
pub fn log(text: &[u8]) {
    let text = text.get(..text.len().min(256)).unwrap_or(text);
    // SAFETY: LOG reads `text.len()` bytes of `text`.
    unsafe { syscall(sys::LOG, [text.as_ptr() as u64, text.len() as u64, 0, 0, 0]) };
}

/// End the calling thread (the process, when it is the last one).
pub fn exit(code: u64) -> ! {
    plain(sys::EXIT, [code, 0, 0, 0, 0]);
    // EXIT does not return; if it did, stop here rather than run on.
    loop {
        core::hint::spin_loop();
    }
}

/// Start a thread of this process at `entry`, with `arg` as its argument, on `stack` (which
/// it keeps for good). Its id comes back. The thread ends with [`exit`]; the process ends
/// with its last thread.
pub fn thread_create(entry: extern "C" fn(u64) -> !, stack: &'static mut [u8], arg: u64) -> Result<u64, SysError> {
    // As if `entry` had been called: 16-byte aligned before a return address's 8 bytes.
    let top = (stack.as_mut_ptr() as u64 + stack.len() as u64) & !0xF;
    let rsp = top.checked_sub(8).filter(|rsp| *rsp > stack.as_ptr() as u64).ok_or(SysError::Inval)?;
    // SAFETY: the new thread runs `entry` on `stack`, which the `'static mut` borrow
    // gives it alone for good; the call itself touches no memory of ours.
    result(unsafe { syscall(sys::THREAD_CREATE, [entry as usize as u64, rsp, arg, 0, 0]) })
}

/// Nanoseconds since the SVSM started.
pub fn clock() -> u64 {
    plain(sys::CLOCK, [0; 5])
}

/// CAPABILITIES(index).
pub fn capabilities(index: u64) -> Result<u64, SysError> {
    result(plain(sys::CAPABILITIES, [index, 0, 0, 0, 0]))
}

/// Fresh zeroed read-write memory of `bytes` bytes: its address.
pub fn mmap(bytes: usize) -> Result<usize, SysError> {
    let flags = sys::map::READ | sys::map::WRITE | sys::map::ANONYMOUS;
    let va = result(plain(sys::MMAP, [sys::NO_HANDLE, 0, 0, bytes as u64, flags]))?;
    usize::try_from(va).map_err(|_| SysError::Inval)
}

/// A handle to the `index`-th range of guest memory (OPEN_PHYSMEM), and the range.
pub fn open_physmem(index: u64) -> Result<(u64, PhysmemRange), SysError> {
    let mut range = PhysmemRange::default();
    // SAFETY: OPEN_PHYSMEM writes one PhysmemRange into `range`, which we hold exclusively.
    let rax = unsafe { syscall(sys::OPEN_PHYSMEM, [index, range.as_mut_bytes().as_mut_ptr() as u64, 0, 0, 0]) };
    result(rax).map(|handle| (handle, range))
}

/// Map `bytes` of the guest memory of `handle` from `offset` (readable, and writable if
/// `write`): the address. The pages are the guest's: it may change them at any time, so
/// read them with volatile loads, copy before checking, never trust them twice.
pub fn mmap_guest(handle: u64, offset: u64, bytes: u64, write: bool) -> Result<usize, SysError> {
    let flags = sys::map::READ | if write { sys::map::WRITE } else { 0 };
    let va = result(plain(sys::MMAP, [handle, 0, offset, bytes, flags]))?;
    usize::try_from(va).map_err(|_| SysError::Inval)
}

/// Unmap `bytes` at `va`.
///
/// # Safety
/// Nothing may use `[va, va + bytes)` once the call is made (no reference into it lives).
pub unsafe fn munmap(va: usize, bytes: u64) -> Result<(), SysError> {
    // SAFETY: MUNMAP reads and writes no memory; that the range is no longer used is the
    // caller's contract.
    result(unsafe { syscall(sys::MUNMAP, [va as u64, bytes, 0, 0, 0]) }).map(|_| ())
}

/// Fill `buf` (at most 256 bytes) from the SVSM's entropy source.
pub fn getrandom(buf: &mut [u8]) -> Result<(), SysError> {
    // SAFETY: GETRANDOM writes `buf.len()` bytes of `buf`, which we hold exclusively.
    let rax = unsafe { syscall(sys::GETRANDOM, [buf.as_mut_ptr() as u64, buf.len() as u64, 0, 0, 0]) };
    result(rax).and_then(|n| if n == buf.len() as u64 { Ok(()) } else { Err(SysError::Inval) })
}

/// Wait for the next request on channel `handle`, received into `buf`: its length.
pub fn channel_receive(handle: u64, buf: &mut [u8]) -> Result<usize, SysError> {
    // SAFETY: CHANNEL_RECEIVE writes at most `buf.len()` bytes of `buf`, which we hold
    // exclusively.
    let rax = unsafe { syscall(sys::CHANNEL_RECEIVE, [handle, buf.as_mut_ptr() as u64, buf.len() as u64, 0, 0]) };
    usize::try_from(result(rax)?).map_err(|_| SysError::Inval)
}

/// Answer the request last received on channel `handle`.
pub fn channel_reply(handle: u64, reply: &[u8]) -> Result<(), SysError> {
    // SAFETY: CHANNEL_REPLY reads `reply.len()` bytes of `reply`.
    let rax = unsafe { syscall(sys::CHANNEL_REPLY, [handle, reply.as_ptr() as u64, reply.len() as u64, 0, 0]) };
    result(rax).map(|_| ())
}

/// Run `calls` as one BATCH; their results land in `results` (as long as `calls`).
pub fn batch(calls: &[BatchIn], results: &mut [BatchOut]) -> Result<u64, SysError> {
    if results.len() < calls.len() {
        return Err(SysError::Inval);
    }
    let (input, output) = (calls.as_bytes(), results.as_mut_bytes());
    // SAFETY: BATCH reads the records of `calls` and writes as many results into
    // `results`, which we hold exclusively.
    let rax =
        unsafe { syscall(sys::BATCH, [input.as_ptr() as u64, output.as_mut_ptr() as u64, calls.len() as u64, 0, 0]) };
    result(rax)
}

/// Wait until `handle` (a channel or a port event) has a request: 1.
pub fn wait_for_event(handle: u64) -> Result<u64, SysError> {
    // SAFETY: WAIT_FOR_EVENT reads and writes no memory of ours.
    result(unsafe { syscall(sys::WAIT_FOR_EVENT, [handle, 0, 0, 0, 0]) })
}

/// Open VM `index` (CAPABILITIES' VM bitmap): its handle.
pub fn vm_open(index: u64) -> Result<u64, SysError> {
    // SAFETY: VM_OPEN reads and writes no memory of ours.
    result(unsafe { syscall(sys::VM_OPEN, [index, 0, 0, 0, 0]) })
}

/// Claim ports `first..first + count` of the open VM `vm`: the handle their accesses
/// arrive on (as `IoAccess` requests).
pub fn ioio_event(vm: u64, first: u64, count: u64) -> Result<u64, SysError> {
    // SAFETY: IOIO_EVENT reads and writes no memory of ours.
    result(unsafe { syscall(sys::IOIO_EVENT, [vm, first, count, 0, 0]) })
}

/// Claim the pages `gpa..gpa + length` of the open VM `vm`: the handle their loads and
/// stores arrive on (as `MmioAccess` requests).
pub fn mmio_event(vm: u64, gpa: u64, length: u64) -> Result<u64, SysError> {
    // SAFETY: MMIO_EVENT reads and writes no memory of ours.
    result(unsafe { syscall(sys::MMIO_EVENT, [vm, gpa, length, 0, 0]) })
}

/// Open vCPU `index` of the open VM `vm` as a VCPU object: the handle its exits arrive
/// on (as `VcpuExit` requests).
pub fn vcpu_open(vm: u64, index: u64) -> Result<u64, SysError> {
    // SAFETY: VCPU_OPEN reads and writes no memory of ours.
    result(unsafe { syscall(sys::VCPU_OPEN, [vm, index, 0, 0, 0]) })
}

/// Close `handle`.
pub fn close(handle: u64) -> Result<(), SysError> {
    // SAFETY: CLOSE reads and writes no memory of ours.
    result(unsafe { syscall(sys::CLOSE, [handle, 0, 0, 0, 0]) }).map(|_| ())
}

/// Start a process from the image's module `name` with `arg` as its argument, passing it
/// `handles` (its handles 0, 1, ... in this order; they are closed here): its process id.
/// Needs the right to start processes, which only the kernel grants.
pub fn exec(name: &[u8], handles: &[u32], arg: u64) -> Result<u64, SysError> {
    let (n, h) = (name.as_ptr() as u64, handles.as_ptr() as u64);
    // SAFETY: EXEC reads `name.len()` bytes of `name` and `handles.len()` u32s of
    // `handles`, and writes no memory of ours.
    result(unsafe { syscall(sys::EXEC, [n, name.len() as u64, h, handles.len() as u64, arg]) })
}
