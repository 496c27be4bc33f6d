//! The vTPM's state as live migration carries it (issue 16): a running libtpms TPM's NV
//! blobs and volatile state, taken on the source and resumed on the destination.

use std::sync::{Mutex, MutexGuard};

use vtpm::commands::{read_public, read_public_result};
use vtpm::libtpms::LibTpms;
use vtpm::wire::{self, ResponseHeader, TPM_RC_SUCCESS};
use vtpm::{NvBlobs, TpmEngine};

/// libtpms is one global TPM: one test at a time.
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(tpm: &mut dyn TpmEngine, command: &[u8]) -> Vec<u8> {
    let mut response = vec![0u8; abi::vtpm::MAX_RESPONSE_SIZE];
    let n = tpm.execute(command, &mut response);
    response.truncate(n);
    response
}

fn code(response: &[u8]) -> u32 {
    ResponseHeader::parse(response).expect("a response header").code
}

fn startup(tpm: &mut dyn TpmEngine) -> u32 {
    let mut c = wire::Command::new(wire::TPM_ST_NO_SESSIONS, wire::TPM_CC_STARTUP);
    c.u16(wire::TPM_SU_CLEAR);
    code(&run(tpm, &c.finish()))
}

/// Everything the engine keeps in NV now.
fn nv_of(tpm: &mut LibTpms) -> NvBlobs {
    let mut nv = NvBlobs::new();
    for change in tpm.take_nv_changes().unwrap() {
        if let Some(data) = change.data {
            nv.insert(change.name, data);
        }
    }
    nv
}

#[test]
fn a_resumed_tpm_has_the_objects_the_running_one_had_loaded() {
    let _turn = turn();
    let size = abi::vtpm::MAX_COMMAND_SIZE as u32;
    // The previous test's engine may still be shutting down: wait for libtpms.
    let mut source = open_when_free(|| LibTpms::open(size)).unwrap();
    assert_eq!(startup(&mut source), TPM_RC_SUCCESS);
    let created = run(&mut source, &vtpm::create_ek_command());
    assert_eq!(code(&created), TPM_RC_SUCCESS);
    let (handle, public) = vtpm::create_primary_result(&created).unwrap();
    let public = public.to_vec();
    let nv = nv_of(&mut source);
    let volatile = source.volatile_state().unwrap();
    drop(source);

    let mut destination = LibTpms::resume(size, nv.clone(), &volatile).unwrap();
    // Still the EK loaded at the same transient handle: the volatile state came along.
    let read = run(&mut destination, &read_public(handle));
    assert_eq!(code(&read), TPM_RC_SUCCESS, "the transient EK is loaded on the destination");
    assert_eq!(read_public_result(&read), Some(&public[..]));
    // And it is started already: a second Startup is refused.
    assert_eq!(startup(&mut destination), wire::TPM_RC_INITIALIZE);
    drop(destination);

    // Without the volatile state, a TPM from the same NV has no such object.
    let mut fresh = LibTpms::open_with_nv(size, nv).unwrap();
    assert_eq!(startup(&mut fresh), TPM_RC_SUCCESS);
    assert_ne!(code(&run(&mut fresh, &read_public(handle))), TPM_RC_SUCCESS);
}

// ---------------------------------------------------------------------------------------
// The SVSM's services moved by a migration session between two model SVSMs.

use bulwark_model::conformance_env::ModelEnv;
use bulwark_model::user_host::{ChannelTpm, channel_tpm, channel_tpm_resumed};
use bulwark_model::world::{PlatformKind, WorldConfig};
use kernel::migration::ServiceState;
use migrate::evidence::ReportVerifier;
use migrate::session::{
    self, Aes, Config, Destination, DestinationOutcome, EvidenceError, EvidenceProvider, MigrationError, PeerIdentity,
    PeerVerifier, REPORT_DATA_LEN, Source, SourceOutcome, VerifyError,
};
use migrate::session::{FrameKind, RecordType};
use migrate::testing::{Fault, Relay, Relayed};
use vtpm::Vtpm;
use vtpm::commands::{nv_define_space, nv_read, nv_read_result, nv_write};

const INDEX: u32 = 0x0150_0002;
const DATA: [u8; 16] = [0xC5; 16];
/// A guest page for the vTPM protocol's request buffer.
const TPM_PAGE: u64 = 3 << 20;

/// A model SVSM with its vTPM in a service process (no vTPM from the model's shared one:
/// this one's libtpms is its own, started fresh).
fn svsm_with_vtpm() -> ModelEnv {
    let mut env = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    let size = abi::vtpm::MAX_COMMAND_SIZE as u32;
    let engine: ChannelTpm =
        channel_tpm(move |nv| open_when_free(|| LibTpms::open_with_nv(size, nv.clone())), &NvBlobs::new()).unwrap();
    let vtpm = Vtpm::manufacture(Box::new(engine)).unwrap();
    let svsm = &mut env.world.svsm;
    bulwark_model::heap::in_svsm(|| svsm.install_vtpm(vtpm));
    env
}

/// libtpms is one global TPM: a source whose engine is still shutting down holds it for a
/// moment after its SVSM is gone.
fn open_when_free(mut open: impl FnMut() -> Result<LibTpms, vtpm::libtpms::OpenError>) -> Result<LibTpms, u32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match open() {
            Err(vtpm::libtpms::OpenError::AlreadyOpen) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Ok(tpm) => return Ok(tpm),
            Err(vtpm::libtpms::OpenError::Library { code, .. }) => return Err(code),
            Err(vtpm::libtpms::OpenError::AlreadyOpen) => return Err(u32::MAX),
        }
    }
}

/// One TPM command from the guest, through the SVSM's vTPM protocol (as Linux's
/// tpm_svsm driver sends it).
fn guest_tpm(env: &mut ModelEnv, command: &[u8]) -> Vec<u8> {
    let mut response = vec![0u8; abi::vtpm::MAX_RESPONSE_SIZE];
    let n = env.world.client().vtpm_command(TPM_PAGE, command, &mut response).expect("the vTPM call completes");
    response.truncate(n);
    response
}

/// The model SVSM's own evidence: a report from its PSP with the session's REPORT_DATA,
/// and the host's certificate table.
struct SvsmEvidence<'a>(&'a mut ModelEnv);

impl EvidenceProvider for SvsmEvidence<'_> {
    fn evidence(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, EvidenceError> {
        let w = &mut self.0.world;
        let (report, table) = bulwark_model::heap::in_svsm(|| w.svsm.migration_evidence(&mut w.machine, report_data))
            .map_err(|_| EvidenceError)?;
        migrate::evidence::encode(&report, &table).ok_or(EvidenceError)
    }
}

/// The verifier the SVSM runs (no_std), trusting the model's certificate authority.
fn verifier() -> ReportVerifier {
    let ark = attest::chain::TestAuthority::shared().ark_der();
    ReportVerifier::new(vec![ReportVerifier::root_of(ark).expect("the authority's ARK")])
}

/// What the model's launches are.
fn identity() -> PeerIdentity {
    let id = bulwark_model::psp_model::identity();
    PeerIdentity { measurement: id.measurement, policy: id.policy }
}

struct Moved {
    source: SourceOutcome,
    destination: DestinationOutcome,
    received: Vec<u8>,
    /// Every buffer the relay carried, as sent.
    log: Vec<Relayed>,
}

/// A migration session carrying `state` from `source` to `destination` over the relay,
/// with `fault` done to what it relays.
fn migrate_state(source: &mut ModelEnv, destination: &mut ModelEnv, state: &[u8], fault: Option<Fault>) -> Moved {
    let config = Config { identity: identity(), ring_pages: None, aes: Aes::Portable };
    let entropy = |seed: u8| {
        move |buf: &mut [u8]| -> Result<(), migrate::EntropyError> {
            buf.iter_mut().enumerate().for_each(|(i, b)| *b = (i as u8).wrapping_mul(31).wrapping_add(seed));
            Ok(())
        }
    };
    let (mut relay, mut source_channel, mut destination_channel) = Relay::connect(fault);
    let mut src = Source::start(config, verifier(), SvsmEvidence(source), &mut entropy(1)).unwrap();
    let mut dst = Destination::start(config, verifier(), SvsmEvidence(destination), &mut entropy(2)).unwrap();
    let mut chunks = state.chunks(8192);
    let (mut committed, mut received, mut idle) = (false, Vec::new(), 0);
    while idle < 2 {
        if src.can_send_state() {
            match chunks.next() {
                Some(chunk) => src.send_state(chunk).unwrap(),
                None if !committed => {
                    src.commit().unwrap();
                    committed = true;
                }
                None => {}
            }
        }
        let mut progress = session::pump(&mut src, &mut source_channel).unwrap_or(true);
        progress |= relay.pump();
        progress |= session::pump(&mut dst, &mut destination_channel).unwrap_or(true);
        while let Some(chunk) = dst.take_state() {
            received.extend_from_slice(&chunk);
        }
        progress |= relay.pump();
        idle = if progress { 0 } else { idle + 1 };
        if idle == 1 {
            relay.hang_up();
        }
    }
    Moved { source: src.outcome(), destination: dst.outcome(), received, log: relay.log().to_vec() }
}

/// Issue 16, "what moves": the vTPM's whole state and the settings, between two SVSMs that
/// attested each other with their PSPs' reports. On the destination the guest finds the
/// same TPM: the EK, the NV index with its data, and the object it had loaded (volatile
/// state), and the log level it had set.
#[test]
fn the_vtpm_and_the_settings_continue_on_the_destination() {
    let _turn = turn();
    let mut source = svsm_with_vtpm();
    let ek = source.world.svsm.vtpm_ek().unwrap().to_vec();
    let created = guest_tpm(&mut source, &vtpm::create_ek_command());
    assert_eq!(code(&created), TPM_RC_SUCCESS);
    let (handle, _) = vtpm::create_primary_result(&created).unwrap();
    assert_eq!(code(&guest_tpm(&mut source, &nv_define_space(INDEX, DATA.len() as u16))), TPM_RC_SUCCESS);
    assert_eq!(code(&guest_tpm(&mut source, &nv_write(INDEX, 0, &DATA))), TPM_RC_SUCCESS);
    kernel::platform::Platform::set_log_level(&mut source.world.machine, kernel::platform::Level::Debug);

    // The guest is stopped for the last round: the services' state is taken.
    let w = &mut source.world;
    let state = bulwark_model::heap::in_svsm(|| w.svsm.export_services(&w.machine)).unwrap().encode().unwrap();
    let mut destination = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    let moved = migrate_state(&mut source, &mut destination, &state, None);
    assert_eq!((moved.source, moved.destination), (SourceOutcome::Committed, DestinationOutcome::Completed));
    assert_eq!(moved.received, state);
    // The source has stopped: its vTPM (and libtpms) go with it.
    drop(source);

    let services = ServiceState::decode(&moved.received).unwrap();
    let snapshot = services.vtpm.clone().unwrap();
    let size = abi::vtpm::MAX_COMMAND_SIZE as u32;
    let engine = channel_tpm_resumed(
        move |state| open_when_free(|| LibTpms::resume(size, state.nv.clone(), &state.volatile)),
        &snapshot.state,
    )
    .unwrap();
    let vtpm = Vtpm::resume(Box::new(engine), snapshot.ek_public.clone(), &snapshot.state.nv, None).unwrap();
    let w = &mut destination.world;
    bulwark_model::heap::in_svsm(|| w.svsm.install_vtpm(vtpm));
    bulwark_model::heap::in_svsm(|| services.apply_settings(&w.svsm, &mut w.machine)).unwrap();

    assert_eq!(destination.world.svsm.vtpm_ek(), Some(&ek[..]), "the same EK in the manifest");
    let read = guest_tpm(&mut destination, &read_public(handle));
    assert_eq!(code(&read), TPM_RC_SUCCESS, "the object the guest had loaded is still loaded");
    let read = guest_tpm(&mut destination, &nv_read(INDEX, 0, DATA.len() as u16));
    assert_eq!(nv_read_result(&read), Some(&DATA[..]), "the NV index holds what the guest wrote");
    assert_eq!(kernel::platform::Platform::log_level(&destination.world.machine), kernel::platform::Level::Debug);
}

/// A relay that flips a bit of the state stream: the destination refuses the record, the
/// source keeps running, and its vTPM still answers (taking the state stopped nothing).
#[test]
fn a_tampered_state_record_leaves_the_source_serving() {
    let _turn = turn();
    let mut source = svsm_with_vtpm();
    let w = &mut source.world;
    let state = bulwark_model::heap::in_svsm(|| w.svsm.export_services(&w.machine)).unwrap().encode().unwrap();
    // Where the first state record travels (what the host can see of the frames).
    let clean = migrate_state(
        &mut source,
        &mut ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() }),
        &state,
        None,
    );
    let first_state = clean
        .log
        .iter()
        .find(|r| r.frame_kind() == Some(FrameKind::Record(RecordType::State)))
        .expect("a state record")
        .index;
    let mut destination = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    let fault = Fault::FlipBit { buffer: first_state, bit: 8 * 100 };
    let moved = migrate_state(&mut source, &mut destination, &state, Some(fault));
    assert!(matches!(moved.source, SourceOutcome::KeepRunning(_)), "{:?}", moved.source);
    assert!(matches!(moved.destination, DestinationOutcome::Failed(_)), "{:?}", moved.destination);
    assert!(moved.received.is_empty(), "nothing of the tampered stream reached the destination's services");
    let created = guest_tpm(&mut source, &vtpm::create_ek_command());
    assert_eq!(code(&created), TPM_RC_SUCCESS, "the source's vTPM serves on");
}

/// A destination whose PSP reports another launch measurement (another image) is refused
/// by the source's check of its report, before any state record is sent.
#[test]
fn a_destination_running_another_image_gets_no_state() {
    let _turn = turn();
    let mut source = svsm_with_vtpm();
    let w = &mut source.world;
    let state = bulwark_model::heap::in_svsm(|| w.svsm.export_services(&w.machine)).unwrap().encode().unwrap();
    let mut destination = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    let mut other = bulwark_model::psp_model::identity();
    other.measurement[47] ^= 1;
    destination.world.machine.psp = Some(softpsp::SoftPsp::new([0xA0; 32], bulwark_model::psp_model::vcek(), other));
    let moved = migrate_state(&mut source, &mut destination, &state, None);
    assert_eq!(moved.source, SourceOutcome::KeepRunning(MigrationError::PeerMeasurement));
    assert!(
        !moved.log.iter().any(|r| r.frame_kind() == Some(FrameKind::Record(RecordType::State))),
        "a state record left the source"
    );
    assert!(moved.received.is_empty());
}

/// The destination's own sealed store on `disk` (its PSP's key, not the source's).
fn destination_store(disk: &store::testing::SharedDisk, boot: u64) -> kernel::sealed::SharedSealed {
    let key = store::StoreKey::new([0xD5; 32]);
    let (store, _) = store::Store::open_or_format(disk.clone(), &key, store::testing::TestRng::new(boot)).unwrap();
    kernel::sealed::Sealed::new(Box::new(store))
}

/// Issue 16: "the sealed store's key re-wrapped for the destination". The destination
/// keeps the migrated TPM in its own sealed store, under its own key, before the first
/// command; a reboot of the destination from that disk starts the same TPM, with what the
/// guest wrote after the migration.
#[test]
fn the_destination_keeps_the_migrated_tpm_in_its_own_sealed_store() {
    let _turn = turn();
    let mut source = svsm_with_vtpm();
    let ek = source.world.svsm.vtpm_ek().unwrap().to_vec();
    assert_eq!(code(&guest_tpm(&mut source, &nv_define_space(INDEX, DATA.len() as u16))), TPM_RC_SUCCESS);
    assert_eq!(code(&guest_tpm(&mut source, &nv_write(INDEX, 0, &DATA))), TPM_RC_SUCCESS);
    let w = &mut source.world;
    let state = bulwark_model::heap::in_svsm(|| w.svsm.export_services(&w.machine)).unwrap().encode().unwrap();
    let mut destination = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    let moved = migrate_state(&mut source, &mut destination, &state, None);
    assert_eq!((moved.source, moved.destination), (SourceOutcome::Committed, DestinationOutcome::Completed));
    drop(source);

    let disk = store::testing::SharedDisk::new(store::testing::MemDisk::new(64));
    let sealed = destination_store(&disk, 1);
    let (kept, storage) = kernel::sealed::VtpmNv::open(sealed.clone());
    assert_eq!(kept.ek_public, None, "the destination's store is new");
    let snapshot = ServiceState::decode(&moved.received).unwrap().vtpm.unwrap();
    let size = abi::vtpm::MAX_COMMAND_SIZE as u32;
    let engine = channel_tpm_resumed(
        move |state| open_when_free(|| LibTpms::resume(size, state.nv.clone(), &state.volatile)),
        &snapshot.state,
    )
    .unwrap();
    let vtpm = Vtpm::resume(Box::new(engine), snapshot.ek_public.clone(), &snapshot.state.nv, Some(Box::new(storage)))
        .unwrap();
    assert!(sealed.lock().get(b"vtpm/manufactured").is_some(), "kept before the first command");
    let w = &mut destination.world;
    bulwark_model::heap::in_svsm(|| w.svsm.install_vtpm(vtpm));
    const AFTER: [u8; 16] = [0x3C; 16];
    assert_eq!(code(&guest_tpm(&mut destination, &nv_write(INDEX, 0, &AFTER))), TPM_RC_SUCCESS);
    drop(destination);

    // The destination reboots from its disk.
    let sealed = destination_store(&disk, 2);
    let (kept, storage) = kernel::sealed::VtpmNv::open(sealed);
    assert_eq!(kept.ek_public.as_deref(), Some(&ek[..]), "the store records the migrated EK");
    let engine = channel_tpm(move |nv| open_when_free(|| LibTpms::open_with_nv(size, nv.clone())), &kept.nv).unwrap();
    let mut vtpm = Vtpm::start(Box::new(engine), Box::new(storage)).unwrap();
    assert_eq!(vtpm.ek_public(), &ek[..]);
    let mut response = vec![0u8; abi::vtpm::MAX_RESPONSE_SIZE];
    let n = vtpm.execute(&nv_read(INDEX, 0, DATA.len() as u16), &mut response);
    assert_eq!(nv_read_result(&response[..n]), Some(&AFTER[..]), "what the guest wrote after the migration");
}

/// The SVSM's own check of a peer's evidence (`migrate::evidence`, no_std) agrees with the
/// relying party's (`bulwark-attest`) on the model's real reports: both accept one, both
/// refuse it with a byte changed anywhere in what the VCEK signed, with other REPORT_DATA,
/// or under a root they do not trust.
#[test]
fn the_svsm_checks_a_peers_report_as_a_relying_party_does() {
    let mut env = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    let expected = [0x42u8; 64];
    let (report, table) = {
        let w = &mut env.world;
        bulwark_model::heap::in_svsm(|| w.svsm.migration_evidence(&mut w.machine, &expected)).unwrap()
    };
    let certificates = attest::verify::Certificates::Table(table.clone());
    let relying_party =
        |report: &[u8], data: &[u8; 64]| attest::verify::check_bound_report(&certificates, report, data).is_ok();
    let evidence = |report: &[u8]| migrate::evidence::encode(report, &table).unwrap();

    let peer = verifier().verify(&evidence(&report), &expected).expect("the SVSM accepts the report");
    assert_eq!(peer, identity());
    assert!(relying_party(&report, &expected));

    assert_eq!(verifier().verify(&evidence(&report), &[0x43; 64]), Err(VerifyError::ReportDataMismatch));
    assert!(!relying_party(&report, &[0x43; 64]));
    // Every byte of the signed part and of the signature, flipped: refused by both.
    for at in (0..0x2A0 + 144).step_by(7) {
        let mut changed = report.clone();
        changed[at] ^= 0x01;
        assert!(verifier().verify(&evidence(&changed), &expected).is_err(), "byte {at:#x} flipped: accepted");
        assert!(!relying_party(&changed, &expected), "byte {at:#x} flipped: the relying party accepted");
    }
    // Another authority's chain (a host that made its own ARK) is not trusted.
    let stranger = ReportVerifier::new(vec![vec![0x30, 0x00]]);
    assert_eq!(stranger.verify(&evidence(&report), &expected), Err(VerifyError::Untrusted));
    // A chip's verifier trusts AMD's ARKs only: the model's authority, which the table
    // names as its ARK, is refused, as a host's own ARK would be on snp.
    let amd = ReportVerifier::amd().expect("the heap holds three keys");
    let model_ark = attest::chain::TestAuthority::shared().ark_der();
    assert!(verifier().trusts_ark(model_ark) && !amd.trusts_ark(model_ark));
    assert_eq!(amd.verify(&evidence(&report), &expected), Err(VerifyError::Untrusted));
    // Cut or padded evidence does not parse.
    let good = evidence(&report);
    assert_eq!(verifier().verify(&good[..good.len() - 1], &expected), Err(VerifyError::Malformed));
    let mut long = good.clone();
    long.push(0);
    assert_eq!(verifier().verify(&long, &expected), Err(VerifyError::Malformed));
}

/// Run `$body` with the SVSM of `$env` and the platform that serves it: the snp
/// platform's kernel side in an snp world (its handle for CPU 0), the svm platform's in
/// an svm world (then the CPUs it kicked take their turns, as on bare metal), the
/// machine otherwise.
macro_rules! on_platform {
    ($env:expr, |$svsm:ident, $p:ident| $body:expr) => {{
        let w = &mut $env.world;
        if w.svm.is_some() {
            let r = bulwark_model::svm_host::with_shared(w, |shared, svsm| {
                let mut platform = shared.platform(0);
                let ($svsm, $p) = (svsm, &mut platform);
                bulwark_model::heap::in_svsm(|| $body)
            });
            bulwark_model::svm_host::settle(w);
            r
        } else if let Some(snp) = w.snp.as_mut() {
            let mut handle = snp.cpus.handle(&mut w.machine, &mut snp.host, 0).expect("CPU 0 serves");
            let ($svsm, $p) = (&w.svsm, &mut handle);
            bulwark_model::heap::in_svsm(|| $body)
        } else {
            let ($svsm, $p) = (&w.svsm, &mut w.machine);
            bulwark_model::heap::in_svsm(|| $body)
        }
    }};
}

// ---------------------------------------------------------------------------------------
// Guest memory, as the last round moves it.

/// The guest's pages for the memory tests, and where it puts its PVALIDATE list.
const PAGES_AT: u64 = 4 << 20;
const PAGE_COUNT: u64 = 8;
const LIST_AT: u64 = 2 << 20;

/// The guest validates `PAGE_COUNT` pages (SVSM_CORE_PVALIDATE, as Linux does) and fills
/// each with its own pattern.
fn guest_fills_pages(env: &mut ModelEnv) {
    use guest::Transport;
    let mut list = Vec::new();
    list.extend_from_slice(&(PAGE_COUNT as u16).to_le_bytes());
    list.extend_from_slice(&[0; 6]);
    for i in 0..PAGE_COUNT {
        let entry = abi::core_protocol::PvalidateEntry::new(PAGES_AT + i * 4096, false, true, false).0;
        list.extend_from_slice(&entry.to_le_bytes());
    }
    let mut client = env.world.client();
    client.transport.write(LIST_AT, &list).unwrap();
    client.pvalidate_list(LIST_AT).expect("the guest validates its pages");
    for i in 0..PAGE_COUNT {
        env.world.client().transport.write(PAGES_AT + i * 4096, &pattern(i, 0)).unwrap();
    }
}

/// Every chunk of the source's guest memory, in order.
fn export_memory(env: &mut ModelEnv) -> Vec<Vec<u8>> {
    let (mut chunks, mut from) = (Vec::new(), 0);
    loop {
        let (chunk, next) = on_platform!(env, |svsm, p| svsm.export_memory(p, from)).unwrap();
        chunks.push(chunk);
        match next {
            Some(next) => from = next,
            None => return chunks,
        }
    }
}

/// Issue 16, "what moves": guest memory with the validation bitmap and VMPL permissions.
/// The guest finds on the destination every page it wrote, validated, with the same
/// permissions for its VMPLs; a chunk naming a page the destination's SVSM holds is
/// refused before any page changes.
#[test]
fn the_guests_validated_pages_arrive_with_their_bytes_and_permissions() {
    use guest::Transport;
    let mut source = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    guest_fills_pages(&mut source);
    let chunks = export_memory(&mut source);
    let mut stream = Vec::new();
    for chunk in &chunks {
        stream.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        stream.extend_from_slice(chunk);
    }
    let mut destination = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    // Before: the destination's guest has not validated these pages (a guest access
    // faults), and its SVSM's record agrees.
    let mut before = vec![0u8; 4096];
    assert!(destination.world.client().transport.read(PAGES_AT, &mut before).is_err());
    assert!(!destination.world.svsm.pages().is_validated(kernel::addr::PageAddr::new(PAGES_AT).unwrap()));
    let moved = migrate_state(&mut source, &mut destination, &stream, None);
    assert_eq!((moved.source, moved.destination), (SourceOutcome::Committed, DestinationOutcome::Completed));

    let mut rest = &moved.received[..];
    let mut applied = 0;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let (chunk, tail) = tail.split_at(u32::from_be_bytes(*len) as usize);
        let w = &mut destination.world;
        applied += bulwark_model::heap::in_svsm(|| w.svsm.import_memory(&mut w.machine, chunk)).unwrap();
        rest = tail;
    }
    let validated = source.world.svsm.pages().validated_pages() - source.world.svsm.pages().svsm_region().pages();
    println!("{} chunks, {applied} pages applied; the source guest had {validated} validated", chunks.len());
    assert!(applied >= PAGE_COUNT, "{applied} pages applied");
    for i in 0..PAGE_COUNT {
        let gpa = PAGES_AT + i * 4096;
        let expected = pattern(i, 0);
        let mut got = vec![0u8; 4096];
        destination.world.client().transport.read(gpa, &mut got).expect("the guest reads its page");
        assert_eq!(got, expected, "page {gpa:#x}");
        let page = kernel::addr::PageAddr::new(gpa).unwrap();
        for vmpl in 1..=3 {
            assert_eq!(
                kernel::platform::Platform::vmpl_permissions(&destination.world.machine, page, vmpl),
                kernel::platform::Platform::vmpl_permissions(&source.world.machine, page, vmpl),
                "page {gpa:#x} VMPL{vmpl}"
            );
        }
    }

    // A chunk naming the destination SVSM's own region is refused, and changes nothing.
    let svsm_page = destination.world.svsm.pages().svsm_region().start().raw();
    let mut hostile = chunks[0].clone();
    hostile[8..16].copy_from_slice(&svsm_page.to_be_bytes());
    let w = &mut destination.world;
    assert_eq!(
        bulwark_model::heap::in_svsm(|| w.svsm.import_memory(&mut w.machine, &hostile)),
        Err(kernel::migration::MemoryImportError::NotGuestMemory { gpa: svsm_page })
    );
    // Nor when it claims a 2 MiB entry around that page, and a flag that means nothing
    // does not parse.
    hostile[16] = 1;
    let w = &mut destination.world;
    assert_eq!(
        bulwark_model::heap::in_svsm(|| w.svsm.import_memory(&mut w.machine, &hostile)),
        Err(kernel::migration::MemoryImportError::NotGuestMemory { gpa: svsm_page })
    );
    // A page the destination holds as a 4 KiB page, claimed to be in a 2 MiB entry, is
    // refused: the region is not one entry here.
    let w = &source.world;
    let mut claimed = bulwark_model::heap::in_svsm(|| w.svsm.export_pages(&w.machine, &[PAGES_AT / 4096])).unwrap();
    claimed[16] = 1;
    let gpa = PAGES_AT;
    let w = &mut destination.world;
    assert_eq!(
        bulwark_model::heap::in_svsm(|| w.svsm.import_memory(&mut w.machine, &claimed)),
        Err(kernel::migration::MemoryImportError::Platform { gpa })
    );
    // A page a service process maps on the destination is refused too: no page changes
    // state while a process maps it (docs/syscalls.md "OPEN_PHYSMEM"). Once unmapped, the
    // same record applies.
    let w = &source.world;
    let page_record = bulwark_model::heap::in_svsm(|| w.svsm.export_pages(&w.machine, &[PAGES_AT / 4096])).unwrap();
    let page = kernel::addr::PageAddr::new(PAGES_AT).unwrap();
    let w = &mut destination.world;
    w.svsm.pages().map_for_service(page).expect("a validated guest page may be mapped");
    assert_eq!(
        bulwark_model::heap::in_svsm(|| w.svsm.import_memory(&mut w.machine, &page_record)),
        Err(kernel::migration::MemoryImportError::NotGuestMemory { gpa: PAGES_AT })
    );
    w.svsm.pages().unmap_for_service(page);
    assert_eq!(bulwark_model::heap::in_svsm(|| w.svsm.import_memory(&mut w.machine, &page_record)), Ok(1));
    let mut unknown_flag = chunks[0].clone();
    unknown_flag[16] = 2;
    let w = &mut destination.world;
    assert_eq!(
        w.svsm.import_memory(&mut w.machine, &unknown_flag),
        Err(kernel::migration::MemoryImportError::Malformed)
    );
    // Cut and padded chunks do not parse.
    let w = &mut destination.world;
    assert_eq!(
        w.svsm.import_memory(&mut w.machine, &chunks[0][..chunks[0].len() - 1]),
        Err(kernel::migration::MemoryImportError::Malformed)
    );
}

/// The pattern of page `i` in round `round`.
fn pattern(i: u64, round: u8) -> Vec<u8> {
    (0..4096).map(|b| (b as u8) ^ (i as u8).wrapping_mul(37) ^ round.wrapping_mul(101)).collect()
}

/// Issue 16, "pre-copy with trusted dirty tracking": the SVSM write-protects the guest's
/// pages itself. A guest write faults until the fault reaches the SVSM, which records the
/// page and lets the write through; each round sends only what changed since the last,
/// protected again first: what the guest wrote, and what the SVSM changed for it (an
/// answer written into its memory, a page validated or given up). The destination ends
/// with every page as the source has it. A fault the host keeps to itself only stalls the
/// guest: the write does not happen, so none is missed.
#[test]
fn pre_copy_rounds_send_what_changed_and_miss_no_write() {
    pre_copy_on(PlatformKind::Model);
}

/// The same rounds on the snp platform's kernel side (`bulwark-snp` over a software host)
/// on both ends: the guest's calls and the migration's own (export, import, dirty
/// tracking's RMPADJUSTs and TLB flushes) go through `SnpPlatform`.
#[test]
fn pre_copy_rounds_on_the_snp_platform() {
    pre_copy_on(PlatformKind::Snp);
}

/// The same rounds on the svm platform (`bulwark-svm`): RMPADJUST is the SVSM's nested
/// page tables, and the guest's accesses are checked against them.
#[test]
fn pre_copy_rounds_on_the_svm_platform() {
    pre_copy_on(PlatformKind::Svm);
}

fn pre_copy_on(platform: PlatformKind) {
    use abi::protocol::{CallId, ProtocolId, ocp_call};
    use guest::Transport;
    let mut source = ModelEnv::with(WorldConfig { vtpm: false, platform, ..ModelEnv::config() });
    guest_fills_pages(&mut source);
    // The guest's translations of its pages are cached writable now: tracking must flush
    // them, or the next writes would go unseen.
    let mut destination = ModelEnv::with(WorldConfig { vtpm: false, platform, ..ModelEnv::config() });
    let apply = |destination: &mut ModelEnv, chunk: &[u8]| {
        on_platform!(destination, |svsm, p| svsm.import_memory(p, chunk)).unwrap()
    };
    let vmpl = source.world.svsm.guest_vmpl();
    on_platform!(source, |svsm, p| svsm.start_dirty_tracking(p)).unwrap();

    // Round 1, the guest running: everything, with the guest's WRITE in what is sent.
    for chunk in export_memory(&mut source) {
        apply(&mut destination, &chunk);
    }
    let page = |i: u64| kernel::addr::PageAddr::new(PAGES_AT + i * 4096).unwrap();
    // The permissions as the platform serving each side has them (svm keeps its own RMP).
    let perms = |env: &mut ModelEnv, i: u64| {
        on_platform!(env, |_svsm, p| kernel::platform::Platform::vmpl_permissions(&*p, page(i), vmpl))
    };
    assert_eq!(perms(&mut destination, 0), Some(abi::hw::rmpadjust::PERM_ALL), "the destination's guest may write");
    assert_eq!(perms(&mut source, 0).map(|p| p & abi::hw::rmpadjust::PERM_WRITE), Some(0), "the source's may not");

    // The guest writes pages 2 and 5: each write faults, the fault reaches the SVSM,
    // the write goes through on the retry.
    let guest_writes = |source: &mut ModelEnv, i: u64, round: u8, forward: bool| {
        let gpa = PAGES_AT + i * 4096;
        assert!(source.world.client().transport.write(gpa, &pattern(i, round)).is_err(), "page {i} is protected");
        if forward {
            assert!(on_platform!(source, |svsm, p| svsm.dirty_write_fault(p, gpa, vmpl)));
            source.world.client().transport.write(gpa, &pattern(i, round)).expect("the retried write");
        }
    };
    guest_writes(&mut source, 2, 1, true);
    guest_writes(&mut source, 5, 1, true);
    // Another vCPU's fault on page 2, handled after the first gave WRITE back: a retry.
    let stale = on_platform!(source, |svsm, p| svsm.dirty_write_fault(p, PAGES_AT + 2 * 4096, vmpl));
    assert!(stale, "a stale fault is retried");
    // A second write to a page already dirty in this round does not fault.
    source.world.client().transport.write(PAGES_AT + 5 * 4096, &pattern(5, 2)).expect("no fault the second time");
    // The SVSM writes into page 1 for the guest (an OCP read of its core call counter):
    // no fault, but the page changed.
    let sources = source.world.svsm.ocp_sources();
    let counter = (0..sources.len() as u32).find(|i| sources.get(*i).is_some_and(|s| s.name == "calls.core")).unwrap();
    let read = CallId::new(ProtocolId::OCP, ocp_call::READ).to_rax();
    let regs = guest::Regs { rax: read, rcx: u64::from(counter), rdx: PAGES_AT + 4096, r8: 8, r9: 0 };
    let out = source.world.client().issue(regs);
    assert_eq!(abi::result::ResultCode::from_rax(out.unwrap().rax), abi::result::ResultCode::SUCCESS);
    let mut written_by_svsm = vec![0u8; 4096];
    source.world.client().transport.read(PAGES_AT + 4096, &mut written_by_svsm).unwrap();
    assert!(written_by_svsm != pattern(1, 0), "the counter landed in page 1");

    // Round 2: what changed only.
    let first = PAGES_AT / 4096;
    let dirty = on_platform!(source, |svsm, p| svsm.take_dirty(p, 128)).unwrap();
    assert_eq!(dirty, [first + 1, first + 2, first + 5]);
    apply(&mut destination, &on_platform!(source, |svsm, p| svsm.export_pages(p, &dirty)).unwrap());
    // Protected again: the next write to page 5 faults and is seen in the next round.
    guest_writes(&mut source, 5, 3, true);
    // The host keeps page 6's fault to itself: the write never happens.
    guest_writes(&mut source, 6, 3, false);
    // The guest gives page 3 up (PVALIDATE rescind) and deposits page 7 with the SVSM:
    // page 7 is the SVSM's now, and no forwarded fault gives the guest WRITE on it. (The
    // guest writes its call lists to a page it tracks too: that write faults, is handed
    // on, and makes the list page dirty.)
    assert!(on_platform!(source, |svsm, p| svsm.dirty_write_fault(p, LIST_AT, vmpl)));
    let mut client = source.world.client();
    client
        .pvalidate(&[abi::core_protocol::PvalidateEntry::new(PAGES_AT + 3 * 4096, false, false, false)], LIST_AT)
        .unwrap();
    client.deposit(&[abi::core_protocol::DepositEntry::new(PAGES_AT + 7 * 4096, false)], LIST_AT).unwrap();
    assert!(
        !on_platform!(source, |svsm, p| svsm.dirty_write_fault(p, PAGES_AT + 7 * 4096, vmpl)),
        "a deposited page is not the guest's"
    );
    assert_eq!(perms(&mut source, 7), Some(0), "the SVSM's page stays out of the guest's reach");

    // The last round, the guest stopped.
    let dirty = on_platform!(source, |svsm, p| svsm.take_dirty(p, 128)).unwrap();
    assert_eq!(
        dirty,
        [LIST_AT / 4096, first + 3, first + 5, first + 7],
        "the list page and page 5 written, page 3 given up, page 7 deposited"
    );
    let chunk = on_platform!(source, |svsm, p| svsm.export_pages(p, &dirty)).unwrap();
    assert_eq!(u32::from_be_bytes(chunk[4..8].try_into().unwrap()), 3, "page 7 is the SVSM's now: not sent");
    apply(&mut destination, &chunk);
    for i in [0, 1, 2, 4, 5, 6] {
        let expected = match i {
            1 => written_by_svsm.clone(),
            2 => pattern(2, 1),
            5 => pattern(5, 3),
            // Page 6 holds what the guest wrote before its stalled write, as on the source.
            _ => pattern(i, 0),
        };
        let mut got = vec![0u8; 4096];
        destination.world.client().transport.read(PAGES_AT + i * 4096, &mut got).unwrap();
        assert!(got == expected, "page {i} on the destination");
    }
    assert!(!destination.world.svsm.pages().is_validated(page(3)), "page 3 was given up");
    // Tracking ends (a migration that failed): the guest writes freely again, and the
    // deposited page stays the SVSM's.
    on_platform!(source, |svsm, p| svsm.stop_dirty_tracking(p)).unwrap();
    source.world.client().transport.write(PAGES_AT + 6 * 4096, &pattern(6, 4)).expect("write after tracking");
    assert_eq!(perms(&mut source, 7), Some(0));
    // A fault handled after tracking stopped: retried on a guest page, refused on the SVSM's.
    assert!(on_platform!(source, |svsm, p| svsm.dirty_write_fault(p, PAGES_AT + 6 * 4096, vmpl)));
    assert!(!on_platform!(source, |svsm, p| svsm.dirty_write_fault(p, PAGES_AT + 7 * 4096, vmpl)));
}

/// A page the guest gives up and validates again while tracked (as Linux does with a
/// buffer it shares with the host and takes back) gets WRITE back from the validation:
/// the next round must protect it again, whatever the log recorded of it before. (A review
/// found a version that trusted its old record and left the page writable unseen.)
#[test]
fn a_page_given_up_and_validated_again_is_protected_again() {
    use abi::core_protocol::PvalidateEntry;
    use guest::Transport;
    let mut source = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    guest_fills_pages(&mut source);
    let vmpl = source.world.svsm.guest_vmpl();
    let w = &mut source.world;
    w.svsm.start_dirty_tracking(&mut w.machine).unwrap();
    let gpa = PAGES_AT + 2 * 4096;
    assert!(source.world.client().transport.write(gpa, &pattern(2, 1)).is_err(), "protected");
    let w = &mut source.world;
    assert!(w.svsm.dirty_write_fault(&mut w.machine, gpa, vmpl));
    assert!(w.svsm.dirty_write_fault(&mut w.machine, LIST_AT, vmpl));
    let first = w.svsm.take_dirty(&mut w.machine, 128).unwrap();
    assert!(first.contains(&(gpa / 4096)));
    // Given up and validated again (its list page's write handed on first).
    let w = &mut source.world;
    assert!(w.svsm.dirty_write_fault(&mut w.machine, LIST_AT, vmpl));
    let mut client = source.world.client();
    client.pvalidate(&[PvalidateEntry::new(gpa, false, false, false)], LIST_AT).unwrap();
    client.pvalidate(&[PvalidateEntry::new(gpa, false, true, false)], LIST_AT).unwrap();
    let w = &mut source.world;
    let second = w.svsm.take_dirty(&mut w.machine, 128).unwrap();
    assert!(second.contains(&(gpa / 4096)), "the page the SVSM validated again is in the round");
    assert!(source.world.client().transport.write(gpa, &pattern(2, 2)).is_err(), "and protected again");
    let w = &mut source.world;
    w.svsm.stop_dirty_tracking(&mut w.machine).unwrap();
}

/// A guest that validated a 2 MiB page (as Linux accepts memory where it can) moves
/// too. Dirty tracking protects the 2 MiB RMP entry as one (the RMP refuses a 4 KiB
/// RMPADJUST there); the first write to any of its pages gives all of it back and marks
/// its 512 pages dirty, so a later write to another of its pages, which no longer
/// faults, is not missed. The export says the pages are in a 2 MiB entry, and the
/// destination validates the entry whole. Given up during the rounds, the entry is given
/// up whole on the destination.
#[test]
fn a_2mib_page_is_tracked_and_moved_whole() {
    two_mib_page_on(PlatformKind::Model);
}

/// The same on the snp platform's kernel side.
#[test]
fn a_2mib_page_is_tracked_and_moved_whole_on_the_snp_platform() {
    two_mib_page_on(PlatformKind::Snp);
}

/// The same on the svm platform, whose nested page tables enforce the RMP's answer.
#[test]
fn a_2mib_page_is_tracked_and_moved_whole_on_the_svm_platform() {
    two_mib_page_on(PlatformKind::Svm);
}

fn two_mib_page_on(platform: PlatformKind) {
    use abi::core_protocol::PvalidateEntry;
    use guest::Transport;
    // The world's RAM is 2 MiB RMP entries from 64 MiB on.
    const HUGE_AT: u64 = 64 << 20;
    let page = |i: u64| HUGE_AT + i * 4096;
    let mut source = ModelEnv::with(WorldConfig { vtpm: false, platform, ..ModelEnv::config() });
    let mut destination = ModelEnv::with(WorldConfig { vtpm: false, platform, ..ModelEnv::config() });
    let vmpl = source.world.svsm.guest_vmpl();
    source.world.client().pvalidate(&[PvalidateEntry::new(HUGE_AT, true, true, false)], LIST_AT).unwrap();
    let written = [0u64, 1, 7, 300, 511];
    for i in written {
        source.world.client().transport.write(page(i), &pattern(i, 0)).unwrap();
    }
    on_platform!(source, |svsm, p| svsm.start_dirty_tracking(p)).expect("tracking takes a 2 MiB entry");
    let apply = |destination: &mut ModelEnv, chunk: &[u8]| {
        on_platform!(destination, |svsm, p| svsm.import_memory(p, chunk)).unwrap()
    };
    let read = |env: &mut ModelEnv, i: u64| {
        let mut got = vec![0u8; 4096];
        env.world.client().transport.read(page(i), &mut got).map(|()| got)
    };
    let validated = |env: &ModelEnv| {
        (0..512).filter(|i| env.world.svsm.pages().is_validated(kernel::addr::PageAddr::new(page(*i)).unwrap())).count()
    };

    // Round 1: the destination validates the entry whole and gets its bytes.
    for chunk in export_memory(&mut source) {
        apply(&mut destination, &chunk);
    }
    assert_eq!(validated(&destination), 512);
    for i in written {
        assert!(read(&mut destination, i).unwrap() == pattern(i, 0), "page {i} on the destination");
    }
    assert!(read(&mut destination, 2).unwrap().iter().all(|b| *b == 0), "a page never written is zero");

    // A write to page 7 faults; handed on, the whole entry is writable again.
    assert!(source.world.client().transport.write(page(7), &pattern(7, 1)).is_err(), "the entry is protected");
    assert!(on_platform!(source, |svsm, p| svsm.dirty_write_fault(p, page(7), vmpl)));
    source.world.client().transport.write(page(7), &pattern(7, 1)).expect("the retried write");
    source.world.client().transport.write(page(300), &pattern(300, 1)).expect("no fault on the entry's other pages");

    // Round 2: all 512 pages (page 300's write is in them), protected again.
    let first = HUGE_AT / 4096;
    let dirty = on_platform!(source, |svsm, p| svsm.take_dirty(p, 2048)).unwrap();
    assert_eq!(dirty, (first..first + 512).collect::<Vec<_>>());
    assert!(source.world.client().transport.write(page(9), &pattern(9, 2)).is_err(), "protected again");
    for chunk in dirty.chunks(128) {
        apply(&mut destination, &on_platform!(source, |svsm, p| svsm.export_pages(p, chunk)).unwrap());
    }
    for (i, round) in [(0, 0), (7, 1), (300, 1), (511, 0)] {
        assert!(read(&mut destination, i).unwrap() == pattern(i, round), "page {i} after round 2");
    }

    // A "given up" record for one page of the entry, without the whole-entry flag, is
    // refused and changes nothing: what moved as one entry is not given up in part.
    let mut partial = on_platform!(source, |svsm, p| svsm.export_pages(p, &[first])).unwrap();
    partial[16] = 0;
    partial[17..20].copy_from_slice(&[0xFF; 3]);
    assert_eq!(
        on_platform!(destination, |svsm, p| svsm.import_memory(p, &partial)),
        Err(kernel::migration::MemoryImportError::Platform { gpa: page(0) })
    );
    assert_eq!(validated(&destination), 512);

    // The guest gives the entry up (its list page's write handed on first).
    assert!(on_platform!(source, |svsm, p| svsm.dirty_write_fault(p, LIST_AT, vmpl)));
    source.world.client().pvalidate(&[PvalidateEntry::new(HUGE_AT, true, false, false)], LIST_AT).unwrap();
    let dirty = on_platform!(source, |svsm, p| svsm.take_dirty(p, 2048)).unwrap();
    assert!((first..first + 512).all(|pfn| dirty.contains(&pfn)), "the given-up entry is in the round");
    for chunk in dirty.chunks(128) {
        apply(&mut destination, &on_platform!(source, |svsm, p| svsm.export_pages(p, chunk)).unwrap());
    }
    assert_eq!(validated(&destination), 0, "given up whole on the destination");
    assert!(read(&mut destination, 0).is_err(), "the destination's guest no longer reaches it");
    on_platform!(source, |svsm, p| svsm.stop_dirty_tracking(p)).unwrap();
}

/// A guest that gave a less privileged VMPL write access to a page could change that
/// VMPL's permissions behind the SVSM's back: tracking refuses to start, and takes
/// nothing away.
#[test]
fn tracking_refuses_a_guest_whose_lower_vmpl_may_write() {
    use kernel::platform::Platform;
    let mut source = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    guest_fills_pages(&mut source);
    let vmpl = source.world.svsm.guest_vmpl();
    let page = kernel::addr::PageAddr::new(PAGES_AT).unwrap();
    let all = abi::hw::rmpadjust::PERM_ALL;
    // The guest grants the VMPL below its own (RMPADJUST, as its kernel could).
    source.world.machine.rmpadjust(page, kernel::addr::PageSize::Size4K, vmpl + 1, all, false).unwrap();
    let w = &mut source.world;
    assert_eq!(
        w.svsm.start_dirty_tracking(&mut w.machine),
        Err(kernel::migration::DirtyLogError::LowerVmplWrites { gpa: PAGES_AT })
    );
    for i in 0..PAGE_COUNT {
        let p = kernel::addr::PageAddr::new(PAGES_AT + i * 4096).unwrap();
        assert_eq!(source.world.machine.vmpl_permissions(p, vmpl), Some(all), "page {i} keeps its WRITE");
    }
}

// ---------------------------------------------------------------------------------------
// vCPUs and deposited pages, as the last round moves them.

/// Guest pages for the vCPU test: the new vCPU's VMSA and calling area, the page the
/// startup vCPU moves its calling area to, and the pages it deposits.
const VMSA_AT: u64 = 6 << 20;
const CA_AT: u64 = VMSA_AT + 0x1000;
const MOVED_CA_AT: u64 = VMSA_AT + 0x2000 + 0x100;
const DEPOSIT_AT: u64 = VMSA_AT + 0x10_000;
const DEPOSITED: u64 = 5;
const APIC_ID: u32 = 7;
const RIP: u64 = 0x1234_5678_9000;
const RBX: u64 = 0xB0B0_B0B0;

/// The guest validates `gpas` (SVSM_CORE_PVALIDATE from the startup vCPU at `ca`).
fn guest_validates(env: &mut ModelEnv, ca: u64, gpas: &[u64]) {
    let entries: Vec<_> =
        gpas.iter().map(|g| abi::core_protocol::PvalidateEntry::new(*g, false, true, false)).collect();
    env.world.client_at(kernel::vcpu::VcpuIndex::STARTUP, ca).pvalidate(&entries, LIST_AT).expect("validated");
}

/// A core call from vCPU `vcpu` through its calling area `ca`.
fn core_call(
    env: &mut ModelEnv,
    vcpu: kernel::vcpu::VcpuIndex,
    ca: u64,
    call: u32,
    args: [u64; 2],
) -> abi::result::ResultCode {
    let id = abi::protocol::CallId::new(abi::protocol::ProtocolId::CORE, call);
    let regs = guest::Regs { rax: id.to_rax(), rcx: args[0], rdx: args[1], r8: u64::from(APIC_ID), r9: 0 };
    abi::result::ResultCode::from_rax(env.world.client_at(vcpu, ca).issue(regs).expect("the call completes").rax)
}

/// The source's guest: deposits pages, makes a vCPU (its context from the deposits), and
/// moves its own calling area inside another page.
fn guest_with_a_second_vcpu(platform: PlatformKind) -> ModelEnv {
    let mut env = ModelEnv::with(WorldConfig { vtpm: false, platform, pool_reserve_pages: 0, ..ModelEnv::config() });
    add_a_second_vcpu(&mut env, true);
    env
}

/// The guest deposits `DEPOSITED` pages, makes a vCPU with APIC ID `APIC_ID`, and (with
/// `remap`) moves its own calling area to `MOVED_CA_AT`.
fn add_a_second_vcpu(env: &mut ModelEnv, remap: bool) {
    use abi::core_protocol::DepositEntry;
    use abi::protocol::core_call as call;
    use guest::Transport;
    use kernel::vcpu::VcpuIndex;
    let ca0 = bulwark_model::world::STARTUP_CA_GPA;
    let deposits: Vec<u64> = (0..DEPOSITED).map(|i| DEPOSIT_AT + i * 4096).collect();
    let mut pages = vec![VMSA_AT, CA_AT, MOVED_CA_AT & !0xFFF];
    pages.extend(&deposits);
    guest_validates(env, ca0, &pages);
    let entries: Vec<_> = deposits.iter().map(|g| DepositEntry::new(*g, false)).collect();
    env.world.client().deposit(&entries, LIST_AT).expect("the SVSM takes the deposit");
    let mut vmsa = abi::vmsa::Vmsa::zeroed();
    (vmsa.vmpl, vmsa.efer, vmsa.sev_features) = (1, 0x500, abi::hw::sev_features::SNP_ACTIVE);
    (vmsa.rip, vmsa.rbx) = (RIP, RBX);
    env.world.client().transport.write(VMSA_AT, zerocopy::IntoBytes::as_bytes(&vmsa)).unwrap();
    env.world.client().transport.write(CA_AT + 0x800, b"the guest's own bytes").unwrap();
    assert_eq!(
        core_call(env, VcpuIndex::STARTUP, ca0, call::CREATE_VCPU, [VMSA_AT, CA_AT]),
        abi::result::ResultCode::SUCCESS
    );
    if remap {
        assert_eq!(
            core_call(env, VcpuIndex::STARTUP, ca0, call::REMAP_CA, [MOVED_CA_AT, 0]),
            abi::result::ResultCode::SUCCESS
        );
    }
}

/// Everything the last round moves for the guest: memory, deposits, vCPUs (in order).
fn last_round(source: &mut ModelEnv) -> (Vec<Vec<u8>>, Vec<u8>, Vec<Vec<u8>>) {
    bulwark_model::svm_host::pause(&mut source.world);
    let memory = export_memory(source);
    let deposits = on_platform!(source, |svsm, _p| svsm.export_deposits()).unwrap();
    let vcpus = on_platform!(source, |svsm, p| svsm.export_vcpus(p)).unwrap();
    (memory, deposits, vcpus)
}

/// Issue 16, "every vCPU's state": the guest's second vCPU arrives with its registers,
/// its calling area and the bytes around it; the startup vCPU's moved calling area moves
/// with it; the deposited pages stay the SVSM's and the guest can withdraw the ones the
/// SVSM does not use, as on the source; the new vCPU's calls are served.
fn vcpus_and_deposits_on(platform: PlatformKind) {
    use abi::protocol::core_call as call;
    use guest::Transport;
    use kernel::vcpu::VcpuIndex;
    let mut source = guest_with_a_second_vcpu(platform);
    // A pre-copy round sends a page the guest deposits afterwards: the destination takes
    // it from its guest again.
    let late = DEPOSIT_AT + DEPOSITED * 4096;
    guest_validates(&mut source, MOVED_CA_AT, &[late]);
    let early = export_memory(&mut source);
    let entry = abi::core_protocol::DepositEntry::new(late, false);
    source.world.client_at(VcpuIndex::STARTUP, MOVED_CA_AT).deposit(&[entry], LIST_AT).expect("deposited");
    let on_source = source.world.vcpu_by_apic_id(APIC_ID).expect("the source runs the vCPU");
    assert_eq!(
        core_call(&mut source, on_source, CA_AT, call::QUERY_PROTOCOL, [1 << 32 | 1, 0]),
        abi::result::ResultCode::SUCCESS
    );
    let (memory, deposits, mut vcpus) = last_round(&mut source);
    assert_eq!(vcpus.len(), 2, "the startup vCPU and the new one");
    bulwark_model::svm_host::resume(&mut source.world);
    // A single-step #DB an exit cut short was due on its next entry, and its SSE control
    // was not the reset one: both travel in the VMSA image (on svm they live outside the
    // VMSA page, and CREATE_VCPU alone would leave them at reset).
    const DB: u64 = 1 | 3 << 8 | 1 << 31;
    const MXCSR: u32 = 0x1FA0;
    let image_at = vcpus[1].len() - 4096;
    let mut sent = <abi::vmsa::Vmsa as zerocopy::FromBytes>::read_from_bytes(&vcpus[1][image_at..]).unwrap();
    (sent.event_inj, sent.mxcsr) = (DB, MXCSR);
    vcpus[1][image_at..].copy_from_slice(zerocopy::IntoBytes::as_bytes(&sent));

    // The destination's guest waits until everything has arrived.
    let mut destination =
        ModelEnv::with(WorldConfig { vtpm: false, platform, pool_reserve_pages: 0, ..ModelEnv::config() });
    bulwark_model::svm_host::pause(&mut destination.world);
    for chunk in early.iter().chain(&memory) {
        on_platform!(destination, |svsm, p| svsm.import_memory(p, chunk)).unwrap();
    }
    // The startup vCPU, the deposits, then the other vCPUs (their SVSM pages come from
    // the pool).
    on_platform!(destination, |svsm, p| svsm.import_startup_vcpu(p, &vcpus[0])).unwrap();
    assert_eq!(on_platform!(destination, |svsm, p| svsm.import_deposits(p, &deposits)), Ok(DEPOSITED + 1));
    on_platform!(destination, |svsm, p| svsm.import_vcpu(p, &vcpus[1])).unwrap();

    let index = destination.world.svsm.vcpus().find_by_apic_id(APIC_ID).expect("the destination has the vCPU");
    let vcpu = destination.world.svsm.vcpus().get(index).unwrap();
    assert_eq!((vcpu.vmsa.raw(), vcpu.calling_area.0, vcpu.creator_vmpl), (VMSA_AT, CA_AT, 1));
    let registers = on_platform!(destination, |_svsm, p| {
        let mut image = [0u8; 4096];
        kernel::platform::Platform::vmsa_image(&*p, vcpu.vmsa, &mut image).map(|()| image)
    })
    .expect("the VMSA's state");
    let state = <abi::vmsa::Vmsa as zerocopy::FromBytes>::read_from_bytes(&registers).unwrap();
    // As the source had them: on svm its call moved RIP past the VMMCALL.
    let sent = <abi::vmsa::Vmsa as zerocopy::FromBytes>::read_from_bytes(&vcpus[1][vcpus[1].len() - 4096..]).unwrap();
    assert!(sent.rip == RIP || sent.rip == RIP + 3, "the source's RIP {:#x}", sent.rip);
    assert_eq!((state.rip, state.rbx, state.vmpl), (sent.rip, RBX, 1), "the registers arrived");
    assert_eq!((state.event_inj, state.mxcsr), (DB, MXCSR), "with the event due and the SSE state");
    bulwark_model::svm_host::resume(&mut destination.world);
    assert_eq!(destination.world.vcpu_by_apic_id(APIC_ID), Some(index), "the destination runs the vCPU");
    assert!(destination.world.client().transport.write(VMSA_AT, &[0]).is_err(), "the VMSA is out of the guest's reach");
    let mut area = vec![0u8; 32];
    destination.world.client().transport.read(CA_AT + 0x800, &mut area).unwrap();
    assert_eq!(&area[..21], b"the guest's own bytes");
    assert_eq!(
        core_call(&mut destination, index, CA_AT, call::QUERY_PROTOCOL, [1 << 32 | 1, 0]),
        abi::result::ResultCode::SUCCESS
    );
    let startup = destination.world.svsm.vcpus().startup().unwrap();
    assert_eq!(startup.calling_area.0, MOVED_CA_AT, "the startup vCPU's calling area moved with it");
    bulwark_model::svm_host::pause(&mut destination.world);
    let restored = on_platform!(destination, |_svsm, p| {
        let mut image = [0u8; 4096];
        kernel::platform::Platform::vmsa_image(&*p, startup.vmsa, &mut image).map(|()| image)
    })
    .unwrap();
    bulwark_model::svm_host::resume(&mut destination.world);
    let sent = &vcpus[0][vcpus[0].len() - 4096..];
    let launched = <abi::vmsa::Vmsa as zerocopy::FromBytes>::read_from_bytes(sent).unwrap();
    assert_ne!(launched.rcx, 0, "the source's startup vCPU holds its last call's registers");
    assert!(restored[..] == *sent, "the startup vCPU runs on with the source's state");

    // The deposits: the SVSM's, and what the guest can withdraw is what it could withdraw
    // on the source.
    let (theirs, ours) = (source.world.svsm.pool_stats(), destination.world.svsm.pool_stats());
    assert_eq!((ours.deposited_total, ours.deposited_free), (theirs.deposited_total, theirs.deposited_free));
    assert!(destination.world.client_at(VcpuIndex::STARTUP, MOVED_CA_AT).transport.write(DEPOSIT_AT, &[0]).is_err());
    let withdraw = |env: &mut ModelEnv| {
        let mut out = [0u64; 8];
        let n = env.world.client_at(VcpuIndex::STARTUP, MOVED_CA_AT).withdraw(LIST_AT, &mut out).expect("withdrawn");
        out[..n].to_vec()
    };
    let from_source = withdraw(&mut source);
    assert_eq!(from_source.len(), (DEPOSITED + 1 - kernel::svsm::VCPU_CONTEXT_PAGES as u64) as usize);
    assert!(from_source.contains(&late));
    assert_eq!(withdraw(&mut destination), from_source, "the same pages come back");
    assert!(destination.world.machine.violations().is_empty(), "{:?}", destination.world.machine.violations());
}

#[test]
fn vcpus_and_deposits_arrive_with_their_state() {
    vcpus_and_deposits_on(PlatformKind::Model);
}

#[test]
fn vcpus_and_deposits_arrive_with_their_state_on_snp() {
    vcpus_and_deposits_on(PlatformKind::Snp);
}

#[test]
fn vcpus_and_deposits_arrive_with_their_state_on_svm() {
    vcpus_and_deposits_on(PlatformKind::Svm);
}

/// A destination made as for the vCPU test, with the source's memory in it.
fn destination_with_memory(memory: &[Vec<u8>]) -> ModelEnv {
    let mut destination = ModelEnv::with(WorldConfig { vtpm: false, pool_reserve_pages: 0, ..ModelEnv::config() });
    for chunk in memory {
        let w = &mut destination.world;
        bulwark_model::heap::in_svsm(|| w.svsm.import_memory(&mut w.machine, chunk)).unwrap();
    }
    destination
}

/// The records come from an attested SVSM over an authenticated channel, and are parsed
/// as hostile input all the same: a cut or padded record, a startup vCPU of another
/// launch, a VMSA in the SVSM's own memory or more privileged than its creator, a second
/// vCPU for one APIC ID, deposits naming the guest's own memory. Each is refused with
/// its reason, and a refused deposit changes nothing.
#[test]
fn hostile_vcpu_and_deposit_records_are_refused() {
    use guest::Transport;
    use kernel::migration::VcpuImportError as E;
    let mut source = guest_with_a_second_vcpu(PlatformKind::Model);
    let (memory, deposits, vcpus) = last_round(&mut source);
    let mut d = destination_with_memory(&memory);
    let import = |env: &mut ModelEnv, record: &[u8]| {
        let w = &mut env.world;
        bulwark_model::heap::in_svsm(|| w.svsm.import_vcpu(&mut w.machine, record))
    };
    let import_startup = |env: &mut ModelEnv, record: &[u8]| {
        let w = &mut env.world;
        bulwark_model::heap::in_svsm(|| w.svsm.import_startup_vcpu(&mut w.machine, record))
    };
    let with = |record: &[u8], at: usize, bytes: &[u8]| {
        let mut r = record.to_vec();
        r[at..at + bytes.len()].copy_from_slice(bytes);
        r
    };
    let second = &vcpus[1];
    let image = second.len() - 4096;

    // Deposits naming a page the SVSM holds (its own region) are refused before any page
    // changes. (A guest page already validated is taken: a pre-copy round sent it before
    // the guest deposited it.)
    let guest_page = d.world.svsm.pages().svsm_region().start().raw();
    let before = d.world.svsm.pool_stats();
    let w = &mut d.world;
    assert_eq!(
        bulwark_model::heap::in_svsm(|| w
            .svsm
            .import_deposits(&mut w.machine, &with(&deposits, 8, &guest_page.to_be_bytes()))),
        Err(E::NotGuestMemory { gpa: guest_page })
    );
    assert_eq!(d.world.svsm.pool_stats(), before, "nothing was deposited");
    let w = &mut d.world;
    assert_eq!(
        bulwark_model::heap::in_svsm(|| w.svsm.import_deposits(&mut w.machine, &deposits[..deposits.len() - 1])),
        Err(E::Malformed)
    );

    // Overlapping runs: the same pages twice.
    let doubled = [&deposits[..4], &2u32.to_be_bytes(), &deposits[8..20], &deposits[8..20]].concat();
    let w = &mut d.world;
    assert_eq!(bulwark_model::heap::in_svsm(|| w.svsm.import_deposits(&mut w.machine, &doubled)), Err(E::Malformed));
    // The real records go in; the same vCPU twice does not.
    let w = &mut d.world;
    assert_eq!(bulwark_model::heap::in_svsm(|| w.svsm.import_deposits(&mut w.machine, &deposits)), Ok(DEPOSITED));
    let w = &mut d.world;
    assert!(
        matches!(
            bulwark_model::heap::in_svsm(|| w.svsm.import_deposits(&mut w.machine, &deposits)),
            Err(E::NotGuestMemory { .. })
        ),
        "deposits taken twice"
    );
    assert_eq!(import(&mut d, &second[..second.len() - 1]), Err(E::Malformed), "cut");
    assert_eq!(import(&mut d, &[second.as_slice(), &[0]].concat()), Err(E::Malformed), "padded");
    assert_eq!(
        import_startup(&mut d, &with(&vcpus[0], 4, &99u32.to_be_bytes())),
        Err(E::StartupMismatch),
        "another APIC ID"
    );
    // The startup vCPU's place holds the startup vCPU, and any other place refuses it.
    assert_eq!(import_startup(&mut d, second), Err(E::StartupMismatch), "another vCPU first");
    let startup_vmsa = bulwark_model::world::STARTUP_VMSA_GPA;
    assert_eq!(import(&mut d, &vcpus[0]), Err(E::NotGuestMemory { gpa: startup_vmsa }), "the startup vCPU later");
    let svsm_page = d.world.svsm.pages().svsm_region().start().raw();
    assert_eq!(
        import(&mut d, &with(second, 9, &svsm_page.to_be_bytes())),
        Err(E::NotGuestMemory { gpa: svsm_page }),
        "a VMSA in the SVSM's region"
    );
    let vmpl_at = image + abi::vmsa::VmsaField::Vmpl.offset();
    assert_eq!(
        import(&mut d, &with(second, vmpl_at, &[0])),
        Err(E::Refused(kernel::error::CallError::InvalidParameter("VMSA.VMPL is 0"))),
        "a VMSA at VMPL0"
    );
    assert!(d.world.svsm.vcpus().find_by_apic_id(APIC_ID).is_none(), "no vCPU from a refused record");

    import_startup(&mut d, &vcpus[0]).unwrap();
    // A creator more privileged than the guest.
    assert_eq!(import(&mut d, &with(second, 8, &[0])), Err(E::Malformed), "creator VMPL0");
    // A VMSA on the startup vCPU's calling area: refused before that page changes.
    let mut area = vec![0u8; 4096];
    d.world
        .client_at(kernel::vcpu::VcpuIndex::STARTUP, MOVED_CA_AT)
        .transport
        .read(MOVED_CA_AT & !0xFFF, &mut area)
        .unwrap();
    let on_area = with(second, 9, &(MOVED_CA_AT & !0xFFF).to_be_bytes());
    assert_eq!(import(&mut d, &on_area), Err(E::NotGuestMemory { gpa: MOVED_CA_AT & !0xFFF }));
    let mut after = vec![0u8; 4096];
    d.world
        .client_at(kernel::vcpu::VcpuIndex::STARTUP, MOVED_CA_AT)
        .transport
        .read(MOVED_CA_AT & !0xFFF, &mut after)
        .unwrap();
    assert!(after == area, "the calling area is untouched");
    import(&mut d, second).unwrap();
    assert_eq!(import(&mut d, second), Err(E::NotGuestMemory { gpa: VMSA_AT }), "its VMSA is one already");
    // Another VMSA and calling area, the same APIC ID.
    let (other_vmsa, other_ca) = (VMSA_AT + 0x20_000, VMSA_AT + 0x21_000);
    let twin = with(&with(second, 9, &other_vmsa.to_be_bytes()), 17, &other_ca.to_be_bytes());
    assert_eq!(
        import(&mut d, &twin),
        Err(E::Refused(kernel::error::CallError::InvalidParameter("APIC ID has a vCPU already")))
    );
    assert!(d.world.machine.violations().is_empty(), "{:?}", d.world.machine.violations());
}

/// Issue 16 on the model, end to end: a running guest with a vTPM, its pages, a second
/// vCPU and deposits moves through an attested session as one state stream. A pre-copy
/// round goes while the guest runs and writes a page (the SVSM tracks the write itself),
/// the last round with the guest stopped; the destination applies the stream as it
/// arrives, in pieces of any size, and the guest finds everything there: its pages with
/// the late write, its vCPU serving calls, its TPM with the same EK and NV data.
#[test]
fn a_running_guest_moves_whole_as_one_stream() {
    use guest::Transport;
    use kernel::migration::stream::{self, Incoming, Item};
    let _turn = turn();
    let mut source = svsm_with_vtpm();
    let ek = source.world.svsm.vtpm_ek().unwrap().to_vec();
    assert_eq!(code(&guest_tpm(&mut source, &nv_define_space(INDEX, DATA.len() as u16))), TPM_RC_SUCCESS);
    assert_eq!(code(&guest_tpm(&mut source, &nv_write(INDEX, 0, &DATA))), TPM_RC_SUCCESS);
    guest_fills_pages(&mut source);
    add_a_second_vcpu(&mut source, false);

    // Round 1, the guest running.
    let vmpl = source.world.svsm.guest_vmpl();
    on_platform!(source, |svsm, p| svsm.start_dirty_tracking(p)).unwrap();
    let mut items = Vec::new();
    for chunk in export_memory(&mut source) {
        stream::frame(&mut items, Item::Memory, &chunk).unwrap();
    }
    let late = PAGES_AT + 2 * 4096;
    assert!(source.world.client().transport.write(late, &pattern(2, 9)).is_err(), "tracked");
    assert!(on_platform!(source, |svsm, p| svsm.dirty_write_fault(p, late, vmpl)));
    source.world.client().transport.write(late, &pattern(2, 9)).expect("the write, retried");
    // The last round, the guest stopped.
    let dirty = on_platform!(source, |svsm, p| svsm.take_dirty(p, 4096)).unwrap();
    assert!(dirty.contains(&(late / 4096)));
    items.extend(on_platform!(source, |svsm, p| svsm.export_last_round(p, &dirty)).unwrap());

    let mut destination = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    let moved = migrate_state(&mut source, &mut destination, &items, None);
    assert_eq!((moved.source, moved.destination), (SourceOutcome::Committed, DestinationOutcome::Completed));
    // The source has stopped: its vTPM (and libtpms) go with it.
    drop(source);

    let mut incoming = Incoming::new();
    for piece in moved.received.chunks(1000) {
        let w = &mut destination.world;
        bulwark_model::heap::in_svsm(|| incoming.take(&w.svsm, &mut w.machine, piece)).unwrap();
    }
    let services = incoming.finish().expect("the whole last round arrived");
    let snapshot = services.vtpm.clone().unwrap();
    let size = abi::vtpm::MAX_COMMAND_SIZE as u32;
    let engine = channel_tpm_resumed(
        move |state| open_when_free(|| LibTpms::resume(size, state.nv.clone(), &state.volatile)),
        &snapshot.state,
    )
    .unwrap();
    let vtpm = Vtpm::resume(Box::new(engine), snapshot.ek_public.clone(), &snapshot.state.nv, None).unwrap();
    let w = &mut destination.world;
    bulwark_model::heap::in_svsm(|| w.svsm.install_vtpm(vtpm));
    bulwark_model::heap::in_svsm(|| services.apply_settings(&w.svsm, &mut w.machine)).unwrap();

    for i in 0..PAGE_COUNT {
        let mut got = vec![0u8; 4096];
        destination.world.client().transport.read(PAGES_AT + i * 4096, &mut got).unwrap();
        assert!(got == pattern(i, if i == 2 { 9 } else { 0 }), "page {i}");
    }
    let index = destination.world.vcpu_by_apic_id(APIC_ID).expect("the second vCPU runs");
    let query = abi::protocol::core_call::QUERY_PROTOCOL;
    assert_eq!(core_call(&mut destination, index, CA_AT, query, [1 << 32 | 1, 0]), abi::result::ResultCode::SUCCESS);
    assert_eq!(destination.world.svsm.vtpm_ek(), Some(&ek[..]), "the same EK");
    let read = guest_tpm(&mut destination, &nv_read(INDEX, 0, DATA.len() as u16));
    assert_eq!(nv_read_result(&read), Some(&DATA[..]), "the NV index holds what the guest wrote");
    assert!(destination.world.machine.violations().is_empty(), "{:?}", destination.world.machine.violations());
}

/// A stream cut anywhere before its last item, or with an item out of order, never
/// completes on the destination.
#[test]
fn a_cut_or_reordered_stream_does_not_finish() {
    use kernel::migration::stream::{self, Incoming, Item, StreamError};
    let mut source = guest_with_a_second_vcpu(PlatformKind::Model);
    let (memory, deposits, vcpus) = last_round(&mut source);
    let services = on_platform!(source, |svsm, p| svsm.export_services(p)).unwrap().encode().unwrap();
    let mut items = Vec::new();
    let mut ends = Vec::new();
    for chunk in &memory {
        stream::frame(&mut items, Item::Memory, chunk).unwrap();
    }
    ends.push(items.len());
    stream::frame(&mut items, Item::Services, &services).unwrap();
    stream::frame(&mut items, Item::Vcpu, &vcpus[0]).unwrap();
    stream::frame(&mut items, Item::Deposits, &deposits).unwrap();
    ends.push(items.len());
    stream::frame(&mut items, Item::Vcpu, &vcpus[1]).unwrap();
    ends.push(items.len());
    stream::frame(&mut items, Item::End, &2u32.to_be_bytes()).unwrap();
    let feed = |bytes: &[u8]| {
        let mut d = ModelEnv::with(WorldConfig { vtpm: false, pool_reserve_pages: 0, ..ModelEnv::config() });
        let mut incoming = Incoming::new();
        let w = &mut d.world;
        let taken = bulwark_model::heap::in_svsm(|| incoming.take(&w.svsm, &mut w.machine, bytes));
        taken.and_then(|()| incoming.finish().map(|_| ()))
    };
    assert_eq!(feed(&items), Ok(()), "the whole stream");
    for cut in ends.iter().copied().chain([items.len() - 1, 3]) {
        assert_eq!(feed(&items[..cut]), Err(StreamError::Malformed), "cut at {cut}");
    }
    // An end that counts another number of vCPUs.
    let mut miscounted = items[..items.len() - 4].to_vec();
    miscounted.extend_from_slice(&1u32.to_be_bytes());
    assert_eq!(feed(&miscounted), Err(StreamError::Malformed));
    // Another vCPU where the startup vCPU belongs (its pages come from the reserve, so
    // the stream needs no deposits to make it), and the startup vCPU twice.
    let mut misplaced = Vec::new();
    for chunk in &memory {
        stream::frame(&mut misplaced, Item::Memory, chunk).unwrap();
    }
    stream::frame(&mut misplaced, Item::Services, &services).unwrap();
    let mut twice = misplaced.clone();
    stream::frame(&mut misplaced, Item::Vcpu, &vcpus[1]).unwrap();
    stream::frame(&mut misplaced, Item::Deposits, &deposits).unwrap();
    stream::frame(&mut misplaced, Item::End, &1u32.to_be_bytes()).unwrap();
    assert!(matches!(feed(&misplaced), Err(StreamError::Vcpu(_))), "another vCPU in the startup vCPU's place");
    stream::frame(&mut twice, Item::Vcpu, &vcpus[0]).unwrap();
    stream::frame(&mut twice, Item::Deposits, &deposits).unwrap();
    stream::frame(&mut twice, Item::Vcpu, &vcpus[0]).unwrap();
    stream::frame(&mut twice, Item::End, &2u32.to_be_bytes()).unwrap();
    assert!(matches!(feed(&twice), Err(StreamError::Vcpu(_))), "the startup vCPU twice");
    // The deposits before the startup vCPU.
    let mut reordered = Vec::new();
    for chunk in &memory {
        stream::frame(&mut reordered, Item::Memory, chunk).unwrap();
    }
    stream::frame(&mut reordered, Item::Services, &services).unwrap();
    stream::frame(&mut reordered, Item::Deposits, &deposits).unwrap();
    assert_eq!(feed(&reordered), Err(StreamError::Malformed));
    // An item longer than any can be is refused at its header.
    assert_eq!(feed(&[1, 0xFF, 0xFF, 0xFF, 0xFF]), Err(StreamError::Malformed));
    assert_eq!(feed(&[9, 0, 0, 0, 0]), Err(StreamError::Malformed), "an unknown kind");
}

/// A model SVSM whose sealed store on `disk` keeps its vTPM: manufactured there on a blank
/// disk, started from what the disk holds otherwise (as the SVSM's boot does).
fn svsm_with_kept_vtpm(disk: &store::testing::SharedDisk, boot: u64) -> ModelEnv {
    let mut env = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    let sealed = destination_store(disk, boot);
    let (kept, storage) = kernel::sealed::VtpmNv::open(sealed.clone());
    assert!(!kept.moved, "this disk's TPM left");
    let size = abi::vtpm::MAX_COMMAND_SIZE as u32;
    let engine = channel_tpm(move |nv| open_when_free(|| LibTpms::open_with_nv(size, nv.clone())), &kept.nv).unwrap();
    let vtpm = Vtpm::start(Box::new(engine), Box::new(storage)).unwrap();
    let w = &mut env.world;
    bulwark_model::heap::in_svsm(|| {
        w.svsm.install_sealed(&mut w.machine, sealed);
        w.svsm.install_vtpm(vtpm);
    });
    env
}

/// A migration's destination takes `snapshot` into its own sealed store on a blank disk,
/// as the new incarnation `incarnation`, as the SVSM's arrival does.
fn arrive_kept(destination: &mut ModelEnv, snapshot: &kernel::migration::VtpmSnapshot, incarnation: [u8; 16]) {
    let disk = store::testing::SharedDisk::new(store::testing::MemDisk::new(64));
    arrive_kept_on(destination, snapshot, incarnation, &disk);
}

/// [`arrive_kept`] onto the store on `disk`.
fn arrive_kept_on(
    destination: &mut ModelEnv,
    snapshot: &kernel::migration::VtpmSnapshot,
    incarnation: [u8; 16],
    disk: &store::testing::SharedDisk,
) {
    // Its own entropy, so a store it formats has not a source's id (seed 1 or 2).
    let sealed = destination_store(disk, 0x100 + u64::from(incarnation[0]));
    let lineage = kernel::vtpm_lineage::Lineage::arrived(&snapshot.lineage, incarnation).unwrap();
    let storage = kernel::sealed::VtpmNv::arriving(sealed.clone(), lineage, snapshot.chain);
    let size = abi::vtpm::MAX_COMMAND_SIZE as u32;
    let engine = channel_tpm_resumed(
        move |state| open_when_free(|| LibTpms::resume(size, state.nv.clone(), &state.volatile)),
        &snapshot.state,
    )
    .unwrap();
    let vtpm = Vtpm::resume(Box::new(engine), snapshot.ek_public.clone(), &snapshot.state.nv, Some(Box::new(storage)))
        .unwrap();
    let w = &mut destination.world;
    bulwark_model::heap::in_svsm(|| {
        w.svsm.install_sealed(&mut w.machine, sealed);
        w.svsm.install_arrived_vtpm(vtpm, lineage);
    });
}

/// The guest's attestation evidence, judged by the relying party's `ledger`: what it said
/// of the vTPM's lineage, and the lineage.
fn judged(
    ledger: &mut attest::ledger::Ledger,
    env: &mut ModelEnv,
) -> (Option<&'static str>, Option<attest::manifest::VtpmLineage>) {
    let e = bulwark_model::attest_demo::obtain_from(env, &[0x4E; 64]).unwrap();
    let mut verdict = attest::verify::examine(&e.into_evidence());
    assert!(verdict.checks.iter().any(|c| c.name == "vtpm_lineage" && c.passed), "{:?}", verdict.checks);
    attest::ledger::judge(ledger, &mut verdict);
    (verdict.ledger.and_then(|l| l.vtpm_outcome), verdict.vtpm_lineage)
}

/// Issue 16, the gap a store alone leaves: a host keeps an old disk image of a migration's
/// source, boots it, and migrates that old TPM to a fresh destination, whose store never
/// saw the TPM and so takes it. The vTPM's lineage in the manifest lets the relying party's
/// ledger see it: the destination that took the TPM honestly is a move, the old image's
/// TPM running again is refused (it moved away), and its copy on a second destination is
/// refused (a second child of one state).
#[test]
fn a_copy_of_a_migrated_tpm_is_refused_by_the_verifiers_ledger() {
    let _turn = turn();
    let mut ledger = attest::ledger::Ledger::default();
    let source_disk = store::testing::SharedDisk::new(store::testing::MemDisk::new(64));
    let mut source = svsm_with_kept_vtpm(&source_disk, 1);
    assert_eq!(code(&guest_tpm(&mut source, &nv_define_space(INDEX, DATA.len() as u16))), TPM_RC_SUCCESS);
    let old_image = source_disk.image();
    assert_eq!(code(&guest_tpm(&mut source, &nv_write(INDEX, 0, &DATA))), TPM_RC_SUCCESS);
    let (outcome, lineage) = judged(&mut ledger, &mut source);
    let home = lineage.unwrap();
    assert_eq!(outcome, Some("first_seen"));
    assert!(home.kept && home.parent().is_none(), "{home:?}");

    // The honest migration: the source gives its TPM up, the destination takes it as a
    // new incarnation one version above where it left.
    let w = &mut source.world;
    let state = bulwark_model::heap::in_svsm(|| w.svsm.export_services(&w.machine)).unwrap().encode().unwrap();
    let mut first = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    let moved = migrate_state(&mut source, &mut first, &state, None);
    assert_eq!((moved.source, moved.destination), (SourceOutcome::Committed, DestinationOutcome::Completed));
    assert_eq!(source.world.svsm.vtpm_moved_away(|| false), Ok(true));
    drop(source);
    let snapshot = ServiceState::decode(&moved.received).unwrap().vtpm.unwrap();
    assert_eq!(
        (snapshot.lineage.version, snapshot.lineage.incarnation, snapshot.kept),
        (home.version, home.incarnation, true)
    );
    arrive_kept(&mut first, &snapshot, [0xD1; 16]);
    let (outcome, lineage) = judged(&mut ledger, &mut first);
    assert_eq!(outcome, Some("moved"));
    let there = lineage.unwrap();
    let parent = there.parent().map(|p| (p.incarnation, p.left_at));
    assert_eq!((there.incarnation, parent), ([0xD1; 16], Some((home.incarnation, home.version))));
    assert_eq!(there.version, home.version + 1);
    assert_eq!(code(&guest_tpm(&mut first, &nv_write(INDEX, 0, &[0x77; 16]))), TPM_RC_SUCCESS);
    let (outcome, lineage) = judged(&mut ledger, &mut first);
    assert_eq!((outcome, lineage.map(|l| l.version)), (Some("newer"), Some(there.version + 1)), "its commits count on");
    drop(first);

    // The host boots the source's old disk image: no tombstone there, so its TPM starts.
    let restored_disk = store::testing::SharedDisk::new(store::testing::MemDisk::from_image(old_image));
    let mut restored = svsm_with_kept_vtpm(&restored_disk, 2);
    let (outcome, lineage) = judged(&mut ledger, &mut restored);
    assert_eq!(lineage.map(|l| l.incarnation), Some(home.incarnation));
    assert_eq!(outcome, Some("moved_away"), "the incarnation that moved on runs again: a copy");

    // ... and migrates it to a fresh destination, which cannot know and takes it.
    let w = &mut restored.world;
    let state = bulwark_model::heap::in_svsm(|| w.svsm.export_services(&w.machine)).unwrap().encode().unwrap();
    let mut second = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    let moved = migrate_state(&mut restored, &mut second, &state, None);
    assert_eq!((moved.source, moved.destination), (SourceOutcome::Committed, DestinationOutcome::Completed));
    drop(restored);
    let snapshot = ServiceState::decode(&moved.received).unwrap().vtpm.unwrap();
    arrive_kept(&mut second, &snapshot, [0xD2; 16]);
    let before = ledger.clone();
    let (outcome, _) = judged(&mut ledger, &mut second);
    assert_eq!(outcome, Some("fork"), "a second incarnation taken from the same parent");
    assert_eq!(ledger.vtpms(), before.vtpms(), "a refused lineage teaches the ledger nothing");
}

/// The attack the lineage's versions alone cannot see: an old disk image of the source,
/// its vTPM's version raised by writes the relying party never saw, migrated to a fresh
/// destination before anyone attests it, while the source itself never moved. The
/// lineage takes the move (the version passed the newest accepted); the attestation chain,
/// which moves with the vTPM, refuses it: the image never saw the attestation accepted
/// after it was copied.
#[test]
fn an_old_image_raised_and_migrated_is_refused_by_the_chain_it_carries() {
    let _turn = turn();
    let judged = |ledger: &mut attest::ledger::Ledger, env: &mut ModelEnv, nonce: u8| {
        let (passed, outcome, tpm, _) = ledger_outcomes(ledger, env, nonce);
        (passed, outcome, tpm)
    };
    let mut ledger = attest::ledger::Ledger::default();
    let disk = store::testing::SharedDisk::new(store::testing::MemDisk::new(64));
    let mut source = svsm_with_kept_vtpm(&disk, 1);
    assert_eq!(code(&guest_tpm(&mut source, &nv_define_space(INDEX, DATA.len() as u16))), TPM_RC_SUCCESS);
    assert_eq!(judged(&mut ledger, &mut source, 1), (true, Some("first_seen"), Some("first_seen")));
    let old_image = disk.image();
    assert_eq!(code(&guest_tpm(&mut source, &nv_write(INDEX, 0, &DATA))), TPM_RC_SUCCESS);
    assert_eq!(judged(&mut ledger, &mut source, 2), (true, Some("newer"), Some("newer")));
    drop(source);

    // The old image: booted, written to until its version passes, migrated unseen.
    let copy = store::testing::SharedDisk::new(store::testing::MemDisk::from_image(old_image));
    let mut old = svsm_with_kept_vtpm(&copy, 2);
    for byte in 0..6u8 {
        assert_eq!(code(&guest_tpm(&mut old, &nv_write(INDEX, 0, &[byte; 16]))), TPM_RC_SUCCESS);
    }
    let w = &mut old.world;
    let state = bulwark_model::heap::in_svsm(|| w.svsm.export_services(&w.machine)).unwrap().encode().unwrap();
    let mut fresh = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    let moved = migrate_state(&mut old, &mut fresh, &state, None);
    assert_eq!((moved.source, moved.destination), (SourceOutcome::Committed, DestinationOutcome::Completed));
    drop(old);
    let snapshot = ServiceState::decode(&moved.received).unwrap().vtpm.unwrap();
    assert!(snapshot.chain.is_some(), "the source's chain travels with its vTPM");
    arrive_kept(&mut fresh, &snapshot, [0xD3; 16]);
    assert_eq!(judged(&mut ledger, &mut fresh, 3), (false, Some("diverged"), Some("moved")));
}

/// Another VM's TPM migrated onto an old image of a store the verifier knows: the image
/// from before the store's own vTPM existed (its id, an early generation), raised past
/// the generation accepted. The TPM's lineage is a genuine move and its chain genuine,
/// but not this store's: the store's chain value refuses it (`diverged`), as
/// docs/persistence.md "The chain moves with the vTPM" argues.
#[test]
fn another_vms_tpm_moved_onto_an_old_image_of_a_known_store_is_refused_by_the_stores_chain() {
    let _turn = turn();
    let judged = ledger_outcomes;
    let mut ledger = attest::ledger::Ledger::default();
    // VM A's store, imaged after its format and before its vTPM was made; then A runs
    // and is attested twice.
    let disk_a = store::testing::SharedDisk::new(store::testing::MemDisk::new(64));
    drop(destination_store(&disk_a, 1));
    let before_its_tpm = disk_a.image();
    let mut a = svsm_with_kept_vtpm(&disk_a, 1);
    let (passed, outcome, tpm, shown) = judged(&mut ledger, &mut a, 1);
    assert_eq!((passed, outcome, tpm), (true, Some("first_seen"), Some("first_seen")));
    let (passed, _, _, shown_a) = judged(&mut ledger, &mut a, 2);
    assert!(passed);
    let (store_a, accepted) = shown_a.unwrap();
    assert_eq!(shown.map(|s| s.0), Some(store_a));
    drop(a);

    // VM B, on a store of its own, attested once: its TPM and chain are genuine.
    let disk_b = store::testing::SharedDisk::new(store::testing::MemDisk::new(64));
    let mut b = svsm_with_kept_vtpm(&disk_b, 2);
    assert_eq!(code(&guest_tpm(&mut b, &nv_define_space(INDEX, DATA.len() as u16))), TPM_RC_SUCCESS);
    let (passed, _, tpm, _) = judged(&mut ledger, &mut b, 3);
    assert_eq!((passed, tpm), (true, Some("first_seen")));
    let w = &mut b.world;
    let state = bulwark_model::heap::in_svsm(|| w.svsm.export_services(&w.machine)).unwrap().encode().unwrap();
    let mut destination = ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() });
    let moved = migrate_state(&mut b, &mut destination, &state, None);
    assert_eq!((moved.source, moved.destination), (SourceOutcome::Committed, DestinationOutcome::Completed));
    drop(b);
    let snapshot = ServiceState::decode(&moved.received).unwrap().vtpm.unwrap();

    // The destination's disk is A's old image; writes raise its generation past A's.
    let image = store::testing::SharedDisk::new(store::testing::MemDisk::from_image(before_its_tpm));
    arrive_kept_on(&mut destination, &snapshot, [0xB7; 16], &image);
    for byte in 0..(accepted as u8 + 2) {
        assert_eq!(code(&guest_tpm(&mut destination, &nv_write(INDEX, 0, &[byte; 16]))), TPM_RC_SUCCESS);
    }
    let (passed, outcome, tpm, shown) = judged(&mut ledger, &mut destination, 4);
    let (store, generation) = shown.unwrap();
    assert_eq!(store, store_a, "the evidence shows A's store");
    assert!(generation > accepted, "raised past the generation accepted ({generation} > {accepted})");
    assert_eq!(
        (passed, outcome, tpm),
        (false, Some("diverged"), Some("moved")),
        "B's TPM moved genuinely, onto the wrong store"
    );
}

/// Whether evidence passed, the store's and the vTPM's ledger outcomes, and the sealed
/// state it showed (store id, generation).
type Outcomes = (bool, Option<&'static str>, Option<&'static str>, Option<([u8; 16], u64)>);

/// The guest's attestation evidence (nonce bytes `nonce`) judged by the relying party's
/// `ledger`: whether it passed, the store's and the vTPM's outcomes, and the sealed state
/// it showed (store id, generation).
fn ledger_outcomes(ledger: &mut attest::ledger::Ledger, env: &mut ModelEnv, nonce: u8) -> Outcomes {
    let e = bulwark_model::attest_demo::obtain_from(env, &[nonce; 64]).unwrap();
    let mut verdict = attest::verify::examine(&e.into_evidence());
    attest::ledger::judge(ledger, &mut verdict);
    let l = verdict.ledger.unwrap();
    (verdict.passed, l.outcome, l.vtpm_outcome, verdict.sealed_state.map(|s| (s.store_id, s.generation)))
}
