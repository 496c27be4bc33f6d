//! Dispatch of a call to its protocol, and the table of protocols the SVSM serves.
//!
//! A protocol handler receives the decoded [`CallContext`] and returns a [`Reply`]: a
//! status (success or a [`CallError`]) and the output registers it sets. Registers left
//! `None` keep the caller's value (PVALIDATE's RCX "remains unmodified").

pub mod attest;
pub mod core;
pub mod ocp;
pub mod vtpm;

use crate::caller::Caller;
use crate::error::{CallError, CallResult};
use crate::platform::Platform;
use crate::svsm::Svsm;
use crate::vcpu::VcpuIndex;
use abi::protocol::{CallId, ProtocolId};
use abi::result::ResultCode;

/// The argument registers of a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallRegs {
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub r8: u64,
    pub r9: u64,
}

/// A decoded call.
#[derive(Clone, Copy, Debug)]
pub struct CallContext {
    pub vcpu: VcpuIndex,
    /// The calling vCPU's VMPL (from its VMSA) and the most privileged guest VMPL.
    pub caller: Caller,
    pub id: CallId,
    pub regs: CallRegs,
}

impl CallContext {
    /// Guest memory as this call may reach it.
    pub fn view<'a>(&self, pages: &'a crate::pages::PageTracker) -> crate::guest_memory::GuestView<'a> {
        crate::guest_memory::GuestView::new(pages, self.caller)
    }
}

/// The answer to a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: CallResult<()>,
    pub rcx: Option<u64>,
    pub rdx: Option<u64>,
    pub r8: Option<u64>,
    pub r9: Option<u64>,
    /// The call moved the caller's calling area and answered in the old one itself
    /// (REMAP_CA): the request loop must not write there.
    pub calling_area_moved: bool,
}

impl Reply {
    pub const fn ok() -> Self {
        Self { status: Ok(()), rcx: None, rdx: None, r8: None, r9: None, calling_area_moved: false }
    }
    pub const fn err(e: CallError) -> Self {
        Self { status: Err(e), rcx: None, rdx: None, r8: None, r9: None, calling_area_moved: false }
    }
    pub const fn with_rcx(mut self, v: u64) -> Self {
        self.rcx = Some(v);
        self
    }
    pub const fn with_rdx(mut self, v: u64) -> Self {
        self.rdx = Some(v);
        self
    }
    pub const fn with_r8(mut self, v: u64) -> Self {
        self.r8 = Some(v);
        self
    }
    pub const fn with_r9(mut self, v: u64) -> Self {
        self.r9 = Some(v);
        self
    }
    pub fn result(&self) -> ResultCode {
        match &self.status {
            Ok(()) => ResultCode::SUCCESS,
            Err(e) => e.result(),
        }
    }
}

impl From<CallResult<()>> for Reply {
    fn from(status: CallResult<()>) -> Self {
        Self { status, ..Self::ok() }
    }
}

/// A protocol the SVSM serves, with its version range (for QUERY_PROTOCOL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServedProtocol {
    pub id: ProtocolId,
    pub min_version: u32,
    pub max_version: u32,
}

/// Every protocol this SVSM can serve. A protocol is added here and in [`dispatch`]; the
/// vTPM is served only once one is installed ([`Svsm::install_vtpm`]).
pub const SERVED: &[ServedProtocol] = &[
    ServedProtocol { id: ProtocolId::CORE, min_version: 1, max_version: abi::protocol::CORE_PROTOCOL_VERSION },
    ServedProtocol { id: ProtocolId::ATTEST, min_version: 1, max_version: 1 },
    ServedProtocol { id: ProtocolId::VTPM, min_version: 1, max_version: 1 },
    ServedProtocol { id: ProtocolId::OCP, min_version: 1, max_version: 2 },
];

/// Is `protocol` served by this SVSM now?
pub fn serves(svsm: &Svsm, served: &ServedProtocol) -> bool {
    served.id != ProtocolId::VTPM || svsm.vtpm.is_some()
}

/// Route a call to its protocol.
pub fn dispatch<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> Reply {
    match ctx.id.protocol {
        ProtocolId::CORE => core::handle(svsm, p, ctx),
        ProtocolId::ATTEST => attest::handle(svsm, p, ctx),
        ProtocolId::VTPM => vtpm::handle(svsm, p, ctx),
        ProtocolId::OCP => ocp::handle(svsm, p, ctx),
        _ => Reply::err(CallError::UnsupportedProtocol),
    }
}
