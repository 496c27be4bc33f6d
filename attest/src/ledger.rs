//! The relying party's ledger of sealed states: for each store id it has accepted, the
//! newest generation and its root. With it the verifier detects what the SVSM alone
//! cannot (docs/persistence.md, "Rollback and the verifier's ledger"): a host that
//! presents an authentic but older state of the store (an older disk image, or the newest
//! header destroyed), and two different states under one generation (a fork or a clone).
//!
//! [`Ledger::outcome`] is the decision, a pure function of the ledger and the state;
//! [`Ledger::apply`] also records an accepted new state in the ledger in memory; [`judge`]
//! adds the outcome to a verdict as the `state_ledger` check; [`apply_file`] is the whole
//! round trip on a ledger file, as `bulwark attest verify --state-ledger` and the QEMU
//! boots run it.
//!
//! A store id it never saw is accepted and recorded (first seen): a blank disk gives the
//! SVSM a new store, so on store ids alone a host could trade the state for an empty one,
//! or present another VM's disk. A relying party that names the VM instance the evidence
//! comes from ([`Instance`], `--instance NAME`) closes that: the ledger binds each
//! instance to the first store it accepts for it and refuses any other store for it
//! (`state_instance`), unless the relying party accepts a reset (`--accept-new-store`:
//! the VM was provisioned again), which binds the new store.
//!
//! Beside the stores it follows each vTPM's lineage ([`crate::lineage_ledger`]): a TPM's
//! state that arrives on a store the ledger never saw (a live migration's destination)
//! is judged against what the ledger saw of the same TPM elsewhere (`vtpm_ledger`).
//!
//! The file is JSON: `{"stores": {...}, "instances": {...}, "vtpms": {...}}`. `stores` maps each store id
//! (32 lower-case hex digits) to `{"generation": N, "root": "<64 hex digits>"}`,
//! `instances` each instance name to its store id, `vtpms` each EK's SHA-256 to its
//! incarnations (see [`crate::lineage_ledger`]). A file that is only the `stores`
//! object (the form before instances) is read too. A missing file is an empty ledger; a
//! file that does not parse is an error, never an empty ledger, since forgetting is
//! exactly what a rollback needs.

use crate::hex;
use crate::lineage_ledger::{IncarnationFile, TpmLineages, TpmOutcome};
use crate::manifest::SealedState;
use crate::verify::{Check, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The newest state the ledger accepted for one store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub generation: u64,
    pub root: [u8; 32],
}

/// Store id → the newest state accepted for it; instance → the store bound to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    stores: BTreeMap<[u8; 16], Seen>,
    /// Store id → the attestation chain's value after the state accepted last (a store
    /// that keeps no vTPM).
    chains: BTreeMap<[u8; 16], [u8; 32]>,
    /// EK digest → the same, for a vTPM a store keeps: its chain goes with it when it
    /// moves (docs/persistence.md, "The attestation chain").
    tpm_chains: BTreeMap<[u8; 32], [u8; 32]>,
    instances: BTreeMap<String, [u8; 16]>,
    vtpms: TpmLineages,
}

/// The VM instance a relying party says the evidence comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    /// Accept a store other than the one bound to the instance, and bind it: the relying
    /// party knows the VM was provisioned again (its state reset).
    pub accept_new_store: bool,
}

impl Instance {
    /// Longest instance name.
    pub const MAX_NAME: usize = 128;

    /// An instance name: 1 to [`Self::MAX_NAME`] bytes, no control characters.
    pub fn new(name: &str, accept_new_store: bool) -> Result<Self, String> {
        if name.is_empty() || name.len() > Self::MAX_NAME || name.chars().any(char::is_control) {
            return Err(format!("instance name `{name}`: 1 to {} bytes without control characters", Self::MAX_NAME));
        }
        Ok(Self { name: name.to_string(), accept_new_store })
    }
}

/// What the ledger says about the store an instance's evidence shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// An instance the ledger never saw: bound to this store.
    FirstSeen,
    /// The store bound to the instance.
    Same,
    /// Another store than the one bound to the instance: refused (a blank disk, or
    /// another VM's disk).
    AnotherStore { bound: [u8; 16] },
    /// A store bound to another instance: refused, whether the instance is new or asks
    /// for a reset (one store, one VM: a copy of another VM's disk).
    OtherInstance,
    /// Another store, accepted as a reset the relying party asked for: bound from now on.
    Reset { previous: [u8; 16] },
    /// A new store that the instance's vTPM moved to by live migration from the store
    /// bound to it (its lineage says so, and the ledger accepted the move): bound from
    /// now on.
    Migrated { previous: [u8; 16] },
}

impl Binding {
    pub fn accepted(self) -> bool {
        !matches!(self, Self::AnotherStore { .. } | Self::OtherInstance)
    }

    /// Its name in JSON verdicts.
    pub fn name(self) -> &'static str {
        match self {
            Self::FirstSeen => "first_seen",
            Self::Same => "same",
            Self::AnotherStore { .. } => "another_store",
            Self::OtherInstance => "other_instance",
            Self::Reset { .. } => "reset",
            Self::Migrated { .. } => "migrated",
        }
    }
}

/// What the ledger says about a sealed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A store the ledger never saw: accepted, and recorded.
    FirstSeen,
    /// The generation and root the ledger holds: accepted.
    Same,
    /// A later generation than the ledger holds: accepted, and recorded.
    Newer { previous: Seen },
    /// An older generation than the ledger holds: refused (rollback).
    Rollback { newest: Seen },
    /// A newer (or the same) generation whose attestation chain does not pass through the
    /// chain value of the state accepted last: refused. It does not descend from that
    /// state (an older image booted until its generation passed), or more attestations
    /// than the chain shows were served since.
    Diverged,
    /// What would be [`Outcome::Diverged`], accepted anew because the relying party asked
    /// ([`Acceptance::new_chain`]): the chain the evidence shows is kept from now on.
    Rebased,
    /// The generation the ledger holds with another root: refused. One generation names
    /// one state (the store never reuses a generation), so two roots mean two branches
    /// from one image: a fork, or a clone of the disk.
    Fork { accepted: Seen },
}

impl Outcome {
    pub fn accepted(self) -> bool {
        matches!(self, Self::FirstSeen | Self::Same | Self::Newer { .. } | Self::Rebased)
    }

    /// Its name in JSON verdicts.
    pub fn name(self) -> &'static str {
        match self {
            Self::FirstSeen => "first_seen",
            Self::Same => "same",
            Self::Newer { .. } => "newer",
            Self::Rollback { .. } => "rollback",
            Self::Diverged => "diverged",
            Self::Rebased => "rebased",
            Self::Fork { .. } => "fork",
        }
    }
}

impl Ledger {
    /// The newest state accepted for `store_id`.
    pub fn get(&self, store_id: &[u8; 16]) -> Option<Seen> {
        self.stores.get(store_id).copied()
    }

    /// The stores the ledger knows.
    pub fn len(&self) -> usize {
        self.stores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stores.is_empty()
    }

    /// What the ledger says about `state`, without changing it.
    pub fn outcome(&self, state: &SealedState) -> Outcome {
        match self.get(&state.store_id) {
            None => Outcome::FirstSeen,
            Some(seen) if state.generation > seen.generation => Outcome::Newer { previous: seen },
            Some(seen) if state.generation < seen.generation => Outcome::Rollback { newest: seen },
            Some(seen) if state.root == seen.root => Outcome::Same,
            Some(seen) => Outcome::Fork { accepted: seen },
        }
    }

    /// The store bound to `instance`.
    pub fn bound(&self, instance: &str) -> Option<[u8; 16]> {
        self.instances.get(instance).copied()
    }

    /// The instance `store_id` is bound to, if any.
    pub fn owner(&self, store_id: &[u8; 16]) -> Option<&str> {
        self.instances.iter().find(|(_, id)| *id == store_id).map(|(name, _)| name.as_str())
    }

    /// What the ledger says about `instance` showing store `store_id`, without changing it.
    pub fn binding(&self, instance: &Instance, store_id: &[u8; 16]) -> Binding {
        if self.owner(store_id).is_some_and(|owner| owner != instance.name) {
            return Binding::OtherInstance;
        }
        match self.bound(&instance.name) {
            None => Binding::FirstSeen,
            Some(bound) if bound == *store_id => Binding::Same,
            Some(previous) if instance.accept_new_store => Binding::Reset { previous },
            Some(bound) => Binding::AnotherStore { bound },
        }
    }

    /// [`Ledger::binding`], and an accepted new store becomes the instance's.
    pub fn bind(&mut self, instance: &Instance, store_id: &[u8; 16]) -> Binding {
        let binding = self.binding(instance, store_id);
        if matches!(binding, Binding::FirstSeen | Binding::Reset { .. }) {
            self.instances.insert(instance.name.clone(), *store_id);
        }
        binding
    }

    /// [`Ledger::outcome`], and an accepted state becomes the newest of its store.
    pub fn apply(&mut self, state: &SealedState) -> Outcome {
        let outcome = self.outcome(state);
        if matches!(outcome, Outcome::FirstSeen | Outcome::Newer { .. }) {
            self.stores.insert(state.store_id, Seen { generation: state.generation, root: state.root });
        }
        outcome
    }

    /// The vTPM lineages the ledger follows.
    pub fn vtpms(&self) -> &TpmLineages {
        &self.vtpms
    }

    /// What the ledger says about the vTPM with EK digest `ek` at `lineage`, and an
    /// accepted one is recorded ([`TpmLineages::apply`]).
    pub fn apply_vtpm(
        &mut self,
        ek: &[u8; 32],
        lineage: &crate::manifest::VtpmLineage,
        store: Option<[u8; 16]>,
    ) -> TpmOutcome {
        self.vtpms.apply(ek, lineage, store)
    }

    /// The ledger from its JSON text (see the module doc); anything else is an error.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let file: LedgerFile = match serde_json::from_str(text) {
            Ok(file) => file,
            // The form before instances: the stores alone.
            Err(e) => match serde_json::from_str::<BTreeMap<String, SeenFile>>(text) {
                Ok(stores) => LedgerFile {
                    stores,
                    instances: BTreeMap::new(),
                    vtpms: BTreeMap::new(),
                    vtpm_chains: BTreeMap::new(),
                },
                Err(_) => return Err(e.to_string()),
            },
        };
        let mut stores = BTreeMap::new();
        let mut chains = BTreeMap::new();
        for (id, seen) in file.stores {
            let store_id = unhex(&id).ok_or_else(|| format!("store id `{id}` is not 32 lower-case hex digits"))?;
            let root = unhex(&seen.root)
                .ok_or_else(|| format!("store {id}: root `{}` is not 64 lower-case hex digits", seen.root))?;
            stores.insert(store_id, Seen { generation: seen.generation, root });
            if let Some(chain) = &seen.chain {
                let value = unhex(chain)
                    .ok_or_else(|| format!("store {id}: chain `{chain}` is not 64 lower-case hex digits"))?;
                chains.insert(store_id, value);
            }
        }
        let mut instances = BTreeMap::new();
        for (name, id) in file.instances {
            let instance = Instance::new(&name, false)?;
            let store_id = unhex(&id)
                .ok_or_else(|| format!("instance {name}: store id `{id}` is not 32 lower-case hex digits"))?;
            instances.insert(instance.name, store_id);
        }
        let vtpms = TpmLineages::from_file(file.vtpms, unhex, unhex)?;
        let mut tpm_chains = BTreeMap::new();
        for (ek, chain) in file.vtpm_chains {
            let ek = unhex(&ek).ok_or_else(|| format!("vTPM `{ek}` is not 64 lower-case hex digits"))?;
            let chain = unhex(&chain).ok_or_else(|| format!("vTPM chain `{chain}` is not 64 lower-case hex digits"))?;
            tpm_chains.insert(ek, chain);
        }
        Ok(Self { stores, chains, tpm_chains, instances, vtpms })
    }

    /// The ledger as JSON text, stores in store id order, instances in name order. A
    /// ledger without instances and vTPMs is written in the form before them, which
    /// verifiers that do not know them still read.
    pub fn to_json(&self) -> String {
        if self.instances.is_empty() && self.vtpms.is_empty() && self.tpm_chains.is_empty() {
            let stores: BTreeMap<String, SeenFile> =
                self.stores.iter().map(|(id, seen)| (hex(id), self.seen_file(id, seen))).collect();
            let mut text = serde_json::to_string_pretty(&stores).unwrap_or_default();
            text.push('\n');
            return text;
        }
        let file = LedgerFile {
            stores: self.stores.iter().map(|(id, seen)| (hex(id), self.seen_file(id, seen))).collect(),
            instances: self.instances.iter().map(|(name, id)| (name.clone(), hex(id))).collect(),
            vtpms: self.vtpms.to_file(),
            vtpm_chains: self.tpm_chains.iter().map(|(ek, c)| (hex(ek), hex(c))).collect(),
        };
        let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
        text.push('\n');
        text
    }

    fn seen_file(&self, id: &[u8; 16], seen: &Seen) -> SeenFile {
        SeenFile { generation: seen.generation, root: hex(&seen.root), chain: self.chains.get(id).map(|c| hex(c)) }
    }

    /// The attestation chain's value after the state of `store_id` accepted last.
    pub fn chain(&self, store_id: &[u8; 16]) -> Option<[u8; 32]> {
        self.chains.get(store_id).copied()
    }

    /// The ledger in the file at `path`; a missing file is an empty ledger.
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_json(&text).map_err(|e| format!("ledger {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("ledger {}: {e}", path.display())),
        }
    }

    /// Replace the file at `path` with this ledger, atomically: a temporary file beside
    /// it, written and synced, then renamed over it. A crash leaves the old ledger or the
    /// new one, never a torn one (which would not parse, and so not verify anything).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let temp = beside(path, &format!("{}.tmp", std::process::id()))?;
        let written = std::fs::File::create(&temp).and_then(|mut f| {
            f.write_all(self.to_json().as_bytes())?;
            f.sync_all()
        });
        let renamed = written.and_then(|()| std::fs::rename(&temp, path));
        if let Err(e) = renamed {
            let _ = std::fs::remove_file(&temp);
            return Err(format!("ledger {}: {e}", path.display()));
        }
        Ok(())
    }
}

/// A hidden file beside `path`: `.NAME.suffix`.
fn beside(path: &Path, suffix: &str) -> Result<std::path::PathBuf, String> {
    let name = path.file_name().ok_or_else(|| format!("ledger {}: not a file name", path.display()))?;
    let mut hidden = std::ffi::OsString::from(".");
    hidden.push(name);
    hidden.push(".");
    hidden.push(suffix);
    Ok(path.with_file_name(hidden))
}

/// The file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerFile {
    stores: BTreeMap<String, SeenFile>,
    #[serde(default)]
    instances: BTreeMap<String, String>,
    #[serde(default)]
    vtpms: BTreeMap<String, BTreeMap<String, IncarnationFile>>,
    #[serde(default)]
    vtpm_chains: BTreeMap<String, String>,
}

/// One store as the file holds it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeenFile {
    generation: u64,
    root: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chain: Option<String>,
}

/// Exactly `N` bytes of lower-case hex (the form [`hex`] writes; one spelling per value).
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N || !digits.iter().all(|d| matches!(d, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// The ledger's part of a verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerVerdict {
    /// `first_seen`, `same`, `newer`, `rebased` (accepted), `rollback`, `diverged`, `fork`
    /// (refused); `None` when
    /// the evidence carries no well-formed sealed state (refused: rollback protection was
    /// asked for and there was nothing to check).
    pub outcome: Option<&'static str>,
    pub accepted: bool,
    /// What the ledger held for this store before, if anything.
    pub previous_generation: Option<u64>,
    pub previous_root: Option<String>,
    /// The ledger file was rewritten with what this evidence taught it (a new or newer
    /// state of its store, or with `--instance` a new binding), and every check passed.
    pub recorded: bool,
    /// The instance the relying party named (`--instance`), and what the ledger said of
    /// the store it showed: `first_seen`, `same`, `reset` (accepted), `another_store`.
    pub instance: Option<String>,
    pub instance_outcome: Option<&'static str>,
    /// What the ledger said of the vTPM's lineage (`vtpm_ledger`): `first_seen`, `same`,
    /// `newer`, `moved` (accepted), `rollback`, `moved_away`, `fork` (refused); `None`
    /// without a vTPM.
    pub vtpm_outcome: Option<&'static str>,
}

/// What a relying party accepts on its own word, beyond what the ledger can show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Acceptance {
    /// Accept a state whose attestation chain does not pass through the value the ledger
    /// keeps (`rebased` instead of `diverged`), and keep its chain from then on; the
    /// generation must still not be older, and the evidence must show a chain. For a
    /// relying party that missed more attestations than the chain shows (`bulwark attest
    /// verify --accept-new-chain`): an older image of the store would pass the same way,
    /// so only when it knows why the chain moved on without it.
    pub new_chain: bool,
}

/// Apply `ledger` to `verdict`'s sealed state: the `state_ledger` check (after every
/// other check) and [`Verdict::ledger`]. An accepted new state is recorded in `ledger`
/// (in memory; the caller decides whether to keep it). Returns whether `ledger` changed.
pub fn judge(ledger: &mut Ledger, verdict: &mut Verdict) -> bool {
    judge_accepting(ledger, verdict, Acceptance::default())
}

/// [`judge`], accepting what `acceptance` says.
pub fn judge_accepting(ledger: &mut Ledger, verdict: &mut Verdict, acceptance: Acceptance) -> bool {
    judge_both(ledger, verdict, acceptance).0
}

/// [`judge`], with the vTPM's outcome.
fn judge_both(ledger: &mut Ledger, verdict: &mut Verdict, acceptance: Acceptance) -> (bool, Option<TpmOutcome>) {
    let learned = judge_store(ledger, verdict, acceptance);
    let tpm = judge_vtpm(ledger, verdict);
    if let Some(l) = &mut verdict.ledger {
        l.vtpm_outcome = tpm.map(TpmOutcome::name);
    }
    (learned || tpm.is_some_and(TpmOutcome::learns), tpm)
}

/// The `vtpm_ledger` check, when the evidence shows a vTPM: its lineage against what the
/// ledger saw of the same TPM ([`TpmLineages::outcome`]). A vTPM without a lineage entry
/// is refused: rollback protection was asked for and there is nothing to check. The
/// outcome, `None` when there is no vTPM or no lineage.
fn judge_vtpm(ledger: &mut Ledger, verdict: &mut Verdict) -> Option<TpmOutcome> {
    let ek = verdict.vtpm_ek_sha256.clone()?;
    let (Some(lineage), Some(digest)) = (verdict.vtpm_lineage.clone(), unhex::<32>(&ek)) else {
        push_named(
            verdict,
            "vtpm_ledger",
            Err("the vTPM has no lineage in the manifest: nothing to check its state against".into()),
        );
        return None;
    };
    // A kept incarnation lives on the sealed store the evidence shows.
    let store = verdict.sealed_state.filter(|_| lineage.kept).map(|s| s.store_id);
    let outcome = ledger.apply_vtpm(&digest, &lineage, store);
    let (id, version) = (hex(&lineage.incarnation), lineage.version);
    let parent = lineage.parent().map(|p| hex(&p.incarnation)).unwrap_or_default();
    let detail = match outcome {
        TpmOutcome::FirstSeen => Ok(format!("vTPM {ek} first seen: version {version} of incarnation {id}")),
        TpmOutcome::Same => Ok(format!("version {version} of incarnation {id}, as accepted before")),
        TpmOutcome::Newer { previous } => {
            Ok(format!("version {version} of incarnation {id}, newer than version {previous} accepted before"))
        }
        TpmOutcome::Moved { parent_seen, .. } => Ok(format!(
            "incarnation {id} moved from {parent} at version {}{}",
            lineage.parent().map_or(0, |p| p.left_at),
            if parent_seen { "" } else { " (placed by an earlier ancestor: the moves between were not seen)" }
        )),
        TpmOutcome::Rollback { newest } => Err(format!(
            "ROLLBACK: version {version} of incarnation {id} is older than version {newest} accepted before"
        )),
        TpmOutcome::MovedAway { to } => Err(format!(
            "MOVED AWAY: incarnation {id} moved on to {} by live migration; this is a copy of it",
            hex(&to)
        )),
        TpmOutcome::Fork { sibling: Some(sibling) } => Err(format!(
            "FORK: incarnation {id} comes from a line that moved on to {} before: a second copy",
            hex(&sibling)
        )),
        TpmOutcome::Fork { sibling: None } => Err(format!(
            "FORK: incarnation {id} left its line at an older version than accepted, names another origin, \
             or names no incarnation of this TPM the ledger knows"
        )),
    };
    push_named(verdict, "vtpm_ledger", detail);
    Some(outcome)
}

/// The `state_ledger` check. Returns whether `ledger` changed.
fn judge_store(ledger: &mut Ledger, verdict: &mut Verdict, acceptance: Acceptance) -> bool {
    let Some(state) = verdict.sealed_state else {
        verdict.ledger = Some(LedgerVerdict {
            outcome: None,
            accepted: false,
            previous_generation: None,
            previous_root: None,
            recorded: false,
            instance: None,
            instance_outcome: None,
            vtpm_outcome: None,
        });
        let why = if verdict.checks.iter().any(|c| c.name == "sealed_state" && !c.passed) {
            "the sealed-state entry is malformed: nothing to check against the ledger"
        } else {
            "the evidence has no sealed state: rollback protection was asked for and the SVSM gave nothing to check"
        };
        push(verdict, Err(why.to_string()));
        return false;
    };
    let previous = ledger.get(&state.store_id);
    // The chain of a kept vTPM moves with it: its value is checked (and kept) under the
    // TPM's EK as well as under the store, and both are required. A store image from
    // before its vTPM existed (a new EK, unknown to the ledger), or one another VM's TPM
    // was migrated onto, does not pass through the store's value. A TPM that comes back
    // to a store it left carries that store's chain on, so it does.
    let tpm =
        verdict.vtpm_lineage.as_ref().filter(|l| l.kept).and(verdict.vtpm_ek_sha256.as_deref()).and_then(unhex::<32>);
    let store_value = ledger.chain(&state.store_id);
    let tpm_value = tpm.and_then(|ek| ledger.tpm_chains.get(&ek).copied());
    let chain = check_chain(store_value, verdict.attest_chain.as_ref())
        .and_then(|now| check_chain(tpm_value, verdict.attest_chain.as_ref()).map(|_| now));
    // The chain's value as the evidence shows it (what a rebase keeps).
    let shown = verdict.attest_chain.as_ref().map(|c| c.values().last().copied().unwrap_or(c.before));
    let outcome = match ledger.outcome(&state) {
        accepted if accepted.accepted() && chain.is_err() && acceptance.new_chain && shown.is_some() => {
            Outcome::Rebased
        }
        accepted if accepted.accepted() && chain.is_err() => Outcome::Diverged,
        outcome => outcome,
    };
    let kept = match (&chain, outcome) {
        (Ok(value), _) => *value,
        (Err(_), Outcome::Rebased) => shown,
        (Err(_), _) => None,
    };
    let mut learned = false;
    if outcome.accepted() {
        learned = matches!(ledger.apply(&state), Outcome::FirstSeen | Outcome::Newer { .. });
        if let Some(value) = kept {
            learned |= ledger.chains.insert(state.store_id, value) != Some(value);
            if let Some(ek) = tpm {
                learned |= ledger.tpm_chains.insert(ek, value) != Some(value);
            }
        }
    }
    let (store, generation) = (hex(&state.store_id), state.generation);
    let detail = match outcome {
        Outcome::FirstSeen => Ok(format!("store {store} first seen, at generation {generation}")),
        Outcome::Same => Ok(format!("generation {generation} of store {store}, as accepted before")),
        Outcome::Newer { previous } => Ok(format!(
            "generation {generation} of store {store}, newer than generation {} accepted before",
            previous.generation
        )),
        Outcome::Rollback { newest } => Err(format!(
            "ROLLBACK: generation {generation} of store {store} is older than generation {} accepted before",
            newest.generation
        )),
        Outcome::Diverged => Err(format!(
            "DIVERGED: generation {generation} of store {store} does not descend from the state accepted last: {} \
             (--accept-new-chain accepts it anew)",
            chain.as_ref().err().map_or("", String::as_str)
        )),
        Outcome::Rebased => Ok(format!(
            "REBASED: generation {generation} of store {store} does not show descent from the state accepted last \
             ({}); accepted anew as asked (--accept-new-chain), its chain kept from now on",
            chain.as_ref().err().map_or("", String::as_str)
        )),
        Outcome::Fork { accepted } => Err(format!(
            "FORK: generation {generation} of store {store} has root {}, the one accepted before has root {}: \
             two states under one generation",
            hex(&state.root),
            hex(&accepted.root)
        )),
    };
    verdict.ledger = Some(LedgerVerdict {
        outcome: Some(outcome.name()),
        accepted: outcome.accepted(),
        previous_generation: previous.map(|p| p.generation),
        previous_root: previous.map(|p| hex(&p.root)),
        recorded: false,
        instance: None,
        instance_outcome: None,
        vtpm_outcome: None,
    });
    push(verdict, detail);
    learned
}

/// Whether the evidence's attestation chain (`chain`) passes through the value the
/// ledger holds (`known`): the state descends from the one accepted then. The chain's
/// value now, to keep. Without a held value any chain is taken (and no chain, before the
/// first); with one, the evidence must show a chain.
fn check_chain(
    known: Option<[u8; 32]>,
    chain: Option<&crate::manifest::AttestChain>,
) -> Result<Option<[u8; 32]>, String> {
    let Some(chain) = chain else {
        return match known {
            Some(_) => Err("the evidence shows no attestation chain, and the ledger holds one".into()),
            None => Ok(None),
        };
    };
    let values = chain.values();
    let now = values.last().copied().unwrap_or(chain.before);
    match known {
        Some(known) if !values.contains(&known) => Err(format!(
            "its attestation chain does not pass through {} (an older image, or more than {} attestations since)",
            hex(&known),
            chain.links.len()
        )),
        _ => Ok(Some(now)),
    }
}

/// [`judge`], then the `state_instance` check: the store the evidence shows must be the
/// one bound to `instance` (or become it: first seen, or a reset the relying party
/// accepts). Returns whether `ledger` changed.
pub fn judge_instance(ledger: &mut Ledger, verdict: &mut Verdict, instance: &Instance) -> bool {
    judge_instance_accepting(ledger, verdict, instance, Acceptance::default())
}

/// [`judge_instance`], accepting what `acceptance` says.
pub fn judge_instance_accepting(
    ledger: &mut Ledger,
    verdict: &mut Verdict,
    instance: &Instance,
    acceptance: Acceptance,
) -> bool {
    let (learned, tpm) = judge_both(ledger, verdict, acceptance);
    let Some(state) = verdict.sealed_state else {
        // `judge` refused already: nothing to bind.
        return learned;
    };
    // The store the vTPM moved from, when the ledger accepted a move of it onto this
    // (new) store: the instance follows its TPM.
    let moved_from = match (tpm, verdict.vtpm_ek_sha256.as_deref().and_then(unhex::<32>)) {
        (Some(TpmOutcome::Moved { from, .. }), Some(ek)) => ledger.vtpms.get(&ek, &from).and_then(|i| i.store),
        _ => None,
    };
    let new_store = verdict.ledger.as_ref().and_then(|l| l.outcome) == Some("first_seen");
    let binding = match ledger.binding(instance, &state.store_id) {
        Binding::AnotherStore { bound } if new_store && moved_from == Some(bound) => {
            ledger.instances.insert(instance.name.clone(), state.store_id);
            Binding::Migrated { previous: bound }
        }
        _ => ledger.bind(instance, &state.store_id),
    };
    let (name, store) = (&instance.name, hex(&state.store_id));
    let detail = match binding {
        Binding::FirstSeen => Ok(format!("instance {name} first seen, bound to store {store}")),
        Binding::Same => Ok(format!("instance {name} shows store {store}, the one bound to it")),
        Binding::Reset { previous } => Ok(format!(
            "instance {name} shows store {store}; the reset was accepted (it was bound to store {})",
            hex(&previous)
        )),
        Binding::Migrated { previous } => Ok(format!(
            "instance {name} shows store {store}, where its vTPM moved from store {} by live migration",
            hex(&previous)
        )),
        Binding::OtherInstance => Err(format!(
            "ANOTHER INSTANCE'S STORE: instance {name} shows store {store}, which is bound to instance {}",
            ledger.owner(&state.store_id).unwrap_or("?")
        )),
        Binding::AnotherStore { bound } => Err(format!(
            "ANOTHER STORE: instance {name} shows store {store}, but store {} is bound to it \
             (a blank disk or another VM's; --accept-new-store accepts a reset)",
            hex(&bound)
        )),
    };
    if let Some(l) = &mut verdict.ledger {
        l.instance = Some(name.clone());
        l.instance_outcome = Some(binding.name());
    }
    let passed = detail.is_ok();
    verdict.checks.push(Check { name: "state_instance", passed, detail: detail.unwrap_or_else(|e| e) });
    verdict.passed &= passed;
    learned || matches!(binding, Binding::FirstSeen | Binding::Reset { .. } | Binding::Migrated { .. })
}

fn push(verdict: &mut Verdict, outcome: Result<String, String>) {
    push_named(verdict, "state_ledger", outcome);
}

fn push_named(verdict: &mut Verdict, name: &'static str, outcome: Result<String, String>) {
    let passed = outcome.is_ok();
    verdict.checks.push(Check { name, passed, detail: outcome.unwrap_or_else(|e| e) });
    verdict.passed &= passed;
}

/// [`judge`] against the ledger file at `path`, which is rewritten (atomically) only when
/// the ledger learned a state and the evidence is accepted: every check passed and
/// `policy_accepts` (what the caller requires beyond the checks, such as an AMD root).
/// A lock file beside it (`.NAME.lock`) keeps verifiers that share the ledger from
/// losing each other's updates.
pub fn apply_file(path: &Path, verdict: &mut Verdict, policy_accepts: bool) -> Result<(), String> {
    apply_file_for(path, verdict, policy_accepts, None, Acceptance::default())
}

/// [`apply_file`], with [`judge_instance`] when the relying party names the instance, and
/// accepting what `acceptance` says.
pub fn apply_file_for(
    path: &Path,
    verdict: &mut Verdict,
    policy_accepts: bool,
    instance: Option<&Instance>,
    acceptance: Acceptance,
) -> Result<(), String> {
    let lock_path = beside(path, "lock")?;
    let lock = std::fs::File::create(&lock_path).map_err(|e| format!("ledger lock {}: {e}", lock_path.display()))?;
    lock.lock().map_err(|e| format!("ledger lock {}: {e}", lock_path.display()))?;
    let mut ledger = Ledger::load(path)?;
    let learned = match instance {
        Some(instance) => judge_instance_accepting(&mut ledger, verdict, instance, acceptance),
        None => judge_accepting(&mut ledger, verdict, acceptance),
    };
    if learned && verdict.passed && policy_accepts {
        ledger.save(path)?;
        if let Some(l) = &mut verdict.ledger {
            l.recorded = true;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORE: [u8; 16] = [0x51; 16];

    fn state(generation: u64, root: u8) -> SealedState {
        SealedState { generation, store_id: STORE, root: [root; 32], failed: false, rewrapped: false }
    }

    #[test]
    fn a_store_never_seen_is_accepted_and_recorded() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.apply(&state(5, 0xa)), Outcome::FirstSeen);
        assert_eq!(ledger.get(&STORE), Some(Seen { generation: 5, root: [0xa; 32] }));
    }

    #[test]
    fn the_same_generation_and_root_is_accepted_and_changes_nothing() {
        let mut ledger = Ledger::default();
        ledger.apply(&state(5, 0xa));
        let before = ledger.clone();
        assert_eq!(ledger.apply(&state(5, 0xa)), Outcome::Same);
        assert_eq!(ledger, before);
    }

    #[test]
    fn the_same_generation_with_another_root_is_a_fork() {
        let mut ledger = Ledger::default();
        ledger.apply(&state(5, 0xa));
        let before = ledger.clone();
        let outcome = ledger.apply(&state(5, 0xb));
        assert_eq!(outcome, Outcome::Fork { accepted: Seen { generation: 5, root: [0xa; 32] } });
        assert!(!outcome.accepted());
        assert_eq!(ledger, before);
    }

    #[test]
    fn a_newer_generation_is_accepted_and_recorded() {
        let mut ledger = Ledger::default();
        ledger.apply(&state(5, 0xa));
        assert_eq!(ledger.apply(&state(9, 0xb)), Outcome::Newer { previous: Seen { generation: 5, root: [0xa; 32] } });
        assert_eq!(ledger.get(&STORE), Some(Seen { generation: 9, root: [0xb; 32] }));
    }

    #[test]
    fn an_older_generation_is_a_rollback() {
        let mut ledger = Ledger::default();
        ledger.apply(&state(5, 0xa));
        let before = ledger.clone();
        for generation in [4, 1, 0] {
            let outcome = ledger.apply(&state(generation, 0xa));
            assert_eq!(outcome, Outcome::Rollback { newest: Seen { generation: 5, root: [0xa; 32] } });
            assert!(!outcome.accepted());
        }
        assert_eq!(ledger, before);
    }

    #[test]
    fn stores_are_kept_apart() {
        let mut ledger = Ledger::default();
        ledger.apply(&state(5, 0xa));
        let other = SealedState { store_id: [0x52; 16], ..state(1, 0xc) };
        assert_eq!(ledger.apply(&other), Outcome::FirstSeen);
        assert_eq!(ledger.len(), 2);
        assert!(matches!(ledger.apply(&state(4, 0xa)), Outcome::Rollback { .. }));
    }

    #[test]
    fn an_instance_keeps_its_store_unless_a_reset_is_accepted() {
        let mut ledger = Ledger::default();
        let vm = Instance::new("vm-a", false).unwrap();
        let other = [0x77; 16];
        assert_eq!(ledger.bind(&vm, &STORE), Binding::FirstSeen);
        assert_eq!(ledger.bind(&vm, &STORE), Binding::Same);
        // A blank disk (a new store) or another VM's disk, for an instance already bound.
        assert_eq!(ledger.bind(&vm, &other), Binding::AnotherStore { bound: STORE });
        assert_eq!(ledger.bound("vm-a"), Some(STORE), "a refused store is not bound");
        let reset = Instance::new("vm-a", true).unwrap();
        assert_eq!(ledger.bind(&reset, &other), Binding::Reset { previous: STORE });
        assert_eq!(ledger.bound("vm-a"), Some(other));
        assert_eq!(ledger.bind(&vm, &STORE), Binding::AnotherStore { bound: other }, "the old store is refused now");
        // Accepting a reset accepts the bound store as it is.
        assert_eq!(ledger.bind(&reset, &other), Binding::Same);
        // vm-a's old store is nobody's now: another instance may take it. vm-a's current
        // one is not to be taken by another instance, new or resetting.
        assert_eq!(ledger.bind(&Instance::new("vm-b", false).unwrap(), &STORE), Binding::FirstSeen);
        assert_eq!(ledger.bind(&Instance::new("vm-c", false).unwrap(), &other), Binding::OtherInstance);
        assert_eq!(ledger.bind(&Instance::new("vm-b", true).unwrap(), &other), Binding::OtherInstance);
        assert_eq!((ledger.bound("vm-c"), ledger.owner(&other)), (None, Some("vm-a")));
        for bad in ["", "a\nb", "tab\there", &"x".repeat(Instance::MAX_NAME + 1)] {
            assert!(Instance::new(bad, false).is_err(), "{bad:?}");
        }
        assert!(Instance::new(&"x".repeat(Instance::MAX_NAME), false).is_ok());
    }

    #[test]
    fn the_file_keeps_instances_and_reads_the_form_before_them() {
        let mut ledger = Ledger::default();
        ledger.apply(&state(7, 0xa));
        ledger.bind(&Instance::new("vm/a:1", false).unwrap(), &STORE);
        let text = ledger.to_json();
        assert!(text.contains("\"instances\""), "{text}");
        assert_eq!(Ledger::from_json(&text), Ok(ledger.clone()));
        // Without instances, the form verifiers before them read.
        let mut plain = Ledger::default();
        plain.apply(&state(7, 0xa));
        assert!(!plain.to_json().contains("\"stores\""));
        // A ledger written before instances: the stores alone.
        let old = format!("{{\"{}\": {{\"generation\": 7, \"root\": \"{}\"}}}}", hex(&STORE), "0a".repeat(32));
        let read = Ledger::from_json(&old).unwrap();
        assert_eq!((read.get(&STORE), read.bound("vm/a:1")), (ledger.get(&STORE), None));
        let stores =
            format!("\"stores\": {{\"{}\": {{\"generation\": 7, \"root\": \"{}\"}}}}", hex(&STORE), "0a".repeat(32));
        for bad in [
            format!("{{{stores}, \"instances\": {{\"vm\": \"{}\"}}}}", "0f".repeat(15)),
            format!("{{{stores}, \"instances\": {{\"\": \"{}\"}}}}", "0f".repeat(16)),
            format!("{{{stores}, \"instances\": {{}}, \"extra\": 1}}"),
        ] {
            assert!(Ledger::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_round_trips_and_refuses_what_is_not_a_ledger() {
        let mut ledger = Ledger::default();
        ledger.apply(&state(u64::MAX, 0xa));
        ledger.apply(&SealedState { store_id: [0; 16], ..state(3, 0xb) });
        let text = ledger.to_json();
        assert!(text.contains(&format!("\"{}\"", hex(&STORE))), "{text}");
        assert_eq!(Ledger::from_json(&text), Ok(ledger));
        assert_eq!(Ledger::from_json("{}"), Ok(Ledger::default()));
        let root = "ab".repeat(32);
        let id = "0f".repeat(16);
        for bad in [
            String::new(),
            "[]".into(),
            "{\"x\": 1}".into(),
            format!("{{\"{}\": {{\"generation\": 1, \"root\": \"{root}\"}}}}", "0F".repeat(16)),
            format!("{{\"{}\": {{\"generation\": 1, \"root\": \"{root}\"}}}}", "0f".repeat(15)),
            format!("{{\"{id}\": {{\"generation\": 1, \"root\": \"{}\"}}}}", "ab".repeat(31)),
            format!("{{\"{id}\": {{\"generation\": -1, \"root\": \"{root}\"}}}}"),
            format!("{{\"{id}\": {{\"generation\": 1}}}}"),
            format!("{{\"{id}\": {{\"generation\": 1, \"root\": \"{root}\", \"extra\": 0}}}}"),
        ] {
            assert!(Ledger::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_file_is_replaced_whole_and_a_missing_one_is_empty() {
        let dir = std::env::temp_dir().join(format!("bulwark-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ledger.json");
        let _ = std::fs::remove_file(&path);
        assert_eq!(Ledger::load(&path), Ok(Ledger::default()));
        let mut ledger = Ledger::default();
        ledger.apply(&state(5, 0xa));
        ledger.save(&path).unwrap();
        assert_eq!(Ledger::load(&path), Ok(ledger.clone()));
        ledger.apply(&state(6, 0xb));
        ledger.save(&path).unwrap();
        assert_eq!(Ledger::load(&path), Ok(ledger));
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["ledger.json"], "no temporary file is left behind");
        std::fs::write(&path, "").unwrap();
        assert!(Ledger::load(&path).is_err(), "an empty file is not an empty ledger");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
