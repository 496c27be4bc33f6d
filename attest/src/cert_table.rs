//! The certificate table of the GHCB extended guest request (GHCB spec, "SNP Extended
//! Guest Request"), which is also what the SVSM returns in the certificates buffer and
//! Linux exposes as `auxblob`.
//!
//! Layout: entries `{GUID[16], u32 offset, u32 length}` (24 bytes, little-endian
//! integers) ended by an all-zero entry; offsets count from the start of the table; the
//! DER certificates follow the table. GUIDs are in RFC (big-endian) byte order, as `sev`
//! and AMD's tools write them (`abi::attest::cert_table`).
//!
//! [`decode`] reads hostile input: it never panics, and it accepts a blob only if every
//! byte is accounted for. Each byte is part of the table, part of exactly one
//! certificate, or zero padding. So no byte of an accepted table can change without the
//! table (or a certificate) changing meaning.

use abi::attest::cert_table::{ARK, ASK, ENTRY_LEN, VCEK};
use std::fmt;

/// `a8074bc2-a25a-483e-aae6-39c045a0b8a1`: a VLEK certificate (named, not used).
pub const VLEK: [u8; 16] =
    [0xa8, 0x07, 0x4b, 0xc2, 0xa2, 0x5a, 0x48, 0x3e, 0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1];

/// One certificate of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// RFC byte order.
    pub guid: [u8; 16],
    pub data: Vec<u8>,
}

/// Why a certificate table was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertTableError {
    /// The blob ends before the all-zero terminating entry.
    Unterminated { len: usize },
    /// An entry with the all-zero GUID has a non-zero offset or length.
    BadTerminator { index: usize },
    /// A certificate lies (partly) outside the blob or inside the table itself.
    OutOfBounds { index: usize, offset: u32, length: u32 },
    /// A certificate has length zero.
    Empty { index: usize },
    /// Two certificates share bytes.
    Overlap { first: usize, second: usize },
    /// Two entries carry the same GUID.
    DuplicateGuid { index: usize },
    /// A byte outside the table and every certificate is not zero.
    StrayByte { offset: usize },
    /// (encode) The all-zero GUID is the terminator and cannot name a certificate.
    ZeroGuid { index: usize },
    /// (encode) The table would not fit the u32 offsets.
    TooLarge,
}

impl fmt::Display for CertTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unterminated { len } => write!(f, "no all-zero terminating entry within {len} bytes"),
            Self::BadTerminator { index } => {
                write!(f, "entry {index} has the zero GUID but a non-zero offset or length")
            }
            Self::OutOfBounds { index, offset, length } => {
                write!(f, "entry {index} (offset {offset:#x}, length {length:#x}) is outside the certificate area")
            }
            Self::Empty { index } => write!(f, "entry {index} has length 0"),
            Self::Overlap { first, second } => write!(f, "entries {first} and {second} overlap"),
            Self::DuplicateGuid { index } => write!(f, "entry {index} repeats an earlier GUID"),
            Self::StrayByte { offset } => {
                write!(f, "byte {offset:#x} belongs to no certificate and is not zero")
            }
            Self::ZeroGuid { index } => write!(f, "entry {index} has the all-zero GUID"),
            Self::TooLarge => write!(f, "certificate table larger than 4 GiB"),
        }
    }
}

impl std::error::Error for CertTableError {}

/// The name of a known certificate GUID.
pub fn name(guid: &[u8; 16]) -> Option<&'static str> {
    match *guid {
        ARK => Some("ARK"),
        ASK => Some("ASK"),
        VCEK => Some("VCEK"),
        VLEK => Some("VLEK"),
        _ => None,
    }
}

/// Lay out `entries` as a certificate table: the table, its terminator, then each
/// certificate in order with no padding (the layout of `abi::attest::cert_table`, which
/// the SVSM writes too).
pub fn encode(entries: &[(&[u8; 16], &[u8])]) -> Result<Vec<u8>, CertTableError> {
    if let Some(index) = entries.iter().position(|(guid, _)| **guid == [0; 16]) {
        return Err(CertTableError::ZeroGuid { index });
    }
    let owned: Vec<([u8; 16], &[u8])> = entries.iter().map(|(guid, data)| (**guid, *data)).collect();
    let datas: Vec<&[u8]> = entries.iter().map(|(_, data)| *data).collect();
    let mut out = vec![0u8; abi::attest::cert_table::encoded_len(&datas)];
    let n = abi::attest::cert_table::encode_into(&owned, &mut out).ok_or(CertTableError::TooLarge)?;
    out.truncate(n);
    Ok(out)
}

/// Decode a certificate table, checking every bound (see the module doc).
pub fn decode(blob: &[u8]) -> Result<Vec<Entry>, CertTableError> {
    // Pass 1: the table, up to and including the terminator.
    let mut raw = Vec::new(); // (guid, offset, length)
    let table_len = loop {
        let index = raw.len();
        let start = index * ENTRY_LEN;
        let Some(e) = blob.get(start..start + ENTRY_LEN) else {
            return Err(CertTableError::Unterminated { len: blob.len() });
        };
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&e[..16]);
        let offset = u32::from_le_bytes([e[16], e[17], e[18], e[19]]);
        let length = u32::from_le_bytes([e[20], e[21], e[22], e[23]]);
        if guid == [0; 16] {
            if offset != 0 || length != 0 {
                return Err(CertTableError::BadTerminator { index });
            }
            break start + ENTRY_LEN;
        }
        if raw.iter().any(|(g, _, _)| *g == guid) {
            return Err(CertTableError::DuplicateGuid { index });
        }
        raw.push((guid, offset, length));
    };
    // Pass 2: each certificate inside the area after the table, none overlapping.
    let mut entries = Vec::with_capacity(raw.len());
    let mut spans: Vec<(usize, usize, usize)> = Vec::with_capacity(raw.len()); // (start, end, index)
    for (index, &(guid, offset, length)) in raw.iter().enumerate() {
        if length == 0 {
            return Err(CertTableError::Empty { index });
        }
        let start = offset as usize;
        let data =
            start.checked_add(length as usize).filter(|_| start >= table_len).and_then(|end| blob.get(start..end));
        let Some(data) = data else {
            return Err(CertTableError::OutOfBounds { index, offset, length });
        };
        spans.push((start, start + data.len(), index));
        entries.push(Entry { guid, data: data.to_vec() });
    }
    spans.sort_unstable();
    for pair in spans.windows(2) {
        if let [a, b] = pair
            && b.0 < a.1
        {
            return Err(CertTableError::Overlap { first: a.2.min(b.2), second: a.2.max(b.2) });
        }
    }
    // Pass 3: whatever no certificate covers must be zero padding.
    let mut cursor = table_len;
    for &(start, end, _) in spans.iter().chain(std::iter::once(&(blob.len(), blob.len(), 0))) {
        if let Some(pos) = blob.get(cursor..start).and_then(|gap| gap.iter().position(|&b| b != 0)) {
            return Err(CertTableError::StrayByte { offset: cursor + pos });
        }
        cursor = cursor.max(end);
    }
    Ok(entries)
}

/// The certificate with `guid`, if the table has it.
pub fn find<'a>(entries: &'a [Entry], guid: &[u8; 16]) -> Option<&'a [u8]> {
    entries.iter().find(|e| e.guid == *guid).map(|e| e.data.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        encode(&[(&ARK, b"ark-der"), (&ASK, b"ask"), (&VCEK, b"vcek-der-bytes")]).unwrap()
    }

    #[test]
    fn round_trip() {
        let blob = sample();
        assert_eq!(blob.len(), 4 * ENTRY_LEN + 7 + 3 + 14);
        let e = decode(&blob).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(find(&e, &ARK), Some(&b"ark-der"[..]));
        assert_eq!(find(&e, &VCEK), Some(&b"vcek-der-bytes"[..]));
        assert_eq!(name(&e[1].guid), Some("ASK"));
    }

    #[test]
    fn guid_bytes_are_rfc_order() {
        // sev writes `Uuid::as_bytes()`: c0b406a4-... starts with c0 b4.
        let blob = sample();
        assert_eq!(&blob[..4], &[0xc0, 0xb4, 0x06, 0xa4]);
    }

    #[test]
    fn trailing_zero_padding_is_accepted_other_bytes_are_not() {
        let mut blob = sample();
        blob.resize(4096, 0);
        assert_eq!(decode(&blob).unwrap().len(), 3);
        blob[4000] = 1;
        assert_eq!(decode(&blob), Err(CertTableError::StrayByte { offset: 4000 }));
    }

    #[test]
    fn truncated_and_garbage_inputs_are_errors() {
        let blob = sample();
        for len in 0..blob.len() {
            assert!(decode(&blob[..len]).is_err(), "prefix of {len} bytes accepted");
        }
        assert_eq!(decode(&[0xff; 20]), Err(CertTableError::Unterminated { len: 20 }));
        assert_eq!(decode(&[0xff; 100]), Err(CertTableError::DuplicateGuid { index: 1 }));
    }

    #[test]
    fn overlapping_entries_are_refused() {
        let mut blob = sample();
        // Point ASK (entry 1) at the ARK's bytes.
        blob[ENTRY_LEN + 16..ENTRY_LEN + 20].copy_from_slice(&((4 * ENTRY_LEN) as u32).to_le_bytes());
        assert_eq!(decode(&blob), Err(CertTableError::Overlap { first: 0, second: 1 }));
    }

    #[test]
    fn entries_inside_the_table_or_past_the_end_are_refused() {
        let mut blob = sample();
        blob[16..20].copy_from_slice(&8u32.to_le_bytes());
        assert!(matches!(decode(&blob), Err(CertTableError::OutOfBounds { index: 0, .. })));
        let mut blob = sample();
        blob[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&blob), Err(CertTableError::OutOfBounds { index: 0, .. })));
    }

    #[test]
    fn duplicate_guid_and_bad_terminator_are_refused() {
        let blob = encode(&[(&ARK, b"a"), (&ARK, b"b")]).unwrap();
        assert_eq!(decode(&blob), Err(CertTableError::DuplicateGuid { index: 1 }));
        let mut blob = sample();
        blob[3 * ENTRY_LEN + 20] = 1;
        assert_eq!(decode(&blob), Err(CertTableError::BadTerminator { index: 3 }));
    }

    #[test]
    fn encode_refuses_the_zero_guid() {
        assert_eq!(encode(&[(&[0; 16], b"x")]), Err(CertTableError::ZeroGuid { index: 0 }));
    }
}
