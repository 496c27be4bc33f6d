//! Secondary vCPUs of the test guest. The boot vCPU creates them with CREATE_VCPU from a
//! VMSA it builds here (`write_vmsa`); each runs `ap_main`, a mailbox loop: when the boot
//! vCPU posts a request, the secondary vCPU issues it as its own VMMCALL (through its own
//! calling area) and posts the registers back. Waiting is HLT, which the SVSM treats as a
//! yield, so both make progress on one physical CPU.
#![expect(unsafe_code, reason = "the APs' mailboxes and entry point")]

use super::gate::Vmmcall;
use alloc::vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use guest::{Regs, Transport};

pub const MAX_APIC: usize = 8;
const STACK: usize = 16 * 1024;

const IDLE: u32 = 0;
const PING: u32 = 1;
const CALL: u32 = 2;
const DONE: u32 = 3;

struct Mailbox {
    state: AtomicU32,
    regs: UnsafeCell<Regs>,
}

// SAFETY: `regs` is written by one side only while `state` says it owns it (the boot
// vCPU before posting CALL, the secondary vCPU between CALL and DONE); `state` is atomic.
unsafe impl Sync for Mailbox {}

static MAILBOXES: [Mailbox; MAX_APIC] = [const {
    Mailbox { state: AtomicU32::new(IDLE), regs: UnsafeCell::new(Regs { rax: 0, rcx: 0, rdx: 0, r8: 0, r9: 0 }) }
}; MAX_APIC];
static STACK_TOPS: [AtomicU64; MAX_APIC] = [const { AtomicU64::new(0) }; MAX_APIC];

fn yield_cpu() {
    // SAFETY: HLT with interrupts off: the SVSM intercepts it and runs another vCPU.
    unsafe { core::arch::asm!("hlt", options(nomem, nostack)) }
}

#[unsafe(no_mangle)]
extern "C" fn ap_main(apic: u64) -> ! {
    let Some(mb) = MAILBOXES.get(apic as usize) else {
        loop {
            yield_cpu();
        }
    };
    loop {
        match mb.state.load(Ordering::Acquire) {
            PING => mb.state.store(DONE, Ordering::Release),
            CALL => {
                // SAFETY: CALL hands `regs` to this vCPU until it stores DONE.
                let regs = unsafe { &mut *mb.regs.get() };
                Vmmcall.request_svsm(regs);
                mb.state.store(DONE, Ordering::Release);
            }
            _ => yield_cpu(),
        }
    }
}

/// Post `kind` to the vCPU with `apic` and wait (yielding) up to `rounds` times for it.
fn post(apic: u32, kind: u32, rounds: u32) -> bool {
    let Some(mb) = MAILBOXES.get(apic as usize) else { return false };
    mb.state.store(kind, Ordering::Release);
    for _ in 0..rounds {
        if mb.state.load(Ordering::Acquire) == DONE {
            mb.state.store(IDLE, Ordering::Release);
            return true;
        }
        yield_cpu();
    }
    mb.state.store(IDLE, Ordering::Release);
    false
}

/// Is the vCPU with `apic` running (does it answer)?
pub fn alive(apic: u32) -> bool {
    post(apic, PING, 500)
}

/// Have the vCPU with `apic` issue VMMCALL with `regs`; `false` if it did not answer (the
/// registers are then left as they were).
pub fn call(apic: u32, regs: &mut Regs) -> bool {
    let Some(mb) = MAILBOXES.get(apic as usize) else { return false };
    // SAFETY: IDLE: the boot vCPU owns `regs` until it posts CALL.
    unsafe { *mb.regs.get() = *regs };
    if !post(apic, CALL, 100_000) {
        return false;
    }
    // SAFETY: DONE (then IDLE): `regs` is the boot vCPU's again.
    *regs = unsafe { *mb.regs.get() };
    true
}

/// A VMSA for a secondary vCPU with `apic` that starts at `ap_start` in 64-bit mode with
/// the launch page tables and a stack of its own.
pub fn vmsa(apic: u32) -> Option<abi::vmsa::Vmsa> {
    let slot = STACK_TOPS.get(apic as usize)?;
    let mut top = slot.load(Ordering::Acquire);
    if top == 0 {
        let stack = vec![0u8; STACK].leak();
        top = (stack.as_ptr() as u64 + STACK as u64) & !0xF;
        slot.store(top, Ordering::Release);
    }
    unsafe extern "C" {
        fn ap_start();
    }
    let mut v = abi::vmsa::Vmsa::zeroed();
    let code = abi::vmsa::VmsaSegment { selector: 0x08, attrib: 0x0A9B, limit: 0xFFFF_FFFF, base: 0 };
    let data = abi::vmsa::VmsaSegment { selector: 0x10, attrib: 0x0C93, limit: 0xFFFF_FFFF, base: 0 };
    (v.cs, v.ds, v.es, v.ss) = (code, data, data, data);
    v.tr = abi::vmsa::VmsaSegment { selector: 0, attrib: 0x008B, limit: 0xFFFF, base: 0 };
    v.vmpl = 1;
    v.efer = 0x500;
    v.cr0 = 0x8001_0033;
    v.cr4 = 0x620;
    v.cr3 = 0xB000;
    v.rflags = 2;
    v.rip = ap_start as *const () as u64;
    v.rsp = top;
    v.rdi = u64::from(apic);
    v.g_pat = 0x0007_0406_0007_0406;
    v.sev_features = abi::hw::sev_features::SNP_ACTIVE;
    Some(v)
}

/// The guest's memory as any vCPU sees it, with calls issued by the vCPU with this APIC
/// ID (through its mailbox): a [`guest::Client`] over it speaks for that vCPU.
pub struct OnVcpu(pub u32);

impl Transport for OnVcpu {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), guest::GuestFault> {
        Vmmcall.read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), guest::GuestFault> {
        Vmmcall.write(gpa, data)
    }
    fn exchange_u8(&mut self, gpa: u64, value: u8) -> Result<u8, guest::GuestFault> {
        Vmmcall.exchange_u8(gpa, value)
    }
    /// If the vCPU does not answer, the registers stay and the call reads as not executed.
    fn request_svsm(&mut self, regs: &mut Regs) {
        call(self.0, regs);
    }
}
