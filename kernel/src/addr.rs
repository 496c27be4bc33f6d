//! Guest-physical address types. A guest-supplied address becomes one of these through a
//! single checking constructor, so code that holds a [`PageAddr`] knows it is 4 KiB
//! aligned and code that holds a [`PageRange`] knows its end did not overflow.

use abi::{PAGE_SIZE, PAGE_SIZE_2M};

/// Any guest-physical address, as the guest wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gpa(pub u64);

impl Gpa {
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0.is_multiple_of(align)
    }
    pub const fn page(self) -> PageAddr {
        PageAddr(self.0 & !(PAGE_SIZE - 1))
    }
    pub const fn page_offset(self) -> u64 {
        self.0 & (PAGE_SIZE - 1)
    }
    pub fn checked_add(self, n: u64) -> Option<Gpa> {
        self.0.checked_add(n).map(Gpa)
    }
}

/// A 4 KiB aligned guest-physical page address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageAddr(u64);

impl PageAddr {
    /// The only constructor from an arbitrary value: `None` unless 4 KiB aligned.
    pub const fn new(gpa: u64) -> Option<Self> {
        if gpa.is_multiple_of(PAGE_SIZE) { Some(Self(gpa)) } else { None }
    }
    pub const fn from_pfn(pfn: u64) -> Self {
        Self(pfn << 12)
    }
    pub const fn gpa(self) -> Gpa {
        Gpa(self.0)
    }
    pub const fn raw(self) -> u64 {
        self.0
    }
    pub const fn pfn(self) -> u64 {
        self.0 >> 12
    }
    pub fn checked_add_pages(self, n: u64) -> Option<Self> {
        n.checked_mul(PAGE_SIZE).and_then(|b| self.0.checked_add(b)).map(Self)
    }
}

/// Size of a page operated on by PVALIDATE, RMPADJUST or a deposit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageSize {
    Size4K,
    Size2M,
}

impl PageSize {
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4K => PAGE_SIZE,
            Self::Size2M => PAGE_SIZE_2M,
        }
    }
    pub const fn pages(self) -> u64 {
        self.bytes() / PAGE_SIZE
    }
}

/// A non-empty range of whole 4 KiB pages `[start, start + count pages)` whose end does
/// not overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageRange {
    start: PageAddr,
    pages: u64,
}

impl PageRange {
    pub fn new(start: PageAddr, pages: u64) -> Option<Self> {
        if pages == 0 {
            return None;
        }
        start.checked_add_pages(pages)?;
        Some(Self { start, pages })
    }
    /// The pages `[start, end)`; `None` if empty.
    pub fn from_pfns(start: u64, end: u64) -> Option<Self> {
        Self::new(PageAddr::from_pfn(start), end.checked_sub(start)?)
    }
    /// The page range of a huge or small page starting at `start`; `None` if `start` is
    /// not aligned to the size.
    pub fn of_page(start: PageAddr, size: PageSize) -> Option<Self> {
        if !start.gpa().is_aligned(size.bytes()) {
            return None;
        }
        Self::new(start, size.pages())
    }
    /// The 2 MiB page `page` lies in.
    pub fn huge_page_around(page: PageAddr) -> Option<Self> {
        let pages = PageSize::Size2M.pages();
        Self::new(PageAddr::from_pfn(page.pfn() / pages * pages), pages)
    }
    /// Pages touched by the byte range `[gpa, gpa + len)`, `len > 0`.
    pub fn covering(gpa: Gpa, len: u64) -> Option<Self> {
        let last = gpa.0.checked_add(len.checked_sub(1)?)?;
        let first = gpa.page();
        Self::new(first, (last >> 12) - first.pfn() + 1)
    }
    pub const fn start(self) -> PageAddr {
        self.start
    }
    pub const fn pages(self) -> u64 {
        self.pages
    }
    pub const fn start_pfn(self) -> u64 {
        self.start.pfn()
    }
    /// One past the last pfn.
    pub const fn end_pfn(self) -> u64 {
        self.start.pfn() + self.pages
    }
    pub const fn contains_pfn(self, pfn: u64) -> bool {
        pfn >= self.start_pfn() && pfn < self.end_pfn()
    }
    pub const fn overlaps(self, other: PageRange) -> bool {
        self.start_pfn() < other.end_pfn() && other.start_pfn() < self.end_pfn()
    }
    pub fn iter(self) -> impl Iterator<Item = PageAddr> {
        (self.start_pfn()..self.end_pfn()).map(PageAddr::from_pfn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_huge_page_around_a_page_is_its_aligned_2mib() {
        let r = PageRange::huge_page_around(PageAddr::new(0x20_1000).unwrap()).unwrap();
        assert_eq!((r.start().raw(), r.pages()), (0x20_0000, 512));
        let r = PageRange::huge_page_around(PageAddr::new(0x3F_F000).unwrap()).unwrap();
        assert_eq!(r.start().raw(), 0x20_0000);
    }

    #[test]
    fn page_addr_rejects_misaligned() {
        assert!(PageAddr::new(0x1000).is_some());
        assert!(PageAddr::new(0x1008).is_none());
    }

    #[test]
    fn covering_counts_touched_pages() {
        let r = PageRange::covering(Gpa(0xFF8), 16).unwrap();
        assert_eq!((r.start_pfn(), r.pages()), (0, 2));
        let r = PageRange::covering(Gpa(0x1000), 4096).unwrap();
        assert_eq!((r.start_pfn(), r.pages()), (1, 1));
        assert!(PageRange::covering(Gpa(u64::MAX - 2), 8).is_none());
        assert!(PageRange::covering(Gpa(0), 0).is_none());
    }

    #[test]
    fn huge_page_needs_2m_alignment() {
        assert!(PageRange::of_page(PageAddr::new(0x20_0000).unwrap(), PageSize::Size2M).is_some());
        assert!(PageRange::of_page(PageAddr::new(0x20_1000).unwrap(), PageSize::Size2M).is_none());
        assert!(PageRange::of_page(PageAddr::new(0xFFFF_FFFF_FFE0_0000).unwrap(), PageSize::Size2M).is_none());
    }
}
