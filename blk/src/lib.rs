//! The SVSM's virtio-blk driver for its state disk, whatever carries the device's
//! registers: virtio over PCI ([`pci`]) or over MMIO ([`mmio`], the slots SEV-SNP hosts
//! give an SVSM), the software device of `testing` in the tests (docs/persistence.md "The disk").
//!
//! The requests are built here over the `virtio-drivers` crate's `VirtQueue`, not with its
//! `VirtIOBlk`: that driver waits for every answer without end (and has no flush that does
//! not), so a host that never completes a request would hold the calling vCPU, and the
//! sealed state's lock, for good. Here one request is in flight at a time, each has a
//! deadline, and a device that misses it or answers with a request it was not given is
//! given up for good ([`VirtioBlk::is_lost`]): its queue and bounce pages stay with it, so
//! nothing it may still write reaches a buffer in use. A request the device answers with
//! an error status, or without writing its status, fails alone. (With one request in
//! flight a host can still answer the next one early, naming it before doing it; that
//! request then fails, its status byte still "not done".) Every byte the device returns
//! is host input; the store authenticates it.
#![no_std]
// Host input reaches this crate: no panics, no indexing that can go out of bounds, no
// silent truncation (tests may do all of these).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::cast_possible_truncation
    )
)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod mmio;
pub mod pci;
mod queue;
#[cfg(feature = "testing")]
pub mod testing;
pub mod virtio_pci;

use virtio_drivers::Hal;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, Transport};

/// The size of a block as the store addresses them.
pub const BLOCK_SIZE: usize = 4096;
/// virtio-blk addresses 512-byte sectors whatever the device's block size.
const SECTOR_SIZE: usize = 512;
/// Sectors per store block.
const SECTORS_PER_BLOCK: u64 = (BLOCK_SIZE / SECTOR_SIZE) as u64;
/// How long a request may take before the device counts as lost. An honest host completes
/// a 4 KiB write or a flush in milliseconds, even emulated on a loaded machine. The clock
/// is the platform's, whose TSC the host may skew: this bounds an honest but failing host,
/// not a hostile one (which can stop the vCPU anyway).
pub const REQUEST_DEADLINE_NS: u64 = 10_000_000_000;
/// How long a device may take to acknowledge a reset (its status reading 0 again).
const RESET_DEADLINE_NS: u64 = 100_000_000;
/// Tries to read the device's configuration between two equal generation counts.
const CONSISTENT_TRIES: usize = 64;
/// The one request queue, and its size: a request is at most three descriptors (header,
/// one block, status) and only one is ever in flight.
pub const REQUEST_QUEUE: u16 = 0;
pub const QUEUE_SIZE: usize = 4;

bitflags::bitflags! {
    /// The device features the driver accepts (virtio 1.2, block device and reserved
    /// feature bits): a flush request, a read-only flag to notice, the modern interface,
    /// and platform DMA (QEMU offers it to every device of a confidential guest and refuses
    /// a driver that turns it down: the bounce pool is the platform's DMA here). No
    /// indirect descriptors and no event index: one small request at a time needs neither.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Features: u64 {
        const RO = 1 << 5;
        const FLUSH = 1 << 9;
        const VERSION_1 = 1 << 32;
        const ACCESS_PLATFORM = 1 << 33;
    }
}

/// A `Hal` whose DMA the driver's safety rests on: every buffer shared with the device is
/// a bounce copy (the device never sees the caller's memory), and the bounce and queue
/// pages of a request that never came back are never handed to anything but DMA again.
///
/// # Safety
///
/// An implementation must keep both promises: the driver returns a lost request's buffers
/// to safe code while the device may still write where their descriptors point.
#[expect(unsafe_code, reason = "a promise the driver's safety rests on")]
pub unsafe trait BouncingHal: Hal {}

/// virtio-blk request types (virtio 1.2, "Device Operation" of the block device).
pub mod request {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
}
/// The status byte of a completed request: 0 is success (`VIRTIO_BLK_S_OK`).
pub const STATUS_OK: u8 = 0;
/// The length of the serial number a GET_ID request returns.
pub const SERIAL_LEN: usize = 20;

/// What the driver needs of its platform besides the transport.
pub trait Platform {
    /// A monotonic clock in nanoseconds, for the requests' deadlines.
    fn now_ns(&self) -> u64;
    /// A line for the SVSM's log.
    fn log(&self, line: core::fmt::Arguments<'_>);
}

/// A device request failed; the host's reason is not trusted and not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoError;

/// Why a device is not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartError {
    /// Its serial number is not the one asked for: another of the host's disks.
    NotOurs,
    /// It refused to start, its configuration would not read the same twice, or it is
    /// read-only.
    Device,
    /// The platform refused the queue as the device had it set up (its notification
    /// outside the notify window, say).
    Queue,
    /// It lost a request while being set up: its pages stay with it, so no other device
    /// should be tried.
    Lost,
}

/// A started virtio-blk device: one request at a time.
pub struct VirtioBlk<H: BouncingHal, T: Transport, P: Platform> {
    /// A transport whose `Drop` waits for the device (the crate's PCI transport does, for a
    /// reset a host can withhold) would hold the SVSM: `blk::pci::ModernPci` has none, and
    /// this type resets the device itself with a deadline.
    transport: T,
    queue: queue::Requests<H>,
    platform: P,
    blocks: u64,
    flush: bool,
}

impl<H: BouncingHal, T: Transport, P: Platform> core::fmt::Debug for VirtioBlk<H, T, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioBlk")
            .field("blocks", &self.blocks)
            .field("flush", &self.flush)
            .field("lost", &self.queue.is_lost())
            .finish_non_exhaustive()
    }
}

impl<H: BouncingHal, T: Transport, P: Platform> VirtioBlk<H, T, P> {
    /// Start the device behind `transport` (which the platform made and checked): agree on
    /// features, read its size, make the request queue, let `platform` look at the
    /// transport with the queue set up (`None`: it refuses it; a [`pci::ModernPci`] whose
    /// queue it cannot notify, say), and ask for the device's serial number, which must be
    /// `serial`. A device that does not offer the modern interface, or does not take the
    /// features the driver accepts (FEATURES_OK does not read back), is refused.
    pub fn start(
        mut transport: T,
        serial: &[u8],
        platform: impl FnOnce(&mut T) -> Option<P>,
    ) -> Result<Self, StartError> {
        let features = transport.begin_init(Features::all());
        if !features.contains(Features::VERSION_1) || !transport.get_status().contains(DeviceStatus::FEATURES_OK) {
            transport.set_status(DeviceStatus::FAILED);
            return Err(StartError::Device);
        }
        let sectors = read_consistent(&transport, |t| {
            let low: u32 = t.read_config_space(0).ok()?;
            let high: u32 = t.read_config_space(4).ok()?;
            Some(u64::from(high) << 32 | u64::from(low))
        })
        .ok_or(StartError::Device)?;
        let queue = VirtQueue::new(&mut transport, REQUEST_QUEUE, false, false).map_err(|_| StartError::Device)?;
        let platform = platform(&mut transport).ok_or(StartError::Queue)?;
        transport.finish_init();
        let mut blk = Self {
            transport,
            queue: queue::Requests::new(queue),
            platform,
            blocks: sectors / SECTORS_PER_BLOCK,
            flush: features.contains(Features::FLUSH),
        };
        if features.contains(Features::RO) {
            return Err(StartError::Device);
        }
        let mut id = [0u8; SERIAL_LEN];
        if blk.request(request::GET_ID, 0, &[], &mut id).is_err() {
            return Err(if blk.is_lost() { StartError::Lost } else { StartError::Device });
        }
        let len = id.iter().position(|b| *b == 0).unwrap_or(id.len());
        if id.get(..len) != Some(serial) {
            return Err(StartError::NotOurs);
        }
        Ok(blk)
    }

    /// Blocks of [`BLOCK_SIZE`] on the device, as the host says.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The device's size in bytes, as the host says.
    pub fn bytes(&self) -> u64 {
        self.blocks.saturating_mul(BLOCK_SIZE as u64)
    }

    /// The device missed a deadline or answered out of turn: it gets no more requests.
    pub fn is_lost(&self) -> bool {
        self.queue.is_lost()
    }

    /// Read block `index`.
    pub fn read(&mut self, index: u64, buf: &mut [u8; BLOCK_SIZE]) -> Result<(), IoError> {
        let sector = self.sector(index)?;
        self.request(request::IN, sector, &[], buf)
    }

    /// Write block `index` (durable after a [`flush`](Self::flush)).
    pub fn write(&mut self, index: u64, buf: &[u8; BLOCK_SIZE]) -> Result<(), IoError> {
        let sector = self.sector(index)?;
        self.request(request::OUT, sector, buf, &mut [])
    }

    /// Make every completed write durable.
    pub fn flush(&mut self) -> Result<(), IoError> {
        // Without the flush feature the device has no write cache to flush: it completes a
        // write once it is durable (and QEMU turns its write cache off for a driver that
        // does not accept the feature).
        if !self.flush {
            return Ok(());
        }
        self.request(request::FLUSH, 0, &[], &mut [])
    }

    fn sector(&self, index: u64) -> Result<u64, IoError> {
        if index >= self.blocks {
            return Err(IoError);
        }
        index.checked_mul(SECTORS_PER_BLOCK).ok_or(IoError)
    }

    /// One request: the header, `out` for the device to read, `into` for it to fill, and
    /// the status byte it writes last.
    fn request(&mut self, kind: u32, sector: u64, out: &[u8], into: &mut [u8]) -> Result<(), IoError> {
        let mut header = [0u8; 16];
        let (kind_bytes, rest) = header.split_at_mut(4);
        kind_bytes.copy_from_slice(&kind.to_le_bytes());
        if let Some(at) = rest.get_mut(4..) {
            at.copy_from_slice(&sector.to_le_bytes());
        }
        // Anything but the device's own success byte fails the request: a device that
        // completes it without writing the status leaves this.
        let mut status = [0xFFu8];
        let done = match (out.is_empty(), into.is_empty()) {
            (true, true) => self.queue.exchange(&mut self.transport, &self.platform, &[&header], &mut [&mut status]),
            (false, true) => {
                self.queue.exchange(&mut self.transport, &self.platform, &[&header, out], &mut [&mut status])
            }
            (true, false) => {
                self.queue.exchange(&mut self.transport, &self.platform, &[&header], &mut [into, &mut status])
            }
            (false, false) => return Err(IoError),
        };
        match done {
            Ok(()) if status == [STATUS_OK] => Ok(()),
            Ok(()) => Err(IoError),
            Err(queue::Lost::Before) => Err(IoError),
            Err(queue::Lost::Now(why)) => {
                self.platform.log(format_args!("sealed: the state disk lost a request ({why}); it is not used again"));
                Err(IoError)
            }
        }
    }
}

impl<H: BouncingHal, T: Transport, P: Platform> Drop for VirtioBlk<H, T, P> {
    fn drop(&mut self) {
        // A device that lost a request is left as it is: an honest QEMU finishes (drains)
        // the lost request before it resets, and would hold this vCPU until then.
        if self.is_lost() {
            return;
        }
        // Reset, and give the device a while to say it has (virtio 1.2, 4.1.4.3.2: it
        // reads 0 once it is done with the queue); one that never does is given up.
        self.transport.set_status(DeviceStatus::empty());
        let deadline = self.platform.now_ns().saturating_add(RESET_DEADLINE_NS);
        while !self.transport.get_status().is_empty() && self.platform.now_ns() < deadline {
            core::hint::spin_loop();
        }
    }
}

/// Config space read whole between two equal generation counts, as the crate's
/// `read_consistent` does, but given up after [`CONSISTENT_TRIES`]: a host that changes
/// the count every time would otherwise hold the boot for good.
fn read_consistent<T: Transport, V>(transport: &T, read: impl Fn(&T) -> Option<V>) -> Option<V> {
    for _ in 0..CONSISTENT_TRIES {
        let before = transport.read_config_generation();
        let value = read(transport);
        if transport.read_config_generation() == before {
            return value;
        }
    }
    None
}
