//! The list format shared by PVALIDATE and DEPOSIT_MEM (spec 58019 tables 6 and 7):
//! reading it once, checking its header, and writing back the next-entry index.

use crate::addr::{Gpa, PageRange};
use crate::error::{AddressConflict, CallError, CallResult};
use crate::guest_memory::{self, GuestView};
use crate::platform::Platform;
use crate::protocols::{CallContext, Reply};
use crate::svsm::Svsm;
use abi::PAGE_SIZE;
use abi::core_protocol::{LIST_ENTRY_SIZE, LIST_HEADER_SIZE, LIST_NEXT_OFFSET, ListHeader};
use alloc::vec::Vec;
use zerocopy::IntoBytes;

/// A list copied out of guest memory: the entries from `next` to the end.
#[derive(Debug)]
pub struct EntryList {
    pub gpa: Gpa,
    pub next: u16,
    /// Entries `next..entries`, as the guest wrote them.
    pub pending: Vec<u64>,
}

/// Most entries a list can hold: it must not cross the 4 KiB page it starts in.
pub fn capacity(gpa: Gpa) -> u64 {
    (PAGE_SIZE - gpa.page_offset()).saturating_sub(LIST_HEADER_SIZE) / LIST_ENTRY_SIZE
}

/// Read and check a list at `gpa` (RCX of the call).
pub fn read<P: Platform + ?Sized>(p: &P, view: GuestView<'_>, gpa: Gpa) -> CallResult<EntryList> {
    if !gpa.is_aligned(8) {
        return Err(CallError::InvalidParameter("list gpa is not 8-byte aligned"));
    }
    let header: ListHeader = guest_memory::read(p, view, gpa)?;
    // The next-entry index is written back; refuse a list where it cannot be.
    guest_memory::check_writable(p, view, gpa, core::mem::size_of::<ListHeader>())?;
    if header.entries == 0 {
        return Err(CallError::InvalidParameter("list has no entries"));
    }
    if u64::from(header.entries) > capacity(gpa) {
        return Err(CallError::InvalidParameter("list crosses a 4 KiB boundary"));
    }
    if header.next >= header.entries {
        return Err(CallError::InvalidParameter("next entry index is not below the entry count"));
    }
    let count = usize::from(header.entries - header.next);
    let mut pending: Vec<u64> = crate::heap::with_capacity(count)?;
    pending.resize(count, 0);
    let first = Gpa(gpa.0 + LIST_HEADER_SIZE + u64::from(header.next) * LIST_ENTRY_SIZE);
    guest_memory::read_bytes(p, view, first, pending.as_mut_bytes())?;
    Ok(EntryList { gpa, next: header.next, pending })
}

/// Write the next-entry index back into the guest's list header.
pub fn write_next<P: Platform + ?Sized>(p: &mut P, view: GuestView<'_>, list: &EntryList, next: u16) -> CallResult<()> {
    guest_memory::write_bytes(p, view, Gpa(list.gpa.0 + LIST_NEXT_OFFSET), &next.to_le_bytes())
}

/// The work one call may still do, in 4 KiB pages. The first entry of a call is always
/// taken, whatever its cost, so every call makes progress.
#[derive(Debug)]
pub struct Budget {
    left: u64,
    first: bool,
}

impl Budget {
    pub fn new(pages: u64) -> Self {
        Self { left: pages, first: true }
    }

    /// May an entry costing `pages` run now?
    pub fn take(&mut self, pages: u64) -> bool {
        if self.first || self.left >= pages {
            self.first = false;
            self.left = self.left.saturating_sub(pages);
            true
        } else {
            false
        }
    }
}

/// Run a list call (PVALIDATE, DEPOSIT_MEM) from its next-entry index: `decode` checks
/// an entry, `pages` says which pages it acts on (its cost), `apply` performs it. Stops at
/// the first error (the index stays on the failing entry) or with INCOMPLETE when the
/// call's budget is spent; writes the index back in every case.
///
/// An entry may not act on the page holding the list itself: the SVSM must still write
/// the next-entry index there, and a guest that lost that page would not learn what was
/// done (`INVALID_ADDRESS`).
///
/// `apply` may keep state from one entry to the next (`S`, such as a page lock it holds
/// on): it is dropped before the index is written back.
pub fn walk<P, E, S: Default>(
    svsm: &Svsm,
    p: &mut P,
    ctx: &CallContext,
    decode: impl Fn(u64) -> CallResult<E>,
    pages: impl Fn(&E) -> PageRange,
    mut apply: impl FnMut(&mut S, &mut P, &E) -> CallResult<()>,
) -> Reply
where
    P: Platform + ?Sized,
{
    let list = match read(p, ctx.view(&svsm.pages), Gpa(ctx.regs.rcx)) {
        Ok(l) => l,
        Err(e) => return Reply::err(e),
    };
    let mut budget = Budget::new(svsm.pages_per_call);
    let mut state = S::default();
    let mut next = list.next;
    let mut status = Ok(());
    for raw in &list.pending {
        let step = decode(*raw).and_then(|entry| {
            let range = pages(&entry);
            if range.contains_pfn(list.gpa.page().pfn()) {
                return Err(CallError::address(list.gpa, AddressConflict::ParameterList));
            }
            if !budget.take(range.pages()) {
                return Err(CallError::Incomplete);
            }
            apply(&mut state, p, &entry)
        });
        if let Err(e) = step {
            status = Err(e);
            break;
        }
        next += 1;
    }
    drop(state);
    let written = write_next(p, ctx.view(&svsm.pages), &list, next);
    Reply::from(status.and(written))
}
