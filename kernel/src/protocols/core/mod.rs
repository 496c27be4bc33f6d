//! The core protocol, protocol 0 (spec 58019 section 6): all eight calls.
//!
//! Each call decodes and checks its registers and guest structures before it changes any
//! state (parse, then act). Decisions the spec leaves open are recorded in
//! `docs/protocols/core.md`.

mod list;
mod memory;
mod pvalidate;
pub(crate) mod vcpu;
mod vtom;

use super::{CallContext, Reply, SERVED, serves};
use crate::addr::{Gpa, PageRange};
use crate::error::{AddressConflict, CallError};
use crate::pages::PageRole;
use crate::platform::Platform;
use crate::svsm::Svsm;
use abi::calling_area::CALL_PENDING_NONE;
use abi::protocol::{ProtocolId, core_call, query_protocol_result};

pub fn handle<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> Reply {
    match ctx.id.call {
        core_call::REMAP_CA => match remap_ca(svsm, p, ctx) {
            Ok(moved) => Reply { calling_area_moved: moved, ..Reply::ok() },
            Err(e) => Reply::err(e),
        },
        core_call::PVALIDATE => pvalidate::pvalidate(svsm, p, ctx),
        core_call::CREATE_VCPU => vcpu::create_vcpu(svsm, p, ctx).into(),
        core_call::DELETE_VCPU => vcpu::delete_vcpu(svsm, p, ctx).into(),
        core_call::DEPOSIT_MEM => memory::deposit(svsm, p, ctx),
        core_call::WITHDRAW_MEM => memory::withdraw(svsm, p, ctx),
        core_call::QUERY_PROTOCOL => query_protocol(svsm, ctx),
        core_call::CONFIGURE_VTOM => vtom::configure_vtom(svsm, p, ctx),
        _ => Reply::err(CallError::UnsupportedCall),
    }
}

/// Section 6.7: RCX = protocol << 32 | version in; max << 32 | min out, or 0. Always
/// succeeds and never asks for memory.
fn query_protocol(svsm: &Svsm, ctx: &CallContext) -> Reply {
    // Both halves are 32 bits wide: the conversions cannot fail.
    let protocol = ProtocolId(u32::try_from(ctx.regs.rcx >> 32).unwrap_or(u32::MAX));
    let version = u32::try_from(ctx.regs.rcx & 0xFFFF_FFFF).unwrap_or(u32::MAX);
    let answer = SERVED
        .iter()
        .find(|s| s.id == protocol && (s.min_version..=s.max_version).contains(&version) && serves(svsm, s))
        .map_or(0, |s| query_protocol_result(s.max_version, s.min_version));
    Reply::ok().with_rcx(answer)
}

/// Section 6.1: move the calling vCPU's calling area. The new one gets CALL_PENDING = 0
/// so a spurious host entry cannot look like a call. The old one's CALL_PENDING is cleared
/// here too (where Linux looks for the answer: it switches areas only once the call
/// returned), while the page is still the caller's calling area: once its role is gone,
/// another vCPU may deposit it or make it a VMSA, and the SVSM must never write it again.
/// The reply says so (`calling_area_moved`), and the request loop does not write the old
/// one. `Ok(true)` if the area moved.
fn remap_ca<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> Result<bool, CallError> {
    let new = Gpa(ctx.regs.rcx);
    if !new.is_aligned(8) {
        return Err(CallError::InvalidParameter("calling area gpa is not 8-byte aligned"));
    }
    let page = new.page();
    let range = PageRange::new(page, 1).ok_or(CallError::address(new, AddressConflict::NotRam))?;
    // The page's lock from check to record: a deposit on another vCPU cannot take the page
    // in between and have the SVSM use a pool page as a calling area.
    let mut held = svsm.pages.lock(page, page);
    held.check_param(range, true).map_err(|(pg, why)| CallError::address(pg.gpa(), why))?;
    held.check_unmapped(range).map_err(|(pg, why)| CallError::address(pg.gpa(), why))?;
    // The SVSM writes the area for the caller from now on: it must be the caller's to write.
    ctx.caller.check(p, range, crate::caller::Access::Write)?;
    // One calling area per page: another vCPU's area here would let two vCPUs' calls
    // collide.
    match held.role(page) {
        Some(PageRole::CallingArea(owner)) if owner != ctx.vcpu => {
            return Err(CallError::address(new, AddressConflict::CallingArea));
        }
        _ => {}
    }
    // Only the caller moves its own calling area, and it is in this call: this stays its
    // area until the update below.
    let Some(old) = svsm.vcpus.get(ctx.vcpu).map(|v| v.calling_area) else {
        // The caller is registered: the request loop found it. Only an SVSM bug gets here.
        return Err(CallError::InvalidRequest("caller vanished"));
    };
    p.write(new, &[CALL_PENDING_NONE])?;
    if old != new {
        // The old page is still this vCPU's calling area: no other call can have it yet.
        p.write(old, &[CALL_PENDING_NONE])?;
    }
    svsm.vcpus.update(ctx.vcpu, |v| v.calling_area = new);
    let old_page = old.page();
    if old_page != page {
        svsm.pages.clear_role(old_page);
        // The old area's room was just freed, so this cannot fail.
        if svsm.pages.set_role(page, PageRole::CallingArea(ctx.vcpu)).is_err() {
            crate::log!(p, Error, "no room to record the calling area at {:#x}", page.raw());
        }
    }
    if ctx.vcpu == crate::vcpu::VcpuIndex::STARTUP {
        svsm.mem_flag_written.store(crate::svsm::MEM_FLAG_UNKNOWN, core::sync::atomic::Ordering::Release);
    }
    Ok(old != new)
}
