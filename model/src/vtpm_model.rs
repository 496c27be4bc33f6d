//! The model's vTPM: libtpms, as on bare metal, shared by every model machine of the
//! process because libtpms keeps one TPM in global state. It is manufactured on first use;
//! later machines get the same engine and EK (TPM state such as PCRs carries over between
//! machines of one process, as it would across guest reboots without a TPM reset).

use std::sync::{Arc, Mutex, OnceLock};
use vtpm::libtpms::LibTpms;
use vtpm::{TpmEngine, Vtpm};

/// An engine handle that takes turns on the process's one libtpms.
#[derive(Clone, Debug)]
pub struct SharedTpm(Arc<Mutex<LibTpms>>);

impl TpmEngine for SharedTpm {
    fn execute(&mut self, command: &[u8], response: &mut [u8]) -> usize {
        // A test that panicked while holding the TPM leaves it usable: libtpms finished or
        // never started the command.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).execute(command, response)
    }
}

static SHARED: OnceLock<Result<(SharedTpm, Vec<u8>), String>> = OnceLock::new();

fn shared() -> Result<&'static (SharedTpm, Vec<u8>), String> {
    SHARED
        .get_or_init(|| {
            let tpm = LibTpms::open(abi::vtpm::MAX_COMMAND_SIZE as u32).map_err(|e| format!("libtpms: {e:?}"))?;
            let engine = SharedTpm(Arc::new(Mutex::new(tpm)));
            let vtpm = Vtpm::manufacture(Box::new(engine.clone())).map_err(|e| format!("manufacture: {e:?}"))?;
            Ok((engine, vtpm.ek_public().to_vec()))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A vTPM for a new model machine: the process's libtpms with its EK.
pub fn vtpm() -> Result<Vtpm, String> {
    let (engine, ek) = shared()?;
    Ok(Vtpm::with_ek(Box::new(engine.clone()), ek.clone()))
}

/// A vTPM whose engine is a service process (`user_host`): the kernel hands each command
/// over a channel to the process, which runs the process's libtpms.
pub fn vtpm_in_process() -> Result<Vtpm, String> {
    let (engine, ek) = shared()?;
    let engine = engine.clone();
    let service = crate::user_host::channel_tpm(move |_| Ok(engine), &vtpm::NvBlobs::new())
        .map_err(|e| format!("the vTPM service did not start: {e:?}"))?;
    Ok(Vtpm::with_ek(Box::new(service), ek.clone()))
}

/// The process's engine, for host tools that talk to the TPM directly (benchmarks).
pub fn engine() -> Result<SharedTpm, String> {
    shared().map(|(engine, _)| engine.clone())
}
