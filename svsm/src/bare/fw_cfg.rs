//! QEMU's fw_cfg interface (I/O ports 0x510/0x511): the CPU count, and named files the
//! launcher adds with `-fw_cfg name=...,file=...`. Everything read here comes from the
//! host: callers treat it as untrusted input.

use alloc::vec::Vec;
use x86::port::{inb, outw};

const SELECTOR: u16 = 0x510;
const DATA: u16 = 0x511;
const SIGNATURE: u16 = 0x00;
const NB_CPUS: u16 = 0x05;
const FILE_DIR: u16 = 0x19;
/// Size of one file directory entry: size (u32 BE), select (u16 BE), reserved, name[56].
const DIR_ENTRY: usize = 64;

fn select(key: u16) {
    outw(SELECTOR, key);
}

fn read(buf: &mut [u8]) {
    for b in buf {
        *b = inb(DATA);
    }
}

fn present() -> bool {
    select(SIGNATURE);
    let mut sig = [0u8; 4];
    read(&mut sig);
    sig == *b"QEMU"
}

/// The CPU count QEMU reports (1 without a QEMU fw_cfg device).
pub fn cpu_count() -> u32 {
    if !present() {
        return 1;
    }
    select(NB_CPUS);
    let mut n = [0u8; 2];
    read(&mut n);
    u32::from(u16::from_le_bytes(n)).clamp(1, 64)
}

/// The contents of the fw_cfg file `name`, if it exists and is at most `max` bytes.
pub fn read_file(name: &str, max: usize) -> Option<Vec<u8>> {
    if !present() {
        return None;
    }
    select(FILE_DIR);
    let mut count = [0u8; 4];
    read(&mut count);
    let mut entry = [0u8; DIR_ENTRY];
    for _ in 0..u32::from_be_bytes(count).min(4096) {
        read(&mut entry);
        // The name field, up to its NUL.
        let stored = entry[8..].split(|b| *b == 0).next().unwrap_or_default();
        if stored != name.as_bytes() {
            continue;
        }
        let size = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]) as usize;
        if size > max {
            return None;
        }
        let key = u16::from_be_bytes([entry[4], entry[5]]);
        let mut contents = Vec::new();
        contents.try_reserve_exact(size).ok()?;
        contents.resize(size, 0);
        select(key);
        read(&mut contents);
        return Some(contents);
    }
    None
}
