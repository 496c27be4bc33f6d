//! The registry of guest vCPUs the SVSM serves: for each, its VMSA, its calling area, its
//! APIC ID and the SVSM pages that hold its SVSM-side context.
//!
//! The startup vCPU (index 0) comes from the launch and can never be deleted (spec
//! 58019 section 6.4). Others are added by CREATE_VCPU and removed by DELETE_VCPU.

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
    /// The calling area: an 8-byte area, 8-byte aligned (REMAP_CA may move it inside a
    /// page; CREATE_VCPU places it at a page start).
    pub calling_area: Gpa,
    /// SVSM pages backing this vCPU's SVSM-side context (empty for the startup vCPU,
    /// whose context is part of the SVSM image).
    pub svsm_pages: Vec<PageAddr>,
}

#[derive(Debug, Default)]
pub struct VcpuRegistry {
    slots: Vec<Option<Vcpu>>,
}

impl VcpuRegistry {
    pub fn new(startup: Vcpu) -> Self {
        Self { slots: alloc::vec![Some(startup)] }
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

    pub fn find_by_apic_id(&self, apic_id: u32) -> Option<VcpuIndex> {
        self.iter().find(|(_, v)| v.apic_id == apic_id).map(|(i, _)| i)
    }

    /// Insert into the first free slot after the startup vCPU; `None` when the registry
    /// is at `max` live vCPUs.
    pub fn insert(&mut self, vcpu: Vcpu, max: usize) -> Option<VcpuIndex> {
        if self.count() >= max {
            return None;
        }
        if let Some(i) = self.slots.iter().skip(1).position(Option::is_none) {
            self.slots[i + 1] = Some(vcpu);
            return Some(VcpuIndex((i + 1) as u32));
        }
        self.slots.push(Some(vcpu));
        Some(VcpuIndex((self.slots.len() - 1) as u32))
    }

    pub fn remove(&mut self, index: VcpuIndex) -> Option<Vcpu> {
        if index == VcpuIndex::STARTUP {
            return None;
        }
        self.slots.get_mut(index.0 as usize).and_then(Option::take)
    }
}
