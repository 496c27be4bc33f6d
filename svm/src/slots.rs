//! Where each vCPU is: in the SVSM's hands ([`Slot::Here`]), or out on a CPU that runs
//! it ([`Slot::Out`]). vCPU `i` lives on CPU `i % cpus`.
//!
//! A CPU takes a vCPU out to run it ([`Slots::take`]) and keeps it while it serves the
//! vCPU's exits, calls included; it puts it back ([`Slots::put_back`]) only when the vCPU
//! yields, is kicked, or stops. While a vCPU is out, another CPU may have to change what
//! it sees: a nested-paging change must reach its TLB, DELETE_VCPU must stop it. Such a
//! change is recorded in its [`Running`] entry and its CPU is kicked (the caller's
//! `kick`), which makes the CPU leave the guest before the change counts as done; the CPU
//! applies what was recorded when it next looks ([`Slots::while_out`] at an exit,
//! [`Slots::put_back`]). Taking out and putting back move the vCPU in and out of its
//! slot in place: the exit path allocates nothing.
//!
//! Each slot has its own lock, held only inside one of these methods and never two at a
//! time: a CPU working on its own vCPU's slot never waits for another vCPU's. The lock
//! is a leaf: nothing else is locked or called while it is held.

use crate::hw::PageMem;
use crate::vcpu::SvmVcpu;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;

/// CPUs a platform can kick (the bit width of [`CpuSet`]); more CPUs than this serve as
/// this many.
pub const MAX_CPUS: u32 = 64;

/// Where a vCPU is.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "a slot holds its vCPU in place (its FPU image included): boxing it would make taking and putting back allocate, which a guest-driven path must not"
)]
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

/// What happened to a vCPU while it was out, as its CPU finds it at an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhileOut {
    Nothing,
    /// Nested paging changed: flush before it runs again (the record is cleared).
    Flush,
    /// DELETE_VCPU stopped it: its exit is not served.
    Stopped,
    /// Deleted (perhaps replaced by a new vCPU of its index): its exit is not served.
    Gone,
}

/// The index is beyond the slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoSlot;

/// No vCPU has this VMSA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoSuchVcpu;

/// A set of CPUs (to kick), below [`MAX_CPUS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSet(u64);

impl CpuSet {
    pub fn insert(&mut self, cpu: u32) {
        self.0 |= 1u64.checked_shl(cpu).unwrap_or(0);
    }

    pub fn iter(self) -> impl Iterator<Item = u32> {
        (0..MAX_CPUS).filter(move |cpu| self.0 >> cpu & 1 != 0)
    }
}

#[derive(Debug)]
pub struct Slots<P> {
    /// By vCPU index; room for every index the kernel can give out.
    slots: Vec<Mutex<Option<Slot<P>>>>,
    /// CPUs that run vCPUs (1..=MAX_CPUS).
    cpus: u32,
    /// The serial the next inserted vCPU gets.
    next_serial: AtomicU64,
    /// The guest is paused ([`Slots::pause`]): no vCPU is taken out.
    paused: AtomicBool,
}

impl<P: PageMem> Slots<P> {
    /// Slots for vCPU indices `0..capacity` on `cpus` CPUs; `None` without memory.
    pub fn new(cpus: u32, capacity: usize) -> Option<Self> {
        let mut slots = Vec::new();
        slots.try_reserve_exact(capacity).ok()?;
        slots.resize_with(capacity, || Mutex::new(None));
        Some(Self {
            slots,
            cpus: cpus.clamp(1, MAX_CPUS),
            next_serial: AtomicU64::new(1),
            paused: AtomicBool::new(false),
        })
    }

    pub fn cpus(&self) -> u32 {
        self.cpus
    }

    /// The CPU that runs vCPU `index`.
    pub fn home(&self, index: u32) -> u32 {
        index % self.cpus
    }

    fn slot(&self, index: u32) -> Option<&Mutex<Option<Slot<P>>>> {
        self.slots.get(usize::try_from(index).ok()?)
    }

    /// The indices of the vCPUs that live on `cpu`, in order.
    fn homed_on(&self, cpu: u32) -> impl Iterator<Item = u32> + Clone + '_ {
        let len = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        // A CPU beyond `cpus` is no vCPU's home.
        let first = if cpu < self.cpus { cpu } else { len };
        (first..len).step_by(self.cpus as usize)
    }

    /// A new vCPU, in the SVSM's hands (replacing any vCPU of that index); `Err` (and the
    /// vCPU dropped) if `index` is beyond the slots.
    pub fn insert(&self, index: u32, mut vcpu: SvmVcpu<P>) -> Result<(), NoSlot> {
        let Some(slot) = self.slot(index) else { return Err(NoSlot) };
        vcpu.serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let old = slot.lock().replace(Slot::Here(vcpu));
        drop(old);
        Ok(())
    }

    /// Forget vCPU `index`. One that is out is dropped when its CPU puts it back.
    pub fn remove(&self, index: u32) {
        let old = self.slot(index).and_then(|slot| slot.lock().take());
        drop(old);
    }

    /// `f` on the slot of vCPU `index` (`None`: no vCPU has that index).
    pub fn with_slot<R>(&self, index: u32, f: impl FnOnce(Option<&mut Slot<P>>) -> R) -> R {
        match self.slot(index) {
            Some(slot) => f(slot.lock().as_mut()),
            None => f(None),
        }
    }

    /// `f` on vCPU `index`, if it is in the SVSM's hands.
    pub fn with<R>(&self, index: u32, f: impl FnOnce(&mut SvmVcpu<P>) -> R) -> Option<R> {
        self.with_slot(index, |slot| match slot {
            Some(Slot::Here(v)) => Some(f(v)),
            _ => None,
        })
    }

    /// `f` on the slot of the vCPU whose VMSA is the page at `vmsa_gpa`.
    pub fn with_vmsa<R>(&self, vmsa_gpa: u64, f: impl FnOnce(&mut Slot<P>) -> R) -> Option<R> {
        let mut f = Some(f);
        for slot in &self.slots {
            let mut slot = slot.lock();
            if let Some(s) = slot.as_mut().filter(|s| s.vmsa_gpa() == vmsa_gpa) {
                return f.take().map(|f| f(s));
            }
        }
        None
    }

    /// Indices and VMSAs of every vCPU, in index order (each as its slot was when the
    /// iteration reached it).
    pub fn vmsas(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.slots.iter().zip(0u32..).filter_map(|(slot, i)| Some((i, slot.lock().as_ref()?.vmsa_gpa())))
    }

    /// Is vCPU `index` in the SVSM's hands and free to run?
    fn runnable(&self, index: u32) -> bool {
        self.with(index, |v| !v.stopped).unwrap_or(false)
    }

    /// Take vCPU `index` out of the SVSM's hands to run it on `cpu`; `None` if it is out
    /// already, stopped, or unknown.
    pub fn take(&self, index: u32, cpu: u32) -> Option<SvmVcpu<P>> {
        let mut slot = self.slot(index)?.lock();
        let Some(Slot::Here(v)) = slot.as_ref() else { return None };
        // Read under the slot's lock: a pause that looked at this slot before this take
        // finds the vCPU out and waits for it; one that looks after it is seen here.
        if v.stopped || self.paused.load(Ordering::SeqCst) {
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
        match slot.replace(Slot::Out(r)) {
            Some(Slot::Here(v)) => Some(v),
            _ => None,
        }
    }

    /// Take the next runnable vCPU of `cpu` after `last` (round robin): its index, the
    /// vCPU, and whether it was the only one that could run there.
    pub fn take_next(&self, cpu: u32, last: Option<u32>) -> Option<(u32, SvmVcpu<P>, bool)> {
        let mine = self.homed_on(cpu);
        let after = mine.clone().filter(|i| last.is_none_or(|l| *i > l));
        let before = mine.clone().filter(|i| last.is_some_and(|l| *i <= l));
        for index in after.chain(before) {
            if let Some(v) = self.take(index, cpu) {
                let alone = !mine.clone().any(|i| i != index && self.runnable(i));
                return Some((index, v, alone));
            }
        }
        None
    }

    /// Give vCPU `index` back after its #VMEXIT (or a kick), applying what happened while
    /// it was out. A vCPU deleted meanwhile, or one that was not out, is dropped.
    pub fn put_back(&self, index: u32, mut v: SvmVcpu<P>) -> PutBack {
        let Some(slot) = self.slot(index) else { return PutBack::Dropped };
        let mut slot = slot.lock();
        let Some(Slot::Out(r)) = slot.as_ref() else { return PutBack::Dropped };
        let r = *r;
        if r.serial != v.serial {
            return PutBack::Dropped;
        }
        if r.flush {
            v.flush_tlb();
        }
        if r.stop {
            v.stop();
        }
        *slot = Some(Slot::Here(v));
        match (r.stop, r.flush) {
            (true, _) => PutBack::Stopped,
            (false, true) => PutBack::Flushed,
            (false, false) => PutBack::Back,
        }
    }

    /// At an exit of vCPU `index` (its `serial`), still out on its CPU: what happened to
    /// it meanwhile. A pending flush is handed over (and cleared from the record): the
    /// CPU applies it to the vCPU it holds.
    pub fn while_out(&self, index: u32, serial: u64) -> WhileOut {
        self.with_slot(index, |slot| match slot {
            Some(Slot::Out(r)) if r.serial == serial => match (r.stop, r.flush) {
                (true, _) => WhileOut::Stopped,
                (false, true) => {
                    r.flush = false;
                    WhileOut::Flush
                }
                (false, false) => WhileOut::Nothing,
            },
            _ => WhileOut::Gone,
        })
    }

    /// Stop the vCPU whose VMSA is at `vmsa_gpa` for good (DELETE_VCPU). One in the
    /// SVSM's hands stops now; for one that is out, the CPU to kick is returned: it must
    /// leave the guest before the stop counts as done.
    pub fn stop(&self, vmsa_gpa: u64) -> Result<Option<u32>, NoSuchVcpu> {
        let stopped = self.with_vmsa(vmsa_gpa, |slot| match slot {
            Slot::Here(v) => {
                v.stop();
                None
            }
            Slot::Out(r) => {
                r.stop = true;
                Some(r.cpu)
            }
        });
        stopped.ok_or(NoSuchVcpu)
    }

    /// Pause the guest (a migration's last round): no vCPU is taken out from now on.
    /// Returns the CPUs that have one out, to be kicked; the pause is complete once
    /// [`Slots::all_here`] says so.
    pub fn pause(&self) -> CpuSet {
        self.paused.store(true, Ordering::SeqCst);
        let mut kick = CpuSet::default();
        for slot in &self.slots {
            if let Some(Slot::Out(r)) = slot.lock().as_ref() {
                kick.insert(r.cpu);
            }
        }
        kick
    }

    /// Let the paused guest run again.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Is the guest paused?
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Is every vCPU in the SVSM's hands (none out on a CPU)?
    pub fn all_here(&self) -> bool {
        self.slots.iter().all(|slot| !matches!(slot.lock().as_ref(), Some(Slot::Out(_))))
    }

    /// Nested paging changed: every vCPU in the SVSM's hands flushes on its next VMRUN;
    /// every vCPU out is marked to flush when it comes back, and its CPU is in the set
    /// returned, to be kicked. vCPU `except` (the one the caller holds and flushes
    /// itself) is left alone.
    pub fn flush_all(&self, except: Option<u32>) -> CpuSet {
        let mut kick = CpuSet::default();
        for (slot, index) in self.slots.iter().zip(0u32..) {
            if Some(index) == except {
                continue;
            }
            match slot.lock().as_mut() {
                Some(Slot::Here(v)) => v.flush_tlb(),
                Some(Slot::Out(r)) => {
                    r.flush = true;
                    kick.insert(r.cpu);
                }
                None => {}
            }
        }
        kick
    }

    /// Is the VMSA page `pfn` in use: its vCPU out on a CPU and not stopped? (RMPADJUST
    /// may not take the VMSA flag off a VMSA the hardware runs.)
    pub fn vmsa_in_use(&self, pfn: u64) -> bool {
        self.slots
            .iter()
            .any(|slot| matches!(slot.lock().as_ref(), Some(Slot::Out(r)) if !r.stop && r.vmsa_gpa >> 12 == pfn))
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

    const C: Controls = Controls { npt_root: 0x1000, msrpm: 0x2000, iopm: 0x4000, next_rip_saved: false };

    fn vcpu(vmsa: u64) -> SvmVcpu<TestPage> {
        SvmVcpu::long_mode(TestPage::new(1), C, vmsa, 0x20_0000, 0xB000)
    }

    /// Two CPUs, room for 8 vCPUs; vCPUs 0 and 2 live on CPU 0, vCPU 1 on CPU 1.
    fn slots() -> Slots<TestPage> {
        let s = Slots::new(2, 8).unwrap();
        for i in 0..3 {
            let mut v = vcpu(0xA000 + u64::from(i) * 0x1000);
            // As after its first entry, which takes the new VMCB's flush.
            v.vmcb.set_u8(offset::TLB_CONTROL, 0);
            s.insert(i, v).unwrap();
        }
        s
    }

    fn tlb_flush(v: &SvmVcpu<TestPage>) -> u8 {
        v.vmcb.u8(offset::TLB_CONTROL)
    }

    fn here(s: &Slots<TestPage>, index: u32) -> bool {
        s.with(index, |_| ()).is_some()
    }

    /// A pause names the CPUs that run a vCPU, takes nothing out while it lasts, and is
    /// complete only once those vCPUs are back; after the resume they run again.
    #[test]
    fn a_pause_calls_every_vcpu_back() {
        let s = slots();
        let out = s.take(1, 1).unwrap();
        let kick = s.pause();
        assert_eq!(kick.iter().collect::<Vec<_>>(), [1], "CPU 1 runs vCPU 1: it is kicked");
        assert!(s.take(0, 0).is_none(), "nothing is taken while paused");
        assert!(s.take_next(0, None).is_none());
        assert!(!s.all_here(), "vCPU 1 is still out");
        assert_eq!(s.put_back(1, out), PutBack::Back);
        assert!(s.all_here());
        assert!(here(&s, 1));
        s.resume();
        assert!(s.take(0, 0).is_some(), "resumed");
    }

    fn running(s: &Slots<TestPage>, index: u32) -> Option<Running> {
        s.with_slot(index, |slot| match slot {
            Some(Slot::Out(r)) => Some(*r),
            _ => None,
        })
    }

    #[test]
    fn take_and_put_back_swap_the_slot() {
        let s = slots();
        let v = s.take(1, 1).unwrap();
        assert!(!here(&s, 1), "out: not in the SVSM's hands");
        assert_eq!(running(&s, 1).map(|r| (r.cpu, r.vmsa_gpa)), Some((1, 0xB000)));
        assert!(s.take(1, 1).is_none(), "a vCPU is out once");
        assert!(s.vmsa_in_use(0xB));
        assert_eq!(s.put_back(1, v), PutBack::Back);
        assert!(here(&s, 1) && !s.vmsa_in_use(0xB));
        assert_eq!(s.with(1, |v| tlb_flush(v)), Some(0));
    }

    #[test]
    fn round_robin_over_the_vcpus_of_a_cpu() {
        let s = slots();
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

    /// A nested-paging change reaches a vCPU out on a CPU: its CPU is to be kicked, and
    /// it flushes when it comes back; those in the SVSM's hands flush on their next VMRUN.
    #[test]
    fn a_flush_while_out_kicks_and_applies_on_put_back() {
        let s = slots();
        let v = s.take(1, 1).unwrap();
        assert_eq!(s.flush_all(None).iter().collect::<Vec<_>>(), [1]);
        assert_eq!(s.with(0, |v| tlb_flush(v)), Some(1));
        assert_eq!(tlb_flush(&v), 0, "the running copy is untouched");
        assert_eq!(s.put_back(1, v), PutBack::Flushed);
        assert_eq!(s.with(1, |v| tlb_flush(v)), Some(1));
    }

    /// The vCPU a CPU holds while it serves the vCPU's exit is the caller's to flush: the
    /// flush leaves its record alone and kicks nobody for it.
    #[test]
    fn a_flush_leaves_the_callers_own_vcpu_alone() {
        let s = slots();
        let _own = s.take(1, 1).unwrap();
        assert_eq!(s.flush_all(Some(1)), CpuSet::default());
        assert_eq!(running(&s, 1).map(|r| r.flush), Some(false));
        assert_eq!(s.with(2, |v| tlb_flush(v)), Some(1), "the others still flush");
    }

    /// At an exit, the CPU learns what happened while its vCPU was out: a flush is handed
    /// over once, a stop or a deletion means the exit is not served.
    #[test]
    fn an_exit_finds_what_happened_while_out() {
        let s = slots();
        let v = s.take(1, 1).unwrap();
        assert_eq!(s.while_out(1, v.serial), WhileOut::Nothing);
        s.flush_all(None);
        assert_eq!(s.while_out(1, v.serial), WhileOut::Flush);
        assert_eq!(s.while_out(1, v.serial), WhileOut::Nothing, "handed over once");
        s.stop(0xB000).unwrap();
        assert_eq!(s.while_out(1, v.serial), WhileOut::Stopped);
        s.remove(1);
        assert_eq!(s.while_out(1, v.serial), WhileOut::Gone);
        s.insert(1, vcpu(0xB000)).unwrap();
        let new = s.take(1, 1).unwrap();
        assert_eq!(s.while_out(1, v.serial), WhileOut::Gone, "a new vCPU got the index");
        assert_eq!(s.while_out(1, new.serial), WhileOut::Nothing);
    }

    /// DELETE_VCPU of a vCPU out on another CPU: kicked, stopped on return (EFER.SVME
    /// clear, never taken again), and its VMSA no longer in use meanwhile.
    #[test]
    fn a_stop_while_out_kicks_and_applies_on_put_back() {
        let s = slots();
        let v = s.take(1, 1).unwrap();
        assert_eq!(s.stop(0xB000), Ok(Some(1)));
        assert!(!s.vmsa_in_use(0xB), "a stopped vCPU's VMSA can be unflagged");
        assert_eq!(s.flush_all(None).iter().collect::<Vec<_>>(), [1], "still out until its CPU comes back");
        assert_eq!(s.put_back(1, v), PutBack::Stopped);
        let (stopped, efer, flush) = s.with(1, |v| (v.stopped, v.field(VmsaField::Efer), tlb_flush(v))).unwrap();
        assert!(stopped);
        assert_eq!(efer & abi::hw::EFER_SVME, 0);
        assert_eq!(flush, 1, "the flush recorded before the stop is kept");
        assert!(s.take(1, 1).is_none() && s.take_next(1, None).is_none());
    }

    #[test]
    fn a_stop_in_the_svsms_hands_is_immediate() {
        let s = slots();
        assert_eq!(s.stop(0xA000), Ok(None));
        assert_eq!(s.with(0, |v| v.stopped), Some(true));
        assert!(s.take(0, 0).is_none());
        assert_eq!(s.take_next(0, None).map(|t| t.0), Some(2), "the other vCPU of CPU 0 runs");
        assert_eq!(s.stop(0x5000), Err(NoSuchVcpu));
    }

    /// A vCPU deleted while it was out is dropped when its CPU puts it back, and never
    /// comes back under its index; so is a vCPU put back that was never taken.
    #[test]
    fn put_back_of_a_deleted_vcpu_drops_it() {
        let s = slots();
        let v = s.take(1, 1).unwrap();
        s.stop(0xB000).unwrap();
        s.remove(1);
        assert_eq!(s.put_back(1, v), PutBack::Dropped);
        assert!(s.with_slot(1, |slot| slot.is_none()));
        assert_eq!(s.put_back(0, vcpu(0xA000)), PutBack::Dropped, "vCPU 0 was never out");
        assert!(here(&s, 0));
    }

    /// The index (even the VMSA page) was reused by a new vCPU while the old one was out:
    /// the old one is dropped, the new one stays.
    #[test]
    fn put_back_never_overwrites_a_new_vcpu_of_the_same_index() {
        let s = slots();
        let old = s.take(1, 1).unwrap();
        s.stop(0xB000).unwrap();
        s.remove(1);
        s.insert(1, vcpu(0xB000)).unwrap();
        let new = s.take(1, 1).unwrap();
        assert_eq!(s.put_back(1, old), PutBack::Dropped);
        assert_eq!(s.put_back(1, new), PutBack::Back);
        assert_eq!(s.with(1, |v| v.stopped), Some(false), "the new vCPU, not the stopped old one");
    }

    #[test]
    fn vcpus_are_found_by_vmsa() {
        let s = slots();
        let _out = s.take(2, 0).unwrap();
        assert_eq!(s.with_vmsa(0xA000, |slot| matches!(slot, Slot::Here(_))), Some(true));
        assert_eq!(s.with_vmsa(0xC000, |slot| matches!(slot, Slot::Out(_))), Some(true));
        assert!(s.with_vmsa(0xC001, |_| ()).is_none() && s.with_vmsa(0, |_| ()).is_none());
        assert_eq!(s.vmsas().collect::<Vec<_>>(), [(0, 0xA000), (1, 0xB000), (2, 0xC000)]);
        assert_eq!(Slots::<TestPage>::new(0, 1).unwrap().home(7), 0, "no CPUs counts as one");
        assert!(s.insert(8, vcpu(0xD000)).is_err(), "beyond the slots");
    }

    #[test]
    fn cpu_sets_hold_what_was_put_in() {
        let mut set = CpuSet::default();
        for cpu in [3, 0, 63, 3, 64, 200] {
            set.insert(cpu);
        }
        assert_eq!(set.iter().collect::<Vec<_>>(), [0, 3, 63], "beyond MAX_CPUS: ignored");
    }
}
