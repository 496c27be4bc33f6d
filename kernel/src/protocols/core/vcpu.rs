//! SVSM_CORE_CREATE_VCPU and SVSM_CORE_DELETE_VCPU (spec 58019 sections 6.3 and 6.4).
//!
//! Creation checks every address before touching anything, reserves the SVSM pages the
//! new vCPU needs (asking for a deposit if the pool is short), revokes the guest's access
//! to the VMSA page, checks the VMSA from a copy taken after the revocation (so the guest
//! cannot change it between check and use), and only then makes it a VMSA. A failed check
//! gives the page back as it was.

use super::memory::grant;
use crate::addr::{Gpa, PageAddr, PageRange, PageSize};
use crate::error::{AddressConflict, CallError, CallResult};
use crate::pages::PageRole;
use crate::platform::{HwError, Platform};
use crate::protocols::CallContext;
use crate::svsm::{Svsm, VCPU_CONTEXT_PAGES};
use crate::vcpu::{Vcpu, VcpuIndex};
use abi::calling_area::CALL_PENDING_NONE;
use abi::hw::EFER_SVME;
use abi::hw::rc::FAIL_INUSE;
use abi::hw::rmpadjust::PERM_NONE;
use abi::vmsa::VmsaField;

fn page_param(value: u64, what: &'static str) -> CallResult<PageAddr> {
    PageAddr::new(value).ok_or(CallError::InvalidParameter(what))
}

fn check_target(svsm: &Svsm, page: PageAddr) -> CallResult<()> {
    let range = PageRange::new(page, 1).ok_or(CallError::address(page.gpa(), AddressConflict::NotRam))?;
    svsm.pages.check_target(range).map_err(|(pg, why)| CallError::address(pg.gpa(), why))?;
    if !svsm.pages.is_validated(page) {
        return Err(CallError::address(page.gpa(), AddressConflict::NotValidated));
    }
    Ok(())
}

pub fn create_vcpu<P: Platform + ?Sized>(svsm: &mut Svsm, p: &mut P, ctx: &CallContext) -> CallResult<()> {
    // Parse and check.
    let vmsa = page_param(ctx.regs.rcx, "VMSA gpa is not 4 KiB aligned")?;
    let ca = page_param(ctx.regs.rdx, "calling area gpa is not 4 KiB aligned")?;
    // R8 is a 4-byte register parameter: bits 63:32 are not part of it.
    let apic_id = ctx.regs.r8 as u32;
    if vmsa == ca {
        return Err(CallError::address(ca.gpa(), AddressConflict::Vmsa));
    }
    check_target(svsm, vmsa)?;
    check_target(svsm, ca)?;
    if svsm.vcpus.find_by_apic_id(apic_id).is_some() {
        return Err(CallError::InvalidParameter("APIC ID belongs to a live vCPU"));
    }
    if svsm.vcpus.count() >= svsm.max_vcpus {
        return Err(CallError::InvalidRequest("the SVSM serves no more vCPUs"));
    }
    let startup_vmsa = svsm.vcpus.startup().map(|v| v.vmsa).ok_or(CallError::InvalidRequest("no startup vCPU"))?;
    let startup_features = p.vmsa_read(startup_vmsa, VmsaField::SevFeatures)?;
    // Reserve the SVSM pages first: a shortfall is answered before anything changes.
    let svsm_pages = svsm.pool.alloc(VCPU_CONTEXT_PAGES).map_err(CallError::NeedMemory)?;

    // Act. Every failure from here on gives back the page and the reserved pages.
    let made = make_vmsa(p, vmsa, ctx.caller_vmpl, startup_features);
    let index = made.and_then(|vmpl| {
        let vcpu = Vcpu { apic_id, vmsa, calling_area: ca.gpa(), svsm_pages: svsm_pages.clone() };
        let index = svsm.vcpus.insert(vcpu, svsm.max_vcpus).ok_or(CallError::InvalidRequest("vCPU registry full"))?;
        Ok((index, vmpl))
    });
    let (index, vmpl) = match index {
        Ok(done) => done,
        Err(e) => {
            restore(p, vmsa, ctx.caller_vmpl);
            for page in svsm_pages {
                let deposited = svsm.pages.role(page) == Some(PageRole::Deposited);
                svsm.pool.free(page, deposited);
            }
            return Err(e);
        }
    };
    if let Err(f) = p.write(ca.gpa(), &[CALL_PENDING_NONE]) {
        crate::log!(p, Warn, "new calling area {:#x} not writable", f.gpa.0);
    }
    svsm.pages.set_role(vmsa, PageRole::Vmsa(index));
    svsm.pages.set_role(ca, PageRole::CallingArea(index));
    p.vcpu_created(index, vmsa, apic_id, &svsm_pages);
    crate::log!(p, Info, "vCPU {} created: APIC ID {}, VMSA {:#x}, VMPL {}", index.0, apic_id, vmsa.raw(), vmpl);
    Ok(())
}

/// Take the page from every lower VMPL, check a copy of it (section 6.3), and make it a
/// VMSA. Returns the new vCPU's VMPL. The caller restores the page on failure.
fn make_vmsa<P: Platform + ?Sized>(
    p: &mut P,
    vmsa: PageAddr,
    caller_vmpl: u8,
    startup_features: u64,
) -> CallResult<u8> {
    let hw = |error| CallError::Hardware { gpa: vmsa.gpa(), error };
    for vmpl in 1..=3 {
        p.rmpadjust(vmsa, PageSize::Size4K, vmpl, PERM_NONE, false).map_err(hw)?;
    }
    let vmpl = check_vmsa(p, vmsa, caller_vmpl, startup_features)?;
    p.rmpadjust(vmsa, PageSize::Size4K, vmpl, PERM_NONE, true).map_err(hw)?;
    // The guest had to leave EFER.SVME clear so no one could run the page before the
    // checks; now that it is a VMSA, it becomes runnable.
    let efer = p.vmsa_read(vmsa, VmsaField::Efer)?;
    p.vmsa_write(vmsa, VmsaField::Efer, efer | EFER_SVME)?;
    Ok(vmpl)
}

/// Section 6.3's checks on the new VMSA, read after the guest lost access to it.
fn check_vmsa<P: Platform + ?Sized>(p: &P, vmsa: PageAddr, caller_vmpl: u8, startup_features: u64) -> CallResult<u8> {
    let field = |f: VmsaField| -> CallResult<u64> {
        let mut v = [0u8; 8];
        let width = f.width();
        p.read(Gpa(vmsa.raw() + f.offset() as u64), &mut v[..width])?;
        Ok(u64::from_le_bytes(v))
    };
    let vmpl = field(VmsaField::Vmpl)? as u8;
    if vmpl == 0 {
        return Err(CallError::InvalidParameter("VMSA.VMPL is 0"));
    }
    if vmpl > 3 {
        return Err(CallError::InvalidParameter("VMSA.VMPL is above 3"));
    }
    if vmpl < caller_vmpl {
        return Err(CallError::InvalidParameter("VMSA.VMPL is more privileged than the caller"));
    }
    if field(VmsaField::Efer)? & EFER_SVME != 0 {
        return Err(CallError::InvalidParameter("VMSA.EFER.SVME is 1"));
    }
    if field(VmsaField::SevFeatures)? != startup_features {
        return Err(CallError::InvalidParameter("VMSA.SEV_FEATURES differs from the startup vCPU"));
    }
    Ok(vmpl)
}

/// Give a page back to the caller's VMPL after a refused creation.
fn restore<P: Platform + ?Sized>(p: &mut P, page: PageAddr, caller_vmpl: u8) {
    if let Err(e) = grant(p, page, caller_vmpl) {
        crate::log!(p, Error, "cannot give page {:#x} back to the guest: {:?}", page.raw(), e);
    }
}

pub fn delete_vcpu<P: Platform + ?Sized>(svsm: &mut Svsm, p: &mut P, ctx: &CallContext) -> CallResult<()> {
    let vmsa = page_param(ctx.regs.rcx, "VMSA gpa is not 4 KiB aligned")?;
    let index = svsm.vcpus.find_by_vmsa(vmsa).ok_or(CallError::InvalidParameter("not the VMSA of a vCPU"))?;
    if index == VcpuIndex::STARTUP {
        return Err(CallError::InvalidParameter("the startup vCPU cannot be deleted"));
    }
    if index == ctx.vcpu {
        return Err(CallError::InvalidParameter("a vCPU cannot delete itself"));
    }
    match p.vcpu_stop(vmsa) {
        Ok(()) => {}
        Err(HwError::Rc(FAIL_INUSE)) => return Err(CallError::VcpuInUse),
        Err(error) => return Err(CallError::Hardware { gpa: vmsa.gpa(), error }),
    }
    // Clear the VMSA flag (RMPADJUST with VMSA = 0) and give the page to the caller's VMPL.
    grant(p, vmsa, ctx.caller_vmpl).map_err(|error| CallError::Hardware { gpa: vmsa.gpa(), error })?;
    let Some(gone) = svsm.vcpus.remove(index) else {
        return Err(CallError::InvalidRequest("vCPU vanished"));
    };
    svsm.pages.clear_role(gone.vmsa);
    svsm.pages.clear_role(gone.calling_area.page());
    for page in gone.svsm_pages {
        let deposited = svsm.pages.role(page) == Some(PageRole::Deposited);
        svsm.pool.free(page, deposited);
    }
    p.vcpu_deleted(index);
    crate::log!(p, Info, "vCPU {} deleted", index.0);
    Ok(())
}
