//! Arbitrary input from a hostile host: frames fed to either side in every phase, and
//! buffers and registers written into an inbound page. Nothing panics, and no garbage
//! makes a source commit or a destination complete.

mod common;

use abi::migration::{BUFFER_SIZE, DataRegister, MigrationStatus};
use bulwark_migrate::channel::PageReceiver;
use bulwark_migrate::session::{
    Aes, Config, Destination, DestinationOutcome, DestinationPhase, Endpoint, Source, SourceOutcome, SourcePhase,
};
use bulwark_migrate::testing::MemPage;
use common::{Attester, IDENTITY, TestVerifier, entropy};
use proptest::prelude::*;

type Src = Source<TestVerifier, Attester>;
type Dst = Destination<TestVerifier, Attester>;

fn pair(seed: u64) -> (Src, Dst) {
    let config = Config { identity: IDENTITY, ring_pages: Some(4), aes: Aes::Portable };
    let source = Source::start(config, TestVerifier::new(), Attester::new(IDENTITY), &mut entropy(seed)).unwrap();
    let destination =
        Destination::start(config, TestVerifier::new(), Attester::new(IDENTITY), &mut entropy(seed + 1)).unwrap();
    (source, destination)
}

/// Moves frames one at a time until `done` holds (or nothing moves).
fn advance(s: &mut Src, d: &mut Dst, done: &dyn Fn(&Src, &Dst) -> bool) {
    while !done(s, d) {
        if let Some(f) = s.next_frame() {
            d.handle_frame(&f).unwrap();
        } else if let Some(f) = d.next_frame() {
            s.handle_frame(&f).unwrap();
        } else {
            panic!("stuck before the phase");
        }
    }
}

fn source_in(phase: SourcePhase) -> Src {
    let (mut s, mut d) = pair(3);
    advance(&mut s, &mut d, &|s, _| s.phase() == phase || s.phase() == SourcePhase::Transfer);
    if phase == SourcePhase::CommitSent {
        s.send_state(b"state").unwrap();
        s.commit().unwrap();
    }
    while s.next_frame().is_some() {}
    assert_eq!(s.phase(), phase);
    s
}

fn destination_in(phase: DestinationPhase) -> Dst {
    let (mut s, mut d) = pair(5);
    advance(&mut s, &mut d, &|s, d| {
        d.phase() == phase || (phase == DestinationPhase::AwaitFinish && s.phase() == SourcePhase::Transfer)
    });
    if phase == DestinationPhase::AwaitFinish {
        s.send_state(b"state").unwrap();
        s.commit().unwrap();
        advance(&mut s, &mut d, &|_, d| d.phase() == phase);
    }
    while d.next_frame().is_some() {}
    assert_eq!(d.phase(), phase);
    d
}

/// Random bytes, or a frame with this protocol's version and a valid-looking kind,
/// record type and small sequence number, so that deeper checks are reached.
fn frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        (1u8..=4, 0u8..=7, 0u64..4, proptest::collection::vec(any::<u8>(), 0..200)).prop_map(
            |(kind, record_type, sequence, body)| {
                let mut f = vec![1, kind, record_type];
                f.extend_from_slice(&sequence.to_le_bytes());
                f.extend_from_slice(&body);
                f
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_frames_to_the_source(phase in 0usize..5, frames in proptest::collection::vec(frame(), 1..8)) {
        let phase = [
            SourcePhase::AwaitHello,
            SourcePhase::AwaitEvidence,
            SourcePhase::AwaitReady,
            SourcePhase::Transfer,
            SourcePhase::CommitSent,
        ][phase];
        let mut s = source_in(phase);
        for f in &frames {
            let _ = s.handle_frame(f);
            while s.next_frame().is_some() {}
        }
        prop_assert_ne!(s.outcome(), SourceOutcome::Committed);
    }

    #[test]
    fn any_frames_to_the_destination(phase in 0usize..4, frames in proptest::collection::vec(frame(), 1..8)) {
        let phase = [
            DestinationPhase::AwaitHello,
            DestinationPhase::AwaitEvidence,
            DestinationPhase::Transfer,
            DestinationPhase::AwaitFinish,
        ][phase];
        let mut d = destination_in(phase);
        for f in &frames {
            let _ = d.handle_frame(f);
            while d.next_frame().is_some() {}
            while d.take_state().is_some() {}
        }
        prop_assert_ne!(d.outcome(), DestinationOutcome::Completed);
    }

    #[test]
    fn any_page_contents(
        steps in proptest::collection::vec(
            (any::<u8>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64), 0usize..BUFFER_SIZE),
            1..16,
        )
    ) {
        let page = MemPage::new();
        let mut receiver = PageReceiver::new(page.clone());
        for (status, register, bytes, at) in steps {
            // Mostly the protocol's own values, sometimes anything.
            page.set_status(MigrationStatus(if status < 200 { MigrationStatus::INCOMING.0 } else { status }));
            page.set_data_register(DataRegister(if register < 200 { DataRegister::DATA_READY.0 } else { register }));
            let mut buffer = *page.buffer();
            for (i, b) in bytes.iter().enumerate() {
                if let Some(x) = buffer.get_mut((at + i) % BUFFER_SIZE) {
                    *x = *b;
                }
            }
            page.set_buffer(&buffer);
            let _ = receiver.poll();
        }
    }
}
