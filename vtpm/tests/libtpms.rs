//! libtpms through the engine trait: manufacturing, real commands, malformed input.
#![cfg(feature = "libtpms")]

use bulwark_vtpm::libtpms::{LibTpms, OpenError};
use bulwark_vtpm::wire::{self, Command, ResponseHeader};
use bulwark_vtpm::{TpmEngine, Vtpm};
use std::sync::Mutex;

/// libtpms is one global TPM: tests in this process take turns.
static ONE_TPM: Mutex<()> = Mutex::new(());

fn code(response: &[u8]) -> u32 {
    ResponseHeader::parse(response).expect("a response header").code
}

#[test]
fn manufacturing_gives_an_rsa_2048_ek_that_create_primary_reproduces() {
    let _turn = ONE_TPM.lock().unwrap_or_else(|e| e.into_inner());
    let tpm = LibTpms::open(4087).expect("libtpms starts");
    assert!(tpm.buffer_size() <= 4087, "libtpms took {} bytes", tpm.buffer_size());
    let mut vtpm = Vtpm::manufacture(Box::new(tpm)).expect("manufactured");
    let ek = vtpm.ek_public().to_vec();
    // The template with its unique field replaced by the 256-byte modulus.
    let template = bulwark_vtpm::ek_template();
    assert_eq!(ek.len(), template.len());
    assert_eq!(ek[..template.len() - 256], template[..template.len() - 256]);
    assert_ne!(ek[template.len() - 256..], [0u8; 256]);

    // A second CreatePrimary from the same template gives the same key.
    let r = vtpm_run(&mut vtpm, &bulwark_vtpm::create_ek_command());
    assert_eq!(code(&r), 0);
    assert_eq!(bulwark_vtpm::create_primary_result(&r).map(|(_, public)| public), Some(&ek[..]));

    // GetRandom(16): 16 bytes come back.
    let mut g = Command::new(wire::TPM_ST_NO_SESSIONS, wire::TPM_CC_GET_RANDOM);
    g.u16(16);
    let r = vtpm_run(&mut vtpm, &g.finish());
    assert_eq!(code(&r), 0);
    assert_eq!(u16::from_be_bytes([r[10], r[11]]), 16);
}

#[test]
fn malformed_commands_get_the_tpms_own_error_and_the_tpm_keeps_working() {
    let _turn = ONE_TPM.lock().unwrap_or_else(|e| e.into_inner());
    let mut tpm = LibTpms::open(4087).expect("libtpms starts");
    assert_eq!(LibTpms::open(4087).unwrap_err(), OpenError::AlreadyOpen);
    let mut startup = Command::new(wire::TPM_ST_NO_SESSIONS, wire::TPM_CC_STARTUP);
    startup.u16(wire::TPM_SU_CLEAR);
    assert_eq!(code(&engine_run(&mut tpm, &startup.finish())), 0);
    for bad in [&[][..], &[0x80][..], &[0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x44][..], &[0xFF; 64][..]] {
        let r = engine_run(&mut tpm, bad);
        let h = ResponseHeader::parse(&r).expect("an error response");
        assert_ne!(h.code, 0, "{bad:02x?} was accepted");
        assert_eq!(h.size as usize, r.len());
    }
    // A size field larger than the bytes sent.
    let r = engine_run(&mut tpm, &[0x80, 0x01, 0, 0, 0x10, 0, 0, 0, 0x01, 0x7B, 0, 8]);
    assert_ne!(code(&r), 0);
    let mut g = Command::new(wire::TPM_ST_NO_SESSIONS, wire::TPM_CC_GET_RANDOM);
    g.u16(8);
    assert_eq!(code(&engine_run(&mut tpm, &g.finish())), 0);
}

/// One command through the engine; the response bytes.
fn engine_run(tpm: &mut LibTpms, command: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 4092];
    let n = TpmEngine::execute(tpm, command, &mut out);
    out.truncate(n);
    out
}

/// One guest command through the vTPM; the response bytes.
fn vtpm_run(vtpm: &mut Vtpm, command: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 4092];
    let n = vtpm.execute(command, &mut out);
    out.truncate(n);
    out
}

/// NV storage that keeps blobs in a map shared with the test, as the sealed store would.
#[derive(Clone, Default)]
struct MapStorage(std::sync::Arc<Mutex<bulwark_vtpm::NvBlobs>>);

impl bulwark_vtpm::NvStorage for MapStorage {
    fn persist(&mut self, changes: &[bulwark_vtpm::NvChange]) -> Result<(), bulwark_vtpm::NvError> {
        let mut map = self.0.lock().unwrap();
        for c in changes {
            match &c.data {
                Some(d) => map.insert(c.name.clone(), d.clone()),
                None => map.remove(&c.name),
            };
        }
        Ok(())
    }
}

#[test]
fn a_tpm_started_again_from_its_kept_nv_state_has_its_seeds_indices_and_persistent_keys() {
    use bulwark_vtpm::commands::{evict_control, nv_define_space, nv_read, nv_read_result, nv_write};
    let _turn = ONE_TPM.lock().unwrap_or_else(|e| e.into_inner());
    let storage = MapStorage::default();
    let (ek, kept_after_start) = {
        let tpm = LibTpms::open_with_nv(4087, Default::default()).expect("libtpms starts");
        let mut vtpm = Vtpm::start(Box::new(tpm), Box::new(storage.clone())).expect("manufactured");
        let permall = storage.0.lock().unwrap().get(&b"permall"[..]).cloned().expect("permall kept at start");
        println!("a new TPM's permall: {} bytes", permall.len());
        assert_eq!(code(&vtpm_run(&mut vtpm, &nv_define_space(0x0150_0001, 32))), 0);
        assert_eq!(code(&vtpm_run(&mut vtpm, &nv_write(0x0150_0001, 0, b"kept across a restart"))), 0);
        let r = vtpm_run(&mut vtpm, &bulwark_vtpm::create_ek_command());
        let (handle, _) = bulwark_vtpm::create_primary_result(&r).expect("EK created");
        assert_eq!(code(&vtpm_run(&mut vtpm, &evict_control(handle, 0x8101_0001))), 0);
        (vtpm.ek_public().to_vec(), storage.0.lock().unwrap().clone())
    };
    assert_ne!(kept_after_start.get(&b"permall"[..]).map(Vec::len), None);

    // The next start, from what the storage kept.
    let tpm = LibTpms::open_with_nv(4087, kept_after_start).expect("libtpms starts again");
    let mut vtpm = Vtpm::start(Box::new(tpm), Box::new(storage.clone())).expect("started again");
    assert_eq!(vtpm.ek_public(), &ek[..], "the endorsement seed survived: same EK");
    let r = vtpm_run(&mut vtpm, &nv_read(0x0150_0001, 0, 21));
    assert_eq!(code(&r), 0);
    assert_eq!(nv_read_result(&r), Some(&b"kept across a restart"[..]));
    let r = vtpm_run(&mut vtpm, &bulwark_vtpm::commands::read_public(0x8101_0001));
    assert_eq!(code(&r), 0);
    assert_eq!(bulwark_vtpm::commands::read_public_result(&r), Some(&ek[..]), "the persistent EK is there");

    // A TPM started from nothing is another TPM: another EK.
    drop(vtpm);
    let tpm = LibTpms::open_with_nv(4087, Default::default()).expect("libtpms starts");
    let fresh = Vtpm::start(Box::new(tpm), Box::new(MapStorage::default())).expect("manufactured");
    assert_ne!(fresh.ek_public(), &ek[..]);
}

/// A password authorization area for `password`.
fn password(c: &mut Command, password: &[u8]) {
    c.u32(9 + password.len() as u32).u32(wire::TPM_RS_PW).u16(0).u8(0).sized(password);
}

/// TPM2_GetCapability of TPM_PT_LOCKOUT_COUNTER: the dictionary-attack failure count.
fn lockout_counter(vtpm: &mut Vtpm) -> u32 {
    let mut c = Command::new(wire::TPM_ST_NO_SESSIONS, 0x0000_017A);
    c.u32(6).u32(0x20E).u32(1); // TPM_CAP_TPM_PROPERTIES, TPM_PT_LOCKOUT_COUNTER, one
    let r = vtpm_run(vtpm, &c.finish());
    assert_eq!(code(&r), 0);
    // header, moreData, capability, count, property, value
    assert_eq!(u32::from_be_bytes(r[19..23].try_into().unwrap()), 0x20E);
    u32::from_be_bytes(r[23..27].try_into().unwrap())
}

#[test]
fn hierarchy_auth_values_and_the_dictionary_attack_state_survive_a_restart() {
    let _turn = ONE_TPM.lock().unwrap_or_else(|e| e.into_inner());
    let storage = MapStorage::default();
    let index = 0x0150_0002u32;
    let kept = {
        let tpm = LibTpms::open_with_nv(4087, Default::default()).expect("libtpms starts");
        let mut vtpm = Vtpm::start(Box::new(tpm), Box::new(storage.clone())).expect("manufactured");
        // The owner's auth value becomes "owner-secret".
        let mut c = Command::new(wire::TPM_ST_SESSIONS, 0x0000_0129); // HierarchyChangeAuth
        c.u32(bulwark_vtpm::commands::TPM_RH_OWNER).password_auth().sized(b"owner-secret");
        assert_eq!(code(&vtpm_run(&mut vtpm, &c.finish())), 0);
        // An index under dictionary-attack protection (AUTHREAD | AUTHWRITE, no NO_DA),
        // its auth value "pw", defined with the new owner auth.
        let mut c = Command::new(wire::TPM_ST_SESSIONS, 0x0000_012A);
        c.u32(bulwark_vtpm::commands::TPM_RH_OWNER);
        password(&mut c, b"owner-secret");
        c.sized(b"pw").u16(14).u32(index).u16(0x000B).u32((1 << 2) | (1 << 18)).u16(0).u16(8);
        assert_eq!(code(&vtpm_run(&mut vtpm, &c.finish())), 0);
        // Reads with a wrong password: failures counted (libtpms' default allows few).
        for _ in 0..2 {
            let mut c = Command::new(wire::TPM_ST_SESSIONS, 0x0000_014E);
            c.u32(index).u32(index);
            password(&mut c, b"wrong");
            c.u16(8).u16(0);
            let rc = code(&vtpm_run(&mut vtpm, &c.finish()));
            assert_ne!(rc, 0, "a wrong password was accepted");
        }
        let failures = lockout_counter(&mut vtpm);
        assert!(failures >= 1, "no failure was counted");
        (storage.0.lock().unwrap().clone(), failures)
    };
    let (kept, failures) = kept;
    let tpm = LibTpms::open_with_nv(4087, kept).expect("libtpms starts again");
    let mut vtpm = Vtpm::start(Box::new(tpm), Box::new(storage)).expect("started again");
    // The failures are still counted (a restart without an orderly shutdown may add one).
    let after = lockout_counter(&mut vtpm);
    assert!(after >= failures, "the dictionary-attack count went from {failures} to {after}");
    // The owner's auth value is still "owner-secret": the empty one is refused.
    let define = |auth: &[u8], at: u32| {
        let mut c = Command::new(wire::TPM_ST_SESSIONS, 0x0000_012A);
        c.u32(bulwark_vtpm::commands::TPM_RH_OWNER);
        password(&mut c, auth);
        c.u16(0).u16(14).u32(at).u16(0x000B).u32((1 << 1) | (1 << 17) | (1 << 25)).u16(0).u16(8);
        c.finish()
    };
    assert_ne!(code(&vtpm_run(&mut vtpm, &define(b"", 0x0150_0003))), 0, "the empty owner auth was accepted");
    assert_eq!(code(&vtpm_run(&mut vtpm, &define(b"owner-secret", 0x0150_0003))), 0);
}
