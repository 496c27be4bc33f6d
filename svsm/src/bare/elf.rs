//! Loading an ELF64 executable's PT_LOAD segments (the test guest, handed over by QEMU as
//! a PVH boot module), read with the `elf` crate from a copy of the file's first page
//! (the file itself stays in guest memory and is copied a page at a time by the caller).
//! The file comes from the host: every header field is checked against the file's length
//! and the allowed destination before anything is copied.

use elf::abi::{EM_X86_64, PT_LOAD};
use elf::endian::LittleEndian;
use elf::file::{Class, FileHeader, parse_ident};
use elf::segment::SegmentTable;

/// One loadable segment: file bytes `file[offset..offset + filesz]` go to physical
/// `paddr`, followed by `memsz - filesz` zero bytes.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub paddr: u64,
    pub offset: usize,
    pub filesz: usize,
    pub memsz: u64,
}

/// Bytes of an ELF64 file header (the ident and the rest).
const EHDR_SIZE: usize = 64;
/// Bytes of an ELF64 program header.
const PHDR_SIZE: usize = 56;

/// The entry point and the PT_LOAD segments (at most 8) of an x86-64 ELF64 executable of
/// `file_len` bytes whose program headers are in `head` (a prefix of it).
pub fn parse(head: &[u8], file_len: u64) -> Option<(u64, [Option<Segment>; 8])> {
    let ident = parse_ident::<LittleEndian>(head.get(..elf::abi::EI_NIDENT)?).ok()?;
    let ehdr = FileHeader::parse_tail(ident, head.get(elf::abi::EI_NIDENT..EHDR_SIZE)?).ok()?;
    if ehdr.class != Class::ELF64 || ehdr.e_machine != EM_X86_64 || usize::from(ehdr.e_phentsize) != PHDR_SIZE {
        return None;
    }
    let start = usize::try_from(ehdr.e_phoff).ok()?;
    let end = start.checked_add(usize::from(ehdr.e_phnum).checked_mul(PHDR_SIZE)?)?;
    let table = SegmentTable::new(ehdr.endianness, ehdr.class, head.get(start..end)?);
    let mut segments = [None; 8];
    for (n, ph) in table.iter().filter(|ph| ph.p_type == PT_LOAD).enumerate() {
        let offset = usize::try_from(ph.p_offset).ok()?;
        let filesz = usize::try_from(ph.p_filesz).ok()?;
        if ph.p_memsz < ph.p_filesz || ph.p_offset.checked_add(ph.p_filesz)? > file_len {
            return None;
        }
        *segments.get_mut(n)? = Some(Segment { paddr: ph.p_paddr, offset, filesz, memsz: ph.p_memsz });
    }
    Some((ehdr.e_entry, segments))
}
