//! Errors of a call, and their one exhaustive mapping to the spec's result codes.
//!
//! Every failure a guest or host can provoke is a [`CallError`]; [`CallError::result`]
//! turns it into the RAX value. The match has no catch-all arm, so a new variant must be
//! mapped on purpose (house style 5). The variants carry context for the log.

use crate::addr::Gpa;
use crate::platform::{HwError, MemoryFault};
use abi::result::ResultCode;

/// Why a guest-supplied address was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressConflict {
    /// Outside the guest's RAM.
    NotRam,
    /// Inside the SVSM's own region.
    SvsmImage,
    /// A page the guest deposited with the SVSM.
    Deposited,
    /// The VMSA of a vCPU.
    Vmsa,
    /// A vCPU's calling area.
    CallingArea,
    /// Not validated, so the SVSM must not touch it.
    NotValidated,
    /// The access faulted although the checks passed (the host took the page away).
    Fault,
    /// The host reassigned a page the guest had validated.
    Reassigned,
    /// The page holds the call's own parameter list.
    ParameterList,
    /// The secrets page, which the SVSM does not write for the guest.
    Secrets,
    /// A service process maps the page (OPEN_PHYSMEM): it cannot be invalidated, taken by
    /// the SVSM or become a VMSA or calling area until the mapping is gone.
    MappedByService,
    /// The caller's VMPL may not access the page as the call needs (a less privileged
    /// VMPL naming memory of a more privileged one).
    NotCallers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallError {
    UnsupportedProtocol,
    UnsupportedCall,
    /// SVSM_CALL_PENDING held a reserved value.
    InvalidFormat(u8),
    /// A parameter failed a check of the spec; the text names the check.
    InvalidParameter(&'static str),
    /// A gpa is unusable for this call.
    InvalidAddress {
        gpa: Gpa,
        why: AddressConflict,
    },
    /// The request is valid but cannot be served now or here.
    InvalidRequest(&'static str),
    /// The SVSM's heap cannot hold what the call needs now (answered as
    /// `SVSM_ERR_INVALID_REQUEST`, "cannot be served now": not BUSY, which Linux retries
    /// forever, and never a panic).
    OutOfMemory,
    /// The call did part of its work; the guest calls again.
    Incomplete,
    /// The SVSM needs this many more pages deposited.
    NeedMemory(u32),
    /// PVALIDATE or RMPADJUST failed in hardware.
    Hardware {
        gpa: Gpa,
        error: HwError,
    },
    /// PVALIDATE reported "no change" and the entry did not ask to ignore it.
    NoChange {
        gpa: Gpa,
    },
    /// DELETE_VCPU: the VMSA is running.
    VcpuInUse,
    /// The PSP gave no attestation report (spec 7.1: 0x8000_1000).
    AttestationFailed(&'static str),
    /// OCP: the log bytes asked for were overwritten; `oldest` is still held.
    LogLost {
        oldest: u64,
    },
    /// OCP version 2: the source is not a fixed size of at most 8 bytes.
    NotRegisterSized,
}

impl CallError {
    /// The RAX value for this error (spec 58019 table 4 and sections 6-7).
    pub fn result(&self) -> ResultCode {
        match self {
            Self::UnsupportedProtocol => ResultCode::ERR_UNSUPPORTED_PROTOCOL,
            Self::UnsupportedCall => ResultCode::ERR_UNSUPPORTED_CALL,
            Self::InvalidFormat(_) => ResultCode::ERR_INVALID_FORMAT,
            Self::InvalidParameter(_) => ResultCode::ERR_INVALID_PARAMETER,
            Self::InvalidAddress { .. } => ResultCode::ERR_INVALID_ADDRESS,
            Self::InvalidRequest(_) | Self::OutOfMemory => ResultCode::ERR_INVALID_REQUEST,
            Self::Incomplete => ResultCode::ERR_INCOMPLETE,
            Self::NeedMemory(pages) => ResultCode::more_memory(*pages),
            Self::Hardware { error: HwError::Rc(rc), .. } if *rc <= 0xF => ResultCode::core_hw_fail(*rc),
            Self::Hardware { error: HwError::Rc(_), .. } => ResultCode::CORE_HW_UNKNOWN,
            // A faulting instruction means the host pulled the page: the address is unusable.
            Self::Hardware { error: HwError::Fault, .. } => ResultCode::ERR_INVALID_ADDRESS,
            // As every call that finds the heap full (docs/protocols/core.md).
            Self::Hardware { error: HwError::NoMemory, .. } => ResultCode::ERR_INVALID_REQUEST,
            Self::NoChange { .. } => ResultCode::CORE_PVALIDATE_NO_CHANGE,
            Self::VcpuInUse => ResultCode::CORE_VCPU_IN_USE,
            Self::AttestationFailed(_) => ResultCode::ATTEST_REPORT_FAILED,
            Self::LogLost { .. } => ResultCode(abi::ocp::result::DATA_LOST),
            Self::NotRegisterSized => ResultCode(abi::ocp::result::NOT_REGISTER_SIZED),
        }
    }

    pub const fn address(gpa: Gpa, why: AddressConflict) -> Self {
        Self::InvalidAddress { gpa, why }
    }
}

impl From<MemoryFault> for CallError {
    fn from(f: MemoryFault) -> Self {
        Self::InvalidAddress { gpa: f.gpa, why: AddressConflict::Fault }
    }
}

pub type CallResult<T> = Result<T, CallError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_codes_map_into_0x8000_10xx() {
        let g = Gpa(0);
        assert_eq!(CallError::Hardware { gpa: g, error: HwError::Rc(6) }.result().0, 0x8000_1006);
        assert_eq!(CallError::Hardware { gpa: g, error: HwError::Rc(0xF) }.result().0, 0x8000_100F);
        assert_eq!(CallError::Hardware { gpa: g, error: HwError::Rc(0x10) }.result().0, 0x8000_1011);
        assert_eq!(CallError::Hardware { gpa: g, error: HwError::Fault }.result(), ResultCode::ERR_INVALID_ADDRESS);
        let no_memory = CallError::Hardware { gpa: g, error: HwError::NoMemory }.result();
        assert_eq!(no_memory, ResultCode::ERR_INVALID_REQUEST, "a full heap, as everywhere else");
        assert_eq!(CallError::NoChange { gpa: g }.result().0, 0x8000_1010);
        assert_eq!(CallError::VcpuInUse.result().0, 0x8000_1003);
        assert_eq!(CallError::NeedMemory(4).result().0, 0x4000_0004);
    }
}
