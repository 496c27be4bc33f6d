//! Where the running vTPM stands in its lineage (docs/migration.md, "The vTPM's
//! lineage"), shown to verifiers as a manifest entry (`VtpmLineageEntry` and its
//! ancestors).
//!
//! A store alone cannot tell a verifier that a TPM's state is old when the state arrives
//! on a new store: a host that kept an old disk image of a migration's source can boot it
//! and migrate that old TPM to a fresh destination, whose store never saw the TPM. The
//! lineage closes that. Each place the TPM lives is an *incarnation*: one when it is
//! manufactured, a new one each time a migration's destination takes it, naming the
//! incarnations it came from and the versions at which it left them. A verifier that
//! records what it accepted per TPM (`bulwark attest verify --state-ledger`) then refuses
//! an incarnation that goes on after it moved away, an older version of one, and a second
//! line of incarnations taken from one ancestor (a copy), even across moves it did not
//! see.

use abi::attest::{VTPM_LINEAGE_KEPT, VTPM_LINEAGE_MAX_ANCESTORS, VtpmAncestor, VtpmLineageEntry};
use alloc::vec::Vec;
use sha2::{Digest, Sha256};
use zerocopy::IntoBytes;

/// The running vTPM's place in its lineage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lineage {
    /// The version of its NV state: one more with every commit where a sealed state keeps
    /// it; a new incarnation starts at one more than its parent's version.
    pub version: u64,
    pub incarnation: [u8; 16],
    /// Its ancestors, newest (the parent) first: `ancestors[..count]`.
    ancestors: [VtpmAncestor; VTPM_LINEAGE_MAX_ANCESTORS],
    count: usize,
}

const NO_ANCESTOR: VtpmAncestor = VtpmAncestor { incarnation: [0; 16], left_at: 0 };
/// One ancestor as [`Lineage::origin_bytes`] writes it.
const ANCESTOR_LEN: usize = 24;

impl Lineage {
    /// A vTPM manufactured here, at NV version `version`. Its incarnation is named by its
    /// EK public area: a new TPM has new seeds and so a new EK, and a TPM kept before
    /// lineages were recorded gets the same name at every boot.
    pub fn manufactured(ek_public: &[u8], version: u64) -> Self {
        let digest: [u8; 32] =
            Sha256::new().chain_update(b"bulwark vtpm incarnation v1").chain_update(ek_public).finalize().into();
        let incarnation = *digest.first_chunk::<16>().unwrap_or(&[0; 16]);
        Self { version, incarnation, ancestors: [NO_ANCESTOR; VTPM_LINEAGE_MAX_ANCESTORS], count: 0 }
    }

    /// The incarnation a migration's destination makes of the vTPM that left `parent`
    /// (at `parent.version`): `incarnation` must be fresh (random), so two destinations of
    /// one state are told apart. The parent heads the ancestors, the oldest beyond
    /// [`VTPM_LINEAGE_MAX_ANCESTORS`] are dropped. `None` if the version cannot grow.
    pub fn arrived(parent: &Lineage, incarnation: [u8; 16]) -> Option<Self> {
        let mut ancestors = [NO_ANCESTOR; VTPM_LINEAGE_MAX_ANCESTORS];
        let left = VtpmAncestor { incarnation: parent.incarnation, left_at: parent.version };
        let chain = core::iter::once(left).chain(parent.ancestors().iter().copied());
        let mut count = 0;
        for (slot, ancestor) in ancestors.iter_mut().zip(chain) {
            *slot = ancestor;
            count += 1;
        }
        Some(Self { version: parent.version.checked_add(1)?, incarnation, ancestors, count })
    }

    /// Its ancestors, the parent first; empty if manufactured here.
    pub fn ancestors(&self) -> &[VtpmAncestor] {
        self.ancestors.get(..self.count).unwrap_or(&[])
    }

    /// The manifest entry (header and ancestors); `kept` if a sealed state keeps the vTPM
    /// across reboots. `None` only without memory for it.
    pub fn entry(&self, kept: bool) -> Option<Vec<u8>> {
        let header = VtpmLineageEntry {
            version: self.version,
            incarnation: self.incarnation,
            flags: if kept { VTPM_LINEAGE_KEPT } else { 0 },
            ancestors: u32::try_from(self.count).ok()?,
        };
        let mut out = Vec::new();
        out.try_reserve_exact(size_of::<VtpmLineageEntry>() + self.count * ANCESTOR_LEN).ok()?;
        out.extend_from_slice(header.as_bytes());
        for ancestor in self.ancestors() {
            out.extend_from_slice(ancestor.as_bytes());
        }
        Some(out)
    }

    /// Everything but the version (which the sealed state keeps on its own): incarnation,
    /// then each ancestor (incarnation, left_at u64 LE). `None` only without memory.
    pub fn origin_bytes(&self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        out.try_reserve_exact(16 + self.count * ANCESTOR_LEN).ok()?;
        out.extend_from_slice(&self.incarnation);
        for ancestor in self.ancestors() {
            out.extend_from_slice(ancestor.as_bytes());
        }
        Some(out)
    }

    /// [`Self::origin_bytes`] read back, at `version`; `None` unless exactly that form.
    pub fn from_origin(bytes: &[u8], version: u64) -> Option<Self> {
        let (incarnation, rest) = bytes.split_first_chunk::<16>()?;
        Self::with_ancestors(version, *incarnation, rest)
    }

    /// A lineage from its parts: `ancestors` is a whole number of (incarnation, left_at
    /// u64 LE) records, at most [`VTPM_LINEAGE_MAX_ANCESTORS`].
    pub fn with_ancestors(version: u64, incarnation: [u8; 16], ancestors: &[u8]) -> Option<Self> {
        if !ancestors.len().is_multiple_of(ANCESTOR_LEN) || ancestors.len() / ANCESTOR_LEN > VTPM_LINEAGE_MAX_ANCESTORS
        {
            return None;
        }
        let mut out = Self { version, incarnation, ancestors: [NO_ANCESTOR; VTPM_LINEAGE_MAX_ANCESTORS], count: 0 };
        for (slot, raw) in out.ancestors.iter_mut().zip(ancestors.chunks_exact(ANCESTOR_LEN)) {
            let (id, left) = raw.split_first_chunk::<16>()?;
            *slot = VtpmAncestor { incarnation: *id, left_at: u64::from_le_bytes(*left.first_chunk::<8>()?) };
            out.count += 1;
        }
        Some(out)
    }

    /// The ancestors as [`Self::with_ancestors`] reads them.
    pub fn ancestor_bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.ancestors().iter().flat_map(|a| a.as_bytes().iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manufactured_tpm_is_named_by_its_ek_and_has_no_ancestors() {
        let a = Lineage::manufactured(b"ek one", 3);
        assert_eq!(a, Lineage::manufactured(b"ek one", 3), "the same TPM, the same name");
        assert_ne!(a.incarnation, Lineage::manufactured(b"ek two", 3).incarnation);
        assert_eq!((a.version, a.ancestors()), (3, &[][..]));
        let entry = a.entry(true).unwrap();
        assert_eq!(entry.len(), 32);
        assert_eq!(entry[24..28], VTPM_LINEAGE_KEPT.to_le_bytes());
        assert_eq!(a.entry(false).unwrap()[24..28], [0; 4]);
    }

    #[test]
    fn a_new_incarnation_starts_one_version_above_where_its_parent_left() {
        let home = Lineage::manufactured(b"ek", 41);
        let child = Lineage::arrived(&home, [9; 16]).unwrap();
        assert_eq!(child.version, 42);
        assert_eq!(child.ancestors(), &[VtpmAncestor { incarnation: home.incarnation, left_at: 41 }]);
        let grandchild = Lineage::arrived(&child, [8; 16]).unwrap();
        let ids: Vec<_> = grandchild.ancestors().iter().map(|a| (a.incarnation, a.left_at)).collect();
        assert_eq!(ids, [([9; 16], 42), (home.incarnation, 41)], "the parent first");
        let at_max = Lineage { version: u64::MAX, ..home };
        assert_eq!(Lineage::arrived(&at_max, [9; 16]), None, "the version cannot wrap");
    }

    #[test]
    fn the_oldest_ancestors_are_dropped_beyond_the_limit() {
        let mut l = Lineage::manufactured(b"ek", 0);
        for i in 0..40u8 {
            l = Lineage::arrived(&l, [i; 16]).unwrap();
        }
        assert_eq!(l.ancestors().len(), VTPM_LINEAGE_MAX_ANCESTORS);
        assert_eq!(l.ancestors()[0].incarnation, [38; 16], "the parent stays");
        assert_eq!(l.entry(true).unwrap().len(), 32 + 24 * VTPM_LINEAGE_MAX_ANCESTORS);
    }

    #[test]
    fn the_origin_reads_back_and_nothing_else_does() {
        let child =
            Lineage::arrived(&Lineage::arrived(&Lineage::manufactured(b"ek", 3), [2; 16]).unwrap(), [5; 16]).unwrap();
        let bytes = child.origin_bytes().unwrap();
        assert_eq!(bytes.len(), 16 + 2 * 24);
        assert_eq!(Lineage::from_origin(&bytes, child.version), Some(child));
        assert_eq!(Lineage::from_origin(&bytes[..bytes.len() - 1], 1), None);
        assert_eq!(Lineage::from_origin(&[bytes.as_slice(), &[0]].concat(), 1), None);
        let ancestors: Vec<u8> = child.ancestor_bytes().collect();
        assert_eq!(Lineage::with_ancestors(child.version, child.incarnation, &ancestors), Some(child));
        assert_eq!(Lineage::with_ancestors(1, [0; 16], &[0; 24 * 33]), None, "too many");
    }
}
