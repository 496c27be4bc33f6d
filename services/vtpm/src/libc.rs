//! The Rust half of the C runtime for libtpms and libcrypto (the C half is
//! csupport/libc.c): memory from the process's heap, and through system calls entropy
//! (GETRANDOM), time (CLOCK), text (LOG), and the fatal path (EXIT: the process ends, the
//! SVSM answers vTPM calls with TPM_RC_FAILURE and serves everything else).
#![expect(unsafe_code, reason = "the C library functions libtpms and libcrypto call")]

use alloc::alloc::{Layout, alloc, dealloc};
use core::ffi::{c_char, c_int, c_void};

/// Every block carries its size in front (C's `free` does not say it), and keeps the
/// 16-byte alignment malloc promises.
const HEADER: usize = 16;

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(HEADER)?, HEADER).ok()
}

/// # Safety
/// C's malloc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    let Some(l) = layout(size) else { return core::ptr::null_mut() };
    // SAFETY: `l` has a non-zero size (at least the header).
    let p = unsafe { alloc(l) };
    if p.is_null() {
        return p.cast();
    }
    // SAFETY: the block holds at least HEADER bytes, 16-aligned.
    unsafe {
        p.cast::<usize>().write(size);
        p.add(HEADER).cast()
    }
}

/// # Safety
/// C's free contract: `ptr` is null or came from [`malloc`]/[`realloc`] and is freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: the header sits HEADER bytes before every pointer malloc returned.
    unsafe {
        let base = ptr.cast::<u8>().sub(HEADER);
        let size = base.cast::<usize>().read();
        if let Some(l) = layout(size) {
            dealloc(base, l);
        }
    }
}

/// # Safety
/// C's realloc contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: C's contract, passed on.
    unsafe {
        let new = malloc(size);
        if !ptr.is_null() && !new.is_null() {
            let old = ptr.cast::<u8>().sub(HEADER).cast::<usize>().read();
            core::ptr::copy_nonoverlapping(ptr.cast::<u8>(), new.cast::<u8>(), old.min(size));
        }
        if !new.is_null() || size == 0 {
            free(ptr);
        }
        new
    }
}

/// # Safety
/// `text` holds `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bulwark_c_log(text: *const c_char, len: usize) {
    // SAFETY: the caller's contract.
    let bytes = unsafe { core::slice::from_raw_parts(text.cast::<u8>(), len) };
    crate::bare::log(bytes);
}

/// # Safety
/// `what` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bulwark_c_fatal(what: *const c_char) -> ! {
    // SAFETY: the caller's contract.
    let what = unsafe { core::ffi::CStr::from_ptr(what) };
    crate::bare::log(b"vtpm service: fatal error in C code:");
    crate::bare::log(what.to_bytes());
    crate::bare::exit(EXIT_C_FATAL)
}

/// The exit code of a C fatal error (abort, a failed assertion, a stack smash).
const EXIT_C_FATAL: u64 = 4;

/// Fill `buf` with `len` bytes of the SVSM's entropy; 1 on success, 0 if it has none.
/// There is no weaker fallback: a TPM without entropy must fail, not invent keys.
///
/// # Safety
/// `buf` holds `len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bulwark_c_entropy(buf: *mut c_void, len: usize) -> c_int {
    // SAFETY: the caller's contract.
    let out = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    for chunk in out.chunks_mut(256) {
        if user_rt::getrandom(chunk).is_err() {
            return 0;
        }
    }
    1
}

#[unsafe(no_mangle)]
pub extern "C" fn bulwark_c_random_u64() -> u64 {
    let mut v = [0u8; 8];
    if user_rt::getrandom(&mut v).is_ok() { u64::from_le_bytes(v) } else { 0 }
}

#[unsafe(no_mangle)]
pub extern "C" fn bulwark_c_monotonic_ns() -> u64 {
    user_rt::clock()
}
