//! #VC raised by the SVSM's own code: the exits SEV-ES/SNP turn into exceptions. The
//! bare-metal handler (svsm/src/bare/snp/) saves the registers, hands the instruction
//! bytes at RIP (SVSM code, so trusted) to `handle`, and skips the instruction on `Ok`.
//!
//! Handled: CPUID (from the CPUID page, never the host), RDTSC/RDTSCP and port I/O
//! (through the GHCB; their answers are the host's and treated as such). Anything else,
//! string port I/O included, is an error the caller turns into a termination: the SVSM
//! has no other use for them.
//!
//! RDMSR/WRMSR in particular: the SVSM touches only MSRs SNP never intercepts (the GHCB
//! MSR, SEV_STATUS, EFER, FS/GS base, and for user mode STAR, LSTAR and FMASK, which KVM
//! passes through as it keeps them in the VMSA), so a #VC for one can only be a host injecting an
//! exception where the SVSM runs with unrestricted injection. Forwarding it would let the
//! host choose those registers (which GHCB a CPU uses, where the C code's stack canary
//! lives); refusing it stops the SVSM instead.

use crate::cpuid::CpuidTable;
use crate::ghcb::{Ghcb, GhcbError};
use crate::hw::SnpHw;
use abi::ghcb::{exit, ioio, offset};

/// The registers a handled #VC reads or writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcError {
    /// An exit code the SVSM does not handle for itself.
    Unsupported(u64),
    /// The instruction at RIP is not the one the exit code implies.
    Decode,
    /// The host failed the event or left a register out of its answer.
    Host(GhcbError),
}

impl From<GhcbError> for VcError {
    fn from(e: GhcbError) -> Self {
        Self::Host(e)
    }
}

/// Handle a #VC with error code `code` for the instruction `insn` (the bytes at RIP).
/// Returns the instruction's length.
pub fn handle<H: SnpHw + ?Sized>(
    hw: &mut H,
    cpuid: &CpuidTable,
    code: u64,
    insn: &[u8],
    regs: &mut VcRegs,
    xcr0: u64,
    xss: u64,
) -> Result<usize, VcError> {
    match code {
        exit::CPUID => {
            expect(insn, &[0x0F, 0xA2])?;
            let out = cpuid.lookup(crate::low32(regs.rax), crate::low32(regs.rcx), xcr0, xss);
            (regs.rax, regs.rbx, regs.rcx, regs.rdx) =
                (u64::from(out[0]), u64::from(out[1]), u64::from(out[2]), u64::from(out[3]));
            Ok(2)
        }
        exit::RDTSC => {
            expect(insn, &[0x0F, 0x31])?;
            let g = event(hw, Ghcb::event(exit::RDTSC, 0, 0))?;
            (regs.rax, regs.rdx) = (low32(answer(&g, offset::RAX)?), low32(answer(&g, offset::RDX)?));
            Ok(2)
        }
        exit::RDTSCP => {
            expect(insn, &[0x0F, 0x01, 0xF9])?;
            let g = event(hw, Ghcb::event(exit::RDTSCP, 0, 0))?;
            (regs.rax, regs.rdx) = (low32(answer(&g, offset::RAX)?), low32(answer(&g, offset::RDX)?));
            regs.rcx = low32(answer(&g, offset::RCX)?);
            Ok(3)
        }
        exit::IOIO => port_io(hw, insn, regs),
        other => Err(VcError::Unsupported(other)),
    }
}

fn expect(insn: &[u8], opcode: &[u8]) -> Result<(), VcError> {
    if insn.starts_with(opcode) { Ok(()) } else { Err(VcError::Decode) }
}

fn low32(v: u64) -> u64 {
    v & 0xFFFF_FFFF
}

fn event<H: SnpHw + ?Sized>(hw: &mut H, mut g: Ghcb) -> Result<Ghcb, VcError> {
    g.call(hw)?;
    Ok(g)
}

fn answer(g: &Ghcb, at: usize) -> Result<u64, VcError> {
    g.get(at).ok_or(VcError::Host(GhcbError::NoResponse))
}

/// IN/OUT with an immediate or DX port, 8/16/32 bits. Returns the instruction length.
fn port_io<H: SnpHw + ?Sized>(hw: &mut H, insn: &[u8], regs: &mut VcRegs) -> Result<usize, VcError> {
    let (opsize16, rest, prefix_len) = match insn {
        [0x66, rest @ ..] => (true, rest, 1),
        rest => (false, rest, 0),
    };
    let (opcode, port, len) = match rest {
        [op @ (0xE4..=0xE7), imm, ..] => (*op, u64::from(*imm), 2),
        [op @ (0xEC..=0xEF), ..] => (*op, regs.rdx & 0xFFFF, 1),
        _ => return Err(VcError::Decode),
    };
    let is_in = matches!(opcode, 0xE4 | 0xE5 | 0xEC | 0xED);
    let byte = matches!(opcode, 0xE4 | 0xE6 | 0xEC | 0xEE);
    let (size_bit, mask) = match (byte, opsize16) {
        (true, _) => (ioio::SIZE8, 0xFFu64),
        (false, true) => (ioio::SIZE16, 0xFFFF),
        (false, false) => (ioio::SIZE32, 0xFFFF_FFFF),
    };
    let info1 = port << ioio::PORT_SHIFT | size_bit | ioio::ADDR64 | if is_in { ioio::IN } else { 0 };
    let mut g = Ghcb::event(exit::IOIO, info1, 0);
    g.set(offset::RAX, if is_in { 0 } else { regs.rax & mask });
    let g = event(hw, g)?;
    if is_in {
        let value = answer(&g, offset::RAX)? & mask;
        // A 32-bit IN zero-extends into RAX; 8 and 16-bit ones keep the upper bits.
        regs.rax = if mask == 0xFFFF_FFFF { value } else { regs.rax & !mask | value };
    }
    Ok(prefix_len + len)
}
