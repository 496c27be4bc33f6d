//! Loading an ELF64 executable's PT_LOAD segments (the test guest, handed over by QEMU as
//! a PVH boot module). The file comes from the host: every header field is checked
//! against the file's length and the allowed destination before anything is copied.

/// One loadable segment: file bytes `file[offset..offset + filesz]` go to physical
/// `paddr`, followed by `memsz - filesz` zero bytes.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub paddr: u64,
    pub offset: usize,
    pub filesz: usize,
    pub memsz: u64,
}

use x86::elf::{u16_at, u32_at, u64_at};

/// The entry point and the PT_LOAD segments (at most 8) of an x86-64 ELF64 executable of
/// `file_len` bytes whose headers are in `file` (a prefix of it).
pub fn parse(file: &[u8], file_len: u64) -> Option<(u64, [Option<Segment>; 8])> {
    if file.get(0..4)? != b"\x7fELF" || *file.get(4)? != 2 || *file.get(5)? != 1 || u16_at(file, 0x12)? != 0x3E {
        return None;
    }
    let entry = u64_at(file, 0x18)?;
    let phoff = usize::try_from(u64_at(file, 0x20)?).ok()?;
    let phentsize = usize::from(u16_at(file, 0x36)?);
    let phnum = usize::from(u16_at(file, 0x38)?);
    let mut segments = [None; 8];
    let mut n = 0;
    for i in 0..phnum {
        let h = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(file, h)? != 1 {
            continue; // not PT_LOAD
        }
        let offset = usize::try_from(u64_at(file, h + 8)?).ok()?;
        let filesz = usize::try_from(u64_at(file, h + 32)?).ok()?;
        let seg = Segment { paddr: u64_at(file, h + 24)?, offset, filesz, memsz: u64_at(file, h + 40)? };
        if seg.memsz < filesz as u64 || offset.checked_add(filesz)? as u64 > file_len {
            return None;
        }
        *segments.get_mut(n)? = Some(seg);
        n += 1;
    }
    Some((entry, segments))
}
