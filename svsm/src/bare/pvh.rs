//! The PVH start-info structure (Xen's `hvm_start_info`, as QEMU's PVH loader fills it):
//! the memory map, the command line and boot modules. Host-provided: every field is
//! checked before use, and memory is read by copy.
#![expect(unsafe_code, reason = "reads the PVH start info from physical memory")]

const MAGIC: u32 = 0x336e_c578;
/// Memory-map entries read at most.
pub const MAX_RANGES: u32 = 128;
/// The memory-map type of RAM.
const PVH_RAM: u32 = 1;

/// The end of the highest RAM range below 4 GiB (0 if none).
pub fn ram_top_below_4g(ram: &[(u64, u64)]) -> u64 {
    ram.iter().map(|&(addr, size)| addr.saturating_add(size)).filter(|end| *end <= 1 << 32).max().unwrap_or(0)
}

/// Whether `[start, end)` overlaps one of the `ram` ranges (`(start, size)`, as
/// [`StartInfo::ram_ranges`] gives them).
pub fn overlaps_ram(ram: &[(u64, u64)], start: u64, end: u64) -> bool {
    ram.iter().any(|&(addr, size)| addr < end && start < addr.saturating_add(size))
}

/// Copy `N` bytes of physical memory (identity-mapped below 4 GiB).
fn read_phys<const N: usize>(pa: u64) -> Option<[u8; N]> {
    let end = pa.checked_add(N as u64)?;
    if pa == 0 || end > 1 << 32 {
        return None;
    }
    let mut out = [0u8; N];
    // SAFETY: the first 4 GiB are identity-mapped and readable; `pa..end` lies inside
    // them; the copy goes to a local buffer and no reference into that memory escapes.
    unsafe { core::ptr::copy_nonoverlapping(pa as *const u8, out.as_mut_ptr(), N) };
    Some(out)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).and_then(|s| s.try_into().ok()).map_or(0, u32::from_le_bytes)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_le_bytes)
}

/// One memory-map entry.
#[derive(Clone, Copy, Debug)]
pub struct MemRange {
    pub addr: u64,
    pub size: u64,
    /// 1 = RAM (E820 types).
    pub kind: u32,
}

#[derive(Debug)]
pub struct StartInfo {
    pub cmdline_paddr: u64,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
}

impl StartInfo {
    pub fn read(pa: u64) -> Option<Self> {
        let b: [u8; 56] = read_phys(pa)?;
        if u32_at(&b, 0) != MAGIC {
            return None;
        }
        Some(Self {
            cmdline_paddr: u64_at(&b, 24),
            nr_modules: u32_at(&b, 12),
            modlist_paddr: u64_at(&b, 16),
            memmap_paddr: u64_at(&b, 40),
            memmap_entries: u32_at(&b, 48),
        })
    }

    /// Memory-map entry `i` (24 bytes each: addr, size, type, reserved).
    pub fn memory(&self, i: u32) -> Option<MemRange> {
        if i >= self.memmap_entries {
            return None;
        }
        let b: [u8; 24] = read_phys(self.memmap_paddr.checked_add(u64::from(i) * 24)?)?;
        Some(MemRange { addr: u64_at(&b, 0), size: u64_at(&b, 8), kind: u32_at(&b, 16) })
    }

    /// Boot module `i` (32 bytes each: paddr, size, cmdline, reserved): `(paddr, size)`.
    pub fn module(&self, i: u32) -> Option<(u64, u64)> {
        if i >= self.nr_modules {
            return None;
        }
        let b: [u8; 32] = read_phys(self.modlist_paddr.checked_add(u64::from(i) * 32)?)?;
        Some((u64_at(&b, 0), u64_at(&b, 8)))
    }

    /// The kernel command line (`-append`), copied into `buf` up to its NUL or length.
    pub fn cmdline<'b>(&self, buf: &'b mut [u8; 128]) -> &'b str {
        let Some(bytes) = read_phys::<128>(self.cmdline_paddr) else { return "" };
        let text = bytes.split(|b| *b == 0).next().unwrap_or_default();
        let Some(copy) = buf.get_mut(..text.len()) else { return "" };
        copy.copy_from_slice(text);
        core::str::from_utf8(copy).unwrap_or("")
    }

    /// The memory map's RAM ranges `(start, size)`, at most [`MAX_RANGES`]. Read once at
    /// boot, and that copy is what every later check uses: the map lies in guest RAM,
    /// where the host can change it at any time, and two reads could then disagree (the
    /// launch building the guest from one map, a device check trusting another).
    pub fn ram_ranges(&self) -> alloc::vec::Vec<(u64, u64)> {
        (0..self.memmap_entries.min(MAX_RANGES))
            .filter_map(|i| self.memory(i))
            .filter(|r| r.kind == PVH_RAM)
            .map(|r| (r.addr, r.size))
            .collect()
    }

    pub fn report(&self) {
        println!("PVH start info: {} memory ranges, {} modules", self.memmap_entries, self.nr_modules);
        for i in 0..self.memmap_entries.min(32) {
            if let Some(r) = self.memory(i) {
                let kind = if r.kind == PVH_RAM { "RAM" } else { "reserved" };
                println!("  {:#012x}..{:#012x} {kind}", r.addr, r.addr.saturating_add(r.size));
            }
        }
        for i in 0..self.nr_modules.min(4) {
            if let Some((pa, size)) = self.module(i) {
                println!("  module {i}: {pa:#x}, {size} bytes");
            }
        }
    }
}
