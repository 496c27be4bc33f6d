//! A hostile relay: for every buffer of a migration, one bit flipped (header, payload and
//! padding), the buffer dropped, duplicated, swapped with the next one of its direction,
//! and the stream truncated there. Every change is caught (a named error, never a
//! panic, never a COMMIT accepted over other state), the guest never runs on both sides,
//! every change before the COMMIT leaves the source running, and every change after the
//! COMMIT_ACK but the host ceasing to relay (a truncation at the FINISH) ends with the
//! guest running at the destination: the source offers its FINISH again.

mod common;

use bulwark_migrate::channel::{ChannelError, FRAGMENT_HEADER_LEN, FragmentFault};
use bulwark_migrate::session::{DestinationOutcome, FrameKind, MigrationError, RecordType, SourceOutcome};
use bulwark_migrate::testing::{Direction, Fault, Relayed};
use common::{Run, Side, migrate, state_bytes};
use std::collections::BTreeMap;

const STATE_LEN: usize = 5000;
/// Records of 3000 bytes (two buffers each) and one of 2000 (one buffer).
const CHUNK: usize = 3000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Result {
    /// The source keeps running, the destination discards everything.
    Failed,
    /// The source committed (it had the destination's authenticated COMMIT_ACK), the
    /// destination did not run: the guest is lost, not forked. Only from the COMMIT on.
    Lost,
    /// Both finished with the exact state: only a replay or reorder of a direction's last
    /// buffer, which arrives after the receiver has finished.
    Unharmed,
}

/// The buffers of an untouched migration, and the index of the COMMIT's first buffer.
fn clean_run(side: fn() -> Side) -> (Vec<Relayed>, usize) {
    let state = state_bytes(STATE_LEN, 7);
    let run = migrate(&state, CHUNK, None, side(), side());
    assert!(run.succeeded());
    assert_eq!(run.received, state);
    let commit =
        run.log.iter().position(|r| r.frame_kind() == Some(FrameKind::Record(RecordType::Commit))).expect("a COMMIT");
    (run.log, commit)
}

fn last_of_its_direction(log: &[Relayed], index: usize) -> bool {
    let direction = log[index].direction;
    !log[index + 1..].iter().any(|r| r.direction == direction)
}

/// Where in the stream a fault shows. A replayed buffer is delivered into the same page
/// again, so the receiver meets it in the place of the next buffer of that page: the next
/// buffer on the page mode, the next lap of the ring on a ring (or never, after the end).
fn where_it_shows(fault: Fault, index: usize, log: &[Relayed]) -> usize {
    match fault {
        Fault::Duplicate { .. } => {
            let (direction, slot) = (log[index].direction, log[index].slot);
            log[index + 1..]
                .iter()
                .position(|r| r.direction == direction && r.slot == slot)
                .map_or(usize::MAX, |later| index + 1 + later)
        }
        _ => index,
    }
}

/// Checks a tampered run against the rules and says which case it was.
fn judge(run: &Run, fault: Fault, index: usize, log: &[Relayed], commit: usize, state: &[u8]) -> Result {
    let what = format!("{fault:?} of buffer {index} ({:?}, {:?})", log[index].direction, log[index].frame_kind());
    let result = match (run.source, run.destination) {
        (SourceOutcome::KeepRunning(_), DestinationOutcome::Failed(_)) => Result::Failed,
        (SourceOutcome::Committed, DestinationOutcome::Failed(_)) => {
            assert!(
                where_it_shows(fault, index, log) >= commit,
                "{what}: the source committed on a session tampered before the COMMIT"
            );
            Result::Lost
        }
        (SourceOutcome::Committed, DestinationOutcome::Completed) => {
            let after_the_end = match fault {
                Fault::Duplicate { .. } => where_it_shows(fault, index, log) == usize::MAX,
                Fault::SwapWithNext { .. } => last_of_its_direction(log, index),
                _ => false,
            };
            // From the FINISH on, the source offers it again until the FINISH_ACK comes,
            // and the destination passes over what does not open: a change there costs a
            // round trip, not the guest.
            let finish = log.iter().position(|r| r.frame_kind() == Some(FrameKind::Record(RecordType::Finish)));
            let recovered = finish.is_some_and(|finish| where_it_shows(fault, index, log) >= finish);
            assert!(after_the_end || recovered, "{what}: not detected");
            assert_eq!(run.received, state, "{what}");
            Result::Unharmed
        }
        (source, destination) => panic!("{what}: source {source:?}, destination {destination:?}"),
    };
    for outcome_error in [run.source_error(), run.destination_error()].into_iter().flatten() {
        assert_ne!(outcome_error, MigrationError::Internal, "{what}");
    }
    if run.commit_accepted {
        // The driver already checked the state was exact when the COMMIT was accepted.
        assert!(where_it_shows(fault, index, log) >= commit || result == Result::Unharmed, "{what}: COMMIT accepted");
    }
    if result != Result::Unharmed {
        assert!(run.fault_applied || matches!(fault, Fault::SwapWithNext { .. }), "{what}");
    }
    result
}

/// Bits to flip in a buffer: the fragment header's first and reserved bytes, the first,
/// a middle and the last payload byte, and the buffer's last byte (padding unless the
/// fragment is full).
fn bits(r: &Relayed) -> Vec<usize> {
    let len = r.payload().len();
    let mut bytes =
        vec![0, 10, FRAGMENT_HEADER_LEN, FRAGMENT_HEADER_LEN + len / 2, FRAGMENT_HEADER_LEN + len - 1, 2047];
    bytes.dedup();
    bytes.into_iter().map(|b| b * 8 + (b % 8)).collect()
}

#[test]
fn every_tampered_buffer_is_caught() {
    every_tampered_buffer_is_caught_with(Side::new);
}

/// The same over a ring of 4 pages: the source's records after READY take the ring's
/// pages in turn, and a buffer dropped, replayed or put into another page is caught the
/// same way (a buffer swapped with the next one lands in the next page).
#[test]
fn every_tampered_buffer_on_a_ring_is_caught() {
    every_tampered_buffer_is_caught_with(|| Side::with_ring(4));
}

fn every_tampered_buffer_is_caught_with(side: fn() -> Side) {
    let state = state_bytes(STATE_LEN, 7);
    let (log, commit) = clean_run(side);
    // Hello, Hello, 2 x evidence, 2 x evidence, READY, 2 + 1 x STATE, COMMIT, ACK, FINISH,
    // FINISH_ACK.
    assert_eq!(log.len(), 14);
    let mut summary: BTreeMap<(&str, Result), usize> = BTreeMap::new();
    let mut not_failed: Vec<(&str, usize, Result)> = Vec::new();
    let mut runs = 0;
    for (index, relayed) in log.iter().enumerate() {
        let mut faults: Vec<(&str, Fault)> =
            bits(relayed).into_iter().map(|bit| ("flip", Fault::FlipBit { buffer: index, bit })).collect();
        faults.extend([
            ("drop", Fault::Drop { buffer: index }),
            ("duplicate", Fault::Duplicate { buffer: index }),
            ("swap", Fault::SwapWithNext { buffer: index }),
            ("truncate", Fault::TruncateAt { buffer: index }),
        ]);
        for (name, fault) in faults {
            let run = migrate(&state, CHUNK, Some(fault), side(), side());
            let result = judge(&run, fault, index, &log, commit, &state);
            if where_it_shows(fault, index, &log) < commit {
                assert_eq!(result, Result::Failed, "{fault:?}: before the COMMIT the source must keep running");
            }
            *summary.entry((name, result)).or_default() += 1;
            if result != Result::Failed && !not_failed.contains(&(name, index, result)) {
                not_failed.push((name, index, result));
            }
            runs += 1;
        }
    }
    eprintln!("{runs} tampered migrations: {summary:?}");
    // Everything but the following fails with the source running. The COMMIT_ACK, FINISH
    // and FINISH_ACK are the last three buffers.
    let (ack, finish, finish_ack) = (log.len() - 3, log.len() - 2, log.len() - 1);
    assert_eq!(log[ack].frame_kind(), Some(FrameKind::Record(RecordType::CommitAck)));
    assert_eq!(log[finish].frame_kind(), Some(FrameKind::Record(RecordType::Finish)));
    assert_eq!(log[finish_ack].frame_kind(), Some(FrameKind::Record(RecordType::FinishAck)));
    let mut expected = Vec::new();
    if log[finish].slot == 0 && log[commit].slot == 0 {
        // The page mode. A replayed COMMIT reaches the destination after its ACK left,
        // where it waits for the FINISH and passes over what does not open.
        expected.push(("duplicate", commit, Result::Unharmed));
    } else {
        // A ring of 4: STATE, STATE, STATE and COMMIT take the four pages, the FINISH
        // goes back to the first (the proposal's page). A buffer replayed into a page is
        // met a lap later: the first page's in the FINISH's place (a stale STATE
        // fragment, passed over with the FINISH it broke; the FINISH comes again), the
        // other three's never, since nothing follows them there.
        assert_eq!([log[commit - 3].slot, log[commit].slot, log[finish].slot], [0, 3, 0]);
        expected.extend((commit - 3..=commit).map(|i| ("duplicate", i, Result::Unharmed)));
    }
    expected.extend([
        // A replayed ACK arrives after the source committed. Any change to the FINISH
        // costs a round trip: the source offers it again until the FINISH_ACK comes.
        // Only a host that stops relaying (the stream truncated at the FINISH) loses the
        // guest, never forks it. Changes to the FINISH_ACK cost the source its wait.
        ("duplicate", ack, Result::Unharmed),
        ("flip", finish, Result::Unharmed),
        ("drop", finish, Result::Unharmed),
        ("duplicate", finish, Result::Unharmed),
        ("swap", finish, Result::Unharmed),
        ("truncate", finish, Result::Lost),
        ("flip", finish_ack, Result::Unharmed),
        ("drop", finish_ack, Result::Unharmed),
        ("duplicate", finish_ack, Result::Unharmed),
        ("swap", finish_ack, Result::Unharmed),
        ("truncate", finish_ack, Result::Unharmed),
    ]);
    assert_eq!(not_failed, expected);
}

/// A flip in every byte of both HELLOs (what the relay sees in clear and could most
/// easily change with intent: role, modes, nonce, key) is caught. One bit per byte, a
/// different one in each byte of a group of eight.
#[test]
fn every_byte_of_the_hellos() {
    let state = state_bytes(600, 3);
    let clean = migrate(&state, 600, None, Side::new(), Side::new());
    let hellos: Vec<&Relayed> = clean.log.iter().filter(|r| r.frame_kind() == Some(FrameKind::Hello)).collect();
    assert_eq!(hellos.len(), 2);
    let mut runs = 0;
    for hello in hellos {
        for byte in 0..hello.payload().len() {
            let bit = (FRAGMENT_HEADER_LEN + byte) * 8 + byte % 8;
            let fault = Fault::FlipBit { buffer: hello.index, bit };
            let run = migrate(&state, 600, Some(fault), Side::new(), Side::new());
            assert!(
                matches!((run.source, run.destination), (SourceOutcome::KeepRunning(_), DestinationOutcome::Failed(_))),
                "{fault:?}: {:?} {:?}",
                run.source,
                run.destination
            );
            assert!(!run.commit_accepted);
            runs += 1;
        }
    }
    assert_eq!(runs, 2 * 137);
}

/// A record the source sends, replayed right after itself, is refused by its sequence
/// number; a replayed fragment of a longer record by its offset.
#[test]
fn replayed_records_are_named() {
    let state = state_bytes(STATE_LEN, 7);
    let (log, _) = clean_run(Side::new);
    let mut seen = 0;
    for r in log.iter().filter(|r| r.direction == Direction::SourceToDestination) {
        let header = r.fragment().unwrap();
        if header.offset.get() != 0 {
            continue;
        }
        let Some(FrameKind::Record(record_type)) = r.frame_kind() else { continue };
        if record_type == RecordType::Finish {
            continue; // the destination has finished when it would arrive
        }
        let run = migrate(&state, CHUNK, Some(Fault::Duplicate { buffer: r.index }), Side::new(), Side::new());
        let error = match run.destination {
            DestinationOutcome::Failed(error) => error,
            // After its COMMIT_ACK the destination waits for the FINISH and passes over
            // what does not open as the next record (named, as returned by `pump`).
            DestinationOutcome::Completed if record_type == RecordType::Commit => {
                assert!(run.succeeded() && run.received == state);
                *run.destination_errors.first().expect("the replay is named")
            }
            other => panic!("{record_type:?}: {other:?}"),
        };
        let whole = header.frame_len.get() as usize == r.payload().len();
        if whole {
            assert!(
                matches!(error, MigrationError::UnexpectedSequence { got, expected } if got + 1 == expected),
                "{error:?}"
            );
        } else {
            assert_eq!(error, MigrationError::Channel(ChannelError::BadFragment(FragmentFault::Offset)));
        }
        seen += 1;
    }
    assert_eq!(seen, 3); // two STATE records, the COMMIT
}

/// What `bulwark migrate relay --fault drop@finish` does in the QEMU run: the first FINISH
/// is dropped wherever it comes; the source offers it again, and the guest arrives.
#[test]
fn a_dropped_finish_found_by_its_kind_is_offered_again() {
    let state = state_bytes(STATE_LEN, 7);
    for side in [Side::new as fn() -> Side, || Side::with_ring(4)] {
        let fault = Fault::Drop { buffer: usize::MAX };
        let finish = Some(FrameKind::Record(RecordType::Finish));
        let run = common::migrate_faulting(&state, CHUNK, Some(fault), finish, side(), side(), &mut |_, _| {});
        assert!(run.fault_applied && run.succeeded() && run.received == state);
        assert_eq!((run.finish_offers, run.finish_acknowledged), (1, true));
        let finishes = run.log.iter().filter(|r| r.frame_kind() == finish).count();
        assert_eq!(finishes, 2, "the dropped one and the one offered again");
    }
}
