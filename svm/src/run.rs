//! Running vCPUs: what a CPU does with a vCPU it took out ([`run_until_shared`], no lock
//! held), and what the SVSM does with the exits that need its shared state
//! ([`SvmPlatform::after_run`], under the SVSM's lock). The loop that alternates the two
//! and owns the lock is the caller's (`svsm/src/bare/native.rs`; the model drives the
//! same steps in `model/src/svm_host.rs`).

use crate::exit::{self, Action};
use crate::hw::{PageMem, SvmCpu, SvmHw};
use crate::iopm::{self, IoRefusal};
use crate::platform::{SvmPlatform, worth_logging};
use crate::vcpu::{Exit, SvmVcpu};
use abi::vmcb::offset;
use abi::vmsa::VmsaField;
use kernel::Svsm;
use kernel::vcpu::VcpuIndex;

/// A vCPU taken out to run on a CPU.
#[derive(Debug)]
pub struct Taken<P> {
    pub index: u32,
    pub vcpu: SvmVcpu<P>,
    /// No other vCPU of this CPU could run when it was taken: a HLT need not switch.
    pub alone: bool,
    /// The generation of the set of vCPUs when it was taken.
    pub generation: u64,
}

/// Why the guest can run no more (a guest that finishes leaves through QEMU's
/// debug-exit device itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Broken(&'static str),
}

/// Run a taken vCPU on `cpu`, handling the exits that need nothing shared (the bare
/// gate, CPUID, a kick's NMI, a refused SVM instruction, a HLT with no other vCPU to
/// switch to), until one does; `None` if a kick calls the vCPU back.
pub fn run_until_shared<P: PageMem, C: SvmCpu<P>>(cpu: &mut C, t: &mut Taken<P>) -> Option<Exit> {
    loop {
        let v = &mut t.vcpu;
        if !cpu.vmrun(v.vmcb.page_mut(), &mut v.regs) {
            return None;
        }
        // The flush asked for (if any) happened on this entry.
        v.vmcb.set_u8(offset::TLB_CONTROL, 0);
        let e = v.exit();
        match exit::classify(e.code, e.info1, e.info2, v.field(VmsaField::Rax)) {
            Action::BareGate => v.skip(exit::VMMCALL_LEN),
            Action::Cpuid => {
                let (leaf, subleaf) = v.cpuid_leaf();
                let answer = cpu.cpuid(leaf, subleaf);
                v.answer_cpuid(answer);
            }
            // A kick: the next VMRUN sees it and calls the vCPU back.
            Action::Kicked => {}
            Action::Halt if t.alone && cpu.generation() == t.generation => v.skip(exit::HLT_LEN),
            Action::Undefined => v.inject_ud(),
            _ => return Some(e),
        }
    }
}

impl<H: SvmHw> SvmPlatform<H> {
    /// Take `cpu`'s next runnable vCPU after `last` (round robin), if any. `generation`
    /// is the set's generation the caller read before it took the lock.
    pub fn take_next(&mut self, cpu: u32, last: Option<u32>, generation: u64) -> Option<Taken<H::Page>> {
        let (index, vcpu, alone) = self.state.slots.take_next(cpu, last)?;
        Some(Taken { index, vcpu, alone, generation })
    }

    /// Put a vCPU back after it ran on `cpu`, handle its exit (`None`: a kick called it
    /// back), and take it out again if it may go on at once (it did not yield and the set
    /// of vCPUs did not change): `Ok(Some)` to run it again, `Ok(None)` to pick anew.
    pub fn after_run(
        &mut self,
        svsm: &mut Svsm,
        t: Taken<H::Page>,
        exit: Option<Exit>,
        cpu: u32,
    ) -> Result<Option<Taken<H::Page>>, End> {
        let Taken { index, vcpu, alone, generation } = t;
        self.state.slots.put_back(index, vcpu);
        let keep = match exit {
            Some(e) => self.handle_exit(svsm, index, cpu, e)?,
            None => true,
        };
        if keep && self.hw.generation() == generation {
            return Ok(self.state.slots.take(index, cpu).map(|vcpu| Taken { index, vcpu, alone, generation }));
        }
        Ok(None)
    }

    /// Handle an exit of vCPU `index` (back in its slot) that needs the SVSM: `Ok(true)`
    /// if the vCPU may go on running now, `Ok(false)` if it is another one's turn.
    fn handle_exit(&mut self, svsm: &mut Svsm, index: u32, cpu: u32, e: Exit) -> Result<bool, End> {
        // Deleted (dropped) or stopped while it was out: its exit is not served.
        let Some(v) = self.state.slots.get_mut(index).filter(|v| !v.stopped) else { return Ok(false) };
        let rip = v.field(VmsaField::Rip);
        match exit::classify(e.code, e.info1, e.info2, v.field(VmsaField::Rax)) {
            Action::Call => {
                v.skip(exit::VMMCALL_LEN);
                self.state.last_entry = Some(svsm.handle_entry(self, VcpuIndex(index)));
            }
            Action::Msr { write } => self.answer_msr(svsm, index, write),
            Action::Io(io) => {
                v.inject_gp();
                let why = match iopm::on_exit(&io) {
                    IoRefusal::NotTheGuests => "",
                    IoRefusal::NotIntercepted => " (a guest port: the map in force is not the policy's)",
                };
                let port = io.port;
                self.log_refusal(format_args!("vCPU {index}'s I/O to port {port:#x}{why} at rip {rip:#x}"));
            }
            Action::NestedFault { gpa, .. } => {
                v.inject_gp();
                self.log_refusal(format_args!(
                    "vCPU {index}'s access to {gpa:#x} (not validated, or SVSM memory) at rip {rip:#x}"
                ));
            }
            // A yield: the caller moves on to this CPU's next vCPU.
            Action::Halt => {
                v.skip(exit::HLT_LEN);
                return Ok(false);
            }
            Action::Broken(why) => return self.broken(index, cpu, why, e),
            // What the CPU handles alone never comes here; if it does, the same answer.
            Action::BareGate => v.skip(exit::VMMCALL_LEN),
            Action::Undefined => v.inject_ud(),
            Action::Cpuid | Action::Kicked => {}
        }
        Ok(true)
    }

    /// Vcpu `index` cannot go on. The startup vCPU ends the run; any other is the guest's
    /// problem: it is stopped and the SVSM serves the rest.
    fn broken(&mut self, index: u32, cpu: u32, why: &str, e: Exit) -> Result<bool, End> {
        let (code, i1, i2) = (e.code, e.info1, e.info2);
        if index == VcpuIndex::STARTUP.0 {
            kernel::log!(self, Error, "svm: the startup vCPU {why} (exit {code:#x}, info1 {i1:#x}, info2 {i2:#x})");
            return Err(End::Broken("the startup vCPU cannot run"));
        }
        if let Some(v) = self.state.slots.get_mut(index) {
            v.stopped = true;
        }
        kernel::log!(
            self,
            Warn,
            "svm: vCPU {index} (cpu {cpu}) {why} (exit {code:#x}, info1 {i1:#x}, info2 {i2:#x}); stopped"
        );
        Ok(false)
    }

    /// Log a refused guest access (#GP injected), rate-limited.
    fn log_refusal(&mut self, what: core::fmt::Arguments<'_>) {
        if let Some(n) = self.count_refusal() {
            kernel::log!(self, Warn, "svm: refused {what}; #GP injected ({n} so far)");
        }
    }

    /// Count a refused guest access; `Some(count)` if it is worth a log line.
    fn count_refusal(&mut self) -> Option<u32> {
        self.state.refused = self.state.refused.saturating_add(1);
        worth_logging(self.state.refused).then_some(self.state.refused)
    }

    /// An intercepted RDMSR (or, if `write`, WRMSR) of vCPU `index`: answered as the MSR
    /// policy says, or refused with #GP(0); logged at debug level (refusals
    /// rate-limited).
    fn answer_msr(&mut self, svsm: &Svsm, index: u32, write: bool) {
        let ca = svsm.vcpus().get(VcpuIndex(index)).map_or(0, |c| c.calling_area.0);
        let tsc = self.hw.rdtsc();
        let Some(v) = self.state.slots.get_mut(index) else { return };
        let (msr, access, answer) = v.answer_msr(write, ca, tsc);
        let count = match answer {
            Ok(_) => 0,
            Err(_) => {
                self.state.refused_msrs = self.state.refused_msrs.saturating_add(1);
                self.state.refused_msrs
            }
        };
        if worth_logging(count) {
            let name = crate::msr::rule_for(msr).name;
            let gp = if answer.is_err() { "; #GP(0) injected" } else { "" };
            kernel::log!(self, Debug, "svm: vCPU {index} MSR {msr:#x} ({name}) {access:x?}: {answer:x?}{gp}");
        }
    }
}

#[cfg(test)]
mod tests;
