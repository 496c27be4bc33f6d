//! Fuzz a migration peer's evidence as the SVSM checks it (`migrate::evidence`): a report
//! and three certificates from anyone, before any attestation. The SVSM verifies only
//! with `VERIFY_HEAP` free, because x509-cert and rsa allocate without failing
//! gracefully; the bounds on what they parse are what keep them inside it. Here the heap
//! leaves exactly that much: an input that makes them take more aborts the run (the
//! counting heap refuses, and the allocation cannot fail), as it would abort the SVSM.
#![no_main]

use bulwark_abi::attest::REPORT_SIZE;
use bulwark_abi::attest::cert_table::{ARK, ASK, VCEK};
use bulwark_attest::chain::TestAuthority;
use bulwark_model::heap;
use migrate::evidence::{ReportVerifier, VERIFY_HEAP};
use migrate::session::{PeerVerifier, REPORT_DATA_LEN};

#[path = "pieces.rs"]
mod pieces;
use pieces::piece;

/// SVSM code runs with the bare-metal heap's limit.
#[global_allocator]
static HEAP: heap::CountingHeap = heap::CountingHeap;

fn heap_free() -> usize {
    heap::usage().map_or(usize::MAX, |u| u.size.saturating_sub(u.used) as usize)
}

/// The certificate in a slot: the fuzzer's bytes (`0`), the authority's own (`1`), or
/// the authority's with one byte changed where the fuzzer says (`2`, `3`): the real
/// chain gets the parser and the signature checks past the first certificate.
fn certificate(mode: u8, real: &[u8], data: &mut &[u8]) -> Vec<u8> {
    let given = piece(data);
    match mode & 3 {
        0 => given.to_vec(),
        1 => real.to_vec(),
        _ => {
            let mut cert = real.to_vec();
            let at = given.first_chunk::<2>().map_or(0, |b| usize::from(u16::from_le_bytes(*b)));
            let flip = given.get(2).copied().unwrap_or(1).max(1);
            if let Some(len) = core::num::NonZeroUsize::new(cert.len())
                && let Some(byte) = cert.get_mut(at % len)
            {
                *byte ^= flip;
            }
            cert
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let authority = TestAuthority::shared();
    // The certificates (see `certificate`) in the host's table; the report is the rest,
    // padded or cut to a report's size.
    let mode = data.first().copied().unwrap_or(0);
    data = data.get(1..).unwrap_or_default();
    let ark = certificate(mode, authority.ark_der(), &mut data);
    let ask = certificate(mode >> 2, authority.ask_der(), &mut data);
    let vcek = piece(&mut data);
    let Ok(table) = bulwark_attest::cert_table::encode(&[(&ARK, &ark), (&ASK, &ask), (&VCEK, vcek)]) else {
        return;
    };
    let mut report = data.to_vec();
    report.resize(REPORT_SIZE, 0);
    let Some(evidence) = migrate::evidence::encode(&report, &table) else { return };
    // Trusting the test authority's ARK, as a migration on the svm platform does.
    let root = ReportVerifier::root_of(authority.ark_der()).expect("the authority's ARK parses");
    let verifier = ReportVerifier::new(vec![root]).with_heap_check(heap_free);
    let expected = [0u8; REPORT_DATA_LEN];
    heap::in_svsm(|| {
        heap::leave_room(VERIFY_HEAP);
        let _ = verifier.verify(&evidence, &expected);
        let _ = ReportVerifier::root_of(&ark);
        heap::reset_limit();
    });
});
