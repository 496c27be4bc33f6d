//! The guest's agent for host tools: when QEMU gives the guest a fourth serial port
//! (COM4, which `cargo xtask boot --agent` connects to a TCP port), the guest serves
//! requests from the host there after its checks, one line each, and answers each with
//! one line. This is how `bulwark ocp ... --qemu HOST:PORT` reaches the SVSM through the
//! real protocol path (host tool -> guest serial port -> VMMCALL -> SVSM), and how
//! `bulwark tpm-bridge --qemu HOST:PORT` reaches the vTPM.
//!
//! Requests: `list`, `read <index>`, `write <index> <hex>`, `tpm <hex>`, `manifest`,
//! `fill <seed>`, `churn <seed> <rounds>`, `quiet <seed>`, `check <seed>`, `grow <MiB> <seed>`,
//! `checkgrown <MiB> <seed>`, `query`, `quit`.
//! Answers: `OK <hex>` (list: the raw 128-byte entries; read: the source's bytes; write:
//! the byte count as a u32 LE; tpm: the TPM response; manifest: the attestation services
//! manifest of a fresh SVSM_ATTEST_SERVICES; fill, churn, quiet: the seed the pattern pages now
//! hold, u32 LE; check, checkgrown: nothing; grow: the pages validated, u32 LE; query:
//! the core and vTPM protocols' QUERY_PROTOCOL
//! answers, two u64 LE) or `ERR <why>`.
//!
//! `fill`, `churn` and `check` are the live-migration test's workload (`cargo xtask
//! migrate`): the guest writes a pattern that names the seed, the page and the word into
//! [`PATTERN_PAGES`] pages of its scratch memory (`churn`: again and again, one seed after
//! another, with a call to the SVSM between pages, while the source's pre-copy rounds run;
//! `quiet`: the same without the calls, until a byte arrives on the agent's port),
//! and checks after the migration that every page holds what it wrote last. `grow` makes
//! the guest larger for the migration benchmarks: it validates that many MiB more of
//! its RAM through SVSM_CORE_PVALIDATE (2 MiB pages) and writes a pattern into every page, which
//! `checkgrown` checks after the migration.
#![expect(unsafe_code, reason = "HLT while it waits for the host")]

use abi::ocp::ENTRY_SIZE;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;
use guest::{Client, Transport};
use x86::uart::Uart16550;

const PORT: Uart16550 = Uart16550::COM4;
/// The longest request is a TPM command of a full page in hex; a longer line is refused
/// rather than grown without bound.
const LINE_MAX: usize = 2 * 4096 + 64;
/// The workload's pages: the upper half of the validated scratch region (the lower half
/// holds the agent's own buffers).
const PATTERN_AT: u64 = super::suite::SCRATCH + 0x8_0000;
pub const PATTERN_PAGES: u64 = 128;
/// Where `grow` validates more memory: above the conformance suite's regions (the last
/// ends at 264 MiB), where the svm launch assigns RAM as 2 MiB RMP pages, below the guest
/// image QEMU puts at the top of RAM (`cargo xtask migrate --guest-mib` gives the guest
/// enough RAM).
const GROW_AT: u64 = 0x1100_0000;
/// At most 2 GiB, so that QEMU's q35 keeps all of the guest's RAM below 4 GiB (it does
/// for less than 2.75 GiB), where the guest's identity map and the svm launch reach.
const GROW_MAX_MIB: u32 = 2048;
/// The page numbers the grown pages' pattern names (apart from the pattern pages').
const GROW_PATTERN_PAGE: u64 = 0x4_0000;
/// The list page of `grow`'s PVALIDATE calls, in the agent's half of the scratch region.
const GROW_LIST_OFFSET: u64 = 0x4_0000;

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
    super::ap::set_dr0(DR0_MARK);
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
            (Some("fill"), Some(seed), None) => number(seed).and_then(|seed| churn(c, seed, 1, Calls::Between)),
            (Some("churn"), Some(seed), Some(rounds)) => {
                number(seed).and_then(|seed| number(rounds).and_then(|rounds| churn(c, seed, rounds, Calls::Between)))
            }
            (Some("quiet"), Some(seed), None) => {
                number(seed).and_then(|seed| churn(c, seed, QUIET_ROUNDS, Calls::None))
            }
            (Some("check"), Some(seed), None) => number(seed).and_then(|seed| check(c, seed)),
            (Some("grow"), Some(mib), Some(seed)) => {
                number(mib).and_then(|mib| number(seed).and_then(|seed| grow(c, buffer + GROW_LIST_OFFSET, mib, seed)))
            }
            (Some("checkgrown"), Some(mib), Some(seed)) => {
                number(mib).and_then(|mib| number(seed).and_then(|seed| check_grown(c, mib, seed)))
            }
            (Some("query"), None, None) => query(c),
            (Some("heap"), None, None) => heap(c, buffer),
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

/// The SVSM heap's bytes in use and its size (the OCP sources `memory.heap_bytes_used` and
/// `memory.heap_bytes_total`, found by name), 8 bytes each, little-endian.
fn heap<T: Transport>(c: &mut Client<T>, buffer: u64) -> Result<Vec<u8>, String> {
    let entries = list(c, buffer)?;
    let index = |name: &str| {
        entries
            .chunks_exact(ENTRY_SIZE)
            .filter_map(|e| <&[u8; ENTRY_SIZE]>::try_from(e).ok())
            .position(|e| guest::ocp::SourceEntry::decode(e).name() == Some(name))
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| alloc::format!("the SVSM has no source {name}"))
    };
    let (used, total) = (index("memory.heap_bytes_used")?, index("memory.heap_bytes_total")?);
    let mut both = read(c, buffer, used)?;
    both.extend(read(c, buffer, total)?);
    match both.len() {
        16 => Ok(both),
        n => Err(alloc::format!("the heap sources gave {n} bytes, not 8 each")),
    }
}

/// Source `index` whole, from offset 0; for a log whose first bytes were overwritten,
/// [`guest::ocp::OVERWRITTEN`] and then the log from its oldest byte held.
fn read<T: Transport>(c: &mut Client<T>, buffer: u64, index: u32) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    match c.ocp_read_whole(index, buffer, &mut |piece| data.extend_from_slice(piece)) {
        Ok(true) => Ok(data),
        Ok(false) => Err("the log moves on faster than it can be read".into()),
        Err(e) => Err(alloc::format!("{e:?}")),
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

fn number(word: &str) -> Result<u32, String> {
    word.parse().map_err(|_| alloc::format!("`{word}` is not a number"))
}

/// The pattern page `page` holds for `seed`: each u64 word names the seed, the page and
/// itself.
fn pattern(seed: u32, page: u64) -> Vec<u8> {
    (0..512u64).flat_map(|word| (u64::from(seed) << 40 | page << 20 | word).to_le_bytes()).collect()
}

/// The most rounds of `quiet`: it ends earlier as soon as a byte arrives on the port.
const QUIET_ROUNDS: u32 = 1_000_000;

/// Whether [`churn`] calls the SVSM between pages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Calls {
    /// A core call after every page: the guest exits all the time.
    Between,
    /// None: the guest exits only when the SVSM makes it (its timer, a write a live
    /// migration's dirty tracking holds back), as a guest that computes does. A byte on
    /// the agent's port (its own: no exit either) ends the rewriting after the round.
    None,
}

/// Write the pattern of `seed`, `seed + 1`, ... (`rounds` of them) over every pattern page,
/// with or without a core call between pages (the SVSM's CPU 0 drives a migration
/// between its guest's exits: without calls, its timer makes them). Answers the seed the
/// pages hold at the end.
fn churn<T: Transport>(c: &mut Client<T>, seed: u32, rounds: u32, calls: Calls) -> Result<Vec<u8>, String> {
    let mut last = seed;
    for round in 0..rounds.max(1) {
        last = seed.wrapping_add(round);
        for page in 0..PATTERN_PAGES {
            c.transport.write(PATTERN_AT + page * 4096, &pattern(last, page)).map_err(|e| alloc::format!("{e:?}"))?;
            if calls == Calls::Between {
                c.query_protocol(abi::protocol::ProtocolId::CORE, 1).map_err(|e| alloc::format!("{e:?}"))?;
            }
        }
        if calls == Calls::None && PORT.try_get().is_some() {
            break;
        }
    }
    Ok(last.to_le_bytes().to_vec())
}

/// What the agent's vCPU keeps in DR0 while it serves, for `check` to find (on the
/// destination of a live migration too: VMRUN does not switch DR0-DR3, the SVSM carries
/// them). Set once: under QEMU's emulation a debug register write throws away translated
/// code. Canonical; DR7 stays clear, so it is never a breakpoint.
const DR0_MARK: u64 = 0x7F00_DEAD_B000;

/// Does every pattern page hold the pattern of `seed`, and DR0 the agent's mark?
fn check<T: Transport>(c: &mut Client<T>, seed: u32) -> Result<Vec<u8>, String> {
    let mut got = vec![0u8; 4096];
    for page in 0..PATTERN_PAGES {
        c.transport.read(PATTERN_AT + page * 4096, &mut got).map_err(|e| alloc::format!("{e:?}"))?;
        if got != pattern(seed, page) {
            return Err(alloc::format!("pattern page {page} does not hold seed {seed}'s pattern"));
        }
    }
    let dr0 = super::ap::dr0();
    if dr0 != DR0_MARK {
        return Err(alloc::format!("DR0 holds {dr0:#x}, not the agent's {DR0_MARK:#x}"));
    }
    Ok(Vec::new())
}

/// Validate `mib` MiB more as 2 MiB pages from [`GROW_AT`] (as Linux accepts memory
/// where it can), with the calls' list at `list`, and write the pattern of `seed` into
/// every 4 KiB page. Answers the 4 KiB page count.
fn grow<T: Transport>(c: &mut Client<T>, list: u64, mib: u32, seed: u32) -> Result<Vec<u8>, String> {
    if mib == 0 || mib > GROW_MAX_MIB || !mib.is_multiple_of(2) {
        return Err(alloc::format!("grow takes an even 2..={GROW_MAX_MIB} MiB"));
    }
    let huge_pages = u64::from(mib / 2);
    let mut done = 0;
    while done < huge_pages {
        let entries: Vec<abi::core_protocol::PvalidateEntry> = (done..huge_pages.min(done + 510))
            .map(|huge| abi::core_protocol::PvalidateEntry::new(GROW_AT + huge * 0x20_0000, true, true, false))
            .collect();
        c.pvalidate(&entries, list).map_err(|e| alloc::format!("PVALIDATE at 2 MiB page {done}: {e:?}"))?;
        done += entries.len() as u64;
    }
    let pages = huge_pages * 512;
    for page in 0..pages {
        c.transport
            .write(GROW_AT + page * 4096, &pattern(seed, GROW_PATTERN_PAGE + page))
            .map_err(|e| alloc::format!("{e:?}"))?;
    }
    Ok((pages as u32).to_le_bytes().to_vec())
}

/// Does every page `grow` validated hold the pattern of `seed`?
fn check_grown<T: Transport>(c: &mut Client<T>, mib: u32, seed: u32) -> Result<Vec<u8>, String> {
    let mut got = vec![0u8; 4096];
    for page in 0..u64::from(mib.min(GROW_MAX_MIB)) * 256 {
        c.transport.read(GROW_AT + page * 4096, &mut got).map_err(|e| alloc::format!("{e:?}"))?;
        if got != pattern(seed, GROW_PATTERN_PAGE + page) {
            return Err(alloc::format!("grown page {page} does not hold seed {seed}'s pattern"));
        }
    }
    Ok(Vec::new())
}

/// QUERY_PROTOCOL for the core protocol and the vTPM (0 where not served).
fn query<T: Transport>(c: &mut Client<T>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for protocol in [abi::protocol::ProtocolId::CORE, abi::protocol::ProtocolId::VTPM] {
        let answer = c.query_protocol(protocol, 1).map_err(|e| alloc::format!("{e:?}"))?;
        // As RCX carries it: the highest version in the upper half, the lowest below.
        let (highest, lowest) = answer.unwrap_or((0, 0));
        out.extend_from_slice(&(u64::from(highest) << 32 | u64::from(lowest)).to_le_bytes());
    }
    Ok(out)
}
