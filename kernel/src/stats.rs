//! Counters of what the SVSM served, per protocol, and of refused entries. Read by
//! reports and by the OCP statistics sources.
//!
//! Every CPU counts as it serves, without a lock: the counters are atomics
//! ([`Counters`]); readers take a [`Stats`] snapshot.

use abi::protocol::ProtocolId;
use core::sync::atomic::{AtomicU64, Ordering};

/// Protocols with their own counters; others count under the last slot.
pub const TRACKED_PROTOCOLS: usize = 6;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtocolCounters {
    pub calls: u64,
    pub errors: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Indexed by protocol number; index `TRACKED_PROTOCOLS` counts unknown protocols.
    pub per_protocol: [ProtocolCounters; TRACKED_PROTOCOLS + 1],
    /// Host entered with CALL_PENDING = 0.
    pub spurious_entries: u64,
    /// Host entered with an exit code other than the call gate.
    pub wrong_exit_code: u64,
    /// An entry could not be served because the host broke the vCPU or calling area.
    pub host_faults: u64,
}

/// The live counters, shared by every CPU.
#[derive(Debug, Default)]
pub struct Counters {
    calls: [AtomicU64; TRACKED_PROTOCOLS + 1],
    errors: [AtomicU64; TRACKED_PROTOCOLS + 1],
    pub spurious_entries: AtomicU64,
    pub wrong_exit_code: AtomicU64,
    pub host_faults: AtomicU64,
}

impl Counters {
    /// One call of `protocol` served, with or without an error.
    pub fn record(&self, protocol: ProtocolId, error: bool) {
        let slot = (protocol.0 as usize).min(TRACKED_PROTOCOLS);
        if let (Some(calls), Some(errors)) = (self.calls.get(slot), self.errors.get(slot)) {
            calls.fetch_add(1, Ordering::Relaxed);
            errors.fetch_add(u64::from(error), Ordering::Relaxed);
        }
    }

    /// Calls of the protocol in `slot` (`TRACKED_PROTOCOLS` for the others).
    pub fn calls(&self, slot: usize) -> u64 {
        self.calls.get(slot).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn errors(&self, slot: usize) -> u64 {
        self.errors.get(slot).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Stats {
        Stats {
            per_protocol: core::array::from_fn(|i| ProtocolCounters { calls: self.calls(i), errors: self.errors(i) }),
            spurious_entries: self.spurious_entries.load(Ordering::Relaxed),
            wrong_exit_code: self.wrong_exit_code.load(Ordering::Relaxed),
            host_faults: self.host_faults.load(Ordering::Relaxed),
        }
    }
}
