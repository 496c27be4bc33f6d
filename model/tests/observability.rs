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
