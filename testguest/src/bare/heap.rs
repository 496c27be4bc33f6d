//! The test guest's heap (the conformance suite allocates): a buddy allocator over a
//! static area inside the image, which the SVSM's launch validated.

use buddy_system_allocator::LockedHeap;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

const HEAP_SIZE: usize = 1024 * 1024;

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

#[repr(C, align(4096))]
struct Area(UnsafeCell<[u8; HEAP_SIZE]>);
// SAFETY: the area is handed to the allocator once (guarded by TAKEN) and never touched
// directly afterwards.
unsafe impl Sync for Area {}
static AREA: Area = Area(UnsafeCell::new([0; HEAP_SIZE]));
static TAKEN: AtomicBool = AtomicBool::new(false);

pub fn init() {
    if !TAKEN.swap(true, Ordering::AcqRel) {
        // SAFETY: handed out once (TAKEN); static, so it lives for the whole run.
        unsafe { HEAP.lock().init(AREA.0.get() as usize, HEAP_SIZE) };
    }
}
