//! The host's part of a migration: two hosts and the socket between them, reduced to one
//! loop that relays buffers between the four migration pages (each SVSM's outbound and
//! inbound page), hostile on request. The tests run it over in-memory pages
//! (`testing::Relay::connect`); `bulwark migrate relay` runs it over the files that back
//! two QEMU instances' migration devices.
//!
//! [`Relay::between`] starts the pages as the host does (`DATA_READ`, then `RUNNING` on the
//! pages an SVSM produces on, `INCOMING` on those it consumes from). [`Relay::pump`] then
//! takes every buffer an SVSM marks `DATA_READY`, logs it, and delivers it to the other
//! SVSM's inbound page, one buffer per `DATA_READ`, with at most one [`Fault`] applied.

use crate::channel::{FRAGMENT_HEADER_LEN, FragmentHeader, MigrationPage};
use crate::session::FrameKind;
use abi::migration::{BUFFER_SIZE, DataRegister, MigrationStatus};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use zerocopy::FromBytes;

/// One buffer's worth of bytes.
pub type Buffer = Box<[u8; BUFFER_SIZE]>;

/// Buffers a pipe holds for a consumer that has not taken them yet; beyond this the
/// relay takes no more from the producer (a socket's back-pressure): a consumer that
/// stopped stops its producer instead of growing the relay's memory.
pub const MAX_QUEUED: usize = 256;

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
struct Pipe<P> {
    direction: Direction,
    /// The page the sending SVSM produces on.
    from: P,
    /// The page the receiving SVSM consumes from.
    to: P,
    queue: VecDeque<Buffer>,
    held: Option<Buffer>,
    producer_ended: bool,
    consumer_closed: bool,
}

impl<P> Pipe<P> {
    fn new(direction: Direction, from: P, to: P) -> Self {
        Self { direction, from, to, queue: VecDeque::new(), held: None, producer_ended: false, consumer_closed: false }
    }
}

/// Two hosts and the socket between them, hostile on request.
#[derive(Debug)]
pub struct Relay<P> {
    pipes: [Pipe<P>; 2],
    fault: Option<Fault>,
    fault_applied: bool,
    next_index: usize,
    log: Vec<Relayed>,
    /// Buffers taken per direction (source to destination, destination to source).
    counts: [usize; 2],
    /// Whether buffers are logged (a long migration through a real relay keeps none).
    logging: bool,
    truncated: bool,
    hung_up: bool,
}

impl<P: MigrationPage> Relay<P> {
    /// The relay between the source's `[outbound, inbound]` pages and the destination's,
    /// with the pages started as the host starts them.
    pub fn between(source: [P; 2], destination: [P; 2], fault: Option<Fault>) -> Self {
        let [mut source_out, mut source_in] = source;
        let [mut destination_out, mut destination_in] = destination;
        // The inbound pages first: an SVSM starts when its outbound page says RUNNING,
        // and must then find its inbound page empty and INCOMING, not what an earlier
        // session left there.
        for page in [&mut source_in, &mut destination_in] {
            page.write_data_register(DataRegister::DATA_READ);
            page.write_status(MigrationStatus::INCOMING);
        }
        for page in [&mut source_out, &mut destination_out] {
            page.write_data_register(DataRegister::DATA_READ);
            page.write_status(MigrationStatus::RUNNING);
        }
        Self {
            pipes: [
                Pipe::new(Direction::SourceToDestination, source_out, destination_in),
                Pipe::new(Direction::DestinationToSource, destination_out, source_in),
            ],
            fault,
            fault_applied: false,
            next_index: 0,
            log: Vec::new(),
            counts: [0; 2],
            logging: true,
            truncated: false,
            hung_up: false,
        }
    }

    /// Keeps no log of the buffers (only counts them).
    pub fn without_log(mut self) -> Self {
        self.logging = false;
        self
    }

    /// How many buffers were taken so far: `[from the source, from the destination]`.
    pub fn taken(&self) -> [usize; 2] {
        self.counts
    }

    /// Whether both streams have ended: each inbound page says `COMPLETED`.
    pub fn finished(&self) -> bool {
        self.pipes.iter().all(|pipe| pipe.consumer_closed)
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
        if pipe.queue.len() < MAX_QUEUED && pipe.from.read_data_register() == DataRegister::DATA_READY {
            let mut bytes = Box::new([0u8; BUFFER_SIZE]);
            pipe.from.read_buffer(&mut bytes);
            pipe.from.write_data_register(DataRegister::DATA_READ);
            let direction = pipe.direction;
            let index = self.next_index;
            self.next_index += 1;
            if let Some(count) = self.counts.get_mut(p) {
                *count += 1;
            }
            if self.logging {
                self.log.push(Relayed { index, direction, bytes: bytes.clone() });
            }
            self.route(p, index, bytes);
            return true;
        }
        if !pipe.producer_ended && pipe.from.read_status() == MigrationStatus::COMPLETED {
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
        if !pipe.queue.is_empty()
            && pipe.to.read_data_register() == DataRegister::DATA_READ
            && let Some(bytes) = pipe.queue.pop_front()
        {
            pipe.to.write_buffer(&bytes);
            pipe.to.write_data_register(DataRegister::DATA_READY);
            return true;
        }
        if (ended || pipe.producer_ended) && pipe.queue.is_empty() {
            pipe.to.write_status(MigrationStatus::COMPLETED);
            pipe.consumer_closed = true;
            return true;
        }
        false
    }
}
