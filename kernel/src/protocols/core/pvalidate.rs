//! SVSM_CORE_PVALIDATE (spec 58019 section 6.2).
//!
//! For each entry from the next-entry index: decode and check it, refuse pages the SVSM
//! owns (its image, deposited pages, VMSAs, calling areas), then
//! - validate: PVALIDATE, zero the page(s) so the guest never sees what the host left
//!   there, then RMPADJUST full access for VMPL 1..=caller;
//! - invalidate: RMPADJUST to revoke VMPL 1..=3 first, then PVALIDATE.
//!
//! The validation bitmap is the SVSM's record of what the guest validated. PVALIDATE
//! always runs (the hardware's answer, including size mismatches, comes first), and the
//! bitmap cross-checks it: if the hardware validates a page the SVSM recorded as already
//! validated, the host reassigned the page behind the guest's back. The SVSM undoes the
//! validation and refuses the entry (INVALID_ADDRESS), so the guest never silently gets a
//! different page where it had data.

use super::list;
use crate::addr::{PageAddr, PageRange, PageSize};
use crate::caller::{Access, Caller};
use crate::error::{CallError, CallResult};
use crate::pages::{EntryError, EntryRecord, Held};
use crate::platform::{Platform, PvalidateEffect};
use crate::protocols::{CallContext, Reply};
use crate::rollback::{Step, Undo, perms_now};
use crate::svsm::Svsm;
use abi::core_protocol::{EntrySize, PvalidateEntry};
use abi::hw::rmpadjust::{PERM_ALL, PERM_NONE};

/// Highest VMPL an RMPADJUST can target.
const MAX_VMPL: u8 = 3;

pub fn pvalidate<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> Reply {
    let caller = ctx.caller;
    let mut invalidated = false;
    let reply = list::walk(
        svsm,
        p,
        ctx,
        |raw| decode(PvalidateEntry(raw)),
        |e: &Entry| e.range,
        // Consecutive entries in one stripe (a guest validating a 2 MiB run page by page)
        // share one hold of its lock, released before the list is written back.
        |held: &mut Option<Held<'_>>, p, e| {
            invalidated |= !e.validate;
            if !held.as_ref().is_some_and(|h| h.holds(e.page)) {
                // The old stripe goes first: holding it while waiting for another could
                // meet a vCPU doing the opposite.
                *held = None;
            }
            let h = held.get_or_insert_with(|| svsm.pages.lock(e.page, e.page));
            apply(h, p, caller, e)
        },
    );
    // Pages left the guest: no CPU may keep a translation to them once the call returns
    // (COCONUT flushes at the same point, kernel/src/protocols/core.rs `core_pvalidate`).
    if invalidated {
        p.flush_guest_tlb();
    }
    reply
}

/// A checked PVALIDATE entry.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub page: PageAddr,
    pub size: PageSize,
    pub range: PageRange,
    pub validate: bool,
    pub ignore_cf: bool,
}

// Inlined: returned through memory, its fields were stored narrow and loaded wide, a
// store-forwarding stall per entry that cost more than the decoding.
#[inline(always)]
pub fn decode(e: PvalidateEntry) -> CallResult<Entry> {
    if e.reserved_bits() != 0 {
        return Err(CallError::InvalidParameter("PVALIDATE entry sets reserved bits 11:4"));
    }
    let size = match e.size() {
        EntrySize::Size4K => PageSize::Size4K,
        EntrySize::Size2M => PageSize::Size2M,
        EntrySize::Reserved(_) => return Err(CallError::InvalidParameter("PVALIDATE entry page size is reserved")),
    };
    let page = PageAddr::from_pfn(e.gpa() >> 12);
    let range = PageRange::of_page(page, size)
        .ok_or(CallError::InvalidParameter("2 MiB PVALIDATE entry has bits 20:12 set"))?;
    Ok(Entry { page, size, range, validate: e.validate(), ignore_cf: e.ignore_cf() })
}

fn no_change(entry: &Entry) -> CallResult<()> {
    if entry.ignore_cf { Ok(()) } else { Err(CallError::NoChange { gpa: entry.page.gpa() }) }
}

fn hw(entry: &Entry) -> impl Fn(crate::platform::HwError) -> CallError {
    let gpa = entry.page.gpa();
    move |error| CallError::Hardware { gpa, error }
}

/// One entry, under the lock of its 4 KiB page's or 2 MiB region's stripe (`held`), which
/// makes check, hardware and record one step against every other vCPU (two vCPUs
/// validating and invalidating one page cannot interleave).
pub fn apply<P: Platform + ?Sized>(held: &mut Held<'_>, p: &mut P, caller: Caller, entry: &Entry) -> CallResult<()> {
    // A page a service process maps stays validated until the mapping is gone
    // (docs/syscalls.md "OPEN_PHYSMEM"); validating it again changes nothing.
    if !entry.validate {
        held.check_unmapped(entry.range).map_err(|(pg, why)| CallError::address(pg.gpa(), why))?;
    }
    // Checked as a target, and the validation record makes room before the hardware
    // changes, so the two cannot disagree afterwards (a 4 KiB entry in a 2 MiB run the
    // record held whole needs a leaf).
    let (mut record, recorded_valid) = held.prepare_entry(entry.range).map_err(|e| match e {
        EntryError::Conflict(pg, why) => CallError::address(pg.gpa(), why),
        EntryError::NoRoom => CallError::OutOfMemory,
        EntryError::NotHeld => CallError::InvalidRequest("PVALIDATE entry outside its page lock"),
    })?;
    let record = &mut record;
    let done = if entry.validate {
        // A page that is not validated belongs to no VMPL yet, so any caller may validate
        // it (and gets access with every more privileged VMPL). A validated one only
        // answers "no change" and is not touched.
        validate(record, p, caller.vmpl, entry, recorded_valid)
    } else {
        // Invalidating destroys the contents: only for a caller that could write them.
        caller.check(p, entry.range, Access::Write).and_then(|()| invalidate(record, p, caller.vmpl, entry))
    };
    // A live migration sends the pages again (validated, zeroed, or gone): whatever the
    // outcome, the hardware may have changed.
    held.note_changed(entry.range);
    done
}

fn validate<P: Platform + ?Sized>(
    record: &mut EntryRecord<'_>,
    p: &mut P,
    caller_vmpl: u8,
    entry: &Entry,
    recorded_valid: bool,
) -> CallResult<()> {
    let effect = p.pvalidate(entry.page, entry.size, true).map_err(hw(entry))?;
    if effect == PvalidateEffect::Unchanged {
        // Possibly validated before the SVSM knew (at launch): the hardware is right.
        record.set(true);
        return no_change(entry);
    }
    // Valid now, but neither zeroed nor the guest's: until the grant is complete, every
    // way out rescinds the validation (and any grant made) again.
    let mut undo = Undo::new(p, entry.page, "validation");
    undo.did(Step::Unvalidate(entry.size));
    if recorded_valid {
        crate::log!(
            undo.platform(),
            Error,
            "host reassigned validated memory at {:#x}; refusing to re-validate",
            entry.page.raw()
        );
        drop(undo);
        record.set(false);
        return Err(CallError::address(entry.page.gpa(), crate::error::AddressConflict::Reassigned));
    }
    undo.platform().zero_pages(entry.range)?;
    for vmpl in 1..=caller_vmpl.min(MAX_VMPL) {
        undo.platform().rmpadjust(entry.page, entry.size, vmpl, PERM_ALL, false).map_err(hw(entry))?;
        undo.did(Step::SetPerms { vmpl, perms: PERM_NONE, size: entry.size });
    }
    undo.commit();
    record.set(true);
    Ok(())
}

fn invalidate<P: Platform + ?Sized>(
    record: &mut EntryRecord<'_>,
    p: &mut P,
    caller_vmpl: u8,
    entry: &Entry,
) -> CallResult<()> {
    // Revoke every lower VMPL first; if PVALIDATE then fails (a size mismatch, say), the
    // page is still valid and everyone gets back what they had.
    let mut undo = Undo::new(p, entry.page, "invalidation");
    for vmpl in 1..=MAX_VMPL {
        let before = perms_now(undo.platform(), entry.page, vmpl, caller_vmpl);
        undo.platform().rmpadjust(entry.page, entry.size, vmpl, PERM_NONE, false).map_err(hw(entry))?;
        undo.did(Step::SetPerms { vmpl, perms: before, size: entry.size });
    }
    let effect = undo.platform().pvalidate(entry.page, entry.size, false).map_err(hw(entry))?;
    undo.commit();
    record.set(false);
    match effect {
        PvalidateEffect::Changed => Ok(()),
        PvalidateEffect::Unchanged => no_change(entry),
    }
}
