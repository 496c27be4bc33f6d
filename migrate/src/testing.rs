//! In-memory migration pages and a hostile relay between two SVSMs (for tests; never in
//! the SVSM).
//!
//! [`Relay::connect`] makes the four pages of a migration (each SVSM's outbound and
//! inbound page), starts them as the host does (`DATA_READ`, then `RUNNING` on the pages
//! an SVSM produces on, `INCOMING` on those it consumes from) and gives each side its
//! [`MemChannel`]. [`Relay::pump`] then plays both hosts and the socket between them:
//! it takes every buffer an SVSM marks `DATA_READY`, logs it, and delivers it to the other
//! SVSM's inbound page, one buffer per `DATA_READ`, with at most one [`Fault`] applied.

use crate::channel::{FRAGMENT_HEADER_LEN, FragmentHeader, MigrationPage, PageChannel};
use crate::session::FrameKind;
use abi::migration::{BUFFER_OFFSET, BUFFER_SIZE, DataRegister, MigrationStatus, PAGE_SIZE};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;
use zerocopy::FromBytes;

/// One buffer's worth of bytes.
pub type Buffer = Box<[u8; BUFFER_SIZE]>;

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
        *buf = *self.buffer();
    }
    fn write_buffer(&mut self, buf: &[u8; BUFFER_SIZE]) {
        self.set_buffer(buf);
    }
}

/// A side's channel over in-memory pages.
pub type MemChannel = PageChannel<MemPage, MemPage>;

/// Which way a buffer went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the source SVSM to the destination SVSM.
    SourceToDestination,
    /// From the destination SVSM to the source SVSM.
    DestinationToSource,
}

/// What the relay does to the buffer with relay index `buffer` (indexes count every
/// buffer taken from either SVSM, in the order the relay took them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Flips bit `bit` (0..BUFFER_SIZE * 8, bit 0 = least significant of byte 0).
    FlipBit {
        /// The buffer.
        buffer: usize,
        /// The bit.
        bit: usize,
    },
    /// Never delivers it.
    Drop {
        /// The buffer.
        buffer: usize,
    },
    /// Delivers it twice (a replay).
    Duplicate {
        /// The buffer.
        buffer: usize,
    },
    /// Holds it back until the next buffer of the same direction has been delivered; if
    /// that direction's stream ends first, delivers it last.
    SwapWithNext {
        /// The buffer.
        buffer: usize,
    },
    /// Delivers nothing from this buffer on, in either direction, then ends both streams
    /// (`COMPLETED` on both inbound pages) once what was queued has been delivered.
    TruncateAt {
        /// The buffer.
        buffer: usize,
    },
}

/// A buffer the relay took, as the SVSM wrote it (before any fault).
#[derive(Debug, Clone)]
pub struct Relayed {
    /// The relay index.
    pub index: usize,
    /// Which way it went.
    pub direction: Direction,
    /// Its bytes.
    pub bytes: Buffer,
}

impl Relayed {
    /// Its fragment header, as written.
    pub fn fragment(&self) -> Option<FragmentHeader> {
        FragmentHeader::read_from_prefix(&self.bytes[..]).ok().map(|(h, _)| h)
    }

    /// The fragment's bytes (as many as its header says).
    pub fn payload(&self) -> &[u8] {
        let len = self.fragment().map_or(0, |h| usize::from(h.len.get()));
        self.bytes.get(FRAGMENT_HEADER_LEN..FRAGMENT_HEADER_LEN + len).unwrap_or(&[])
    }

    /// What frame it starts, if it is a frame's first fragment: what the host can tell.
    pub fn frame_kind(&self) -> Option<FrameKind> {
        match self.fragment() {
            Some(h) if h.offset.get() == 0 => FrameKind::of(self.payload()),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Pipe {
    direction: Direction,
    /// The page the sending SVSM produces on.
    from: MemPage,
    /// The page the receiving SVSM consumes from.
    to: MemPage,
    queue: VecDeque<Buffer>,
    held: Option<Buffer>,
    producer_ended: bool,
    consumer_closed: bool,
}

impl Pipe {
    fn new(direction: Direction, from: MemPage, to: MemPage) -> Self {
        Self { direction, from, to, queue: VecDeque::new(), held: None, producer_ended: false, consumer_closed: false }
    }
}

/// Two hosts and the socket between them, hostile on request.
#[derive(Debug)]
pub struct Relay {
    pipes: [Pipe; 2],
    fault: Option<Fault>,
    fault_applied: bool,
    next_index: usize,
    log: Vec<Relayed>,
    truncated: bool,
    hung_up: bool,
}

impl Relay {
    /// Four started pages, the relay between them, and the source's and the
    /// destination's channels.
    pub fn connect(fault: Option<Fault>) -> (Self, MemChannel, MemChannel) {
        let (source_out, source_in, destination_out, destination_in) =
            (MemPage::new(), MemPage::new(), MemPage::new(), MemPage::new());
        for page in [&source_out, &destination_out] {
            page.set_data_register(DataRegister::DATA_READ);
            page.set_status(MigrationStatus::RUNNING);
        }
        for page in [&source_in, &destination_in] {
            page.set_data_register(DataRegister::DATA_READ);
            page.set_status(MigrationStatus::INCOMING);
        }
        let relay = Self {
            pipes: [
                Pipe::new(Direction::SourceToDestination, source_out.clone(), destination_in.clone()),
                Pipe::new(Direction::DestinationToSource, destination_out.clone(), source_in.clone()),
            ],
            fault,
            fault_applied: false,
            next_index: 0,
            log: Vec::new(),
            truncated: false,
            hung_up: false,
        };
        (relay, PageChannel::new(source_out, source_in), PageChannel::new(destination_out, destination_in))
    }

    /// Every buffer taken so far, in order.
    pub fn log(&self) -> &[Relayed] {
        &self.log
    }

    /// Whether the fault changed what was delivered (a swap with no next buffer, a
    /// truncation or a fault beyond the end did not).
    pub fn fault_applied(&self) -> bool {
        self.fault_applied
    }

    /// One round of both hosts: take what the SVSMs produced, deliver what the consumers
    /// can take, end streams that ended. True if anything moved.
    pub fn pump(&mut self) -> bool {
        let mut progress = false;
        for pipe in 0..self.pipes.len() {
            progress |= self.take(pipe);
            progress |= self.deliver(pipe);
        }
        progress
    }

    /// The connection dies: nothing queued or held is delivered, and both inbound pages
    /// say `COMPLETED` (what a host does when the socket closes).
    pub fn hang_up(&mut self) {
        self.hung_up = true;
        for pipe in &mut self.pipes {
            pipe.queue.clear();
            pipe.held = None;
        }
    }

    fn take(&mut self, p: usize) -> bool {
        let Some(pipe) = self.pipes.get_mut(p) else { return false };
        if pipe.from.data_register() == DataRegister::DATA_READY {
            let bytes = pipe.from.buffer();
            pipe.from.set_data_register(DataRegister::DATA_READ);
            let direction = pipe.direction;
            let index = self.next_index;
            self.next_index += 1;
            self.log.push(Relayed { index, direction, bytes: bytes.clone() });
            self.route(p, index, bytes);
            return true;
        }
        if pipe.from.status() == MigrationStatus::COMPLETED && !pipe.producer_ended {
            pipe.producer_ended = true;
            if let Some(held) = pipe.held.take() {
                pipe.queue.push_back(held);
            }
            return true;
        }
        false
    }

    fn route(&mut self, p: usize, index: usize, mut bytes: Buffer) {
        if self.truncated || self.hung_up {
            return;
        }
        let fault = self.fault;
        let Some(pipe) = self.pipes.get_mut(p) else { return };
        match fault {
            Some(Fault::FlipBit { buffer, bit }) if buffer == index => {
                if let Some(b) = bytes.get_mut(bit / 8) {
                    *b ^= 1 << (bit % 8);
                }
                self.fault_applied = true;
                pipe.queue.push_back(bytes);
            }
            Some(Fault::Drop { buffer }) if buffer == index => self.fault_applied = true,
            Some(Fault::Duplicate { buffer }) if buffer == index => {
                self.fault_applied = true;
                pipe.queue.push_back(bytes.clone());
                pipe.queue.push_back(bytes);
            }
            Some(Fault::SwapWithNext { buffer }) if buffer == index => pipe.held = Some(bytes),
            Some(Fault::TruncateAt { buffer }) if buffer == index => {
                self.fault_applied = true;
                self.truncated = true;
            }
            _ => {
                pipe.queue.push_back(bytes);
                if let Some(held) = pipe.held.take() {
                    self.fault_applied = true;
                    pipe.queue.push_back(held);
                }
            }
        }
    }

    fn deliver(&mut self, p: usize) -> bool {
        let ended = self.truncated || self.hung_up;
        let Some(pipe) = self.pipes.get_mut(p) else { return false };
        if pipe.consumer_closed {
            return false;
        }
        if pipe.to.data_register() == DataRegister::DATA_READ
            && let Some(bytes) = pipe.queue.pop_front()
        {
            pipe.to.set_buffer(&bytes);
            pipe.to.set_data_register(DataRegister::DATA_READY);
            return true;
        }
        if (ended || pipe.producer_ended) && pipe.queue.is_empty() {
            pipe.to.set_status(MigrationStatus::COMPLETED);
            pipe.consumer_closed = true;
            return true;
        }
        false
    }
}
