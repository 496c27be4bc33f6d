//! The driver against a device played in software: the requests an honest device serves,
//! and each way a host that controls the device can fail or lie.

use bulwark_blk::pci::ModernPci;
use bulwark_blk::testing::{FakePlatform, FakeRegisters, LAYOUT, Misbehave, SharedDevice, TestHal, device, transport};
use bulwark_blk::{BLOCK_SIZE, Features, IoError, REQUEST_QUEUE, StartError, VirtioBlk};

const SERIAL: &[u8] = b"bulwark-state";

type Blk = VirtioBlk<TestHal, ModernPci<FakeRegisters>, FakePlatform>;

/// Start the device as the SVSM's platforms do: refused unless its queue can be notified.
fn start(dev: &SharedDevice) -> Result<Blk, StartError> {
    let platform = FakePlatform(dev.clone());
    Blk::start(transport(dev), SERIAL, |t| t.can_notify(REQUEST_QUEUE).then_some(platform))
}

fn block(fill: u8) -> [u8; BLOCK_SIZE] {
    [fill; BLOCK_SIZE]
}

#[test]
fn an_honest_device_reads_writes_and_flushes() {
    let dev = device(8, SERIAL, Misbehave::None);
    let mut blk = start(&dev).expect("the device starts");
    assert_eq!(blk.blocks(), 8);
    assert_eq!(blk.bytes(), 8 * 4096);
    assert_eq!(dev.lock().driver_features(), Features::VERSION_1 | Features::FLUSH);
    blk.write(3, &block(0xA5)).unwrap();
    blk.flush().unwrap();
    assert_eq!(dev.lock().flushes, 1);
    assert!(dev.lock().disk[3 * 4096..4 * 4096].iter().all(|b| *b == 0xA5));
    assert!(dev.lock().disk[..3 * 4096].iter().all(|b| *b == 0));
    let mut read = block(0);
    blk.read(3, &mut read).unwrap();
    assert!(read == block(0xA5));
    blk.read(2, &mut read).unwrap();
    assert!(read == block(0));
    // GET_ID at start, then four requests; one notification each.
    assert_eq!(dev.lock().completed, 5);
    assert_eq!(dev.lock().notifications, 5);
    assert!(!blk.is_lost());
}

#[test]
fn a_block_past_the_end_is_refused_without_a_request() {
    let dev = device(4, SERIAL, Misbehave::None);
    let mut blk = start(&dev).unwrap();
    let before = dev.lock().completed;
    assert_eq!(blk.write(4, &block(1)), Err(IoError));
    assert_eq!(blk.read(u64::MAX, &mut block(0)), Err(IoError));
    assert_eq!(dev.lock().completed, before);
    assert!(!blk.is_lost());
}

#[test]
fn another_serial_number_is_not_ours_and_is_reset() {
    let dev = device(4, b"someone-else", Misbehave::None);
    assert_eq!(start(&dev).unwrap_err(), StartError::NotOurs);
    assert!(dev.lock().is_reset());
}

#[test]
fn a_read_only_device_is_refused() {
    let dev = device(4, SERIAL, Misbehave::ReadOnly);
    assert_eq!(start(&dev).unwrap_err(), StartError::Device);
    assert!(dev.lock().is_reset());
}

#[test]
fn a_configuration_that_never_reads_the_same_twice_is_given_up() {
    let dev = device(4, SERIAL, Misbehave::GenerationChanges);
    assert_eq!(start(&dev).unwrap_err(), StartError::Device);
}

#[test]
fn notifications_go_where_the_queue_said_when_it_was_set_up() {
    let dev = device(4, SERIAL, Misbehave::NotifyOffset(3));
    let mut blk = start(&dev).unwrap();
    assert_eq!(dev.lock().last_notify, Some(LAYOUT.notify.start + 3 * 4));
    // The device names another offset now: the SVSM does not follow.
    dev.lock().misbehave = Misbehave::NotifyOffset(9);
    blk.write(0, &block(1)).unwrap();
    assert_eq!(dev.lock().last_notify, Some(LAYOUT.notify.start + 3 * 4));
}

#[test]
fn a_queue_whose_notification_lies_outside_the_window_is_refused() {
    // 0x400 * 4 is the window's end.
    for off in [0x400, 0x401, u16::MAX] {
        let dev = device(4, SERIAL, Misbehave::NotifyOffset(off));
        assert_eq!(start(&dev).unwrap_err(), StartError::Queue, "offset {off:#x}");
        assert_eq!(dev.lock().notifications, 0);
    }
    let dev = device(4, SERIAL, Misbehave::NotifyOffset(0x3FF));
    assert!(start(&dev).is_ok());
}

#[test]
fn a_device_that_never_answers_is_lost_at_start() {
    let dev = device(4, SERIAL, Misbehave::NeverAnswer);
    assert_eq!(start(&dev).unwrap_err(), StartError::Lost);
    // Waited until the deadline on the platform's clock, then said why.
    assert!(dev.lock().log.iter().any(|l| l.contains("no answer within 10 s")), "{:?}", dev.lock().log);
    // A lost device is not reset: an honest QEMU would finish the request first.
    assert!(!dev.lock().is_reset());
}

#[test]
fn a_device_that_stops_answering_is_lost_for_good() {
    // GET_ID and one write are answered; the next write never is.
    let dev = device(4, SERIAL, Misbehave::LoseAfter(2));
    let mut blk = start(&dev).unwrap();
    blk.write(0, &block(7)).unwrap();
    assert_eq!(blk.write(1, &block(8)), Err(IoError));
    assert!(blk.is_lost());
    let notified = dev.lock().notifications;
    // No request reaches it again, and it is told so once.
    assert_eq!(blk.read(0, &mut block(0)), Err(IoError));
    assert_eq!(blk.flush(), Err(IoError));
    assert_eq!(dev.lock().notifications, notified);
    assert_eq!(dev.lock().log.len(), 1);
    drop(blk);
    assert!(!dev.lock().is_reset());
}

#[test]
fn an_error_status_fails_the_request_alone() {
    let dev = device(4, SERIAL, Misbehave::None);
    let mut blk = start(&dev).unwrap();
    dev.lock().misbehave = Misbehave::ErrorStatus;
    assert_eq!(blk.write(0, &block(1)), Err(IoError));
    assert_eq!(blk.flush(), Err(IoError));
    assert!(!blk.is_lost());
    dev.lock().misbehave = Misbehave::None;
    blk.write(0, &block(2)).unwrap();
    assert_eq!(dev.lock().disk[0], 2);
}

#[test]
fn a_request_completed_without_its_status_byte_fails() {
    let dev = device(4, SERIAL, Misbehave::None);
    let mut blk = start(&dev).unwrap();
    blk.write(1, &block(9)).unwrap();
    dev.lock().misbehave = Misbehave::NoStatus;
    let mut read = block(0x33);
    assert_eq!(blk.read(1, &mut read), Err(IoError));
    // Nothing the device did not write reaches the buffer: it holds what it held.
    assert!(read == block(0x33));
    assert_eq!(blk.write(1, &block(1)), Err(IoError));
    assert!(!blk.is_lost());
}

#[test]
fn an_answer_to_a_request_never_made_loses_the_device() {
    let dev = device(4, SERIAL, Misbehave::None);
    let mut blk = start(&dev).unwrap();
    dev.lock().misbehave = Misbehave::WrongToken;
    assert_eq!(blk.read(0, &mut block(0)), Err(IoError));
    assert!(blk.is_lost());
    assert!(dev.lock().log.iter().any(|l| l.contains("a malformed answer")), "{:?}", dev.lock().log);
}

#[test]
fn a_device_in_use_is_reset_when_dropped() {
    let dev = device(4, SERIAL, Misbehave::None);
    let blk = start(&dev).unwrap();
    assert!(!dev.lock().is_reset());
    drop(blk);
    assert!(dev.lock().is_reset());
}
