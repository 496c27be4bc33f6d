//! The Rust half of the C runtime for libtpms and libcrypto (the C half is
//! svsm/csupport/libc.c): memory from the SVSM heap, entropy from RDRAND, time from the
//! calibrated TSC, text to the SVSM log, and the fatal paths.
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
    let text = core::str::from_utf8(bytes).unwrap_or("(C text that is not UTF-8)");
    crate::println!("vtpm(C): {}", text.trim_end());
}

/// # Safety
/// `what` is a NUL-terminated string.
#[unsafe(no_mangle)]
#[expect(clippy::panic, reason = "the C code's fatal error: stops the SVSM through the panic handler's report")]
pub unsafe extern "C" fn bulwark_c_fatal(what: *const c_char) -> ! {
    // SAFETY: the caller's contract.
    let what = unsafe { core::ffi::CStr::from_ptr(what) }.to_str().unwrap_or("?");
    panic!("C runtime: {what}");
}

/// Fill `buf` with `len` bytes from RDRAND; 1 on success, 0 if RDRAND fails. There is no
/// weaker fallback: a TPM without entropy must fail, not invent keys.
///
/// # Safety
/// `buf` holds `len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bulwark_c_entropy(buf: *mut c_void, len: usize) -> c_int {
    // SAFETY: the caller's contract.
    let out = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    for chunk in out.chunks_mut(8) {
        let Some(v) = super::cpu::rdrand() else { return 0 };
        for (byte, random) in chunk.iter_mut().zip(v.to_le_bytes()) {
            *byte = random;
        }
    }
    1
}

#[unsafe(no_mangle)]
pub extern "C" fn bulwark_c_random_u64() -> u64 {
    super::cpu::rdrand().unwrap_or(0)
}

#[unsafe(no_mangle)]
pub extern "C" fn bulwark_c_monotonic_ns() -> u64 {
    super::clock::monotonic_ns()
}
