//! The `svm` launch: what QEMU, IGVM and the PSP would do on SNP, done by the SVSM
//! itself before the guest's first instruction, from a memory map the host hands over.
//!
//! [`Plan`] checks the host's memory map and the guest image's segments against a
//! [`Layout`] and decides the page state (which RAM is assigned, as 4 KiB or 2 MiB RMP
//! pages; which pages are validated for the guest). [`SvmShared::launch`] then writes
//! the launch pages (the guest's page tables, the secrets page from `abi::secrets`, the
//! calling area), sets the RMP, builds nested paging and the permission maps, makes the
//! startup vCPU, and describes the launch to the kernel (`SvsmConfig`). Every check is an
//! error, never a panic: the memory map and the image come from the host.
//!
//! The layout on QEMU ([`QEMU`], docs/platforms/svm.md):
//!
//! | gpa | what |
//! |---|---|
//! | `0x8000` | secrets page (guest: read-only) |
//! | `0x9000` | startup calling area |
//! | `0xA000` | startup VMSA (stands for vCPU 0; never mapped for the guest) |
//! | `0xB000..0x11000` | the guest's initial page tables: 4 GiB identity map, 2 MiB pages |
//! | image segments | the guest (a PVH boot module), validated at launch |
//! | `0x100_0000..0x200_0000` | the SVSM (16 MiB; never mapped for the guest) |
//! | other RAM | not validated; from 256 MiB up assigned as 2 MiB RMP pages |

use crate::hw::SvmHw;
use crate::shared::{PermissionMaps, SvmShared, SvmState};
use crate::slots::Slots;
use crate::vcpu::{GUEST_VMPL, SvmVcpu};
use abi::hw::rmpadjust::{PERM_ALL, PERM_READ};
use abi::secrets::SecretsPage;
use alloc::vec::Vec;
use core::ops::Range;
use kernel::SvsmConfig;
use kernel::addr::{Gpa, PageAddr, PageRange};
use rmp::Rmp;
use zerocopy::{FromZeros, IntoBytes};

const MIB2: u64 = 2 << 20;
const PAGE: u64 = 4096;

/// Pages of the guest's initial page tables: PML4, PDPT and four page directories.
pub const PAGE_TABLE_PAGES: u64 = 6;

/// Where the launch puts things, and its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub secrets: u64,
    pub calling_area: u64,
    /// The startup VMSA page (vCPU 0's identity for the kernel).
    pub vmsa: u64,
    /// The first of the [`PAGE_TABLE_PAGES`] page-table pages (the PML4).
    pub page_tables: u64,
    /// The SVSM's own memory: never assigned to the guest.
    pub svsm_region: Range<u64>,
    /// RAM from here up is assigned as 2 MiB RMP pages (where whole ones fit).
    pub huge_from: u64,
    /// Image segments lie at or above this gpa (below: memory the boot uses).
    pub image_from: u64,
    /// RAM above this is not the guest's (what the SVSM can reach and track).
    pub ram_limit: u64,
    pub max_vcpus: usize,
    /// Pages per call before SVSM_ERR_INCOMPLETE.
    pub pages_per_call: u64,
}

/// The layout under QEMU.
pub const QEMU: Layout = Layout {
    secrets: 0x8000,
    calling_area: 0x9000,
    vmsa: 0xA000,
    page_tables: 0xB000,
    svsm_region: 0x100_0000..0x200_0000,
    huge_from: 256 << 20,
    image_from: 0x11000,
    // The SVSM's identity map covers 4 GiB.
    ram_limit: 1 << 32,
    max_vcpus: 8,
    // Small enough that long lists return SVSM_ERR_INCOMPLETE, as the suite checks.
    pages_per_call: 256,
};

/// Why the launch cannot go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaunchError {
    /// The layout contradicts itself (unaligned or overlapping launch pages, a launch
    /// page in the SVSM region, an empty or unaligned SVSM region).
    Layout(&'static str),
    /// The memory map names no usable RAM.
    NoRam,
    /// A RAM range cannot be described, or overlaps another.
    BadRam(u64),
    /// A launch page is not RAM (or lies on a 2 MiB RMP page).
    LaunchPageNotRam(u64),
    /// The SVSM image does not fit its region.
    ImageTooLarge,
    /// An image segment at this gpa overlaps the launch pages or the SVSM, lies outside
    /// RAM or below `image_from`, or wraps.
    Segment(u64),
    /// Guest memory at this gpa could not be written.
    Memory(u64),
    /// No memory for this.
    OutOfMemory(&'static str),
}

fn pages(range: &Range<u64>) -> Range<u64> {
    range.start / PAGE..range.end.div_ceil(PAGE)
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

impl Layout {
    /// The launch pages, each one page: secrets, calling area, VMSA, page tables.
    fn launch_pages(&self) -> [Range<u64>; 4] {
        let tables = self.page_tables..self.page_tables.saturating_add(PAGE_TABLE_PAGES * PAGE);
        [
            self.secrets..self.secrets.saturating_add(PAGE),
            self.calling_area..self.calling_area.saturating_add(PAGE),
            self.vmsa..self.vmsa.saturating_add(PAGE),
            tables,
        ]
    }

    fn check(&self) -> Result<(), LaunchError> {
        let r = &self.svsm_region;
        if r.start >= r.end || !r.start.is_multiple_of(PAGE) || !r.end.is_multiple_of(PAGE) {
            return Err(LaunchError::Layout("the SVSM region is empty or not page aligned"));
        }
        let launch = self.launch_pages();
        for (i, p) in launch.iter().enumerate() {
            if !p.start.is_multiple_of(PAGE)
                || !p.end.saturating_sub(p.start).is_multiple_of(PAGE)
                || p.end > self.ram_limit
            {
                return Err(LaunchError::Layout("a launch page is unaligned or beyond the RAM limit"));
            }
            if overlaps(p, r) {
                return Err(LaunchError::Layout("a launch page lies in the SVSM region"));
            }
            if launch.iter().skip(i + 1).any(|q| overlaps(p, q)) {
                return Err(LaunchError::Layout("launch pages overlap"));
            }
        }
        Ok(())
    }
}

/// The launch's decisions, before anything is written.
#[derive(Debug)]
pub struct Plan {
    layout: Layout,
    ram: Vec<PageRange>,
    top: u64,
    rmp: Rmp,
    /// Page-aligned ranges validated for the guest at launch.
    validated: Vec<Range<u64>>,
    image_end: u64,
}

impl Plan {
    /// Check `layout`, take the RAM ranges `(start, size)` of the host's memory map up
    /// to `ram_top` (rounded down to 2 MiB, and never past the layout's limit), and
    /// assign them in a fresh RMP. `image_end` is where the SVSM image ends in its
    /// region: the rest of the region feeds the page pool.
    pub fn new(layout: Layout, ram: &[(u64, u64)], ram_top: u64, image_end: u64) -> Result<Self, LaunchError> {
        layout.check()?;
        if image_end > layout.svsm_region.end || image_end < layout.svsm_region.start {
            return Err(LaunchError::ImageTooLarge);
        }
        let top = ram_top.min(layout.ram_limit) & !(MIB2 - 1);
        let mut rmp = Rmp::new(top / PAGE);
        let mut ranges: Vec<PageRange> = Vec::new();
        let mut spans: Vec<Range<u64>> = Vec::new();
        for &(addr, size) in ram {
            let start = addr.checked_next_multiple_of(PAGE).ok_or(LaunchError::BadRam(addr))?;
            let end = addr.saturating_add(size).min(top) & !(PAGE - 1);
            if start >= end {
                continue;
            }
            let span = start..end;
            if spans.iter().any(|s| overlaps(s, &span)) {
                return Err(LaunchError::BadRam(addr));
            }
            let range = PageRange::new(PageAddr::from_pfn(start / PAGE), (end - start) / PAGE)
                .ok_or(LaunchError::BadRam(addr))?;
            ranges.try_reserve(1).map_err(|_| LaunchError::OutOfMemory("the RAM list"))?;
            spans.try_reserve(1).map_err(|_| LaunchError::OutOfMemory("the RAM list"))?;
            ranges.push(range);
            spans.push(span);
            assign(&mut rmp, &layout, start, end);
        }
        if ranges.is_empty() {
            return Err(LaunchError::NoRam);
        }
        let mut validated = Vec::new();
        validated.try_reserve(8).map_err(|_| LaunchError::OutOfMemory("the validated list"))?;
        for p in layout.launch_pages() {
            let small_ram = pages(&p).all(|pfn| rmp.entry(pfn).is_some_and(|e| e.assigned && !e.huge));
            if !small_ram {
                return Err(LaunchError::LaunchPageNotRam(p.start));
            }
            if p.start != layout.vmsa {
                validated.push(p);
            }
        }
        Ok(Self { layout, ram: ranges, top, rmp, validated, image_end })
    }

    /// Where usable RAM ends (2 MiB aligned).
    pub fn top(&self) -> u64 {
        self.top
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A segment of the guest image, `memsz` bytes at `paddr`, validated at launch: it
    /// must lie in RAM on 4 KiB RMP pages, at or above `image_from`, and clear of the
    /// launch pages and the SVSM.
    pub fn add_segment(&mut self, paddr: u64, memsz: u64) -> Result<(), LaunchError> {
        let fault = LaunchError::Segment(paddr);
        if memsz == 0 {
            return Ok(());
        }
        let end = paddr.checked_add(memsz).ok_or(fault)?;
        let span = paddr & !(PAGE - 1)..end.checked_next_multiple_of(PAGE).ok_or(fault)?;
        let l = &self.layout;
        if paddr < l.image_from
            || span.end > self.top
            || overlaps(&span, &l.svsm_region)
            || l.launch_pages().iter().any(|p| overlaps(p, &span))
        {
            return Err(fault);
        }
        if !pages(&span).all(|pfn| self.rmp.entry(pfn).is_some_and(|e| e.assigned && !e.huge)) {
            return Err(fault);
        }
        self.validated.try_reserve(1).map_err(|_| LaunchError::OutOfMemory("the validated list"))?;
        self.validated.push(span);
        Ok(())
    }

    /// The guest's validated ranges so far.
    pub fn validated(&self) -> &[Range<u64>] {
        &self.validated
    }

    /// Who owns page `pfn` after the launch (for tests and the model).
    pub fn rmp(&self) -> &Rmp {
        &self.rmp
    }
}

/// Assign `start..end` (RAM) to the guest: 2 MiB RMP pages from `huge_from` where whole
/// aligned ones fit clear of the SVSM region, 4 KiB pages elsewhere; the SVSM region
/// stays unassigned.
fn assign(rmp: &mut Rmp, layout: &Layout, start: u64, end: u64) {
    let mut gpa = start;
    while gpa < end {
        let whole = gpa..gpa.saturating_add(MIB2);
        let huge = gpa >= layout.huge_from
            && gpa.is_multiple_of(MIB2)
            && whole.end <= end
            && !overlaps(&whole, &layout.svsm_region);
        if huge {
            rmp.host_assign_huge(gpa / PAGE);
            gpa = whole.end;
            continue;
        }
        if !layout.svsm_region.contains(&gpa) {
            rmp.host_assign(gpa / PAGE, 1);
        }
        gpa += PAGE;
    }
}

/// The guest's initial page tables at `pml4`: an identity map of 4 GiB with 2 MiB pages
/// (PML4, PDPT, then one page directory per GiB).
pub fn page_tables(pml4: u64) -> Result<Vec<u8>, LaunchError> {
    let len =
        usize::try_from(PAGE_TABLE_PAGES * PAGE).map_err(|_| LaunchError::OutOfMemory("the guest's page tables"))?;
    let mut pt = Vec::new();
    pt.try_reserve_exact(len).map_err(|_| LaunchError::OutOfMemory("the guest's page tables"))?;
    pt.resize(len, 0);
    let mut put = |at: usize, value: u64| {
        if let Some(slot) = pt.get_mut(at..at + 8) {
            slot.copy_from_slice(&value.to_le_bytes());
        }
    };
    let pdpt = pml4 + PAGE;
    put(0, pdpt | 3);
    for g in 0..4usize {
        let gib = g as u64;
        let pd = pdpt + PAGE * (gib + 1);
        put(0x1000 + 8 * g, pd | 3);
        for i in 0..512usize {
            // Present, writable, 2 MiB page.
            put(0x2000 + (g * 512 + i) * 8, (gib << 30) | ((i as u64) << 21) | 0x83);
        }
    }
    Ok(pt)
}

/// The secrets page as the launch leaves it: the four VMPCKs (the PSP's keys; on this
/// platform per-boot random ones), nothing else. The kernel publishes the SVSM's fields
/// and takes VMPCK0 out of it before the guest runs.
pub fn secrets_page(vmpcks: &[[u8; 32]; 4]) -> SecretsPage {
    let mut page = SecretsPage::new_zeroed();
    page.vmpck0 = vmpcks[0];
    page.vmpck1 = vmpcks[1];
    page.vmpck2 = vmpcks[2];
    page.vmpck3 = vmpcks[3];
    page
}

impl<H: SvmHw> SvmShared<H> {
    /// Carry out `plan` on `hw`: write the launch pages, set page state, build nested
    /// paging and the permission maps, and make the startup vCPU at `entry` for `cpus`
    /// CPUs. Returns the platform and the kernel's description of the launch (the caller
    /// starts the kernel with it).
    pub fn launch(
        hw: H,
        plan: Plan,
        entry: u64,
        cpus: u32,
        vmpcks: &[[u8; 32]; 4],
        certificates: Vec<u8>,
    ) -> Result<(Self, SvsmConfig), LaunchError> {
        let Plan { layout, ram, rmp: mut page_state, validated, image_end, .. } = plan;
        let l = &layout;
        hw.write_guest(l.page_tables, &page_tables(l.page_tables)?).map_err(|_| LaunchError::Memory(l.page_tables))?;
        let mut secrets = secrets_page(vmpcks);
        let written = hw.write_guest(l.secrets, secrets.as_bytes());
        secrets.as_mut_bytes().fill(0);
        written.map_err(|_| LaunchError::Memory(l.secrets))?;
        let page = usize::try_from(PAGE).map_err(|_| LaunchError::Memory(l.calling_area))?;
        hw.zero_guest(l.calling_area, page).map_err(|_| LaunchError::Memory(l.calling_area))?;

        // Page state as the launch leaves it.
        for range in &validated {
            for pfn in pages(range) {
                let e = page_state.entry_mut(pfn).ok_or(LaunchError::OutOfMemory("the RMP"))?;
                e.validated = true;
                if let Some(perms) = e.perms.get_mut(usize::from(GUEST_VMPL)) {
                    *perms = if pfn == l.secrets / PAGE { PERM_READ } else { PERM_ALL };
                }
            }
        }
        let vmsa = page_state.entry_mut(l.vmsa / PAGE).ok_or(LaunchError::OutOfMemory("the RMP"))?;
        vmsa.validated = true;
        vmsa.vmsa = true;

        let maps = PermissionMaps::new(&hw).ok_or(LaunchError::OutOfMemory("the permission maps"))?;
        let slots = Slots::new(cpus, l.max_vcpus.max(1)).ok_or(LaunchError::OutOfMemory("the vCPU slots"))?;
        let state =
            SvmState::new(page_state, slots, maps, certificates).ok_or(LaunchError::OutOfMemory("the access map"))?;
        let platform = SvmShared { hw, state };
        for range in &validated {
            platform.sync(pages(range)).map_err(|_| LaunchError::OutOfMemory("nested page tables"))?;
        }
        // The startup VMSA is validated (the SVSM reads it), never mapped for the guest.
        platform.sync(l.vmsa / PAGE..l.vmsa / PAGE + 1).map_err(|_| LaunchError::OutOfMemory("nested page tables"))?;
        let page = platform.hw.alloc(1).ok_or(LaunchError::OutOfMemory("the startup vCPU"))?;
        let startup = SvmVcpu::long_mode(page, platform.controls(), l.vmsa, entry, l.page_tables);
        platform.state.slots.insert(0, startup).map_err(|_| LaunchError::OutOfMemory("the vCPU slots"))?;

        let config = config(l, ram, &validated, image_end)?;
        Ok((platform, config))
    }
}

/// The kernel's description of the launch.
fn config(
    l: &Layout,
    ram: Vec<PageRange>,
    validated: &[Range<u64>],
    image_end: u64,
) -> Result<SvsmConfig, LaunchError> {
    let region = &l.svsm_region;
    let svsm_region = PageRange::new(PageAddr::from_pfn(region.start / PAGE), (region.end - region.start) / PAGE)
        .ok_or(LaunchError::Layout("the SVSM region"))?;
    let first_free = image_end.div_ceil(PAGE);
    let mut pool_reserve = Vec::new();
    let reserve = first_free..region.end / PAGE;
    let count = usize::try_from(reserve.end.saturating_sub(reserve.start)).unwrap_or(usize::MAX);
    pool_reserve.try_reserve_exact(count).map_err(|_| LaunchError::OutOfMemory("the pool reserve"))?;
    pool_reserve.extend(reserve.map(PageAddr::from_pfn));
    let mut prevalidated = Vec::new();
    prevalidated.try_reserve_exact(validated.len()).map_err(|_| LaunchError::OutOfMemory("the validated list"))?;
    prevalidated.extend(validated.iter().filter_map(|r| {
        let p = pages(r);
        PageRange::new(PageAddr::from_pfn(p.start), p.end - p.start)
    }));
    Ok(SvsmConfig {
        ram,
        svsm_region,
        pool_reserve,
        prevalidated,
        startup_vmsa: PageAddr::from_pfn(l.vmsa / PAGE),
        startup_calling_area: Gpa(l.calling_area),
        startup_apic_id: 0,
        max_vcpus: l.max_vcpus,
        pages_per_call: l.pages_per_call,
        secrets_page: Some(PageAddr::from_pfn(l.secrets / PAGE)),
    })
}

#[cfg(test)]
pub(crate) mod tests;
