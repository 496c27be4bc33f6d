//! Section 7: the attestation protocol (SVSM_ATTEST_SERVICES, SVSM_ATTEST_SINGLE_SERVICE),
//! with the register use of rev 1.00 as Linux reads it: RCX = manifest size, RDX =
//! certificates size, R8 = report size, on success and when a buffer is too small.

use crate::check::{CaseError, CaseResult, discovery, ensure, host, raw};
use crate::{Env, PspFault};
use abi::attest::report as r;
use abi::attest::{AttestServicesOp, AttestSingleServiceOp, BufferRecord, REPORT_SIZE, SERVICES_MANIFEST_GUID};
use abi::protocol::attest_call::{ATTEST_SERVICES, ATTEST_SINGLE_SERVICE};
use abi::result::ResultCode;
use alloc::vec;
use alloc::vec::Vec;
use sha2::{Digest, Sha512};
use zerocopy::IntoBytes;

const ATTEST: u32 = 1;
const NONCE: [u8; 64] = [0x4E; 64];
/// Pages of the certificates buffer (a table of three DER certificates fits in two).
const CERT_PAGES: u32 = 4;

/// Where the cases put things, in scratch memory.
struct Layout {
    op: u64,
    report: u64,
    nonce: u64,
    manifest: u64,
    certs: u64,
}

fn layout(env: &mut dyn Env) -> Layout {
    let s = env.facts().scratch;
    Layout { op: s, report: s + 0x1000, nonce: s + 0x2000, manifest: s + 0x3000, certs: s + 0x4000 }
}

fn record(gpa: u64, len: u32) -> BufferRecord {
    BufferRecord { gpa, len, reserved: 0 }
}

/// The operation Linux sends: every buffer large enough.
fn full_op(l: &Layout) -> AttestServicesOp {
    AttestServicesOp {
        report: record(l.report, 0x1000),
        nonce: record(l.nonce, NONCE.len() as u32),
        manifest: record(l.manifest, 0x1000),
        certificates: record(l.certs, CERT_PAGES * 0x1000),
    }
}

fn needs_psp(env: &mut dyn Env) -> CaseResult {
    if env.facts().attestation { Ok(()) } else { Err(CaseError::Skip("the platform has no PSP yet")) }
}

/// Write `op` (at its usual place) and the nonce, then call SVSM_ATTEST_SERVICES with
/// RCX = `op_gpa` (which cases point elsewhere to test the checks on RCX).
fn attest(
    env: &mut dyn Env,
    l: &Layout,
    op_gpa: u64,
    op: &AttestServicesOp,
) -> Result<(ResultCode, guest::Regs), CaseError> {
    env.write(l.nonce, &NONCE)?;
    env.write(l.op, op.as_bytes())?;
    // Linux presets RDX and R8 to all-ones and reads back whatever changed.
    raw(env, ATTEST, ATTEST_SERVICES, [op_gpa, u64::MAX, u64::MAX, 0])
}

fn expect(
    env: &mut dyn Env,
    l: &Layout,
    op: &AttestServicesOp,
    want: ResultCode,
    what: &str,
) -> Result<guest::Regs, CaseError> {
    let (got, regs) = attest(env, l, l.op, op)?;
    ensure!(got == want, "{what}: expected {want}, got {got}");
    Ok(regs)
}

/// The services manifest of a successful SVSM_ATTEST_SERVICES.
pub(crate) fn manifest(env: &mut dyn Env) -> Result<Vec<u8>, CaseError> {
    let l = layout(env);
    let regs = expect(env, &l, &full_op(&l), ResultCode::SUCCESS, "attest services")?;
    read(env, l.manifest, regs.rcx as usize)
}

/// The data of service `guid` in a services manifest (spec table 12), if listed.
pub(crate) fn manifest_entry<'m>(manifest: &'m [u8], guid: &abi::guid::Guid) -> Option<&'m [u8]> {
    let count = u32::from_le_bytes(manifest.get(20..24)?.try_into().ok()?) as usize;
    (0..count).find_map(|i| {
        let e = manifest.get(24 + 24 * i..48 + 24 * i)?;
        if e[..16] != guid.0 {
            return None;
        }
        let offset = u32::from_le_bytes(e[16..20].try_into().ok()?) as usize;
        let len = u32::from_le_bytes(e[20..24].try_into().ok()?) as usize;
        manifest.get(offset..offset.checked_add(len)?)
    })
}

fn read(env: &mut dyn Env, gpa: u64, len: usize) -> Result<Vec<u8>, CaseError> {
    let mut b = vec![0u8; len];
    env.read(gpa, &mut b)?;
    Ok(b)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn services(env: &mut dyn Env) -> CaseResult {
    needs_psp(env)?;
    let l = layout(env);
    let regs = expect(env, &l, &full_op(&l), ResultCode::SUCCESS, "attest services")?;
    ensure!(regs.r8 == REPORT_SIZE as u64, "R8 (report size) = {:#x}", regs.r8);
    let manifest = read(env, l.manifest, regs.rcx as usize)?;
    ensure!(regs.rcx >= 24 && manifest[..16] == SERVICES_MANIFEST_GUID.0, "manifest {:#x} bytes", regs.rcx);
    ensure!(u32_at(&manifest, 16) as u64 == regs.rcx, "manifest length field {}", u32_at(&manifest, 16));
    let report = read(env, l.report, REPORT_SIZE)?;
    let mut h = Sha512::new();
    h.update(NONCE);
    h.update(&manifest);
    ensure!(
        report[r::REPORT_DATA..r::REPORT_DATA + 64] == h.finalize()[..],
        "REPORT_DATA != SHA-512(nonce || manifest)"
    );
    ensure!(u32_at(&report, r::VMPL) == 0, "report VMPL {}", u32_at(&report, r::VMPL));
    ensure!(u32_at(&report, r::VERSION) >= 2, "report version {}", u32_at(&report, r::VERSION));
    ensure!(u32_at(&report, r::SIGNATURE_ALGO) == r::ALGO_ECDSA_P384_SHA384, "signature algorithm");
    ensure!(report[r::SIGNATURE_R..r::SIGNATURE_R + 48].iter().any(|b| *b != 0), "report is unsigned");
    if regs.rdx != 0 {
        // A certificate table: its first entry names one of ARK, ASK, VCEK.
        let certs = read(env, l.certs, regs.rdx as usize)?;
        let known = [abi::attest::cert_table::ARK, abi::attest::cert_table::ASK, abi::attest::cert_table::VCEK];
        ensure!(known.iter().any(|g| certs.get(..16) == Some(&g[..])), "certificate table starts with an unknown GUID");
    }
    // A second report for another nonce differs in REPORT_DATA and signature.
    env.write(l.nonce, &[0x4F; 64])?;
    let (got, _) = raw(env, ATTEST, ATTEST_SERVICES, [l.op, u64::MAX, u64::MAX, 0])?;
    let again = read(env, l.report, REPORT_SIZE)?;
    ensure!(
        got == ResultCode::SUCCESS
            && again[r::REPORT_DATA..r::REPORT_DATA + 64] != report[r::REPORT_DATA..r::REPORT_DATA + 64],
        "a new nonce gave the same REPORT_DATA"
    );
    Ok(())
}

pub fn sizes(env: &mut dyn Env) -> CaseResult {
    needs_psp(env)?;
    let l = layout(env);
    let full = full_op(&l);
    let regs = expect(env, &l, &full, ResultCode::SUCCESS, "sizes")?;
    let (manifest_size, certs_size) = (regs.rcx, regs.rdx);
    env.write(l.report, &[0xEE; 0x100])?;
    let small_manifest = AttestServicesOp { manifest: record(l.manifest, 8), ..full };
    let regs = expect(env, &l, &small_manifest, ResultCode::ERR_INVALID_PARAMETER, "manifest buffer of 8 bytes")?;
    ensure!(
        (regs.rcx, regs.rdx, regs.r8) == (manifest_size, certs_size, REPORT_SIZE as u64),
        "too small: sizes {:#x} {:#x} {:#x}",
        regs.rcx,
        regs.rdx,
        regs.r8
    );
    ensure!(read(env, l.report, 0x100)? == [0xEE; 0x100], "a refused call wrote the report buffer");
    let small_report = AttestServicesOp { report: record(l.report, 0x100), ..full };
    let regs = expect(env, &l, &small_report, ResultCode::ERR_INVALID_PARAMETER, "report buffer of 0x100 bytes")?;
    ensure!(regs.r8 == REPORT_SIZE as u64, "R8 {:#x}", regs.r8);
    if certs_size > 0 {
        let small_certs = AttestServicesOp { certificates: record(l.certs, 16), ..full };
        let regs = expect(env, &l, &small_certs, ResultCode::ERR_INVALID_PARAMETER, "certificates buffer of 16 bytes")?;
        ensure!(regs.rdx == certs_size, "RDX {:#x}", regs.rdx);
    }
    // No certificates buffer: no certificates, RDX = 0, and the call succeeds.
    let no_certs = AttestServicesOp { certificates: record(0, 0), ..full };
    let regs = expect(env, &l, &no_certs, ResultCode::SUCCESS, "no certificates buffer")?;
    ensure!(regs.rdx == 0, "RDX {:#x} without a certificates buffer", regs.rdx);
    Ok(())
}

pub fn alignment(env: &mut dyn Env) -> CaseResult {
    let l = layout(env);
    let full = full_op(&l);
    for (op_gpa, what) in [(l.op + 4, "operation not 8-byte aligned"), (l.op + 0xFE0, "operation crossing a page")] {
        let (got, _) = attest(env, &l, op_gpa, &full)?;
        ensure!(got == ResultCode::ERR_INVALID_PARAMETER, "{what}: {got}");
    }
    let bad = [
        (AttestServicesOp { report: record(l.report + 0x10, 0x1000), ..full }, "report buffer not page aligned"),
        (AttestServicesOp { manifest: record(l.manifest + 0x10, 0x100), ..full }, "manifest buffer not page aligned"),
        (AttestServicesOp { certificates: record(l.certs + 0x10, 0x1000), ..full }, "certificates not page aligned"),
        (AttestServicesOp { nonce: record(l.nonce + 0xFF0, 64), ..full }, "nonce crossing a page"),
    ];
    for (op, what) in bad {
        expect(env, &l, &op, ResultCode::ERR_INVALID_PARAMETER, what)?;
    }
    Ok(())
}

pub fn addresses(env: &mut dyn Env) -> CaseResult {
    let l = layout(env);
    let f = env.facts();
    let d = discovery(env)?;
    let full = full_op(&l);
    env.write(l.report, &[0xEE; 0x100])?;
    let (got, _) = attest(env, &l, d.svsm_base, &full)?;
    ensure!(got == ResultCode::ERR_INVALID_ADDRESS, "operation in SVSM memory: {got}");
    for (gpa, what) in [
        (d.svsm_base, "SVSM memory"),
        (f.startup_vmsa, "the startup VMSA"),
        (f.free_small, "unvalidated memory"),
        (f.not_ram, "not RAM"),
    ] {
        let cases = [
            AttestServicesOp { report: record(gpa, 0x1000), ..full },
            AttestServicesOp { nonce: record(gpa, 64), ..full },
            AttestServicesOp { manifest: record(gpa, 0x1000), ..full },
            AttestServicesOp { certificates: record(gpa, 0x1000), ..full },
        ];
        for (i, op) in cases.iter().enumerate() {
            let (got, _) = attest(env, &l, l.op, op)?;
            ensure!(got == ResultCode::ERR_INVALID_ADDRESS, "buffer {i} in {what}: {got}");
        }
    }
    // A manifest buffer that starts in scratch memory and runs into SVSM memory.
    let into_svsm = AttestServicesOp { manifest: record(d.svsm_base - 0x1000, 0x2000), ..full };
    expect(env, &l, &into_svsm, ResultCode::ERR_INVALID_ADDRESS, "manifest running into SVSM memory")?;
    ensure!(read(env, l.report, 0x100)? == [0xEE; 0x100], "a refused call wrote the report buffer");
    Ok(())
}

pub fn reserved(env: &mut dyn Env) -> CaseResult {
    let l = layout(env);
    let full = full_op(&l);
    for (i, which) in ["report", "nonce", "manifest", "certificates"].iter().enumerate() {
        let mut op = full;
        let rec = match i {
            0 => &mut op.report,
            1 => &mut op.nonce,
            2 => &mut op.manifest,
            _ => &mut op.certificates,
        };
        rec.reserved = 1 << 24;
        expect(env, &l, &op, ResultCode::ERR_INVALID_PARAMETER, which)?;
    }
    let single = AttestSingleServiceOp { base: full, service_guid: [0; 16], manifest_version: 0, reserved: 1 };
    env.write(l.op, single.as_bytes())?;
    let (got, _) = raw(env, ATTEST, ATTEST_SINGLE_SERVICE, [l.op, u64::MAX, u64::MAX, 0])?;
    ensure!(got == ResultCode::ERR_INVALID_PARAMETER, "single service, reserved set: {got}");
    Ok(())
}

pub fn nonce_layouts(env: &mut dyn Env) -> CaseResult {
    needs_psp(env)?;
    let l = layout(env);
    // The older record: u16 size and six reserved bytes, written field by field.
    let full = full_op(&l);
    env.write(l.op, full.as_bytes())?;
    let mut old = [0u8; 16];
    old[..8].copy_from_slice(&l.nonce.to_le_bytes());
    old[8..10].copy_from_slice(&(NONCE.len() as u16).to_le_bytes());
    env.write(l.op + 0x10, &old)?;
    env.write(l.nonce, &NONCE)?;
    let (got, regs) = raw(env, ATTEST, ATTEST_SERVICES, [l.op, u64::MAX, u64::MAX, 0])?;
    ensure!(got == ResultCode::SUCCESS, "u16 nonce record: {got}");
    let manifest = read(env, l.manifest, regs.rcx as usize)?;
    let report = read(env, l.report, REPORT_SIZE)?;
    let mut h = Sha512::new();
    h.update(NONCE);
    h.update(&manifest);
    ensure!(report[r::REPORT_DATA..r::REPORT_DATA + 64] == h.finalize()[..], "u16 nonce record: REPORT_DATA");
    // No nonce at all: REPORT_DATA binds the manifest alone.
    let no_nonce = AttestServicesOp { nonce: record(0, 0), ..full };
    env.write(l.op, no_nonce.as_bytes())?;
    let (got, regs) = raw(env, ATTEST, ATTEST_SERVICES, [l.op, u64::MAX, u64::MAX, 0])?;
    let report = read(env, l.report, REPORT_SIZE)?;
    ensure!(got == ResultCode::SUCCESS, "empty nonce: {got}");
    // This call's manifest: with a sealed state each attestation moves it on (its link in
    // the attestation chain, docs/persistence.md).
    let manifest = read(env, l.manifest, regs.rcx as usize)?;
    ensure!(report[r::REPORT_DATA..r::REPORT_DATA + 64] == Sha512::digest(&manifest)[..], "empty nonce: REPORT_DATA");
    Ok(())
}

pub fn single_service(env: &mut dyn Env) -> CaseResult {
    let l = layout(env);
    let full = full_op(&l);
    env.write(l.nonce, &NONCE)?;
    for (guid, version, what) in [([0x42; 16], 0, "an unknown service"), ([0x42; 16], 7, "an unknown version")] {
        let single = AttestSingleServiceOp { base: full, service_guid: guid, manifest_version: version, reserved: 0 };
        env.write(l.op, single.as_bytes())?;
        let (got, _) = raw(env, ATTEST, ATTEST_SINGLE_SERVICE, [l.op, u64::MAX, u64::MAX, 0])?;
        ensure!(got == ResultCode::ERR_INVALID_PARAMETER, "{what}: {got}");
    }
    let (got, _) = raw(env, ATTEST, 2, [l.op, 0, 0, 0])?;
    ensure!(got == ResultCode::ERR_UNSUPPORTED_CALL, "attestation call 2: {got}");
    Ok(())
}

pub fn psp_failures(env: &mut dyn Env) -> CaseResult {
    needs_psp(env)?;
    let l = layout(env);
    let full = full_op(&l);
    env.write(l.report, &[0xEE; 0x100])?;
    // A refusal with a status: no report, and the channel stays in step.
    host(env)?.psp_fault(PspFault::Status(0x16));
    expect(env, &l, &full, ResultCode::ATTEST_REPORT_FAILED, "PSP status 0x16")?;
    ensure!(read(env, l.report, 0x100)? == [0xEE; 0x100], "a failed call wrote the report buffer");
    expect(env, &l, &full, ResultCode::SUCCESS, "after a PSP status")?;
    // A host that throttles (BUSY) a few times: the same message again, a report.
    host(env)?.psp_fault(PspFault::Busy(3));
    expect(env, &l, &full, ResultCode::SUCCESS, "after the host said BUSY three times")?;
    expect(env, &l, &full, ResultCode::SUCCESS, "after BUSY, the channel in step")?;
    // A forged answer: refused, and the SVSM never uses the key again.
    host(env)?.psp_fault(PspFault::CorruptAnswer);
    env.write(l.report, &[0xEE; 0x100])?;
    expect(env, &l, &full, ResultCode::ATTEST_REPORT_FAILED, "a corrupted answer")?;
    ensure!(read(env, l.report, 0x100)? == [0xEE; 0x100], "a forged answer reached the report buffer");
    expect(env, &l, &full, ResultCode::ATTEST_REPORT_FAILED, "after a forged answer")?;
    Ok(())
}

pub fn psp_lost_answer(env: &mut dyn Env) -> CaseResult {
    needs_psp(env)?;
    let l = layout(env);
    let full = full_op(&l);
    // The host swallows the answer: the sequence numbers can no longer be trusted.
    host(env)?.psp_fault(PspFault::DropAnswer);
    expect(env, &l, &full, ResultCode::ATTEST_REPORT_FAILED, "a lost answer")?;
    expect(env, &l, &full, ResultCode::ATTEST_REPORT_FAILED, "after a lost answer")?;
    // The core protocol keeps serving.
    let q = crate::check::client(env).query_protocol(abi::protocol::ProtocolId::CORE, 1)?;
    ensure!(q == Some((1, 1)), "core after the attestation failure: {q:?}");
    Ok(())
}
