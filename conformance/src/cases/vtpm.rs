//! Section 8: the vTPM protocol (SVSM_VTPM_QUERY, SVSM_VTPM_CMD with TPM_SEND_COMMAND) in
//! the request layout Linux uses, with the decisions of docs/protocols/vtpm.md: locality
//! must be zero, a command the TPM cannot parse gets the TPM's own error response (the
//! call succeeds), a request the SVSM cannot take gets the spec's error and changes
//! nothing in the page.

use crate::Env;
use crate::check::{CaseError, CaseResult, client, discovery, ensure, raw};
use abi::protocol::vtpm_call::{CMD, QUERY};
use abi::protocol::{ProtocolId, query_protocol_rcx, query_protocol_result};
use abi::result::ResultCode;
use abi::vtpm::{BUFFER_SIZE, MAX_COMMAND_SIZE, QUERY_SEND_COMMAND_BIT, TPM_SEND_COMMAND, request_header};
use alloc::vec;
use alloc::vec::Vec;
use vtpm::wire::{self, Command, ResponseHeader};

const VTPM: u32 = 2;

/// Skips the case unless the SVSM announces protocol 2.
fn needs_vtpm(env: &mut dyn Env) -> CaseResult {
    let (got, regs) =
        raw(env, 0, abi::protocol::core_call::QUERY_PROTOCOL, [query_protocol_rcx(ProtocolId::VTPM, 1), 0, 0, 0])?;
    ensure!(got == ResultCode::SUCCESS, "QUERY_PROTOCOL: {got}");
    if regs.rcx == 0 {
        return Err(CaseError::Skip("the SVSM serves no vTPM"));
    }
    Ok(())
}

/// The request page.
fn page(env: &mut dyn Env) -> u64 {
    env.facts().scratch + 0x8000
}

/// Run `command` through the vTPM; the response bytes.
fn tpm(env: &mut dyn Env, command: &[u8]) -> Result<Vec<u8>, CaseError> {
    let page = page(env);
    let mut response = vec![0u8; BUFFER_SIZE];
    let len = client(env)
        .vtpm_command(page, command, &mut response)
        .map_err(|e| CaseError::Fail(alloc::format!("TPM command: {e:?}")))?;
    response.truncate(len);
    Ok(response)
}

fn get_random(bytes: u16) -> Vec<u8> {
    let mut c = Command::new(wire::TPM_ST_NO_SESSIONS, wire::TPM_CC_GET_RANDOM);
    c.u16(bytes);
    c.finish()
}

/// A raw request: ordinal, locality, size field, command bytes.
fn request(ordinal: u32, locality: u8, size: u32, command: &[u8]) -> Vec<u8> {
    let mut r = request_header(ordinal, locality, size).to_vec();
    r.extend_from_slice(command);
    r
}

pub fn query(env: &mut dyn Env) -> CaseResult {
    needs_vtpm(env)?;
    let (_, regs) =
        raw(env, 0, abi::protocol::core_call::QUERY_PROTOCOL, [query_protocol_rcx(ProtocolId::VTPM, 1), 0, 0, 0])?;
    ensure!(regs.rcx == query_protocol_result(1, 1), "QUERY_PROTOCOL(2, 1) = {:#x}", regs.rcx);
    let (_, regs) =
        raw(env, 0, abi::protocol::core_call::QUERY_PROTOCOL, [query_protocol_rcx(ProtocolId::VTPM, 2), 0, 0, 0])?;
    ensure!(regs.rcx == 0, "QUERY_PROTOCOL(2, 2) = {:#x}", regs.rcx);
    let (got, regs) = raw(env, VTPM, QUERY, [0; 4])?;
    ensure!(got == ResultCode::SUCCESS, "SVSM_VTPM_QUERY: {got}");
    ensure!(regs.rcx == QUERY_SEND_COMMAND_BIT, "command ordinals {:#x}: only TPM_SEND_COMMAND (bit 8)", regs.rcx);
    ensure!(regs.rdx == 0, "feature bits {:#x} (must be zero)", regs.rdx);
    let (got, _) = raw(env, VTPM, 2, [0; 4])?;
    ensure!(got == ResultCode::ERR_UNSUPPORTED_CALL, "vTPM call 2: {got}");
    Ok(())
}

pub fn command(env: &mut dyn Env) -> CaseResult {
    needs_vtpm(env)?;
    // The SVSM started the TPM: Startup again is TPM_RC_INITIALIZE.
    let mut startup = Command::new(wire::TPM_ST_NO_SESSIONS, wire::TPM_CC_STARTUP);
    startup.u16(wire::TPM_SU_CLEAR);
    let r = tpm(env, &startup.finish())?;
    let h = ResponseHeader::parse(&r).ok_or(CaseError::Fail("Startup: no response header".into()))?;
    ensure!(h.code == wire::TPM_RC_INITIALIZE, "Startup: TPM rc {:#x}", h.code);
    let a = tpm(env, &get_random(32))?;
    let b = tpm(env, &get_random(32))?;
    for r in [&a, &b] {
        let h = ResponseHeader::parse(r).ok_or(CaseError::Fail("GetRandom: no header".into()))?;
        ensure!(h.code == 0 && h.size as usize == r.len() && r.len() == 12 + 32, "GetRandom: {h:?}, {} bytes", r.len());
    }
    ensure!(a[12..] != b[12..], "two GetRandom(32) answers are equal");
    Ok(())
}

pub fn malformed(env: &mut dyn Env) -> CaseResult {
    needs_vtpm(env)?;
    let lying_size = [0x80, 0x01, 0, 0, 0x10, 0, 0, 0, 0x01, 0x7B, 0, 8];
    let unknown_code = [0x80, 0x01, 0, 0, 0, 10, 0x7F, 0xFF, 0xFF, 0xFF];
    let cases: [(&[u8], &str); 5] = [
        (&[], "an empty command"),
        (&[0x80, 0x01, 0], "three bytes"),
        (&lying_size, "a size field larger than the command"),
        (&unknown_code, "an unknown command code"),
        (&[0xA5; 600], "600 bytes of noise"),
    ];
    for (command, what) in cases {
        let r = tpm(env, command)?;
        let h = ResponseHeader::parse(&r).ok_or(CaseError::Fail(alloc::format!("{what}: no response header")))?;
        ensure!(h.code != 0, "{what}: accepted");
        ensure!(h.size as usize == r.len(), "{what}: header size {} for {} bytes", h.size, r.len());
    }
    let r = tpm(env, &get_random(8))?;
    ensure!(ResponseHeader::parse(&r).is_some_and(|h| h.code == 0), "the TPM stopped working");
    Ok(())
}

pub fn bad_request(env: &mut dyn Env) -> CaseResult {
    needs_vtpm(env)?;
    let page = page(env);
    let command = get_random(8);
    let size = command.len() as u32;
    let cases = [
        (request(7, 0, size, &command), "ordinal 7 (not TPM_SEND_COMMAND)"),
        (request(0, 0, size, &command), "ordinal 0"),
        (request(TPM_SEND_COMMAND, 1, size, &command), "locality 1"),
        (request(TPM_SEND_COMMAND, 4, size, &command), "locality 4"),
        (request(TPM_SEND_COMMAND, 0, MAX_COMMAND_SIZE as u32 + 1, &command), "a size past the page"),
        (request(TPM_SEND_COMMAND, 0, u32::MAX, &command), "size 0xffffffff"),
    ];
    for (req, what) in cases {
        env.write(page, &req)?;
        let (got, _) = raw(env, VTPM, CMD, [page, 0, 0, 0])?;
        ensure!(got == ResultCode::ERR_INVALID_PARAMETER, "{what}: {got}");
        let mut after = vec![0u8; req.len()];
        env.read(page, &mut after)?;
        ensure!(after == req, "{what}: the refused request changed the page");
    }
    // The largest command the page holds is accepted (the TPM judges its content).
    let mut big = vec![0u8; MAX_COMMAND_SIZE];
    big[..10].copy_from_slice(&[0x80, 0x01, 0, 0, 0x0F, 0xF7, 0, 0, 0x01, 0x7B]);
    env.write(page, &request(TPM_SEND_COMMAND, 0, MAX_COMMAND_SIZE as u32, &big))?;
    let (got, _) = raw(env, VTPM, CMD, [page, 0, 0, 0])?;
    ensure!(got == ResultCode::SUCCESS, "a {MAX_COMMAND_SIZE}-byte command: {got}");
    Ok(())
}

/// A request buffer that is not 4 KiB aligned works as well as an aligned one: edk2's first
/// `Tpm2SvsmTpmSendCommand` (SecurityPkg/Library/Tpm2DeviceLibDTpm/Tpm2Svsm.c) sent a static
/// `UINT8 Tpm2SvsmBuffer[4096]` with no alignment, and COCONUT accepts it. A buffer whose
/// second page is not the guest's validated RAM is refused with INVALID_ADDRESS.
pub fn unaligned_buffer(env: &mut dyn Env) -> CaseResult {
    needs_vtpm(env)?;
    let page = page(env);
    let command = get_random(8);
    for gpa in [page + 8, page + 0x800, page + 1, page + 0xFFF] {
        let mut response = [0u8; 64];
        let len = client(env)
            .vtpm_command(gpa, &command, &mut response)
            .map_err(|e| CaseError::Fail(alloc::format!("request at {gpa:#x}: {e:?}")))?;
        let header = ResponseHeader::parse(&response[..len]);
        ensure!(header.is_some_and(|h| h.code == 0), "request at {gpa:#x}: the TPM answered {:x?}", &response[..len]);
    }
    // The buffer's second half in memory the guest has not validated.
    let straddle = env.facts().free_small - 0x800;
    if env.write(straddle, &request(TPM_SEND_COMMAND, 0, command.len() as u32, &command)).is_ok() {
        let (got, _) = raw(env, VTPM, CMD, [straddle, 0, 0, 0])?;
        ensure!(got == ResultCode::ERR_INVALID_ADDRESS, "a buffer reaching unvalidated memory: {got}");
    }
    Ok(())
}

pub fn addresses(env: &mut dyn Env) -> CaseResult {
    needs_vtpm(env)?;
    let f = env.facts();
    let d = discovery(env)?;
    for (gpa, what) in [
        (d.svsm_base, "SVSM memory"),
        (f.startup_vmsa, "the startup VMSA"),
        (f.secrets_page, "the secrets page"),
        (f.free_small, "unvalidated memory"),
        (f.not_ram, "not RAM"),
    ] {
        let (got, _) = raw(env, VTPM, CMD, [gpa, 0, 0, 0])?;
        ensure!(got == ResultCode::ERR_INVALID_ADDRESS, "request page in {what}: {got}");
    }
    Ok(())
}

pub fn ek_in_manifest(env: &mut dyn Env) -> CaseResult {
    needs_vtpm(env)?;
    if !env.facts().attestation {
        return Err(CaseError::Skip("no attestation reports on this platform"));
    }
    // The EK as the guest derives it: CreatePrimary(endorsement, TCG default template).
    let r = tpm(env, &vtpm::create_ek_command())?;
    let code = ResponseHeader::parse(&r).map_or(u32::MAX, |h| h.code);
    ensure!(code == 0, "CreatePrimary(EK): TPM rc {code:#x}");
    let (handle, ek) =
        vtpm::create_primary_result(&r).ok_or(CaseError::Fail("CreatePrimary(EK): response too short".into()))?;
    let ek = ek.to_vec();
    let mut flush = Command::new(wire::TPM_ST_NO_SESSIONS, wire::TPM_CC_FLUSH_CONTEXT);
    flush.u32(handle);
    tpm(env, &flush.finish())?;

    let manifest = crate::cases::attest::manifest(env)?;
    let entry = crate::cases::attest::manifest_entry(&manifest, &abi::attest::VTPM_SERVICE_GUID)
        .ok_or(CaseError::Fail("no vTPM entry in the services manifest".into()))?;
    ensure!(
        entry == ek.as_slice(),
        "the manifest's vTPM entry ({} bytes) is not the EK ({} bytes)",
        entry.len(),
        ek.len()
    );
    Ok(())
}
