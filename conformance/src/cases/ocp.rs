//! The Observability and Configuration Protocol (protocol 5, draft version 1), with the
//! resolutions of docs/protocols/ocp.md: registers as the draft's tables give them, names
//! zero-padded, settings written whole, the log read at absolute offsets with loss
//! reported (0x8000_1000, R9 = the oldest offset still held).

use crate::Env;
use crate::check::{CaseError, CaseResult, discovery, ensure, raw};
use abi::ocp::{BATCH_MAX, ENTRY_SIZE, NAME_OFFSET, flags, source_type, typed};
use abi::protocol::ocp_call::{self, LIST, READ, WRITE};
use abi::result::ResultCode;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

const OCP: u32 = 5;

/// The sources, in index order: (flags, name).
fn list_all(env: &mut dyn Env) -> Result<Vec<(u32, String)>, CaseError> {
    let buf = env.facts().scratch;
    let (got, regs) = raw(env, OCP, LIST, [0, buf, 64, 0])?;
    ensure!(got == ResultCode::SUCCESS, "LIST: {got}");
    let mut bytes = vec![0u8; regs.rcx as usize * ENTRY_SIZE];
    env.read(buf, &mut bytes)?;
    let mut out = Vec::new();
    for e in bytes.chunks(ENTRY_SIZE) {
        let fl = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        let name = &e[NAME_OFFSET..];
        let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        ensure!(name[len..].iter().all(|b| *b == 0), "name not zero-padded");
        let name = core::str::from_utf8(&name[..len]).map_err(|_| CaseError::Fail("name is not UTF-8".into()))?;
        out.push((fl, String::from(name)));
    }
    Ok(out)
}

fn index_of(env: &mut dyn Env, name: &str) -> Result<u64, CaseError> {
    let all = list_all(env)?;
    match all.iter().position(|(_, n)| n == name) {
        Some(i) => Ok(i as u64),
        None => Err(CaseError::Fail(alloc::format!("no source `{name}`"))),
    }
}

fn read(env: &mut dyn Env, index: u64, len: u64, offset: u64) -> Result<(ResultCode, Vec<u8>, u64), CaseError> {
    let buf = env.facts().scratch + 0x10_000;
    let (got, regs) = raw(env, OCP, READ, [index, buf, len, offset])?;
    if got != ResultCode::SUCCESS {
        return Ok((got, Vec::new(), regs.r9));
    }
    ensure!(regs.r8 <= len, "READ copied {} of {len} bytes", regs.r8);
    let mut bytes = vec![0u8; regs.r8 as usize];
    env.read(buf, &mut bytes)?;
    Ok((got, bytes, regs.r9))
}

fn value(env: &mut dyn Env, name: &str) -> Result<u64, CaseError> {
    let i = index_of(env, name)?;
    let (got, bytes, _) = read(env, i, 8, 0)?;
    ensure!(got == ResultCode::SUCCESS && bytes.len() == 8, "{name}: {got}, {} bytes", bytes.len());
    Ok(u64::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]]))
}

fn write(env: &mut dyn Env, index: u64, data: &[u8], offset: u64) -> Result<(ResultCode, u64), CaseError> {
    let buf = env.facts().scratch + 0x20_000;
    env.write(buf, data)?;
    let (got, regs) = raw(env, OCP, WRITE, [index, buf, data.len() as u64, offset])?;
    Ok((got, regs.r8))
}

pub fn list(env: &mut dyn Env) -> CaseResult {
    let all = list_all(env)?;
    for name in ["log", "config.log_level", "build.version", "build.git", "build.platform", "memory.svsm_pages_free"] {
        ensure!(all.iter().any(|(_, n)| n == name), "source `{name}` missing from {all:?}");
    }
    for (fl, name) in &all {
        ensure!(fl & !flags::WRITEABLE == 0, "{name}: reserved flag bits {fl:#x}");
        ensure!((*fl & flags::WRITEABLE != 0) == (name.as_str() == "config.log_level"), "{name}: WRITEABLE {fl:#x}");
    }
    // A window of the array is the same entries: indexes are stable.
    let buf = env.facts().scratch;
    let (got, regs) = raw(env, OCP, LIST, [3, buf, 2, 0])?;
    ensure!(got == ResultCode::SUCCESS && regs.rcx == 2, "LIST 3..5: {got}, {} entries", regs.rcx);
    let mut e = [0u8; ENTRY_SIZE];
    env.read(buf + ENTRY_SIZE as u64, &mut e)?;
    ensure!(e[NAME_OFFSET..].starts_with(all[4].1.as_bytes()), "entry 4 differs between the two lists");
    // Past the end, and an empty request: no entries, success.
    for (first, count) in [(all.len() as u64, 4), (all.len() as u64 + 100, 4), (0, 0)] {
        let (got, regs) = raw(env, OCP, LIST, [first, buf, count, 0])?;
        ensure!(got == ResultCode::SUCCESS && regs.rcx == 0, "LIST from {first}, {count}: {got}, {}", regs.rcx);
    }
    // Fewer than asked means the end was reached.
    let (_, regs) = raw(env, OCP, LIST, [all.len() as u64 - 1, buf, 10, 0])?;
    ensure!(regs.rcx == 1, "LIST of the last entry returned {}", regs.rcx);
    Ok(())
}

pub fn list_errors(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    let svsm = discovery(env)?.svsm_base;
    for (args, want, what) in [
        ([0, f.scratch + 4, 1, 0], ResultCode::ERR_INVALID_PARAMETER, "misaligned buffer"),
        ([1 << 32, f.scratch, 1, 0], ResultCode::ERR_INVALID_PARAMETER, "index above 32 bits"),
        ([0, f.scratch, 1 << 32, 0], ResultCode::ERR_INVALID_PARAMETER, "count above 32 bits"),
        ([0, svsm, 1, 0], ResultCode::ERR_INVALID_ADDRESS, "buffer in SVSM memory"),
        ([0, f.startup_vmsa, 1, 0], ResultCode::ERR_INVALID_ADDRESS, "buffer on the startup VMSA"),
        ([0, f.free_small, 1, 0], ResultCode::ERR_INVALID_ADDRESS, "buffer not validated"),
    ] {
        let (got, _) = raw(env, OCP, LIST, args)?;
        ensure!(got == want, "{what}: expected {want}, got {got}");
    }
    let (got, _) = raw(env, OCP, 7, [0, f.scratch, 1, 0])?;
    ensure!(got == ResultCode::ERR_UNSUPPORTED_CALL, "call 7: {got}");
    Ok(())
}

pub fn read_values(env: &mut dyn Env) -> CaseResult {
    let before = value(env, "calls.core")?;
    crate::check::client(env).query_protocol(abi::protocol::ProtocolId::CORE, 1)?;
    let after = value(env, "calls.core")?;
    ensure!(after > before, "calls.core did not count a core call ({before} -> {after})");
    ensure!(value(env, "memory.svsm_pages_total")? >= value(env, "memory.svsm_pages_free")?, "free > total");
    // The heap holds at least the kernel's registries, and never more than its size (a
    // platform that cannot tell says 0 of 0).
    let (used, total) = (value(env, "memory.heap_bytes_used")?, value(env, "memory.heap_bytes_total")?);
    ensure!(used <= total && (used > 0 || total == 0), "heap: {used} bytes used of {total}");
    let i = index_of(env, "build.version")?;
    let (got, whole, _) = read(env, i, 100, 0)?;
    ensure!(got == ResultCode::SUCCESS && !whole.is_empty(), "build.version: {got}");
    ensure!(core::str::from_utf8(&whole).is_ok(), "build.version is not UTF-8");
    // Offsets and short reads: the rest from 2, nothing at or past the end.
    let (_, tail, _) = read(env, i, 100, 2)?;
    ensure!(tail[..] == whole[2..], "read at offset 2");
    let (_, one, _) = read(env, i, 1, 0)?;
    ensure!(one[..] == whole[..1], "read of 1 byte");
    for offset in [whole.len() as u64, whole.len() as u64 + 50] {
        let (got, none, _) = read(env, i, 100, offset)?;
        ensure!(got == ResultCode::SUCCESS && none.is_empty(), "read at {offset}: {got}, {} bytes", none.len());
    }
    Ok(())
}

pub fn read_errors(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    let svsm = discovery(env)?.svsm_base;
    let count = list_all(env)?.len() as u64;
    for (args, want, what) in [
        ([count, f.scratch, 8, 0], ResultCode::ERR_INVALID_PARAMETER, "index past the end"),
        ([u64::from(u32::MAX), f.scratch, 8, 0], ResultCode::ERR_INVALID_PARAMETER, "index 0xFFFFFFFF"),
        ([0, f.scratch + 2, 8, 0], ResultCode::ERR_INVALID_PARAMETER, "misaligned buffer"),
        ([2, f.scratch, 1 << 32, 0], ResultCode::ERR_INVALID_PARAMETER, "size above 32 bits"),
        ([2, f.scratch, 8, 1 << 32], ResultCode::ERR_INVALID_PARAMETER, "offset above 32 bits"),
        ([2, svsm, 8, 0], ResultCode::ERR_INVALID_ADDRESS, "buffer in SVSM memory"),
        ([0, svsm, 64, 0], ResultCode::ERR_INVALID_ADDRESS, "log into SVSM memory"),
        ([2, f.not_ram, 8, 0], ResultCode::ERR_INVALID_ADDRESS, "buffer not RAM"),
    ] {
        let (got, _) = raw(env, OCP, READ, args)?;
        ensure!(got == want, "{what}: expected {want}, got {got}");
    }
    Ok(())
}

pub fn write_setting(env: &mut dyn Env) -> CaseResult {
    let level = index_of(env, "config.log_level")?;
    // The SVSM may keep the level across boots (its sealed state): put it back after.
    let (_, before, _) = read(env, level, 16, 0)?;
    let (got, n) = write(env, level, b"debug", 0)?;
    ensure!(got == ResultCode::SUCCESS && n == 5, "write `debug`: {got}, {n} bytes");
    let (_, now, _) = read(env, level, 16, 0)?;
    ensure!(now == b"debug\n", "log level reads back {now:?}");
    let (got, _) = write(env, level, b"warn\n", 0)?;
    ensure!(got == ResultCode::SUCCESS, "write `warn\\n`: {got}");
    let (_, now, _) = read(env, level, 16, 0)?;
    ensure!(now == b"warn\n", "log level reads back {now:?}");
    let version = index_of(env, "build.version")?;
    for (index, data, offset, what) in [
        (level, &b"verbose"[..], 0, "a level that does not exist"),
        (level, &b"DEBUG"[..], 0, "wrong case"),
        (level, &b"debug"[..], 1, "a non-zero offset"),
        (level, &b""[..], 0, "nothing"),
        (level, &[b'x'; 100][..], 0, "100 bytes"),
        (version, &b"9.9.9"[..], 0, "a source that is not writeable"),
    ] {
        let (got, _) = write(env, index, data, offset)?;
        ensure!(got == ResultCode::ERR_INVALID_PARAMETER, "{what}: {got}");
    }
    let (_, now, _) = read(env, level, 16, 0)?;
    ensure!(now == b"warn\n", "a refused write changed the level to {now:?}");
    let svsm = discovery(env)?.svsm_base;
    let (got, _) = raw(env, OCP, WRITE, [level, svsm, 4, 0])?;
    ensure!(got == ResultCode::ERR_INVALID_ADDRESS, "value in SVSM memory: {got}");
    let (got, _) = write(env, level, &before, 0)?;
    ensure!(got == ResultCode::SUCCESS, "the level it had, `{before:?}`, written back: {got}");
    Ok(())
}

/// Log text from `offset` on, read in 4 KiB steps as a guest would.
fn read_log_from(env: &mut dyn Env, log: u64, mut offset: u64) -> Result<(Vec<u8>, u64), CaseError> {
    let mut text = Vec::new();
    loop {
        let (got, chunk, r9) = read(env, log, 4096, offset)?;
        if got != ResultCode::SUCCESS {
            return Err(CaseError::Fail(alloc::format!("log read at {offset}: {got} (R9 {r9})")));
        }
        if chunk.is_empty() {
            return Ok((text, offset));
        }
        offset += chunk.len() as u64;
        text.extend_from_slice(&chunk);
    }
}

pub fn log(env: &mut dyn Env) -> CaseResult {
    let log = index_of(env, "log")?;
    let level = index_of(env, "config.log_level")?;
    let (_, end) = match read_log_from(env, log, 0) {
        Ok(x) => x,
        // The log already wrapped (a long run before this case): start at the oldest byte.
        Err(_) => {
            let (_, _, oldest) = read(env, log, 8, 0)?;
            read_log_from(env, log, oldest)?
        }
    };
    // Failing calls are logged at debug level: make some, then read on from `end`.
    write(env, level, b"debug", 0)?;
    for i in 0..3u32 {
        raw(env, 0, 0x4000 + i, [0; 4])?;
    }
    write(env, level, b"info", 0)?;
    let (new, _) = read_log_from(env, log, end)?;
    let text = String::from_utf8_lossy(&new);
    let at: Vec<Option<usize>> = (0..3u32).map(|i| text.find(&alloc::format!("0:{}", 0x4000 + i))).collect();
    ensure!(at.iter().all(Option::is_some), "the three failing calls are not all in the new log: {text}");
    ensure!(at.windows(2).all(|w| w[0] < w[1]), "log lines out of order: {text}");
    Ok(())
}

pub fn log_overflow(env: &mut dyn Env) -> CaseResult {
    let capacity = env.facts().log_bytes;
    if capacity == 0 || capacity > 16 * 1024 {
        return Err(CaseError::Skip("the log buffer is too large to overflow quickly here"));
    }
    let log = index_of(env, "log")?;
    let level = index_of(env, "config.log_level")?;
    write(env, level, b"debug", 0)?;
    // Each failing call logs a line: more than the buffer holds.
    for _ in 0..(capacity / 32) {
        raw(env, 0, 0x7777, [0; 4])?;
    }
    write(env, level, b"info", 0)?;
    let (got, _, oldest) = read(env, log, 64, 0)?;
    ensure!(got == ResultCode(abi::ocp::result::DATA_LOST), "read of overwritten log bytes: {got}");
    ensure!(oldest > 0, "R9 = {oldest} after an overflow");
    let (text, _) = read_log_from(env, log, oldest)?;
    ensure!(text.len() as u64 >= capacity - 64, "only {} bytes from the oldest offset", text.len());
    let (got, _, _) = read(env, log, 64, oldest - 1)?;
    ensure!(got == ResultCode(abi::ocp::result::DATA_LOST), "one byte before the oldest: {got}");
    Ok(())
}

// Version 2: the review's proposals as additive calls.

pub fn list_typed(env: &mut dyn Env) -> CaseResult {
    let plain = list_all(env)?;
    let buf = env.facts().scratch;
    let (got, regs) = raw(env, OCP, ocp_call::LIST_TYPED, [0, buf, 64, 0])?;
    ensure!(got == ResultCode::SUCCESS && regs.rcx as usize == plain.len(), "LIST_TYPED: {got}, {}", regs.rcx);
    let mut bytes = vec![0u8; plain.len() * ENTRY_SIZE];
    env.read(buf, &mut bytes)?;
    let word = |e: &[u8], at: usize| u32::from_le_bytes([e[at], e[at + 1], e[at + 2], e[at + 3]]);
    for (e, (fl, name)) in bytes.chunks(ENTRY_SIZE).zip(&plain) {
        ensure!(word(e, 0) == *fl, "{name}: flags differ between LIST and LIST_TYPED");
        ensure!(e[typed::NAME_OFFSET..].starts_with(name.as_bytes()), "{name}: typed entry names another source");
        let (kind, protocol, size) = (word(e, typed::TYPE), word(e, typed::PROTOCOL), word(e, typed::SIZE));
        let expected = match name.as_str() {
            "log" => (source_type::LOG_STREAM, typed::PROTOCOL_NONE, 0),
            "calls.core" | "errors.core" => (source_type::COUNTER, 0, 8),
            "calls.attestation" => (source_type::COUNTER, 1, 8),
            "calls.ocp" => (source_type::COUNTER, 5, 8),
            "memory.svsm_pages_free" => (source_type::VALUE, 0, 8),
            "build.version" | "config.log_level" => (source_type::STRING, typed::PROTOCOL_NONE, 0),
            _ => (kind, protocol, size),
        };
        ensure!((kind, protocol, size) == expected, "{name}: type {kind}, protocol {protocol:#x}, size {size}");
    }
    Ok(())
}

pub fn read_register(env: &mut dyn Env) -> CaseResult {
    let total = index_of(env, "memory.svsm_pages_total")?;
    let (got, regs) = raw(env, OCP, ocp_call::READ_REGISTER, [total, 0, 0, 0])?;
    ensure!(got == ResultCode::SUCCESS && regs.r8 == 8, "READ_REGISTER: {got}, size {}", regs.r8);
    ensure!(regs.rdx == value(env, "memory.svsm_pages_total")?, "READ_REGISTER and READ disagree");
    let calls = index_of(env, "calls.core")?;
    let (_, first) = raw(env, OCP, ocp_call::READ_REGISTER, [calls, 0, 0, 0])?;
    crate::check::client(env).query_protocol(abi::protocol::ProtocolId::CORE, 1)?;
    let (_, second) = raw(env, OCP, ocp_call::READ_REGISTER, [calls, 0, 0, 0])?;
    ensure!(second.rdx > first.rdx, "calls.core by register: {} then {}", first.rdx, second.rdx);
    for (name, want) in
        [("log", abi::ocp::result::NOT_REGISTER_SIZED), ("build.version", abi::ocp::result::NOT_REGISTER_SIZED)]
    {
        let i = index_of(env, name)?;
        let (got, _) = raw(env, OCP, ocp_call::READ_REGISTER, [i, 0, 0, 0])?;
        ensure!(got == ResultCode(want), "READ_REGISTER of {name}: {got}");
    }
    let count = list_all(env)?.len() as u64;
    let (got, _) = raw(env, OCP, ocp_call::READ_REGISTER, [count, 0, 0, 0])?;
    ensure!(got == ResultCode::ERR_INVALID_PARAMETER, "READ_REGISTER past the end: {got}");
    Ok(())
}

pub fn read_batch(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    let (indexes, values) = (f.scratch + 0x3000, f.scratch + 0x4000);
    let names = ["memory.svsm_pages_total", "calls.core", "errors.core", "memory.svsm_pages_free"];
    let mut ids = Vec::new();
    for n in names {
        ids.push(index_of(env, n)? as u32);
    }
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    env.write(indexes, &bytes)?;
    env.write(values, &[0xEE; 32])?;
    let (got, _) = raw(env, OCP, ocp_call::READ_BATCH, [indexes, values, 4, 0])?;
    ensure!(got == ResultCode::SUCCESS, "READ_BATCH: {got}");
    let mut out = [0u8; 32];
    env.read(values, &mut out)?;
    let total = u64::from_le_bytes([out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7]]);
    ensure!(total == value(env, "memory.svsm_pages_total")?, "batch value 0 = {total}");
    // One source that is not register-sized: nothing is written.
    let log = index_of(env, "log")?;
    env.write(indexes + 8, &(log as u32).to_le_bytes())?;
    env.write(values, &[0xEE; 32])?;
    let (got, _) = raw(env, OCP, ocp_call::READ_BATCH, [indexes, values, 4, 0])?;
    ensure!(got == ResultCode(abi::ocp::result::NOT_REGISTER_SIZED), "batch with the log: {got}");
    env.read(values, &mut out)?;
    ensure!(out == [0xEE; 32], "a refused batch wrote values");
    let svsm = discovery(env)?.svsm_base;
    for (args, want, what) in [
        ([indexes, values, 0, 0], ResultCode::ERR_INVALID_PARAMETER, "count 0"),
        ([indexes, values, BATCH_MAX as u64 + 1, 0], ResultCode::ERR_INVALID_PARAMETER, "count above 512"),
        ([indexes + 2, values, 1, 0], ResultCode::ERR_INVALID_PARAMETER, "misaligned indexes"),
        ([indexes, values + 4, 1, 0], ResultCode::ERR_INVALID_PARAMETER, "misaligned values"),
        ([svsm, values, 1, 0], ResultCode::ERR_INVALID_ADDRESS, "indexes in SVSM memory"),
        ([indexes, svsm, 1, 0], ResultCode::ERR_INVALID_ADDRESS, "values into SVSM memory"),
    ] {
        let (got, _) = raw(env, OCP, ocp_call::READ_BATCH, args)?;
        ensure!(got == want, "{what}: expected {want}, got {got}");
    }
    Ok(())
}

/// The ring's head, tail, dropped count and first slots.
fn ring_state(env: &mut dyn Env, ring: u64) -> Result<(u32, u32, u32, [u32; 4]), CaseError> {
    let mut b = [0u8; 32];
    env.read(ring, &mut b)?;
    let w = |i: usize| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
    Ok((w(0), w(1), w(2), [w(4), w(5), w(6), w(7)]))
}

pub fn notify(env: &mut dyn Env) -> CaseResult {
    use abi::ocp::ring;
    let f = env.facts();
    let ring_gpa = f.scratch + 0x6000;
    let level = index_of(env, "config.log_level")?;
    env.write(ring_gpa, &[0xFF; 64])?;
    let (got, _) = raw(env, OCP, ocp_call::NOTIFY, [ring_gpa, 0, 0, 0])?;
    ensure!(got == ResultCode::SUCCESS, "NOTIFY: {got}");
    let (head, tail, dropped, _) = ring_state(env, ring_gpa)?;
    ensure!((head, tail, dropped) == (0, 0, 0), "a new ring starts empty: {head} {tail} {dropped}");
    // A setting written, then a logged line: events 1 (the setting) and 0 (the log).
    write(env, level, b"debug", 0)?;
    raw(env, 0, 0x4444, [0; 4])?;
    let (head, _, _, slots) = ring_state(env, ring_gpa)?;
    ensure!(
        head >= 2 && slots[..2].contains(&(level as u32)) && slots[..head.min(4) as usize].contains(&0),
        "events {slots:?}, head {head}"
    );
    write(env, level, b"info", 0)?;
    // The guest does not consume: after a full ring, events are counted as dropped.
    // (Setting writes make one event each and log nothing: the console stays quiet.)
    for _ in 0..ring::SLOTS + 8 {
        write(env, level, b"info", 0)?;
    }
    let (head, tail, dropped, _) = ring_state(env, ring_gpa)?;
    ensure!(
        head.wrapping_sub(tail) == ring::SLOTS && dropped > 0,
        "full ring: head {head} tail {tail} dropped {dropped}"
    );
    // The guest consumes everything: events flow again.
    env.write(ring_gpa + ring::TAIL as u64, &head.to_le_bytes())?;
    write(env, level, b"info", 0)?;
    let (after, _, _, _) = ring_state(env, ring_gpa)?;
    ensure!(after == head.wrapping_add(1), "after consuming: head {head} -> {after}");
    // Stopped: nothing more.
    let (got, _) = raw(env, OCP, ocp_call::NOTIFY, [0, 0, 0, 0])?;
    ensure!(got == ResultCode::SUCCESS, "NOTIFY 0: {got}");
    write(env, level, b"info", 0)?;
    let (last, _, _, _) = ring_state(env, ring_gpa)?;
    ensure!(last == after, "events after NOTIFY 0: head {after} -> {last}");
    // Where a ring may not be.
    let d = discovery(env)?;
    let ca = env.calling_area() & !0xFFF;
    for (gpa, want, what) in [
        (ring_gpa + 8, ResultCode::ERR_INVALID_PARAMETER, "not page aligned"),
        (d.svsm_base, ResultCode::ERR_INVALID_ADDRESS, "SVSM memory"),
        (f.startup_vmsa, ResultCode::ERR_INVALID_ADDRESS, "the startup VMSA"),
        (ca, ResultCode::ERR_INVALID_ADDRESS, "a calling area"),
        (f.secrets_page, ResultCode::ERR_INVALID_ADDRESS, "the secrets page"),
        (f.free_small, ResultCode::ERR_INVALID_ADDRESS, "unvalidated memory"),
        (f.not_ram, ResultCode::ERR_INVALID_ADDRESS, "not RAM"),
    ] {
        let (got, _) = raw(env, OCP, ocp_call::NOTIFY, [gpa, 0, 0, 0])?;
        ensure!(got == want, "ring on {what}: expected {want}, got {got}");
    }
    Ok(())
}
