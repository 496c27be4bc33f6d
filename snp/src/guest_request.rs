//! Guest requests (SNP_GUEST_REQUEST through the host): the SVSM's messages to the PSP,
//! and the certificate table the host sends with extended ones.
//!
//! The request, response and certificate pages are one set shared with the host, not one
//! per CPU: a CPU claims them for its exchange (`SnpShared::claim_request_pages`). Nobody
//! waits on that claim, so no CPU waits on another's host exit here; the kernel's PSP
//! channel runs one exchange at a time anyway (its lock, held across this call, is the
//! kernel's, and only attestation takes it).

use crate::ghcb::{Ghcb, GhcbError};
use crate::hw::{CERT_PAGES, Shared, SnpHw};
use crate::platform::SnpPlatform;
use abi::ghcb::guest_request::INVALID_LEN;
use abi::ghcb::{exit, offset};
use alloc::vec::Vec;
use kernel::platform::GuestRequestError;

/// Our own codes for a guest request that never got a host answer (the GHCB's
/// SW_EXITINFO1 reported an error, or the host left SW_EXITINFO2 unset).
const EVENT_REFUSED: u32 = u32::MAX;
const NO_ANSWER: u32 = u32::MAX - 1;

/// Run a guest-request event; the host's error is in SW_EXITINFO2 bits 63:32, the
/// firmware's in 31:0.
fn exchange<H: SnpHw>(hw: &mut H, g: &mut Ghcb) -> Result<(), GuestRequestError> {
    match g.call(hw) {
        Ok(()) => {}
        Err(GhcbError::Host(_)) => return Err(GuestRequestError::Host(EVENT_REFUSED)),
        Err(_) => return Err(GuestRequestError::Host(NO_ANSWER)),
    }
    match g.get(offset::SW_EXIT_INFO_2) {
        Some(0) => Ok(()),
        Some(info2) if info2 >> 32 != 0 => Err(GuestRequestError::Host((info2 >> 32) as u32)),
        // Bits 63:32 are clear here: the firmware's code fits a u32.
        Some(info2) => Err(GuestRequestError::Firmware(u32::try_from(info2).unwrap_or(u32::MAX))),
        None => Err(GuestRequestError::Host(NO_ANSWER)),
    }
}

/// Hand `request` to the PSP through the host and wait for its answer; the certificate
/// table that came with it replaces the cached one.
pub(crate) fn guest_request<H: SnpHw>(
    p: &mut SnpPlatform<H>,
    request: &[u8; 4096],
    response: &mut [u8; 4096],
) -> Result<(), GuestRequestError> {
    let shared = p.shared().clone();
    // Another CPU's exchange is under way: the caller broke the one-at-a-time rule. The
    // message never left, so the channel's sequence numbers are still in step.
    let Some(_pages) = shared.claim_request_pages() else { return Err(GuestRequestError::Unavailable) };
    p.hw.shared_write(Shared::Request, 0, request);
    let (req, resp) = (p.hw.shared_gpa(Shared::Request), p.hw.shared_gpa(Shared::Response));
    let mut g = Ghcb::event(exit::EXT_GUEST_REQUEST, req, resp);
    g.set(offset::RAX, p.hw.shared_gpa(Shared::Certs(0)));
    g.set(offset::RBX, CERT_PAGES as u64);
    let mut with_certificates = true;
    match exchange(&mut p.hw, &mut g) {
        Ok(()) => {}
        Err(GuestRequestError::Host(INVALID_LEN)) => {
            // The host's certificates do not fit our buffer. It refused before the PSP
            // saw the message, so the sequence numbers are still in step: ask again
            // without certificates.
            let needed = g.get(offset::RBX).unwrap_or(0);
            kernel::log!(
                p,
                Warn,
                "snp: the host's certificates need {needed} pages, the SVSM has {CERT_PAGES}; reports go without them"
            );
            g = Ghcb::event(exit::GUEST_REQUEST, req, resp);
            with_certificates = false;
            exchange(&mut p.hw, &mut g)?;
        }
        Err(e) => return Err(e),
    }
    p.hw.shared_read(Shared::Response, 0, response);
    let mut certs = Vec::new();
    if with_certificates {
        if certs.try_reserve_exact(CERT_PAGES * 4096).is_err() {
            kernel::log!(p, Warn, "snp: no memory for the host's certificates; the cached table stays");
            return Ok(());
        }
        let mut page = [0u8; 4096];
        for i in 0..CERT_PAGES {
            p.hw.shared_read(Shared::Certs(i), 0, &mut page);
            certs.extend_from_slice(&page);
        }
    }
    shared.set_certificates(trim_cert_table(certs));
    Ok(())
}

/// The certificate table up to and including its all-zero terminating entry (24-byte
/// entries: GUID, offset, length); the whole buffer if it has none, empty if it starts
/// with the terminator.
fn trim_cert_table(mut buf: Vec<u8>) -> Vec<u8> {
    let end = buf.chunks(24).position(|e| e.iter().all(|b| *b == 0));
    match end {
        Some(0) => Vec::new(),
        Some(n) => {
            // Keep the entries and the data they point at: up to the furthest end.
            let entries = buf.get(..n * 24).unwrap_or(&buf);
            let word = |e: &[u8], at: usize| {
                let bytes = e.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok());
                usize::try_from(bytes.map_or(0, u32::from_le_bytes)).unwrap_or(usize::MAX)
            };
            let furthest = entries.chunks(24).map(|e| word(e, 16).saturating_add(word(e, 20))).max().unwrap_or(0);
            buf.truncate(furthest.max((n + 1) * 24).min(buf.len()));
            buf
        }
        None => buf,
    }
}

#[cfg(test)]
mod tests {
    use super::trim_cert_table;
    use alloc::vec;
    use alloc::vec::Vec;

    fn entry(guid: u8, offset: u32, len: u32) -> Vec<u8> {
        let mut e = vec![guid; 16];
        e.extend_from_slice(&offset.to_le_bytes());
        e.extend_from_slice(&len.to_le_bytes());
        e
    }

    #[test]
    fn the_table_ends_where_its_furthest_certificate_does() {
        let mut buf = [entry(1, 72, 10), entry(2, 82, 20), vec![0; 24]].concat();
        buf.resize(16384, 0xEE);
        let t = trim_cert_table(buf);
        assert_eq!(t.len(), 102, "two entries, the terminator, 30 bytes of certificates");
        assert!(trim_cert_table(vec![0; 4096]).is_empty(), "a table that starts with its terminator is empty");
    }

    #[test]
    fn entries_pointing_past_the_buffer_keep_the_whole_buffer() {
        let mut buf = [entry(1, 48, u32::MAX), vec![0; 24]].concat();
        buf.resize(100, 0);
        assert_eq!(trim_cert_table(buf).len(), 100);
    }
}
