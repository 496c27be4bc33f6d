//! The Observability protocol from the guest's side: list the SVSM's sources and print
//! each one (`OCP <name> = <value>`), as a guest OS would show them to its user.

use abi::ocp::{ENTRY_SIZE, NAME_OFFSET, flags};
use abi::protocol::{CallId, ProtocolId, ocp_call};
use abi::result::ResultCode;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use guest::{Client, Regs, Transport};

fn call<T: Transport>(c: &mut Client<T>, which: u32, rcx: u64, rdx: u64, r8: u64, r9: u64) -> Result<Regs, String> {
    let rax = CallId::new(ProtocolId::OCP, which).to_rax();
    let out = c.issue(Regs { rax, rcx, rdx, r8, r9 }).map_err(|e| alloc::format!("{e:?}"))?;
    match ResultCode::from_rax(out.rax) {
        ResultCode::SUCCESS => Ok(out),
        other => Err(alloc::format!("OCP call {which}: {other}")),
    }
}

/// Print every source through `buffer` (a validated page of the guest's); returns how
/// many there are.
pub fn print_sources<T: Transport>(c: &mut Client<T>, buffer: u64) -> Result<usize, String> {
    let listed = call(c, ocp_call::LIST, 0, buffer, 4096 / ENTRY_SIZE as u64, 0)?;
    let mut entries = vec![0u8; listed.rcx as usize * ENTRY_SIZE];
    c.transport.read(buffer, &mut entries).map_err(|e| alloc::format!("{e:?}"))?;
    let sources: Vec<(String, bool)> = entries
        .chunks(ENTRY_SIZE)
        .map(|e| {
            let name = &e[NAME_OFFSET..];
            let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
            (
                String::from_utf8_lossy(&name[..len]).into_owned(),
                u32::from_le_bytes([e[0], e[1], e[2], e[3]]) & flags::WRITEABLE != 0,
            )
        })
        .collect();
    for (index, (name, writable)) in sources.iter().enumerate() {
        let read = call(c, ocp_call::READ, index as u64, buffer, 4096, 0)?;
        let mut data = vec![0u8; read.r8 as usize];
        c.transport.read(buffer, &mut data).map_err(|e| alloc::format!("{e:?}"))?;
        let shown = if name == "log" {
            // The first lines of the SVSM's log, then how much there is.
            let text = String::from_utf8_lossy(&data);
            let first = text.lines().next().unwrap_or("");
            alloc::format!("{} bytes from offset 0; first line: {first}", data.len())
        } else if data.len() == 8 && !name.starts_with("build.") {
            let mut n = [0u8; 8];
            n.copy_from_slice(&data);
            alloc::format!("{}", u64::from_le_bytes(n))
        } else {
            String::from_utf8_lossy(&data).trim_end().into()
        };
        println!("OCP {name}{} = {shown}", if *writable { " (writeable)" } else { "" });
    }
    Ok(sources.len())
}
