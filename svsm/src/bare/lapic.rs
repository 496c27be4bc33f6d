//! The local APIC, as the SVSM uses it: start APs (INIT-SIPI), make a CPU leave the
//! guest it runs (NMI), wake an idle CPU (a fixed IPI). xAPIC MMIO at its reset address, identity-mapped.
#![expect(unsafe_code, reason = "the local APIC's MMIO registers")]

const BASE: u64 = 0xFEE0_0000;
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
const SPURIOUS: u64 = 0xF0;
const ICR_INIT: u32 = 0x0000_4500;
const ICR_STARTUP: u32 = 0x0000_4600;
const ICR_NMI: u32 = 0x0000_4400;
const EOI: u64 = 0xB0;
const LVT_TIMER: u64 = 0x320;
const TIMER_INITIAL: u64 = 0x380;
const TIMER_CURRENT: u64 = 0x390;
const TIMER_DIVIDE: u64 = 0x3E0;
/// LVT mask bit.
const MASKED: u32 = 1 << 16;
/// Divide configuration "divide by 1".
const DIVIDE_BY_1: u32 = 0b1011;
/// The ICR's delivery-status bit: the previous IPI is still being sent.
const ICR_PENDING: u32 = 1 << 12;

fn write(reg: u64, value: u32) {
    // SAFETY: the local APIC's registers are MMIO at BASE, identity-mapped; a 32-bit
    // aligned volatile write is how they are programmed.
    unsafe { core::ptr::write_volatile((BASE + reg) as *mut u32, value) };
}

fn read(reg: u64) -> u32 {
    // SAFETY: as for `write`.
    unsafe { core::ptr::read_volatile((BASE + reg) as *const u32) }
}

/// The vector of the IPI that wakes an idle CPU (`svm/kick.rs`).
pub const WAKE_VECTOR: u8 = 0xF0;
/// The vector of the timer that ends a process's time slice (`user/entry.rs`).
pub const TIMER_VECTOR: u8 = 0xEF;
/// The vector of spurious local-APIC interrupts.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

/// Software-enable this CPU's local APIC (spurious vector 0xFF).
pub fn enable() {
    write(SPURIOUS, read(SPURIOUS) | 0x100 | u32::from(SPURIOUS_VECTOR));
}

/// Mask every line of the legacy 8259 PICs: the firmware may have left its timer running,
/// and the SVSM, which sleeps with interrupts on, wants only its own wake-up IPIs.
pub fn mask_legacy_pic() {
    x86::port::outb(0x21, 0xFF);
    x86::port::outb(0xA1, 0xFF);
}

fn send(apic_id: u32, command: u32) {
    while read(ICR_LOW) & ICR_PENDING != 0 {
        core::hint::spin_loop();
    }
    write(ICR_HIGH, apic_id << 24);
    write(ICR_LOW, command);
}

pub fn send_init(apic_id: u32) {
    send(apic_id, ICR_INIT);
}

/// STARTUP IPI: the AP starts in real mode at `page << 12`.
pub fn send_startup(apic_id: u32, page: u8) {
    send(apic_id, ICR_STARTUP | u32::from(page));
}

/// A fixed interrupt with `vector` (edge, physical destination).
pub fn send_fixed(apic_id: u32, vector: u8) {
    send(apic_id, 0x0000_4000 | u32::from(vector));
}

pub fn send_nmi(apic_id: u32) {
    send(apic_id, ICR_NMI);
}

/// Acknowledge the interrupt in service.
pub fn eoi() {
    write(EOI, 0);
}

/// Start this CPU's timer: one interrupt at [`TIMER_VECTOR`] after `ticks` (one-shot).
pub fn arm_timer(ticks: u32) {
    write(TIMER_DIVIDE, DIVIDE_BY_1);
    write(LVT_TIMER, u32::from(TIMER_VECTOR));
    write(TIMER_INITIAL, ticks.max(1));
}

/// Start this CPU's timer as [`arm_timer`] does unless it is counting down already.
pub fn keep_timer_running(ticks: u32) {
    if read(TIMER_CURRENT) == 0 {
        arm_timer(ticks);
    }
}

/// Stop this CPU's timer (masked, count zero): no interrupt follows.
pub fn disarm_timer() {
    write(LVT_TIMER, MASKED | u32::from(TIMER_VECTOR));
    write(TIMER_INITIAL, 0);
}

/// Timer ticks per millisecond, measured against the calibrated TSC clock (masked, so
/// the measurement raises no interrupt).
///
/// Both clocks are read at each end of a window and the rate is their ratio: a host that
/// takes the CPU away during the window (a loaded host under emulation does, for tens of
/// milliseconds) then moves both clocks alike. Waiting for a fixed 1 ms of TSC and taking
/// the timer's count as that millisecond's, as this once did, counted such a pause as timer
/// ticks: one of 20 ms made every time slice 20 times too long. The median of three
/// windows leaves out one whose back-to-back reads a pause split.
pub fn timer_ticks_per_ms() -> u32 {
    use super::clock::monotonic_ns;
    write(TIMER_DIVIDE, DIVIDE_BY_1);
    write(LVT_TIMER, MASKED | u32::from(TIMER_VECTOR));
    let mut rates = [0u64; 3];
    for rate in &mut rates {
        write(TIMER_INITIAL, u32::MAX);
        // The count first at both ends, then the clock: a register read that takes long
        // (an exit to the emulator) delays both clock readings alike.
        let (start_count, start_ns) = (read(TIMER_CURRENT), monotonic_ns());
        while monotonic_ns().saturating_sub(start_ns) < 1_000_000 {
            core::hint::spin_loop();
        }
        let (end_count, end_ns) = (read(TIMER_CURRENT), monotonic_ns());
        let ticks = u64::from(start_count.saturating_sub(end_count));
        *rate = ticks.saturating_mul(1_000_000) / end_ns.saturating_sub(start_ns).max(1);
    }
    write(TIMER_INITIAL, 0);
    rates.sort_unstable();
    let [_, median, _] = rates;
    u32::try_from(median).unwrap_or(u32::MAX).max(1)
}
