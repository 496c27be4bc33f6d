//! The sealed store's disk on the svm platform: a virtio-blk PCI device QEMU provides
//! (`-device virtio-blk-pci,serial=bulwark-state`), driven with the `virtio-drivers`
//! crate (docs/persistence.md "The disk").
//!
//! The guest cannot reach it: PCI configuration ports are not in its I/O permission map
//! (`svm::iopm`), and the device's BARs are not guest RAM, so its nested page tables do not
//! map them. Every byte the device returns is host input; the store authenticates all of
//! it before use.

use super::super::dma::{self, BounceHal};
use spin::Mutex;
use store::{Block, BlockDevice, IoError};
use virtio_drivers::device::blk::{SECTOR_SIZE, VirtIOBlk};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{BarInfo, Command, ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::{DeviceType, pci::virtio_device_type};

/// The serial number that marks the state disk among the host's block devices.
pub const SERIAL: &[u8] = b"bulwark-state";
/// Sectors per store block.
const SECTORS_PER_BLOCK: u64 = (store::BLOCK_SIZE / SECTOR_SIZE) as u64;

/// PCI configuration mechanism #1: address at port 0xCF8, data at 0xCFC. The pair is one
/// register set, so accesses take a lock.
struct PortCam;

static CAM_LOCK: Mutex<()> = Mutex::new(());

fn cam_address(df: DeviceFunction, offset: u8) -> u32 {
    0x8000_0000
        | u32::from(df.bus) << 16
        | u32::from(df.device & 0x1F) << 11
        | u32::from(df.function & 0x7) << 8
        | u32::from(offset & 0xFC)
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        let _held = CAM_LOCK.lock();
        x86::port::outl(0xCF8, cam_address(df, offset));
        x86::port::inl(0xCFC)
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        let _held = CAM_LOCK.lock();
        x86::port::outl(0xCF8, cam_address(df, offset));
        x86::port::outl(0xCFC, data);
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}

/// The state disk.
pub struct VirtioDisk {
    blk: VirtIOBlk<BounceHal, PciTransport>,
    blocks: u64,
}

/// Why there is no state disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskError {
    /// No virtio-blk device with the serial [`SERIAL`].
    Absent,
    /// The device's memory BARs are not where the SVSM can reach them (it maps the first
    /// 4 GiB), or the bounce pool could not be made.
    Unreachable,
    /// The device refused to start.
    Device,
}

/// Find the state disk on PCI bus 0 and start it.
pub fn find() -> Result<VirtioDisk, DiskError> {
    let mut root = PciRoot::new(PortCam);
    let candidates: alloc::vec::Vec<_> = root
        .enumerate_bus(0)
        .filter(|(_, info)| virtio_device_type(info) == Some(DeviceType::Block))
        .map(|(df, _)| df)
        .collect();
    let mut found = Err(DiskError::Absent);
    for df in candidates {
        match start(&mut root, df) {
            Ok(disk) => return Ok(disk),
            Err(DiskError::Absent) => {}
            Err(e) => found = Err(e),
        }
    }
    found
}

fn start(root: &mut PciRoot<PortCam>, df: DeviceFunction) -> Result<VirtioDisk, DiskError> {
    let bars = root.bars(df).map_err(|_| DiskError::Device)?;
    let reachable = bars.iter().flatten().all(|bar| match bar {
        BarInfo::Memory { address, size, .. } => {
            *address != 0 && address.checked_add(*size).is_some_and(|end| end <= 1 << 32)
        }
        BarInfo::IO { .. } => true,
    });
    if !reachable || !dma::init() {
        return Err(DiskError::Unreachable);
    }
    root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
    let transport = PciTransport::new::<BounceHal, _>(root, df).map_err(|_| DiskError::Device)?;
    let mut blk = VirtIOBlk::<BounceHal, _>::new(transport).map_err(|_| DiskError::Device)?;
    let mut serial = [0u8; 20];
    let len = blk.device_id(&mut serial).map_err(|_| DiskError::Device)?;
    if serial.get(..len) != Some(SERIAL) {
        return Err(DiskError::Absent);
    }
    let blocks = blk.capacity() / SECTORS_PER_BLOCK;
    Ok(VirtioDisk { blk, blocks })
}

impl VirtioDisk {
    fn sector(&self, index: u64) -> Result<usize, IoError> {
        if index >= self.blocks {
            return Err(IoError);
        }
        index.checked_mul(SECTORS_PER_BLOCK).and_then(|s| usize::try_from(s).ok()).ok_or(IoError)
    }

    /// The disk's size in bytes, as the host says.
    pub fn bytes(&self) -> u64 {
        self.blocks.saturating_mul(store::BLOCK_SIZE as u64)
    }
}

impl BlockDevice for VirtioDisk {
    fn block_count(&self) -> u64 {
        self.blocks
    }

    fn read(&mut self, index: u64, buf: &mut Block) -> Result<(), IoError> {
        let sector = self.sector(index)?;
        self.blk.read_blocks(sector, buf).map_err(|_| IoError)
    }

    fn write(&mut self, index: u64, buf: &Block) -> Result<(), IoError> {
        let sector = self.sector(index)?;
        self.blk.write_blocks(sector, buf).map_err(|_| IoError)
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.blk.flush().map_err(|_| IoError)
    }
}
