//! The relying party's record of each vTPM's lineage (docs/migration.md, "The vTPM's
//! lineage"), the part of the ledger ([`crate::ledger`]) that follows a TPM from store to
//! store. Per TPM (named by the SHA-256 of its EK public area) it keeps each incarnation
//! it saw: the newest version accepted, where the incarnation came from, and where it
//! went if it moved on.
//!
//! What it refuses, each a copy of the TPM's state that the host made run:
//! - an incarnation at an older version than accepted before (`rollback`: an old disk
//!   image booted);
//! - an incarnation that moved on (`moved_away`: after a live migration the source never
//!   runs its TPM again, so its evidence now comes from an old disk image of it);
//! - a new incarnation whose line of ancestors leaves the line the ledger knows: the
//!   nearest ancestor it knows moved on to another incarnation, or the TPM left it at an
//!   older version than accepted, or no ancestor it names is known for a TPM the ledger
//!   knows (`fork`).
//!
//! The ancestors an incarnation names (up to 32, the parent first) let the ledger place it
//! even when it missed the moves in between: it records them as having moved on, each to
//! the next, so a second line from any of them is a fork. What it cannot see, it cannot
//! refuse: a copy whose every ancestor the relying party never attested looks like an
//! honest TPM, and the first of two lines the ledger sees is the one it follows.

use crate::hex;
#[cfg(test)]
use crate::manifest::Ancestor;
use crate::manifest::VtpmLineage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the ledger knows of one incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incarnation {
    /// Where it came from: (parent incarnation, the parent's version when it left).
    pub parent: Option<([u8; 16], u64)>,
    /// The newest version accepted (or, for a parent known only from its child, the
    /// version it left at).
    pub newest: u64,
    /// The incarnation it moved on to, once one was seen.
    pub moved_to: Option<[u8; 16]>,
    /// The sealed store it was seen on (kept incarnations), so a relying party that
    /// binds a VM instance to its store can follow the VM to the store it moved to.
    pub store: Option<[u8; 16]>,
}

/// Each TPM's incarnations: EK digest → incarnation id → what is known of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TpmLineages(BTreeMap<[u8; 32], BTreeMap<[u8; 16], Incarnation>>);

/// What the ledger says about a vTPM's lineage entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TpmOutcome {
    /// A TPM the ledger never saw: accepted, and recorded.
    FirstSeen,
    /// The version accepted before: accepted.
    Same,
    /// A later version of a known incarnation: accepted, and recorded.
    Newer { previous: u64 },
    /// A new incarnation from a line that had not moved on: accepted, and recorded
    /// (`from`: the nearest ancestor the ledger knew; `parent_seen`: that is the parent).
    Moved { parent_seen: bool, from: [u8; 16] },
    /// An older version than accepted before: refused.
    Rollback { newest: u64 },
    /// An incarnation that moved on to another: refused.
    MovedAway { to: [u8; 16] },
    /// A second child of one parent (`sibling`), a child of an older state of its parent
    /// than the newest accepted, or a second manufacture of one TPM: refused.
    Fork { sibling: Option<[u8; 16]> },
}

impl TpmOutcome {
    pub fn accepted(self) -> bool {
        matches!(self, Self::FirstSeen | Self::Same | Self::Newer { .. } | Self::Moved { .. })
    }

    /// Its name in JSON verdicts.
    pub fn name(self) -> &'static str {
        match self {
            Self::FirstSeen => "first_seen",
            Self::Same => "same",
            Self::Newer { .. } => "newer",
            Self::Moved { .. } => "moved",
            Self::Rollback { .. } => "rollback",
            Self::MovedAway { .. } => "moved_away",
            Self::Fork { .. } => "fork",
        }
    }

    /// Whether accepting it changes the ledger.
    pub fn learns(self) -> bool {
        matches!(self, Self::FirstSeen | Self::Newer { .. } | Self::Moved { .. })
    }
}

impl TpmLineages {
    /// What the ledger knows of incarnation `incarnation` of the TPM with EK digest `ek`.
    pub fn get(&self, ek: &[u8; 32], incarnation: &[u8; 16]) -> Option<Incarnation> {
        self.0.get(ek)?.get(incarnation).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What the ledger says about `lineage` of the TPM with EK digest `ek`, unchanged.
    pub fn outcome(&self, ek: &[u8; 32], lineage: &VtpmLineage) -> TpmOutcome {
        let Some(known) = self.0.get(ek) else { return TpmOutcome::FirstSeen };
        let parent = lineage.parent().map(|p| (p.incarnation, p.left_at));
        if let Some(seen) = known.get(&lineage.incarnation) {
            return match seen.moved_to {
                Some(to) => TpmOutcome::MovedAway { to },
                // An incarnation has one origin: another one is not this incarnation.
                None if seen.parent.is_some() && seen.parent != parent => TpmOutcome::Fork { sibling: None },
                None if lineage.version < seen.newest => TpmOutcome::Rollback { newest: seen.newest },
                None if lineage.version == seen.newest => TpmOutcome::Same,
                None => TpmOutcome::Newer { previous: seen.newest },
            };
        }
        // A new incarnation of a known TPM: its nearest ancestor the ledger knows must have
        // moved on to the next one in its line (or not yet moved), at or after its newest
        // accepted version.
        let mut child = lineage.incarnation;
        for (i, ancestor) in lineage.ancestors.iter().enumerate() {
            if let Some(seen) = known.get(&ancestor.incarnation) {
                return match seen.moved_to {
                    Some(to) if to != child => TpmOutcome::Fork { sibling: Some(to) },
                    _ if ancestor.left_at < seen.newest => TpmOutcome::Fork { sibling: None },
                    _ => TpmOutcome::Moved { parent_seen: i == 0, from: ancestor.incarnation },
                };
            }
            child = ancestor.incarnation;
        }
        // None of its line is known, though the TPM is: another manufacture of one EK, or
        // a line that left the known one more than 32 moves ago.
        TpmOutcome::Fork { sibling: None }
    }

    /// [`Self::outcome`], and what an accepted lineage teaches is recorded: the
    /// incarnation (seen on sealed store `store`, if one keeps it), and each of its
    /// ancestors up to the nearest one known, as having moved on to the next.
    pub fn apply(&mut self, ek: &[u8; 32], lineage: &VtpmLineage, store: Option<[u8; 16]>) -> TpmOutcome {
        let outcome = self.outcome(ek, lineage);
        if !outcome.learns() {
            return outcome;
        }
        let known = self.0.entry(*ek).or_default();
        let parent = lineage.parent().map(|p| (p.incarnation, p.left_at));
        if matches!(outcome, TpmOutcome::Moved { .. } | TpmOutcome::FirstSeen) {
            let mut child = lineage.incarnation;
            for (i, ancestor) in lineage.ancestors.iter().enumerate() {
                let origin = lineage.ancestors.get(i + 1).map(|a| (a.incarnation, a.left_at));
                let was_known = known.contains_key(&ancestor.incarnation);
                let entry = known.entry(ancestor.incarnation).or_insert(Incarnation {
                    parent: origin,
                    newest: ancestor.left_at,
                    moved_to: None,
                    store: None,
                });
                entry.newest = entry.newest.max(ancestor.left_at);
                entry.moved_to = Some(child);
                if was_known {
                    break;
                }
                child = ancestor.incarnation;
            }
        }
        let seen = known.entry(lineage.incarnation).or_insert(Incarnation {
            parent,
            newest: lineage.version,
            moved_to: None,
            store: None,
        });
        seen.newest = lineage.version;
        seen.store = seen.store.or(store);
        outcome
    }

    /// The JSON form: EK digest hex → incarnation hex → [`IncarnationFile`].
    pub(crate) fn to_file(&self) -> BTreeMap<String, BTreeMap<String, IncarnationFile>> {
        self.0
            .iter()
            .map(|(ek, incarnations)| {
                let inner = incarnations
                    .iter()
                    .map(|(id, seen)| {
                        let file = IncarnationFile {
                            parent: seen.parent.map(|(p, _)| hex(&p)),
                            parent_version: seen.parent.map_or(0, |(_, v)| v),
                            newest: seen.newest,
                            moved_to: seen.moved_to.map(|t| hex(&t)),
                            store: seen.store.map(|t| hex(&t)),
                        };
                        (hex(id), file)
                    })
                    .collect();
                (hex(ek), inner)
            })
            .collect()
    }

    /// Read back [`Self::to_file`]'s form; `unhex` reads exactly N bytes of lower-case hex.
    pub(crate) fn from_file(
        file: BTreeMap<String, BTreeMap<String, IncarnationFile>>,
        unhex16: impl Fn(&str) -> Option<[u8; 16]>,
        unhex32: impl Fn(&str) -> Option<[u8; 32]>,
    ) -> Result<Self, String> {
        let mut out = BTreeMap::new();
        for (ek_text, incarnations) in file {
            let ek = unhex32(&ek_text).ok_or_else(|| format!("vTPM `{ek_text}` is not 64 lower-case hex digits"))?;
            let mut inner = BTreeMap::new();
            for (id_text, seen) in incarnations {
                let bad = |what: &str| format!("vTPM {ek_text}: incarnation {id_text}: bad {what}");
                let id = unhex16(&id_text).ok_or_else(|| bad("id"))?;
                let parent = match &seen.parent {
                    Some(p) => Some((unhex16(p).ok_or_else(|| bad("parent"))?, seen.parent_version)),
                    None => None,
                };
                let moved_to = match &seen.moved_to {
                    Some(t) => Some(unhex16(t).ok_or_else(|| bad("moved_to"))?),
                    None => None,
                };
                let store = match &seen.store {
                    Some(t) => Some(unhex16(t).ok_or_else(|| bad("store"))?),
                    None => None,
                };
                inner.insert(id, Incarnation { parent, newest: seen.newest, moved_to, store });
            }
            out.insert(ek, inner);
        }
        Ok(Self(out))
    }
}

/// One incarnation as the file holds it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IncarnationFile {
    parent: Option<String>,
    #[serde(default)]
    parent_version: u64,
    newest: u64,
    moved_to: Option<String>,
    #[serde(default)]
    store: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const EK: [u8; 32] = [0xe4; 32];
    const HOME: [u8; 16] = [0x01; 16];

    fn manufactured(version: u64) -> VtpmLineage {
        VtpmLineage { version, incarnation: HOME, ancestors: vec![], kept: true }
    }

    /// Incarnation `[id; 16]` at `version`, its ancestors (incarnation, left at) the parent
    /// first.
    fn moved(id: u8, ancestors: &[([u8; 16], u64)], version: u64) -> VtpmLineage {
        let ancestors =
            ancestors.iter().map(|(incarnation, left_at)| Ancestor { incarnation: *incarnation, left_at: *left_at });
        VtpmLineage { version, incarnation: [id; 16], ancestors: ancestors.collect(), kept: true }
    }

    #[test]
    fn a_tpm_is_followed_through_reboots_writes_and_moves() {
        let mut l = TpmLineages::default();
        assert_eq!(l.apply(&EK, &manufactured(3), None), TpmOutcome::FirstSeen);
        assert_eq!(l.apply(&EK, &manufactured(3), None), TpmOutcome::Same);
        assert_eq!(l.apply(&EK, &manufactured(5), None), TpmOutcome::Newer { previous: 3 });
        // It moves at version 6 (a write the ledger did not see), then writes on.
        assert_eq!(l.apply(&EK, &moved(2, &[(HOME, 6)], 7), None), TpmOutcome::Moved { parent_seen: true, from: HOME });
        assert_eq!(l.get(&EK, &HOME).map(|s| (s.newest, s.moved_to)), Some((6, Some([2; 16]))));
        assert_eq!(l.apply(&EK, &moved(2, &[(HOME, 6)], 9), None), TpmOutcome::Newer { previous: 7 });
        // And on again, seen only at its next home.
        let next = moved(3, &[([2; 16], 9), (HOME, 6)], 10);
        assert_eq!(l.apply(&EK, &next, None), TpmOutcome::Moved { parent_seen: true, from: [2; 16] });
        // Two moves the ledger did not see: placed by the ancestors it names.
        let far = moved(5, &[([4; 16], 12), ([3; 16], 11), ([2; 16], 9), (HOME, 6)], 13);
        assert_eq!(l.apply(&EK, &far, None), TpmOutcome::Moved { parent_seen: false, from: [3; 16] });
        assert_eq!(l.get(&EK, &[3; 16]).and_then(|i| i.moved_to), Some([4; 16]));
        assert_eq!(l.get(&EK, &[4; 16]).and_then(|i| i.moved_to), Some([5; 16]));
    }

    /// The reviewer's laundering: an old image of the TPM booted and moved twice before
    /// the relying party looks (X, then Y). Y names X and HOME; whichever line the ledger
    /// saw first, the other is a fork.
    #[test]
    fn a_copy_moved_on_unseen_is_still_placed_by_its_ancestors() {
        let copy = moved(0x0b, &[([0x0a; 16], 6), (HOME, 5)], 7);
        let honest = moved(2, &[(HOME, 5)], 6);
        // The honest move seen first: the copy's line leaves HOME for another child.
        let mut l = TpmLineages::default();
        l.apply(&EK, &manufactured(5), None);
        l.apply(&EK, &honest, None);
        assert_eq!(l.apply(&EK, &copy, None), TpmOutcome::Fork { sibling: Some([2; 16]) });
        // The copy seen first: it is followed, and the honest one is the fork.
        let mut l = TpmLineages::default();
        l.apply(&EK, &manufactured(5), None);
        assert_eq!(l.apply(&EK, &copy, None), TpmOutcome::Moved { parent_seen: false, from: HOME });
        assert_eq!(l.apply(&EK, &honest, None), TpmOutcome::Fork { sibling: Some([0x0a; 16]) });
    }

    #[test]
    fn a_line_that_names_no_known_ancestor_of_a_known_tpm_is_a_fork() {
        let mut l = TpmLineages::default();
        l.apply(&EK, &manufactured(5), None);
        assert_eq!(l.apply(&EK, &moved(7, &[([6; 16], 3)], 4), None), TpmOutcome::Fork { sibling: None });
    }

    #[test]
    fn a_known_incarnation_with_another_origin_is_a_fork() {
        let mut l = TpmLineages::default();
        l.apply(&EK, &manufactured(5), None);
        l.apply(&EK, &moved(2, &[(HOME, 5)], 6), None);
        assert_eq!(l.apply(&EK, &moved(2, &[(HOME, 4)], 6), None), TpmOutcome::Fork { sibling: None });
    }

    #[test]
    fn an_older_version_of_an_incarnation_is_a_rollback() {
        let mut l = TpmLineages::default();
        l.apply(&EK, &manufactured(5), None);
        let before = l.clone();
        assert_eq!(l.apply(&EK, &manufactured(4), None), TpmOutcome::Rollback { newest: 5 });
        assert_eq!(l, before, "nothing recorded");
    }

    /// The source of a migration, booted again on an old disk image: refused, at any
    /// version, once its move was seen.
    #[test]
    fn an_incarnation_that_moved_on_is_refused() {
        let mut l = TpmLineages::default();
        l.apply(&EK, &manufactured(5), None);
        l.apply(&EK, &moved(2, &[(HOME, 5)], 6), None);
        for version in [4, 5, 6, 50] {
            assert_eq!(l.apply(&EK, &manufactured(version), None), TpmOutcome::MovedAway { to: [2; 16] });
        }
    }

    /// An old disk image of the source migrated to a second destination: a second child,
    /// whether the ledger saw the parent or only the first child.
    #[test]
    fn two_children_of_one_parent_are_a_fork() {
        for parent_seen in [true, false] {
            let mut l = TpmLineages::default();
            if parent_seen {
                l.apply(&EK, &manufactured(5), None);
            }
            let first = l.apply(&EK, &moved(2, &[(HOME, 5)], 6), None);
            assert!(first.accepted(), "{first:?}");
            let before = l.clone();
            assert_eq!(l.apply(&EK, &moved(3, &[(HOME, 5)], 6), None), TpmOutcome::Fork { sibling: Some([2; 16]) });
            assert_eq!(l.apply(&EK, &moved(3, &[(HOME, 4)], 9), None), TpmOutcome::Fork { sibling: Some([2; 16]) });
            assert_eq!(l, before);
            assert_eq!(l.apply(&EK, &moved(2, &[(HOME, 5)], 6), None), TpmOutcome::Same, "the first child goes on");
        }
    }

    #[test]
    fn a_child_of_an_older_state_than_accepted_is_a_fork() {
        let mut l = TpmLineages::default();
        l.apply(&EK, &manufactured(8), None);
        assert_eq!(l.apply(&EK, &moved(2, &[(HOME, 7)], 8), None), TpmOutcome::Fork { sibling: None });
        assert_eq!(l.apply(&EK, &moved(2, &[(HOME, 8)], 9), None), TpmOutcome::Moved { parent_seen: true, from: HOME });
    }

    #[test]
    fn a_second_manufacture_of_a_known_tpm_is_a_fork() {
        let mut l = TpmLineages::default();
        l.apply(&EK, &manufactured(1), None);
        let other = VtpmLineage { incarnation: [0x0f; 16], ..manufactured(1) };
        assert_eq!(l.apply(&EK, &other, None), TpmOutcome::Fork { sibling: None });
        assert_eq!(l.apply(&[0x99; 32], &other, None), TpmOutcome::FirstSeen, "another TPM is not this one");
    }
}
