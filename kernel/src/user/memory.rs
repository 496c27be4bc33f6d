//! A process's address space: which user pages are mapped with which access (the
//! kernel's record, and the one place a user pointer is checked), over the seam that
//! makes page-table entries and frames ([`AddressSpace`]: the bare-metal page tables, or
//! the model's hosted process).
//!
//! Layout (docs/syscalls.md "Address space"): user addresses are the lower half below
//! [`USER_TOP`] from [`USER_BOTTOM`] (below it, the kernel's identity map: a null or
//! small pointer faults); MMAP without
//! FIXED places a mapping in [`MMAP_BASE`, `USER_TOP`) and leaves at least one unmapped
//! page on each side, so a stack or buffer that overruns faults instead of reaching its
//! neighbour. A mapping is never both writable and executable.

use abi::PAGE_SIZE;
use abi::syscall::{SysError, map};
use alloc::vec::Vec;

/// First address above the user half (COCONUT's USER_MEM_END).
pub const USER_TOP: u64 = 0x0000_8000_0000_0000;
/// Lowest address a process may map: the first 512 GiB (PML4 slot 0) are the kernel's
/// identity map, supervisor-only, in every address space.
pub const USER_BOTTOM: u64 = 0x80_0000_0000;
/// Where MMAP looks for room when the process names no address.
pub const MMAP_BASE: u64 = 0x1000_0000_0000;

/// Page permissions of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prot {
    pub write: bool,
    pub exec: bool,
}

/// The hardware side of a process's address space.
pub trait AddressSpace {
    /// Map `pages` zeroed pages at `va` (page aligned, unmapped, in the user half) with
    /// `prot`; all or nothing.
    fn map_zeroed(&mut self, va: u64, pages: u64, prot: Prot) -> Result<(), SysError>;
    /// Map `bytes` (whole pages of the SVSM's own image: page aligned, a multiple of the
    /// page size, never written) at `va`, not writable; without a copy where the
    /// platform can (the bare-metal page tables point at the image's own pages). The
    /// default copies.
    fn share(&mut self, va: u64, bytes: &'static [u8], prot: Prot) -> Result<(), SysError> {
        let pages = (bytes.len() as u64).div_ceil(PAGE_SIZE);
        self.map_zeroed(va, pages, prot)?;
        self.fill(va, bytes)
    }
    /// Map the guest's pages `[gpa, gpa + pages * 4 KiB)` at `va` (page aligned,
    /// unmapped, in the user half) with `prot`, never executable; all or nothing. The
    /// kernel has checked the pages and holds them for the mapping
    /// (`PageTracker::map_for_service`).
    fn map_guest(&mut self, va: u64, gpa: u64, pages: u64, prot: Prot) -> Result<(), SysError>;
    /// Unmap pages mapped before (freeing their frames; guest pages are only unmapped).
    fn unmap(&mut self, va: u64, pages: u64);
    /// Fill pages the kernel has just mapped for the process (a module's segments),
    /// whatever their protection.
    fn fill(&mut self, va: u64, data: &[u8]) -> Result<(), SysError>;
    /// Copy out of user memory the kernel checked as mapped.
    fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), SysError>;
    /// Copy into user memory the kernel checked as mapped writable.
    fn write(&mut self, va: u64, data: &[u8]) -> Result<(), SysError>;
    /// Pages of the SVSM's memory the mappings' own structures take (page tables): the
    /// process's page quota counts them, or mappings scattered over the address space
    /// would take the SVSM's heap for tables no quota charged. 0 where there are none.
    fn table_pages(&self) -> u64 {
        0
    }
}

/// Most mappings one process may have (each MMAP is one; an MUNMAP in the middle of
/// one makes two): the record is bounded and never grows the heap past it.
pub const MAX_MAPPINGS: usize = 128;

/// The mappings of one process, sorted by first address, never overlapping.
#[derive(Debug, Default)]
pub struct Mappings {
    sorted: Vec<(u64, Mapping)>,
    pages: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub pages: u64,
    pub prot: Prot,
    /// The guest-physical address of the first page, for guest memory (OPEN_PHYSMEM).
    pub guest: Option<u64>,
}

impl Mapping {
    fn end(&self, start: u64) -> u64 {
        start.saturating_add(self.pages.saturating_mul(PAGE_SIZE))
    }

    /// The part of the mapping from `start` that begins `skip` pages later (the guest
    /// address moves along with it).
    fn tail(&self, skip: u64, pages: u64) -> Self {
        let guest = self.guest.map(|gpa| gpa.saturating_add(skip.saturating_mul(PAGE_SIZE)));
        Self { pages, prot: self.prot, guest }
    }
}

/// Guest pages `[gpa, gpa + pages * 4 KiB)` an unmap took out of a process.
pub type Released<'a> = &'a mut dyn FnMut(u64, u64);

/// Pages in `len` bytes, rounded up; `None` for 0 or a length past the user half.
pub fn pages_in(len: u64) -> Option<u64> {
    (len != 0 && len <= USER_TOP).then(|| len.div_ceil(PAGE_SIZE))
}

/// `[va, va + pages)` as a byte range inside the user half, page aligned.
fn user_range(va: u64, pages: u64) -> Result<u64, SysError> {
    let end = pages.checked_mul(PAGE_SIZE).and_then(|b| va.checked_add(b)).ok_or(SysError::Inval)?;
    if !va.is_multiple_of(PAGE_SIZE) || va < USER_BOTTOM || end > USER_TOP || pages == 0 {
        return Err(SysError::Inval);
    }
    Ok(end)
}

impl Mappings {
    /// Pages mapped in all.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, Mapping)> + '_ {
        self.sorted.iter().copied()
    }

    /// The mapping holding `va`, with its start.
    fn at(&self, va: u64) -> Option<(u64, Mapping)> {
        let i = self.sorted.partition_point(|(s, _)| *s <= va).checked_sub(1)?;
        self.sorted.get(i).copied().filter(|(s, m)| m.end(*s) > va)
    }

    /// Is `[va, va + len)` all mapped (and writable, if `write`) memory the kernel may
    /// copy to or from for the process? Guest memory is not: the kernel never copies
    /// through a process's view of the guest (the guest changes it under the copy, and
    /// the SVSM's own calls have their own checks). Zero bytes are always.
    pub fn check(&self, va: u64, len: u64, write: bool) -> Result<(), SysError> {
        if len == 0 {
            return Ok(());
        }
        let end = va.checked_add(len).filter(|e| *e <= USER_TOP).ok_or(SysError::Fault)?;
        let mut at = va;
        while at < end {
            let (start, m) = self.at(at).ok_or(SysError::Fault)?;
            if (write && !m.prot.write) || m.guest.is_some() {
                return Err(SysError::Fault);
            }
            at = m.end(start);
        }
        Ok(())
    }

    /// Is `va` in an executable mapping?
    pub fn is_executable(&self, va: u64) -> bool {
        self.at(va).is_some_and(|(_, m)| m.prot.exec)
    }

    /// Unmap everything (a process that ends).
    pub fn clear(&mut self, space: &mut dyn AddressSpace, released: Released<'_>) {
        for (start, m) in self.sorted.drain(..) {
            space.unmap(start, m.pages);
            if let Some(gpa) = m.guest {
                released(gpa, m.pages);
            }
        }
        self.pages = 0;
    }

    /// The first mapping that shares a page with `[va, end)`.
    fn first_overlap(&self, va: u64, end: u64) -> Option<usize> {
        let i = self.sorted.partition_point(|(s, m)| m.end(*s) <= va);
        self.sorted.get(i).filter(|(s, _)| *s < end).map(|_| i)
    }

    /// The lowest address at or above [`MMAP_BASE`] where `pages` fit with a free guard
    /// page on each side.
    pub fn find_room(&self, pages: u64) -> Option<u64> {
        let bytes = pages.checked_mul(PAGE_SIZE)?;
        let mut candidate = MMAP_BASE.checked_add(PAGE_SIZE)?;
        for (start, m) in self.sorted.iter().filter(|(s, m)| m.end(*s) > MMAP_BASE) {
            if candidate.checked_add(bytes)?.checked_add(PAGE_SIZE)? <= *start {
                return Some(candidate);
            }
            candidate = candidate.max(m.end(*start).checked_add(PAGE_SIZE)?);
        }
        let end = candidate.checked_add(bytes)?;
        (end.checked_add(PAGE_SIZE)? <= USER_TOP).then_some(candidate)
    }

    /// Record and map a new mapping of `pages` at `va`.
    pub fn map(&mut self, space: &mut dyn AddressSpace, va: u64, pages: u64, prot: Prot) -> Result<(), SysError> {
        let end = user_range(va, pages)?;
        if self.first_overlap(va, end).is_some() {
            return Err(SysError::Exist);
        }
        if self.sorted.len() >= MAX_MAPPINGS || self.sorted.try_reserve(1).is_err() {
            return Err(SysError::NoMem);
        }
        space.map_zeroed(va, pages, prot)?;
        self.insert(va, Mapping { pages, prot, guest: None });
        Ok(())
    }

    /// Record and map the guest's pages from `gpa` at `va` ([`AddressSpace::map_guest`]).
    pub fn map_guest(
        &mut self,
        space: &mut dyn AddressSpace,
        va: u64,
        gpa: u64,
        pages: u64,
        prot: Prot,
    ) -> Result<(), SysError> {
        let end = user_range(va, pages)?;
        if prot.exec {
            return Err(SysError::Perm);
        }
        if self.first_overlap(va, end).is_some() {
            return Err(SysError::Exist);
        }
        if self.sorted.len() >= MAX_MAPPINGS || self.sorted.try_reserve(1).is_err() {
            return Err(SysError::NoMem);
        }
        space.map_guest(va, gpa, pages, prot)?;
        self.insert(va, Mapping { pages, prot, guest: Some(gpa) });
        Ok(())
    }

    /// Add a mapping the checks above made room for.
    fn insert(&mut self, va: u64, mapping: Mapping) {
        let at = self.sorted.partition_point(|(s, _)| *s < va);
        self.sorted.insert(at, (va, mapping));
        self.pages += mapping.pages;
    }

    /// Record and map `bytes` of the SVSM's image at `va`, read-only ([`AddressSpace::share`]).
    pub fn share(
        &mut self,
        space: &mut dyn AddressSpace,
        va: u64,
        bytes: &'static [u8],
        prot: Prot,
    ) -> Result<(), SysError> {
        let pages = (bytes.len() as u64).div_ceil(PAGE_SIZE);
        let end = user_range(va, pages)?;
        if prot.write || !(bytes.len() as u64).is_multiple_of(PAGE_SIZE) {
            return Err(SysError::Inval);
        }
        if self.first_overlap(va, end).is_some() {
            return Err(SysError::Exist);
        }
        if self.sorted.len() >= MAX_MAPPINGS || self.sorted.try_reserve(1).is_err() {
            return Err(SysError::NoMem);
        }
        space.share(va, bytes, prot)?;
        self.insert(va, Mapping { pages, prot, guest: None });
        Ok(())
    }

    /// Unmap every page of `[va, va + pages)` that is mapped, splitting mappings that
    /// reach outside it; the guest pages unmapped go to `released`.
    pub fn unmap(
        &mut self,
        space: &mut dyn AddressSpace,
        va: u64,
        pages: u64,
        released: Released<'_>,
    ) -> Result<(), SysError> {
        let end = user_range(va, pages)?;
        // A cut inside one mapping leaves two: make room first, so nothing is half done.
        if self.sorted.try_reserve(1).is_err() {
            return Err(SysError::NoMem);
        }
        if self.sorted.len() >= MAX_MAPPINGS && self.at(va).is_some_and(|(s, m)| s < va && m.end(s) > end) {
            return Err(SysError::NoMem);
        }
        while let Some(i) = self.first_overlap(va, end) {
            let (start, m) = self.sorted.remove(i);
            let m_end = m.end(start);
            let (cut_from, cut_to) = (start.max(va), m_end.min(end));
            let cut = (cut_to - cut_from) / PAGE_SIZE;
            let before = (cut_from - start) / PAGE_SIZE;
            space.unmap(cut_from, cut);
            if let Some(gpa) = m.tail(before, cut).guest {
                released(gpa, cut);
            }
            self.pages -= cut;
            let mut at = i;
            if start < cut_from {
                self.sorted.insert(at, (start, m.tail(0, before)));
                at += 1;
            }
            if cut_to < m_end {
                self.sorted.insert(at, (cut_to, m.tail((cut_to - start) / PAGE_SIZE, (m_end - cut_to) / PAGE_SIZE)));
            }
        }
        Ok(())
    }
}

/// The permissions MMAP flags ask for: unknown bits are refused, and writable plus
/// executable is refused (W^X).
pub fn prot_of(flags: u64) -> Result<Prot, SysError> {
    if flags & !map::ALL != 0 {
        return Err(SysError::Inval);
    }
    let prot = Prot { write: flags & map::WRITE != 0, exec: flags & map::EXEC != 0 };
    if prot.write && prot.exec {
        return Err(SysError::Perm);
    }
    Ok(prot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;

    /// Page tables as a set of mapped pages; refuses double maps and stray unmaps.
    #[derive(Default)]
    struct Pages(BTreeSet<u64>);

    impl AddressSpace for Pages {
        fn map_zeroed(&mut self, va: u64, pages: u64, _: Prot) -> Result<(), SysError> {
            for p in 0..pages {
                assert!(self.0.insert(va + p * PAGE_SIZE));
            }
            Ok(())
        }
        fn map_guest(&mut self, va: u64, _: u64, pages: u64, prot: Prot) -> Result<(), SysError> {
            self.map_zeroed(va, pages, prot)
        }
        fn unmap(&mut self, va: u64, pages: u64) {
            for p in 0..pages {
                assert!(self.0.remove(&(va + p * PAGE_SIZE)));
            }
        }
        fn read(&self, _: u64, _: &mut [u8]) -> Result<(), SysError> {
            Ok(())
        }
        fn fill(&mut self, _: u64, _: &[u8]) -> Result<(), SysError> {
            Ok(())
        }
        fn write(&mut self, _: u64, _: &[u8]) -> Result<(), SysError> {
            Ok(())
        }
    }

    const RW: Prot = Prot { write: true, exec: false };
    const RO: Prot = Prot { write: false, exec: false };

    #[test]
    fn room_is_found_between_mappings_with_a_guard_page_each_side() {
        let (mut m, mut s) = (Mappings::default(), Pages::default());
        let a = m.find_room(2).unwrap();
        assert_eq!(a, MMAP_BASE + PAGE_SIZE);
        m.map(&mut s, a, 2, RW).unwrap();
        // A mapping 3 pages above `a`'s end leaves a 3-page hole: 1 page fits with guards.
        m.map(&mut s, a + 5 * PAGE_SIZE, 1, RW).unwrap();
        assert_eq!(m.find_room(1), Some(a + 3 * PAGE_SIZE));
        assert_eq!(m.find_room(2), Some(a + 7 * PAGE_SIZE));
        assert_eq!(m.find_room(USER_TOP / PAGE_SIZE), None);
        assert_eq!(m.find_room(u64::MAX), None);
    }

    #[test]
    fn a_check_may_span_adjacent_mappings_but_not_a_hole_or_a_read_only_page() {
        let (mut m, mut s) = (Mappings::default(), Pages::default());
        let a = MMAP_BASE;
        m.map(&mut s, a, 1, RW).unwrap();
        m.map(&mut s, a + PAGE_SIZE, 1, RO).unwrap();
        m.map(&mut s, a + 3 * PAGE_SIZE, 1, RW).unwrap();
        assert_eq!(m.check(a + 10, 2 * PAGE_SIZE - 20, false), Ok(()));
        assert_eq!(m.check(a + 10, 2 * PAGE_SIZE - 20, true), Err(SysError::Fault));
        assert_eq!(m.check(a, 4 * PAGE_SIZE, false), Err(SysError::Fault));
        assert_eq!(m.check(a - 1, 2, false), Err(SysError::Fault));
        assert_eq!(m.check(u64::MAX, 2, false), Err(SysError::Fault));
        assert_eq!(m.check(0, 0, true), Ok(()));
    }

    /// For mappings without guest pages: nothing is ever released.
    fn none(_: u64, _: u64) {
        panic!("no guest page was mapped");
    }

    #[test]
    fn an_unmap_that_would_split_past_the_limit_changes_nothing() {
        let (mut m, mut s) = (Mappings::default(), Pages::default());
        let mut none = none;
        for i in 0..MAX_MAPPINGS as u64 {
            m.map(&mut s, MMAP_BASE + i * 8 * PAGE_SIZE, 4, RW).unwrap();
        }
        assert_eq!(m.map(&mut s, USER_BOTTOM, 1, RW), Err(SysError::NoMem));
        let before = m.pages();
        assert_eq!(m.unmap(&mut s, MMAP_BASE + PAGE_SIZE, 1, &mut none), Err(SysError::NoMem));
        assert_eq!((m.pages(), s.0.len() as u64), (before, before));
        // Cutting an end does not add a mapping, so it is allowed.
        m.unmap(&mut s, MMAP_BASE, 1, &mut none).unwrap();
        assert_eq!((m.pages(), s.0.len() as u64), (before - 1, before - 1));
        // One range across many mappings, cutting into the first and the last.
        m.unmap(&mut s, MMAP_BASE + 2 * PAGE_SIZE, 24, &mut none).unwrap();
        let left: alloc::vec::Vec<_> = m.iter().take(4).map(|(s, mp)| (s - MMAP_BASE, mp.pages)).collect();
        assert_eq!(left, [(PAGE_SIZE, 1), (26 * PAGE_SIZE, 2), (32 * PAGE_SIZE, 4), (40 * PAGE_SIZE, 4)]);
        assert_eq!(m.pages(), s.0.len() as u64);
        m.clear(&mut s, &mut none);
        assert!(s.0.is_empty() && m.pages() == 0);
    }

    #[test]
    fn guest_memory_is_never_a_copy_buffer_and_its_pieces_keep_their_guest_addresses() {
        let (mut m, mut s) = (Mappings::default(), Pages::default());
        let gpa = 0x20_0000;
        assert_eq!(m.map_guest(&mut s, MMAP_BASE, gpa, 4, Prot { write: false, exec: true }), Err(SysError::Perm));
        m.map_guest(&mut s, MMAP_BASE, gpa, 4, RW).unwrap();
        // Mapped and writable, yet no system call may use it as a buffer.
        assert_eq!(m.check(MMAP_BASE, 8, false), Err(SysError::Fault));
        assert!(!m.is_executable(MMAP_BASE));
        let mut released = alloc::vec::Vec::new();
        // The middle two pages: the pieces left are the first and the last page.
        m.unmap(&mut s, MMAP_BASE + PAGE_SIZE, 2, &mut |g, n| released.push((g, n))).unwrap();
        assert_eq!(released, [(gpa + PAGE_SIZE, 2)]);
        let left: alloc::vec::Vec<_> = m.iter().map(|(v, mp)| (v - MMAP_BASE, mp.guest)).collect();
        assert_eq!(left, [(0, Some(gpa)), (3 * PAGE_SIZE, Some(gpa + 3 * PAGE_SIZE))]);
        m.clear(&mut s, &mut |g, n| released.push((g, n)));
        assert_eq!(released, [(gpa + PAGE_SIZE, 2), (gpa, 1), (gpa + 3 * PAGE_SIZE, 1)]);
        assert!(s.0.is_empty());
    }
}
