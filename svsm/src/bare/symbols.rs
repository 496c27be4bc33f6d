//! The embedded symbol table: `cargo xtask` writes the image's function symbols
//! (demangled, sorted) into the `.bulwark_symbols` section after linking, so backtraces
//! name functions without a host-side tool.
//!
//! Format (little-endian): magic `BWSY`, u32 count, `count` entries of
//! `{u64 address, u32 size, u32 name offset}`, then NUL-terminated names. An image whose
//! table was not filled (all zeros) simply prints addresses.
#![expect(unsafe_code, reason = "the symbol table the image carries in a section of its own")]

/// Room for every function of the image, libtpms and libcrypto included (~12k functions,
/// ~580 KiB of table in the 2026-11 image; `cargo xtask` warns if it ever has to cut).
const TABLE_SIZE: usize = 1024 * 1024;
const MAGIC: &[u8; 4] = b"BWSY";
const HEADER: usize = 8;
const ENTRY: usize = 16;

#[used]
#[unsafe(link_section = ".bulwark_symbols")]
static TABLE: [u8; TABLE_SIZE] = [0; TABLE_SIZE];

/// Read table bytes without letting the compiler assume the zeros it was built with.
fn byte(i: usize) -> u8 {
    match TABLE.get(i) {
        // SAFETY: `b` is a valid reference into the static table; a volatile read of a u8
        // through it is always sound.
        Some(b) => unsafe { core::ptr::read_volatile(b) },
        None => 0,
    }
}

fn u32_at(i: usize) -> u32 {
    u32::from_le_bytes([byte(i), byte(i + 1), byte(i + 2), byte(i + 3)])
}

fn u64_at(i: usize) -> u64 {
    u64::from(u32_at(i)) | u64::from(u32_at(i + 4)) << 32
}

/// A function name copied out of the table.
pub struct Name {
    buf: [u8; 120],
    len: usize,
}

impl core::fmt::Display for Name {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.buf.get(..self.len).and_then(|b| core::str::from_utf8(b).ok()).unwrap_or("?"))
    }
}

/// The function containing `addr` and the offset into it.
pub fn lookup(addr: u64) -> Option<(Name, u64)> {
    if MAGIC.iter().enumerate().any(|(i, m)| byte(i) != *m) {
        return None;
    }
    let count = u32_at(4) as usize;
    if HEADER + count.checked_mul(ENTRY)? > TABLE_SIZE {
        return None;
    }
    // Last entry whose start is <= addr.
    let (mut lo, mut hi) = (0usize, count);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if u64_at(HEADER + mid * ENTRY) <= addr { lo = mid + 1 } else { hi = mid }
    }
    let entry = HEADER + lo.checked_sub(1)? * ENTRY;
    let (start, size) = (u64_at(entry), u64::from(u32_at(entry + 8)));
    if size != 0 && addr >= start + size {
        return None;
    }
    let mut name = Name { buf: [0; 120], len: 0 };
    let first = u32_at(entry + 12) as usize;
    for (at, slot) in (first..).zip(&mut name.buf) {
        let b = byte(at);
        if b == 0 {
            break;
        }
        *slot = b;
        name.len += 1;
    }
    Some((name, addr - start))
}
