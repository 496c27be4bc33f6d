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
