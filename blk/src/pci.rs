//! virtio over PCI, the modern interface (virtio 1.2, 4.1.4), on register accesses the
//! platform makes: plain memory accesses on svm, GHCB exits on SEV-SNP (where a load
//! from a device's page raises #VC instead). The `virtio-drivers` crate's own PCI transport
//! reaches the registers through raw pointers only, and re-reads the queue's notify offset
//! from the device before each notification; this one touches nothing but the windows
//! [`crate::virtio_pci::check`] accepted, and places each queue's notification once, when
//! the queue is set up.

use crate::virtio_pci::{COMMON_LEN, Layout, QUEUE_NOTIFY_OFF, QUEUE_SELECT, Window, notify_address};
use virtio_drivers::PhysAddr;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// The width of a register access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    Byte,
    Word,
    Dword,
}

impl Width {
    pub fn bytes(self) -> u64 {
        match self {
            Self::Byte => 1,
            Self::Word => 2,
            Self::Dword => 4,
        }
    }
}

/// How the transport reaches a device's registers: at physical addresses, always inside one
/// of the windows of the [`Layout`] it was given, aligned to the access's width.
pub trait Registers {
    /// A register's value; all ones if the access failed (what a PCI read of nothing gives).
    fn read(&self, addr: u64, width: Width) -> u32;
    /// Write a register; a failed write is lost.
    fn write(&self, addr: u64, width: Width, value: u32);
}

/// The common configuration structure's registers (`virtio_pci_common_cfg`).
mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0C;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_ENABLE: u64 = 0x1C;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
}

/// Queues whose notification the transport keeps (the SVSM's devices use one).
const MAX_QUEUES: usize = 4;

/// A modern virtio PCI device's transport.
#[derive(Debug)]
pub struct ModernPci<R: Registers> {
    regs: R,
    layout: Layout,
    device_type: DeviceType,
    /// Where each queue's notification goes, placed when it was set up (`None`: not set
    /// up, or its notify offset lies outside the notify window).
    notify_at: [Option<u64>; MAX_QUEUES],
}

impl<R: Registers> ModernPci<R> {
    /// The transport of a device of `device_type` whose windows are `layout` (checked with
    /// [`crate::virtio_pci::check`]).
    pub fn new(regs: R, layout: Layout, device_type: DeviceType) -> Self {
        Self { regs, layout, device_type, notify_at: [None; MAX_QUEUES] }
    }

    /// Whether `queue` was set up with a notification inside the notify window.
    pub fn can_notify(&self, queue: u16) -> bool {
        self.notify_at.get(usize::from(queue)).copied().flatten().is_some()
    }

    fn common_read(&self, offset: u64, width: Width) -> u32 {
        window_read(&self.regs, self.layout.common, offset, width)
    }

    fn common_write(&self, offset: u64, width: Width, value: u32) {
        window_write(&self.regs, self.layout.common, offset, width, value);
    }

    fn select(&self, queue: u16) {
        self.common_write(QUEUE_SELECT, Width::Word, u32::from(queue));
    }

    fn write_address(&self, offset: u64, addr: PhysAddr) {
        // A 64-bit field as two 32-bit writes, low half first (virtio 1.2, 4.1.3.1).
        self.common_write(offset, Width::Dword, low32(addr));
        self.common_write(offset + 4, Width::Dword, low32(addr >> 32));
    }
}

/// The low 32 bits of a 64-bit value (a register's low half).
pub(crate) fn low32(v: u64) -> u32 {
    u32::try_from(v & 0xFFFF_FFFF).unwrap_or(u32::MAX)
}

/// A device configuration field at `offset`, read as both transports read it: a dword at a
/// time where the field is dword-sized and aligned (a block device's capacity is two),
/// bytes otherwise. `at` gives the register address of a byte offset for an access of a
/// width, `None` past the configuration's end.
pub(crate) fn read_config<T: FromBytes + IntoBytes>(
    regs: &impl Registers,
    offset: usize,
    at: impl Fn(u64, Width) -> Option<u64>,
) -> virtio_drivers::Result<T> {
    let too_small = virtio_drivers::Error::ConfigSpaceTooSmall;
    let size = core::mem::size_of::<T>();
    let start = u64::try_from(offset).map_err(|_| too_small)?;
    let mut value = T::new_zeroed();
    let dwords = size.is_multiple_of(4) && offset.is_multiple_of(4);
    let (step, width) = if dwords { (4, Width::Dword) } else { (1, Width::Byte) };
    for (i, chunk) in value.as_mut_bytes().chunks_mut(step).enumerate() {
        let field_offset = u64::try_from(i * step).ok().and_then(|o| start.checked_add(o)).ok_or(too_small)?;
        let addr = at(field_offset, width).ok_or(too_small)?;
        let read = regs.read(addr, width).to_le_bytes();
        chunk.copy_from_slice(read.get(..chunk.len()).unwrap_or(&[]));
    }
    Ok(value)
}

/// `offset` inside `window` for an access of `width`: the address, or `None` past its end.
fn inside(window: Window, offset: u64, width: Width) -> Option<u64> {
    let end = offset.checked_add(width.bytes())?;
    (end <= window.len).then_some(window.start.checked_add(offset)?)
}

fn window_read(regs: &impl Registers, window: Window, offset: u64, width: Width) -> u32 {
    inside(window, offset, width).map_or(u32::MAX, |addr| regs.read(addr, width))
}

fn window_write(regs: &impl Registers, window: Window, offset: u64, width: Width, value: u32) {
    if let Some(addr) = inside(window, offset, width) {
        regs.write(addr, width, value);
    }
}

const _: () = assert!(common::QUEUE_DEVICE + 8 <= COMMON_LEN);

impl<R: Registers> Transport for ModernPci<R> {
    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn read_device_features(&mut self) -> u64 {
        self.common_write(common::DEVICE_FEATURE_SELECT, Width::Dword, 0);
        let low = self.common_read(common::DEVICE_FEATURE, Width::Dword);
        self.common_write(common::DEVICE_FEATURE_SELECT, Width::Dword, 1);
        let high = self.common_read(common::DEVICE_FEATURE, Width::Dword);
        u64::from(high) << 32 | u64::from(low)
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.common_write(common::DRIVER_FEATURE_SELECT, Width::Dword, 0);
        self.common_write(common::DRIVER_FEATURE, Width::Dword, low32(driver_features));
        self.common_write(common::DRIVER_FEATURE_SELECT, Width::Dword, 1);
        self.common_write(common::DRIVER_FEATURE, Width::Dword, low32(driver_features >> 32));
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.select(queue);
        self.common_read(common::QUEUE_SIZE, Width::Word)
    }

    fn notify(&mut self, queue: u16) {
        if let Some(addr) = self.notify_at.get(usize::from(queue)).copied().flatten() {
            self.regs.write(addr, Width::Word, u32::from(queue));
        }
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(self.common_read(common::DEVICE_STATUS, Width::Byte))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.common_write(common::DEVICE_STATUS, Width::Byte, status.bits() & 0xFF);
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
        let Some(slot) = self.notify_at.get_mut(usize::from(queue)) else { return };
        *slot = None;
        self.select(queue);
        // Read once, now: virtio fixes a queue's notify offset for the device's life, and
        // a host that changed it later would move where the SVSM writes.
        let notify_off = self.common_read(QUEUE_NOTIFY_OFF, Width::Word);
        let Some(addr) = u16::try_from(notify_off).ok().and_then(|off| notify_address(&self.layout, off)) else {
            // Left disabled: a queue the SVSM could not notify is not used.
            return;
        };
        self.common_write(common::QUEUE_SIZE, Width::Word, size & 0xFFFF);
        self.write_address(common::QUEUE_DESC, descriptors);
        self.write_address(common::QUEUE_DRIVER, driver_area);
        self.write_address(common::QUEUE_DEVICE, device_area);
        self.common_write(common::QUEUE_ENABLE, Width::Word, 1);
        if let Some(slot) = self.notify_at.get_mut(usize::from(queue)) {
            *slot = Some(addr);
        }
    }

    fn queue_unset(&mut self, queue: u16) {
        // Only a reset takes a queue back (writing 0 to `queue_enable` needs RING_RESET,
        // which the driver does not take): the queue just stops being notified.
        if let Some(slot) = self.notify_at.get_mut(usize::from(queue)) {
            *slot = None;
        }
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.select(queue);
        self.common_read(common::QUEUE_ENABLE, Width::Word) == 1
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        // The SVSM polls its queues and takes no interrupts from devices.
        InterruptStatus::empty()
    }

    fn read_config_generation(&self) -> u32 {
        self.common_read(common::CONFIG_GENERATION, Width::Byte)
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> virtio_drivers::Result<T> {
        let window = self.layout.device.ok_or(virtio_drivers::Error::ConfigSpaceMissing)?;
        read_config(&self.regs, offset, |at, width| inside(window, at, width))
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
