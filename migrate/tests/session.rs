//! Whole migrations over the in-memory relay: the state arrives byte for byte, modes are
//! negotiated, peers of another image or policy are refused before any state leaves,
//! evidence that does not bind this session is refused, and either side can abort.

mod common;

use bulwark_migrate::channel::FRAGMENT_PAYLOAD;
use bulwark_migrate::session::{
    AbortReason, Aes, Config, Destination, DestinationOutcome, DestinationPhase, Endpoint, FrameKind,
    MAX_IGNORED_AFTER_ACK, MAX_STATE_CHUNK, MigrationError, Mode, PeerIdentity, PeerVerifier, RecordType, Role, Source,
    SourceOutcome, SourcePhase, VerifyError, report_data,
};
use bulwark_migrate::testing::Direction;
use common::{Attester, IDENTITY, Run, Side, TestVerifier, authority, entropy, migrate, migrate_with, state_bytes};

/// A record's overhead: header (11) and tag (16).
const RECORD_OVERHEAD: usize = 27;

fn kinds(run: &Run, direction: Direction) -> Vec<FrameKind> {
    run.frames(direction).filter_map(|r| r.frame_kind()).collect()
}

fn state_records(run: &Run) -> usize {
    kinds(run, Direction::SourceToDestination).iter().filter(|k| **k == FrameKind::Record(RecordType::State)).count()
}

#[test]
fn a_mebibyte_of_state_arrives_byte_for_byte() {
    let state = state_bytes(1 << 20, 42);
    let started = std::time::Instant::now();
    let run = migrate(&state, 4096, None, Side::new(), Side::new());
    eprintln!("1 MiB in 4 KiB chunks: {} buffers relayed in {:?}", run.log.len(), started.elapsed());
    assert!(run.succeeded(), "{:?} {:?}", run.source, run.destination);
    assert!(run.received == state, "the state differs");
    assert!(run.source_errors.is_empty() && run.destination_errors.is_empty());
    assert!(!run.stalled);
    assert_eq!(state_records(&run), 256);
    assert_eq!(run.source_mode, Some(Mode::Page));
    assert_eq!(
        kinds(&run, Direction::DestinationToSource),
        [
            FrameKind::Hello,
            FrameKind::Evidence,
            FrameKind::Record(RecordType::Ready),
            FrameKind::Record(RecordType::CommitAck),
            FrameKind::Record(RecordType::FinishAck)
        ]
    );
    assert!(run.finish_acknowledged && run.finish_offers == 0, "one FINISH, acknowledged");
    let s2d = kinds(&run, Direction::SourceToDestination);
    assert_eq!(s2d[..2], [FrameKind::Hello, FrameKind::Evidence]);
    assert_eq!(s2d[s2d.len() - 2..], [FrameKind::Record(RecordType::Commit), FrameKind::Record(RecordType::Finish)]);
}

/// The ring mode: after READY the source's buffers take the ring's pages in turn while the
/// destination's stay on the proposal's page (and the FINISH goes back to it); the state
/// arrives byte for byte in as many buffers as in the page mode, in far fewer host round
/// trips (many buffers per wait).
#[test]
fn a_mebibyte_moves_over_the_ring_in_turn() {
    const PAGES: usize = 16;
    let state = state_bytes(1 << 20, 42);
    let page = migrate(&state, MAX_STATE_CHUNK, None, Side::new(), Side::new());
    // The source on AES-NI where the CPU has it, the destination on the portable AES: the
    // choice is each side's own.
    let mut source = Side::with_ring(PAGES as u16);
    if x86::aesni::supported() {
        source.config.aes = Aes::Hardware;
    }
    let ring = migrate(&state, MAX_STATE_CHUNK, None, source, Side::with_ring(PAGES as u16));
    assert!(page.succeeded() && ring.succeeded(), "{:?} {:?}", ring.source, ring.destination);
    assert!(ring.received == state, "the state differs");
    assert!(ring.source_errors.is_empty() && ring.destination_errors.is_empty() && !ring.stalled);
    assert_eq!(ring.source_mode, Some(Mode::Ring { pages: PAGES as u16 }));
    assert_eq!(ring.log.len(), page.log.len());
    let outbound: Vec<_> = ring.frames(Direction::SourceToDestination).collect();
    let first_record = outbound
        .iter()
        .position(|r| r.frame_kind() == Some(FrameKind::Record(RecordType::State)))
        .expect("a STATE record");
    assert!(outbound[..first_record].iter().all(|r| r.slot == 0), "the handshake stays on the page");
    let (finish, records) = outbound[first_record..].split_last().expect("a FINISH");
    for (turn, r) in records.iter().enumerate() {
        assert_eq!(r.slot, turn % PAGES, "buffer {} out of turn", r.index);
    }
    assert_eq!(finish.frame_kind(), Some(FrameKind::Record(RecordType::Finish)));
    assert_eq!(finish.slot, 0, "after the COMMIT, back on the page");
    assert!(ring.frames(Direction::DestinationToSource).all(|r| r.slot == 0));
    eprintln!("1 MiB: {} rounds on the page, {} on a ring of {PAGES}", page.rounds, ring.rounds);
    assert!(ring.rounds * 4 < page.rounds, "{} rounds on the ring, {} on the page", ring.rounds, page.rounds);
}

#[test]
fn chunks_around_the_fragment_sizes() {
    // Records that just fit one buffer, just do not, fill two exactly, and the largest.
    let one = FRAGMENT_PAYLOAD - RECORD_OVERHEAD;
    for chunk in [1, 17, one, one + 1, 2 * FRAGMENT_PAYLOAD - RECORD_OVERHEAD, MAX_STATE_CHUNK] {
        let state = state_bytes(2 * chunk + chunk.div_ceil(2), chunk as u64);
        let run = migrate(&state, chunk, None, Side::new(), Side::new());
        assert!(run.succeeded(), "chunk {chunk}: {:?} {:?}", run.source, run.destination);
        assert_eq!(run.received, state, "chunk {chunk}");
        assert_eq!(state_records(&run), 3, "chunk {chunk}");
    }
}

#[test]
fn no_state_at_all_still_commits() {
    let run = migrate(&[], 1, None, Side::new(), Side::new());
    assert!(run.succeeded());
    assert!(run.received.is_empty());
    assert_eq!(state_records(&run), 0);
}

#[test]
fn the_ring_is_agreed_only_when_both_offer_it() {
    let offer = |pages| {
        let mut side = Side::new();
        side.config.ring_pages = pages;
        side
    };
    for (source, destination, mode) in [
        (Some(8), Some(4), Mode::Ring { pages: 4 }),
        (Some(2), Some(256), Mode::Ring { pages: 2 }),
        (Some(8), None, Mode::Page),
        (None, Some(8), Mode::Page),
        (None, None, Mode::Page),
    ] {
        let run = migrate(b"state", 5, None, offer(source), offer(destination));
        assert!(run.succeeded());
        assert_eq!((run.source_mode, run.destination_mode), (Some(mode), Some(mode)), "{source:?} {destination:?}");
    }
}

#[test]
fn an_offer_outside_the_ring_limits_is_refused() {
    for pages in [0, 1, 257] {
        let mut source = Side::new();
        source.config.ring_pages = Some(pages);
        let run = migrate(b"state", 5, None, source, Side::new());
        assert_eq!(run.destination, DestinationOutcome::Failed(MigrationError::BadModes), "{pages}");
        assert!(matches!(run.source, SourceOutcome::KeepRunning(_)));
    }
}

const OTHER_MEASUREMENT: PeerIdentity = PeerIdentity { measurement: [0x22; 48], ..IDENTITY };
const OTHER_POLICY: PeerIdentity = PeerIdentity { policy: 0x1_0000 | 1 << 19, ..IDENTITY };

/// The source refuses the destination: it sends nothing after its HELLO but an ABORT.
fn assert_destination_refused(run: &Run, error: MigrationError) {
    assert_eq!(run.source, SourceOutcome::KeepRunning(error));
    assert_eq!(
        run.destination,
        DestinationOutcome::Failed(MigrationError::PeerAborted { reason: AbortReason::PEER_REFUSED })
    );
    assert_eq!(kinds(run, Direction::SourceToDestination), [FrameKind::Hello, FrameKind::Abort]);
    assert!(!run.commit_accepted);
}

#[test]
fn a_destination_running_another_image_is_refused_before_any_state_leaves() {
    let run = migrate(b"guest secrets", 4, None, Side::new(), Side::running(OTHER_MEASUREMENT));
    assert_destination_refused(&run, MigrationError::PeerMeasurement);
}

#[test]
fn a_destination_under_another_policy_is_refused_before_any_state_leaves() {
    let run = migrate(b"guest secrets", 4, None, Side::new(), Side::running(OTHER_POLICY));
    assert_destination_refused(&run, MigrationError::PeerPolicy);
}

#[test]
fn a_destination_that_only_believes_it_matches_is_refused() {
    // Configured with the source's identity, but its reports say what it really runs.
    let mut destination = Side::new();
    destination.attester = Attester::new(OTHER_MEASUREMENT);
    let run = migrate(b"guest secrets", 4, None, Side::new(), destination);
    assert_destination_refused(&run, MigrationError::PeerMeasurement);
}

/// The destination refuses the source: no READY, so the source never sends state.
fn assert_source_refused(run: &Run, error: MigrationError) {
    assert_eq!(run.destination, DestinationOutcome::Failed(error));
    assert_eq!(
        run.source,
        SourceOutcome::KeepRunning(MigrationError::PeerAborted { reason: AbortReason::PEER_REFUSED })
    );
    assert_eq!(kinds(run, Direction::SourceToDestination), [FrameKind::Hello, FrameKind::Evidence]);
    assert_eq!(kinds(run, Direction::DestinationToSource), [FrameKind::Hello, FrameKind::Evidence, FrameKind::Abort]);
}

/// A destination whose heap has no room to check the source's evidence fails on its own
/// account (out of memory, an INTERNAL abort): it does not claim to have refused the
/// source, and the source runs on.
#[test]
fn a_destination_without_heap_to_check_evidence_fails_for_memory() {
    struct NoRoom;
    impl PeerVerifier for NoRoom {
        fn verify(&self, _: &[u8], _: &[u8; 64]) -> Result<PeerIdentity, VerifyError> {
            Err(VerifyError::OutOfMemory)
        }
    }
    let side = Side::new();
    let (mut relay, mut source_channel, mut destination_channel) = bulwark_migrate::testing::Relay::connect(None);
    let mut src = Source::start(side.config, TestVerifier::new(), side.attester.clone(), &mut entropy(1)).unwrap();
    let mut dst = Destination::start(side.config, NoRoom, side.attester, &mut entropy(2)).unwrap();
    for _ in 0..10_000 {
        let _ = bulwark_migrate::session::pump(&mut src, &mut source_channel);
        relay.pump();
        let _ = bulwark_migrate::session::pump(&mut dst, &mut destination_channel);
        relay.pump();
        if src.is_done() && dst.is_done() {
            break;
        }
    }
    assert_eq!(dst.outcome(), DestinationOutcome::Failed(MigrationError::OutOfMemory));
    assert_eq!(
        src.outcome(),
        SourceOutcome::KeepRunning(MigrationError::PeerAborted { reason: AbortReason::INTERNAL })
    );
}

#[test]
fn a_source_running_another_image_is_refused() {
    let run = migrate(b"guest secrets", 4, None, Side::running(OTHER_MEASUREMENT), Side::new());
    // The source refuses the destination first (each compares the other with itself).
    assert_destination_refused(&run, MigrationError::PeerMeasurement);
    let mut source = Side::new();
    source.attester = Attester::new(OTHER_MEASUREMENT);
    let run = migrate(b"guest secrets", 4, None, source, Side::new());
    assert_source_refused(&run, MigrationError::PeerMeasurement);
}

#[test]
fn a_source_under_another_policy_is_refused() {
    let mut source = Side::new();
    source.attester = Attester::new(OTHER_POLICY);
    let run = migrate(b"guest secrets", 4, None, source, Side::new());
    assert_source_refused(&run, MigrationError::PeerPolicy);
}

#[test]
fn evidence_signed_by_another_authority_is_refused() {
    let mut destination = Side::new();
    destination.attester.authority = authority(2);
    let run = migrate(b"guest secrets", 4, None, Side::new(), destination);
    assert_destination_refused(&run, MigrationError::PeerEvidence(VerifyError::Untrusted));

    let mut source = Side::new();
    source.attester.authority = authority(2);
    let run = migrate(b"guest secrets", 4, None, source, Side::new());
    assert_source_refused(&run, MigrationError::PeerEvidence(VerifyError::Untrusted));
}

#[test]
fn a_report_that_does_not_bind_this_session_is_refused() {
    // A genuine report of the right image, made for another session (a replay).
    let mut destination = Side::new();
    destination.attester.fixed_report_data = Some([7; 64]);
    let run = migrate(b"guest secrets", 4, None, Side::new(), destination);
    assert_destination_refused(&run, MigrationError::PeerEvidence(VerifyError::ReportDataMismatch));

    // The source's own REPORT_DATA passed off as the destination's (a reflected report).
    let mut source = Side::new();
    source.attester.fixed_report_data = Some([9; 64]);
    let run = migrate(b"guest secrets", 4, None, source, Side::new());
    assert_source_refused(&run, MigrationError::PeerEvidence(VerifyError::ReportDataMismatch));
}

/// Passes frames between the two sides directly, until neither has one to send.
fn exchange(source: &mut Source<TestVerifier, Attester>, destination: &mut Destination<TestVerifier, Attester>) {
    loop {
        let mut moved = false;
        while let Some(frame) = source.next_frame() {
            let _ = destination.handle_frame(&frame);
            moved = true;
        }
        while let Some(frame) = destination.next_frame() {
            let _ = source.handle_frame(&frame);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn pair() -> (Source<TestVerifier, Attester>, Destination<TestVerifier, Attester>) {
    let config = Config { identity: IDENTITY, ring_pages: None, aes: Aes::Portable };
    let source = Source::start(config, TestVerifier::new(), Attester::new(IDENTITY), &mut entropy(11)).unwrap();
    let destination =
        Destination::start(config, TestVerifier::new(), Attester::new(IDENTITY), &mut entropy(12)).unwrap();
    (source, destination)
}

#[test]
fn report_data_is_the_documented_hash() {
    // Each side's evidence binds the transcript of both HELLOs and its own HELLO key:
    // recompute it from the frames as a verifier would.
    struct Recording(std::cell::RefCell<Vec<[u8; 64]>>);
    impl PeerVerifier for Recording {
        fn verify(&self, evidence: &[u8], expected: &[u8; 64]) -> Result<PeerIdentity, VerifyError> {
            self.0.borrow_mut().push(*expected);
            TestVerifier::new().verify(evidence, expected)
        }
    }
    let config = Config { identity: IDENTITY, ring_pages: None, aes: Aes::Portable };
    let recording = Recording(Default::default());
    let mut source = Source::start(config, &recording, Attester::new(IDENTITY), &mut entropy(11)).unwrap();
    let mut destination = Destination::start(config, &recording, Attester::new(IDENTITY), &mut entropy(12)).unwrap();
    let hello_s = source.next_frame().unwrap();
    destination.handle_frame(&hello_s).unwrap();
    let hello_d = destination.next_frame().unwrap();
    let evidence_d = destination.next_frame().unwrap();
    source.handle_frame(&hello_d).unwrap();
    source.handle_frame(&evidence_d).unwrap();
    let evidence_s = source.next_frame().unwrap();
    destination.handle_frame(&evidence_s).unwrap();

    use sha2::{Digest, Sha384};
    let mut t = Sha384::new();
    t.update(b"bulwark-migrate v1 transcript");
    for frame in [&hello_s, &hello_d] {
        t.update((frame.len() as u32).to_le_bytes());
        t.update(frame);
    }
    let hello_transcript: [u8; 48] = t.finalize().into();
    let key = |hello: &[u8]| -> [u8; 97] { hello[40..137].try_into().unwrap() };
    let expected_d = report_data(Role::Destination, &hello_transcript, &key(&hello_d));
    let expected_s = report_data(Role::Source, &hello_transcript, &key(&hello_s));
    assert_eq!(*recording.0.borrow(), [expected_d, expected_s]);
    // And by hand: SHA-512(label || transcript || SHA-384(key)).
    let mut h = sha2::Sha512::new();
    h.update(b"bulwark-migrate v1 evidence source");
    h.update(hello_transcript);
    h.update(Sha384::digest(key(&hello_s)));
    assert_eq!(expected_s[..], h.finalize()[..]);
}

#[test]
fn the_source_can_abort_at_any_point_before_commit_and_keeps_running() {
    let state = state_bytes(40_000, 5);
    for phase in [
        SourcePhase::AwaitHello,
        SourcePhase::AwaitEvidence,
        SourcePhase::AwaitReady,
        SourcePhase::Transfer,
        SourcePhase::CommitSent,
    ] {
        let mut aborted = false;
        let run = migrate_with(&state, 1000, None, Side::new(), Side::new(), &mut |source, _| {
            if !aborted && source.phase() == phase {
                source.abort(AbortReason::REQUESTED).unwrap();
                aborted = true;
            }
        });
        assert!(aborted, "{phase:?}");
        assert_eq!(
            run.source,
            SourceOutcome::KeepRunning(MigrationError::Aborted { reason: AbortReason::REQUESTED }),
            "{phase:?}"
        );
        assert_eq!(
            run.destination,
            DestinationOutcome::Failed(MigrationError::PeerAborted { reason: AbortReason::REQUESTED }),
            "{phase:?}"
        );
    }
}

#[test]
fn the_destination_can_abort_until_it_completes() {
    let state = state_bytes(40_000, 5);
    for phase in [
        DestinationPhase::AwaitHello,
        DestinationPhase::AwaitEvidence,
        DestinationPhase::Transfer,
        DestinationPhase::AwaitFinish,
    ] {
        let mut aborted = false;
        let run = migrate_with(&state, 1000, None, Side::new(), Side::new(), &mut |_, destination| {
            if !aborted && destination.phase() == phase {
                destination.abort(AbortReason(0x77)).unwrap();
                aborted = true;
            }
        });
        assert!(aborted, "{phase:?}");
        assert_eq!(run.destination, DestinationOutcome::Failed(MigrationError::Aborted { reason: AbortReason(0x77) }));
        match phase {
            // The ACK is out: the source may have committed (then the guest is lost, never
            // forked), or hears the ABORT first.
            DestinationPhase::AwaitFinish => {
                assert!(matches!(run.source, SourceOutcome::Committed | SourceOutcome::KeepRunning(_)))
            }
            _ => assert_eq!(
                run.source,
                SourceOutcome::KeepRunning(MigrationError::PeerAborted { reason: AbortReason(0x77) }),
                "{phase:?}"
            ),
        }
    }
}

#[test]
fn a_committed_source_cannot_abort_and_a_completed_destination_cannot_either() {
    let mut checked = (false, false);
    let run = migrate_with(b"some state", 3, None, Side::new(), Side::new(), &mut |source, destination| {
        if source.phase() == SourcePhase::Committed && !checked.0 {
            assert_eq!(source.abort(AbortReason::REQUESTED), Err(MigrationError::WrongPhase));
            checked.0 = true;
        }
        if destination.phase() == DestinationPhase::Completed && !checked.1 {
            assert_eq!(destination.abort(AbortReason::REQUESTED), Err(MigrationError::WrongPhase));
            assert_eq!(destination.handle_frame(&[1, 4, 0]), Err(MigrationError::AfterEnd));
            checked.1 = true;
        }
    });
    assert_eq!(checked, (true, true));
    assert!(run.succeeded());
}

/// After the commit: the FINISH is offered again as the same sealed record until the
/// FINISH_ACK comes (not before the commit, not while a copy waits to go out); the
/// destination passes over records that do not open as the next one, at most
/// MAX_IGNORED_AFTER_ACK of them, and runs only on the authentic FINISH; its authentic
/// ABORT after the ACK ends the offers.
#[test]
fn a_lost_finish_is_offered_again_and_garbage_before_it_is_passed_over() {
    let (mut source, mut destination) = pair();
    assert_eq!(source.offer_finish_again(), Err(MigrationError::WrongPhase), "not before the commit");
    exchange(&mut source, &mut destination);
    source.send_state(b"state").unwrap();
    source.commit().unwrap();
    // Source to destination: the STATE and the COMMIT; back: the COMMIT_ACK.
    while let Some(frame) = source.next_frame() {
        destination.handle_frame(&frame).unwrap();
    }
    let ack = destination.next_frame().expect("the COMMIT_ACK");
    source.handle_frame(&ack).unwrap();
    assert_eq!(source.outcome(), SourceOutcome::Committed);
    let finish = source.next_frame().expect("the FINISH");
    // The host loses it; nothing comes back, so the source offers it again: the same bytes.
    assert_eq!(source.offer_finish_again(), Ok(true));
    assert_eq!(source.offer_finish_again(), Ok(false), "one copy at a time");
    assert_eq!(source.next_frame().as_deref(), Some(&finish[..]));

    // Garbage in the FINISH's place: a flipped FINISH, a frame of another version. Each
    // is named, none ends the wait.
    let mut flipped = finish.clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert!(matches!(destination.handle_frame(&flipped), Err(MigrationError::Authentication { .. })));
    assert!(matches!(destination.handle_frame(&[9, 4, 0]), Err(MigrationError::UnsupportedVersion { version: 9 })));
    assert_eq!(destination.phase(), DestinationPhase::AwaitFinish);
    destination.handle_frame(&finish).unwrap();
    assert_eq!(destination.outcome(), DestinationOutcome::Completed);
    assert_eq!(destination.handle_frame(&finish), Err(MigrationError::AfterEnd), "a later copy changes nothing");
    let finish_ack = destination.next_frame().expect("the FINISH_ACK");
    assert!(!source.finish_acknowledged());
    assert!(source.handle_frame(&flipped).is_err(), "garbage to the source is named too");
    assert_eq!(source.outcome(), SourceOutcome::Committed, "and changes nothing");
    source.handle_frame(&finish_ack).unwrap();
    assert!(source.finish_acknowledged());
    assert_eq!(source.offer_finish_again(), Err(MigrationError::WrongPhase), "acknowledged: no more offers");

    // A destination that gives up after its ACK says so: the source stops offering (the
    // guest is lost, never run twice).
    let (mut source, mut destination) = pair();
    exchange(&mut source, &mut destination);
    source.commit().unwrap();
    while let Some(frame) = source.next_frame() {
        destination.handle_frame(&frame).unwrap();
    }
    source.handle_frame(&destination.next_frame().expect("the COMMIT_ACK")).unwrap();
    destination.abort(AbortReason::REQUESTED).unwrap();
    let abort = destination.next_frame().expect("the ABORT");
    let gave_up = MigrationError::PeerAborted { reason: AbortReason::REQUESTED };
    assert_eq!(source.handle_frame(&abort), Err(gave_up));
    assert_eq!(source.outcome(), SourceOutcome::Committed, "never runs the guest again");
    assert_eq!(source.offer_finish_again(), Err(gave_up));
    assert!(!source.wants_frames());

    // A destination that meets only garbage gives up after the bound.
    let (mut source, mut destination) = pair();
    exchange(&mut source, &mut destination);
    source.commit().unwrap();
    while let Some(frame) = source.next_frame() {
        destination.handle_frame(&frame).unwrap();
    }
    for _ in 0..MAX_IGNORED_AFTER_ACK {
        assert!(destination.handle_frame(&[9, 4, 0]).is_err());
        assert_eq!(destination.phase(), DestinationPhase::AwaitFinish);
    }
    assert!(destination.handle_frame(&[9, 4, 0]).is_err());
    assert!(matches!(destination.outcome(), DestinationOutcome::Failed(MigrationError::UnsupportedVersion { .. })));
}

#[test]
fn misuse_changes_nothing() {
    let (mut source, mut destination) = pair();
    assert_eq!(source.send_state(b"early"), Err(MigrationError::WrongPhase));
    assert_eq!(source.commit(), Err(MigrationError::WrongPhase));
    exchange(&mut source, &mut destination);
    assert_eq!(source.phase(), SourcePhase::Transfer);
    assert_eq!(source.send_state(&[]), Err(MigrationError::StateChunkLength { len: 0 }));
    let big = vec![0; MAX_STATE_CHUNK + 1];
    assert_eq!(source.send_state(&big), Err(MigrationError::StateChunkLength { len: MAX_STATE_CHUNK + 1 }));
    source.send_state(b"fine").unwrap();
    source.commit().unwrap();
    exchange(&mut source, &mut destination);
    assert_eq!(source.outcome(), SourceOutcome::Committed);
    assert_eq!(destination.outcome(), DestinationOutcome::Completed);
    assert_eq!(destination.take_state().as_deref(), Some(&b"fine"[..]));
}

#[test]
fn a_reflected_hello_is_refused() {
    let (mut source, _) = pair();
    let hello = source.next_frame().unwrap();
    assert_eq!(source.handle_frame(&hello), Err(MigrationError::WrongPeerRole));
    assert!(matches!(source.outcome(), SourceOutcome::KeepRunning(MigrationError::WrongPeerRole)));
    // It tells the destination in clear (no keys yet).
    assert_eq!(source.next_frame().as_deref(), Some(&[1, 3, 3, 0][..]));
    assert_eq!(source.next_frame(), None);
}

#[test]
fn another_protocol_version_is_refused() {
    let (mut source, mut destination) = pair();
    let mut hello = source.next_frame().unwrap();
    hello[0] = 2;
    assert_eq!(destination.handle_frame(&hello), Err(MigrationError::UnsupportedVersion { version: 2 }));
}

#[test]
fn records_before_the_keys_and_handshake_after_them_are_refused() {
    let (mut source, mut destination) = pair();
    let hello = source.next_frame().unwrap();
    let mut record = vec![1, 4, 2];
    record.extend_from_slice(&[0; 40]);
    assert_eq!(destination.handle_frame(&record), Err(MigrationError::UnexpectedFrame { kind: 4 }));

    let (mut source, mut destination) = pair();
    exchange(&mut source, &mut destination);
    assert_eq!(destination.phase(), DestinationPhase::Transfer);
    assert_eq!(destination.handle_frame(&hello), Err(MigrationError::UnexpectedFrame { kind: 1 }));
    // A plaintext ABORT once keys exist is not believed either.
    let (mut source, mut destination) = pair();
    exchange(&mut source, &mut destination);
    assert_eq!(source.handle_frame(&[1, 3, 1, 0]), Err(MigrationError::UnexpectedFrame { kind: 3 }));
    assert!(matches!(destination.phase(), DestinationPhase::Transfer));
}

#[test]
fn an_empty_finish_and_ready_only() {
    // The source's FINISH and the destination's READY carry nothing; the ACK echoes the
    // COMMIT. Checked through a full direct exchange of a session.
    let (mut source, mut destination) = pair();
    exchange(&mut source, &mut destination);
    source.send_state(&[0xAB; 100]).unwrap();
    source.commit().unwrap();
    exchange(&mut source, &mut destination);
    assert_eq!(source.outcome(), SourceOutcome::Committed);
    assert_eq!(destination.outcome(), DestinationOutcome::Completed);
    assert_eq!(source.peer(), Some(IDENTITY));
    assert_eq!(destination.peer(), Some(IDENTITY));
}

/// A destination that must check the whole state before it can run the guest holds the
/// COMMIT_ACK: the source stays uncommitted (its guest could run on) until the
/// destination approves, and an abort instead of the approval leaves the source running.
#[test]
fn a_held_commit_ack_waits_for_the_destinations_approval() {
    for approve in [true, false] {
        let state = state_bytes(100_000, 9);
        let mut held_seen = false;
        let mut hook = |src: &mut Source<TestVerifier, Attester>, dst: &mut Destination<TestVerifier, Attester>| {
            if dst.phase() == DestinationPhase::AwaitHello {
                dst.hold_commit_ack();
            }
            if dst.phase() == DestinationPhase::Transfer {
                assert_eq!(dst.approve_commit(), Err(MigrationError::WrongPhase), "nothing to approve yet");
            }
            if dst.phase() == DestinationPhase::CommitVerified {
                held_seen = true;
                assert_eq!(src.outcome(), SourceOutcome::InProgress, "no ACK yet: the source has not committed");
                if approve {
                    dst.approve_commit().unwrap();
                    assert_eq!(dst.approve_commit(), Err(MigrationError::WrongPhase), "one ACK only");
                    assert_eq!(dst.phase(), DestinationPhase::AwaitFinish);
                } else {
                    dst.abort(AbortReason::INTERNAL).unwrap();
                }
            }
        };
        let run = migrate_with(&state, 8192, None, Side::new(), Side::new(), &mut hook);
        assert!(held_seen, "the destination stopped at the verified COMMIT");
        if approve {
            assert!(run.succeeded());
            assert_eq!(run.received, state);
        } else {
            assert_eq!(run.source_error(), Some(MigrationError::PeerAborted { reason: AbortReason::INTERNAL }));
            assert_eq!(run.destination_error(), Some(MigrationError::Aborted { reason: AbortReason::INTERNAL }));
        }
    }
}
