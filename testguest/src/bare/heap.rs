//! The test guest's heap (the conformance suite allocates): a buddy allocator over a
//! static area inside the image, which the SVSM's launch validated.
#![expect(unsafe_code, reason = "the global allocator")]

use buddy_system_allocator::LockedHeap;

const HEAP_SIZE: usize = 1024 * 1024;

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

static AREA: x86::area::OnceArea<HEAP_SIZE> = x86::area::OnceArea::new();

pub fn init() {
    if let Some((start, size)) = AREA.take() {
        // SAFETY: the static area is handed out once and lives for the whole run.
        unsafe { HEAP.lock().init(start, size) };
    }
}
