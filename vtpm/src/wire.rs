//! The few TPM 2.0 structures the SVSM itself marshals (TPM 2.0 Part 2 and 3): the
//! commands of manufacturing (Startup, CreatePrimary, FlushContext), response headers,
//! and the error response sent when the engine cannot answer.
//!
//! Hand-written because the SVSM needs only these three commands and one response field;
//! a full TSS does not fit a `no_std` kernel.

use alloc::vec::Vec;

pub const TPM_ST_NO_SESSIONS: u16 = 0x8001;
pub const TPM_ST_SESSIONS: u16 = 0x8002;

pub const TPM_CC_STARTUP: u32 = 0x0000_0144;
pub const TPM_CC_CREATE_PRIMARY: u32 = 0x0000_0131;
pub const TPM_CC_FLUSH_CONTEXT: u32 = 0x0000_0165;
pub const TPM_CC_GET_RANDOM: u32 = 0x0000_017B;
pub const TPM_CC_PCR_EXTEND: u32 = 0x0000_0182;

pub const TPM_SU_CLEAR: u16 = 0x0000;
pub const TPM_RH_ENDORSEMENT: u32 = 0x4000_000B;
pub const TPM_RS_PW: u32 = 0x4000_0009;

pub const TPM_RC_SUCCESS: u32 = 0x000;
/// The TPM is in failure mode or could not run the command.
pub const TPM_RC_FAILURE: u32 = 0x101;
/// Startup was already done.
pub const TPM_RC_INITIALIZE: u32 = 0x100;

/// Size of a response header: tag, size, response code.
pub const HEADER_SIZE: usize = 10;

/// A command under construction: header first, size patched in by [`Command::finish`].
#[derive(Debug)]
pub struct Command(Vec<u8>);

impl Command {
    pub fn new(tag: u16, code: u32) -> Self {
        let mut c = Self(Vec::with_capacity(64));
        c.u16(tag).u32(0).u32(code);
        c
    }
    /// A bare structure (no command header), e.g. a template.
    pub fn structure() -> Self {
        Self(Vec::with_capacity(512))
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// A TPM2B: u16 size, then the bytes. Callers pass at most a page.
    pub fn sized(&mut self, v: &[u8]) -> &mut Self {
        self.u16(v.len() as u16).bytes(v)
    }
    /// An empty password authorization area (one TPMS_AUTH_COMMAND for TPM_RS_PW).
    pub fn password_auth(&mut self) -> &mut Self {
        // authorizationSize, sessionHandle, nonce (empty), sessionAttributes, hmac (empty).
        self.u32(9).u32(TPM_RS_PW).u16(0).u8(0).u16(0)
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
    pub fn finish(mut self) -> Vec<u8> {
        let size = (self.0.len() as u32).to_be_bytes();
        self.0[2..6].copy_from_slice(&size);
        self.0
    }
}

/// The header of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHeader {
    pub tag: u16,
    pub size: u32,
    pub code: u32,
}

impl ResponseHeader {
    pub fn parse(response: &[u8]) -> Option<Self> {
        let h = response.get(..HEADER_SIZE)?;
        Some(Self {
            tag: u16::from_be_bytes([h[0], h[1]]),
            size: u32::from_be_bytes([h[2], h[3], h[4], h[5]]),
            code: u32::from_be_bytes([h[6], h[7], h[8], h[9]]),
        })
    }
}

/// The 10-byte response a TPM sends for a command it rejects with `code`.
pub fn error_response(code: u32) -> Vec<u8> {
    let mut r = Vec::with_capacity(HEADER_SIZE);
    r.extend_from_slice(&TPM_ST_NO_SESSIONS.to_be_bytes());
    r.extend_from_slice(&(HEADER_SIZE as u32).to_be_bytes());
    r.extend_from_slice(&code.to_be_bytes());
    r
}

/// Write a bare error response with `code` into `out`; its length (0 if `out` cannot
/// hold a header, which no caller's buffer is that small).
pub fn write_error_response(code: u32, out: &mut [u8]) -> usize {
    let Some(header) = out.get_mut(..HEADER_SIZE) else { return 0 };
    header[..2].copy_from_slice(&TPM_ST_NO_SESSIONS.to_be_bytes());
    header[2..6].copy_from_slice(&(HEADER_SIZE as u32).to_be_bytes());
    header[6..].copy_from_slice(&code.to_be_bytes());
    HEADER_SIZE
}

/// Big-endian reads from a response body; `None` once it runs out.
#[derive(Debug)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// A TPM2B's contents.
    pub fn sized(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_clear_is_the_twelve_bytes_of_part_3() {
        let mut c = Command::new(TPM_ST_NO_SESSIONS, TPM_CC_STARTUP);
        c.u16(TPM_SU_CLEAR);
        assert_eq!(c.finish(), [0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x44, 0, 0]);
    }

    #[test]
    fn an_error_response_parses_back_with_its_code() {
        let r = error_response(TPM_RC_FAILURE);
        assert_eq!(
            ResponseHeader::parse(&r),
            Some(ResponseHeader { tag: TPM_ST_NO_SESSIONS, size: 10, code: TPM_RC_FAILURE })
        );
        assert_eq!(ResponseHeader::parse(&r[..9]), None);
    }

    #[test]
    fn the_reader_stops_at_the_end_instead_of_reading_past_it() {
        let mut r = Reader::new(&[0, 3, 1, 2]);
        assert_eq!(r.sized(), None);
        let mut r = Reader::new(&[0, 2, 1, 2, 9]);
        assert_eq!(r.sized(), Some(&[1u8, 2][..]));
        assert_eq!(r.u16(), None);
    }
}
