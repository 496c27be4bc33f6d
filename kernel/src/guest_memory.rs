//! Copies of guest memory for call parameters: the one way protocol code reads or writes
//! guest-supplied buffers.
//!
//! Every access is checked first: against [`PageTracker::check_param`] (validated guest
//! RAM, not SVSM-owned, not a VMSA) and against the caller's own permissions
//! ([`Caller::check`]: a less privileged VMPL cannot make the SVSM read or write memory it
//! could not touch itself). Then it is copied through the platform. Values are copied out
//! once and used from the copy, so a guest vCPU racing on the same memory cannot change
//! what the SVSM checked (no double fetch).
//!
//! Each page is copied under its stripe's lock (`pages`), checked again there: another
//! vCPU cannot deposit the page, or make it a VMSA, between the check and the copy, so
//! the SVSM never writes into (or reads from) a page that became its own meanwhile.

use crate::addr::{Gpa, PageRange};
use crate::caller::{Access, Caller};
use crate::error::{AddressConflict, CallError, CallResult};
use crate::pages::{Held, PageTracker};
use crate::platform::Platform;
use abi::PAGE_SIZE;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// What a call may reach: the SVSM's page records and the caller they are checked for.
#[derive(Clone, Copy, Debug)]
pub struct GuestView<'a> {
    pub pages: &'a PageTracker,
    pub caller: Caller,
    /// Only pages the guest owns outright: no calling area either (see
    /// [`GuestView::owned_outright`]).
    outright: bool,
}

impl<'a> GuestView<'a> {
    /// A call's parameters: the guest's pages, its calling areas among them (a buffer in
    /// the calling area is how Linux passes operations).
    pub fn new(pages: &'a PageTracker, caller: Caller) -> Self {
        Self { pages, caller, outright: false }
    }

    /// Pages the guest owns outright: what the SVSM writes on its own account, outside a
    /// call's answer (the OCP's change-event ring). A calling area is refused too: a
    /// write there could set CALL_PENDING for a vCPU that is in no call.
    pub fn owned_outright(pages: &'a PageTracker, caller: Caller) -> Self {
        Self { pages, caller, outright: true }
    }

    fn check_under(&self, held: &mut Held<'_>, range: PageRange, write: bool) -> CallResult<()> {
        let checked = if self.outright { held.check_owned(range) } else { held.check_param(range, write) };
        checked.map_err(|(page, why)| CallError::address(page.gpa(), why))
    }

    fn check<P: Platform + ?Sized>(&self, p: &P, gpa: Gpa, len: usize, write: bool) -> CallResult<()> {
        if len == 0 {
            return Ok(());
        }
        let range = PageRange::covering(gpa, len as u64).ok_or(CallError::address(gpa, AddressConflict::NotRam))?;
        self.check_under(&mut self.pages.unlocked(), range, write)?;
        self.caller.check(p, range, if write { Access::Write } else { Access::Read })
    }

    /// The lock of the page holding `gpa..gpa + len` (one page's piece), with the piece
    /// checked under it.
    fn lock_piece<P: Platform + ?Sized>(&self, p: &P, gpa: Gpa, len: usize, write: bool) -> CallResult<Held<'a>> {
        let range = PageRange::covering(gpa, len as u64).ok_or(CallError::address(gpa, AddressConflict::NotRam))?;
        let mut held = self.pages.lock(range.start(), range.start());
        self.check_under(&mut held, range, write)?;
        self.caller.check(p, range, if write { Access::Write } else { Access::Read })?;
        Ok(held)
    }
}

/// The pieces of `gpa..gpa + len` that lie in one page each: (their gpa, their offset
/// from `gpa`, their length). Stops early if the range wraps the address space.
fn pieces(gpa: Gpa, len: usize) -> impl Iterator<Item = (Gpa, usize, usize)> {
    let mut done = 0usize;
    core::iter::from_fn(move || {
        let at = gpa.checked_add(done as u64).filter(|_| done < len)?;
        let n = usize::try_from(PAGE_SIZE - at.page_offset()).unwrap_or(usize::MAX).min(len - done);
        let piece = (at, done, n);
        done += n;
        Some(piece)
    })
}

/// Copy `buf.len()` bytes of guest memory at `gpa` into `buf`.
pub fn read_bytes<P: Platform + ?Sized>(p: &P, view: GuestView<'_>, gpa: Gpa, buf: &mut [u8]) -> CallResult<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let len = buf.len();
    // A range that wraps the address space is no memory at all.
    PageRange::covering(gpa, len as u64).ok_or(CallError::address(gpa, AddressConflict::NotRam))?;
    for (at, from, n) in pieces(gpa, len) {
        let _held = view.lock_piece(p, at, n, false)?;
        let part = buf.get_mut(from..from + n).ok_or(CallError::address(at, AddressConflict::NotRam))?;
        p.read(at, part)?;
    }
    Ok(())
}

/// Copy a wire structure out of guest memory.
pub fn read<T, P>(p: &P, view: GuestView<'_>, gpa: Gpa) -> CallResult<T>
where
    T: FromBytes + IntoBytes,
    P: Platform + ?Sized,
{
    let mut v = T::new_zeroed();
    read_bytes(p, view, gpa, v.as_mut_bytes())?;
    Ok(v)
}

/// Would a read of `len` bytes at `gpa` be allowed?
pub fn check_readable<P: Platform + ?Sized>(p: &P, view: GuestView<'_>, gpa: Gpa, len: usize) -> CallResult<()> {
    view.check(p, gpa, len, false)
}

/// Would a write of `len` bytes at `gpa` be allowed? (Checked before work whose result
/// must be written back, so the work is not done when the answer cannot be delivered.)
pub fn check_writable<P: Platform + ?Sized>(p: &P, view: GuestView<'_>, gpa: Gpa, len: usize) -> CallResult<()> {
    view.check(p, gpa, len, true)
}

/// Copy `data` into guest memory at `gpa`.
pub fn write_bytes<P: Platform + ?Sized>(p: &mut P, view: GuestView<'_>, gpa: Gpa, data: &[u8]) -> CallResult<()> {
    write_with(p, view, gpa, data.len(), |p, at, from, n| {
        let part = data.get(from..from + n).ok_or(CallError::address(at, AddressConflict::NotRam))?;
        p.write(at, part)?;
        Ok(n)
    })
    .map(|_| ())
}

/// Fill `len` bytes of guest memory at `gpa` with what `fill` writes there: called for
/// each page's piece (its gpa, its offset from `gpa`, its length) under that page's lock,
/// it answers how many bytes it wrote (fewer ends the copy). The whole range is checked
/// before the first byte is written, so a refused range gets nothing. Answers the bytes
/// written.
pub fn write_with<P: Platform + ?Sized>(
    p: &mut P,
    view: GuestView<'_>,
    gpa: Gpa,
    len: usize,
    mut fill: impl FnMut(&mut P, Gpa, usize, usize) -> CallResult<usize>,
) -> CallResult<usize> {
    view.check(p, gpa, len, true)?;
    let mut done = 0;
    for (at, from, n) in pieces(gpa, len) {
        let _held = view.lock_piece(p, at, n, true)?;
        // Noted before the fill: one that fails part-way may have written some of it.
        if let Some(range) = PageRange::covering(at, n as u64) {
            view.pages.note_changed(range);
        }
        let wrote = fill(p, at, from, n)?;
        done += wrote;
        if wrote < n {
            break;
        }
    }
    Ok(done)
}

/// Copy a wire structure into guest memory.
pub fn write<T, P>(p: &mut P, view: GuestView<'_>, gpa: Gpa, value: &T) -> CallResult<()>
where
    T: IntoBytes + Immutable,
    P: Platform + ?Sized,
{
    write_bytes(p, view, gpa, value.as_bytes())
}
