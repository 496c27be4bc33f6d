//! A device's registers through the host: the `blk` crate's register accesses as the
//! GHCB's MMIO events. Under SEV-SNP a load from a device's page raises #VC (the host
//! cannot emulate an instruction it cannot read), so the SVSM asks the host directly
//! instead of decoding its own instructions. What a read returns is the host's to choose,
//! and a write tells the host only what a device register would: the driver keeps both to
//! the windows it checked (`blk::virtio_pci`).

use crate::ghcb::{mmio_read, mmio_write};
use crate::hw::SnpHw;
use blk::pci::{Registers, Width};
use core::cell::RefCell;

/// Register accesses through this CPU's GHCB.
#[derive(Debug)]
pub struct GhcbMmio<H: SnpHw> {
    hw: RefCell<H>,
}

impl<H: SnpHw> GhcbMmio<H> {
    pub fn new(hw: H) -> Self {
        Self { hw: RefCell::new(hw) }
    }
}

impl<H: SnpHw> Registers for GhcbMmio<H> {
    fn read(&self, addr: u64, width: Width) -> u32 {
        // A refused or failed exit reads as a PCI read of nothing: all ones.
        let Ok(mut hw) = self.hw.try_borrow_mut() else { return u32::MAX };
        let hw = &mut *hw;
        let value = match width {
            Width::Byte => mmio_read::<_, 1>(hw, addr).map(|[b]| u32::from(b)),
            Width::Word => mmio_read::<_, 2>(hw, addr).map(|b| u32::from(u16::from_le_bytes(b))),
            Width::Dword => mmio_read::<_, 4>(hw, addr).map(u32::from_le_bytes),
        };
        value.unwrap_or(u32::MAX)
    }

    fn write(&self, addr: u64, width: Width, value: u32) {
        let Ok(mut hw) = self.hw.try_borrow_mut() else { return };
        let bytes = value.to_le_bytes();
        let len = match width {
            Width::Byte => 1,
            Width::Word => 2,
            Width::Dword => 4,
        };
        // A write the host refuses is lost, as a write to nothing is.
        let _ = mmio_write(&mut *hw, addr, bytes.get(..len).unwrap_or(&bytes));
    }
}
