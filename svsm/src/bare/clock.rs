//! A monotonic clock for the C code (the TPM's Clock and Time): the TSC, its rate measured
//! once against the legacy PIT (channel 2, gated through port 0x61), which QEMU and real
//! chipsets both provide. Precision of a few percent is plenty for the TPM's clock.

use core::sync::atomic::{AtomicU64, Ordering};
use x86::port::{inb, outb};

/// TSC ticks per microsecond (0 until calibrated).
static TICKS_PER_US: AtomicU64 = AtomicU64::new(0);
static START: AtomicU64 = AtomicU64::new(0);

const PIT_HZ: u64 = 1_193_182;
/// One calibration window: 5 ms of PIT counts (`PIT_HZ / 200`, checked below); three fit
/// in the counter's 65535 counts with room to spare.
const WINDOW_COUNTS: u16 = 5_965;
const _: () = assert!(WINDOW_COUNTS as u64 == PIT_HZ / 200);
/// A PIT that does not count within this many reads is missing: the boot goes on with a
/// guessed rate rather than hang. (A read is three port accesses, each a microsecond or
/// more, so a window takes some 2,000 reads.)
const MAX_READS: u32 = 100_000;
/// The rate assumed without a PIT (ticks per microsecond).
const GUESSED_TICKS_PER_US: u64 = 2_000;

pub use super::cpu::rdtsc;

/// Measure the TSC rate (about 15 ms) and start the clock at zero.
///
/// Each window reads the TSC and the PIT's count back to back at both ends, and the rate
/// is their ratio: a host that takes the CPU away meanwhile (a loaded host under
/// emulation does, for tens of milliseconds) moves both alike. Waiting for the PIT's
/// terminal count instead, as this once did, counted such a pause as TSC ticks of the
/// window. The median of three windows leaves out one whose reads a pause split.
pub fn calibrate() {
    // Channel 2 gate on, speaker off; mode 0, low then high byte, binary, counting down
    // from 65535 (about 55 ms).
    outb(0x61, (inb(0x61) & !0x02) | 0x01);
    outb(0x43, 0b1011_0000);
    outb(0x42, 0xFF);
    outb(0x42, 0xFF);
    let rates = (|| Some([window_rate()?, window_rate()?, window_rate()?]))();
    let per_us = rates.map_or(GUESSED_TICKS_PER_US, |mut rates| {
        rates.sort_unstable();
        let [_, median, _] = rates;
        median.max(1)
    });
    TICKS_PER_US.store(per_us, Ordering::Relaxed);
    START.store(rdtsc(), Ordering::Relaxed);
    if rates.is_some() {
        crate::println!("clock: TSC at {per_us} MHz (measured against the PIT)");
    } else {
        crate::println!("clock: the PIT does not count; TSC rate guessed at {per_us} MHz");
    }
}

/// The PIT's channel 2 count, latched so both bytes belong to one value, and the TSC right
/// after the latch: both ends of a window read them in this order, so the slow port reads
/// (an exit to the emulator each) delay neither end more than the other.
fn pit_count_and_tsc() -> (u16, u64) {
    outb(0x43, 0b1000_0000);
    let tsc = rdtsc();
    let low = inb(0x42);
    let high = inb(0x42);
    (u16::from_le_bytes([low, high]), tsc)
}

/// TSC ticks per microsecond over one window of [`WINDOW_COUNTS`], or `None` if the PIT
/// does not count.
fn window_rate() -> Option<u64> {
    let (start_count, start_tsc) = pit_count_and_tsc();
    let mut reads = 0u32;
    let (end_count, end_tsc) = loop {
        let (count, tsc) = pit_count_and_tsc();
        if start_count.wrapping_sub(count) >= WINDOW_COUNTS {
            break (count, tsc);
        }
        reads += 1;
        if reads >= MAX_READS {
            return None;
        }
    };
    // Saturating: under SEV-SNP the TSC is the host's to offset, and one that goes back
    // must not wrap into a huge rate (the clock would stand still).
    let ticks = end_tsc.saturating_sub(start_tsc);
    let counts = u64::from(start_count.wrapping_sub(end_count));
    Some(ticks.saturating_mul(PIT_HZ) / counts.saturating_mul(1_000_000).max(1))
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
