//! The sealed state at boot, on either platform: the store's key from the PSP, the state
//! disk found and its store opened (formatted if blank, re-wrapped if an older TCB's key
//! sealed it), and the vTPM started on it (docs/persistence.md).

use super::disk::{DiskError, VirtioDisk};
use super::{clock, cpu, vtpm};
use kernel::platform::Platform;
use kernel::sealed::KeyParams;
use kernel::svsm::Svsm;
use virtio_drivers::transport::Transport;

/// What became of the sealed state at boot.
pub enum Sealed {
    Open(kernel::sealed::SharedSealed),
    /// No state disk: each boot is a new vTPM.
    NoDisk,
    /// A disk whose store this SVSM cannot open (another key, tampered, unreadable): the
    /// services that keep state there do not start (fail closed).
    Refused,
}

/// Ask the PSP for the sealed store's key for `params` (bound to this launch), labelled
/// with them; with the first 8 bytes of the key's SHA-256 (a fingerprint to compare).
fn sealing_key<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, params: KeyParams) -> Option<(store::StoreKey, u64)> {
    use sha2::{Digest, Sha256};
    match svsm.sealing_key(p, params.guest_svn, params.tcb_version) {
        Ok(mut key) => {
            let digest = Sha256::digest(key);
            let mut fingerprint = [0u8; 8];
            fingerprint.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
            let store_key = store::StoreKey::labelled(key, params.label());
            key.fill(0);
            Some((store_key, u64::from_be_bytes(fingerprint)))
        }
        Err(e) => {
            println!("sealing: no key from the PSP for {params:?}: {e:?}");
            None
        }
    }
}

/// Open the sealed store on the disk `find` starts (given the platform), with the key of
/// this launch, printing what a relying party would want to know of it. The key request
/// names the guest SVN and committed TCB of a report the PSP signs now
/// (`Svsm::reported_key_params`), on either platform: the PSP derives keys for those or
/// lower values only. The key's fingerprint is printed too: `cargo xtask test` checks that
/// two boots of one image get the same key. Without a key a disk is refused; without a
/// disk the key is not needed.
pub fn open<P: Platform + ?Sized, T: Transport + Send + 'static>(
    svsm: &Svsm,
    p: &mut P,
    find: impl FnOnce(&mut P) -> Result<VirtioDisk<T>, DiskError>,
) -> Sealed {
    let current = match svsm.reported_key_params(p) {
        Ok(params) => Some(params),
        Err(e) => {
            println!("sealing: no attestation report to name the key's SVN and TCB ({e:?})");
            None
        }
    };
    let keyed = current.and_then(|current| {
        let (key, fingerprint) = sealing_key(svsm, p, current)?;
        println!(
            "sealing: the PSP derives the sealed store's key, bound to the launch's measurement and policy (SHA-256 fingerprint {fingerprint:016x})"
        );
        Some((current, key))
    });
    let started = clock::monotonic_ns();
    let disk = match find(p) {
        Ok(disk) => disk,
        Err(DiskError::Absent) => {
            println!("sealed: no state disk (virtio-blk, serial bulwark-state); the vTPM's state lasts one boot");
            return Sealed::NoDisk;
        }
        Err(e) => {
            println!("sealed: the state disk could not be started ({e:?})");
            return Sealed::Refused;
        }
    };
    let Some((current, key)) = keyed else {
        println!("sealed: no key for the state disk");
        return Sealed::Refused;
    };
    let mib = disk.bytes() >> 20;
    let entropy = |buf: &mut [u8]| -> Result<(), store::EntropyError> {
        for chunk in buf.chunks_mut(8) {
            let word = cpu::rdrand().ok_or(store::EntropyError)?.to_le_bytes();
            chunk.copy_from_slice(word.get(..chunk.len()).ok_or(store::EntropyError)?);
        }
        Ok(())
    };
    let older_key = |params| sealing_key(svsm, p, params).map(|(key, _)| key);
    match kernel::sealed::open_sealed(disk, current, &key, older_key, entropy) {
        Ok(opened) => {
            let store = opened.store;
            let state = store.state();
            let ms = (clock::monotonic_ns() - started) / 1_000_000;
            let how = match (opened.how, opened.rewrapped_from) {
                (_, Some(_)) => "opened, verified and re-wrapped under this launch's key",
                (store::Opened::Existing, None) => "opened and verified",
                (store::Opened::Formatted, None) => "formatted (the disk was blank)",
            };
            if let Some(from) = opened.rewrapped_from {
                println!(
                    "sealed: the state was under the key of an older TCB or SVN ({from:?}, now {current:?}): re-wrapped"
                );
            }
            let mut root = [0u8; 8];
            root.copy_from_slice(state.root.get(..8).unwrap_or(&[0; 8]));
            println!(
                "sealed: state disk of {mib} MiB {how} in {ms} ms: generation {}, {} blobs, root {:016x}",
                state.generation,
                store.len(),
                u64::from_be_bytes(root)
            );
            Sealed::Open(kernel::sealed::Sealed::opened(alloc::boxed::Box::new(store), opened.rewrapped_from.is_some()))
        }
        Err(e) => {
            println!("sealed: the state disk's store is refused: {e:?}");
            Sealed::Refused
        }
    }
}

/// Start the vTPM on what `sealed` came to: from its NV state in the store, manufactured
/// anew without a disk, or not at all on a store that was refused.
pub fn start_vtpm<P: Platform + ?Sized>(svsm: &mut Svsm, p: &mut P, sealed: Sealed) {
    let started = clock::monotonic_ns();
    let vtpm = match sealed {
        Sealed::Open(sealed) => {
            svsm.install_sealed(p, sealed.clone());
            vtpm::start_sealed(sealed)
        }
        Sealed::NoDisk => vtpm::manufacture().map(|v| (v, true)),
        Sealed::Refused => {
            Err("its sealed state could not be opened; the vTPM does not start on state it cannot trust")
        }
    };
    match vtpm {
        Ok((v, new)) => {
            let ms = (clock::monotonic_ns() - started) / 1_000_000;
            let how = if new { "manufactured" } else { "started from its sealed NV state" };
            println!(
                "vtpm: libtpms {how} in {ms} ms in its service process at CPL 3; its EK (RSA-2048, TCG template L-1) is in the attestation manifest"
            );
            svsm.install_vtpm(v);
        }
        Err(e) => println!("vtpm: {e}; protocol 2 is not served"),
    }
}
