//! SVSM_CORE_DEPOSIT_MEM and SVSM_CORE_WITHDRAW_MEM (spec 58019 sections 6.5 and 6.6).
//!
//! Deposited pages must be validated guest RAM with no other role; each is restricted to
//! VMPL0 with RMPADJUST (VMPL 1..=3 lose all access) and joins the page pool. A 2 MiB
//! entry is taken as 512 pages of 4 KiB; memory the guest validated as one 2 MiB page
//! fails with the hardware's size mismatch (0x8000_1006), because the SVSM could never
//! return it 4 KiB at a time. Withdrawn pages are zeroed before the guest gets them back,
//! so nothing the SVSM kept there leaks.

use super::list;
use crate::addr::{Gpa, PageAddr, PageRange, PageSize};
use crate::caller::{Access, Caller};
use crate::error::{AddressConflict, CallError, CallResult};
use crate::guest_memory;
use crate::platform::{HwError, Platform};
use crate::protocols::{CallContext, Reply};
use crate::rollback::{RangeUndo, Step, Undo, perms_now};
use crate::svsm::Svsm;
use abi::PAGE_SIZE;
use abi::core_protocol::{DepositEntry, EntrySize, LIST_ENTRY_SIZE, LIST_HEADER_SIZE};
use abi::hw::rmpadjust::{PERM_ALL, PERM_NONE};
use alloc::vec::Vec;
use zerocopy::IntoBytes;

const LOWER_VMPLS: core::ops::RangeInclusive<u8> = 1..=3;

pub fn deposit<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> Reply {
    let caller = ctx.caller;
    list::walk(
        svsm,
        p,
        ctx,
        |raw| decode(DepositEntry(raw)),
        |range: &PageRange| *range,
        |(), p, range| deposit_range(svsm, p, caller, *range),
    )
}

fn decode(e: DepositEntry) -> CallResult<PageRange> {
    if e.reserved_bits() != 0 {
        return Err(CallError::InvalidParameter("deposit entry sets reserved bits 11:2"));
    }
    let size = match e.size() {
        EntrySize::Size4K => PageSize::Size4K,
        EntrySize::Size2M => PageSize::Size2M,
        EntrySize::Reserved(_) => return Err(CallError::InvalidParameter("deposit entry page size is reserved")),
    };
    PageRange::of_page(PageAddr::from_pfn(e.gpa() >> 12), size)
        .ok_or(CallError::InvalidParameter("2 MiB deposit entry has bits 20:12 set"))
}

fn deposit_range<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, caller: Caller, range: PageRange) -> CallResult<()> {
    let caller_vmpl = caller.vmpl;
    // The entry is one 4 KiB page or one 2 MiB region: its region's lock makes check, act
    // and record one step against every other vCPU.
    let mut held = svsm.pages.lock(range.start(), range.start());
    held.check_target(range).map_err(|(pg, why)| CallError::address(pg.gpa(), why))?;
    held.check_unmapped(range).map_err(|(pg, why)| CallError::address(pg.gpa(), why))?;
    if let Some(pfn) = held.first_unvalidated(range) {
        return Err(CallError::address(Gpa(pfn << 12), AddressConflict::NotValidated));
    }
    // A caller deposits only what it could write itself: a VMPL2 caller must not hand the
    // SVSM (and so take away from VMPL1) a page that VMPL1 keeps from it.
    caller.check(p, range, Access::Write)?;
    // The records of the deposit are made room for first: once the pages are the
    // SVSM's, recording it cannot fail.
    held.reserve_deposited(range).map_err(|_| CallError::OutOfMemory)?;
    svsm.pool.lock().reserve_deposit(range).map_err(|_| CallError::OutOfMemory)?;
    // All or nothing: every page taken so far goes back if a later one cannot be taken.
    let mut taken = RangeUndo::new(p, range.start(), range.pages()).ok_or(CallError::OutOfMemory)?;
    for page in range.iter() {
        let before = [1, 2, 3].map(|vmpl| perms_now(taken.platform(), page, vmpl, caller_vmpl));
        restrict(taken.platform(), page, caller_vmpl)?;
        taken.took_one(before);
    }
    // No CPU may still hold a translation that lets the guest write the pages once the
    // SVSM can hand them out.
    taken.platform().flush_guest_tlb();
    taken.commit();
    let recorded = held.set_deposited(range, true) && {
        let mut pool = svsm.pool.lock();
        let added = pool.add_deposited(range);
        svsm.pool_changed(&pool);
        added
    };
    if !recorded {
        crate::log!(p, Error, "deposit at {:#x}: a reserved record was missing", range.start().raw());
    }
    Ok(())
}

/// Take all access from VMPL 1..=3; on a failure, every VMPL gets back what it had.
fn restrict<P: Platform + ?Sized>(p: &mut P, page: PageAddr, caller_vmpl: u8) -> CallResult<()> {
    let mut undo = Undo::new(p, page, "deposit");
    for vmpl in LOWER_VMPLS {
        let before = perms_now(undo.platform(), page, vmpl, caller_vmpl);
        undo.platform()
            .rmpadjust(page, PageSize::Size4K, vmpl, PERM_NONE, false)
            .map_err(|error| CallError::Hardware { gpa: page.gpa(), error })?;
        undo.did(Step::SetPerms { vmpl, perms: before, size: PageSize::Size4K });
    }
    undo.commit();
    Ok(())
}

/// Full access for VMPL 1..=`caller_vmpl` (the caller and every more privileged VMPL).
pub(super) fn grant<P: Platform + ?Sized>(p: &mut P, page: PageAddr, caller_vmpl: u8) -> Result<(), HwError> {
    for vmpl in 1..=caller_vmpl.min(3) {
        p.rmpadjust(page, PageSize::Size4K, vmpl, PERM_ALL, false)?;
    }
    Ok(())
}

/// Deposited pages a withdrawal took but could not hand back go back to the pool.
fn give_back_to_pool(svsm: &Svsm, pages: &[PageAddr]) {
    let mut pool = svsm.pool.lock();
    for page in pages {
        // A page whose record cannot be made (a full heap) stays out of the pool: the
        // guest loses a page it gave, the SVSM keeps working.
        let _ = pool.free(*page, true);
    }
    svsm.pool_changed(&pool);
}

pub fn withdraw<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> Reply {
    withdraw_inner(svsm, p, ctx).into()
}

fn withdraw_inner<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> CallResult<()> {
    let gpa = Gpa(ctx.regs.rcx);
    if !gpa.is_aligned(8) {
        return Err(CallError::InvalidParameter("withdraw list gpa is not 8-byte aligned"));
    }
    let room = (PAGE_SIZE - gpa.page_offset()).saturating_sub(LIST_HEADER_SIZE) / LIST_ENTRY_SIZE;
    if room == 0 {
        return Err(CallError::InvalidParameter("withdraw list has no room for an entry"));
    }
    // Check the header can be written before anything leaves the pool.
    guest_memory::write_bytes(p, ctx.view(&svsm.pages), gpa, &0u16.to_le_bytes())?;
    let per_call = usize::try_from(svsm.pages_per_call).unwrap_or(usize::MAX);
    let room = usize::try_from(room).unwrap_or(0).min(per_call).max(1);
    let taken = {
        let mut pool = svsm.pool.lock();
        let taken = pool.take_withdrawable(room);
        svsm.pool_changed(&pool);
        taken
    };
    let entries_gpa = Gpa(gpa.0 + LIST_HEADER_SIZE);
    let written = crate::heap::with_capacity(taken.len()).and_then(|mut gpas: Vec<u64>| {
        gpas.extend(taken.iter().map(|pg| pg.raw()));
        guest_memory::write_bytes(p, ctx.view(&svsm.pages), entries_gpa, gpas.as_bytes())
    });
    if let Err(e) = written {
        give_back_to_pool(svsm, &taken);
        return Err(e);
    }
    // Hand pages back one by one; a page the hardware refuses stays in the pool, and so
    // do the pages after it.
    let mut returned = 0usize;
    for page in taken.iter().copied() {
        // Each page under its region's lock: nobody else changes it meanwhile.
        let mut held = svsm.pages.lock(page, page);
        // Room to record the page as the guest's again, then zero and hand it back.
        let one = PageRange::new(page, 1).filter(|r| held.reserve_deposited(*r).is_ok());
        let handed_back = one.is_some_and(|r| p.zero_pages(r).is_ok()) && grant(p, page, ctx.caller.vmpl).is_ok();
        if !handed_back {
            crate::log!(p, Warn, "withdraw: page {:#x} stays with the SVSM", page.raw());
            break;
        }
        if let Some(r) = one {
            held.set_deposited(r, false);
            // The guest's again, zeroed: a live migration sends it.
            held.note_changed(r);
        }
        returned += 1;
    }
    give_back_to_pool(svsm, taken.get(returned..).unwrap_or(&[]));
    svsm.pool.lock().withdrawn(returned);
    let count = u16::try_from(returned).unwrap_or(u16::MAX);
    if let Err(e) = guest_memory::write_bytes(p, ctx.view(&svsm.pages), gpa, &count.to_le_bytes()) {
        crate::log!(p, Error, "withdraw: {} pages returned but the list header write failed: {:?}", returned, e);
    }
    Ok(())
}
