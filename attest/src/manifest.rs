//! The services manifest of SVSM_ATTEST_SERVICES (SVSM spec 58019 section 7.1, table
//! 12): a header `{GUID, u32 length, u32 count}`, `count` entries `{GUID, u32 offset,
//! u32 length}` (offsets from the manifest start), then the services' data.
//!
//! The manifest is hashed into REPORT_DATA, so its integrity comes from the report
//! signature; this parser only has to refuse structures that could be read two ways:
//! a wrong header GUID, a length that disagrees with the buffer, entries outside the
//! buffer, inside the table, overlapping each other, or naming a service twice.
//! Hostile input yields an error, never a panic.

use abi::attest::{
    ATTEST_CHAIN_GUID, ATTEST_CHAIN_MAX_LINKS, AttestChainEntry, ManifestEntry, ManifestHeader, SEALED_STATE_FAILED,
    SEALED_STATE_GUID, SEALED_STATE_REWRAPPED, SERVICES_MANIFEST_GUID, SealedStateEntry, VTPM_LINEAGE_GUID,
    VTPM_LINEAGE_KEPT, VTPM_LINEAGE_MAX_ANCESTORS, VTPM_SERVICE_GUID, VtpmAncestor, VtpmLineageEntry,
};
use abi::guid::Guid;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;
use zerocopy::{FromBytes, IntoBytes};

const HEADER_LEN: usize = size_of::<ManifestHeader>();
const ENTRY_LEN: usize = size_of::<ManifestEntry>();

/// One service of the manifest and its data (for the vTPM: the EK public area).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub guid: Guid,
    pub data: Vec<u8>,
}

/// Why a manifest was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestError {
    /// Shorter than the 24-byte header.
    TooShort { len: usize },
    /// The header GUID is not the services manifest GUID.
    WrongGuid { guid: Guid },
    /// The header's length field disagrees with the buffer.
    LengthMismatch { header: u32, actual: usize },
    /// The entry table does not fit in the manifest.
    TableOutOfBounds { count: u32 },
    /// A service's data lies outside the manifest or inside the table.
    EntryOutOfBounds { index: usize, offset: u32, length: u32 },
    /// Two services' data share bytes.
    Overlap { first: usize, second: usize },
    /// Two entries name the same service.
    DuplicateGuid { index: usize, guid: Guid },
    /// (encode) The manifest would not fit the u32 fields.
    TooLarge,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(f, "{len} bytes is shorter than the {HEADER_LEN}-byte header"),
            Self::WrongGuid { guid } => write!(f, "header GUID {guid} is not the services manifest GUID"),
            Self::LengthMismatch { header, actual } => {
                write!(f, "header says {header} bytes, the manifest has {actual}")
            }
            Self::TableOutOfBounds { count } => write!(f, "a table of {count} entries does not fit"),
            Self::EntryOutOfBounds { index, offset, length } => {
                write!(f, "entry {index} (offset {offset:#x}, length {length:#x}) is outside the data area")
            }
            Self::Overlap { first, second } => write!(f, "the data of entries {first} and {second} overlap"),
            Self::DuplicateGuid { index, guid } => write!(f, "entry {index} repeats service {guid}"),
            Self::TooLarge => write!(f, "manifest larger than 4 GiB"),
        }
    }
}

impl std::error::Error for ManifestError {}

/// Parse a services manifest (see the module doc for what is refused).
pub fn parse(buf: &[u8]) -> Result<Vec<Service>, ManifestError> {
    let Ok((header, rest)) = ManifestHeader::read_from_prefix(buf) else {
        return Err(ManifestError::TooShort { len: buf.len() });
    };
    if header.guid != SERVICES_MANIFEST_GUID {
        return Err(ManifestError::WrongGuid { guid: header.guid });
    }
    if header.length as usize != buf.len() {
        return Err(ManifestError::LengthMismatch { header: header.length, actual: buf.len() });
    }
    let count = header.service_count;
    let table = (count as usize).checked_mul(ENTRY_LEN).and_then(|n| rest.get(..n));
    let Some(table) = table else {
        return Err(ManifestError::TableOutOfBounds { count });
    };
    let data_start = HEADER_LEN + table.len();
    let mut services: Vec<Service> = Vec::with_capacity(count as usize);
    let mut spans = Vec::with_capacity(count as usize);
    for (index, raw) in table.chunks_exact(ENTRY_LEN).enumerate() {
        let Ok(entry) = ManifestEntry::read_from_bytes(raw) else {
            return Err(ManifestError::TableOutOfBounds { count });
        };
        if services.iter().any(|s| s.guid == entry.guid) {
            return Err(ManifestError::DuplicateGuid { index, guid: entry.guid });
        }
        let start = entry.offset as usize;
        let data = start
            .checked_add(entry.length as usize)
            .filter(|_| start >= data_start)
            .and_then(|end| buf.get(start..end));
        let Some(data) = data else {
            return Err(ManifestError::EntryOutOfBounds { index, offset: entry.offset, length: entry.length });
        };
        spans.push((start, start + data.len(), index));
        services.push(Service { guid: entry.guid, data: data.to_vec() });
    }
    spans.sort_unstable();
    for pair in spans.windows(2) {
        // Empty entries share no bytes with anything.
        if let [a, b] = pair
            && b.0 < a.1
            && b.0 < b.1
        {
            return Err(ManifestError::Overlap { first: a.2.min(b.2), second: a.2.max(b.2) });
        }
    }
    Ok(services)
}

/// Build a manifest: header, table, then each service's data in order. The SVSM builds
/// its own (no_std); this one serves tests and tools.
pub fn encode(services: &[(Guid, &[u8])]) -> Result<Vec<u8>, ManifestError> {
    let data_start = HEADER_LEN + services.len() * ENTRY_LEN;
    let total = services.iter().try_fold(data_start, |acc, (_, d)| acc.checked_add(d.len()));
    let Some(total) = total.and_then(|t| u32::try_from(t).ok()) else {
        return Err(ManifestError::TooLarge);
    };
    let count = u32::try_from(services.len()).map_err(|_| ManifestError::TooLarge)?;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(
        ManifestHeader { guid: SERVICES_MANIFEST_GUID, length: total, service_count: count }.as_bytes(),
    );
    let mut offset = data_start as u32; // <= total, which fits
    for (guid, data) in services {
        let length = data.len() as u32; // <= total
        out.extend_from_slice(ManifestEntry { guid: *guid, offset, length }.as_bytes());
        offset += length;
    }
    for (_, data) in services {
        out.extend_from_slice(data);
    }
    Ok(out)
}

/// The committed state of the SVSM's sealed store, from the manifest's sealed-state entry
/// ([`SEALED_STATE_GUID`], data [`SealedStateEntry`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SealedState {
    /// One at format, one more per commit.
    pub generation: u64,
    /// Chosen at random when the store was formatted.
    #[serde(serialize_with = "as_hex")]
    pub store_id: [u8; 16],
    /// The Merkle root of the committed state.
    #[serde(serialize_with = "as_hex")]
    pub root: [u8; 32],
    /// [`SEALED_STATE_FAILED`]: a commit's header write failed since boot, the sealed state
    /// is closed and the services that keep state there have stopped.
    pub failed: bool,
    /// [`SEALED_STATE_REWRAPPED`]: at this boot the state was found under the key of an
    /// older TCB or guest SVN and re-wrapped under the current one.
    pub rewrapped: bool,
}

fn as_hex<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::hex(bytes))
}

impl fmt::Display for SealedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "generation {} of store {}, root {}",
            self.generation,
            crate::hex(&self.store_id),
            crate::hex(&self.root)
        )?;
        if self.rewrapped {
            write!(f, " (re-wrapped at this boot from an older TCB's or SVN's key)")?;
        }
        Ok(())
    }
}

/// Why a sealed-state entry was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SealedStateError {
    /// The entry is not the 64 bytes of a `SealedStateEntry`.
    Length { len: usize },
    /// Flags this verifier does not know: it cannot tell what they say about the state.
    UnknownFlags { flags: u32 },
    /// The reserved field is not zero.
    Reserved { value: u32 },
}

impl fmt::Display for SealedStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length { len } => write!(f, "{len} bytes, expected {}", size_of::<SealedStateEntry>()),
            Self::UnknownFlags { flags } => write!(f, "unknown flags {flags:#x}"),
            Self::Reserved { value } => write!(f, "reserved field {value:#x}, must be 0"),
        }
    }
}

impl std::error::Error for SealedStateError {}

/// The sealed state among a manifest's services: `None` if no service is the sealed
/// state (an SVSM without a state disk), an error if its entry is malformed.
pub fn sealed_state(services: &[Service]) -> Result<Option<SealedState>, SealedStateError> {
    match services.iter().find(|s| s.guid == SEALED_STATE_GUID) {
        Some(service) => parse_sealed_state(&service.data).map(Some),
        None => Ok(None),
    }
}

/// One sealed-state entry's data.
pub fn parse_sealed_state(data: &[u8]) -> Result<SealedState, SealedStateError> {
    let entry = SealedStateEntry::read_from_bytes(data).map_err(|_| SealedStateError::Length { len: data.len() })?;
    if entry.flags & !(SEALED_STATE_FAILED | SEALED_STATE_REWRAPPED) != 0 {
        return Err(SealedStateError::UnknownFlags { flags: entry.flags });
    }
    if entry.reserved != 0 {
        return Err(SealedStateError::Reserved { value: entry.reserved });
    }
    Ok(SealedState {
        generation: entry.generation,
        store_id: entry.store_id,
        root: entry.root,
        failed: entry.flags & SEALED_STATE_FAILED != 0,
        rewrapped: entry.flags & SEALED_STATE_REWRAPPED != 0,
    })
}

/// A sealed-state entry's data, as the SVSM writes it (for tests and tools).
pub fn encode_sealed_state(state: &SealedState) -> Vec<u8> {
    let flags =
        if state.failed { SEALED_STATE_FAILED } else { 0 } | if state.rewrapped { SEALED_STATE_REWRAPPED } else { 0 };
    SealedStateEntry { generation: state.generation, store_id: state.store_id, root: state.root, flags, reserved: 0 }
        .as_bytes()
        .to_vec()
}

/// Where the SVSM's vTPM stands in its lineage, from the manifest's lineage entry
/// ([`VTPM_LINEAGE_GUID`], data [`VtpmLineageEntry`] and its ancestors; docs/migration.md,
/// "The vTPM's lineage").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VtpmLineage {
    /// The version of the vTPM's NV state.
    pub version: u64,
    /// The incarnation (one place the TPM lives: where it was manufactured, or a
    /// migration's destination).
    #[serde(serialize_with = "as_hex")]
    pub incarnation: [u8; 16],
    /// The incarnations it came from, the parent first, each with the version at which
    /// the TPM left it; empty if manufactured there.
    pub ancestors: Vec<Ancestor>,
    /// A sealed state keeps the vTPM across reboots ([`VTPM_LINEAGE_KEPT`]).
    pub kept: bool,
}

/// One ancestor of an incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Ancestor {
    #[serde(serialize_with = "as_hex")]
    pub incarnation: [u8; 16],
    pub left_at: u64,
}

impl VtpmLineage {
    /// The incarnation it came from, if it came by migration.
    pub fn parent(&self) -> Option<Ancestor> {
        self.ancestors.first().copied()
    }
}

impl fmt::Display for VtpmLineage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "version {} of incarnation {}", self.version, crate::hex(&self.incarnation))?;
        match self.parent() {
            Some(p) => write!(
                f,
                ", moved from {} at version {} ({} ancestor(s) named)",
                crate::hex(&p.incarnation),
                p.left_at,
                self.ancestors.len()
            )?,
            None => write!(f, ", manufactured there")?,
        }
        if !self.kept {
            write!(f, " (not kept across reboots)")?;
        }
        Ok(())
    }
}

/// Why a vTPM lineage entry was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VtpmLineageError {
    /// Not a 32-byte header followed by exactly the ancestors it counts (at most
    /// [`VTPM_LINEAGE_MAX_ANCESTORS`]).
    Length { len: usize },
    /// Flags this verifier does not know.
    UnknownFlags { flags: u32 },
    /// The versions do not follow along the ancestors (each incarnation starts one above
    /// where it left its parent and only grows), or an incarnation is named twice.
    Inconsistent,
}

impl fmt::Display for VtpmLineageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length { len } => write!(f, "{len} bytes is not a lineage header and its ancestors"),
            Self::UnknownFlags { flags } => write!(f, "unknown flags {flags:#x}"),
            Self::Inconsistent => write!(f, "its versions do not follow along its ancestors"),
        }
    }
}

impl std::error::Error for VtpmLineageError {}

/// The vTPM lineage among a manifest's services: `None` without its entry.
pub fn vtpm_lineage(services: &[Service]) -> Result<Option<VtpmLineage>, VtpmLineageError> {
    match services.iter().find(|s| s.guid == VTPM_LINEAGE_GUID) {
        Some(service) => parse_vtpm_lineage(&service.data).map(Some),
        None => Ok(None),
    }
}

/// One vTPM lineage entry's data. Along the ancestors, each left its parent at a lower
/// version than it was itself left at (a child starts one above and only grows), the
/// incarnation runs past where it left its parent, and no incarnation is named twice.
pub fn parse_vtpm_lineage(data: &[u8]) -> Result<VtpmLineage, VtpmLineageError> {
    let length = || VtpmLineageError::Length { len: data.len() };
    let (entry, rest) = VtpmLineageEntry::read_from_prefix(data).map_err(|_| length())?;
    let count = entry.ancestors as usize;
    if count > VTPM_LINEAGE_MAX_ANCESTORS || rest.len() != count * size_of::<VtpmAncestor>() {
        return Err(length());
    }
    if entry.flags & !VTPM_LINEAGE_KEPT != 0 {
        return Err(VtpmLineageError::UnknownFlags { flags: entry.flags });
    }
    let ancestors: Vec<Ancestor> = rest
        .chunks_exact(size_of::<VtpmAncestor>())
        .filter_map(|raw| VtpmAncestor::read_from_bytes(raw).ok())
        .map(|a| Ancestor { incarnation: a.incarnation, left_at: a.left_at })
        .collect();
    let mut newer = entry.version;
    let mut seen = vec![entry.incarnation];
    for a in &ancestors {
        if a.left_at >= newer || seen.contains(&a.incarnation) {
            return Err(VtpmLineageError::Inconsistent);
        }
        newer = a.left_at;
        seen.push(a.incarnation);
    }
    Ok(VtpmLineage {
        version: entry.version,
        incarnation: entry.incarnation,
        ancestors,
        kept: entry.flags & VTPM_LINEAGE_KEPT != 0,
    })
}

/// A vTPM lineage entry's data, as the SVSM writes it (for tests and tools).
pub fn encode_vtpm_lineage(lineage: &VtpmLineage) -> Vec<u8> {
    let header = VtpmLineageEntry {
        version: lineage.version,
        incarnation: lineage.incarnation,
        flags: if lineage.kept { VTPM_LINEAGE_KEPT } else { 0 },
        ancestors: lineage.ancestors.len() as u32,
    };
    let mut out = header.as_bytes().to_vec();
    for a in &lineage.ancestors {
        out.extend_from_slice(VtpmAncestor { incarnation: a.incarnation, left_at: a.left_at }.as_bytes());
    }
    out
}

/// The sealed state's attestation chain, from the manifest's chain entry
/// ([`ATTEST_CHAIN_GUID`], data [`AttestChainEntry`] and its links; docs/persistence.md,
/// "The attestation chain").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttestChain {
    /// The chain value before the first link.
    #[serde(serialize_with = "as_hex")]
    pub before: [u8; 32],
    /// The links shown, oldest first (each covers an attestation's nonce and fresh salt
    /// from the SVSM, so they cannot be rebuilt by replaying nonces).
    #[serde(serialize_with = "links_as_hex")]
    pub links: Vec<[u8; 32]>,
}

fn links_as_hex<S: serde::Serializer>(links: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(links.iter().map(|l| crate::hex(l)))
}

impl AttestChain {
    /// The chain values: before the first link, then after each (SHA-256(previous || link)).
    pub fn values(&self) -> Vec<[u8; 32]> {
        let mut values = vec![self.before];
        for link in &self.links {
            let previous = values.last().copied().unwrap_or(self.before);
            values.push(Sha256::new().chain_update(previous).chain_update(link).finalize().into());
        }
        values
    }

    /// The chain value now (after the last link).
    pub fn value(&self) -> [u8; 32] {
        self.values().last().copied().unwrap_or(self.before)
    }
}

/// Why an attestation chain entry was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttestChainError {
    /// Not the header and its 16 link slots.
    Length { len: usize },
    /// More links than the slots, a reserved field or an unused slot not zero.
    Malformed,
}

impl fmt::Display for AttestChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length { len } => write!(f, "{len} bytes is not a chain header and its link slots"),
            Self::Malformed => write!(f, "a link count out of range, or reserved bytes set"),
        }
    }
}

impl std::error::Error for AttestChainError {}

/// The attestation chain among a manifest's services: `None` without its entry.
pub fn attest_chain(services: &[Service]) -> Result<Option<AttestChain>, AttestChainError> {
    match services.iter().find(|s| s.guid == ATTEST_CHAIN_GUID) {
        Some(service) => parse_attest_chain(&service.data).map(Some),
        None => Ok(None),
    }
}

/// One attestation chain entry's data.
pub fn parse_attest_chain(data: &[u8]) -> Result<AttestChain, AttestChainError> {
    let (entry, slots) =
        AttestChainEntry::read_from_prefix(data).map_err(|_| AttestChainError::Length { len: data.len() })?;
    if slots.len() != 32 * ATTEST_CHAIN_MAX_LINKS {
        return Err(AttestChainError::Length { len: data.len() });
    }
    let count = entry.links as usize;
    // No link yet is a chain too: a store that closed before its first attestation.
    if count > ATTEST_CHAIN_MAX_LINKS || entry.reserved != 0 {
        return Err(AttestChainError::Malformed);
    }
    let (used, unused) = slots.split_at(32 * count);
    if unused.iter().any(|b| *b != 0) {
        return Err(AttestChainError::Malformed);
    }
    let links = used.chunks_exact(32).filter_map(|l| <[u8; 32]>::try_from(l).ok()).collect();
    Ok(AttestChain { before: entry.before, links })
}

/// An attestation chain entry's data, as the SVSM writes it (for tests and tools).
pub fn encode_attest_chain(chain: &AttestChain) -> Vec<u8> {
    let header = AttestChainEntry { before: chain.before, links: chain.links.len() as u32, reserved: 0 };
    let mut out = header.as_bytes().to_vec();
    for i in 0..ATTEST_CHAIN_MAX_LINKS {
        out.extend_from_slice(chain.links.get(i).map_or(&[0u8; 32], |l| l));
    }
    out
}

/// The name of a known service.
pub fn service_name(guid: &Guid) -> Option<&'static str> {
    match *guid {
        VTPM_SERVICE_GUID => Some("vTPM"),
        VTPM_LINEAGE_GUID => Some("vTPM lineage"),
        ATTEST_CHAIN_GUID => Some("attestation chain"),
        SEALED_STATE_GUID => Some("sealed state"),
        _ => None,
    }
}

/// A one-line description of a service's data for the verdict.
pub fn describe(service: &Service) -> String {
    let prefix_len = service.data.len().min(16);
    let prefix = crate::hex(&service.data[..prefix_len]);
    let more = if service.data.len() > prefix_len { "..." } else { "" };
    if service.guid == VTPM_SERVICE_GUID {
        // TPMT_PUBLIC starts with TPMI_ALG_PUBLIC (big-endian): 0x0001 RSA, 0x0023 ECC.
        let kind = match service.data.get(..2) {
            Some([0x00, 0x01]) => "RSA ",
            Some([0x00, 0x23]) => "ECC ",
            _ => "",
        };
        format!("{kind}EK public area, {} bytes: {prefix}{more}", service.data.len())
    } else if service.guid == VTPM_LINEAGE_GUID {
        match parse_vtpm_lineage(&service.data) {
            Ok(lineage) => lineage.to_string(),
            Err(e) => format!("malformed ({e}): {prefix}{more}"),
        }
    } else if service.guid == ATTEST_CHAIN_GUID {
        match parse_attest_chain(&service.data) {
            Ok(chain) => format!("{} link(s), chain value {}", chain.links.len(), crate::hex(&chain.value())),
            Err(e) => format!("malformed ({e}): {prefix}{more}"),
        }
    } else if service.guid == SEALED_STATE_GUID {
        match parse_sealed_state(&service.data) {
            Ok(state) if state.failed => format!("{state}, CLOSED (a header write failed since boot)"),
            Ok(state) => state.to_string(),
            Err(e) => format!("malformed ({e}): {prefix}{more}"),
        }
    } else {
        format!("{} bytes: {prefix}{more}", service.data.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OTHER: Guid = Guid::from_fields(0x11223344, 0x5566, 0x7788, [1, 2, 3, 4, 5, 6, 7, 8]);

    #[test]
    fn empty_manifest_is_the_24_byte_header() {
        let m = encode(&[]).unwrap();
        assert_eq!(m.len(), 24);
        assert_eq!(parse(&m).unwrap(), vec![]);
    }

    #[test]
    fn round_trip_with_vtpm() {
        let ek = [0x00, 0x01, 0x00, 0x0b, 0xaa];
        let m = encode(&[(VTPM_SERVICE_GUID, &ek), (OTHER, b"xyz")]).unwrap();
        let s = parse(&m).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].data, ek);
        assert_eq!(service_name(&s[0].guid), Some("vTPM"));
        assert_eq!(describe(&s[0]), "RSA EK public area, 5 bytes: 0001000baa");
    }

    #[test]
    fn header_guid_and_length_must_match() {
        let mut m = encode(&[(OTHER, b"xyz")]).unwrap();
        m.push(0);
        assert!(matches!(parse(&m), Err(ManifestError::LengthMismatch { .. })));
        let mut m = encode(&[]).unwrap();
        m[0] ^= 1;
        assert!(matches!(parse(&m), Err(ManifestError::WrongGuid { .. })));
        assert_eq!(parse(&m[..10]), Err(ManifestError::TooShort { len: 10 }));
    }

    #[test]
    fn entries_must_be_in_bounds_and_disjoint() {
        let m = encode(&[(VTPM_SERVICE_GUID, b"abcd"), (OTHER, b"efgh")]).unwrap();
        // Count too large for the buffer.
        let mut x = m.clone();
        x[20..24].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(parse(&x), Err(ManifestError::TableOutOfBounds { .. })));
        // Entry 0 pointing into the table.
        let mut x = m.clone();
        x[24 + 16..24 + 20].copy_from_slice(&24u32.to_le_bytes());
        assert!(matches!(parse(&x), Err(ManifestError::EntryOutOfBounds { index: 0, .. })));
        // Entry 1 pointing at entry 0's data.
        let mut x = m.clone();
        x[48 + 16..48 + 20].copy_from_slice(&72u32.to_le_bytes());
        assert_eq!(parse(&x), Err(ManifestError::Overlap { first: 0, second: 1 }));
        // Duplicate service.
        let x = encode(&[(OTHER, b"a"), (OTHER, b"b")]).unwrap();
        assert!(matches!(parse(&x), Err(ManifestError::DuplicateGuid { index: 1, .. })));
    }

    fn state(generation: u64) -> SealedState {
        SealedState { generation, store_id: [0x5a; 16], root: [0xc3; 32], failed: false, rewrapped: false }
    }

    #[test]
    fn sealed_state_round_trips_and_is_absent_without_its_entry() {
        let data = encode_sealed_state(&state(7));
        assert_eq!(data.len(), 64);
        assert_eq!(&data[..8], &7u64.to_le_bytes());
        let m = encode(&[(VTPM_SERVICE_GUID, b"ek"), (SEALED_STATE_GUID, &data)]).unwrap();
        let services = parse(&m).unwrap();
        assert_eq!(sealed_state(&services), Ok(Some(state(7))));
        assert_eq!(service_name(&services[1].guid), Some("sealed state"));
        assert!(describe(&services[1]).starts_with("generation 7 of store 5a5a"), "{}", describe(&services[1]));
        assert_eq!(sealed_state(&services[..1]), Ok(None));
        let closed = SealedState { failed: true, ..state(7) };
        let data = encode_sealed_state(&closed);
        assert_eq!(&data[56..60], &1u32.to_le_bytes());
        assert_eq!(parse_sealed_state(&data), Ok(closed));
        let rewrapped = SealedState { rewrapped: true, ..state(8) };
        let data = encode_sealed_state(&rewrapped);
        assert_eq!(&data[56..60], &2u32.to_le_bytes());
        assert_eq!(parse_sealed_state(&data), Ok(rewrapped));
        assert!(rewrapped.to_string().ends_with("(re-wrapped at this boot from an older TCB's or SVN's key)"));
    }

    fn lineage(version: u64, ancestors: &[(u8, u64)]) -> VtpmLineage {
        let ancestors = ancestors.iter().map(|(id, left_at)| Ancestor { incarnation: [*id; 16], left_at: *left_at });
        VtpmLineage { version, incarnation: [0x1c; 16], ancestors: ancestors.collect(), kept: true }
    }

    #[test]
    fn vtpm_lineage_round_trips_and_is_absent_without_its_entry() {
        let not_kept = VtpmLineage { kept: false, ..lineage(0, &[]) };
        for l in [lineage(3, &[]), lineage(8, &[(0xaa, 7)]), lineage(9, &[(0xaa, 7), (0xbb, 2)]), not_kept] {
            let data = encode_vtpm_lineage(&l);
            assert_eq!(data.len(), 32 + 24 * l.ancestors.len());
            let m = encode(&[(VTPM_SERVICE_GUID, b"ek"), (VTPM_LINEAGE_GUID, &data)]).unwrap();
            let services = parse(&m).unwrap();
            assert_eq!(vtpm_lineage(&services), Ok(Some(l)));
            assert_eq!(service_name(&services[1].guid), Some("vTPM lineage"));
            assert_eq!(vtpm_lineage(&services[..1]), Ok(None));
        }
        let data = encode_vtpm_lineage(&lineage(8, &[(0xaa, 7)]));
        let moved = describe(&Service { guid: VTPM_LINEAGE_GUID, data });
        assert!(moved.starts_with("version 8 of incarnation 1c1c") && moved.contains("moved from aaaa"), "{moved}");
    }

    #[test]
    fn malformed_vtpm_lineage_is_an_error() {
        let good = encode_vtpm_lineage(&lineage(8, &[(0xaa, 7)]));
        for len in [0, 31, 55, 57] {
            let mut data = good.clone();
            data.resize(len, 0);
            assert_eq!(parse_vtpm_lineage(&data), Err(VtpmLineageError::Length { len }));
        }
        let mut data = good.clone();
        data[28] = 2;
        assert_eq!(parse_vtpm_lineage(&data), Err(VtpmLineageError::Length { len: 56 }), "counts two, has one");
        let mut data = encode_vtpm_lineage(&lineage(0, &[]));
        data[28..32].copy_from_slice(&33u32.to_le_bytes());
        data.resize(32 + 33 * 24, 0);
        assert!(matches!(parse_vtpm_lineage(&data), Err(VtpmLineageError::Length { .. })), "too many ancestors");
        let mut data = good.clone();
        data[24] = 3;
        assert_eq!(parse_vtpm_lineage(&data), Err(VtpmLineageError::UnknownFlags { flags: 3 }));
        // A child at or below where its parent left; versions that do not fall along the
        // ancestors; an incarnation named twice.
        for bad in [
            lineage(7, &[(0xaa, 7)]),
            lineage(9, &[(0xaa, 7), (0xbb, 7)]),
            lineage(9, &[(0xaa, 7), (0xaa, 2)]),
            lineage(9, &[(0x1c, 7)]),
        ] {
            assert_eq!(parse_vtpm_lineage(&encode_vtpm_lineage(&bad)), Err(VtpmLineageError::Inconsistent), "{bad:?}");
        }
    }

    #[test]
    fn the_attestation_chain_round_trips_and_refuses_what_it_cannot_be() {
        let chain = AttestChain { before: [3; 32], links: vec![[1; 32], [2; 32]] };
        let data = encode_attest_chain(&chain);
        assert_eq!(data.len(), 40 + 32 * ATTEST_CHAIN_MAX_LINKS, "always every slot");
        assert_eq!(parse_attest_chain(&data), Ok(chain.clone()));
        let values = chain.values();
        assert_eq!(values.len(), 3);
        assert_eq!(values[0], [3; 32]);
        let after_one: [u8; 32] = Sha256::new().chain_update([3; 32]).chain_update([1; 32]).finalize().into();
        assert_eq!(values[1], after_one);
        assert_eq!(chain.value(), values[2]);
        assert_eq!(parse_attest_chain(&data[..data.len() - 1]), Err(AttestChainError::Length { len: data.len() - 1 }));
        let none = encode_attest_chain(&AttestChain { before: [0; 32], links: vec![] });
        assert_eq!(parse_attest_chain(&none).map(|c| c.value()), Ok([0; 32]), "no attestation yet");
        let mut too_many = data.clone();
        too_many[32..36].copy_from_slice(&17u32.to_le_bytes());
        assert_eq!(parse_attest_chain(&too_many), Err(AttestChainError::Malformed));
        let mut stray = data.clone();
        *stray.last_mut().unwrap() = 1;
        assert_eq!(parse_attest_chain(&stray), Err(AttestChainError::Malformed), "an unused slot not zero");
        let mut reserved = data;
        reserved[36] = 1;
        assert_eq!(parse_attest_chain(&reserved), Err(AttestChainError::Malformed));
    }

    #[test]
    fn malformed_sealed_state_is_an_error() {
        let good = encode_sealed_state(&state(1));
        for len in [0, 1, 63, 65, 128] {
            let mut data = good.clone();
            data.resize(len, 0);
            assert_eq!(parse_sealed_state(&data), Err(SealedStateError::Length { len }));
            let services = [Service { guid: SEALED_STATE_GUID, data }];
            assert_eq!(sealed_state(&services), Err(SealedStateError::Length { len }));
            assert!(describe(&services[0]).starts_with("malformed"));
        }
        let mut data = good.clone();
        data[56] = 4;
        assert_eq!(parse_sealed_state(&data), Err(SealedStateError::UnknownFlags { flags: 4 }));
        let mut data = good;
        data[63] = 0x80;
        assert_eq!(parse_sealed_state(&data), Err(SealedStateError::Reserved { value: 0x8000_0000 }));
    }
}
