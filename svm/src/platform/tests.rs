//! The platform's answers to the kernel, and nested paging following the RMP.

use super::*;
use crate::launch::tests::launched;
use crate::npt::Access;
use crate::slots::{PutBack, Running};
use crate::test_hw::TestHw;
use crate::test_page::TestPage;
use abi::hw::rc;
use abi::hw::rmpadjust::{PERM_ALL, PERM_EXEC_SUPERVISOR, PERM_READ, PERM_WRITE};
use abi::vmcb::offset;
use kernel::platform::{HwError, MemoryFault, PvalidateEffect};
use rmp::Size;

/// Unvalidated 4 KiB RAM in the launch layout.
const FREE: u64 = 0x40_0000;

fn shared() -> SvmShared<TestHw> {
    launched().0
}

fn page(gpa: u64) -> PageAddr {
    PageAddr::new(gpa).unwrap()
}

/// A second vCPU, out on CPU 1.
fn with_vcpu_out(s: &SvmShared<TestHw>) -> SvmVcpu<TestPage> {
    let mut v = SvmVcpu::long_mode(TestPage::new(1), s.controls(), 0x50_0000, 0, 0);
    // As after its first entry, which takes the new VMCB's flush.
    v.vmcb.set_u8(offset::TLB_CONTROL, 0);
    s.state.slots.insert(1, v).unwrap();
    s.state.slots.take(1, 1).unwrap()
}

fn record(s: &SvmShared<TestHw>, index: u32) -> Option<Running> {
    s.state.slots.with_slot(index, |slot| match slot {
        Some(Slot::Out(r)) => Some(*r),
        _ => None,
    })
}

fn tlb_flush(v: &SvmVcpu<TestPage>) -> u8 {
    v.vmcb.u8(offset::TLB_CONTROL)
}

/// PVALIDATE and RMPADJUST change nested paging as the RMP changes: present once VMPL1
/// may read, writable and executable as granted, gone on invalidation.
#[test]
fn nested_paging_follows_every_page_state_change() {
    let s = shared();
    let mut p = s.platform(0);
    let (g, small) = (page(FREE), PageSize::Size4K);
    assert_eq!(p.pvalidate(g, small, true), Ok(PvalidateEffect::Changed));
    assert_eq!(s.hw.mapped(FREE), None, "validated, but VMPL1 holds no permission yet");
    p.rmpadjust(g, small, 1, PERM_READ | PERM_WRITE, false).unwrap();
    assert_eq!(s.hw.mapped(FREE), Some(Access { write: true, execute: false }));
    p.rmpadjust(g, small, 1, PERM_READ | PERM_EXEC_SUPERVISOR, false).unwrap();
    assert_eq!(s.hw.mapped(FREE), Some(Access { write: false, execute: true }));
    p.rmpadjust(g, small, 2, PERM_ALL, false).unwrap();
    assert_eq!(s.hw.mapped(FREE), Some(Access { write: false, execute: true }), "VMPL2's grant is not VMPL1's view");
    p.rmpadjust(g, small, 1, 0, true).unwrap();
    assert_eq!(s.hw.mapped(FREE), None, "a VMSA page is never mapped");
    p.rmpadjust(g, small, 1, PERM_ALL, false).unwrap();
    assert_eq!(p.pvalidate(g, small, false), Ok(PvalidateEffect::Changed));
    assert_eq!(s.hw.mapped(FREE), None);
    assert_eq!(p.pvalidate(g, small, false), Ok(PvalidateEffect::Unchanged));
}

#[test]
fn a_2m_change_maps_all_its_pages() {
    let s = shared();
    let mut p = s.platform(0);
    let g = page(0x1000_0000);
    p.pvalidate(g, PageSize::Size2M, true).unwrap();
    p.rmpadjust(g, PageSize::Size2M, 1, PERM_ALL, false).unwrap();
    assert!((0x1000_0000..0x1020_0000).step_by(4096).all(|a| s.hw.mapped(a).is_some()));
    assert_eq!(s.hw.mapped(0x1020_0000), None);
    let tables = s.hw.tables();
    assert!(s.hw.mapped_large(0x1000_0000), "one 2 MiB leaf, no table of 512");
    p.pvalidate(page(0x1020_0000), PageSize::Size2M, true).unwrap();
    assert!(!s.hw.mapped_large(0x1020_0000), "validated, but VMPL1 may use none of it: nothing mapped");
    assert_eq!(s.hw.tables(), tables, "and no table for either");
    assert_eq!(p.pvalidate(page(0x1000_1000), PageSize::Size4K, false), Err(HwError::Rc(rc::FAIL_SIZEMISMATCH)));
}

/// Low RAM the launch assigns as 4 KiB RMP pages: one whole 2 MiB region of it.
const REGION_4K: u64 = 0x80_0000;

/// Validate every page of `REGION_4K` with every permission for VMPL1, as 4 KiB pages,
/// then make nested paging follow the whole region at once (as the launch does for the
/// ranges it validates): one 2 MiB leaf.
fn region_of_4k_pages_mapped_whole(s: &SvmShared<TestHw>) {
    let mut rmp = s.state.lock_rmp();
    for pfn in REGION_4K >> 12..(REGION_4K >> 12) + 512 {
        rmp.pvalidate(pfn << 12, Size::Small, true).unwrap();
        rmp.rmpadjust(pfn << 12, Size::Small, 1, PERM_ALL, false, |_| false).unwrap();
    }
    drop(rmp);
    s.sync(REGION_4K >> 12..(REGION_4K >> 12) + 512).unwrap();
    assert!(s.hw.mapped_large(REGION_4K));
}

/// A change to one page of a 2 MiB leaf splits it: that page changes, the other 511 keep
/// their mapping. The region keeps its table from then on, also when the whole region is
/// followed at once again (a table is never taken out of use: a CPU may still walk it).
#[test]
fn a_change_inside_a_2m_leaf_splits_it() {
    let s = shared();
    region_of_4k_pages_mapped_whole(&s);
    let (small, tables) = (s.hw.small_leaves(), s.hw.tables());
    let mut p = s.platform(0);
    let rwx = Some(Access { write: true, execute: true });
    p.rmpadjust(page(REGION_4K + 0x3000), PageSize::Size4K, 1, PERM_READ, false).unwrap();
    assert!(!s.hw.mapped_large(REGION_4K));
    assert_eq!(s.hw.mapped(REGION_4K + 0x3000), Some(Access { write: false, execute: false }));
    assert_eq!(s.hw.mapped(REGION_4K + 0x2000), rwx);
    assert_eq!(s.hw.mapped(REGION_4K + 0x1F_F000), rwx);
    assert_eq!((s.hw.small_leaves(), s.hw.tables()), (small + 512, tables + 1));
    p.rmpadjust(page(REGION_4K + 0x3000), PageSize::Size4K, 1, PERM_ALL, false).unwrap();
    s.sync(REGION_4K >> 12..(REGION_4K >> 12) + 512).unwrap();
    assert!(!s.hw.mapped_large(REGION_4K), "the table stays");
    assert_eq!((s.hw.mapped(REGION_4K + 0x3000), s.hw.tables()), (rwx, tables + 1));
    // A page the guest loses altogether splits it too.
    p.rmpadjust(page(REGION_4K), PageSize::Size4K, 1, 0, false).unwrap();
    assert_eq!((s.hw.mapped(REGION_4K), s.hw.mapped(REGION_4K + 0x1000)), (None, rwx));
}

/// A split that finds no memory for its table fails the change, which the RMP takes
/// back: the 2 MiB leaf stays whole and says what the RMP says, for a grant changed and
/// for an invalidation.
#[test]
fn a_split_without_memory_is_taken_back() {
    let (s, _) =
        crate::launch::tests::launched_on(TestHw { npt_full_from: Some(REGION_4K >> 12), ..TestHw::new(0x2000_0000) });
    region_of_4k_pages_mapped_whole(&s);
    let mut p = s.platform(0);
    let (g, rwx) = (page(REGION_4K + 0x5000), Some(Access { write: true, execute: true }));
    assert_eq!(p.rmpadjust(g, PageSize::Size4K, 1, PERM_READ, false), Err(HwError::NoMemory));
    assert_eq!(p.vmpl_permissions(g, 1), Some(PERM_ALL));
    assert_eq!(p.pvalidate(g, PageSize::Size4K, false), Err(HwError::NoMemory));
    assert!(s.state.rmp().entry(g.pfn()).is_some_and(|e| e.validated), "the invalidation was taken back");
    assert!(s.hw.mapped_large(REGION_4K));
    assert_eq!(s.hw.mapped(g.raw()), rwx);
    // What changes nothing needs no table.
    assert_eq!(p.rmpadjust(g, PageSize::Size4K, 1, PERM_ALL, false), Ok(()));
}

/// A 2 MiB grant whose leaf finds no directory table fails and is taken back: nothing
/// mapped, and the RMP says VMPL1 holds nothing.
#[test]
fn a_2m_grant_without_memory_is_taken_back() {
    let (s, _) = crate::launch::tests::launched_on(TestHw {
        npt_directories_full_from: Some(0x1000_0000 >> 12),
        ..TestHw::new(0x2000_0000)
    });
    let mut p = s.platform(0);
    let g = page(0x1000_0000);
    p.pvalidate(g, PageSize::Size2M, true).unwrap();
    assert_eq!(p.rmpadjust(g, PageSize::Size2M, 1, PERM_ALL, false), Err(HwError::NoMemory));
    assert_eq!((s.hw.mapped(0x1000_0000), s.hw.mapped(0x101F_F000)), (None, None));
    assert_eq!(p.vmpl_permissions(page(0x1010_0000), 1), Some(0));
}

/// Every change reaches every vCPU: those in the SVSM's hands flush on their next VMRUN,
/// those out on a CPU are kicked before the call returns.
#[test]
fn a_change_flushes_every_vcpu_and_kicks_those_out() {
    let s = shared();
    let out = with_vcpu_out(&s);
    s.platform(0).pvalidate(page(FREE), PageSize::Size4K, true).unwrap();
    assert_eq!(s.hw.take_kicks(), [1]);
    assert_eq!(s.with_vcpu(0, tlb_flush), Some(1));
    s.state.slots.put_back(1, out);
    assert_eq!(s.with_vcpu(1, tlb_flush), Some(1), "flushes when it comes back");
}

/// A change made while serving a vCPU's call: the vCPU the CPU holds flushes on its next
/// VMRUN without a kick (its CPU is the one making the change), every other vCPU out is
/// kicked and flushes when it is back.
#[test]
fn a_change_while_serving_flushes_the_callers_vcpu_and_kicks_the_others() {
    let s = shared();
    let mut own = s.take_next(0, None, 0).unwrap();
    let out = with_vcpu_out(&s);
    let mut p = s.serving(0, &mut own);
    p.pvalidate(page(FREE), PageSize::Size4K, true).unwrap();
    assert_eq!(s.hw.take_kicks(), [1], "CPU 1 only: CPU 0 is the caller's");
    assert_eq!(record(&s, 0).map(|r| r.flush), Some(false), "the caller's vCPU is flushed in hand");
    assert_eq!(record(&s, 1).map(|r| r.flush), Some(true));
    assert_eq!(tlb_flush(&own.vcpu), 1);
    assert_eq!(tlb_flush(&out), 0, "the running copy is untouched until it comes back");
    assert_eq!(s.state.slots.put_back(1, out), PutBack::Flushed);
}

/// A mapping that cannot be made (no memory for a table) is an error, and the page
/// stays out of the guest's reach: nested paging never grants more than the RMP.
#[test]
fn a_mapping_without_memory_fails_closed() {
    let (s, _) =
        crate::launch::tests::launched_on(TestHw { npt_full_from: Some(FREE >> 12), ..TestHw::new(0x2000_0000) });
    let mut p = s.platform(0);
    p.pvalidate(page(FREE), PageSize::Size4K, true).unwrap();
    assert_eq!(p.rmpadjust(page(FREE), PageSize::Size4K, 1, PERM_ALL, false), Err(HwError::NoMemory));
    assert_eq!(s.hw.mapped(FREE), None);
    // And the RMP agrees: the grant was taken back, so no later step (a migration's
    // dirty tracking, say) finds VMPL1 allowed where nested paging maps nothing.
    assert_eq!(p.vmpl_permissions(page(FREE), 1), Some(0));
}

/// The SVSM's own copies go by the RMP: unvalidated pages and the SVSM region fault at
/// the first page that is not guest RAM.
#[test]
fn svsm_copies_reach_only_validated_guest_ram() {
    let s = shared();
    let mut p = s.platform(0);
    let mut buf = [0u8; 16];
    assert_eq!(p.read(Gpa(0x9000), &mut buf), Ok(()));
    assert_eq!(p.read(Gpa(FREE), &mut buf), Err(MemoryFault { gpa: Gpa(FREE) }));
    assert_eq!(p.write(Gpa(0x100_0000), &buf), Err(MemoryFault { gpa: Gpa(0x100_0000) }), "SVSM memory");
    assert_eq!(p.read(Gpa(0x10FF8), &mut buf), Err(MemoryFault { gpa: Gpa(0x11000) }), "past the page tables");
    assert_eq!(p.read(Gpa(u64::MAX - 4), &mut buf), Err(MemoryFault { gpa: Gpa(u64::MAX - 4) }), "wraps");
    assert_eq!(p.write(Gpa(0x8000), &buf), Ok(()), "VMPL0 writes the secrets page");
    let range = PageRange::new(page(0x20_0000), 2).unwrap();
    assert_eq!(p.zero_pages(range), Ok(()));
    let unvalidated = PageRange::new(page(FREE), 1).unwrap();
    assert_eq!(p.zero_pages(unvalidated), Err(MemoryFault { gpa: Gpa(FREE) }));
    // The view copies check follows every change.
    p.pvalidate(page(FREE), PageSize::Size4K, true).unwrap();
    assert_eq!(p.read(Gpa(FREE), &mut buf), Ok(()));
    p.pvalidate(page(FREE), PageSize::Size4K, false).unwrap();
    assert_eq!(p.write(Gpa(FREE + 8), &buf), Err(MemoryFault { gpa: Gpa(FREE + 8) }));
}

/// VMSA fields: from the VMCB while the vCPU is in the SVSM's hands; while it runs, only
/// those the guest cannot change, and no writes; from the page before it is a vCPU.
#[test]
fn vmsa_fields_come_from_wherever_the_vcpu_is() {
    let s = shared();
    let mut p = s.platform(0);
    let startup = page(0xA000);
    assert_eq!(p.vmsa_read(startup, VmsaField::Rip), Ok(0x20_0000));
    p.vmsa_write(startup, VmsaField::Rax, 7).unwrap();
    assert_eq!(s.with_vcpu(0, |v| v.field(VmsaField::Rax)), Some(7));
    let _out = with_vcpu_out(&s);
    let running = page(0x50_0000);
    assert_eq!(p.vmsa_read(running, VmsaField::Vmpl), Ok(1));
    assert_eq!(p.vmsa_read(running, VmsaField::SevFeatures), Ok(1));
    assert_eq!(p.vmsa_read(running, VmsaField::Rax), Err(MemoryFault { gpa: running.gpa() }));
    assert_eq!(p.vmsa_write(running, VmsaField::Rax, 1), Err(MemoryFault { gpa: running.gpa() }));
    // A page that is no vCPU's and not a VMSA in the RMP: refused.
    assert!(p.vmsa_read(page(0x9000), VmsaField::Rax).is_err());
    // A VMSA page no vCPU runs yet: the page itself.
    let new = page(FREE);
    p.pvalidate(new, PageSize::Size4K, true).unwrap();
    p.rmpadjust(new, PageSize::Size4K, 1, 0, true).unwrap();
    p.vmsa_write(new, VmsaField::Vmpl, 1).unwrap();
    assert_eq!(s.hw.u64_at(FREE + VmsaField::Vmpl.offset() as u64) & 0xFF, 1);
    assert_eq!(p.vmsa_read(new, VmsaField::Vmpl), Ok(1));
}

/// The CPU serving a vCPU's call reads and writes that vCPU's registers in the VMCB it
/// holds, all of them, while the slot still says the vCPU is out (so other CPUs see only
/// what they may); once the call deleted it, its VMSA is a page like any other VMSA no
/// vCPU runs.
#[test]
fn the_serving_cpu_has_its_own_vcpu_in_hand() {
    let s = shared();
    let mut own = s.take_next(0, None, 0).unwrap();
    let startup = page(0xA000);
    {
        let mut p = s.serving(0, &mut own);
        assert_eq!(p.vmsa_read(startup, VmsaField::Rip), Ok(0x20_0000));
        p.vmsa_write(startup, VmsaField::Rcx, 0x1234).unwrap();
        assert_eq!(s.platform(1).vmsa_read(startup, VmsaField::Rcx), Err(MemoryFault { gpa: startup.gpa() }));
        assert_eq!(s.platform(1).vmsa_read(startup, VmsaField::Vmpl), Ok(1));
        p.vcpu_deleted(VcpuIndex(0));
        p.vmsa_write(startup, VmsaField::Rcx, 0x99).unwrap();
    }
    assert_eq!(own.vcpu.field(VmsaField::Rcx), 0x1234, "the deleted vCPU's registers are not its VMSA page any more");
    assert_eq!(s.hw.u64_at(0xA000 + VmsaField::Rcx.offset() as u64), 0x99);
    assert_eq!(s.put_back(own), PutBack::Dropped);
}

/// RMPADJUST may not take the VMSA flag off a vCPU that runs, until DELETE_VCPU stopped
/// it (its CPU kicked).
#[test]
fn a_running_vmsa_is_in_use_until_stopped() {
    let s = shared();
    let mut p = s.platform(0);
    let out = with_vcpu_out(&s);
    let vmsa = page(0x50_0000);
    p.pvalidate(vmsa, PageSize::Size4K, true).unwrap();
    p.rmpadjust(vmsa, PageSize::Size4K, 1, 0, true).unwrap();
    assert_eq!(p.rmpadjust(vmsa, PageSize::Size4K, 1, 0, false), Err(HwError::Rc(rc::FAIL_INUSE)));
    s.hw.take_kicks();
    p.vcpu_stop(vmsa).unwrap();
    assert_eq!(s.hw.take_kicks(), [1], "it must leave the guest before DELETE_VCPU returns");
    assert_eq!(p.rmpadjust(vmsa, PageSize::Size4K, 1, 0, false), Ok(()));
    p.vcpu_deleted(VcpuIndex(1));
    assert_eq!(s.state.slots.put_back(1, out), PutBack::Dropped);
    assert_eq!(p.vcpu_stop(vmsa), Err(HwError::Fault), "gone");
}

/// CREATE_VCPU: the VMSA page the guest wrote becomes a vCPU with its own ASID; the
/// other CPUs hear of it. Without memory for its VMCB it is logged, not made; nor beyond
/// the slots.
#[test]
fn a_created_vcpu_comes_from_its_vmsa_page() {
    let s = shared();
    let mut p = s.platform(0);
    let mut vmsa = abi::vmsa::Vmsa::zeroed();
    vmsa.rip = 0x1234;
    vmsa.vmpl = 1;
    vmsa.efer = 0x1D00;
    s.hw.write(FREE, zerocopy::IntoBytes::as_bytes(&vmsa));
    let before = s.hw.generation();
    p.vcpu_created(VcpuIndex(3), page(FREE), 3, &[]);
    let (rip, efer, asid) = s
        .with_vcpu(3, |v| (v.field(VmsaField::Rip), v.field(VmsaField::Efer), v.vmcb.u32(offset::GUEST_ASID)))
        .unwrap();
    assert_eq!((rip, efer, asid), (0x1234, 0x1D00, 4));
    assert_eq!(s.hw.generation(), before + 1);
    assert!(s.hw.logged("vCPU 3 runs on cpu 1"));
    p.vcpu_created(VcpuIndex(8), page(FREE), 8, &[]);
    assert!(s.hw.logged("no slot for vCPU 8"));
    *s.hw.allocs_left.lock().unwrap() = Some(0);
    p.vcpu_created(VcpuIndex(4), page(FREE + 0x1000), 4, &[]);
    assert!(s.with_vcpu(4, |_| ()).is_none());
    assert!(s.hw.logged("no memory for vCPU 4"));
}

#[test]
fn log_lines_follow_the_level() {
    let s = shared();
    let mut p = s.platform(0);
    p.log(Level::Debug, format_args!("hidden"));
    p.set_log_level(Level::Debug);
    assert_eq!(s.platform(1).log_level(), Level::Debug, "one level for every CPU");
    p.log(Level::Debug, format_args!("shown"));
    assert!(!s.hw.logged("hidden") && s.hw.logged("shown"));
    assert_eq!(p.vtom_limits(), None);
    assert_eq!(p.report_certificates(), [1, 2, 3]);
}
