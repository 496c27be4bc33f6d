//! DMA for the SVSM's virtio devices (the `virtio-drivers` crate's `Hal`).
//!
//! A device never sees an SVSM buffer: every buffer the driver hands it is copied into a
//! bounce page of a small pool first, and what the device wrote is copied back out when the
//! request completes. Only the pool's pages are ever in a descriptor or a queue address:
//! the virtqueues come from the pool too. That keeps what a device can reach small and
//! fixed, and on SEV-SNP the pool is the set of pages shared with the host (made shared
//! when it is set up, and read and written through the unencrypted alias there).
//!
//! The pool is sized for how the SVSM uses its one disk: one request in flight, whose
//! buffers are a request header, one 4 KiB block and a status byte; and the three pages of
//! a queue of four descriptors, twice (a host that offers a second block device after a
//! first one failed to start). The host cannot make the driver share more at once, so
//! running out of bounce pages is a bug here, stopped as one; running out of queue pages
//! fails the device's start.
#![expect(unsafe_code, reason = "the virtio-drivers Hal: raw DMA pages and bounce copies")]

use core::ptr::NonNull;
use spin::Mutex;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// Bounce slots, one page each.
const SLOTS: usize = 4;
/// Pages for virtqueues (never given back: see `dma_dealloc`).
const QUEUE_PAGES: usize = 6;
/// The pool's pages in all.
pub const POOL_PAGES: usize = SLOTS + QUEUE_PAGES;
const PAGE: usize = 4096;

/// The pool: `POOL_PAGES` physically contiguous pages from `base`, reachable at `base +
/// offset`; which bounce slots are taken (with the length shared through each) and how
/// many queue pages are handed out.
struct Pool {
    base: u64,
    offset: u64,
    taken: [Option<usize>; SLOTS],
    queue_pages_used: usize,
}

impl Pool {
    fn virt(&self, phys: u64) -> *mut u8 {
        phys.wrapping_add(self.offset) as *mut u8
    }
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

/// Set the pool up on [`POOL_PAGES`] pages from `make`, which gives their physical start
/// and the offset from a physical address to where the SVSM reaches it (0 for the identity
/// map), or `None` without them. `true` if the pool is there (made now or before).
pub fn init(make: impl FnOnce() -> Option<(u64, u64)>) -> bool {
    let mut pool = POOL.lock();
    if pool.is_some() {
        return true;
    }
    let Some((base, offset)) = make() else { return false };
    *pool = Some(Pool { base, offset, taken: [None; SLOTS], queue_pages_used: 0 });
    true
}

/// Whether the pool is set up.
pub fn ready() -> bool {
    POOL.lock().is_some()
}

/// The pool on the SVSM's own heap pages, identity-mapped (svm: the host reaches all
/// memory anyway); `false` without memory for it.
pub fn init_identity() -> bool {
    init(|| {
        let pages = super::pages::Page::zeroed_run(POOL_PAGES)?;
        let base = pages.phys();
        // The pool lives as long as the SVSM.
        core::mem::forget(pages);
        Some((base, 0))
    })
}

/// A broken promise of this module (see the module comment): stop.
fn bug(what: &str) -> ! {
    println!("FAILED: dma: {what}");
    super::exit::failure()
}

/// The `Hal` of the SVSM's virtio devices: pool pages, bounce buffers.
pub struct BounceHal;

// SAFETY: `dma_alloc` returns zeroed pool pages no one else was given (a run of the queue
// pages, handed out once) or a null address the crate takes as failure; they are reachable
// at the virtual address returned, stay the caller's (never freed or handed out again) and
// are page-aligned. `mmio_phys_to_virt` maps nothing (it stops the SVSM). `share` hands out
// bounce slots no one else holds and copies in and out only within the caller's buffer and
// the slot.
unsafe impl Hal for BounceHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // Virtqueues, allocated when a device is set up at boot.
        let mut pool = POOL.lock();
        let Some(pool) = pool.as_mut() else { bug("the pool was not set up") };
        let first = SLOTS + pool.queue_pages_used;
        if pages == 0 || pool.queue_pages_used + pages > QUEUE_PAGES {
            // The crate turns a zero address into a failed queue, so the device does not
            // start.
            return (0, NonNull::dangling());
        }
        pool.queue_pages_used += pages;
        let phys = pool.base + (first * PAGE) as u64;
        let virt = pool.virt(phys);
        // SAFETY: pages `first..first + pages` of the pool, given to no one before (the
        // count above only grows), reachable at `virt`.
        unsafe { core::ptr::write_bytes(virt, 0, pages * PAGE) };
        match NonNull::new(virt) {
            Some(ptr) => (phys, ptr),
            None => bug("a pool page at address 0"),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        // Never given back: a device that lost a request may still write its queue, so its
        // pages are never another queue's.
        0
    }

    unsafe fn mmio_phys_to_virt(_paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        // The SVSM's transport (`blk::pci`) makes its register accesses itself, inside the
        // windows it checked; nothing asks the `Hal` to map registers.
        bug("a register mapping asked of the bounce Hal")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let len = buffer.len();
        if len > PAGE {
            bug("a buffer larger than a bounce page");
        }
        let mut pool = POOL.lock();
        let Some(pool) = pool.as_mut() else { bug("the pool was not set up") };
        let Some((slot, entry)) = pool.taken.iter_mut().enumerate().find(|(_, e)| e.is_none()) else {
            bug("every bounce page is taken")
        };
        *entry = Some(len);
        let phys = pool.base + (slot * PAGE) as u64;
        let bounce = pool.virt(phys);
        // Copied in whatever the direction: a byte the device does not write then keeps the
        // driver's value (the status byte of a request a host completes without doing it
        // stays "not done", where a zeroed page would say "success").
        // SAFETY: the slot is a pool page no one else holds (taken above), reachable at
        // `bounce`; the caller's buffer is valid for `len` bytes and not otherwise accessed
        // during the call.
        unsafe {
            core::ptr::write_bytes(bounce, 0, PAGE);
            core::ptr::copy_nonoverlapping(buffer.as_ptr().cast::<u8>(), bounce, len);
        }
        phys
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let mut pool = POOL.lock();
        let Some(pool) = pool.as_mut() else { bug("the pool was not set up") };
        let slot = usize::try_from(paddr.wrapping_sub(pool.base) / PAGE as u64).unwrap_or(usize::MAX);
        let Some(Some(len)) = pool.taken.get(slot).copied() else { bug("an unshare of a slot not shared") };
        if len != buffer.len() || paddr != pool.base + (slot * PAGE) as u64 {
            bug("an unshare that does not match its share");
        }
        if !matches!(direction, BufferDirection::DriverToDevice) {
            // SAFETY: the slot holds `len` bytes the device wrote, reachable at its virtual
            // address; the caller's buffer is valid for `len` bytes and not otherwise
            // accessed during the call.
            unsafe { core::ptr::copy_nonoverlapping(pool.virt(paddr), buffer.as_ptr().cast::<u8>(), len) };
        }
        if let Some(entry) = pool.taken.get_mut(slot) {
            *entry = None;
        }
    }
}
