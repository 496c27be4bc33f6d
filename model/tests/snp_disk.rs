//! The state disk on the snp platform: the `blk` driver's PCI transport reaching the
//! device's registers through GHCB MMIO events (`snp::device::GhcbMmio`), answered by the
//! model's software host, whose device is `blk::testing`'s. The buffers go through
//! bounce pages as on every platform (`blk::testing::TestHal` here).

use abi::ghcb::exit;
use blk::mmio::ModernMmio;
use blk::pci::ModernPci;
use blk::testing::{
    FakeMmioRegisters, FakePlatform, FakeRegisters, LAYOUT, MMIO_SLOT, Misbehave, SharedDevice, TestHal, device,
};
use blk::{BLOCK_SIZE, REQUEST_QUEUE, StartError, VirtioBlk};
use bulwark_model::Machine;
use bulwark_model::snp_host::{HostDevice, ModelSnpHw, SnpHost};
use bulwark_model::world::{self, MIB};
use snp::device::GhcbMmio;
use snp::{SnpConfig, SnpPlatform};
use virtio_drivers::transport::DeviceType;

/// SVSM code runs with the bare-metal heap's limit (`bulwark_model::heap`).
#[global_allocator]
static HEAP: bulwark_model::heap::CountingHeap = bulwark_model::heap::CountingHeap;

const SERIAL: &[u8] = b"bulwark-state";

/// A machine whose snp platform started (its GHCB registered), and a host with `dev`.
fn started(dev: &SharedDevice) -> (Machine, SnpHost) {
    let mut m = Machine::new(64 * MIB, 32 * MIB);
    for pfn in world::SVSM_BASE >> 12..(world::SVSM_BASE + 4 * MIB) >> 12 {
        m.rmp.entry_mut(pfn).expect("RAM").validated = true;
    }
    let mut host = SnpHost { mmio: Some(HostDevice(Box::new(FakeRegisters(dev.clone())))), ..SnpHost::default() };
    SnpPlatform::start(ModelSnpHw::new(&mut m, &mut host), SnpConfig::new(1, 1)).expect("the platform starts");
    host.events.clear();
    (m, host)
}

type Blk<'a> = VirtioBlk<TestHal, ModernPci<GhcbMmio<ModelSnpHw<'a>>>, FakePlatform>;

fn start<'a>(m: &'a mut Machine, host: &'a mut SnpHost, dev: &SharedDevice) -> Result<Blk<'a>, StartError> {
    let transport = ModernPci::new(GhcbMmio::new(ModelSnpHw::new(m, host)), LAYOUT, DeviceType::Block);
    let platform = FakePlatform(dev.clone());
    VirtioBlk::start(transport, SERIAL, |t| t.can_notify(REQUEST_QUEUE).then_some(platform))
}

#[test]
fn the_disk_works_through_the_hosts_mmio_events() {
    let dev = device(8, SERIAL, Misbehave::None);
    let (mut m, mut host) = started(&dev);
    {
        let mut blk = start(&mut m, &mut host, &dev).expect("the disk starts through GHCB MMIO");
        assert_eq!(blk.blocks(), 8);
        blk.write(5, &[0x5A; BLOCK_SIZE]).unwrap();
        blk.flush().unwrap();
        let mut read = [0u8; BLOCK_SIZE];
        blk.read(5, &mut read).unwrap();
        assert!(read == [0x5A; BLOCK_SIZE]);
    }
    assert!(dev.lock().disk[5 * 4096..6 * 4096].iter().all(|b| *b == 0x5A));
    assert_eq!(dev.lock().flushes, 1);
    // Every register access was an MMIO event (no other way reaches the device here), and
    // the notifications went where the queue was set up.
    assert!(host.events.iter().all(|e| [exit::MMIO_READ, exit::MMIO_WRITE].contains(e)), "{:?}", host.events);
    assert!(host.events.contains(&exit::MMIO_READ) && host.events.contains(&exit::MMIO_WRITE));
    assert_eq!(dev.lock().notifications, 4);
    assert_eq!(dev.lock().last_notify, Some(LAYOUT.notify.start));
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}

#[test]
fn a_host_without_the_device_reads_as_nothing_and_the_disk_is_refused() {
    let dev = device(8, SERIAL, Misbehave::None);
    let (mut m, mut host) = started(&dev);
    host.mmio = None;
    // Every read is all ones (the host refuses each event), the queue's notify offset too,
    // which lies outside the notify window: the queue is refused before any request.
    assert_eq!(start(&mut m, &mut host, &dev).unwrap_err(), StartError::Queue);
    assert_eq!(dev.lock().notifications, 0);
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}

#[test]
fn a_host_that_stops_answering_loses_the_disk_and_the_platform_serves_on() {
    let dev = device(8, SERIAL, Misbehave::LoseAfter(2));
    let (mut m, mut host) = started(&dev);
    {
        let mut blk = start(&mut m, &mut host, &dev).unwrap();
        blk.write(0, &[1; BLOCK_SIZE]).unwrap();
        assert!(blk.write(1, &[2; BLOCK_SIZE]).is_err());
        assert!(blk.is_lost());
    }
    assert!(dev.lock().log.iter().any(|l| l.contains("no answer within 10 s")));
    // The GHCB still works for everything else.
    let mut hw = ModelSnpHw::new(&mut m, &mut host);
    assert!(snp::ghcb::mmio_read::<_, 4>(&mut hw, LAYOUT.common.start).is_ok());
}

/// The bounce pool's pages become the host's: validation rescinded, then a page-state
/// change each (`SnpPlatform::share_pages`); a page that cannot be rescinded stops it.
#[test]
fn the_pools_pages_are_given_to_the_host() {
    let mut m = Machine::new(64 * MIB, 32 * MIB);
    for pfn in world::SVSM_BASE >> 12..(world::SVSM_BASE + 4 * MIB) >> 12 {
        m.rmp.entry_mut(pfn).expect("RAM").validated = true;
    }
    let mut host = SnpHost::default();
    let pool = world::SVSM_BASE + 2 * MIB;
    {
        let mut p = SnpPlatform::start(ModelSnpHw::new(&mut m, &mut host), SnpConfig::new(1, 1)).unwrap();
        p.share_pages(pool, 3).expect("the host takes them");
        // The first is not validated any more: sharing stops there, before the host hears.
        assert_eq!(p.share_pages(pool, 1), Err(snp::StartError::Pvalidate(pool)));
    }
    for i in 0..3 {
        let e = m.rmp.entry((pool >> 12) + i).unwrap();
        assert!(!e.assigned && !e.validated, "page {i} is the host's");
    }
    assert!(m.rmp.entry((pool >> 12) + 3).unwrap().validated, "the next page is untouched");
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}

/// The transport SEV-SNP hosts give an SVSM: a virtio-mmio slot (`blk::mmio`), every
/// register access an MMIO event through the GHCB.
#[test]
fn the_disk_works_in_a_virtio_mmio_slot_through_the_hosts_mmio_events() {
    let dev = device(8, SERIAL, Misbehave::RequiresPlatformDma);
    let (mut m, mut host) = started(&dev);
    host.mmio = Some(HostDevice(Box::new(FakeMmioRegisters(dev.clone()))));
    {
        let regs = GhcbMmio::new(ModelSnpHw::new(&mut m, &mut host));
        let transport = ModernMmio::probe(regs, MMIO_SLOT).expect("a block device in the slot");
        let mut blk =
            VirtioBlk::<TestHal, _, _>::start(transport, SERIAL, |_| Some(FakePlatform(dev.clone()))).expect("starts");
        blk.write(2, &[0x2B; BLOCK_SIZE]).unwrap();
        let mut read = [0u8; BLOCK_SIZE];
        blk.read(2, &mut read).unwrap();
        assert!(read == [0x2B; BLOCK_SIZE]);
    }
    assert_eq!(dev.lock().last_notify, Some(MMIO_SLOT + 0x50));
    assert!(host.events.iter().all(|e| [exit::MMIO_READ, exit::MMIO_WRITE].contains(e)), "{:?}", host.events);
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}
