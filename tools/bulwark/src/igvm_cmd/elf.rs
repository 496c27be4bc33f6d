//! The two things `bulwark igvm build` needs from the SVSM's ELF image: its PT_LOAD
//! segments and the address of one symbol. Every offset is checked; a malformed file
//! gives an error, never a panic.

use x86::elf::{u16_at, u32_at, u64_at};

const PT_LOAD: u32 = 1;
const SHT_SYMTAB: u32 = 2;
const SYMBOL_SIZE: usize = 24;

/// A PT_LOAD segment: `memsz` bytes at physical address `paddr`, the first of them
/// `data` (file size), the rest zeros.
#[derive(Debug)]
pub struct Segment<'a> {
    pub paddr: u64,
    pub vaddr: u64,
    pub memsz: u64,
    pub data: &'a [u8],
}

fn bad(what: &str) -> String {
    format!("malformed ELF file: {what}")
}

fn usize_at(b: &[u8], off: usize) -> Option<usize> {
    usize::try_from(u64_at(b, off)?).ok()
}

/// Checks the header: an x86-64 ELF64, little-endian.
fn check_header(elf: &[u8]) -> Result<(), String> {
    if elf.get(0..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) || u16_at(elf, 0x12) != Some(0x3E) {
        return Err("not a little-endian x86-64 ELF64 file".into());
    }
    Ok(())
}

/// Where the ELF header keeps a table's file offset, entry size and entry count.
struct Table {
    offset_at: usize,
    size_at: usize,
    count_at: usize,
}

const PROGRAM_HEADERS: Table = Table { offset_at: 0x20, size_at: 0x36, count_at: 0x38 };
const SECTION_HEADERS: Table = Table { offset_at: 0x28, size_at: 0x3A, count_at: 0x3C };

impl Table {
    fn count(&self, elf: &[u8]) -> Result<usize, String> {
        u16_at(elf, self.count_at).map(usize::from).ok_or_else(|| bad("header"))
    }

    /// The first `len` bytes of entry `index`.
    fn entry<'a>(&self, elf: &'a [u8], index: usize, len: usize) -> Option<&'a [u8]> {
        let size = usize::from(u16_at(elf, self.size_at)?);
        if index >= self.count(elf).ok()? || size < len {
            return None;
        }
        let start = index.checked_mul(size)?.checked_add(usize_at(elf, self.offset_at)?)?;
        elf.get(start..start.checked_add(len)?)
    }
}

/// The PT_LOAD segments with a non-zero memory size, in file order.
pub fn load_segments(elf: &[u8]) -> Result<Vec<Segment<'_>>, String> {
    check_header(elf)?;
    let mut out = Vec::new();
    for i in 0..PROGRAM_HEADERS.count(elf)? {
        let h = PROGRAM_HEADERS.entry(elf, i, 0x38).ok_or_else(|| bad("program header out of the file"))?;
        let field = |off| u64_at(h, off).unwrap_or_default();
        if u32_at(h, 0) != Some(PT_LOAD) {
            continue;
        }
        let (offset, vaddr, paddr, filesz, memsz) = (field(0x08), field(0x10), field(0x18), field(0x20), field(0x28));
        if memsz == 0 {
            continue;
        }
        if filesz > memsz {
            return Err(bad(&format!("segment at {paddr:#x} has more file bytes than memory bytes")));
        }
        let data = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(filesz).ok())
            .and_then(|(o, n)| elf.get(o..o.checked_add(n)?))
            .ok_or_else(|| bad(&format!("segment at {paddr:#x} extends past the end of the file")))?;
        out.push(Segment { paddr, vaddr, memsz, data });
    }
    Ok(out)
}

/// The value of the defined symbol `name` in `.symtab`, if there is one.
pub fn symbol(elf: &[u8], name: &str) -> Result<Option<u64>, String> {
    check_header(elf)?;
    let bad_section = || bad("section header out of the file");
    let section = |i| SECTION_HEADERS.entry(elf, i, 0x40).ok_or_else(bad_section);
    let range = |h: &[u8]| -> Option<(usize, usize)> { Some((usize_at(h, 0x18)?, usize_at(h, 0x20)?)) };
    for i in 0..SECTION_HEADERS.count(elf)? {
        let h = section(i)?;
        if u32_at(h, 4) != Some(SHT_SYMTAB) {
            continue;
        }
        let (offset, size) = range(h).ok_or_else(bad_section)?;
        let link = u32_at(h, 0x28).and_then(|l| usize::try_from(l).ok()).ok_or_else(bad_section)?;
        let (strings, _) = range(section(link)?).ok_or_else(bad_section)?;
        let symbols = elf.get(offset..offset.checked_add(size).ok_or_else(bad_section)?).ok_or_else(bad_section)?;
        for sym in symbols.chunks_exact(SYMBOL_SIZE) {
            // st_shndx 0: an undefined reference, not the definition.
            if u16_at(sym, 6) == Some(0) {
                continue;
            }
            let Some(at) = u32_at(sym, 0).and_then(|n| strings.checked_add(usize::try_from(n).ok()?)) else {
                continue;
            };
            let text = elf.get(at..).unwrap_or_default();
            let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
            if &text[..end] == name.as_bytes() {
                return Ok(u64_at(sym, 8));
            }
        }
    }
    Ok(None)
}
