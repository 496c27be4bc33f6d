//! Running vCPUs: what a CPU does with a vCPU it took out ([`run_until_shared`]), and
//! with the exits that need the SVSM ([`SvmShared::after_run`]). Neither holds a lock
//! around the platform: the CPU keeps its vCPU out of its slot while it serves the
//! vCPU's call (the kernel reads and writes its registers through the CPU's own
//! `SvmPlatform`), and puts it back only to yield, after a kick, or for good. The loop
//! that alternates the two and idles is the caller's (`svsm/src/bare/native.rs`; the
//! model drives the same steps in `model/src/svm_host.rs`).

use crate::exit::{self, Action};
use crate::hw::{PageMem, SvmCpu, SvmHw};
use crate::iopm::{self, IoExit, IoRefusal};
use crate::shared::SvmShared;
use crate::slots::{PutBack, WhileOut};
use crate::vcpu::{Exit, SvmVcpu};
use crate::{mmio, npt};
use abi::syscall::{IoAccess, MmioAccess, VCPU_CPUID_LEAVES, VcpuExit, vcpu_exit};
use abi::vmcb::offset;
use abi::vmsa::{Vmsa, VmsaField};
use core::cell::Cell;
use kernel::Svsm;
use kernel::user::vm::{Served, size_mask};

/// EXITINFO1 of a nested page fault: bit 1 set for a write access (AMD APM vol. 2,
/// "Nested versus Guest Page Faults, Fault Ordering").
const NPF_WRITE: u64 = 1 << 1;
/// EXITINFO1 of a nested page fault: an instruction fetch (bit 4), and a fault of the
/// guest's own page-table walk rather than of the final access (bit 33).
const NPF_FETCH: u64 = 1 << 4;
const NPF_IN_WALK: u64 = 1 << 33;
/// EXITINTINFO's valid bit: the exit cut an event's delivery short.
const EXIT_INT_INFO_VALID: u64 = 1 << 31;

/// Refusals of one access at one RIP in a row after which a vCPU counts as broken
/// (`SvmShared::handle_exit`). A guest whose #GP handler runs moves on after one; under
/// QEMU a stuck vCPU makes about 17,000 such exits a second.
const SAME_REFUSAL_LIMIT: u32 = 10_000;
use kernel::platform::Level;
use kernel::request::EntryOutcome;
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
    /// The guest page this vCPU's calls copied last and the page-state epoch it was
    /// found copyable at (`SvmPlatform`'s check of its calling area skips the access map
    /// while the epoch stays).
    pub(crate) copy_page: Cell<Option<(u64, u64)>>,
}

/// What the CPU does with its vCPU once an exit was handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Run it again at once: it stays out of its slot.
    RunOn,
    /// Put it back ([`SvmShared::put_back`]) and pick the next vCPU: it yielded,
    /// stopped, was kicked, or the set of vCPUs changed.
    PutBack,
}

/// What an exit came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handled {
    pub then: Then,
    /// What the kernel made of the call, if the exit was one it served.
    pub served: Option<EntryOutcome>,
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
///
/// Never inlined: svsm/linker.ld places it by name at the front of the bare image's
/// `.text` with the rest of the call path, and `cargo xtask` checks that it is there.
/// Whether the compiler inlines it into its one caller shifts with unrelated code (a
/// small change elsewhere in the svsm crate did it in the `gdb` build).
#[inline(never)]
pub fn run_until_shared<P: PageMem, C: SvmCpu<P>>(cpu: &mut C, t: &mut Taken<P>) -> Option<Exit> {
    loop {
        let v = &mut t.vcpu;
        if !cpu.vmrun(v.vmcb.page_mut(), &mut v.regs) {
            return None;
        }
        // The flush asked for (if any) happened on this entry.
        v.vmcb.set_u8(offset::TLB_CONTROL, 0);
        v.requeue_cut_event();
        let e = v.exit();
        match exit::classify(e.code, e.info1, e.info2, v.field(VmsaField::Rax)) {
            Action::BareGate => v.step_over(exit::VMMCALL_LEN),
            // A leaf a VCPU object answers needs the shared VM objects.
            Action::Cpuid if !VCPU_CPUID_LEAVES.contains(&v.cpuid_leaf().0) => {
                let (leaf, subleaf) = v.cpuid_leaf();
                let answer = cpu.cpuid(leaf, subleaf);
                v.answer_cpuid(answer);
            }
            // A kick: the next VMRUN sees it and calls the vCPU back.
            Action::Kicked => {}
            // The SVSM's own interrupt, taken as the guest came out: the guest goes on,
            // unless the CPU has something to look at between its guest's exits, or
            // another vCPU of this CPU waits for its turn (the timer ends a turn), or
            // the set of vCPUs changed (a neighbour may have come).
            Action::Interrupted if t.alone && cpu.generation() == t.generation && !cpu.attention() => {}
            Action::Halt if t.alone && cpu.generation() == t.generation && !cpu.attention() => {
                v.step_over(exit::HLT_LEN)
            }
            Action::Undefined => v.inject_ud(),
            _ => return Some(e),
        }
    }
}

impl<H: SvmHw> SvmShared<H> {
    /// Take `cpu`'s next runnable vCPU after `last` (round robin), if any. `generation`
    /// is the set's generation the caller read before it looked.
    pub fn take_next(&self, cpu: u32, last: Option<u32>, generation: u64) -> Option<Taken<H::Page>> {
        let (index, vcpu, alone) = self.state.slots.take_next(cpu, last)?;
        Some(Taken { index, vcpu, alone, generation, copy_page: Cell::new(None) })
    }

    /// Give a vCPU back to its slot, applying what was recorded for it while it was out.
    pub fn put_back(&self, t: Taken<H::Page>) -> PutBack {
        self.state.slots.put_back(t.index, t.vcpu)
    }

    /// Handle what ended a run of the vCPU `t` on `cpu` (`None`: a kick called it back)
    /// and say whether it runs on at once. Nothing shared is locked on the way unless the
    /// exit needs it: a call is served with the vCPU in this CPU's hands.
    // Out of line in every build: the image's linker script places it on the call path's
    // pages, and `cargo xtask` checks it is there (inlined, it would vanish from the check
    // in some builds, the GDB stub's among them).
    #[inline(never)]
    pub fn after_run(&self, svsm: &Svsm, t: &mut Taken<H::Page>, exit: Option<Exit>, cpu: u32) -> Result<Handled, End> {
        let put_back = Handled { then: Then::PutBack, served: None };
        // A kick called it back: what was recorded for it applies as it goes back.
        let Some(e) = exit else { return Ok(put_back) };
        // A kick not answered yet may have recorded a flush or a stop for it.
        if self.hw.kick_pending(cpu) {
            match self.state.slots.while_out(t.index, t.vcpu.serial) {
                WhileOut::Nothing => {}
                WhileOut::Flush => t.vcpu.flush_tlb(),
                // Deleted, or stopped, while it ran: its exit is not served.
                WhileOut::Stopped | WhileOut::Gone => return Ok(put_back),
            }
        }
        let (go_on, served) = self.handle_exit(svsm, t, cpu, e)?;
        let run_on = go_on && !t.vcpu.stopped && self.hw.generation() == t.generation;
        Ok(Handled { then: if run_on { Then::RunOn } else { Then::PutBack }, served })
    }

    /// Handle an exit of the vCPU `t` (held by `cpu`) that needs the SVSM: `Ok((true, _))`
    /// if it may go on running now, `Ok((false, _))` if it is another one's turn; with
    /// what the kernel made of a call.
    fn handle_exit(
        &self,
        svsm: &Svsm,
        t: &mut Taken<H::Page>,
        cpu: u32,
        e: Exit,
    ) -> Result<(bool, Option<EntryOutcome>), End> {
        let action = exit::classify(e.code, e.info1, e.info2, t.vcpu.field(VmsaField::Rax));
        if action == Action::Call {
            t.vcpu.step_over(exit::VMMCALL_LEN);
            let index = VcpuIndex(t.index);
            return Ok((true, Some(svsm.handle_entry(&mut self.serving(cpu, t), index))));
        }
        // A write a live migration's dirty tracking held back: recorded, the write given
        // back; the guest retries the instruction.
        if let Action::NestedFault { gpa, error } = action
            && error & NPF_WRITE != 0
            && let vmpl = u8::try_from(t.vcpu.field(VmsaField::Vmpl)).unwrap_or(u8::MAX)
            && svsm.dirty_write_fault(&mut self.serving(cpu, t), gpa, vmpl)
        {
            return Ok((true, None));
        }
        let alone = t.alone;
        let (index, v) = (t.index, &mut t.vcpu);
        let rip = v.field(VmsaField::Rip);
        match action {
            Action::Call => {}
            Action::Msr { write } => self.answer_msr(svsm, index, v, write),
            Action::Io(io) if self.device_io(svsm, index, v, &io, e.info2) => {}
            Action::NestedFault { gpa, error } if self.device_mmio(svsm, index, v, gpa, error) => {}
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
                // A vCPU refused the same access at the same RIP this often in a row makes
                // no progress: its #GP handler cannot run (delivering the #GP faults the
                // same way, say). It is broken, as a triple fault would leave it, rather
                // than kept in an endless loop of exits on its CPU.
                if v.refused_again(rip, gpa) >= SAME_REFUSAL_LIMIT {
                    let cr3 = v.field(VmsaField::Cr3);
                    self.log(
                        Level::Error,
                        format_args!(
                            "svm: vCPU {index} was refused its access to {gpa:#x} at rip {rip:#x} {SAME_REFUSAL_LIMIT} times in a row (cr3 {cr3:#x})"
                        ),
                    );
                    return self.broken(index, v, cpu, "makes no progress", e).map(|go_on| (go_on, None));
                }
                v.inject_gp();
                self.log_refusal(format_args!(
                    "vCPU {index}'s access to {gpa:#x} (not validated, SVSM memory, or a device's page it could not serve) at rip {rip:#x}"
                ));
            }
            // A yield: the caller moves on to this CPU's next vCPU.
            Action::Halt => {
                v.step_over(exit::HLT_LEN);
                return Ok((false, None));
            }
            Action::Broken(why) => return self.broken(index, v, cpu, why, e).map(|go_on| (go_on, None)),
            // What the CPU handles alone never comes here; if it does, the same answer.
            Action::BareGate => v.step_over(exit::VMMCALL_LEN),
            Action::Undefined => v.inject_ud(),
            // Another vCPU shares this CPU: the timer ended this one's turn.
            Action::Interrupted if !alone => return Ok((false, None)),
            Action::Cpuid => self.vcpu_cpuid(svsm, index, v),
            Action::Kicked | Action::Interrupted => {}
        }
        Ok((true, None))
    }

    /// Vcpu `index` cannot go on. The startup vCPU ends the run; any other is the guest's
    /// problem: it is stopped and the SVSM serves the rest.
    fn broken(&self, index: u32, v: &mut SvmVcpu<H::Page>, cpu: u32, why: &str, e: Exit) -> Result<bool, End> {
        let (code, i1, i2) = (e.code, e.info1, e.info2);
        if index == VcpuIndex::STARTUP.0 {
            self.log(
                Level::Error,
                format_args!("svm: the startup vCPU {why} (exit {code:#x}, info1 {i1:#x}, info2 {i2:#x})"),
            );
            return Err(End::Broken("the startup vCPU cannot run"));
        }
        v.stopped = true;
        self.log(
            Level::Warn,
            format_args!("svm: vCPU {index} (cpu {cpu}) {why} (exit {code:#x}, info1 {i1:#x}, info2 {i2:#x}); stopped"),
        );
        Ok(false)
    }

    /// CPUID of vCPU `index` for a leaf VCPU objects answer (`VCPU_CPUID_LEAVES`,
    /// docs/syscalls.md "VCPU objects"): the answer of the process that holds the vCPU's
    /// object, or all zeros where none does or it failed (what AMD CPUs give for a leaf
    /// past a range's end, and these are past the end of every hypervisor interface's).
    /// While the process serves another CPU's exit, the guest runs CPUID again.
    fn vcpu_cpuid(&self, svsm: &Svsm, index: u32, v: &mut SvmVcpu<H::Page>) {
        let (leaf, subleaf) = v.cpuid_leaf();
        // `run_until_shared` answers every other leaf with the CPU; should one come here
        // anyway, it is never a process's to answer (leaf 1 or 0x8000001F, say).
        if !VCPU_CPUID_LEAVES.contains(&leaf) {
            debug_assert!(false, "CPUID {leaf:#x} reached the VCPU objects' handler");
            v.answer_cpuid([0; 4]);
            return;
        }
        let rip = v.field(VmsaField::Rip);
        let answer = match u8::try_from(v.field(VmsaField::Vmpl)) {
            Ok(vm) => {
                let exit = VcpuExit { kind: vcpu_exit::CPUID, vcpu: index, leaf, subleaf, rip };
                svsm.vm_objects().serve_vcpu(vm, exit)
            }
            Err(_) => Served::NoDevice,
        };
        match answer {
            Served::Registers(regs) => v.answer_cpuid(regs),
            Served::Retry => {}
            Served::Failed => {
                if let Some(n) = self.state.count_refusal() {
                    self.log(
                        Level::Warn,
                        format_args!(
                            "svm: the process holding vCPU {index}'s object failed its CPUID {leaf:#x} and was ended; the leaf reads zeros from now on ({n} refusals so far)"
                        ),
                    );
                }
                v.answer_cpuid([0; 4]);
            }
            Served::NoDevice | Served::Read(_) | Served::Written => v.answer_cpuid([0; 4]),
        }
    }

    /// An IN or OUT of vCPU `index` to a port a device model claimed (docs/syscalls.md
    /// "VM objects and device models"): served by that process, the answer in RAX and
    /// RIP at `next_rip` (EXITINFO2, which the CPU saves for I/O exits with or without
    /// nRIP-save), or left for the guest to make again while the process serves another
    /// CPU's access. `false` leaves the access to the refusal: no claim covers every byte,
    /// a string or REP form (device models serve single accesses), or a next RIP that is
    /// not 1..=15 bytes on.
    fn device_io(&self, svsm: &Svsm, index: u32, v: &mut SvmVcpu<H::Page>, io: &IoExit, next_rip: u64) -> bool {
        let len = next_rip.wrapping_sub(v.field(VmsaField::Rip));
        if io.string || io.rep || io.size == 0 || !(1..=15).contains(&len) {
            return false;
        }
        let Ok(vm) = u8::try_from(v.field(VmsaField::Vmpl)) else { return false };
        let mask = size_mask(io.size);
        let rax = v.field(VmsaField::Rax);
        let data = if io.input { 0 } else { crate::vcpu::low32(rax & mask) };
        let access =
            IoAccess { port: io.port, size: io.size, write: u8::from(!io.input), vcpu: index, data, reserved: 0 };
        let value = match svsm.vm_objects().serve(vm, access) {
            // (Registers answer a VCPU object's CPUID, never a port.)
            Served::NoDevice | Served::Registers(_) => return false,
            // Another CPU's access is in the device model: the guest makes this one again.
            Served::Retry => return true,
            Served::Read(value) => crate::vcpu::low32(value),
            Served::Written => 0,
            Served::Failed => {
                if let Some(n) = self.state.count_refusal() {
                    let port = io.port;
                    self.log(
                        Level::Warn,
                        format_args!(
                            "svm: the device model of port {port:#x} failed vCPU {index}'s access and was ended; its ports are refused from now on ({n} refusals so far)"
                        ),
                    );
                }
                // What a vanished device gives: all ones.
                u32::MAX
            }
        };
        if io.input {
            // IN EAX zero-extends into RAX (64-bit mode); IN AL and IN AX keep the rest.
            let rax = if io.size == 4 { u64::from(value) } else { rax & !mask | u64::from(value) & mask };
            v.set_field(VmsaField::Rax, rax);
        }
        v.skip(len);
        true
    }

    /// A load or store of vCPU `index` to a page a device model claimed (MMIO_EVENT):
    /// the instruction is read through the guest's page tables and decoded (`mmio`), the
    /// access served by that process, a load's value written to its register, and RIP
    /// moved past it; or left for the guest to make again while the process serves
    /// another CPU's access. `false` leaves the access to the refusal: no claim covers
    /// it, the vCPU is not in 64-bit code, the fault is not the data access of the
    /// instruction at RIP (an instruction fetch, a fault of the guest's own page-table
    /// walk, an event being delivered), the instruction cannot be read or is not one of
    /// the MOVs `mmio::decode` knows, its direction or its operand's address (through
    /// the guest's tables) is not the fault's.
    fn device_mmio(&self, svsm: &Svsm, index: u32, v: &mut SvmVcpu<H::Page>, gpa: u64, error: u64) -> bool {
        let Ok(vm) = u8::try_from(v.field(VmsaField::Vmpl)) else { return false };
        let vms = svsm.vm_objects();
        // Cheap first: most nested faults are no device's.
        if !vms.mmio_claimed(vm, gpa) || !v.in_64bit_code() {
            return false;
        }
        if error & (NPF_FETCH | NPF_IN_WALK) != 0 || v.vmcb.u64(offset::EXIT_INT_INFO) & EXIT_INT_INFO_VALID != 0 {
            return false;
        }
        // Every byte the SVSM reads for it is one the guest itself may read (its VMPL's
        // RMP permission, under the page-state lock so it cannot change meanwhile), and
        // one the SVSM may copy: never the SVSM's, never a VMSA.
        let read = |at: u64, buf: &mut [u8]| self.read_as_guest(vm, at, buf);
        let read_entry = |at: u64| {
            let mut entry = [0u8; 8];
            self.read_as_guest(vm, at, &mut entry).map(|()| u64::from_le_bytes(entry))
        };
        let (paging, rip) = (v.paging(), v.field(VmsaField::Rip));
        let Some((bytes, n)) = mmio::fetch(paging, rip, read_entry, read) else {
            return false;
        };
        let Some(insn) = bytes.get(..n).and_then(mmio::decode) else { return false };
        if insn.is_write() != (error & NPF_WRITE != 0) {
            return false;
        }
        // The instruction's own operand must be where the fault was: a guest that
        // changed its tables or its code since the fault, or whose access only ran into
        // the claimed page, is refused.
        let next_rip = rip.wrapping_add(u64::from(insn.len));
        let segment = |off: usize| v.vmcb.segment(offset::SAVE + off).base;
        let (fs, gs) = (segment(core::mem::offset_of!(Vmsa, fs)), segment(core::mem::offset_of!(Vmsa, gs)));
        let linear = insn.linear(|i| v.gpr(i), next_rip, fs, gs);
        if mmio::translate(paging, linear, read_entry) != Some(gpa) {
            return false;
        }
        let data = match insn.kind {
            mmio::Kind::Store(reg) => mmio::store_value(v.gpr(reg.index), reg, insn.size),
            mmio::Kind::StoreImm(value) => value & size_mask(insn.size),
            mmio::Kind::Load { .. } => 0,
        };
        let access =
            MmioAccess { gpa, data, vcpu: index, size: insn.size, write: u8::from(insn.is_write()), reserved: [0; 2] };
        let value = match vms.serve_mmio(vm, access) {
            Served::NoDevice | Served::Registers(_) => return false,
            Served::Retry => return true,
            Served::Read(value) => value,
            Served::Written => 0,
            Served::Failed => {
                if let Some(n) = self.state.count_refusal() {
                    self.log(
                        Level::Warn,
                        format_args!(
                            "svm: the device model of {gpa:#x} failed vCPU {index}'s access and was ended; its pages are refused from now on ({n} refusals so far)"
                        ),
                    );
                }
                u64::MAX
            }
        };
        if let mmio::Kind::Load { reg, dest_size } = insn.kind {
            let loaded = value & size_mask(insn.size);
            v.set_gpr(reg.index, mmio::load_into(v.gpr(reg.index), reg, dest_size, loaded));
        }
        v.skip(u64::from(insn.len));
        true
    }

    /// Copy guest memory for VMPL `vmpl`'s instruction: only pages that VMPL may read
    /// (its RMP permission) and the SVSM may copy (the access map, as for a call's
    /// copies), checked and copied under the page-state lock.
    fn read_as_guest(&self, vmpl: u8, gpa: u64, buf: &mut [u8]) -> Option<()> {
        let last = gpa.checked_add(u64::try_from(buf.len().checked_sub(1)?).ok()?)?;
        let rmp = self.state.lock_rmp();
        if !(gpa >> 12..=last >> 12).all(|pfn| npt::access_for(&rmp, pfn, vmpl).is_some()) {
            return None;
        }
        self.state.access().check(gpa, buf.len()).ok()?;
        self.hw.read_guest(gpa, buf).ok()
    }

    /// Log a refused guest access (#GP injected), rate-limited.
    fn log_refusal(&self, what: core::fmt::Arguments<'_>) {
        if let Some(n) = self.state.count_refusal() {
            self.log(Level::Warn, format_args!("svm: refused {what}; #GP injected ({n} so far)"));
        }
    }

    /// An intercepted RDMSR (or, if `write`, WRMSR) of vCPU `index`: answered as the MSR
    /// policy says, or refused with #GP(0); logged at debug level (refusals
    /// rate-limited).
    fn answer_msr(&self, svsm: &Svsm, index: u32, v: &mut SvmVcpu<H::Page>, write: bool) {
        let ca = svsm.vcpus().get(VcpuIndex(index)).map_or(0, |c| c.calling_area.0);
        let (msr, access, answer) = v.answer_msr(write, ca, self.hw.rdtsc());
        let worth = match answer {
            Ok(_) => true,
            Err(_) => self.state.count_msr_refusal().is_some(),
        };
        if worth {
            let name = crate::msr::rule_for(msr).name;
            let gp = if answer.is_err() { "; #GP(0) injected" } else { "" };
            self.log(
                Level::Debug,
                format_args!("svm: vCPU {index} MSR {msr:#x} ({name}) {access:x?}: {answer:x?}{gp}"),
            );
        }
    }
}

#[cfg(test)]
mod tests;
