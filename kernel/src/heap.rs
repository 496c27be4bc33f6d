//! Allocation on paths a guest or the host can trigger: always fallible.
//!
//! The SVSM's heap is small and shared by every vCPU; a guest that makes it run out must
//! get an error code for its call, never a panic that stops the SVSM
//! ([`CallError::OutOfMemory`]). Infallible `Vec`/`Box` growth is kept to boot-time setup
//! and to sizes fixed by the SVSM itself.

use crate::error::{CallError, CallResult};
use alloc::vec::Vec;

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
