//! Small helpers the cases share: raw calls, expectations, list writing.

use crate::{Env, HostControl};
use abi::protocol::{CallId, ProtocolId};
use abi::result::ResultCode;
use alloc::format;
use alloc::string::String;
use guest::{CallError, Client, Regs};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaseError {
    Fail(String),
    Skip(&'static str),
}

impl From<CallError> for CaseError {
    fn from(e: CallError) -> Self {
        Self::Fail(format!("call failed: {e:?}"))
    }
}

impl From<guest::GuestFault> for CaseError {
    fn from(e: guest::GuestFault) -> Self {
        Self::Fail(format!("guest memory fault at {:#x}", e.gpa))
    }
}

pub type CaseResult = Result<(), CaseError>;

pub fn fail<T>(msg: String) -> Result<T, CaseError> {
    Err(CaseError::Fail(msg))
}

/// `ensure!(cond, "format", args)`: fail the case with the message unless `cond`.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return $crate::check::fail(alloc::format!($($arg)*));
        }
    };
}
pub(crate) use ensure;

/// A client on the selected vCPU.
pub fn client(env: &mut dyn Env) -> Client<&mut dyn Env> {
    let ca = env.calling_area();
    Client::new(env, ca)
}

/// One pass through the gate (no retries); returns the result and output registers.
pub fn raw(env: &mut dyn Env, protocol: u32, call: u32, args: [u64; 4]) -> Result<(ResultCode, Regs), CaseError> {
    let id = CallId::new(ProtocolId(protocol), call);
    let regs = Regs { rax: id.to_rax(), rcx: args[0], rdx: args[1], r8: args[2], r9: args[3] };
    let out = client(env).issue(regs)?;
    Ok((ResultCode::from_rax(out.rax), out))
}

/// A core call that must answer `expected` on its first pass.
pub fn expect_core(env: &mut dyn Env, call: u32, args: [u64; 4], expected: ResultCode) -> Result<Regs, CaseError> {
    let (got, regs) = raw(env, 0, call, args)?;
    ensure!(got == expected, "core call {call} {args:#x?}: expected {expected}, got {got}");
    Ok(regs)
}

/// Write a list (header with `next`, then entries) at `gpa`.
pub fn write_list(env: &mut dyn Env, gpa: u64, count: u16, next: u16, entries: &[u64]) -> CaseResult {
    let mut header = [0u8; 8];
    header[..2].copy_from_slice(&count.to_le_bytes());
    header[2..4].copy_from_slice(&next.to_le_bytes());
    env.write(gpa, &header)?;
    for (i, e) in entries.iter().enumerate() {
        env.write(gpa + 8 + 8 * i as u64, &e.to_le_bytes())?;
    }
    Ok(())
}

/// The next-entry index the SVSM wrote back.
pub fn list_next(env: &mut dyn Env, gpa: u64) -> Result<u16, CaseError> {
    let mut b = [0u8; 2];
    env.read(gpa + 2, &mut b)?;
    Ok(u16::from_le_bytes(b))
}

/// Can the guest write to `gpa` (is it validated and the guest's)?
pub fn guest_can_write(env: &mut dyn Env, gpa: u64) -> bool {
    env.write(gpa, &[0x5A]).is_ok()
}

/// The host, or skip the case.
pub fn host(env: &mut dyn Env) -> Result<&mut dyn HostControl, CaseError> {
    env.host().ok_or(CaseError::Skip("needs control of the host"))
}

/// What the secrets page says about the SVSM; fails the case if it advertises none.
pub fn discovery(env: &mut dyn Env) -> Result<guest::discovery::Discovery, CaseError> {
    let mut page = [0u8; 4096];
    let gpa = env.facts().secrets_page;
    env.read(gpa, &mut page)?;
    guest::discovery::Discovery::from_secrets_page(&page)
        .ok_or(CaseError::Fail(String::from("SVSM_SIZE is 0: no SVSM advertised")))
}
