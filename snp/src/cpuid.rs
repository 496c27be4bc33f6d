//! CPUID from the launch's CPUID page. Under SNP the host's CPUID answers are untrusted;
//! the PSP checked this table at launch, so it is the only source the SVSM uses.
//!
//! Our decisions where the firmware ABI is silent:
//! - A leaf the table lacks answers all zeros (what the CPU answers above its maximum
//!   leaf), never the host's value.
//! - Leaves whose answer depends on ECX (sub-leaves) match on ECX; the others ignore it.
//! - Leaf 0xD sub-leaves 0 and 1 report the XSAVE area size for the XCR0/XSS the caller
//!   runs with, computed from the component sizes in sub-leaves 2..63, because the table
//!   entry was measured for whatever XCR0 the launch had. If an enabled component has
//!   no entry, the size is unknown and the whole leaf answers zeros rather than a size
//!   too small for what XSAVE would write.

use abi::ghcb::cpuid_page::{CpuidEntry, CpuidPage, MAX_ENTRIES};
use zerocopy::FromBytes;

/// Leaves that have sub-leaves (the indexed leaves of the SDM and APM).
const SUBLEAF_LEAVES: [u32; 17] = [
    0x4,
    0x7,
    0xB,
    0xD,
    0xF,
    0x10,
    0x12,
    0x14,
    0x17,
    0x18,
    0x1D,
    0x1E,
    0x1F,
    0x24,
    0x8000_001D,
    0x8000_0020,
    0x8000_0026,
];
/// Legacy XSAVE area (512) plus the XSAVE header (64).
const XSAVE_BASE: u32 = 576;

/// A checked copy of the CPUID page.
#[derive(Clone, Debug)]
pub struct CpuidTable {
    entries: alloc::vec::Vec<CpuidEntry>,
}

/// Why a CPUID page was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuidPageError {
    TooManyEntries(u32),
}

impl CpuidTable {
    /// Parse the page (a copy; the page itself is never referenced again).
    pub fn parse(page: &[u8; 4096]) -> Result<Self, CpuidPageError> {
        // CpuidPage is exactly one page, so this cannot fail; no panic path either way.
        let page = CpuidPage::read_from_bytes(page).map_err(|_| CpuidPageError::TooManyEntries(u32::MAX))?;
        let too_many = CpuidPageError::TooManyEntries(page.count);
        let count = usize::try_from(page.count).map_err(|_| too_many)?;
        if count > MAX_ENTRIES {
            return Err(too_many);
        }
        Ok(Self { entries: page.entries.get(..count).ok_or(too_many)?.to_vec() })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, leaf: u32, subleaf: u32) -> Option<&CpuidEntry> {
        let by_subleaf = SUBLEAF_LEAVES.contains(&leaf);
        self.entries.iter().find(|e| e.eax_in == leaf && (!by_subleaf || e.ecx_in == subleaf))
    }

    /// [EAX, EBX, ECX, EDX] for CPUID(`leaf`, `subleaf`) with the caller's XCR0 and XSS.
    pub fn lookup(&self, leaf: u32, subleaf: u32, xcr0: u64, xss: u64) -> [u32; 4] {
        let Some(e) = self.find(leaf, subleaf) else { return [0; 4] };
        let mut out = [e.eax, e.ebx, e.ecx, e.edx];
        if leaf == 0xD && subleaf <= 1 {
            let compacted = subleaf == 1;
            let enabled = if compacted { xcr0 | xss } else { xcr0 };
            match self.xsave_size(enabled, compacted) {
                Some(size) => out[1] = size,
                None => return [0; 4],
            }
        }
        out
    }

    /// XSAVE area size for the components in `enabled` (bits 2..63; x87 and SSE live in
    /// the legacy area).
    fn xsave_size(&self, enabled: u64, compacted: bool) -> Option<u32> {
        let mut size = XSAVE_BASE;
        for bit in 2..64u32 {
            if enabled & (1 << bit) == 0 {
                continue;
            }
            let c = self.find(0xD, bit)?;
            size = if compacted { size.saturating_add(c.eax) } else { size.max(c.ebx.saturating_add(c.eax)) };
        }
        Some(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::{FromZeros, IntoBytes};

    fn entry(leaf: u32, sub: u32, regs: [u32; 4]) -> CpuidEntry {
        CpuidEntry {
            eax_in: leaf,
            ecx_in: sub,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn table(entries: &[CpuidEntry]) -> [u8; 4096] {
        let mut page = CpuidPage::new_zeroed();
        page.count = entries.len() as u32;
        page.entries[..entries.len()].copy_from_slice(entries);
        let mut out = [0u8; 4096];
        out.copy_from_slice(page.as_bytes());
        out
    }

    #[test]
    fn answers_from_the_table_and_zero_for_missing_leaves() {
        let t = CpuidTable::parse(&table(&[entry(0, 0, [0x10, 1, 2, 3]), entry(7, 0, [0, 0x219c_97a9, 0, 0])]))
            .expect("valid");
        assert_eq!(t.lookup(0, 5, 1, 0), [0x10, 1, 2, 3], "leaf 0 ignores ECX");
        assert_eq!(t.lookup(7, 0, 1, 0)[1], 0x219c_97a9);
        assert_eq!(t.lookup(7, 1, 1, 0), [0; 4], "leaf 7 matches on ECX");
        assert_eq!(t.lookup(0x4000_0000, 0, 1, 0), [0; 4], "no host fallback");
    }

    #[test]
    fn xsave_size_follows_xcr0() {
        let t = CpuidTable::parse(&table(&[
            entry(0xD, 0, [0x7, 0x988, 0x988, 0]),
            entry(0xD, 1, [0xF, 0x988, 0x1800, 0]),
            // AVX: 256 bytes at offset 576.
            entry(0xD, 2, [256, 576, 0, 0]),
            // A component at offset 0x380 of size 0x40.
            entry(0xD, 9, [0x8, 0xA80, 0, 0]),
        ]))
        .expect("valid");
        assert_eq!(t.lookup(0xD, 0, 0x3, 0)[1], 576, "x87 + SSE only");
        assert_eq!(t.lookup(0xD, 0, 0x7, 0)[1], 832, "with AVX");
        assert_eq!(t.lookup(0xD, 1, 0x7, 1 << 9)[1], 576 + 256 + 8, "compacted adds sizes");
        assert_eq!(t.lookup(0xD, 0, 0x7, 0)[0], 0x7, "other registers from the table");
        assert_eq!(t.lookup(0xD, 0, 0x7 | 1 << 5, 0), [0; 4], "a component the table lacks: no answer");
    }

    #[test]
    fn refuses_an_oversized_count() {
        let mut page = table(&[]);
        page[0..4].copy_from_slice(&65u32.to_le_bytes());
        assert_eq!(CpuidTable::parse(&page).err(), Some(CpuidPageError::TooManyEntries(65)));
    }
}
