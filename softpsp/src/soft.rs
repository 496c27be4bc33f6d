//! A software PSP: the firmware side of MSG_REPORT_REQ and MSG_KEY_REQ.
//!
//! Key derivation: the real firmware derives MSG_KEY_REQ keys from the chip's VCEK (or
//! VMRK) root with an internal KDF over the selected launch fields; AMD does not publish
//! it. This PSP does the same with HKDF-SHA384: the chip secret as input key, and as
//! info the VMPL, the field selection and every selected field (policy, image ID, family
//! ID, measurement, the requested guest SVN and TCB version), so the same request from
//! the same launch gets the same key and a change in any selected field a different one.

use crate::report::{self, Identity};
use abi::attest::guest_message as gm;
use hkdf::Hkdf;
use p384::ecdsa::{SigningKey, VerifyingKey};
use psp::message::{self, Header, MessageError, Page};
use sha2::Sha384;

/// Why the firmware did not answer (the real PSP then returns an error to the host and
/// writes no response).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirmwareError {
    /// The page is not a well-formed message under this PSP's VMPCK0.
    Message(MessageError),
    /// The request names a VMPCK this PSP does not hold.
    UnknownVmpck(u8),
    /// The sequence number is not the next one: a replay, or a lost message.
    Sequence { expected: u64, got: u64 },
    /// A message type this PSP does not serve.
    UnsupportedType(u8),
    /// The payload has the wrong size for its type.
    PayloadSize(usize),
    /// The signing key refused (cannot happen with a valid key).
    Signing,
}

/// The firmware's state for one guest: VMPCK0, the message count, the VCEK and what it
/// reports about the platform.
pub struct SoftPsp {
    vmpck0: [u8; 32],
    /// The sequence number the next request must carry.
    next_seqno: u64,
    vcek: SigningKey,
    identity: Identity,
    /// Answer the next request with this error status instead of a report (fault
    /// injection for models).
    refuse_next: Option<u32>,
    /// The root MSG_KEY_REQ keys come from (the real chip's is fused in; see
    /// [`SoftPsp::set_chip_secret`]).
    chip_secret: [u8; 32],
}

impl core::fmt::Debug for SoftPsp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Keys stay out of logs.
        f.debug_struct("SoftPsp").field("next_seqno", &self.next_seqno).finish_non_exhaustive()
    }
}

impl SoftPsp {
    /// A PSP whose chip secret comes from its VCEK (replace it with
    /// [`Self::set_chip_secret`] where keys must outlive a per-boot VCEK).
    pub fn new(vmpck0: [u8; 32], vcek: SigningKey, identity: Identity) -> Self {
        let mut chip_secret = [0u8; 32];
        let kdf = Hkdf::<Sha384>::new(Some(b"bulwark soft PSP chip secret"), &vcek.to_bytes());
        // 32 bytes are far below HKDF-SHA384's output limit.
        let _ = kdf.expand(b"", &mut chip_secret);
        Self { vmpck0, next_seqno: 1, vcek, identity, refuse_next: None, chip_secret }
    }

    /// The secret MSG_KEY_REQ keys are derived from: what the real chip keeps fused. The
    /// same secret and the same launch give the same keys across boots.
    pub fn set_chip_secret(&mut self, secret: [u8; 32]) {
        self.chip_secret = secret;
    }

    /// The VCEK's public key, SEC1 uncompressed (0x04 || x || y, 97 bytes), for its
    /// certificate.
    pub fn vcek_public(&self) -> [u8; 97] {
        let point = VerifyingKey::from(&self.vcek).to_encoded_point(false);
        let mut out = [0u8; 97];
        if point.as_bytes().len() == out.len() {
            out.copy_from_slice(point.as_bytes());
        }
        out
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Answer the next well-formed request with `status` and no report, as firmware does
    /// when it cannot serve a request it accepted.
    pub fn refuse_next(&mut self, status: u32) {
        self.refuse_next = Some(status);
    }

    /// Serve one guest request page; on success `response` holds the encrypted answer.
    pub fn guest_request(&mut self, request: &Page, response: &mut Page) -> Result<(), FirmwareError> {
        if request[gm::MSG_VMPCK] != 0 {
            return Err(FirmwareError::UnknownVmpck(request[gm::MSG_VMPCK]));
        }
        let mut payload = [0u8; gm::REPORT_REQ_LEN];
        let h = message::open(&self.vmpck0, request, &mut payload).map_err(FirmwareError::Message)?;
        if h.seqno != self.next_seqno {
            return Err(FirmwareError::Sequence { expected: self.next_seqno, got: h.seqno });
        }
        if h.msg_type == gm::MSG_KEY_REQ && h.msg_version == 1 {
            if h.size != gm::KEY_REQ_LEN {
                return Err(FirmwareError::PayloadSize(h.size));
            }
            let answer = self.derive_key(&payload[..gm::KEY_REQ_LEN]);
            let reply =
                Header { seqno: h.seqno + 1, msg_type: gm::MSG_KEY_RSP, msg_version: 1, vmpck: 0, size: answer.len() };
            message::seal(&self.vmpck0, reply, &answer, response).map_err(FirmwareError::Message)?;
            self.next_seqno = h.seqno + 2;
            return Ok(());
        }
        if h.msg_type != gm::MSG_REPORT_REQ || h.msg_version != 1 {
            return Err(FirmwareError::UnsupportedType(h.msg_type));
        }
        if h.size != gm::REPORT_REQ_LEN {
            return Err(FirmwareError::PayloadSize(h.size));
        }
        let word = |at: usize| u32::from_le_bytes([payload[at], payload[at + 1], payload[at + 2], payload[at + 3]]);
        let (vmpl, key_sel) = (word(gm::REPORT_REQ_VMPL), word(gm::REPORT_REQ_KEY_SEL));
        let mut answer = [0u8; gm::REPORT_RSP_LEN];
        if let Some(status) = self.refuse_next.take() {
            answer[gm::REPORT_RSP_STATUS..gm::REPORT_RSP_STATUS + 4].copy_from_slice(&status.to_le_bytes());
        } else if vmpl > 3 || key_sel > 1 || payload[0x48..].iter().any(|b| *b != 0) {
            // Answered, with a status: the request was well-formed but asks for nothing
            // this firmware can do (VMPL beyond 3, the VLEK, reserved bits).
            answer[gm::REPORT_RSP_STATUS..gm::REPORT_RSP_STATUS + 4]
                .copy_from_slice(&gm::STATUS_INVALID_PARAM.to_le_bytes());
        } else {
            let mut data = [0u8; 64];
            data.copy_from_slice(&payload[..64]);
            let mut report = report::build(&self.identity, &data, vmpl);
            report::sign(&mut report, &self.vcek).map_err(|_| FirmwareError::Signing)?;
            answer[gm::REPORT_RSP_SIZE..gm::REPORT_RSP_SIZE + 4]
                .copy_from_slice(&(abi::attest::REPORT_SIZE as u32).to_le_bytes());
            answer[gm::REPORT_RSP_REPORT..].copy_from_slice(&report);
        }
        let reply =
            Header { seqno: h.seqno + 1, msg_type: gm::MSG_REPORT_RSP, msg_version: 1, vmpck: 0, size: answer.len() };
        message::seal(&self.vmpck0, reply, &answer, response).map_err(FirmwareError::Message)?;
        self.next_seqno = h.seqno + 2;
        Ok(())
    }
}

impl SoftPsp {
    /// The MSG_KEY_RSP payload for a MSG_KEY_REQ payload. Refused with INVALID_PARAM, as
    /// the firmware does: another root than the VCEK (this PSP has no VMRK or VLEK),
    /// unknown field bits, a VMPL above 3 (the requester's, 0, is the most privileged), a
    /// guest SVN above the guest's or a TCB above the committed one (a key for the future
    /// would let old software unseal what newer software sealed; one for the past is how
    /// a key survives an update).
    fn derive_key(&self, req: &[u8]) -> [u8; gm::KEY_RSP_LEN] {
        let mut answer = [0u8; gm::KEY_RSP_LEN];
        let id = &self.identity;
        let allowed = |(root, r): &(u32, psp::key::KeyRequest)| {
            *root == 0
                && r.fields & !gm::FIELD_ALL == 0
                && r.vmpl <= 3
                && r.guest_svn <= id.guest_svn
                && tcb_at_most(r.tcb_version, id.tcb)
        };
        let Some((_, r)) = psp::key::parse_request(req).filter(allowed) else {
            answer[gm::KEY_RSP_STATUS..gm::KEY_RSP_STATUS + 4].copy_from_slice(&gm::STATUS_INVALID_PARAM.to_le_bytes());
            return answer;
        };
        let (fields, vmpl, svn, tcb) = (r.fields, r.vmpl, r.guest_svn, r.tcb_version);
        let mut info = alloc_free_info::Info::default();
        info.put(&vmpl.to_le_bytes());
        info.put(&fields.to_le_bytes());
        let selected = |bit: u64| fields & bit != 0;
        if selected(gm::FIELD_GUEST_POLICY) {
            info.put(&id.policy.to_le_bytes());
        }
        if selected(gm::FIELD_IMAGE_ID) {
            info.put(&id.image_id);
        }
        if selected(gm::FIELD_FAMILY_ID) {
            info.put(&id.family_id);
        }
        if selected(gm::FIELD_MEASUREMENT) {
            info.put(&id.measurement);
        }
        if selected(gm::FIELD_GUEST_SVN) {
            info.put(&svn.to_le_bytes());
        }
        if selected(gm::FIELD_TCB_VERSION) {
            info.put(&tcb.to_le_bytes());
        }
        let kdf = Hkdf::<Sha384>::new(Some(b"bulwark soft PSP MSG_KEY_REQ v1"), &self.chip_secret);
        // 32 bytes are far below HKDF-SHA384's output limit.
        let _ = kdf.expand(info.bytes(), &mut answer[gm::KEY_RSP_KEY..]);
        answer
    }
}

/// Is every component (byte) of TCB_VERSION `asked` at most the one of `committed`?
fn tcb_at_most(asked: u64, committed: u64) -> bool {
    asked.to_le_bytes().iter().zip(committed.to_le_bytes()).all(|(a, c)| *a <= c)
}

/// The HKDF info of one request, on the stack (its longest form is 4 + 8 + 8 + 16 + 16 +
/// 48 + 4 + 8 bytes).
mod alloc_free_info {
    /// The info bytes, appended in order.
    pub struct Info {
        buf: [u8; 128],
        len: usize,
    }

    impl Default for Info {
        fn default() -> Self {
            Self { buf: [0; 128], len: 0 }
        }
    }

    impl Info {
        pub fn put(&mut self, bytes: &[u8]) {
            if let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) {
                dst.copy_from_slice(bytes);
                self.len += bytes.len();
            }
        }

        pub fn bytes(&self) -> &[u8] {
            &self.buf[..self.len]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use psp::message::{open, seal};

    const VMPCK: [u8; 32] = [9; 32];

    fn psp() -> SoftPsp {
        let id = Identity::emulated([1; 48], [7; 64]);
        SoftPsp::new(VMPCK, SigningKey::from_slice(&[0x11; 48]).unwrap(), id)
    }

    fn request(seqno: u64, vmpl: u32) -> Page {
        let mut payload = [0u8; gm::REPORT_REQ_LEN];
        payload[..64].copy_from_slice(&[0x5A; 64]);
        payload[gm::REPORT_REQ_VMPL..gm::REPORT_REQ_VMPL + 4].copy_from_slice(&vmpl.to_le_bytes());
        let mut page = [0u8; 4096];
        let h = Header { seqno, msg_type: gm::MSG_REPORT_REQ, msg_version: 1, vmpck: 0, size: 0 };
        seal(&VMPCK, h, &payload, &mut page).unwrap();
        page
    }

    #[test]
    fn a_report_request_gets_a_signed_report_for_its_data_and_vmpl() {
        let mut p = psp();
        let mut resp = [0u8; 4096];
        p.guest_request(&request(1, 0), &mut resp).unwrap();
        let mut out = [0u8; gm::REPORT_RSP_LEN];
        let h = open(&VMPCK, &resp, &mut out).unwrap();
        assert_eq!((h.seqno, h.msg_type, h.size), (2, gm::MSG_REPORT_RSP, gm::REPORT_RSP_LEN));
        assert_eq!(&out[..8], &[0, 0, 0, 0, 0xA0, 4, 0, 0], "status 0, size 0x4A0");
        let report = &out[gm::REPORT_RSP_REPORT..];
        assert_eq!(&report[0x50..0x90], &[0x5A; 64]);
        assert_eq!(&report[0x30..0x34], &[0; 4], "VMPL 0");
    }

    #[test]
    fn sequence_numbers_must_advance_by_two_and_never_repeat() {
        let mut p = psp();
        let mut resp = [0u8; 4096];
        assert_eq!(p.guest_request(&request(3, 0), &mut resp), Err(FirmwareError::Sequence { expected: 1, got: 3 }));
        p.guest_request(&request(1, 0), &mut resp).unwrap();
        assert_eq!(p.guest_request(&request(1, 0), &mut resp), Err(FirmwareError::Sequence { expected: 3, got: 1 }));
        p.guest_request(&request(3, 0), &mut resp).unwrap();
    }

    #[test]
    fn bad_requests_are_refused_or_answered_with_a_status() {
        let mut p = psp();
        let mut resp = [0u8; 4096];
        let mut forged = request(1, 0);
        forged[gm::HEADER_LEN] ^= 1;
        assert_eq!(p.guest_request(&forged, &mut resp), Err(FirmwareError::Message(MessageError::Authentication)));
        let mut other_key = request(1, 0);
        other_key[gm::MSG_VMPCK] = 2;
        assert_eq!(p.guest_request(&other_key, &mut resp), Err(FirmwareError::UnknownVmpck(2)));
        p.guest_request(&request(1, 4), &mut resp).unwrap();
        let mut out = [0u8; gm::REPORT_RSP_LEN];
        open(&VMPCK, &resp, &mut out).unwrap();
        assert_eq!(&out[..8], &[0x16, 0, 0, 0, 0, 0, 0, 0], "INVALID_PARAM, no report");
    }

    fn key_request(seqno: u64, r: psp::key::KeyRequest) -> Page {
        let mut page = [0u8; 4096];
        let h = Header { seqno, msg_type: gm::MSG_KEY_REQ, msg_version: 1, vmpck: 0, size: 0 };
        seal(&VMPCK, h, &r.payload(), &mut page).unwrap();
        page
    }

    fn derive(p: &mut SoftPsp, r: psp::key::KeyRequest) -> Result<[u8; 32], u32> {
        let mut resp = [0u8; 4096];
        let seqno = p.next_seqno;
        p.guest_request(&key_request(seqno, r), &mut resp).unwrap();
        let mut out = [0u8; gm::KEY_RSP_LEN];
        let h = open(&VMPCK, &resp, &mut out).unwrap();
        assert_eq!((h.msg_type, h.size), (gm::MSG_KEY_RSP, gm::KEY_RSP_LEN));
        psp::key::key_from_response(&out)
    }

    #[test]
    fn a_derived_key_is_bound_to_exactly_the_fields_it_selects() {
        use psp::key::KeyRequest;
        let sealed = KeyRequest {
            fields: gm::FIELD_MEASUREMENT | gm::FIELD_GUEST_POLICY,
            vmpl: 0,
            guest_svn: 0,
            tcb_version: 0,
        };
        let mut a = psp();
        let key = derive(&mut a, sealed).unwrap();
        // The same launch on the same chip: the same key, again and on a new PSP instance.
        assert_eq!(derive(&mut a, sealed), Ok(key));
        assert_eq!(derive(&mut psp(), sealed), Ok(key));
        // Another measurement: another key, when the measurement is selected.
        let mut other =
            SoftPsp::new(VMPCK, SigningKey::from_slice(&[0x11; 48]).unwrap(), Identity::emulated([2; 48], [7; 64]));
        assert_ne!(derive(&mut other, sealed), Ok(key));
        let unbound = KeyRequest { fields: gm::FIELD_GUEST_POLICY, ..sealed };
        assert_eq!(derive(&mut other, unbound), derive(&mut psp(), unbound));
        // Another chip secret, another VMPL, another selection: other keys.
        let mut chip = psp();
        chip.set_chip_secret([5; 32]);
        assert_ne!(derive(&mut chip, sealed), Ok(key));
        assert_ne!(derive(&mut psp(), KeyRequest { vmpl: 1, ..sealed }), Ok(key));
        assert_ne!(derive(&mut psp(), KeyRequest { fields: gm::FIELD_ALL, ..sealed }), Ok(key));
    }

    #[test]
    fn key_requests_beyond_the_guest_or_the_chip_are_refused() {
        use psp::key::KeyRequest;
        let base = KeyRequest { fields: gm::FIELD_MEASUREMENT, vmpl: 0, guest_svn: 0, tcb_version: 0 };
        let committed = psp().identity.tcb;
        let refused = Err(gm::STATUS_INVALID_PARAM);
        assert_eq!(derive(&mut psp(), KeyRequest { vmpl: 4, ..base }), refused);
        assert_eq!(derive(&mut psp(), KeyRequest { guest_svn: 1, ..base }), refused, "an SVN above the guest's");
        assert_eq!(
            derive(&mut psp(), KeyRequest { tcb_version: committed + 1, ..base }),
            refused,
            "a TCB from the future"
        );
        assert_eq!(derive(&mut psp(), KeyRequest { fields: 1 << 6, ..base }), refused);
        assert!(derive(&mut psp(), KeyRequest { tcb_version: committed, ..base }).is_ok());
        // A VMRK root (bit 0 of ROOT_KEY_SELECT): this PSP has none.
        let mut p = psp();
        let mut page = [0u8; 4096];
        let mut payload = base.payload();
        payload[0] = 1;
        seal(
            &VMPCK,
            Header { seqno: 1, msg_type: gm::MSG_KEY_REQ, msg_version: 1, vmpck: 0, size: 0 },
            &payload,
            &mut page,
        )
        .unwrap();
        let mut resp = [0u8; 4096];
        p.guest_request(&page, &mut resp).unwrap();
        let mut out = [0u8; gm::KEY_RSP_LEN];
        open(&VMPCK, &resp, &mut out).unwrap();
        assert_eq!(psp::key::key_from_response(&out), refused);
    }
}
