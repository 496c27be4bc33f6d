//! Where the running vTPM stands in its lineage (docs/migration.md, "The vTPM's
//! lineage"), shown to verifiers as a manifest entry (`VtpmLineageEntry`).
//!
//! A store alone cannot tell a verifier that a TPM's state is old when the state arrives
//! on a new store: a host that kept an old disk image of a migration's source can boot it
//! and migrate that old TPM to a fresh destination, whose store never saw the TPM. The
//! lineage closes that. Each place the TPM lives is an *incarnation*: one when it is
//! manufactured, a new one each time a migration's destination takes it, naming the
//! incarnation and version it came from. A verifier that records what it accepted per
//! TPM (`bulwark attest verify --state-ledger`) then refuses an incarnation that goes on
//! after it moved away, an older version of one, and a second incarnation taken from one
//! parent (a copy).

use abi::attest::{VTPM_LINEAGE_KEPT, VtpmLineageEntry};
use sha2::{Digest, Sha256};

/// The running vTPM's place in its lineage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lineage {
    /// The version of its NV state: one more with every commit where a sealed state keeps
    /// it; a new incarnation starts at one more than its parent's version.
    pub version: u64,
    pub incarnation: [u8; 16],
    /// The incarnation it came from, all zero if manufactured here.
    pub parent: [u8; 16],
    /// The parent's version when it left; zero if manufactured here.
    pub parent_version: u64,
}

/// Length of [`Lineage::origin_bytes`].
pub const ORIGIN_LEN: usize = 40;

impl Lineage {
    /// A vTPM manufactured here, at NV version `version`. Its incarnation is named by its
    /// EK public area: a new TPM has new seeds and so a new EK, and a TPM kept before
    /// lineages were recorded gets the same name at every boot.
    pub fn manufactured(ek_public: &[u8], version: u64) -> Self {
        let digest: [u8; 32] =
            Sha256::new().chain_update(b"bulwark vtpm incarnation v1").chain_update(ek_public).finalize().into();
        let incarnation = *digest.first_chunk::<16>().unwrap_or(&[0; 16]);
        Self { version, incarnation, parent: [0; 16], parent_version: 0 }
    }

    /// The incarnation a migration's destination makes of a vTPM that left `parent` at
    /// `parent_version`: `incarnation` must be fresh (random), so two destinations of one
    /// state are told apart. `None` if the version cannot grow.
    pub fn arrived(parent: [u8; 16], parent_version: u64, incarnation: [u8; 16]) -> Option<Self> {
        Some(Self { version: parent_version.checked_add(1)?, incarnation, parent, parent_version })
    }

    /// The manifest entry; `kept` if a sealed state keeps the vTPM across reboots.
    pub fn entry(&self, kept: bool) -> VtpmLineageEntry {
        VtpmLineageEntry {
            version: self.version,
            incarnation: self.incarnation,
            parent: self.parent,
            parent_version: self.parent_version,
            flags: if kept { VTPM_LINEAGE_KEPT } else { 0 },
            reserved: 0,
        }
    }

    /// Everything but the version (which the sealed state keeps on its own):
    /// incarnation | parent | parent version (u64 LE).
    pub fn origin_bytes(&self) -> [u8; ORIGIN_LEN] {
        let mut out = [0u8; ORIGIN_LEN];
        let parts = [&self.incarnation[..], &self.parent[..], &self.parent_version.to_le_bytes()[..]];
        for (to, from) in out.iter_mut().zip(parts.into_iter().flatten()) {
            *to = *from;
        }
        out
    }

    /// [`Self::origin_bytes`] read back, at `version`; `None` unless exactly that form.
    pub fn from_origin(bytes: &[u8], version: u64) -> Option<Self> {
        let bytes: &[u8; ORIGIN_LEN] = bytes.try_into().ok()?;
        let (incarnation, rest) = bytes.split_first_chunk::<16>()?;
        let (parent, rest) = rest.split_first_chunk::<16>()?;
        let parent_version = u64::from_le_bytes(*rest.first_chunk::<8>()?);
        Some(Self { version, incarnation: *incarnation, parent: *parent, parent_version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manufactured_tpm_is_named_by_its_ek_and_has_no_parent() {
        let a = Lineage::manufactured(b"ek one", 3);
        assert_eq!(a, Lineage::manufactured(b"ek one", 3), "the same TPM, the same name");
        assert_ne!(a.incarnation, Lineage::manufactured(b"ek two", 3).incarnation);
        assert_eq!((a.version, a.parent, a.parent_version), (3, [0; 16], 0));
        assert_eq!(a.entry(true).flags, VTPM_LINEAGE_KEPT);
        assert_eq!(a.entry(false).flags, 0);
    }

    #[test]
    fn a_new_incarnation_starts_one_version_above_where_its_parent_left() {
        let parent = Lineage::manufactured(b"ek", 41);
        let child = Lineage::arrived(parent.incarnation, parent.version, [9; 16]).unwrap();
        assert_eq!((child.version, child.parent, child.parent_version), (42, parent.incarnation, 41));
        assert_eq!(Lineage::arrived(parent.incarnation, u64::MAX, [9; 16]), None, "the version cannot wrap");
    }

    #[test]
    fn the_origin_reads_back_and_nothing_else_does() {
        let child = Lineage::arrived([1; 16], 0x0102_0304, [2; 16]).unwrap();
        let bytes = child.origin_bytes();
        assert_eq!(Lineage::from_origin(&bytes, child.version), Some(child));
        assert_eq!(Lineage::from_origin(&bytes[..ORIGIN_LEN - 1], 1), None);
        assert_eq!(Lineage::from_origin(&[bytes.as_slice(), &[0]].concat(), 1), None);
    }
}
