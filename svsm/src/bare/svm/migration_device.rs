//! The migration pages on the svm platform: QEMU's `ivshmem-plain` PCI device, whose
//! BAR 2 is memory QEMU shares with a file on the host (`-object
//! memory-backend-file,share=on,...`). Its first half is this SVSM's outbound ring of
//! migration pages, its second half the inbound ring; the first page of each ring is the
//! proposal's page, and an 8 KiB BAR is just those two (no ring). `bulwark migrate
//! relay` reads and writes the same file (docs/migration.md, "The QEMU end to end").
//!
//! The guest cannot reach the device: PCI configuration ports are not in its I/O
//! permission map, and the BAR is not guest RAM, so its nested page tables do not map it.
//! Every byte in it is the host's to change at any time: [`BarPage`] copies with volatile
//! accesses, and `migrate::channel` parses only its copies.

use super::super::pci::PortCam;
use abi::migration::{BUFFER_OFFSET, BUFFER_SIZE, DATA_REGISTER_OFFSET, DataRegister, MigrationStatus, STATUS_OFFSET};
use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};
use migrate::channel::MigrationPage;
use virtio_drivers::transport::pci::bus::{BarInfo, Command, PciRoot};

/// The ivshmem device's PCI IDs (QEMU's `docs/specs/ivshmem-spec.rst`).
const VENDOR: u16 = 0x1AF4;
const DEVICE: u16 = 0x1110;
/// The BAR that holds the shared memory.
const SHARED_BAR: usize = 2;
const PAGE: u64 = abi::migration::PAGE_SIZE as u64;

/// The device's `[outbound, inbound]` rings (one page each without a ring).
pub type Rings = [Vec<BarPage>; 2];

/// Why there is no migration device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceError {
    /// No ivshmem device on bus 0.
    Absent,
    /// Its shared memory is smaller than two pages, not page-aligned, above the 4 GiB the
    /// SVSM maps, or overlaps RAM (the part the rings use).
    Unusable,
}

/// One migration page in the device's BAR (a clone is the same page: the migration
/// driver keeps one to start the next session after a failed one).
#[derive(Clone, Debug)]
pub struct BarPage {
    /// Its address (identity-mapped, checked by [`find`]).
    base: u64,
}

impl BarPage {
    /// Copies `out.len()` bytes from `offset`: eight at a time when both are multiples of
    /// eight (the 2 KiB buffer), else byte by byte (the registers).
    fn read(&self, offset: usize, out: &mut [u8]) {
        let at = (self.base as *const u8).wrapping_add(offset);
        if offset.is_multiple_of(8) && out.len().is_multiple_of(8) {
            for (i, word) in out.chunks_exact_mut(8).enumerate() {
                // SAFETY: `base..base + PAGE` is the device's shared memory, identity-mapped
                // and not RAM (checked by `find`), so no Rust object lives there; offsets
                // stay inside the page (the callers use the page's fixed layout), and the
                // page-aligned base plus a multiple of eight is 8-aligned. Volatile: the
                // host may change any byte at any time.
                let value = unsafe { core::ptr::read_volatile(at.cast::<u64>().add(i)) };
                word.copy_from_slice(&value.to_le_bytes());
            }
        } else {
            for (i, b) in out.iter_mut().enumerate() {
                // SAFETY: as above, one byte at a time.
                *b = unsafe { core::ptr::read_volatile(at.add(i)) };
            }
        }
    }

    /// Writes `bytes` at `offset`, eight at a time when it can, as [`Self::read`].
    fn write(&self, offset: usize, bytes: &[u8]) {
        let at = (self.base as *mut u8).wrapping_add(offset);
        if offset.is_multiple_of(8) && bytes.len().is_multiple_of(8) {
            for (i, word) in bytes.chunks_exact(8).enumerate() {
                let mut value = [0u8; 8];
                value.copy_from_slice(word);
                // SAFETY: as for `read`.
                unsafe { core::ptr::write_volatile(at.cast::<u64>().add(i), u64::from_le_bytes(value)) };
            }
        } else {
            for (i, b) in bytes.iter().enumerate() {
                // SAFETY: as for `read`, one byte at a time.
                unsafe { core::ptr::write_volatile(at.add(i), *b) };
            }
        }
    }

    fn byte(&self, offset: usize) -> u8 {
        let mut b = [0u8];
        self.read(offset, &mut b);
        b[0]
    }
}

impl MigrationPage for BarPage {
    fn read_status(&mut self) -> MigrationStatus {
        MigrationStatus(self.byte(STATUS_OFFSET))
    }
    fn write_status(&mut self, status: MigrationStatus) {
        fence(Ordering::SeqCst);
        self.write(STATUS_OFFSET, &[status.0]);
    }
    fn read_data_register(&mut self) -> DataRegister {
        let value = DataRegister(self.byte(DATA_REGISTER_OFFSET));
        // The register before the buffer it announces.
        fence(Ordering::SeqCst);
        value
    }
    fn write_data_register(&mut self, value: DataRegister) {
        // The buffer before the register that announces it.
        fence(Ordering::SeqCst);
        self.write(DATA_REGISTER_OFFSET, &[value.0]);
    }
    fn read_buffer(&mut self, buf: &mut [u8; BUFFER_SIZE]) {
        self.read(BUFFER_OFFSET, buf);
    }
    fn write_buffer(&mut self, buf: &[u8; BUFFER_SIZE]) {
        self.write(BUFFER_OFFSET, buf);
    }
}

/// Find the migration device on PCI bus 0: its `[outbound, inbound]` rings, each of half
/// the BAR's pages (at most `MAX_RING_PAGES`). `is_ram` says whether a range overlaps RAM
/// (the launch's memory map): the rings must not.
pub fn find(is_ram: impl Fn(u64, u64) -> bool) -> Result<Rings, DeviceError> {
    let mut root = PciRoot::new(PortCam);
    let found = root.enumerate_bus(0).find(|(_, info)| info.vendor_id == VENDOR && info.device_id == DEVICE);
    let Some((df, _)) = found else { return Err(DeviceError::Absent) };
    let bars = root.bars(df).map_err(|_| DeviceError::Unusable)?;
    let Some(Some(BarInfo::Memory { address, size, .. })) = bars.get(SHARED_BAR) else {
        return Err(DeviceError::Unusable);
    };
    let (base, size) = (*address, *size);
    let ring = (size / (2 * PAGE)).min(u64::from(migrate::session::MAX_RING_PAGES));
    let end = base.checked_add(2 * ring * PAGE).ok_or(DeviceError::Unusable)?;
    if base == 0 || !base.is_multiple_of(PAGE) || ring == 0 || end > super::super::guest_phys::MAPPED_TOP {
        return Err(DeviceError::Unusable);
    }
    if is_ram(base, end) {
        return Err(DeviceError::Unusable);
    }
    root.set_command(df, Command::MEMORY_SPACE);
    let pages = |first: u64| (first..first + ring).map(|i| BarPage { base: base + i * PAGE }).collect();
    Ok([pages(0), pages(ring)])
}
