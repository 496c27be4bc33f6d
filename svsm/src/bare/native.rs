//! The native (`svm`) run loop on every CPU: take a vCPU, run it, hand its exit to the
//! platform, under the SVSM's one lock. What each exit means, which vCPU runs next and
//! what happens to a vCPU out on a CPU are `bulwark_svm`'s (`svm/src/exit.rs`,
//! `run.rs`, `slots.rs`); this loop owns the lock and the idle wait.
//!
//! Every CPU runs this loop for the vCPUs that live on it (vCPU `i` on CPU `i % cpus`).
//! The SVSM's state (platform and kernel) sits behind one lock, taken to pick a vCPU and
//! to handle an exit that needs the SVSM; exits that need nothing shared (CPUID, the bare
//! gate, a kick, a HLT with no other vCPU to switch to) are handled without it
//! (`run_until_shared`), and the lock is never held while a vCPU is in the guest.

use super::pages::Page;
use super::svm::hw::{BareCpu, BareSvm};
use super::svm::kick;
use kernel::Svsm;
use spin::Mutex;
use svm::SvmPlatform;
pub use svm::run::End;
use svm::run::{Taken, run_until_shared};

/// What every CPU serves: the platform and the kernel.
pub struct Shared {
    pub platform: SvmPlatform<BareSvm>,
    pub svsm: Svsm,
}

/// Set once by the boot CPU after the launch.
static SHARED: Mutex<Option<Shared>> = Mutex::new(None);

/// Hand the launched guest to the run loops of every CPU.
pub fn publish(shared: Shared) {
    *SHARED.lock() = Some(shared);
    kick::vcpus_changed();
}

/// Serve the vCPUs that live on `cpu` until the guest cannot go on.
pub fn serve(cpu: u32, host_state_pa: u64) -> End {
    let mut hw = BareCpu { cpu, host_state_pa };
    let mut last = None;
    // The vCPU to run again at once (taken back in the same lock hold as its exit).
    let mut again: Option<Taken<Page>> = None;
    loop {
        let mut t = match again.take() {
            Some(t) => t,
            None => {
                let generation = kick::generation();
                let taken = SHARED.lock().as_mut().and_then(|s| s.platform.take_next(cpu, last, generation));
                let Some(t) = taken else {
                    // Nothing to run here until a vCPU is created (or the guest is launched).
                    kick::idle_until(cpu, || kick::generation() != generation);
                    continue;
                };
                t
            }
        };
        let exit = run_until_shared(&mut hw, &mut t);
        last = Some(t.index);
        let mut guard = SHARED.lock();
        let Some(s) = guard.as_mut() else { return End::Broken("the guest vanished") };
        match s.platform.after_run(&mut s.svsm, t, exit, cpu) {
            Ok(next) => again = next,
            Err(end) => return end,
        }
    }
}
