//! The SVSM's own channel to the PSP: guest messages under VMPCK0, which the SVSM took out
//! of the secrets page, so only VMPL0 can ask for a VMPL0 report.
//!
//! Sequence numbers: the SVSM's first request carries 1, each answer carries the request's
//! number plus one, the next request the answer's plus one. A number is never used twice
//! under the same key (it is the AES-GCM IV). If a request may have reached the PSP and
//! its answer cannot be trusted (no answer, a forged or mismatched one), the SVSM cannot
//! know which number the PSP expects next, so it stops using the key for good, as Linux
//! does: it erases VMPCK0 and reports every later attestation as failed.

use crate::platform::{GuestRequestError, Platform};
use abi::attest::REPORT_SIZE;
use abi::attest::guest_message as gm;
use alloc::boxed::Box;
use alloc::vec::Vec;
use psp::message::{self, Header};

/// Why the PSP gave no report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// No key (no secrets page), or the key was retired after a broken exchange.
    Unavailable,
    /// The platform has no PSP.
    NoPsp,
    /// The message could not be delivered or answered.
    Transport(GuestRequestError),
    /// The answer failed authentication or did not match the request; the key is retired.
    BadAnswer(&'static str),
    /// The PSP answered with an error status.
    Status(u32),
    /// Out of memory for the message pages.
    NoMemory,
}

pub struct PspChannel {
    vmpck0: [u8; 32],
    /// The sequence number of the last message sent or received (0: none yet).
    last_seqno: u64,
    retired: bool,
}

impl core::fmt::Debug for PspChannel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("PspChannel").field("last_seqno", &self.last_seqno).field("retired", &self.retired).finish()
    }
}

fn page() -> Result<Box<[u8; 4096]>, ChannelError> {
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve_exact(4096).map_err(|_| ChannelError::NoMemory)?;
    v.resize(4096, 0);
    v.into_boxed_slice().try_into().map_err(|_| ChannelError::NoMemory)
}

/// How often a request the host throttles (BUSY) is sent again before the SVSM gives up.
pub const BUSY_RETRIES: u32 = 16;

impl PspChannel {
    pub fn new(vmpck0: [u8; 32]) -> Self {
        let retired = vmpck0 == [0; 32];
        Self { vmpck0, last_seqno: 0, retired }
    }

    pub fn vmpck0(&self) -> &[u8; 32] {
        &self.vmpck0
    }

    fn retire(&mut self) {
        self.vmpck0 = [0; 32];
        self.retired = true;
    }

    /// Send `payload` as a `msg_type` message and open the answer, which must be of type
    /// `answer_type` and exactly `answer.len()` bytes, into `answer`. A host that answers
    /// BUSY gets the same message again, up to `BUSY_RETRIES` times.
    fn exchange<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        msg_type: u8,
        payload: &[u8],
        answer_type: u8,
        answer: &mut [u8],
    ) -> Result<(), ChannelError> {
        // GHCB keeps sequence numbers in 32 bits; stop before they would wrap.
        if self.retired || self.last_seqno >= u64::from(u32::MAX) - 2 {
            return Err(ChannelError::Unavailable);
        }
        let seqno = self.last_seqno + 1;
        let mut request = page()?;
        let mut response = page()?;
        let header = Header { seqno, msg_type, msg_version: 1, vmpck: 0, size: 0 };
        message::seal(&self.vmpck0, header, payload, &mut request)
            .map_err(|_| ChannelError::BadAnswer("request does not fit"))?;
        let mut busy = 0;
        loop {
            match p.guest_request(&request, &mut response) {
                Ok(()) => break,
                // Never left: the numbers are still in step.
                Err(GuestRequestError::Unavailable) => return Err(ChannelError::NoPsp),
                // Throttled by the host before the PSP saw it: the same sealed message
                // again (a new one would reuse the sequence number, and with it the IV).
                Err(GuestRequestError::Host(abi::ghcb::guest_request::BUSY)) if busy < BUSY_RETRIES => busy += 1,
                Err(e) => {
                    self.retire();
                    return Err(ChannelError::Transport(e));
                }
            }
        }
        let opened = message::open(&self.vmpck0, &response, answer);
        let why = match opened {
            Err(_) => Some("answer fails authentication"),
            Ok(h) if h.seqno != seqno + 1 => Some("answer has the wrong sequence number"),
            Ok(h) if h.msg_type != answer_type || h.msg_version != 1 => Some("answer has the wrong type"),
            Ok(h) if h.size != answer.len() => Some("answer has the wrong size"),
            Ok(_) => None,
        };
        if let Some(why) = why {
            answer.fill(0);
            self.retire();
            return Err(ChannelError::BadAnswer(why));
        }
        self.last_seqno = seqno + 1;
        Ok(())
    }

    /// A key the PSP derives for this launch (MSG_KEY_REQ): bound to what `request`
    /// selects of the launch (docs/persistence.md: the sealed store's key).
    pub fn derive_key<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        request: &psp::key::KeyRequest,
    ) -> Result<[u8; 32], ChannelError> {
        let mut answer = [0u8; gm::KEY_RSP_LEN];
        self.exchange(p, gm::MSG_KEY_REQ, &request.payload(), gm::MSG_KEY_RSP, &mut answer)?;
        let key = psp::key::key_from_response(&answer).map_err(ChannelError::Status);
        answer.fill(0);
        key
    }

    /// A VMPL0 report with `report_data`, signed by the VCEK. A host that answers BUSY
    /// gets the same message again, up to `BUSY_RETRIES` times.
    pub fn request_report<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        report_data: &[u8; 64],
    ) -> Result<Box<[u8; REPORT_SIZE]>, ChannelError> {
        let mut payload = [0u8; gm::REPORT_REQ_LEN];
        payload[..64].copy_from_slice(report_data);
        // VMPL 0, KEY_SEL 0 (the VLEK if the host installed one, else the VCEK).
        let mut answer = [0u8; gm::REPORT_RSP_LEN];
        self.exchange(p, gm::MSG_REPORT_REQ, &payload, gm::MSG_REPORT_RSP, &mut answer)?;
        let word = |at: usize| {
            let bytes = answer.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok());
            bytes.map_or(u32::MAX, u32::from_le_bytes)
        };
        let status = word(gm::REPORT_RSP_STATUS);
        if status != 0 {
            return Err(ChannelError::Status(status));
        }
        if usize::try_from(word(gm::REPORT_RSP_SIZE)) != Ok(REPORT_SIZE) {
            return Err(ChannelError::Status(gm::STATUS_INVALID_PARAM));
        }
        let mut report: Box<[u8; REPORT_SIZE]> = {
            let mut v: Vec<u8> = Vec::new();
            v.try_reserve_exact(REPORT_SIZE).map_err(|_| ChannelError::NoMemory)?;
            v.extend_from_slice(&answer[gm::REPORT_RSP_REPORT..]);
            v.into_boxed_slice().try_into().map_err(|_| ChannelError::NoMemory)?
        };
        // The report must be for the data asked. An answer for other data passed the
        // checks above, so whoever made it holds the key: retire it, as for every
        // `BadAnswer`.
        let data_at = abi::attest::REPORT_DATA_OFFSET;
        if report.get(data_at..data_at + 64) != Some(&report_data[..]) {
            report.fill(0);
            self.retire();
            return Err(ChannelError::BadAnswer("report is for other data"));
        }
        Ok(report)
    }
}
