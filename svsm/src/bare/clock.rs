//! A monotonic clock for the C code (the TPM's Clock and Time): the TSC, its rate measured
//! once against the legacy PIT (channel 2, gated through port 0x61), which QEMU and real
//! chipsets both provide. Precision of a few percent is plenty for the TPM's clock.

use core::sync::atomic::{AtomicU64, Ordering};
use x86::port::{inb, outb};

/// TSC ticks per microsecond (0 until calibrated).
static TICKS_PER_US: AtomicU64 = AtomicU64::new(0);
static START: AtomicU64 = AtomicU64::new(0);

const PIT_HZ: u64 = 1_193_182;
/// Calibration window: 10 ms of PIT counts (`PIT_HZ / 100`, checked below).
const WINDOW_COUNTS: u16 = 11_931;
const _: () = assert!(WINDOW_COUNTS as u64 == PIT_HZ / 100);

pub use super::cpu::rdtsc;

/// Measure the TSC rate (about 10 ms) and start the clock at zero.
pub fn calibrate() {
    // Channel 2 gate on, speaker off; mode 0 (interrupt on terminal count), binary.
    outb(0x61, (inb(0x61) & !0x02) | 0x01);
    outb(0x43, 0b1011_0000);
    let [low, high] = WINDOW_COUNTS.to_le_bytes();
    outb(0x42, low);
    outb(0x42, high);
    let start = rdtsc();
    // OUT2 (port 0x61 bit 5) rises at terminal count; give up after ~1 s worth of TSC
    // at 10 GHz so a missing PIT cannot hang the boot.
    let mut spins = 0u64;
    while inb(0x61) & 0x20 == 0 && spins < 100_000_000 {
        spins += 1;
    }
    // Saturating: under SEV-SNP the TSC is the host's to offset, and one that goes back
    // must not wrap into a huge rate (the clock would stand still).
    let ticks = rdtsc().saturating_sub(start);
    let per_us = (ticks / 10_000).max(1);
    TICKS_PER_US.store(per_us, Ordering::Relaxed);
    START.store(rdtsc(), Ordering::Relaxed);
    crate::println!("clock: TSC at {} MHz (measured against the PIT)", per_us);
}

/// Spin until [`monotonic_ns`] reaches `ns` (the waits between retries of a host that
/// refused something; nothing else runs on this CPU meanwhile).
pub fn spin_until(ns: u64) {
    while monotonic_ns() < ns {
        core::hint::spin_loop();
    }
}

/// Give this CPU back for about `us` microseconds: HLT until its local-APIC timer fires
/// (or an IPI comes). A wait that may last long (a migration's destination waiting for the
/// host or the source) must not spin: under emulation a spinning CPU is a busy host thread,
/// and on this project's 2-core hosts it is the core the source needs. Spins instead
/// before the timer is measured.
pub fn nap(us: u32) {
    let per_ms = super::user::timer_ticks_per_ms();
    if per_ms == 0 {
        spin_until(monotonic_ns().saturating_add(u64::from(us) * 1000));
        return;
    }
    super::lapic::arm_timer(per_ms.saturating_mul(us) / 1000);
    super::cpu::wait_for_interrupt();
    super::lapic::disarm_timer();
}

/// Nanoseconds since [`calibrate`].
pub fn monotonic_ns() -> u64 {
    let per_us = TICKS_PER_US.load(Ordering::Relaxed).max(1);
    let ticks = rdtsc().saturating_sub(START.load(Ordering::Relaxed));
    // Whole microseconds, then the remainder: two 64-bit divisions instead of a 128-bit
    // one (a library call), and no overflow until some 584 years.
    (ticks / per_us).saturating_mul(1000).saturating_add(ticks % per_us * 1000 / per_us)
}
