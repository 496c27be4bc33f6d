//! The registry of guest vCPUs the SVSM serves: for each, its VMSA, its calling area, its
//! APIC ID and the SVSM pages that hold its SVSM-side context.
//!
//! The startup vCPU (index 0) comes from the launch and can never be deleted (spec
//! 58019 section 6.4). Others are added by CREATE_VCPU and removed by DELETE_VCPU.
//!
//! A vCPU can also be *replaced*: Linux brings an offlined CPU back with CREATE_VCPU(new
//! VMSA, same APIC ID) before DELETE_VCPU(old VMSA). The vCPU keeps its index and SVSM
//! pages and runs on the new VMSA; the old one is *retired*: no longer run or served, still
//! the SVSM's page until DELETE_VCPU names it.
//!
//! Concurrency: each vCPU has its own slot and lock, so serving a call reads the caller's
//! slot and nothing else (no lock all CPUs share). Changes to the set of vCPUs (create,
//! delete, replace) hold [`VcpuRegistry::change`], so two of them cannot both give out an
//! APIC ID or a slot. The room for `max` vCPUs is reserved at start: creating a vCPU never
//! allocates.
//!
//! A call in service pins the VMSA it is served on ([`VcpuRegistry::begin_call`]): the
//! SVSM writes the answer into that VMSA and the calling area at the end, so neither may
//! go back to the guest meanwhile. DELETE_VCPU of that VMSA, current or retired, and a
//! replacement of the vCPU are refused with CORE_VCPU_IN_USE until the call is answered
//! (the guest may retry), and a vCPU being deleted or replaced starts no call.

use crate::addr::{Gpa, PageAddr};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use spin::{Mutex, MutexGuard};

/// SVSM pages each created vCPU needs for its SVSM-side context: the SVSM's own VMSA for
/// that vCPU and an 8 KiB stack.
pub const VCPU_CONTEXT_PAGES: usize = 3;

/// Index of a vCPU in the registry. The platform names the calling vCPU by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuIndex(pub u32);

impl VcpuIndex {
    pub const STARTUP: Self = Self(0);
}

/// A VMSA a replacement took out of service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retired {
    pub vmsa: PageAddr,
    /// The VMPL that created the vCPU on it: the page goes back to that VMPL.
    pub creator_vmpl: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vcpu {
    pub apic_id: u32,
    pub vmsa: PageAddr,
    /// The VMPL the vCPU runs at (its VMSA's, checked at creation).
    pub vmpl: u8,
    /// The VMPL of the caller that created it (the launch's VMPL for the startup vCPU): its
    /// pages go back to that VMPL, and a less privileged one cannot delete or replace it.
    pub creator_vmpl: u8,
    /// A previous VMSA this vCPU was replaced from, waiting for DELETE_VCPU.
    pub retired: Option<Retired>,
    /// The calling area: an 8-byte area, 8-byte aligned (REMAP_CA may move it inside a
    /// page; CREATE_VCPU places it at a page start).
    pub calling_area: Gpa,
    /// SVSM pages backing this vCPU's SVSM-side context (none for the startup vCPU,
    /// whose context is part of the SVSM image).
    pub svsm_pages: Option<[PageAddr; VCPU_CONTEXT_PAGES]>,
}

impl Vcpu {
    /// The SVSM pages as the platform takes them.
    pub fn context_pages(&self) -> &[PageAddr] {
        self.svsm_pages.as_ref().map_or(&[], |p| &p[..])
    }
}

#[derive(Debug, Default)]
pub struct VcpuRegistry {
    slots: Vec<VcpuSlot>,
    /// Held by whoever changes the set of vCPUs.
    changes: Mutex<()>,
    live: AtomicUsize,
}

/// A vCPU's place in the registry.
#[derive(Debug)]
struct VcpuSlot {
    vcpu: Mutex<Option<Vcpu>>,
    /// What is being done with the vCPU: [`NO_CALL`], [`LEAVING`] (a deletion or a
    /// replacement is taking it), or a call served on a VMSA ([`served_on`]). Beside the
    /// vCPU, not in an array of its own: every call reads both, and under QEMU's TCG each
    /// data page a call touches costs a page walk after the world switch.
    call: AtomicU64,
}

impl VcpuSlot {
    fn new(vcpu: Option<Vcpu>) -> Self {
        Self { vcpu: Mutex::new(vcpu), call: AtomicU64::new(NO_CALL) }
    }
}

/// No call of the vCPU is in service, and no deletion or replacement is taking it.
const NO_CALL: u64 = 0;
/// DELETE_VCPU or a replacement is taking the vCPU: no call of it starts.
const LEAVING: u64 = 1;

/// The call state of a call served on `vmsa` (page aligned: bit 1 tells it from the two
/// states above, also for a VMSA at gpa 0).
fn served_on(vmsa: PageAddr) -> u64 {
    vmsa.raw() | 2
}

/// A call of a vCPU in service on one VMSA ([`VcpuRegistry::begin_call`]); ends when
/// dropped.
#[derive(Debug)]
pub struct InCall<'a>(&'a AtomicU64);

impl Drop for InCall<'_> {
    fn drop(&mut self) {
        self.0.store(NO_CALL, Ordering::Release);
    }
}

/// DELETE_VCPU or a replacement taking a vCPU ([`VcpuRegistry::begin_removal`]): no
/// call of its slot starts until dropped.
#[derive(Debug)]
pub struct Leaving<'a>(&'a AtomicU64);

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        self.0.store(NO_CALL, Ordering::Release);
    }
}

/// Not enough heap for the registry's room at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoRoom;

impl VcpuRegistry {
    /// A registry with the startup vCPU and room for `max` vCPUs in all.
    pub fn new(startup: Vcpu, max: usize) -> Result<Self, NoRoom> {
        let mut slots = Vec::new();
        slots.try_reserve_exact(max.max(1)).map_err(|_| NoRoom)?;
        slots.push(VcpuSlot::new(Some(startup)));
        slots.resize_with(max.max(1), || VcpuSlot::new(None));
        Ok(Self { slots, changes: Mutex::new(()), live: AtomicUsize::new(1) })
    }

    /// Start serving a call of vCPU `index`: the vCPU as it is now, its VMSA pinned until
    /// the guard drops. `None` if there is no such vCPU, DELETE_VCPU or a replacement is
    /// taking it, or a call of it is in service already (an entry the platform should
    /// never make).
    pub fn begin_call(&self, index: VcpuIndex) -> Option<(Vcpu, InCall<'_>)> {
        let slot = self.slots.get(index.0 as usize)?;
        let state = &slot.call;
        // Under the slot's lock, as `begin_removal` sets its state (a guard's reset to
        // NO_CALL is the only change made without it): no compare-exchange is needed,
        // and the vCPU read here is the one pinned.
        let vcpu = slot.vcpu.lock();
        let now = (*vcpu)?;
        if state.load(Ordering::Acquire) != NO_CALL {
            return None;
        }
        state.store(served_on(now.vmsa), Ordering::Release);
        Some((now, InCall(state)))
    }

    /// Start taking vCPU `index` away or replacing its VMSA (DELETE_VCPU, CREATE_VCPU of
    /// its APIC ID; with [`Self::change`] held): no call of it starts until the guard
    /// drops. `None` while one is in service.
    pub fn begin_removal(&self, index: VcpuIndex) -> Option<Leaving<'_>> {
        let slot = self.slots.get(index.0 as usize)?;
        let state = &slot.call;
        let _vcpu = slot.vcpu.lock();
        if state.load(Ordering::Acquire) != NO_CALL {
            return None;
        }
        state.store(LEAVING, Ordering::Release);
        Some(Leaving(state))
    }

    /// Is a call of vCPU `index` in service on `vmsa` now? (A retired VMSA starts no
    /// call: a call pins the VMSA its slot has.)
    pub fn in_call_on(&self, index: VcpuIndex, vmsa: PageAddr) -> bool {
        self.slots.get(index.0 as usize).is_some_and(|s| s.call.load(Ordering::Acquire) == served_on(vmsa))
    }

    /// Exclusive right to change the set of vCPUs (create, delete, replace), held for the
    /// whole change.
    pub fn change(&self) -> MutexGuard<'_, ()> {
        self.changes.lock()
    }

    fn slot(&self, index: VcpuIndex) -> Option<&Mutex<Option<Vcpu>>> {
        self.slots.get(index.0 as usize).map(|s| &s.vcpu)
    }

    /// A copy of vCPU `index`, as it is now.
    pub fn get(&self, index: VcpuIndex) -> Option<Vcpu> {
        *self.slot(index)?.lock()
    }

    /// Change vCPU `index` in place (its own calling area, say).
    pub fn update<R>(&self, index: VcpuIndex, f: impl FnOnce(&mut Vcpu) -> R) -> Option<R> {
        self.slot(index)?.lock().as_mut().map(f)
    }

    pub fn startup(&self) -> Option<Vcpu> {
        self.get(VcpuIndex::STARTUP)
    }

    /// Live vCPUs, each as it was when the iteration reached it.
    pub fn iter(&self) -> impl Iterator<Item = (VcpuIndex, Vcpu)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| Some((VcpuIndex(u32::try_from(i).ok()?), (*s.vcpu.lock())?)))
    }

    pub fn count(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    pub fn find_by_vmsa(&self, vmsa: PageAddr) -> Option<VcpuIndex> {
        self.iter().find(|(_, v)| v.vmsa == vmsa).map(|(i, _)| i)
    }

    /// The vCPU whose retired VMSA is `vmsa`.
    pub fn find_by_retired(&self, vmsa: PageAddr) -> Option<VcpuIndex> {
        self.iter().find(|(_, v)| v.retired.is_some_and(|r| r.vmsa == vmsa)).map(|(i, _)| i)
    }

    pub fn find_by_apic_id(&self, apic_id: u32) -> Option<VcpuIndex> {
        self.iter().find(|(_, v)| v.apic_id == apic_id).map(|(i, _)| i)
    }

    /// Insert into the first free slot after the startup vCPU (the caller holds
    /// [`Self::change`]); the vCPU comes back when every slot is taken.
    pub fn insert(&self, vcpu: Vcpu) -> Result<VcpuIndex, Vcpu> {
        for (i, slot) in self.slots.iter().enumerate().skip(1) {
            let mut s = slot.vcpu.lock();
            if s.is_none()
                && let Ok(id) = u32::try_from(i)
            {
                *s = Some(vcpu);
                self.live.fetch_add(1, Ordering::AcqRel);
                return Ok(VcpuIndex(id));
            }
        }
        Err(vcpu)
    }

    /// Take vCPU `index` out (the caller holds [`Self::change`]); never the startup vCPU.
    pub fn remove(&self, index: VcpuIndex) -> Option<Vcpu> {
        if index == VcpuIndex::STARTUP {
            return None;
        }
        let gone = self.slot(index)?.lock().take();
        if gone.is_some() {
            self.live.fetch_sub(1, Ordering::AcqRel);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vcpu(vmsa: u64) -> Vcpu {
        Vcpu {
            apic_id: 0,
            vmsa: PageAddr::new(vmsa).unwrap(),
            vmpl: 1,
            creator_vmpl: 1,
            retired: None,
            calling_area: Gpa(vmsa + 0x1000),
            svsm_pages: None,
        }
    }

    #[test]
    fn a_call_in_service_holds_off_a_removal_and_a_removal_holds_off_calls() {
        let r = VcpuRegistry::new(vcpu(0x10_000), 4).unwrap();
        let one = r.insert(vcpu(0x20_000)).unwrap();
        let (seen, call) = r.begin_call(one).unwrap();
        assert_eq!(seen.vmsa.raw(), 0x20_000);
        assert!(r.in_call_on(one, seen.vmsa) && !r.in_call_on(one, PageAddr::new(0x30_000).unwrap()));
        assert!(r.begin_removal(one).is_none(), "its call is in service");
        assert!(r.begin_call(one).is_none(), "one call of a vCPU at a time");
        assert!(r.begin_call(VcpuIndex::STARTUP).is_some(), "another vCPU's call is its own business");
        drop(call);
        let leaving = r.begin_removal(one).unwrap();
        assert!(r.begin_call(one).is_none(), "a vCPU being deleted starts no call");
        assert!(r.remove(one).is_some());
        drop(leaving);
        assert!(r.begin_call(one).is_none(), "gone");
        assert!(r.begin_call(VcpuIndex(9)).is_none() && r.begin_removal(VcpuIndex(9)).is_none(), "beyond the slots");
    }

    /// A call is pinned on the VMSA its slot has when it starts; a VMSA the slot had
    /// before (retired by a replacement) is not pinned by it.
    #[test]
    fn a_call_is_pinned_on_the_vmsa_its_slot_has_now() {
        let r = VcpuRegistry::new(vcpu(0x10_000), 4).unwrap();
        let one = r.insert(vcpu(0x20_000)).unwrap();
        r.update(one, |v| v.vmsa = PageAddr::new(0x40_000).unwrap());
        let (seen, _call) = r.begin_call(one).unwrap();
        assert_eq!(seen.vmsa.raw(), 0x40_000, "read after the change: served on the new VMSA");
        assert!(!r.in_call_on(one, PageAddr::new(0x20_000).unwrap()), "the old VMSA is free to go");
    }
}
