//! The native (`svm`) run loop on every CPU: take a vCPU, run it, hand its exit to the
//! platform. What each exit means, which vCPU runs next and what happens to a vCPU out on
//! a CPU are `bulwark_svm`'s (`svm/src/exit.rs`, `run.rs`, `slots.rs`); this loop owns the
//! idle wait.
//!
//! Every CPU runs this loop for the vCPUs that live on it (vCPU `i` on CPU `i % cpus`).
//! What they serve (the platform's shared part and the kernel) is published once and
//! then only read: no lock is held around it. A CPU keeps the vCPU it runs in its own
//! hands while it serves the vCPU's exits, calls included, and takes a shared lock only
//! inside the one platform or kernel operation that needs it (docs/platforms/svm.md,
//! "Locking").

use super::pages::Page;
use super::svm::hw::{BareCpu, BareSvm};
use super::svm::kick;
use kernel::Svsm;
use spin::Once;
use svm::SvmShared;
pub use svm::run::End;
use svm::run::{Taken, Then, run_until_shared};

/// What every CPU serves: the platform's shared part and the kernel.
pub struct Shared {
    pub platform: SvmShared<BareSvm>,
    pub svsm: Svsm,
}

// Every CPU reaches it through `&'static`: the compiler holds it to that.
const _: () = {
    const fn shared_by_every_cpu<T: Send + Sync>() {}
    shared_by_every_cpu::<Shared>();
};

/// The longest turn of a vCPU whose CPU other vCPUs share.
const VCPU_SLICE_MS: u32 = 10;

/// The turn of a vCPU that shares `cpu`, begun at `started` (ns): `true` if it is used
/// up; otherwise the timer is armed for what is left of it (or CPU 0's migration poll,
/// if sooner). Out of line and cold: the call path of a vCPU alone on its CPU (the
/// bench's) must not grow by it (under TCG every page it touches costs).
#[cold]
#[inline(never)]
fn turn_over(cpu: u32, started: u64) -> bool {
    let slice_ns = u64::from(VCPU_SLICE_MS) * 1_000_000;
    let used = super::clock::monotonic_ns().saturating_sub(started);
    if used >= slice_ns {
        return true;
    }
    let per_ms = super::user::timer_ticks_per_ms();
    let mut ticks = u32::try_from((slice_ns - used).saturating_mul(u64::from(per_ms)) / 1_000_000).unwrap_or(u32::MAX);
    if cpu == 0 && super::migration::armed() {
        ticks = ticks.min(per_ms.saturating_mul(super::migration::poll_period_ms()));
    }
    if ticks > 0 {
        super::lapic::arm_timer(ticks);
    }
    false
}

/// Set once by the boot CPU after the launch.
static SHARED: Once<Shared> = Once::new();

/// Hand the launched guest to the run loops of every CPU.
pub fn publish(shared: Shared) {
    SHARED.call_once(|| shared);
    kick::vcpus_changed();
}

/// The registers VMRUN does not switch, into the vCPU going back to its slot: x87/SSE
/// (FXSAVE) and the debug address registers.
fn save_vcpu_registers(t: &mut Taken<Page>) {
    super::cpu::fxsave_vcpu(&mut t.vcpu.fpu);
    t.vcpu.debug_addresses = super::cpu::debug_addresses();
}

/// The same registers, from the vCPU coming out of its slot to run here. DR0-DR3 are
/// written only when they differ: under QEMU's TCG a write to a debug register throws
/// away translated code (measured: the call round trip went from 1.31 to 1.56 the bare
/// gate with two vCPUs taking turns on one CPU), and most guests never set them.
fn load_vcpu_registers(t: &Taken<Page>) {
    super::cpu::fxrstor_vcpu(&t.vcpu.fpu);
    if super::cpu::debug_addresses() != t.vcpu.debug_addresses {
        super::cpu::set_debug_addresses(&t.vcpu.debug_addresses);
    }
}

/// Serve the vCPUs that live on `cpu` until the guest cannot go on.
pub fn serve(cpu: u32, host_state_pa: u64) -> End {
    let mut hw = BareCpu::new(cpu, host_state_pa);
    let mut last = None;
    // The vCPU this CPU runs: out of its slot from the moment it is taken until it goes
    // back (a yield, a kick, a stop), across all the exits and calls in between.
    let mut current: Option<Taken<Page>> = None;
    // When the vCPU in `current` was taken: its turn, if it shares this CPU, ends
    // `VCPU_SLICE_MS` later whatever it was doing meanwhile (exits the SVSM served,
    // device or vTPM processes run on its behalf, which use the same timer).
    let mut turn_started = 0u64;
    loop {
        let generation = kick::generation();
        let Some(shared) = SHARED.get() else {
            // The guest is not launched yet.
            kick::idle_until(cpu, || kick::generation() != generation);
            continue;
        };
        // CPU 0 drives a live migration's source between its guest's exits
        // (`migration`); its last round needs every vCPU back, this CPU's own first.
        if cpu == 0 && super::migration::armed() && super::migration::poll(shared) == super::migration::Poll::Pause {
            if let Some(mut t) = current.take() {
                save_vcpu_registers(&mut t);
                shared.platform.put_back(t);
            }
            super::migration::last_round(shared);
            continue;
        }
        if current.is_none() {
            current = shared.platform.take_next(cpu, last, generation);
            // VMRUN does not switch the x87/SSE registers nor DR0-DR3: they go back with a
            // vCPU into its slot and come out with it, so vCPUs sharing this CPU (two VMPLs
            // of one guest CPU) never see or set each other's.
            if let Some(t) = &current {
                load_vcpu_registers(t);
                turn_started = super::clock::monotonic_ns();
            }
        }
        let Some(t) = current.as_mut() else {
            // Nothing to run here until a vCPU is created.
            kick::idle_until(cpu, || kick::generation() != generation);
            continue;
        };
        // While a migration may come, a guest that never exits on its own (no call, no
        // fault, no HLT) still comes back to this loop, which drives the migration's
        // source: the local-APIC timer ends its run (the INTR intercept) at the latest
        // after `poll_period_ms`.
        if cpu == 0 && super::migration::armed() {
            let ticks = super::user::timer_ticks_per_ms().saturating_mul(super::migration::poll_period_ms());
            if ticks > 0 {
                super::lapic::keep_timer_running(ticks);
            }
        }
        // vCPUs that share this CPU take turns: the timer ends a turn `VCPU_SLICE_MS`
        // after it began, even for a vCPU that never exits on its own (the INTR exit
        // then puts it back, `svm::run`), and a turn used up is over before the next
        // VMRUN (the time the SVSM spent on its exits counts).
        if !t.alone && turn_over(cpu, turn_started) {
            if let Some(mut t) = current.take() {
                save_vcpu_registers(&mut t);
                shared.platform.put_back(t);
            }
            continue;
        }
        let exit = run_until_shared(&mut hw, t);
        last = Some(t.index);
        match shared.platform.after_run(&shared.svsm, t, exit, cpu) {
            Ok(handled) if handled.then == Then::RunOn => {}
            Ok(_) => {
                if let Some(mut t) = current.take() {
                    save_vcpu_registers(&mut t);
                    shared.platform.put_back(t);
                }
            }
            Err(end) => return end,
        }
    }
}
