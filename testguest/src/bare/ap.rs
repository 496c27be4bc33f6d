//! Secondary vCPUs of the test guest. The boot vCPU creates them with CREATE_VCPU from a
//! VMSA it builds here (`write_vmsa`); each runs `ap_main`, a mailbox loop: when the boot
//! vCPU posts a request, the secondary vCPU issues it as its own VMMCALL (through its own
//! calling area) and posts the registers back, or times QUERY_PROTOCOL calls in a loop
//! until told to stop (the vCPU isolation benchmark, `isolation.rs`). Waiting is HLT,
//! which the SVSM treats as a yield, so both make progress on one physical CPU.
#![expect(unsafe_code, reason = "the APs' mailboxes and entry point")]

use super::gate::Vmmcall;
use alloc::vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use guest::{Regs, Transport};

pub const MAX_APIC: usize = 8;
const STACK: usize = 16 * 1024;

const IDLE: u32 = 0;
const PING: u32 = 1;
const CALL: u32 = 2;
const DONE: u32 = 3;
const TIME_CALLS: u32 = 4;
const FPU_CHECK: u32 = 5;
/// The secondary vCPU took the request (from PING, CALL, TIME_CALLS, FPU_CHECK or SPIN)
/// and works on it: the boot vCPU can no longer take it back, only wait for DONE.
const BUSY: u32 = 6;
/// Spin without a single exit until [`STOP_SPIN`] is set.
const SPIN: u32 = 7;

/// Ends a SPIN.
static STOP_SPIN: AtomicBool = AtomicBool::new(false);

/// Yields each side makes while it watches its own XMM0 (`fpu_kept`).
const FPU_ROUNDS: u32 = 200;

struct Mailbox {
    state: AtomicU32,
    regs: UnsafeCell<Regs>,
}

// SAFETY: `regs` is used by one side at a time, as `state` says: the boot vCPU until it
// posts a request and again once it reads DONE, or takes the request back (a
// compare-exchange from the request to IDLE, which fails once the secondary vCPU took it);
// the secondary vCPU from taking the request (a compare-exchange to BUSY) until it stores
// DONE. `state` is atomic.
unsafe impl Sync for Mailbox {}

static MAILBOXES: [Mailbox; MAX_APIC] = [const {
    Mailbox { state: AtomicU32::new(IDLE), regs: UnsafeCell::new(Regs { rax: 0, rcx: 0, rdx: 0, r8: 0, r9: 0 }) }
}; MAX_APIC];
static STACK_TOPS: [AtomicU64; MAX_APIC] = [const { AtomicU64::new(0) }; MAX_APIC];

fn yield_cpu() {
    // SAFETY: HLT with interrupts off: the SVSM intercepts it and runs another vCPU.
    unsafe { core::arch::asm!("hlt", options(nomem, nostack)) }
}

#[unsafe(no_mangle)]
extern "C" fn ap_main(apic: u64) -> ! {
    let Some(mb) = MAILBOXES.get(apic as usize) else {
        loop {
            yield_cpu();
        }
    };
    loop {
        let kind = mb.state.load(Ordering::Acquire);
        if !matches!(kind, PING | TIME_CALLS | CALL | FPU_CHECK | SPIN)
            || mb.state.compare_exchange(kind, BUSY, Ordering::AcqRel, Ordering::Acquire).is_err()
        {
            yield_cpu();
            continue;
        }
        match kind {
            TIME_CALLS => {
                // SAFETY: BUSY: `regs` is this vCPU's until it stores DONE.
                let regs = unsafe { *mb.regs.get() };
                time_calls(regs.rcx, regs.rdx);
            }
            CALL => {
                // SAFETY: BUSY: `regs` is this vCPU's until it stores DONE.
                let regs = unsafe { &mut *mb.regs.get() };
                Vmmcall.request_svsm(regs);
            }
            FPU_CHECK => {
                // SAFETY: BUSY: `regs` is this vCPU's until it stores DONE.
                let regs = unsafe { &mut *mb.regs.get() };
                regs.rax = u64::from(fpu_kept(0xA5A5_0000_0000_0000 | apic, FPU_ROUNDS));
            }
            // No HLT, no call, no fault: nothing makes this vCPU leave the guest on its
            // own. PAUSE is not intercepted.
            SPIN => {
                while !STOP_SPIN.load(Ordering::Acquire) {
                    core::hint::spin_loop();
                }
            }
            // PING: taking it is the answer.
            _ => {}
        }
        mb.state.store(DONE, Ordering::Release);
    }
}

/// The boot vCPU gives up waiting for request `kind`: taken back if the secondary vCPU has
/// not taken it (`false`); otherwise it waits, however long, for DONE (`true`), since the
/// secondary vCPU holds `regs` until then.
fn give_up(mb: &Mailbox, kind: u32) -> bool {
    if mb.state.compare_exchange(kind, IDLE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        return false;
    }
    while mb.state.load(Ordering::Acquire) != DONE {
        yield_cpu();
    }
    mb.state.store(IDLE, Ordering::Release);
    true
}

fn set_xmm0(value: u64) {
    // SAFETY: writes XMM0 only (SSE is on in the test guest's CR4).
    unsafe { core::arch::asm!("movq xmm0, {}", in(reg) value, options(nomem, nostack)) }
}

fn xmm0() -> u64 {
    let value: u64;
    // SAFETY: reads XMM0 only.
    unsafe { core::arch::asm!("movq {}, xmm0", out(reg) value, options(nomem, nostack)) }
    value
}

pub(super) fn set_dr0(value: u64) {
    // SAFETY: DR0 holds an address only; DR7 (which would enable it) stays clear.
    unsafe { core::arch::asm!("mov dr0, {}", in(reg) value, options(nomem, nostack)) }
}

pub(super) fn dr0() -> u64 {
    let value: u64;
    // SAFETY: reads DR0 only.
    unsafe { core::arch::asm!("mov {}, dr0", out(reg) value, options(nomem, nostack)) }
    value
}

/// Put `pattern` in XMM0 and DR0 and check, after each of `rounds` yields to the SVSM
/// (which may run another vCPU on this CPU meanwhile), that both are still there.
fn fpu_kept(pattern: u64, rounds: u32) -> bool {
    set_xmm0(pattern);
    set_dr0(pattern);
    (0..rounds).all(|_| {
        yield_cpu();
        xmm0() == pattern && dr0() == pattern
    })
}

/// The boot vCPU and the vCPU with `apic` (which the SVSM must run on the boot vCPU's
/// CPU) each watch their own XMM0 and DR0 while they take turns: `Some((boot kept, other
/// kept))`, `None` if the other did not answer.
pub fn fpu_isolation(apic: u32) -> Option<(bool, bool)> {
    let mb = MAILBOXES.get(apic as usize)?;
    const BOOT: u64 = 0x5A5A_5A5A_0000_0000;
    set_xmm0(BOOT);
    set_dr0(BOOT);
    mb.state.store(FPU_CHECK, Ordering::Release);
    let mut boot_kept = true;
    let mut answered = false;
    for _ in 0..100_000 {
        yield_cpu();
        boot_kept &= xmm0() == BOOT && dr0() == BOOT;
        if mb.state.load(Ordering::Acquire) == DONE {
            answered = true;
            break;
        }
    }
    if answered {
        mb.state.store(IDLE, Ordering::Release);
    } else {
        answered = give_up(mb, FPU_CHECK);
    }
    // SAFETY: DONE (then IDLE), or never taken: `regs` is the boot vCPU's again.
    let other_kept = unsafe { (*mb.regs.get()).rax } == 1;
    answered.then_some((boot_kept, other_kept))
}

/// The vCPU with `apic`, which the SVSM runs on the boot vCPU's CPU, spins without a
/// single exit; the boot vCPU must still get its turns. `Some(cycles)`: how long after
/// it yielded to its neighbour the boot vCPU ran again (the neighbour had taken the
/// request and was spinning by then); `None` if the neighbour never took it. Without
/// time slices between the vCPUs of a CPU this never returns: the guest hangs.
pub fn spinning_neighbour(apic: u32) -> Option<u64> {
    let mb = MAILBOXES.get(apic as usize)?;
    STOP_SPIN.store(false, Ordering::Release);
    mb.state.store(SPIN, Ordering::Release);
    let mut back = None;
    for _ in 0..100_000 {
        let t0 = rdtsc();
        yield_cpu();
        if mb.state.load(Ordering::Acquire) == BUSY {
            back = Some(rdtsc() - t0);
            break;
        }
    }
    STOP_SPIN.store(true, Ordering::Release);
    if back.is_none() && !give_up(mb, SPIN) {
        return None;
    }
    if back.is_some() {
        // The neighbour sees the stop on its next turn.
        while mb.state.load(Ordering::Acquire) != DONE {
            yield_cpu();
        }
        mb.state.store(IDLE, Ordering::Release);
    }
    back
}

/// QUERY_PROTOCOL round trips timed by the secondary vCPU that runs [`time_calls`]: a
/// histogram of 512-cycle buckets (the last one open-ended) and the exact worst.
struct Latencies {
    buckets: [AtomicU32; BUCKETS],
    count: AtomicU64,
    worst: AtomicU64,
    failed: AtomicU64,
    /// From the first call's start to the last one's end.
    span: AtomicU64,
}

const BUCKETS: usize = 1024;
const BUCKET_CYCLES: u64 = 512;

static LATENCIES: Latencies = Latencies {
    buckets: [const { AtomicU32::new(0) }; BUCKETS],
    count: AtomicU64::new(0),
    worst: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    span: AtomicU64::new(0),
};
/// Set by the boot vCPU: the timing loop ends.
static STOP_TIMING: AtomicBool = AtomicBool::new(false);

/// What a timing loop measured: calls, median and worst round trip in TSC cycles, calls
/// that failed, and how long the loop ran (a call that waited shows in the worst and in
/// the span, however few they are).
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub calls: u64,
    pub median: u64,
    pub worst: u64,
    pub failed: u64,
    pub span: u64,
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// On the secondary vCPU: time QUERY_PROTOCOL through the calling area at `ca` until the
/// boot vCPU says stop or `limit` calls were made.
fn time_calls(ca: u64, limit: u64) {
    let l = &LATENCIES;
    for b in &l.buckets {
        b.store(0, Ordering::Relaxed);
    }
    l.worst.store(0, Ordering::Relaxed);
    l.failed.store(0, Ordering::Relaxed);
    l.span.store(0, Ordering::Relaxed);
    l.count.store(0, Ordering::Release);
    let mut c = guest::Client::new(Vmmcall, ca);
    let query = Regs {
        rax: abi::protocol::CallId::new(abi::protocol::ProtocolId::CORE, abi::protocol::core_call::QUERY_PROTOCOL)
            .to_rax(),
        rcx: 1 << 32 | 1,
        ..Regs::default()
    };
    let start = rdtsc();
    while !STOP_TIMING.load(Ordering::Acquire) && l.count.load(Ordering::Relaxed) < limit {
        let t0 = rdtsc();
        let answer = c.issue(query);
        let cycles = rdtsc().saturating_sub(t0);
        if !answer.is_ok_and(|r| r.rax == 0) {
            l.failed.fetch_add(1, Ordering::Relaxed);
        }
        let bucket = usize::try_from(cycles / BUCKET_CYCLES).unwrap_or(BUCKETS - 1).min(BUCKETS - 1);
        if let Some(b) = l.buckets.get(bucket) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        l.worst.fetch_max(cycles, Ordering::Relaxed);
        l.count.fetch_add(1, Ordering::Release);
    }
    l.span.store(rdtsc().saturating_sub(start), Ordering::Relaxed);
}

impl Latencies {
    fn summary(&self) -> Latency {
        let calls = self.count.load(Ordering::Acquire);
        let mut seen = 0u64;
        let mut median = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += u64::from(b.load(Ordering::Relaxed));
            if seen * 2 >= calls && calls > 0 {
                // The bucket's middle.
                median = i as u64 * BUCKET_CYCLES + BUCKET_CYCLES / 2;
                break;
            }
        }
        Latency {
            calls,
            median,
            worst: self.worst.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            span: self.span.load(Ordering::Relaxed),
        }
    }
}

/// Spin a little in the guest, touching nothing shared.
fn quiet_spin() {
    for i in 0..64u32 {
        core::hint::black_box(i);
    }
}

/// Have the vCPU with `apic` time QUERY_PROTOCOL through its calling area `ca` until
/// [`stop_timing`] or `limit` calls; returns once it has made its first call (`false`:
/// it did not start).
pub fn start_timing(apic: u32, ca: u64, limit: u64) -> bool {
    let Some(mb) = MAILBOXES.get(apic as usize) else { return false };
    LATENCIES.count.store(0, Ordering::Release);
    STOP_TIMING.store(false, Ordering::Release);
    // SAFETY: IDLE: the boot vCPU owns `regs` until it posts TIME_CALLS.
    unsafe { *mb.regs.get() = Regs { rcx: ca, rdx: limit, ..Regs::default() } };
    mb.state.store(TIME_CALLS, Ordering::Release);
    // Spin, without exits of its own, until the first call is timed.
    for _ in 0..1_000_000_000u64 {
        if LATENCIES.count.load(Ordering::Acquire) > 0 || mb.state.load(Ordering::Acquire) == DONE {
            return true;
        }
        // No PAUSE: QEMU's TCG leaves its execution loop on every one, which would make
        // this vCPU's thread the noisiest thing on the machine while vCPU 1 is timed.
        quiet_spin();
    }
    false
}

/// Stop the timing loop of the vCPU with `apic` (at once, or `at_limit`: when it made its
/// calls) and collect what it measured. The boot vCPU spins in the guest meanwhile.
pub fn stop_timing(apic: u32, at_limit: bool) -> Option<Latency> {
    let mb = MAILBOXES.get(apic as usize)?;
    if !at_limit {
        STOP_TIMING.store(true, Ordering::Release);
    }
    for _ in 0..10_000_000_000u64 {
        if mb.state.load(Ordering::Acquire) == DONE {
            mb.state.store(IDLE, Ordering::Release);
            return Some(LATENCIES.summary());
        }
        // No PAUSE: QEMU's TCG leaves its execution loop on every one, which would make
        // this vCPU's thread the noisiest thing on the machine while vCPU 1 is timed.
        quiet_spin();
    }
    None
}

/// How long the boot vCPU waits for another vCPU to take a request, in TSC cycles: half
/// a second at 2 GHz (a request it took is waited for to the end). Under QEMU's TCG the
/// guest's TSC counts at the host's rate, and the other vCPU's QEMU thread may be off the
/// host CPU for many time slices when the machine is busy. A count of yields is no
/// measure of that: a yield of the boot vCPU, alone on its CPU, takes microseconds, and
/// 500 of them once ran out under load before a freshly started vCPU answered (the
/// `6.3/create-vcpu-replaces` case).
const ANSWER_CYCLES: u64 = 1_000_000_000;

/// Post `kind` to the vCPU with `apic` and wait (yielding) for its answer: `false` if it
/// did not take the request within `patience` TSC cycles (a request it took is waited
/// for to the end, see [`give_up`]).
fn post(apic: u32, kind: u32, patience: u64) -> bool {
    let Some(mb) = MAILBOXES.get(apic as usize) else { return false };
    mb.state.store(kind, Ordering::Release);
    let start = rdtsc();
    loop {
        if mb.state.load(Ordering::Acquire) == DONE {
            mb.state.store(IDLE, Ordering::Release);
            return true;
        }
        if rdtsc().saturating_sub(start) > patience {
            return give_up(mb, kind);
        }
        yield_cpu();
    }
}

/// Is the vCPU with `apic` running (does it answer)?
pub fn alive(apic: u32) -> bool {
    post(apic, PING, ANSWER_CYCLES)
}

/// Have the vCPU with `apic` issue VMMCALL with `regs`; `false` if it did not answer (the
/// registers are then left as they were).
pub fn call(apic: u32, regs: &mut Regs) -> bool {
    let Some(mb) = MAILBOXES.get(apic as usize) else { return false };
    // SAFETY: IDLE: the boot vCPU owns `regs` until it posts CALL.
    unsafe { *mb.regs.get() = *regs };
    if !post(apic, CALL, ANSWER_CYCLES) {
        return false;
    }
    // SAFETY: DONE (then IDLE): `regs` is the boot vCPU's again.
    *regs = unsafe { *mb.regs.get() };
    true
}

/// A VMSA for a secondary vCPU with `apic` that starts at `ap_start` in 64-bit mode with
/// the launch page tables and a stack of its own.
pub fn vmsa(apic: u32) -> Option<abi::vmsa::Vmsa> {
    let slot = STACK_TOPS.get(apic as usize)?;
    let mut top = slot.load(Ordering::Acquire);
    if top == 0 {
        let stack = vec![0u8; STACK].leak();
        top = (stack.as_ptr() as u64 + STACK as u64) & !0xF;
        slot.store(top, Ordering::Release);
    }
    unsafe extern "C" {
        fn ap_start();
    }
    let mut v = abi::vmsa::Vmsa::zeroed();
    let code = abi::vmsa::VmsaSegment { selector: 0x08, attrib: 0x0A9B, limit: 0xFFFF_FFFF, base: 0 };
    let data = abi::vmsa::VmsaSegment { selector: 0x10, attrib: 0x0C93, limit: 0xFFFF_FFFF, base: 0 };
    (v.cs, v.ds, v.es, v.ss) = (code, data, data, data);
    v.tr = abi::vmsa::VmsaSegment { selector: 0, attrib: 0x008B, limit: 0xFFFF, base: 0 };
    v.vmpl = 1;
    v.efer = 0x500;
    v.cr0 = 0x8001_0033;
    v.cr4 = 0x620;
    v.cr3 = 0xB000;
    v.rflags = 2;
    v.rip = ap_start as *const () as u64;
    v.rsp = top;
    v.rdi = u64::from(apic);
    v.g_pat = 0x0007_0406_0007_0406;
    v.sev_features = abi::hw::sev_features::SNP_ACTIVE;
    Some(v)
}

/// The guest's memory as any vCPU sees it, with calls issued by the vCPU with this APIC
/// ID (through its mailbox): a [`guest::Client`] over it speaks for that vCPU.
pub struct OnVcpu(pub u32);

impl Transport for OnVcpu {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), guest::GuestFault> {
        Vmmcall.read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), guest::GuestFault> {
        Vmmcall.write(gpa, data)
    }
    fn exchange_u8(&mut self, gpa: u64, value: u8) -> Result<u8, guest::GuestFault> {
        Vmmcall.exchange_u8(gpa, value)
    }
    /// If the vCPU does not answer, the registers stay and the call reads as not executed.
    fn request_svsm(&mut self, regs: &mut Regs) {
        call(self.0, regs);
    }
}
