//! The sealed store's disk on the svm platform: a virtio-blk PCI device QEMU provides
//! (`-device virtio-blk-pci,serial=bulwark-state`), driven with the `virtio-drivers`
//! crate's PCI transport and virtqueue (docs/persistence.md "The disk").
//!
//! The guest cannot reach it: PCI configuration ports are not in its I/O permission map
//! (`svm::iopm`), and the device's BARs are not guest RAM (checked against the launch's
//! memory map in [`find`]), so its nested page tables do not map them. Every byte the
//! device returns is host input; the store authenticates all of it before use.
//!
//! The block requests themselves are built here, over the crate's `VirtQueue`, instead of
//! with its `VirtIOBlk`: that driver waits for a flush without end, and a host that never
//! completes a request would hold the calling vCPU, and the sealed state's lock, forever.
//! Here every request has a deadline; a device that misses it is wedged for good and the
//! store fails closed on an I/O error (docs/persistence.md "A host that loses I/O").

use super::super::clock;
use super::super::dma::{self, BounceHal};
use super::pci::PortCam;
use ::svm::virtio_pci;
use core::mem::ManuallyDrop;
use store::{Block, BlockDevice, IoError};
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, DeviceFunction, PCI_CAP_ID_VNDR, PciRoot,
};
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport, pci::virtio_device_type};

/// The serial number that marks the state disk among the host's block devices.
pub const SERIAL: &[u8] = b"bulwark-state";
/// virtio-blk addresses 512-byte sectors whatever the device's block size.
const SECTOR_SIZE: usize = 512;
/// Sectors per store block.
const SECTORS_PER_BLOCK: u64 = (store::BLOCK_SIZE / SECTOR_SIZE) as u64;
/// How long a request may take before the device counts as lost. An honest host completes
/// a 4 KiB write or a flush in milliseconds, even emulated on a loaded machine; the TSC
/// behind the clock is the host's to skew on this platform, so this bounds an honest but
/// failing host, not a hostile one (which can stop the vCPU anyway).
const REQUEST_DEADLINE_NS: u64 = 10_000_000_000;
/// Tries to read the device's configuration between two equal generation counts.
const CONSISTENT_TRIES: usize = 64;
/// The one request queue, and its size: a request is at most three descriptors (header,
/// one block, status) and only one is ever in flight.
const REQUEST_QUEUE: u16 = 0;
const QUEUE_SIZE: usize = 4;

bitflags::bitflags! {
    /// The device features the driver accepts (virtio 1.2, block device and reserved
    /// feature bits): a flush request,
    /// a read-only flag to notice, and the modern interface. No indirect descriptors and no
    /// event index: one small request at a time needs neither.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Features: u64 {
        const RO = 1 << 5;
        const FLUSH = 1 << 9;
        const VERSION_1 = 1 << 32;
    }
}

/// virtio-blk request types (virtio 1.2, "Device Operation" of the block device).
const REQ_IN: u32 = 0;
const REQ_OUT: u32 = 1;
const REQ_FLUSH: u32 = 4;
const REQ_GET_ID: u32 = 8;
/// The status byte of a completed request: 0 is success (`VIRTIO_BLK_S_OK`).
const STATUS_OK: u8 = 0;

/// The state disk.
pub struct VirtioDisk {
    /// Never dropped: the crate's `Drop` waits without end for the device to acknowledge a
    /// reset, which a host can withhold ([`VirtioDisk`]'s `Drop` asks for the reset only).
    transport: ManuallyDrop<PciTransport>,
    /// Its pages are never freed (`dma::BounceHal::dma_dealloc` keeps them), so a device
    /// that still writes them after a lost request writes only them.
    queue: VirtQueue<BounceHal, QUEUE_SIZE>,
    /// Where the request queue's notification is written (checked at start).
    notify_at: u64,
    blocks: u64,
    flush: bool,
    /// A request missed its deadline or came back malformed: no more requests.
    wedged: bool,
}

/// Why there is no state disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskError {
    /// No virtio-blk device with the serial [`SERIAL`].
    Absent,
    /// The device's memory BARs are not where the SVSM can reach them (it maps the first
    /// 4 GiB), or the bounce pool could not be made.
    Unreachable,
    /// The device refused to start, or is read-only.
    Device,
    /// The device lost a request while being set up: its bounce pages stay with it, so
    /// no other device is tried.
    Lost,
}

/// Find the state disk on PCI bus 0 and start it. `is_ram` says whether a physical range
/// overlaps RAM of the launch's memory map (the guest's and the SVSM's): no register BAR
/// may.
pub fn find(is_ram: impl Fn(u64, u64) -> bool) -> Result<VirtioDisk, DiskError> {
    let mut root = PciRoot::new(PortCam);
    let candidates: alloc::vec::Vec<_> = root
        .enumerate_bus(0)
        .filter(|(_, info)| virtio_device_type(info) == Some(DeviceType::Block))
        .map(|(df, _)| df)
        .collect();
    let mut found = Err(DiskError::Absent);
    for df in candidates {
        match start(&mut root, df, &is_ram) {
            Ok(disk) => return Ok(disk),
            Err(DiskError::Absent) => {}
            Err(DiskError::Lost) => return Err(DiskError::Lost),
            Err(e) => found = Err(e),
        }
    }
    found
}

fn start(
    root: &mut PciRoot<PortCam>,
    df: DeviceFunction,
    is_ram: &impl Fn(u64, u64) -> bool,
) -> Result<VirtioDisk, DiskError> {
    let bars = root.bars(df).map_err(|_| DiskError::Device)?;
    // The driver writes the device's registers through its memory BARs: one that lay in
    // RAM would have the SVSM write into its own memory (its heap, its page tables) or
    // into the guest's, where the guest could play the device.
    let reachable = bars.iter().flatten().all(|bar| match bar {
        BarInfo::Memory { address, size, .. } => {
            address.checked_add(*size).is_some_and(|end| *address != 0 && end <= 1 << 32 && !is_ram(*address, end))
        }
        BarInfo::IO { .. } => true,
    });
    if !reachable || !dma::init() {
        return Err(DiskError::Unreachable);
    }
    // The register windows the device's capabilities name, each inside one of those BARs
    // (`svm::virtio_pci`); the crate's transport maps only inside them (`dma::allow_mmio`).
    let memory_bars = bars.each_ref().map(|bar| match bar {
        Some(BarInfo::Memory { address, size, .. }) => Some((*address, *size)),
        _ => None,
    });
    let caps = capabilities(root, df).ok_or_else(|| {
        println!("sealed: the state disk's capability list does not end");
        DiskError::Device
    })?;
    let layout = virtio_pci::check(&memory_bars, caps).map_err(|e| {
        println!("sealed: the state disk's register windows are refused ({e:?})");
        DiskError::Unreachable
    })?;
    dma::allow_mmio(memory_bars.iter().flatten().map(|&(start, len)| virtio_pci::Window { start, len }));
    root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
    let mut transport = ManuallyDrop::new(PciTransport::new::<BounceHal, _>(root, df).map_err(|_| DiskError::Device)?);
    let features = transport.begin_init(Features::all());
    let sectors = read_consistent(&transport, || {
        let low: u32 = transport.read_config_space(0).ok()?;
        let high: u32 = transport.read_config_space(4).ok()?;
        Some(u64::from(high) << 32 | u64::from(low))
    })
    .ok_or(DiskError::Device)?;
    let queue = VirtQueue::new(&mut *transport, REQUEST_QUEUE, false, false).map_err(|_| DiskError::Device)?;
    let notify_at = queue_notify_address(&layout, REQUEST_QUEUE).ok_or_else(|| {
        println!("sealed: the state disk's queue notifies outside its notify window");
        DiskError::Device
    })?;
    transport.finish_init();
    let mut disk = VirtioDisk {
        transport,
        queue,
        notify_at,
        blocks: sectors / SECTORS_PER_BLOCK,
        flush: features.contains(Features::FLUSH),
        wedged: false,
    };
    if features.contains(Features::RO) {
        return Err(DiskError::Device);
    }
    let mut serial = [0u8; 20];
    if disk.request(REQ_GET_ID, 0, &[], &mut serial).is_err() {
        return Err(if disk.wedged { DiskError::Lost } else { DiskError::Device });
    }
    let len = serial.iter().position(|b| *b == 0).unwrap_or(serial.len());
    if serial.get(..len) != Some(SERIAL) {
        return Err(DiskError::Absent);
    }
    Ok(disk)
}

/// Capabilities a device's list can hold: 4-aligned, between offset 64 and 256 of its
/// configuration space.
const MAX_CAPABILITIES: usize = 48;

/// The device's vendor capabilities, as configuration space says them now; `None` for a
/// list longer than there is room for (a host's cycle, which the crate would follow for
/// good).
fn capabilities(root: &PciRoot<PortCam>, df: DeviceFunction) -> Option<alloc::vec::Vec<virtio_pci::Capability>> {
    let cam = PortCam;
    let word = |cap: u8, at: u8| cam.read_word(df, cap.wrapping_add(at));
    if root.capabilities(df).nth(MAX_CAPABILITIES).is_some() {
        return None;
    }
    let caps = root
        .capabilities(df)
        .take(MAX_CAPABILITIES)
        .filter(|cap| cap.id == PCI_CAP_ID_VNDR)
        .map(|cap| {
            let [_, _, cap_len, cfg_type] = word(cap.offset, 0).to_le_bytes();
            virtio_pci::Capability {
                cfg_type,
                cap_len,
                bar: word(cap.offset, 4).to_le_bytes()[0],
                offset: word(cap.offset, 8),
                length: word(cap.offset, 12),
                notify_multiplier: word(cap.offset, 16),
            }
        })
        .collect();
    Some(caps)
}

/// Config space read whole between two equal generation counts, as the crate's
/// `read_consistent` does, but given up after [`CONSISTENT_TRIES`]: a host that changes
/// the count every time would otherwise hold the boot for good.
fn read_consistent<T>(transport: &PciTransport, read: impl Fn() -> Option<T>) -> Option<T> {
    for _ in 0..CONSISTENT_TRIES {
        let before = transport.read_config_generation();
        let value = read();
        if transport.read_config_generation() == before {
            return value;
        }
    }
    None
}

/// Where the notification of `queue` goes: its `queue_notify_off`, read once now (virtio
/// fixes it for the device's life), placed in the checked notify window.
fn queue_notify_address(layout: &virtio_pci::Layout, queue: u16) -> Option<u64> {
    let common = layout.common.start;
    // SAFETY: `common` is the start of the common configuration window, which `check`
    // placed inside a memory BAR the SVSM checked is neither RAM nor its own memory, in
    // the identity-mapped first 4 GiB, 8-aligned and at least `COMMON_LEN` long; both
    // registers are 16-bit and 2-aligned inside it. The crate's transport maps the same
    // registers; every access of either side is volatile, so neither caches them.
    let notify_off = unsafe {
        core::ptr::write_volatile((common + virtio_pci::QUEUE_SELECT) as *mut u16, queue);
        core::ptr::read_volatile((common + virtio_pci::QUEUE_NOTIFY_OFF) as *const u16)
    };
    virtio_pci::notify_address(layout, notify_off)
}

impl VirtioDisk {
    /// Tell the device the request queue has work (a 16-bit write of the queue's index).
    fn notify(&mut self) {
        // SAFETY: `notify_at` is inside the notify window of a checked memory BAR, 2-aligned
        // and at least two bytes from its end (`virtio_pci::notify_address`), identity-
        // mapped; the crate's transport maps it too, and only writes it volatile (in its
        // own `notify`, which this driver never calls).
        unsafe { core::ptr::write_volatile(self.notify_at as *mut u16, REQUEST_QUEUE) };
    }

    fn sector(&self, index: u64) -> Result<u64, IoError> {
        if index >= self.blocks {
            return Err(IoError);
        }
        index.checked_mul(SECTORS_PER_BLOCK).ok_or(IoError)
    }

    /// The disk's size in bytes, as the host says.
    pub fn bytes(&self) -> u64 {
        self.blocks.saturating_mul(store::BLOCK_SIZE as u64)
    }

    /// One request: the header, `out` for the device to read, `into` for it to fill, and
    /// the status byte it writes last; waits for it until the deadline.
    fn request(&mut self, kind: u32, sector: u64, out: &[u8], into: &mut [u8]) -> Result<(), IoError> {
        if self.wedged {
            return Err(IoError);
        }
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        let mut status = [0xFFu8];
        let done = match (out.is_empty(), into.is_empty()) {
            (true, true) => self.exchange(&[&header], &mut [&mut status]),
            (false, true) => self.exchange(&[&header, out], &mut [&mut status]),
            (true, false) => self.exchange(&[&header], &mut [into, &mut status]),
            (false, false) => return Err(IoError),
        };
        match done {
            Ok(()) if status == [STATUS_OK] => Ok(()),
            Ok(()) => Err(IoError),
            Err(e) => {
                self.wedged = true;
                println!("sealed: the state disk lost a request ({e}); it is not used again");
                Err(IoError)
            }
        }
    }

    /// Hand buffers to the device, tell it, and take them back when it is done with them.
    fn exchange<'b>(&mut self, inputs: &'b [&'b [u8]], outputs: &'b mut [&'b mut [u8]]) -> Result<(), &'static str> {
        // SAFETY: `add` wants the buffers left alone until `pop_used` returns them, because
        // a device may write them. A lost request breaks the letter of that contract (its
        // buffers go back to the caller without `pop_used`), not its reason: the device
        // never sees them: `BounceHal` copies each
        // into a bounce page of its pool, and the descriptors name only those pages. On
        // success `pop_used` below copies the device's writes back and frees the pages; if
        // the device misses the deadline, the queue is never used again and its pages and
        // bounce pages stay allocated for good (`wedged`; `dma_dealloc` never frees), so nothing the device
        // can still write refers to these buffers.
        let token = unsafe { self.queue.add(inputs, outputs) }.map_err(|_| "the queue refused it")?;
        if self.queue.should_notify() {
            self.notify();
        }
        let deadline = clock::monotonic_ns().saturating_add(REQUEST_DEADLINE_NS);
        while !self.queue.can_pop() {
            if clock::monotonic_ns() > deadline {
                return Err("no answer within 10 s");
            }
            core::hint::spin_loop();
        }
        // SAFETY: the same buffers `add` took for this token.
        unsafe { self.queue.pop_used(token, inputs, outputs) }.map(|_| ()).map_err(|_| "a malformed answer")
    }
}

impl Drop for VirtioDisk {
    fn drop(&mut self) {
        // A device that lost a request is left as it is: an honest QEMU finishes (drains)
        // the lost request before it resets, and would hold this vCPU until then.
        if !self.wedged {
            self.transport.set_status(DeviceStatus::empty());
        }
    }
}

impl BlockDevice for VirtioDisk {
    fn block_count(&self) -> u64 {
        self.blocks
    }

    fn read(&mut self, index: u64, buf: &mut Block) -> Result<(), IoError> {
        let sector = self.sector(index)?;
        self.request(REQ_IN, sector, &[], buf)
    }

    fn write(&mut self, index: u64, buf: &Block) -> Result<(), IoError> {
        let sector = self.sector(index)?;
        self.request(REQ_OUT, sector, buf, &mut [])
    }

    fn flush(&mut self) -> Result<(), IoError> {
        // Without the flush feature the device has no write cache to flush: it completes a
        // write once it is durable (and QEMU turns its write cache off for a driver that
        // does not accept the feature).
        if !self.flush {
            return Ok(());
        }
        self.request(REQ_FLUSH, 0, &[], &mut [])
    }
}
