//! A channel: request/reply IPC between the kernel and one service process
//! (docs/syscalls.md "Channels").
//!
//! The kernel posts a request (its own copy: the service never sees guest memory); the
//! service takes it with CHANNEL_RECEIVE into its own buffer, works, and answers with
//! CHANNEL_REPLY; the kernel takes the reply. One request is in flight at a time. A
//! service that ends, or faults, closes its end: the kernel's caller gets `Closed`
//! instead of waiting forever.

use alloc::vec::Vec;
use spin::Mutex;

#[derive(Debug, Default)]
pub struct Channel {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    /// A request waits for the service.
    Posted(Vec<u8>),
    /// The service received the request and has not answered yet.
    Serving,
    /// The answer waits for the kernel.
    Replied(Vec<u8>),
    /// The service is gone.
    Closed,
}

/// Why the kernel's side of a channel refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// A request is already in flight.
    Busy,
    /// The service ended or faulted.
    Closed,
}

/// What CHANNEL_RECEIVE finds.
#[derive(Debug, PartialEq, Eq)]
pub enum Receive {
    /// The request, now being served.
    Request(Vec<u8>),
    /// Nothing yet: the thread waits.
    Empty,
    /// A request is in service and not answered (a second receive is a bug in the service).
    Unanswered,
    /// The request is longer than the service's buffer; it stays posted.
    TooLong(usize),
}

impl Channel {
    /// Kernel: post a request.
    pub fn post(&self, request: Vec<u8>) -> Result<(), ChannelError> {
        let mut s = self.state.lock();
        match *s {
            State::Idle => {
                *s = State::Posted(request);
                Ok(())
            }
            State::Closed => Err(ChannelError::Closed),
            State::Posted(_) | State::Serving | State::Replied(_) => Err(ChannelError::Busy),
        }
    }

    /// Kernel: the reply, once there is one (`Ok(None)`: not yet).
    pub fn take_reply(&self) -> Result<Option<Vec<u8>>, ChannelError> {
        let mut s = self.state.lock();
        match core::mem::take(&mut *s) {
            State::Replied(reply) => Ok(Some(reply)),
            State::Closed => {
                *s = State::Closed;
                Err(ChannelError::Closed)
            }
            other => {
                *s = other;
                Ok(None)
            }
        }
    }

    /// Service: take the posted request if it fits `capacity` bytes.
    pub fn receive(&self, capacity: usize) -> Receive {
        let mut s = self.state.lock();
        match core::mem::take(&mut *s) {
            State::Posted(request) if request.len() > capacity => {
                let len = request.len();
                *s = State::Posted(request);
                Receive::TooLong(len)
            }
            State::Posted(request) => {
                *s = State::Serving;
                Receive::Request(request)
            }
            other => {
                let answer = if matches!(other, State::Serving) { Receive::Unanswered } else { Receive::Empty };
                *s = other;
                answer
            }
        }
    }

    /// Is a request waiting for the service (WAIT_FOR_EVENT's test)?
    pub fn has_request(&self) -> bool {
        matches!(*self.state.lock(), State::Posted(_))
    }

    /// Service: answer the request in service; `false` if none is.
    pub fn reply(&self, reply: Vec<u8>) -> bool {
        let mut s = self.state.lock();
        if matches!(*s, State::Serving) {
            *s = State::Replied(reply);
            true
        } else {
            false
        }
    }

    /// The service end is gone: a request in flight is lost, and every later one refused.
    pub fn close(&self) {
        *self.state.lock() = State::Closed;
    }

    /// Nothing posted, being served or answered: no request is in flight.
    pub fn is_idle(&self) -> bool {
        matches!(*self.state.lock(), State::Idle)
    }

    pub fn is_closed(&self) -> bool {
        matches!(*self.state.lock(), State::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn a_request_is_served_once_and_answered() {
        let c = Channel::default();
        assert_eq!(c.take_reply(), Ok(None));
        assert_eq!(c.receive(16), Receive::Empty);
        c.post(vec![1, 2, 3]).unwrap();
        assert_eq!(c.post(vec![9]), Err(ChannelError::Busy));
        assert_eq!(c.receive(2), Receive::TooLong(3));
        assert_eq!(c.receive(3), Receive::Request(vec![1, 2, 3]));
        assert_eq!(c.receive(3), Receive::Unanswered);
        assert_eq!(c.take_reply(), Ok(None));
        assert!(c.reply(vec![7]));
        assert!(!c.reply(vec![8]));
        assert_eq!(c.take_reply(), Ok(Some(vec![7])));
        c.post(vec![4]).unwrap();
    }

    #[test]
    fn a_closed_channel_refuses_the_kernel() {
        let c = Channel::default();
        c.post(vec![1]).unwrap();
        c.close();
        assert_eq!(c.take_reply(), Err(ChannelError::Closed));
        assert_eq!(c.post(vec![2]), Err(ChannelError::Closed));
        assert_eq!(c.receive(8), Receive::Empty);
        assert!(!c.reply(vec![1]));
    }
}
