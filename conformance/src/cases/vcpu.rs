//! Sections 6.3 and 6.4: SVSM_CORE_CREATE_VCPU and SVSM_CORE_DELETE_VCPU.

use crate::Env;
use crate::check::{CaseError, CaseResult, client, ensure, expect_core, guest_can_write, host};
use abi::hw::EFER_SVME;
use abi::protocol::core_call::{CREATE_VCPU, DELETE_VCPU, QUERY_PROTOCOL};
use abi::result::ResultCode;
use abi::vmsa::VmsaField;
use guest::PageSource;

/// A new vCPU's pages: VMSA and calling area in scratch memory, per slot.
fn pages(env: &mut dyn Env, slot: u64) -> (u64, u64) {
    let base = env.facts().scratch + 0x10_000 + slot * 0x2000;
    (base, base + 0x1000)
}

/// A runnable VMSA for `apic` with VMPL, EFER and SEV_FEATURES set as given.
fn write_vmsa(env: &mut dyn Env, gpa: u64, apic: u32, vmpl: u8, efer: u64, features: u64) -> CaseResult {
    env.write_vmsa(gpa, apic)?;
    env.write(gpa + VmsaField::Vmpl.offset() as u64, &[vmpl])?;
    env.write(gpa + VmsaField::Efer.offset() as u64, &efer.to_le_bytes())?;
    env.write(gpa + VmsaField::SevFeatures.offset() as u64, &features.to_le_bytes())?;
    Ok(())
}

/// Create the vCPU of `slot` with APIC ID `apic`.
fn make_vcpu(env: &mut dyn Env, slot: u64, apic: u32) -> Result<(u64, u64), CaseError> {
    let (vmsa, ca) = pages(env, slot);
    env.write_vmsa(vmsa, apic)?;
    client(env).create_vcpu(vmsa, ca, apic)?;
    Ok((vmsa, ca))
}

pub fn create(env: &mut dyn Env) -> CaseResult {
    let (vmsa, ca) = make_vcpu(env, 0, 1)?;
    ensure!(!guest_can_write(env, vmsa), "the guest can still write the new VMSA page");
    let startup_ca = env.calling_area();
    ensure!(env.select_vcpu(1, ca)?, "the new vCPU does not exist");
    let r = expect_core(env, QUERY_PROTOCOL, [1, 0, 0, 0], ResultCode::SUCCESS);
    ensure!(env.select_vcpu(0, startup_ca)?, "startup vCPU lost");
    r?;
    Ok(())
}

pub fn create_alignment(env: &mut dyn Env) -> CaseResult {
    let (vmsa, ca) = pages(env, 0);
    env.write_vmsa(vmsa, 1)?;
    for (v, c) in [(vmsa + 8, ca), (vmsa, ca + 8), (vmsa + 0x800, ca + 0x800)] {
        expect_core(env, CREATE_VCPU, [v, c, 1, 0], ResultCode::ERR_INVALID_PARAMETER)?;
    }
    Ok(())
}

pub fn create_conflicts(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    let d = crate::check::discovery(env)?;
    let (vmsa, ca) = pages(env, 0);
    env.write_vmsa(vmsa, 1)?;
    let startup_ca = env.calling_area() & !0xFFF;
    for (v, c) in [
        (d.svsm_base, ca),
        (vmsa, d.svsm_base + 0x1000),
        (f.startup_vmsa, ca),
        (vmsa, f.startup_vmsa),
        (vmsa, startup_ca),
        (vmsa, vmsa),
        (f.free_small, ca),
        (vmsa, f.not_ram),
    ] {
        expect_core(env, CREATE_VCPU, [v, c, 1, 0], ResultCode::ERR_INVALID_ADDRESS)?;
    }
    // A live vCPU's pages cannot be reused.
    let (v1, c1) = make_vcpu(env, 1, 1)?;
    let (v2, c2) = pages(env, 2);
    env.write_vmsa(v2, 2)?;
    expect_core(env, CREATE_VCPU, [v1, c2, 2, 0], ResultCode::ERR_INVALID_ADDRESS)?;
    expect_core(env, CREATE_VCPU, [v2, c1, 2, 0], ResultCode::ERR_INVALID_ADDRESS)?;
    Ok(())
}

pub fn create_vmsa_checks(env: &mut dyn Env) -> CaseResult {
    let features = env.facts().sev_features;
    let (vmsa, ca) = pages(env, 0);
    for (vmpl, efer, feat, what) in [
        (0u8, 0x500u64, features, "VMPL 0"),
        (4, 0x500, features, "VMPL 4"),
        (1, 0x500, features ^ abi::hw::sev_features::DEBUG_SWAP, "different SEV_FEATURES"),
    ] {
        write_vmsa(env, vmsa, 1, vmpl, efer, feat)?;
        let (r, _) = crate::check::raw(env, 0, CREATE_VCPU, [vmsa, ca, 1, 0])?;
        ensure!(r == ResultCode::ERR_INVALID_PARAMETER, "{what}: {r}");
        ensure!(guest_can_write(env, vmsa), "{what}: the refused VMSA page was not given back");
    }
    Ok(())
}

/// A new VMSA with EFER.SVME = 1 is accepted, as every real caller sends it (rev 0.60 6.3
/// asked for INVALID_PARAMETER; the callers win): Linux arch/x86/coco/sev/core.c
/// `wakeup_cpu_via_vmgexit` ("SVME must be set", `vmsa->efer = EFER_SVME`), edk2
/// UefiCpuPkg/Library/MpInitLib/X64/AmdSev.c `SevSnpCreateSaveArea` (EFER = 0x1000), and
/// COCONUT kernel/src/protocols/core.rs `check_vmsa`, which requires it.
pub fn create_svme_set(env: &mut dyn Env) -> CaseResult {
    let (vmsa, ca) = pages(env, 0);
    env.write_vmsa(vmsa, 1)?;
    let at = vmsa + VmsaField::Efer.offset() as u64;
    let mut efer = [0u8; 8];
    env.read(at, &mut efer)?;
    env.write(at, &(u64::from_le_bytes(efer) | EFER_SVME).to_le_bytes())?;
    client(env).create_vcpu(vmsa, ca, 1)?;
    let startup_ca = env.calling_area();
    ensure!(env.select_vcpu(1, ca)?, "the vCPU created from an SVME = 1 VMSA does not exist");
    let r = expect_core(env, QUERY_PROTOCOL, [1, 0, 0, 0], ResultCode::SUCCESS);
    ensure!(env.select_vcpu(0, startup_ca)?, "startup vCPU lost");
    r?;
    Ok(())
}

pub fn create_duplicate_apic(env: &mut dyn Env) -> CaseResult {
    make_vcpu(env, 0, 1)?;
    let (vmsa, ca) = pages(env, 1);
    env.write_vmsa(vmsa, 2)?;
    // The startup vCPU cannot be replaced (it can never be deleted either, 6.4).
    expect_core(env, CREATE_VCPU, [vmsa, ca, 0, 0], ResultCode::ERR_INVALID_PARAMETER)?;
    // Bits 63:32 of R8 are not part of the 4-byte APIC ID.
    expect_core(env, CREATE_VCPU, [vmsa, ca, 7 << 32, 0], ResultCode::ERR_INVALID_PARAMETER)?;
    Ok(())
}

/// Linux brings an offlined CPU back with CREATE_VCPU(new VMSA, the same calling area, the
/// same APIC ID) and only then DELETE_VCPU(old VMSA): arch/x86/coco/sev/core.c
/// `wakeup_cpu_via_vmgexit` calls `snp_set_vmsa(vmsa, caa, apic_id, true)`, then
/// `snp_cleanup_vmsa(cur_vmsa, apic_id)`. COCONUT swaps the VMSA of that APIC ID's CPU in
/// `core_create_vcpu`. The vCPU keeps serving on the new VMSA; the old one stays out of
/// the guest's hands until it is deleted.
pub fn create_replaces(env: &mut dyn Env) -> CaseResult {
    let (old, ca) = make_vcpu(env, 0, 1)?;
    let (new, _) = pages(env, 1);
    env.write_vmsa(new, 1)?;
    let startup_ca = env.calling_area();
    client(env).create_vcpu(new, ca, 1)?;
    ensure!(!guest_can_write(env, new), "the new VMSA page is still the guest's");
    ensure!(!guest_can_write(env, old), "the replaced VMSA went back before DELETE_VCPU");
    ensure!(env.select_vcpu(1, ca)?, "APIC ID 1 lost its vCPU");
    let served = expect_core(env, QUERY_PROTOCOL, [1, 0, 0, 0], ResultCode::SUCCESS);
    ensure!(env.select_vcpu(0, startup_ca)?, "startup vCPU lost");
    served?;
    // A second replacement before the first one's old VMSA is deleted is refused.
    let (third, _) = pages(env, 2);
    env.write_vmsa(third, 1)?;
    expect_core(env, CREATE_VCPU, [third, ca, 1, 0], ResultCode::ERR_INVALID_REQUEST)?;
    ensure!(guest_can_write(env, third), "the refused VMSA page was not given back");
    // Linux's DELETE_VCPU of the old VMSA: the page comes back, the vCPU keeps running.
    client(env).delete_vcpu(old)?;
    ensure!(guest_can_write(env, old), "the deleted old VMSA was not given back");
    ensure!(env.select_vcpu(1, ca)?, "deleting the old VMSA took the vCPU");
    let served = expect_core(env, QUERY_PROTOCOL, [1, 0, 0, 0], ResultCode::SUCCESS);
    ensure!(env.select_vcpu(0, startup_ca)?, "startup vCPU lost");
    served?;
    expect_core(env, DELETE_VCPU, [old, 0, 0, 0], ResultCode::ERR_INVALID_PARAMETER)?;
    // The vCPU itself goes with its current VMSA.
    client(env).delete_vcpu(new)?;
    ensure!(guest_can_write(env, new), "the deleted VMSA was not given back");
    ensure!(!env.select_vcpu(1, ca)?, "the deleted vCPU still runs");
    Ok(())
}

/// Scratch pages the guest gives away on request.
struct Scratch {
    next: u64,
    end: u64,
}

impl PageSource for Scratch {
    fn take_page(&mut self) -> Option<u64> {
        (self.next < self.end).then(|| {
            self.next += 0x1000;
            self.next - 0x1000
        })
    }
}

pub fn create_needs_memory(env: &mut dyn Env) -> CaseResult {
    let scratch = env.facts().scratch;
    for slot in 0..6u64 {
        let (vmsa, ca) = pages(env, slot);
        env.write_vmsa(vmsa, slot as u32 + 1)?;
        let (r, _) = crate::check::raw(env, 0, CREATE_VCPU, [vmsa, ca, slot + 1, 0])?;
        if r.is_success() {
            continue;
        }
        let Some(needed) = r.memory_needed() else {
            return crate::check::fail(alloc::format!("vCPU {slot}: {r}"));
        };
        ensure!(needed > 0, "asked for 0 pages");
        let mut source = Scratch { next: scratch + 0x40_000, end: scratch + 0x40_000 + 0x10_000 };
        let id = abi::protocol::CallId::new(abi::protocol::ProtocolId::CORE, CREATE_VCPU);
        client(env).call_with_deposit(id, [vmsa, ca, slot + 1, 0], &mut source, scratch + 0x3000)?;
        ensure!(!guest_can_write(env, scratch + 0x40_000), "a deposited page is still the guest's");
        return Ok(());
    }
    Err(CaseError::Skip("the SVSM never ran out of memory for vCPUs"))
}

pub fn delete(env: &mut dyn Env) -> CaseResult {
    let (vmsa, ca) = make_vcpu(env, 0, 1)?;
    client(env).delete_vcpu(vmsa)?;
    ensure!(guest_can_write(env, vmsa), "the deleted VMSA page was not given back");
    let startup_ca = env.calling_area();
    let exists = env.select_vcpu(1, ca)?;
    if exists {
        env.select_vcpu(0, startup_ca)?;
    }
    ensure!(!exists, "the deleted vCPU still runs");
    // Its pages can make a vCPU again.
    make_vcpu(env, 0, 1)?;
    Ok(())
}

pub fn delete_refusals(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    expect_core(env, DELETE_VCPU, [f.startup_vmsa, 0, 0, 0], ResultCode::ERR_INVALID_PARAMETER)?;
    expect_core(env, DELETE_VCPU, [f.scratch, 0, 0, 0], ResultCode::ERR_INVALID_PARAMETER)?;
    let (vmsa, ca) = make_vcpu(env, 0, 1)?;
    expect_core(env, DELETE_VCPU, [vmsa + 8, 0, 0, 0], ResultCode::ERR_INVALID_PARAMETER)?;
    let startup_ca = env.calling_area();
    ensure!(env.select_vcpu(1, ca)?, "new vCPU missing");
    let r = expect_core(env, DELETE_VCPU, [vmsa, 0, 0, 0], ResultCode::ERR_INVALID_PARAMETER);
    env.select_vcpu(0, startup_ca)?;
    r?;
    Ok(())
}

pub fn delete_in_use(env: &mut dyn Env) -> CaseResult {
    let (vmsa, _) = make_vcpu(env, 0, 1)?;
    host(env)?.set_running(vmsa, true);
    let r = crate::check::raw(env, 0, DELETE_VCPU, [vmsa, 0, 0, 0]);
    host(env)?.set_running(vmsa, false);
    let (r, _) = r?;
    ensure!(r == ResultCode::CORE_VCPU_IN_USE, "deleting a running vCPU: {r}");
    client(env).delete_vcpu(vmsa)?;
    Ok(())
}
