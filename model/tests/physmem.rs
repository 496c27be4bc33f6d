//! OPEN_PHYSMEM on the model (docs/syscalls.md "Guest memory: OPEN_PHYSMEM"): a service
//! process maps guest pages, never one the SVSM has a claim on, and while it maps a page
//! the guest cannot invalidate it, deposit it with the SVSM or make it a VMSA or calling
//! area (the syscall review: "SET_MEM_STATE must fail for PHYSMEM pages that are currently
//! mapped"). The guest's calls go through the whole request path; the process is the
//! kernel's system call layer driven directly, as the bare-metal run loop drives it.

use abi::core_protocol::{DepositEntry, PvalidateEntry};
use abi::result::ResultCode;
use abi::syscall::{self as sys, PhysmemRange, SysError, map};
use bulwark_model::user_host::HostSpace;
use bulwark_model::world::{LOW_VALIDATED_END, MIB, STARTUP_VMSA_GPA, SVSM_BASE, World, WorldConfig};
use guest::client::CallError;
use kernel::pages::PageTracker;
use kernel::user::memory::AddressSpace;
use kernel::user::{Call, Outcome, Process, Services};
use zerocopy::FromBytes;

/// SVSM code runs with the bare-metal heap's limit (`bulwark_model::heap`).
#[global_allocator]
static HEAP: bulwark_model::heap::CountingHeap = bulwark_model::heap::CountingHeap;

/// Two guest pages validated at launch, which the process maps.
const SHARED: u64 = 3 * MIB;
/// A validated page the guest's lists live in.
const LIST: u64 = 2 * MIB;

/// The kernel's services with the world's page tracker as the guest memory to map.
struct WithGuest<'a>(&'a PageTracker);

impl Services for WithGuest<'_> {
    fn clock_ns(&mut self) -> u64 {
        0
    }
    fn random(&mut self, _: &mut [u8]) -> bool {
        false
    }
    fn log(&mut self, _: u32, _: &[u8]) {}
    fn vm_bitmap(&self) -> u64 {
        0b10
    }
    fn features(&self) -> u64 {
        0
    }
    fn guest_pages(&self) -> Option<&PageTracker> {
        Some(self.0)
    }
}

/// One system call; its RAX as a result.
fn call(
    p: &mut Process,
    space: &mut HostSpace,
    tracker: &PageTracker,
    number: u64,
    args: [u64; 5],
) -> Result<u64, SysError> {
    match p.syscall(space, &mut WithGuest(tracker), Call { number, args }) {
        Outcome::Return(rax) => match SysError::from_rax(rax) {
            Some(e) => Err(e.expect("a known error code")),
            None => Ok(rax),
        },
        other => panic!("the call did not return: {other:?}"),
    }
}

fn failed(code: ResultCode) -> Result<(), CallError> {
    Err(CallError::Failed(code))
}

fn invalidate(w: &mut World, gpa: u64) -> Result<(), CallError> {
    w.client().pvalidate(&[PvalidateEntry::new(gpa, false, false, false)], LIST)
}

/// A process with the right, its info page mapped, and the range that holds [`SHARED`]
/// opened: (process, space, handle, range).
fn opened(w: &World) -> (Process, HostSpace, u64, PhysmemRange) {
    let tracker = w.svsm.pages();
    let mut p = Process::new(1, 16);
    p.allow_physmem();
    let mut space = HostSpace::default();
    let rw = map::READ | map::WRITE;
    let info = call(&mut p, &mut space, tracker, sys::MMAP, [sys::NO_HANDLE, 0, 0, 4096, rw | map::ANONYMOUS]).unwrap();
    let count = call(&mut p, &mut space, tracker, sys::CAPABILITIES, [sys::caps::PHYSMEM_RANGES, 0, 0, 0, 0]).unwrap();
    assert_eq!(count, tracker.guest_range_count() as u64);
    for index in 0..count {
        let handle = call(&mut p, &mut space, tracker, sys::OPEN_PHYSMEM, [index, info, 0, 0, 0]).unwrap();
        let mut bytes = [0u8; 16];
        space.read(info, &mut bytes).unwrap();
        let range = PhysmemRange::read_from_bytes(&bytes).unwrap();
        let end = range.base + range.length;
        assert!(
            end <= SVSM_BASE || range.base >= SVSM_BASE + w.config.svsm_size,
            "a range reaches the SVSM: {range:?}"
        );
        if (range.base..end).contains(&SHARED) {
            return (p, space, handle, range);
        }
        call(&mut p, &mut space, tracker, sys::CLOSE, [handle, 0, 0, 0, 0]).unwrap();
    }
    panic!("no range holds the shared pages");
}

#[test]
fn a_mapped_guest_page_is_the_guests_yet_cannot_change_hands_until_unmapped() {
    let mut w = World::new(WorldConfig { vtpm: false, ..WorldConfig::default() });
    let (mut p, mut space, handle, range) = opened(&w);
    let tracker = w.svsm.pages();
    let rw = map::READ | map::WRITE;
    let va = call(&mut p, &mut space, tracker, sys::MMAP, [handle, 0, SHARED - range.base, 2 * 4096, rw]).unwrap();
    assert_eq!(p.guest_pages(), 2);
    assert_eq!(tracker.service_mappings_total(), 2);
    // Mapped, but never a buffer for a system call: the kernel copies only the process's
    // own memory.
    assert_eq!(call(&mut p, &mut space, tracker, sys::LOG, [va, 8, 0, 0, 0]), Err(SysError::Fault));

    // While mapped, the guest's own calls cannot take the pages away.
    assert_eq!(invalidate(&mut w, SHARED), failed(ResultCode::ERR_INVALID_ADDRESS));
    assert_eq!(invalidate(&mut w, SHARED + 4096), failed(ResultCode::ERR_INVALID_ADDRESS));
    let deposit = w.client().deposit(&[DepositEntry::new(SHARED + 4096, false)], LIST);
    assert_eq!(deposit, failed(ResultCode::ERR_INVALID_ADDRESS));
    assert_eq!(w.client().create_vcpu(SHARED, SHARED + 4096, 7), failed(ResultCode::ERR_INVALID_ADDRESS));
    assert_eq!(w.client().remap_ca(SHARED + 8), failed(ResultCode::ERR_INVALID_ADDRESS));
    // A 2 MiB invalidation of the region around them is refused as well.
    let huge = w.client().pvalidate(&[PvalidateEntry::new(SHARED & !(2 * MIB - 1), true, false, false)], LIST);
    assert_eq!(huge, failed(ResultCode::ERR_INVALID_ADDRESS));
    // Pages next to them are the guest's as always.
    invalidate(&mut w, SHARED + 2 * 4096).expect("an unmapped page is invalidated");

    // The first page unmapped: the guest may invalidate it; the second is still held.
    let tracker = w.svsm.pages();
    call(&mut p, &mut space, tracker, sys::MUNMAP, [va, 4096, 0, 0, 0]).unwrap();
    assert_eq!(p.guest_pages(), 1);
    invalidate(&mut w, SHARED).expect("the unmapped page is invalidated");
    assert_eq!(invalidate(&mut w, SHARED + 4096), failed(ResultCode::ERR_INVALID_ADDRESS));

    // A process that ends holds nothing: the second page is the guest's to give up.
    p.end(&mut space, &WithGuest(w.svsm.pages()));
    assert_eq!(space.page_count(), 0);
    assert_eq!(w.svsm.pages().service_mappings_total(), 0);
    invalidate(&mut w, SHARED + 4096).expect("the page of the ended process is invalidated");
}

#[test]
fn pages_the_svsm_claims_or_the_guest_has_not_validated_are_never_mapped() {
    let w = World::new(WorldConfig { vtpm: false, ..WorldConfig::default() });
    let (mut p, mut space, handle, range) = opened(&w);
    let tracker = w.svsm.pages();
    let (r, rw) = (map::READ, map::READ | map::WRITE);
    let at = |gpa: u64| gpa - range.base;
    // The startup vCPU's VMSA lies in the range, and is refused whole, as is a run of
    // pages that only ends on it.
    assert!(range.base <= STARTUP_VMSA_GPA);
    let refused = [
        ([handle, 0, at(STARTUP_VMSA_GPA), 4096, r], SysError::Perm),
        ([handle, 0, at(STARTUP_VMSA_GPA - 4096), 2 * 4096, r], SysError::Perm),
        // Not validated by the guest.
        ([handle, 0, at(LOW_VALIDATED_END), 4096, r], SysError::Fault),
        // Executable guest memory, a mapping past the range's end, an unaligned offset,
        // anonymous flags on an object.
        ([handle, 0, at(SHARED), 4096, r | map::EXEC], SysError::Perm),
        ([handle, 0, range.length - 4096, 2 * 4096, r], SysError::Inval),
        ([handle, 0, !0xfff, 4096, r], SysError::Inval),
        ([handle, 0, at(SHARED) + 8, 4096, r], SysError::Inval),
        ([handle, 0, at(SHARED), 4096, rw | map::ANONYMOUS], SysError::Inval),
        // More than a process may hold.
        ([handle, 0, 0, (kernel::user::MAX_GUEST_PAGES + 1) * 4096, r], SysError::NoMem),
    ];
    for (i, (args, expected)) in refused.into_iter().enumerate() {
        assert_eq!(call(&mut p, &mut space, tracker, sys::MMAP, args), Err(expected), "case {i}");
        // A refusal part way leaves nothing held.
        assert_eq!((tracker.service_mappings_total(), p.guest_pages()), (0, 0), "case {i}");
    }
    assert_eq!(space.page_count(), 1, "only the info page is mapped");
    // An index past the last range names nothing, and a bad info buffer opens nothing.
    let count = tracker.guest_range_count() as u64;
    assert_eq!(
        call(&mut p, &mut space, tracker, sys::OPEN_PHYSMEM, [count, 0x1000_0000_1000, 0, 0, 0]),
        Err(SysError::NotFound)
    );
    let handles = p.handle_count();
    assert_eq!(call(&mut p, &mut space, tracker, sys::OPEN_PHYSMEM, [0, 0x1000, 0, 0, 0]), Err(SysError::Fault));
    assert_eq!(p.handle_count(), handles);
    // A guest-memory handle is no channel.
    assert_eq!(call(&mut p, &mut space, tracker, sys::WAIT_FOR_EVENT, [handle, 0, 0, 0, 0]), Err(SysError::NotSupp));
    assert_eq!(call(&mut p, &mut space, tracker, sys::CHANNEL_REPLY, [handle, 0, 0, 0, 0]), Err(SysError::NotSupp));
}

#[test]
fn a_process_without_the_right_sees_no_guest_memory() {
    let w = World::new(WorldConfig { vtpm: false, ..WorldConfig::default() });
    let tracker = w.svsm.pages();
    let mut p = Process::new(2, 16);
    let mut space = HostSpace::default();
    let info = call(
        &mut p,
        &mut space,
        tracker,
        sys::MMAP,
        [sys::NO_HANDLE, 0, 0, 4096, map::READ | map::WRITE | map::ANONYMOUS],
    )
    .unwrap();
    assert_eq!(call(&mut p, &mut space, tracker, sys::CAPABILITIES, [sys::caps::PHYSMEM_RANGES, 0, 0, 0, 0]), Ok(0));
    assert_eq!(call(&mut p, &mut space, tracker, sys::OPEN_PHYSMEM, [0, info, 0, 0, 0]), Err(SysError::Perm));
    assert_eq!(p.handle_count(), 0);
}
