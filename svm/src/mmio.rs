//! The guest instruction behind an MMIO exit: a nested page fault on a page a device
//! model claimed (MMIO_EVENT) says where the access went, not what it was. Under QEMU's
//! TCG there are no decode assists (the VMCB's instruction bytes stay empty), so the SVSM
//! reads the instruction at the guest's RIP through the guest's own page tables
//! ([`translate`]) and decodes it ([`decode`]).
//!
//! Only the MOV forms a driver's MMIO accessors compile to are decoded (Linux's
//! `readl`/`writel` family, volatile reads and writes in Rust and C): MOV to and from a
//! general register (88, 89, 8A, 8B), MOV of an immediate (C6 /0, C7 /0) and MOVZX
//! (0F B6, 0F B7), with operand-size, address-size, segment and REX prefixes, in 64-bit
//! code. Anything else (string moves, LOCK or REP, a register-only ModRM, VEX) decodes to
//! `None` and is refused as before. The bytes are the guest's: every value decodes
//! without panicking, and a decoded instruction is never longer than 15 bytes or than
//! the bytes given.

use kernel::user::vm::size_mask;

/// The longest x86 instruction.
pub const MAX_LEN: usize = 15;

/// A general register as an operand: its number (0 RAX .. 15 R15) and, for the legacy
/// byte registers AH, CH, DH and BH (number 4..=7 without REX), bits 8..15 of register
/// `index - 4`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg {
    pub index: u8,
    pub high_byte: bool,
}

/// What the instruction does with the memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Store the low `size` bytes of a register (or its high byte).
    Store(Reg),
    /// Store an immediate (already sign-extended to 64 bits for C7 with REX.W).
    StoreImm(u64),
    /// Load `size` bytes into a register of `dest_size` bytes: the same size for MOV,
    /// zero-extended for MOVZX.
    Load { reg: Reg, dest_size: u8 },
}

/// A segment override that changes the address in 64-bit code (the others' bases are 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    Flat,
    Fs,
    Gs,
}

/// Where the memory operand is: `segment + base + index * scale + disp` (or `next RIP +
/// disp`), cut to 32 bits with the address-size prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    pub base: Option<u8>,
    pub index: Option<u8>,
    pub scale: u8,
    pub disp: i64,
    pub rip_relative: bool,
    pub addr32: bool,
    pub segment: Segment,
}

/// A decoded MOV to or from memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemAccess {
    /// Bytes of the instruction.
    pub len: u8,
    /// Bytes of memory it reads or writes: 1, 2, 4 or 8.
    pub size: u8,
    pub kind: Kind,
    pub operand: Operand,
}

impl MemAccess {
    pub fn is_write(&self) -> bool {
        !matches!(self.kind, Kind::Load { .. })
    }

    /// The linear address of the memory operand, with `gpr` the general registers (0
    /// RAX .. 15 R15), `next_rip` the address after the instruction and the FS and GS
    /// bases.
    pub fn linear(&self, gpr: impl Fn(u8) -> u64, next_rip: u64, fs_base: u64, gs_base: u64) -> u64 {
        let o = &self.operand;
        let mut ea = if o.rip_relative { next_rip } else { o.base.map_or(0, &gpr) };
        if let Some(index) = o.index {
            ea = ea.wrapping_add(gpr(index).wrapping_mul(u64::from(o.scale)));
        }
        ea = ea.wrapping_add(o.disp as u64);
        if o.addr32 {
            ea &= 0xFFFF_FFFF;
        }
        match o.segment {
            Segment::Flat => ea,
            Segment::Fs => ea.wrapping_add(fs_base),
            Segment::Gs => ea.wrapping_add(gs_base),
        }
    }
}

/// Decode the instruction at the start of `bytes` (64-bit code).
pub fn decode(bytes: &[u8]) -> Option<MemAccess> {
    let byte = |i: usize| bytes.get(i).copied();
    let (mut i, mut operand16, mut rex) = (0usize, false, 0u8);
    let (mut addr32, mut segment) = (false, Segment::Flat);
    loop {
        match byte(i)? {
            0x66 => operand16 = true,
            0x67 => addr32 = true,
            // In 64-bit code only FS and GS have a base; the last override counts.
            0x64 => segment = Segment::Fs,
            0x65 => segment = Segment::Gs,
            0x26 | 0x2E | 0x36 | 0x3E => segment = Segment::Flat,
            // REX counts only right before the opcode: a legacy prefix after it drops it.
            r @ 0x40..=0x4F => {
                rex = r;
                i += 1;
                if i >= MAX_LEN {
                    return None;
                }
                continue;
            }
            // LOCK, REPNE, REP: not a plain MOV.
            0xF0 | 0xF2 | 0xF3 => return None,
            _ => break,
        }
        rex = 0;
        i += 1;
        if i >= MAX_LEN {
            return None;
        }
    }
    let (w, r, x, b) = (rex & 0b1000 != 0, rex & 0b0100 != 0, rex & 0b0010 != 0, rex & 0b0001 != 0);
    let wide = if w {
        8
    } else if operand16 {
        2
    } else {
        4
    };
    let opcode = byte(i)?;
    i += 1;
    // (memory size, kind without its register, immediate bytes)
    enum Form {
        StoreReg,
        LoadReg,
        StoreImm(usize),
        Movzx,
    }
    let (size, form) = match opcode {
        0x88 => (1, Form::StoreReg),
        0x89 => (wide, Form::StoreReg),
        0x8A => (1, Form::LoadReg),
        0x8B => (wide, Form::LoadReg),
        0xC6 => (1, Form::StoreImm(1)),
        0xC7 => (wide, Form::StoreImm(if operand16 && !w { 2 } else { 4 })),
        0x0F => {
            let size = match byte(i)? {
                0xB6 => 1,
                0xB7 => 2,
                _ => return None,
            };
            i += 1;
            (size, Form::Movzx)
        }
        _ => return None,
    };
    let modrm = byte(i)?;
    i += 1;
    let (mode, reg_field, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
    // A register operand never touches memory.
    if mode == 3 {
        return None;
    }
    let extend = |field: u8, bit: bool| field | if bit { 8 } else { 0 };
    let mut operand = Operand { base: None, index: None, scale: 1, disp: 0, rip_relative: false, addr32, segment };
    let mut disp_len = match mode {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    if rm == 4 {
        let sib = byte(i)?;
        i += 1;
        let (index, base) = ((sib >> 3) & 7, sib & 7);
        operand.scale = 1 << (sib >> 6);
        // Index 100 without REX.X is "no index" (RSP cannot be one).
        operand.index = (index != 4 || x).then_some(extend(index, x));
        if mode == 0 && base == 5 {
            disp_len = 4;
        } else {
            operand.base = Some(extend(base, b));
        }
    } else if mode == 0 && rm == 5 {
        operand.rip_relative = true;
        disp_len = 4;
    } else {
        operand.base = Some(extend(rm, b));
    }
    let disp = bytes.get(i..i + disp_len)?;
    operand.disp = match *disp {
        [d] => i64::from(d as i8),
        [a, b, c, d] => i64::from(i32::from_le_bytes([a, b, c, d])),
        _ => 0,
    };
    i += disp_len;
    let reg_index = reg_field | if r { 8 } else { 0 };
    // Byte registers without REX: 4..=7 are AH, CH, DH, BH.
    let byte_reg = Reg {
        index: if rex == 0 && (4..8).contains(&reg_index) { reg_index - 4 } else { reg_index },
        high_byte: rex == 0 && (4..8).contains(&reg_index),
    };
    let full_reg = Reg { index: reg_index, high_byte: false };
    let kind = match form {
        Form::StoreReg => Kind::Store(if size == 1 { byte_reg } else { full_reg }),
        Form::LoadReg => Kind::Load { reg: if size == 1 { byte_reg } else { full_reg }, dest_size: size },
        Form::Movzx => Kind::Load { reg: full_reg, dest_size: wide },
        Form::StoreImm(n) => {
            // C6 and C7 are group 11: only /0 is MOV.
            if reg_field != 0 {
                return None;
            }
            let raw = bytes.get(i..i + n)?;
            i += n;
            let mut le = [0u8; 8];
            le.get_mut(..n)?.copy_from_slice(raw);
            let value = u64::from_le_bytes(le);
            // imm32 of C7 with REX.W is sign-extended to 64 bits.
            Kind::StoreImm(if size == 8 { sign_extend_32(value) } else { value })
        }
    };
    if i > MAX_LEN || i > bytes.len() {
        return None;
    }
    Some(MemAccess { len: u8::try_from(i).ok()?, size, kind, operand })
}

/// The low 32 bits of `value` sign-extended to 64 (an imm32 with REX.W).
fn sign_extend_32(value: u64) -> u64 {
    let low = u32::try_from(value & 0xFFFF_FFFF).unwrap_or(0);
    i64::from(i32::from_ne_bytes(low.to_ne_bytes())) as u64
}

/// The value a load of `value` leaves in a register that held `old`: x86's rules for a
/// destination of `dest_size` bytes (a byte or word merges, a dword zero-extends, a
/// qword replaces), or its bits 8..15 for AH..BH.
pub fn load_into(old: u64, reg: Reg, dest_size: u8, value: u64) -> u64 {
    match (dest_size, reg.high_byte) {
        (1, true) => old & !0xFF00 | (value & 0xFF) << 8,
        (1, false) => old & !0xFF | value & 0xFF,
        (2, _) => old & !0xFFFF | value & 0xFFFF,
        (4, _) => value & 0xFFFF_FFFF,
        _ => value,
    }
}

/// The bytes a store of register value `reg_value` writes: its low `size` bytes, or bits
/// 8..15 for AH..BH.
pub fn store_value(reg_value: u64, reg: Reg, size: u8) -> u64 {
    let value = if reg.high_byte { reg_value >> 8 } else { reg_value };
    value & size_mask(size)
}

/// The paging state `translate` needs from the vCPU.
#[derive(Clone, Copy, Debug)]
pub struct Paging {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
const ADDRESS: u64 = 0x000F_FFFF_FFFF_F000;

/// The guest-physical address of linear `linear` under `paging`, with `read_entry`
/// reading a page-table entry (a u64 at a gpa; `None` where the SVSM may not read).
/// Paging off: the address itself. 4-level long-mode paging with 1 GiB and 2 MiB pages;
/// anything else (5-level, 32-bit or PAE legacy paging) is `None`: the SVSM serves MMIO
/// for 64-bit code.
pub fn translate(paging: Paging, linear: u64, read_entry: impl Fn(u64) -> Option<u64>) -> Option<u64> {
    if paging.cr0 & CR0_PG == 0 {
        return Some(linear);
    }
    if paging.efer & EFER_LMA == 0 || paging.cr4 & CR4_PAE == 0 || paging.cr4 & CR4_LA57 != 0 {
        return None;
    }
    // A non-canonical address faults (#GP) before any walk; it must not alias a
    // canonical one here.
    let upper = linear >> 47;
    if upper != 0 && upper != 0x1_FFFF {
        return None;
    }
    let mut table = paging.cr3 & ADDRESS;
    for (level, shift) in [(4, 39), (3, 30), (2, 21), (1, 12)] {
        let entry = read_entry(table + ((linear >> shift) & 0x1FF) * 8)?;
        if entry & PRESENT == 0 {
            return None;
        }
        let large = level != 4 && level != 1 && entry & PAGE_SIZE_BIT != 0;
        if large || level == 1 {
            let offset_mask = (1u64 << shift) - 1;
            return Some((entry & ADDRESS & !offset_mask) | (linear & offset_mask));
        }
        table = entry & ADDRESS;
    }
    None
}

/// Up to [`MAX_LEN`] instruction bytes at linear `rip`: each page translated on its own
/// (an instruction may cross a page); fewer where the second page cannot be read. `read`
/// copies guest-physical memory the SVSM may read.
pub fn fetch(
    paging: Paging,
    rip: u64,
    read_entry: impl Fn(u64) -> Option<u64>,
    read: impl Fn(u64, &mut [u8]) -> Option<()>,
) -> Option<([u8; MAX_LEN], usize)> {
    let mut bytes = [0u8; MAX_LEN];
    let first = usize::try_from(4096 - (rip & 0xFFF)).ok()?.min(MAX_LEN);
    let gpa = translate(paging, rip, &read_entry)?;
    read(gpa, bytes.get_mut(..first)?)?;
    if first == MAX_LEN {
        return Some((bytes, MAX_LEN));
    }
    let next = rip.wrapping_add(first as u64);
    let rest = translate(paging, next, &read_entry).and_then(|gpa| read(gpa, bytes.get_mut(first..)?));
    Some((bytes, if rest.is_some() { MAX_LEN } else { first }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Length, size and kind (the operand is checked on its own below).
    fn d(bytes: &[u8]) -> Option<(u8, u8, Kind)> {
        decode(bytes).map(|a| (a.len, a.size, a.kind))
    }

    const RAX: Reg = Reg { index: 0, high_byte: false };

    /// Encodings as GNU as and rustc emit them for volatile MMIO accesses (Linux's
    /// `writel` is `mov %eax, (%rdx)`, `readl` is `mov (%rdi), %eax`).
    #[test]
    fn the_movs_of_mmio_accessors_decode() {
        // mov dword ptr [rdx], eax
        assert_eq!(d(&[0x89, 0x02]), Some((2, 4, Kind::Store(RAX))));
        // mov eax, dword ptr [rdi]
        assert_eq!(d(&[0x8B, 0x07]), Some((2, 4, Kind::Load { reg: RAX, dest_size: 4 })));
        // mov qword ptr [rdi + 8], r9
        let r9 = Reg { index: 9, high_byte: false };
        assert_eq!(d(&[0x4C, 0x89, 0x4F, 0x08]), Some((4, 8, Kind::Store(r9))));
        // mov word ptr [rsi], cx
        let rcx = Reg { index: 1, high_byte: false };
        assert_eq!(d(&[0x66, 0x89, 0x0E]), Some((3, 2, Kind::Store(rcx))));
        // mov byte ptr [rdi], ah (no REX: 4 is AH)
        let ah = Reg { index: 0, high_byte: true };
        assert_eq!(d(&[0x88, 0x27]), Some((2, 1, Kind::Store(ah))));
        // mov byte ptr [rdi], spl (with REX: 4 is SPL)
        let spl = Reg { index: 4, high_byte: false };
        assert_eq!(d(&[0x40, 0x88, 0x27]), Some((3, 1, Kind::Store(spl))));
        // movzx eax, byte ptr [rdi]; movzx r10, word ptr [rax + rbx*4 + 0x12345678]
        assert_eq!(d(&[0x0F, 0xB6, 0x07]), Some((3, 1, Kind::Load { reg: RAX, dest_size: 4 })));
        let r10 = Reg { index: 10, high_byte: false };
        assert_eq!(
            d(&[0x4C, 0x0F, 0xB7, 0x94, 0x98, 0x78, 0x56, 0x34, 0x12]),
            Some((9, 2, Kind::Load { reg: r10, dest_size: 8 }))
        );
        // mov dword ptr [rip + 0x100], 0x12345678
        assert_eq!(d(&[0xC7, 0x05, 0, 1, 0, 0, 0x78, 0x56, 0x34, 0x12]), Some((10, 4, Kind::StoreImm(0x1234_5678))));
        // mov qword ptr [rax], -1 (imm32 sign-extended)
        assert_eq!(d(&[0x48, 0xC7, 0x00, 0xFF, 0xFF, 0xFF, 0xFF]), Some((7, 8, Kind::StoreImm(u64::MAX))));
        // mov word ptr [rax], 0xBEEF; mov byte ptr [rsp + 1], 7 (SIB)
        assert_eq!(d(&[0x66, 0xC7, 0x00, 0xEF, 0xBE]), Some((5, 2, Kind::StoreImm(0xBEEF))));
        assert_eq!(d(&[0xC6, 0x44, 0x24, 0x01, 7]), Some((5, 1, Kind::StoreImm(7))));
        // A segment prefix and an address-size prefix: mov eax, dword ptr fs:[ebx]
        assert_eq!(d(&[0x64, 0x67, 0x8B, 0x03]).map(|a| (a.0, a.1)), Some((4, 4)));
        // mov rax, [0x1000] through SIB with no base (mod 00, base 101: disp32)
        assert_eq!(d(&[0x48, 0x8B, 0x04, 0x25, 0, 0x10, 0, 0]).map(|a| a.0), Some(8));
    }

    #[test]
    fn what_is_not_a_plain_mov_is_refused() {
        for bytes in [
            &[0x89, 0xC0][..],               // mov eax, eax: no memory operand
            &[0xF3, 0xA5],                   // rep movsd
            &[0xF0, 0x89, 0x07],             // lock prefix
            &[0xC7, 0x08, 0, 0, 0, 0],       // C7 /1 is not MOV
            &[0x0F, 0xBE, 0x07],             // movsx
            &[0xA1, 0, 0, 0, 0, 0, 0, 0, 0], // mov eax, moffs
            &[0x89],                         // cut short
            &[0x8B, 0x80, 0, 0],             // disp32 cut short
            &[0xC7, 0x00, 1, 2],             // imm32 cut short
            &[],
        ] {
            assert_eq!(d(bytes), None, "{bytes:x?}");
        }
        // Fifteen prefixes leave no room for the opcode.
        assert_eq!(d(&[0x66; 16]), None);
        // A REX that a legacy prefix follows is dropped: 40 66 88 27 is mov [rdi], ah.
        assert_eq!(d(&[0x40, 0x66, 0x88, 0x27]).map(|a| a.2), Some(Kind::Store(Reg { index: 0, high_byte: true })));
    }

    /// Every byte string decodes without panicking, never longer than it is or than 15.
    #[test]
    fn hostile_bytes_decode_without_panicking() {
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..200_000 {
            let mut bytes = [0u8; 16];
            for b in &mut bytes {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Mostly the bytes that matter here.
                let pick = [0x66, 0x48, 0x4C, 0x89, 0x8B, 0x0F, 0xB6, 0xC7, 0x04, 0x05, 0x44, 0x84, 0x25];
                *b = if state & 3 == 0 { (state >> 8) as u8 } else { pick[(state >> 16) as usize % pick.len()] };
            }
            let n = (state >> 40) as usize % 17;
            if let Some(a) = decode(&bytes[..n]) {
                assert!(usize::from(a.len) <= n.min(MAX_LEN) && [1, 2, 4, 8].contains(&a.size), "{bytes:x?}");
            }
        }
    }

    /// The operand's address from registers, displacement, scale, RIP, FS/GS and the
    /// address-size prefix: what the SVSM compares with the faulting gpa.
    #[test]
    fn the_operand_address_is_computed_as_the_cpu_does() {
        let regs = |i: u8| match i {
            0 => 0x1000,                // RAX
            3 => 0x10,                  // RBX
            4 => 0xDEAD,                // RSP (never an index)
            5 => 0x5000,                // RBP
            7 => 0xFFFF_FFFF_0000_0100, // RDI
            9 => 0x20,                  // R9
            13 => 0x7000,               // R13
            _ => 0,
        };
        let at = |bytes: &[u8]| decode(bytes).unwrap().linear(regs, 0x40_0000, 0xF000_0000, 0xA000_0000);
        assert_eq!(at(&[0x8B, 0x07]), 0xFFFF_FFFF_0000_0100, "[rdi]");
        assert_eq!(at(&[0x8B, 0x44, 0x98, 0xF0]), 0x1000 + 0x10 * 4 - 0x10, "[rax + rbx*4 - 16]");
        assert_eq!(at(&[0x8B, 0x05, 0x10, 0, 0, 0]), 0x40_0010, "[rip + 16], from the next RIP");
        assert_eq!(at(&[0x8B, 0x04, 0x25, 0, 0x20, 0, 0]), 0x2000, "[disp32]: no base, no index");
        assert_eq!(at(&[0x8B, 0x04, 0x24]), 0xDEAD, "[rsp]: SIB with no index");
        assert_eq!(at(&[0x42, 0x8B, 0x04, 0x20]), 0x1000, "REX.X: index 100 is R12 (0 here)");
        assert_eq!(at(&[0x43, 0x8B, 0x44, 0x0D, 0x08]), 0x7000 + 0x20 + 8, "[r13 + r9 + 8] (REX.B, REX.X)");
        assert_eq!(at(&[0x8B, 0x45, 0x00]), 0x5000, "[rbp + 0]: mod 01 with base 101");
        assert_eq!(at(&[0x67, 0x8B, 0x07]), 0x100, "address size: EDI");
        assert_eq!(at(&[0x65, 0x8B, 0x07]), 0xA000_0100u64.wrapping_add(0xFFFF_FFFF_0000_0000), "GS base");
        assert_eq!(at(&[0x64, 0x2E, 0x8B, 0x03]), 0x10, "the last segment override counts");
        assert_eq!(at(&[0x64, 0x8B, 0x03]), 0xF000_0010, "FS base");
    }

    #[test]
    fn loads_follow_x86_register_rules() {
        let old = 0x1111_2222_3333_4444;
        assert_eq!(load_into(old, RAX, 1, 0xAB), 0x1111_2222_3333_44AB);
        assert_eq!(load_into(old, Reg { index: 0, high_byte: true }, 1, 0xAB), 0x1111_2222_3333_AB44);
        assert_eq!(load_into(old, RAX, 2, 0xABCD), 0x1111_2222_3333_ABCD);
        assert_eq!(load_into(old, RAX, 4, 0xABCD_EF01), 0xABCD_EF01, "a dword clears the upper half");
        assert_eq!(load_into(old, RAX, 8, 7), 7);
        assert_eq!(store_value(0x1234, Reg { index: 0, high_byte: true }, 1), 0x12);
        assert_eq!(store_value(u64::MAX, RAX, 2), 0xFFFF);
    }

    /// A 4-level walk over a map of entries: 4 KiB, 2 MiB and 1 GiB pages, a missing
    /// entry, paging off, and the modes it does not walk.
    #[test]
    fn the_guests_page_tables_are_walked() {
        let mut m = BTreeMap::new();
        let (pml4, pdpt, pd, pt) = (0x1000u64, 0x2000u64, 0x3000u64, 0x4000u64);
        m.insert(pml4, pdpt | 3);
        m.insert(pdpt, pd | 3); // 0..1 GiB: a directory
        m.insert(pdpt + 8, 0x4000_0000 | 0x83); // 1..2 GiB: one 1 GiB page
        m.insert(pd, pt | 3); // 0..2 MiB: a table
        m.insert(pd + 8, 0x80_0000 | 0x83); // 2..4 MiB: a 2 MiB page at 8 MiB
        m.insert(pt + 5 * 8, 0x9000 | 3); // page 5 -> 0x9000
        let read = |gpa: u64| m.get(&gpa).copied().or(Some(0));
        let paging = Paging { cr0: CR0_PG, cr3: pml4, cr4: CR4_PAE, efer: EFER_LMA };
        assert_eq!(translate(paging, 0x5123, read), Some(0x9123));
        assert_eq!(translate(paging, 0x6000, read), None, "not present");
        assert_eq!(translate(paging, 0x20_1234, read), Some(0x80_1234));
        assert_eq!(translate(paging, 0x4123_4567, read), Some(0x4123_4567));
        assert_eq!(translate(Paging { cr0: 0, ..paging }, 0xFEB0_0000, read), Some(0xFEB0_0000));
        assert_eq!(translate(Paging { cr4: CR4_PAE | CR4_LA57, ..paging }, 0x5000, read), None);
        assert_eq!(translate(Paging { efer: 0, ..paging }, 0x5000, read), None);
        assert_eq!(translate(paging, 0x5000, |_| None), None, "unreadable tables");
        assert_eq!(translate(paging, 0x0001_0000_0000_5123, read), None, "not canonical: no alias of 0x5123");
        assert_eq!(translate(paging, 0xFFFF_8000_0000_5123, read), None, "canonical, unmapped in these tables");
    }

    /// An instruction that crosses into a page that is not mapped is fetched in part.
    #[test]
    fn a_fetch_stops_at_a_page_it_cannot_read() {
        let paging = Paging { cr0: 0, cr3: 0, cr4: 0, efer: 0 };
        let read = |gpa: u64, buf: &mut [u8]| {
            (gpa < 0x2000).then(|| buf.iter_mut().enumerate().for_each(|(i, b)| *b = (gpa as usize + i) as u8))
        };
        let (bytes, n) = fetch(paging, 0x1FFC, |_| None, read).unwrap();
        assert_eq!((n, &bytes[..4]), (4, &[0xFC, 0xFD, 0xFE, 0xFF][..]));
        assert_eq!(fetch(paging, 0x1000, |_| None, read).map(|(_, n)| n), Some(MAX_LEN));
        assert!(fetch(paging, 0x3000, |_| None, read).is_none());
    }
}
