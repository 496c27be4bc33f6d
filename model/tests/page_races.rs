//! Another vCPU's change to a page cannot land between the SVSM's check of a guest
//! buffer and its copy (issue 13: the SVSM is served by every CPU at once). A deposit
//! holds the page's lock from its check to its record; a guest-memory copy checks the page
//! again under the same lock, so it waits, then sees the page is the SVSM's and refuses.

use bulwark_model::world::{MIB, World, WorldConfig};
use kernel::addr::{Gpa, PageAddr, PageRange};
use kernel::caller::Caller;
use kernel::error::{AddressConflict, CallError};
use kernel::guest_memory::{self, GuestView};
use std::sync::mpsc;
use std::time::Duration;

/// SVSM code runs with the bare-metal heap's limit (`bulwark_model::heap`).
#[global_allocator]
static HEAP: bulwark_model::heap::CountingHeap = bulwark_model::heap::CountingHeap;

/// A page validated at launch, the guest's.
const BUFFER: u64 = 3 * MIB + 0x5000;

#[test]
fn a_write_waits_for_a_deposit_of_its_page_and_is_then_refused() {
    let mut w = World::new(WorldConfig { vtpm: false, ..WorldConfig::default() });
    let caller = Caller { vmpl: 1, top_vmpl: 1 };
    let page = PageAddr::from_pfn(BUFFER >> 12);
    let (World { machine, svsm, .. }, (locked, go)) = (&mut w, mpsc::channel());
    let written = std::thread::scope(|s| {
        let pages = svsm.pages();
        s.spawn(move || {
            // What DEPOSIT_MEM does on its vCPU: lock, check, take the page, record it.
            let mut held = pages.lock(page, page);
            let one = PageRange::new(page, 1).expect("one page");
            held.check_target(one).expect("the guest's page");
            locked.send(()).expect("the writer waits");
            std::thread::sleep(Duration::from_millis(100));
            held.reserve_deposited(one).expect("room");
            assert!(held.set_deposited(one, true));
        });
        go.recv().expect("the deposit holds the page");
        // Meanwhile a call on another vCPU writes its answer into that page.
        let view = GuestView::new(svsm.pages(), caller);
        guest_memory::write_bytes(machine, view, Gpa(BUFFER), b"the SVSM's answer")
    });
    assert_eq!(written, Err(CallError::address(Gpa(BUFFER & !0xFFF), AddressConflict::Deposited)));
    let mut left = [0u8; 17];
    w.machine.raw_read(BUFFER, &mut left);
    assert_eq!(left, [0; 17], "nothing was written into the deposited page");
}

/// What the SVSM writes on its own account (the OCP's change-event ring) waits for a
/// REMAP_CA of its page on another vCPU and is then refused: a calling area gets no event
/// (one landing on CALL_PENDING would make a vCPU in no call look called). A call's
/// answer may still go into a calling area (Linux passes operations there).
#[test]
fn an_event_write_waits_for_a_remap_of_its_page_and_is_then_refused() {
    use kernel::pages::PageRole;
    use kernel::vcpu::VcpuIndex;
    let mut w = World::new(WorldConfig { vtpm: false, ..WorldConfig::default() });
    let caller = Caller { vmpl: 1, top_vmpl: 1 };
    let page = PageAddr::from_pfn(BUFFER >> 12);
    let (World { machine, svsm, .. }, (locked, go)) = (&mut w, mpsc::channel());
    let written = std::thread::scope(|s| {
        let pages = svsm.pages();
        s.spawn(move || {
            // What REMAP_CA does on its vCPU: lock, check, make the page a calling area.
            let mut held = pages.lock(page, page);
            held.check_target(PageRange::new(page, 1).expect("one page")).expect("the guest's page");
            locked.send(()).expect("the writer waits");
            std::thread::sleep(Duration::from_millis(100));
            pages.set_role(page, PageRole::CallingArea(VcpuIndex(1))).expect("room");
            drop(held);
        });
        go.recv().expect("the remap holds the page");
        let view = GuestView::owned_outright(svsm.pages(), caller);
        guest_memory::write_bytes(machine, view, Gpa(BUFFER), &7u32.to_le_bytes())
    });
    assert_eq!(written, Err(CallError::address(Gpa(BUFFER & !0xFFF), AddressConflict::CallingArea)));
    let mut left = [0u8; 4];
    w.machine.raw_read(BUFFER, &mut left);
    assert_eq!(left, [0; 4], "nothing was written into the new calling area");
    let answer = GuestView::new(w.svsm.pages(), caller);
    assert_eq!(guest_memory::write_bytes(&mut w.machine, answer, Gpa(BUFFER + 8), b"answer"), Ok(()));
}
