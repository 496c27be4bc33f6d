//! Copies to and from guest-physical memory. The SVSM runs with the first 4 GiB
//! identity-mapped, so a guest-physical address is also the SVSM's virtual address for
//! it. This module is the only place that turns such an address into a pointer; callers
//! (the svm platform) have checked that the range is guest RAM the SVSM may touch.
#![expect(unsafe_code, reason = "copies to and from guest-physical memory through the direct map")]

/// Highest address (exclusive) the identity map covers.
pub const MAPPED_TOP: u64 = 1 << 32;

fn in_map(gpa: u64, len: usize) -> bool {
    gpa.checked_add(len as u64).is_some_and(|end| end <= MAPPED_TOP)
}

/// Copy `buf.len()` bytes from guest-physical `gpa`. `false` if outside the map.
///
/// # Safety
/// `gpa..gpa + len` must be guest RAM (never SVSM memory, so no Rust object is aliased).
pub unsafe fn read(gpa: u64, buf: &mut [u8]) -> bool {
    if !in_map(gpa, buf.len()) {
        return false;
    }
    // SAFETY: the range is identity-mapped (checked) guest RAM (caller), which no Rust
    // reference points into; the guest may change it concurrently, so it is copied
    // bytewise with volatile reads and never referenced.
    unsafe {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = core::ptr::read_volatile((gpa as *const u8).add(i));
        }
    }
    true
}

/// Copy `data` to guest-physical `gpa`. `false` if outside the map.
///
/// # Safety
/// As for [`read`].
pub unsafe fn write(gpa: u64, data: &[u8]) -> bool {
    if !in_map(gpa, data.len()) {
        return false;
    }
    // SAFETY: as in `read`; volatile writes, no reference kept.
    unsafe {
        for (i, b) in data.iter().enumerate() {
            core::ptr::write_volatile((gpa as *mut u8).add(i), *b);
        }
    }
    true
}

/// Fill `len` bytes at guest-physical `gpa` with zeros. `false` if outside the map.
///
/// # Safety
/// As for [`read`].
pub unsafe fn zero(gpa: u64, len: usize) -> bool {
    if !in_map(gpa, len) {
        return false;
    }
    // SAFETY: as in `write`.
    unsafe { core::ptr::write_bytes(gpa as *mut u8, 0, len) };
    true
}
