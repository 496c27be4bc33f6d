//! The test device a device model serves at CPL 3 on the svm platform
//! (`abi::syscall::test_device`, docs/syscalls.md "VM objects and device models"): the
//! guest's port accesses reach a process, not QEMU and not the SVSM's kernel, and come
//! back as IN and OUT define them; a device model that faults takes only its ports with
//! it: the MMIO page is served by another process (the ports' device model started it
//! with EXEC and passed it the page's event), which serves on.

use super::gate::Vmmcall;
use super::probe::{mmio_read, mmio_write, mmio_write_immediate, port_in, port_out, port_rep_insb};
use abi::protocol::ProtocolId;
use abi::syscall::test_device::{COUNTER, CRASH, FIRST, MMIO, REGISTER};
use alloc::string::String;
use alloc::vec::Vec;
use guest::Client;

/// What a check found wrong, one line each.
#[derive(Default)]
struct Wrong(Vec<String>);

impl Wrong {
    fn expect<T: Copy + PartialEq + core::fmt::LowerHex + core::fmt::Debug>(
        &mut self,
        what: &str,
        got: Option<T>,
        want: T,
    ) {
        if got != Some(want) {
            self.0.push(alloc::format!("{what}: {got:x?}, not {want:#x}"));
        }
    }

    fn verdict(self, fine: &str) -> (bool, String) {
        (self.0.is_empty(), if self.0.is_empty() { fine.into() } else { self.0.join("; ") })
    }
}

/// Every access as the device defines it: the register by byte, word and dword, the
/// counter (which counts the accesses served, refused ones not), and the refusals: an
/// access that runs past the device's ports, REP INSB, a port just past them.
pub fn served_at_cpl3() -> (bool, String) {
    let mut wrong = Wrong::default();
    let Some(before) = port_in(COUNTER, 4) else {
        return (false, "the counter's IN was refused: no device model serves the port".into());
    };
    wrong.expect("OUT dword", port_out(REGISTER, 4, 0x1234_5678).then_some(0), 0);
    wrong.expect("IN dword", port_in(REGISTER, 4), 0x1234_5678);
    wrong.expect("IN byte at +1", port_in(REGISTER + 1, 1), 0x56);
    wrong.expect("OUT word at +2", port_out(REGISTER + 2, 2, 0xBEEF).then_some(0), 0);
    wrong.expect("IN dword after", port_in(REGISTER, 4), 0xBEEF_5678);
    // Two bytes of the register and two of the counter: the 6th access after `before`.
    let count = before.wrapping_add(6);
    wrong.expect("IN dword across", port_in(REGISTER + 2, 4), (count & 0xFFFF) << 16 | 0xBEEF);
    let refused = [
        ("IN dword past the last port", port_in(FIRST + 6, 4).is_none()),
        ("IN byte of the next port", port_in(FIRST + 8, 1).is_none()),
        ("REP INSB", !port_rep_insb(FIRST)),
    ];
    for (what, was) in refused {
        wrong.expect(what, Some(u32::from(was)), 1);
    }
    wrong.expect("counter after the refusals", port_in(COUNTER, 4), before.wrapping_add(7));
    wrong.verdict("8 accesses as defined, 3 refused")
}

/// The test device's MMIO page, through each MOV form the SVSM decodes: the 8-byte
/// register by qword, dword, word and byte, an immediate store, the counter (the page's
/// own accesses), a load that spans both, and the refusals: a load that runs off
/// the page, an address of the page past the device's registers reading zero.
pub fn mmio_served() -> (bool, String) {
    let mut wrong = Wrong::default();
    let Some(before) = mmio_read(MMIO + 8, 4) else {
        return (false, "the counter's load was refused: no device model serves the page".into());
    };
    wrong.expect("store qword", mmio_write(MMIO, 8, 0x0123_4567_89AB_CDEF).then_some(0), 0);
    wrong.expect("load qword", mmio_read(MMIO, 8), 0x0123_4567_89AB_CDEF);
    wrong.expect("load byte at +1 (MOVZX)", mmio_read(MMIO + 1, 1), 0xCD);
    wrong.expect("store word at +2", mmio_write(MMIO + 2, 2, 0xBEEF).then_some(0), 0);
    wrong.expect("load dword", mmio_read(MMIO, 4), 0xBEEF_CDEF);
    wrong.expect("store immediate at +4", mmio_write_immediate(MMIO + 4).then_some(0), 0);
    wrong.expect("load word at +6 (MOVZX)", mmio_read(MMIO + 6, 2), 0x5A5A);
    wrong.expect("store byte at +7", mmio_write(MMIO + 7, 1, 0x77).then_some(0), 0);
    // The register's top dword and the counter's low dword: the 9th access after `before`.
    let count = before + 9;
    wrong.expect("load qword across", mmio_read(MMIO + 4, 8), (count & 0xFFFF_FFFF) << 32 | 0x775A_5A5A);
    wrong.expect("load past the registers", mmio_read(MMIO + 0x800, 4), 0);
    wrong.expect("load off the page refused", Some(u64::from(mmio_read(MMIO + 0xFFC, 8).is_none())), 1);
    wrong.verdict("11 accesses as defined, 1 refused")
}

/// CPUID `leaf`/`subleaf` on this vCPU: EAX, EBX, ECX, EDX.
fn cpuid(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// The boot vCPU's VCPU object, which the test device's ports process holds: CPUID of a
/// leaf it answers comes from that process, with this vCPU's index (0), the leaf, the
/// subleaf, and a count that grows by one per CPUID it served.
pub fn vcpu_object_answers() -> (bool, String) {
    let first = cpuid(0x4000_00F0, 7);
    let (vcpu, leaf, subleaf, count) = first;
    let second = cpuid(0x4000_00FF, 0);
    let ok = (vcpu, leaf, subleaf) == (0, 0x4000_00F0, 7) && count > 0 && second == (0, 0x4000_00FF, 0, count + 1);
    (ok, alloc::format!("CPUID 0x400000f0/7 gave {first:x?}, 0x400000ff/0 gave {second:x?}"))
}

/// The test-only command that makes the ports' device model fault: the OUT completes (a
/// device that vanishes drops it), the ports are refused from then on, the boot vCPU's
/// object (held by the same process) went with it, so its leaves read zeros, the MMIO
/// page's process (another process, with its own memory) still serves, and the SVSM
/// serves on.
pub fn crash_is_contained(c: &mut Client<Vmmcall>) -> (bool, String) {
    let before = mmio_read(MMIO + 8, 4);
    let out = port_out(COUNTER, 4, CRASH);
    let gone = port_in(REGISTER, 4).is_none() && cpuid(0x4000_00F0, 1) == (0, 0, 0, 0);
    let page = mmio_write(MMIO, 4, 0x600D).then(|| mmio_read(MMIO, 4)).flatten();
    let after = mmio_read(MMIO + 8, 4);
    // Its count went on from where it was: the same process, not a new one.
    let page_served = page == Some(0x600D) && before.is_some() && after == before.map(|b| b + 3);
    let serving = c.query_protocol(ProtocolId::CORE, 1);
    (
        out && gone && page_served && serving == Ok(Some((1, 1))),
        alloc::format!(
            "the OUT completed: {out}, ports and the vCPU object's leaves refused after: {gone}, the MMIO page's own process served on: {page_served} (register {page:x?}, count {before:?} -> {after:?}), QUERY_PROTOCOL: {serving:?}"
        ),
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
