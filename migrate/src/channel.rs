//! The channel between two SVSMs: frames over migration pages the host relays.
//!
//! # Frames and fragments
//!
//! The session ([`crate::session`]) speaks in *frames* of up to [`MAX_FRAME_LEN`] bytes
//! through a [`MigrationChannel`]. The proposal's migration page moves one 2 KiB buffer per
//! handshake of its data register, and the host relays every buffer whole, so a frame is
//! cut into *fragments*, one per buffer, each saying where it belongs:
//!
//! ```text
//! buffer (abi::migration::BUFFER_SIZE = 2048 bytes)
//!    0  frame length     u32 LE   the whole frame's length, 1..=MAX_FRAME_LEN, the same in every fragment
//!    4  fragment offset  u32 LE   where this fragment's bytes go in the frame
//!    8  fragment length  u16 LE   exactly min(FRAGMENT_PAYLOAD, frame length - offset)
//!   10  reserved         u16      zero
//!   12  fragment bytes
//!   ..  zeros up to 2048
//! ```
//!
//! A frame is sent as fragments at offsets 0, [`FRAGMENT_PAYLOAD`], 2 x `FRAGMENT_PAYLOAD`, ...
//! in order; only the last may be shorter. The receiver accepts exactly that and nothing
//! else: a fragment at another offset, with another frame length, a length that is not the
//! one the frame's length implies, a reserved field or padding that is not zero, is a
//! [`ChannelError::BadFragment`]. These checks make every change to the fragment header
//! or the padding visible at once; the bytes themselves are protected by the session (the
//! handshake transcript and the record layer's AEAD), not here: this layer only frames.
//!
//! # The proposal's page protocol, one page per direction
//!
//! The proposal moves bytes one way: the source SVSM produces, the destination SVSM
//! consumes. Mutual attestation needs answers, so a [`PageChannel`] uses two migration
//! pages, each driven exactly as the proposal drives one: an outbound page on which this
//! SVSM is the producer ([`PageSender`]: waits for `DATA_READ`, writes the buffer, then
//! `DATA_READY`) and an inbound page on which it is the consumer ([`PageReceiver`]: waits
//! for `DATA_READY`, copies the buffer once, then writes `DATA_READ`). The host relays the
//! second page the other way over the same socket.
//!
//! Nothing here blocks: every call looks at the registers once and does what they allow,
//! so one loop can drive both directions and the session (see [`crate::session::pump`]).
//!
//! # The host is hostile
//!
//! The page is shared with the host, which can write any register or buffer byte at any
//! time. Every read is a copy ([`MigrationPage`]), a buffer is copied once and parsed
//! from the copy, and a register value outside the protocol is an error, never a panic.
//! The host can always stop the stream; it cannot make this layer deliver a frame that
//! was not sent whole and in order without the session noticing.

use abi::migration::{BUFFER_SIZE, DataRegister, MigrationStatus};
use alloc::vec::Vec;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The largest frame a channel carries (the session's largest message fits with room).
pub const MAX_FRAME_LEN: usize = 128 * 1024;
/// The fragment header's size.
pub const FRAGMENT_HEADER_LEN: usize = core::mem::size_of::<FragmentHeader>();
/// The most frame bytes one buffer carries.
pub const FRAGMENT_PAYLOAD: usize = BUFFER_SIZE - FRAGMENT_HEADER_LEN;

/// The header at the start of every buffer.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct FragmentHeader {
    /// The whole frame's length.
    pub frame_len: U32,
    /// Where this fragment's bytes go in the frame.
    pub offset: U32,
    /// How many frame bytes follow the header.
    pub len: U16,
    /// Zero.
    pub reserved: U16,
}
abi::assert_size!(FragmentHeader, 12);

/// What was wrong with a received fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentFault {
    /// The frame length is zero or above [`MAX_FRAME_LEN`].
    FrameLength,
    /// The frame length differs from the one the frame's first fragment gave.
    FrameLengthChanged,
    /// The fragment is not at the offset the previous fragments lead to.
    Offset,
    /// The fragment length is not the one the frame length and offset imply.
    Length,
    /// The reserved field is not zero.
    Reserved,
    /// A byte after the fragment is not zero.
    Padding,
}

/// Why the channel failed. A failed channel stays failed (but a receiver told to
/// [`MigrationChannel::pass_over_bad_fragments`] goes on after a `BadFragment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// `send` while an earlier frame is still going out (not an error of the peer or the
    /// host: the caller should have waited for `poll_send`).
    Busy,
    /// A frame to send that is empty or longer than [`MAX_FRAME_LEN`].
    FrameLength {
        /// Its length.
        len: usize,
    },
    /// The stream has ended: the host wrote `COMPLETED` (inbound: before a frame was
    /// complete or when one was expected), or this side closed it.
    Closed,
    /// The status register holds a value that has no meaning for this page.
    BadStatus(u8),
    /// The data register holds a value that is neither `DATA_READY` nor `DATA_READ`.
    BadRegister(u8),
    /// A received fragment broke the framing rules.
    BadFragment(FragmentFault),
    /// No memory for a frame being reassembled.
    OutOfMemory,
    /// A ring of more pages than the channel has was asked for.
    RingTooLarge {
        /// The pages asked for.
        asked: usize,
        /// The pages the channel has.
        has: usize,
    },
}

/// One migration page as the SVSM sees it: memory the host can write at any time.
///
/// Every read returns a copy. An implementation over shared memory must order its
/// accesses as the protocol needs: the buffer write before the `DATA_READY` write, the
/// data register read before the buffer copy (volatile accesses and a fence on bare metal).
pub trait MigrationPage {
    /// The status register.
    fn read_status(&mut self) -> MigrationStatus;
    /// Writes the status register.
    fn write_status(&mut self, status: MigrationStatus);
    /// The data register.
    fn read_data_register(&mut self) -> DataRegister;
    /// Writes the data register.
    fn write_data_register(&mut self, value: DataRegister);
    /// Copies the data buffer.
    fn read_buffer(&mut self, buf: &mut [u8; BUFFER_SIZE]);
    /// Writes the data buffer.
    fn write_buffer(&mut self, buf: &[u8; BUFFER_SIZE]);
}

/// Frames to and from the peer SVSM, through the host.
///
/// Non-blocking: `poll_send` and `receive` do what the host's side allows now and return.
pub trait MigrationChannel {
    /// The largest frame `send` takes.
    fn max_frame_len(&self) -> usize;
    /// Moves the outgoing frame on; true when everything handed to `send` has been taken
    /// by the host (then `send` takes the next frame).
    fn poll_send(&mut self) -> Result<bool, ChannelError>;
    /// Hands a frame to the channel. [`ChannelError::Busy`] unless `poll_send` said true.
    fn send(&mut self, frame: &[u8]) -> Result<(), ChannelError>;
    /// A whole frame from the peer, if one has arrived.
    fn receive(&mut self) -> Result<Option<Vec<u8>>, ChannelError>;
    /// Says that nothing more will be sent, once everything sent has been taken; true
    /// when that has been said.
    fn close(&mut self) -> Result<bool, ChannelError>;
    /// From the next fragment on, uses this many pages of each direction's ring (the
    /// session calls it when the ring mode starts; 1 is the page mode). A ring narrows
    /// only back to the page: 1 after more makes the next fragment the proposal's page's
    /// (both ends do it between the same two frames: after the COMMIT); any other smaller
    /// count changes nothing.
    fn use_ring(&mut self, outbound: usize, inbound: usize) -> Result<(), ChannelError>;
    /// From now on a fragment that breaks the rules ([`ChannelError::BadFragment`]) is
    /// reported, dropped with the frame it belonged to, and the receiver goes on with the
    /// next buffer, instead of failing for good. Only after a migration's commit, where
    /// the peer offers its last frame again and a receiver that stopped would lose the
    /// guest; nothing but the one frame it waits for is accepted there.
    fn pass_over_bad_fragments(&mut self);
}

/// The slots of one direction: the proposal's page (slot 0, which alone carries the
/// status register) and, for the ring mode, more pages driven exactly like it. Fragments
/// go to the slots in turn, `0, 1, .., active - 1, 0, ..`; in the page mode `active` is 1.
#[derive(Debug)]
struct Slots<P> {
    pages: Vec<P>,
    active: usize,
    next: usize,
}

impl<P: MigrationPage> Slots<P> {
    fn new(pages: Vec<P>) -> Self {
        Self { pages, active: 1, next: 0 }
    }

    fn widen(&mut self, pages: usize) -> Result<(), ChannelError> {
        if pages > self.pages.len() {
            return Err(ChannelError::RingTooLarge { asked: pages, has: self.pages.len() });
        }
        if pages == 1 && self.active > 1 {
            // Back to the page: the next fragment is slot 0's at both ends.
            self.active = 1;
            self.next = 0;
            return Ok(());
        }
        // The turn continues where it is: both ends widen between the same two fragments,
        // so they agree on the slot of every fragment after it.
        self.active = self.active.max(pages);
        Ok(())
    }

    fn first(&mut self) -> Option<&mut P> {
        self.pages.first_mut()
    }

    fn current(&mut self) -> Option<&mut P> {
        self.pages.get_mut(self.next)
    }

    fn advance(&mut self) {
        self.next = (self.next + 1) % self.active.max(1);
    }
}

/// The producer's side of the proposal's page protocol: frames out, one fragment per
/// `DATA_READY`, on one page or on a ring of them.
#[derive(Debug)]
pub struct PageSender<P> {
    slots: Slots<P>,
    /// Per slot: a fragment was written and the host's `DATA_READ` not yet seen. Made by
    /// the first [`Self::start`], which can fail for memory (the constructor cannot).
    unread: Vec<bool>,
    /// The frame going out, and the offset of its next fragment.
    frame: Vec<u8>,
    next_offset: usize,
    closed: bool,
    failed: Option<ChannelError>,
}

impl<P: MigrationPage> PageSender<P> {
    /// A sender on `page` (the page mode). It writes nothing until the host has started
    /// the page (status `RUNNING`).
    pub fn new(page: P) -> Self {
        Self::with_ring(alloc::vec![page])
    }

    /// A sender on a ring of `pages` (at least one; the first is the proposal's page). It
    /// uses only the first until [`Self::widen`].
    pub fn with_ring(pages: Vec<P>) -> Self {
        Self {
            slots: Slots::new(pages),
            unread: Vec::new(),
            frame: Vec::new(),
            next_offset: 0,
            closed: false,
            failed: None,
        }
    }

    /// The proposal's page (the ring's first).
    pub fn page(&self) -> Option<&P> {
        self.slots.pages.first()
    }

    /// From the next fragment on, takes turns over this many pages.
    pub fn widen(&mut self, pages: usize) -> Result<(), ChannelError> {
        self.slots.widen(pages)
    }

    /// Whether the frame handed over has gone into the pages whole and the page for the
    /// next fragment is free: then [`Self::start`] takes the next frame.
    fn can_start(&self) -> bool {
        self.next_offset >= self.frame.len() && !self.unread.get(self.slots.next).copied().unwrap_or(false)
    }

    /// Starts sending `frame`.
    pub fn start(&mut self, frame: &[u8]) -> Result<(), ChannelError> {
        self.check_failed()?;
        if self.closed {
            return Err(ChannelError::Closed);
        }
        if !self.can_start() {
            return Err(ChannelError::Busy);
        }
        if frame.is_empty() || frame.len() > MAX_FRAME_LEN {
            return Err(ChannelError::FrameLength { len: frame.len() });
        }
        // No fragment was written before the first frame: nothing is unread yet.
        if self.unread.len() < self.slots.pages.len() {
            let more = self.slots.pages.len() - self.unread.len();
            self.unread.try_reserve_exact(more).map_err(|_| ChannelError::OutOfMemory)?;
            self.unread.resize(self.slots.pages.len(), false);
        }
        self.frame.clear();
        self.frame.try_reserve(frame.len()).map_err(|_| ChannelError::OutOfMemory)?;
        self.frame.extend_from_slice(frame);
        self.next_offset = 0;
        Ok(())
    }

    /// Does what the registers allow now: notices the pages the host has taken, writes
    /// the next fragments into free ones. True when the next frame can start.
    pub fn poll(&mut self) -> Result<bool, ChannelError> {
        self.check_failed()?;
        // Nothing left to write or to see taken: no need to look at the pages (which this
        // side may itself have closed).
        if self.closed || (self.next_offset >= self.frame.len() && !self.unread.contains(&true)) {
            return Ok(true);
        }
        let result = self.step();
        if let Err(e) = result {
            self.failed = Some(e);
        }
        result
    }

    /// Writes `COMPLETED` once the host has taken every fragment (the proposal's end of
    /// the stream); true when written.
    pub fn close(&mut self) -> Result<bool, ChannelError> {
        if self.closed {
            return Ok(true);
        }
        if !self.poll()? || !self.all_taken()? {
            return Ok(false);
        }
        if let Some(page) = self.slots.first() {
            page.write_status(MigrationStatus::COMPLETED);
        }
        self.closed = true;
        Ok(true)
    }

    fn check_failed(&self) -> Result<(), ChannelError> {
        match self.failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether the host took every fragment written (looks at each page still unread).
    fn all_taken(&mut self) -> Result<bool, ChannelError> {
        for (page, unread) in self.slots.pages.iter_mut().zip(self.unread.iter_mut()) {
            if *unread {
                match page.read_data_register() {
                    DataRegister::DATA_READY => return Ok(false),
                    DataRegister::DATA_READ => *unread = false,
                    DataRegister(other) => return Err(ChannelError::BadRegister(other)),
                }
            }
        }
        Ok(true)
    }

    fn step(&mut self) -> Result<bool, ChannelError> {
        let first = self.slots.first().ok_or(ChannelError::Closed)?;
        match first.read_status() {
            MigrationStatus::NOT_STARTED => return Ok(false),
            MigrationStatus::RUNNING => {}
            MigrationStatus::COMPLETED => return Err(ChannelError::Closed),
            MigrationStatus(other) => return Err(ChannelError::BadStatus(other)),
        }
        loop {
            let slot = self.slots.next;
            let page = self.slots.current().ok_or(ChannelError::Closed)?;
            match page.read_data_register() {
                // The host has not taken the buffer yet (or wrote READY itself: either way
                // the buffer is not ours to overwrite).
                DataRegister::DATA_READY => return Ok(false),
                DataRegister::DATA_READ => {
                    if let Some(unread) = self.unread.get_mut(slot) {
                        *unread = false;
                    }
                }
                DataRegister(other) => return Err(ChannelError::BadRegister(other)),
            }
            if self.next_offset >= self.frame.len() {
                return Ok(true);
            }
            self.write_fragment()?;
        }
    }

    /// Writes the next fragment into the current page (which is free) and moves on.
    fn write_fragment(&mut self) -> Result<(), ChannelError> {
        let rest = self.frame.get(self.next_offset..).unwrap_or_default();
        let len = rest.len().min(FRAGMENT_PAYLOAD);
        let header = FragmentHeader {
            frame_len: U32::new(to_u32(self.frame.len())?),
            offset: U32::new(to_u32(self.next_offset)?),
            len: U16::new(u16::try_from(len).map_err(|_| ChannelError::FrameLength { len })?),
            reserved: U16::ZERO,
        };
        let mut buffer = [0u8; BUFFER_SIZE];
        let (head, body) = buffer.split_at_mut(FRAGMENT_HEADER_LEN);
        head.copy_from_slice(header.as_bytes());
        let bytes = rest.get(..len).ok_or(ChannelError::FrameLength { len })?;
        body.get_mut(..len).ok_or(ChannelError::FrameLength { len })?.copy_from_slice(bytes);
        let slot = self.slots.next;
        let page = self.slots.current().ok_or(ChannelError::Closed)?;
        page.write_buffer(&buffer);
        page.write_data_register(DataRegister::DATA_READY);
        if let Some(unread) = self.unread.get_mut(slot) {
            *unread = true;
        }
        self.next_offset += len;
        self.slots.advance();
        Ok(())
    }
}

fn to_u32(n: usize) -> Result<u32, ChannelError> {
    u32::try_from(n).map_err(|_| ChannelError::FrameLength { len: n })
}

/// The consumer's side of the proposal's page protocol: fragments in, whole frames out,
/// from one page or a ring of them.
#[derive(Debug)]
pub struct PageReceiver<P> {
    slots: Slots<P>,
    /// The frame being reassembled and its announced length (0: none in progress).
    frame: Vec<u8>,
    frame_len: usize,
    failed: Option<ChannelError>,
    /// See [`MigrationChannel::pass_over_bad_fragments`].
    lenient: bool,
}

impl<P: MigrationPage> PageReceiver<P> {
    /// A receiver on `page` (the page mode). It reads nothing until the host has started
    /// the page (status `INCOMING`).
    pub fn new(page: P) -> Self {
        Self::with_ring(alloc::vec![page])
    }

    /// A receiver on a ring of `pages` (at least one; the first is the proposal's page).
    /// It reads only the first until [`Self::widen`].
    pub fn with_ring(pages: Vec<P>) -> Self {
        Self { slots: Slots::new(pages), frame: Vec::new(), frame_len: 0, failed: None, lenient: false }
    }

    /// The proposal's page (the ring's first).
    pub fn page(&self) -> Option<&P> {
        self.slots.pages.first()
    }

    /// From the next fragment on, takes turns over this many pages.
    pub fn widen(&mut self, pages: usize) -> Result<(), ChannelError> {
        self.slots.widen(pages)
    }

    /// Takes the fragments the host has put in the pages, in turn, until a frame is
    /// whole (then returns it) or the next page is empty.
    pub fn poll(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let result = self.step();
        if let Err(e) = result {
            if !(self.lenient && matches!(e, ChannelError::BadFragment(_))) {
                self.failed = Some(e);
            }
            self.frame = Vec::new();
            self.frame_len = 0;
        }
        result
    }

    /// See [`MigrationChannel::pass_over_bad_fragments`].
    pub fn pass_over_bad_fragments(&mut self) {
        self.lenient = true;
    }

    fn step(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        // Status first: the host writes DATA_READY before COMPLETED, so a buffer that was
        // ready when the stream ended is still taken.
        let first = self.slots.first().ok_or(ChannelError::Closed)?;
        let ended = match first.read_status() {
            MigrationStatus::NOT_STARTED => return Ok(None),
            MigrationStatus::INCOMING => false,
            MigrationStatus::COMPLETED => true,
            MigrationStatus(other) => return Err(ChannelError::BadStatus(other)),
        };
        loop {
            let page = self.slots.current().ok_or(ChannelError::Closed)?;
            match page.read_data_register() {
                DataRegister::DATA_READY => {}
                DataRegister::DATA_READ if ended => return Err(ChannelError::Closed),
                DataRegister::DATA_READ => return Ok(None),
                DataRegister(other) => return Err(ChannelError::BadRegister(other)),
            }
            let mut buffer = [0u8; BUFFER_SIZE];
            page.read_buffer(&mut buffer);
            page.write_data_register(DataRegister::DATA_READ);
            self.slots.advance();
            if let Some(frame) = self.accept(&buffer)? {
                return Ok(Some(frame));
            }
        }
    }

    fn accept(&mut self, buffer: &[u8; BUFFER_SIZE]) -> Result<Option<Vec<u8>>, ChannelError> {
        let (header, body) =
            FragmentHeader::read_from_prefix(buffer).map_err(|_| ChannelError::BadFragment(FragmentFault::Length))?;
        let frame_len = header.frame_len.get() as usize;
        let offset = header.offset.get() as usize;
        let len = usize::from(header.len.get());
        if frame_len == 0 || frame_len > MAX_FRAME_LEN {
            return Err(ChannelError::BadFragment(FragmentFault::FrameLength));
        }
        if header.reserved.get() != 0 {
            return Err(ChannelError::BadFragment(FragmentFault::Reserved));
        }
        if offset != self.frame.len() {
            return Err(ChannelError::BadFragment(FragmentFault::Offset));
        }
        if self.frame_len != 0 && frame_len != self.frame_len {
            return Err(ChannelError::BadFragment(FragmentFault::FrameLengthChanged));
        }
        // offset < frame_len: offset is what we hold, which is below the announced length
        // (a new frame starts at 0 and frame_len > 0).
        if len != (frame_len - offset).min(FRAGMENT_PAYLOAD) {
            return Err(ChannelError::BadFragment(FragmentFault::Length));
        }
        let (bytes, padding) = body.split_at_checked(len).ok_or(ChannelError::BadFragment(FragmentFault::Length))?;
        if padding.iter().any(|&b| b != 0) {
            return Err(ChannelError::BadFragment(FragmentFault::Padding));
        }
        self.frame_len = frame_len;
        // The frame grows with what arrives, not with what the host announces.
        self.frame.try_reserve(len).map_err(|_| ChannelError::OutOfMemory)?;
        self.frame.extend_from_slice(bytes);
        if self.frame.len() < self.frame_len {
            return Ok(None);
        }
        self.frame_len = 0;
        Ok(Some(core::mem::take(&mut self.frame)))
    }
}

/// A [`MigrationChannel`] over migration pages, one direction each: the proposal's page
/// mode, and the ring mode once the session widens it.
#[derive(Debug)]
pub struct PageChannel<O, I> {
    sender: PageSender<O>,
    receiver: PageReceiver<I>,
}

impl<O: MigrationPage, I: MigrationPage> PageChannel<O, I> {
    /// A channel that sends on `outbound` (this SVSM produces) and receives on `inbound`
    /// (this SVSM consumes): the page mode only.
    pub fn new(outbound: O, inbound: I) -> Self {
        Self { sender: PageSender::new(outbound), receiver: PageReceiver::new(inbound) }
    }

    /// A channel over two rings (each at least one page; the first of each is the
    /// proposal's page), which starts in the page mode.
    pub fn with_rings(outbound: Vec<O>, inbound: Vec<I>) -> Self {
        Self { sender: PageSender::with_ring(outbound), receiver: PageReceiver::with_ring(inbound) }
    }

    /// The outbound direction.
    pub fn sender(&self) -> &PageSender<O> {
        &self.sender
    }

    /// The inbound direction.
    pub fn receiver(&self) -> &PageReceiver<I> {
        &self.receiver
    }
}

impl<O: MigrationPage, I: MigrationPage> MigrationChannel for PageChannel<O, I> {
    fn max_frame_len(&self) -> usize {
        MAX_FRAME_LEN
    }

    fn poll_send(&mut self) -> Result<bool, ChannelError> {
        self.sender.poll()
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), ChannelError> {
        self.sender.start(frame)?;
        // Out at once if the pages allow it.
        self.sender.poll().map(|_| ())
    }

    fn receive(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        self.receiver.poll()
    }

    fn close(&mut self) -> Result<bool, ChannelError> {
        self.sender.close()
    }

    fn use_ring(&mut self, outbound: usize, inbound: usize) -> Result<(), ChannelError> {
        self.sender.widen(outbound)?;
        self.receiver.widen(inbound)
    }

    fn pass_over_bad_fragments(&mut self) {
        self.receiver.pass_over_bad_fragments();
    }
}
