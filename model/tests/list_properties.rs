//! Property tests of list processing (PVALIDATE, DEPOSIT/WITHDRAW) against an oracle
//! written from the spec's text, on random lists and call sequences.

use abi::core_protocol::{DepositEntry, PvalidateEntry};
use abi::protocol::{CallId, ProtocolId, core_call};
use abi::result::ResultCode;
use bulwark_model::world::{self, MIB, World, WorldConfig};
use guest::{CallError, Regs, Transport};
use proptest::prelude::*;
use std::collections::HashMap;

/// SVSM code runs with the bare-metal heap's limit (`bulwark_model::heap`).
#[global_allocator]
static HEAP: bulwark_model::heap::CountingHeap = bulwark_model::heap::CountingHeap;

const SMALL: u64 = world::LOW_VALIDATED_END; // 4 KiB RMP pages, unvalidated
const HUGE: u64 = 64 * MIB; // 2 MiB RMP pages
const LIST: u64 = 2 * MIB; // a validated scratch page

/// A random PVALIDATE entry over a small set of pages, with some invalid ones.
fn entry() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => (0u64..24, any::<bool>(), any::<bool>()).prop_map(|(i, v, cf)| PvalidateEntry::new(SMALL + i * 4096, false, v, cf).0),
        2 => (0u64..2, any::<bool>(), any::<bool>()).prop_map(|(i, v, cf)| PvalidateEntry::new(HUGE + i * 2 * MIB, true, v, cf).0),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(v, cf)| PvalidateEntry::new(SMALL + 2 * MIB, true, v, cf).0),
        1 => (any::<bool>()).prop_map(|v| PvalidateEntry::new(HUGE + 4096, false, v, false).0),
        1 => Just(PvalidateEntry::new(world::SVSM_BASE, false, true, false).0),
        1 => Just(PvalidateEntry::new(world::STARTUP_VMSA_GPA, false, false, true).0),
        1 => (0u64..24, 4u64..12).prop_map(|(i, bit)| PvalidateEntry::new(SMALL + i * 4096, false, true, false).0 | 1 << bit),
        1 => (0u64..24).prop_map(|i| PvalidateEntry::new(SMALL + i * 4096, false, true, false).0 | 2),
    ]
}

/// What the spec says the list does: final result, next index, validation of each page.
fn oracle(entries: &[u64], start: usize) -> (ResultCode, usize, HashMap<u64, bool>) {
    let mut valid: HashMap<u64, bool> = HashMap::new();
    for (i, raw) in entries.iter().enumerate().skip(start) {
        let e = PvalidateEntry(*raw);
        let huge = raw & 3 == 1;
        if raw & 0xFF0 != 0 || raw & 3 > 1 || (huge && !e.gpa().is_multiple_of(2 * MIB)) {
            return (ResultCode::ERR_INVALID_PARAMETER, i, valid);
        }
        let gpa = e.gpa();
        let svsm_owned = (world::SVSM_BASE..world::SVSM_BASE + 4 * MIB).contains(&gpa)
            || gpa == world::STARTUP_VMSA_GPA
            || gpa == world::STARTUP_CA_GPA;
        if svsm_owned {
            return (ResultCode::ERR_INVALID_ADDRESS, i, valid);
        }
        if huge != (gpa >= HUGE) {
            return (ResultCode(0x8000_1006), i, valid);
        }
        let pages: Vec<u64> = if huge { (0..512).map(|k| gpa + k * 4096).collect() } else { vec![gpa] };
        let now = valid.get(&gpa).copied().unwrap_or(false);
        if now == e.validate() {
            if e.ignore_cf() {
                continue;
            }
            return (ResultCode::CORE_PVALIDATE_NO_CHANGE, i, valid);
        }
        for p in pages {
            valid.insert(p, e.validate());
        }
    }
    (ResultCode::SUCCESS, entries.len(), valid)
}

fn world() -> World {
    World::new(WorldConfig { pages_per_call: 600, ram_bytes: 128 * MIB, ..WorldConfig::default() })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn pvalidate_lists_follow_the_spec(entries in prop::collection::vec(entry(), 1..40), start_frac in 0.0f64..1.0) {
        let start = ((entries.len() as f64) * start_frac) as usize % entries.len();
        let mut w = world();
        let mut c = w.client();
        c.transport.write(LIST, &(entries.len() as u16).to_le_bytes()).unwrap();
        c.transport.write(LIST + 2, &(start as u16).to_le_bytes()).unwrap();
        for (i, e) in entries.iter().enumerate() {
            c.transport.write(LIST + 8 + 8 * i as u64, &e.to_le_bytes()).unwrap();
        }
        let result = match c.pvalidate_list(LIST) {
            Ok(()) => ResultCode::SUCCESS,
            Err(CallError::Failed(r)) => r,
            Err(e) => panic!("call did not complete: {e:?}"),
        };
        let mut next = [0u8; 2];
        c.transport.read(LIST + 2, &mut next).unwrap();
        let next = u16::from_le_bytes(next) as usize;
        let (want, want_next, want_valid) = oracle(&entries, start);
        prop_assert_eq!(result, want);
        prop_assert_eq!(next, want_next);
        for (page, valid) in want_valid {
            prop_assert_eq!(c.transport.write(page, &[1]).is_ok(), valid, "page {:#x}", page);
        }
        // The SVSM keeps serving.
        prop_assert!(c.query_protocol(ProtocolId::CORE, 1).unwrap().is_some());
        prop_assert!(w.machine.violations().is_empty(), "{:?}", w.machine.violations());
    }

    #[test]
    fn deposited_memory_is_conserved(ops in prop::collection::vec((0u8..4, 1u64..12), 1..30)) {
        // Pages 0..64 of scratch memory at 2.5 MiB are the guest's to deposit.
        const POOL: u64 = 2 * MIB + MIB / 2;
        let mut w = world();
        let mut guest_owned: Vec<u64> = (0..64).map(|i| POOL + i * 4096).collect();
        let mut svsm_owned: Vec<u64> = Vec::new();
        let mut vcpus: Vec<u64> = Vec::new();
        for (op, n) in ops {
            let mut c = w.client();
            match op {
                0 => {
                    let take: Vec<u64> = guest_owned.drain(..(n as usize).min(guest_owned.len())).collect();
                    if take.is_empty() { continue; }
                    let entries: Vec<DepositEntry> = take.iter().map(|p| DepositEntry::new(*p, false)).collect();
                    c.deposit(&entries, LIST).unwrap();
                    svsm_owned.extend(take);
                }
                1 => {
                    let mut out = [0u64; 511];
                    let got = c.withdraw(LIST + 0x1000 - 8 * (n + 1), &mut out).unwrap();
                    prop_assert!(got as u64 <= n);
                    for p in &out[..got] {
                        let at = svsm_owned.iter().position(|q| q == p);
                        prop_assert!(at.is_some(), "withdrew {:#x}, never deposited", p);
                        svsm_owned.remove(at.unwrap());
                        guest_owned.push(*p);
                    }
                }
                2 => {
                    let vmsa = 3 * MIB + vcpus.len() as u64 * 0x2000;
                    c.transport.write(vmsa, &[0u8; 4096]).unwrap();
                    c.transport.write(vmsa + 0xCA, &[1]).unwrap();
                    c.transport.write(vmsa + 0x3B0, &1u64.to_le_bytes()).unwrap();
                    let id = CallId::new(ProtocolId::CORE, core_call::CREATE_VCPU);
                    let r = c.issue(Regs { rax: id.to_rax(), rcx: vmsa, rdx: vmsa + 0x1000, r8: vcpus.len() as u64 + 1, r9: 0 }).unwrap();
                    let r = ResultCode::from_rax(r.rax);
                    if r.is_success() { vcpus.push(vmsa); } else { prop_assert!(r.memory_needed().is_some() || r == ResultCode::ERR_INVALID_REQUEST, "{}", r); }
                }
                _ => {
                    if let Some(vmsa) = vcpus.pop() { c.delete_vcpu(vmsa).unwrap(); }
                }
            }
                let stats = w.svsm.pool_stats();
            prop_assert_eq!(stats.deposited_total, svsm_owned.len() as u64);
            let mut flag = [0u8];
            w.client().transport.read(world::STARTUP_CA_GPA + 1, &mut flag).unwrap();
            prop_assert_eq!(flag[0] != 0, stats.deposited_free > 0);
            for p in &svsm_owned {
                prop_assert!(w.client().transport.write(*p, &[1]).is_err(), "SVSM page {:#x} writable by the guest", p);
            }
            for p in &guest_owned {
                prop_assert!(w.client().transport.write(*p, &[1]).is_ok(), "guest page {:#x} not writable", p);
            }
        }
        prop_assert!(w.machine.violations().is_empty());
    }
}
