//! A process's page tables on bare metal: the user half (PML4 slots 1..=255) of the
//! CPU's root while the process runs, built from pages of the SVSM's heap. Leaf entries
//! carry U/S, W only for writable mappings and NX for everything not executable; the
//! kernel's identity map (slot 0) and per-CPU page (slot 511) stay supervisor-only, so
//! with SMEP and SMAP on the process reaches nothing but its own pages. Every entry names
//! private memory (`pages::private`: the C-bit on SEV-SNP): the process's frames and
//! tables come from the SVSM's heap, its code from the image, and the guest pages it may
//! map are the guest's private ones.
//!
//! The kernel copies to and from a process's memory through the frames' own identity
//! addresses, never through the process's virtual addresses: no SMAP window, and no way
//! for another thread of the process to change a mapping under the copy.

use super::super::pages::{Page, private};
use abi::PAGE_SIZE;
use abi::syscall::SysError;
use alloc::vec::Vec;
use kernel::user::memory::{AddressSpace, Prot};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const NO_EXECUTE: u64 = 1 << 63;
/// Intermediate tables allow everything; the leaf decides.
const TABLE: u64 = PRESENT | WRITABLE | USER;

/// Index of `va` in the table of the level whose entries map `1 << shift` bytes.
fn index(va: u64, shift: u32) -> usize {
    usize::try_from((va >> shift) & 0x1FF).unwrap_or(0)
}

/// A map by page number, in a vector kept sorted that grows only fallibly
/// ([`PageMap::reserve_one`]; [`PageMap::insert`] never allocates). A process's maps grow
/// at its system calls: a `BTreeMap` node that failed to allocate there would stop the
/// SVSM, so a compromised process could take down everything else it serves (found by
/// review).
struct PageMap<V>(Vec<(u64, V)>);

impl<V> PageMap<V> {
    const fn new() -> Self {
        Self(Vec::new())
    }

    fn find(&self, key: u64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&key, |(k, _)| *k)
    }

    fn get(&self, key: u64) -> Option<&V> {
        self.0.get(self.find(key).ok()?).map(|(_, v)| v)
    }

    fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        let at = self.find(key).ok()?;
        self.0.get_mut(at).map(|(_, v)| v)
    }

    fn contains_key(&self, key: u64) -> bool {
        self.find(key).is_ok()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// Room for one more entry, so that the next [`Self::insert`] succeeds.
    fn reserve_one(&mut self) -> Result<(), SysError> {
        self.0.try_reserve(1).map_err(|_| SysError::NoMem)
    }

    /// Add (or replace) `key`; without room reserved, `Err` gives `value` back.
    fn insert(&mut self, key: u64, value: V) -> Result<(), V> {
        match self.find(key) {
            Ok(at) => match self.0.get_mut(at) {
                Some(entry) => entry.1 = value,
                None => return Err(value),
            },
            Err(_) if self.0.len() == self.0.capacity() => return Err(value),
            Err(at) => self.0.insert(at, (key, value)),
        }
        Ok(())
    }

    fn remove(&mut self, key: u64) -> Option<V> {
        let at = self.find(key).ok()?;
        Some(self.0.remove(at).1)
    }
}

/// A level of a process's tables below the PML4.
#[derive(Clone, Copy)]
enum Level {
    Pt,
    Pd,
    Pdpt,
}

pub struct UserSpace {
    /// PML4 entries 1..=255 (index 0 here is slot 1).
    pml4: [u64; 255],
    /// The tables below, by the address range they map: PDPTs by 512 GiB, PDs by 1 GiB,
    /// PTs by 2 MiB.
    pdpts: PageMap<Page>,
    pds: PageMap<Page>,
    pts: PageMap<Page>,
    /// The frames, by page address.
    frames: PageMap<Page>,
    /// Pages of the SVSM's own image mapped read-only (a module's code), by page address.
    shared: PageMap<&'static [u8]>,
    /// A PML4 entry was added or a page unmapped since the CPU's root was last given the
    /// user half: it must be given again (and the TLB flushed) before the process runs.
    changed: bool,
    /// Most pages of the SVSM's heap the space may take (frames and tables). The kernel's
    /// page quota counts mappings, and a process can unmap its code (shared with the
    /// image, free) and map as much anonymous memory in its place: this bounds what a
    /// compromised process can take from everything else the SVSM serves.
    limit: u64,
}

impl UserSpace {
    /// An empty space that may take at most `limit` pages of the SVSM's heap.
    pub fn with_limit(limit: u64) -> Self {
        Self {
            pml4: [0; 255],
            pdpts: PageMap::new(),
            pds: PageMap::new(),
            pts: PageMap::new(),
            frames: PageMap::new(),
            shared: PageMap::new(),
            changed: false,
            limit,
        }
    }

    /// Pages of the SVSM's heap the space holds (frames and tables).
    pub fn svsm_pages(&self) -> u64 {
        self.frames.len() as u64 + self.tables()
    }

    /// One more page of the SVSM's heap, if the limit allows it.
    fn page(&self) -> Result<Page, SysError> {
        if self.svsm_pages() >= self.limit {
            return Err(SysError::NoMem);
        }
        Page::zeroed().ok_or(SysError::NoMem)
    }
}

impl core::fmt::Debug for UserSpace {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UserSpace").field("pages", &self.frames.len()).finish_non_exhaustive()
    }
}

impl UserSpace {
    /// Whether the user half must be installed again before the process runs on (new
    /// PML4 entries, or translations a TLB may still hold); clears the flag. Tables and
    /// pages added below present entries need nothing: no TLB caches a missing entry.
    pub fn take_changed(&mut self) -> bool {
        core::mem::take(&mut self.changed)
    }

    /// The PML4 entries to install while the process runs.
    pub fn user_half(&self) -> &[u64; 255] {
        &self.pml4
    }

    /// The table at `key` in `tables`, made (zeroed) and linked into `parent` if new.
    fn table(tables: &mut PageMap<Page>, key: u64, parent: &mut u64) -> Result<(), SysError> {
        if tables.contains_key(key) {
            return Ok(());
        }
        tables.reserve_one()?;
        let page = Page::zeroed().ok_or(SysError::NoMem)?;
        let phys = page.phys();
        tables.insert(key, page).map_err(|_| SysError::NoMem)?;
        *parent = private(phys) | TABLE;
        Ok(())
    }

    fn map_one(&mut self, va: u64, prot: Prot) -> Result<(), SysError> {
        let frame = self.page()?;
        self.frames.reserve_one()?;
        self.map_page(va, frame.phys(), prot)?;
        if let Err(frame) = self.frames.insert(va >> 12, frame) {
            // Not met (room was reserved): unlinked before the frame goes.
            self.unmap_one(va);
            drop(frame);
            return Err(SysError::NoMem);
        }
        Ok(())
    }

    /// Point the leaf entry of `va` at `phys` with `prot`, making tables on the way.
    fn map_page(&mut self, va: u64, phys: u64, prot: Prot) -> Result<(), SysError> {
        let missing = [(&self.pdpts, 39), (&self.pds, 30), (&self.pts, 21)]
            .iter()
            .filter(|(tables, shift)| !tables.contains_key(va >> shift))
            .count() as u64;
        if self.svsm_pages().saturating_add(missing) > self.limit {
            return Err(SysError::NoMem);
        }
        let slot = index(va, 39).checked_sub(1).ok_or(SysError::Inval)?;
        let pml4e = self.pml4.get_mut(slot).ok_or(SysError::Inval)?;
        self.changed |= *pml4e == 0;
        Self::table(&mut self.pdpts, va >> 39, pml4e)?;
        let pdpt = self.pdpts.get_mut(va >> 39).ok_or(SysError::NoMem)?;
        let pdpte = pdpt.words_mut().get_mut(index(va, 30)).ok_or(SysError::Inval)?;
        Self::table(&mut self.pds, va >> 30, pdpte)?;
        let pd = self.pds.get_mut(va >> 30).ok_or(SysError::NoMem)?;
        let pde = pd.words_mut().get_mut(index(va, 21)).ok_or(SysError::Inval)?;
        Self::table(&mut self.pts, va >> 21, pde)?;
        let mut leaf = private(phys) | PRESENT | USER;
        if prot.write {
            leaf |= WRITABLE;
        }
        if !prot.exec {
            leaf |= NO_EXECUTE;
        }
        let pt = self.pts.get_mut(va >> 21).ok_or(SysError::NoMem)?;
        *pt.words_mut().get_mut(index(va, 12)).ok_or(SysError::Inval)? = leaf;
        Ok(())
    }

    fn unmap_one(&mut self, va: u64) {
        if let Some(pt) = self.pts.get_mut(va >> 21)
            && let Some(pte) = pt.words_mut().get_mut(index(va, 12))
        {
            *pte = 0;
            self.changed = true;
        }
        // The frame goes only after the translation is gone from every TLB: the process
        // runs on this CPU alone and its user half is reinstalled (CR3 reload) before it
        // runs again. A shared page is the image's and is only forgotten.
        self.frames.remove(va >> 12);
        self.shared.remove(va >> 12);
    }

    /// Free the tables of `[va, va + pages)` that map nothing any more, from the leaves
    /// up, and clear the entries that named them (the user half is reinstalled, a CR3
    /// reload, before the process runs again). Without this, mapping and unmapping one
    /// page at ever new addresses took the SVSM's heap a table at a time (found by
    /// review).
    fn prune(&mut self, va: u64, pages: u64) {
        let Some(last) = pages.checked_sub(1).and_then(|n| va.checked_add(n * PAGE_SIZE)) else { return };
        for (shift, level) in [(21u32, Level::Pt), (30, Level::Pd), (39, Level::Pdpt)] {
            for key in (va >> shift)..=(last >> shift) {
                self.free_if_empty(level, key);
            }
        }
    }

    /// Free the table at `key` of `level` if all its entries are clear, clearing the
    /// parent's entry for it.
    fn free_if_empty(&mut self, level: Level, key: u64) {
        let tables = match level {
            Level::Pt => &mut self.pts,
            Level::Pd => &mut self.pds,
            Level::Pdpt => &mut self.pdpts,
        };
        if !tables.get_mut(key).is_some_and(|t| t.words_mut().iter().all(|e| *e == 0)) {
            return;
        }
        tables.remove(key);
        // The entry naming it: in the table above, at the index of `key`'s address.
        let parent = match level {
            Level::Pt => self.pds.get_mut(key >> 9).and_then(|t| t.words_mut().get_mut(index(key << 21, 21))),
            Level::Pd => self.pdpts.get_mut(key >> 9).and_then(|t| t.words_mut().get_mut(index(key << 30, 30))),
            Level::Pdpt => index(key << 39, 39).checked_sub(1).and_then(|slot| self.pml4.get_mut(slot)),
        };
        if let Some(entry) = parent {
            *entry = 0;
        }
        self.changed = true;
    }

    /// The SVSM's pages the tables take.
    fn tables(&self) -> u64 {
        (self.pdpts.len() + self.pds.len() + self.pts.len()) as u64
    }

    /// Copy between `data` and the frames of `[va, va + len)`.
    fn copy(&mut self, va: u64, len: usize, mut f: impl FnMut(&mut [u8], usize)) -> Result<(), SysError> {
        let mut done = 0usize;
        while done < len {
            let at = va.checked_add(done as u64).ok_or(SysError::Fault)?;
            let frame = self.frames.get_mut(at >> 12).ok_or(SysError::Fault)?;
            let offset = usize::try_from(at % PAGE_SIZE).map_err(|_| SysError::Fault)?;
            let n = (4096 - offset).min(len - done);
            let bytes = frame.run_bytes_mut().get_mut(offset..offset + n).ok_or(SysError::Fault)?;
            f(bytes, done);
            done += n;
        }
        Ok(())
    }
}

impl AddressSpace for UserSpace {
    fn share(&mut self, va: u64, bytes: &'static [u8], prot: Prot) -> Result<(), SysError> {
        if prot.write || !(bytes.as_ptr() as u64).is_multiple_of(PAGE_SIZE) {
            return Err(SysError::Inval);
        }
        for (i, page) in (0u64..).zip(bytes.chunks(4096)) {
            // Only whole pages of the image: a partial one would show the process
            // whatever of the SVSM follows it.
            if page.len() != 4096 {
                self.unmap(va, i);
                return Err(SysError::Inval);
            }
            let at = va + i * PAGE_SIZE;
            // The SVSM runs identity-mapped: the image's address is its physical one.
            let mapped = self.shared.reserve_one().and_then(|()| self.map_page(at, page.as_ptr() as u64, prot));
            if let Err(e) = mapped {
                self.unmap(va, i);
                return Err(e);
            }
            if self.shared.insert(at >> 12, page).is_err() {
                // Not met (room was reserved).
                self.unmap(va, i + 1);
                return Err(SysError::NoMem);
            }
        }
        Ok(())
    }

    fn map_zeroed(&mut self, va: u64, pages: u64, prot: Prot) -> Result<(), SysError> {
        for i in 0..pages {
            if let Err(e) = self.map_one(va + i * PAGE_SIZE, prot) {
                self.unmap(va, i);
                return Err(e);
            }
        }
        Ok(())
    }

    fn map_guest(&mut self, va: u64, gpa: u64, pages: u64, prot: Prot) -> Result<(), SysError> {
        // The guest's pages are the same physical pages the SVSM sees (svm: identity nested
        // paging). Never executable, whatever the kernel asked; neither a frame to free
        // nor a page the kernel copies through (`copy` and `read` find no frame there).
        let prot = Prot { exec: false, ..prot };
        for i in 0..pages {
            let at = i.checked_mul(PAGE_SIZE).and_then(|off| Some((va.checked_add(off)?, gpa.checked_add(off)?)));
            let mapped = at.ok_or(SysError::Inval).and_then(|(v, g)| self.map_page(v, g, prot));
            if let Err(e) = mapped {
                self.unmap(va, i);
                return Err(e);
            }
        }
        Ok(())
    }

    fn unmap(&mut self, va: u64, pages: u64) {
        for i in 0..pages {
            self.unmap_one(va + i * PAGE_SIZE);
        }
        self.prune(va, pages);
    }

    fn table_pages(&self) -> u64 {
        self.tables()
    }

    fn fill(&mut self, va: u64, data: &[u8]) -> Result<(), SysError> {
        self.copy(va, data.len(), |page, at| {
            if let Some(src) = data.get(at..at + page.len()) {
                page.copy_from_slice(src);
            }
        })
    }

    fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), SysError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = va.checked_add(done as u64).ok_or(SysError::Fault)?;
            let page = match self.frames.get(at >> 12) {
                Some(frame) => frame.run_bytes(),
                None => self.shared.get(at >> 12).copied().ok_or(SysError::Fault)?,
            };
            let offset = usize::try_from(at % PAGE_SIZE).map_err(|_| SysError::Fault)?;
            let n = (4096 - offset).min(buf.len() - done);
            let src = page.get(offset..offset + n).ok_or(SysError::Fault)?;
            buf.get_mut(done..done + n).ok_or(SysError::Fault)?.copy_from_slice(src);
            done += n;
        }
        Ok(())
    }

    fn write(&mut self, va: u64, data: &[u8]) -> Result<(), SysError> {
        self.fill(va, data)
    }
}
