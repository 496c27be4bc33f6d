//! The vTPM protocol from the guest's side (protocol 2, spec section 8), as Linux's
//! tpm_svsm driver uses it: one 4 KiB page holds the TPM_SEND_COMMAND request and then
//! the response.

use crate::client::{CallError, Client, Transport};
use abi::protocol::{CallId, ProtocolId, vtpm_call};
use abi::vtpm::{
    MAX_COMMAND_SIZE, MAX_RESPONSE_SIZE, REQ_COMMAND_OFFSET, RESP_DATA_OFFSET, RESP_SIZE_OFFSET, TPM_SEND_COMMAND,
    request_header,
};

/// Why a TPM command did not produce a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VtpmError {
    /// The command does not fit the request page.
    CommandTooLarge,
    /// The SVSM reported a response that does not fit the caller's buffer or the page.
    BadResponseSize(u32),
    Call(CallError),
}

impl From<CallError> for VtpmError {
    fn from(e: CallError) -> Self {
        Self::Call(e)
    }
}

impl From<crate::client::GuestFault> for VtpmError {
    fn from(f: crate::client::GuestFault) -> Self {
        Self::Call(CallError::Fault(f))
    }
}

impl<T: Transport> Client<T> {
    /// SVSM_VTPM_QUERY: (supported command ordinals, feature bits).
    pub fn vtpm_query(&mut self) -> Result<(u64, u64), CallError> {
        let out = self.call(CallId::new(ProtocolId::VTPM, vtpm_call::QUERY), 0, 0, 0, 0)?;
        Ok((out.rcx, out.rdx))
    }

    /// Run one TPM command through the 4096-byte request buffer at `page` (Linux passes a
    /// page of its own; any start works) at locality 0, as Linux does; the response goes to `response`, its length is
    /// returned.
    pub fn vtpm_command(&mut self, page: u64, command: &[u8], response: &mut [u8]) -> Result<usize, VtpmError> {
        self.vtpm_command_at(page, 0, command, response)
    }

    /// [`Self::vtpm_command`] at `locality` (the SVSM accepts only 0; host tools pass a
    /// simulator client's locality on so the SVSM judges it).
    pub fn vtpm_command_at(
        &mut self,
        page: u64,
        locality: u8,
        command: &[u8],
        response: &mut [u8],
    ) -> Result<usize, VtpmError> {
        if command.len() > MAX_COMMAND_SIZE {
            return Err(VtpmError::CommandTooLarge);
        }
        let header = request_header(TPM_SEND_COMMAND, locality, command.len() as u32);
        self.transport.write(page, &header)?;
        self.transport.write(page + REQ_COMMAND_OFFSET as u64, command)?;
        self.call(CallId::new(ProtocolId::VTPM, vtpm_call::CMD), page, 0, 0, 0)?;
        let mut size = [0u8; 4];
        self.transport.read(page + RESP_SIZE_OFFSET as u64, &mut size)?;
        let size = u32::from_le_bytes(size);
        let len = size as usize;
        if len > MAX_RESPONSE_SIZE || len > response.len() {
            return Err(VtpmError::BadResponseSize(size));
        }
        self.transport.read(page + RESP_DATA_OFFSET as u64, &mut response[..len])?;
        Ok(len)
    }
}
