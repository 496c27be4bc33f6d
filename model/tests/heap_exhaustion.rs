//! A guest that runs the SVSM's heap dry gets error codes, never a stopped SVSM
//! (issue 12, item 7): every call that allocates, on a heap with almost no room left,
//! answers success or SVSM_ERR_INVALID_REQUEST, changes nothing when it fails, and once
//! room is back the same calls work. The counting allocator gives SVSM code the
//! bare-metal heap's limit; an allocation that could not fail gracefully would abort this
//! test binary.

#[path = "support/calls.rs"]
mod calls;
use abi::core_protocol::{DepositEntry, PvalidateEntry};
use abi::protocol::{ProtocolId, core_call, ocp_call, vtpm_call};
use abi::result::ResultCode;
use bulwark_model::heap::{self, CountingHeap};
use bulwark_model::world::{self, MIB, PlatformKind, World, WorldConfig};
use calls::{call, write};
use guest::Transport;
use kernel::vcpu::VcpuIndex;

#[global_allocator]
static HEAP: CountingHeap = CountingHeap;

const SCRATCH: u64 = 2 * MIB;

fn list(w: &mut World, gpa: u64, entries: &[u64]) {
    let mut bytes = vec![0u8; 8];
    bytes[..2].copy_from_slice(&(entries.len() as u16).to_le_bytes());
    for e in entries {
        bytes.extend_from_slice(&e.to_le_bytes());
    }
    write(w, gpa, &bytes);
}

/// Every call that allocates, each on fresh inputs; (what, result).
fn calls_that_allocate(w: &mut World, round: u64) -> Vec<(&'static str, ResultCode)> {
    let mut out = Vec::new();
    // PVALIDATE of one 4 KiB page in a 2 MiB region the records hold whole (a leaf).
    let page = world::LOW_VALIDATED_END + round * 2 * MIB + 0x3000;
    list(w, SCRATCH, &[PvalidateEntry::new(page, false, true, false).0]);
    out.push(("PVALIDATE 4 KiB", call(w, ProtocolId::CORE, core_call::PVALIDATE, [SCRATCH, 0, 0, 0])));
    // DEPOSIT of one validated page (a leaf in two records).
    let deposit = SCRATCH + 0x40_000 + round * 0x1000;
    list(w, SCRATCH + 0x1000, &[DepositEntry::new(deposit, false).0]);
    out.push(("DEPOSIT_MEM", call(w, ProtocolId::CORE, core_call::DEPOSIT_MEM, [SCRATCH + 0x1000, 0, 0, 0])));
    // vTPM GetRandom(8).
    let tpm = SCRATCH + 0x8000;
    let mut req = abi::vtpm::request_header(abi::vtpm::TPM_SEND_COMMAND, 0, 12).to_vec();
    req.extend_from_slice(&[0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7B, 0, 8]);
    write(w, tpm, &req);
    out.push(("vTPM command", call(w, ProtocolId::VTPM, vtpm_call::CMD, [tpm, 0, 0, 0])));
    // OCP READ_BATCH of sources 5 and 9 (memory.svsm_pages_total, calls.core: registers).
    write(w, SCRATCH + 0x9000, &[5, 0, 0, 0, 9, 0, 0, 0]);
    out.push((
        "OCP READ_BATCH",
        call(w, ProtocolId::OCP, ocp_call::READ_BATCH, [SCRATCH + 0x9000, SCRATCH + 0xA000, 2, 0]),
    ));
    // Attestation: report and manifest.
    let op = SCRATCH + 0xB000;
    let mut bytes = Vec::new();
    for (gpa, len) in [(SCRATCH + 0xC000, 0x1000u32), (SCRATCH + 0xD000, 64), (SCRATCH + 0xE000, 0x1000), (0, 0)] {
        bytes.extend_from_slice(&gpa.to_le_bytes());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
    }
    write(w, op, &bytes);
    out.push(("ATTEST_SERVICES", call(w, ProtocolId::ATTEST, 0, [op, 0, 0, 0])));
    // WITHDRAW whatever is free.
    out.push(("WITHDRAW_MEM", call(w, ProtocolId::CORE, core_call::WITHDRAW_MEM, [SCRATCH + 0xF000, 0, 0, 0])));
    out
}

fn exhaust_on(platform: PlatformKind) {
    let mut failed_for_memory = 0;
    for room in [0usize, 8, 64, 128, 512, 2048, 8192, 64 * 1024] {
        let mut w = World::new(WorldConfig { platform, ..WorldConfig::default() });
        heap::leave_room(room);
        let refused_before = heap::refused();
        let results = calls_that_allocate(&mut w, 0);
        heap::reset_limit();
        for (what, r) in &results {
            assert!(
                *r == ResultCode::SUCCESS || *r == ResultCode::ERR_INVALID_REQUEST,
                "{what} with {room} bytes of heap left: {r}"
            );
            if *r == ResultCode::ERR_INVALID_REQUEST {
                failed_for_memory += 1;
            }
        }
        // A PVALIDATE that failed for memory left the page as it was: not the guest's.
        let page = world::LOW_VALIDATED_END + 0x3000;
        let validated = w.vcpu(VcpuIndex::STARTUP).write(page, &[1]).is_ok();
        assert_eq!(validated, results[0].1 == ResultCode::SUCCESS, "record and RMP disagree ({room} bytes)");
        if heap::refused() > refused_before {
            assert!(results.iter().any(|(_, r)| *r == ResultCode::ERR_INVALID_REQUEST));
        }
        // Room again: the SVSM serves the same calls.
        for (what, r) in calls_that_allocate(&mut w, 1) {
            assert_eq!(r, ResultCode::SUCCESS, "{what} after the heap had room again ({room} bytes before)");
        }
        assert!(w.machine.violations().is_empty(), "{:?}", w.machine.violations());
    }
    assert!(failed_for_memory > 0, "no call ever ran out of heap: the test shows nothing");
}

#[test]
fn a_full_heap_gets_error_codes_on_the_model() {
    exhaust_on(PlatformKind::Model);
}

#[test]
fn a_full_heap_gets_error_codes_on_the_snp_platform() {
    exhaust_on(PlatformKind::Snp);
}

/// The log level as SVSM_OCP_READ gives it (source 1, `config.log_level`).
fn log_level(w: &mut World) -> Vec<u8> {
    let at = SCRATCH + 0x1_0000;
    let n = match w.client().ocp_read(1, at, 16, 0) {
        Ok(guest::ocp::ReadOutcome::Copied(n)) => n as usize,
        other => panic!("reading the log level: {other:?}"),
    };
    let mut level = vec![0u8; n];
    w.vcpu(VcpuIndex::STARTUP).read(at, &mut level).expect("guest memory");
    level
}

/// An OCP WRITE with a change-event ring set up (NOTIFY) needs heap for the event: a full
/// heap refuses the write whole, the level unchanged, as every call that runs out of
/// heap changes nothing (docs/protocols/core.md). Before, the level changed and only
/// then did the event's room fail, so the guest was told the write failed.
#[test]
fn an_ocp_write_refused_for_heap_changes_no_setting() {
    let mut refused = 0;
    for room in [0usize, 8, 16, 32, 64, 4096] {
        let mut w = World::new(WorldConfig::default());
        let ring = SCRATCH + 0x2_0000;
        write(&mut w, ring, &[0; 64]);
        assert_eq!(call(&mut w, ProtocolId::OCP, ocp_call::NOTIFY, [ring, 0, 0, 0]), ResultCode::SUCCESS);
        let before = log_level(&mut w);
        let value = if before.starts_with(b"debug") { &b"error"[..] } else { &b"debug"[..] };
        write(&mut w, SCRATCH + 0x3_0000, value);
        heap::leave_room(room);
        let rc = call(&mut w, ProtocolId::OCP, ocp_call::WRITE, [1, SCRATCH + 0x3_0000, value.len() as u64, 0]);
        heap::reset_limit();
        let after = log_level(&mut w);
        match rc {
            ResultCode::SUCCESS => assert!(after.starts_with(value), "{room} bytes: written, yet {after:?}"),
            ResultCode::ERR_INVALID_REQUEST => {
                refused += 1;
                assert_eq!(after, before, "{room} bytes: refused, yet the level changed");
            }
            other => panic!("{room} bytes: {other}"),
        }
    }
    assert!(refused > 0, "no write ran out of heap: the test shows nothing");
}
