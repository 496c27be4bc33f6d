//! The SVSM's vTPM: a TPM 2.0 engine behind [`TpmEngine`], and its manufacturing.
//!
//! The engine is libtpms (the engine swtpm uses), linked with the `libtpms` feature; tests
//! and host tools may put any other engine behind the trait. When the SVSM starts, it
//! [manufactures](Vtpm::manufacture) the vTPM: TPM2_Startup(CLEAR), then the endorsement
//! key from the TCG default template (EK Credential Profile, template L-1: RSA 2048). The
//! EK public area (TPMT_PUBLIC) is the vTPM's entry in the attestation services manifest,
//! so a verifier can bind the EK to the hardware report.
//!
//! A vTPM [started](Vtpm::start) with an [`NvStorage`] keeps its NV state there: after
//! every command the engine's changed blobs are made durable before the response is
//! released ([`nv`]). The same NV blobs start an engine again, on the next boot or on a
//! migration destination, and cross the process boundary to the service ([`service`]).

#![no_std]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

extern crate alloc;

pub mod commands;
#[cfg(feature = "libtpms")]
pub mod libtpms;
pub mod nv;
pub mod service;
pub mod wire;

use alloc::boxed::Box;
use alloc::vec::Vec;
pub use nv::{NvBlobs, NvChange, NvError, NvStorage, TpmState};
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

    /// The NV blobs written or deleted since the last call (since the engine started, at
    /// the first call), each once with its current bytes. An engine without NV state has
    /// none.
    fn take_nv_changes(&mut self) -> Result<Vec<NvChange>, NvError> {
        Ok(Vec::new())
    }

    /// The running TPM's whole state, for a migration (see [`TpmState`]). An engine that
    /// cannot give it refuses.
    fn save_state(&mut self) -> Result<TpmState, NvError> {
        Err(NvError::Engine)
    }
}

/// Why manufacturing failed: the command that failed and the TPM response code (or
/// [`wire::TPM_RC_FAILURE`] for a response too short to carry one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManufactureError {
    pub step: &'static str,
    pub code: u32,
}

/// TPM_RC_NV_UNAVAILABLE: the answer to a command whose NV changes could not be kept.
pub const TPM_RC_NV_UNAVAILABLE: u32 = 0x923;

/// A manufactured vTPM: its engine, its EK public area, and where its NV state is kept.
pub struct Vtpm {
    engine: Box<dyn TpmEngine>,
    ek_public: Vec<u8>,
    storage: Option<Box<dyn NvStorage>>,
    /// The NV state in the engine is not the kept one: every command fails from now on.
    stopped: bool,
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
    pub fn manufacture(engine: Box<dyn TpmEngine>) -> Result<Self, ManufactureError> {
        let (engine, ek_public) = Self::start_engine(engine)?;
        Ok(Self { engine, ek_public, storage: None, stopped: false })
    }

    /// As [`manufacture`](Self::manufacture), for an engine started from the NV state
    /// `storage` keeps (or from none: a new TPM): Startup, the EK, and then every blob the
    /// engine wrote so far is persisted in one step, so a power cut before it leaves the
    /// store as it was (a new TPM is manufactured again at the next start). From then on
    /// each command's changes are persisted before its response is released.
    pub fn start(engine: Box<dyn TpmEngine>, mut storage: Box<dyn NvStorage>) -> Result<Self, ManufactureError> {
        let (mut engine, ek_public) = Self::start_engine(engine)?;
        let unkept = ManufactureError { step: "persisting the NV state", code: TPM_RC_NV_UNAVAILABLE };
        let changes = engine.take_nv_changes().map_err(|_| unkept)?;
        storage.started(&ek_public, &changes).map_err(|_| unkept)?;
        Ok(Self { engine, ek_public, storage: Some(storage), stopped: false })
    }

    fn start_engine(mut engine: Box<dyn TpmEngine>) -> Result<(Box<dyn TpmEngine>, Vec<u8>), ManufactureError> {
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
        Ok((engine, ek_public))
    }

    /// The whole state of the running TPM, for a migration's last round: the guest is
    /// stopped, so nothing changes after it. A stopped vTPM has no state to give.
    pub fn save(&mut self) -> Result<TpmState, NvError> {
        if self.stopped {
            return Err(NvError::Engine);
        }
        self.engine.save_state()
    }

    /// A vTPM that continues on a migration destination: `engine` was resumed from the
    /// source's [`TpmState`], whose NV blobs are `nv`, and it runs already (no Startup, no
    /// EK derivation: the source vouched for `ek_public` over the attested channel). With
    /// storage, the whole NV state is kept there before the first command, as a first
    /// start's would be (`NvStorage::started`).
    pub fn resume(
        mut engine: Box<dyn TpmEngine>,
        ek_public: Vec<u8>,
        nv: &NvBlobs,
        storage: Option<Box<dyn NvStorage>>,
    ) -> Result<Self, ManufactureError> {
        let unkept = ManufactureError { step: "persisting the migrated NV state", code: TPM_RC_NV_UNAVAILABLE };
        let mut storage = storage;
        // What resuming wrote, then every blob as the source had it.
        let mut changes = engine.take_nv_changes().map_err(|_| unkept)?;
        for (name, data) in nv {
            if !changes.iter().any(|c| &c.name == name) {
                changes.try_reserve(1).map_err(|_| unkept)?;
                changes.push(nv::copy_of(name, data).ok_or(unkept)?);
            }
        }
        if let Some(storage) = storage.as_mut() {
            storage.started(&ek_public, &changes).map_err(|_| unkept)?;
        }
        Ok(Self { engine, ek_public, storage, stopped: false })
    }

    /// Keep this vTPM's NV state in `storage` from now on, starting with its whole NV
    /// state as it is now (`NvStorage::replaced`: nothing the storage held for this TPM
    /// before stays). A migration's destination calls this once the guest is its own, so
    /// its store never holds a TPM that may still run at the source.
    pub fn keep_in(&mut self, mut storage: Box<dyn NvStorage>) -> Result<(), ManufactureError> {
        let unkept = ManufactureError { step: "keeping the NV state", code: TPM_RC_NV_UNAVAILABLE };
        let state = self.save().map_err(|_| unkept)?;
        let mut blobs = Vec::new();
        blobs.try_reserve(state.nv.len()).map_err(|_| unkept)?;
        for (name, data) in &state.nv {
            blobs.push(nv::copy_of(name, data).ok_or(unkept)?);
        }
        storage.replaced(&self.ek_public, &blobs).map_err(|_| unkept)?;
        self.storage = Some(storage);
        Ok(())
    }

    /// A vTPM whose EK is already known (an engine shared by several model machines).
    pub fn with_ek(engine: Box<dyn TpmEngine>, ek_public: Vec<u8>) -> Self {
        Self { engine, ek_public, storage: None, stopped: false }
    }

    /// Whether the vTPM stopped because its NV state could not be kept.
    pub fn stopped(&self) -> bool {
        self.stopped
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
    ///
    /// With storage, the command's NV changes are made durable before the response is
    /// returned. If that fails the response becomes TPM_RC_NV_UNAVAILABLE and the vTPM
    /// stops: the engine now holds state the store does not, and answering from it would
    /// let the guest rely on something the next boot will not have. Every later command
    /// gets TPM_RC_FAILURE (docs/persistence.md "Failing closed").
    pub fn execute(&mut self, command: &[u8], response: &mut [u8]) -> usize {
        if self.stopped {
            return wire::write_error_response(wire::TPM_RC_FAILURE, response);
        }
        let len = self.engine.execute(command, response);
        if let Some(storage) = self.storage.as_mut() {
            let kept = self.engine.take_nv_changes().and_then(|changes| match changes.is_empty() {
                true => Ok(()),
                false => storage.persist(&changes),
            });
            if kept.is_err() {
                self.stopped = true;
                return wire::write_error_response(TPM_RC_NV_UNAVAILABLE, response);
            }
        }
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

    /// An engine whose every command writes the blob "permall" (the command's length) and
    /// answers as a create-primary would, so it can be started.
    struct Writing {
        pending: Vec<NvChange>,
        executed: alloc::sync::Arc<spin::Mutex<usize>>,
    }

    impl TpmEngine for Writing {
        fn execute(&mut self, command: &[u8], response: &mut [u8]) -> usize {
            *self.executed.lock() += 1;
            self.pending.push(NvChange { name: b"permall".to_vec(), data: Some(vec![command.len() as u8]) });
            let mut body = Vec::new();
            body.extend_from_slice(&0x8000_0000u32.to_be_bytes());
            body.extend_from_slice(&5u32.to_be_bytes());
            body.extend_from_slice(&[0, 1, 0xEE]);
            let answer = ok(&body);
            response[..answer.len()].copy_from_slice(&answer);
            answer.len()
        }
        fn take_nv_changes(&mut self) -> Result<Vec<NvChange>, NvError> {
            Ok(core::mem::take(&mut self.pending))
        }
    }

    /// Storage that records what it was asked to keep and fails when told to.
    #[derive(Clone, Default)]
    struct Recording {
        kept: alloc::sync::Arc<spin::Mutex<Vec<Vec<NvChange>>>>,
        failing: alloc::sync::Arc<spin::Mutex<bool>>,
    }

    impl NvStorage for Recording {
        fn persist(&mut self, changes: &[NvChange]) -> Result<(), NvError> {
            if *self.failing.lock() {
                return Err(NvError::Storage);
            }
            self.kept.lock().push(changes.to_vec());
            Ok(())
        }
    }

    #[test]
    fn start_keeps_what_starting_wrote_in_one_step_and_each_command_before_its_response() {
        let storage = Recording::default();
        let executed = alloc::sync::Arc::new(spin::Mutex::new(0));
        let engine = Writing { pending: Vec::new(), executed: executed.clone() };
        let mut v = Vtpm::start(Box::new(engine), Box::new(storage.clone())).unwrap();
        // Startup, CreatePrimary and FlushContext each wrote; one persist holds them.
        assert_eq!(storage.kept.lock().len(), 1);
        assert_eq!(storage.kept.lock()[0].len(), 3);
        let mut out = [0u8; 64];
        let n = v.execute(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], &mut out);
        assert_eq!(ResponseHeader::parse(&out[..n]).unwrap().code, wire::TPM_RC_SUCCESS);
        assert_eq!(
            storage.kept.lock().last().unwrap(),
            &vec![NvChange { name: b"permall".to_vec(), data: Some(vec![11]) }]
        );
    }

    #[test]
    fn a_change_the_storage_cannot_keep_stops_the_vtpm_for_good() {
        let storage = Recording::default();
        let executed = alloc::sync::Arc::new(spin::Mutex::new(0));
        let engine = Writing { pending: Vec::new(), executed: executed.clone() };
        let mut v = Vtpm::start(Box::new(engine), Box::new(storage.clone())).unwrap();
        *storage.failing.lock() = true;
        let mut out = [0u8; 64];
        let n = v.execute(&[0; 12], &mut out);
        assert_eq!(ResponseHeader::parse(&out[..n]).unwrap().code, TPM_RC_NV_UNAVAILABLE);
        assert!(v.stopped());
        // Even with the storage healed, the engine's state is not the kept one: no command
        // reaches it again.
        *storage.failing.lock() = false;
        let before = *executed.lock();
        let n = v.execute(&[0; 12], &mut out);
        assert_eq!(ResponseHeader::parse(&out[..n]).unwrap().code, wire::TPM_RC_FAILURE);
        assert_eq!(*executed.lock(), before);
    }

    #[test]
    fn a_start_whose_state_cannot_be_kept_fails() {
        let storage = Recording::default();
        *storage.failing.lock() = true;
        let engine = Writing { pending: Vec::new(), executed: Default::default() };
        let e = Vtpm::start(Box::new(engine), Box::new(storage)).unwrap_err();
        assert_eq!(e, ManufactureError { step: "persisting the NV state", code: TPM_RC_NV_UNAVAILABLE });
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
