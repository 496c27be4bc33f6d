//! Copies of guest memory for call parameters: the one way protocol code reads or writes
//! guest-supplied buffers.
//!
//! Every access is checked against [`PageTracker::check_param`] first (validated guest
//! RAM, not SVSM-owned, not a VMSA) and then copied through the platform. Values are
//! copied out once and used from the copy, so a guest vCPU racing on the same memory
//! cannot change what the SVSM checked (no double fetch).

use crate::addr::{Gpa, PageRange};
use crate::error::{AddressConflict, CallError, CallResult};
use crate::pages::PageTracker;
use crate::platform::Platform;
use zerocopy::{FromBytes, Immutable, IntoBytes};

fn check(pages: &PageTracker, gpa: Gpa, len: usize, write: bool) -> CallResult<()> {
    if len == 0 {
        return Ok(());
    }
    let range = PageRange::covering(gpa, len as u64).ok_or(CallError::address(gpa, AddressConflict::NotRam))?;
    pages.check_param(range, write).map_err(|(page, why)| CallError::address(page.gpa(), why))
}

/// Copy `buf.len()` bytes of guest memory at `gpa` into `buf`.
pub fn read_bytes<P: Platform + ?Sized>(p: &P, pages: &PageTracker, gpa: Gpa, buf: &mut [u8]) -> CallResult<()> {
    check(pages, gpa, buf.len(), false)?;
    p.read(gpa, buf)?;
    Ok(())
}

/// Copy a wire structure out of guest memory.
pub fn read<T, P>(p: &P, pages: &PageTracker, gpa: Gpa) -> CallResult<T>
where
    T: FromBytes + IntoBytes,
    P: Platform + ?Sized,
{
    let mut v = T::new_zeroed();
    read_bytes(p, pages, gpa, v.as_mut_bytes())?;
    Ok(v)
}

/// Would a write of `len` bytes at `gpa` be allowed? (Checked before work whose result
/// must be written back, so the work is not done when the answer cannot be delivered.)
pub fn check_writable(pages: &PageTracker, gpa: Gpa, len: usize) -> CallResult<()> {
    check(pages, gpa, len, true)
}

/// Copy `data` into guest memory at `gpa`.
pub fn write_bytes<P: Platform + ?Sized>(p: &mut P, pages: &PageTracker, gpa: Gpa, data: &[u8]) -> CallResult<()> {
    check(pages, gpa, data.len(), true)?;
    p.write(gpa, data)?;
    Ok(())
}

/// Copy a wire structure into guest memory.
pub fn write<T, P>(p: &mut P, pages: &PageTracker, gpa: Gpa, value: &T) -> CallResult<()>
where
    T: IntoBytes + Immutable,
    P: Platform + ?Sized,
{
    write_bytes(p, pages, gpa, value.as_bytes())
}
