//! The migration stream fuzz harness: arbitrary bytes become a state stream for a
//! destination SVSM (`kernel::migration::stream`), mostly well-formed items with fields
//! the fuzzer picks (addresses from a pool of interesting ones: guest pages, the SVSM's
//! region, the startup vCPU's VMSA and calling area, pages a record made a VMSA), raw
//! bytes among them, fed in pieces of the fuzzer's sizes.
//!
//! The bytes come from an attested peer over an authenticated channel, so a finding here
//! is a bug a faulty source could trigger, not the host. After the stream, the harness
//! checks what the dispatcher harness checks (every VMSA out of the guest's reach, the
//! SVSM still serving), that no page of the SVSM's region is within any guest VMPL's
//! reach, that the SVSM's validation record agrees with the RMP on every page of guest
//! RAM, and that a stream that finished made every vCPU it carried. A panic anywhere is a finding. Used
//! by the cargo-fuzz target `stream` and by a hosted smoke test on random inputs.

use crate::fuzz::Input;
use crate::world::{self, MIB, World, WorldConfig};
use kernel::migration::stream::{self, Incoming, Item};

const RAM: u64 = 64 * MIB;

/// Addresses a record may name, with the page chosen by the input.
fn address(input: &mut Input<'_>) -> u64 {
    let page = u64::from(input.u8() % 8) << 12;
    match input.u8() % 8 {
        0 => world::STARTUP_VMSA_GPA,
        1 => world::STARTUP_CA_GPA & !0xFFF,
        2 => world::SVSM_BASE + page,
        3 => 2 * MIB + page,
        4 => 5 * MIB + page,
        5 => 6 * MIB + page,
        6 => RAM - 4096,
        _ => input.u64() & !0xFFF,
    }
}

/// A VMSA image: mostly one the SVSM would take, with fields the input picks.
fn vmsa(input: &mut Input<'_>) -> Vec<u8> {
    let mut v = abi::vmsa::Vmsa::zeroed();
    v.vmpl = input.u8() % 5;
    v.efer = if input.u8().is_multiple_of(4) { input.u64() } else { 0x500 | abi::hw::EFER_SVME };
    v.sev_features = if input.u8().is_multiple_of(4) { input.u64() } else { abi::hw::sev_features::SNP_ACTIVE };
    v.rip = input.u64();
    zerocopy::IntoBytes::as_bytes(&v).to_vec()
}

fn page(input: &mut Input<'_>) -> Vec<u8> {
    let fill = input.u8();
    vec![fill; 4096]
}

/// One item's body of `kind`.
fn body(input: &mut Input<'_>, kind: Item) -> Vec<u8> {
    let mut b = Vec::new();
    match kind {
        Item::Memory => {
            let count = u32::from(input.u8() % 4);
            b.extend_from_slice(b"BWMM");
            b.extend_from_slice(&count.to_be_bytes());
            for _ in 0..count {
                b.extend_from_slice(&address(input).to_be_bytes());
                // Flags: mostly none, sometimes "in a 2 MiB entry", rarely anything.
                b.push(match input.u8() % 16 {
                    0..=9 => 0,
                    10..=14 => 1,
                    _ => input.u8(),
                });
                for _ in 0..3 {
                    let perm = match input.u8() % 16 {
                        0 | 1 => 0xFF,
                        2 => input.u8(),
                        _ => abi::hw::rmpadjust::PERM_ALL,
                    };
                    b.push(perm);
                }
                b.extend_from_slice(&page(input));
            }
        }
        Item::Services => {
            let state = kernel::migration::ServiceState::default();
            b = state.encode().unwrap_or_default();
        }
        Item::Deposits => {
            let count = u32::from(input.u8() % 3);
            b.extend_from_slice(b"BWDP");
            b.extend_from_slice(&count.to_be_bytes());
            for _ in 0..count {
                b.extend_from_slice(&address(input).to_be_bytes());
                b.extend_from_slice(&u32::from(input.u8() % 4).to_be_bytes());
            }
        }
        Item::Vcpu => {
            b.extend_from_slice(b"BWVC");
            let apic_id = u32::from(input.u8() % 3);
            b.extend_from_slice(&apic_id.to_be_bytes());
            b.push(input.u8() % 4);
            let vmsa_at = address(input);
            b.extend_from_slice(&vmsa_at.to_be_bytes());
            let ca = address(input) | u64::from(input.u8() & 0xF8);
            b.extend_from_slice(&ca.to_be_bytes());
            for _ in 0..3 {
                b.push(input.u8() & 0xF);
            }
            b.extend_from_slice(&page(input));
            b.extend_from_slice(&vmsa(input));
        }
        Item::End => b.extend_from_slice(&u32::from(input.u8() % 3).to_be_bytes()),
    }
    // Now and then a byte too few or too many.
    match input.u8() % 16 {
        0 => {
            b.pop();
        }
        1 => b.push(input.u8()),
        _ => {}
    }
    b
}

/// The startup vCPU's record as the destination would take it, unless the input changes
/// a field (one time in four).
fn startup_vcpu(input: &mut Input<'_>) -> Vec<u8> {
    if input.u8().is_multiple_of(4) {
        return body(input, Item::Vcpu);
    }
    let mut v = abi::vmsa::Vmsa::zeroed();
    (v.vmpl, v.efer, v.sev_features, v.rip) =
        (1, 0x500 | abi::hw::EFER_SVME, abi::hw::sev_features::SNP_ACTIVE, input.u64());
    let mut b = b"BWVC".to_vec();
    b.extend_from_slice(&0u32.to_be_bytes());
    b.push(1);
    b.extend_from_slice(&world::STARTUP_VMSA_GPA.to_be_bytes());
    // Its own calling area, or one moved into another page.
    let ca = if input.u8().is_multiple_of(2) { world::STARTUP_CA_GPA } else { address(input) | 0x40 };
    b.extend_from_slice(&ca.to_be_bytes());
    b.extend_from_slice(&[abi::hw::rmpadjust::PERM_ALL, 0, 0]);
    b.extend_from_slice(&page(input));
    b.extend_from_slice(zerocopy::IntoBytes::as_bytes(&v));
    b
}

/// The items of a stream: mostly in the order a source sends them (so the fuzzer reaches
/// the vCPUs and deposits), sometimes any kinds and raw bytes.
fn items(input: &mut Input<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    let add = |bytes: &mut Vec<u8>, kind: Item, body: &[u8]| stream::frame(bytes, kind, body).is_ok();
    if !input.u8().is_multiple_of(4) {
        for _ in 0..input.u8() % 3 {
            let b = body(input, Item::Memory);
            add(&mut bytes, Item::Memory, &b);
        }
        let b = body(input, Item::Services);
        add(&mut bytes, Item::Services, &b);
        let b = startup_vcpu(input);
        add(&mut bytes, Item::Vcpu, &b);
        let b = body(input, Item::Deposits);
        add(&mut bytes, Item::Deposits, &b);
        let others = input.u8() % 3;
        for _ in 0..others {
            let b = body(input, Item::Vcpu);
            add(&mut bytes, Item::Vcpu, &b);
        }
        add(&mut bytes, Item::End, &(u32::from(others) + 1).to_be_bytes());
        return bytes;
    }
    for _ in 0..12 {
        if input.done() {
            break;
        }
        let kind = match input.u8() % 7 {
            0 | 1 => Item::Memory,
            2 => Item::Services,
            3 => Item::Deposits,
            4 => Item::Vcpu,
            5 => Item::End,
            _ => {
                let n = usize::from(input.u8() % 16);
                bytes.extend_from_slice(input.bytes(n));
                continue;
            }
        };
        let b = body(input, kind);
        add(&mut bytes, kind, &b);
    }
    bytes
}

/// Run one input: build a stream, feed it in pieces, finish it, check the SVSM.
pub fn run_stream(data: &[u8]) {
    crate::heap::reset_limit();
    let mut input = Input { data };
    let mut w = World::new(WorldConfig { ram_bytes: RAM, huge_from: RAM, vtpm: false, ..WorldConfig::default() });
    let bytes = items(&mut input);
    let mut incoming = Incoming::new();
    let mut rest = &bytes[..];
    let mut failed = false;
    while !rest.is_empty() && !failed {
        let n = (usize::from(input.u8()) * 97 + 1).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        let w = &mut w;
        failed = crate::heap::in_svsm(|| incoming.take(&w.svsm, &mut w.machine, piece)).is_err();
    }
    let applied = incoming.vcpus();
    let finished = incoming.finish().is_ok();
    crate::heap::reset_limit();
    if finished {
        // A stream that finished made every vCPU it carried: the startup vCPU (restored,
        // not made) and the others.
        assert_eq!(w.svsm.vcpus().count(), applied as usize, "vCPUs after a finished stream");
    }
    check_records(&mut w);
    crate::fuzz::check(&mut w);
}

/// The SVSM's validation record and the RMP agree on every page of guest RAM, and no
/// page of the SVSM's region is within reach of any guest VMPL.
fn check_records(w: &mut World) {
    for pfn in 0..RAM >> 12 {
        let Some(page) = kernel::addr::PageAddr::new(pfn << 12) else { continue };
        let recorded = w.svsm.pages().is_validated(page);
        let hardware = w.machine.rmp.entry(pfn).is_some_and(|e| e.validated);
        assert_eq!(recorded, hardware, "page {:#x}: recorded {recorded}, RMP {hardware}", pfn << 12);
    }
    let svsm = w.svsm.pages().svsm_region();
    for pfn in svsm.start_pfn()..svsm.end_pfn() {
        for vmpl in 1..=3 {
            let reach = w.machine.rmp.allows(pfn, vmpl, abi::hw::rmpadjust::PERM_READ);
            assert!(!reach, "SVSM page {:#x} readable at VMPL{vmpl}", pfn << 12);
        }
    }
}
