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

use crate::addr::{Gpa, PageAddr};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
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
    slots: Vec<Mutex<Option<Vcpu>>>,
    /// Held by whoever changes the set of vCPUs.
    changes: Mutex<()>,
    live: AtomicUsize,
}

/// Not enough heap for the registry's room at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoRoom;

impl VcpuRegistry {
    /// A registry with the startup vCPU and room for `max` vCPUs in all.
    pub fn new(startup: Vcpu, max: usize) -> Result<Self, NoRoom> {
        let mut slots = Vec::new();
        slots.try_reserve_exact(max.max(1)).map_err(|_| NoRoom)?;
        slots.push(Mutex::new(Some(startup)));
        slots.resize_with(max.max(1), || Mutex::new(None));
        Ok(Self { slots, changes: Mutex::new(()), live: AtomicUsize::new(1) })
    }

    /// Exclusive right to change the set of vCPUs (create, delete, replace), held for the
    /// whole change.
    pub fn change(&self) -> MutexGuard<'_, ()> {
        self.changes.lock()
    }

    fn slot(&self, index: VcpuIndex) -> Option<&Mutex<Option<Vcpu>>> {
        self.slots.get(index.0 as usize)
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
        self.slots.iter().enumerate().filter_map(|(i, s)| Some((VcpuIndex(u32::try_from(i).ok()?), (*s.lock())?)))
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
            let mut s = slot.lock();
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
