//! Allocation that fails with [`StoreError::OutOfMemory`] instead of aborting.
//!
//! A guest can make the SVSM write its sealed state at will (TPM NV writes, the OCP log
//! level, each attestation's chain link), and the SVSM's heap is fixed: every allocation
//! on the put / remove / commit paths goes through here, so a full heap fails the
//! operation and leaves the store as it was. Opening a store (at boot) may allocate
//! infallibly.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::StoreError;

/// An empty vector with room for exactly `capacity` elements.
pub(crate) fn with_capacity<T>(capacity: usize) -> Result<Vec<T>, StoreError> {
    let mut v = Vec::new();
    v.try_reserve_exact(capacity).map_err(|_| StoreError::OutOfMemory)?;
    Ok(v)
}

/// A copy of `items`.
pub(crate) fn copy<T: Clone>(items: &[T]) -> Result<Vec<T>, StoreError> {
    let mut v = with_capacity(items.len())?;
    v.extend_from_slice(items);
    Ok(v)
}

/// Room for `additional` more elements in `v`.
pub(crate) fn reserve<T>(v: &mut Vec<T>, additional: usize) -> Result<(), StoreError> {
    v.try_reserve(additional).map_err(|_| StoreError::OutOfMemory)
}

/// `N` zero bytes on the heap (built there: a block never passes through the small stack).
pub(crate) fn zeroed<const N: usize>() -> Result<Box<[u8; N]>, StoreError> {
    let mut v = with_capacity(N)?;
    v.resize(N, 0u8);
    // Exactly N long: the conversion cannot fail.
    v.into_boxed_slice().try_into().map_err(|_| StoreError::Internal)
}
