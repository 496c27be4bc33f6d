//! virtio over MMIO, version 2 (virtio 1.2, 4.2.2), on the platform's register accesses:
//! the transport SEV-SNP hosts give an SVSM. Under KVM a PCI device is the whole VM's,
//! and the guest's firmware assigns and moves its BARs after the SVSM set it up; QEMU's
//! q35 instead gets virtio-mmio slots meant for the SVSM alone, at addresses it lists in
//! the fw_cfg file `etc/hardware-info` ([`slots`]; the proposal COCONUT-SVSM's block
//! device uses). Each slot is one 4 KiB page: the registers, then the device's
//! configuration at 0x100. Every access stays inside that page.

use crate::pci::{Registers, Width, low32, read_config};
use virtio_drivers::PhysAddr;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// The registers (all 32 bits wide).
mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC: u64 = 0x080;
    pub const QUEUE_DRIVER: u64 = 0x090;
    pub const QUEUE_DEVICE: u64 = 0x0A0;
    pub const CONFIG_GENERATION: u64 = 0x0FC;
    pub const CONFIG: u64 = 0x100;
}

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;
/// A slot's size: its registers and the device's configuration.
pub const SLOT_LEN: u64 = 0x1000;
/// virtio's device ID of a block device (0: an empty slot).
const BLOCK_ID: u32 = 2;

/// A modern virtio-mmio block device's transport.
#[derive(Debug)]
pub struct ModernMmio<R: Registers> {
    regs: R,
    base: u64,
}

/// Why a slot holds no usable block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// Not a virtio-mmio slot (magic), or a legacy one (version 1).
    NotVirtio,
    /// An empty slot, or another kind of device.
    NotBlock,
    /// The slot's address is not page-aligned.
    Misaligned,
}

impl<R: Registers> ModernMmio<R> {
    /// The block device in the slot at `base`, if it is one.
    pub fn probe(regs: R, base: u64) -> Result<Self, ProbeError> {
        if !base.is_multiple_of(SLOT_LEN) || base.checked_add(SLOT_LEN).is_none() {
            return Err(ProbeError::Misaligned);
        }
        let mmio = Self { regs, base };
        if mmio.read(reg::MAGIC) != MAGIC || mmio.read(reg::VERSION) != 2 {
            return Err(ProbeError::NotVirtio);
        }
        if mmio.read(reg::DEVICE_ID) != BLOCK_ID {
            return Err(ProbeError::NotBlock);
        }
        Ok(mmio)
    }

    fn read(&self, offset: u64) -> u32 {
        self.regs.read(self.base + offset, Width::Dword)
    }

    fn write(&self, offset: u64, value: u32) {
        self.regs.write(self.base + offset, Width::Dword, value);
    }

    fn write_address(&self, offset: u64, addr: PhysAddr) {
        self.write(offset, low32(addr));
        self.write(offset + 4, low32(addr >> 32));
    }
}

impl<R: Registers> Transport for ModernMmio<R> {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }

    fn read_device_features(&mut self) -> u64 {
        self.write(reg::DEVICE_FEATURES_SEL, 0);
        let low = self.read(reg::DEVICE_FEATURES);
        self.write(reg::DEVICE_FEATURES_SEL, 1);
        let high = self.read(reg::DEVICE_FEATURES);
        u64::from(high) << 32 | u64::from(low)
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.write(reg::DRIVER_FEATURES_SEL, 0);
        self.write(reg::DRIVER_FEATURES, low32(driver_features));
        self.write(reg::DRIVER_FEATURES_SEL, 1);
        self.write(reg::DRIVER_FEATURES, low32(driver_features >> 32));
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.write(reg::QUEUE_SEL, u32::from(queue));
        self.read(reg::QUEUE_NUM_MAX)
    }

    fn notify(&mut self, queue: u16) {
        // The notification register is the slot's own: nothing for the host to move.
        self.write(reg::QUEUE_NOTIFY, u32::from(queue));
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(self.read(reg::STATUS))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.write(reg::STATUS, status.bits());
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {
        // Legacy devices only.
    }

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.write(reg::QUEUE_SEL, u32::from(queue));
        self.write(reg::QUEUE_NUM, size);
        self.write_address(reg::QUEUE_DESC, descriptors);
        self.write_address(reg::QUEUE_DRIVER, driver_area);
        self.write_address(reg::QUEUE_DEVICE, device_area);
        self.write(reg::QUEUE_READY, 1);
    }

    fn queue_unset(&mut self, _queue: u16) {
        // Only a reset takes a queue back (stopping one alone needs RING_RESET, which the
        // driver does not take), as over PCI.
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.write(reg::QUEUE_SEL, u32::from(queue));
        self.read(reg::QUEUE_READY) == 1
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        // The SVSM polls its queues and takes no interrupts from devices.
        InterruptStatus::empty()
    }

    fn read_config_generation(&self) -> u32 {
        self.read(reg::CONFIG_GENERATION)
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> virtio_drivers::Result<T> {
        read_config(&self.regs, offset, |at, width| {
            let end = reg::CONFIG.checked_add(at)?.checked_add(width.bytes())?;
            (end <= SLOT_LEN).then_some(self.base + reg::CONFIG + at)
        })
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        _offset: usize,
        _value: T,
    ) -> virtio_drivers::Result<()> {
        // The SVSM's devices never write their configuration.
        Err(virtio_drivers::Error::Unsupported)
    }
}

/// fw_cfg's `etc/hardware-info` entry type of a virtio-mmio slot for the SVSM
/// (`HardwareInfoVirtioMmioSvsm` in QEMU's proposal; edk2's HardwareInfoLib format).
pub const HARDWARE_INFO_VIRTIO_MMIO_SVSM: u64 = 0x1000;

/// The virtio-mmio slots `etc/hardware-info` lists for the SVSM: entries of a 64-bit type
/// and a 64-bit size, then that many bytes; a slot's are its 64-bit MMIO address. The
/// file is the host's: an entry whose size runs past the end ends the list, and one of
/// another type or size is skipped.
pub fn slots(hardware_info: &[u8]) -> impl Iterator<Item = u64> + '_ {
    let mut rest = hardware_info;
    core::iter::from_fn(move || {
        loop {
            let (header, after) = rest.split_at_checked(16)?;
            let (kind, size) = header.split_at(8);
            let kind = u64::from_le_bytes(kind.try_into().ok()?);
            let size = usize::try_from(u64::from_le_bytes(size.try_into().ok()?)).ok()?;
            let (data, next) = after.split_at_checked(size)?;
            rest = next;
            if kind == HARDWARE_INFO_VIRTIO_MMIO_SVSM && size == 8 {
                return Some(u64::from_le_bytes(data.try_into().ok()?));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn entry(kind: u64, data: &[u8]) -> Vec<u8> {
        let mut e = kind.to_le_bytes().to_vec();
        e.extend_from_slice(&(data.len() as u64).to_le_bytes());
        e.extend_from_slice(data);
        e
    }

    #[test]
    fn the_svsms_slots_are_found_among_other_entries() {
        let mut file = entry(1, &[7; 24]);
        file.extend(entry(HARDWARE_INFO_VIRTIO_MMIO_SVSM, &0xFEF0_0000u64.to_le_bytes()));
        file.extend(entry(2, &[]));
        file.extend(entry(HARDWARE_INFO_VIRTIO_MMIO_SVSM, &0xFEF0_1000u64.to_le_bytes()));
        assert_eq!(slots(&file).collect::<Vec<_>>(), [0xFEF0_0000, 0xFEF0_1000]);
    }

    #[test]
    fn a_hostile_file_ends_the_list_without_a_panic() {
        let mut file = entry(HARDWARE_INFO_VIRTIO_MMIO_SVSM, &0xFEF0_0000u64.to_le_bytes());
        // A size past the end, a size of u64::MAX, a short header, a wrong size.
        for tail in [
            [HARDWARE_INFO_VIRTIO_MMIO_SVSM.to_le_bytes(), 9u64.to_le_bytes()].concat(),
            [HARDWARE_INFO_VIRTIO_MMIO_SVSM.to_le_bytes(), u64::MAX.to_le_bytes()].concat(),
            std::vec![0x10, 0],
            entry(HARDWARE_INFO_VIRTIO_MMIO_SVSM, &[1, 2, 3, 4]),
        ] {
            let mut f = file.clone();
            f.extend(tail);
            assert_eq!(slots(&f).collect::<Vec<_>>(), [0xFEF0_0000]);
        }
        file.clear();
        assert_eq!(slots(&file).count(), 0);
    }
}
