//! Random put/remove/commit/discard/power-cut sequences against a BTreeMap model.

mod common;

use std::collections::BTreeMap;

use bulwark_store::BLOCK_PAYLOAD;
use bulwark_store::testing::{CutPolicy, MemDisk};
use common::{TestStore, bytes, contents, format, open};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Put {
        name: u8,
        len: usize,
        seed: u64,
    },
    Remove {
        name: u8,
    },
    Commit,
    /// Drop what is staged.
    Discard,
    /// Cut the power after `after` writes/flushes of the next commit, then reopen.
    CutCommit {
        after: u64,
        policy: u8,
        seed: u64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 0usize..3 * BLOCK_PAYLOAD, any::<u64>()).prop_map(|(name, len, seed)| Op::Put { name, len, seed }),
        2 => (0u8..6).prop_map(|name| Op::Remove { name }),
        2 => Just(Op::Commit),
        1 => Just(Op::Discard),
        2 => (0u64..12, 0u8..3, any::<u64>()).prop_map(|(after, policy, seed)| Op::CutCommit { after, policy, seed }),
        1 => Just(Op::Reopen),
    ]
}

fn name(n: u8) -> Vec<u8> {
    // Names of different lengths, one empty.
    vec![b'k'; usize::from(n)]
}

fn policy(code: u8, seed: u64) -> CutPolicy {
    match code {
        0 => CutPolicy::LoseUnflushed,
        1 => CutPolicy::KeepUnflushed,
        _ => CutPolicy::Scramble(seed),
    }
}

fn reopen(store: TestStore) -> TestStore {
    open(store.into_device()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_store_behaves_like_a_map_whose_commits_are_atomic(ops in prop::collection::vec(op(), 1..40)) {
        // 6 names of at most 3 blocks, two states and in-doubt blocks: 64 blocks never fill.
        let mut store = format(64);
        let mut staged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut committed = staged.clone();
        let mut generation = 1;
        for op in ops {
            match op {
                Op::Put { name: n, len, seed } => {
                    store.put(&name(n), &bytes(seed, len)).unwrap();
                    staged.insert(name(n), bytes(seed, len));
                }
                Op::Remove { name: n } => {
                    prop_assert_eq!(store.remove(&name(n)).unwrap(), staged.remove(&name(n)).is_some());
                }
                Op::Commit => {
                    let changed = store.has_staged_changes();
                    store.commit().unwrap();
                    generation += u64::from(changed);
                    committed = staged.clone();
                }
                Op::Discard => {
                    prop_assert!(store.discard(), "only a failed header write is in doubt");
                    prop_assert!(!store.has_staged_changes());
                    staged = committed.clone();
                }
                Op::CutCommit { after, policy: code, seed } => {
                    let changed = store.has_staged_changes();
                    store.device_mut().cut_power_after(after);
                    let result = store.commit();
                    let mut disk: MemDisk = store.into_device();
                    disk.power_cycle(policy(code, seed));
                    store = open(disk).unwrap();
                    let state = store.state();
                    if changed && state.generation == generation + 1 {
                        prop_assert_eq!(&contents(&store), &staged);
                        committed = staged.clone();
                        generation += 1;
                    } else {
                        prop_assert!(result.is_err() || !changed, "a successful commit was lost");
                        prop_assert_eq!(state.generation, generation);
                        prop_assert_eq!(&contents(&store), &committed);
                    }
                    staged = committed.clone();
                }
                Op::Reopen => {
                    store = reopen(store);
                    staged = committed.clone();
                    prop_assert_eq!(store.state().generation, generation);
                }
            }
            prop_assert_eq!(&contents(&store), &staged);
        }
        let store = reopen(store);
        prop_assert_eq!(&contents(&store), &committed);
        prop_assert_eq!(store.state().generation, generation);
    }
}
