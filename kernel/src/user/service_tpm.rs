//! The kernel's side of the vTPM service: a [`TpmEngine`] that hands each command to the
//! service process over its channel (messages of `vtpm::service`) and keeps the NV
//! changes each answer carries until the vTPM takes them.
//!
//! The process is isolated because it might be compromised, so its answers are hostile
//! input: one that does not parse, or a process that ends, stops the engine for good.
//! From then on the TPM answers TPM_RC_FAILURE (the `Vtpm` wrapper turns an empty answer
//! into it) and reports an NV error, so a vTPM with storage stops instead of keeping a
//! state nobody can vouch for.

use super::channel::Channel;
use alloc::sync::Arc;
use alloc::vec::Vec;
use vtpm::TpmEngine;
use vtpm::nv::{NvBlobs, NvChange, NvError, TpmState};
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

/// The vTPM engine behind a channel. `R` runs the service process until it waits on its
/// channel again, and says whether it still lives.
pub struct ServiceTpm<R: FnMut() -> bool + Send> {
    channel: Arc<Channel>,
    run: R,
    /// NV changes answered and not yet taken.
    pending: Vec<NvChange>,
    alive: bool,
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
        Self::begin(channel, run, service::start(nv).ok_or(StartError::StateTooLarge)?)
    }

    /// Continue, in the process behind `channel`, the TPM a migration source saved.
    pub fn resume(channel: Arc<Channel>, run: R, state: &TpmState) -> Result<Self, StartError> {
        Self::begin(channel, run, service::resume(state).ok_or(StartError::StateTooLarge)?)
    }

    fn begin(channel: Arc<Channel>, run: R, message: Vec<u8>) -> Result<Self, StartError> {
        let mut engine = Self { channel, run, pending: Vec::new(), alive: true };
        let answer = engine.exchange(message).ok_or(StartError::Service)?;
        match service::parse_answer(&answer) {
            Some(Answer::Started(changes)) => {
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
            && (self.run)()
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
    }

    pub fn alive(&self) -> bool {
        self.alive
    }
}

impl<R: FnMut() -> bool + Send> TpmEngine for ServiceTpm<R> {
    fn execute(&mut self, command: &[u8], response: &mut [u8]) -> usize {
        let Some(message) = service::command(command) else { return 0 };
        let Some(answer) = self.exchange(message) else { return 0 };
        let Some(Answer::Response(bytes, changes)) = service::parse_answer(&answer) else {
            self.die();
            return 0;
        };
        let Some(out) = response.get_mut(..bytes.len()) else {
            self.die();
            return 0;
        };
        out.copy_from_slice(bytes);
        if self.pending.try_reserve(changes.len()).is_err() {
            self.die();
            return 0;
        }
        self.pending.extend(changes);
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
