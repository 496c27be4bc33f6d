//! SVSM_CORE_CREATE_VCPU and SVSM_CORE_DELETE_VCPU (spec 58019 sections 6.3 and 6.4).
//!
//! Creation checks every address before touching anything, reserves the SVSM pages the
//! new vCPU needs (asking for a deposit if the pool is short), revokes the guest's access
//! to the VMSA page, flushes the guest's TLBs, checks the VMSA from a copy taken after
//! that (so the guest cannot change it between check and use), and only then makes it a
//! VMSA. A failed check gives the page back as it was.
//!
//! CREATE_VCPU with the APIC ID of a live vCPU *replaces* that vCPU's VMSA, atomically:
//! Linux brings an offlined CPU back that way (arch/x86/coco/sev/core.c
//! `wakeup_cpu_via_vmgexit` calls CREATE_VCPU with the new VMSA and the same calling area
//! and APIC ID, and only then `snp_cleanup_vmsa` deletes the old one), and COCONUT
//! accepts it (its per-CPU VMSA for an APIC ID is swapped in `core_create_vcpu`). The vCPU
//! keeps its index and SVSM pages; the old VMSA stops running and is *retired* until
//! DELETE_VCPU names it (see `crate::vcpu`).
//!
//! VMPL rules (docs/protocols/core.md): a caller may not create a vCPU more privileged
//! than itself, nor delete or replace one that is more privileged or that a more
//! privileged VMPL created; the VMSA and calling-area pages it names must be pages it may
//! write ([`crate::caller`]).

use super::memory::grant;
use crate::addr::{Gpa, PageAddr, PageRange, PageSize};
use crate::caller::{Access, Caller};
use crate::error::{AddressConflict, CallError, CallResult};
use crate::pages::{Held, PageRole};
use crate::platform::{HwError, Platform};
use crate::pool::PoolError;
use crate::protocols::CallContext;
use crate::rollback::{Step, Undo, perms_now};
use crate::svsm::{Svsm, VCPU_CONTEXT_PAGES};
use crate::vcpu::{Retired, Vcpu, VcpuIndex};
use abi::calling_area::CALL_PENDING_NONE;
use abi::hw::EFER_SVME;
use abi::hw::rc::FAIL_INUSE;
use abi::hw::rmpadjust::PERM_NONE;
use abi::vmsa::VmsaField;

fn page_param(value: u64, what: &'static str) -> CallResult<PageAddr> {
    PageAddr::new(value).ok_or(CallError::InvalidParameter(what))
}

/// A page the call will take from the caller: RAM with no role (or, for a replacement's
/// calling area, the replaced vCPU's own), validated, and the caller's to write.
fn check_page<P: Platform + ?Sized>(
    held: &mut Held<'_>,
    p: &P,
    caller: Caller,
    page: PageAddr,
    allowed_role: Option<PageRole>,
) -> CallResult<()> {
    let range = PageRange::new(page, 1).ok_or(CallError::address(page.gpa(), AddressConflict::NotRam))?;
    let own_role = allowed_role.is_some() && held.role(page) == allowed_role;
    if !own_role {
        held.check_target(range).map_err(|(pg, why)| CallError::address(pg.gpa(), why))?;
    }
    held.check_unmapped(range).map_err(|(pg, why)| CallError::address(pg.gpa(), why))?;
    if !held.is_validated(page) {
        return Err(CallError::address(page.gpa(), AddressConflict::NotValidated));
    }
    caller.check(p, range, Access::Write)
}

/// What CREATE_VCPU asks for, checked.
pub(crate) struct Request {
    pub vmsa: PageAddr,
    pub ca: PageAddr,
    pub apic_id: u32,
}

pub fn create_vcpu<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> CallResult<()> {
    let vmsa = page_param(ctx.regs.rcx, "VMSA gpa is not 4 KiB aligned")?;
    let ca = page_param(ctx.regs.rdx, "calling area gpa is not 4 KiB aligned")?;
    // R8 is a 4-byte register parameter: bits 63:32 are not part of it (COCONUT masks
    // them the same way).
    let apic_id = (ctx.regs.r8 & 0xFFFF_FFFF) as u32;
    if vmsa == ca {
        return Err(CallError::address(ca.gpa(), AddressConflict::Vmsa));
    }
    let request = Request { vmsa, ca, apic_id };
    // The set of vCPUs changes under its lock (no two creations give out one APIC ID or
    // slot), and the two pages under their regions' locks.
    let _change = svsm.vcpus.change();
    let mut held = svsm.pages.lock(vmsa, ca);
    match svsm.vcpus.find_by_apic_id(apic_id) {
        None => {
            let (index, pages) = create_new(svsm, &mut held, p, ctx.caller, request)?;
            // The pages and their roles are recorded: their stripes go before the host
            // hears of the vCPU (a host exit on SNP), so PVALIDATEs nearby need not wait
            // for the host. The change lock stays: creations and deletions reach the host
            // in the order the SVSM made them.
            drop(held);
            p.vcpu_created(index, vmsa, apic_id, &pages);
            crate::log!(p, Info, "vCPU {} created: APIC ID {}, VMSA {:#x}", index.0, apic_id, vmsa.raw());
            Ok(())
        }
        // A replacement stops the old VMSA (a host exit) while the new one is half made,
        // so it keeps the two pages' stripes throughout: a rare path (a CPU brought back
        // online), and only calls on those two stripes wait.
        Some(index) => replace(svsm, &mut held, p, ctx, request, index),
    }
}

fn startup_features<P: Platform + ?Sized>(svsm: &Svsm, p: &P) -> CallResult<u64> {
    let startup_vmsa = svsm.vcpus.startup().map(|v| v.vmsa).ok_or(CallError::InvalidRequest("no startup vCPU"))?;
    Ok(p.vmsa_read(startup_vmsa, VmsaField::SevFeatures)?)
}

/// Make and record a new vCPU for `caller`; the caller tells the platform
/// (`vcpu_created`) once it has let go of the pages' locks. Returns its index and SVSM
/// pages. A live migration's destination makes the source's vCPUs here too
/// (`crate::migration::vcpus`), with every check CREATE_VCPU makes.
pub(crate) fn create_new<P: Platform + ?Sized>(
    svsm: &Svsm,
    held: &mut Held<'_>,
    p: &mut P,
    caller: Caller,
    r: Request,
) -> CallResult<(VcpuIndex, [PageAddr; VCPU_CONTEXT_PAGES])> {
    check_page(held, p, caller, r.vmsa, None)?;
    check_page(held, p, caller, r.ca, None)?;
    if svsm.vcpus.count() >= svsm.max_vcpus {
        return Err(CallError::InvalidRequest("the SVSM serves no more vCPUs"));
    }
    let features = startup_features(svsm, p)?;
    if !svsm.pages.role_room(2) {
        return Err(CallError::OutOfMemory);
    }
    // Reserve the SVSM pages first: a shortfall is answered before anything changes.
    let svsm_pages = {
        let mut pool = svsm.pool.lock();
        let taken = pool.alloc::<VCPU_CONTEXT_PAGES>();
        svsm.pool_changed(&pool);
        taken
    }
    .map_err(|e| match e {
        PoolError::Short(pages) => CallError::NeedMemory(pages),
        PoolError::NoRoom => CallError::OutOfMemory,
    })?;

    // Act. Every failure from here on gives back the page (the guard) and the reserved
    // pages.
    let (vmpl, mut made) = match make_vmsa(p, r.vmsa, caller.vmpl, features) {
        Ok(made) => made,
        Err(e) => {
            free_pages(svsm, &svsm_pages);
            return Err(e);
        }
    };
    let vcpu = Vcpu {
        apic_id: r.apic_id,
        vmsa: r.vmsa,
        vmpl,
        creator_vmpl: caller.vmpl,
        retired: None,
        calling_area: r.ca.gpa(),
        svsm_pages: Some(svsm_pages),
    };
    let index = match svsm.vcpus.insert(vcpu) {
        Ok(index) => index,
        Err(_) => {
            drop(made);
            free_pages(svsm, &svsm_pages);
            return Err(CallError::InvalidRequest("vCPU registry full"));
        }
    };
    // The platform's part for this index, before anything is final (the change lock
    // keeps every other creation and deletion out meanwhile).
    if let Err(error) = made.platform().prepare_vcpu(index) {
        svsm.vcpus.remove(index);
        drop(made);
        free_pages(svsm, &svsm_pages);
        return Err(CallError::Hardware { gpa: r.vmsa.gpa(), error });
    }
    made.commit();
    if let Err(f) = p.write(r.ca.gpa(), &[CALL_PENDING_NONE]) {
        crate::log!(p, Warn, "new calling area {:#x} not writable", f.gpa.0);
    }
    record_role(svsm, p, r.vmsa, PageRole::Vmsa(index));
    record_role(svsm, p, r.ca, PageRole::CallingArea(index));
    Ok((index, svsm_pages))
}

/// The APIC ID belongs to live vCPU `index`: run it on the new VMSA from now on and retire
/// the old one. Nothing changes if any step fails before the old VMSA is stopped; once it
/// is, the replacement completes.
fn replace<P: Platform + ?Sized>(
    svsm: &Svsm,
    held: &mut Held<'_>,
    p: &mut P,
    ctx: &CallContext,
    r: Request,
    index: VcpuIndex,
) -> CallResult<()> {
    if index == VcpuIndex::STARTUP {
        return Err(CallError::InvalidParameter("APIC ID belongs to the startup vCPU"));
    }
    if index == ctx.vcpu {
        return Err(CallError::InvalidParameter("a vCPU cannot replace itself"));
    }
    let old = svsm.vcpus.get(index).ok_or(CallError::InvalidRequest("vCPU vanished"))?;
    may_remove(ctx.caller, &old)?;
    // As for DELETE_VCPU: a call of the vCPU in service is answered into its VMSA and
    // calling area, which the replacement retires (on SNP, stopping the vCPU would also
    // destroy the context serving that call); none starts until the replacement is done.
    let _leaving = svsm.vcpus.begin_removal(index).ok_or(CallError::VcpuInUse)?;
    // Read again now that it is pinned: until the pin, the vCPU could still move its
    // calling area (REMAP_CA) or be replaced, and the first copy would then name a page
    // that is no longer its own (the one checked above kept a refusal from disturbing
    // the vCPU's calls at all).
    let old = svsm.vcpus.get(index).ok_or(CallError::InvalidRequest("vCPU vanished"))?;
    may_remove(ctx.caller, &old)?;
    // What the replacement needs of the old vCPU (copied: no allocation).
    let (old_vmsa, old_ca, old_creator) = (old.vmsa, old.calling_area, old.creator_vmpl);
    if old.retired.is_some() {
        return Err(CallError::InvalidRequest("the vCPU's previous VMSA was not deleted yet"));
    }
    check_page(held, p, ctx.caller, r.vmsa, None)?;
    check_page(held, p, ctx.caller, r.ca, Some(PageRole::CallingArea(index)))?;
    let features = startup_features(svsm, p)?;
    if !svsm.pages.role_room(2) {
        return Err(CallError::OutOfMemory);
    }

    let (vmpl, mut made) = make_vmsa(p, r.vmsa, ctx.caller.vmpl, features)?;
    // The old VMSA must stop running; if it cannot, the new one goes back (the guard).
    stop(made.platform(), old_vmsa)?;
    made.commit();
    p.vcpu_deleted(index);
    // Under the change lock nobody else removes the vCPU: it is there.
    svsm.vcpus.update(index, |v| {
        v.vmsa = r.vmsa;
        v.vmpl = vmpl;
        v.creator_vmpl = ctx.caller.vmpl;
        v.retired = Some(Retired { vmsa: old_vmsa, creator_vmpl: old_creator });
        v.calling_area = r.ca.gpa();
    });
    // The old VMSA keeps its role (the guest cannot use it) until DELETE_VCPU.
    record_role(svsm, p, r.vmsa, PageRole::Vmsa(index));
    if old_ca.page() != r.ca {
        svsm.pages.clear_role(old_ca.page());
        record_role(svsm, p, r.ca, PageRole::CallingArea(index));
    }
    if let Err(f) = p.write(r.ca.gpa(), &[CALL_PENDING_NONE]) {
        crate::log!(p, Warn, "new calling area {:#x} not writable", f.gpa.0);
    }
    p.vcpu_created(index, r.vmsa, r.apic_id, old.context_pages());
    crate::log!(
        p,
        Info,
        "vCPU {} (APIC ID {}) now runs on VMSA {:#x}; {:#x} retired",
        index.0,
        r.apic_id,
        r.vmsa.raw(),
        old_vmsa.raw()
    );
    Ok(())
}

/// Take the page from every lower VMPL, flush, check a copy of it (section 6.3), and make
/// it a VMSA. Returns the new vCPU's VMPL and the guard that gives the page back as it
/// was unless the caller commits (a failure here has given it back already).
fn make_vmsa<P: Platform + ?Sized>(
    p: &mut P,
    vmsa: PageAddr,
    caller_vmpl: u8,
    startup_features: u64,
) -> CallResult<(u8, Undo<'_, P>)> {
    let hw = |error| CallError::Hardware { gpa: vmsa.gpa(), error };
    let mut undo = Undo::new(p, vmsa, "CREATE_VCPU");
    for vmpl in 1..=3 {
        let before = perms_now(undo.platform(), vmsa, vmpl, caller_vmpl);
        undo.platform().rmpadjust(vmsa, PageSize::Size4K, vmpl, PERM_NONE, false).map_err(hw)?;
        undo.did(Step::SetPerms { vmpl, perms: before, size: PageSize::Size4K });
    }
    // Another CPU may still hold a translation that lets the guest write the page; the
    // copy checked below must be the one that runs (COCONUT flushes at the same point).
    undo.platform().flush_guest_tlb();
    let vmpl = check_vmsa(undo.platform(), vmsa, caller_vmpl, startup_features)?;
    undo.platform().rmpadjust(vmsa, PageSize::Size4K, vmpl, PERM_NONE, true).map_err(hw)?;
    // Clearing the flag again (RMPADJUST with VMSA = 0) comes first when undoing.
    undo.did(Step::SetPerms { vmpl, perms: PERM_NONE, size: PageSize::Size4K });
    // Whatever EFER.SVME the guest left, the VMSA becomes runnable now.
    let efer = undo.platform().vmsa_read(vmsa, VmsaField::Efer)?;
    undo.platform().vmsa_write(vmsa, VmsaField::Efer, efer | EFER_SVME)?;
    Ok((vmpl, undo))
}

/// Section 6.3's checks on the new VMSA, read after the guest lost access to it.
fn check_vmsa<P: Platform + ?Sized>(p: &P, vmsa: PageAddr, caller_vmpl: u8, startup_features: u64) -> CallResult<u8> {
    let field = |f: VmsaField| -> CallResult<u64> {
        let mut v = [0u8; 8];
        let width = f.width();
        let bytes = v.get_mut(..width).ok_or(CallError::InvalidRequest("VMSA field wider than 8 bytes"))?;
        p.read(Gpa(vmsa.raw() + f.offset() as u64), bytes)?;
        Ok(u64::from_le_bytes(v))
    };
    let vmpl = match u8::try_from(field(VmsaField::Vmpl)?) {
        Ok(0) => return Err(CallError::InvalidParameter("VMSA.VMPL is 0")),
        Ok(v @ 1..=3) => v,
        _ => return Err(CallError::InvalidParameter("VMSA.VMPL is above 3")),
    };
    if vmpl < caller_vmpl {
        return Err(CallError::InvalidParameter("VMSA.VMPL is more privileged than the caller"));
    }
    if !p.runs_vcpus_at(vmpl) {
        return Err(CallError::InvalidParameter("this platform runs no vCPU at VMSA.VMPL"));
    }
    // EFER.SVME is not checked: rev 0.60 asks for SVME = 0, but Linux
    // (`wakeup_cpu_via_vmgexit`), OVMF (`SevSnpCreateSaveArea`) and COCONUT (`check_vmsa`)
    // all hand over SVME = 1, and the real callers win. It is harmless: nobody can run the
    // page before it is a VMSA in the RMP, which only the SVSM makes it, after this check.
    if field(VmsaField::SevFeatures)? != startup_features {
        return Err(CallError::InvalidParameter("VMSA.SEV_FEATURES differs from the startup vCPU"));
    }
    Ok(vmpl)
}

/// Record a role the call checked room for (`role_room`): it cannot fail; if it did, the
/// SVSM's bookkeeping is wrong, which is logged and leaves the page unprotected by the
/// role checks but still out of the guest's hands in the RMP.
fn record_role<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, page: PageAddr, role: PageRole) {
    if svsm.pages.set_role(page, role).is_err() {
        crate::log!(p, Error, "no room to record {:?} at {:#x}", role, page.raw());
    }
}

/// SVSM pages of a vCPU that is gone (or was not made) go back to the pool.
fn free_pages(svsm: &Svsm, pages: &[PageAddr]) {
    let mut pool = svsm.pool.lock();
    for page in pages {
        // The pool's own reserve lies in the SVSM's region, where no deposit can be: a
        // page outside it was deposited. (Asked of the region, not the deposit record,
        // because callers hold page locks the record would need.)
        let deposited = !svsm.pages.svsm_region().contains_pfn(page.pfn());
        // A deposited page whose record cannot be made stays out of the pool: the guest
        // loses a page it gave, the SVSM keeps working.
        let _ = pool.free(*page, deposited);
    }
    svsm.pool_changed(&pool);
}

/// A caller may delete or replace only a vCPU that runs at its own VMPL or a less
/// privileged one, and that its own VMPL or a less privileged one created.
fn may_remove(caller: Caller, vcpu: &Vcpu) -> CallResult<()> {
    if caller.vmpl > vcpu.vmpl || caller.vmpl > vcpu.creator_vmpl {
        return Err(CallError::InvalidParameter("the vCPU belongs to a more privileged VMPL"));
    }
    Ok(())
}

/// Stop the vCPU running on `vmsa` (DELETE_VCPU's "clear EFER.SVME").
fn stop<P: Platform + ?Sized>(p: &mut P, vmsa: PageAddr) -> CallResult<()> {
    match p.vcpu_stop(vmsa) {
        Ok(()) => Ok(()),
        Err(HwError::Rc(FAIL_INUSE)) => Err(CallError::VcpuInUse),
        Err(error) => Err(CallError::Hardware { gpa: vmsa.gpa(), error }),
    }
}

/// Hand a VMSA page that no vCPU runs on back to the VMPL that gave it (clearing its VMSA
/// flag).
fn release<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, vmsa: PageAddr, creator_vmpl: u8) -> CallResult<()> {
    grant(p, vmsa, creator_vmpl).map_err(|error| CallError::Hardware { gpa: vmsa.gpa(), error })?;
    svsm.pages.clear_role(vmsa);
    Ok(())
}

pub fn delete_vcpu<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> CallResult<()> {
    let vmsa = page_param(ctx.regs.rcx, "VMSA gpa is not 4 KiB aligned")?;
    let _change = svsm.vcpus.change();
    if let Some(index) = svsm.vcpus.find_by_retired(vmsa) {
        // A call is never served on a retired VMSA (the replacement took the vCPU only
        // with no call in service, and a call pins the VMSA its slot has): this guards
        // that rule rather than meeting a case that happens.
        if svsm.vcpus.in_call_on(index, vmsa) {
            return Err(CallError::VcpuInUse);
        }
        let _held = svsm.pages.lock(vmsa, vmsa);
        return delete_retired(svsm, p, ctx, index, vmsa);
    }
    let index = svsm.vcpus.find_by_vmsa(vmsa).ok_or(CallError::InvalidParameter("not the VMSA of a vCPU"))?;
    if index == VcpuIndex::STARTUP {
        return Err(CallError::InvalidParameter("the startup vCPU cannot be deleted"));
    }
    if index == ctx.vcpu {
        return Err(CallError::InvalidParameter("a vCPU cannot delete itself"));
    }
    let vcpu = svsm.vcpus.get(index).ok_or(CallError::InvalidRequest("vCPU vanished"))?;
    may_remove(ctx.caller, &vcpu)?;
    // A call of it in service is answered into its VMSA and calling area: they stay
    // until then (the guest may retry), and no call of it starts from here on.
    let _leaving = svsm.vcpus.begin_removal(index).ok_or(CallError::VcpuInUse)?;
    // Stopping is a host exit on SNP: no page lock is held across it. The page keeps its
    // VMSA role until the roles are cleared below, so no other call can act on it.
    stop(p, vmsa)?;
    let _held = svsm.pages.lock(vmsa, vmsa);
    // Clear the VMSA flag (RMPADJUST with VMSA = 0) and give the page back.
    let creator = vcpu.creator_vmpl;
    grant(p, vmsa, creator).map_err(|error| CallError::Hardware { gpa: vmsa.gpa(), error })?;
    let Some(gone) = svsm.vcpus.remove(index) else {
        return Err(CallError::InvalidRequest("vCPU vanished"));
    };
    svsm.pages.clear_role(gone.vmsa);
    svsm.pages.clear_role(gone.calling_area.page());
    // A retired VMSA of the same vCPU goes back with it: nothing could name it afterwards.
    if let Some(retired) = gone.retired
        && let Err(e) = release(svsm, p, retired.vmsa, retired.creator_vmpl)
    {
        crate::log!(p, Error, "retired VMSA {:#x} stays with the SVSM: {:?}", retired.vmsa.raw(), e);
    }
    free_pages(svsm, gone.context_pages());
    p.vcpu_deleted(index);
    crate::log!(p, Info, "vCPU {} deleted", index.0);
    Ok(())
}

/// DELETE_VCPU of a VMSA a replacement retired: it no longer runs, so it only goes back.
fn delete_retired<P: Platform + ?Sized>(
    svsm: &Svsm,
    p: &mut P,
    ctx: &CallContext,
    index: VcpuIndex,
    vmsa: PageAddr,
) -> CallResult<()> {
    let vcpu = svsm.vcpus.get(index).ok_or(CallError::InvalidRequest("vCPU vanished"))?;
    may_remove(ctx.caller, &vcpu)?;
    let creator = vcpu.retired.map_or(vcpu.creator_vmpl, |r| r.creator_vmpl);
    release(svsm, p, vmsa, creator)?;
    svsm.vcpus.update(index, |v| v.retired = None);
    crate::log!(p, Info, "retired VMSA {:#x} of vCPU {} deleted", vmsa.raw(), index.0);
    Ok(())
}
