//! Callers below the guest's own VMPL (spec 58019 section 2: any VMPL may call the SVSM).
//!
//! A guest can run code at VMPL2/3 that it does not trust (COCONUT's design puts user
//! services there; a VMPL1 kernel can as well). Such a caller must not use the SVSM as a
//! deputy against VMPL1: every page a call reads, writes or acts on must be one its own
//! VMPL could access that way (docs/protocols/core.md, "Callers below the guest's VMPL").
//! Each case checks both sides: a page VMPL1 kept to itself is refused with
//! INVALID_ADDRESS and stays VMPL1's, and a page VMPL1 granted works.

use crate::Env;
use crate::check::{CaseError, CaseResult, client, ensure, expect_core, guest_can_write, host, raw, write_list};
use abi::core_protocol::{DepositEntry, PvalidateEntry};
use abi::hw::rmpadjust::PERM_ALL;
use abi::protocol::core_call::{CREATE_VCPU, DELETE_VCPU, DEPOSIT_MEM, PVALIDATE, REMAP_CA, WITHDRAW_MEM};
use abi::result::ResultCode;
use abi::vmsa::VmsaField;

/// APIC ID of the VMPL2 vCPU.
const LOW_APIC: u32 = 20;

/// Where the cases put things: a 1 MiB-aligned window of scratch memory.
struct Layout {
    /// The VMPL2 vCPU's VMSA and calling area.
    vmsa: u64,
    ca: u64,
    /// A page VMPL1 shares with VMPL2: its lists and buffers.
    work: u64,
    /// A page VMPL1 keeps to itself.
    private: u64,
    /// More pages VMPL1 shares with VMPL2, for calls that take a page away.
    shared: [u64; 3],
}

fn layout(env: &mut dyn Env) -> Result<Layout, CaseError> {
    let f = env.facts();
    if f.scratch_pages < 0x110 {
        return Err(CaseError::Skip("not enough scratch memory"));
    }
    let b = f.scratch + 0x100_000;
    Ok(Layout {
        vmsa: b,
        ca: b + 0x1000,
        work: b + 0x2000,
        private: b + 0x3000,
        shared: [b + 0x4000, b + 0x5000, b + 0x6000],
    })
}

/// Set up the VMPL2 vCPU (created by the startup vCPU at VMPL1) and share the pages of
/// the layout with it. The startup vCPU stays selected.
fn vmpl2_vcpu(env: &mut dyn Env) -> Result<Layout, CaseError> {
    let l = layout(env)?;
    for page in [l.ca, l.work, l.shared[0], l.shared[1], l.shared[2]] {
        env.grant_lower_vmpl(page, 2, PERM_ALL)?;
    }
    ensure!(guest_can_write(env, l.private), "the private page is not VMPL1's");
    env.write_vmsa(l.vmsa, LOW_APIC)?;
    env.write(l.vmsa + VmsaField::Vmpl.offset() as u64, &[2])?;
    client(env).create_vcpu(l.vmsa, l.ca, LOW_APIC)?;
    Ok(l)
}

/// Run `f` as the VMPL2 vCPU, then select the startup vCPU again.
fn as_vmpl2<T>(
    env: &mut dyn Env,
    l: &Layout,
    f: impl FnOnce(&mut dyn Env) -> Result<T, CaseError>,
) -> Result<T, CaseError> {
    let startup_ca = env.calling_area();
    ensure!(env.select_vcpu(LOW_APIC, l.ca)?, "the VMPL2 vCPU does not exist");
    let r = f(env);
    ensure!(env.select_vcpu(0, startup_ca)?, "startup vCPU lost");
    r
}

fn e4k(gpa: u64, validate: bool) -> u64 {
    PvalidateEntry::new(gpa, false, validate, false).0
}

/// A page VMPL1 kept must still be VMPL1's, whole.
fn still_vmpl1s(env: &mut dyn Env, gpa: u64, what: &str) -> CaseResult {
    ensure!(guest_can_write(env, gpa), "{what}: VMPL1 lost its page {gpa:#x}");
    ensure!(!host(env)?.vmpl_can_read(gpa, 2), "{what}: VMPL2 gained the page {gpa:#x}");
    Ok(())
}

/// PVALIDATE, DEPOSIT_MEM, WITHDRAW_MEM and REMAP_CA from VMPL2.
pub fn memory(env: &mut dyn Env) -> CaseResult {
    let l = vmpl2_vcpu(env)?;
    // A list VMPL1 wrote into its own page: VMPL2 must not make the SVSM read (and write
    // back into) it.
    write_list(env, l.private, 1, 0, &[e4k(l.shared[0], false)])?;
    as_vmpl2(env, &l, |env| {
        // Invalidating VMPL1's page would let VMPL2 validate it again and own it.
        write_list(env, l.work, 1, 0, &[e4k(l.private, false)])?;
        expect_core(env, PVALIDATE, [l.work, 0, 0, 0], ResultCode::ERR_INVALID_ADDRESS)?;
        expect_core(env, PVALIDATE, [l.private, 0, 0, 0], ResultCode::ERR_INVALID_ADDRESS)?;
        // Depositing it would take it from VMPL1.
        write_list(env, l.work, 1, 0, &[DepositEntry::new(l.private, false).0])?;
        expect_core(env, DEPOSIT_MEM, [l.work, 0, 0, 0], ResultCode::ERR_INVALID_ADDRESS)?;
        expect_core(env, WITHDRAW_MEM, [l.private, 0, 0, 0], ResultCode::ERR_INVALID_ADDRESS)?;
        expect_core(env, REMAP_CA, [l.private, 0, 0, 0], ResultCode::ERR_INVALID_ADDRESS)?;
        Ok(())
    })?;
    still_vmpl1s(env, l.private, "PVALIDATE/DEPOSIT/WITHDRAW/REMAP_CA")?;
    // The same calls on pages VMPL1 shared work.
    as_vmpl2(env, &l, |env| {
        write_list(env, l.work, 1, 0, &[e4k(l.shared[0], false)])?;
        expect_core(env, PVALIDATE, [l.work, 0, 0, 0], ResultCode::SUCCESS)?;
        write_list(env, l.work, 1, 0, &[DepositEntry::new(l.shared[1], false).0])?;
        expect_core(env, DEPOSIT_MEM, [l.work, 0, 0, 0], ResultCode::SUCCESS)?;
        ensure!(!guest_can_write(env, l.shared[1]), "the deposited page is still VMPL2's");
        Ok(())
    })?;
    ensure!(!guest_can_write(env, l.shared[0]), "the page VMPL2 invalidated is still usable");
    Ok(())
}

/// CREATE_VCPU and DELETE_VCPU from VMPL2.
pub fn vcpus(env: &mut dyn Env) -> CaseResult {
    let l = vmpl2_vcpu(env)?;
    // Room for two more vCPUs: VMPL1 deposits pages for their SVSM-side context.
    let pool: [u64; 6] = core::array::from_fn(|i| l.private + 0xA000 + 0x1000 * i as u64);
    let entries: [u64; 6] = pool.map(|gpa| DepositEntry::new(gpa, false).0);
    write_list(env, l.private + 0x10_000, 6, 0, &entries)?;
    expect_core(env, DEPOSIT_MEM, [l.private + 0x10_000, 0, 0, 0], ResultCode::SUCCESS)?;
    // A VMPL1 vCPU, made by VMPL1.
    let (v1, c1) = (l.private + 0x8000, l.private + 0x9000);
    env.write_vmsa(v1, 21)?;
    client(env).create_vcpu(v1, c1, 21)?;
    let (new, new_ca) = (l.shared[1], l.shared[2]);
    as_vmpl2(env, &l, |env| {
        // Deleting it, or replacing its VMSA, would hand VMPL2 a VMPL1 vCPU's state.
        expect_core(env, DELETE_VCPU, [v1, 0, 0, 0], ResultCode::ERR_INVALID_PARAMETER)?;
        env.write_vmsa(new, 21)?;
        env.write(new + VmsaField::Vmpl.offset() as u64, &[2])?;
        expect_core(env, CREATE_VCPU, [new, new_ca, 21, 0], ResultCode::ERR_INVALID_PARAMETER)?;
        // A VMSA or calling area in VMPL1's page would take it from VMPL1.
        expect_core(env, CREATE_VCPU, [l.private, new_ca, 22, 0], ResultCode::ERR_INVALID_ADDRESS)?;
        expect_core(env, CREATE_VCPU, [new, l.private, 22, 0], ResultCode::ERR_INVALID_ADDRESS)?;
        // Its own vCPU at VMPL2, on pages VMPL1 shared: created and deleted, and the VMSA
        // page comes back to VMPL2.
        client(env).create_vcpu(new, new_ca, 22)?;
        ensure!(!guest_can_write(env, new), "the new VMSA page is still VMPL2's");
        client(env).delete_vcpu(new)?;
        ensure!(guest_can_write(env, new), "the deleted VMSA page did not come back to VMPL2");
        Ok(())
    })?;
    still_vmpl1s(env, l.private, "CREATE_VCPU")?;
    let startup_ca = env.calling_area();
    ensure!(env.select_vcpu(21, c1)?, "the VMPL1 vCPU is gone");
    let served = expect_core(env, abi::protocol::core_call::QUERY_PROTOCOL, [1, 0, 0, 0], ResultCode::SUCCESS);
    ensure!(env.select_vcpu(0, startup_ca)?, "startup vCPU lost");
    served.map(|_| ())
}

/// The attestation, vTPM and OCP buffers of a VMPL2 caller.
pub fn services(env: &mut dyn Env) -> CaseResult {
    use abi::attest::{AttestServicesOp, BufferRecord};
    use zerocopy::IntoBytes;
    let l = vmpl2_vcpu(env)?;
    let f = env.facts();
    let secret = [0xA5u8; 64];
    env.write(l.private, &secret)?;
    let record = |gpa, len| BufferRecord { gpa, len, reserved: 0 };
    as_vmpl2(env, &l, |env| {
        // OCP: READ would write into VMPL1's page, WRITE would read from it (source 0,
        // the log, is readable; the log level is the writable source the suite knows).
        // An SVSM that lets VMPL2 write settings at all must still refuse the page; this
        // one refuses the WRITE itself (below).
        let (got, _) = raw(env, 5, abi::protocol::ocp_call::READ, [0, l.private, 64, 0])?;
        ensure!(got == ResultCode::ERR_INVALID_ADDRESS, "OCP READ into VMPL1's page: {got}");
        let (got, _) = raw(env, 5, abi::protocol::ocp_call::READ, [0, l.work, 64, 0])?;
        ensure!(got == ResultCode::SUCCESS, "OCP READ into a shared page: {got}");
        for index in 0..64u64 {
            let (got, _) = raw(env, 5, abi::protocol::ocp_call::WRITE, [index, l.private, 4, 0])?;
            ensure!(got != ResultCode::SUCCESS, "OCP WRITE of source {index} took its value from VMPL1's page");
        }
        // Settings and the change-event ring are VMPL1's alone (docs/protocols/ocp.md,
        // "Who may"): a good value from VMPL2's own page, and a ring there, are refused.
        env.write(l.work, b"info")?;
        for index in 0..64u64 {
            let (got, _) = raw(env, 5, abi::protocol::ocp_call::WRITE, [index, l.work, 4, 0])?;
            ensure!(got != ResultCode::SUCCESS, "OCP WRITE of source {index} from VMPL2");
        }
        for ring in [l.work, 0] {
            let (got, _) = raw(env, 5, abi::protocol::ocp_call::NOTIFY, [ring, 0, 0, 0])?;
            ensure!(got == ResultCode::ERR_INVALID_REQUEST, "OCP NOTIFY {ring:#x} from VMPL2: {got}");
        }
        // vTPM: the request buffer.
        let (got, regs) = raw(env, 0, abi::protocol::core_call::QUERY_PROTOCOL, [2 << 32 | 1, 0, 0, 0])?;
        if got == ResultCode::SUCCESS && regs.rcx != 0 {
            let (got, _) = raw(env, 2, abi::protocol::vtpm_call::CMD, [l.private, 0, 0, 0])?;
            ensure!(got == ResultCode::ERR_INVALID_ADDRESS, "vTPM request in VMPL1's page: {got}");
        }
        // Attestation: the report would land in VMPL1's page; a nonce read from it.
        if f.attestation {
            env.write(l.work + 0x800, &[0x4E; 64])?;
            let op = AttestServicesOp {
                report: record(l.private, 0x1000),
                nonce: record(l.work + 0x800, 64),
                manifest: record(0, 0),
                certificates: record(0, 0),
            };
            env.write(l.work, op.as_bytes())?;
            let (got, _) = raw(env, 1, abi::protocol::attest_call::ATTEST_SERVICES, [l.work, 0, 0, 0])?;
            ensure!(got == ResultCode::ERR_INVALID_ADDRESS, "attestation report into VMPL1's page: {got}");
            let op = AttestServicesOp { report: record(l.shared[0], 0x1000), nonce: record(l.private, 64), ..op };
            env.write(l.work, op.as_bytes())?;
            let (got, _) = raw(env, 1, abi::protocol::attest_call::ATTEST_SERVICES, [l.work, 0, 0, 0])?;
            ensure!(got == ResultCode::ERR_INVALID_ADDRESS, "attestation nonce from VMPL1's page: {got}");
        }
        Ok(())
    })?;
    let mut after = [0u8; 64];
    env.read(l.private, &mut after)?;
    ensure!(after == secret, "VMPL1's page changed");
    still_vmpl1s(env, l.private, "attestation/vTPM/OCP")
}
