//! DMA for the SVSM's virtio devices (the `virtio-drivers` crate's `Hal`).
//!
//! A device never sees an SVSM buffer: every buffer the driver hands it is copied into a
//! bounce page of a small pool first, and what the device wrote is copied back out when the
//! request completes. Only the pool's pages and the virtqueues are ever in a descriptor.
//! That keeps what a device can reach small and fixed on the svm platform, and it is the
//! shape the snp platform needs, where the pool's pages are the ones shared with the host.
//!
//! The pool is sized for how the SVSM uses its one disk: one request in flight, whose
//! buffers are a request header, one 4 KiB block, a status byte and at most an indirect
//! descriptor list. The host cannot make the driver share more at once, so running out
//! is a bug here, stopped as one.
#![expect(unsafe_code, reason = "the virtio-drivers Hal: raw DMA pages, bounce copies and MMIO pointers")]

use super::pages::Page;
use core::ptr::NonNull;
use spin::Mutex;
use svm::virtio_pci::{Window, inside_any};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// Bounce slots, one page each.
const SLOTS: usize = 4;
const SLOT_BYTES: usize = 4096;

/// The pool's pages (physical = virtual in the identity map) and which slots are taken
/// (with the length shared through each).
struct Pool {
    base: u64,
    taken: [Option<usize>; SLOTS],
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

/// The memory BARs of the device being set up: the only places the crate's transport may
/// map registers (`mmio_phys_to_virt`). Its capabilities were checked against them
/// (`svm::virtio_pci::check`); a window outside them means the host answered the crate
/// differently from the check.
static MMIO_WINDOWS: Mutex<[Option<Window>; 6]> = Mutex::new([None; 6]);

/// Let the transport map registers inside `windows` (at most six: a device's BARs).
pub fn allow_mmio(windows: impl IntoIterator<Item = Window>) {
    let mut allowed = MMIO_WINDOWS.lock();
    *allowed = [None; 6];
    for (slot, window) in allowed.iter_mut().zip(windows) {
        *slot = Some(window);
    }
}

/// Set the pool up; `false` without memory for it.
pub fn init() -> bool {
    let mut pool = POOL.lock();
    if pool.is_some() {
        return true;
    }
    let Some(pages) = Page::zeroed_run(SLOTS) else { return false };
    let base = pages.phys();
    // The pool lives as long as the SVSM.
    core::mem::forget(pages);
    *pool = Some(Pool { base, taken: [None; SLOTS] });
    true
}

/// A broken promise of this module (see the module comment): stop.
fn bug(what: &str) -> ! {
    println!("FAILED: dma: {what}");
    super::exit::failure()
}

/// The `Hal` of the SVSM's virtio devices: identity-mapped pages, bounce buffers.
pub struct BounceHal;

// SAFETY: `dma_alloc` returns fresh zeroed page-aligned pages of the SVSM's heap, reachable
// at their physical address through the identity map and owned by the caller until
// `dma_dealloc`; `mmio_phys_to_virt` maps only inside the memory BARs the caller checked
// (`allow_mmio`: in the identity-mapped first 4 GiB, neither RAM nor the SVSM's own
// memory) and stops the SVSM for anything else; `share` hands out pool slots no one else holds and copies
// in and out only within the caller's buffer and the slot.
unsafe impl Hal for BounceHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // Virtqueues, allocated once when a device is set up at boot.
        let Some(run) = Page::zeroed_run(pages) else { bug("no memory for a virtqueue") };
        let phys = run.phys();
        core::mem::forget(run);
        match NonNull::new(phys as *mut u8) {
            Some(ptr) => (phys, ptr),
            None => bug("a null page"),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        // The SVSM's devices live as long as it does; a queue freed during a failed setup
        // stays allocated (a few pages, once).
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // An empty slot is a window of no bytes, which holds no register.
        let windows = MMIO_WINDOWS.lock().map(|w| w.unwrap_or(Window { start: 0, len: 0 }));
        if size == 0 || !inside_any(&windows, paddr, size as u64) {
            bug("a device register window outside the BARs its capabilities were checked against");
        }
        match NonNull::new(paddr as *mut u8) {
            Some(ptr) => ptr,
            None => bug("a BAR at address 0"),
        }
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let len = buffer.len();
        if len > SLOT_BYTES {
            bug("a buffer larger than a bounce page");
        }
        let mut pool = POOL.lock();
        let Some(pool) = pool.as_mut() else { bug("the pool was not set up") };
        let Some((slot, entry)) = pool.taken.iter_mut().enumerate().find(|(_, e)| e.is_none()) else {
            bug("every bounce page is taken")
        };
        *entry = Some(len);
        let phys = pool.base + (slot * SLOT_BYTES) as u64;
        let bounce = phys as *mut u8;
        // SAFETY: the slot is a pool page no one else holds (taken above); the caller's
        // buffer is valid for `len` bytes and not otherwise accessed during the call.
        unsafe {
            core::ptr::write_bytes(bounce, 0, SLOT_BYTES);
            if !matches!(direction, BufferDirection::DeviceToDriver) {
                core::ptr::copy_nonoverlapping(buffer.as_ptr().cast::<u8>(), bounce, len);
            }
        }
        phys
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let mut pool = POOL.lock();
        let Some(pool) = pool.as_mut() else { bug("the pool was not set up") };
        let slot = usize::try_from(paddr.wrapping_sub(pool.base) / SLOT_BYTES as u64).unwrap_or(usize::MAX);
        let Some(Some(len)) = pool.taken.get(slot).copied() else { bug("an unshare of a slot not shared") };
        if len != buffer.len() || paddr != pool.base + (slot * SLOT_BYTES) as u64 {
            bug("an unshare that does not match its share");
        }
        if !matches!(direction, BufferDirection::DriverToDevice) {
            // SAFETY: the slot holds `len` bytes the device wrote; the caller's buffer is
            // valid for `len` bytes and not otherwise accessed during the call.
            unsafe { core::ptr::copy_nonoverlapping(paddr as *const u8, buffer.as_ptr().cast::<u8>(), len) };
        }
        if let Some(entry) = pool.taken.get_mut(slot) {
            *entry = None;
        }
    }
}
