//! Loading a service module (an ELF executable packaged into the SVSM image) into a new
//! process: its PT_LOAD segments mapped with the permissions the file asks for, never
//! writable and executable at once, and a stack with an unmapped guard below it.
//!
//! The image is part of the SVSM's own measured image, but it is parsed as if hostile all
//! the same (a bad module must not take the kernel down): `elf` checks the structure,
//! this module every address and size before a page is mapped.

use super::Process;
use super::memory::{AddressSpace, Prot, USER_BOTTOM, USER_TOP};
use abi::PAGE_SIZE;
use elf::ElfBytes;
use elf::abi::{EM_X86_64, ET_EXEC, PF_W, PF_X, PT_LOAD};
use elf::endian::LittleEndian;

/// The top of a new process's stack; the stack grows down from here.
pub const STACK_TOP: u64 = 0x7fff_0000_0000;
const _: () = assert!(STACK_TOP < USER_TOP);
/// Pages of a new process's stack (64 KiB, as COCONUT's).
pub const STACK_PAGES: u64 = 16;
/// Most PT_LOAD segments a module may have.
const MAX_SEGMENTS: usize = 16;

/// Why a module was not loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// Not an x86-64 little-endian ELF executable the parser accepts.
    NotAnExecutable,
    /// A segment is misplaced, malformed, writable and executable, or overlaps another.
    BadSegment,
    /// The entry point is not in an executable segment.
    BadEntry,
    /// No memory for the process's pages.
    NoMemory,
}

/// Where a loaded process starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    pub entry: u64,
    pub stack_top: u64,
}

/// Map `image`'s segments and a stack into `process`.
pub fn load(process: &mut Process, space: &mut dyn AddressSpace, image: &[u8]) -> Result<Start, LoadError> {
    let file = ElfBytes::<LittleEndian>::minimal_parse(image).map_err(|_| LoadError::NotAnExecutable)?;
    if file.ehdr.e_machine != EM_X86_64 || file.ehdr.e_type != ET_EXEC {
        return Err(LoadError::NotAnExecutable);
    }
    let segments = file.segments().ok_or(LoadError::NotAnExecutable)?;
    let mut loaded = 0;
    for ph in segments.iter().filter(|ph| ph.p_type == PT_LOAD) {
        loaded += 1;
        if loaded > MAX_SEGMENTS {
            return Err(LoadError::BadSegment);
        }
        let prot = Prot { write: ph.p_flags & PF_W != 0, exec: ph.p_flags & PF_X != 0 };
        if prot.write && prot.exec || ph.p_filesz > ph.p_memsz || ph.p_memsz == 0 {
            return Err(LoadError::BadSegment);
        }
        let start = ph.p_vaddr & !(PAGE_SIZE - 1);
        let end = ph.p_vaddr.checked_add(ph.p_memsz).ok_or(LoadError::BadSegment)?;
        if start < USER_BOTTOM || end > STACK_TOP - (STACK_PAGES + 1) * PAGE_SIZE {
            return Err(LoadError::BadSegment);
        }
        let bytes = usize::try_from(ph.p_offset)
            .ok()
            .zip(usize::try_from(ph.p_filesz).ok())
            .and_then(|(off, len)| image.get(off..off.checked_add(len)?))
            .ok_or(LoadError::BadSegment)?;
        let pages = (end - start).div_ceil(PAGE_SIZE);
        process.map_for(space, start, pages, prot).map_err(|e| match e {
            abi::syscall::SysError::NoMem => LoadError::NoMemory,
            _ => LoadError::BadSegment,
        })?;
        space.fill(ph.p_vaddr, bytes).map_err(|_| LoadError::BadSegment)?;
    }
    if loaded == 0 {
        return Err(LoadError::NotAnExecutable);
    }
    let entry = file.ehdr.e_entry;
    if !process.mappings().is_executable(entry) {
        return Err(LoadError::BadEntry);
    }
    let stack = Prot { write: true, exec: false };
    let stack_bottom = STACK_TOP - STACK_PAGES * PAGE_SIZE;
    process.map_for(space, stack_bottom, STACK_PAGES, stack).map_err(|_| LoadError::NoMemory)?;
    Ok(Start { entry, stack_top: STACK_TOP })
}
