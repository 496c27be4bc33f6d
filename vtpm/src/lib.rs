//! The SVSM's vTPM: a TPM 2.0 engine behind [`TpmEngine`], and its manufacturing.
//!
//! The engine is libtpms (the engine swtpm uses), linked with the `libtpms` feature; tests
//! and host tools may put any other engine behind the trait. When the SVSM starts, it
//! [manufactures](Vtpm::manufacture) the vTPM: TPM2_Startup(CLEAR), then the endorsement
//! key from the TCG default template (EK Credential Profile, template L-1: RSA 2048). The
//! EK public area (TPMT_PUBLIC) is the vTPM's entry in the attestation services manifest,
//! so a verifier can bind the EK to the hardware report.

#![no_std]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

extern crate alloc;

#[cfg(feature = "libtpms")]
pub mod libtpms;
pub mod wire;

use alloc::boxed::Box;
use alloc::vec::Vec;
use wire::{Command, Reader, ResponseHeader};

/// A TPM 2.0 engine: one command in, one response out. The engine answers a malformed
/// command with the TPM's own error response; it never fails otherwise.
///
/// The response goes into the caller's buffer, so a command costs the SVSM no
/// allocation: guest-triggered paths stay fallible-free (docs/protocols/vtpm.md).
pub trait TpmEngine: Send {
    /// Run `command`; write the response into `response` and return its length. A
    /// response larger than `response` is not cut: the engine answers TPM_RC_FAILURE
    /// (see [`wire::write_error_response`]) instead.
    fn execute(&mut self, command: &[u8], response: &mut [u8]) -> usize;
}

/// Why manufacturing failed: the command that failed and the TPM response code (or
/// [`wire::TPM_RC_FAILURE`] for a response too short to carry one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManufactureError {
    pub step: &'static str,
    pub code: u32,
}

/// A manufactured vTPM: its engine and its EK public area.
pub struct Vtpm {
    engine: Box<dyn TpmEngine>,
    ek_public: Vec<u8>,
}

impl core::fmt::Debug for Vtpm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vtpm").field("ek_public_len", &self.ek_public.len()).finish_non_exhaustive()
    }
}

impl Vtpm {
    /// Start `engine` (TPM2_Startup(CLEAR); a TPM already started is fine) and derive its
    /// EK. The EK is a primary key: the same endorsement seed gives the same key, so the
    /// handle is flushed again and a guest's `tpm2_createek` recreates the same public area.
    pub fn manufacture(mut engine: Box<dyn TpmEngine>) -> Result<Self, ManufactureError> {
        let mut startup = Command::new(wire::TPM_ST_NO_SESSIONS, wire::TPM_CC_STARTUP);
        startup.u16(wire::TPM_SU_CLEAR);
        match run(engine.as_mut(), "TPM2_Startup", &startup.finish()) {
            Ok(_) | Err(ManufactureError { code: wire::TPM_RC_INITIALIZE, .. }) => {}
            Err(e) => return Err(e),
        }
        let response = run(engine.as_mut(), "TPM2_CreatePrimary(EK)", &create_ek_command())?;
        let fail = ManufactureError { step: "TPM2_CreatePrimary(EK) response", code: wire::TPM_RC_FAILURE };
        let (handle, ek_public) = create_primary_result(&response).ok_or(fail)?;
        let ek_public = ek_public.to_vec();
        let mut flush = Command::new(wire::TPM_ST_NO_SESSIONS, wire::TPM_CC_FLUSH_CONTEXT);
        flush.u32(handle);
        run(engine.as_mut(), "TPM2_FlushContext(EK)", &flush.finish())?;
        Ok(Self { engine, ek_public })
    }

    /// A vTPM whose EK is already known (an engine shared by several model machines).
    pub fn with_ek(engine: Box<dyn TpmEngine>, ek_public: Vec<u8>) -> Self {
        Self { engine, ek_public }
    }

    /// The EK public area (TPMT_PUBLIC, as TPM2_CreatePrimary returns it inside its
    /// TPM2B_PUBLIC).
    pub fn ek_public(&self) -> &[u8] {
        &self.ek_public
    }

    /// Run one guest command; the response goes into `response` (the protocol's page
    /// holds at most `response.len()` bytes), its length is returned. An answer the
    /// engine gets wrong (longer than the buffer, or without a header) is replaced by
    /// TPM_RC_FAILURE: the guest gets an answer it can parse rather than a cut one.
    pub fn execute(&mut self, command: &[u8], response: &mut [u8]) -> usize {
        let len = self.engine.execute(command, response);
        match response.get(..len) {
            Some(r) if ResponseHeader::parse(r).is_some() => len,
            _ => wire::write_error_response(wire::TPM_RC_FAILURE, response),
        }
    }
}

/// Room for any response during manufacturing.
const MANUFACTURE_RESPONSE: usize = 4096;

fn run(engine: &mut dyn TpmEngine, step: &'static str, command: &[u8]) -> Result<Vec<u8>, ManufactureError> {
    let mut response = alloc::vec![0u8; MANUFACTURE_RESPONSE];
    let len = engine.execute(command, &mut response);
    response.truncate(len);
    match ResponseHeader::parse(&response) {
        Some(h) if h.code == wire::TPM_RC_SUCCESS => Ok(response),
        Some(h) => Err(ManufactureError { step, code: h.code }),
        None => Err(ManufactureError { step, code: wire::TPM_RC_FAILURE }),
    }
}

/// TPM_ALG_* values used by the EK template.
const TPM_ALG_RSA: u16 = 0x0001;
const TPM_ALG_SHA256: u16 = 0x000B;
const TPM_ALG_AES: u16 = 0x0006;
const TPM_ALG_CFB: u16 = 0x0043;
const TPM_ALG_NULL: u16 = 0x0010;

/// fixedTPM | fixedParent | sensitiveDataOrigin | adminWithPolicy | restricted | decrypt.
const EK_ATTRIBUTES: u32 = 0x0003_00B2;

/// PolicySecret(TPM_RH_ENDORSEMENT) digest, SHA-256: the EK profile's "policy A".
const EK_POLICY_A_SHA256: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC, 0x8D, 0x46, 0xA5, 0xD7, 0x24, 0xFD, 0x52, 0xD7,
    0x6E, 0x06, 0x52, 0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14, 0x69, 0xAA,
];

/// The TCG EK Credential Profile's default RSA template (L-1), as TPMT_PUBLIC. The
/// unique field is 256 zero bytes, as the profile (and `tpm2_createek`) set it.
pub fn ek_template() -> Vec<u8> {
    let mut t = Command::structure();
    t.u16(TPM_ALG_RSA).u16(TPM_ALG_SHA256).u32(EK_ATTRIBUTES).sized(&EK_POLICY_A_SHA256);
    // TPMS_RSA_PARMS: symmetric AES-128-CFB, scheme NULL, 2048 bits, default exponent.
    t.u16(TPM_ALG_AES).u16(128).u16(TPM_ALG_CFB).u16(TPM_ALG_NULL).u16(2048).u32(0);
    t.sized(&[0; 256]);
    t.into_bytes()
}

/// TPM2_CreatePrimary of the EK: endorsement hierarchy, empty password, [`ek_template`].
pub fn create_ek_command() -> Vec<u8> {
    let mut c = Command::new(wire::TPM_ST_SESSIONS, wire::TPM_CC_CREATE_PRIMARY);
    c.u32(wire::TPM_RH_ENDORSEMENT).password_auth();
    // inSensitive: empty userAuth and data; inPublic; outsideInfo; creationPCR (none).
    c.u16(4).u16(0).u16(0).sized(&ek_template()).u16(0).u32(0);
    c.finish()
}

/// The object handle and the public area (TPMT_PUBLIC, without its TPM2B size) of a
/// successful TPM2_CreatePrimary response; `None` if it is too short to hold them.
pub fn create_primary_result(response: &[u8]) -> Option<(u32, &[u8])> {
    let mut body = Reader::new(response.get(wire::HEADER_SIZE..)?);
    let handle = body.u32()?;
    let _parameter_size = body.u32()?;
    Some((handle, body.sized()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// An engine that answers from a script and records what it was sent.
    struct Scripted {
        answers: Vec<Vec<u8>>,
        sent: alloc::sync::Arc<spin::Mutex<Vec<Vec<u8>>>>,
    }

    impl TpmEngine for Scripted {
        fn execute(&mut self, command: &[u8], response: &mut [u8]) -> usize {
            self.sent.lock().push(command.to_vec());
            let answer = if self.answers.is_empty() {
                wire::error_response(wire::TPM_RC_FAILURE)
            } else {
                self.answers.remove(0)
            };
            // A misbehaving engine: it reports the full length even if it does not fit.
            let n = answer.len().min(response.len());
            response[..n].copy_from_slice(&answer[..n]);
            answer.len()
        }
    }

    fn ok(body: &[u8]) -> Vec<u8> {
        let mut r = vec![0x80, 0x01];
        r.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
        r.extend_from_slice(&[0; 4]);
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn the_template_is_the_profiles_l1_layout() {
        let t = ek_template();
        // type, nameAlg, attributes, policy (2 + 32), parms (14), unique (2 + 256).
        assert_eq!(t.len(), 2 + 2 + 4 + 34 + 14 + 258);
        assert_eq!(&t[..8], &[0, 1, 0, 0x0b, 0, 0x03, 0, 0xb2]);
    }

    #[test]
    fn manufacture_keeps_the_public_area_and_flushes_the_handle() {
        let sent = alloc::sync::Arc::new(spin::Mutex::new(Vec::new()));
        let mut create = Vec::new();
        create.extend_from_slice(&0x8000_0000u32.to_be_bytes());
        create.extend_from_slice(&7u32.to_be_bytes());
        create.extend_from_slice(&[0, 3, 0xAA, 0xBB, 0xCC]);
        let engine = Scripted { answers: vec![ok(&[]), ok(&create), ok(&[])], sent: sent.clone() };
        let v = Vtpm::manufacture(Box::new(engine)).unwrap();
        assert_eq!(v.ek_public(), &[0xAA, 0xBB, 0xCC]);
        let sent = sent.lock();
        assert_eq!(sent.len(), 3);
        assert_eq!(&sent[2][10..], &0x8000_0000u32.to_be_bytes());
    }

    #[test]
    fn a_failing_step_is_named_with_its_response_code() {
        let sent = alloc::sync::Arc::new(spin::Mutex::new(Vec::new()));
        let engine = Scripted { answers: vec![ok(&[]), wire::error_response(0x902)], sent };
        let e = Vtpm::manufacture(Box::new(engine)).unwrap_err();
        assert_eq!(e, ManufactureError { step: "TPM2_CreatePrimary(EK)", code: 0x902 });
    }

    #[test]
    fn a_truncated_create_primary_answer_fails_instead_of_reading_past_it() {
        let sent = alloc::sync::Arc::new(spin::Mutex::new(Vec::new()));
        let engine = Scripted { answers: vec![ok(&[]), ok(&[0, 0, 0, 1, 0, 0])], sent };
        let e = Vtpm::manufacture(Box::new(engine)).unwrap_err();
        assert_eq!(e.step, "TPM2_CreatePrimary(EK) response");
    }

    #[test]
    fn an_oversized_or_headless_engine_answer_becomes_tpm_rc_failure() {
        let sent = alloc::sync::Arc::new(spin::Mutex::new(Vec::new()));
        let big = ok(&[0; 100]);
        let engine = Scripted { answers: vec![big.clone(), vec![1, 2, 3]], sent };
        let mut v = Vtpm::with_ek(Box::new(engine), vec![]);
        let mut out = [0u8; 50];
        for _ in 0..2 {
            let n = v.execute(&[], &mut out);
            assert_eq!(out[..n], wire::error_response(wire::TPM_RC_FAILURE)[..]);
        }
    }
}
