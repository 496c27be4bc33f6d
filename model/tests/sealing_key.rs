//! The sealed store's key, derived by the PSP over the SVSM's own channel
//! (`Svsm::sealing_key`, MSG_KEY_REQ): stable for one launch, bound to it, refused beyond
//! it, and never given out after a broken exchange.

use bulwark_model::psp_model;
use bulwark_model::world::{World, WorldConfig};
use conformance::PspFault;
use kernel::psp_channel::ChannelError;

/// SVSM code runs with the bare-metal heap's limit (`bulwark_model::heap`).
#[global_allocator]
static HEAP: bulwark_model::heap::CountingHeap = bulwark_model::heap::CountingHeap;

fn world() -> World {
    World::new(WorldConfig { vtpm: false, ..WorldConfig::default() })
}

#[test]
fn the_same_launch_gets_the_same_key_and_another_svn_or_tcb_another() {
    let tcb = psp_model::identity().tcb;
    let mut w = world();
    let key = w.svsm.sealing_key(&mut w.machine, 0, tcb).expect("the PSP derives a key");
    assert_ne!(key, [0; 32]);
    assert_eq!(w.svsm.sealing_key(&mut w.machine, 0, tcb), Ok(key), "asked again");
    // A new boot of the same image on the same chip (a new world: a fresh PSP channel).
    let mut again = world();
    assert_eq!(again.svsm.sealing_key(&mut again.machine, 0, tcb), Ok(key), "after a reboot");
    // An older TCB (allowed: how a key survives a TCB update) is another key.
    let older = tcb - 1;
    let old_key = w.svsm.sealing_key(&mut w.machine, 0, older).expect("an older TCB is allowed");
    assert_ne!(old_key, key);
}

#[test]
fn a_key_beyond_the_launch_is_refused_and_the_channel_serves_on() {
    let tcb = psp_model::identity().tcb;
    let mut w = world();
    let invalid = Err(ChannelError::Status(abi::attest::guest_message::STATUS_INVALID_PARAM));
    assert_eq!(w.svsm.sealing_key(&mut w.machine, 1, tcb), invalid, "an SVN above the guest's");
    assert_eq!(w.svsm.sealing_key(&mut w.machine, 0, tcb + 1), invalid, "a TCB from the future");
    // A refusal is an answer: the sequence numbers are in step, the channel still works.
    assert!(w.svsm.sealing_key(&mut w.machine, 0, tcb).is_ok());
}

#[test]
fn a_forged_answer_gives_no_key_and_retires_the_channel() {
    let tcb = psp_model::identity().tcb;
    let mut w = world();
    w.machine.psp_fault = Some(PspFault::CorruptAnswer);
    assert!(matches!(w.svsm.sealing_key(&mut w.machine, 0, tcb), Err(ChannelError::BadAnswer(_))));
    // VMPCK0 is gone: nothing more comes from this channel, not even with an honest host.
    assert_eq!(w.svsm.sealing_key(&mut w.machine, 0, tcb), Err(ChannelError::Unavailable));
}

/// On SEV-SNP the key request names what the launch's own report names
/// (`Svsm::reported_key_params`): the guest SVN and the committed TCB, so the key is the
/// one the PSP derives for this launch's highest allowed values, and a forged report
/// gives nothing.
#[test]
fn the_key_parameters_come_from_the_launchs_report() {
    let mut w = world();
    let params = w.svsm.reported_key_params(&mut w.machine).expect("a report");
    assert_eq!(params.guest_svn, 0);
    assert_eq!(params.tcb_version, psp_model::identity().tcb, "the committed TCB");
    let key = w.svsm.sealing_key(&mut w.machine, params.guest_svn, params.tcb_version);
    assert_eq!(key, w.svsm.sealing_key(&mut w.machine, 0, psp_model::identity().tcb));
    assert!(key.is_ok());
    let mut forged = world();
    forged.machine.psp_fault = Some(PspFault::CorruptAnswer);
    assert!(forged.svsm.reported_key_params(&mut forged.machine).is_err());
}
