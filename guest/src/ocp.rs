//! The Observability and Configuration Protocol from the guest's side (protocol 5,
//! version 1; docs/protocols/ocp.md): typed calls over any [`Transport`], and the list
//! entry decoded.

use crate::client::{CallError, Client, Regs, Transport};
use abi::ocp::{ENTRY_SIZE, NAME_OFFSET, flags};
use abi::protocol::{CallId, ProtocolId, ocp_call};
use abi::result::ResultCode;

/// One entry of SVSM_OCP_LIST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceEntry {
    pub flags: u32,
    name: [u8; ENTRY_SIZE - NAME_OFFSET],
    name_len: usize,
}

impl SourceEntry {
    pub fn decode(entry: &[u8; ENTRY_SIZE]) -> Self {
        let mut name = [0u8; ENTRY_SIZE - NAME_OFFSET];
        name.copy_from_slice(&entry[NAME_OFFSET..]);
        let name_len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        Self { flags: u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]), name, name_len }
    }

    /// The name, or `None` if it is not UTF-8.
    pub fn name(&self) -> Option<&str> {
        core::str::from_utf8(&self.name[..self.name_len]).ok()
    }

    pub fn writeable(&self) -> bool {
        self.flags & flags::WRITEABLE != 0
    }
}

/// What a reader of the whole log puts where the SVSM had overwritten bytes before it
/// read them (it keeps only the newest), before going on from the oldest byte held.
pub const OVERWRITTEN: &[u8] = b"[... earlier bytes of the log were overwritten before this read ...]\n";

/// Most bytes a reader of the whole log gathers before it gives up on a log that keeps
/// moving past it (the SVSM's ring holds 64 KiB).
pub const WHOLE_READ_MAX: usize = 1 << 20;

/// What SVSM_OCP_READ did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes were copied (fewer than asked: the end of the data).
    Copied(u32),
    /// The log bytes asked for were overwritten; `oldest` is the first still held.
    Lost { oldest: u32 },
}

impl<T: Transport> Client<T> {
    fn ocp(&mut self, call: u32, regs: [u64; 4]) -> Result<Regs, CallError> {
        let [rcx, rdx, r8, r9] = regs;
        self.issue(Regs { rax: CallId::new(ProtocolId::OCP, call).to_rax(), rcx, rdx, r8, r9 })
    }

    /// SVSM_OCP_LIST: up to `count` entries from `first` into guest memory at `buffer`;
    /// returns how many were written.
    pub fn ocp_list(&mut self, first: u32, buffer: u64, count: u32) -> Result<u32, CallError> {
        let out = self.ocp(ocp_call::LIST, [u64::from(first), buffer, u64::from(count), 0])?;
        match ResultCode::from_rax(out.rax) {
            ResultCode::SUCCESS => Ok(out.rcx as u32),
            other => Err(CallError::Failed(other)),
        }
    }

    /// SVSM_OCP_READ of up to `len` bytes from `offset` into guest memory at `buffer`.
    pub fn ocp_read(&mut self, index: u32, buffer: u64, len: u32, offset: u32) -> Result<ReadOutcome, CallError> {
        let out = self.ocp(ocp_call::READ, [u64::from(index), buffer, u64::from(len), u64::from(offset)])?;
        match ResultCode::from_rax(out.rax) {
            ResultCode::SUCCESS => Ok(ReadOutcome::Copied(out.r8 as u32)),
            ResultCode(abi::ocp::result::DATA_LOST) => Ok(ReadOutcome::Lost { oldest: out.r9 as u32 }),
            other => Err(CallError::Failed(other)),
        }
    }

    /// Source `index` whole, from offset 0, through the guest page `buffer` 4 KiB at a
    /// time, each piece handed to `sink`. A log whose first bytes the SVSM overwrote
    /// before they were read gives [`OVERWRITTEN`], then the log from its oldest byte
    /// held. `Ok(false)`: the source outgrew [`WHOLE_READ_MAX`] bytes (a log that keeps
    /// moving past the reader).
    pub fn ocp_read_whole(&mut self, index: u32, buffer: u64, sink: &mut dyn FnMut(&[u8])) -> Result<bool, CallError> {
        const PIECE: u32 = 4096;
        let (mut offset, mut gathered) = (0u32, 0usize);
        let mut piece = [0u8; PIECE as usize];
        loop {
            if gathered > WHOLE_READ_MAX {
                return Ok(false);
            }
            match self.ocp_read(index, buffer, PIECE, offset)? {
                ReadOutcome::Lost { oldest } => {
                    sink(OVERWRITTEN);
                    gathered += OVERWRITTEN.len();
                    offset = oldest;
                }
                ReadOutcome::Copied(n) => {
                    // At most what was asked; an SVSM that claims more is taken at its
                    // word for the bytes that fit, and read on from there.
                    let n = n.min(PIECE);
                    let got = piece.get_mut(..n as usize).unwrap_or_default();
                    self.transport.read(buffer, got)?;
                    sink(got);
                    gathered += got.len();
                    offset = offset.wrapping_add(n);
                    if n < PIECE {
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// SVSM_OCP_WRITE of `len` bytes at `buffer` to source `index`; returns the bytes taken.
    pub fn ocp_write(&mut self, index: u32, buffer: u64, len: u32) -> Result<u32, CallError> {
        let out = self.ocp(ocp_call::WRITE, [u64::from(index), buffer, u64::from(len), 0])?;
        match ResultCode::from_rax(out.rax) {
            ResultCode::SUCCESS => Ok(out.r8 as u32),
            other => Err(CallError::Failed(other)),
        }
    }
}
