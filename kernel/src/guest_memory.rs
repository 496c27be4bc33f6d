//! Copies of guest memory for call parameters: the one way protocol code reads or writes
//! guest-supplied buffers.
//!
//! Every access is checked first: against [`PageTracker::check_param`] (validated guest
//! RAM, not SVSM-owned, not a VMSA) and against the caller's own permissions
//! ([`Caller::check`]: a less privileged VMPL cannot make the SVSM read or write memory it
//! could not touch itself). Then it is copied through the platform. Values are copied out
//! once and used from the copy, so a guest vCPU racing on the same memory cannot change
//! what the SVSM checked (no double fetch).

use crate::addr::{Gpa, PageRange};
use crate::caller::{Access, Caller};
use crate::error::{AddressConflict, CallError, CallResult};
use crate::pages::PageTracker;
use crate::platform::Platform;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// What a call may reach: the SVSM's page records and the caller they are checked for.
#[derive(Clone, Copy, Debug)]
pub struct GuestView<'a> {
    pub pages: &'a PageTracker,
    pub caller: Caller,
}

impl<'a> GuestView<'a> {
    pub fn new(pages: &'a PageTracker, caller: Caller) -> Self {
        Self { pages, caller }
    }

    fn check<P: Platform + ?Sized>(&self, p: &P, gpa: Gpa, len: usize, write: bool) -> CallResult<()> {
        if len == 0 {
            return Ok(());
        }
        let range = PageRange::covering(gpa, len as u64).ok_or(CallError::address(gpa, AddressConflict::NotRam))?;
        self.pages.check_param(range, write).map_err(|(page, why)| CallError::address(page.gpa(), why))?;
        self.caller.check(p, range, if write { Access::Write } else { Access::Read })
    }
}

/// Copy `buf.len()` bytes of guest memory at `gpa` into `buf`.
pub fn read_bytes<P: Platform + ?Sized>(p: &P, view: GuestView<'_>, gpa: Gpa, buf: &mut [u8]) -> CallResult<()> {
    view.check(p, gpa, buf.len(), false)?;
    p.read(gpa, buf)?;
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
    view.check(p, gpa, data.len(), true)?;
    p.write(gpa, data)?;
    Ok(())
}

/// Copy a wire structure into guest memory.
pub fn write<T, P>(p: &mut P, view: GuestView<'_>, gpa: Gpa, value: &T) -> CallResult<()>
where
    T: IntoBytes + Immutable,
    P: Platform + ?Sized,
{
    write_bytes(p, view, gpa, value.as_bytes())
}
