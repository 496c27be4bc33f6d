//! PCI configuration space, for the host's devices the SVSM drives itself (the state disk,
//! the migration device), through the `virtio-drivers` crate's PCI bus code. The ports are
//! the host's on both platforms: on svm it emulates them, on SEV-SNP each access raises
//! #VC and goes to the host as an IOIO event (`snp::vc`).

use spin::Mutex;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};

/// PCI configuration mechanism #1: address at port 0xCF8, data at 0xCFC. The pair is one
/// register set, so accesses take a lock.
pub struct PortCam;

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
