//! A software PSP: the firmware side of MSG_REPORT_REQ.

use crate::report::{self, Identity};
use abi::attest::guest_message as gm;
use p384::ecdsa::{SigningKey, VerifyingKey};
use psp::message::{self, Header, MessageError, Page};

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
}

impl core::fmt::Debug for SoftPsp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Keys stay out of logs.
        f.debug_struct("SoftPsp").field("next_seqno", &self.next_seqno).finish_non_exhaustive()
    }
}

impl SoftPsp {
    pub fn new(vmpck0: [u8; 32], vcek: SigningKey, identity: Identity) -> Self {
        Self { vmpck0, next_seqno: 1, vcek, identity, refuse_next: None }
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
}
