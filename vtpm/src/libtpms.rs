//! libtpms (TPM 2.0 mode) behind [`TpmEngine`].
//!
//! libtpms keeps one TPM in global state, so there is one [`LibTpms`] at a time; opening it
//! again after it is dropped starts a new TPM from the NV state it is given (or a freshly
//! manufactured one when that is empty). Its non-volatile state lives in memory ([`NV`])
//! through libtpms' storage callbacks, which also note every blob libtpms writes or
//! deletes, so [`TpmEngine::take_nv_changes`] can hand them to the sealed store.
#![expect(unsafe_code, reason = "the FFI to libtpms, a C library")]

use crate::TpmEngine;
use crate::nv::{MAX_VOLATILE_LEN, NvBlobs, NvChange, NvError, TpmState};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::ffi::{CStr, c_char, c_int};
use core::sync::atomic::{AtomicBool, Ordering};

type TpmResult = u32;
const TPM_SUCCESS: TpmResult = 0;
/// "No such blob": makes libtpms manufacture a new TPM.
const TPM_RETRY: TpmResult = 0x800;
const TPM_FAIL: TpmResult = 9;
const TPMLIB_TPM_VERSION_2: c_int = 1;
/// `TPMLIB_STATE_VOLATILE` of `enum TPMLIB_StateType` (libtpms/tpm_library.h).
const TPMLIB_STATE_VOLATILE: c_int = 1 << 1;

#[repr(C)]
struct Callbacks {
    size_of_struct: c_int,
    nvram_init: Option<extern "C" fn() -> TpmResult>,
    nvram_loaddata: Option<unsafe extern "C" fn(*mut *mut u8, *mut u32, u32, *const c_char) -> TpmResult>,
    nvram_storedata: Option<unsafe extern "C" fn(*const u8, u32, u32, *const c_char) -> TpmResult>,
    nvram_deletename: Option<unsafe extern "C" fn(u32, *const c_char, u8) -> TpmResult>,
    io_init: Option<extern "C" fn() -> TpmResult>,
    io_getlocality: Option<unsafe extern "C" fn(*mut u32, u32) -> TpmResult>,
    io_getphysicalpresence: Option<unsafe extern "C" fn(*mut u8, u32) -> TpmResult>,
}

unsafe extern "C" {
    fn TPMLIB_ChooseTPMVersion(version: c_int) -> TpmResult;
    fn TPMLIB_RegisterCallbacks(callbacks: *mut Callbacks) -> TpmResult;
    fn TPMLIB_SetBufferSize(wanted: u32, min: *mut u32, max: *mut u32) -> u32;
    fn TPMLIB_MainInit() -> TpmResult;
    fn TPMLIB_Terminate();
    fn TPMLIB_Process(
        response: *mut *mut u8,
        response_size: *mut u32,
        response_capacity: *mut u32,
        command: *mut u8,
        command_size: u32,
    ) -> TpmResult;
    fn TPMLIB_GetState(state: c_int, buffer: *mut *mut u8, length: *mut u32) -> TpmResult;
    fn TPMLIB_SetState(state: c_int, buffer: *const u8, length: u32) -> TpmResult;
    fn TPM_Malloc(buffer: *mut *mut u8, size: u32) -> TpmResult;
    fn TPM_Free(buffer: *mut u8);
}

/// Set while a [`LibTpms`] exists.
static OPEN: AtomicBool = AtomicBool::new(false);

/// The TPM's non-volatile blobs by name ("permall", ...), and the names written or deleted
/// since the last [`TpmEngine::take_nv_changes`].
static NV: spin::Mutex<Nv> = spin::Mutex::new(Nv { blobs: BTreeMap::new(), changed: BTreeSet::new() });

struct Nv {
    blobs: NvBlobs,
    changed: BTreeSet<Vec<u8>>,
}

/// Why libtpms could not be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Another [`LibTpms`] is open (libtpms has one global TPM).
    AlreadyOpen,
    /// A libtpms call failed with this TPM_RESULT.
    Library { step: &'static str, code: u32 },
}

/// The libtpms TPM 2.0.
#[derive(Debug)]
pub struct LibTpms {
    /// libtpms' response buffer, grown by libtpms and kept across calls.
    response: *mut u8,
    response_capacity: u32,
    /// Largest command and response libtpms accepts (TPM_PT_MAX_COMMAND_SIZE).
    buffer_size: u32,
    /// Reused for the command copy libtpms may write to.
    command: Vec<u8>,
}

// SAFETY: the response buffer is owned by this handle alone and libtpms' global state is
// only touched through the one open handle (`OPEN`), so moving it between threads is sound.
unsafe impl Send for LibTpms {}

impl LibTpms {
    /// Start libtpms as a new TPM 2.0 (manufactured now) with in-memory NV, commands and
    /// responses of at most `buffer_size` bytes (libtpms may round it into its own limits;
    /// see [`Self::buffer_size`]).
    pub fn open(buffer_size: u32) -> Result<Self, OpenError> {
        Self::open_with_nv(buffer_size, NvBlobs::new())
    }

    /// Start libtpms from the NV state `nv` (as an earlier TPM left it; empty:
    /// manufacture a new TPM). The blobs libtpms writes while starting are reported by the
    /// first [`TpmEngine::take_nv_changes`].
    pub fn open_with_nv(buffer_size: u32, nv: NvBlobs) -> Result<Self, OpenError> {
        Self::start(buffer_size, nv, None)
    }

    /// Resume a running TPM elsewhere (a migration destination): the NV state `nv` and the
    /// volatile state `volatile` one [`Self::volatile_state`] took. The TPM continues where
    /// it was (PCRs, loaded objects, sessions, the clock): no TPM2_Startup.
    pub fn resume(buffer_size: u32, nv: NvBlobs, volatile: &[u8]) -> Result<Self, OpenError> {
        Self::start(buffer_size, nv, Some(volatile))
    }

    /// The running TPM's volatile state (libtpms' TPMLIB_GetState, the form swtpm migrates):
    /// with the NV blobs, what [`Self::resume`] continues from.
    pub fn volatile_state(&mut self) -> Result<Vec<u8>, OpenError> {
        let (mut buffer, mut length) = (core::ptr::null_mut(), 0u32);
        // SAFETY: the one open handle drives libtpms (`OPEN`); `buffer` and `length` are
        // writable, and libtpms allocates the buffer with its own allocator.
        let rc = unsafe { TPMLIB_GetState(TPMLIB_STATE_VOLATILE, &raw mut buffer, &raw mut length) };
        if rc != TPM_SUCCESS || buffer.is_null() {
            return Err(OpenError::Library { step: "TPMLIB_GetState", code: rc });
        }
        // SAFETY: libtpms wrote `length` bytes into the buffer it allocated.
        let state = copy(unsafe { core::slice::from_raw_parts(buffer, length as usize) });
        // SAFETY: the buffer came from libtpms' allocator and is not used after this.
        unsafe { TPM_Free(buffer) };
        state.ok_or(OpenError::Library { step: "copying the volatile state", code: TPM_FAIL })
    }

    fn start(buffer_size: u32, nv: NvBlobs, volatile: Option<&[u8]>) -> Result<Self, OpenError> {
        let volatile_length = match volatile.map(|v| u32::try_from(v.len())) {
            Some(Err(_)) => return Err(OpenError::Library { step: "TPMLIB_SetState", code: TPM_FAIL }),
            Some(Ok(length)) => length,
            None => 0,
        };
        if OPEN.swap(true, Ordering::AcqRel) {
            return Err(OpenError::AlreadyOpen);
        }
        *NV.lock() = Nv { blobs: nv, changed: BTreeSet::new() };
        let callbacks = Callbacks {
            size_of_struct: core::mem::size_of::<Callbacks>() as c_int,
            nvram_init: Some(nvram_init),
            nvram_loaddata: Some(nvram_loaddata),
            nvram_storedata: Some(nvram_storedata),
            nvram_deletename: Some(nvram_deletename),
            io_init: Some(io_init),
            io_getlocality: Some(io_getlocality),
            io_getphysicalpresence: Some(io_getphysicalpresence),
        };
        let check = |step, code| match code {
            TPM_SUCCESS => Ok(()),
            code => {
                OPEN.store(false, Ordering::Release);
                Err(OpenError::Library { step, code })
            }
        };
        // SAFETY: a plain call; only the one open handle (`OPEN`) drives libtpms.
        check("TPMLIB_ChooseTPMVersion", unsafe { TPMLIB_ChooseTPMVersion(TPMLIB_TPM_VERSION_2) })?;
        // SAFETY: as above; libtpms copies the table during the call.
        check("TPMLIB_RegisterCallbacks", unsafe { TPMLIB_RegisterCallbacks(&raw const callbacks as *mut _) })?;
        let (mut min, mut max) = (0u32, 0u32);
        // SAFETY: as above; `min` and `max` are writable. Before MainInit, which sizes the
        // TPM's buffers from it.
        let actual = unsafe { TPMLIB_SetBufferSize(buffer_size, &raw mut min, &raw mut max) };
        if let Some(volatile) = volatile {
            // SAFETY: as above; `volatile` holds `volatile_length` bytes, which libtpms
            // copies for the MainInit below.
            let rc = unsafe { TPMLIB_SetState(TPMLIB_STATE_VOLATILE, volatile.as_ptr(), volatile_length) };
            check("TPMLIB_SetState", rc)?;
        }
        // SAFETY: as above.
        check("TPMLIB_MainInit", unsafe { TPMLIB_MainInit() })?;
        Ok(Self { response: core::ptr::null_mut(), response_capacity: 0, buffer_size: actual, command: Vec::new() })
    }

    /// The command and response size limit libtpms settled on.
    pub fn buffer_size(&self) -> u32 {
        self.buffer_size
    }
}

impl TpmEngine for LibTpms {
    fn execute(&mut self, command: &[u8], response: &mut [u8]) -> usize {
        let fail = |response: &mut [u8]| crate::wire::write_error_response(crate::wire::TPM_RC_FAILURE, response);
        let Ok(size) = u32::try_from(command.len()) else { return fail(response) };
        // libtpms may write into the command buffer, so it gets a copy; the copy's room
        // grows once to the largest command and is kept.
        self.command.clear();
        if self.command.try_reserve(command.len()).is_err() {
            return fail(response);
        }
        self.command.extend_from_slice(command);
        let mut response_size = 0u32;
        // SAFETY: `response`/`response_capacity` are libtpms' own buffer (or null and 0),
        // which it reallocates as needed; the command pointer and size describe our copy.
        let rc = unsafe {
            TPMLIB_Process(
                &mut self.response,
                &mut response_size,
                &mut self.response_capacity,
                self.command.as_mut_ptr(),
                size,
            )
        };
        if rc != TPM_SUCCESS || self.response.is_null() || response_size > self.response_capacity {
            return fail(response);
        }
        // SAFETY: libtpms wrote `response_size` bytes into its buffer of
        // `response_capacity` bytes (checked above).
        let answer = unsafe { core::slice::from_raw_parts(self.response, response_size as usize) };
        match response.get_mut(..answer.len()) {
            Some(out) => {
                out.copy_from_slice(answer);
                answer.len()
            }
            None => fail(response),
        }
    }

    fn take_nv_changes(&mut self) -> Result<Vec<NvChange>, NvError> {
        let mut nv = NV.lock();
        let mut changes = Vec::new();
        changes.try_reserve_exact(nv.changed.len()).map_err(|_| NvError::Engine)?;
        for name in &nv.changed {
            let data = match nv.blobs.get(name) {
                Some(blob) => Some(copy(blob).ok_or(NvError::Engine)?),
                None => None,
            };
            changes.push(NvChange { name: copy(name).ok_or(NvError::Engine)?, data });
        }
        nv.changed.clear();
        Ok(changes)
    }

    fn save_state(&mut self) -> Result<TpmState, NvError> {
        let volatile = self.volatile_state().map_err(|_| NvError::Engine)?;
        if volatile.len() > MAX_VOLATILE_LEN {
            return Err(NvError::Engine);
        }
        let nv = NV.lock();
        let mut blobs = NvBlobs::new();
        for (name, data) in &nv.blobs {
            blobs.insert(copy(name).ok_or(NvError::Engine)?, copy(data).ok_or(NvError::Engine)?);
        }
        Ok(TpmState { nv: blobs, volatile })
    }
}

impl Drop for LibTpms {
    fn drop(&mut self) {
        // SAFETY: the buffer came from libtpms' allocator (or is null, which TPM_Free
        // accepts); terminating ends the one TPM this handle drove.
        unsafe {
            TPMLIB_Terminate();
            TPM_Free(self.response);
        }
        *NV.lock() = Nv { blobs: BTreeMap::new(), changed: BTreeSet::new() };
        OPEN.store(false, Ordering::Release);
    }
}

/// A copy the heap may refuse (a guest's NV writes lead here).
fn copy(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(bytes.len()).ok()?;
    v.extend_from_slice(bytes);
    Some(v)
}

extern "C" fn nvram_init() -> TpmResult {
    TPM_SUCCESS
}

extern "C" fn io_init() -> TpmResult {
    TPM_SUCCESS
}

/// The blob name libtpms passes: a C string.
///
/// # Safety
/// `name` is null or a NUL-terminated string valid for the call.
unsafe fn blob_name<'a>(name: *const c_char) -> Option<&'a [u8]> {
    if name.is_null() {
        return None;
    }
    // SAFETY: the caller's contract.
    Some(unsafe { CStr::from_ptr(name) }.to_bytes())
}

/// # Safety
/// libtpms' contract: `data` and `length` are writable, `name` a C string.
unsafe extern "C" fn nvram_loaddata(data: *mut *mut u8, length: *mut u32, _tpm: u32, name: *const c_char) -> TpmResult {
    // SAFETY: libtpms' contract.
    let Some(name) = (unsafe { blob_name(name) }) else { return TPM_FAIL };
    let nv = NV.lock();
    let Some(blob) = nv.blobs.get(name) else { return TPM_RETRY };
    let Ok(len) = u32::try_from(blob.len()) else { return TPM_FAIL };
    let mut buffer = core::ptr::null_mut();
    // SAFETY: libtpms frees the blob with its own allocator, so it is allocated there;
    // the copy stays within the `len` bytes just allocated.
    unsafe {
        let rc = TPM_Malloc(&mut buffer, len);
        if rc != TPM_SUCCESS {
            return rc;
        }
        core::ptr::copy_nonoverlapping(blob.as_ptr(), buffer, blob.len());
        *data = buffer;
        *length = len;
    }
    TPM_SUCCESS
}

/// # Safety
/// libtpms' contract: `data` holds `length` bytes, `name` is a C string.
unsafe extern "C" fn nvram_storedata(data: *const u8, length: u32, _tpm: u32, name: *const c_char) -> TpmResult {
    // SAFETY: libtpms' contract.
    let Some(name) = (unsafe { blob_name(name) }) else { return TPM_FAIL };
    // A guest's NV writes reach here: the copy is fallible, and a failure is the TPM's
    // own (libtpms answers the command with an error), never a stopped SVSM.
    let mut blob = Vec::new();
    if blob.try_reserve_exact(length as usize).is_err() {
        return TPM_FAIL;
    }
    if length != 0 {
        // SAFETY: libtpms' contract: `data` holds `length` bytes.
        blob.extend_from_slice(unsafe { core::slice::from_raw_parts(data, length as usize) });
    }
    let Some(key) = copy(name) else { return TPM_FAIL };
    let mut nv = NV.lock();
    if let Some(slot) = nv.blobs.get_mut(name) {
        *slot = blob;
    } else {
        // A new name (libtpms uses a handful, first at start-up).
        let Some(second) = copy(name) else { return TPM_FAIL };
        nv.blobs.insert(second, blob);
    }
    nv.changed.insert(key);
    TPM_SUCCESS
}

/// # Safety
/// libtpms' contract: `name` is a C string.
unsafe extern "C" fn nvram_deletename(_tpm: u32, name: *const c_char, must_exist: u8) -> TpmResult {
    // SAFETY: libtpms' contract.
    let Some(name) = (unsafe { blob_name(name) }) else { return TPM_FAIL };
    let mut nv = NV.lock();
    match nv.blobs.remove(name) {
        None if must_exist != 0 => TPM_FAIL,
        None => TPM_SUCCESS,
        Some(_) => match copy(name) {
            Some(key) => {
                nv.changed.insert(key);
                TPM_SUCCESS
            }
            None => TPM_FAIL,
        },
    }
}

/// Every command runs at locality 0: the protocol accepts no other (docs/protocols/vtpm.md).
///
/// # Safety
/// libtpms' contract: `locality` is writable.
unsafe extern "C" fn io_getlocality(locality: *mut u32, _tpm: u32) -> TpmResult {
    // SAFETY: libtpms' contract.
    unsafe { *locality = 0 };
    TPM_SUCCESS
}

/// A guest cannot assert physical presence.
///
/// # Safety
/// libtpms' contract: `present` is writable.
unsafe extern "C" fn io_getphysicalpresence(present: *mut u8, _tpm: u32) -> TpmResult {
    // SAFETY: libtpms' contract.
    unsafe { *present = 0 };
    TPM_SUCCESS
}
