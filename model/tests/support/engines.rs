//! libtpms engines for tests that boot the vTPM again and again in one process: libtpms is
//! one TPM per process, and an engine lives in its service process's thread, which ends a
//! little after the vTPM that drove it is dropped, so the next boot waits for it
//! ([`wait_for_the_previous_engine`]). Included by the test files that need it
//! (`#[path = "support/engines.rs"] mod engines;`).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vtpm::libtpms::LibTpms;
use vtpm::{NvChange, NvError, TpmEngine};

/// A lock that a test which panicked while holding it leaves usable.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Engines alive.
static LIVE_ENGINES: Mutex<usize> = Mutex::new(0);
static ENGINE_ENDED: Condvar = Condvar::new();

/// Counts itself in [`LIVE_ENGINES`] while it lives.
struct EngineCount;

impl EngineCount {
    fn new() -> Self {
        *lock(&LIVE_ENGINES) += 1;
        EngineCount
    }
}

impl Drop for EngineCount {
    fn drop(&mut self) {
        *lock(&LIVE_ENGINES) -= 1;
        ENGINE_ENDED.notify_all();
    }
}

/// libtpms, counted while it lives (fields drop in order: the count after libtpms).
pub struct CountedTpm {
    tpm: LibTpms,
    _count: EngineCount,
}

impl CountedTpm {
    pub fn new(tpm: LibTpms) -> Self {
        Self { tpm, _count: EngineCount::new() }
    }
}

impl TpmEngine for CountedTpm {
    fn execute(&mut self, command: &[u8], response: &mut [u8]) -> usize {
        self.tpm.execute(command, response)
    }
    fn take_nv_changes(&mut self) -> Result<Vec<NvChange>, NvError> {
        self.tpm.take_nv_changes()
    }
}

/// Wait until the engine of the previous boot has ended (at most 30 s).
pub fn wait_for_the_previous_engine() {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut live = lock(&LIVE_ENGINES);
    while *live > 0 {
        let left = deadline.checked_duration_since(Instant::now()).expect("the previous vTPM's service never ended");
        live = ENGINE_ENDED.wait_timeout(live, left).unwrap_or_else(|e| e.into_inner()).0;
    }
}
