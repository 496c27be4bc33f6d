//! Section 6.2: SVSM_CORE_PVALIDATE.

use crate::Env;
use crate::check::{CaseResult, client, ensure, expect_core, guest_can_write, host, list_next, raw, write_list};
use abi::core_protocol::PvalidateEntry;
use abi::protocol::core_call::PVALIDATE;
use abi::result::ResultCode;

const MISMATCH: ResultCode = ResultCode(0x8000_1006);

fn e4k(gpa: u64, validate: bool) -> u64 {
    PvalidateEntry::new(gpa, false, validate, false).0
}
fn e2m(gpa: u64, validate: bool) -> u64 {
    PvalidateEntry::new(gpa, true, validate, false).0
}

/// Validate `entries` with one call from a list at the first scratch page.
fn pvalidate(env: &mut dyn Env, entries: &[u64], expected: ResultCode) -> Result<u16, crate::CaseError> {
    let list = env.facts().scratch;
    write_list(env, list, entries.len() as u16, 0, entries)?;
    expect_core(env, PVALIDATE, [list, 0, 0, 0], expected)?;
    list_next(env, list)
}

pub fn validate_4k(env: &mut dyn Env) -> CaseResult {
    let base = env.facts().free_small;
    ensure!(!guest_can_write(env, base), "page usable before validation");
    let entries: [u64; 8] = core::array::from_fn(|i| e4k(base + 0x1000 * i as u64, true));
    let next = pvalidate(env, &entries, ResultCode::SUCCESS)?;
    ensure!(next == 8, "next = {next}, expected 8");
    for i in 0..8 {
        let gpa = base + 0x1000 * i;
        let mut b = [0xFFu8; 16];
        env.read(gpa + 0xFF0, &mut b)?;
        ensure!(b == [0; 16], "validated page {gpa:#x} is not zeroed");
        ensure!(guest_can_write(env, gpa), "validated page {gpa:#x} not writable by the guest");
    }
    Ok(())
}

pub fn invalidate(env: &mut dyn Env) -> CaseResult {
    let gpa = env.facts().free_small + 0x5000;
    pvalidate(env, &[e4k(gpa, true)], ResultCode::SUCCESS)?;
    // The guest uses the page first, so its CPU holds a translation: the SVSM must flush
    // it (COCONUT `core_pvalidate` flushes after invalidations) or the write below works.
    ensure!(guest_can_write(env, gpa), "validated page not usable");
    pvalidate(env, &[e4k(gpa, false)], ResultCode::SUCCESS)?;
    ensure!(!guest_can_write(env, gpa), "invalidated page still usable");
    pvalidate(env, &[e4k(gpa, true)], ResultCode::SUCCESS)?;
    ensure!(guest_can_write(env, gpa), "re-validated page not usable");
    Ok(())
}

pub fn revokes_first(env: &mut dyn Env) -> CaseResult {
    let gpa = env.facts().free_small + 0x6000;
    pvalidate(env, &[e4k(gpa, true)], ResultCode::SUCCESS)?;
    let h = host(env)?;
    ensure!(h.vmpl_can_read(gpa, 1), "VMPL1 has no access after validation");
    ensure!(!h.vmpl_can_read(gpa, 2), "VMPL2 was granted access by a VMPL1 request");
    pvalidate(env, &[e4k(gpa, false)], ResultCode::SUCCESS)?;
    // No permission may outlive the validation: RMPADJUST revoked it before PVALIDATE.
    let h = host(env)?;
    for vmpl in 1..=3 {
        let perms = h.rmp_permissions(gpa, vmpl);
        ensure!(perms == 0, "VMPL{vmpl} keeps permissions {perms:#x} on an invalidated page");
    }
    Ok(())
}

pub fn zeroes(env: &mut dyn Env) -> CaseResult {
    let gpa = env.facts().free_small + 0x7000;
    host(env)?.write_memory(gpa, &[0xCC; 64]);
    pvalidate(env, &[e4k(gpa, true)], ResultCode::SUCCESS)?;
    let mut b = [0xFFu8; 64];
    env.read(gpa, &mut b)?;
    ensure!(b == [0; 64], "host data survived validation: {:02x?}", &b[..8]);
    Ok(())
}

pub fn host_reassigned(env: &mut dyn Env) -> CaseResult {
    let gpa = env.facts().free_small + 0xD000;
    pvalidate(env, &[e4k(gpa, true)], ResultCode::SUCCESS)?;
    env.write(gpa, b"guest data")?;
    let h = host(env)?;
    h.reassign_page(gpa);
    h.write_memory(gpa, b"host data!");
    // Re-validating must not quietly hand the guest another page where its data was.
    let ignore_cf = PvalidateEntry::new(gpa, false, true, true).0;
    pvalidate(env, &[ignore_cf], ResultCode::ERR_INVALID_ADDRESS)?;
    ensure!(!guest_can_write(env, gpa), "the reassigned page became usable");
    // Validating it again is now an explicit acceptance of a fresh, zeroed page.
    pvalidate(env, &[e4k(gpa, true)], ResultCode::SUCCESS)?;
    let mut b = [0xFFu8; 10];
    env.read(gpa, &mut b)?;
    ensure!(b == [0; 10], "accepted page holds {b:02x?}");
    Ok(())
}

pub fn validate_2m(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    ensure!(f.free_huge_count >= 1, "environment has no 2 MiB RMP pages");
    let next = pvalidate(env, &[e2m(f.free_huge, true)], ResultCode::SUCCESS)?;
    ensure!(next == 1, "next = {next}");
    ensure!(guest_can_write(env, f.free_huge), "first 4 KiB of the 2 MiB page not usable");
    ensure!(guest_can_write(env, f.free_huge + 0x1F_F000), "last 4 KiB of the 2 MiB page not usable");
    pvalidate(env, &[e2m(f.free_huge, false)], ResultCode::SUCCESS)?;
    ensure!(!guest_can_write(env, f.free_huge + 0x10_0000), "invalidated 2 MiB page still usable");
    Ok(())
}

/// Issue PVALIDATE of the list at the first scratch page until it is not INCOMPLETE.
fn pvalidate_to_end(env: &mut dyn Env, entries: &[u64], expected: ResultCode) -> Result<u16, crate::CaseError> {
    let list = env.facts().scratch;
    write_list(env, list, entries.len() as u16, 0, entries)?;
    loop {
        let (r, _) = raw(env, 0, PVALIDATE, [list, 0, 0, 0])?;
        if r != ResultCode::ERR_INCOMPLETE {
            ensure!(r == expected, "expected {expected}, got {r}");
            return list_next(env, list);
        }
    }
}

pub fn size_mismatch(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    let next =
        pvalidate_to_end(env, &[e4k(f.free_small + 0x8000, true), e2m(f.free_small + 0x20_0000, true)], MISMATCH)?;
    ensure!(next == 1, "next = {next}, expected the 2 MiB entry (1)");
    let next = pvalidate(env, &[e4k(f.free_huge + 0x1000, true)], MISMATCH)?;
    ensure!(next == 0, "next = {next}");
    Ok(())
}

pub fn linux_fallback(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    let big = PvalidateEntry::new(f.free_small + 0x20_0000, true, true, false);
    client(env).pvalidate(&[big], f.scratch)?;
    ensure!(guest_can_write(env, f.free_small + 0x3F_F000), "last page of the split 2 MiB range not usable");
    Ok(())
}

pub fn no_change(env: &mut dyn Env) -> CaseResult {
    let gpa = env.facts().free_small + 0x9000;
    pvalidate(env, &[e4k(gpa, true)], ResultCode::SUCCESS)?;
    let next = pvalidate(env, &[e4k(gpa + 0x1000, true), e4k(gpa, true)], ResultCode::CORE_PVALIDATE_NO_CHANGE)?;
    ensure!(next == 1, "next = {next}, expected the repeated entry (1)");
    let ignore = PvalidateEntry::new(gpa, false, true, true).0;
    pvalidate(env, &[ignore], ResultCode::SUCCESS)?;
    pvalidate(env, &[e4k(gpa + 0x2000, false)], ResultCode::CORE_PVALIDATE_NO_CHANGE)?;
    Ok(())
}

pub fn list_bounds(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    let page = f.scratch + 0x1000;
    let entry = e4k(f.free_small, true);
    for (gpa, count, next) in [
        (page, 0u16, 0u16),   // no entries
        (page, 512, 0),       // 8 + 512 * 8 > 4096
        (page + 0xFF0, 2, 0), // crosses into the next page
        (page, 2, 2),         // next == count
        (page, 2, 7),         // next > count
    ] {
        write_list(env, gpa, count, next, &[entry, entry])?;
        expect_core(env, PVALIDATE, [gpa, 0, 0, 0], ResultCode::ERR_INVALID_PARAMETER)?;
    }
    write_list(env, page, 1, 0, &[entry])?;
    expect_core(env, PVALIDATE, [page + 4, 0, 0, 0], ResultCode::ERR_INVALID_PARAMETER)?;
    ensure!(!guest_can_write(env, f.free_small), "a refused list validated a page");
    // The largest list that fits: 511 entries in a page-aligned list.
    let entries: alloc::vec::Vec<u64> = (0..511).map(|i| e4k(f.free_small + 0x1000 * i, true)).collect();
    write_list(env, page, 511, 0, &entries)?;
    let r = client(env).pvalidate_list(page);
    ensure!(r.is_ok(), "511-entry list refused: {r:?}");
    Ok(())
}

pub fn entry_format(env: &mut dyn Env) -> CaseResult {
    let base = env.facts().free_small;
    for bad in [e4k(base, true) | 0x10, e4k(base, true) | 0x800, e4k(base, true) | 0b10, e4k(base, true) | 0b11] {
        let next = pvalidate(env, &[e4k(base + 0x1000, true) | 8, bad], ResultCode::ERR_INVALID_PARAMETER)?;
        ensure!(next == 1, "next = {next} for entry {bad:#x}");
    }
    let huge = env.facts().free_huge;
    pvalidate(env, &[e2m(huge + 0x1000, true)], ResultCode::ERR_INVALID_PARAMETER)?;
    Ok(())
}

pub fn svsm_owned(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    let d = crate::check::discovery(env)?;
    let ca = env.calling_area() & !0xFFF;
    for (gpa, validate) in [
        (d.svsm_base, false),
        (d.svsm_base + d.svsm_size - 0x1000, true),
        (f.startup_vmsa, false),
        (ca, false),
        (f.secrets_page, false),
        (f.not_ram, true),
    ] {
        pvalidate(env, &[e4k(gpa, validate)], ResultCode::ERR_INVALID_ADDRESS)?;
    }
    // A 2 MiB entry that covers the SVSM's first page.
    pvalidate(env, &[e2m(d.svsm_base & !0x1F_FFFF, false)], ResultCode::ERR_INVALID_ADDRESS)?;
    Ok(())
}

pub fn list_page(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    let list = f.scratch;
    let next = pvalidate(env, &[e4k(f.free_small, true), e4k(list, false)], ResultCode::ERR_INVALID_ADDRESS)?;
    ensure!(next == 1, "next = {next}, expected the entry naming the list page (1)");
    ensure!(guest_can_write(env, list), "the list page was invalidated under the call");
    Ok(())
}

pub fn list_location(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    let d = crate::check::discovery(env)?;
    // A list in the secrets page could be read, but its index could not be written back.
    for gpa in [d.svsm_base, f.free_small + 0x10_0000, f.startup_vmsa, f.not_ram, f.secrets_page] {
        expect_core(env, PVALIDATE, [gpa, 0, 0, 0], ResultCode::ERR_INVALID_ADDRESS)?;
    }
    Ok(())
}

pub fn partial(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    let ok = [e4k(f.free_small + 0xA000, true), e4k(f.free_small + 0xB000, true)];
    let next = pvalidate(
        env,
        &[ok[0], ok[1], e4k(f.startup_vmsa, true), e4k(f.free_small + 0xC000, true)],
        ResultCode::ERR_INVALID_ADDRESS,
    )?;
    ensure!(next == 2, "next = {next}, expected 2");
    ensure!(guest_can_write(env, f.free_small + 0xB000), "entry before the failure not done");
    ensure!(!guest_can_write(env, f.free_small + 0xC000), "entry after the failure was done");
    Ok(())
}

pub fn incomplete(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    if f.pages_per_call == 0 || f.pages_per_call >= 500 {
        return Err(crate::CaseError::Skip("needs a known per-call budget below 500 pages"));
    }
    let entries: alloc::vec::Vec<u64> = (0..500).map(|i| e4k(f.free_small + 0x1000 * i, true)).collect();
    let list = f.scratch;
    write_list(env, list, 500, 0, &entries)?;
    let mut calls = 0;
    loop {
        let (r, regs) = raw(env, 0, PVALIDATE, [list, 0, 0, 0])?;
        calls += 1;
        ensure!(regs.rcx == list, "RCX changed to {:#x}", regs.rcx);
        let next = list_next(env, list)?;
        if r == ResultCode::SUCCESS {
            ensure!(next == 500, "next = {next} at the end");
            break;
        }
        ensure!(r == ResultCode::ERR_INCOMPLETE, "result {r}");
        ensure!(next > 0 && next < 500, "INCOMPLETE with next = {next}");
        ensure!(calls < 500, "no progress");
    }
    ensure!(calls > 1, "the list finished in one call; INCOMPLETE not exercised");
    ensure!(guest_can_write(env, f.free_small + 0x1000 * 499), "last page not validated");
    Ok(())
}

pub fn resume_index(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    let list = f.scratch;
    let entries: [u64; 4] = core::array::from_fn(|i| e4k(f.free_small + 0x1000 * i as u64, true));
    write_list(env, list, 4, 2, &entries)?;
    expect_core(env, PVALIDATE, [list, 0, 0, 0], ResultCode::SUCCESS)?;
    ensure!(!guest_can_write(env, f.free_small), "entry 0 processed although next was 2");
    ensure!(guest_can_write(env, f.free_small + 0x3000), "entry 3 not processed");
    Ok(())
}

pub fn race(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    let list = f.scratch;
    let entries: [u64; 3] = core::array::from_fn(|i| e4k(f.free_small + 0x1000 * i as u64, true));
    write_list(env, list, 3, 0, &entries)?;
    // After the SVSM read the header, another vCPU shrinks the list to one entry. The
    // SVSM works from its copy: all three entries are processed and next = 3.
    let mut evil = [0u8; 8];
    evil[..2].copy_from_slice(&1u16.to_le_bytes());
    host(env)?.race(list, list, &evil);
    expect_core(env, PVALIDATE, [list, 0, 0, 0], ResultCode::SUCCESS)?;
    ensure!(guest_can_write(env, f.free_small + 0x2000), "third entry of the copied list not processed");
    let next = list_next(env, list)?;
    ensure!(next == 3, "next = {next}: the SVSM re-read the header");
    Ok(())
}
