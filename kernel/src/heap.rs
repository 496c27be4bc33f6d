//! Allocation on paths a guest or the host can trigger: always fallible.
//!
//! The SVSM's heap is small and shared by every vCPU; a guest that makes it run out must
//! get an error code for its call, never a panic that stops the SVSM
//! ([`CallError::OutOfMemory`]). Infallible `Vec`/`Box` growth is kept to boot-time setup
//! and to sizes fixed by the SVSM itself.

use crate::error::{CallError, CallResult};
use alloc::vec::Vec;

/// Heap one CPU holds back for itself for a while (the bare heap's `hold_back`): while it
/// does, another CPU may take only what leaves those bytes free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    pub cpu: u32,
    pub bytes: usize,
}

/// Whether `cpu` may take `bytes` more from a heap with `free` bytes free while `hold`
/// holds some back: the holder may (the held bytes are for what it is doing), another CPU
/// only if the held bytes stay free; without a hold the heap alone decides.
pub fn may_take(free: usize, bytes: usize, cpu: u32, hold: Option<Hold>) -> bool {
    match hold {
        Some(h) if h.cpu != cpu => free.checked_sub(bytes).is_some_and(|left| left >= h.bytes),
        _ => true,
    }
}

/// A zeroed byte buffer of `len` bytes.
pub fn zeroed(len: usize) -> CallResult<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| CallError::OutOfMemory)?;
    v.resize(len, 0);
    Ok(v)
}

/// An array of `N` values made by `f`, on the heap (so a structure holding it stays small
/// enough to move on a small stack); `None` without memory.
pub fn boxed_array<T, const N: usize>(f: impl FnMut() -> T) -> Option<alloc::boxed::Box<[T; N]>> {
    let mut v = Vec::new();
    v.try_reserve_exact(N).ok()?;
    v.resize_with(N, f);
    v.into_boxed_slice().try_into().ok()
}

/// An empty vector with room for `capacity` elements.
pub fn with_capacity<T>(capacity: usize) -> CallResult<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(capacity).map_err(|_| CallError::OutOfMemory)?;
    Ok(v)
}

/// A copy of `items` on the heap, or `OutOfMemory`.
pub fn copy_of<T: Clone>(items: &[T]) -> CallResult<Vec<T>> {
    let mut v = with_capacity(items.len())?;
    v.extend_from_slice(items);
    Ok(v)
}

/// Append `items` to `v`, growing it fallibly.
pub fn extend<T: Clone>(v: &mut Vec<T>, items: &[T]) -> CallResult<()> {
    v.try_reserve(items.len()).map_err(|_| CallError::OutOfMemory)?;
    v.extend_from_slice(items);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The holder takes what it held back; another CPU only what leaves it free; without
    /// a hold, anyone (the heap then says whether there is room).
    #[test]
    fn a_hold_keeps_its_bytes_for_its_cpu() {
        let hold = Some(Hold { cpu: 0, bytes: 4096 });
        assert!(may_take(4096, 4096, 0, hold), "the holder takes all of it");
        assert!(!may_take(4096, 16, 1, hold), "another CPU takes none of it");
        assert!(may_take(8192, 4096, 1, hold), "another CPU takes what is above it");
        assert!(!may_take(8192, 4097, 1, hold), "but not a byte more");
        assert!(!may_take(100, 4096, 1, hold), "nor more than is free");
        assert!(may_take(0, 4096, 1, None), "without a hold the heap decides");
    }
}
