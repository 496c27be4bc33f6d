//! The test device a device model serves at CPL 3 on the svm platform
//! (`abi::syscall::test_device`, docs/syscalls.md "VM objects and device models"): the
//! guest's port accesses reach a process, not QEMU and not the SVSM's kernel, and come
//! back as IN and OUT define them; a device model that faults takes only its ports with
//! it.

use super::gate::Vmmcall;
use super::probe::{port_in, port_out, port_rep_insb};
use abi::protocol::ProtocolId;
use abi::syscall::test_device::{COUNTER, CRASH, FIRST, REGISTER};
use alloc::string::String;
use alloc::vec::Vec;
use guest::Client;

/// Every access as the device defines it: the register by byte, word and dword, the
/// counter (which counts the accesses served, refused ones not), and the refusals: an
/// access that runs past the device's ports, REP INSB, a port just past them.
pub fn served_at_cpl3() -> (bool, String) {
    let mut wrong = Vec::new();
    let mut expect = |what: &str, got: Option<u32>, want: u32| {
        if got != Some(want) {
            wrong.push(alloc::format!("{what}: {got:x?}, not {want:#x}"));
        }
    };
    let Some(before) = port_in(COUNTER, 4) else {
        return (false, "the counter's IN was refused: no device model serves the port".into());
    };
    expect("OUT dword", port_out(REGISTER, 4, 0x1234_5678).then_some(0), 0);
    expect("IN dword", port_in(REGISTER, 4), 0x1234_5678);
    expect("IN byte at +1", port_in(REGISTER + 1, 1), 0x56);
    expect("OUT word at +2", port_out(REGISTER + 2, 2, 0xBEEF).then_some(0), 0);
    expect("IN dword after", port_in(REGISTER, 4), 0xBEEF_5678);
    // Two bytes of the register and two of the counter: the 6th access after `before`.
    let count = before.wrapping_add(6);
    expect("IN dword across", port_in(REGISTER + 2, 4), (count & 0xFFFF) << 16 | 0xBEEF);
    let refused = [
        ("IN dword past the last port", port_in(FIRST + 6, 4).is_none()),
        ("IN byte of the next port", port_in(FIRST + 8, 1).is_none()),
        ("REP INSB", !port_rep_insb(FIRST)),
    ];
    for (what, was) in refused {
        expect(what, Some(u32::from(was)), 1);
    }
    expect("counter after the refusals", port_in(COUNTER, 4), before.wrapping_add(7));
    (wrong.is_empty(), if wrong.is_empty() { "8 accesses as defined, 3 refused".into() } else { wrong.join("; ") })
}

/// The test-only command that makes the device model fault: the OUT completes (a device
/// that vanishes drops it), the device's ports are refused from then on, and the SVSM
/// serves on.
pub fn crash_is_contained(c: &mut Client<Vmmcall>) -> (bool, String) {
    let out = port_out(COUNTER, 4, CRASH);
    let gone = port_in(REGISTER, 4).is_none();
    let serving = c.query_protocol(ProtocolId::CORE, 1);
    (
        out && gone && serving == Ok(Some((1, 1))),
        alloc::format!("the OUT completed: {out}, ports refused after: {gone}, QUERY_PROTOCOL: {serving:?}"),
    )
}

/// Cycles of one IN served by the device model at CPL 3 (an exit, the process run and
/// its answer), the fastest of 10 blocks of 50: one `BENCH_DEVICE` line.
pub fn bench(rdtsc: fn() -> u64) -> String {
    const BLOCKS: u64 = 10;
    const ROUNDS: u64 = 50;
    let mut best = u64::MAX;
    for _ in 0..BLOCKS {
        let t0 = rdtsc();
        for _ in 0..ROUNDS {
            if port_in(REGISTER, 4).is_none() {
                return "BENCH_DEVICE failed: the test device's port was refused".into();
            }
        }
        best = best.min((rdtsc() - t0) / ROUNDS);
    }
    alloc::format!("BENCH_DEVICE in_cycles={best}")
}
