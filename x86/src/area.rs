//! A static block of memory handed out exactly once (for a heap), so no two owners can
//! ever hold it.
#![expect(unsafe_code, reason = "hands out a static memory area once, as a slice")]

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

#[repr(C, align(4096))]
pub struct OnceArea<const N: usize> {
    taken: AtomicBool,
    bytes: UnsafeCell<[u8; N]>,
}

// SAFETY: the bytes are only reachable through `take`, which succeeds once.
unsafe impl<const N: usize> Sync for OnceArea<N> {}

impl<const N: usize> OnceArea<N> {
    pub const fn new() -> Self {
        Self { taken: AtomicBool::new(false), bytes: UnsafeCell::new([0; N]) }
    }

    /// The area's address and size, the first time only.
    pub fn take(&self) -> Option<(usize, usize)> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some((self.bytes.get() as usize, N))
    }
}

impl<const N: usize> Default for OnceArea<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Debug for OnceArea<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OnceArea").field("size", &N).field("taken", &self.taken).finish()
    }
}
