//! Sections 6.7 and 6.8: SVSM_CORE_QUERY_PROTOCOL and SVSM_CORE_CONFIGURE_VTOM.

use crate::Env;
use crate::check::{CaseError, CaseResult, client, ensure, expect_core, host};
use abi::core_protocol::vtom;
use abi::protocol::ProtocolId;
use abi::protocol::core_call::{CONFIGURE_VTOM, QUERY_PROTOCOL};
use abi::result::ResultCode;
use abi::vmsa::VmsaField;

pub fn query_protocol(env: &mut dyn Env) -> CaseResult {
    let core = client(env).query_protocol(ProtocolId::CORE, 1)?;
    ensure!(core == Some((1, 1)), "core v1: {core:?}");
    let attest = client(env).query_protocol(ProtocolId::ATTEST, 1)?;
    ensure!(attest == Some((1, 1)), "attestation v1: {attest:?}");
    let ocp = client(env).query_protocol(ProtocolId::OCP, 1)?;
    ensure!(ocp == Some((2, 1)), "OCP versions 1 to 2: {ocp:?}");
    for (protocol, version) in [
        (ProtocolId::CORE, 0),
        (ProtocolId::CORE, 2),
        (ProtocolId::ATTEST, 2),
        (ProtocolId(0x1234), 1),
        (ProtocolId(u32::MAX), 1),
    ] {
        let r = client(env).query_protocol(protocol, version)?;
        ensure!(r.is_none(), "protocol {} v{version}: {r:?}", protocol.0);
    }
    // Never an error, never a memory request.
    let regs = expect_core(env, QUERY_PROTOCOL, [u64::MAX, 0, 0, 0], ResultCode::SUCCESS)?;
    ensure!(regs.rcx == 0, "RCX = {:#x}", regs.rcx);
    Ok(())
}

fn limits(env: &mut dyn Env) -> Result<(u8, u64, u64), CaseError> {
    client(env).vtom_query()?.ok_or(CaseError::Skip("the platform does not support vTOM"))
}

pub fn vtom_query(env: &mut dyn Env) -> CaseResult {
    let regs = expect_core(env, CONFIGURE_VTOM, [vtom::QUERY, 0, 0, 0], ResultCode::SUCCESS)?;
    ensure!(
        regs.rcx & 1 == 0 && regs.rcx >> 20 == 0 && regs.rcx & 0xFFC == 0,
        "query RCX {:#x} sets must-be-zero bits",
        regs.rcx
    );
    for bad in [vtom::QUERY | 2, vtom::QUERY | 1 << 63] {
        expect_core(env, CONFIGURE_VTOM, [bad, 0, 0, 0], ResultCode::ERR_INVALID_PARAMETER)?;
    }
    let (align, min, max) = limits(env)?;
    ensure!(align >= 12 && min <= max, "align {align}, range {min:#x}..{max:#x}");
    Ok(())
}

pub fn vtom_configure(env: &mut dyn Env) -> CaseResult {
    let (align, min, _) = limits(env)?;
    let value = min.next_multiple_of(1 << align);
    let rcx = value | vtom::ENABLE | vtom::SET_CR3 | vtom::SET_RIP | vtom::SET_RSP;
    expect_core(env, CONFIGURE_VTOM, [rcx, 0x7000, 0xFFFF_8000_0000_1000, 0x9000], ResultCode::SUCCESS)?;
    let vmsa = env.facts().startup_vmsa;
    let h = host(env)?;
    ensure!(h.vmsa_field(vmsa, VmsaField::VirtualTom) == value, "VMSA vTOM not set");
    ensure!(h.vmsa_field(vmsa, VmsaField::SevFeatures) & abi::hw::sev_features::VTOM != 0, "SEV_FEATURES.VTOM not set");
    ensure!(h.vmsa_field(vmsa, VmsaField::Cr3) == 0x7000, "CR3 not set");
    ensure!(h.vmsa_field(vmsa, VmsaField::Rip) == 0xFFFF_8000_0000_1000, "RIP not set");
    ensure!(h.vmsa_field(vmsa, VmsaField::Rsp) == 0x9000, "RSP not set");
    expect_core(env, CONFIGURE_VTOM, [0, 0, 0, 0], ResultCode::SUCCESS)?;
    let h = host(env)?;
    ensure!(h.vmsa_field(vmsa, VmsaField::VirtualTom) == 0, "vTOM not disabled");
    Ok(())
}

pub fn vtom_refusals(env: &mut dyn Env) -> CaseResult {
    let (align, min, max) = limits(env)?;
    let good = min.next_multiple_of(1 << align);
    for rcx in [good | vtom::ENABLE | 0x20, good | vtom::ENABLE | 0x800, good] {
        expect_core(env, CONFIGURE_VTOM, [rcx, 0, 0, 0], ResultCode::ERR_INVALID_PARAMETER)?;
    }
    if align > 12 {
        expect_core(env, CONFIGURE_VTOM, [(good + 0x1000) | vtom::ENABLE, 0, 0, 0], ResultCode::ERR_INVALID_ADDRESS)?;
    }
    if min >= 1 << align {
        expect_core(
            env,
            CONFIGURE_VTOM,
            [(min - (1 << align)) | vtom::ENABLE, 0, 0, 0],
            ResultCode::ERR_INVALID_ADDRESS,
        )?;
    }
    if let Some(above) = max.checked_add(1 << align) {
        expect_core(
            env,
            CONFIGURE_VTOM,
            [(above & vtom::VALUE_MASK) | vtom::ENABLE, 0, 0, 0],
            ResultCode::ERR_INVALID_ADDRESS,
        )?;
    }
    // With a second vCPU, vTOM can no longer change.
    let base = env.facts().scratch + 0x10_000;
    env.write_vmsa(base, 1)?;
    client(env).create_vcpu(base, base + 0x1000, 1)?;
    expect_core(env, CONFIGURE_VTOM, [good | vtom::ENABLE, 0, 0, 0], ResultCode::ERR_INVALID_REQUEST)?;
    Ok(())
}
