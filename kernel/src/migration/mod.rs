//! What a live migration carries of the SVSM's own services (docs/migration.md "Service
//! state"): the vTPM's whole state with its EK, and the settings the SVSM keeps (the OCP
//! log level). The source takes it once the guest is stopped for the last round
//! ([`Svsm::export_services`]); it travels as the session's state records, encrypted and
//! authenticated between two attested SVSMs; the destination parses it
//! ([`ServiceState::decode`]) and resumes the vTPM from it.
//!
//! The bytes come from an SVSM with the destination's own measurement, over a channel the
//! host cannot forge. They are parsed as hostile input all the same: a bug on the source
//! must not become memory corruption on the destination.
//!
//! Layout, integers big-endian:
//!
//! ```text
//! "BWSS" | u16 version = 1 | sections, each: u8 tag | u32 len | body
//! tag 1, the vTPM  : u32 ek_len | EK public area | u32 len | volatile state | blobs
//!                    | u8 flags | u64 version | incarnation (16) | u8 count
//!                    | count * (ancestor incarnation (16) | u64 LE left at)
//!                    | u8 has chain | (chain before (32) | u8 links | links * 32)
//! tag 2, a setting : u16 key_len | key | u32 len | value
//! blobs            : u32 count | count * (u16 name_len | name | u32 len | bytes)
//! ```
//!
//! At most one vTPM section; settings in increasing key order, each key once. Unknown tags
//! are refused: a destination that cannot take all of the state must not run the guest
//! with part of it.
//!
//! Guest memory moves in [`memory`] chunks, and [`dirty`] tracks the guest's writes
//! between pre-copy rounds.

pub mod dirty;
pub mod memory;
pub mod stream;
pub mod vcpus;

pub use dirty::{DirtyLog, DirtyLogError};
pub use memory::{MAX_CHUNK_PAGES, MemoryImportError};
pub use vcpus::VcpuImportError;

use crate::platform::Platform;
use crate::protocols::ocp::sources;
use crate::svsm::Svsm;
use alloc::vec::Vec;
use vtpm::TpmState;
use vtpm::nv::{MAX_BLOB_LEN, MAX_BLOBS, MAX_VOLATILE_LEN, NvBlobs, valid_name};

const MAGIC: &[u8; 4] = b"BWSS";
const VERSION: u16 = 1;
const TAG_VTPM: u8 = 1;
const TAG_SETTING: u8 = 2;
/// The EK public area is a TPMT_PUBLIC of a few hundred bytes.
const MAX_EK_LEN: usize = 4096;
/// Settings are short names and values.
const MAX_KEY_LEN: usize = 64;
const MAX_VALUE_LEN: usize = 4096;
/// The whole state: the vTPM's NV and volatile state with room to spare.
pub const MAX_SERVICE_STATE: usize = 1024 * 1024;

/// The vTPM as it moves: its state and its EK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VtpmSnapshot {
    pub ek_public: Vec<u8>,
    pub state: TpmState,
    /// The source kept its NV state in a sealed state (it outlived the source's reboots):
    /// a destination with nowhere to keep it refuses the commit, since the source gives
    /// its own copy up (`sealed::mark_vtpm_moved`).
    pub kept: bool,
    /// Where it leaves in its lineage (`crate::vtpm_lineage`): the version of its NV
    /// state (a destination that kept a newer state of the same TPM refuses it,
    /// `sealed::can_keep_vtpm`), the incarnation and its ancestors. The destination's
    /// incarnation names it as its parent and starts one version above.
    pub lineage: crate::vtpm_lineage::Lineage,
    /// The attestation chain of the source's sealed state (none if no store kept the
    /// vTPM there): the destination's store goes on from it, so a verifier follows the
    /// TPM's attestations across the move (docs/persistence.md, "The attestation chain").
    pub chain: Option<crate::sealed::AttestChain>,
}

/// The vTPM section's flags byte: bit 0 is [`VtpmSnapshot::kept`].
const VTPM_KEPT: u8 = 1;

/// Everything of the SVSM's services a migration moves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceState {
    pub vtpm: Option<VtpmSnapshot>,
    /// (key, value) in increasing key order.
    pub settings: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Why service state could not be taken, encoded or read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceStateError {
    /// The vTPM could not give its state (stopped, or its engine refused).
    VtpmUnavailable,
    /// Larger than [`MAX_SERVICE_STATE`], or a part past its own limit.
    TooLarge,
    /// The heap could not hold it.
    OutOfMemory,
    /// The destination's sealed state could not keep a setting.
    NotKept,
    /// The PSP gave no report.
    Unattested,
    /// The platform could not read a guest page or its permissions.
    Platform,
    /// A vCPU is halfway through a replacement (its retired VMSA not yet deleted).
    VcpuChanging,
    /// Not service state this SVSM reads: bad magic or version, a cut or overlong field,
    /// an unknown section, a duplicate.
    Malformed,
}

/// Bytes being built, bounded by [`MAX_SERVICE_STATE`] and the heap.
pub(super) struct Out(pub(super) Vec<u8>);

impl Out {
    pub(super) fn bytes(&mut self, b: &[u8]) -> Result<&mut Self, ServiceStateError> {
        if self.0.len().checked_add(b.len()).is_none_or(|n| n > MAX_SERVICE_STATE) {
            return Err(ServiceStateError::TooLarge);
        }
        self.0.try_reserve(b.len()).map_err(|_| ServiceStateError::OutOfMemory)?;
        self.0.extend_from_slice(b);
        Ok(self)
    }
    fn u16(&mut self, v: usize) -> Result<&mut Self, ServiceStateError> {
        self.bytes(&u16::try_from(v).map_err(|_| ServiceStateError::TooLarge)?.to_be_bytes())
    }
    pub(super) fn u32(&mut self, v: usize) -> Result<&mut Self, ServiceStateError> {
        self.bytes(&u32::try_from(v).map_err(|_| ServiceStateError::TooLarge)?.to_be_bytes())
    }
    /// A section: its tag, then its body's length (written once the body is).
    fn section(
        &mut self,
        tag: u8,
        body: impl FnOnce(&mut Self) -> Result<(), ServiceStateError>,
    ) -> Result<(), ServiceStateError> {
        self.bytes(&[tag])?.u32(0)?;
        let start = self.0.len();
        body(self)?;
        let len = u32::try_from(self.0.len() - start).map_err(|_| ServiceStateError::TooLarge)?;
        let field = self.0.get_mut(start - 4..start).ok_or(ServiceStateError::Malformed)?;
        field.copy_from_slice(&len.to_be_bytes());
        Ok(())
    }
}

/// A cursor that answers `Malformed` instead of reading past the end.
pub(super) struct In<'a>(pub(super) &'a [u8]);

impl<'a> In<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], ServiceStateError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(ServiceStateError::Malformed)?;
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<usize, ServiceStateError> {
        let b: [u8; 2] = self.take(2)?.try_into().map_err(|_| ServiceStateError::Malformed)?;
        Ok(usize::from(u16::from_be_bytes(b)))
    }
    pub(super) fn u32(&mut self) -> Result<usize, ServiceStateError> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| ServiceStateError::Malformed)?;
        usize::try_from(u32::from_be_bytes(b)).map_err(|_| ServiceStateError::Malformed)
    }
    /// A u32-length-prefixed field of at most `max` bytes, copied.
    fn field(&mut self, max: usize) -> Result<Vec<u8>, ServiceStateError> {
        let len = self.u32()?;
        if len > max {
            return Err(ServiceStateError::Malformed);
        }
        copy(self.take(len)?)
    }
}

pub(super) fn copy(bytes: &[u8]) -> Result<Vec<u8>, ServiceStateError> {
    let mut v = Vec::new();
    v.try_reserve_exact(bytes.len()).map_err(|_| ServiceStateError::OutOfMemory)?;
    v.extend_from_slice(bytes);
    Ok(v)
}

impl ServiceState {
    /// The bytes a migration carries.
    pub fn encode(&self) -> Result<Vec<u8>, ServiceStateError> {
        let mut out = Out(Vec::new());
        out.bytes(MAGIC)?.bytes(&VERSION.to_be_bytes())?;
        if let Some(vtpm) = &self.vtpm {
            if vtpm.ek_public.len() > MAX_EK_LEN
                || vtpm.state.volatile.len() > MAX_VOLATILE_LEN
                || vtpm.state.nv.len() > MAX_BLOBS
            {
                return Err(ServiceStateError::TooLarge);
            }
            out.section(TAG_VTPM, |o| {
                o.u32(vtpm.ek_public.len())?.bytes(&vtpm.ek_public)?;
                o.u32(vtpm.state.volatile.len())?.bytes(&vtpm.state.volatile)?;
                o.u32(vtpm.state.nv.len())?;
                for (name, data) in &vtpm.state.nv {
                    if !valid_name(name) || data.len() > MAX_BLOB_LEN {
                        return Err(ServiceStateError::TooLarge);
                    }
                    o.u16(name.len())?.bytes(name)?.u32(data.len())?.bytes(data)?;
                }
                let lineage = &vtpm.lineage;
                o.bytes(&[if vtpm.kept { VTPM_KEPT } else { 0 }])?.bytes(&lineage.version.to_be_bytes())?;
                let count = u8::try_from(lineage.ancestors().len()).map_err(|_| ServiceStateError::TooLarge)?;
                o.bytes(&lineage.incarnation)?.bytes(&[count])?;
                for ancestor in lineage.ancestors() {
                    o.bytes(&ancestor.incarnation)?.bytes(&ancestor.left_at.to_le_bytes())?;
                }
                match &vtpm.chain {
                    Some(chain) => {
                        let count = u8::try_from(chain.links().len()).map_err(|_| ServiceStateError::TooLarge)?;
                        o.bytes(&[1])?.bytes(&chain.before())?.bytes(&[count])?;
                        for link in chain.links() {
                            o.bytes(link)?;
                        }
                    }
                    None => {
                        o.bytes(&[0])?;
                    }
                }
                Ok(())
            })?;
        }
        for (key, value) in &self.settings {
            if key.is_empty() || key.len() > MAX_KEY_LEN || value.len() > MAX_VALUE_LEN {
                return Err(ServiceStateError::TooLarge);
            }
            out.section(TAG_SETTING, |o| {
                o.u16(key.len())?.bytes(key)?.u32(value.len())?.bytes(value)?;
                Ok(())
            })?;
        }
        Ok(out.0)
    }

    /// Parse what a migration source sent.
    pub fn decode(bytes: &[u8]) -> Result<Self, ServiceStateError> {
        if bytes.len() > MAX_SERVICE_STATE {
            return Err(ServiceStateError::Malformed);
        }
        let mut r = In(bytes);
        if r.take(4)? != MAGIC || r.u16()? != usize::from(VERSION) {
            return Err(ServiceStateError::Malformed);
        }
        let mut state = ServiceState::default();
        while !r.0.is_empty() {
            let tag = r.take(1)?.first().copied().ok_or(ServiceStateError::Malformed)?;
            let len = r.u32()?;
            let mut body = In(r.take(len)?);
            match tag {
                TAG_VTPM if state.vtpm.is_none() => {
                    let ek_public = body.field(MAX_EK_LEN)?;
                    let volatile = body.field(MAX_VOLATILE_LEN)?;
                    // At most what an engine may hold: each blob is a map entry whose
                    // allocation (a BTreeMap node) cannot fail gracefully.
                    let count = body.u32()?;
                    if count > MAX_BLOBS {
                        return Err(ServiceStateError::Malformed);
                    }
                    let mut nv = NvBlobs::new();
                    for _ in 0..count {
                        let name_len = body.u16()?;
                        let name = copy(body.take(name_len)?)?;
                        if !valid_name(&name) {
                            return Err(ServiceStateError::Malformed);
                        }
                        let data = body.field(MAX_BLOB_LEN)?;
                        if nv.insert(name, data).is_some() {
                            return Err(ServiceStateError::Malformed);
                        }
                    }
                    let kept = match body.take(1)? {
                        [0] => false,
                        [VTPM_KEPT] => true,
                        _ => return Err(ServiceStateError::Malformed),
                    };
                    let version: [u8; 8] = body.take(8)?.try_into().map_err(|_| ServiceStateError::Malformed)?;
                    let version = u64::from_be_bytes(version);
                    let incarnation = body.take(16)?.try_into().map_err(|_| ServiceStateError::Malformed)?;
                    let count = usize::from(body.take(1)?.first().copied().ok_or(ServiceStateError::Malformed)?);
                    let ancestors = body.take(count.checked_mul(24).ok_or(ServiceStateError::Malformed)?)?;
                    let lineage = crate::vtpm_lineage::Lineage::with_ancestors(version, incarnation, ancestors)
                        .ok_or(ServiceStateError::Malformed)?;
                    let chain = match body.take(1)? {
                        [0] => None,
                        [1] => {
                            let before: [u8; 32] =
                                body.take(32)?.try_into().map_err(|_| ServiceStateError::Malformed)?;
                            let count =
                                usize::from(body.take(1)?.first().copied().ok_or(ServiceStateError::Malformed)?);
                            if count > abi::attest::ATTEST_CHAIN_MAX_LINKS {
                                return Err(ServiceStateError::Malformed);
                            }
                            let raw = body.take(count.checked_mul(32).ok_or(ServiceStateError::Malformed)?)?;
                            let (links, _) = raw.as_chunks::<32>();
                            Some(
                                crate::sealed::AttestChain::from_parts(before, links)
                                    .ok_or(ServiceStateError::Malformed)?,
                            )
                        }
                        _ => return Err(ServiceStateError::Malformed),
                    };
                    let tpm = TpmState { nv, volatile };
                    state.vtpm = Some(VtpmSnapshot { ek_public, state: tpm, kept, lineage, chain });
                }
                TAG_SETTING => {
                    let key_len = body.u16()?;
                    if key_len == 0 || key_len > MAX_KEY_LEN {
                        return Err(ServiceStateError::Malformed);
                    }
                    let key = copy(body.take(key_len)?)?;
                    let value = body.field(MAX_VALUE_LEN)?;
                    // Increasing order, so each key at most once.
                    if state.settings.last().is_some_and(|(last, _)| *last >= key) {
                        return Err(ServiceStateError::Malformed);
                    }
                    state.settings.try_reserve(1).map_err(|_| ServiceStateError::OutOfMemory)?;
                    state.settings.push((key, value));
                }
                _ => return Err(ServiceStateError::Malformed),
            }
            if !body.0.is_empty() {
                return Err(ServiceStateError::Malformed);
            }
        }
        Ok(state)
    }

    /// Apply the settings on the destination: the log level now, and kept in the sealed
    /// state if there is one (as a guest's OCP write would be). The encoding carries any
    /// key; a key this SVSM does not know is refused here, before anything changed.
    pub fn apply_settings<P: Platform + ?Sized>(&self, svsm: &Svsm, p: &mut P) -> Result<(), ServiceStateError> {
        let mut level = None;
        for (key, value) in &self.settings {
            match key.as_slice() {
                sources::LOG_LEVEL_KEY => {
                    level = Some(sources::parse_level(value).ok_or(ServiceStateError::Malformed)?)
                }
                _ => return Err(ServiceStateError::Malformed),
            }
        }
        if let Some(level) = level {
            p.set_log_level(level);
            let name = sources::level_name(level).as_bytes();
            svsm.keep_setting(sources::LOG_LEVEL_KEY, name).map_err(|_| ServiceStateError::NotKept)?;
        }
        Ok(())
    }
}

impl Svsm {
    /// What this SVSM's migration evidence is made of (`migrate::evidence`): a VMPL0
    /// report with `report_data` from its PSP, and the host's certificate table for it.
    pub fn migration_evidence<P: Platform + ?Sized>(
        &self,
        p: &mut P,
        report_data: &[u8; 64],
    ) -> Result<(Vec<u8>, Vec<u8>), ServiceStateError> {
        let report = self.psp.lock().request_report(p, report_data).map_err(|_| ServiceStateError::Unattested)?;
        Ok((copy(report.as_slice())?, copy(p.report_certificates())?))
    }

    /// The service state a migration's last round carries: the vTPM's whole state (it
    /// runs on, so a failed migration leaves the source serving) and the log level.
    pub fn export_services<P: Platform + ?Sized>(&self, p: &P) -> Result<ServiceState, ServiceStateError> {
        let vtpm = match self.vtpm.as_ref() {
            Some(vtpm) => {
                let mut vtpm = vtpm.lock();
                let state = vtpm.save().map_err(|_| ServiceStateError::VtpmUnavailable)?;
                // One snapshot of the sealed state: the lineage and the chain of one commit.
                let summary = self.sealed_summary_now();
                let (lineage, kept) =
                    self.vtpm_lineage_in(summary.as_ref()).ok_or(ServiceStateError::VtpmUnavailable)?;
                let chain = summary.filter(|_| kept).map(|s| s.chain);
                Some(VtpmSnapshot { ek_public: copy(vtpm.ek_public())?, state, kept, lineage, chain })
            }
            None => None,
        };
        let level = copy(sources::level_name(p.log_level()).as_bytes())?;
        let mut settings = Vec::new();
        settings.try_reserve(1).map_err(|_| ServiceStateError::OutOfMemory)?;
        settings.push((copy(sources::LOG_LEVEL_KEY)?, level));
        Ok(ServiceState { vtpm, settings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn sample() -> ServiceState {
        let mut nv = NvBlobs::new();
        nv.insert(b"permall".to_vec(), vec![7; 2500]);
        nv.insert(b"x".to_vec(), vec![]);
        ServiceState {
            vtpm: Some(VtpmSnapshot {
                ek_public: vec![1; 314],
                state: TpmState { nv, volatile: vec![9; 7000] },
                kept: true,
                lineage: crate::vtpm_lineage::Lineage::arrived(
                    &crate::vtpm_lineage::Lineage::manufactured(b"ek", 0x0102_0304_0506_0707),
                    [0x5A; 16],
                )
                .unwrap(),
                chain: crate::sealed::AttestChain::from_parts([4; 32], &[[5; 32], [6; 32]]),
            }),
            settings: vec![(sources::LOG_LEVEL_KEY.to_vec(), b"debug".to_vec())],
        }
    }

    #[test]
    fn service_state_decodes_to_what_was_encoded() {
        let state = sample();
        assert_eq!(ServiceState::decode(&state.encode().unwrap()), Ok(state));
        let empty = ServiceState::default();
        assert_eq!(ServiceState::decode(&empty.encode().unwrap()), Ok(empty));
    }

    #[test]
    fn every_cut_and_every_trailing_byte_is_refused() {
        let good = sample().encode().unwrap();
        // Cuts inside the header or a section; a cut exactly at a section boundary is a
        // shorter valid stream (the record layer's commit covers the whole).
        let boundaries = [6, good.len() - (1 + 4 + 2 + sources::LOG_LEVEL_KEY.len() + 4 + 5)];
        for cut in (0..good.len()).filter(|c| !boundaries.contains(c)) {
            assert_eq!(ServiceState::decode(&good[..cut]), Err(ServiceStateError::Malformed), "cut {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(ServiceState::decode(&long), Err(ServiceStateError::Malformed));
    }

    #[test]
    fn unknown_sections_duplicates_and_overlong_fields_are_refused() {
        let good = sample().encode().unwrap();
        let mut other = good.clone();
        other[4..6].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(ServiceState::decode(&other), Err(ServiceStateError::Malformed), "another version");
        let mut unknown = good.clone();
        unknown.extend_from_slice(&[9, 0, 0, 0, 0]);
        assert_eq!(ServiceState::decode(&unknown), Err(ServiceStateError::Malformed), "an unknown section");
        // The vTPM section twice.
        let vtpm_section = good[6..good.len() - (1 + 4 + 2 + sources::LOG_LEVEL_KEY.len() + 4 + 5)].to_vec();
        let mut twice = good[..6].to_vec();
        twice.extend_from_slice(&vtpm_section);
        twice.extend_from_slice(&vtpm_section);
        assert_eq!(ServiceState::decode(&twice), Err(ServiceStateError::Malformed), "two vTPMs");
        // One setting twice.
        let setting = ServiceState { vtpm: None, settings: sample().settings }.encode().unwrap();
        let mut again = setting.clone();
        again.extend_from_slice(&setting[6..]);
        assert_eq!(ServiceState::decode(&again), Err(ServiceStateError::Malformed), "a setting twice");
        // A volatile state claiming more than the limit.
        let mut big = ServiceState::default().encode().unwrap();
        big.extend_from_slice(&[TAG_VTPM, 0, 0, 0, 12, 0, 0, 0, 0]);
        big.extend_from_slice(&((MAX_VOLATILE_LEN + 1) as u32).to_be_bytes());
        big.extend_from_slice(&[0; 4]);
        assert_eq!(ServiceState::decode(&big), Err(ServiceStateError::Malformed));
        // Too large to build.
        let huge = ServiceState {
            vtpm: Some(VtpmSnapshot {
                ek_public: vec![],
                state: TpmState { nv: NvBlobs::new(), volatile: vec![0; MAX_VOLATILE_LEN + 1] },
                kept: false,
                lineage: crate::vtpm_lineage::Lineage::manufactured(b"", 0),
                chain: None,
            }),
            settings: vec![],
        };
        assert_eq!(huge.encode(), Err(ServiceStateError::TooLarge));
    }

    /// A vTPM state holds at most `MAX_BLOBS` blobs (as an engine's may): one more is
    /// refused when encoding and when decoding (each is a map entry whose allocation
    /// cannot fail gracefully).
    #[test]
    fn more_blobs_than_an_engine_holds_are_refused() {
        let with_blobs = |n: usize| {
            let mut state = sample();
            let blob = |i: usize| (alloc::format!("b{i}").into_bytes(), vec![i as u8; 3]);
            state.vtpm.as_mut().unwrap().state.nv = (0..n).map(blob).collect();
            state
        };
        // `state`'s bytes with one more blob after its last, in the count and the
        // section's length: the encoder would not make them.
        let one_more = |state: &ServiceState| {
            let vtpm = state.vtpm.as_ref().unwrap();
            let count_at = 6 + 5 + 4 + vtpm.ek_public.len() + 4 + vtpm.state.volatile.len();
            let blobs: usize = vtpm.state.nv.iter().map(|(name, data)| 2 + name.len() + 4 + data.len()).sum();
            let entry = [&[0, 3][..], b"new", &[0, 0, 0, 1, 0x77]].concat();
            let mut bytes = state.encode().unwrap();
            bytes.splice(count_at + 4 + blobs..count_at + 4 + blobs, entry.iter().copied());
            bytes[count_at..count_at + 4].copy_from_slice(&(vtpm.state.nv.len() as u32 + 1).to_be_bytes());
            let section = u32::from_be_bytes(bytes[7..11].try_into().unwrap()) + entry.len() as u32;
            bytes[7..11].copy_from_slice(&section.to_be_bytes());
            bytes
        };
        let mut full = with_blobs(MAX_BLOBS);
        assert_eq!(
            ServiceState::decode(&one_more(&with_blobs(MAX_BLOBS - 1))).map(|s| s.vtpm.unwrap().state.nv.len()),
            Ok(MAX_BLOBS)
        );
        assert_eq!(ServiceState::decode(&one_more(&full)), Err(ServiceStateError::Malformed));
        full.vtpm.as_mut().unwrap().state.nv.insert(b"new".to_vec(), vec![0x77]);
        assert_eq!(full.encode(), Err(ServiceStateError::TooLarge));
    }

    /// The vTPM section ends with its flags byte: whether the source kept the vTPM
    /// across reboots. Both values travel; any other is refused.
    #[test]
    fn whether_the_source_kept_its_vtpm_travels_with_it() {
        let kept = sample();
        let mut not_kept = sample();
        if let Some(v) = not_kept.vtpm.as_mut() {
            v.kept = false;
        }
        for state in [kept, not_kept] {
            assert_eq!(ServiceState::decode(&state.encode().unwrap()), Ok(state));
        }
        let mut bytes = sample().encode().unwrap();
        let flags_at =
            bytes.len() - (1 + 4 + 2 + sources::LOG_LEVEL_KEY.len() + 4 + 5) - 9 - 16 - 1 - 24 - (1 + 32 + 1 + 64);
        assert_eq!(bytes[flags_at], VTPM_KEPT);
        for other in [2u8, 3, 0x80, 0xFF] {
            bytes[flags_at] = other;
            assert_eq!(ServiceState::decode(&bytes), Err(ServiceStateError::Malformed), "flags {other:#x}");
        }
    }
}
