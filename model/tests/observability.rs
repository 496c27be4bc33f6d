//! The Observability protocol's log read on the svm platform, where the log is the bare
//! console's ring, behind a lock other CPUs take to print.

use abi::result::ResultCode;
use bulwark_model::world::{MIB, PlatformKind, World, WorldConfig};
use guest::ocp::ReadOutcome;
use guest::{CallError, Transport};
use kernel::platform::Level;
use svm::hw::SvmHw;

/// The log is source 0 (docs/protocols/ocp.md).
const LOG: u32 = 0;

/// A console another CPU holds past the SVSM's wait is not the end of the log. Before,
/// the read answered 0 bytes, which every reader (the test guest, `bulwark ocp log`)
/// takes for "nothing more", so a busy moment cut the log short without a word. Now the
/// call is refused as "cannot be served now" and the same read later copies the bytes.
#[test]
fn a_busy_console_is_not_the_end_of_the_log() {
    let mut w = World::new(WorldConfig { platform: PlatformKind::Svm, ..WorldConfig::default() });
    let buffer = 2 * MIB;
    let busy = |w: &mut World, on: bool| w.svm.as_mut().expect("an svm world").host.log_busy = on;

    // The model's boot logs nothing at Info: a line from the platform, as a refused
    // guest access would log it.
    bulwark_model::svm_host::with_shared(&mut w, |shared, _| {
        shared.hw.log(Level::Warn, format_args!("svm: a line for the reader"))
    });
    busy(&mut w, true);
    let refused = w.client().ocp_read(LOG, buffer, 4096, 0);
    assert_eq!(refused, Err(CallError::Failed(ResultCode::ERR_INVALID_REQUEST)));

    busy(&mut w, false);
    let Ok(ReadOutcome::Copied(n)) = w.client().ocp_read(LOG, buffer, 4096, 0) else {
        panic!("the log reads once the console is free")
    };
    assert!(n > 0, "the boot logged something");
    let mut bytes = vec![0u8; n as usize];
    w.client().transport.read(buffer, &mut bytes).expect("the buffer is the guest's");
    assert_eq!(bytes, b"[Warn] svm: a line for the reader\n");
}

/// R9 is 32 bits wide, the log stream's offsets are not: after 4 GiB of log a reader
/// still reads on with the offsets it is given. Before, an offset past 4 GiB could not
/// be passed back (INVALID_PARAMETER, "bits above 31") and every read answered
/// DATA_LOST: one guest that made the SVSM log 4 GiB cut every reader off for good.
#[test]
fn the_log_reads_on_past_4_gib() {
    let mut w = World::new(WorldConfig::default());
    let buffer = 2 * MIB;
    // A long line keeps only the ring's last bytes, but counts whole: 4 GiB and a bit
    // of stream in a few thousand pushes.
    let long = vec![b'x'; 1 << 20];
    while w.machine.log_ring.written() < (1 << 32) + (1 << 20) {
        w.machine.log_ring.push(&long);
    }
    w.machine.log_ring.push(b"the newest line\n");
    let written = w.machine.log_ring.written();

    // An offset from long ago: DATA_LOST, with the oldest offset's low 32 bits.
    let lost = w.client().ocp_read(LOG, buffer, 4096, 0x10).expect("the call is served");
    let ReadOutcome::Lost { oldest } = lost else { panic!("bytes long overwritten: {lost:?}") };
    assert_eq!(u64::from(oldest), w.machine.log_ring.oldest() & 0xFFFF_FFFF);
    // Read on from there, as a reader does, to the end.
    let mut at = oldest;
    let mut text = Vec::new();
    loop {
        let got = w.client().ocp_read(LOG, buffer, 4096, at).expect("the call is served");
        let ReadOutcome::Copied(n) = got else { panic!("reading on from what the SVSM said: {got:?}") };
        if n == 0 {
            break;
        }
        let mut bytes = vec![0u8; n as usize];
        w.client().transport.read(buffer, &mut bytes).expect("the buffer is the guest's");
        text.extend_from_slice(&bytes);
        at = at.wrapping_add(n);
    }
    assert_eq!(u64::from(at), written & 0xFFFF_FFFF, "the end of the stream");
    assert!(text.ends_with(b"xthe newest line\n"), "the newest bytes last");
    assert_eq!(text.len() as u64, written - w.machine.log_ring.oldest(), "every byte the ring holds, once");
}
