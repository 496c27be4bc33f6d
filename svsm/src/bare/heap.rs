//! The SVSM heap: a slab allocator for small objects on top of a buddy allocator for
//! pages and large blocks (the `buddy_system_allocator` crate, chosen over a hand-written
//! buddy), over a fixed region inside the image. Allocation failure returns null; the
//! kernel's guest-triggered paths use `try_reserve` and answer with a result code.
//!
//! Slabs: objects of 16..=2048 bytes come from 4 KiB pages cut into equal slots, one
//! free list per size class, kept inside the free slots themselves. Slab pages go back
//! to the buddy allocator never (the SVSM's small-object population is bounded).
#![expect(unsafe_code, reason = "the global allocator")]

use buddy_system_allocator::Heap;
use core::alloc::{GlobalAlloc, Layout};
use core::marker::PhantomData;
use core::ptr::{NonNull, null_mut};
use kernel::heap::{Hold, may_take};
use spin::Mutex;

/// Heap size: the kernel's bitmaps and registries, the software RMP and the nested page
/// tables (a 4 KiB table per 2 MiB region the guest validated page by page, none for one
/// mapped whole; about 1.5 MiB for a guest of 512 MiB), and the pages of the service processes:
/// the vTPM's data, stack and its own 1.5 MiB heap (about 2.2 MiB; its code is mapped
/// from the image, not copied), the probe's few.
const HEAP_SIZE: usize = 6 * 1024 * 1024;
const SLAB_PAGE: usize = 4096;
/// Size classes (powers of two: each slot is aligned to its size within a page).
const CLASSES: [usize; 8] = [16, 32, 64, 128, 256, 512, 1024, 2048];

struct State {
    buddy: Heap<32>,
    /// Head of each class's free list (0 = empty); each free slot holds the next address.
    free: [usize; CLASSES.len()],
    /// Bytes a CPU holds back for itself ([`hold_back`]).
    hold: Option<Hold>,
}

pub struct SlabHeap {
    state: Mutex<State>,
}

#[global_allocator]
static HEAP: SlabHeap =
    SlabHeap { state: Mutex::new(State { buddy: Heap::empty(), free: [0; CLASSES.len()], hold: None }) };

/// `len` default (zero) values in a vector from the heap, or `None` when it has no room
/// (`vec!` would stop the SVSM instead).
pub fn zeroed<T: Copy + Default>(len: usize) -> Option<alloc::vec::Vec<T>> {
    let mut v = alloc::vec::Vec::new();
    v.try_reserve_exact(len).ok()?;
    v.resize(len, T::default());
    Some(v)
}

/// Bytes of the heap in use (slab pages counted whole) and its size.
pub fn usage() -> (usize, usize) {
    let s = HEAP.state.lock();
    (s.buddy.stats_alloc_actual(), s.buddy.stats_total_bytes())
}

/// Heap held back for this CPU until the value drops: other CPUs' allocations that would
/// eat into it fail (the guest's paths answer OutOfMemory), while this CPU does something
/// that allocates without failing gracefully (x509-cert and rsa checking a migration
/// peer's evidence) with the guest's vCPUs running on the others. `None` if fewer bytes
/// are free, or another hold is in place. Not `Send`: it is this CPU's.
pub struct HeldBack(PhantomData<*const ()>);

pub fn hold_back(bytes: usize) -> Option<HeldBack> {
    let mut s = HEAP.state.lock();
    if s.hold.is_some() || s.free_bytes() < bytes {
        return None;
    }
    s.hold = Some(Hold { cpu: super::percpu::this_cpu(), bytes });
    Some(HeldBack(PhantomData))
}

impl Drop for HeldBack {
    fn drop(&mut self) {
        HEAP.state.lock().hold = None;
    }
}

fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align());
    CLASSES.iter().position(|c| *c >= size)
}

impl State {
    fn free_bytes(&self) -> usize {
        self.buddy.stats_total_bytes().saturating_sub(self.buddy.stats_alloc_actual())
    }

    /// Whether this CPU may take a block of `bytes` (rounded as the buddy allocator
    /// rounds) from the buddy heap under the hold, if there is one.
    fn may_take(&self, bytes: usize) -> bool {
        // No hold (nearly always): no need to ask which CPU this is.
        let Some(hold) = self.hold else { return true };
        may_take(self.free_bytes(), bytes.next_power_of_two(), super::percpu::this_cpu(), Some(hold))
    }

    /// Cut a fresh page from the buddy allocator into slots of class `c`.
    fn refill(&mut self, c: usize) -> bool {
        // `class_of` gives indexes of CLASSES, whose length `free` has.
        let (Some(&size), Some(head)) = (CLASSES.get(c), self.free.get_mut(c)) else { return false };
        let Ok(page_layout) = Layout::from_size_align(SLAB_PAGE, SLAB_PAGE) else { return false };
        let Ok(page) = self.buddy.alloc(page_layout) else { return false };
        let base = page.as_ptr() as usize;
        for slot in (0..SLAB_PAGE / size).rev() {
            let addr = base + slot * size;
            // SAFETY: `addr` is a `size`-aligned slot inside the page just allocated for
            // this slab; nothing else references it; a usize fits in every class.
            unsafe { (addr as *mut usize).write(*head) };
            *head = addr;
        }
        true
    }
}

// SAFETY: every block handed out is either a whole buddy allocation of at least the
// layout's size and alignment, or a slab slot of a power-of-two class >= size and align,
// aligned to its class within a 4 KiB-aligned page; blocks return to where they came
// from (`class_of` gives the same answer for the same layout); the state is behind a lock.
unsafe impl GlobalAlloc for SlabHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut s = self.state.lock();
        match class_of(layout) {
            None if !s.may_take(layout.size().max(layout.align())) => null_mut(),
            None => s.buddy.alloc(layout).map_or(null_mut(), NonNull::as_ptr),
            Some(c) => {
                if s.free.get(c).is_none_or(|head| *head == 0) && !(s.may_take(SLAB_PAGE) && s.refill(c)) {
                    return null_mut();
                }
                // Never None: `refill` succeeded for this class.
                let Some(head) = s.free.get_mut(c) else { return null_mut() };
                let slot = *head;
                // SAFETY: `slot` is the head of class `c`'s free list: a free slot that
                // holds the next free address.
                *head = unsafe { (slot as *const usize).read() };
                slot as *mut u8
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let mut s = self.state.lock();
        match (class_of(layout), NonNull::new(ptr)) {
            // SAFETY: a large block this allocator handed out from the buddy heap with
            // this layout (the GlobalAlloc contract).
            (None, Some(block)) => unsafe { s.buddy.dealloc(block, layout) },
            (Some(c), Some(_)) => {
                // Never None (`class_of` gives indexes of `free`); were it, the slot would
                // be leaked, not freed twice.
                let Some(head) = s.free.get_mut(c) else { return };
                // SAFETY: `ptr` is a slot of class `c` the caller no longer uses (the
                // GlobalAlloc contract); it becomes the head of the free list.
                unsafe { (ptr as *mut usize).write(*head) };
                *head = ptr as usize;
            }
            (_, None) => {}
        }
    }
}

static AREA: x86::area::OnceArea<HEAP_SIZE> = x86::area::OnceArea::new();

pub fn init() {
    if let Some((start, size)) = AREA.take() {
        // SAFETY: the static area is handed out once and lives for the whole run.
        unsafe { HEAP.state.lock().buddy.init(start, size) };
    }
}
