//! The guest firmware's SEV metadata: the pages OVMF expects an SEV-SNP launch to have
//! prepared before its first instruction (SEC memory already validated, the secrets
//! page, the CPUID page, the SVSM calling area), read from the firmware image.
//!
//! The format is edk2's: a table of GUIDed blocks that ends 32 bytes before the end of
//! the image (OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.nasm.inc, footer GUID
//! 96b582de-...), one block of which (GUID dc886566-...) gives the offset, from the end of
//! the image, of the `ASEV` descriptor and its sections
//! (OvmfPkg/ResetVector/X64/OvmfSevMetadata.nasm.inc). QEMU reads the same table for a
//! launch without IGVM (`snp_populate_metadata_pages` in target/i386/sev.c), and
//! COCONUT's igvmbuilder for its IGVM images (tools/igvmbuilder/src/ovmf_firmware.rs).
//! Every offset is checked: a malformed image gives an error, never a panic.

use x86::elf::{u16_at, u32_at};

/// Footer of the GUIDed table (96b582de-1fb2-45f7-baea-a366c55a082d, as stored).
const TABLE_FOOTER_GUID: [u8; 16] =
    [0xDE, 0x82, 0xB5, 0x96, 0xB2, 0x1F, 0xF7, 0x45, 0xBA, 0xEA, 0xA3, 0x66, 0xC5, 0x5A, 0x08, 0x2D];
/// The block locating the SEV metadata (dc886566-984a-4798-a75e-5585a7bf67cc, as stored).
const SEV_METADATA_GUID: [u8; 16] =
    [0x66, 0x65, 0x88, 0xDC, 0x4A, 0x98, 0x98, 0x47, 0xA7, 0x5E, 0x55, 0x85, 0xA7, 0xBF, 0x67, 0xCC];
/// The table ends this many bytes before the end of the image (the reset vector and the
/// VTF signature follow it).
const TABLE_END_FROM_IMAGE_END: usize = 32;
/// A block ends with its length (u16) and its GUID.
const BLOCK_TRAILER: usize = 2 + 16;
const DESCRIPTOR_SIZE: usize = 16;
const SECTION_SIZE: usize = 12;
const PAGE: u64 = 4096;

/// OVMF_SECTION_TYPE_* of OvmfSevMetadata.nasm.inc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// SNP_SEC_MEM (1): memory SEC uses before it can validate any itself.
    SecMemory,
    /// SNP_SECRETS (2): the SNP secrets page.
    Secrets,
    /// CPUID (3): the SNP CPUID page.
    Cpuid,
    /// SVSM_CAA (4): the calling area OVMF uses to reach the SVSM.
    CallingArea,
    /// KERNEL_HASHES (0x10): the page QEMU fills with the hashes of a direct-boot kernel,
    /// or leaves zero; Bulwark's images carry no kernel, so it stays zero.
    KernelHashes,
}

impl Kind {
    fn from_type(t: u32) -> Option<Self> {
        Some(match t {
            1 => Kind::SecMemory,
            2 => Kind::Secrets,
            3 => Kind::Cpuid,
            4 => Kind::CallingArea,
            0x10 => Kind::KernelHashes,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::SecMemory => "SNP_SEC_MEM",
            Kind::Secrets => "SNP_SECRETS",
            Kind::Cpuid => "CPUID",
            Kind::CallingArea => "SVSM_CAA",
            Kind::KernelHashes => "KERNEL_HASHES",
        }
    }
}

/// One metadata section: `size` bytes at guest-physical `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section {
    pub base: u64,
    pub size: u64,
    pub kind: Kind,
}

impl Section {
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    fn overlaps(&self, base: u64, end: u64) -> bool {
        self.base < end && base < self.end()
    }
}

/// The firmware's SEV metadata, checked: page-aligned sections that do not overlap, at
/// most one secrets page, CPUID page and calling area, each one page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    pub sections: Vec<Section>,
}

impl Metadata {
    fn single(&self, kind: Kind) -> Option<u64> {
        self.sections.iter().find(|s| s.kind == kind).map(|s| s.base)
    }

    pub fn secrets(&self) -> Option<u64> {
        self.single(Kind::Secrets)
    }

    pub fn cpuid(&self) -> Option<u64> {
        self.single(Kind::Cpuid)
    }

    pub fn calling_area(&self) -> Option<u64> {
        self.single(Kind::CallingArea)
    }

    /// The ranges launched as zero pages for the guest: SEC memory and the kernel-hashes
    /// page, in address order.
    pub fn prevalidated(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<_> = self
            .sections
            .iter()
            .filter(|s| matches!(s.kind, Kind::SecMemory | Kind::KernelHashes))
            .map(|s| (s.base, s.size))
            .collect();
        out.sort_unstable();
        out
    }

    /// Refuse a section that overlaps one of `reserved` (`(base, end, what)`): pages the
    /// image or the SVSM uses for something else.
    pub fn check_clear_of(&self, reserved: &[(u64, u64, &str)]) -> Result<(), String> {
        for s in &self.sections {
            if let Some((base, end, what)) = reserved.iter().find(|(b, e, _)| s.overlaps(*b, *e)) {
                return Err(format!(
                    "the firmware's {} section {:#x}..{:#x} overlaps {what} ({base:#x}..{end:#x})",
                    s.kind.name(),
                    s.base,
                    s.end()
                ));
            }
        }
        Ok(())
    }
}

fn malformed(what: &str) -> String {
    format!("malformed OVMF GUID table: {what}")
}

/// The data of the table's block with `guid`, if there is one.
fn find_block<'a>(image: &'a [u8], guid: &[u8; 16]) -> Result<Option<&'a [u8]>, String> {
    let table_end = image.len().checked_sub(TABLE_END_FROM_IMAGE_END).ok_or("the firmware is too small")?;
    let footer = table_end.checked_sub(BLOCK_TRAILER).ok_or("the firmware is too small")?;
    if image.get(footer + 2..table_end) != Some(TABLE_FOOTER_GUID.as_slice()) {
        return Err("the firmware has no OVMF GUID table (footer 96b582de-1fb2-45f7-baea-a366c55a082d 32 bytes \
                    before its end): it is not an OVMF image that can start under SEV-SNP"
            .into());
    }
    let table_len = usize::from(u16_at(image, footer).unwrap_or_default());
    let table_start = table_end.checked_sub(table_len).filter(|_| table_len >= BLOCK_TRAILER);
    let table_start = table_start.ok_or_else(|| malformed("its length runs past the start of the image"))?;
    // Blocks from the last to the first, each ending with its length and GUID.
    let mut end = footer;
    while end > table_start {
        let trailer = end.checked_sub(BLOCK_TRAILER).filter(|t| *t >= table_start);
        let trailer = trailer.ok_or_else(|| malformed("a block runs past the start of the table"))?;
        let len = usize::from(u16_at(image, trailer).unwrap_or_default());
        let start = end.checked_sub(len).filter(|s| len >= BLOCK_TRAILER && *s >= table_start);
        let start = start.ok_or_else(|| malformed("a block's length does not fit the table"))?;
        if image.get(trailer + 2..end) == Some(guid.as_slice()) {
            return Ok(image.get(start..trailer));
        }
        end = start;
    }
    Ok(None)
}

/// Read the SEV metadata of an OVMF image (the image is loaded so that it ends at 4 GiB).
pub fn parse(image: &[u8]) -> Result<Metadata, String> {
    let block = find_block(image, &SEV_METADATA_GUID)?.ok_or(
        "the firmware's OVMF GUID table has no SEV metadata block (dc886566-984a-4798-a75e-5585a7bf67cc): \
         it does not say where it expects the secrets and CPUID pages",
    )?;
    let from_end = u32_at(block, 0).ok_or_else(|| malformed("the SEV metadata block is too short"))?;
    let at = image.len().checked_sub(from_end as usize).ok_or_else(|| malformed("SEV metadata offset"))?;
    let header = image.get(at..at + DESCRIPTOR_SIZE).ok_or_else(|| malformed("SEV metadata offset"))?;
    if &header[..4] != b"ASEV" {
        return Err(malformed("the SEV metadata has no ASEV signature"));
    }
    let (length, version, count) =
        (u32_at(header, 4).unwrap_or(0), u32_at(header, 8).unwrap_or(0), u32_at(header, 12).unwrap_or(0));
    if version != 1 {
        return Err(format!("the firmware's SEV metadata is version {version}; this tool reads version 1"));
    }
    let needed = (count as usize).checked_mul(SECTION_SIZE).and_then(|n| n.checked_add(DESCRIPTOR_SIZE));
    let body = needed
        .filter(|n| *n <= length as usize)
        .and_then(|n| image.get(at + DESCRIPTOR_SIZE..at + n))
        .ok_or_else(|| malformed("the SEV metadata's sections run past its length or the image"))?;
    let mut metadata = Metadata::default();
    for raw in body.chunks_exact(SECTION_SIZE) {
        let (base, size, kind) =
            (u32_at(raw, 0).unwrap_or(0), u32_at(raw, 4).unwrap_or(0), u32_at(raw, 8).unwrap_or(0));
        let kind = Kind::from_type(kind).ok_or_else(|| {
            format!(
                "the firmware's SEV metadata has a section of type {kind:#x} at {base:#x}, which this tool does \
                 not know how to prepare (QEMU refuses it too)"
            )
        })?;
        add(&mut metadata, Section { base: u64::from(base), size: u64::from(size), kind })?;
    }
    Ok(metadata)
}

fn add(metadata: &mut Metadata, s: Section) -> Result<(), String> {
    let name = s.kind.name();
    if s.size == 0 || !s.base.is_multiple_of(PAGE) || !s.size.is_multiple_of(PAGE) {
        return Err(format!("the firmware's {name} section {:#x} (+{:#x}) is not whole 4 KiB pages", s.base, s.size));
    }
    if s.end() > 1 << 32 {
        return Err(format!("the firmware's {name} section {:#x} (+{:#x}) runs past 4 GiB", s.base, s.size));
    }
    if matches!(s.kind, Kind::Secrets | Kind::Cpuid | Kind::CallingArea) {
        if s.size != PAGE {
            return Err(format!("the firmware's {name} section is {:#x} bytes; it must be one page", s.size));
        }
        if metadata.single(s.kind).is_some() {
            return Err(format!("the firmware's SEV metadata has two {name} sections"));
        }
    }
    if let Some(other) = metadata.sections.iter().find(|o| o.overlaps(s.base, s.end())) {
        return Err(format!(
            "the firmware's {name} section {:#x}..{:#x} overlaps its {} section {:#x}..{:#x}",
            s.base,
            s.end(),
            other.kind.name(),
            other.base,
            other.end()
        ));
    }
    metadata.sections.push(s);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A firmware image of `pages` pages whose GUID table holds `blocks` (GUID, data) and
    /// an SEV metadata block pointing at `sections` (base, size, type), as edk2 lays it out.
    fn image(pages: usize, sections: &[(u32, u32, u32)]) -> Vec<u8> {
        let mut img = vec![0u8; pages * 4096];
        let len = img.len();
        // The ASEV descriptor one page before the end.
        let at = len - 4096;
        let desc_len = (DESCRIPTOR_SIZE + SECTION_SIZE * sections.len()) as u32;
        img[at..at + 4].copy_from_slice(b"ASEV");
        for (i, v) in [desc_len, 1, sections.len() as u32].into_iter().enumerate() {
            img[at + 4 + 4 * i..at + 8 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        for (i, (b, s, t)) in sections.iter().enumerate() {
            let o = at + DESCRIPTOR_SIZE + SECTION_SIZE * i;
            for (j, v) in [b, s, t].into_iter().enumerate() {
                img[o + 4 * j..o + 4 + 4 * j].copy_from_slice(&v.to_le_bytes());
            }
        }
        // Table: one unrelated block, the SEV block, the footer; ending 32 bytes before the end.
        let mut table = Vec::new();
        let mut block = |data: &[u8], guid: [u8; 16]| {
            table.extend_from_slice(data);
            table.extend_from_slice(&((data.len() + BLOCK_TRAILER) as u16).to_le_bytes());
            table.extend_from_slice(&guid);
        };
        block(&[0; 4], [7; 16]);
        block(&((len - at) as u32).to_le_bytes(), SEV_METADATA_GUID);
        let total = table.len() + BLOCK_TRAILER;
        table.extend_from_slice(&(total as u16).to_le_bytes());
        table.extend_from_slice(&TABLE_FOOTER_GUID);
        let end = len - TABLE_END_FROM_IMAGE_END;
        img[end - table.len()..end].copy_from_slice(&table);
        img
    }

    #[test]
    fn sections_are_read_and_checked() {
        let m = parse(&image(2, &[(0x80_0000, 0x9000, 1), (0x80_D000, 0x1000, 2), (0x80_E000, 0x1000, 3)])).unwrap();
        assert_eq!((m.secrets(), m.cpuid(), m.calling_area()), (Some(0x80_D000), Some(0x80_E000), None));
        assert_eq!(m.prevalidated(), [(0x80_0000, 0x9000)]);
        for (sections, message) in [
            (vec![(0x80_0000, 0x800, 1)], "whole 4 KiB pages"),
            (vec![(0x80_0000, 0x2000, 2)], "must be one page"),
            (vec![(0x80_0000, 0x1000, 3), (0x80_1000, 0x1000, 3)], "two CPUID sections"),
            (vec![(0x80_0000, 0x9000, 1), (0x80_8000, 0x1000, 4)], "overlaps its SNP_SEC_MEM"),
            (vec![(0x80_0000, 0x1000, 7)], "type 0x7"),
            (vec![(0xFFFF_F000, 0x2000, 1)], "past 4 GiB"),
        ] {
            let e = parse(&image(2, &sections)).unwrap_err();
            assert!(e.contains(message), "{sections:x?}: {e}");
        }
    }

    #[test]
    fn a_truncated_or_garbled_table_is_an_error_not_a_panic() {
        let good = image(2, &[(0x80_0000, 0x9000, 1)]);
        assert!(parse(&good).is_ok());
        assert!(parse(&good[..40]).is_err());
        assert!(parse(&[0u8; 8192]).unwrap_err().contains("no OVMF GUID table"));
        let end = good.len() - TABLE_END_FROM_IMAGE_END;
        // Every value of every byte of the table and the descriptor: never a panic.
        for at in (end - 80..end).chain(good.len() - 4096..good.len() - 4096 + 28) {
            for v in [0u8, 1, 0x7F, 0xFF] {
                let mut bad = good.clone();
                bad[at] = v;
                let _ = parse(&bad);
            }
        }
        // The SEV block's GUID (just before the footer) wiped: the table has no SEV block.
        let mut no_sev = good.clone();
        no_sev[end - BLOCK_TRAILER - 16..end - BLOCK_TRAILER].fill(0);
        assert!(parse(&no_sev).unwrap_err().contains("no SEV metadata block"));
    }
}
