//! The SVSM's heap limit, on the host.
//!
//! On bare metal the SVSM has a fixed heap (`svsm/src/bare/heap.rs`; what SVSM code may
//! hold of it is [`SVSM_HEAP_BYTES`]) and every allocation past it fails. Hosted tests run
//! the kernel on the host's allocator, which never runs out, so an infallible allocation
//! on a guest-triggered path (which would abort the SVSM on bare metal) goes unseen.
//! [`CountingHeap`] closes that gap: a test binary installs it as its global allocator,
//! and every allocation made while the model runs SVSM code ([`in_svsm`]: start-up and
//! each entry) counts against a per-thread budget. Past the budget the allocation fails
//! (null), as the bare-metal heap's does: a fallible path sees an error, an infallible one
//! aborts the test.
//!
//! Allocations outside SVSM code (the test itself, the model's machine, libtpms' C heap,
//! which uses malloc) are not counted. Each block carries a small header saying whether
//! it was counted, so a block freed later (or by other code) is uncounted correctly.
#![expect(unsafe_code, reason = "a GlobalAlloc over the system allocator, counting")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// The budget of SVSM code on the model. The bare-metal heap is 6 MiB
/// (svsm/src/bare/heap.rs), of which the vTPM's service process holds 757 pages at boot
/// (at most 900), leaving SVSM code about 3 MiB there; the model runs the service as a
/// hosted process outside the count (`user_host`), so this budget is about 1 MiB more
/// generous than bare metal (it predates the service's pages in the heap).
pub const SVSM_HEAP_BYTES: usize = 4 * 1024 * 1024;

const COUNTED: u64 = 0x5356_534D_4845_4150; // "SVSMHEAP"
const UNCOUNTED: u64 = 0x484F_5354_4845_4150; // "HOSTHEAP"

thread_local! {
    static IN_SVSM: Cell<bool> = const { Cell::new(false) };
    /// Bytes the SVSM code of this thread holds.
    static LIVE: Cell<usize> = const { Cell::new(0) };
    /// What it may hold.
    static LIMIT: Cell<usize> = const { Cell::new(SVSM_HEAP_BYTES) };
    /// Allocations refused for the limit.
    static REFUSED: Cell<u64> = const { Cell::new(0) };
    /// The most [`LIVE`] has been (since the [`peak_of`] under way began, if any).
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

/// Puts the SVSM flag back as it was, also when `f` panics.
struct Restore(bool);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = IN_SVSM.try_with(|c| c.set(self.0));
    }
}

/// Run `f` as SVSM code: its allocations count against the budget.
pub fn in_svsm<R>(f: impl FnOnce() -> R) -> R {
    let _restore = Restore(IN_SVSM.with(|c| c.replace(true)));
    f()
}

/// Run `f` as the machine or the host (their memory is not the SVSM's heap), also when
/// SVSM code called it (a platform operation).
pub fn as_host<R>(f: impl FnOnce() -> R) -> R {
    let _restore = Restore(IN_SVSM.with(|c| c.replace(false)));
    f()
}

/// Bytes the SVSM code of this thread holds now.
pub fn live() -> usize {
    LIVE.with(Cell::get)
}

/// What the SVSM code of this thread holds, and what it may hold; `None` in a binary that
/// does not count (no [`CountingHeap`] installed).
pub fn usage() -> Option<kernel::platform::HeapUsage> {
    INSTALLED
        .load(Ordering::Relaxed)
        .then(|| kernel::platform::HeapUsage { used: live() as u64, size: LIMIT.with(Cell::get) as u64 })
}

/// Set by the first allocation [`CountingHeap`] serves.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// What `f` took from the SVSM's heap at its peak, beyond what was live before it.
pub fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = live();
    let outer = PEAK.with(|p| p.replace(before));
    let result = f();
    let peak = PEAK.with(|p| p.replace(outer.max(p.get())));
    (result, peak.saturating_sub(before))
}

/// Allocations refused since the thread started.
pub fn refused() -> u64 {
    REFUSED.with(Cell::get)
}

/// Let SVSM code allocate `bytes` more than it holds now (a nearly full heap).
pub fn leave_room(bytes: usize) {
    LIMIT.with(|l| l.set(live().saturating_add(bytes)));
}

/// Back to the bare-metal heap's size.
pub fn reset_limit() {
    LIMIT.with(|l| l.set(SVSM_HEAP_BYTES));
}

/// The allocator a test binary installs: `#[global_allocator] static A: CountingHeap =
/// CountingHeap;`.
#[derive(Debug)]
pub struct CountingHeap;

/// Room before each block for the header (tag, size), keeping the block's alignment.
fn header(layout: Layout) -> usize {
    layout.align().max(16)
}

fn outer(layout: Layout) -> Option<Layout> {
    Layout::from_size_align(layout.size().checked_add(header(layout))?, layout.align().max(16)).ok()
}

// SAFETY: every block handed out lies `header` bytes into a block of `System` made with
// the `outer` layout, and `dealloc` gives exactly that block back; the header is written
// before the block is handed out and read only by `dealloc`.
unsafe impl GlobalAlloc for CountingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(outer) = outer(layout) else { return std::ptr::null_mut() };
        INSTALLED.store(true, Ordering::Relaxed);
        let counted = IN_SVSM.try_with(Cell::get).unwrap_or(false);
        if counted {
            let live = LIVE.try_with(Cell::get).unwrap_or(0);
            let limit = LIMIT.try_with(Cell::get).unwrap_or(SVSM_HEAP_BYTES);
            if live.saturating_add(layout.size()) > limit {
                let _ = REFUSED.try_with(|r| r.set(r.get() + 1));
                return std::ptr::null_mut();
            }
        }
        // SAFETY: `outer` has a non-zero size (header >= 16).
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        if counted {
            let _ = LIVE.try_with(|l| l.set(l.get() + layout.size()));
            let _ = PEAK.try_with(|p| p.set(p.get().max(LIVE.try_with(Cell::get).unwrap_or(0))));
        }
        let h = header(layout);
        // SAFETY: `base` has room for `h >= 16` bytes before the block; the tag goes in
        // the 16 bytes just before it, 8-byte aligned (h is a multiple of 16).
        unsafe {
            let tag = base.add(h - 16).cast::<u64>();
            tag.write(if counted { COUNTED } else { UNCOUNTED });
            base.add(h)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(outer) = outer(layout) else { return };
        let h = header(layout);
        // SAFETY: `ptr` came from `alloc` with this layout (GlobalAlloc's contract), so the
        // block starts `h` bytes before it and the tag sits 16 bytes before it.
        let (base, tag) = unsafe { (ptr.sub(h), ptr.sub(16).cast::<u64>().read()) };
        if tag == COUNTED {
            let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(layout.size())));
        }
        // SAFETY: the block `System` gave `alloc` for `outer`.
        unsafe { System.dealloc(base, outer) };
    }
}
