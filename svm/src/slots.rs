//! Where each vCPU is: in the SVSM's hands ([`Slot::Here`]), or out on a CPU that runs
//! it ([`Slot::Out`]). vCPU `i` lives on CPU `i % cpus`.
//!
//! A CPU takes a vCPU out to run it ([`Slots::take`]) and puts it back after the #VMEXIT
//! ([`Slots::put_back`]), so the SVSM's lock is never held while a guest runs. While a
//! vCPU is out, the SVSM may have to change what it sees: a nested-paging change must
//! reach its TLB, DELETE_VCPU must stop it. Such a change is recorded in its [`Running`]
//! entry and its CPU is kicked (the caller's `kick`), which makes the CPU leave the guest
//! before the change counts as done; putting the vCPU back applies what was recorded.
//! Taking out and putting back swap the slot's content in place: the exit path
//! allocates nothing.

use crate::hw::PageMem;
use crate::vcpu::SvmVcpu;
use alloc::collections::BTreeMap;

/// Where a vCPU is.
#[derive(Debug)]
pub enum Slot<P> {
    Here(SvmVcpu<P>),
    Out(Running),
}

impl<P> Slot<P> {
    fn vmsa_gpa(&self) -> u64 {
        match self {
            Slot::Here(v) => v.vmsa_gpa,
            Slot::Out(r) => r.vmsa_gpa,
        }
    }
}

/// A vCPU out on a CPU: what the SVSM may need of it meanwhile (the fields the guest
/// cannot change), and what it must do when it comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    pub cpu: u32,
    pub vmsa_gpa: u64,
    pub vmpl: u8,
    pub sev_features: u64,
    /// Which vCPU of this index it is (an index is reused after a deletion).
    pub serial: u64,
    /// Nested paging changed: flush its guest TLB before it runs again.
    pub flush: bool,
    /// DELETE_VCPU stopped it: it must not run again.
    pub stop: bool,
}

/// What putting a vCPU back did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutBack {
    /// Back in the SVSM's hands, as it was.
    Back,
    /// Back, with its guest TLB to be flushed on its next VMRUN.
    Flushed,
    /// Back and stopped: DELETE_VCPU stopped it while it was out.
    Stopped,
    /// Deleted while it was out (or never taken): dropped.
    Dropped,
}

/// No vCPU has this VMSA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoSuchVcpu;

#[derive(Debug)]
pub struct Slots<P> {
    vcpus: BTreeMap<u32, Slot<P>>,
    /// CPUs that run vCPUs (at least 1).
    cpus: u32,
    /// The serial the next inserted vCPU gets.
    next_serial: u64,
}

impl<P: PageMem> Slots<P> {
    pub fn new(cpus: u32) -> Self {
        Self { vcpus: BTreeMap::new(), cpus: cpus.max(1), next_serial: 1 }
    }

    pub fn cpus(&self) -> u32 {
        self.cpus
    }

    /// The CPU that runs vCPU `index`.
    pub fn home(&self, index: u32) -> u32 {
        index % self.cpus
    }

    /// A new vCPU, in the SVSM's hands (replacing any vCPU of that index).
    pub fn insert(&mut self, index: u32, mut vcpu: SvmVcpu<P>) {
        vcpu.serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        self.vcpus.insert(index, Slot::Here(vcpu));
    }

    /// Forget vCPU `index`. One that is out is dropped when its CPU puts it back.
    pub fn remove(&mut self, index: u32) {
        self.vcpus.remove(&index);
    }

    pub fn slot(&self, index: u32) -> Option<&Slot<P>> {
        self.vcpus.get(&index)
    }

    /// vCPU `index`, if it is in the SVSM's hands.
    pub fn get(&self, index: u32) -> Option<&SvmVcpu<P>> {
        match self.vcpus.get(&index)? {
            Slot::Here(v) => Some(v),
            Slot::Out(_) => None,
        }
    }

    pub fn get_mut(&mut self, index: u32) -> Option<&mut SvmVcpu<P>> {
        match self.vcpus.get_mut(&index)? {
            Slot::Here(v) => Some(v),
            Slot::Out(_) => None,
        }
    }

    /// The slot of the vCPU whose VMSA is the page at `vmsa_gpa`.
    pub fn by_vmsa(&self, vmsa_gpa: u64) -> Option<&Slot<P>> {
        self.vcpus.values().find(|slot| slot.vmsa_gpa() == vmsa_gpa)
    }

    pub fn by_vmsa_mut(&mut self, vmsa_gpa: u64) -> Option<&mut Slot<P>> {
        self.vcpus.values_mut().find(|slot| slot.vmsa_gpa() == vmsa_gpa)
    }

    /// Indices and VMSAs of every vCPU, in index order.
    pub fn vmsas(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.vcpus.iter().map(|(i, slot)| (*i, slot.vmsa_gpa()))
    }

    /// The vCPUs of `cpu` in the SVSM's hands that may run, in index order.
    pub fn runnable_on(&self, cpu: u32) -> impl Iterator<Item = u32> + '_ {
        self.vcpus.iter().filter_map(move |(i, slot)| match slot {
            Slot::Here(v) if !v.stopped && self.home(*i) == cpu => Some(*i),
            _ => None,
        })
    }

    /// Take vCPU `index` out of the SVSM's hands to run it on `cpu`; `None` if it is out
    /// already, stopped, or unknown.
    pub fn take(&mut self, index: u32, cpu: u32) -> Option<SvmVcpu<P>> {
        let slot = self.vcpus.get_mut(&index)?;
        let Slot::Here(v) = &*slot else { return None };
        if v.stopped {
            return None;
        }
        let r = Running {
            cpu,
            vmsa_gpa: v.vmsa_gpa,
            vmpl: v.vmpl,
            sev_features: v.sev_features,
            serial: v.serial,
            flush: false,
            stop: false,
        };
        match core::mem::replace(slot, Slot::Out(r)) {
            Slot::Here(v) => Some(v),
            Slot::Out(_) => None,
        }
    }

    /// Take the next runnable vCPU of `cpu` after `last` (round robin): its index, the
    /// vCPU, and whether it was the only one that could run there.
    pub fn take_next(&mut self, cpu: u32, last: Option<u32>) -> Option<(u32, SvmVcpu<P>, bool)> {
        let index =
            self.runnable_on(cpu).find(|i| last.is_none_or(|l| *i > l)).or_else(|| self.runnable_on(cpu).next())?;
        let alone = self.runnable_on(cpu).nth(1).is_none();
        let vcpu = self.take(index, cpu)?;
        Some((index, vcpu, alone))
    }

    /// Give vCPU `index` back after its #VMEXIT (or a kick), applying what happened while
    /// it was out. A vCPU deleted meanwhile, or one that was not out, is dropped.
    pub fn put_back(&mut self, index: u32, mut v: SvmVcpu<P>) -> PutBack {
        let Some(slot) = self.vcpus.get_mut(&index) else { return PutBack::Dropped };
        let Slot::Out(r) = *slot else { return PutBack::Dropped };
        if r.serial != v.serial {
            return PutBack::Dropped;
        }
        if r.flush {
            v.flush_tlb();
        }
        if r.stop {
            v.stop();
        }
        let done = match (r.stop, r.flush) {
            (true, _) => PutBack::Stopped,
            (false, true) => PutBack::Flushed,
            (false, false) => PutBack::Back,
        };
        *slot = Slot::Here(v);
        done
    }

    /// Stop the vCPU whose VMSA is at `vmsa_gpa` for good (DELETE_VCPU). One in the
    /// SVSM's hands stops now; for one that is out, the CPU to kick is returned: it must
    /// leave the guest before the stop counts as done.
    pub fn stop(&mut self, vmsa_gpa: u64) -> Result<Option<u32>, NoSuchVcpu> {
        match self.by_vmsa_mut(vmsa_gpa).ok_or(NoSuchVcpu)? {
            Slot::Here(v) => {
                v.stop();
                Ok(None)
            }
            Slot::Out(r) => {
                r.stop = true;
                Ok(Some(r.cpu))
            }
        }
    }

    /// Nested paging changed: every vCPU in the SVSM's hands flushes on its next VMRUN;
    /// every vCPU out is marked to flush when it comes back and its CPU is `kick`ed.
    pub fn flush_all(&mut self, mut kick: impl FnMut(u32)) {
        for slot in self.vcpus.values_mut() {
            match slot {
                Slot::Here(v) => v.flush_tlb(),
                Slot::Out(r) => {
                    r.flush = true;
                    kick(r.cpu);
                }
            }
        }
    }

    /// Is the VMSA page `pfn` in use: its vCPU out on a CPU and not stopped? (RMPADJUST
    /// may not take the VMSA flag off a VMSA the hardware runs.)
    pub fn vmsa_in_use(&self, pfn: u64) -> bool {
        self.vcpus.values().any(|slot| matches!(slot, Slot::Out(r) if !r.stop && r.vmsa_gpa >> 12 == pfn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_page::TestPage;
    use crate::vcpu::Controls;
    use abi::vmcb::offset;
    use abi::vmsa::VmsaField;
    use std::vec::Vec;

    const C: Controls = Controls { npt_root: 0x1000, msrpm: 0x2000, iopm: 0x4000 };

    fn vcpu(vmsa: u64) -> SvmVcpu<TestPage> {
        SvmVcpu::long_mode(TestPage::new(1), C, vmsa, 0x20_0000, 0xB000)
    }

    /// Two CPUs; vCPUs 0 and 2 live on CPU 0, vCPU 1 on CPU 1.
    fn slots() -> Slots<TestPage> {
        let mut s = Slots::new(2);
        for i in 0..3 {
            s.insert(i, vcpu(0xA000 + u64::from(i) * 0x1000));
        }
        s
    }

    fn tlb_flush(v: &SvmVcpu<TestPage>) -> u8 {
        v.vmcb.u8(offset::TLB_CONTROL)
    }

    #[test]
    fn take_and_put_back_swap_the_slot() {
        let mut s = slots();
        let v = s.take(1, 1).unwrap();
        assert!(s.get(1).is_none(), "out: not in the SVSM's hands");
        assert_eq!(
            s.slot(1).map(|slot| matches!(slot, Slot::Out(r) if r.cpu == 1 && r.vmsa_gpa == 0xB000)),
            Some(true)
        );
        assert!(s.take(1, 1).is_none(), "a vCPU is out once");
        assert!(s.vmsa_in_use(0xB));
        assert_eq!(s.put_back(1, v), PutBack::Back);
        assert!(s.get(1).is_some() && !s.vmsa_in_use(0xB));
        assert_eq!(tlb_flush(s.get(1).unwrap()), 0);
    }

    #[test]
    fn round_robin_over_the_vcpus_of_a_cpu() {
        let mut s = slots();
        let (i, v, alone) = s.take_next(0, None).unwrap();
        assert_eq!((i, alone), (0, false));
        s.put_back(i, v);
        let (i, v, _) = s.take_next(0, Some(0)).unwrap();
        assert_eq!(i, 2, "the next after 0 on CPU 0");
        s.put_back(i, v);
        assert_eq!(s.take_next(0, Some(2)).map(|t| t.0), Some(0), "wraps around");
        let (i, _, alone) = s.take_next(1, None).unwrap();
        assert_eq!((i, alone), (1, true));
        assert!(s.take_next(1, None).is_none(), "its only vCPU is out");
        assert!(s.take_next(5, None).is_none(), "a CPU with no vCPUs");
    }

    /// A nested-paging change reaches a vCPU out on a CPU: its CPU is kicked, and it
    /// flushes when it comes back; those in the SVSM's hands flush on their next VMRUN.
    #[test]
    fn a_flush_while_out_kicks_and_applies_on_put_back() {
        let mut s = slots();
        let v = s.take(1, 1).unwrap();
        let mut kicked = Vec::new();
        s.flush_all(|cpu| kicked.push(cpu));
        assert_eq!(kicked, [1]);
        assert_eq!(tlb_flush(s.get(0).unwrap()), 1);
        assert_eq!(tlb_flush(&v), 0, "the running copy is untouched");
        assert_eq!(s.put_back(1, v), PutBack::Flushed);
        assert_eq!(tlb_flush(s.get(1).unwrap()), 1);
    }

    /// DELETE_VCPU of a vCPU out on another CPU: kicked, stopped on return (EFER.SVME
    /// clear, never taken again), and its VMSA no longer in use meanwhile.
    #[test]
    fn a_stop_while_out_kicks_and_applies_on_put_back() {
        let mut s = slots();
        let v = s.take(1, 1).unwrap();
        assert_eq!(s.stop(0xB000), Ok(Some(1)));
        assert!(!s.vmsa_in_use(0xB), "a stopped vCPU's VMSA can be unflagged");
        let mut kicked = Vec::new();
        s.flush_all(|cpu| kicked.push(cpu));
        assert_eq!(kicked, [1], "still out until its CPU comes back");
        assert_eq!(s.put_back(1, v), PutBack::Stopped);
        let back = s.get(1).unwrap();
        assert!(back.stopped);
        assert_eq!(back.field(VmsaField::Efer) & abi::hw::EFER_SVME, 0);
        assert_eq!(tlb_flush(back), 1, "the flush recorded before the stop is kept");
        assert!(s.take(1, 1).is_none() && s.take_next(1, None).is_none());
    }

    #[test]
    fn a_stop_in_the_svsms_hands_is_immediate() {
        let mut s = slots();
        assert_eq!(s.stop(0xA000), Ok(None));
        assert!(s.get(0).unwrap().stopped);
        assert!(s.take(0, 0).is_none());
        assert_eq!(s.take_next(0, None).map(|t| t.0), Some(2), "the other vCPU of CPU 0 runs");
        assert_eq!(s.stop(0x5000), Err(NoSuchVcpu));
    }

    /// A vCPU deleted while it was out is dropped when its CPU puts it back, and never
    /// comes back under its index; so is a vCPU put back that was never taken.
    #[test]
    fn put_back_of_a_deleted_vcpu_drops_it() {
        let mut s = slots();
        let v = s.take(1, 1).unwrap();
        s.stop(0xB000).unwrap();
        s.remove(1);
        assert_eq!(s.put_back(1, v), PutBack::Dropped);
        assert!(s.slot(1).is_none());
        assert_eq!(s.put_back(0, vcpu(0xA000)), PutBack::Dropped, "vCPU 0 was never out");
        assert!(s.get(0).is_some());
    }

    /// The index (even the VMSA page) was reused by a new vCPU while the old one was out:
    /// the old one is dropped, the new one stays.
    #[test]
    fn put_back_never_overwrites_a_new_vcpu_of_the_same_index() {
        let mut s = slots();
        let old = s.take(1, 1).unwrap();
        s.stop(0xB000).unwrap();
        s.remove(1);
        s.insert(1, vcpu(0xB000));
        let new = s.take(1, 1).unwrap();
        assert_eq!(s.put_back(1, old), PutBack::Dropped);
        assert_eq!(s.put_back(1, new), PutBack::Back);
        assert!(!s.get(1).unwrap().stopped, "the new vCPU, not the stopped old one");
    }

    #[test]
    fn vcpus_are_found_by_vmsa() {
        let mut s = slots();
        let _out = s.take(2, 0).unwrap();
        assert!(matches!(s.by_vmsa(0xA000), Some(Slot::Here(_))));
        assert!(matches!(s.by_vmsa(0xC000), Some(Slot::Out(_))));
        assert!(s.by_vmsa(0xC001).is_none() && s.by_vmsa(0).is_none());
        assert_eq!(s.vmsas().collect::<Vec<_>>(), [(0, 0xA000), (1, 0xB000), (2, 0xC000)]);
        assert_eq!(Slots::<TestPage>::new(0).home(7), 0, "no CPUs counts as one");
    }
}
