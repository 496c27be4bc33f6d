//! Live migration on a heap that runs out: a failure for memory ends the migration with an
//! error (the source runs on, the destination refuses), never an abort of the SVSM. The
//! host, the relay and (before it is attested) the peer choose when a migration starts and
//! what arrives, and a guest can fill the SVSM's heap beforehand.
//!
//! The counting allocator gives SVSM code a limit ([`heap::leave_room`]); an allocation on
//! these paths that could not fail gracefully aborts this test binary.

use bulwark_model::conformance_env::ModelEnv;
use bulwark_model::heap::{self, CountingHeap};
use bulwark_model::world::WorldConfig;
use kernel::migration::stream::{self, Incoming, Item, StreamError};
use kernel::migration::{ServiceState, VtpmSnapshot};
use migrate::evidence::{MAX_CERTIFICATE_LEN, ReportVerifier, VERIFY_HEAP};
use migrate::session::{
    self, Aes, Config, Destination, DestinationOutcome, DestinationPhase, EvidenceError, EvidenceProvider,
    MigrationError, PeerIdentity, PeerVerifier, REPORT_DATA_LEN, Source, SourceOutcome, VerifyError,
};
use migrate::testing::Relay;
use vtpm::nv::{NvChange, NvError, NvStorage};
use vtpm::{NvBlobs, TpmEngine, TpmState, Vtpm};

#[global_allocator]
static HEAP: CountingHeap = CountingHeap;

/// A model SVSM's own evidence, as the SVSM makes it (its PSP's report, the host's table).
struct SvsmEvidence<'a>(&'a mut ModelEnv);

impl EvidenceProvider for SvsmEvidence<'_> {
    fn evidence(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, EvidenceError> {
        let w = &mut self.0.world;
        let (report, table) =
            heap::as_host(|| w.svsm.migration_evidence(&mut w.machine, report_data)).map_err(|_| EvidenceError)?;
        migrate::evidence::encode(&report, &table).ok_or(EvidenceError)
    }
}

/// What the SVSM code of this thread may still take from the heap.
fn heap_free() -> usize {
    heap::usage().map_or(usize::MAX, |u| u.size.saturating_sub(u.used) as usize)
}

/// The verifier the SVSM runs, trusting the model's authority, and checking the heap.
fn verifier() -> ReportVerifier {
    let ark = attest::chain::TestAuthority::shared().ark_der();
    ReportVerifier::new(vec![ReportVerifier::root_of(ark).expect("the authority's ARK")]).with_heap_check(heap_free)
}

fn identity() -> PeerIdentity {
    let id = bulwark_model::psp_model::identity();
    PeerIdentity { measurement: id.measurement, policy: id.policy }
}

fn model() -> ModelEnv {
    ModelEnv::with(WorldConfig { vtpm: false, ..ModelEnv::config() })
}

/// A report of the model's PSP with REPORT_DATA `data`, and the host's certificate table.
fn report_and_table(data: &[u8; 64]) -> (Vec<u8>, Vec<u8>) {
    let mut env = model();
    let w = &mut env.world;
    heap::as_host(|| w.svsm.migration_evidence(&mut w.machine, data)).expect("a report")
}

/// What a certificate is stuffed with.
#[derive(Clone, Copy, Debug)]
enum Stuffing {
    /// Empty extensions, each with an OID of its own.
    Extensions,
    /// One-attribute RDNs in the subject.
    Names,
}

/// `certificate` (DER) grown with the smallest objects the parser makes on the heap, as
/// far as the check still parses it ([`MAX_CERTIFICATE_LEN`] bytes,
/// [`migrate::evidence::MAX_CERTIFICATE_ELEMENTS`] elements): the most it makes for a
/// certificate it reads.
fn stuffed(certificate: &[u8], stuffing: Stuffing) -> Vec<u8> {
    use x509_cert::attr::AttributeTypeAndValue;
    use x509_cert::der::asn1::{Any, OctetString, SetOfVec};
    use x509_cert::der::oid::ObjectIdentifier;
    use x509_cert::der::{Decode, Encode, Tag};
    use x509_cert::name::RelativeDistinguishedName;
    let mut cert = x509_cert::Certificate::from_der(certificate).expect("a certificate");
    for n in 0.. {
        let tbs = &mut cert.tbs_certificate;
        match stuffing {
            Stuffing::Extensions => {
                let extn_id = ObjectIdentifier::new(&format!("1.3.6.1.4.1.99999.{n}")).expect("an OID");
                let extn_value = OctetString::new(vec![]).unwrap();
                tbs.extensions.get_or_insert_with(Vec::new).push(x509_cert::ext::Extension {
                    extn_id,
                    critical: false,
                    extn_value,
                });
            }
            Stuffing::Names => {
                let oid = ObjectIdentifier::new("2.5.4.3").unwrap();
                let value = Any::new(Tag::Utf8String, vec![b'a']).unwrap();
                let rdn = SetOfVec::try_from(vec![AttributeTypeAndValue { oid, value }]).unwrap();
                tbs.subject.0.push(RelativeDistinguishedName(rdn));
            }
        }
        if ReportVerifier::root_of(&cert.to_der().unwrap()).is_none() {
            let tbs = &mut cert.tbs_certificate;
            match stuffing {
                Stuffing::Extensions => drop(tbs.extensions.as_mut().unwrap().pop()),
                Stuffing::Names => drop(tbs.subject.0.pop()),
            }
            break;
        }
    }
    cert.to_der().unwrap()
}

/// The peer's evidence is checked in at most [`VERIFY_HEAP`]: real evidence, and evidence
/// whose three certificates are as large, and as full of objects, as the check reads.
#[test]
fn a_peers_evidence_is_checked_within_verify_heap() {
    let data = [0x42; 64];
    let (report, table) = report_and_table(&data);
    let (ok, peak) = heap::peak_of(|| {
        heap::in_svsm(|| verifier().verify(&migrate::evidence::encode(&report, &table).unwrap(), &data))
    });
    assert_eq!(ok, Ok(identity()));
    assert!(peak <= VERIFY_HEAP, "real evidence took {peak} bytes");

    let entries = attest::cert_table::decode(&table).expect("the model's table");
    for stuffing in [Stuffing::Extensions, Stuffing::Names] {
        let stuffed: Vec<_> = entries.iter().map(|e| (e.guid, stuffed(&e.data, stuffing))).collect();
        let refs: Vec<_> = stuffed.iter().map(|(guid, der)| (guid, &der[..])).collect();
        let evidence = migrate::evidence::encode(&report, &attest::cert_table::encode(&refs).unwrap()).unwrap();
        assert!(evidence.len() <= migrate::session::MAX_EVIDENCE_LEN, "{} bytes", evidence.len());
        let (refused, peak) = heap::peak_of(|| heap::in_svsm(|| verifier().verify(&evidence, &data)));
        // Parsed whole, then refused: the signatures do not cover the stuffed certificates.
        assert_eq!(refused, Err(VerifyError::Untrusted), "{stuffing:?}");
        assert!(peak <= VERIFY_HEAP, "evidence stuffed with {stuffing:?} took {peak} bytes");
    }

    // A certificate of the longest length is parsed; one a byte longer is not.
    let vcek = &entries.iter().find(|e| e.guid == abi::attest::cert_table::VCEK).expect("a VCEK").data;
    assert!(ReportVerifier::root_of(&grown(vcek, MAX_CERTIFICATE_LEN)).is_some());
    assert!(ReportVerifier::root_of(&grown(vcek, MAX_CERTIFICATE_LEN + 1)).is_none());
}

/// `certificate` (DER) grown to `len` bytes by one extension of its own.
fn grown(certificate: &[u8], len: usize) -> Vec<u8> {
    use x509_cert::der::asn1::OctetString;
    use x509_cert::der::oid::ObjectIdentifier;
    use x509_cert::der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(certificate).expect("a certificate");
    let extn_id = ObjectIdentifier::new("1.3.6.1.4.1.99999.1").unwrap();
    let with = |n: usize| {
        let mut cert = cert.clone();
        let extn_value = OctetString::new(vec![0; n]).unwrap();
        let extension = x509_cert::ext::Extension { extn_id, critical: false, extn_value };
        cert.tbs_certificate.extensions.get_or_insert_with(Vec::new).push(extension);
        cert.to_der().unwrap()
    };
    let grown = (len.saturating_sub(certificate.len() + 32)..len).map(with).find(|der| der.len() == len);
    grown.expect("a length the encoding reaches")
}

/// With less than [`VERIFY_HEAP`] free, the check refuses to start (the parser's
/// allocations cannot fail gracefully); with that much, it accepts the same evidence.
#[test]
fn a_full_heap_refuses_to_check_a_peers_evidence() {
    let data = [0x17; 64];
    let (report, table) = report_and_table(&data);
    let evidence = migrate::evidence::encode(&report, &table).unwrap();
    let verifier = verifier();
    for room in [0, 4096, VERIFY_HEAP - 1] {
        heap::leave_room(room);
        let answer = heap::in_svsm(|| verifier.verify(&evidence, &data));
        heap::reset_limit();
        assert_eq!(answer, Err(VerifyError::OutOfMemory), "{room} bytes free");
    }
    heap::leave_room(VERIFY_HEAP);
    let answer = heap::in_svsm(|| verifier.verify(&evidence, &data));
    heap::reset_limit();
    assert_eq!(answer, Ok(identity()));
}

/// The vTPM part of a service state: a large NV blob and volatile state.
fn services() -> ServiceState {
    let mut nv = NvBlobs::new();
    nv.insert(b"permall".to_vec(), vec![0x5A; 96 * 1024]);
    let lineage = kernel::vtpm_lineage::Lineage::manufactured(b"ek", 0);
    let state = TpmState { nv, volatile: vec![0xA5; 24 * 1024] };
    let vtpm = VtpmSnapshot { ek_public: vec![1; 300], state, kept: false, lineage, chain: None };
    ServiceState { vtpm: Some(vtpm), settings: vec![] }
}

/// A migration session from a model source to a model destination over the test relay,
/// carrying `stream`. Once the destination is attested and receiving, the heap it may
/// still take is `room`; it takes in the stream as the SVSM does (`Incoming`). The
/// source is another machine: its allocations are not counted.
fn migrate_with_room(stream: &[u8], room: usize) -> (SourceOutcome, DestinationOutcome, Result<(), StreamError>) {
    // The destination's SVSM makes evidence in one world and takes the stream in another
    // (the evidence provider holds the first).
    let (mut source_env, mut destination_env, mut target) = (model(), model(), model());
    let config = Config { identity: identity(), ring_pages: None, aes: Aes::Portable };
    let entropy = |seed: u8| {
        move |buf: &mut [u8]| -> Result<(), migrate::EntropyError> {
            buf.iter_mut().enumerate().for_each(|(i, b)| *b = (i as u8).wrapping_mul(31).wrapping_add(seed));
            Ok(())
        }
    };
    let (mut relay, mut source_channel, mut destination_channel) = Relay::connect(None);
    let mut src = Source::start(config, verifier(), SvsmEvidence(&mut source_env), &mut entropy(1)).unwrap();
    let mut dst = Destination::start(config, verifier(), SvsmEvidence(&mut destination_env), &mut entropy(2)).unwrap();
    let mut incoming = Incoming::new();
    let mut applied = Ok(());
    let (mut chunks, mut committed, mut limited, mut idle) = (stream.chunks(16 * 1024), false, false, 0);
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
        if !limited && dst.phase() == DestinationPhase::Transfer {
            heap::leave_room(room);
            limited = true;
        }
        progress |= heap::in_svsm(|| session::pump(&mut dst, &mut destination_channel)).unwrap_or(true);
        while let Some(chunk) = heap::in_svsm(|| dst.take_state()) {
            let w = &mut target.world;
            if applied.is_ok() {
                applied = heap::in_svsm(|| incoming.take(&w.svsm, &mut w.machine, &chunk));
                // As the SVSM does: a stream it cannot take ends the session.
                if applied.is_err() {
                    heap::in_svsm(|| dst.abort(session::AbortReason::INTERNAL)).unwrap();
                }
            }
            heap::in_svsm(|| drop(chunk));
        }
        progress |= relay.pump();
        idle = if progress { 0 } else { idle + 1 };
        if idle == 1 {
            relay.hang_up();
        }
    }
    let outcome = (src.outcome(), dst.outcome(), applied);
    // What the destination holds goes back to the heap it came from.
    heap::in_svsm(|| drop((dst, incoming)));
    heap::reset_limit();
    outcome
}

/// A destination with no heap left for the state refuses it: its session fails for
/// memory (reassembling a frame, opening a record, keeping a chunk or an item), and the
/// source, which never got the COMMIT_ACK, runs on. With room, the same stream arrives.
#[test]
fn a_destination_out_of_heap_refuses_the_state_and_the_source_runs_on() {
    let encoded = services().encode().unwrap();
    let mut stream = Vec::new();
    stream::frame(&mut stream, Item::Services, &encoded).unwrap();
    let mut refused = 0;
    for room in [0, 64, 2048, 8 * 1024, 40 * 1024, 100 * 1024, 200 * 1024, 320 * 1024, 4 << 20] {
        let (source, destination, applied) = migrate_with_room(&stream, room);
        match destination {
            DestinationOutcome::Completed => {
                assert_eq!(source, SourceOutcome::Committed, "{room} bytes");
                assert_eq!(applied, Ok(()), "{room} bytes");
            }
            DestinationOutcome::Failed(e) => {
                refused += 1;
                assert!(matches!(source, SourceOutcome::KeepRunning(_)), "{room} bytes: the source {source:?}");
                let for_memory = matches!(
                    e,
                    MigrationError::OutOfMemory | MigrationError::Channel(migrate::channel::ChannelError::OutOfMemory)
                ) || applied == Err(StreamError::OutOfMemory);
                assert!(for_memory, "{room} bytes: failed for {e:?}, the stream {applied:?}");
            }
            DestinationOutcome::InProgress => panic!("{room} bytes: the destination neither completed nor failed"),
        }
    }
    assert!(refused > 0, "no destination ran out of heap: the test shows nothing");
    assert!(matches!(migrate_with_room(&stream, 4 << 20).1, DestinationOutcome::Completed));
}

/// An engine that saves the state it was made with.
struct Saved(TpmState);

impl TpmEngine for Saved {
    fn execute(&mut self, _: &[u8], _: &mut [u8]) -> usize {
        0
    }

    fn save_state(&mut self) -> Result<TpmState, NvError> {
        // The service process's answer: its copy is the engine's, not counted here.
        Ok(heap::as_host(|| self.0.clone()))
    }
}

/// A storage that keeps everything.
struct Kept;

impl NvStorage for Kept {
    fn persist(&mut self, _: &[NvChange]) -> Result<(), NvError> {
        Ok(())
    }
}

/// The destination copies the arriving vTPM's NV blobs to hand them to its storage, when
/// it resumes and when it keeps the TPM in its sealed store after the commit: without heap
/// for the copies each step fails (the commit refused, or the vTPM not kept), and the
/// SVSM goes on.
#[test]
fn a_migrated_vtpm_without_heap_for_its_blobs_fails_to_resume_or_to_be_kept() {
    let state = services().vtpm.unwrap().state;
    let new_engine = || -> Box<dyn TpmEngine> { Box::new(Saved(state.clone())) };
    let (mut resumed, mut kept) = (0, 0);
    for room in [0, 64, 4096, 64 * 1024, 150 * 1024, 1 << 20] {
        let (engine, storage): (_, Box<dyn NvStorage>) = (new_engine(), Box::new(Kept));
        heap::leave_room(room);
        let vtpm = heap::in_svsm(|| Vtpm::resume(engine, vec![], &state.nv, Some(storage)));
        heap::reset_limit();
        match &vtpm {
            Ok(_) => resumed += 1,
            Err(e) => assert_eq!(e.step, "persisting the migrated NV state", "{room} bytes"),
        }
        heap::in_svsm(|| drop(vtpm));

        // Resumed with room; kept with `room`.
        let engine = new_engine();
        let mut vtpm = heap::in_svsm(|| Vtpm::resume(engine, vec![], &state.nv, None)).unwrap();
        let storage: Box<dyn NvStorage> = Box::new(Kept);
        heap::leave_room(room);
        let keep = heap::in_svsm(|| vtpm.keep_in(storage));
        heap::reset_limit();
        match keep {
            Ok(()) => kept += 1,
            Err(e) => assert_eq!(e.step, "keeping the NV state", "{room} bytes"),
        }
        heap::in_svsm(|| drop(vtpm));
    }
    // Some rooms are too small for either, the last is enough for both.
    assert!((1..6).contains(&resumed) && (1..6).contains(&kept), "resumed {resumed} times, kept {kept} times");
}
