//! In-memory migration pages for tests (never in the SVSM), and [`Relay::connect`]: the
//! four pages of a migration in memory, with the host's [`crate::relay::Relay`] between
//! them and each side's [`MemChannel`].

use crate::channel::{MigrationPage, PageChannel};
use abi::migration::{BUFFER_OFFSET, BUFFER_SIZE, DataRegister, MigrationStatus, PAGE_SIZE};
use alloc::boxed::Box;
use alloc::rc::Rc;
use core::cell::RefCell;

pub use crate::relay::{Buffer, Direction, Fault, Relayed};

/// The host's relay between in-memory pages.
pub type Relay = crate::relay::Relay<MemPage>;

/// A migration page in memory; clones share the page (the SVSM's view and the host's).
#[derive(Clone, Debug)]
pub struct MemPage(Rc<RefCell<[u8; PAGE_SIZE]>>);

impl Default for MemPage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemPage {
    /// A zeroed page (status `NOT_STARTED`).
    pub fn new() -> Self {
        Self(Rc::new(RefCell::new([0; PAGE_SIZE])))
    }

    /// The byte at `offset`.
    pub fn byte(&self, offset: usize) -> u8 {
        self.0.borrow().get(offset).copied().unwrap_or(0)
    }

    /// Writes the byte at `offset` (what a host may do at any time).
    pub fn set_byte(&self, offset: usize, value: u8) {
        if let Some(b) = self.0.borrow_mut().get_mut(offset) {
            *b = value;
        }
    }

    /// The status register.
    pub fn status(&self) -> MigrationStatus {
        MigrationStatus(self.byte(abi::migration::STATUS_OFFSET))
    }

    /// Writes the status register.
    pub fn set_status(&self, status: MigrationStatus) {
        self.set_byte(abi::migration::STATUS_OFFSET, status.0);
    }

    /// The data register.
    pub fn data_register(&self) -> DataRegister {
        DataRegister(self.byte(abi::migration::DATA_REGISTER_OFFSET))
    }

    /// Writes the data register.
    pub fn set_data_register(&self, value: DataRegister) {
        self.set_byte(abi::migration::DATA_REGISTER_OFFSET, value.0);
    }

    /// A copy of the buffer.
    pub fn buffer(&self) -> Buffer {
        let mut out = Box::new([0u8; BUFFER_SIZE]);
        if let Some(src) = self.0.borrow().get(BUFFER_OFFSET..) {
            out.copy_from_slice(src);
        }
        out
    }

    /// Writes the buffer.
    pub fn set_buffer(&self, buf: &[u8; BUFFER_SIZE]) {
        if let Some(dst) = self.0.borrow_mut().get_mut(BUFFER_OFFSET..) {
            dst.copy_from_slice(buf);
        }
    }
}

impl MigrationPage for MemPage {
    fn read_status(&mut self) -> MigrationStatus {
        self.status()
    }
    fn write_status(&mut self, status: MigrationStatus) {
        self.set_status(status);
    }
    fn read_data_register(&mut self) -> DataRegister {
        self.data_register()
    }
    fn write_data_register(&mut self, value: DataRegister) {
        self.set_data_register(value);
    }
    fn read_buffer(&mut self, buf: &mut [u8; BUFFER_SIZE]) {
        // No copy on the heap, as the SVSM's pages do: heap tests count what a side takes.
        if let Some(src) = self.0.borrow().get(BUFFER_OFFSET..) {
            buf.copy_from_slice(src);
        }
    }
    fn write_buffer(&mut self, buf: &[u8; BUFFER_SIZE]) {
        self.set_buffer(buf);
    }
}

/// A side's channel over in-memory pages.
pub type MemChannel = PageChannel<MemPage, MemPage>;

impl crate::relay::Relay<MemPage> {
    /// Four started pages, the relay between them, and the source's and the
    /// destination's channels.
    pub fn connect(fault: Option<Fault>) -> (Self, MemChannel, MemChannel) {
        let (source_out, source_in, destination_out, destination_in) =
            (MemPage::new(), MemPage::new(), MemPage::new(), MemPage::new());
        let relay = Self::between(
            [source_out.clone(), source_in.clone()],
            [destination_out.clone(), destination_in.clone()],
            fault,
        );
        (relay, PageChannel::new(source_out, source_in), PageChannel::new(destination_out, destination_in))
    }

    /// As [`Self::connect`], with rings of `pages` pages per direction on each side: the
    /// channels start in the page mode and widen when their sessions agree on the ring.
    pub fn connect_rings(fault: Option<Fault>, pages: usize) -> (Self, MemChannel, MemChannel) {
        let ring = || -> alloc::vec::Vec<MemPage> { (0..pages.max(1)).map(|_| MemPage::new()).collect() };
        let (source_out, source_in, destination_out, destination_in) = (ring(), ring(), ring(), ring());
        let relay = Self::between_rings(
            [source_out.clone(), source_in.clone()],
            [destination_out.clone(), destination_in.clone()],
            fault,
        );
        (
            relay,
            PageChannel::with_rings(source_out, source_in),
            PageChannel::with_rings(destination_out, destination_in),
        )
    }
}
