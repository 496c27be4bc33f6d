//! Fill the SVSM image's `.bulwark_symbols` section with its function symbols, so the
//! bare-metal backtraces name functions (format: `svsm/src/bare/symbols.rs`).
//!
//! Reads the ELF64 section headers and `.symtab` by hand (a few fixed offsets), demangles
//! names with `rustc-demangle`, sorts by address and writes the table into the section's
//! bytes in the file. The section's size is fixed at link time; a table that does not fit
//! is cut (with a warning), never grown.

use std::path::Path;

use x86::elf::{u16_at, u32_at, u64_at};

struct Section {
    name: String,
    kind: u32,
    offset: usize,
    size: usize,
    link: u32,
}

fn sections(elf: &[u8]) -> Option<Vec<Section>> {
    if elf.get(0..4)? != b"\x7fELF" || *elf.get(4)? != 2 {
        return None;
    }
    let shoff = usize::try_from(u64_at(elf, 0x28)?).ok()?;
    let shentsize = usize::from(u16_at(elf, 0x3A)?);
    let shnum = usize::from(u16_at(elf, 0x3C)?);
    let shstrndx = usize::from(u16_at(elf, 0x3E)?);
    let header = |i: usize| shoff + i * shentsize;
    let strtab_off = usize::try_from(u64_at(elf, header(shstrndx) + 24)?).ok()?;
    let mut out = Vec::new();
    for i in 0..shnum {
        let h = header(i);
        let name_off = strtab_off + usize::try_from(u32_at(elf, h)?).ok()?;
        let name_len = elf.get(name_off..)?.iter().position(|b| *b == 0)?;
        out.push(Section {
            name: String::from_utf8_lossy(&elf[name_off..name_off + name_len]).into_owned(),
            kind: u32_at(elf, h + 4)?,
            offset: usize::try_from(u64_at(elf, h + 24)?).ok()?,
            size: usize::try_from(u64_at(elf, h + 32)?).ok()?,
            link: u32_at(elf, h + 40)?,
        });
    }
    Some(out)
}

/// Function symbols `(address, size, raw name)` in symbol-table order.
fn raw_functions(elf: &[u8], secs: &[Section]) -> Option<Vec<(u64, u32, String)>> {
    let symtab = secs.iter().find(|s| s.kind == 2)?;
    let strtab = secs.get(symtab.link as usize)?;
    let mut funcs = Vec::new();
    for e in (symtab.offset..symtab.offset + symtab.size).step_by(24) {
        let info = *elf.get(e + 4)?;
        let value = u64_at(elf, e + 8)?;
        if info & 0xF != 2 || value == 0 {
            continue;
        }
        let name_off = strtab.offset + usize::try_from(u32_at(elf, e)?).ok()?;
        let len = elf.get(name_off..)?.iter().position(|b| *b == 0)?;
        let raw = String::from_utf8_lossy(&elf[name_off..name_off + len]).into_owned();
        let size = u32::try_from(u64_at(elf, e + 16)?).unwrap_or(u32::MAX);
        funcs.push((value, size, raw));
    }
    Some(funcs)
}

/// Function symbols `(address, size, demangled name)`, sorted by address.
fn functions(elf: &[u8], secs: &[Section]) -> Option<Vec<(u64, u32, String)>> {
    let mut funcs = raw_functions(elf, secs)?;
    for f in &mut funcs {
        f.2 = format!("{:#}", rustc_demangle::demangle(&f.2));
    }
    funcs.sort_by_key(|f| f.0);
    funcs.dedup_by_key(|f| f.0);
    Some(funcs)
}

/// The libc functions linked into `image` as stop-stubs (svsm/build.rs generates one for
/// each symbol the C archives want and csupport/libc.c lacks; only called ones survive
/// the linker's garbage collection).
pub fn c_runtime_stubs(image: &Path) -> Result<Vec<String>, String> {
    let elf = std::fs::read(image).map_err(|e| format!("reading {}: {e}", image.display()))?;
    let secs = sections(&elf).ok_or("not an ELF64 image")?;
    let funcs = raw_functions(&elf, &secs).ok_or("no symbol table in the image")?;
    let mut stubs: Vec<String> =
        funcs.into_iter().filter_map(|f| f.2.strip_prefix("bulwark_stub_").map(str::to_string)).collect();
    stubs.sort();
    Ok(stubs)
}

/// Write the symbol table into `image`; returns how many functions it names.
pub fn embed(image: &Path) -> Result<usize, String> {
    let mut elf = std::fs::read(image).map_err(|e| format!("reading {}: {e}", image.display()))?;
    let secs = sections(&elf).ok_or("not an ELF64 image")?;
    let target = secs.iter().find(|s| s.name == ".bulwark_symbols").ok_or("no .bulwark_symbols section")?;
    let (offset, capacity) = (target.offset, target.size);
    let funcs = functions(&elf, &secs).ok_or("no symbol table in the image")?;

    let mut count = funcs.len();
    let table = loop {
        let mut names = Vec::new();
        let mut entries = Vec::new();
        let names_start = 8 + count * 16;
        for (addr, size, name) in &funcs[..count] {
            let name = &name[..name.len().min(119)];
            entries.extend_from_slice(&addr.to_le_bytes());
            entries.extend_from_slice(&size.to_le_bytes());
            entries.extend_from_slice(&u32::try_from(names_start + names.len()).unwrap_or(0).to_le_bytes());
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        let mut table = b"BWSY".to_vec();
        table.extend_from_slice(&u32::try_from(count).unwrap_or(0).to_le_bytes());
        table.extend(entries);
        table.extend(names);
        if table.len() <= capacity || count == 0 {
            break table;
        }
        count = count * 9 / 10;
    };
    if count < funcs.len() {
        eprintln!("warning: symbol table holds {count} of {} functions", funcs.len());
    }
    elf[offset..offset + table.len()].copy_from_slice(&table);
    std::fs::write(image, &elf).map_err(|e| format!("writing {}: {e}", image.display()))?;
    Ok(count)
}
