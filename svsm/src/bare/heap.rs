//! The SVSM heap: a buddy allocator (the `buddy_system_allocator` crate, chosen over a
//! hand-written one) over a fixed region inside the image. Allocation failure on a
//! guest-triggered path is handled by the kernel with `try_reserve`; here it returns null.

use buddy_system_allocator::LockedHeap;

/// Heap size: the kernel's page bitmaps and registries for a guest of a few GiB.
const HEAP_SIZE: usize = 2 * 1024 * 1024;

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

#[repr(C, align(4096))]
struct HeapArea([u8; HEAP_SIZE]);

/// The heap's memory, handed to the allocator once.
static AREA: spin_cell::Cell = spin_cell::Cell::new();

mod spin_cell {
    use super::{HEAP_SIZE, HeapArea};
    use core::cell::UnsafeCell;
    use core::sync::atomic::{AtomicBool, Ordering};

    /// Memory given away exactly once.
    pub struct Cell {
        taken: AtomicBool,
        area: UnsafeCell<HeapArea>,
    }

    // SAFETY: the area is handed out at most once (guarded by `taken`), so no two
    // references to it can exist.
    unsafe impl Sync for Cell {}

    impl Cell {
        pub const fn new() -> Self {
            Self { taken: AtomicBool::new(false), area: UnsafeCell::new(HeapArea([0; HEAP_SIZE])) }
        }

        /// The area's start and size, the first time only.
        pub fn take(&self) -> Option<(usize, usize)> {
            if self.taken.swap(true, Ordering::AcqRel) {
                return None;
            }
            Some((self.area.get() as usize, HEAP_SIZE))
        }
    }
}

pub fn init() {
    if let Some((start, size)) = AREA.take() {
        // SAFETY: `take` hands out the static area once; nothing else references it, and
        // it lives for the whole run.
        unsafe { HEAP.lock().init(start, size) };
    }
}
