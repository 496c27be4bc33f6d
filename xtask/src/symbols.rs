//! Fill the SVSM image's `.bulwark_symbols` section with its function symbols, so the
//! bare-metal backtraces name functions (format: `svsm/src/bare/symbols.rs`).
//!
//! Reads the ELF64 section headers and `.symtab` with the `elf` crate, demangles
//! names with `rustc-demangle`, sorts by address and writes the table into the section's
//! bytes in the file. The section's size is fixed at link time; a table that does not fit
//! is cut (with a warning), never grown.

use std::path::Path;

use elf::ElfBytes;
use elf::abi::STT_FUNC;
use elf::endian::LittleEndian;

struct Section {
    name: String,
    addr: u64,
    offset: usize,
    size: usize,
}

fn sections(file: &[u8]) -> Option<Vec<Section>> {
    let elf = ElfBytes::<LittleEndian>::minimal_parse(file).ok()?;
    let (headers, names) = elf.section_headers_with_strtab().ok()?;
    let (headers, names) = (headers?, names?);
    headers
        .iter()
        .map(|h| {
            Some(Section {
                name: names.get(usize::try_from(h.sh_name).ok()?).ok()?.to_string(),
                addr: h.sh_addr,
                offset: usize::try_from(h.sh_offset).ok()?,
                size: usize::try_from(h.sh_size).ok()?,
            })
        })
        .collect()
}

/// Function symbols `(address, size, raw name)` in symbol-table order.
fn raw_functions(file: &[u8]) -> Option<Vec<(u64, u32, String)>> {
    let elf = ElfBytes::<LittleEndian>::minimal_parse(file).ok()?;
    let (symbols, strings) = elf.symbol_table().ok()??;
    symbols
        .iter()
        .filter(|sym| sym.st_symtype() == STT_FUNC && sym.st_value != 0)
        .map(|sym| {
            let name = strings.get(usize::try_from(sym.st_name).ok()?).ok()?;
            Some((sym.st_value, u32::try_from(sym.st_size).unwrap_or(u32::MAX), name.to_string()))
        })
        .collect()
}

/// Function symbols `(address, size, demangled name)`, sorted by address.
fn functions(elf: &[u8]) -> Option<Vec<(u64, u32, String)>> {
    let mut funcs = raw_functions(elf)?;
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
    let funcs = raw_functions(&elf).ok_or("not an ELF64 image with a symbol table")?;
    let mut stubs: Vec<String> =
        funcs.into_iter().filter_map(|f| f.2.strip_prefix("bulwark_stub_").map(str::to_string)).collect();
    stubs.sort();
    Ok(stubs)
}

/// The functions of a guest's call on the svm platform (demangled-name suffixes) that
/// `svsm/linker.ld` places at the front of `.text`: QEMU's TCG empties its TLB and jump
/// cache on every world switch, so the call costs a page walk per code page it touches
/// (docs/platforms/svm.md, "Measured").
pub const HOT_PATH: [&str; 13] = [
    "bulwark_svsm::bare::native::serve",
    "bulwark_svm::run::run_until_shared",
    "SvmShared<H>>::after_run",
    "bulwark_kernel::svsm::Svsm>::handle_entry",
    "bulwark_kernel::vcpu::VcpuRegistry::get",
    "bulwark_kernel::vcpu::VcpuRegistry::begin_call",
    "<bulwark_kernel::vcpu::InCall as core::ops::drop::Drop>::drop",
    "SvmPlatform<H> as bulwark_kernel::platform::Platform>::vmsa_read",
    "SvmPlatform<H> as bulwark_kernel::platform::Platform>::vmsa_write",
    "bulwark_kernel::protocols::dispatch",
    "bulwark_kernel::protocols::core::query_protocol",
    "bulwark_kernel::svsm::Svsm>::sync_mem_available",
    "bulwark_kernel::protocols::ocp::post_events",
];
/// How far into `.text` the hot path may reach: about 9 pages, since the kernel's generic
/// functions come twice (the svm and the snp platform's copies both match the linker
/// script's patterns); a call on the svm platform touches about 5 of them.
pub const HOT_PATH_BYTES: u64 = 10 * 4096;

/// The [`HOT_PATH`] functions that start [`HOT_PATH_BYTES`] or more past `text_start`
/// (any copy of them: each platform has its own), and those not in `funcs` at all.
fn hot_path_check(funcs: &[(u64, u32, String)], text_start: u64) -> (Vec<&'static str>, Vec<&'static str>) {
    let offsets = |hot: &str| -> Vec<u64> {
        funcs.iter().filter(|f| f.2.ends_with(hot)).map(|f| f.0.wrapping_sub(text_start)).collect()
    };
    let misplaced = HOT_PATH.into_iter().filter(|hot| offsets(hot).iter().any(|at| *at >= HOT_PATH_BYTES)).collect();
    let absent = HOT_PATH.into_iter().filter(|hot| offsets(hot).is_empty()).collect();
    (misplaced, absent)
}

/// Check that `image` keeps the svm call path at the front of `.text`. A function found
/// past the front is an error. One not found at all was inlined into its caller (which
/// is on the path) or renamed (then the linker script's pattern no longer places it): a
/// warning names it, and an error follows if most of the path is gone, which means the
/// names changed, not the inlining.
pub fn check_hot_path(image: &Path) -> Result<(), String> {
    let elf = std::fs::read(image).map_err(|e| format!("reading {}: {e}", image.display()))?;
    let secs = sections(&elf).ok_or("not an ELF64 image")?;
    let text = secs.iter().find(|s| s.name == ".text").ok_or("no .text section")?;
    let funcs = functions(&elf).ok_or("no symbol table in the image")?;
    let (misplaced, absent) = hot_path_check(&funcs, text.addr);
    if !misplaced.is_empty() {
        return Err(format!(
            "the svm call path is no longer at the front of .text ({} KiB): {}; svsm/linker.ld names its functions",
            HOT_PATH_BYTES / 1024,
            misplaced.join(", ")
        ));
    }
    if absent.len() * 2 > HOT_PATH.len() {
        return Err(format!(
            "most of the svm call path is not in the image's symbols (renamed?): {}",
            absent.join(", ")
        ));
    }
    if !absent.is_empty() {
        eprintln!(
            "warning: not in the image's symbols (inlined into the call path, or renamed; svsm/linker.ld): {}",
            absent.join(", ")
        );
    }
    Ok(())
}

/// Write the symbol table into `image`; returns how many functions it names.
pub fn embed(image: &Path) -> Result<usize, String> {
    let mut elf = std::fs::read(image).map_err(|e| format!("reading {}: {e}", image.display()))?;
    let secs = sections(&elf).ok_or("not an ELF64 image")?;
    let target = secs.iter().find(|s| s.name == ".bulwark_symbols").ok_or("no .bulwark_symbols section")?;
    let (offset, capacity) = (target.offset, target.size);
    let funcs = functions(&elf).ok_or("no symbol table in the image")?;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn f(addr: u64, name: &str) -> (u64, u32, String) {
        (addr, 16, name.to_string())
    }

    #[test]
    fn the_hot_path_must_be_at_the_front_of_text() {
        let text = 0x100_1000;
        let mut funcs: Vec<_> =
            HOT_PATH.iter().enumerate().map(|(i, name)| f(text + 0x100 * i as u64, &format!("<x::{name}"))).collect();
        assert_eq!(hot_path_check(&funcs, text), (vec![], vec![]));
        // A second copy far away (another platform's) is misplaced too.
        funcs.push(f(text + HOT_PATH_BYTES, &format!("<y::{}", HOT_PATH[3])));
        assert_eq!(hot_path_check(&funcs, text).0, [HOT_PATH[3]]);
        funcs.pop();
        // Inlined or renamed: absent, which the check reports apart.
        funcs.remove(0);
        assert_eq!(hot_path_check(&funcs, text), (vec![], vec![HOT_PATH[0]]));
        assert_eq!(hot_path_check(&[], text).1.len(), HOT_PATH.len());
    }
}
