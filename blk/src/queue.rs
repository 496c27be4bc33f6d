//! Requests on the virtqueue: buffers handed to the device, a notification, and the wait
//! for their return with a deadline.
#![expect(unsafe_code, reason = "VirtQueue::add and pop_used: the device may write the buffers in between")]

use crate::{BouncingHal, Platform, QUEUE_SIZE, REQUEST_DEADLINE_NS, REQUEST_QUEUE};
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;

/// Why a request did not come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    /// The device was lost at an earlier request: this one was not made.
    Before,
    /// It was lost now, for this reason.
    Now(&'static str),
}

/// The request queue, and whether the device lost a request on it.
pub struct Requests<H: BouncingHal> {
    /// Its pages, and a lost request's bounce pages, are only ever DMA pages again (the
    /// `BouncingHal` promise), so a device that still writes them after a lost request
    /// writes nothing else.
    queue: VirtQueue<H, QUEUE_SIZE>,
    lost: bool,
}

impl<H: BouncingHal> Requests<H> {
    pub fn new(queue: VirtQueue<H, QUEUE_SIZE>) -> Self {
        Self { queue, lost: false }
    }

    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// Hand buffers to the device, tell it, and take them back when it is done with them.
    /// A device that misses the deadline or returns another request than this one is lost
    /// for good.
    pub fn exchange<'b>(
        &mut self,
        transport: &mut impl Transport,
        platform: &impl Platform,
        inputs: &'b [&'b [u8]],
        outputs: &'b mut [&'b mut [u8]],
    ) -> Result<(), Lost> {
        if self.lost {
            return Err(Lost::Before);
        }
        let done = self.add_and_wait(transport, platform, inputs, outputs);
        self.lost = done.is_err();
        done.map_err(Lost::Now)
    }

    fn add_and_wait<'b>(
        &mut self,
        transport: &mut impl Transport,
        platform: &impl Platform,
        inputs: &'b [&'b [u8]],
        outputs: &'b mut [&'b mut [u8]],
    ) -> Result<(), &'static str> {
        // SAFETY: `add` wants the buffers left alone until `pop_used` returns them, because
        // a device may write them. A lost request breaks the letter of that contract (its
        // buffers go back to the caller without `pop_used`), not its reason: the device
        // never sees them. The `BouncingHal` copies each into a bounce page of its own, and
        // the descriptors name only those pages. On success `pop_used` below copies the
        // device's writes back and frees the bounce pages; if the device is lost, the queue
        // is never used again, and its pages and bounce pages are only ever DMA pages again
        // (the `BouncingHal` promise), so nothing the device can still write refers to
        // these buffers.
        let token = unsafe { self.queue.add(inputs, outputs) }.map_err(|_| "the queue refused it")?;
        if self.queue.should_notify() {
            transport.notify(REQUEST_QUEUE);
        }
        let deadline = platform.now_ns().saturating_add(REQUEST_DEADLINE_NS);
        while !self.queue.can_pop() {
            if platform.now_ns() > deadline {
                return Err("no answer within 10 s");
            }
            core::hint::spin_loop();
        }
        // SAFETY: the same buffers `add` took for this token.
        unsafe { self.queue.pop_used(token, inputs, outputs) }.map(|_| ()).map_err(|_| "a malformed answer")
    }
}
