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
use core::ops::Range;
use kernel::addr::PageRange;

/// The I/O APIC's and the local APIC's register pages at their reset addresses.
const APIC_PAGES: [Range<u64>; 2] = [0xFEC0_0000..0xFEC0_1000, 0xFEE0_0000..0xFEE0_1000];

/// Whether a device's register window `start..end` may be the state disk's: it overlaps no
/// guest RAM of the launch (`ram`), not the SVSM's own region and not an APIC's registers.
/// Only those pages: QEMU's virtio-mmio slots for the SVSM sit at 0xFEF0_0000 and up,
/// between the APICs (the whole 0xFEC0_0000..0xFF00_0000 range svm keeps devices out of
/// would refuse every slot). The MMIO events cannot reach private memory whatever the
/// address; this keeps the device where a device can be.
pub fn window_allowed(ram: &[PageRange], svsm_region: PageRange, start: u64, end: u64) -> bool {
    let overlaps = |r: Range<u64>| r.start < end && start < r.end;
    let bytes = |r: PageRange| r.start_pfn() << 12..r.end_pfn() << 12;
    start < end
        && !ram.iter().any(|r| overlaps(bytes(*r)))
        && !overlaps(bytes(svsm_region))
        && !APIC_PAGES.iter().any(|r| overlaps(r.clone()))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use kernel::addr::PageAddr;

    fn range(start: u64, len: u64) -> PageRange {
        PageRange::new(PageAddr::new(start).unwrap(), len >> 12).unwrap()
    }

    #[test]
    fn qemus_slots_are_allowed_and_memory_and_the_apics_are_not() {
        let ram = [range(0, 0x8000_0000)];
        let svsm = range(0x8000_0000, 0x100_0000);
        // QEMU's four virtio-mmio slots for the SVSM (its q35 proposal), and a PCI BAR.
        for slot in (0..4).map(|i| 0xFEF0_0000 + i * 0x1000).chain([0xC000_0000]) {
            assert!(window_allowed(&ram, svsm, slot, slot + 0x1000), "{slot:#x}");
        }
        for (start, end) in [
            (0x7FFF_F000, 0x8000_1000),
            (0x8000_0000, 0x8000_1000),
            (0xFEC0_0000, 0xFEC0_1000),
            (0xFEE0_0FFF, 0xFEE0_1000),
            (0xFEF0_0000, 0xFEF0_0000),
        ] {
            assert!(!window_allowed(&ram, svsm, start, end), "{start:#x}..{end:#x}");
        }
    }
}
