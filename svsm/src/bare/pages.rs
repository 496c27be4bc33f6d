//! Whole 4 KiB pages from the heap, zeroed, with their physical address (the SVSM runs
//! identity-mapped, so virtual = physical). Used for VMCBs, page tables and the SVM host
//! save area, which the hardware reads by physical address.
#![expect(unsafe_code, reason = "page tables and the pages the SVSM owns")]

use alloc::alloc::{Layout, alloc_zeroed, dealloc};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

const PAGE: usize = 4096;

/// The bit a page-table entry (or CR3) sets to name private memory: the C-bit under
/// SEV-SNP, none on the svm platform. Every page the SVSM maps for itself or its
/// processes is private; only the snp platform's alias map is not.
static PRIVATE_BIT: AtomicU64 = AtomicU64::new(0);

/// Page-table entries and CR3 values made from now on name private memory with the
/// C-bit at `c_bit` (the snp boot, once, before any CPU builds its own tables).
pub fn set_c_bit(c_bit: u8) {
    PRIVATE_BIT.store(1u64.checked_shl(u32::from(c_bit)).unwrap_or(0), Ordering::Release);
}

/// `phys` as a page-table entry's or CR3's address of private memory (with the C-bit
/// where there is one).
pub fn private(phys: u64) -> u64 {
    phys | PRIVATE_BIT.load(Ordering::Acquire)
}

/// An owned, zeroed, page-aligned 4 KiB page (or a physically contiguous run of them).
pub struct Page {
    ptr: NonNull<[u64; 512]>,
    count: usize,
}

fn layout(count: usize) -> Option<Layout> {
    Layout::from_size_align(PAGE.checked_mul(count.max(1))?, PAGE).ok()
}

// SAFETY: a Page owns its allocation exclusively, like a Box; moving it to another CPU
// moves that ownership. (The hardware reads some pages by physical address, e.g. a VMCB
// during VMRUN, but only on the CPU that holds the Page at that time.)
unsafe impl Send for Page {}

// SAFETY: through `&Page` only the page's address and a shared view of its bytes are
// reachable (`phys`, `run_bytes`), as through `&Box<[u8]>`; changing it needs `&mut`.
unsafe impl Sync for Page {}

impl Page {
    pub fn zeroed() -> Option<Self> {
        Self::zeroed_run(1)
    }

    /// `count` contiguous zeroed pages (e.g. the 8 KiB MSR permission map).
    pub fn zeroed_run(count: usize) -> Option<Self> {
        let layout = layout(count)?;
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        NonNull::new(raw.cast()).map(|ptr| Self { ptr, count: count.max(1) })
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

    /// All bytes of a run of pages.
    pub fn run_bytes(&self) -> &[u8] {
        // SAFETY: the run is `count` pages of initialized bytes owned by `self`.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>(), self.count * PAGE) }
    }

    /// All bytes of a run of pages, for a change.
    pub fn run_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the run is `count` pages of initialized bytes owned by `self`;
        // exclusive through `&mut self`.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<u8>(), self.count * PAGE) }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        if let Some(layout) = layout(self.count) {
            // SAFETY: allocated in `zeroed_run` with this layout and not freed before.
            unsafe { dealloc(self.ptr.as_ptr().cast(), layout) };
        }
    }
}
