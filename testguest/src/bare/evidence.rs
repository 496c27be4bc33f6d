//! Attestation evidence for the host: the guest asks the SVSM for a report over a fresh
//! nonce, as Linux would (SVSM_ATTEST_SERVICES with report, nonce, manifest and
//! certificate buffers), and prints what it got as `EVIDENCE <what> <hex>` lines, which
//! `cargo xtask boot` hands to the verifier.
#![expect(unsafe_code, reason = "RDRAND and RDTSC for a nonce")]

use abi::attest::{AttestServicesOp, BufferRecord, REPORT_SIZE};
use abi::core_protocol::PvalidateEntry;
use abi::protocol::{CallId, ProtocolId, attest_call};
use abi::result::ResultCode;
use alloc::vec;
use guest::{Client, Regs, Transport};
use zerocopy::IntoBytes;

/// Unvalidated 4 KiB-RMP memory nothing else uses: validated here for the buffers.
const AREA: u64 = 0x50_0000;
const PAGES: u64 = 9;
const CERT_PAGES: u64 = 4;

fn nonce() -> [u8; 64] {
    let mut n = [0u8; 64];
    for chunk in n.chunks_mut(8) {
        let mut v = 0u64;
        // SAFETY: RDRAND writes only `v`; a failed draw leaves it 0 and the TSC stands in.
        if unsafe { core::arch::x86_64::_rdrand64_step(&mut v) } == 0 {
            // SAFETY: RDTSC only reads the time-stamp counter.
            v = unsafe { core::arch::x86_64::_rdtsc() };
        }
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    n
}

fn print_hex(what: &str, bytes: &[u8]) {
    let mut line = alloc::string::String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = core::fmt::Write::write_fmt(&mut line, format_args!("{b:02x}"));
    }
    println!("EVIDENCE {what} {line}");
}

/// What SVSM_ATTEST_SERVICES returned.
pub struct Evidence {
    pub report: vec::Vec<u8>,
    pub manifest: vec::Vec<u8>,
    pub certificates: vec::Vec<u8>,
}

/// Obtain and print the evidence; `Err` with what went wrong.
pub fn obtain<T: Transport>(c: &mut Client<T>, list_page: u64) -> Result<usize, alloc::string::String> {
    let entries: vec::Vec<PvalidateEntry> =
        (0..PAGES).map(|i| PvalidateEntry::new(AREA + i * 0x1000, false, true, false)).collect();
    c.pvalidate(&entries, list_page).map_err(|e| alloc::format!("validating the buffers: {e:?}"))?;
    let nonce = nonce();
    let e = attest(c, AREA, &nonce)?;
    print_hex("nonce", &nonce);
    print_hex("manifest", &e.manifest);
    print_hex("report", &e.report);
    print_hex("certificates", &e.certificates);
    Ok(e.certificates.len())
}

/// SVSM_ATTEST_SERVICES for `nonce` (at most a page) with its operation and buffers in
/// the 8 validated pages from `area`, as Linux lays them out.
pub fn attest<T: Transport>(c: &mut Client<T>, area: u64, nonce: &[u8]) -> Result<Evidence, alloc::string::String> {
    let (op_gpa, report, nonce_gpa, manifest, certs) =
        (area, area + 0x1000, area + 0x2000, area + 0x3000, area + 0x4000);
    let record = |gpa, len| BufferRecord { gpa, len, reserved: 0 };
    let op = AttestServicesOp {
        report: record(report, 0x1000),
        nonce: record(nonce_gpa, nonce.len() as u32),
        manifest: record(manifest, 0x1000),
        certificates: record(certs, (CERT_PAGES * 0x1000) as u32),
    };
    let write = |c: &mut Client<T>, gpa, data: &[u8]| c.transport.write(gpa, data).map_err(|e| alloc::format!("{e:?}"));
    write(c, nonce_gpa, nonce)?;
    write(c, op_gpa, op.as_bytes())?;
    let rax = CallId::new(ProtocolId::ATTEST, attest_call::ATTEST_SERVICES).to_rax();
    let out =
        c.issue(Regs { rax, rcx: op_gpa, rdx: u64::MAX, r8: u64::MAX, r9: 0 }).map_err(|e| alloc::format!("{e:?}"))?;
    let result = ResultCode::from_rax(out.rax);
    if result != ResultCode::SUCCESS {
        return Err(alloc::format!("SVSM_ATTEST_SERVICES: {result}"));
    }
    let read = |c: &mut Client<T>, gpa, len: u64| -> Result<vec::Vec<u8>, alloc::string::String> {
        let mut b = vec![0u8; len as usize];
        c.transport.read(gpa, &mut b).map_err(|e| alloc::format!("{e:?}"))?;
        Ok(b)
    };
    Ok(Evidence {
        report: read(c, report, REPORT_SIZE as u64)?,
        manifest: read(c, manifest, out.rcx.min(0x1000))?,
        certificates: read(c, certs, out.rdx.min(CERT_PAGES * 0x1000))?,
    })
}
