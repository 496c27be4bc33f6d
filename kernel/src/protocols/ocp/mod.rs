//! The Observability and Configuration Protocol (protocol 5, 2026 draft). Version 1:
//! SVSM_OCP_LIST, SVSM_OCP_READ, SVSM_OCP_WRITE, with registers as the draft's tables
//! give them (RCX index, RDX buffer gpa, R8 count or size, R9 offset), which docs/facts.md
//! section 4 calls the consistent reading. Version 2 adds the review's proposals as new
//! calls: LIST_TYPED, READ_REGISTER, READ_BATCH. Our resolutions of the draft's open
//! points are in docs/protocols/ocp.md.

pub mod sources;

use crate::addr::Gpa;
use crate::error::{CallError, CallResult};
use crate::guest_memory;
use crate::platform::{LogCopyError, Platform};
use crate::protocols::{CallContext, Reply};
use crate::svsm::Svsm;
use abi::ocp::{BATCH_MAX, ENTRY_SIZE, NAME_OFFSET, flags, typed};
use abi::protocol::ocp_call;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use sources::{Setting, SourceKind};

/// The most a setting accepts in one write.
const SETTING_MAX: usize = 64;

pub fn handle<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> Reply {
    match ctx.id.call {
        ocp_call::LIST => list(svsm, p, ctx),
        ocp_call::READ => read(svsm, p, ctx),
        ocp_call::WRITE => match write(svsm, p, ctx) {
            Ok(n) => Reply::ok().with_r8(n),
            Err(e) => Reply::err(e),
        },
        ocp_call::LIST_TYPED => list(svsm, p, ctx),
        ocp_call::READ_REGISTER => match read_register(svsm, p, ctx) {
            Ok((value, size)) => Reply::ok().with_rdx(value).with_r8(size),
            Err(e) => Reply::err(e),
        },
        ocp_call::READ_BATCH => read_batch(svsm, p, ctx).into(),
        ocp_call::NOTIFY => notify(svsm, p, ctx).into(),
        _ => Reply::err(CallError::UnsupportedCall),
    }
}

/// A 4-byte register: the upper half must be clear.
fn u32_reg(value: u64, what: &'static str) -> CallResult<u32> {
    u32::try_from(value).map_err(|_| CallError::InvalidParameter(what))
}

/// The output buffer: 8-byte aligned, and (when the guest asked for anything) a place the
/// SVSM may write, even if there turns out to be nothing to copy. A bad buffer is refused
/// the same way whatever the source holds at the moment.
fn buffer<P: Platform + ?Sized>(svsm: &Svsm, p: &P, ctx: &CallContext, asked: u64) -> CallResult<Gpa> {
    let gpa = Gpa(ctx.regs.rdx);
    if !gpa.is_aligned(8) {
        return Err(CallError::InvalidParameter("buffer gpa is not 8-byte aligned"));
    }
    if asked > 0 {
        guest_memory::check_writable(p, ctx.view(&svsm.pages), gpa, 1)?;
    }
    Ok(gpa)
}

fn list<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> Reply {
    let mut run = || -> CallResult<u64> {
        let first = u32_reg(ctx.regs.rcx, "first index has bits above 31")?;
        let max = u32_reg(ctx.regs.r8, "entry count has bits above 31")?;
        let gpa = buffer(svsm, p, ctx, u64::from(max))?;
        let count = svsm.ocp.len().saturating_sub(first as usize).min(max as usize);
        // Checked whole before the first entry is written; each entry is built on the
        // stack (no allocation on a guest-triggered path).
        guest_memory::check_writable(p, ctx.view(&svsm.pages), gpa, count * ENTRY_SIZE)?;
        for (i, s) in svsm.ocp.iter().skip(first as usize).take(count).enumerate() {
            let mut e = [0u8; ENTRY_SIZE];
            let flags = if s.writable() { flags::WRITEABLE } else { 0 };
            e[..4].copy_from_slice(&flags.to_le_bytes());
            let name_at = if ctx.id.call == ocp_call::LIST_TYPED {
                e[typed::TYPE..typed::TYPE + 4].copy_from_slice(&s.type_code().to_le_bytes());
                e[typed::PROTOCOL..typed::PROTOCOL + 4].copy_from_slice(&s.protocol.to_le_bytes());
                e[typed::SIZE..typed::SIZE + 4].copy_from_slice(&s.fixed_size().unwrap_or(0).to_le_bytes());
                typed::NAME_OFFSET
            } else {
                NAME_OFFSET
            };
            // Registration keeps names within NAME_MAX, so the name always fits.
            if let Some(to) = e.get_mut(name_at..name_at + s.name.len()) {
                to.copy_from_slice(s.name.as_bytes());
            }
            let at = Gpa(gpa.0 + (i * ENTRY_SIZE) as u64);
            guest_memory::write_bytes(p, ctx.view(&svsm.pages), at, &e)?;
        }
        Ok(count as u64)
    };
    match run() {
        Ok(n) => Reply::ok().with_rcx(n),
        Err(e) => Reply::err(e),
    }
}

fn read<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> Reply {
    let mut run = || -> CallResult<u64> {
        let index = u32_reg(ctx.regs.rcx, "source index has bits above 31")?;
        let source = *svsm.ocp.get(index).ok_or(CallError::InvalidParameter("no source with this index"))?;
        let want = u32_reg(ctx.regs.r8, "size has bits above 31")? as usize;
        let offset = u32_reg(ctx.regs.r9, "offset has bits above 31")? as u64;
        let gpa = buffer(svsm, p, ctx, want as u64)?;
        if let SourceKind::Log = source.kind {
            return read_log(svsm, p, ctx, gpa, want, log_offset(offset, p.log_written()));
        }
        let snapshot = sources::snapshot(svsm, p, source.kind);
        let bytes = snapshot.bytes();
        let from = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
        let part = bytes.get(from..).unwrap_or_default();
        let part = part.get(..want).unwrap_or(part);
        let n = part.len();
        if n > 0 {
            guest_memory::write_bytes(p, ctx.view(&svsm.pages), gpa, part)?;
        }
        Ok(n as u64)
    };
    match run() {
        Ok(n) => Reply::ok().with_r8(n),
        // R9 is the stream offset's low 32 bits (`log_offset`).
        Err(CallError::LogLost { oldest }) => Reply::err(CallError::LogLost { oldest }).with_r9(oldest & 0xFFFF_FFFF),
        Err(e) => Reply::err(e),
    }
}

/// The log's absolute offset that a 32-bit R9 names: the one with those low 32 bits at or
/// below the end of the stream (`written`), the nearest to it. R9 cannot hold an offset
/// past 4 GiB; a reader that passes back what it was given reads on across every 4 GiB
/// boundary. An offset ahead of the end names itself (nothing there yet).
fn log_offset(r9: u64, written: u64) -> u64 {
    let behind = (written & 0xFFFF_FFFF).wrapping_sub(r9) & 0xFFFF_FFFF;
    if behind <= written { written - behind } else { r9 }
}

/// The log from `offset`: checked whole, then copied from the platform's ring into the
/// guest's buffer a page at a time, under that page's lock (`guest_memory::write_with`).
fn read_log<P: Platform + ?Sized>(
    svsm: &Svsm,
    p: &mut P,
    ctx: &CallContext,
    gpa: Gpa,
    want: usize,
    offset: u64,
) -> CallResult<u64> {
    let available = p.log_written().saturating_sub(offset);
    let n = usize::try_from(available).unwrap_or(usize::MAX).min(want);
    let copied = guest_memory::write_with(p, ctx.view(&svsm.pages), gpa, n, |p, at, from, len| {
        p.log_to_guest(offset + from as u64, at, len).map_err(|e| match e {
            LogCopyError::Lost(l) => CallError::LogLost { oldest: l.oldest },
            LogCopyError::Fault(f) => CallError::from(f),
            LogCopyError::Busy => CallError::InvalidRequest("the log is busy now; read it again"),
        })
    })?;
    Ok(copied as u64)
}

/// Settings and the change-event ring are the SVSM's, one for the whole guest: only the
/// most privileged guest VMPL may change them. A less privileged one (VMPL2/3, hostile to
/// VMPL1 by the threat model) could otherwise silence the log for every later boot (the
/// level is kept in the sealed state) or take VMPL1's ring away.
fn top_only(ctx: &CallContext) -> CallResult<()> {
    if ctx.caller.is_top() {
        Ok(())
    } else {
        Err(CallError::InvalidRequest("settings and change events are the most privileged guest VMPL's"))
    }
}

fn write<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> CallResult<u64> {
    top_only(ctx)?;
    let index = u32_reg(ctx.regs.rcx, "source index has bits above 31")?;
    let source = *svsm.ocp.get(index).ok_or(CallError::InvalidParameter("no source with this index"))?;
    let SourceKind::Setting(setting) = source.kind else {
        return Err(CallError::InvalidParameter("the source is not writeable"));
    };
    let len = u32_reg(ctx.regs.r8, "size has bits above 31")? as usize;
    let gpa = Gpa(ctx.regs.rdx);
    if !gpa.is_aligned(8) {
        return Err(CallError::InvalidParameter("buffer gpa is not 8-byte aligned"));
    }
    if u32_reg(ctx.regs.r9, "offset has bits above 31")? != 0 {
        return Err(CallError::InvalidParameter("settings are written whole, at offset 0"));
    }
    if len == 0 || len > SETTING_MAX {
        return Err(CallError::InvalidParameter("not a value this setting understands"));
    }
    let mut buf = [0u8; SETTING_MAX];
    // `len` is at most SETTING_MAX (checked above).
    let data = buf.get_mut(..len).ok_or(CallError::InvalidParameter("not a value this setting understands"))?;
    guest_memory::read_bytes(p, ctx.view(&svsm.pages), gpa, data)?;
    // Room for the change event before anything changes: a full heap refuses the write
    // whole (docs/protocols/core.md "When the heap runs out").
    {
        let mut ring = svsm.ocp.notify.lock();
        if let Some(ring) = ring.as_mut()
            && !ring.written.contains(&index)
        {
            ring.written.try_reserve(1).map_err(|_| CallError::OutOfMemory)?;
        }
    }
    match setting {
        Setting::LogLevel => {
            let level = sources::parse_level(data)
                .ok_or(CallError::InvalidParameter("not a log level (error, warn, info, debug)"))?;
            p.set_log_level(level);
            // Kept for the next boot when there is a sealed state. A failure is logged (a
            // failed header write also closes the state, which the manifest says); the
            // level still applies to this boot.
            if let Err(e) = svsm.keep_setting(sources::LOG_LEVEL_KEY, sources::level_name(level).as_bytes()) {
                crate::log!(p, Warn, "ocp: the log level could not be kept in the sealed state: {:?}", e);
            }
        }
    }
    // Into the room made above (`post_events` gives the vector back with its room). Only
    // if another vCPU's write of another setting took that room meanwhile is the event
    // lost, and then counted as dropped, as `post_events` counts what it cannot post.
    let mut ring = svsm.ocp.notify.lock();
    if let Some(ring) = ring.as_mut()
        && !ring.written.contains(&index)
    {
        if ring.written.len() < ring.written.capacity() {
            ring.written.push(index);
        } else {
            ring.dropped = ring.dropped.wrapping_add(1);
        }
    }
    Ok(len as u64)
}

/// A register-sized source's value now (zero-extended) and its size.
fn register_value<P: Platform + ?Sized>(svsm: &Svsm, p: &P, index: u32) -> CallResult<(u64, u64)> {
    let source = *svsm.ocp.get(index).ok_or(CallError::InvalidParameter("no source with this index"))?;
    let size = source.fixed_size().filter(|n| *n <= 8).ok_or(CallError::NotRegisterSized)?;
    let snapshot = sources::snapshot(svsm, p, source.kind);
    let bytes = snapshot.bytes();
    let mut value = [0u8; 8];
    // `size` is at most 8 (filtered above).
    for (to, from) in value.iter_mut().zip(bytes.iter().take(size as usize)) {
        *to = *from;
    }
    Ok((u64::from_le_bytes(value), u64::from(size)))
}

fn read_register<P: Platform + ?Sized>(svsm: &Svsm, p: &P, ctx: &CallContext) -> CallResult<(u64, u64)> {
    register_value(svsm, p, u32_reg(ctx.regs.rcx, "source index has bits above 31")?)
}

/// Several register-sized sources in one call (one after the other, not atomically): all
/// are read before any is written, and nothing is written if one of them cannot be read.
fn read_batch<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> CallResult<()> {
    let count = u32_reg(ctx.regs.r8, "count has bits above 31")? as usize;
    if count == 0 || count > BATCH_MAX {
        return Err(CallError::InvalidParameter("a batch reads 1 to 512 sources"));
    }
    let (indexes_gpa, values_gpa) = (Gpa(ctx.regs.rcx), Gpa(ctx.regs.rdx));
    if !indexes_gpa.is_aligned(4) || !values_gpa.is_aligned(8) {
        return Err(CallError::InvalidParameter("index array not 4-byte or value array not 8-byte aligned"));
    }
    let mut raw = crate::heap::zeroed(count * 4)?;
    guest_memory::read_bytes(p, ctx.view(&svsm.pages), indexes_gpa, &mut raw)?;
    guest_memory::check_writable(p, ctx.view(&svsm.pages), values_gpa, count * 8)?;
    let mut values = crate::heap::zeroed(count * 8)?;
    let indexes = raw.chunks_exact(4).filter_map(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_le_bytes);
    for (index, out) in indexes.zip(values.chunks_exact_mut(8)) {
        out.copy_from_slice(&register_value(svsm, p, index)?.0.to_le_bytes());
    }
    guest_memory::write_bytes(p, ctx.view(&svsm.pages), values_gpa, &values)
}

/// NOTIFY: start (RCX = a page of the guest's) or stop (RCX = 0) change events.
fn notify<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> CallResult<()> {
    top_only(ctx)?;
    if ctx.regs.rcx == 0 {
        // The flag changes under the ring's lock, so it always says whether a ring is
        // set, whatever order two vCPUs' NOTIFYs run in.
        let mut slot = svsm.ocp.notify.lock();
        *slot = None;
        svsm.ocp.notify_active.store(false, Ordering::Release);
        return Ok(());
    }
    let gpa = Gpa(ctx.regs.rcx);
    if !gpa.is_aligned(abi::PAGE_SIZE) {
        return Err(CallError::InvalidParameter("the ring must be a whole page"));
    }
    // The ring is written at the end of later calls: a page the guest owns outright, not
    // one the SVSM holds for something else (a calling area, a VMSA, the secrets page),
    // checked under the page's lock as it is cleared.
    let outright = guest_memory::GuestView::owned_outright(&svsm.pages, ctx.caller);
    guest_memory::check_writable(p, outright, gpa, abi::ocp::ring::LEN)?;
    guest_memory::write_bytes(p, outright, gpa, &[0u8; abi::ocp::ring::SLOTS_OFFSET])?;
    let mut slot = svsm.ocp.notify.lock();
    *slot = Some(sources::NotifyRing {
        gpa,
        caller: ctx.caller,
        head: 0,
        dropped: 0,
        log_seen: p.log_written(),
        written: Vec::new(),
        sealed_seen: svsm.sealed_generation(),
    });
    svsm.ocp.notify_active.store(true, Ordering::Release);
    Ok(())
}

/// At the end of every call the SVSM serves: announce what changed (the log grew, a
/// setting was written) on the guest's ring. A ring the guest made unusable (page given
/// back, invalidated) is dropped.
pub fn post_events<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P) {
    use abi::ocp::ring;
    // The common case, no ring: one atomic load, no lock.
    if !svsm.ocp.notify_active.load(Ordering::Acquire) {
        return;
    }
    let mut slot = svsm.ocp.notify.lock();
    let Some(mut r) = slot.take() else { return };
    let mut events = core::mem::take(&mut r.written);
    let written = p.log_written();
    if written != r.log_seen && events.try_reserve(1).is_ok() {
        r.log_seen = written;
        // The log is source 0 (`Sources::builtin`).
        events.insert(0, 0);
    }
    // The summary, not the sealed state: a commit in progress on another vCPU is
    // announced at the first call after it.
    if let Some(index) = svsm.ocp.sealed_root
        && let generation = svsm.sealed_generation()
        && generation != r.sealed_seen
        && events.try_reserve(1).is_ok()
    {
        r.sealed_seen = generation;
        events.push(index);
    }
    if events.is_empty() {
        // The vector goes back with its room: a WRITE on another vCPU may have made room
        // for its event in it and not pushed yet.
        r.written = events;
        *slot = Some(r);
        return;
    }
    // Still a page the guest owns outright: it may have made it a calling area or a
    // VMSA since, and the SVSM does not write events over those. Each access checks that
    // under the page's lock.
    let view = guest_memory::GuestView::owned_outright(&svsm.pages, r.caller);
    let mut tail = [0u8; 4];
    let ok = guest_memory::read_bytes(p, view, Gpa(r.gpa.0 + ring::TAIL as u64), &mut tail).is_ok()
        && events.iter().all(|index| {
            if r.head.wrapping_sub(u32::from_le_bytes(tail)) >= ring::SLOTS {
                r.dropped = r.dropped.wrapping_add(1);
                return true;
            }
            let slot = ring::SLOTS_OFFSET as u64 + u64::from(r.head % ring::SLOTS) * 4;
            r.head = r.head.wrapping_add(1);
            guest_memory::write_bytes(p, view, Gpa(r.gpa.0 + slot), &index.to_le_bytes()).is_ok()
        })
        && guest_memory::write_bytes(p, view, Gpa(r.gpa.0 + ring::DROPPED as u64), &r.dropped.to_le_bytes())
            .is_ok()
        // Head last: the guest sees an event only once its slot is written.
        && guest_memory::write_bytes(p, view, r.gpa, &r.head.to_le_bytes()).is_ok();
    if ok {
        events.clear();
        r.written = events;
        *slot = Some(r);
    } else {
        // Still under the ring's lock: a NOTIFY on another vCPU waits for it.
        svsm.ocp.notify_active.store(false, Ordering::Release);
        drop(slot);
        crate::log!(p, Warn, "ocp: the change-event ring at {:#x} is no longer usable; events stopped", r.gpa.0);
    }
}

#[cfg(test)]
mod tests {
    use super::log_offset;

    const GIB4: u64 = 1 << 32;

    #[test]
    fn a_32_bit_offset_names_the_nearest_stream_offset_at_or_below_the_end() {
        // Within the first 4 GiB, R9 is the offset itself, ahead of the end included.
        assert_eq!(log_offset(0, 0), 0);
        assert_eq!(log_offset(100, 5000), 100);
        assert_eq!(log_offset(5000, 5000), 5000);
        assert_eq!(log_offset(6000, 5000), 6000, "ahead of the end: nothing there yet");
        // Past 4 GiB, the low 32 bits of an offset that exists.
        let written = 3 * GIB4 + 5000;
        assert_eq!(log_offset(4000, written), 3 * GIB4 + 4000);
        assert_eq!(log_offset(5000, written), written, "the end");
        assert_eq!(log_offset(GIB4 - 10, written), 3 * GIB4 - 10, "just before the last boundary");
        assert_eq!(log_offset(6000, written), 2 * GIB4 + 6000, "past the end's low bits: one lap back");
    }
}
