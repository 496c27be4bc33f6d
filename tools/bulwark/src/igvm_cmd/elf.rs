//! The two things `bulwark igvm build` needs from the SVSM's ELF image: its PT_LOAD
//! segments and the address of one symbol, read with the `elf` crate (the one ELF reader
//! of the project). Every offset is checked; a malformed file gives an error, never a
//! panic.

use ::elf::ElfBytes;
use ::elf::abi::{EM_X86_64, PT_LOAD};
use ::elf::endian::LittleEndian;

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

/// The file, checked to be a little-endian x86-64 ELF64.
fn parse(file: &[u8]) -> Result<ElfBytes<'_, LittleEndian>, String> {
    if file.get(0..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    let elf = ElfBytes::<LittleEndian>::minimal_parse(file).map_err(|e| bad(&e.to_string()))?;
    if elf.ehdr.class != ::elf::file::Class::ELF64 || elf.ehdr.e_machine != EM_X86_64 {
        return Err("not a little-endian x86-64 ELF64 file".into());
    }
    Ok(elf)
}

/// The PT_LOAD segments with a non-zero memory size, in file order.
pub fn load_segments(file: &[u8]) -> Result<Vec<Segment<'_>>, String> {
    let elf = parse(file)?;
    let mut out = Vec::new();
    for h in elf.segments().iter().flat_map(|table| table.iter()) {
        if h.p_type != PT_LOAD || h.p_memsz == 0 {
            continue;
        }
        let paddr = h.p_paddr;
        if h.p_filesz > h.p_memsz {
            return Err(bad(&format!("segment at {paddr:#x} has more file bytes than memory bytes")));
        }
        let data = usize::try_from(h.p_offset)
            .ok()
            .zip(usize::try_from(h.p_filesz).ok())
            .and_then(|(o, n)| file.get(o..o.checked_add(n)?))
            .ok_or_else(|| bad(&format!("segment at {paddr:#x} extends past the end of the file")))?;
        out.push(Segment { paddr, vaddr: h.p_vaddr, memsz: h.p_memsz, data });
    }
    Ok(out)
}

/// The value of the defined symbol `name` in `.symtab`, if there is one.
pub fn symbol(file: &[u8], name: &str) -> Result<Option<u64>, String> {
    let elf = parse(file)?;
    let Some((symbols, strings)) = elf.symbol_table().map_err(|e| bad(&e.to_string()))? else {
        return Ok(None);
    };
    for sym in symbols.iter() {
        // st_shndx 0: an undefined reference, not the definition.
        if sym.st_shndx == 0 {
            continue;
        }
        if strings.get(sym.st_name as usize).is_ok_and(|n| n == name) {
            return Ok(Some(sym.st_value));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_x86_64_elf64_or_are_cut_short_are_errors() {
        assert_eq!(load_segments(b"MZ\x90\x00").unwrap_err(), "not an ELF file");
        let mut header = vec![0u8; 64];
        header[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        header[18] = 0x28; // EM_ARM
        assert!(load_segments(&header).is_err());
        // A program header table said to lie past the end of the file.
        header[18] = 62;
        header[32] = 0xf0; // e_phoff
        header[54] = 56; // e_phentsize
        header[56] = 4; // e_phnum
        assert!(load_segments(&header).unwrap_err().starts_with("malformed ELF file"));
        assert!(symbol(&header[..40], "x").is_err());
    }
}
