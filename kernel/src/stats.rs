//! Counters of what the SVSM served, per protocol, and of refused entries. Read by
//! reports now and by the OCP statistics sources later.

use abi::protocol::ProtocolId;

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

impl Stats {
    pub fn record(&mut self, protocol: ProtocolId, error: bool) {
        let slot = (protocol.0 as usize).min(TRACKED_PROTOCOLS);
        let c = &mut self.per_protocol[slot];
        c.calls += 1;
        c.errors += u64::from(error);
    }
}
