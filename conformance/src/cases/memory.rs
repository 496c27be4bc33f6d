//! Sections 6.5 and 6.6: SVSM_CORE_DEPOSIT_MEM and SVSM_CORE_WITHDRAW_MEM.

use crate::Env;
use crate::check::{CaseError, CaseResult, client, ensure, expect_core, guest_can_write, list_next, write_list};
use abi::core_protocol::{DepositEntry, PvalidateEntry};
use abi::protocol::core_call::{DEPOSIT_MEM, WITHDRAW_MEM};
use abi::result::ResultCode;
use alloc::vec::Vec;

/// Validated pages to deposit: the upper half of scratch memory.
fn deposit_pages(env: &mut dyn Env, n: u64) -> Vec<u64> {
    let base = env.facts().scratch + 0x80_000;
    (0..n).map(|i| base + i * 0x1000).collect()
}

fn d4k(gpa: u64) -> u64 {
    DepositEntry::new(gpa, false).0
}

fn mem_available(env: &mut dyn Env) -> Result<u8, CaseError> {
    let mut b = [0u8];
    let ca = env.calling_area();
    env.read(ca + 1, &mut b)?;
    Ok(b[0])
}

fn do_deposit(env: &mut dyn Env, entries: &[u64], expected: ResultCode) -> Result<u16, CaseError> {
    let list = env.facts().scratch + 0x1000;
    write_list(env, list, entries.len() as u16, 0, entries)?;
    expect_core(env, DEPOSIT_MEM, [list, 0, 0, 0], expected)?;
    list_next(env, list)
}

fn do_withdraw(env: &mut dyn Env, list: u64) -> Result<Vec<u64>, CaseError> {
    let mut out = [0u64; 511];
    let n = client(env).withdraw(list, &mut out)?;
    Ok(out[..n].to_vec())
}

pub fn deposit(env: &mut dyn Env) -> CaseResult {
    ensure!(mem_available(env)? == 0, "SVSM_MEM_AVAILABLE set before any deposit");
    let pages = deposit_pages(env, 4);
    // The guest touches each page first, so its CPU holds translations the SVSM must
    // flush once it took the pages (or the writes below still land).
    for p in &pages {
        ensure!(guest_can_write(env, *p), "page {p:#x} is not the guest's before the deposit");
    }
    let next = do_deposit(env, &pages.iter().map(|p| d4k(*p)).collect::<Vec<_>>(), ResultCode::SUCCESS)?;
    ensure!(next == 4, "next = {next}");
    for p in &pages {
        ensure!(!guest_can_write(env, *p), "deposited page {p:#x} is still the guest's");
    }
    ensure!(mem_available(env)? == 1, "SVSM_MEM_AVAILABLE not set with free deposited pages");
    Ok(())
}

pub fn deposit_conflicts(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    let d = crate::check::discovery(env)?;
    let page = deposit_pages(env, 1)[0];
    do_deposit(env, &[d4k(page)], ResultCode::SUCCESS)?;
    let ca = env.calling_area() & !0xFFF;
    let list = f.scratch + 0x1000; // where `do_deposit` writes its list
    for gpa in [d.svsm_base, f.startup_vmsa, ca, page, f.free_small, f.not_ram, list] {
        do_deposit(env, &[d4k(gpa)], ResultCode::ERR_INVALID_ADDRESS)?;
    }
    Ok(())
}

pub fn deposit_format(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    let list = f.scratch + 0x1000;
    let e = d4k(deposit_pages(env, 1)[0]);
    for (gpa, count, next) in [(list, 0u16, 0u16), (list, 512, 0), (list + 0xFF8, 1, 0), (list, 1, 1)] {
        write_list(env, gpa, count, next, &[e])?;
        expect_core(env, DEPOSIT_MEM, [gpa, 0, 0, 0], ResultCode::ERR_INVALID_PARAMETER)?;
    }
    expect_core(env, DEPOSIT_MEM, [list + 2, 0, 0, 0], ResultCode::ERR_INVALID_PARAMETER)?;
    for bad in [e | 0b100, e | 0x800, e | 0b10, e | 0b11] {
        do_deposit(env, &[bad], ResultCode::ERR_INVALID_PARAMETER)?;
    }
    let huge_misaligned = DepositEntry::new(f.free_huge + 0x1000, true).0;
    do_deposit(env, &[huge_misaligned], ResultCode::ERR_INVALID_PARAMETER)?;
    ensure!(guest_can_write(env, e & !0xFFF), "a refused deposit took the page");
    Ok(())
}

pub fn deposit_partial(env: &mut dyn Env) -> CaseResult {
    let pages = deposit_pages(env, 2);
    let vmsa = env.facts().startup_vmsa;
    let next = do_deposit(env, &[d4k(pages[0]), d4k(vmsa), d4k(pages[1])], ResultCode::ERR_INVALID_ADDRESS)?;
    ensure!(next == 1, "next = {next}");
    ensure!(!guest_can_write(env, pages[0]), "first entry not deposited");
    ensure!(guest_can_write(env, pages[1]), "entry after the failure deposited");
    let list = env.facts().scratch + 0x2000;
    let back = do_withdraw(env, list)?;
    ensure!(back == [pages[0]], "withdrew {back:x?}");
    Ok(())
}

pub fn deposit_2m(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    // 2 MiB of 4 KiB RMP pages, validated first.
    let region = f.free_small + 0x20_0000;
    let entries: Vec<PvalidateEntry> =
        (0..512).map(|i| PvalidateEntry::new(region + i * 0x1000, false, true, false)).collect();
    client(env).pvalidate(&entries, f.scratch)?;
    do_deposit(env, &[DepositEntry::new(region, true).0], ResultCode::SUCCESS)?;
    ensure!(!guest_can_write(env, region + 0x1F_F000), "deposited 2 MiB range still the guest's");
    // A page validated as one 2 MiB RMP page cannot be handed back 4 KiB at a time.
    client(env).pvalidate(&[PvalidateEntry::new(f.free_huge, true, true, false)], f.scratch)?;
    let next = do_deposit(env, &[DepositEntry::new(f.free_huge, true).0], ResultCode(0x8000_1006))?;
    ensure!(next == 0, "next = {next}");
    ensure!(guest_can_write(env, f.free_huge + 0x1000), "refused 2 MiB deposit took pages");
    Ok(())
}

pub fn withdraw(env: &mut dyn Env) -> CaseResult {
    let pages = deposit_pages(env, 5);
    for p in &pages {
        env.write(*p, &[0xEE; 32])?;
    }
    do_deposit(env, &pages.iter().map(|p| d4k(*p)).collect::<Vec<_>>(), ResultCode::SUCCESS)?;
    let list = env.facts().scratch + 0x2000;
    let mut back = do_withdraw(env, list)?;
    back.sort_unstable();
    ensure!(back == pages, "withdrew {back:x?}, deposited {pages:x?}");
    for p in &pages {
        let mut b = [0xFFu8; 32];
        env.read(*p, &mut b)?;
        ensure!(b == [0; 32], "withdrawn page {p:#x} not zeroed");
        ensure!(guest_can_write(env, *p), "withdrawn page {p:#x} not the guest's");
    }
    ensure!(mem_available(env)? == 0, "SVSM_MEM_AVAILABLE still set");
    Ok(())
}

pub fn withdraw_empty(env: &mut dyn Env) -> CaseResult {
    let list = env.facts().scratch + 0x2000;
    env.write(list, &[0xFF, 0xFF])?;
    let back = do_withdraw(env, list)?;
    ensure!(back.is_empty(), "withdrew {back:x?} with nothing deposited");
    Ok(())
}

pub fn withdraw_room(env: &mut dyn Env) -> CaseResult {
    let f = env.facts();
    let pages = deposit_pages(env, 3);
    do_deposit(env, &pages.iter().map(|p| d4k(*p)).collect::<Vec<_>>(), ResultCode::SUCCESS)?;
    let list = f.scratch + 0x2000;
    expect_core(env, WITHDRAW_MEM, [list + 0xFF8, 0, 0, 0], ResultCode::ERR_INVALID_PARAMETER)?;
    expect_core(env, WITHDRAW_MEM, [list + 4, 0, 0, 0], ResultCode::ERR_INVALID_PARAMETER)?;
    expect_core(env, WITHDRAW_MEM, [f.startup_vmsa, 0, 0, 0], ResultCode::ERR_INVALID_ADDRESS)?;
    let one = do_withdraw(env, list + 0xFF0)?;
    ensure!(one.len() == 1, "withdrew {} pages into a list with room for 1", one.len());
    ensure!(mem_available(env)? == 1, "SVSM_MEM_AVAILABLE cleared while pages remain");
    let rest = do_withdraw(env, list)?;
    ensure!(rest.len() == 2, "withdrew {} of the remaining 2", rest.len());
    ensure!(mem_available(env)? == 0, "SVSM_MEM_AVAILABLE still set");
    Ok(())
}

pub fn withdraw_in_use(env: &mut dyn Env) -> CaseResult {
    // Create vCPUs until one needs deposited memory, deposit a little more than asked,
    // then the pages backing that vCPU must stay with the SVSM until it is deleted.
    let mut vcpus = Vec::new();
    for slot in 0..6u64 {
        let base = env.facts().scratch + 0x10_000 + slot * 0x2000;
        env.write_vmsa(base, slot as u32 + 1)?;
        let args = [base, base + 0x1000, slot + 1, 0];
        let (r, _) = crate::check::raw(env, 0, abi::protocol::core_call::CREATE_VCPU, args)?;
        if r.is_success() {
            vcpus.push(base);
            continue;
        }
        let needed = r.memory_needed().ok_or(CaseError::Fail(alloc::format!("vCPU {slot}: {r}")))?;
        let pages = deposit_pages(env, u64::from(needed) + 2);
        do_deposit(env, &pages.iter().map(|p| d4k(*p)).collect::<Vec<_>>(), ResultCode::SUCCESS)?;
        client(env).create_vcpu(base, base + 0x1000, slot as u32 + 1)?;
        vcpus.push(base);
        let list = env.facts().scratch + 0x2000;
        let back = do_withdraw(env, list)?;
        ensure!(back.len() == 2, "withdrew {} pages; only the 2 spare ones are free", back.len());
        for v in vcpus {
            client(env).delete_vcpu(v)?;
        }
        let rest = do_withdraw(env, list)?;
        ensure!(
            back.len() + rest.len() == pages.len(),
            "{} of {} deposited pages came back",
            back.len() + rest.len(),
            pages.len()
        );
        return Ok(());
    }
    Err(CaseError::Skip("the SVSM never needed deposited memory for vCPUs"))
}
