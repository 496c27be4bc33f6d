//! The exit policy as the SVSM carries it out: each exit through a CPU's run step and,
//! where it needs the SVSM, through `after_run` with the kernel serving the guest.

use super::*;
use crate::launch::tests::launched;
use crate::test_hw::{Step, TestCpu, TestHw};
use crate::test_page::TestPage;
use abi::vmcb::{event, exit as code};
use kernel::platform::Platform;
use std::vec;

const CA: u64 = 0x9000;
const START_RIP: u64 = 0x20_0000;

struct World {
    p: SvmShared<TestHw>,
    svsm: Svsm,
    cpu: TestCpu,
}

fn world() -> World {
    let (p, config) = launched();
    let svsm = Svsm::new(config, &mut p.platform(0)).unwrap();
    World { p, svsm, cpu: TestCpu::default() }
}

impl World {
    fn take(&mut self) -> Taken<TestPage> {
        let g = self.p.hw.generation();
        self.p.take_next(0, None, g).unwrap()
    }

    /// The guest on vCPU 0 makes `steps` exits; the CPU runs it until an exit needs the
    /// SVSM, which handles it. `Ok(true)` if the vCPU may run on at once (it is put back
    /// here, so tests find it in its slot).
    fn run(&mut self, steps: &[Step]) -> Result<bool, End> {
        self.cpu.script = steps.iter().copied().collect();
        let mut t = self.take();
        let exit = run_until_shared(&mut self.cpu, &mut t);
        let handled = self.p.after_run(&self.svsm, &mut t, exit, 0);
        self.p.put_back(t);
        Ok(handled?.then == Then::RunOn)
    }

    /// `f` on vCPU 0, in its slot.
    fn vcpu0<R>(&self, f: impl FnOnce(&SvmVcpu<TestPage>) -> R) -> R {
        self.p.with_vcpu(0, f).unwrap()
    }

    fn field(&self, f: VmsaField) -> u64 {
        self.vcpu0(|v| v.field(f))
    }

    fn event(&self) -> u64 {
        // What the next entry delivers.
        self.vcpu0(|v| v.vmcb.u64(offset::EVENT_INJ))
    }
}

/// Calls the kernel counted, on every protocol.
fn calls(svsm: &Svsm) -> u64 {
    svsm.stats().per_protocol.iter().map(|c| c.calls).sum()
}

fn call(rax: u64, rcx: u64) -> Step {
    Step { code: code::VMMCALL, rax, rcx, ..Step::default() }
}

const GP: u64 = event::GP | event::TYPE_EXCEPTION | event::ERROR_CODE_VALID | event::VALID;

/// VMMCALL is the call gate: RIP steps over it and the kernel serves the call from the
/// calling area (here: an unsupported protocol, then QUERY_PROTOCOL for the core one).
#[test]
fn vmmcall_is_the_call_gate() {
    let mut w = world();
    w.p.hw.write(CA, &[1]);
    assert_eq!(w.run(&[call(7 << 32, 0)]), Ok(true), "the vCPU goes on at once");
    assert_eq!(w.field(VmsaField::Rax), 0x8000_0001, "SVSM_ERR_UNSUPPORTED_PROTOCOL");
    assert_eq!(w.field(VmsaField::Rip), START_RIP + 3);
    let mut pending = [9u8];
    w.p.hw.read(CA, &mut pending);
    assert_eq!(pending, [0], "CALL_PENDING cleared by the SVSM");
    w.p.hw.write(CA, &[1]);
    assert_eq!(w.run(&[call(u64::from(abi::protocol::core_call::QUERY_PROTOCOL), 1)]), Ok(true));
    assert_eq!(w.field(VmsaField::Rax), 0, "QUERY_PROTOCOL: SUCCESS");
    assert_eq!(calls(&w.svsm), 2);
}

/// The bare gate and CPUID never reach the SVSM: the CPU answers them and runs on.
#[test]
fn the_bare_gate_and_cpuid_are_answered_by_the_cpu() {
    let mut w = world();
    w.cpu.script = [
        call(exit::BARE_GATE_RAX, 0),
        Step { code: code::CPUID, rax: 0x8000_001F, rcx: 0, ..Step::default() },
        Step { code: code::CPUID, rax: 1, rcx: 5, ..Step::default() },
    ]
    .into();
    let mut t = w.take();
    assert_eq!(run_until_shared(&mut w.cpu, &mut t), None, "called back only when the script ran out");
    assert_eq!(t.vcpu.field(VmsaField::Rip), START_RIP + 3 + 2 + 2);
    assert_eq!(t.vcpu.field(VmsaField::Rax), 1, "leaf 1 as the CPU answered it");
    assert_eq!((t.vcpu.regs.rbx, t.vcpu.regs.rcx), (5, 0xC));
    assert_eq!(w.cpu.entries.len(), 3);
    assert_eq!(calls(&w.svsm), 0);
}

#[test]
fn cpuid_announces_the_svsm() {
    let mut w = world();
    w.cpu.script = [Step { code: code::CPUID, rax: 0x8000_001F, ..Step::default() }].into();
    let mut t = w.take();
    run_until_shared(&mut w.cpu, &mut t);
    assert_eq!(t.vcpu.field(VmsaField::Rax), 0x8000_001F | 1 << 28);
}

/// SVM instructions are #UD, delivered on the next entry, without the SVSM.
#[test]
fn svm_instructions_are_undefined() {
    for c in exit::UNDEFINED {
        let mut w = world();
        w.cpu.script = [Step { code: c, ..Step::default() }, Step { code: code::HLT, ..Step::default() }].into();
        let mut t = w.take();
        run_until_shared(&mut w.cpu, &mut t);
        assert_eq!(w.cpu.entries[1].0, event::UD | event::TYPE_EXCEPTION | event::VALID, "{c:#x}");
        assert_eq!(t.vcpu.field(VmsaField::Rip), START_RIP + 1, "RIP stays on the instruction; then the HLT");
    }
}

/// A refused port, and a nested page fault: #GP(0), RIP on the instruction, logged, and
/// the vCPU goes on.
#[test]
fn refused_io_and_memory_inject_gp() {
    let mut w = world();
    let io = Step { code: code::IOIO, info1: 0xCFC << 16 | 1 << 6 | 1, ..Step::default() };
    assert_eq!(w.run(&[io]), Ok(true));
    assert_eq!(w.event(), GP);
    assert_eq!(w.field(VmsaField::Rip), START_RIP);
    assert!(w.p.hw.logged("I/O to port 0xcfc"));
    let npf = Step { code: code::NPF, info1: 0b111, info2: 0x100_0000, ..Step::default() };
    assert_eq!(w.run(&[npf]), Ok(true));
    assert_eq!(w.event(), GP);
    assert!(w.p.hw.logged("access to 0x1000000"));
    // A port that is the guest's own should never exit; if it does, it is refused too.
    let own = Step { code: code::IOIO, info1: 0x2F8 << 16 | 1 << 4, ..Step::default() };
    assert_eq!(w.run(&[own]), Ok(true));
    assert_eq!(w.event(), GP);
    assert!(w.p.hw.logged("a guest port"));
}

/// The log of refusals is rate-limited: the first 32, then every 100th.
#[test]
fn refusals_cannot_flood_the_log() {
    let mut w = world();
    let npf = Step { code: code::NPF, info2: 0x100_0000, ..Step::default() };
    for _ in 0..250 {
        assert_eq!(w.run(&[npf]), Ok(true));
    }
    let lines = w.p.hw.log.lock().unwrap().iter().filter(|(_, l)| l.contains("refused vCPU 0")).count();
    assert_eq!(lines, 32 + 2, "1..=32, 100, 200");
}

/// A vCPU refused the same access at the same RIP SAME_REFUSAL_LIMIT times in a row
/// makes no progress (seen once under QEMU: a vCPU running on the SVSM's own state, whose
/// #GP could never be delivered, looped for two minutes): it is broken, and for the
/// startup vCPU that ends the run with a clear reason. Refusals of different accesses, or
/// fewer in a row, keep it running.
#[test]
fn a_vcpu_refused_the_same_access_endlessly_is_broken() {
    let mut w = world();
    let at = |gpa| Step { code: code::NPF, info2: gpa, ..Step::default() };
    for i in 0..SAME_REFUSAL_LIMIT * 2 {
        // Two accesses taking turns: never the same one twice in a row.
        assert_eq!(w.run(&[at(0x100_0000 + u64::from(i % 2) * 0x1000)]), Ok(true));
    }
    for _ in 1..SAME_REFUSAL_LIMIT {
        assert_eq!(w.run(&[at(0x100_0000)]), Ok(true));
    }
    assert!(w.run(&[at(0x100_0000)]).is_err(), "the startup vCPU is broken: the run ends");
    assert!(w.p.hw.logged("times in a row"));
}

/// RDMSR of the calling-area MSR reads the vCPU's calling area from the kernel; a
/// refused WRMSR injects #GP(0).
#[test]
fn msr_exits_follow_the_policy() {
    let mut w = world();
    let rd = Step { code: code::MSR, info1: 0, rcx: 0xC001_F000, ..Step::default() };
    assert_eq!(w.run(&[rd]), Ok(true));
    assert_eq!(w.field(VmsaField::Rax), CA);
    assert_eq!(w.field(VmsaField::Rip), START_RIP + 2);
    let wr = Step { code: code::MSR, info1: 1, rcx: 0xC001_0117, rax: 0x1000, ..Step::default() };
    assert_eq!(w.run(&[wr]), Ok(true));
    assert_eq!(w.event(), GP);
    assert_eq!(w.field(VmsaField::Rip), START_RIP + 2, "the read before");
}

/// HLT: with no other vCPU on the CPU and nothing changed, the CPU steps over it alone;
/// once the set of vCPUs changed, the vCPU yields to the SVSM.
#[test]
fn hlt_is_a_yield() {
    let mut w = world();
    let hlt = Step { code: code::HLT, ..Step::default() };
    w.cpu.script = [hlt, hlt].into();
    let mut t = w.take();
    assert!(t.alone);
    assert_eq!(run_until_shared(&mut w.cpu, &mut t), None);
    assert_eq!(t.vcpu.field(VmsaField::Rip), START_RIP + 2, "both stepped over on the CPU");
    w.p.state.slots.put_back(t.index, t.vcpu);
    let mut t = w.take();
    w.cpu.script = [hlt].into();
    w.cpu.generation = 1;
    w.p.hw.vcpus_changed();
    let e = run_until_shared(&mut w.cpu, &mut t);
    assert!(e.is_some(), "the set changed: the HLT goes to the SVSM");
    let r = w.p.after_run(&w.svsm, &mut t, e, 0).unwrap();
    assert_eq!(r.then, Then::PutBack, "yielded: the CPU picks anew");
    w.p.put_back(t);
    assert_eq!(w.field(VmsaField::Rip), START_RIP + 3);
}

/// A CPU that drives a migration between its guest's exits wants every HLT back: the
/// guest's idle loop must not keep the CPU from its work.
#[test]
fn a_hlt_goes_back_to_a_cpu_that_wants_attention() {
    let mut w = world();
    let hlt = Step { code: code::HLT, ..Step::default() };
    w.cpu.script = [hlt, hlt].into();
    w.cpu.attention = true;
    let mut t = w.take();
    assert!(t.alone);
    let e = run_until_shared(&mut w.cpu, &mut t);
    assert!(e.is_some(), "the first HLT leaves the CPU's run step");
    let r = w.p.after_run(&w.svsm, &mut t, e, 0).unwrap();
    assert_eq!(r.then, Then::PutBack, "the CPU's loop looks, then picks anew");
    w.p.put_back(t);
    assert_eq!(w.field(VmsaField::Rip), START_RIP + 1, "stepped over once");
}

/// The SVSM's own interrupt (its timer, a wake-up IPI) ends a guest's run without
/// changing it: the guest goes on at once on a CPU that wants nothing, and comes back to
/// the loop of one that drives a migration (the timer is how a guest that never exits
/// on its own still lets it), to run on from where it was.
#[test]
fn the_svsms_interrupt_returns_the_guest_to_a_cpu_that_wants_attention() {
    let mut w = world();
    let intr = Step { code: abi::vmcb::exit::INTR, ..Step::default() };
    w.cpu.script = [intr, intr].into();
    let mut t = w.take();
    assert_eq!(run_until_shared(&mut w.cpu, &mut t), None, "both answered on the CPU; then the script ends");
    assert_eq!(t.vcpu.field(VmsaField::Rip), START_RIP, "nothing stepped over");
    assert_eq!(t.vcpu.vmcb.u64(abi::vmcb::offset::EVENT_INJ), 0, "nothing injected");

    w.cpu.script = [intr].into();
    w.cpu.attention = true;
    let e = run_until_shared(&mut w.cpu, &mut t);
    assert!(e.is_some(), "the interrupt leaves the CPU's run step");
    let r = w.p.after_run(&w.svsm, &mut t, e, 0).unwrap();
    assert_eq!(r, Handled { then: Then::RunOn, served: None }, "the loop looks, and the guest runs on");
    assert_eq!(t.vcpu.field(VmsaField::Rip), START_RIP);
    assert_eq!(t.vcpu.vmcb.u64(abi::vmcb::offset::EVENT_INJ), 0);
}

/// An event whose delivery an exit cut short is delivered on the next entry: here a #PF
/// (error code 2) that the SVSM's interrupt came in the middle of, then a single-step #DB
/// cut by a nested page fault the SVSM refuses (its #GP replaces it). Software interrupts
/// (INTn; INT3 as QEMU and as hardware report it) are not: RIP is still on their
/// instruction, which raises them again.
#[test]
fn an_event_an_exit_cut_short_is_delivered_again() {
    let pf = 14 | event::TYPE_EXCEPTION | event::ERROR_CODE_VALID | event::VALID | 2 << 32;
    let intr = |exit_int_info| Step { code: abi::vmcb::exit::INTR, exit_int_info, ..Step::default() };
    let mut w = world();
    w.cpu.script = [intr(pf), intr(0), intr(0)].into();
    let mut t = w.take();
    assert_eq!(run_until_shared(&mut w.cpu, &mut t), None);
    // (The CPU clears only EVENTINJ's valid bit when it delivers.)
    let injected: std::vec::Vec<u64> = w.cpu.entries.iter().map(|e| e.0).filter(|e| e & event::VALID != 0).collect();
    assert_eq!(injected, [pf], "once, on the entry after the cut");

    for soft in [0x80 | event::TYPE_SOFT_INT | event::VALID, event::BP | event::TYPE_EXCEPTION | event::VALID] {
        let mut w = world();
        w.cpu.script = [intr(soft), intr(0)].into();
        let mut t = w.take();
        run_until_shared(&mut w.cpu, &mut t);
        assert_eq!(w.cpu.entries[1].0 & event::VALID, 0, "{soft:#x}: the instruction raises it again");
    }

    let db = 1 | event::TYPE_EXCEPTION | event::VALID;
    let mut w = world();
    w.cpu.script = [intr(db)].into();
    w.cpu.attention = true;
    let mut t = w.take();
    let e = run_until_shared(&mut w.cpu, &mut t);
    w.p.after_run(&w.svsm, &mut t, e, 0).unwrap();
    assert_eq!(t.vcpu.vmcb.u64(abi::vmcb::offset::EVENT_INJ), db, "kept across the CPU's look");
    let npf = Step { code: code::NPF, info1: 0b111, info2: 0x100_0000, exit_int_info: db, ..Step::default() };
    w.cpu.script = [npf].into();
    let e = run_until_shared(&mut w.cpu, &mut t);
    let _ = w.p.after_run(&w.svsm, &mut t, e, 0);
    assert_eq!(t.vcpu.vmcb.u64(abi::vmcb::offset::EVENT_INJ), GP, "the refusal's #GP takes its place");
}

/// vCPUs that share a CPU take turns: the SVSM's timer interrupt ends the turn of one
/// that has a neighbour (it goes back to its slot, RIP where it was, nothing injected),
/// so one that spins without ever exiting cannot keep the other off the CPU; a vCPU
/// alone on its CPU runs on.
#[test]
fn the_timer_ends_the_turn_of_a_vcpu_that_shares_its_cpu() {
    let mut w = world();
    let intr = Step { code: abi::vmcb::exit::INTR, ..Step::default() };
    w.cpu.script = [intr].into();
    let mut t = w.take();
    t.alone = false;
    let e = run_until_shared(&mut w.cpu, &mut t);
    assert!(e.is_some(), "the interrupt leaves the CPU's run step");
    let r = w.p.after_run(&w.svsm, &mut t, e, 0).unwrap();
    assert_eq!(r, Handled { then: Then::PutBack, served: None }, "its turn is over");
    assert_eq!((t.vcpu.field(VmsaField::Rip), t.vcpu.vmcb.u64(abi::vmcb::offset::EVENT_INJ)), (START_RIP, 0));
    w.p.put_back(t);

    w.cpu.script = [intr].into();
    let mut t = w.take();
    assert!(t.alone);
    assert_eq!(run_until_shared(&mut w.cpu, &mut t), None, "alone: answered on the CPU, the guest runs on");
    w.p.put_back(t);

    // Taken alone, then the set of vCPUs changed (a neighbour may have come to this
    // CPU): the next interrupt brings it back to its slot, to be taken anew.
    let mut t = w.take();
    assert!(t.alone);
    crate::hw::SvmHw::vcpus_changed(&w.p.hw);
    w.cpu.generation = w.p.hw.generation();
    w.cpu.script = [intr].into();
    let e = run_until_shared(&mut w.cpu, &mut t);
    assert!(e.is_some(), "the interrupt leaves the CPU's run step");
    assert_eq!(w.p.after_run(&w.svsm, &mut t, e, 0).unwrap().then, Then::PutBack);
    w.p.put_back(t);
}

/// A paused guest (a migration's last round): no vCPU is taken out until it resumes,
/// and the pause is complete once every vCPU is back.
#[test]
fn a_paused_guest_is_not_taken_until_it_resumes() {
    let w = world();
    let g = w.p.hw.generation();
    w.p.pause(0);
    assert!(w.p.paused());
    assert!(w.p.take_next(0, None, g).is_none(), "paused: nothing is taken");
    assert!(w.p.state.slots.all_here());
    w.p.resume();
    assert!(!w.p.paused());
    assert!(w.p.take_next(0, None, g).is_some(), "resumed: vCPU 0 runs again");
}

/// A kick calls the vCPU back without an exit: it goes back to its slot (where what was
/// recorded for it applies) and the CPU picks anew, nothing served.
#[test]
fn a_kick_puts_the_vcpu_back() {
    let mut w = world();
    assert_eq!(w.run(&[]), Ok(false));
    assert_eq!(calls(&w.svsm), 0);
    assert!(w.p.take_next(0, None, 0).is_some(), "back in its slot, runnable");
}

/// A vCPU that breaks: the startup one ends the run; the SVSM logs why.
#[test]
fn a_broken_startup_vcpu_ends_the_run() {
    for c in [code::SHUTDOWN, code::INVALID, 0x0E, 0x403, 0x1234] {
        let mut w = world();
        let r = w.run(&[Step { code: c, ..Step::default() }]);
        assert_eq!(r, Err(End::Broken("the startup vCPU cannot run")), "{c:#x}");
        assert!(w.p.hw.logged("the startup vCPU"));
    }
}

/// A secondary vCPU that breaks is stopped; the SVSM serves on.
#[test]
fn a_broken_secondary_vcpu_is_stopped() {
    let mut w = world();
    let secondary = SvmVcpu::long_mode(TestPage::new(1), w.p.controls(), 0x40_0000, START_RIP, 0xB000);
    w.p.state.slots.insert(1, secondary).unwrap();
    let g = w.p.hw.generation();
    let t = w.p.take_next(1, None, g).unwrap();
    assert_eq!(t.index, 1);
    let mut t = t;
    w.cpu.script = [Step { code: code::SHUTDOWN, ..Step::default() }].into();
    let e = run_until_shared(&mut w.cpu, &mut t);
    assert_eq!(w.p.after_run(&w.svsm, &mut t, e, 1).map(|h| h.then), Ok(Then::PutBack));
    w.p.put_back(t);
    assert_eq!(w.p.with_vcpu(1, |v| v.stopped), Some(true));
    assert!(w.p.take_next(1, None, g).is_none(), "never runs again");
    assert!(w.p.hw.logged("vCPU 1 (cpu 1) shut down"));
}

/// DELETE_VCPU stopped the vCPU while it was out: its exit is not served, it is not
/// taken again, and its CPU was kicked.
#[test]
fn an_exit_of_a_vcpu_stopped_while_out_is_not_served() {
    let mut w = world();
    w.cpu.script = [call(u64::from(abi::protocol::core_call::QUERY_PROTOCOL), 1)].into();
    let mut t = w.take();
    let e = run_until_shared(&mut w.cpu, &mut t);
    w.p.platform(1).vcpu_stop(kernel::addr::PageAddr::from_pfn(0xA)).unwrap();
    assert_eq!(w.p.hw.take_kicks(), vec![0]);
    w.p.hw.write(CA, &[1]);
    assert_eq!(w.p.after_run(&w.svsm, &mut t, e, 0).map(|h| h.then), Ok(Then::PutBack));
    w.p.put_back(t);
    assert_eq!(calls(&w.svsm), 0);
    assert!(w.vcpu0(|v| v.stopped));
}

/// vCPU 1 in the kernel's registry and in its slot (on CPU 1), as CREATE_VCPU leaves it.
fn with_second_vcpu(w: &mut World) {
    let vmsa = kernel::addr::PageAddr::from_pfn(0x400);
    let created = w.svsm.vcpus().insert(kernel::vcpu::Vcpu {
        apic_id: 1,
        vmsa,
        vmpl: 1,
        creator_vmpl: 1,
        retired: None,
        calling_area: kernel::addr::Gpa(0x41_0000),
        svsm_pages: None,
    });
    assert_eq!(created.map(|i| i.0), Ok(1));
    let v = SvmVcpu::long_mode(TestPage::new(1), w.p.controls(), vmsa.raw(), START_RIP, 0xB000);
    w.p.state.slots.insert(1, v).unwrap();
}

/// A core call on vCPU 0 needs no lock that another CPU's work holds: with another CPU
/// in the middle of a page-state change (the page-state lock held) and holding vCPU 1's
/// slot and registry entry, and even vCPU 0's slot (no kick is pending, so nothing can
/// have been recorded there), QUERY_PROTOCOL on vCPU 0 is served to the end. (With one
/// lock around the platform, the calling area checked under the page-state lock, or the
/// slot consulted at every exit, it waits for the other CPU and this fails.)
#[test]
fn a_call_takes_no_lock_another_cpus_work_holds() {
    use std::sync::mpsc;
    use std::time::Duration;
    let mut w = world();
    with_second_vcpu(&mut w);
    w.p.hw.write(CA, &[1]);
    let (p, svsm) = (&w.p, &w.svsm);
    let mut t = p.take_next(0, None, p.hw.generation()).unwrap();
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel();
    let t = std::thread::scope(|scope| {
        // CPU 1, in the middle of its own long work.
        scope.spawn(move || {
            let _page_state = p.state.lock_rmp();
            p.state.slots.with_slot(0, |_| {
                p.state.slots.with_slot(1, |_| {
                    svsm.vcpus().update(VcpuIndex(1), |_| {
                        held_tx.send(()).unwrap();
                        let _ = release_rx.recv_timeout(Duration::from_secs(60));
                    })
                })
            });
        });
        held_rx.recv().unwrap();
        // CPU 0: vCPU 0 calls QUERY_PROTOCOL.
        let cpu0 = scope.spawn(move || {
            let query = call(u64::from(abi::protocol::core_call::QUERY_PROTOCOL), 1 << 32 | 1);
            let mut cpu = TestCpu { script: [query].into(), ..TestCpu::default() };
            let exit = run_until_shared(&mut cpu, &mut t);
            let handled = p.after_run(svsm, &mut t, exit, 0);
            done_tx.send(handled.map(|h| (h.served, h.then, t.vcpu.field(VmsaField::Rax)))).unwrap();
            t
        });
        let served = done_rx.recv_timeout(Duration::from_secs(10));
        drop(release_tx);
        let served = served.expect("vCPU 0's call waited for CPU 1's locks");
        let success = Some(kernel::request::EntryOutcome::Served(abi::result::ResultCode::SUCCESS));
        assert_eq!(served, Ok((success, Then::RunOn, 0)));
        cpu0.join().unwrap()
    });
    w.p.put_back(t);
    let mut pending = [9u8];
    w.p.hw.read(CA, &mut pending);
    assert_eq!(pending, [0], "CALL_PENDING cleared");
}

/// Another CPU changes page state while vCPU 1 is out on CPU 1 and its VMMCALL is on the
/// way: CPU 1 is kicked, and the flush reaches vCPU 1 before its guest runs again, both
/// when CPU 1 finds it at the call's exit and when the kick calls the vCPU back.
#[test]
fn a_page_state_change_on_another_cpu_reaches_a_vcpu_out() {
    let mut w = world();
    with_second_vcpu(&mut w);
    w.p.hw.write(0x41_0000, &[1]);
    let query = call(u64::from(abi::protocol::core_call::QUERY_PROTOCOL), 1 << 32 | 1);
    let mut cpu1 = TestCpu { script: [query, query].into(), ..TestCpu::default() };
    let mut t = w.p.take_next(1, None, w.p.hw.generation()).unwrap();
    assert_eq!(t.index, 1);
    let exit = run_until_shared(&mut cpu1, &mut t);
    // CPU 0 validates a page meanwhile.
    let page = kernel::addr::PageAddr::from_pfn(0x500);
    w.p.platform(0).pvalidate(page, kernel::addr::PageSize::Size4K, true).unwrap();
    assert_eq!(w.p.hw.take_kicks(), [1]);
    let handled = w.p.after_run(&w.svsm, &mut t, exit, 1).unwrap();
    assert!(handled.served.is_some(), "the call is served");
    assert_eq!(handled.then, Then::RunOn);
    run_until_shared(&mut cpu1, &mut t);
    assert_eq!(
        cpu1.entries.iter().map(|e| e.1).collect::<std::vec::Vec<_>>(),
        [1, 1],
        "flushed on its first entry (a new VMCB) and on the entry after the change"
    );
    // Another change; this time the kick calls the vCPU back before any exit.
    w.p.platform(0).pvalidate(page, kernel::addr::PageSize::Size4K, false).unwrap();
    assert_eq!(w.p.hw.take_kicks(), [1]);
    let handled = w.p.after_run(&w.svsm, &mut t, None, 1).unwrap();
    assert_eq!(handled.then, Then::PutBack, "a kick called it back");
    assert_eq!(w.p.put_back(t), crate::slots::PutBack::Flushed);
    let t = w.p.take_next(1, None, w.p.hw.generation()).unwrap();
    assert_eq!(t.vcpu.vmcb.u8(offset::TLB_CONTROL), 1, "to flush on its next entry");
}

/// A live migration's dirty tracking on svm: the SVSM's own nested page fault handler is
/// where a write to a write-protected page lands. A write fault on a tracked page is
/// recorded and given back (no #GP: the guest retries); any other nested fault is refused
/// as before.
#[test]
fn a_write_fault_on_a_tracked_page_is_recorded_and_retried() {
    let mut w = world();
    let tracked = {
        let pages = w.svsm.pages();
        pages
            .ram()
            .iter()
            .flat_map(|r| r.iter())
            .find(|a| {
                pages.is_validated(*a)
                    && kernel::addr::PageRange::new(*a, 1).is_some_and(|one| pages.check_target(one).is_ok())
            })
            .expect("a validated guest page")
    };
    w.svsm.start_dirty_tracking(&mut w.p.platform(0)).unwrap();
    let guest_vmpl = w.field(VmsaField::Vmpl) as u8;
    assert_eq!(w.p.platform(0).vmpl_permissions(tracked, guest_vmpl).map(|p| p & 2), Some(0), "write-protected");

    let write = Step { code: code::NPF, info1: 0b111, info2: tracked.raw() + 0x10, ..Step::default() };
    assert_eq!(w.run(&[write]), Ok(true));
    assert_eq!(w.event() & event::VALID, 0, "nothing injected: the guest retries the write");
    assert_eq!(w.p.platform(0).vmpl_permissions(tracked, guest_vmpl).map(|p| p & 2), Some(2), "WRITE given back");
    assert_eq!(w.svsm.take_dirty(&mut w.p.platform(0), 16), Ok(vec![tracked.pfn()]));

    // A read fault on it, and a write fault on SVSM memory, are refused as before.
    let read = Step { code: code::NPF, info1: 0b101, info2: tracked.raw(), ..Step::default() };
    assert_eq!(w.run(&[read]), Ok(true));
    assert_eq!(w.event(), GP);
    let svsm_write = Step { code: code::NPF, info1: 0b111, info2: 0x100_0000, ..Step::default() };
    assert_eq!(w.run(&[svsm_write]), Ok(true));
    assert_eq!(w.event(), GP);
    w.svsm.stop_dirty_tracking(&mut w.p.platform(0)).unwrap();
    assert_eq!(w.p.platform(0).vmpl_permissions(tracked, guest_vmpl).map(|p| p & 2), Some(2));
}

fn ports(first: u16, count: u16) -> kernel::user::vm::Range {
    kernel::user::vm::Range::Ports { first, count }
}

/// A device model's process as the tests run it: the closure is its run.
struct Model<F>(F);

impl<F: FnMut() -> bool + Send> kernel::user::vm::DeviceModel for Model<F> {
    fn run(&mut self) -> bool {
        (self.0)()
    }
    fn end(&mut self, _: &'static str) {}
}

/// A port a device model claimed (docs/syscalls.md "VM objects and device models"): the
/// access goes to the process, the vCPU gets the answer in RAX as IN defines it (AL and
/// AX keep the rest of RAX, EAX clears the upper half) and RIP lands at EXITINFO2. The
/// forms a device model does not serve, and accesses that leave the claim, are refused.
#[test]
fn a_claimed_port_is_served_by_its_device_model() {
    use kernel::user::channel::Receive;
    use std::sync::{Arc, Mutex};
    let mut w = world();
    let vms = w.svsm.vm_objects().clone();
    vms.open(crate::vcpu::GUEST_VMPL, 7).unwrap();
    let channel = vms.claim(crate::vcpu::GUEST_VMPL, ports(0xB10, 8), 7).unwrap();
    let seen = Arc::new(Mutex::new(std::vec::Vec::new()));
    let log = seen.clone();
    let model = Model(move || {
        if let Receive::Request(r) = channel.receive(16) {
            log.lock().unwrap().push(<abi::syscall::IoAccess as zerocopy::FromBytes>::read_from_bytes(&r).unwrap());
            assert!(channel.reply(0x1122_3344u32.to_le_bytes().to_vec()));
        }
        true
    });
    vms.host(7, std::boxed::Box::new(model)).unwrap();
    let io = |port: u64, size: u64, input: bool, rax: u64, len: u64, w: &World| Step {
        code: code::IOIO,
        info1: port << 16 | size << 4 | u64::from(input),
        info2: w.field(VmsaField::Rip) + len,
        rax,
        ..Step::default()
    };
    // IN AL, DX (EC): one byte, the rest of RAX kept.
    let rip = w.field(VmsaField::Rip);
    assert_eq!(w.run(&[io(0xB11, 1, true, 0xFFFF_FFFF_FFFF_FF00, 1, &w)]), Ok(true));
    assert_eq!((w.field(VmsaField::Rax), w.field(VmsaField::Rip)), (0xFFFF_FFFF_FFFF_FF44, rip + 1));
    assert_eq!(w.event(), 0, "nothing injected");
    // IN EAX, DX: the upper half cleared.
    assert_eq!(w.run(&[io(0xB10, 4, true, u64::MAX, 1, &w)]), Ok(true));
    assert_eq!(w.field(VmsaField::Rax), 0x1122_3344);
    // OUT DX, AX (66 EF): two bytes of RAX reach the process; RAX stays.
    assert_eq!(w.run(&[io(0xB12, 2, false, 0xDEAD_BEEF, 2, &w)]), Ok(true));
    assert_eq!(w.field(VmsaField::Rax), 0xDEAD_BEEF);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_eq!((seen[0].port, seen[0].size, seen[0].write, seen[0].data), (0xB11, 1, 0, 0));
    assert_eq!((seen[2].port, seen[2].size, seen[2].write, seen[2].data), (0xB12, 2, 1, 0xBEEF));

    // Refused with #GP, RIP on the instruction, the process never asked: a dword that
    // runs past the claim, REP INSB, and an exit whose next RIP is not just after it.
    for step in [
        io(0xB16, 4, true, 0, 1, &w),
        Step { info1: 0xB10 << 16 | 1 << 4 | 1 << 3 | 1 << 2 | 1, ..io(0xB10, 1, true, 0, 2, &w) },
        io(0xB10, 1, true, 0, 0, &w),
        io(0xB10, 1, true, 0, 16, &w),
    ] {
        let rip = w.field(VmsaField::Rip);
        assert_eq!(w.run(&[step]), Ok(true));
        assert_eq!((w.event(), w.field(VmsaField::Rip)), (GP, rip), "{step:?}");
    }
    assert_eq!(w.svsm.vm_objects().claimed_ports(), 8);
}

/// A device model that ends on an access: an IN gets all ones (a vanished device), the
/// failure is logged, and its ports are refused from then on.
#[test]
fn a_failed_device_model_reads_all_ones_then_its_ports_are_refused() {
    let mut w = world();
    let vms = w.svsm.vm_objects().clone();
    vms.open(crate::vcpu::GUEST_VMPL, 7).unwrap();
    let _channel = vms.claim(crate::vcpu::GUEST_VMPL, ports(0xB10, 8), 7).unwrap();
    vms.host(7, std::boxed::Box::new(Model(|| false))).unwrap();
    let step = |w: &World| Step {
        code: code::IOIO,
        info1: 0xB10 << 16 | 1 << 5 | 1,
        info2: w.field(VmsaField::Rip) + 2,
        rax: 0x5555_0000,
        ..Step::default()
    };
    assert_eq!(w.run(&[step(&w)]), Ok(true));
    assert_eq!(w.field(VmsaField::Rax), 0x5555_FFFF);
    assert!(w.p.hw.logged("the device model of port 0xb10 failed vCPU 0's access and was ended"));
    let rip = w.field(VmsaField::Rip);
    assert_eq!(w.run(&[step(&w)]), Ok(true));
    assert_eq!((w.event(), w.field(VmsaField::Rip)), (GP, rip));
    assert!(!w.svsm.vm_objects().is_open(crate::vcpu::GUEST_VMPL));
}

/// A page a device model claimed for MMIO (docs/syscalls.md "VM objects and device
/// models"): the nested page fault's instruction is read through the guest's own page
/// tables (the launch's identity map) and decoded; a load's value lands in its register
/// by x86's rules, a store's register or immediate reaches the process, RIP moves past
/// the instruction. What is not the data access of that instruction is refused.
#[test]
fn a_claimed_mmio_page_is_served_through_the_decoded_instruction() {
    use kernel::user::channel::Receive;
    use kernel::user::vm::Range;
    use std::sync::{Arc, Mutex};
    const PAGE: u64 = 0xFEB0_0000;
    const READ: u64 = 0b100;
    const WRITE: u64 = 0b110;
    let mut w = world();
    let vms = w.svsm.vm_objects().clone();
    vms.open(crate::vcpu::GUEST_VMPL, 7).unwrap();
    let channel = vms.claim(crate::vcpu::GUEST_VMPL, Range::Mmio { start: PAGE, end: PAGE + 4096 }, 7).unwrap();
    assert!(
        vms.claim(crate::vcpu::GUEST_VMPL, Range::Mmio { start: START_RIP, end: START_RIP + 4096 }, 7).is_err(),
        "guest RAM is never a device's"
    );
    let seen = Arc::new(Mutex::new(std::vec::Vec::new()));
    let log = seen.clone();
    let model = Model(move || {
        if let Receive::Request(r) = channel.receive(64) {
            log.lock().unwrap().push(<abi::syscall::MmioAccess as zerocopy::FromBytes>::read_from_bytes(&r).unwrap());
            assert!(channel.reply(0x1122_3344_5566_7788u64.to_le_bytes().to_vec()));
        }
        true
    });
    vms.host(7, std::boxed::Box::new(model)).unwrap();
    // Registers that are not in a step's script are set on the vCPU in its slot.
    let set = |w: &mut World, f: &dyn Fn(&mut SvmVcpu<TestPage>)| {
        let mut t = w.take();
        f(&mut t.vcpu);
        w.p.put_back(t);
    };
    let npf = |gpa: u64, info1: u64, rax: u64, rcx: u64, rdx: u64| Step {
        code: code::NPF,
        info1,
        info2: gpa,
        exit_int_info: 0,
        rax,
        rcx,
        rdx,
        next_rip: 0,
    };
    let at = |w: &mut World, insn: &[u8], step: Step| {
        let rip = w.field(VmsaField::Rip);
        w.p.hw.write_guest(rip, insn).unwrap();
        assert_eq!(w.run(&[step]), Ok(true));
        (rip, w.field(VmsaField::Rip))
    };
    // mov eax, dword ptr [rdx]: the upper half cleared.
    let (rip, next) = at(&mut w, &[0x8B, 0x02], npf(PAGE + 0x10, READ, u64::MAX, 0, PAGE + 0x10));
    assert_eq!((w.field(VmsaField::Rax), next), (0x5566_7788, rip + 2));
    assert_eq!(w.event(), 0, "nothing injected");
    // mov dword ptr [rdx + 8], ecx: the low 4 bytes of RCX go out.
    let (rip, next) = at(&mut w, &[0x89, 0x4A, 0x08], npf(PAGE + 0x18, WRITE, 0, 0xAAAA_BBBB_CCCC_DDDD, PAGE + 0x10));
    assert_eq!(next, rip + 3);
    // mov byte ptr [rax], 0x5A; mov ax, word ptr [rdx] (AX merges into RAX's other bits).
    let (rip, next) = at(&mut w, &[0xC6, 0x00, 0x5A], npf(PAGE, WRITE, PAGE, 0, 0));
    assert_eq!(next, rip + 3);
    at(&mut w, &[0x66, 0x8B, 0x02], npf(PAGE, READ, 0xFFFF_0000_0000_0000, 0, PAGE));
    assert_eq!(w.field(VmsaField::Rax), 0xFFFF_0000_0000_7788);
    // A non-canonical operand address never aliases the claimed page (the CPU raises #GP
    // for it before any nested fault; an exit that says otherwise is refused).
    at(&mut w, &[0x66, 0x8B, 0x00], npf(PAGE, READ, 0xFFFF_0000_0000_0000 | PAGE, 0, 0));
    assert_eq!(w.event(), GP);
    // mov r10, qword ptr [r9 + 0x20]; mov byte ptr [rdi], ah; movzx esp... is no MMIO
    // accessor: loads into RSP go through the VMCB like any other register.
    set(&mut w, &|v| v.set_gpr(9, PAGE));
    at(&mut w, &[0x4D, 0x8B, 0x51, 0x20], npf(PAGE + 0x20, READ, 0, 0, 0));
    assert_eq!(w.vcpu0(|v| v.gpr(10)), 0x1122_3344_5566_7788);
    set(&mut w, &|v| v.set_gpr(7, PAGE + 0x30));
    at(&mut w, &[0x88, 0x27], npf(PAGE + 0x30, WRITE, 0xAB00, 0, 0));
    set(&mut w, &|v| v.set_gpr(3, PAGE + 0x40));
    at(&mut w, &[0x8B, 0x23], npf(PAGE + 0x40, READ, 0, 0, 0));
    assert_eq!(w.field(VmsaField::Rsp), 0x5566_7788, "mov esp, [rbx]");
    let seen = seen.lock().unwrap().clone();
    let summary: std::vec::Vec<_> = seen.iter().map(|a| (a.gpa, a.size, a.write, a.data)).collect();
    assert_eq!(
        summary,
        [
            (PAGE + 0x10, 4, 0, 0),
            (PAGE + 0x18, 4, 1, 0xCCCC_DDDD),
            (PAGE, 1, 1, 0x5A),
            (PAGE, 2, 0, 0),
            (PAGE + 0x20, 8, 0, 0),
            (PAGE + 0x30, 1, 1, 0xAB),
            (PAGE + 0x40, 4, 0, 0)
        ]
    );

    // Refused (#GP, RIP on the instruction, the process never asked): REP MOVSD; a MOV
    // that runs off the page; a fault outside the claim; a store the fault calls a read
    // and a load it calls a write; an operand elsewhere than the fault (the guest
    // changed its code or tables since); a fetch; a fault of the guest's own table walk.
    set(&mut w, &|v| v.set_gpr(7, 0));
    for (insn, step) in [
        (&[0xF3, 0xA5][..], npf(PAGE, READ, 0, 0, PAGE)),
        (&[0x48, 0x8B, 0x02][..], npf(PAGE + 0xFFC, READ, 0, 0, PAGE + 0xFFC)),
        (&[0x8B, 0x02][..], npf(PAGE + 0x1000, READ, 0, 0, PAGE + 0x1000)),
        (&[0x89, 0x02][..], npf(PAGE, READ, 0, 0, PAGE)),
        (&[0x8B, 0x02][..], npf(PAGE, WRITE, 0, 0, PAGE)),
        (&[0x8B, 0x07][..], npf(PAGE + 0x10, READ, 0, 0, 0)),
        (&[0x8B, 0x02][..], npf(PAGE, READ | 1 << 4, 0, 0, PAGE)),
        (&[0x8B, 0x02][..], npf(PAGE, READ | 1 << 33, 0, 0, PAGE)),
    ] {
        let rip = w.field(VmsaField::Rip);
        w.p.hw.write_guest(rip, insn).unwrap();
        assert_eq!(w.run(&[step]), Ok(true));
        assert_eq!((w.event(), w.field(VmsaField::Rip)), (GP, rip), "{insn:x?}: {step:x?}");
    }
    // Instruction bytes the guest may not read (the startup VMSA's page): refused too.
    set(&mut w, &|v| v.set_field(VmsaField::Rip, 0xA000));
    assert_eq!(w.run(&[npf(PAGE, READ, 0, 0, PAGE)]), Ok(true));
    assert_eq!((w.event(), w.field(VmsaField::Rip)), (GP, 0xA000));
    assert_eq!(w.svsm.vm_objects().claimed_mmio_pages(), 1);
}

/// CPUID of a leaf VCPU objects answer (docs/syscalls.md "VCPU objects"): the CPU never
/// answers it alone; the process that holds the vCPU's object does, from the exit it is
/// given; zeros where no process holds it (or only another vCPU's); leaves outside the
/// range stay the CPU's.
#[test]
fn a_vcpu_objects_cpuid_leaves_are_answered_by_its_process() {
    use kernel::user::channel::Receive;
    use std::sync::{Arc, Mutex};
    let mut w = world();
    let cpuid = |leaf: u64, subleaf: u64| Step { code: code::CPUID, rax: leaf, rcx: subleaf, ..Step::default() };
    let regs = |w: &World| (w.field(VmsaField::Rax), w.vcpu0(|v| (v.regs.rbx, v.regs.rcx, v.regs.rdx)));
    let rip = w.field(VmsaField::Rip);
    assert_eq!(w.run(&[cpuid(0x4000_00F0, 3)]), Ok(true));
    assert_eq!((regs(&w), w.field(VmsaField::Rip)), ((0, (0, 0, 0)), rip + 2), "no object: zeros");

    let vms = w.svsm.vm_objects().clone();
    vms.open(crate::vcpu::GUEST_VMPL, 7).unwrap();
    let other = vms.claim(crate::vcpu::GUEST_VMPL, kernel::user::vm::Range::Vcpu { index: 1 }, 7).unwrap();
    let mine = vms.claim(crate::vcpu::GUEST_VMPL, kernel::user::vm::Range::Vcpu { index: 0 }, 7).unwrap();
    let seen = Arc::new(Mutex::new(std::vec::Vec::new()));
    let log = seen.clone();
    let model = Model(move || {
        assert!(matches!(other.receive(24), Receive::Empty), "vCPU 1's object saw nothing");
        if let Receive::Request(r) = mine.receive(24) {
            let exit = <abi::syscall::VcpuExit as zerocopy::FromBytes>::read_from_bytes(&r).unwrap();
            log.lock().unwrap().push(exit);
            let answer: std::vec::Vec<u8> =
                [exit.vcpu, exit.leaf, exit.subleaf, 0x5A].iter().flat_map(|r| r.to_le_bytes()).collect();
            assert!(mine.reply(answer));
        }
        true
    });
    vms.host(7, std::boxed::Box::new(model)).unwrap();
    let rip = w.field(VmsaField::Rip);
    assert_eq!(w.run(&[cpuid(0x4000_00FF, 9)]), Ok(true));
    assert_eq!((regs(&w), w.field(VmsaField::Rip)), ((0, (0x4000_00FF, 9, 0x5A)), rip + 2));
    let exits = seen.lock().unwrap().clone();
    assert_eq!(exits.len(), 1);
    assert_eq!((exits[0].kind, exits[0].vcpu, exits[0].rip), (abi::syscall::vcpu_exit::CPUID, 0, rip));

    // Just outside the range: the CPU's answer ([leaf, subleaf, 0xC, 0xD] here), and the
    // SVSM never asked.
    w.cpu.script = [cpuid(0x4000_00EF, 1), cpuid(0x4000_0100, 2)].into();
    let mut t = w.take();
    assert_eq!(run_until_shared(&mut w.cpu, &mut t), None);
    assert_eq!((t.vcpu.field(VmsaField::Rax), t.vcpu.regs.rbx), (0x4000_0100, 2));
    w.p.put_back(t);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// On a CPU with NRIP save, an intercepted instruction is stepped over to the next RIP
/// the CPU saved, so a prefixed one (`66 0F A2`, three bytes) lands after itself; a saved
/// value that is not 1 to 15 bytes on is not trusted. Without NRIP save (QEMU's TCG) the
/// value is not read at all.
#[test]
fn an_intercepted_instruction_is_stepped_over_to_the_saved_next_rip() {
    let step = |rax: u64, next_rip: u64| Step { code: code::CPUID, rax, next_rip, ..Step::default() };
    let (p, config) = crate::launch::tests::launched_on(TestHw { next_rip_saved: true, ..TestHw::new(0x2000_0000) });
    let svsm = Svsm::new(config, &mut p.platform(0)).unwrap();
    let mut w = World { p, svsm, cpu: TestCpu::default() };
    let rip = w.field(VmsaField::Rip);
    w.cpu.script = [step(1, rip + 3)].into();
    let mut t = w.take();
    assert_eq!(run_until_shared(&mut w.cpu, &mut t), None);
    assert_eq!(t.vcpu.field(VmsaField::Rip), rip + 3, "the prefixed CPUID's whole length");
    // A saved value behind RIP, or more than 15 bytes on: the instruction's own length.
    w.cpu.script = [step(1, rip), step(1, rip + 5 + 16)].into();
    assert_eq!(run_until_shared(&mut w.cpu, &mut t), None);
    assert_eq!(t.vcpu.field(VmsaField::Rip), rip + 3 + 2 + 2);
    w.p.put_back(t);
    // The same exit on a CPU without NRIP save: the saved field is ignored.
    let mut w = world();
    let rip = w.field(VmsaField::Rip);
    w.cpu.script = [step(1, rip + 3)].into();
    let mut t = w.take();
    assert_eq!(run_until_shared(&mut w.cpu, &mut t), None);
    assert_eq!(t.vcpu.field(VmsaField::Rip), rip + 2);
    w.p.put_back(t);
}
