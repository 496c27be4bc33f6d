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
//! buffers are a request header, one 4 KiB block and a status byte; and the two pages of a
//! queue of four descriptors (descriptors and driver area in one, device area in the
//! other), three times over. A queue's pages go back to the pool when the queue is dropped
//! (another of the host's block devices, found not to be the state disk and reset, say):
//! the pool is DMA memory only, which the host can write anyway (on SEV-SNP it is the
//! host's), so a page moving from one queue to another gives a device nothing new. A
//! request that never came back keeps its bounce pages and its queue for good (the driver
//! never drops a lost device's queue before the SVSM gives the disk up). The host cannot
//! make the driver share more at once, so running out of bounce pages is a bug here,
//! stopped as one; running out of queue pages fails the device's start.
#![expect(unsafe_code, reason = "the virtio-drivers Hal: raw DMA pages and bounce copies")]

use core::ptr::NonNull;
use spin::Mutex;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// Bounce slots, one page each.
const SLOTS: usize = 4;
/// Pages for virtqueues.
const QUEUE_PAGES: usize = 6;
/// The pool's pages in all.
pub const POOL_PAGES: usize = SLOTS + QUEUE_PAGES;
const PAGE: usize = 4096;

/// The pool: `POOL_PAGES` physically contiguous pages from `base`, reachable at `base +
/// offset`; which bounce slots are taken (with the length shared through each) and which
/// queue pages are handed out.
struct Pool {
    base: u64,
    offset: u64,
    taken: [Option<usize>; SLOTS],
    queue_taken: [bool; QUEUE_PAGES],
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
    *pool = Some(Pool { base, offset, taken: [None; SLOTS], queue_taken: [false; QUEUE_PAGES] });
    true
}

/// Whether the pool is set up.
pub fn ready() -> bool {
    POOL.lock().is_some()
}

/// Pages for the pool on the SVSM's own heap, identity-mapped (svm: the host reaches all
/// memory anyway), for [`init`]; `None` without memory for them.
pub fn identity_pool() -> Option<(u64, u64)> {
    let pages = super::pages::Page::zeroed_run(POOL_PAGES)?;
    let base = pages.phys();
    // The pool lives as long as the SVSM.
    core::mem::forget(pages);
    Some((base, 0))
}

/// A broken promise of this module (see the module comment): stop.
fn bug(what: &str) -> ! {
    println!("FAILED: dma: {what}");
    super::exit::failure()
}

/// The `Hal` of the SVSM's virtio devices: pool pages, bounce buffers.
pub struct BounceHal;

// SAFETY: every buffer shared with a device is copied into a bounce slot; a request that
// never came back keeps its slots (never unshared) and its queue (the driver keeps a lost
// device's queue until the disk is given up, and the pool is DMA memory only), so nothing
// but DMA ever uses those pages again.
unsafe impl blk::BouncingHal for BounceHal {}

// SAFETY: `dma_alloc` returns zeroed pool pages no one else holds (a free run of the
// queue pages, marked taken until `dma_dealloc` gives exactly that run back) or a null
// address the crate takes as failure; they are page-aligned and reachable at the virtual
// address returned. `mmio_phys_to_virt` maps nothing (it stops the SVSM). `share` hands
// out bounce slots no one else holds and copies in and out only within the caller's buffer
// and the slot.
unsafe impl Hal for BounceHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // Virtqueues, allocated when a device is set up at boot.
        let mut pool = POOL.lock();
        let Some(pool) = pool.as_mut() else { bug("the pool was not set up") };
        let free_run = (0..QUEUE_PAGES.saturating_sub(pages).saturating_add(1))
            .find(|&at| pool.queue_taken.get(at..at + pages).is_some_and(|run| run.iter().all(|t| !t)));
        let (Some(at), true) = (free_run, pages > 0) else {
            // The crate turns a zero address into a failed queue, so the device does not
            // start.
            return (0, NonNull::dangling());
        };
        pool.queue_taken.iter_mut().skip(at).take(pages).for_each(|t| *t = true);
        let phys = pool.base + ((SLOTS + at) * PAGE) as u64;
        let virt = pool.virt(phys);
        // SAFETY: queue pages `at..at + pages` of the pool, free until now (marked taken
        // above), reachable at `virt`.
        unsafe { core::ptr::write_bytes(virt, 0, pages * PAGE) };
        match NonNull::new(virt) {
            Some(ptr) => (phys, ptr),
            None => bug("a pool page at address 0"),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        let mut pool = POOL.lock();
        let Some(pool) = pool.as_mut() else { bug("the pool was not set up") };
        let first = paddr.wrapping_sub(pool.base) / PAGE as u64;
        let at = usize::try_from(first).ok().and_then(|p| p.checked_sub(SLOTS));
        match at.and_then(|at| pool.queue_taken.get_mut(at..at.saturating_add(pages))) {
            Some(run) if paddr.is_multiple_of(PAGE as u64) && run.iter().all(|t| *t) => run.fill(false),
            _ => bug("a queue's pages given back that were not its own"),
        }
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
