//! vTPM protocol buffers (spec 58019 section 8, in the Linux layout of docs/facts.md section 1).
//!
//! Request: u32 command ordinal, u8 locality, u32 command size, command bytes.
//! Response: u32 response size, response bytes. Both live in one 4 KiB page.

/// MS simulator command ordinal TPM_SEND_COMMAND.
pub const TPM_SEND_COMMAND: u32 = 8;
/// Bit of SVSM_VTPM_QUERY's RCX announcing TPM_SEND_COMMAND.
pub const QUERY_SEND_COMMAND_BIT: u64 = 1 << TPM_SEND_COMMAND;

/// Offsets in the request.
pub const REQ_ORDINAL_OFFSET: usize = 0x0;
pub const REQ_LOCALITY_OFFSET: usize = 0x4;
pub const REQ_SIZE_OFFSET: usize = 0x5;
pub const REQ_COMMAND_OFFSET: usize = 0x9;
/// Offsets in the response.
pub const RESP_SIZE_OFFSET: usize = 0x0;
pub const RESP_DATA_OFFSET: usize = 0x4;
/// The request/response page.
pub const BUFFER_SIZE: usize = 4096;
/// Largest TPM command that fits the request page.
pub const MAX_COMMAND_SIZE: usize = BUFFER_SIZE - REQ_COMMAND_OFFSET;
/// Largest TPM response that fits the response page.
pub const MAX_RESPONSE_SIZE: usize = BUFFER_SIZE - RESP_DATA_OFFSET;

/// The request's header: ordinal, locality, command size (the command follows it).
pub fn request_header(ordinal: u32, locality: u8, command_size: u32) -> [u8; REQ_COMMAND_OFFSET] {
    let mut h = [0u8; REQ_COMMAND_OFFSET];
    h[REQ_ORDINAL_OFFSET..REQ_ORDINAL_OFFSET + 4].copy_from_slice(&ordinal.to_le_bytes());
    h[REQ_LOCALITY_OFFSET] = locality;
    h[REQ_SIZE_OFFSET..REQ_SIZE_OFFSET + 4].copy_from_slice(&command_size.to_le_bytes());
    h
}
