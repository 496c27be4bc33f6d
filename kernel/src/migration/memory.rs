//! Guest memory as a migration moves it (docs/migration.md "Guest memory").

use super::{Out, ServiceStateError};
use crate::addr::{PageAddr, PageRange, PageSize};
use crate::pages::{Held, PageRole, PageTracker};
use crate::platform::{HwError, Platform};
use crate::svsm::Svsm;
use abi::hw::rc::FAIL_SIZEMISMATCH;
use alloc::vec::Vec;

/// Guest memory moves in chunks: `"BWMM" | u32 count | count * (u64 gpa | u8 flags |
/// u8 perms of VMPL1, VMPL2, VMPL3 | 4096 bytes)`, every page one the guest validated,
/// with the RMP permissions its lower VMPLs hold and its bytes; a page the guest gave up
/// since an earlier round has the permissions `FF FF FF`. Flag bit 0 ([`IN_HUGE_ENTRY`]):
/// the page lies in a 2 MiB RMP entry the guest validated whole; other bits are zero.
/// Pages the SVSM gave a role (VMSAs, calling areas, deposited pages) are not in it:
/// they are the SVSM's, and move with the vCPUs.
const MEMORY_MAGIC: &[u8; 4] = b"BWMM";
const PAGE_BYTES: usize = 4096;
const PAGE_RECORD: usize = 8 + 1 + 3 + PAGE_BYTES;
/// The flag of a page in a 2 MiB entry.
const IN_HUGE_ENTRY: u8 = 1;
/// The permissions field of a page the guest no longer has validated (no RMPADJUST value
/// has bits above `PERM_ALL`): the destination invalidates it.
const INVALIDATED: [u8; 3] = [0xFF; 3];
/// The largest chunk [`Svsm::export_memory`] makes and [`Svsm::import_memory`] takes.
pub const MAX_CHUNK_PAGES: usize = 128;

/// What importing guest memory refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryImportError {
    /// Not a memory chunk: bad magic, a cut record, trailing bytes, too many pages.
    Malformed,
    /// A page that is not the guest's RAM, or that the SVSM holds (its own region, a VMSA,
    /// a calling area): the source named it, the destination does not give it to the guest.
    NotGuestMemory { gpa: u64 },
    /// A permission value RMPADJUST does not take.
    BadPermissions { gpa: u64 },
    /// The platform refused to validate or set up the page (a 2 MiB RMP entry, say).
    Platform { gpa: u64 },
    /// No room to record the page as validated.
    NoRoom,
}

/// One page's record: its address, its lower VMPLs' permissions and its bytes.
fn page_record<P: Platform + ?Sized>(
    svsm: &Svsm,
    p: &P,
    out: &mut Out,
    addr: PageAddr,
    page: &mut [u8; PAGE_BYTES],
) -> Result<(), ServiceStateError> {
    let mut perms = [0u8; 3];
    // While dirty tracking holds the guest's WRITE back, the destination gets it anyway.
    let withheld = svsm.write_withheld(addr.pfn()).then_some(svsm.guest_vmpl);
    for (vmpl, perm) in (1u8..=3).zip(perms.iter_mut()) {
        *perm = p.vmpl_permissions(addr, vmpl).ok_or(ServiceStateError::Platform)?;
        if withheld == Some(vmpl) {
            *perm |= abi::hw::rmpadjust::PERM_WRITE;
        }
    }
    p.read(addr.gpa(), page).map_err(|_| ServiceStateError::Platform)?;
    let flags = if svsm.in_huge_entry(addr.pfn()) { IN_HUGE_ENTRY } else { 0 };
    out.bytes(&addr.raw().to_be_bytes())?.bytes(&[flags])?.bytes(&perms)?.bytes(page)?;
    Ok(())
}

/// A chunk's page count, written into its header.
fn finish_chunk(mut out: Out, count: usize, next: Option<u64>) -> Result<(Vec<u8>, Option<u64>), ServiceStateError> {
    let count = u32::try_from(count).map_err(|_| ServiceStateError::TooLarge)?;
    let field = out.0.get_mut(4..8).ok_or(ServiceStateError::Malformed)?;
    field.copy_from_slice(&count.to_be_bytes());
    Ok((out.0, next))
}

impl Svsm {
    /// The next chunk of guest memory: validated guest pages from `from_pfn` on, at most
    /// [`MAX_CHUNK_PAGES`] of them; with the pfn to go on from (`None`: all sent). The
    /// guest must be stopped (a migration's last round), or the bytes may tear.
    pub fn export_memory<P: Platform + ?Sized>(
        &self,
        p: &P,
        from_pfn: u64,
    ) -> Result<(Vec<u8>, Option<u64>), ServiceStateError> {
        self.export_memory_up_to(p, from_pfn, MAX_CHUNK_PAGES)
    }

    /// [`Svsm::export_memory`] with at most `max_pages` pages in the chunk (a small heap
    /// sends smaller chunks; at least one page, at most [`MAX_CHUNK_PAGES`]).
    pub fn export_memory_up_to<P: Platform + ?Sized>(
        &self,
        p: &P,
        from_pfn: u64,
        max_pages: usize,
    ) -> Result<(Vec<u8>, Option<u64>), ServiceStateError> {
        let max_pages = max_pages.clamp(1, MAX_CHUNK_PAGES);
        let mut out = Out(Vec::new());
        out.bytes(MEMORY_MAGIC)?.u32(0)?;
        let mut count = 0usize;
        let mut page = [0u8; PAGE_BYTES];
        for range in self.pages.ram() {
            for pfn in range.start_pfn().max(from_pfn)..range.end_pfn() {
                if count == max_pages {
                    return finish_chunk(out, count, Some(pfn));
                }
                let addr = PageAddr::from_pfn(pfn);
                let Some(one) = PageRange::new(addr, 1) else { continue };
                if !self.pages.is_validated(addr) || self.pages.check_target(one).is_err() {
                    continue;
                }
                page_record(self, p, &mut out, addr, &mut page)?;
                count += 1;
            }
        }
        finish_chunk(out, count, None)
    }

    /// A chunk of the pages `pfns` (at most [`MAX_CHUNK_PAGES`]; a pre-copy round's dirty
    /// pages, see [`DirtyLog`]). Each must still be a validated guest page the SVSM holds
    /// nothing on; one that no longer is (the guest gave it back) is left out.
    pub fn export_pages<P: Platform + ?Sized>(&self, p: &P, pfns: &[u64]) -> Result<Vec<u8>, ServiceStateError> {
        if pfns.len() > MAX_CHUNK_PAGES {
            return Err(ServiceStateError::TooLarge);
        }
        let mut out = Out(Vec::new());
        out.bytes(MEMORY_MAGIC)?.u32(0)?;
        let mut page = [0u8; PAGE_BYTES];
        let mut count = 0;
        for &pfn in pfns {
            let addr = PageAddr::from_pfn(pfn);
            let Some(one) = PageRange::new(addr, 1) else { continue };
            if self.pages.check_target(one).is_err() {
                // The SVSM's now (deposited, a VMSA) or a calling area: not sent here.
                continue;
            }
            if self.pages.is_validated(addr) {
                page_record(self, p, &mut out, addr, &mut page)?;
            } else {
                // The guest gave it up since an earlier round sent it. A page of a 2 MiB
                // entry says so only when none of the entry is left (the guest gave it up
                // whole); one left means the host split the entry, and what moved as one
                // entry cannot be given up in part.
                let flags = match svsm_entry(self, addr) {
                    Some(entry) if self.pages.any_validated(entry) => return Err(ServiceStateError::Platform),
                    Some(_) => IN_HUGE_ENTRY,
                    None => 0,
                };
                out.bytes(&addr.raw().to_be_bytes())?.bytes(&[flags])?.bytes(&INVALIDATED)?.bytes(&[0; PAGE_BYTES])?;
            }
            count += 1;
        }
        finish_chunk(out, count, None).map(|(chunk, _)| chunk)
    }

    /// Apply a chunk of guest memory on the destination: each page validated for the
    /// guest (PVALIDATE, then recorded), its lower VMPLs given the permissions the source's
    /// had (RMPADJUST), and its bytes written. Every record is checked before any page
    /// changes; the number of pages applied.
    pub fn import_memory<P: Platform + ?Sized>(&self, p: &mut P, chunk: &[u8]) -> Result<u64, MemoryImportError> {
        let body = chunk.strip_prefix(&MEMORY_MAGIC[..]).ok_or(MemoryImportError::Malformed)?;
        let (count, records) = body.split_first_chunk::<4>().ok_or(MemoryImportError::Malformed)?;
        let count = usize::try_from(u32::from_be_bytes(*count)).map_err(|_| MemoryImportError::Malformed)?;
        if count > MAX_CHUNK_PAGES
            || records.len() != count.checked_mul(PAGE_RECORD).ok_or(MemoryImportError::Malformed)?
        {
            return Err(MemoryImportError::Malformed);
        }
        let parse = |record: &[u8]| -> Result<(PageAddr, bool, [u8; 3]), MemoryImportError> {
            let (gpa, rest) = record.split_first_chunk::<8>().ok_or(MemoryImportError::Malformed)?;
            let gpa = u64::from_be_bytes(*gpa);
            let (flags, rest) = rest.split_first().ok_or(MemoryImportError::Malformed)?;
            if flags & !IN_HUGE_ENTRY != 0 {
                return Err(MemoryImportError::Malformed);
            }
            let (perms, _) = rest.split_first_chunk::<3>().ok_or(MemoryImportError::Malformed)?;
            let addr = PageAddr::new(gpa).ok_or(MemoryImportError::Malformed)?;
            let one = match flags & IN_HUGE_ENTRY != 0 {
                true => PageRange::huge_page_around(addr),
                false => PageRange::new(addr, 1),
            };
            let one = one.ok_or(MemoryImportError::Malformed)?;
            // A calling area stays the guest's memory: the destination's startup vCPU has
            // one from its launch, where the source's guest may have other data.
            if !self.importable(one) {
                return Err(MemoryImportError::NotGuestMemory { gpa });
            }
            if *perms != INVALIDATED && perms.iter().any(|perm| *perm & !abi::hw::rmpadjust::PERM_ALL != 0) {
                return Err(MemoryImportError::BadPermissions { gpa });
            }
            Ok((addr, flags & IN_HUGE_ENTRY != 0, *perms))
        };
        for record in records.chunks_exact(PAGE_RECORD) {
            parse(record)?;
        }
        let mut took_back = false;
        let applied = records.chunks_exact(PAGE_RECORD).try_for_each(|record| {
            let (addr, huge, perms) = parse(record)?;
            let content = record.get(12..).ok_or(MemoryImportError::Malformed)?;
            if perms == INVALIDATED {
                took_back = true;
                return self.take_page_back(p, addr, huge);
            }
            if huge {
                self.give_huge_entry_page(p, addr, perms, content)
            } else {
                self.give_page(p, addr, perms, content)
            }
        });
        // A page taken back must be out of reach of translations a guest CPU cached.
        if took_back {
            p.flush_guest_tlb();
        }
        applied.map(|()| count as u64)
    }

    /// May an imported page be given to the guest here: RAM the SVSM holds nothing on but
    /// perhaps a calling area (which stays guest memory)?
    pub(super) fn importable(&self, one: PageRange) -> bool {
        importable(&self.pages, &mut self.pages.unlocked(), one)
    }

    /// `page`'s stripe held, and the page checked importable under it.
    fn hold_importable(&self, page: PageAddr) -> Result<(PageRange, Held<'_>), MemoryImportError> {
        let gpa = page.raw();
        let one = PageRange::new(page, 1).ok_or(MemoryImportError::NotGuestMemory { gpa })?;
        let mut held = self.pages.lock(page, page);
        if !importable(&self.pages, &mut held, one) {
            return Err(MemoryImportError::NotGuestMemory { gpa });
        }
        Ok((one, held))
    }

    /// The guest gave `page` up on the source: here too, its lower VMPLs lose it and it
    /// is invalidated (if it is validated). Under the page's lock, checked again there.
    /// A page this side holds in a 2 MiB entry (the 4 KiB RMPADJUST answers
    /// FAIL_SIZEMISMATCH) takes its whole entry back, but only when the source said the
    /// whole entry was given up (`whole`); else the stream is refused.
    fn take_page_back<P: Platform + ?Sized>(
        &self,
        p: &mut P,
        page: PageAddr,
        whole: bool,
    ) -> Result<(), MemoryImportError> {
        let gpa = page.raw();
        let (one, mut held) = self.hold_importable(page)?;
        if !held.is_validated(page) {
            return Ok(());
        }
        let none = abi::hw::rmpadjust::PERM_NONE;
        let (at, size, range) = match p.rmpadjust(page, PageSize::Size4K, 1, none, false) {
            Err(HwError::Rc(FAIL_SIZEMISMATCH)) if whole => {
                let entry = PageRange::huge_page_around(page).ok_or(MemoryImportError::Platform { gpa })?;
                let base = entry.start();
                if !self.pages.is_ram(entry) || held.check_target(entry).is_err() || held.check_unmapped(entry).is_err()
                {
                    return Err(MemoryImportError::NotGuestMemory { gpa });
                }
                (base, PageSize::Size2M, entry)
            }
            Err(_) => return Err(MemoryImportError::Platform { gpa }),
            Ok(()) => (page, PageSize::Size4K, one),
        };
        held.prepare_validation(range).map_err(|_| MemoryImportError::NoRoom)?;
        for vmpl in 1..=3 {
            p.rmpadjust(at, size, vmpl, none, false).map_err(|_| MemoryImportError::Platform { gpa })?;
        }
        p.pvalidate(at, size, false).map_err(|_| MemoryImportError::Platform { gpa })?;
        held.set_validated(range, false);
        Ok(())
    }

    /// Give `page`, of a 2 MiB entry the source's guest validated whole, to the guest: the
    /// entry is validated whole here too (PVALIDATE 2 MiB, zeroed, recorded) when its
    /// first page arrives, its lower VMPLs get the source's permissions (one RMPADJUST
    /// for the entry), and the page gets its bytes. The whole entry must be guest RAM the
    /// SVSM holds nothing on; a destination whose RMP has 4 KiB pages there refuses.
    fn give_huge_entry_page<P: Platform + ?Sized>(
        &self,
        p: &mut P,
        page: PageAddr,
        perms: [u8; 3],
        content: &[u8],
    ) -> Result<(), MemoryImportError> {
        let gpa = page.raw();
        let entry = PageRange::huge_page_around(page).ok_or(MemoryImportError::Platform { gpa })?;
        let base = entry.start();
        let mut held = self.pages.lock(base, base);
        // Strictly the guest's, every page: no calling area either (a 4 KiB page's
        // exemption, which a 2 MiB entry cannot have apart from its other pages).
        if !self.pages.is_ram(entry) || held.check_target(entry).is_err() || held.check_unmapped(entry).is_err() {
            return Err(MemoryImportError::NotGuestMemory { gpa });
        }
        if !held.any_validated(entry) {
            held.prepare_validation(entry).map_err(|_| MemoryImportError::NoRoom)?;
            p.pvalidate(base, PageSize::Size2M, true).map_err(|_| MemoryImportError::Platform { gpa })?;
            held.set_validated(entry, true);
            // The host's bytes in the pages that have not arrived yet never reach the guest.
            p.zero_pages(entry).map_err(|_| MemoryImportError::Platform { gpa })?;
        } else {
            // Validated here already: it must be this entry, whole, as one 2 MiB RMP entry
            // (a 4 KiB RMPADJUST to the permissions it has changes nothing and is refused
            // there); pages validated one by one are not it.
            let same = p.vmpl_permissions(page, 1).ok_or(MemoryImportError::Platform { gpa })?;
            let one_entry = held.first_unvalidated(entry).is_none()
                && p.rmpadjust(page, PageSize::Size4K, 1, same, false) == Err(HwError::Rc(FAIL_SIZEMISMATCH));
            if !one_entry {
                return Err(MemoryImportError::Platform { gpa });
            }
        }
        // The entry's permissions are one set: changed once, not again for each of its
        // pages (a 2 MiB RMPADJUST is 512 nested page table entries on svm).
        for (vmpl, perm) in (1u8..=3).zip(perms) {
            if p.vmpl_permissions(base, vmpl) != Some(perm) {
                p.rmpadjust(base, PageSize::Size2M, vmpl, perm, false)
                    .map_err(|_| MemoryImportError::Platform { gpa })?;
            }
        }
        p.write(page.gpa(), content).map_err(|_| MemoryImportError::Platform { gpa })?;
        Ok(())
    }

    /// Give `page` to the guest as the source had it: validated (recorded as such), its
    /// lower VMPLs' permissions, its bytes. Under the page's lock, checked again there.
    pub(super) fn give_page<P: Platform + ?Sized>(
        &self,
        p: &mut P,
        page: PageAddr,
        perms: [u8; 3],
        content: &[u8],
    ) -> Result<(), MemoryImportError> {
        let gpa = page.raw();
        let (one, mut held) = self.hold_importable(page)?;
        if !held.is_validated(page) {
            held.prepare_validation(one).map_err(|_| MemoryImportError::NoRoom)?;
            p.pvalidate(page, PageSize::Size4K, true).map_err(|_| MemoryImportError::Platform { gpa })?;
            held.set_validated(one, true);
        }
        for (vmpl, perm) in (1u8..=3).zip(perms) {
            p.rmpadjust(page, PageSize::Size4K, vmpl, perm, false).map_err(|_| MemoryImportError::Platform { gpa })?;
        }
        p.write(page.gpa(), content).map_err(|_| MemoryImportError::Platform { gpa })?;
        Ok(())
    }
}

/// The 2 MiB entry `page` lies in, if dirty tracking found one there.
fn svsm_entry(svsm: &Svsm, page: PageAddr) -> Option<PageRange> {
    svsm.in_huge_entry(page.pfn()).then(|| PageRange::huge_page_around(page)).flatten()
}

/// [`Svsm::importable`] with the page's stripe as `held` has it. A page a service process
/// maps here is not (docs/syscalls.md "OPEN_PHYSMEM": nothing changes its state while
/// mapped; no process maps guest memory while a migration arrives).
fn importable(pages: &PageTracker, held: &mut Held<'_>, one: PageRange) -> bool {
    pages.is_ram(one)
        && (held.check_target(one).is_ok() || matches!(held.role(one.start()), Some(PageRole::CallingArea(_))))
        && held.check_unmapped(one).is_ok()
}
