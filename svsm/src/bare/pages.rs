//! Whole 4 KiB pages from the heap, zeroed, with their physical address (the SVSM runs
//! identity-mapped, so virtual = physical). Used for VMCBs, page tables and the SVM host
//! save area, which the hardware reads by physical address.

use alloc::alloc::{Layout, alloc_zeroed, dealloc};
use core::ptr::NonNull;

const PAGE: usize = 4096;

/// An owned, zeroed, page-aligned 4 KiB page.
pub struct Page {
    ptr: NonNull<[u64; 512]>,
}

fn layout() -> Layout {
    // 4096 is a valid power-of-two alignment and size.
    Layout::from_size_align(PAGE, PAGE).unwrap_or(Layout::new::<[u64; 512]>())
}

impl Page {
    pub fn zeroed() -> Option<Self> {
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout()) };
        NonNull::new(raw.cast()).map(|ptr| Self { ptr })
    }

    /// Physical address (= virtual in the SVSM's identity map).
    pub fn phys(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    pub fn words_mut(&mut self) -> &mut [u64; 512] {
        // SAFETY: the page is owned by `self`, initialized (zeroed) and aligned;
        // `&mut self` makes the access exclusive.
        unsafe { self.ptr.as_mut() }
    }

    pub fn bytes(&self) -> &[u8; PAGE] {
        // SAFETY: the page is 4096 initialized bytes owned by `self`; u8 has no alignment.
        unsafe { &*self.ptr.as_ptr().cast::<[u8; PAGE]>() }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8; PAGE] {
        // SAFETY: as in `bytes`, exclusive through `&mut self`.
        unsafe { &mut *self.ptr.as_ptr().cast::<[u8; PAGE]>() }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with the same layout and not freed before.
        unsafe { dealloc(self.ptr.as_ptr().cast(), layout()) };
    }
}
