//! The guest's agent for host tools: when QEMU gives the guest a fourth serial port
//! (COM4, which `cargo xtask boot --agent` connects to a TCP port), the guest serves
//! requests from the host there after its checks, one line each, and answers each with
//! one line. This is how `bulwark ocp ... --qemu HOST:PORT` reaches the SVSM through the
//! real protocol path (host tool -> guest serial port -> VMMCALL -> SVSM), and how
//! `bulwark tpm-bridge --qemu HOST:PORT` reaches the vTPM.
//!
//! Requests: `list`, `read <index>`, `write <index> <hex>`, `tpm <hex>`, `manifest`, `quit`.
//! Answers: `OK <hex>` (list: the raw 128-byte entries; read: the source's bytes; write:
//! the byte count as a u32 LE; tpm: the TPM response; manifest: the attestation services
//! manifest of a fresh SVSM_ATTEST_SERVICES) or `ERR <why>`.
#![expect(unsafe_code, reason = "HLT while it waits for the host")]

use abi::ocp::ENTRY_SIZE;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;
use guest::ocp::ReadOutcome;
use guest::{Client, Transport};
use x86::uart::Uart16550;

const PORT: Uart16550 = Uart16550::COM4;
/// The longest request is a TPM command of a full page in hex; a longer line is refused
/// rather than grown without bound.
const LINE_MAX: usize = 2 * 4096 + 64;
const CHUNK: u32 = 4096;

fn read_line() -> Option<String> {
    let mut line = Vec::new();
    loop {
        match PORT.try_get() {
            Some(b'\n') => return String::from_utf8(line).ok(),
            Some(b'\r') => {}
            Some(b) if line.len() < LINE_MAX => line.push(b),
            Some(_) => return None,
            // Nothing yet: let the SVSM run the other vCPUs meanwhile.
            // SAFETY: HLT with interrupts off is the guest's yield to the SVSM.
            None => unsafe { core::arch::asm!("hlt", options(nomem, nostack)) },
        }
    }
}

fn answer(text: &str) {
    let mut port = PORT;
    let _ = port.write_str(text);
    let _ = port.write_str("\n");
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2 + 3);
    s.push_str("OK ");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Is there a host on COM4?
pub fn present() -> bool {
    PORT.present()
}

/// Serve the host until it sends `quit`; `buffer` is a validated page of the guest's.
pub fn serve<T: Transport>(c: &mut Client<T>, buffer: u64) {
    PORT.init();
    println!("agent: serving host requests on COM4");
    while let Some(line) = read_line() {
        let mut words = line.split(' ');
        let reply = match (words.next(), words.next(), words.next()) {
            (Some("quit"), None, None) => {
                answer("OK ");
                return;
            }
            (Some("list"), None, None) => list(c, buffer),
            (Some("read"), Some(i), None) => i.parse().map_err(|_| "bad index".into()).and_then(|i| read(c, buffer, i)),
            (Some("write"), Some(i), Some(data)) => match (i.parse(), unhex(data)) {
                (Ok(i), Some(data)) => write(c, buffer, i, &data),
                _ => Err("bad index or data".into()),
            },
            (Some("manifest"), None, None) => manifest(c, buffer),
            (Some("tpm"), Some(command), None) => match unhex(command) {
                Some(command) => tpm(c, buffer, &command),
                None => Err("bad TPM command hex".into()),
            },
            _ => Err(alloc::format!("unknown request `{}`", line.get(..64).unwrap_or(&line))),
        };
        match reply {
            Ok(bytes) => answer(&hex(&bytes)),
            Err(why) => answer(&alloc::format!("ERR {why}")),
        }
    }
    println!("agent: the host sent an overlong or invalid line; stopping");
}

fn list<T: Transport>(c: &mut Client<T>, buffer: u64) -> Result<Vec<u8>, String> {
    let n = c.ocp_list(0, buffer, (4096 / ENTRY_SIZE) as u32).map_err(|e| alloc::format!("{e:?}"))?;
    let mut entries = vec![0u8; n as usize * ENTRY_SIZE];
    c.transport.read(buffer, &mut entries).map_err(|e| alloc::format!("{e:?}"))?;
    Ok(entries)
}

fn read<T: Transport>(c: &mut Client<T>, buffer: u64, index: u32) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    loop {
        let n = match c.ocp_read(index, buffer, CHUNK, data.len() as u32).map_err(|e| alloc::format!("{e:?}"))? {
            ReadOutcome::Copied(n) => n,
            ReadOutcome::Lost { oldest } => return Err(alloc::format!("bytes before {oldest} were overwritten")),
        };
        let at = data.len();
        data.resize(at + n as usize, 0);
        c.transport.read(buffer, &mut data[at..]).map_err(|e| alloc::format!("{e:?}"))?;
        if n < CHUNK {
            return Ok(data);
        }
    }
}

fn write<T: Transport>(c: &mut Client<T>, buffer: u64, index: u32, data: &[u8]) -> Result<Vec<u8>, String> {
    if data.len() > 4096 {
        return Err("value too long".into());
    }
    c.transport.write(buffer, data).map_err(|e| alloc::format!("{e:?}"))?;
    let n = c.ocp_write(index, buffer, data.len() as u32).map_err(|e| alloc::format!("{e:?}"))?;
    Ok(n.to_le_bytes().to_vec())
}

/// One TPM command through SVSM_VTPM_CMD; `buffer` is the request page.
fn tpm<T: Transport>(c: &mut Client<T>, buffer: u64, command: &[u8]) -> Result<Vec<u8>, String> {
    let mut response = vec![0u8; abi::vtpm::BUFFER_SIZE];
    let n = c.vtpm_command(buffer, command, &mut response).map_err(|e| alloc::format!("{e:?}"))?;
    response.truncate(n);
    Ok(response)
}

/// SVSM_ATTEST_SERVICES with its buffers in the validated scratch pages after `buffer`;
/// the services manifest it returns.
fn manifest<T: Transport>(c: &mut Client<T>, buffer: u64) -> Result<Vec<u8>, String> {
    super::evidence::attest(c, buffer + 0x1000, &[0x6E; 64]).map(|e| e.manifest)
}
