//! The vTPM protocol (protocol 2, spec section 8) in the request layout Linux uses
//! (the rev 1.00 layout, docs/protocols/vtpm.md): SVSM_VTPM_QUERY and SVSM_VTPM_CMD with TPM_SEND_COMMAND.
//!
//! The request page is copied out of guest memory once, the command runs on the copy, and
//! only the response size and bytes are written back. A command the TPM cannot parse is
//! the TPM's business: it answers with its own error response and the call succeeds.
//! Decisions the spec leaves open are in docs/protocols/vtpm.md.

use super::{CallContext, Reply};
use crate::addr::Gpa;
use crate::error::{CallError, CallResult};
use crate::platform::Platform;
use crate::svsm::Svsm;
use crate::{guest_memory, heap};
use abi::protocol::vtpm_call;
use abi::vtpm::{
    BUFFER_SIZE, MAX_COMMAND_SIZE, MAX_RESPONSE_SIZE, QUERY_SEND_COMMAND_BIT, REQ_COMMAND_OFFSET, REQ_LOCALITY_OFFSET,
    REQ_ORDINAL_OFFSET, REQ_SIZE_OFFSET, RESP_DATA_OFFSET, TPM_SEND_COMMAND,
};

pub fn handle<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> Reply {
    if svsm.vtpm.is_none() {
        return Reply::err(CallError::UnsupportedProtocol);
    }
    match ctx.id.call {
        // Only TPM_SEND_COMMAND; no feature bits (RDX must be zero).
        vtpm_call::QUERY => Reply::ok().with_rcx(QUERY_SEND_COMMAND_BIT).with_rdx(0),
        vtpm_call::CMD => send_command(svsm, p, ctx, Gpa(ctx.regs.rcx)).into(),
        _ => Reply::err(CallError::UnsupportedCall),
    }
}

/// The little-endian u32 at `offset` of the request page (0 past its end: the offsets are
/// constants well inside it).
fn u32_at(page: &[u8], offset: usize) -> u32 {
    page.get(offset..offset + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(0, u32::from_le_bytes)
}

/// The request buffer may start anywhere: Linux (drivers/char/tpm/tpm_svsm.c) passes a
/// page of its own, but edk2's first `Tpm2SvsmTpmSendCommand`
/// (SecurityPkg/Library/Tpm2DeviceLibDTpm/Tpm2Svsm.c) used a static 4096-byte array with
/// no alignment, and COCONUT accepts it. The buffer is 4096 bytes wherever it starts; every
/// page it touches must be a parameter page (validated guest RAM, not the SVSM's).
fn send_command<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext, gpa: Gpa) -> CallResult<()> {
    // The whole buffer is checked writable up front: a response that cannot be delivered
    // must not cost a TPM command (which may change TPM state).
    guest_memory::check_writable(p, ctx.view(&svsm.pages), gpa, BUFFER_SIZE)?;
    let mut page = heap::zeroed(BUFFER_SIZE)?;
    guest_memory::read_bytes(p, ctx.view(&svsm.pages), gpa, &mut page)?;
    if u32_at(&page, REQ_ORDINAL_OFFSET) != TPM_SEND_COMMAND {
        return Err(CallError::InvalidParameter("vTPM command ordinal is not TPM_SEND_COMMAND"));
    }
    if page.get(REQ_LOCALITY_OFFSET) != Some(&0) {
        return Err(CallError::InvalidParameter("vTPM locality is not zero"));
    }
    let too_large = CallError::InvalidParameter("TPM command larger than the request page");
    let size = usize::try_from(u32_at(&page, REQ_SIZE_OFFSET)).map_err(|_| too_large)?;
    if size > MAX_COMMAND_SIZE {
        return Err(too_large);
    }
    let command = page.get(REQ_COMMAND_OFFSET..REQ_COMMAND_OFFSET + size).ok_or(too_large)?;
    let Some(vtpm) = svsm.vtpm.as_ref() else { return Err(CallError::UnsupportedProtocol) };
    let mut out = heap::zeroed(RESP_DATA_OFFSET + MAX_RESPONSE_SIZE)?;
    // One command at a time: the vTPM's lock, and nothing else, is held while it runs, so
    // core calls on other vCPUs go on.
    // The response length is the first 4 bytes of the page.
    const _: () = assert!(RESP_DATA_OFFSET == 4);
    let (head, data) = out.split_at_mut(RESP_DATA_OFFSET);
    let len = vtpm.lock().execute(command, data);
    // `execute` bounds the response by the buffer (4092 bytes), so the length fits a u32.
    let len32 = u32::try_from(len).map_err(|_| CallError::InvalidRequest("vTPM response too large"))?;
    head.copy_from_slice(&len32.to_le_bytes());
    let response = out.get(..RESP_DATA_OFFSET + len).ok_or(CallError::InvalidRequest("vTPM response too large"))?;
    guest_memory::write_bytes(p, ctx.view(&svsm.pages), gpa, response)
}
