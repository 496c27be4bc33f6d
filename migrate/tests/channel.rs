//! The proposal's page protocol: fragments, the data register handshake, and a host that
//! writes what it likes into the page.

use abi::migration::{BUFFER_SIZE, DataRegister, MigrationStatus};
use bulwark_migrate::channel::{
    ChannelError, FRAGMENT_HEADER_LEN, FRAGMENT_PAYLOAD, FragmentFault, MAX_FRAME_LEN, MigrationChannel, PageReceiver,
    PageSender,
};
use bulwark_migrate::testing::{MemPage, Relay};

fn frame(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + len) as u8).collect()
}

/// Sends `frames` from the source's channel to the destination's over a clean relay.
fn carry(frames: &[Vec<u8>]) -> (Vec<Vec<u8>>, usize) {
    let (mut relay, mut tx, mut rx) = Relay::connect(None);
    let mut pending = frames.iter();
    let mut got = Vec::new();
    for _ in 0..100_000 {
        if tx.poll_send().unwrap() {
            match pending.next() {
                Some(f) => tx.send(f).unwrap(),
                None => {
                    if tx.close().unwrap() && got.len() == frames.len() {
                        break;
                    }
                }
            }
        }
        relay.pump();
        if let Some(f) = rx.receive().unwrap() {
            got.push(f);
        }
        relay.pump();
    }
    (got, relay.log().len())
}

#[test]
fn frames_are_cut_into_fragments_and_put_together_again() {
    let sizes =
        [1, 2, FRAGMENT_PAYLOAD - 1, FRAGMENT_PAYLOAD, FRAGMENT_PAYLOAD + 1, 2 * FRAGMENT_PAYLOAD, 5000, MAX_FRAME_LEN];
    for len in sizes {
        let (got, buffers) = carry(&[frame(len), frame(3)]);
        assert_eq!(got, [frame(len), frame(3)], "{len}");
        assert_eq!(buffers, len.div_ceil(FRAGMENT_PAYLOAD) + 1, "{len}");
    }
    assert_eq!(FRAGMENT_PAYLOAD, BUFFER_SIZE - FRAGMENT_HEADER_LEN);
}

#[test]
fn the_stream_ends_after_the_last_frame() {
    let (mut relay, mut tx, mut rx) = Relay::connect(None);
    tx.send(&frame(10)).unwrap();
    for _ in 0..10 {
        let _ = tx.close();
        relay.pump();
    }
    assert_eq!(rx.receive().unwrap(), Some(frame(10)));
    relay.pump();
    assert_eq!(rx.receive(), Err(ChannelError::Closed));
    // And stays ended.
    assert_eq!(rx.receive(), Err(ChannelError::Closed));
}

#[test]
fn sender_limits() {
    let (_, mut tx, _) = Relay::connect(None);
    assert_eq!(tx.send(&[]), Err(ChannelError::FrameLength { len: 0 }));
    assert_eq!(tx.send(&frame(MAX_FRAME_LEN + 1)), Err(ChannelError::FrameLength { len: MAX_FRAME_LEN + 1 }));
    tx.send(&frame(5)).unwrap();
    // The host has not taken the buffer: the next frame must wait.
    assert_eq!(tx.poll_send(), Ok(false));
    assert_eq!(tx.send(&frame(5)), Err(ChannelError::Busy));
    assert_eq!(tx.close(), Ok(false));
}

#[test]
fn nothing_moves_before_the_host_starts_the_page() {
    let page = MemPage::new();
    let mut sender = PageSender::new(page.clone());
    sender.start(&frame(3)).unwrap();
    assert_eq!(sender.poll(), Ok(false));
    assert_eq!(page.data_register(), DataRegister(0), "nothing written before RUNNING");
    page.set_data_register(DataRegister::DATA_READ);
    page.set_status(MigrationStatus::RUNNING);
    assert_eq!(sender.poll(), Ok(false));
    assert_eq!(page.data_register(), DataRegister::DATA_READY);
    page.set_data_register(DataRegister::DATA_READ);
    assert_eq!(sender.poll(), Ok(true));
    assert_eq!(sender.close(), Ok(true));
    assert_eq!(page.status(), MigrationStatus::COMPLETED);

    let page = MemPage::new();
    let mut receiver = PageReceiver::new(page.clone());
    page.set_data_register(DataRegister::DATA_READY);
    assert_eq!(receiver.poll(), Ok(None), "nothing read before INCOMING");
    assert_eq!(page.data_register(), DataRegister::DATA_READY);
}

#[test]
fn register_values_outside_the_protocol_fail_the_channel() {
    for status in [MigrationStatus::INCOMING, MigrationStatus(4), MigrationStatus(0xFF)] {
        let page = MemPage::new();
        let mut sender = PageSender::new(page.clone());
        sender.start(&frame(3)).unwrap();
        page.set_status(status);
        assert_eq!(sender.poll(), Err(ChannelError::BadStatus(status.0)));
        assert_eq!(sender.poll(), Err(ChannelError::BadStatus(status.0)), "stays failed");
    }
    for status in [MigrationStatus::RUNNING, MigrationStatus(9)] {
        let page = MemPage::new();
        let mut receiver = PageReceiver::new(page.clone());
        page.set_status(status);
        assert_eq!(receiver.poll(), Err(ChannelError::BadStatus(status.0)));
    }
    for register in [0, 1, 6, 0xFF] {
        let page = MemPage::new();
        page.set_status(MigrationStatus::RUNNING);
        page.set_data_register(DataRegister(register));
        let mut sender = PageSender::new(page.clone());
        sender.start(&frame(3)).unwrap();
        assert_eq!(sender.poll(), Err(ChannelError::BadRegister(register)));

        let page = MemPage::new();
        page.set_status(MigrationStatus::INCOMING);
        page.set_data_register(DataRegister(register));
        let mut receiver = PageReceiver::new(page);
        assert_eq!(receiver.poll(), Err(ChannelError::BadRegister(register)));
    }
    // The host ends the source's stream under it.
    let page = MemPage::new();
    page.set_status(MigrationStatus::COMPLETED);
    let mut sender = PageSender::new(page);
    sender.start(&frame(3)).unwrap();
    assert_eq!(sender.poll(), Err(ChannelError::Closed));
}

/// Puts one hand-made buffer in a started inbound page and polls the receiver.
fn feed(
    receiver: &mut PageReceiver<MemPage>,
    page: &MemPage,
    buffer: &[u8; BUFFER_SIZE],
) -> Result<Option<Vec<u8>>, ChannelError> {
    page.set_buffer(buffer);
    page.set_data_register(DataRegister::DATA_READY);
    let result = receiver.poll();
    assert_eq!(page.data_register(), DataRegister::DATA_READ, "every buffer is taken");
    result
}

fn fragment(frame_len: u32, offset: u32, len: u16, reserved: u16, fill: u8) -> [u8; BUFFER_SIZE] {
    let mut b = [0u8; BUFFER_SIZE];
    b[0..4].copy_from_slice(&frame_len.to_le_bytes());
    b[4..8].copy_from_slice(&offset.to_le_bytes());
    b[8..10].copy_from_slice(&len.to_le_bytes());
    b[10..12].copy_from_slice(&reserved.to_le_bytes());
    for x in &mut b[FRAGMENT_HEADER_LEN..FRAGMENT_HEADER_LEN + usize::from(len)] {
        *x = fill;
    }
    b
}

fn started_receiver() -> (PageReceiver<MemPage>, MemPage) {
    let page = MemPage::new();
    page.set_data_register(DataRegister::DATA_READ);
    page.set_status(MigrationStatus::INCOMING);
    (PageReceiver::new(page.clone()), page)
}

#[test]
fn every_framing_rule_is_enforced() {
    let full = FRAGMENT_PAYLOAD as u16;
    let cases: Vec<(Vec<[u8; BUFFER_SIZE]>, FragmentFault)> = vec![
        (vec![fragment(0, 0, 0, 0, 1)], FragmentFault::FrameLength),
        (vec![fragment(MAX_FRAME_LEN as u32 + 1, 0, full, 0, 1)], FragmentFault::FrameLength),
        (vec![fragment(10, 1, 9, 0, 1)], FragmentFault::Offset),
        (vec![fragment(10, 0, 9, 0, 1)], FragmentFault::Length),
        (vec![fragment(10, 0, 11, 0, 1)], FragmentFault::Length),
        (vec![fragment(5000, 0, full - 1, 0, 1)], FragmentFault::Length),
        (vec![fragment(10, 0, 10, 1, 1)], FragmentFault::Reserved),
        (
            vec![fragment(5000, 0, full, 0, 1), fragment(5001, full.into(), full, 0, 1)],
            FragmentFault::FrameLengthChanged,
        ),
        (vec![fragment(5000, 0, full, 0, 1), fragment(5000, 0, full, 0, 1)], FragmentFault::Offset),
        (vec![fragment(5000, 0, full, 0, 1), fragment(5000, 2 * u32::from(full), 928, 0, 1)], FragmentFault::Offset),
        (vec![fragment(10, 0, 10, 0, 1), fragment(10, 10, 0, 0, 1)], FragmentFault::Offset),
        (
            vec![{
                let mut b = fragment(10, 0, 10, 0, 1);
                b[BUFFER_SIZE - 1] = 1;
                b
            }],
            FragmentFault::Padding,
        ),
        (
            vec![{
                let mut b = fragment(10, 0, 10, 0, 1);
                b[FRAGMENT_HEADER_LEN + 10] = 0x80;
                b
            }],
            FragmentFault::Padding,
        ),
    ];
    for (i, (buffers, fault)) in cases.iter().enumerate() {
        let (mut receiver, page) = started_receiver();
        let (last, first) = buffers.split_last().unwrap();
        for b in first {
            assert!(feed(&mut receiver, &page, b).is_ok(), "case {i}");
        }
        assert_eq!(feed(&mut receiver, &page, last), Err(ChannelError::BadFragment(*fault)), "case {i}");
        assert_eq!(receiver.poll(), Err(ChannelError::BadFragment(*fault)), "case {i}: stays failed");
    }
    // And a well-formed two-fragment frame passes.
    let (mut receiver, page) = started_receiver();
    assert_eq!(feed(&mut receiver, &page, &fragment(3000, 0, full, 0, 1)), Ok(None));
    let got = feed(&mut receiver, &page, &fragment(3000, full.into(), 3000 - full, 0, 2)).unwrap().unwrap();
    assert_eq!(got.len(), 3000);
    assert!(got[..FRAGMENT_PAYLOAD].iter().all(|&b| b == 1) && got[FRAGMENT_PAYLOAD..].iter().all(|&b| b == 2));
}

#[test]
fn a_stream_ended_inside_a_frame_is_closed() {
    let (mut receiver, page) = started_receiver();
    let full = FRAGMENT_PAYLOAD as u16;
    assert_eq!(feed(&mut receiver, &page, &fragment(3000, 0, full, 0, 1)), Ok(None));
    page.set_status(MigrationStatus::COMPLETED);
    assert_eq!(receiver.poll(), Err(ChannelError::Closed));
}

#[test]
fn a_buffer_ready_when_the_stream_ends_is_still_taken() {
    let (mut receiver, page) = started_receiver();
    page.set_buffer(&fragment(4, 0, 4, 0, 9));
    page.set_data_register(DataRegister::DATA_READY);
    page.set_status(MigrationStatus::COMPLETED);
    assert_eq!(receiver.poll(), Ok(Some(vec![9; 4])));
    assert_eq!(receiver.poll(), Err(ChannelError::Closed));
}

/// A relay whose consumer stopped taking buffers stops taking them from the producer once
/// it holds `MAX_QUEUED` (a socket's back-pressure): its memory does not grow without end,
/// and the producer sees the host stop.
#[test]
fn a_relay_holds_back_when_the_consumer_stops() {
    use bulwark_migrate::relay::MAX_QUEUED;
    let (mut relay, mut tx, _rx) = Relay::connect(None);
    let mut sent = 0;
    for _ in 0..100_000 {
        if tx.poll_send().unwrap() && sent < 8 {
            tx.send(&frame(MAX_FRAME_LEN)).unwrap();
            sent += 1;
        }
        relay.pump();
    }
    // One buffer sits in the consumer's page, the rest in the relay's queue.
    assert_eq!(relay.taken(), [MAX_QUEUED + 1, 0]);
    assert!(!tx.poll_send().unwrap(), "the producer waits for the host");
}

/// Both streams end even when one side sent a frame the other never reads: once the
/// reader has ended its own stream (its session is over: a FINISH offered again after the
/// destination already ran the guest), what is queued for it is dropped and the relay
/// finishes. Before, the relay waited for it until its timeout.
#[test]
fn a_relay_finishes_when_the_reader_has_ended_its_own_stream() {
    let (mut relay, mut tx, mut rx) = Relay::connect(None);
    // Two frames towards a reader that takes neither: one lands in its page, one waits.
    for _ in 0..2 {
        while !tx.poll_send().unwrap() {
            relay.pump();
        }
        tx.send(&frame(100)).unwrap();
        relay.pump();
    }
    let closed = |tx: &mut bulwark_migrate::testing::MemChannel, relay: &mut Relay| {
        (0..1000).any(|_| {
            relay.pump();
            tx.close().unwrap()
        })
    };
    assert!(closed(&mut tx, &mut relay), "the writer ends its stream");
    for _ in 0..100 {
        relay.pump();
    }
    assert!(!relay.finished(), "the reader may still read");
    assert!(closed(&mut rx, &mut relay), "the reader ends its own stream without reading");
    for _ in 0..100 {
        relay.pump();
    }
    assert!(relay.finished(), "what it would never read is dropped");
}

/// The ring mode: the sender fills the ring's pages in turn without waiting for the host
/// and takes the next frame while they are still unread; the receiver reads them in the
/// same turn and never out of it; a ring does not grow past its pages.
#[test]
fn a_ring_fills_its_pages_in_turn_and_is_read_in_turn() {
    let ring = |status: MigrationStatus| -> Vec<MemPage> {
        let pages: Vec<MemPage> = (0..4).map(|_| MemPage::new()).collect();
        for page in &pages {
            page.set_data_register(DataRegister::DATA_READ);
            page.set_status(status);
        }
        pages
    };
    let out = ring(MigrationStatus::RUNNING);
    let mut sender = PageSender::with_ring(out.clone());
    assert_eq!(sender.widen(5), Err(ChannelError::RingTooLarge { asked: 5, has: 4 }));
    sender.widen(4).unwrap();
    let first = frame(3 * FRAGMENT_PAYLOAD);
    sender.start(&first).unwrap();
    assert_eq!(sender.poll(), Ok(true), "three pages written, the fourth free: the next frame may start");
    let ready =
        |pages: &[MemPage]| pages.iter().map(|p| p.data_register() == DataRegister::DATA_READY).collect::<Vec<_>>();
    assert_eq!(ready(&out), [true, true, true, false]);
    let second = frame(2 * FRAGMENT_PAYLOAD);
    sender.start(&second).unwrap();
    assert_eq!(sender.poll(), Ok(false), "the ring is full: page 0 still holds the first fragment");
    assert_eq!(ready(&out), [true, true, true, true]);
    assert_eq!(sender.close(), Ok(false), "nothing taken yet");

    // The host carries page by page, in an order of its own.
    let inbound = ring(MigrationStatus::INCOMING);
    let mut receiver = PageReceiver::with_ring(inbound.clone());
    receiver.widen(4).unwrap();
    let carry = |slot: usize| {
        inbound[slot].set_buffer(&out[slot].buffer());
        inbound[slot].set_data_register(DataRegister::DATA_READY);
        out[slot].set_data_register(DataRegister::DATA_READ);
    };
    carry(1);
    assert_eq!(receiver.poll(), Ok(None), "page 1 before page 0 is not read");
    assert_eq!(inbound[1].data_register(), DataRegister::DATA_READY);
    carry(0);
    carry(3);
    assert_eq!(receiver.poll(), Ok(None), "pages 0 and 1 read; page 2 is next");
    assert_eq!(ready(&inbound), [false, false, false, true]);
    carry(2);
    assert_eq!(receiver.poll(), Ok(Some(first)));
    assert_eq!(sender.poll(), Ok(true), "page 0 is free again and takes the second frame's last fragment");
    assert_eq!(ready(&out), [true, false, false, false]);
    carry(0);
    assert_eq!(receiver.poll(), Ok(Some(second)), "pages 3 and 0");
    assert_eq!(sender.close(), Ok(true));
    assert_eq!(out[0].status(), MigrationStatus::COMPLETED);
}
