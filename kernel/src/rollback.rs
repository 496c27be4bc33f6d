//! Undo on drop: a multi-step change to hardware state records how to take back what it
//! did so far, and unless it [commits](Undo::commit), dropping the guard takes it back.
//! Every way out of a failed step (`?`, an early `return`) undoes the same way, so a
//! change cannot be left half done (a page restricted for one VMPL and not another, a
//! page validated but not the guest's).
//!
//! An undo can only fail if the host changed the RMP under the SVSM (the undo repeats, in
//! reverse, instructions that just succeeded). Then the SVSM's records and the hardware
//! disagree, and serving on would hand out pages on wrong beliefs: the failure is fatal on
//! purpose ([`Platform::fatal`]), never just logged.

use crate::addr::{PageAddr, PageSize};
use crate::platform::{HwError, Platform};
use abi::hw::rmpadjust::PERM_ALL;
use alloc::vec::Vec;

/// How to take back one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The page was validated: rescind it (PVALIDATE).
    Unvalidate(PageSize),
    /// `vmpl`'s permissions were changed: set them to `perms` again, VMSA flag clear
    /// (RMPADJUST). Also undoes making the page a VMSA.
    SetPerms { vmpl: u8, perms: u8, size: PageSize },
}

impl Step {
    fn undo<P: Platform + ?Sized>(self, p: &mut P, page: PageAddr) -> Result<(), HwError> {
        match self {
            Step::Unvalidate(size) => p.pvalidate(page, size, false).map(|_| ()),
            Step::SetPerms { vmpl, perms, size } => p.rmpadjust(page, size, vmpl, perms, false),
        }
    }
}

/// `vmpl`'s permissions on `page` as they are now, for a [`Step::SetPerms`] that puts
/// them back: read from the hardware where the platform can; otherwise what the SVSM
/// itself grants (full access up to the caller, none below it).
pub fn perms_now<P: Platform + ?Sized>(p: &P, page: PageAddr, vmpl: u8, caller_vmpl: u8) -> u8 {
    p.vmpl_permissions(page, vmpl).unwrap_or(if vmpl <= caller_vmpl { PERM_ALL } else { 0 })
}

/// Steps a change can have: validation and up to three grants, or three revocations and
/// a VMSA flag.
const MAX_STEPS: usize = 4;

/// A change in progress on `page`: the steps done so far, undone in reverse on drop.
pub struct Undo<'p, P: Platform + ?Sized> {
    p: &'p mut P,
    page: PageAddr,
    what: &'static str,
    steps: [Option<Step>; MAX_STEPS],
}

impl<P: Platform + ?Sized> core::fmt::Debug for Undo<'_, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Undo").field("page", &self.page).field("what", &self.what).finish_non_exhaustive()
    }
}

impl<'p, P: Platform + ?Sized> Undo<'p, P> {
    /// Start a change called `what` on `page`; nothing to undo yet.
    pub fn new(p: &'p mut P, page: PageAddr, what: &'static str) -> Self {
        Self { p, page, what, steps: [None; MAX_STEPS] }
    }

    /// The platform, for the change's next step.
    pub fn platform(&mut self) -> &mut P {
        self.p
    }

    /// A step succeeded; `undo` takes it back. (`MAX_STEPS` at most, which is all any
    /// change here has; one more would be an SVSM bug and is fatal rather than lost.)
    pub fn did(&mut self, undo: Step) {
        match self.steps.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some(undo),
            None => self.p.fatal(format_args!("{}: more undo steps than the guard holds", self.what)),
        }
    }

    /// The change is complete: nothing to undo. The guard owns nothing but its borrow,
    /// so it is simply not dropped (setting a flag for `drop` copied the whole guard on
    /// the hot PVALIDATE path).
    #[inline(always)]
    pub fn commit(self) {
        core::mem::forget(self);
    }
}

impl<P: Platform + ?Sized> Drop for Undo<'_, P> {
    fn drop(&mut self) {
        for step in self.steps.iter_mut().rev().filter_map(Option::take) {
            if let Err(e) = step.undo(self.p, self.page) {
                let (page, what) = (self.page.raw(), self.what);
                self.p.fatal(format_args!("undoing {what} at {page:#x} failed ({e:?}): records and RMP disagree"));
            }
        }
    }
}

/// A range taken from the guest page by page (DEPOSIT_MEM): on drop, every page taken so
/// far gets back the permissions VMPL 1..=3 had on it, unless the change commits.
pub struct RangeUndo<'p, P: Platform + ?Sized> {
    p: &'p mut P,
    first: PageAddr,
    /// What VMPL 1, 2 and 3 could do with each page taken so far, in order.
    taken: Vec<[u8; 3]>,
    committed: bool,
}

impl<P: Platform + ?Sized> core::fmt::Debug for RangeUndo<'_, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RangeUndo")
            .field("first", &self.first)
            .field("taken", &self.taken.len())
            .finish_non_exhaustive()
    }
}

impl<'p, P: Platform + ?Sized> RangeUndo<'p, P> {
    /// A change of up to `pages` pages from `first`; `None` if the heap cannot hold
    /// their record (before anything changed).
    pub fn new(p: &'p mut P, first: PageAddr, pages: u64) -> Option<Self> {
        let taken = crate::heap::with_capacity(usize::try_from(pages).ok()?).ok()?;
        Some(Self { p, first, taken, committed: false })
    }

    pub fn platform(&mut self) -> &mut P {
        self.p
    }

    /// One more page (the next after those taken) is the SVSM's; VMPL 1, 2 and 3 had
    /// `before` on it. Room was made in [`Self::new`]; a page past it would be an SVSM
    /// bug that an undo could not give back, so it is fatal (as [`Undo::did`] is).
    pub fn took_one(&mut self, before: [u8; 3]) {
        if self.taken.len() == self.taken.capacity() {
            self.p.fatal(format_args!("a deposit took more pages than it made room for"));
        }
        self.taken.push(before);
    }

    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl<P: Platform + ?Sized> Drop for RangeUndo<'_, P> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for (page, before) in (self.first.pfn()..).map(PageAddr::from_pfn).zip(self.taken.iter()) {
            for (vmpl, perms) in (1u8..=3).zip(before.iter().copied()) {
                let step = Step::SetPerms { vmpl, perms, size: PageSize::Size4K };
                if let Err(e) = step.undo(self.p, page) {
                    let at = page.raw();
                    self.p.fatal(format_args!("giving back page {at:#x} of a failed deposit failed ({e:?})"));
                }
            }
        }
    }
}
