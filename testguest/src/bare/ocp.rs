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

/// The log's source index (docs/protocols/ocp.md).
const LOG: u32 = 0;
/// Most bytes of the log each round reads (the SVSM's ring holds 64 KiB; a boot logs some
/// 10 to 20 KiB before this runs).
const BENCH_BYTES: usize = 32 * 1024;
/// Rounds of each kind; the fastest round counts (under TCG the host only adds time).
const BENCH_ROUNDS: usize = 20;

/// Reading the SVSM's log through SVSM_OCP_READ into a buffer of the guest's, in chunks of
/// 4 KiB and of 32 KiB (one call), beside the guest copying the same bytes itself (a
/// `copy_from_slice`, chunk by chunk): the `BENCH_OCP` line `cargo xtask bench` reads.
pub fn bench_log_read<T: Transport>(c: &mut Client<T>, rdtsc: fn() -> u64) -> Result<String, String> {
    let err = |e| alloc::format!("{e:?}");
    let mut buffer = vec![0u8; BENCH_BYTES];
    let mut copy = vec![0u8; BENCH_BYTES];
    // The guest runs identity-mapped: its heap's address is its gpa. The SVSM writes the
    // buffer behind the compiler's back (`black_box` below tells it so).
    let gpa = buffer.as_mut_ptr() as u64;
    // From the start of the log; once the ring has wrapped, from 8 KiB past its oldest
    // byte, so that lines the SVSM logs meanwhile do not overwrite what a round reads.
    let start = match c.ocp_read(LOG, gpa, 1, 0).map_err(err)? {
        ReadOutcome::Copied(_) => 0,
        ReadOutcome::Lost { oldest } => oldest + 8 * 1024,
    };
    let mut line = String::from("BENCH_OCP");
    for chunk in [4096usize, BENCH_BYTES] {
        let (mut ocp, mut plain, mut bytes) = (u64::MAX, u64::MAX, 0usize);
        for _ in 0..BENCH_ROUNDS {
            let t0 = rdtsc();
            let mut read = 0usize;
            while read < BENCH_BYTES {
                let offset = start + read as u32;
                let want = chunk.min(BENCH_BYTES - read) as u32;
                match c.ocp_read(LOG, gpa + read as u64, want, offset).map_err(err)? {
                    // Short: the end of the log (the next buffer would not be aligned).
                    ReadOutcome::Copied(n) if n < want => {
                        read += n as usize;
                        break;
                    }
                    ReadOutcome::Copied(n) => read += n as usize,
                    ReadOutcome::Lost { oldest } => return Err(alloc::format!("the log moved past {oldest}")),
                }
            }
            let t1 = rdtsc();
            core::hint::black_box(&mut buffer);
            let (to, from) = (copy.get_mut(..read).unwrap_or_default(), buffer.get(..read).unwrap_or_default());
            for (to, from) in to.chunks_mut(chunk).zip(from.chunks(chunk)) {
                to.copy_from_slice(from);
            }
            core::hint::black_box(&mut copy);
            let t2 = rdtsc();
            ocp = ocp.min(t1 - t0);
            plain = plain.min(t2 - t1);
            bytes = read;
        }
        if bytes == 0 {
            return Err("the log held nothing to read".into());
        }
        let k = chunk / 1024;
        line.push_str(&alloc::format!(" bytes{k}k={bytes} ocp{k}k_cycles={ocp} memcpy{k}k_cycles={plain}"));
    }
    Ok(line)
}
