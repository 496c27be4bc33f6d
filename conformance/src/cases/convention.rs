//! Sections 3-5: discovery, memory isolation, the calling convention.

use crate::Env;
use crate::check::{CaseResult, client, discovery, ensure, expect_core, host, raw};
use abi::protocol::{CORE_PROTOCOL_VERSION, core_call};
use abi::result::ResultCode;
use guest::{CallError, Regs};

const QUERY_CORE: [u64; 4] = [1, 0, 0, 0];

fn secrets(env: &mut dyn Env) -> Result<[u8; 4096], crate::CaseError> {
    let mut page = [0u8; 4096];
    let gpa = env.facts().secrets_page;
    env.read(gpa, &mut page)?;
    Ok(page)
}

pub fn secrets_fields(env: &mut dyn Env) -> CaseResult {
    let d = discovery(env)?;
    ensure!(d.svsm_base % 4096 == 0 && d.svsm_size % 4096 == 0, "base/size not 4 KiB multiples: {d:x?}");
    ensure!(d.calling_area == env.calling_area(), "SVSM_CAA {:#x} is not the calling area", d.calling_area);
    ensure!(d.max_version == CORE_PROTOCOL_VERSION, "SVSM_MAX_VERSION is {}", d.max_version);
    ensure!((1..=3).contains(&d.guest_vmpl), "SVSM_GUEST_VMPL is {}", d.guest_vmpl);
    Ok(())
}

pub fn vmpck0_erased(env: &mut dyn Env) -> CaseResult {
    let page = secrets(env)?;
    ensure!(page[0x20..0x40].iter().all(|b| *b == 0), "VMPCK0 still present");
    ensure!(page[0x40..0x60].iter().any(|b| *b != 0), "VMPCK1 was erased too");
    Ok(())
}

pub fn svsm_memory_private(env: &mut dyn Env) -> CaseResult {
    let d = discovery(env)?;
    let mut b = [0u8; 8];
    ensure!(env.read(d.svsm_base, &mut b).is_err(), "the guest read the SVSM's first page");
    ensure!(env.write(d.svsm_base + d.svsm_size - 8, &b).is_err(), "the guest wrote the SVSM's last page");
    Ok(())
}

pub fn call_completes(env: &mut dyn Env) -> CaseResult {
    let out = client(env).issue(Regs { rax: u64::from(core_call::QUERY_PROTOCOL), rcx: 1, ..Regs::default() });
    let out = out?;
    ensure!(out.rax == 0, "RAX = {:#x}", out.rax);
    let mut pending = [0xFFu8];
    let ca = env.calling_area();
    env.read(ca, &mut pending)?;
    ensure!(pending[0] == 0, "CALL_PENDING is {} after the call", pending[0]);
    Ok(())
}

pub fn result_32_bit(env: &mut dyn Env) -> CaseResult {
    let (_, regs) = raw(env, 0x77, 0, [0; 4])?;
    ensure!(regs.rax == u64::from(ResultCode::ERR_UNSUPPORTED_PROTOCOL.0), "RAX = {:#x}", regs.rax);
    Ok(())
}

pub fn unsupported_protocol(env: &mut dyn Env) -> CaseResult {
    for protocol in [3u32, 4, 0x1234, u32::MAX] {
        let (r, _) = raw(env, protocol, 0, [0; 4])?;
        ensure!(r == ResultCode::ERR_UNSUPPORTED_PROTOCOL, "protocol {protocol:#x}: {r}");
    }
    Ok(())
}

pub fn unsupported_call(env: &mut dyn Env) -> CaseResult {
    for call in [8u32, 0x100, u32::MAX] {
        expect_core(env, call, [0; 4], ResultCode::ERR_UNSUPPORTED_CALL)?;
    }
    Ok(())
}

pub fn invalid_format(env: &mut dyn Env) -> CaseResult {
    let ca = env.calling_area();
    env.write(ca, &[2])?;
    let mut regs = Regs { rax: u64::from(core_call::QUERY_PROTOCOL), rcx: 1, ..Regs::default() };
    env.request_svsm(&mut regs);
    let before = env.exchange_u8(ca, 0)?;
    ensure!(before == 0, "the SVSM did not complete the call (CALL_PENDING = {before})");
    ensure!(ResultCode::from_rax(regs.rax) == ResultCode::ERR_INVALID_FORMAT, "RAX = {:#x}", regs.rax);
    expect_core(env, core_call::QUERY_PROTOCOL, QUERY_CORE, ResultCode::SUCCESS)?;
    Ok(())
}

pub fn host_drops_call(env: &mut dyn Env) -> CaseResult {
    host(env)?.drop_next_request();
    let r = client(env).issue(Regs { rax: u64::from(core_call::QUERY_PROTOCOL), rcx: 1, ..Regs::default() });
    ensure!(r == Err(CallError::NotExecuted), "dropped call reported as {r:?}");
    expect_core(env, core_call::QUERY_PROTOCOL, QUERY_CORE, ResultCode::SUCCESS)?;
    Ok(())
}

pub fn spurious_entry(env: &mut dyn Env) -> CaseResult {
    // A completed call leaves RAX = 0 and CALL_PENDING = 0; a spurious entry must keep both.
    expect_core(env, core_call::QUERY_PROTOCOL, QUERY_CORE, ResultCode::SUCCESS)?;
    let rax = host(env)?.enter_without_request();
    ensure!(rax == 0, "a spurious entry changed RAX to {rax:#x}");
    let mut pending = [0u8];
    let ca = env.calling_area();
    env.read(ca, &mut pending)?;
    ensure!(pending[0] == 0, "CALL_PENDING = {}", pending[0]);
    expect_core(env, core_call::QUERY_PROTOCOL, QUERY_CORE, ResultCode::SUCCESS)?;
    Ok(())
}

pub fn wrong_exit_code(env: &mut dyn Env) -> CaseResult {
    host(env)?.set_exit_code(Some(0x7B));
    let r = client(env).issue(Regs { rax: u64::from(core_call::QUERY_PROTOCOL), rcx: 1, ..Regs::default() });
    host(env)?.set_exit_code(None);
    ensure!(r == Err(CallError::NotExecuted), "call under a wrong exit code reported as {r:?}");
    expect_core(env, core_call::QUERY_PROTOCOL, QUERY_CORE, ResultCode::SUCCESS)?;
    Ok(())
}
