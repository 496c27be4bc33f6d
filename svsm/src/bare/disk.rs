//! The sealed store's disk: a virtio-blk PCI device the host provides (QEMU's `-device
//! virtio-blk-pci,serial=bulwark-state`), found and checked here and driven by the `blk`
//! crate's driver and PCI transport (docs/persistence.md "The disk"). Each platform says
//! how the transport reaches the registers: plain memory accesses on svm (`mmio`), GHCB
//! MMIO events on SEV-SNP (`snp::device::GhcbMmio`); the buffers go through the bounce
//! pool of `dma` on both, made of pages shared with the host on SEV-SNP.
//!
//! The guest cannot reach it. On svm, PCI configuration ports are not in its I/O
//! permission map (`svm::iopm`), and the device's BARs are not guest RAM (checked against
//! the launch's memory map in [`find`]), so its nested page tables do not map them; on
//! SEV-SNP the host could give the guest the same device, but everything on the disk is
//! sealed. Every byte the device returns is host input; the store authenticates all of it
//! before use.

use super::clock;
use super::dma::{self, BounceHal};
use super::pci::PortCam;
use blk::mmio::{ModernMmio, SLOT_LEN};
use blk::pci::{ModernPci, Registers};
use blk::virtio_pci::{self, Layout};
use blk::{StartError, VirtioBlk};
use store::{Block, BlockDevice, IoError};
use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, DeviceFunction, PCI_CAP_ID_VNDR, PciRoot,
};
use virtio_drivers::transport::{DeviceType, Transport, pci::virtio_device_type};

/// The serial number that marks the state disk among the host's block devices.
pub const SERIAL: &[u8] = b"bulwark-state";
const _: () = assert!(blk::BLOCK_SIZE == store::BLOCK_SIZE);

/// What the driver needs of the SVSM: the clock and the log.
pub struct Clock;

impl blk::Platform for Clock {
    fn now_ns(&self) -> u64 {
        clock::monotonic_ns()
    }

    fn log(&self, line: core::fmt::Arguments<'_>) {
        println!("{line}");
    }
}

/// The state disk, over a PCI ([`find`]) or an MMIO ([`find_mmio`]) transport.
pub struct VirtioDisk<T: Transport>(VirtioBlk<BounceHal, T, Clock>);

/// Why there is no state disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskError {
    /// No virtio-blk device with the serial [`SERIAL`].
    Absent,
    /// The device's memory BARs are not where the SVSM can reach them (below 4 GiB and
    /// not memory), or the bounce pool could not be made.
    Unreachable,
    /// The device refused to start, or is read-only.
    Device,
    /// The device lost a request while being set up: its bounce pages stay with it, so
    /// no other device is tried.
    Lost,
}

/// Find the state disk on PCI bus 0 and start it. `is_ram` says whether a physical range
/// overlaps RAM of the launch's memory map (the guest's and the SVSM's): no register BAR
/// may. `registers` gives the transport its register accesses for a checked layout, and
/// `dma_pool` the bounce pool's pages (see `dma::init`) once there is a block device.
pub fn find<R: Registers>(
    is_ram: impl Fn(u64, u64) -> bool,
    registers: impl Fn(&Layout) -> R,
    dma_pool: impl FnOnce() -> Option<(u64, u64)>,
) -> Result<VirtioDisk<ModernPci<R>>, DiskError> {
    let mut root = PciRoot::new(PortCam);
    let candidates: alloc::vec::Vec<_> = root
        .enumerate_bus(0)
        .filter(|(_, info)| virtio_device_type(info) == Some(DeviceType::Block))
        .map(|(df, _)| df)
        .collect();
    // The bounce pool only once there is a block device to use it (on SEV-SNP its pages
    // are given to the host for good).
    if !candidates.is_empty() && !dma::init(dma_pool) {
        return Err(DiskError::Unreachable);
    }
    let mut found = Err(DiskError::Absent);
    for df in candidates {
        match start(&mut root, df, &is_ram, &registers) {
            Ok(disk) => return Ok(disk),
            Err(DiskError::Absent) => {}
            Err(DiskError::Lost) => return Err(DiskError::Lost),
            Err(e) => found = Err(e),
        }
    }
    found
}

fn start<R: Registers>(
    root: &mut PciRoot<PortCam>,
    df: DeviceFunction,
    is_ram: &impl Fn(u64, u64) -> bool,
    registers: &impl Fn(&Layout) -> R,
) -> Result<VirtioDisk<ModernPci<R>>, DiskError> {
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
    if !reachable || !dma::ready() {
        return Err(DiskError::Unreachable);
    }
    // The register windows the device's capabilities name, each inside one of those BARs
    // (`blk::virtio_pci`); the transport reaches nothing else.
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
    root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
    let transport = ModernPci::new(registers(&layout), layout, DeviceType::Block);
    let started = VirtioBlk::start(transport, SERIAL, |t| {
        let can = t.can_notify(blk::REQUEST_QUEUE);
        if !can {
            println!("sealed: the state disk's queue notifies outside its notify window");
        }
        can.then_some(Clock)
    });
    outcome(started)
}

fn outcome<T: Transport>(
    started: Result<VirtioBlk<BounceHal, T, Clock>, StartError>,
) -> Result<VirtioDisk<T>, DiskError> {
    match started {
        Ok(blk) => Ok(VirtioDisk(blk)),
        Err(StartError::NotOurs) => Err(DiskError::Absent),
        Err(StartError::Device | StartError::Queue) => Err(DiskError::Device),
        Err(StartError::Lost) => Err(DiskError::Lost),
    }
}

/// Find the state disk among the virtio-mmio slots at `slots` (what fw_cfg's
/// `etc/hardware-info` lists for the SVSM) and start it; as [`find`], with a slot that
/// overlaps memory (`is_ram`) passed over and `registers` for every slot's accesses.
pub fn find_mmio<R: Registers>(
    slots: &[u64],
    is_ram: impl Fn(u64, u64) -> bool,
    registers: impl Fn() -> R,
    dma_pool: impl FnOnce() -> Option<(u64, u64)>,
) -> Result<VirtioDisk<ModernMmio<R>>, DiskError> {
    let candidates: alloc::vec::Vec<_> = slots
        .iter()
        .filter(|&&slot| slot.checked_add(SLOT_LEN).is_some_and(|end| !is_ram(slot, end)))
        .filter_map(|&slot| ModernMmio::probe(registers(), slot).ok())
        .collect();
    if !candidates.is_empty() && !dma::init(dma_pool) {
        return Err(DiskError::Unreachable);
    }
    let mut found = Err(DiskError::Absent);
    for transport in candidates {
        match outcome(VirtioBlk::start(transport, SERIAL, |_| Some(Clock))) {
            Ok(disk) => return Ok(disk),
            Err(DiskError::Absent) => {}
            Err(DiskError::Lost) => return Err(DiskError::Lost),
            Err(e) => found = Err(e),
        }
    }
    found
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

impl<T: Transport> VirtioDisk<T> {
    /// The disk's size in bytes, as the host says.
    pub fn bytes(&self) -> u64 {
        self.0.bytes()
    }
}

impl<T: Transport> BlockDevice for VirtioDisk<T> {
    fn block_count(&self) -> u64 {
        self.0.blocks()
    }

    fn read(&mut self, index: u64, buf: &mut Block) -> Result<(), IoError> {
        self.0.read(index, buf).map_err(|_| IoError)
    }

    fn write(&mut self, index: u64, buf: &Block) -> Result<(), IoError> {
        self.0.write(index, buf).map_err(|_| IoError)
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.0.flush().map_err(|_| IoError)
    }
}
