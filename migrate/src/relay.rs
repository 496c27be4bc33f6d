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
//! [`Relay::between_rings`] does the same over rings of pages (the ring mode,
//! docs/migration.md "Channel modes"), each page to the page of the same place.

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

impl Fault {
    /// The same fault, on buffer `buffer`.
    pub fn at(self, buffer: usize) -> Self {
        match self {
            Self::FlipBit { bit, .. } => Self::FlipBit { buffer, bit },
            Self::Drop { .. } => Self::Drop { buffer },
            Self::Duplicate { .. } => Self::Duplicate { buffer },
            Self::SwapWithNext { .. } => Self::SwapWithNext { buffer },
            Self::TruncateAt { .. } => Self::TruncateAt { buffer },
        }
    }
}

/// What frame a buffer starts, if it is a frame's first fragment: what the host can tell.
fn frame_kind_of(bytes: &[u8]) -> Option<FrameKind> {
    let (header, _) = FragmentHeader::read_from_prefix(bytes).ok()?;
    if header.offset.get() != 0 {
        return None;
    }
    let payload = bytes.get(FRAGMENT_HEADER_LEN..FRAGMENT_HEADER_LEN + usize::from(header.len.get()))?;
    FrameKind::of(payload)
}

/// A buffer the relay took, as the SVSM wrote it (before any fault).
#[derive(Debug, Clone)]
pub struct Relayed {
    /// The relay index.
    pub index: usize,
    /// Which way it went.
    pub direction: Direction,
    /// The slot it was taken from: 0 is the proposal's page, the others a ring's.
    pub slot: usize,
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
        frame_kind_of(&self.bytes[..])
    }
}

/// One direction: the producer's pages and the consumer's, slot for slot (the proposal's
/// page is slot 0; a ring adds more). Each slot is relayed to the same slot on the other
/// side, in the order taken: the relay need not know whether the SVSMs use the ring, and
/// the consumer reads the slots in the same turn as the producer wrote them.
#[derive(Debug)]
struct Pipe<P> {
    direction: Direction,
    /// The pages the sending SVSM produces on.
    from: Vec<P>,
    /// The pages the receiving SVSM consumes from.
    to: Vec<P>,
    /// Per slot, the buffers waiting for the consumer to take the slot's last one.
    queues: Vec<VecDeque<Buffer>>,
    /// The slot the next take starts looking at: the producer writes the slots in turn,
    /// but only slot 0 until its ring mode starts, which the relay learns when another
    /// slot is first ready (the ring's turn starts at slot 0).
    cursor: usize,
    ring_started: bool,
    /// A buffer held back for a swap, and the slot it was taken from.
    held: Option<(Buffer, usize)>,
    producer_ended: bool,
    consumer_closed: bool,
}

impl<P> Pipe<P> {
    fn new(direction: Direction, from: Vec<P>, to: Vec<P>) -> Self {
        let slots = from.len().min(to.len());
        Self {
            direction,
            from,
            to,
            queues: (0..slots).map(|_| VecDeque::new()).collect(),
            cursor: 0,
            ring_started: false,
            held: None,
            producer_ended: false,
            consumer_closed: false,
        }
    }

    fn slots(&self) -> usize {
        self.queues.len()
    }

    fn queued(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    fn push(&mut self, slot: usize, bytes: Buffer) {
        if let Some(queue) = self.queues.get_mut(slot) {
            queue.push_back(bytes);
        }
    }
}

/// Two hosts and the socket between them, hostile on request.
#[derive(Debug)]
pub struct Relay<P> {
    pipes: [Pipe<P>; 2],
    fault: Option<Fault>,
    /// The fault goes to the first buffer that starts a frame of this kind (its buffer
    /// index is set then).
    fault_on_first: Option<FrameKind>,
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
        let [source_out, source_in] = source;
        let [destination_out, destination_in] = destination;
        Self::between_rings(
            [alloc::vec![source_out], alloc::vec![source_in]],
            [alloc::vec![destination_out], alloc::vec![destination_in]],
            fault,
        )
    }

    /// The relay between the source's `[outbound, inbound]` rings of pages and the
    /// destination's (the first page of each is the proposal's page), started as the host
    /// starts them. A ring longer than the one it is relayed to has its extra pages left
    /// alone (the SVSMs agree on the smaller ring).
    pub fn between_rings(source: [Vec<P>; 2], destination: [Vec<P>; 2], fault: Option<Fault>) -> Self {
        let [mut source_out, mut source_in] = source;
        let [mut destination_out, mut destination_in] = destination;
        // The inbound pages first: an SVSM starts when its outbound page says RUNNING,
        // and must then find its inbound pages empty and INCOMING, not what an earlier
        // session left there.
        // The proposal's page last here too, so an SVSM that sees INCOMING finds its
        // whole ring emptied.
        for page in source_in.iter_mut().rev().chain(destination_in.iter_mut().rev()) {
            page.write_data_register(DataRegister::DATA_READ);
            page.write_status(MigrationStatus::INCOMING);
        }
        // The proposal's page last, so an SVSM that sees RUNNING finds its ring started.
        for ring in [&mut source_out, &mut destination_out] {
            for page in ring.iter_mut().rev() {
                page.write_data_register(DataRegister::DATA_READ);
                page.write_status(MigrationStatus::RUNNING);
            }
        }
        Self {
            pipes: [
                Pipe::new(Direction::SourceToDestination, source_out, destination_in),
                Pipe::new(Direction::DestinationToSource, destination_out, source_in),
            ],
            fault,
            fault_on_first: None,
            fault_applied: false,
            next_index: 0,
            log: Vec::new(),
            counts: [0; 2],
            logging: true,
            truncated: false,
            hung_up: false,
        }
    }

    /// Applies the fault to the first buffer that starts a frame of `kind` (what a host
    /// can see in clear: a record's type), whatever its index.
    pub fn fault_on_first(mut self, kind: FrameKind) -> Self {
        self.fault_on_first = Some(kind);
        self
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
            // Everything the producer has ready (a ring fills many pages at once), but at
            // most a lap of its ring: a truncated or hung-up relay queues nothing, and a
            // producer that never stops must not keep the relay from the other pipe.
            let lap = self.pipes.get(pipe).map_or(0, Pipe::slots);
            for _ in 0..lap.max(1) {
                if !self.take(pipe) {
                    break;
                }
                progress = true;
            }
            progress |= self.deliver(pipe);
        }
        progress
    }

    /// The connection dies: nothing queued or held is delivered, and both inbound pages
    /// say `COMPLETED` (what a host does when the socket closes).
    pub fn hang_up(&mut self) {
        self.hung_up = true;
        for pipe in &mut self.pipes {
            pipe.queues.iter_mut().for_each(VecDeque::clear);
            pipe.held = None;
        }
    }

    /// Takes the next buffer an SVSM marked ready, looking at its slots in turn from the
    /// one after the last taken; else notices the end of its stream.
    fn take(&mut self, p: usize) -> bool {
        let Some(pipe) = self.pipes.get_mut(p) else { return false };
        let slots = pipe.slots();
        if pipe.queued() < MAX_QUEUED {
            for turn in 0..slots {
                let slot = (pipe.cursor + turn) % slots;
                let Some(page) = pipe.from.get_mut(slot) else { continue };
                if page.read_data_register() != DataRegister::DATA_READY {
                    continue;
                }
                let mut bytes = Box::new([0u8; BUFFER_SIZE]);
                page.read_buffer(&mut bytes);
                page.write_data_register(DataRegister::DATA_READ);
                pipe.ring_started |= slot != 0;
                pipe.cursor = if pipe.ring_started { (slot + 1) % slots } else { 0 };
                let direction = pipe.direction;
                let index = self.next_index;
                self.next_index += 1;
                if let Some(count) = self.counts.get_mut(p) {
                    *count += 1;
                }
                if self.logging {
                    self.log.push(Relayed { index, direction, slot, bytes: bytes.clone() });
                }
                if let Some(kind) = self.fault_on_first
                    && frame_kind_of(&bytes[..]) == Some(kind)
                {
                    self.fault = self.fault.map(|f| f.at(index));
                    self.fault_on_first = None;
                }
                self.route(p, index, slot, bytes);
                return true;
            }
        }
        let producer_done = pipe.from.first_mut().is_some_and(|page| page.read_status() == MigrationStatus::COMPLETED);
        if !pipe.producer_ended && producer_done {
            pipe.producer_ended = true;
            if let Some((held, slot)) = pipe.held.take() {
                pipe.push(slot, held);
            }
            return true;
        }
        false
    }

    /// Queues a buffer taken from `slot` for the same slot on the other side, with the
    /// fault if it is this buffer's.
    fn route(&mut self, p: usize, index: usize, slot: usize, mut bytes: Buffer) {
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
                pipe.push(slot, bytes);
            }
            Some(Fault::Drop { buffer }) if buffer == index => self.fault_applied = true,
            Some(Fault::Duplicate { buffer }) if buffer == index => {
                self.fault_applied = true;
                pipe.push(slot, bytes.clone());
                pipe.push(slot, bytes);
            }
            Some(Fault::SwapWithNext { buffer }) if buffer == index => pipe.held = Some((bytes, slot)),
            Some(Fault::TruncateAt { buffer }) if buffer == index => {
                self.fault_applied = true;
                self.truncated = true;
            }
            _ => match pipe.held.take() {
                // The two change places: on one page the held one comes after this one,
                // on a ring each takes the other's slot.
                Some((held, held_slot)) => {
                    self.fault_applied = true;
                    pipe.push(held_slot, bytes);
                    pipe.push(slot, held);
                }
                None => pipe.push(slot, bytes),
            },
        }
    }

    /// Delivers a queued buffer into every slot the consumer has emptied; ends the
    /// consumer's stream once the producer's has ended and nothing is left.
    fn deliver(&mut self, p: usize) -> bool {
        let ended = self.truncated || self.hung_up;
        // The consumer is the other pipe's producer: once its own stream has ended, its
        // session is over and it reads nothing more (a FINISH offered again after it
        // already ran the guest), so what is still queued for it is dropped.
        let consumer_ended = self.pipes.get(p ^ 1).is_some_and(|other| other.producer_ended);
        let Some(pipe) = self.pipes.get_mut(p) else { return false };
        if pipe.consumer_closed {
            return false;
        }
        let mut progress = false;
        for (queue, page) in pipe.queues.iter_mut().zip(pipe.to.iter_mut()) {
            if !queue.is_empty()
                && page.read_data_register() == DataRegister::DATA_READ
                && let Some(bytes) = queue.pop_front()
            {
                page.write_buffer(&bytes);
                page.write_data_register(DataRegister::DATA_READY);
                progress = true;
            }
        }
        if !progress && (ended || pipe.producer_ended) && (pipe.queued() == 0 || consumer_ended) {
            pipe.queues.iter_mut().for_each(VecDeque::clear);
            if let Some(page) = pipe.to.first_mut() {
                page.write_status(MigrationStatus::COMPLETED);
            }
            pipe.consumer_closed = true;
            return true;
        }
        progress
    }
}
