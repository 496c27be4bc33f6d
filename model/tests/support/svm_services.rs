//! The kernel's services as the svm platform gives them to device models, for tests that
//! drive `kernel::user::Process` directly (included with
//! `#[path = "support/svm_services.rs"] mod svm_services;`).

use abi::syscall::{self as sys, SysError};
use bulwark_model::user_host::HostSpace;
use kernel::user::vm::VmObjects;
use kernel::user::{Call, Outcome, Process, Services};
use std::sync::Arc;

/// VM 1 (bit 1 of the bitmap), its VM objects, the svm platform's rule for ports (every
/// port but the guest's COM2, 0x2F8..0x2FF), and one module EXEC may start, `dm`. `.1` is
/// CAPABILITIES' platform bits ([`SVM`] but where a test says otherwise).
pub struct Svm(pub Arc<VmObjects>, pub u64);

/// The svm platform's bits: every kind of event served.
pub const SVM: u64 = sys::features::IOIO_EVENTS | sys::features::MMIO_EVENTS | sys::features::VCPU_EVENTS;

impl Services for Svm {
    fn clock_ns(&mut self) -> u64 {
        0
    }
    fn random(&mut self, _: &mut [u8]) -> bool {
        false
    }
    fn log(&mut self, _: u32, _: &[u8]) {}
    fn vm_bitmap(&self) -> u64 {
        0b10
    }
    fn features(&self) -> u64 {
        self.1
    }
    fn vm_objects(&self) -> Option<&VmObjects> {
        Some(&self.0)
    }
    fn ports_claimable(&self, first: u16, count: u16) -> bool {
        (u32::from(first)..u32::from(first) + u32::from(count)).all(|p| !(0x2F8..=0x2FF).contains(&p))
    }
    fn module(&self, name: &[u8]) -> Option<u32> {
        (name == b"dm").then_some(0)
    }
}

/// A call that returns at once: its result.
pub fn call(p: &mut Process, space: &mut HostSpace, s: &mut Svm, number: u64, args: [u64; 5]) -> Result<u64, SysError> {
    match p.syscall(space, s, Call { number, args }) {
        Outcome::Return(rax) => match SysError::from_rax(rax) {
            Some(e) => Err(e.expect("a known error code")),
            None => Ok(rax),
        },
        other => panic!("the call did not return: {other:?}"),
    }
}
