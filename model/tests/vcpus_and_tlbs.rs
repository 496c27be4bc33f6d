//! vCPU replacement at the SVSM's limits (issue 12, item 2) and TLB flushes that reach
//! every vCPU (item 9), on the model's platform, the snp platform and the svm platform.

use abi::core_protocol::DepositEntry;
use abi::protocol::{CallId, ProtocolId, core_call};
use abi::result::ResultCode;
use abi::vmsa::VmsaField;
use bulwark_model::world::{MIB, PlatformKind, World, WorldConfig};
use guest::{Regs, Transport};
use kernel::svsm::VCPU_CONTEXT_PAGES;
use kernel::vcpu::VcpuIndex;

/// SVSM code runs with the bare-metal heap's limit (`bulwark_model::heap`).
#[global_allocator]
static HEAP: bulwark_model::heap::CountingHeap = bulwark_model::heap::CountingHeap;

const SCRATCH: u64 = 2 * MIB;

/// A VMSA the model accepts, at `gpa`, written by the startup vCPU.
fn vmsa(w: &mut World, gpa: u64) {
    let mut v = abi::vmsa::Vmsa::zeroed();
    v.vmpl = 1;
    v.efer = 0x500;
    v.sev_features = abi::hw::sev_features::SNP_ACTIVE;
    w.vcpu(VcpuIndex::STARTUP).write(gpa, zerocopy::IntoBytes::as_bytes(&v)).expect("guest page");
}

fn core(w: &mut World, vcpu: VcpuIndex, ca: u64, call: u32, args: [u64; 4]) -> ResultCode {
    let id = CallId::new(ProtocolId::CORE, call);
    let regs = Regs { rax: id.to_rax(), rcx: args[0], rdx: args[1], r8: args[2], r9: args[3] };
    ResultCode::from_rax(w.client_at(vcpu, ca).issue(regs).expect("call completes").rax)
}

/// Linux onlines a CPU again with CREATE_VCPU(new VMSA, same calling area, same APIC ID)
/// before DELETE_VCPU(old) (arch/x86/coco/sev/core.c `wakeup_cpu_via_vmgexit`). At the
/// vCPU limit, and with no SVSM page left in the pool, that still works: the vCPU keeps
/// its slot and its SVSM pages. Linux never deposits memory, so asking for some would
/// leave the CPU offline.
fn online_again_at_the_limits(platform: PlatformKind) {
    let mut w = World::new(WorldConfig {
        platform,
        max_vcpus: 2,
        pool_reserve_pages: VCPU_CONTEXT_PAGES as u64,
        vtpm: false,
        ..WorldConfig::default()
    });
    let ca0 = bulwark_model::world::STARTUP_CA_GPA;
    let (old, ca, new) = (SCRATCH + 0x10_000, SCRATCH + 0x11_000, SCRATCH + 0x12_000);
    vmsa(&mut w, old);
    assert_eq!(core(&mut w, VcpuIndex::STARTUP, ca0, core_call::CREATE_VCPU, [old, ca, 1, 0]), ResultCode::SUCCESS);
    assert_eq!(w.svsm.pool_stats().reserve_free, 0, "the pool is empty");
    assert_eq!(w.svsm.vcpus().count(), 2, "the vCPU limit is reached");
    vmsa(&mut w, new);
    assert_eq!(core(&mut w, VcpuIndex::STARTUP, ca0, core_call::CREATE_VCPU, [new, ca, 1, 0]), ResultCode::SUCCESS);
    let index = w.vcpu_by_apic_id(1).expect("APIC ID 1 has a vCPU");
    assert_eq!(w.machine.vcpus.get(&index.0).map(|v| v.vmsa), Some(new), "the machine runs the new VMSA");
    assert_eq!(core(&mut w, index, ca, core_call::QUERY_PROTOCOL, [1 << 32 | 1, 0, 0, 0]), ResultCode::SUCCESS);
    assert_eq!(core(&mut w, VcpuIndex::STARTUP, ca0, core_call::DELETE_VCPU, [old, 0, 0, 0]), ResultCode::SUCCESS);
    assert!(w.vcpu(VcpuIndex::STARTUP).write(old, &[1]).is_ok(), "the old VMSA came back");
    assert_eq!(core(&mut w, index, ca, core_call::QUERY_PROTOCOL, [1 << 32 | 1, 0, 0, 0]), ResultCode::SUCCESS);
    assert!(w.machine.violations().is_empty(), "{:?}", w.machine.violations());
}

#[test]
fn cpu_online_again_at_the_vcpu_limit_with_an_empty_pool() {
    online_again_at_the_limits(PlatformKind::Model);
}

#[test]
fn cpu_online_again_at_the_vcpu_limit_with_an_empty_pool_on_snp() {
    online_again_at_the_limits(PlatformKind::Snp);
}

#[test]
fn cpu_online_again_at_the_vcpu_limit_with_an_empty_pool_on_svm() {
    online_again_at_the_limits(PlatformKind::Svm);
}

/// A page another vCPU has been writing is deposited: once DEPOSIT_MEM returns, that
/// vCPU's cached translation is gone too (the model keeps stale TLB entries per vCPU
/// until the SVSM flushes; COCONUT flushes every CPU at the same point).
fn revocation_reaches_every_vcpu(platform: PlatformKind) {
    let mut w = World::new(WorldConfig { platform, vtpm: false, ..WorldConfig::default() });
    let ca0 = bulwark_model::world::STARTUP_CA_GPA;
    let (v1, ca1) = (SCRATCH + 0x10_000, SCRATCH + 0x11_000);
    vmsa(&mut w, v1);
    assert_eq!(core(&mut w, VcpuIndex::STARTUP, ca0, core_call::CREATE_VCPU, [v1, ca1, 1, 0]), ResultCode::SUCCESS);
    let other = w.vcpu_by_apic_id(1).expect("vCPU 1");
    let page = SCRATCH + 0x30_000;
    assert!(w.vcpu(other).write(page, &[7]).is_ok(), "vCPU 1 uses the page");
    let flushes = tlb_flushes(&w);
    let list = SCRATCH + 0x1000;
    let mut bytes = vec![1u8, 0, 0, 0, 0, 0, 0, 0];
    bytes.extend_from_slice(&DepositEntry::new(page, false).0.to_le_bytes());
    w.vcpu(VcpuIndex::STARTUP).write(list, &bytes).expect("list");
    assert_eq!(core(&mut w, VcpuIndex::STARTUP, ca0, core_call::DEPOSIT_MEM, [list, 0, 0, 0]), ResultCode::SUCCESS);
    assert!(tlb_flushes(&w) > flushes, "no flush after the revocation");
    assert!(w.vcpu(other).write(page, &[8]).is_err(), "vCPU 1 still writes a page the SVSM owns");
    assert_eq!(w.machine.vmsa_field(v1, VmsaField::Vmpl), 1);
}

/// TLB flushes so far: the SVSM's on the model and snp platforms, those VMRUN made on
/// the svm platform (each vCPU's own, when it enters the guest after a change).
fn tlb_flushes(w: &World) -> u64 {
    w.svm.as_ref().map_or(w.machine.tlb_flushes.get(), |s| s.host.flushes)
}

#[test]
fn a_deposit_flushes_the_tlbs_of_other_vcpus() {
    revocation_reaches_every_vcpu(PlatformKind::Model);
}

#[test]
fn a_deposit_flushes_the_tlbs_of_other_vcpus_on_snp() {
    revocation_reaches_every_vcpu(PlatformKind::Snp);
}

/// On svm the other vCPU is in the guest on another CPU: it is kicked out, and flushes
/// when it enters again, before DEPOSIT_MEM returns.
#[test]
fn a_deposit_flushes_the_tlbs_of_other_vcpus_on_svm() {
    revocation_reaches_every_vcpu(PlatformKind::Svm);
}

/// A vCPU at a less privileged VMPL than the guest's: the svm platform runs every vCPU on
/// one nested page table built from the guest's VMPL's permissions, so a VMPL2 vCPU
/// would reach VMPL1's private pages and the secrets page (found by review). There
/// CREATE_VCPU refuses it (INVALID_PARAMETER) and the page stays the guest's; the
/// platforms that enforce every VMPL take it.
fn a_vmpl2_vcpu(platform: PlatformKind) -> ResultCode {
    let mut w = World::new(WorldConfig { platform, vtpm: false, ..WorldConfig::default() });
    let ca0 = bulwark_model::world::STARTUP_CA_GPA;
    let (page, ca) = (SCRATCH + 0x10_000, SCRATCH + 0x11_000);
    vmsa(&mut w, page);
    w.vcpu(VcpuIndex::STARTUP).write(page + VmsaField::Vmpl.offset() as u64, &[2]).expect("guest page");
    let result = core(&mut w, VcpuIndex::STARTUP, ca0, core_call::CREATE_VCPU, [page, ca, 5, 0]);
    if result != ResultCode::SUCCESS {
        assert!(w.vcpu(VcpuIndex::STARTUP).write(page, &[1]).is_ok(), "a refused VMSA page stays the guest's");
        assert!(w.vcpu_by_apic_id(5).is_none());
    }
    assert!(w.machine.violations().is_empty(), "{:?}", w.machine.violations());
    result
}

#[test]
fn a_vmpl2_vcpu_is_refused_where_one_nested_page_table_serves_every_vcpu() {
    assert_eq!(a_vmpl2_vcpu(PlatformKind::Svm), ResultCode::ERR_INVALID_PARAMETER);
    assert_eq!(a_vmpl2_vcpu(PlatformKind::Snp), ResultCode::SUCCESS);
    assert_eq!(a_vmpl2_vcpu(PlatformKind::Model), ResultCode::SUCCESS);
}
