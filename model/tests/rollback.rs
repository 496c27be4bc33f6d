//! Multi-step changes undo themselves (issue 13, "roll back with Drop guards"): when the
//! host makes one step fail, every VMPL gets back exactly what it had, and when even the
//! undo fails the SVSM stops on purpose instead of serving on records that no longer
//! match the RMP.

use abi::core_protocol::{DepositEntry, PvalidateEntry};
use abi::hw::rc::FAIL_INPUT;
use abi::hw::rmpadjust::{PERM_ALL, PERM_READ};
use abi::protocol::{CallId, ProtocolId, core_call};
use abi::result::ResultCode;
use bulwark_model::machine::InjectedFailure;
use bulwark_model::world::{self, MIB, World, WorldConfig};
use guest::{Regs, Transport};
use kernel::vcpu::VcpuIndex;

/// SVSM code runs with the bare-metal heap's limit (`bulwark_model::heap`).
#[global_allocator]
static HEAP: bulwark_model::heap::CountingHeap = bulwark_model::heap::CountingHeap;

const LIST: u64 = 2 * MIB;
const PAGE: u64 = 2 * MIB + 0x40_000;

fn world() -> World {
    World::new(WorldConfig { vtpm: false, ..WorldConfig::default() })
}

fn call(w: &mut World, call: u32, entry: u64) -> ResultCode {
    let mut list = vec![1u8, 0, 0, 0, 0, 0, 0, 0];
    list.extend_from_slice(&entry.to_le_bytes());
    w.vcpu(VcpuIndex::STARTUP).write(LIST, &list).expect("list");
    let id = CallId::new(ProtocolId::CORE, call);
    let regs = Regs { rax: id.to_rax(), rcx: LIST, ..Regs::default() };
    ResultCode::from_rax(w.client().issue(regs).expect("call completes").rax)
}

fn perms(w: &World, gpa: u64) -> [u8; 4] {
    w.machine.rmp.entry(gpa >> 12).expect("RAM").perms
}

fn fail(w: &mut World, gpa: u64, rmpadjust_vmpl: Option<u8>) {
    w.machine.failures.push(InjectedFailure { pfn: gpa >> 12, rmpadjust_vmpl, skip: 0, rc: FAIL_INPUT });
}

/// VMPL1 shared the page with VMPL2 (read only); the deposit's third revocation fails.
#[test]
fn a_deposit_that_fails_midway_gives_every_vmpl_back_what_it_had() {
    let mut w = world();
    w.machine.rmp.entry_mut(PAGE >> 12).expect("RAM").perms[2] = PERM_READ;
    let before = perms(&w, PAGE);
    fail(&mut w, PAGE, Some(3));
    let r = call(&mut w, core_call::DEPOSIT_MEM, DepositEntry::new(PAGE, false).0);
    assert_eq!(r.0, 0x8000_1000 + FAIL_INPUT);
    assert_eq!(perms(&w, PAGE), before, "VMPL1 and VMPL2 lost what they had");
    assert!(!w.svsm.pages().is_deposited(kernel::addr::PageAddr::from_pfn(PAGE >> 12)));
    assert_eq!(w.svsm.pool_stats().deposited_total, 0);
}

/// A 2 MiB deposit whose third page cannot be taken: the two pages taken before it get
/// back exactly what every VMPL had (VMPL1 had shared them read-only with VMPL2 and
/// VMPL3), not full access for the caller and nothing below it (the old undo's guess,
/// which took VMPL2's and VMPL3's access away for good).
#[test]
fn a_2_mib_deposit_that_fails_part_way_gives_each_page_back_its_own_permissions() {
    let mut w = world();
    let (list, region) = (0x1F_F000, 2 * MIB);
    let pages: Vec<u64> = (0..3).map(|i| region + i * 0x1000).collect();
    for (i, gpa) in pages.iter().enumerate() {
        let entry = w.machine.rmp.entry_mut(gpa >> 12).expect("RAM");
        entry.perms[2] = PERM_READ;
        entry.perms[3] = if i == 0 { PERM_READ } else { 0 };
    }
    let before: Vec<[u8; 4]> = pages.iter().map(|gpa| perms(&w, *gpa)).collect();
    fail(&mut w, pages[2], Some(3));
    let mut bytes = vec![1u8, 0, 0, 0, 0, 0, 0, 0];
    bytes.extend_from_slice(&DepositEntry::new(region, true).0.to_le_bytes());
    w.vcpu(VcpuIndex::STARTUP).write(list, &bytes).expect("list");
    let id = CallId::new(ProtocolId::CORE, core_call::DEPOSIT_MEM);
    let regs = Regs { rax: id.to_rax(), rcx: list, ..Regs::default() };
    let r = ResultCode::from_rax(w.client().issue(regs).expect("call completes").rax);
    assert_eq!(r.0, 0x8000_1000 + FAIL_INPUT);
    let after: Vec<[u8; 4]> = pages.iter().map(|gpa| perms(&w, *gpa)).collect();
    assert_eq!(after, before, "every page as it was, each its own way");
    assert!(!w.svsm.pages().is_deposited(kernel::addr::PageAddr::from_pfn(region >> 12)));
    assert_eq!(w.svsm.pool_stats().deposited_total, 0);
}

/// PVALIDATE fails after the revocations: the page stays valid and keeps its permissions.
#[test]
fn an_invalidation_the_hardware_refuses_keeps_the_page_and_its_permissions() {
    let mut w = world();
    w.machine.rmp.entry_mut(PAGE >> 12).expect("RAM").perms[2] = PERM_READ;
    let before = perms(&w, PAGE);
    fail(&mut w, PAGE, None);
    let r = call(&mut w, core_call::PVALIDATE, PvalidateEntry::new(PAGE, false, false, false).0);
    assert_eq!(r.0, 0x8000_1000 + FAIL_INPUT);
    assert_eq!(perms(&w, PAGE), before);
    assert!(w.vcpu(VcpuIndex::STARTUP).write(PAGE, &[1]).is_ok(), "the page is still the guest's");
}

/// The grant after PVALIDATE fails: the page is rescinded again, with no grant left.
#[test]
fn a_validation_whose_grant_fails_leaves_the_page_invalid() {
    let mut w = world();
    let page = world::LOW_VALIDATED_END + 0x7000;
    fail(&mut w, page, Some(1));
    let r = call(&mut w, core_call::PVALIDATE, PvalidateEntry::new(page, false, true, false).0);
    assert_eq!(r.0, 0x8000_1000 + FAIL_INPUT);
    let e = *w.machine.rmp.entry(page >> 12).expect("RAM");
    assert!(!e.validated, "validation rescinded");
    assert_eq!(e.perms[1..], [0, 0, 0]);
    assert!(!w.svsm.pages().is_validated(kernel::addr::PageAddr::from_pfn(page >> 12)));
}

/// Making the page a VMSA fails after the checks: the page comes back as it was.
#[test]
fn a_vcpu_creation_that_fails_at_the_vmsa_flag_gives_the_page_back() {
    let mut w = world();
    let (vmsa, ca) = (2 * MIB + 0x10_000, 2 * MIB + 0x11_000);
    let mut v = abi::vmsa::Vmsa::zeroed();
    v.vmpl = 1;
    v.sev_features = abi::hw::sev_features::SNP_ACTIVE;
    w.vcpu(VcpuIndex::STARTUP).write(vmsa, zerocopy::IntoBytes::as_bytes(&v)).expect("VMSA page");
    let before = perms(&w, vmsa);
    // The VMPL1 revocation passes; the second RMPADJUST at VMPL1 (the VMSA flag, after
    // the checks) fails.
    w.machine.failures.push(InjectedFailure { pfn: vmsa >> 12, rmpadjust_vmpl: Some(1), skip: 1, rc: FAIL_INPUT });
    let id = CallId::new(ProtocolId::CORE, core_call::CREATE_VCPU);
    let regs = Regs { rax: id.to_rax(), rcx: vmsa, rdx: ca, r8: 1, r9: 0 };
    let r = ResultCode::from_rax(w.client().issue(regs).expect("call completes").rax);
    assert_eq!(r.0, 0x8000_1000 + FAIL_INPUT);
    assert_eq!(perms(&w, vmsa), before);
    assert!(!w.machine.rmp.entry(vmsa >> 12).expect("RAM").vmsa);
    assert!(w.vcpu(VcpuIndex::STARTUP).write(vmsa, &[1]).is_ok(), "the page is the guest's again");
    assert_eq!(perms(&w, ca)[1], PERM_ALL);
}

/// The undo itself fails: the SVSM stops (on purpose) rather than serve on.
#[test]
fn a_failed_undo_stops_the_svsm() {
    let mut w = world();
    fail(&mut w, PAGE, Some(3));
    // The undo of the VMPL2 revocation (the second RMPADJUST at VMPL2) fails too.
    w.machine.failures.push(InjectedFailure { pfn: PAGE >> 12, rmpadjust_vmpl: Some(2), skip: 1, rc: FAIL_INPUT });
    let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        call(&mut w, core_call::DEPOSIT_MEM, DepositEntry::new(PAGE, false).0)
    }));
    let why = stopped.expect_err("the SVSM served on after a failed undo");
    let text = why.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("the SVSM stopped") && text.contains("records and RMP disagree"), "{text}");
}
