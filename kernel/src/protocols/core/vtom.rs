//! SVSM_CORE_CONFIGURE_VTOM (spec 58019 section 6.8), query and configure.
//!
//! Refusals, in this order: reserved bits or a vTOM value with "disable"
//! (INVALID_PARAMETER); a platform without vTOM support or more than one live vCPU
//! (INVALID_REQUEST); a value that is misaligned or outside the platform's range
//! (INVALID_ADDRESS). On success the caller's VMSA gets the new vTOM, the VTOM bit of
//! SEV_FEATURES, and CR3/RIP/RSP when asked.

use crate::addr::Gpa;
use crate::error::{AddressConflict, CallError, CallResult};
use crate::platform::Platform;
use crate::protocols::{CallContext, Reply};
use crate::svsm::Svsm;
use abi::core_protocol::vtom;
use abi::hw::sev_features;
use abi::vmsa::VmsaField;

pub fn configure_vtom<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> Reply {
    let rcx = ctx.regs.rcx;
    if rcx & vtom::QUERY != 0 {
        return query(p, rcx);
    }
    configure(svsm, p, ctx).into()
}

fn query<P: Platform + ?Sized>(p: &P, rcx: u64) -> Reply {
    if rcx != vtom::QUERY {
        return Reply::err(CallError::InvalidParameter("vTOM query sets bits 63:1"));
    }
    match p.vtom_limits() {
        None => Reply::ok().with_rcx(0),
        Some(l) => Reply::ok()
            .with_rcx(vtom::RESULT_SUPPORTED | (u64::from(l.align_log2) << vtom::RESULT_ALIGN_SHIFT))
            .with_rdx(l.min)
            .with_r8(l.max),
    }
}

fn configure<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> CallResult<()> {
    let rcx = ctx.regs.rcx;
    if rcx & vtom::CONFIGURE_RESERVED != 0 {
        return Err(CallError::InvalidParameter("vTOM configure sets bits 11:5"));
    }
    let enable = rcx & vtom::ENABLE != 0;
    let value = rcx & vtom::VALUE_MASK;
    if !enable && value != 0 {
        return Err(CallError::InvalidParameter("vTOM value given while disabling vTOM"));
    }
    let limits = p.vtom_limits().ok_or(CallError::InvalidRequest("this platform cannot reconfigure vTOM"))?;
    if svsm.vcpus.count() > 1 {
        return Err(CallError::InvalidRequest("vTOM can only change while one vCPU exists"));
    }
    if enable {
        let align = 1u64.checked_shl(u32::from(limits.align_log2)).unwrap_or(0);
        let aligned = align != 0 && value.is_multiple_of(align);
        if !aligned || value < limits.min || value > limits.max {
            return Err(CallError::address(Gpa(value), AddressConflict::NotRam));
        }
    }
    let vmsa = svsm.vcpus.get(ctx.vcpu).map(|v| v.vmsa).ok_or(CallError::InvalidRequest("caller vanished"))?;
    let features = p.vmsa_read(vmsa, VmsaField::SevFeatures)?;
    let features = if enable { features | sev_features::VTOM } else { features & !sev_features::VTOM };
    p.vmsa_write(vmsa, VmsaField::VirtualTom, value)?;
    p.vmsa_write(vmsa, VmsaField::SevFeatures, features)?;
    for (bit, field, v) in [
        (vtom::SET_CR3, VmsaField::Cr3, ctx.regs.rdx),
        (vtom::SET_RIP, VmsaField::Rip, ctx.regs.r8),
        (vtom::SET_RSP, VmsaField::Rsp, ctx.regs.r9),
    ] {
        if rcx & bit != 0 {
            p.vmsa_write(vmsa, field, v)?;
        }
    }
    Ok(())
}
