//! Making SVSM calls from a test's guest with raw registers, for tests that check result
//! codes (included with `#[path = "support/calls.rs"] mod calls;`).

use abi::protocol::{CallId, ProtocolId};
use abi::result::ResultCode;
use bulwark_model::world::World;
use guest::{Regs, Transport};
use kernel::vcpu::VcpuIndex;

/// Call `call` of `protocol` with RCX, RDX, R8 and R9 from `args`; the result code.
pub fn call(w: &mut World, protocol: ProtocolId, call: u32, args: [u64; 4]) -> ResultCode {
    let id = CallId::new(protocol, call);
    let regs = Regs { rax: id.to_rax(), rcx: args[0], rdx: args[1], r8: args[2], r9: args[3] };
    match w.client().issue(regs) {
        Ok(out) => ResultCode::from_rax(out.rax),
        Err(e) => panic!("the call did not complete: {e:?}"),
    }
}

/// Write guest memory as the startup vCPU.
pub fn write(w: &mut World, gpa: u64, data: &[u8]) {
    w.vcpu(VcpuIndex::STARTUP).write(gpa, data).expect("guest memory");
}
