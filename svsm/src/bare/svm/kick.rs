//! Making another CPU leave the guest (the SVSM's TLB shootdown and vCPU stop), and
//! waking a CPU that sleeps for lack of vCPUs to run.
//!
//! A CPU that changes nested paging, or stops a vCPU, while another CPU runs a vCPU must
//! not return before that CPU has left the guest: a stale translation or one more guest
//! instruction after the call could break the promise the call made. [`kick`] asks the
//! CPU to put its vCPU back in its slot (where the change was recorded) before it enters
//! the guest again and, if it is in the guest, sends it an NMI (intercepted: the vCPU
//! exits) and waits for the exit. A CPU that serves its vCPU's call meanwhile finds the
//! kick [`pending`] at the exit and looks at the vCPU's slot before it serves it.
//!
//! The handshake is Dekker-style, every access SeqCst: the kicker sets `KICK` then reads
//! `IN_GUEST`; the runner (GIF clear, so the NMI is held until VMRUN) sets `IN_GUEST` then
//! reads `KICK`. At least one of them sees the other's store: either the runner does not
//! enter, or the kicker sends the NMI and waits.
//!
//! An idle CPU sleeps in HLT with interrupts on ([`idle_until`]); whoever makes work for it
//! calls [`vcpus_changed`], which moves the generation on and sends the wake-up IPI to
//! every sleeper. The same Dekker pair
//! (`IDLE` against the caller's own condition) keeps a wake-up from being lost.

use super::super::lapic;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub const MAX_CPUS: usize = 64;

/// The CPU is between [`enter`] and [`exited`]: in the guest, or about to be.
static IN_GUEST: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// The CPU must put its vCPU back in its slot before it enters the guest again.
static KICK: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// The CPU sleeps (or is about to) until woken.
static IDLE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// #VMEXITs so far, per CPU (the kicker waits for this to move).
static EXITS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Bumped whenever the set of runnable vCPUs changes (an idle CPU waits for it).
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// How often the set of runnable vCPUs changed so far.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::SeqCst)
}

/// The set of runnable vCPUs changed (one may be an idle CPU's now): move the
/// generation on and wake the sleepers.
pub fn vcpus_changed() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
    wake_idle();
}

fn slot(cpu: u32) -> Option<(&'static AtomicBool, &'static AtomicBool, &'static AtomicU64)> {
    let i = cpu as usize;
    Some((IN_GUEST.get(i)?, KICK.get(i)?, EXITS.get(i)?))
}

/// Called with GIF clear right before VMRUN: `false` if a kick is pending, and the CPU
/// must put its vCPU back instead of entering the guest.
pub fn enter(cpu: u32) -> bool {
    let Some((in_guest, kick, _)) = slot(cpu) else { return false };
    in_guest.store(true, Ordering::SeqCst);
    if kick.swap(false, Ordering::SeqCst) {
        in_guest.store(false, Ordering::SeqCst);
        return false;
    }
    true
}

/// Called right after each #VMEXIT.
pub fn exited(cpu: u32) {
    if let Some((in_guest, _, exits)) = slot(cpu) {
        exits.fetch_add(1, Ordering::SeqCst);
        in_guest.store(false, Ordering::SeqCst);
    }
}

/// A kick of `cpu` it has not answered yet (its next `enter` refuses and clears it).
pub fn pending(cpu: u32) -> bool {
    slot(cpu).is_some_and(|(_, kick, _)| kick.load(Ordering::SeqCst))
}

/// Make `cpu` leave the guest and put its vCPU back before it runs one again;
/// returns once it is out of the guest. Never call it for the running CPU.
pub fn kick(cpu: u32) {
    let Some((in_guest, kick, exits)) = slot(cpu) else { return };
    kick.store(true, Ordering::SeqCst);
    let before = exits.load(Ordering::SeqCst);
    if !in_guest.load(Ordering::SeqCst) {
        return; // its next `enter` sees the kick
    }
    lapic::send_nmi(cpu);
    let mut spins = 0u64;
    while in_guest.load(Ordering::SeqCst) && exits.load(Ordering::SeqCst) == before {
        core::hint::spin_loop();
        spins += 1;
        if spins == 1 << 28 {
            crate::println!("svm: cpu {cpu} has not left the guest yet after a kick; still waiting");
        }
    }
}

/// Sleep until `ready()` holds. Whoever makes it hold must call [`wake_idle`] afterwards.
pub fn idle_until(cpu: u32, ready: impl Fn() -> bool) {
    let Some(idle) = IDLE.get(cpu as usize) else {
        while !ready() {
            core::hint::spin_loop();
        }
        return;
    };
    idle.store(true, Ordering::SeqCst);
    while !ready() {
        // An IPI sent after the check ends this sleep (`wait_for_interrupt`).
        crate::bare::cpu::wait_for_interrupt();
    }
    idle.store(false, Ordering::SeqCst);
}

/// Wake every sleeping CPU (new work may be theirs).
pub fn wake_idle() {
    for (cpu, idle) in (0u32..).zip(IDLE.iter()) {
        if idle.load(Ordering::SeqCst) {
            lapic::send_fixed(cpu, lapic::WAKE_VECTOR);
        }
    }
}
