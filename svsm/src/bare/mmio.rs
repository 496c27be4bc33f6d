//! A device's registers by plain memory access, as the svm platform reaches them: the
//! device's BARs are identity-mapped in the SVSM's first 4 GiB, and every access stays
//! inside the windows its checked layout names.
#![expect(unsafe_code, reason = "volatile accesses to a device's registers")]

use blk::pci::{Registers, Width};
use blk::virtio_pci::{self, Window};

/// The device's registers: memory accesses, identity-mapped, inside the windows of its
/// checked layout only.
pub struct Mmio {
    windows: [Window; 3],
}

impl Mmio {
    pub fn new(layout: &virtio_pci::Layout) -> Self {
        Self { windows: [layout.common, layout.notify, layout.device.unwrap_or(Window { start: 0, len: 0 })] }
    }

    /// `addr` if an access of `width` there lies inside a window and is aligned.
    fn checked(&self, addr: u64, width: Width) -> Option<u64> {
        (addr.is_multiple_of(width.bytes()) && virtio_pci::inside_any(&self.windows, addr, width.bytes()))
            .then_some(addr)
    }
}

impl Registers for Mmio {
    fn read(&self, addr: u64, width: Width) -> u32 {
        let Some(addr) = self.checked(addr, width) else { return u32::MAX };
        // SAFETY: `addr` lies inside a register window of the device, which
        // `virtio_pci::check` placed inside one of its memory BARs, and `disk::start` checked
        // every memory BAR lies in the identity-mapped first 4 GiB and is neither RAM nor
        // the SVSM's memory; the access is aligned to its width. Volatile: a register.
        unsafe {
            match width {
                Width::Byte => u32::from(core::ptr::read_volatile(addr as *const u8)),
                Width::Word => u32::from(core::ptr::read_volatile(addr as *const u16)),
                Width::Dword => core::ptr::read_volatile(addr as *const u32),
            }
        }
    }

    fn write(&self, addr: u64, width: Width, value: u32) {
        let Some(addr) = self.checked(addr, width) else { return };
        let [b0, b1, _, _] = value.to_le_bytes();
        // SAFETY: as in `read`.
        unsafe {
            match width {
                Width::Byte => core::ptr::write_volatile(addr as *mut u8, b0),
                Width::Word => core::ptr::write_volatile(addr as *mut u16, u16::from_le_bytes([b0, b1])),
                Width::Dword => core::ptr::write_volatile(addr as *mut u32, value),
            }
        }
    }
}
