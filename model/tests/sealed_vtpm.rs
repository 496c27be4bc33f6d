//! The vTPM's NV state in the sealed store, end to end as the SVSM boots it (issue 15): the
//! store on a disk the host controls, the kernel's sealed state and `VtpmNv`, libtpms in a
//! hosted service process behind the kernel's `ServiceTpm` (as the SVSM runs it at CPL 3),
//! and `Vtpm::start`. What a user of the TPM observes: what the TPM kept survives a
//! reboot; a disk the host changed does not start; a power cut at any point leaves a state
//! the TPM went through, never losing one it answered for; a disk that fails after boot
//! stops the TPM without losing what it had answered.

#[path = "support/engines.rs"]
mod engines;
use engines::{CountedTpm, lock, wait_for_the_previous_engine};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use bulwark_model::user_host::channel_tpm;
use kernel::sealed::{KeyParams, Sealed, SharedSealed, VtpmNv, open_sealed};
use kernel::user::service_tpm::StartError;
use store::testing::{CutPolicy, MemDisk, SharedDisk, TestRng};
use store::{Opened, Store, StoreError, StoreKey, Tamper};
use vtpm::commands::{
    evict_control, nv_define_space, nv_read, nv_read_result, nv_write, read_public, read_public_result,
};
use vtpm::libtpms::LibTpms;
use vtpm::wire::{self, ResponseHeader, TPM_RC_FAILURE, TPM_RC_SUCCESS};
use vtpm::{ManufactureError, TPM_RC_NV_UNAVAILABLE, Vtpm};

/// The NV index the tests define, and its size.
const INDEX: u32 = 0x0150_0001;
const INDEX_SIZE: u16 = 32;
/// Where the EK is made persistent.
const PERSISTENT_EK: u32 = 0x8101_0001;
/// TPM_RC_NV_UNINITIALIZED: a defined index that was never written.
const TPM_RC_NV_UNINITIALIZED: u32 = 0x14A;
/// 256 KiB: room for the committed state and the next one.
const DISK_BLOCKS: u64 = 64;

const DATA_A: [u8; 32] = [0xA1; 32];
const DATA_B: [u8; 32] = [0xB2; 32];

/// The sealed store's key: the PSP derives it on a real boot; every boot here gets the same.
fn key() -> StoreKey {
    StoreKey::new([0x5e; 32])
}

// ---------------------------------------------------------------------------------------
// The disk, the engine and the boot.

/// The host's disk ([`SharedDisk`]): the store drives one handle, the test keeps another to
/// cut the power, fail flushes or take an image.
fn blank_disk() -> SharedDisk {
    SharedDisk::new(MemDisk::new(DISK_BLOCKS))
}

fn disk_from(image: Vec<u8>) -> SharedDisk {
    SharedDisk::new(MemDisk::from_image(image))
}

/// libtpms is one TPM per process: the tests take turns.
static ONE_TPM: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    lock(&ONE_TPM)
}

/// Why a boot did not give a vTPM.
#[derive(Debug)]
enum BootError {
    /// The sealed store did not open (or format).
    Store(StoreError),
    /// The vTPM service did not start from the kept NV state.
    Service(StartError),
    /// The vTPM did not start (Startup, the EK, persisting the first state, or the EK
    /// is not the one the store records).
    Start(ManufactureError),
}

/// A booted vTPM and the sealed state it keeps its NV in.
struct Booted {
    vtpm: Vtpm,
    sealed: SharedSealed,
    opened: Opened,
    /// The generation the store opened with, before the vTPM's start committed anything
    /// (starting a kept TPM changes its permall too: TPM2_Startup counts resets).
    opened_generation: u64,
    /// The older key's parameters, if the boot re-wrapped the state under its own.
    rewrapped_from: Option<KeyParams>,
}

impl Booted {
    /// The generation committed now.
    fn generation(&self) -> u64 {
        self.sealed.lock().state().generation
    }
}

/// What the SVSM does at boot: open the sealed store on the disk (formatting a blank
/// one), start the vTPM service process from the NV state it keeps, start the vTPM.
fn boot(disk: &SharedDisk) -> Result<Booted, BootError> {
    boot_from(disk, |disk, rng| Store::open_or_format(disk, &key(), rng).map(|(store, how)| (store, how, None)))
}

/// What a store opener gives: the store, how it opened, and the older key's parameters if
/// it re-wrapped the state.
type OpenedStore = (Store<SharedDisk, TestRng>, Opened, Option<KeyParams>);

/// [`boot`], with the store opened by `open`.
fn boot_from(
    disk: &SharedDisk,
    open: impl FnOnce(SharedDisk, TestRng) -> Result<OpenedStore, StoreError>,
) -> Result<Booted, BootError> {
    static BOOTS: Mutex<u64> = Mutex::new(0);
    wait_for_the_previous_engine();
    // Each boot's nonces are fresh, as RDRAND's would be.
    let seed = {
        let mut boots = lock(&BOOTS);
        *boots += 1;
        *boots
    };
    let (store, opened, rewrapped_from) = open(disk.clone(), TestRng::new(seed)).map_err(BootError::Store)?;
    let opened_generation = store.state().generation;
    let sealed = Sealed::opened(Box::new(store), rewrapped_from.is_some());
    let (kept, storage) = VtpmNv::open(sealed.clone());
    let open = |nv| LibTpms::open_with_nv(abi::vtpm::MAX_COMMAND_SIZE as u32, nv).map(CountedTpm::new).map_err(|_| 1);
    let engine = channel_tpm(open, &kept.nv).map_err(BootError::Service)?;
    let vtpm = Vtpm::start(Box::new(engine), Box::new(storage)).map_err(BootError::Start)?;
    Ok(Booted { vtpm, sealed, opened, opened_generation, rewrapped_from })
}

/// A boot that must succeed.
fn boot_ok(disk: &SharedDisk, what: &str) -> Booted {
    boot(disk).unwrap_or_else(|e| panic!("{what}: the vTPM did not start: {e:?}"))
}

/// A boot that must fail at the store.
fn boot_store_error(disk: &SharedDisk) -> StoreError {
    match boot(disk) {
        Err(BootError::Store(e)) => e,
        Err(BootError::Service(e)) => panic!("the store opened, then the service did not start: {e:?}"),
        Err(BootError::Start(e)) => panic!("the store opened, then the vTPM did not start: {e:?}"),
        Ok(booted) => panic!("the vTPM started from generation {}", booted.opened_generation),
    }
}

// ---------------------------------------------------------------------------------------
// TPM commands, as a guest sends them.

/// One command through the vTPM; the response bytes.
fn run(vtpm: &mut Vtpm, command: &[u8]) -> Vec<u8> {
    let mut response = vec![0u8; abi::vtpm::MAX_RESPONSE_SIZE];
    let n = vtpm.execute(command, &mut response);
    response.truncate(n);
    response
}

fn code(response: &[u8]) -> u32 {
    ResponseHeader::parse(response).expect("a response header").code
}

/// A command that must succeed.
fn run_ok(vtpm: &mut Vtpm, command: &[u8], what: &str) -> Vec<u8> {
    let response = run(vtpm, command);
    assert_eq!(code(&response), TPM_RC_SUCCESS, "{what}");
    response
}

/// TPM_RC_HANDLE (format one, any handle number): no such index or object.
fn is_handle_error(code: u32) -> bool {
    code & 0xFF == 0x8B
}

fn get_random() -> Vec<u8> {
    let mut c = wire::Command::new(wire::TPM_ST_NO_SESSIONS, wire::TPM_CC_GET_RANDOM);
    c.u16(8);
    c.finish()
}

/// TPM2_CreatePrimary of the EK (as `tpm2_createek` does it): the response.
fn create_ek(vtpm: &mut Vtpm) -> Vec<u8> {
    run(vtpm, &vtpm::create_ek_command())
}

fn ek_handle(response: &[u8]) -> u32 {
    vtpm::create_primary_result(response).expect("a CreatePrimary result").0
}

/// The NV index's bytes, or the response code.
fn read_index(vtpm: &mut Vtpm) -> Result<Vec<u8>, u32> {
    let response = run(vtpm, &nv_read(INDEX, 0, INDEX_SIZE));
    match code(&response) {
        TPM_RC_SUCCESS => Ok(nv_read_result(&response).expect("NV_Read data").to_vec()),
        other => Err(other),
    }
}

/// The persistent EK's public area, or the response code.
fn read_persistent_ek(vtpm: &mut Vtpm) -> Result<Vec<u8>, u32> {
    let response = run(vtpm, &read_public(PERSISTENT_EK));
    match code(&response) {
        TPM_RC_SUCCESS => Ok(read_public_result(&response).expect("ReadPublic data").to_vec()),
        other => Err(other),
    }
}

// ---------------------------------------------------------------------------------------
// 1. Two boots of one disk image.

/// Disk images of one vTPM's life, and what it answered.
struct KeptImages {
    /// After the first boot: a store with a new TPM (its first commit holding one).
    after_start: Vec<u8>,
    /// After NV_DefineSpace, NV_Write(A) and the EK made persistent.
    last: Vec<u8>,
    /// The EK's public area.
    ek: Vec<u8>,
    /// The committed generation of `last`.
    generation: u64,
}

/// First boot on a blank disk: define the index, write A, make the EK persistent.
fn first_boot() -> KeptImages {
    let disk = blank_disk();
    let mut booted = boot_ok(&disk, "first boot");
    assert_eq!(booted.opened, Opened::Formatted, "a blank disk is formatted");
    let after_start = disk.image();
    let vtpm = &mut booted.vtpm;
    run_ok(vtpm, &nv_define_space(INDEX, INDEX_SIZE), "NV_DefineSpace");
    run_ok(vtpm, &nv_write(INDEX, 0, &DATA_A), "NV_Write");
    let created = create_ek(vtpm);
    assert_eq!(code(&created), TPM_RC_SUCCESS, "CreatePrimary(EK)");
    run_ok(vtpm, &evict_control(ek_handle(&created), PERSISTENT_EK), "EvictControl");
    let ek = vtpm.ek_public().to_vec();
    assert_eq!(vtpm::create_primary_result(&created).map(|(_, public)| public), Some(&ek[..]));
    let generation = booted.generation();
    drop(booted);
    let last = disk.image();
    let store = Store::open(MemDisk::from_image(last.clone()), &key(), TestRng::new(0)).expect("the image opens");
    let blobs: Vec<_> =
        store.names().map(|n| (String::from_utf8_lossy(n).into_owned(), store.get(n).map_or(0, <[u8]>::len))).collect();
    println!(
        "kept after the first boot: generation {generation}, {} blocks in use, {} disk writes and flushes, {blobs:?}",
        store.blocks_in_use().count(),
        disk.lock().mutations()
    );
    KeptImages { after_start, last, ek, generation }
}

/// The first boot's images, made once for the tests that tamper with them.
fn kept_images() -> &'static KeptImages {
    static IMAGES: OnceLock<KeptImages> = OnceLock::new();
    IMAGES.get_or_init(first_boot)
}

/// Issue 15 asks that the vTPM's NV state survive a reboot of the disk image: the NV
/// index, the persistent EK and the EK itself; a blank disk is a new TPM.
#[test]
fn a_second_boot_of_the_disk_image_has_the_nv_index_the_persistent_ek_and_the_same_ek() {
    let _turn = turn();
    let kept = kept_images();

    let mut again = boot_ok(&disk_from(kept.last.clone()), "second boot");
    assert_eq!(again.opened, Opened::Existing);
    assert_eq!(again.opened_generation, kept.generation, "the newest state");
    assert_eq!(read_index(&mut again.vtpm), Ok(DATA_A.to_vec()), "the NV index kept its bytes");
    assert_eq!(read_persistent_ek(&mut again.vtpm), Ok(kept.ek.clone()), "the persistent EK is there");
    assert_eq!(again.vtpm.ek_public(), &kept.ek[..], "the same endorsement seed: the same EK");
    drop(again);

    let fresh = boot_ok(&blank_disk(), "boot from a blank disk");
    assert_eq!(fresh.opened, Opened::Formatted);
    assert_ne!(fresh.vtpm.ek_public(), &kept.ek[..], "a blank disk is another TPM");
}

// ---------------------------------------------------------------------------------------
// 2. A disk the host changed.

/// The pool blocks the newest state of `image` uses.
fn blocks_in_use(image: &[u8]) -> Vec<u64> {
    let store = Store::open(MemDisk::from_image(image.to_vec()), &key(), TestRng::new(0)).expect("the image opens");
    store.blocks_in_use().collect()
}

/// A copy of `image` changed by `tamper`.
fn tampered(image: &[u8], tamper: impl FnOnce(&mut MemDisk)) -> SharedDisk {
    let mut disk = MemDisk::from_image(image.to_vec());
    tamper(&mut disk);
    SharedDisk::new(disk)
}

/// Issue 15 asks that a flipped bit in every block the committed state uses stop the
/// boot. Here the pool blocks (first, middle and last byte of each): each is found before
/// the vTPM starts. The header slots are the next test.
#[test]
fn a_flipped_bit_in_any_block_the_state_uses_stops_the_boot() {
    let _turn = turn();
    let kept = kept_images();
    let used = blocks_in_use(&kept.last);
    assert!(used.len() >= 3, "an index and the blobs: {used:?}");
    for &block in &used {
        for byte in [0, 2048, 4095] {
            let disk = tampered(&kept.last, |d| d.flip_bit(block, byte * 8 + (block as usize % 8)));
            assert_eq!(
                boot_store_error(&disk),
                StoreError::Tampered { what: Tamper::Block { index: block } },
                "block {block}, byte {byte}"
            );
        }
    }
}

/// Issue 15 asks for a flipped bit in every block of the state, the header slots included.
/// The store documents ("What the store detects, and what only a verifier can") that a
/// destroyed newest header lets the older slot's state open: authentic, one generation
/// older, which only a verifier that remembers the generation refuses. So: a flip in the
/// older slot changes nothing, a flip in the newer one opens the state before the last
/// commit, and flips in both stop the boot.
#[test]
fn a_flipped_bit_in_one_header_slot_opens_the_newest_or_the_previous_state_and_in_both_stops_the_boot() {
    let _turn = turn();
    let kept = kept_images();
    let mut generations = Vec::new();
    for slot in [0, 1] {
        let disk = tampered(&kept.last, |d| d.flip_bit(slot, 100 * 8));
        let mut booted = boot_ok(&disk, "one header slot flipped");
        assert_eq!(booted.vtpm.ek_public(), &kept.ek[..], "the same TPM");
        if booted.opened_generation == kept.generation {
            assert_eq!(read_persistent_ek(&mut booted.vtpm), Ok(kept.ek.clone()), "the newest state");
        } else {
            // The state before the last commit (EvictControl): the index written, the EK
            // not yet persistent.
            let absent = read_persistent_ek(&mut booted.vtpm).expect_err("no persistent EK yet");
            assert!(is_handle_error(absent), "{absent:#x}");
            assert_eq!(read_index(&mut booted.vtpm), Ok(DATA_A.to_vec()));
        }
        generations.push(booted.opened_generation);
    }
    generations.sort_unstable();
    assert_eq!(generations, [kept.generation - 1, kept.generation]);

    let disk = tampered(&kept.last, |d| {
        d.flip_bit(0, 100 * 8);
        d.flip_bit(1, 4000 * 8);
    });
    assert_eq!(boot_store_error(&disk), StoreError::Tampered { what: Tamper::Header });
}

/// Issue 15 asks that two used blocks swapped stop the boot.
#[test]
fn two_used_blocks_swapped_stop_the_boot() {
    let _turn = turn();
    let kept = kept_images();
    let used = blocks_in_use(&kept.last);
    for pair in used.windows(2) {
        let disk = tampered(&kept.last, |d| d.swap_blocks(pair[0], pair[1]));
        let error = boot_store_error(&disk);
        assert!(
            matches!(error, StoreError::Tampered { what: Tamper::Block { index } } if pair.contains(&index)),
            "{pair:?}: {error:?}"
        );
    }
    // A used block swapped with one the state does not use.
    let unused = (2..DISK_BLOCKS).find(|b| !used.contains(b)).expect("a free block");
    let disk = tampered(&kept.last, |d| d.swap_blocks(used[0], unused));
    assert_eq!(boot_store_error(&disk), StoreError::Tampered { what: Tamper::Block { index: used[0] } });
}

/// Issue 15 asks that a block replayed from an older image stop the boot: every block of
/// the newest state that the first commit's image holds differently, put back as it was.
#[test]
fn a_block_replayed_from_an_older_image_stops_the_boot() {
    let _turn = turn();
    let kept = kept_images();
    let older = MemDisk::from_image(kept.after_start.clone());
    let newer = MemDisk::from_image(kept.last.clone());
    let mut replayed = 0;
    for block in blocks_in_use(&kept.last) {
        let old = older.block(block).expect("in the image").to_vec();
        if old == newer.block(block).expect("in the image") {
            continue;
        }
        let disk = tampered(&kept.last, |d| d.set_block(block, &old));
        assert_eq!(boot_store_error(&disk), StoreError::Tampered { what: Tamper::Block { index: block } });
        replayed += 1;
    }
    assert!(replayed > 0, "the later commits rewrote blocks the first one had written");
}

/// Issue 15 asks that a truncated image stop the boot: every length that cuts off a block
/// of the newest state.
#[test]
fn a_truncated_image_stops_the_boot() {
    let _turn = turn();
    let kept = kept_images();
    let highest = *blocks_in_use(&kept.last).last().expect("blocks in use");
    for blocks in 0..=highest {
        let disk = tampered(&kept.last, |d| d.truncate(blocks));
        let error = boot_store_error(&disk);
        let expected = match blocks {
            0 | 1 => matches!(error, StoreError::NotFormatted),
            _ => matches!(error, StoreError::Tampered { what: Tamper::BeyondDevice { .. } }),
        };
        assert!(expected, "{blocks} blocks: {error:?}");
    }
}

/// Issue 15 on a whole older image: it is authentic, so the store opens it; the boot
/// reports its older generation (the attestation manifest carries it). Only a verifier that
/// keeps a ledger of the last generation it accepted can refuse it: the store cannot.
#[test]
fn a_whole_older_image_opens_with_a_lower_generation() {
    let _turn = turn();
    let kept = kept_images();
    let mut booted = boot_ok(&disk_from(kept.after_start.clone()), "an older image");
    assert!(booted.opened_generation < kept.generation, "{} < {}", booted.opened_generation, kept.generation);
    assert_eq!(booted.vtpm.ek_public(), &kept.ek[..], "the same TPM, as it was");
    let absent = read_index(&mut booted.vtpm).expect_err("no index yet in the older state");
    assert!(is_handle_error(absent), "{absent:#x}");
}

// ---------------------------------------------------------------------------------------
// 3. Power cuts.

/// What the TPM holds after a reboot, as far as the session got; each is the state after
/// the session step of the same number (0: the boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Found {
    NoIndex,
    Unwritten,
    HoldingA,
    HoldingB,
    HoldingBWithPersistentEk,
}

const ALL_FOUND: [Found; 5] =
    [Found::NoIndex, Found::Unwritten, Found::HoldingA, Found::HoldingB, Found::HoldingBWithPersistentEk];

/// What the TPM holds; panics on anything that is not a state the session went through.
fn found(vtpm: &mut Vtpm) -> Found {
    let ek = vtpm.ek_public().to_vec();
    let index = read_index(vtpm);
    let persistent = read_persistent_ek(vtpm);
    let holding_b = index.as_deref() == Ok(&DATA_B[..]);
    match persistent {
        Ok(public) if public == ek && holding_b => return Found::HoldingBWithPersistentEk,
        Ok(public) => panic!("a persistent key ({} bytes) with the index {index:x?}", public.len()),
        Err(code) => assert!(is_handle_error(code), "ReadPublic: {code:#x}"),
    }
    match index {
        Err(code) if is_handle_error(code) => Found::NoIndex,
        Err(TPM_RC_NV_UNINITIALIZED) => Found::Unwritten,
        Ok(data) if data == DATA_A => Found::HoldingA,
        Ok(data) if data == DATA_B => Found::HoldingB,
        other => panic!("the index holds something the session never wrote: {other:x?}"),
    }
}

/// How far a session got before the power went.
#[derive(Debug)]
struct Session {
    /// Steps whose boot or response succeeded (the boot is step 0).
    acknowledged: usize,
    /// Steps begun: the acknowledged ones and the one that failed, if any.
    attempted: usize,
    /// The EK, once the boot succeeded.
    ek: Option<Vec<u8>>,
}

/// The tpm2 session: boot on `disk`, NV_DefineSpace, NV_Write(A), NV_Write(B), the EK
/// made persistent, up to the first failure: a failed boot, or a command answered
/// TPM_RC_NV_UNAVAILABLE (the vTPM then stops).
fn session(disk: &SharedDisk) -> Session {
    let mut booted = match boot(disk) {
        Ok(booted) => booted,
        // The disk died while the store formatted, or while the new TPM's first state
        // was committed; nothing else may fail.
        Err(BootError::Store(StoreError::Io(_)))
        | Err(BootError::Start(ManufactureError { code: TPM_RC_NV_UNAVAILABLE, .. })) => {
            return Session { acknowledged: 0, attempted: 1, ek: None };
        }
        Err(e @ (BootError::Store(_) | BootError::Service(_) | BootError::Start(_))) => {
            panic!("a boot failed for another reason than the disk: {e:?}")
        }
    };
    let ek = Some(booted.vtpm.ek_public().to_vec());
    let vtpm = &mut booted.vtpm;
    let failed = |vtpm: &mut Vtpm, step: usize, response: &[u8], ek: Option<Vec<u8>>| {
        assert_eq!(code(response), TPM_RC_NV_UNAVAILABLE, "step {step}");
        assert!(vtpm.stopped());
        assert_eq!(code(&run(vtpm, &get_random())), TPM_RC_FAILURE, "a stopped vTPM answers nothing else");
        Session { acknowledged: step, attempted: step + 1, ek }
    };
    let commands = [nv_define_space(INDEX, INDEX_SIZE), nv_write(INDEX, 0, &DATA_A), nv_write(INDEX, 0, &DATA_B)];
    for (step, command) in (1..).zip(commands) {
        let response = run(vtpm, &command);
        if code(&response) != TPM_RC_SUCCESS {
            return failed(vtpm, step, &response, ek);
        }
    }
    let created = create_ek(vtpm);
    if code(&created) != TPM_RC_SUCCESS {
        return failed(vtpm, 4, &created, ek);
    }
    let response = run(vtpm, &evict_control(ek_handle(&created), PERSISTENT_EK));
    if code(&response) != TPM_RC_SUCCESS {
        return failed(vtpm, 4, &response, ek);
    }
    Session { acknowledged: 5, attempted: 5, ek }
}

/// Issue 15 asks that a power cut at any point leave the NV state in a committed state, and
/// that a response be released only after its state is committed (durability). The session
/// is cut after each of its disk writes and flushes in turn; after the power comes back the
/// boot must succeed and find a state the session went through: at least the last one it
/// got an answer for, at most the one it was working on (whose commit may have reached the
/// disk without the session learning it).
fn every_power_cut(policies: &[fn(u64) -> CutPolicy]) -> Vec<Found> {
    let started = Instant::now();
    let clean = blank_disk();
    let whole = session(&clean);
    assert_eq!((whole.acknowledged, whole.attempted), (5, 5), "the clean session");
    let total = clean.lock().mutations();
    let mut seen = Vec::new();
    for k in 0..=total {
        for policy in policies {
            let disk = blank_disk();
            disk.lock().cut_power_after(k);
            let cut = session(&disk);
            let policy = policy(k);
            disk.lock().power_cycle(policy);
            let what = format!("cut after {k} of {total} disk writes and flushes, {policy:?}, {cut:?}");
            let mut booted = boot(&disk).unwrap_or_else(|e| panic!("{what}: no boot: {e:?}"));
            let state = found(&mut booted.vtpm);
            let level = ALL_FOUND.iter().position(|f| *f == state).expect("a state");
            assert!(level + 1 >= cut.acknowledged, "{what}: an answered step was lost: {state:?} found");
            assert!(level < cut.attempted, "{what}: a step never asked for: {state:?} found");
            if let Some(ek) = &cut.ek {
                assert_eq!(booted.vtpm.ek_public(), &ek[..], "{what}: the TPM that answered is the one kept");
            }
            seen.push(state);
        }
    }
    println!("{total} disk writes and flushes in a clean session; {} cuts in {:.1?}", seen.len(), started.elapsed());
    seen
}

#[test]
fn a_power_cut_after_any_disk_write_losing_or_keeping_the_unflushed_ones_leaves_a_state_the_tpm_went_through() {
    let _turn = turn();
    let seen = every_power_cut(&[|_| CutPolicy::LoseUnflushed, |_| CutPolicy::KeepUnflushed]);
    for state in ALL_FOUND {
        assert!(seen.contains(&state), "no cut left {state:?}: {seen:?}");
    }
}

#[test]
fn a_power_cut_after_any_disk_write_tearing_the_unflushed_ones_leaves_a_state_the_tpm_went_through() {
    let _turn = turn();
    // Three seeds per cut: each unflushed write is lost, applied or torn at a sector.
    every_power_cut(&[
        CutPolicy::Scramble,
        |k| CutPolicy::Scramble(k + 1_000_003),
        |k| CutPolicy::Scramble(k + 2_000_006),
    ]);
}

/// Issue 15 on a cut before the first commit: the first boot formats the disk, and a power
/// cut then (which may tear the first header write at a sector) must leave a disk that
/// boots: blank or an empty store, either of which starts a new TPM. Eight seeds per cut,
/// because whether the header write is lost, applied or torn is the seed's choice.
#[test]
fn a_power_cut_while_the_first_boot_formats_the_disk_leaves_a_disk_that_boots() {
    let _turn = turn();
    let format = Store::format(MemDisk::new(DISK_BLOCKS), &key(), TestRng::new(1)).expect("format");
    let total = format.into_device().mutations();
    for k in 0..total {
        for seed in 0..8 {
            let disk = blank_disk();
            disk.lock().cut_power_after(k);
            assert!(matches!(boot(&disk), Err(BootError::Store(StoreError::Io(_)))), "cut after {k}");
            disk.lock().power_cycle(CutPolicy::Scramble(seed));
            let mut booted = boot(&disk).unwrap_or_else(|e| panic!("cut after {k} of {total}, seed {seed}: {e:?}"));
            assert_eq!(found(&mut booted.vtpm), Found::NoIndex);
        }
    }
}

// ---------------------------------------------------------------------------------------
// 4. A disk that fails after boot.

/// Issue 15 on a disk that fails after boot: the command whose change could not be
/// committed gets TPM_RC_NV_UNAVAILABLE, every later command TPM_RC_FAILURE, and the next
/// boot finds the state before that command.
#[test]
fn a_disk_that_stops_flushing_stops_the_vtpm_and_the_next_boot_has_the_state_before() {
    let _turn = turn();
    let disk = blank_disk();
    let mut booted = boot_ok(&disk, "first boot");
    let ek = booted.vtpm.ek_public().to_vec();
    run_ok(&mut booted.vtpm, &nv_define_space(INDEX, INDEX_SIZE), "NV_DefineSpace");
    run_ok(&mut booted.vtpm, &nv_write(INDEX, 0, &DATA_A), "NV_Write(A)");
    let generation = booted.generation();

    disk.lock().fail_flushes(true);
    assert_eq!(code(&run(&mut booted.vtpm, &nv_write(INDEX, 0, &DATA_B))), TPM_RC_NV_UNAVAILABLE);
    assert!(booted.vtpm.stopped());
    for command in [nv_read(INDEX, 0, INDEX_SIZE), get_random(), nv_write(INDEX, 0, &DATA_A)] {
        assert_eq!(code(&run(&mut booted.vtpm, &command)), TPM_RC_FAILURE);
    }
    assert_eq!(booted.generation(), generation, "nothing committed");
    // The flush failed before any header write: the change is dropped, the sealed state
    // stays open for everything else (docs/persistence.md "Failing closed").
    assert_eq!(booted.sealed.lock().failed(), None);
    drop(booted);

    disk.lock().heal();
    let mut again = boot_ok(&disk, "the boot after the disk healed");
    assert_eq!(again.vtpm.ek_public(), &ek[..]);
    assert_eq!(read_index(&mut again.vtpm), Ok(DATA_A.to_vec()), "the state before the failed write");
}

// ---------------------------------------------------------------------------------------
// 6. A firmware update: the PSP's key changes, the state is re-wrapped, nothing is lost.

/// The model's PSP with TCB version `tcb`, answering the SVSM's MSG_KEY_REQ over the guest
/// message channel as on a real boot (`Svsm::sealing_key`).
struct Psp {
    env: bulwark_model::conformance_env::ModelEnv,
    tcb: u64,
    /// Every key request's parameters, in order.
    asked: Vec<KeyParams>,
}

impl Psp {
    fn at(tcb: u64) -> Self {
        use bulwark_model::psp_model;
        let mut env = bulwark_model::conformance_env::ModelEnv::with(bulwark_model::world::WorldConfig {
            vtpm: false,
            ..bulwark_model::conformance_env::ModelEnv::config()
        });
        let identity = softpsp::report::Identity { tcb, ..psp_model::identity() };
        env.world.machine.psp = Some(softpsp::SoftPsp::new([0xA0; 32], psp_model::vcek(), identity));
        Psp { env, tcb, asked: Vec::new() }
    }

    fn current(&self) -> KeyParams {
        KeyParams { guest_svn: 0, tcb_version: self.tcb }
    }

    /// The store key for `params`, as the SVSM labels it; `None` if the PSP refuses.
    fn key(&mut self, params: KeyParams) -> Option<StoreKey> {
        self.asked.push(params);
        let w = &mut self.env.world;
        let key = w.svsm.sealing_key(&mut w.machine, params.guest_svn, params.tcb_version).ok()?;
        Some(StoreKey::labelled(key, params.label()))
    }

    /// Open the store as the SVSM does at boot (`open_sealed`).
    fn open(&mut self, disk: SharedDisk, rng: TestRng) -> Result<OpenedStore, StoreError> {
        let current = self.current();
        let key = self.key(current).expect("the PSP gives the current key");
        let opened = open_sealed(disk, current, &key, |params| self.key(params), rng)?;
        Ok((opened.store, opened.how, opened.rewrapped_from))
    }
}

/// The TCB version of the model's PSP, and one a firmware update raised (its lowest
/// component by one).
fn tcbs() -> (u64, u64) {
    let old = bulwark_model::psp_model::identity().tcb;
    let mut bytes = old.to_le_bytes();
    let lowest = bytes.iter().position(|b| *b < 0xFF).expect("a component below 0xFF");
    bytes[lowest] += 1;
    (old, u64::from_le_bytes(bytes))
}

/// A vTPM that made an NV index and a persistent EK under the PSP at `tcb`; the EK.
fn populated_at(disk: &SharedDisk, tcb: u64) -> Vec<u8> {
    let mut psp = Psp::at(tcb);
    let mut booted = boot_from(disk, |disk, rng| psp.open(disk, rng)).expect("a boot on a blank disk");
    let vtpm = &mut booted.vtpm;
    run_ok(vtpm, &nv_define_space(INDEX, INDEX_SIZE), "NV_DefineSpace");
    run_ok(vtpm, &nv_write(INDEX, 0, &DATA_A), "NV_Write");
    let created = create_ek(vtpm);
    run_ok(vtpm, &evict_control(ek_handle(&created), PERSISTENT_EK), "EvictControl");
    vtpm.ek_public().to_vec()
}

/// Issue 15: "Document how a TCB update ... re-wraps the key without losing the state."
/// A firmware update changes the PSP's key; the SVSM asks for the key of the TCB the
/// headers name (allowed: it is below the current one), opens the state, re-wraps it under
/// the new key, and the TPM keeps its EK, its NV index and its persistent key. A firmware
/// rolled back to the old TCB cannot open the re-wrapped state.
#[test]
fn a_firmware_update_rewraps_the_state_and_the_tpm_keeps_everything() {
    let _turn = turn();
    let (old, new) = tcbs();
    let disk = blank_disk();
    let ek = populated_at(&disk, old);

    let mut psp = Psp::at(new);
    let mut booted = boot_from(&disk, |disk, rng| psp.open(disk, rng)).expect("the boot after the update");
    let old_params = KeyParams { guest_svn: 0, tcb_version: old };
    assert_eq!(booted.rewrapped_from, Some(old_params));
    assert_eq!(psp.asked, [psp.current(), old_params], "the current key, then the one the headers name");
    assert_eq!(booted.vtpm.ek_public(), &ek[..], "the same EK");
    assert_eq!(read_index(&mut booted.vtpm), Ok(DATA_A.to_vec()));
    assert_eq!(read_persistent_ek(&mut booted.vtpm).map(|public| public == ek), Ok(true));
    let flags = booted.sealed.lock().summary().lock().entry.flags;
    assert_eq!(flags, abi::attest::SEALED_STATE_REWRAPPED, "the manifest entry says so");
    run_ok(&mut booted.vtpm, &nv_write(INDEX, 0, &DATA_B), "NV_Write after the update");
    drop(booted);

    // The next boot on the new firmware opens it directly.
    let mut psp = Psp::at(new);
    let mut booted = boot_from(&disk, |disk, rng| psp.open(disk, rng)).expect("the second boot after the update");
    assert_eq!((booted.rewrapped_from, psp.asked.len()), (None, 1));
    assert_eq!(read_index(&mut booted.vtpm), Ok(DATA_B.to_vec()));
    assert_eq!(booted.sealed.lock().summary().lock().entry.flags, 0);
    drop(booted);

    // Firmware rolled back: the headers name the newer TCB, whose key it must not ask
    // for (the PSP would refuse it too), and its own key opens nothing.
    let mut psp = Psp::at(old);
    match boot_from(&disk, |disk, rng| psp.open(disk, rng)) {
        Err(BootError::Store(StoreError::WrongKey)) => {}
        Err(e) => panic!("the rolled-back firmware failed otherwise: {e:?}"),
        Ok(_) => panic!("the rolled-back firmware opened state sealed after the update"),
    }
    assert_eq!(psp.asked, [psp.current()], "no key above the current TCB was asked for");
}

/// A power cut at any write of the re-wrapping commit: the next boot (on the new
/// firmware) finds the whole state, under the old key (and re-wraps it then) or the new.
#[test]
fn a_power_cut_while_rewrapping_leaves_a_state_the_next_boot_opens_whole() {
    let _turn = turn();
    let (old, new) = tcbs();
    let disk = blank_disk();
    let ek = populated_at(&disk, old);
    let image = disk.image();
    // How many writes and flushes the boot after the update makes until its re-wrap is
    // durable: the cut points.
    let writes = {
        let disk = disk_from(image.clone());
        let before = disk.lock().mutations();
        let mut psp = Psp::at(new);
        let opened = psp.open(disk.clone(), TestRng::new(77)).expect("the re-wrap");
        assert!(opened.2.is_some());
        disk.lock().mutations() - before
    };
    let (mut saw_old, mut saw_new) = (false, false);
    for cut in 0..writes {
        for policy in [CutPolicy::LoseUnflushed, CutPolicy::KeepUnflushed, CutPolicy::Scramble(cut)] {
            let disk = disk_from(image.clone());
            disk.lock().cut_power_after(cut);
            let mut psp = Psp::at(new);
            assert!(psp.open(disk.clone(), TestRng::new(78)).is_err(), "cut {cut}: the cut re-wrap reported success");
            disk.lock().power_cycle(policy);
            let mut psp = Psp::at(new);
            let mut booted = boot_from(&disk, |disk, rng| psp.open(disk, rng))
                .unwrap_or_else(|e| panic!("cut {cut} {policy:?}: the next boot failed: {e:?}"));
            match booted.rewrapped_from {
                Some(_) => saw_old = true,
                None => saw_new = true,
            }
            assert_eq!(booted.vtpm.ek_public(), &ek[..], "cut {cut} {policy:?}");
            assert_eq!(read_index(&mut booted.vtpm), Ok(DATA_A.to_vec()), "cut {cut} {policy:?}");
        }
    }
    assert!(saw_old && saw_new, "the cuts reached both outcomes: old key {saw_old}, new key {saw_new}");
}
