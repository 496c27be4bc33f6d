//! The SNP guest-message page (SNP firmware ABI "SNP_GUEST_REQUEST"): header, then the
//! payload encrypted with AES-256-GCM under a VMPCK. The IV is the 64-bit sequence number
//! (little-endian, zero-padded to 12 bytes); the associated data is header bytes
//! 0x30..0x60, so type, version and size are authenticated too.

use abi::attest::guest_message as gm;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};

/// One guest-message page.
pub type Page = [u8; 4096];

/// What a message header says about its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub seqno: u64,
    pub msg_type: u8,
    pub msg_version: u8,
    pub vmpck: u8,
    pub size: usize,
}

/// Why a message page was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageError {
    /// Algorithm, header version or header size is not the one defined.
    BadHeader,
    /// The payload does not fit in the page.
    TooLarge,
    /// The authentication tag does not match: wrong key, or the page was changed.
    Authentication,
}

fn iv(seqno: u64) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[..8].copy_from_slice(&seqno.to_le_bytes());
    iv
}

/// Build a message page: `payload` encrypted under `key` with the header `h` (`h.size` is
/// taken from the payload).
pub fn seal(key: &[u8; 32], h: Header, payload: &[u8], page: &mut Page) -> Result<(), MessageError> {
    if payload.len() > gm::PAYLOAD_MAX {
        return Err(MessageError::TooLarge);
    }
    page.fill(0);
    page[gm::SEQNO..gm::SEQNO + 8].copy_from_slice(&h.seqno.to_le_bytes());
    page[gm::ALGO] = gm::ALGO_AES_256_GCM;
    page[gm::HDR_VERSION] = gm::HEADER_VERSION;
    page[gm::HDR_SIZE..gm::HDR_SIZE + 2].copy_from_slice(&(gm::HEADER_LEN as u16).to_le_bytes());
    page[gm::MSG_TYPE] = h.msg_type;
    page[gm::MSG_VERSION] = h.msg_version;
    page[gm::MSG_SIZE..gm::MSG_SIZE + 2].copy_from_slice(&(payload.len() as u16).to_le_bytes());
    page[gm::MSG_VMPCK] = h.vmpck;
    let (header, body) = page.split_at_mut(gm::HEADER_LEN);
    let body = &mut body[..payload.len()];
    body.copy_from_slice(payload);
    let cipher = Aes256Gcm::new(key.into());
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&iv(h.seqno)), &header[gm::AAD], body)
        .map_err(|_| MessageError::TooLarge)?;
    header[gm::AUTHTAG..gm::AUTHTAG + gm::AUTHTAG_LEN].copy_from_slice(&tag);
    Ok(())
}

/// Check and decrypt a message page under `key`; the plaintext lands in `out` (which must
/// hold the payload). Returns the header.
pub fn open(key: &[u8; 32], page: &Page, out: &mut [u8]) -> Result<Header, MessageError> {
    let u16_at = |o: usize| u16::from_le_bytes([page[o], page[o + 1]]);
    if page[gm::ALGO] != gm::ALGO_AES_256_GCM
        || page[gm::HDR_VERSION] != gm::HEADER_VERSION
        || usize::from(u16_at(gm::HDR_SIZE)) != gm::HEADER_LEN
    {
        return Err(MessageError::BadHeader);
    }
    let mut seqno = [0u8; 8];
    seqno.copy_from_slice(&page[gm::SEQNO..gm::SEQNO + 8]);
    let h = Header {
        seqno: u64::from_le_bytes(seqno),
        msg_type: page[gm::MSG_TYPE],
        msg_version: page[gm::MSG_VERSION],
        vmpck: page[gm::MSG_VMPCK],
        size: usize::from(u16_at(gm::MSG_SIZE)),
    };
    if h.size > gm::PAYLOAD_MAX || h.size > out.len() {
        return Err(MessageError::TooLarge);
    }
    let body = &mut out[..h.size];
    body.copy_from_slice(&page[gm::HEADER_LEN..gm::HEADER_LEN + h.size]);
    let tag = Tag::from_slice(&page[gm::AUTHTAG..gm::AUTHTAG + gm::AUTHTAG_LEN]);
    let cipher = Aes256Gcm::new(key.into());
    if cipher.decrypt_in_place_detached(Nonce::from_slice(&iv(h.seqno)), &page[gm::AAD], body, tag).is_err() {
        body.fill(0);
        return Err(MessageError::Authentication);
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn header() -> Header {
        Header { seqno: 5, msg_type: gm::MSG_REPORT_REQ, msg_version: 1, vmpck: 0, size: 0 }
    }

    #[test]
    fn a_sealed_page_opens_to_the_same_payload() {
        let mut page = [0u8; 4096];
        seal(&KEY, header(), b"report data", &mut page).unwrap();
        assert_ne!(&page[gm::HEADER_LEN..gm::HEADER_LEN + 11], b"report data", "the payload is encrypted");
        let mut out = [0u8; 64];
        let h = open(&KEY, &page, &mut out).unwrap();
        assert_eq!(h, Header { size: 11, ..header() });
        assert_eq!(&out[..11], b"report data");
    }

    #[test]
    fn any_changed_header_or_payload_byte_fails_authentication() {
        let mut page = [0u8; 4096];
        seal(&KEY, header(), &[0xAB; 96], &mut page).unwrap();
        for i in (0..gm::HEADER_LEN + 96).filter(|i| !(0x10..0x20).contains(i) && !(0x28..0x30).contains(i)) {
            let mut bad = page;
            bad[i] ^= 1;
            let mut out = [0u8; 128];
            assert!(open(&KEY, &bad, &mut out).is_err(), "byte {i:#x} changed and still accepted");
        }
        let mut out = [0u8; 128];
        assert_eq!(open(&[8; 32], &page, &mut out), Err(MessageError::Authentication), "wrong key");
    }

    #[test]
    fn oversized_payloads_are_refused() {
        let mut page = [0u8; 4096];
        assert_eq!(seal(&KEY, header(), &[0; 4001], &mut page), Err(MessageError::TooLarge));
        seal(&KEY, header(), &[0; 100], &mut page).unwrap();
        let mut small = [0u8; 50];
        assert_eq!(open(&KEY, &page, &mut small), Err(MessageError::TooLarge));
    }
}
