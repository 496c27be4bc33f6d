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
/// A page of the process's own above its stack (one unmapped page between): its FS
/// base points there, with the stack-protector canary glibc-built C code reads at
/// FS:0x28, and the page's own address at FS:0 (the x86-64 thread-pointer convention).
pub const THREAD_PAGE: u64 = STACK_TOP + PAGE_SIZE;
/// Pages of a new process's stack (64 KiB, as COCONUT's).
pub const STACK_PAGES: u64 = 16;
const PAGE: usize = 4096;
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
    /// The first RSP: 8 below the stack's top, as if `entry` had been called (the SysV
    /// ABI's alignment at a function's entry, which compiled code relies on for SSE).
    pub rsp: u64,
    /// Where FS points while the process runs.
    pub thread: u64,
}

/// Map `image`'s segments, a stack and a thread page into `process`; `canary` is the
/// C stack-protector value for its thread page.
///
/// A read-only segment's whole pages are shared with the image, not copied, where the
/// image lies page-aligned in memory (the SVSM's modules do): a 3 MiB vTPM costs no heap
/// for its code. Writable segments and partial pages are copied.
pub fn load(
    process: &mut Process,
    space: &mut dyn AddressSpace,
    image: &'static [u8],
    canary: u64,
) -> Result<Start, LoadError> {
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
        let no_memory = |e| match e {
            abi::syscall::SysError::NoMem => LoadError::NoMemory,
            _ => LoadError::BadSegment,
        };
        // Whole pages that can be the image's own: read-only, starting on a page of the
        // file that starts on a page in memory.
        let aligned = ph.p_vaddr.is_multiple_of(PAGE_SIZE) && (bytes.as_ptr() as u64).is_multiple_of(PAGE_SIZE);
        let shared = if !prot.write && aligned { bytes.len() / PAGE * PAGE } else { 0 };
        let (whole, rest) = bytes.split_at(shared);
        if !whole.is_empty() {
            process.share_for(space, start, whole, prot).map_err(no_memory)?;
        }
        let copied_from = start + shared as u64;
        let copied_pages = pages - shared as u64 / PAGE_SIZE;
        if copied_pages > 0 {
            process.map_for(space, copied_from, copied_pages, prot).map_err(no_memory)?;
            let offset = if shared > 0 { copied_from } else { ph.p_vaddr };
            space.fill(offset, rest).map_err(|_| LoadError::BadSegment)?;
        }
    }
    if loaded == 0 {
        return Err(LoadError::NotAnExecutable);
    }
    let entry = file.ehdr.e_entry;
    if !process.mappings().is_executable(entry) {
        return Err(LoadError::BadEntry);
    }
    let data = Prot { write: true, exec: false };
    let stack_bottom = STACK_TOP - STACK_PAGES * PAGE_SIZE;
    process.map_for(space, stack_bottom, STACK_PAGES, data).map_err(|_| LoadError::NoMemory)?;
    process.map_for(space, THREAD_PAGE, 1, data).map_err(|_| LoadError::NoMemory)?;
    space.fill(THREAD_PAGE, &THREAD_PAGE.to_le_bytes()).map_err(|_| LoadError::NoMemory)?;
    space.fill(THREAD_PAGE + 0x28, &canary.to_le_bytes()).map_err(|_| LoadError::NoMemory)?;
    Ok(Start { entry, rsp: STACK_TOP - 8, thread: THREAD_PAGE })
}
