//! Section 6.1: SVSM_CORE_REMAP_CA.

use crate::Env;
use crate::check::{CaseResult, client, ensure, expect_core};
use abi::protocol::core_call::{QUERY_PROTOCOL, REMAP_CA};
use abi::result::ResultCode;

pub fn remap(env: &mut dyn Env) -> CaseResult {
    let old = env.calling_area();
    let new = env.facts().scratch + 0x3000;
    env.write(new, &[1])?; // stale garbage: the SVSM must clear it
    client(env).remap_ca(new)?;
    env.set_calling_area(new);
    let mut b = [0xFFu8];
    env.read(old, &mut b)?;
    ensure!(b[0] == 0, "old CALL_PENDING = {}", b[0]);
    env.read(new, &mut b)?;
    ensure!(b[0] == 0, "new CALL_PENDING = {}", b[0]);
    expect_core(env, QUERY_PROTOCOL, [1, 0, 0, 0], ResultCode::SUCCESS)?;
    // The old area is the guest's again: a call through it is not served.
    let r = guest::Client::new(&mut *env, old).issue(guest::Regs {
        rax: u64::from(QUERY_PROTOCOL),
        rcx: 1,
        ..Default::default()
    });
    ensure!(r == Err(guest::CallError::NotExecuted), "a call through the old area was served: {r:?}");
    Ok(())
}

pub fn remap_inside_page(env: &mut dyn Env) -> CaseResult {
    let new = env.facts().scratch + 0x4000 + 0x7F8;
    client(env).remap_ca(new)?;
    env.set_calling_area(new);
    expect_core(env, QUERY_PROTOCOL, [1, 0, 0, 0], ResultCode::SUCCESS)?;
    Ok(())
}

pub fn misaligned(env: &mut dyn Env) -> CaseResult {
    let base = env.facts().scratch + 0x3000;
    for off in [1u64, 4, 7] {
        expect_core(env, REMAP_CA, [base + off, 0, 0, 0], ResultCode::ERR_INVALID_PARAMETER)?;
    }
    Ok(())
}

pub fn bad_address(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    let d = crate::check::discovery(env)?;
    // The secrets page is readable by the guest but the SVSM must not write it on its behalf.
    for gpa in [d.svsm_base, d.svsm_base + d.svsm_size - 8, f.startup_vmsa, f.free_small, f.not_ram, f.secrets_page] {
        expect_core(env, REMAP_CA, [gpa, 0, 0, 0], ResultCode::ERR_INVALID_ADDRESS)?;
    }
    expect_core(env, QUERY_PROTOCOL, [1, 0, 0, 0], ResultCode::SUCCESS)?;
    Ok(())
}
