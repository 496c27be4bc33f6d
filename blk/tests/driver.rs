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

/// QEMU offers platform DMA to every device of a confidential guest and will not run one
/// whose driver turns it down (`virtio_validate_features`): the driver takes it (its
/// bounce pool is the platform's DMA).
#[test]
fn a_device_that_needs_platform_dma_gets_it() {
    let dev = device(4, SERIAL, Misbehave::RequiresPlatformDma);
    let mut blk = start(&dev).expect("the driver takes ACCESS_PLATFORM");
    assert!(dev.lock().driver_features().contains(Features::ACCESS_PLATFORM));
    blk.write(0, &block(3)).unwrap();
}

#[test]
fn a_device_that_refuses_the_features_or_is_legacy_is_refused_and_failed() {
    for misbehave in [Misbehave::RefusesFeatures, Misbehave::Legacy] {
        let dev = device(4, SERIAL, misbehave);
        assert_eq!(start(&dev).unwrap_err(), StartError::Device, "{misbehave:?}");
        assert_eq!(dev.lock().notifications, 0, "{misbehave:?}: no request");
        assert!(!dev.lock().is_reset(), "{misbehave:?}: marked FAILED");
    }
}

/// A device whose reset never reads back keeps the SVSM only until the deadline.
#[test]
fn a_device_that_never_acknowledges_its_reset_is_left_at_the_deadline() {
    let dev = device(4, SERIAL, Misbehave::None);
    let blk = start(&dev).unwrap();
    dev.lock().misbehave = Misbehave::NoResetAck;
    let before = dev.lock().clock_ns();
    drop(blk);
    assert!(!dev.lock().is_reset());
    let waited = dev.lock().clock_ns() - before;
    assert!((100_000_000..=102_000_000).contains(&waited), "waited {waited} ns");
    // An honest device is not waited for.
    let dev = device(4, SERIAL, Misbehave::None);
    let blk = start(&dev).unwrap();
    let before = dev.lock().clock_ns();
    drop(blk);
    assert!(dev.lock().is_reset());
    assert!(dev.lock().clock_ns() - before <= 1_000_000);
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

/// The fuzz target's harness (`fuzz/fuzz_targets/disk.rs`) on stable, over inputs that
/// reach each of the host's scripted misbehaviours.
#[test]
fn the_fuzz_harness_holds_on_every_scripted_misbehaviour() {
    for action in 0..11u8 {
        for seed in 0..16u8 {
            // Seeds 8 and up put the device in a virtio-mmio slot.
            let mut data = vec![(seed % 8) | if seed >= 8 { 0x80 } else { 0 }, 12];
            data.extend((0..12).map(|i| if i % 3 == 0 { action } else { seed.wrapping_mul(i + 7) }));
            data.extend((0..192).map(|i: u32| (i as u8).wrapping_mul(seed | 1).wrapping_add(action)));
            bulwark_blk::testing::fuzz_driver(&data).unwrap_or_else(|e| panic!("action {action}, seed {seed}: {e}"));
        }
    }
}

mod over_mmio {
    //! The same driver over the virtio-mmio transport (`blk::mmio`), the device in a slot.
    use super::*;
    use bulwark_blk::mmio::{ModernMmio, ProbeError};
    use bulwark_blk::testing::{FakeMmioRegisters, MMIO_SLOT};

    type MmioBlk = VirtioBlk<TestHal, ModernMmio<FakeMmioRegisters>, FakePlatform>;

    fn start_mmio(dev: &SharedDevice) -> Result<MmioBlk, StartError> {
        let transport = ModernMmio::probe(FakeMmioRegisters(dev.clone()), MMIO_SLOT).expect("a block device");
        MmioBlk::start(transport, SERIAL, |_| Some(FakePlatform(dev.clone())))
    }

    #[test]
    fn an_honest_device_in_a_slot_reads_writes_and_flushes() {
        let dev = device(8, SERIAL, Misbehave::None);
        let mut blk = start_mmio(&dev).expect("starts");
        assert_eq!(blk.blocks(), 8);
        blk.write(7, &block(0x77)).unwrap();
        blk.flush().unwrap();
        let mut read = block(0);
        blk.read(7, &mut read).unwrap();
        assert!(read == block(0x77));
        assert_eq!(dev.lock().last_notify, Some(MMIO_SLOT + 0x50));
        assert_eq!(dev.lock().flushes, 1);
        drop(blk);
        assert!(dev.lock().is_reset());
    }

    #[test]
    fn a_slot_that_is_not_a_modern_block_device_is_not_probed() {
        let dev = device(8, SERIAL, Misbehave::Legacy);
        assert_eq!(ModernMmio::probe(FakeMmioRegisters(dev.clone()), MMIO_SLOT).unwrap_err(), ProbeError::NotVirtio);
        let dev = device(8, SERIAL, Misbehave::None);
        // Nothing answers at another address (all ones), nor at an address off a page.
        assert_eq!(
            ModernMmio::probe(FakeMmioRegisters(dev.clone()), MMIO_SLOT + 0x1000).unwrap_err(),
            ProbeError::NotVirtio
        );
        assert_eq!(ModernMmio::probe(FakeMmioRegisters(dev), MMIO_SLOT + 8).unwrap_err(), ProbeError::Misaligned);
    }

    #[test]
    fn the_host_misbehaving_over_mmio_is_handled_as_over_pci() {
        let dev = device(4, SERIAL, Misbehave::LoseAfter(2));
        let mut blk = start_mmio(&dev).unwrap();
        blk.write(0, &block(1)).unwrap();
        assert_eq!(blk.write(1, &block(2)), Err(IoError));
        assert!(blk.is_lost());
        let dev = device(4, b"another-disk", Misbehave::None);
        assert_eq!(start_mmio(&dev).unwrap_err(), StartError::NotOurs);
        let dev = device(4, SERIAL, Misbehave::RequiresPlatformDma);
        assert!(start_mmio(&dev).is_ok());
    }
}

/// A configuration read past the device's configuration window is refused, not made: over
/// PCI the device window's end, over MMIO the slot's page.
#[test]
fn configuration_reads_stay_inside_their_window() {
    use bulwark_blk::mmio::ModernMmio;
    use bulwark_blk::testing::{FakeMmioRegisters, MMIO_SLOT};
    use virtio_drivers::transport::Transport;
    let dev = device(8, SERIAL, Misbehave::None);
    let pci = transport(&dev);
    assert_eq!(pci.read_config_space::<u64>(0), Ok(8 * 8));
    assert!(pci.read_config_space::<u32>(0x1000 - 4).is_ok());
    assert!(pci.read_config_space::<u64>(0x1000 - 4).is_err());
    assert!(pci.read_config_space::<u8>(usize::MAX).is_err());
    let mmio = ModernMmio::probe(FakeMmioRegisters(dev), MMIO_SLOT).unwrap();
    assert_eq!(mmio.read_config_space::<u64>(0), Ok(8 * 8));
    assert!(mmio.read_config_space::<u32>(0xF00 - 4).is_ok());
    assert!(mmio.read_config_space::<u32>(0xF00 - 3).is_err());
    assert!(mmio.read_config_space::<u16>(usize::MAX).is_err());
}
