//! The kernel's side of the vTPM service: a [`TpmEngine`] that hands each command to the
//! service process over its channel (messages of `vtpm::service`) and keeps the NV
//! changes each answer carries until the vTPM takes them.
//!
//! The process is isolated because it might be compromised, so its answers are hostile
//! input: one that does not parse, one whose NV changes would grow the NV state past what
//! a START message can carry back ([`NvLedger`]), or a process that ends, stops the engine
//! for good.
//! From then on the TPM answers TPM_RC_FAILURE (the `Vtpm` wrapper turns an empty answer
//! into it) and reports an NV error, so a vTPM with storage stops instead of keeping a
//! state nobody can vouch for.

use super::channel::Channel;
use alloc::sync::Arc;
use alloc::vec::Vec;
use vtpm::TpmEngine;
use vtpm::nv::{MAX_BLOBS, NvBlobs, NvChange, NvError, TpmState};
use vtpm::service::{self, Answer};

/// Why the service did not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartError {
    /// The NV state does not fit a start message.
    StateTooLarge,
    /// The process ended, or answered something else than STARTED.
    Service,
    /// libtpms refused to start (its TPM_RESULT): the kept state is not one it reads.
    Engine(u32),
}

/// The shape of the NV state as the service's answers have made it: each blob's name and
/// length. What the service may change is bounded by it: at most [`MAX_BLOBS`] blobs
/// whose START message fits [`service::MAX_MESSAGE`], since a state the next boot cannot
/// hand back to the service is lost anyway. A deletion of a blob the state does not hold
/// changes nothing and is dropped. Without it a compromised
/// service could grow the state (kept in the sealed store, in the SVSM's heap) by a new
/// name per command until the heap ran out.
#[derive(Debug, Default)]
struct NvLedger {
    blobs: Vec<(Vec<u8>, usize)>,
}

impl NvLedger {
    fn of(nv: &NvBlobs) -> Option<Self> {
        let mut ledger = Self::default();
        ledger.blobs.try_reserve(nv.len()).ok()?;
        for (name, data) in nv {
            ledger.blobs.push((crate::heap::copy_of(name).ok()?, data.len()));
        }
        ledger.within_bounds().then_some(ledger)
    }

    /// Apply `changes`, dropping the deletions of blobs the state does not hold; `false`
    /// if the state would leave its bounds (or no memory).
    fn apply(&mut self, changes: &mut Vec<NvChange>) -> bool {
        let mut bounded = true;
        changes.retain(|change| {
            let at = self.blobs.iter().position(|(name, _)| *name == change.name);
            match (at, &change.data) {
                (Some(i), None) => {
                    self.blobs.swap_remove(i);
                }
                (None, None) => return false,
                (Some(i), Some(data)) => {
                    if let Some(entry) = self.blobs.get_mut(i) {
                        entry.1 = data.len();
                    }
                }
                (None, Some(data)) => match crate::heap::copy_of(&change.name) {
                    Ok(name) if self.blobs.len() < MAX_BLOBS && self.blobs.try_reserve(1).is_ok() => {
                        self.blobs.push((name, data.len()));
                    }
                    _ => bounded = false,
                },
            }
            true
        });
        bounded && self.within_bounds()
    }

    fn within_bounds(&self) -> bool {
        let start = service::start_len(self.blobs.iter().map(|(name, len)| (name.len(), *len)));
        self.blobs.len() <= MAX_BLOBS && start <= service::MAX_MESSAGE
    }
}

/// Most changes kept for the vTPM to take: one per blob the state may hold and one per
/// blob it may have deleted. libtpms uses three names, so its changes never come near.
const MAX_PENDING: usize = 2 * MAX_BLOBS;

/// Add `changes` to the `pending` ones, a later change of a blob replacing the earlier:
/// a vTPM without storage never takes them, and they must not pile up command after
/// command. `false` past [`MAX_PENDING`] (a service that creates and deletes a new name
/// with every command) or without memory.
fn merge(pending: &mut Vec<NvChange>, changes: Vec<NvChange>) -> bool {
    for change in changes {
        match pending.iter_mut().find(|p| p.name == change.name) {
            Some(earlier) => *earlier = change,
            None => {
                if pending.len() >= MAX_PENDING || pending.try_reserve(1).is_err() {
                    return false;
                }
                pending.push(change);
            }
        }
    }
    true
}

/// The vTPM engine behind a channel. `R` runs the service process until it waits on its
/// channel again, and says whether it still lives.
pub struct ServiceTpm<R: FnMut() -> bool + Send> {
    channel: Arc<Channel>,
    /// Runs the process; dropped with it when the service dies, so a dead vTPM holds
    /// none of the SVSM's memory (its pages, its page tables).
    run: Option<R>,
    /// NV changes answered and not yet taken.
    pending: Vec<NvChange>,
    /// The NV state they make.
    ledger: NvLedger,
    alive: bool,
    /// The engine's cycles for the last command, as the service reported them.
    last_engine_cycles: u64,
}

impl<R: FnMut() -> bool + Send> core::fmt::Debug for ServiceTpm<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServiceTpm").field("alive", &self.alive).field("pending", &self.pending.len()).finish()
    }
}

impl<R: FnMut() -> bool + Send> ServiceTpm<R> {
    /// Start the engine in the process behind `channel` from the NV state `nv` (empty: a
    /// new TPM). The process has been loaded and waits for its first message.
    pub fn start(channel: Arc<Channel>, run: R, nv: &NvBlobs) -> Result<Self, StartError> {
        let message = service::start(nv).ok_or(StartError::StateTooLarge)?;
        Self::begin(channel, run, message, NvLedger::of(nv).ok_or(StartError::StateTooLarge)?)
    }

    /// Continue, in the process behind `channel`, the TPM a migration source saved.
    pub fn resume(channel: Arc<Channel>, run: R, state: &TpmState) -> Result<Self, StartError> {
        let message = service::resume(state).ok_or(StartError::StateTooLarge)?;
        Self::begin(channel, run, message, NvLedger::of(&state.nv).ok_or(StartError::StateTooLarge)?)
    }

    fn begin(channel: Arc<Channel>, run: R, message: Vec<u8>, ledger: NvLedger) -> Result<Self, StartError> {
        let mut engine =
            Self { channel, run: Some(run), pending: Vec::new(), ledger, alive: true, last_engine_cycles: 0 };
        let answer = engine.exchange(message).ok_or(StartError::Service)?;
        match service::parse_answer(&answer) {
            Some(Answer::Started(mut changes)) => {
                if !engine.ledger.apply(&mut changes) {
                    engine.die();
                    return Err(StartError::Service);
                }
                engine.pending = changes;
                Ok(engine)
            }
            Some(Answer::Failed(code)) => Err(StartError::Engine(code)),
            _ => Err(StartError::Service),
        }
    }

    /// Post `message` and run the service until it waits again; its answer, or `None`
    /// (and the engine is dead) if it ended, or waits again without having answered: a
    /// service that does that would keep the calling vCPU forever if it were run again.
    fn exchange(&mut self, message: Vec<u8>) -> Option<Vec<u8>> {
        if !self.alive {
            return None;
        }
        if self.channel.post(message).is_ok()
            && self.run.as_mut().is_some_and(|run| run())
            && let Ok(Some(answer)) = self.channel.take_reply()
        {
            return Some(answer);
        }
        self.die();
        None
    }

    fn die(&mut self) {
        self.alive = false;
        self.channel.close();
        self.pending.clear();
        self.run = None;
    }

    pub fn alive(&self) -> bool {
        self.alive
    }

    /// The TSC cycles the service says its engine took for the last command (0: not
    /// measured). The service's word: good for a report, never for a decision.
    pub fn last_engine_cycles(&self) -> u64 {
        self.last_engine_cycles
    }
}

impl<R: FnMut() -> bool + Send> TpmEngine for ServiceTpm<R> {
    fn execute(&mut self, command: &[u8], response: &mut [u8]) -> usize {
        self.last_engine_cycles = 0;
        let Some(message) = service::command(command) else { return 0 };
        let Some(answer) = self.exchange(message) else { return 0 };
        let Some(Answer::Response { response: bytes, mut changes, engine_cycles }) = service::parse_answer(&answer)
        else {
            self.die();
            return 0;
        };
        self.last_engine_cycles = engine_cycles;
        let Some(out) = response.get_mut(..bytes.len()) else {
            self.die();
            return 0;
        };
        out.copy_from_slice(bytes);
        if !self.ledger.apply(&mut changes) || !merge(&mut self.pending, changes) {
            self.die();
            return 0;
        }
        bytes.len()
    }

    fn take_nv_changes(&mut self) -> Result<Vec<NvChange>, NvError> {
        if !self.alive {
            return Err(NvError::Engine);
        }
        Ok(core::mem::take(&mut self.pending))
    }

    /// The state the service saves: its answer is hostile input like any other, and one
    /// that does not parse ends the engine (the migration then fails, and the source's
    /// vTPM is gone with it: the SVSM cannot vouch for a state it cannot read).
    fn save_state(&mut self) -> Result<TpmState, NvError> {
        let message = service::save().ok_or(NvError::Engine)?;
        let answer = self.exchange(message).ok_or(NvError::Engine)?;
        match service::parse_answer(&answer) {
            Some(Answer::Saved(state)) => Ok(state),
            // The engine could not save, and runs on.
            Some(Answer::Failed(_)) => Err(NvError::Engine),
            _ => {
                self.die();
                Err(NvError::Engine)
            }
        }
    }
}

/// What running the engine at CPL 3 costs, per TPM command code: the round trip the
/// kernel sees (post the command, run the process, take the answer) beside the engine's
/// own cycles as the service measured them. Commands of one code add up in a window; a
/// window closes, and is handed back for the log, after [`CplCost::WINDOW`] commands or
/// once its engine cycles pass [`CplCost::SLOW`], so a key generation gets a line of its
/// own and a run of PCR extends one line per sixteen.
///
/// The command code is the guest's to choose, so what this hands back is bounded: windows
/// for at most [`CplCost::CODES`] codes are open at once (a command of another code is not
/// counted), and at most [`CplCost::REPORTS`] windows are handed back per boot. A guest
/// cannot make the SVSM log a line per command.
#[derive(Clone, Debug, Default)]
pub struct CplCost {
    open: [Option<CostWindow>; CplCost::CODES],
    reported: u32,
}

/// A closed window: `commands` of the TPM command code `code`, their round trips and
/// their engine time added up (TSC cycles); `report` counts from 1 to [`CplCost::REPORTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CostWindow {
    pub code: u32,
    pub commands: u32,
    pub round_trip: u64,
    pub engine: u64,
    pub report: u32,
}

impl CplCost {
    /// Commands a window holds at most.
    pub const WINDOW: u32 = 16;
    /// Engine cycles that close a window (50 ms at 2 GHz).
    pub const SLOW: u64 = 100_000_000;
    /// Command codes with a window open at once.
    pub const CODES: usize = 8;
    /// Windows handed back per boot.
    pub const REPORTS: u32 = 32;

    /// Record one command of `code` that took `round_trip` cycles, `engine` of them in the
    /// engine; the window it closed, if any. An engine that reports no time (0) or more
    /// than the round trip (a service that lies) counts as nothing measured.
    pub fn record(&mut self, code: u32, round_trip: u64, engine: u64) -> Option<CostWindow> {
        if engine == 0 || engine > round_trip || self.reported >= Self::REPORTS {
            return None;
        }
        let open = self.open.iter().position(|w| w.is_some_and(|w| w.code == code));
        let at = open.or_else(|| self.open.iter().position(Option::is_none))?;
        let slot = self.open.get_mut(at)?;
        let window = match slot {
            Some(w) => {
                w.commands += 1;
                w.round_trip = w.round_trip.saturating_add(round_trip);
                w.engine = w.engine.saturating_add(engine);
                *w
            }
            None => CostWindow { code, commands: 1, round_trip, engine, report: 0 },
        };
        if window.commands >= Self::WINDOW || window.engine >= Self::SLOW {
            *slot = None;
            self.reported += 1;
            return Some(CostWindow { report: self.reported, ..window });
        }
        *slot = Some(window);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(code: u32, commands: u32, round_trip: u64, engine: u64, report: u32) -> Option<CostWindow> {
        Some(CostWindow { code, commands, round_trip, engine, report })
    }

    #[test]
    fn cheap_commands_close_a_window_per_sixteen_and_a_slow_one_closes_its_own() {
        let mut cost = CplCost::default();
        for i in 1..CplCost::WINDOW {
            assert_eq!(cost.record(0x182, 1200, 1000), None, "command {i} of the window");
        }
        assert_eq!(cost.record(0x182, 1200, 1000), window(0x182, 16, 16 * 1200, 16_000, 1));
        assert_eq!(cost.record(0x182, 1300, 1000), None, "a new window opened");
        let slow = cost.record(0x131, CplCost::SLOW + 5000, CplCost::SLOW);
        assert_eq!(slow, window(0x131, 1, CplCost::SLOW + 5000, CplCost::SLOW, 2));
        let rest = (1..CplCost::WINDOW).map(|_| cost.record(0x182, 1300, 1000)).last().flatten();
        assert_eq!(rest.map(|w| (w.commands, w.round_trip)), Some((16, 16 * 1300)), "the PCR window kept its count");
    }

    #[test]
    fn unmeasured_or_impossible_engine_times_are_not_counted() {
        let mut cost = CplCost::default();
        assert_eq!(cost.record(0x182, 1000, 0), None);
        assert_eq!(cost.record(0x182, 1000, 1001), None, "an engine slower than the round trip is a lie");
        let closed = (0..CplCost::WINDOW).map(|_| cost.record(0x182, 10, 5)).last().flatten();
        assert_eq!(closed.map(|w| w.commands), Some(16), "the refused ones did not count");
    }

    /// A guest that sends commands of many codes (or many slow ones) gets no more than
    /// [`CplCost::REPORTS`] lines in all, and a ninth code is not counted.
    #[test]
    fn what_a_guest_can_make_it_report_is_bounded() {
        let mut cost = CplCost::default();
        for code in 0..8 {
            assert_eq!(cost.record(code, 10, 5), None);
        }
        for _ in 0..100 {
            assert_eq!(cost.record(99, 10, 5), None, "no window for a ninth code");
        }
        let slow = (0..1000).filter_map(|_| cost.record(0, CplCost::SLOW, CplCost::SLOW)).count();
        assert_eq!(slow, CplCost::REPORTS as usize);
        assert_eq!(cost.record(1, CplCost::SLOW, CplCost::SLOW), None, "none after the last report");
    }
}
