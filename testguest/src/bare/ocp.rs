//! The Observability protocol from the guest's side: list the SVSM's sources and print
//! each one (`OCP <name> = <value>`), as a guest OS would show them to its user.

use abi::ocp::ENTRY_SIZE;
use alloc::string::String;
use alloc::vec;
use guest::ocp::{ReadOutcome, SourceEntry};
use guest::{Client, Transport};

/// Print every source through `buffer` (a validated page of the guest's); returns how
/// many there are.
pub fn print_sources<T: Transport>(c: &mut Client<T>, buffer: u64) -> Result<usize, String> {
    let err = |e| alloc::format!("{e:?}");
    let count = c.ocp_list(0, buffer, (4096 / ENTRY_SIZE) as u32).map_err(err)?;
    let mut entries = vec![[0u8; ENTRY_SIZE]; count as usize];
    for (i, e) in entries.iter_mut().enumerate() {
        c.transport.read(buffer + (i * ENTRY_SIZE) as u64, e).map_err(|e| alloc::format!("{e:?}"))?;
    }
    for (index, entry) in entries.iter().map(SourceEntry::decode).enumerate() {
        let name = entry.name().unwrap_or("(not UTF-8)");
        let n = match c.ocp_read(index as u32, buffer, 4096, 0).map_err(err)? {
            ReadOutcome::Copied(n) => n as usize,
            ReadOutcome::Lost { oldest } => {
                println!("OCP {name}: bytes before {oldest} were overwritten");
                continue;
            }
        };
        let mut data = vec![0u8; n];
        c.transport.read(buffer, &mut data).map_err(|e| alloc::format!("{e:?}"))?;
        let shown = if name == "log" {
            let text = String::from_utf8_lossy(&data);
            alloc::format!("{n} bytes from offset 0; first line: {}", text.lines().next().unwrap_or(""))
        } else if abi::ocp::holds_number(name) && n == 8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data);
            alloc::format!("{}", u64::from_le_bytes(b))
        } else {
            String::from_utf8_lossy(&data).trim_end().into()
        };
        println!("OCP {name}{} = {shown}", if entry.writeable() { " (writeable)" } else { "" });
    }
    Ok(entries.len())
}
