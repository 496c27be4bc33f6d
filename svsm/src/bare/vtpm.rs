//! The vTPM on bare metal: libtpms and libcrypto run in a service process at CPL 3
//! (services/vtpm), packaged into the image. The kernel keeps the protocol checks and
//! copies (kernel/src/protocols/vtpm.rs); its engine hands each command to the process
//! over a channel and runs the process on the calling CPU until it has replied and waits
//! again. A process that faults, exits or overruns its budget is ended: every later vTPM
//! call gets TPM_RC_FAILURE (docs/syscalls.md says why there is no restart), and every
//! other protocol goes on.

use super::user::{Ended, Loaded, PageAligned};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use kernel::sealed::{SharedSealed, VtpmNv};
use kernel::user::Object;
use kernel::user::channel::Channel;
use kernel::user::service_tpm::{CplCost, ServiceTpm, StartError};
use vtpm::nv::{NvChange, NvError, TpmState};
use vtpm::{NvBlobs, TpmEngine, Vtpm};

/// The vTPM service module, packaged into the image by `cargo xtask` (empty when the
/// SVSM is built without it).
static VTPM: &PageAligned<[u8]> = &PageAligned(*include_bytes!(concat!(env!("OUT_DIR"), "/vtpm.elf")));

/// The service's process id, and the pages it may have mapped: its code shared with
/// the image (about 830 pages), data (about 150), stack and thread page, and what it
/// MMAPs (a 2 MiB heap, the 256 KiB request buffer, the response buffer).
const PROCESS_ID: u32 = 100;
const PAGE_QUOTA: u64 = 1800;
/// Most pages of the SVSM's heap the process may hold: its data and bss (about 150), the
/// 2 MiB heap (512), the request and response buffers (about 66), stack and thread page
/// (17) and its page tables, about 750 in all, with room to spare. The quota above
/// counts its code too (shared with the image, no heap), which a compromised service
/// could unmap to map that much heap memory instead: this bounds what it can take from
/// the rest of the SVSM (3.5 MiB of the 6 MiB heap).
const MEMORY_LIMIT: u64 = 900;
/// How long one command (or the start) may run: RSA key generation under TCG takes
/// seconds; a process still running after this is treated as hung.
const BUDGET_MS: u64 = 120_000;

/// The engine the kernel's vTPM protocol calls: the service process behind a channel,
/// run on the calling CPU until it answers.
type ProcessTpm = ServiceTpm<RunService>;
/// Runs the service process until it waits again; false once it has ended.
type RunService = Box<dyn FnMut() -> bool + Send>;

/// Load a vTPM service process and start its engine from `nv` (empty: a new TPM).
fn start(id: u32, nv: &NvBlobs) -> Result<ProcessTpm, &'static str> {
    let (channel, run) = load(id)?;
    ServiceTpm::start(channel, run, nv).map_err(start_error)
}

/// The service's engine, with what CPL 3 costs it logged: each command's round trip
/// (post it, run the process until it answers, take the answer) beside the engine's own
/// cycles as the service timed them, per command code in windows ([`CplCost`]). The
/// difference is what the process boundary adds: what libtpms linked into the SVSM at
/// ring 0 would not pay. `cargo xtask bench` reads these lines.
struct Timed {
    engine: ProcessTpm,
    cost: CplCost,
}

impl Timed {
    fn new(engine: ProcessTpm) -> Box<Self> {
        Box::new(Self { engine, cost: CplCost::default() })
    }
}

impl TpmEngine for Timed {
    fn execute(&mut self, command: &[u8], response: &mut [u8]) -> usize {
        let start = super::cpu::rdtsc();
        let n = self.engine.execute(command, response);
        let round_trip = super::cpu::rdtsc().saturating_sub(start);
        let code = command.get(6..10).and_then(|c| <[u8; 4]>::try_from(c).ok()).map_or(0, u32::from_be_bytes);
        if let Some(w) = self.cost.record(code, round_trip, self.engine.last_engine_cycles()) {
            let permille = w.round_trip.saturating_mul(1000) / w.engine.max(1);
            println!(
                "vtpm: CPL 3 cost: code={:#x} commands={} round_trip_cycles={} engine_cycles={} (round trip / engine = {}.{:03}; report {} of at most {})",
                w.code,
                w.commands,
                w.round_trip,
                w.engine,
                permille / 1000,
                permille % 1000,
                w.report,
                CplCost::REPORTS
            );
        }
        n
    }

    fn take_nv_changes(&mut self) -> Result<Vec<NvChange>, NvError> {
        self.engine.take_nv_changes()
    }

    fn save_state(&mut self) -> Result<TpmState, NvError> {
        self.engine.save_state()
    }
}

/// Load a vTPM service process: the channel to it and the closure that runs it.
fn load(id: u32) -> Result<(Arc<Channel>, RunService), &'static str> {
    if VTPM.0.is_empty() {
        return Err("no vTPM service module in this image (built without `cargo xtask`)");
    }
    let channel = Arc::new(Channel::default());
    let mut service =
        Loaded::new(id, PAGE_QUOTA, MEMORY_LIMIT, &VTPM.0, alloc::vec![Object::Channel(channel.clone())], 0)
            .map_err(|_| "the vTPM service module did not load")?;
    let mut reported = false;
    let run: RunService = Box::new(move || match service.run(BUDGET_MS, None, None) {
        Ended::Blocked => {
            if !core::mem::replace(&mut reported, true) {
                println!(
                    "vtpm: its service process holds {} pages of the SVSM's heap (at most {MEMORY_LIMIT})",
                    service.svsm_pages()
                );
            }
            true
        }
        ended => {
            println!("vtpm: the service process ended ({ended:?}); vTPM calls now get TPM_RC_FAILURE");
            false
        }
    });
    Ok((channel, run))
}

fn start_error(e: StartError) -> &'static str {
    match e {
        StartError::StateTooLarge => "the kept state does not fit the start message",
        StartError::Service => "the vTPM service process did not start",
        StartError::Engine(_) => "libtpms refused the kept state",
    }
}

/// Continue, in a new service process, the vTPM a migration's source saved: the same EK,
/// NV indices, persistent and loaded objects. No NV storage yet: the destination gives it
/// its sealed store (`Vtpm::keep_in`) only once the guest is its own. The state's copies
/// can fail for heap; the process's channel and boxes are small and fixed, and the caller
/// makes sure the heap has room for them (`migration::ready_to_run`).
pub fn resume(snapshot: &kernel::migration::VtpmSnapshot) -> Result<Vtpm, &'static str> {
    let ek_public = kernel::heap::copy_of(&snapshot.ek_public).map_err(|_| "no heap for its EK")?;
    let (channel, run) = load(PROCESS_ID)?;
    let engine = ServiceTpm::resume(channel, run, &snapshot.state).map_err(start_error)?;
    Vtpm::resume(Timed::new(engine), ek_public, &snapshot.state.nv, None)
        .map_err(|_| "resuming the migrated vTPM failed")
}

/// Start the vTPM service process and manufacture a vTPM through it (Startup, EK), with
/// no NV storage: each boot is a new TPM.
pub fn manufacture() -> Result<Vtpm, &'static str> {
    Vtpm::manufacture(Timed::new(start(PROCESS_ID, &NvBlobs::new())?)).map_err(|_| "manufacturing the vTPM failed")
}

/// Start the vTPM from what the sealed state keeps for it (or manufacture a new one
/// there): the EK, NV indices, persistent objects and dictionary-attack state survive a
/// reboot. Says whether the TPM was new.
pub fn start_sealed(sealed: SharedSealed) -> Result<(Vtpm, bool), &'static str> {
    let (kept, storage) = VtpmNv::open(sealed);
    if kept.moved {
        return Err("the vTPM this sealed state kept left by live migration; it never starts here again");
    }
    let new = kept.ek_public.is_none();
    let engine = start(PROCESS_ID, &kept.nv)?;
    let vtpm = Vtpm::start(Timed::new(engine), Box::new(storage)).map_err(|e| match e.step {
        "persisting the NV state" if new => "the new vTPM's state could not be written to the sealed store",
        "persisting the NV state" => "the kept vTPM's EK is not the one its sealed state records, or the store failed",
        _ => "starting the vTPM failed",
    })?;
    Ok((vtpm, new))
}

/// A command code the service treats as "fault now" (services/vtpm: a wild store).
const FAULT_COMMAND_CODE: u32 = 0x2000_0bad;
/// TPM_RC_FAILURE, the answer to every call once the service is gone.
const TPM_RC_FAILURE: u32 = 0x101;

/// Crash isolation, checked at every boot on a throwaway instance (before the real one
/// starts, so its memory is back first): a service that faults is ended, its vTPM
/// answers TPM_RC_FAILURE from then on, and the SVSM goes on. True if all of that held;
/// the verdict is printed (`cargo xtask boot` looks for it).
pub fn crash_check() -> bool {
    let held = crash_isolated();
    if held {
        println!(
            "vtpm: crash check passed: a vTPM service process that faults is ended, its calls get TPM_RC_FAILURE, the SVSM serves on"
        );
    } else {
        println!("vtpm: crash check FAILED");
    }
    held
}

fn crash_isolated() -> bool {
    let Ok(engine) = start(PROCESS_ID + 1, &NvBlobs::new()) else { return false };
    let mut vtpm = Vtpm::with_ek(Box::new(engine), Vec::new());
    let mut command = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0];
    if let Some(code) = command.get_mut(6..10) {
        code.copy_from_slice(&FAULT_COMMAND_CODE.to_be_bytes());
    }
    let get_random = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];
    let mut response = [0u8; 64];
    let failure = |vtpm: &mut Vtpm, command: &[u8], response: &mut [u8; 64]| {
        let n = vtpm.execute(command, response);
        n == 10 && response.get(6..10) == Some(&TPM_RC_FAILURE.to_be_bytes())
    };
    failure(&mut vtpm, &command, &mut response) && failure(&mut vtpm, &get_random, &mut response)
}
