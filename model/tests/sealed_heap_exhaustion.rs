//! A guest that runs the SVSM's heap dry and then makes it write its sealed state gets
//! error codes, never a stopped SVSM: the store's puts, removes and commits allocate only
//! fallibly. With a sealed state on a disk, a vTPM that keeps its NV state there (libtpms
//! in its service process, as the SVSM runs it), and almost no heap left, each of
//! NV_DefineSpace + NV_Write, an OCP write of `config.log_level` and an attestation (which
//! commits a link of the attestation chain) answers success or an error; a failed commit
//! changes nothing and leaves the sealed state open; with room back the OCP and the
//! attestation work again, and a reboot on the same disk finds the NV index as the last
//! write the guest was told succeeded left it. (A vTPM whose NV changes could not be kept
//! stops until the next boot, by design: docs/persistence.md "Failing closed".)
//!
//! The counting allocator gives SVSM code the bare-metal heap's limit; an infallible
//! allocation on these paths aborts this test binary.

#[path = "support/calls.rs"]
mod calls;
#[path = "support/engines.rs"]
mod engines;
use abi::attest::{AttestServicesOp, BufferRecord};
use abi::protocol::{ProtocolId, attest_call, ocp_call, vtpm_call};
use abi::result::ResultCode;
use bulwark_model::heap::{self, CountingHeap};
use bulwark_model::user_host::channel_tpm;
use bulwark_model::world::{MIB, World, WorldConfig};
use calls::{call, write};
use engines::{CountedTpm, wait_for_the_previous_engine};
use guest::Transport;
use kernel::sealed::{Sealed, SharedSealed, VtpmNv};
use kernel::vcpu::VcpuIndex;
use store::testing::{MemDisk, SharedDisk, TestRng};
use store::{Block, BlockDevice, IoError, Store, StoreKey};
use vtpm::commands::{nv_define_space, nv_read, nv_read_result, nv_write};
use vtpm::libtpms::LibTpms;
use vtpm::wire::{ResponseHeader, TPM_RC_SUCCESS};
use vtpm::{TPM_RC_NV_UNAVAILABLE, Vtpm};
use zerocopy::IntoBytes;

#[global_allocator]
static HEAP: CountingHeap = CountingHeap;

const SCRATCH: u64 = 2 * MIB;
const INDEX: u32 = 0x0150_0001;
const INDEX_SIZE: u16 = 32;
/// The OCP setting kept in the sealed state.
const LOG_LEVEL_KEY: &[u8] = b"ocp/config.log_level";

fn key() -> StoreKey {
    StoreKey::new([0x5e; 32])
}

/// The host's disk as the SVSM drives it: its memory (the write cache [`MemDisk`] keeps) is
/// the host's, not the SVSM heap's, as the bare-metal virtio disk's bounce pages are not.
struct HostDisk(SharedDisk);

impl BlockDevice for HostDisk {
    fn block_count(&self) -> u64 {
        self.0.block_count()
    }
    fn read(&mut self, index: u64, buf: &mut Block) -> Result<(), IoError> {
        heap::as_host(|| self.0.read(index, buf))
    }
    fn write(&mut self, index: u64, buf: &Block) -> Result<(), IoError> {
        heap::as_host(|| self.0.write(index, buf))
    }
    fn flush(&mut self) -> Result<(), IoError> {
        heap::as_host(|| self.0.flush())
    }
}

/// A model guest whose SVSM opened (or formatted) its sealed state on `disk` and started
/// the vTPM from what it keeps, as the SVSM boots.
fn boot(disk: &SharedDisk, seed: u64) -> (World, SharedSealed) {
    wait_for_the_previous_engine();
    let mut w = World::new(WorldConfig { vtpm: false, ..WorldConfig::default() });
    let (store, _) =
        Store::open_or_format(HostDisk(disk.clone()), &key(), TestRng::new(seed)).expect("the store opens");
    let sealed = Sealed::new(Box::new(store));
    let (kept, storage) = VtpmNv::open(sealed.clone());
    let open = |nv| LibTpms::open_with_nv(abi::vtpm::MAX_COMMAND_SIZE as u32, nv).map(CountedTpm::new).map_err(|_| 1);
    let engine = channel_tpm(open, &kept.nv).expect("the vTPM service starts");
    let vtpm = Vtpm::start(Box::new(engine), Box::new(storage)).expect("the vTPM starts");
    heap::in_svsm(|| {
        w.svsm.install_sealed(&mut w.machine, sealed.clone());
        w.svsm.install_vtpm(vtpm);
    });
    (w, sealed)
}

fn read(w: &mut World, gpa: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    w.vcpu(VcpuIndex::STARTUP).read(gpa, &mut bytes).expect("guest memory");
    bytes
}

/// One TPM command through the vTPM protocol: the call's result and, if it succeeded,
/// the TPM response.
fn tpm(w: &mut World, command: &[u8]) -> (ResultCode, Option<Vec<u8>>) {
    let page = SCRATCH + 0x8000;
    let mut request = abi::vtpm::request_header(abi::vtpm::TPM_SEND_COMMAND, 0, command.len() as u32).to_vec();
    request.extend_from_slice(command);
    write(w, page, &request);
    let rc = call(w, ProtocolId::VTPM, vtpm_call::CMD, [page, 0, 0, 0]);
    if rc != ResultCode::SUCCESS {
        return (rc, None);
    }
    let size = u32::from_le_bytes(read(w, page, 4).try_into().unwrap()) as usize;
    (rc, Some(read(w, page + abi::vtpm::RESP_DATA_OFFSET as u64, size)))
}

fn tpm_code(response: &Option<Vec<u8>>) -> Option<u32> {
    response.as_deref().and_then(ResponseHeader::parse).map(|h| h.code)
}

/// An OCP write of `config.log_level`.
fn write_level(w: &mut World, level: &[u8]) -> ResultCode {
    let sources = w.svsm.ocp_sources();
    let index = (0..sources.len() as u32)
        .find(|i| sources.get(*i).is_some_and(|s| s.name == "config.log_level"))
        .expect("the log level source");
    write(w, SCRATCH + 0x1000, level);
    call(w, ProtocolId::OCP, ocp_call::WRITE, [u64::from(index), SCRATCH + 0x1000, level.len() as u64, 0])
}

/// SVSM_ATTEST_SERVICES with a whole manifest: commits a link of the attestation chain.
fn attest(w: &mut World, nonce: &[u8; 64]) -> ResultCode {
    let (op_gpa, report, nonce_gpa, manifest, certs) =
        (SCRATCH + 0x10_000, SCRATCH + 0x11_000, SCRATCH + 0x12_000, SCRATCH + 0x13_000, SCRATCH + 0x17_000);
    let record = |gpa, len| BufferRecord { gpa, len, reserved: 0 };
    let op = AttestServicesOp {
        report: record(report, 0x1000),
        nonce: record(nonce_gpa, 64),
        manifest: record(manifest, 0x4000),
        certificates: record(certs, 0x4000),
    };
    write(w, nonce_gpa, nonce);
    write(w, op_gpa, op.as_bytes());
    call(w, ProtocolId::ATTEST, attest_call::ATTEST_SERVICES, [op_gpa, 0, 0, 0])
}

fn chain_links(sealed: &SharedSealed) -> usize {
    sealed.lock().summary().lock().chain.links().len()
}

/// The NV index after a reboot on `disk`: its bytes, or the TPM's response code.
fn index_after_reboot(disk: &SharedDisk, seed: u64) -> Result<Vec<u8>, u32> {
    let (mut w, _) = boot(disk, seed);
    let (rc, response) = tpm(&mut w, &nv_read(INDEX, 0, INDEX_SIZE));
    assert_eq!(rc, ResultCode::SUCCESS);
    match tpm_code(&response) {
        Some(TPM_RC_SUCCESS) => Ok(nv_read_result(response.as_deref().unwrap()).unwrap().to_vec()),
        other => Err(other.expect("a TPM response")),
    }
}

#[test]
fn a_full_heap_fails_sealed_state_writes_with_error_codes_and_keeps_the_state_whole() {
    let mut failed_for_memory = 0;
    let mut seed = 0;
    let mut failures_before = 0;
    // From no room at all to enough for everything, finely where the vTPM's, the OCP's and
    // the attestation's commits run out (8 to 21 KiB on the model).
    let rooms = [0usize, 64, 512, 2048, 4096, 6144].into_iter().chain((16..44).map(|k| k * 512)).chain([64 * 1024]);
    for (round, room) in rooms.enumerate() {
        let disk = SharedDisk::new(MemDisk::new(64));
        seed += 1;
        let (mut w, sealed) = boot(&disk, seed);
        let data = [round as u8 + 1; INDEX_SIZE as usize];
        let links = chain_links(&sealed);

        heap::leave_room(room);
        let refused_before = heap::refused();
        let (define_rc, define) = tpm(&mut w, &nv_define_space(INDEX, INDEX_SIZE));
        let (write_rc, written) = tpm(&mut w, &nv_write(INDEX, 0, &data));
        let level_rc = write_level(&mut w, b"debug");
        let attest_rc = attest(&mut w, &[round as u8; 64]);
        heap::reset_limit();
        let refused = heap::refused() - refused_before;

        let what = format!("{room} bytes of heap left");
        for (call, rc) in [("NV_DefineSpace", define_rc), ("NV_Write", write_rc), ("OCP WRITE", level_rc)] {
            assert!(rc == ResultCode::SUCCESS || rc == ResultCode::ERR_INVALID_REQUEST, "{call}, {what}: {rc}");
        }
        assert!(
            [ResultCode::SUCCESS, ResultCode::ERR_INVALID_REQUEST, ResultCode::ATTEST_REPORT_FAILED]
                .contains(&attest_rc),
            "attestation, {what}: {attest_rc}"
        );
        // A full heap fails a commit before its header write: the sealed state stays open.
        assert_eq!(sealed.lock().failed(), None, "{what}");
        let define_code = tpm_code(&define);
        let write_code = tpm_code(&written);
        let nv_unkept = [define_code, write_code].contains(&Some(TPM_RC_NV_UNAVAILABLE));
        let level_kept = sealed.lock().get(LOG_LEVEL_KEY) == Some(&b"debug"[..]);
        if level_rc == ResultCode::SUCCESS && !level_kept {
            failed_for_memory += 1; // the level applies, but was not kept for the next boot
        }
        if attest_rc == ResultCode::SUCCESS {
            assert_eq!(chain_links(&sealed), links + 1, "a served attestation committed its link ({what})");
        } else {
            failed_for_memory += 1;
        }
        failed_for_memory += usize::from(nv_unkept)
            + [define_rc, write_rc, level_rc].iter().filter(|rc| **rc != ResultCode::SUCCESS).count();
        println!(
            "{what}: define {define_rc}/{define_code:x?}, write {write_rc}/{write_code:x?}, level {level_rc} (kept: \
             {level_kept}), attest {attest_rc}; {refused} allocations refused"
        );

        // Room again: the OCP setting and the attestation commit.
        assert_eq!(write_level(&mut w, b"info"), ResultCode::SUCCESS, "{what}");
        assert_eq!(sealed.lock().get(LOG_LEVEL_KEY), Some(&b"info"[..]), "{what}");
        let links = chain_links(&sealed);
        assert_eq!(attest(&mut w, &[0xEE; 64]), ResultCode::SUCCESS, "{what}");
        assert_eq!(chain_links(&sealed), links + 1, "{what}");
        assert_eq!(sealed.lock().failed(), None, "{what}");
        // A vTPM that kept every change serves on; one that could not stopped (it holds
        // state its store does not) and starts again at the next boot.
        let define_ok = define_rc == ResultCode::SUCCESS && define_code == Some(TPM_RC_SUCCESS);
        let write_ok = write_rc == ResultCode::SUCCESS && write_code == Some(TPM_RC_SUCCESS);
        let mut expected = match (define_ok, write_ok) {
            (_, true) => Ok(data.to_vec()),
            (true, false) => Err(0x14A), // TPM_RC_NV_UNINITIALIZED: defined, never written
            (false, false) => Err(0),    // no such index (a handle error: checked below)
        };
        if !nv_unkept && define_ok {
            let after = [0xCC; INDEX_SIZE as usize];
            let (rc, response) = tpm(&mut w, &nv_write(INDEX, 0, &after));
            assert_eq!((rc, tpm_code(&response)), (ResultCode::SUCCESS, Some(TPM_RC_SUCCESS)), "{what}");
            expected = Ok(after.to_vec());
        }
        assert!(w.machine.violations().is_empty(), "{:?}", w.machine.violations());
        let committed = sealed.lock().state();
        drop(w);
        drop(sealed);

        // The next boot: the state the guest was told about, and the setting and chain.
        seed += 1;
        let found = index_after_reboot(&disk, seed);
        match expected {
            Err(0) => assert!(matches!(found, Err(code) if code & 0xFF == 0x8B), "{what}: {found:x?}"),
            expected => assert_eq!(found, expected, "{what}"),
        }
        let reopened = Store::open(MemDisk::from_image(disk.image()), &key(), TestRng::new(0)).unwrap();
        assert_eq!(reopened.get(LOG_LEVEL_KEY), Some(&b"info"[..]), "{what}");
        assert!(reopened.state().generation >= committed.generation, "{what}");
        if refused > 0 {
            assert!(failed_for_memory > failures_before, "{what}: allocations were refused and every call succeeded");
        }
        failures_before = failed_for_memory;
    }
    assert!(failed_for_memory > 0, "no sealed-state write ever ran out of heap: the test shows nothing");
}
