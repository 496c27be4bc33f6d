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
//! The registry's room is reserved when the SVSM starts (`max` vCPUs), so creating a
//! vCPU never allocates.

use crate::addr::{Gpa, PageAddr};
use alloc::vec::Vec;

/// Index of a vCPU in the registry. The platform names the calling vCPU by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuIndex(pub u32);

impl VcpuIndex {
    pub const STARTUP: Self = Self(0);
}

#[derive(Debug, Clone)]
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
    /// SVSM pages backing this vCPU's SVSM-side context (empty for the startup vCPU,
    /// whose context is part of the SVSM image).
    pub svsm_pages: Vec<PageAddr>,
}

/// A VMSA a replacement took out of service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retired {
    pub vmsa: PageAddr,
    /// The VMPL that created the vCPU on it: the page goes back to that VMPL.
    pub creator_vmpl: u8,
}

#[derive(Debug, Default)]
pub struct VcpuRegistry {
    slots: Vec<Option<Vcpu>>,
}

/// Not enough heap for the registry's room at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoRoom;
impl VcpuRegistry {
    /// A registry with the startup vCPU and room for `max` vCPUs in all.
    pub fn new(startup: Vcpu, max: usize) -> Result<Self, NoRoom> {
        let mut slots = Vec::new();
        slots.try_reserve_exact(max.max(1)).map_err(|_| NoRoom)?;
        slots.push(Some(startup));
        Ok(Self { slots })
    }

    pub fn get(&self, index: VcpuIndex) -> Option<&Vcpu> {
        self.slots.get(index.0 as usize).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, index: VcpuIndex) -> Option<&mut Vcpu> {
        self.slots.get_mut(index.0 as usize).and_then(Option::as_mut)
    }

    pub fn startup(&self) -> Option<&Vcpu> {
        self.get(VcpuIndex::STARTUP)
    }

    /// Live vCPUs.
    pub fn iter(&self) -> impl Iterator<Item = (VcpuIndex, &Vcpu)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|v| (VcpuIndex(i as u32), v)))
    }

    pub fn count(&self) -> usize {
        self.iter().count()
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

    /// Insert into the first free slot after the startup vCPU; the vCPU comes back when
    /// the registry is full (it never grows beyond the room reserved at start-up).
    pub fn insert(&mut self, vcpu: Vcpu) -> Result<VcpuIndex, Vcpu> {
        let free = self.slots.iter().skip(1).position(Option::is_none).map(|i| i + 1);
        let index = match free {
            Some(i) => i,
            None if self.slots.len() < self.slots.capacity() => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return Err(vcpu),
        };
        let Ok(id) = u32::try_from(index) else { return Err(vcpu) };
        match self.slots.get_mut(index) {
            Some(slot) => {
                *slot = Some(vcpu);
                Ok(VcpuIndex(id))
            }
            None => Err(vcpu),
        }
    }

    pub fn remove(&mut self, index: VcpuIndex) -> Option<Vcpu> {
        if index == VcpuIndex::STARTUP {
            return None;
        }
        self.slots.get_mut(index.0 as usize).and_then(Option::take)
    }
}
