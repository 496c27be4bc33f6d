//! The sealed state as a guest and a verifier see it (issue 15): its committed state is an
//! entry of the attestation manifest, bound to the report like the rest; the OCP has it as
//! a SHA-256 source (`sealed.root`) whose every commit is a change event, and a counter
//! (`sealed.generation`); the log level a guest sets is kept for the next boot; a disk that
//! fails a header write closes the sealed state and the manifest says so; one that fails
//! before the header loses that commit only.

use abi::attest::{SEALED_STATE_FAILED, SEALED_STATE_GUID, SealedStateEntry};
use abi::protocol::{CallId, ProtocolId, ocp_call};
use abi::result::ResultCode;
use bulwark_model::conformance_env::ModelEnv;
use bulwark_model::world::WorldConfig;
use guest::{Regs, Transport};
use kernel::sealed::{Sealed, SharedSealed};
use kernel::vcpu::VcpuIndex;
use std::sync::Arc;
use store::testing::{MemDisk, SharedDisk, TestRng};
use store::{Store, StoreKey};
use zerocopy::FromBytes;

const SCRATCH: u64 = 2 << 20;
const RING: u64 = SCRATCH + 0x6000;

/// A model guest whose SVSM opened its sealed state on `disk` (no vTPM: the process's
/// libtpms is not needed here).
fn boot(disk: &SharedDisk) -> (ModelEnv, SharedSealed) {
    let mut env = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    let (store, _) = Store::open_or_format(disk.clone(), &StoreKey::new([3; 32]), TestRng::new(9)).unwrap();
    let sealed = Sealed::new(Box::new(store));
    let w = &mut env.world;
    w.svsm.install_sealed(&mut w.machine, sealed.clone());
    (env, sealed)
}

fn ocp(env: &mut ModelEnv, call: u32, args: [u64; 4]) -> (ResultCode, Regs) {
    let regs =
        Regs { rax: CallId::new(ProtocolId::OCP, call).to_rax(), rcx: args[0], rdx: args[1], r8: args[2], r9: args[3] };
    let out = env.world.client().issue(regs).expect("the call completes");
    (ResultCode::from_rax(out.rax), out)
}

fn index_of(env: &mut ModelEnv, name: &str) -> u32 {
    let sources = env.world.svsm.ocp_sources();
    (0..sources.len() as u32)
        .find(|i| sources.get(*i).is_some_and(|s| s.name == name))
        .unwrap_or_else(|| panic!("no source {name}"))
}

fn read(env: &mut ModelEnv, index: u32) -> Vec<u8> {
    let (rc, out) = ocp(env, ocp_call::READ, [u64::from(index), SCRATCH, 64, 0]);
    assert_eq!(rc, ResultCode::SUCCESS);
    let mut bytes = vec![0u8; out.r8 as usize];
    env.world.vcpu(VcpuIndex::STARTUP).read(SCRATCH, &mut bytes).unwrap();
    bytes
}

fn write_level(env: &mut ModelEnv, level: &[u8]) {
    let index = index_of(env, "config.log_level");
    env.world.vcpu(VcpuIndex::STARTUP).write(SCRATCH + 0x1000, level).unwrap();
    let (rc, _) = ocp(env, ocp_call::WRITE, [u64::from(index), SCRATCH + 0x1000, level.len() as u64, 0]);
    assert_eq!(rc, ResultCode::SUCCESS);
}

/// The ring's head and its first slots.
fn ring(env: &mut ModelEnv) -> (u32, Vec<u32>) {
    let mut b = [0u8; 64];
    env.world.vcpu(VcpuIndex::STARTUP).read(RING, &mut b).unwrap();
    let w = |i: usize| u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap());
    let head = w(0);
    (head, (0..head.min(8) as usize).map(|i| w(4 + i)).collect())
}

/// The sealed-state entry of a fresh attestation's manifest, after checking the evidence
/// verifies (the manifest is bound to the report): wholly, or, for a closed sealed state,
/// with only the verifier's `sealed_state` check failing.
fn manifest_entry(env: &mut ModelEnv) -> SealedStateEntry {
    let e = bulwark_model::attest_demo::obtain_from(env, &[7; 64]).expect("attestation");
    let evidence = attest::verify::Evidence {
        report: e.report,
        certificates: attest::verify::Certificates::Table(e.certificates),
        nonce: e.nonce,
        manifest: e.manifest.clone(),
        service: None,
    };
    let services = attest::manifest::parse(&e.manifest).unwrap();
    let entry = services.iter().find(|s| s.guid == SEALED_STATE_GUID).expect("a sealed-state entry");
    let entry = SealedStateEntry::read_from_bytes(&entry.data).expect("64 bytes");
    match attest::verify::verify(&evidence) {
        Ok(_) => assert_eq!(entry.flags, 0, "a closed sealed state passed the verifier"),
        Err(rejected) => {
            let failed: Vec<_> = rejected.verdict.checks.iter().filter(|c| !c.passed).map(|c| c.name).collect();
            assert_eq!((entry.flags, failed), (SEALED_STATE_FAILED, vec!["sealed_state"]));
        }
    }
    entry
}

#[test]
fn the_manifest_names_the_committed_state_the_svsm_runs_on() {
    let disk = SharedDisk::new(MemDisk::new(64));
    let (mut env, sealed) = boot(&disk);
    // The attestation commits its own link to the chain first (one generation), and the
    // manifest shows the state with it.
    let entry = manifest_entry(&mut env);
    let state = sealed.lock().state();
    assert_eq!((entry.generation, entry.root, entry.store_id, entry.flags), (2, state.root, state.store_id, 0));
    // A commit (a setting kept) moves the entry on, and so does the next attestation.
    write_level(&mut env, b"debug");
    let entry = manifest_entry(&mut env);
    assert_eq!((entry.generation, entry.root), (4, sealed.lock().state().root));
}

#[test]
fn every_commit_is_a_change_event_of_the_sealed_root_source() {
    let disk = SharedDisk::new(MemDisk::new(64));
    let (mut env, sealed) = boot(&disk);
    let root = index_of(&mut env, "sealed.root");
    let generation = index_of(&mut env, "sealed.generation");
    assert_eq!(read(&mut env, root), sealed.lock().state().root.to_vec(), "32 bytes: the Merkle root");
    assert_eq!(read(&mut env, generation), 1u64.to_le_bytes());
    env.world.vcpu(VcpuIndex::STARTUP).write(RING, &[0; 64]).unwrap();
    assert_eq!(ocp(&mut env, ocp_call::NOTIFY, [RING, 0, 0, 0]).0, ResultCode::SUCCESS);
    let before = sealed.lock().state().root;
    write_level(&mut env, b"warn");
    let after = sealed.lock().state().root;
    assert_ne!(before, after);
    let (head, slots) = ring(&mut env);
    assert!(slots.contains(&root), "the commit is announced: head {head}, events {slots:?}");
    assert_eq!(read(&mut env, root), after.to_vec());
    assert_eq!(read(&mut env, generation), 2u64.to_le_bytes());
    // A call that commits nothing announces no new root; nor does writing the level it
    // has again (the setting's own event only).
    let (rc, _) = ocp(&mut env, ocp_call::READ, [u64::from(generation), SCRATCH, 8, 0]);
    assert_eq!(rc, ResultCode::SUCCESS);
    write_level(&mut env, b"warn");
    let (_, again) = ring(&mut env);
    assert_eq!(again.iter().filter(|i| **i == root).count(), 1, "events {again:?}");
    assert_eq!(read(&mut env, generation), 2u64.to_le_bytes());
}

#[test]
fn the_log_level_a_guest_sets_is_there_after_a_reboot() {
    let disk = SharedDisk::new(MemDisk::new(64));
    let (mut env, _) = boot(&disk);
    let level = index_of(&mut env, "config.log_level");
    let default = read(&mut env, level);
    assert_ne!(default, b"debug\n");
    write_level(&mut env, b"debug");
    drop(env);
    let image = disk.lock().image();
    let (mut env, _) = boot(&SharedDisk::new(MemDisk::from_image(image)));
    assert_eq!(read(&mut env, level), b"debug\n");
    // Without a sealed state, the default.
    let mut plain = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    assert_eq!(read(&mut plain, level), default);
}

/// A header write the host refuses may still have landed: the sealed state closes, and
/// the manifest says so while showing the last state the SVSM knows committed.
#[test]
fn a_failed_header_write_closes_the_sealed_state_and_the_manifest_says_so() {
    let disk = SharedDisk::new(MemDisk::new(64));
    let (mut env, sealed) = boot(&disk);
    let committed = sealed.lock().state();
    disk.lock().fail_writes_of(0);
    disk.lock().fail_writes_of(1);
    // The setting still applies to this boot; it is not kept.
    write_level(&mut env, b"debug");
    let level = index_of(&mut env, "config.log_level");
    assert_eq!(read(&mut env, level), b"debug\n");
    let entry = manifest_entry(&mut env);
    assert_eq!(entry.flags, SEALED_STATE_FAILED);
    assert_eq!((entry.generation, entry.root), (committed.generation, committed.root), "the last committed state");
    // Healed, it stays closed: nothing staged before rides along.
    disk.lock().heal();
    write_level(&mut env, b"info");
    assert_eq!(sealed.lock().state(), committed);
}

/// A commit that fails before its header (the host fails the flush of its data blocks)
/// leaves nothing on disk that names it: the setting is not kept, the state stays open and
/// unflagged, and the next setting commits once the disk works again.
#[test]
fn a_commit_the_disk_fails_before_its_header_keeps_the_sealed_state_open() {
    let disk = SharedDisk::new(MemDisk::new(64));
    let (mut env, sealed) = boot(&disk);
    let committed = sealed.lock().state();
    disk.lock().fail_flushes(true);
    write_level(&mut env, b"debug");
    let level = index_of(&mut env, "config.log_level");
    assert_eq!(read(&mut env, level), b"debug\n", "applies to this boot");
    // An attestation whose chain link cannot be committed is refused: evidence without
    // its link would hide it from the verifier's ledger.
    let refused = bulwark_model::attest_demo::obtain_from(&mut env, &[7; 64]).map(|_| ()).expect_err("refused");
    assert!(refused.ends_with(&ResultCode::ATTEST_REPORT_FAILED.to_string()), "{refused}");
    assert_eq!(sealed.lock().state(), committed);
    disk.lock().heal();
    write_level(&mut env, b"info");
    assert_eq!(sealed.lock().state().generation, committed.generation + 1);
    let entry = manifest_entry(&mut env);
    assert_eq!(entry.flags, 0, "open, not closed");
    assert_eq!(entry.generation, committed.generation + 2, "the setting, then this attestation's link");
    let image = disk.lock().image();
    let (mut env, _) = boot(&SharedDisk::new(MemDisk::from_image(image)));
    assert_eq!(read(&mut env, level), b"info\n", "the setting after the failure is the one kept");
}

/// A commit holds the sealed state's lock for as long as the host takes with its disk
/// writes. The OCP's sealed sources read a summary instead, so a slow (or lost, until the
/// driver's deadline) disk on one vCPU does not stall them on another. (An attestation
/// commits its own link to the attestation chain, so it does wait: docs/persistence.md,
/// "The attestation chain".)
#[test]
fn the_ocp_does_not_wait_for_a_commit_in_progress() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let disk = SharedDisk::new(MemDisk::new(64));
    let (mut env, sealed) = boot(&disk);
    let committed = sealed.lock().state();
    let root = index_of(&mut env, "sealed.root");
    // Another vCPU is in a commit: it holds the lock until told to go on, or for 30 s.
    let (go_on, told) = std::sync::mpsc::channel::<()>();
    let released = Arc::new(AtomicBool::new(false));
    let (held_tx, held) = std::sync::mpsc::channel();
    let holder = {
        let (sealed, released) = (sealed.clone(), released.clone());
        std::thread::spawn(move || {
            let guard = sealed.lock();
            held_tx.send(()).unwrap();
            let _ = told.recv_timeout(std::time::Duration::from_secs(30));
            released.store(true, Ordering::SeqCst);
            drop(guard);
        })
    };
    held.recv().unwrap();
    let ocp_root = read(&mut env, root);
    assert!(!released.load(Ordering::SeqCst), "the OCP waited for the commit to end");
    go_on.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(ocp_root, committed.root.to_vec());
}

/// The attack the generation alone cannot see (found by review): the host keeps an old
/// disk image, boots it again and again (every boot commits, so its generation passes the
/// newest the relying party accepted), replays the nonces it saw, then lets it attest.
/// The attestation chain refuses it: the image never saw the attestations accepted since
/// it was copied. The honest VM, attesting on, is accepted all along.
#[test]
fn an_old_image_booted_until_its_generation_passes_is_refused_by_the_chain() {
    let evidence = |env: &mut ModelEnv, nonce: u8| {
        let e = bulwark_model::attest_demo::obtain_from(env, &[nonce; 64]).expect("attestation");
        attest::verify::examine(&e.into_evidence())
    };
    let judge = |ledger: &mut attest::ledger::Ledger, mut v: attest::verify::Verdict| {
        attest::ledger::judge(ledger, &mut v);
        (v.passed, v.ledger.and_then(|l| l.outcome), v.sealed_state.map(|s| s.generation))
    };
    let mut ledger = attest::ledger::Ledger::default();
    let disk = SharedDisk::new(MemDisk::new(64));
    let (mut honest, _) = boot(&disk);
    assert_eq!(judge(&mut ledger, evidence(&mut honest, 1)), (true, Some("first_seen"), Some(2)));
    let old_image = disk.image();
    assert_eq!(judge(&mut ledger, evidence(&mut honest, 2)), (true, Some("newer"), Some(3)));
    write_level(&mut honest, b"debug");
    assert_eq!(judge(&mut ledger, evidence(&mut honest, 3)), (true, Some("newer"), Some(5)));

    // The old image, its generation raised past 5 by commits the relying party never saw,
    // and the nonces the relying party used since replayed by the host's own guest: the
    // links carry fresh salt from the SVSM, so the replay rebuilds nothing.
    let copy = SharedDisk::new(MemDisk::from_image(old_image));
    let (mut old, _) = boot(&copy);
    for level in [b"debug".as_slice(), b"info", b"debug", b"info"] {
        write_level(&mut old, level);
    }
    for nonce in [2, 3] {
        bulwark_model::attest_demo::obtain_from(&mut old, &[nonce; 64]).expect("a replayed attestation");
    }
    let (passed, outcome, generation) = judge(&mut ledger, evidence(&mut old, 4));
    assert!(generation > Some(5), "{generation:?}: newer by its generation alone");
    assert_eq!((passed, outcome), (false, Some("diverged")));

    // The honest VM goes on.
    assert_eq!(judge(&mut ledger, evidence(&mut honest, 5)), (true, Some("newer"), Some(6)));
}
