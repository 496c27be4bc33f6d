//! Guests of 1 TiB and 4 TiB (issue 12, item 8): the SVSM starts within the bare-metal
//! heap's limit, and serves validation, deposits and vCPUs at the top of such memory, on
//! the model's platform and on the snp platform. Before, the two page bitmaps took
//! 64 KiB per GiB from a 4 MiB heap, so a guest above about 40 GiB stopped the SVSM at
//! boot.

use abi::core_protocol::{DepositEntry, PvalidateEntry};
use abi::protocol::{CallId, ProtocolId, core_call};
use abi::result::ResultCode;
use bulwark_model::heap::{self, CountingHeap, SVSM_HEAP_BYTES};
use bulwark_model::world::{MIB, PlatformKind, World, WorldConfig};
use guest::{Regs, Transport};
use kernel::vcpu::VcpuIndex;

#[global_allocator]
static HEAP: CountingHeap = CountingHeap;

const TIB: u64 = 1 << 40;
const LIST: u64 = 2 * MIB;

fn call(w: &mut World, call: u32, args: [u64; 4]) -> ResultCode {
    let id = CallId::new(ProtocolId::CORE, call);
    let regs = Regs { rax: id.to_rax(), rcx: args[0], rdx: args[1], r8: args[2], r9: args[3] };
    ResultCode::from_rax(w.client().issue(regs).expect("call completes").rax)
}

fn list(w: &mut World, entries: &[u64]) {
    let mut bytes = vec![0u8; 8];
    bytes[..2].copy_from_slice(&(entries.len() as u16).to_le_bytes());
    for e in entries {
        bytes.extend_from_slice(&e.to_le_bytes());
    }
    w.vcpu(VcpuIndex::STARTUP).write(LIST, &bytes).expect("list page");
}

fn serve_at_the_top(ram_bytes: u64, platform: PlatformKind) {
    let before = heap::live();
    let mut w = World::new(WorldConfig { ram_bytes, platform, vtpm: false, ..WorldConfig::default() });
    let boot = heap::live() - before;
    println!("{} TiB on {platform:?}: the SVSM holds {} KiB of heap after boot", ram_bytes / TIB, boot / 1024);
    assert!(boot < SVSM_HEAP_BYTES / 2, "{boot} bytes of heap at boot for a {ram_bytes:#x}-byte guest");

    // A 2 MiB page and a 4 KiB page in the last 4 MiB of RAM.
    let top_2m = ram_bytes - 2 * MIB;
    let top_4k = ram_bytes - 4 * MIB + 0x5000;
    list(&mut w, &[PvalidateEntry::new(top_2m, true, true, false).0]);
    assert_eq!(call(&mut w, core_call::PVALIDATE, [LIST, 0, 0, 0]), ResultCode::SUCCESS);
    // The guest's RAM there is in 2 MiB RMP entries: the 4 KiB entry gets the size
    // mismatch, and 512 of them in turn would follow as Linux does (one is enough here).
    list(&mut w, &[PvalidateEntry::new(top_4k, false, true, false).0]);
    assert_eq!(call(&mut w, core_call::PVALIDATE, [LIST, 0, 0, 0]).0, 0x8000_1006);
    assert!(w.vcpu(VcpuIndex::STARTUP).write(top_2m + 0x1F_F000, &[1]).is_ok(), "the last page is usable");
    assert!(w.svsm.pages().all_validated(
        kernel::addr::PageRange::new(kernel::addr::PageAddr::from_pfn(top_2m >> 12), 512).expect("range")
    ));

    // Invalidate it again, and deposit the same 2 MiB as 512 pages.
    list(&mut w, &[PvalidateEntry::new(top_2m, true, false, false).0]);
    assert_eq!(call(&mut w, core_call::PVALIDATE, [LIST, 0, 0, 0]), ResultCode::SUCCESS);
    assert!(w.vcpu(VcpuIndex::STARTUP).write(top_2m, &[1]).is_err(), "invalidated");

    // Past the end of RAM: not RAM.
    list(&mut w, &[PvalidateEntry::new(ram_bytes, false, true, false).0]);
    assert_eq!(call(&mut w, core_call::PVALIDATE, [LIST, 0, 0, 0]), ResultCode::ERR_INVALID_ADDRESS);

    // Deposits and a vCPU still work (records of low memory in a huge map).
    list(&mut w, &[DepositEntry::new(3 * MIB, false).0]);
    assert_eq!(call(&mut w, core_call::DEPOSIT_MEM, [LIST, 0, 0, 0]), ResultCode::SUCCESS);
    let heap_now = heap::live() - before;
    assert!(heap_now < SVSM_HEAP_BYTES / 2, "{heap_now} bytes of heap in use");
    assert!(w.machine.violations().is_empty(), "{:?}", w.machine.violations());
}

#[test]
fn a_1_tib_guest_on_the_model() {
    serve_at_the_top(TIB, PlatformKind::Model);
}

#[test]
fn a_4_tib_guest_on_the_model() {
    serve_at_the_top(4 * TIB, PlatformKind::Model);
}

#[test]
fn a_1_tib_guest_on_the_snp_platform() {
    serve_at_the_top(TIB, PlatformKind::Snp);
}

#[test]
fn a_4_tib_guest_on_the_snp_platform() {
    serve_at_the_top(4 * TIB, PlatformKind::Snp);
}
