//! The messages between the SVSM and its vTPM service process (docs/syscalls.md "The vTPM
//! service's messages").
//!
//! The SVSM starts the service with the NV state it read from the sealed store
//! ([`Request::Start`]), then sends each guest command ([`Request::Command`]). Every answer
//! carries the NV blobs the engine changed since the last one, so the SVSM can make them
//! durable before the guest sees the response. The SVSM treats the service's answers as
//! hostile input (a compromised engine is the threat the process boundary is for): every
//! length is checked, nothing panics, and an answer that does not parse stops the vTPM.
//!
//! Layout, all integers big-endian like the TPM's own:
//!
//! ```text
//! request  START   : 01 | blobs
//!          COMMAND : 02 | the TPM command
//!          RESUME  : 03 | u32 len | volatile state | blobs   (a migration destination)
//!          SAVE    : 04                                      (a migration source)
//! answer   STARTED : 01 | changes                            (to START and RESUME)
//!          RESPONSE: 02 | u32 len | the TPM response | changes | u64 engine cycles
//!          FAILED  : 03 | u32 libtpms' TPM_RESULT (the engine did not start or save)
//!          SAVED   : 04 | u32 len | volatile state | blobs   (to SAVE; the engine runs on)
//! blobs            : u32 count | count * (u16 name_len | name | u32 len | bytes)
//! changes          : u32 count | count * (u16 name_len | name | 00 (deleted)
//!                                                              | 01 u32 len | bytes)
//! ```
//!
//! The engine cycles are the TSC cycles the service's engine took for the command, as the
//! service measured them (0: not measured). The SVSM only reports them (what running the
//! engine at CPL 3 costs, `cargo xtask bench`); a lying service can distort that report
//! and nothing else.

use crate::nv::{MAX_BLOB_LEN, MAX_BLOBS, MAX_VOLATILE_LEN, NvBlobs, NvChange, TpmState, valid_name};
use crate::wire::Reader;
use alloc::vec::Vec;

/// The longest message either side sends: the whole NV state plus headers.
pub const MAX_MESSAGE: usize = 256 * 1024;

const START: u8 = 1;
const COMMAND: u8 = 2;
const RESUME: u8 = 3;
const SAVE: u8 = 4;
const STARTED: u8 = 1;
const RESPONSE: u8 = 2;
const FAILED: u8 = 3;
const SAVED: u8 = 4;

/// What the SVSM asks of the service.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Start the engine from this NV state (empty: manufacture a new TPM).
    Start(NvBlobs),
    /// Run one TPM command.
    Command(&'a [u8]),
    /// Continue a TPM a migration source saved.
    Resume(TpmState),
    /// Give the whole state of the running TPM.
    Save,
}

/// What the service answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    /// The engine runs; these are the blobs it wrote while starting.
    Started(Vec<NvChange>),
    /// A command's response, the blobs it changed, and the engine's TSC cycles for it.
    Response { response: &'a [u8], changes: Vec<NvChange>, engine_cycles: u64 },
    /// The engine did not start (libtpms' code).
    Failed(u32),
    /// The running TPM's whole state.
    Saved(TpmState),
}

/// A message being built, refusing to grow past [`MAX_MESSAGE`] or past what the heap
/// can give.
struct Message(Vec<u8>);

impl Message {
    fn new(tag: u8) -> Option<Self> {
        let mut m = Message(Vec::new());
        m.bytes(&[tag])?;
        Some(m)
    }
    fn bytes(&mut self, b: &[u8]) -> Option<&mut Self> {
        if self.0.len().checked_add(b.len())? > MAX_MESSAGE {
            return None;
        }
        self.0.try_reserve(b.len()).ok()?;
        self.0.extend_from_slice(b);
        Some(self)
    }
    fn u32(&mut self, v: usize) -> Option<&mut Self> {
        self.bytes(&u32::try_from(v).ok()?.to_be_bytes())
    }
    fn name(&mut self, name: &[u8]) -> Option<&mut Self> {
        if !valid_name(name) {
            return None;
        }
        self.bytes(&u16::try_from(name.len()).ok()?.to_be_bytes())?.bytes(name)
    }
    fn changes(&mut self, changes: &[NvChange]) -> Option<&mut Self> {
        self.u32(changes.len())?;
        for change in changes {
            self.name(&change.name)?;
            match &change.data {
                None => self.bytes(&[0])?,
                Some(data) if data.len() <= MAX_BLOB_LEN => self.bytes(&[1])?.u32(data.len())?.bytes(data)?,
                Some(_) => return None,
            };
        }
        Some(self)
    }
}

impl Message {
    fn blobs(&mut self, nv: &NvBlobs) -> Option<&mut Self> {
        self.u32(nv.len())?;
        for (name, data) in nv {
            if data.len() > MAX_BLOB_LEN {
                return None;
            }
            self.name(name)?.u32(data.len())?.bytes(data)?;
        }
        Some(self)
    }

    fn state(&mut self, state: &TpmState) -> Option<&mut Self> {
        if state.volatile.len() > MAX_VOLATILE_LEN {
            return None;
        }
        self.u32(state.volatile.len())?.bytes(&state.volatile)?.blobs(&state.nv)
    }
}

/// START with `nv`; `None` if it does not fit a message.
pub fn start(nv: &NvBlobs) -> Option<Vec<u8>> {
    let mut m = Message::new(START)?;
    m.blobs(nv)?;
    Some(m.0)
}

/// The length of the START message of an NV state whose blobs have names and data of
/// these lengths (tag, count, then per blob: u16 name length, name, u32 length, bytes).
pub fn start_len(blobs: impl IntoIterator<Item = (usize, usize)>) -> usize {
    blobs.into_iter().fold(1 + 4, |len, (name, data)| len.saturating_add(6).saturating_add(name).saturating_add(data))
}

/// RESUME with a saved state; `None` if it does not fit a message.
pub fn resume(state: &TpmState) -> Option<Vec<u8>> {
    let mut m = Message::new(RESUME)?;
    m.state(state)?;
    Some(m.0)
}

/// SAVE.
pub fn save() -> Option<Vec<u8>> {
    Message::new(SAVE).map(|m| m.0)
}

/// SAVED with the running TPM's state; `None` if it does not fit a message.
pub fn saved(state: &TpmState) -> Option<Vec<u8>> {
    let mut m = Message::new(SAVED)?;
    m.state(state)?;
    Some(m.0)
}

/// COMMAND with `command`.
pub fn command(command: &[u8]) -> Option<Vec<u8>> {
    let mut m = Message::new(COMMAND)?;
    m.bytes(command)?;
    Some(m.0)
}

/// STARTED with the blobs written while starting.
pub fn started(changes: &[NvChange]) -> Option<Vec<u8>> {
    let mut m = Message::new(STARTED)?;
    m.changes(changes)?;
    Some(m.0)
}

/// RESPONSE with `response`, the blobs the command changed and the engine's cycles.
pub fn response(response: &[u8], changes: &[NvChange], engine_cycles: u64) -> Option<Vec<u8>> {
    let mut m = Message::new(RESPONSE)?;
    m.u32(response.len())?.bytes(response)?.changes(changes)?.bytes(&engine_cycles.to_be_bytes())?;
    Some(m.0)
}

/// FAILED with libtpms' code.
pub fn failed(code: u32) -> Option<Vec<u8>> {
    let mut m = Message::new(FAILED)?;
    m.bytes(&code.to_be_bytes())?;
    Some(m.0)
}

/// A copy the heap may refuse.
fn copy(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(bytes.len()).ok()?;
    v.extend_from_slice(bytes);
    Some(v)
}

fn name<'a>(r: &mut Reader<'a>) -> Option<&'a [u8]> {
    let len = r.u16()?;
    r.take(usize::from(len)).filter(|n| valid_name(n))
}

fn blob<'a>(r: &mut Reader<'a>) -> Option<&'a [u8]> {
    let len = usize::try_from(r.u32()?).ok().filter(|l| *l <= MAX_BLOB_LEN)?;
    r.take(len)
}

fn changes(r: &mut Reader<'_>) -> Option<Vec<NvChange>> {
    let count = usize::try_from(r.u32()?).ok().filter(|n| *n <= MAX_BLOBS)?;
    let mut out = Vec::new();
    for _ in 0..count {
        let name = copy(name(r)?)?;
        let data = match r.take(1)? {
            [0] => None,
            [1] => Some(copy(blob(r)?)?),
            _ => return None,
        };
        out.try_reserve(1).ok()?;
        out.push(NvChange { name, data });
    }
    Some(out)
}

/// A blob list: no duplicate or invalid name, no blob too large.
fn blobs(r: &mut Reader<'_>) -> Option<NvBlobs> {
    let count = r.u32().filter(|n| usize::try_from(*n).is_ok_and(|n| n <= MAX_BLOBS))?;
    let mut nv = NvBlobs::new();
    for _ in 0..count {
        let name = copy(name(r)?)?;
        let data = copy(blob(r)?)?;
        if nv.insert(name, data).is_some() {
            return None;
        }
    }
    Some(nv)
}

fn state(r: &mut Reader<'_>) -> Option<TpmState> {
    let len = usize::try_from(r.u32()?).ok().filter(|l| *l <= MAX_VOLATILE_LEN)?;
    let volatile = copy(r.take(len)?)?;
    Some(TpmState { nv: blobs(r)?, volatile })
}

/// Parse a request (the service's side); `None` if it is malformed.
pub fn parse_request(message: &[u8]) -> Option<Request<'_>> {
    let (&tag, rest) = message.split_first()?;
    let mut r = Reader::new(rest);
    let request = match tag {
        START => Request::Start(blobs(&mut r)?),
        COMMAND => return Some(Request::Command(rest)),
        RESUME => Request::Resume(state(&mut r)?),
        SAVE => Request::Save,
        _ => return None,
    };
    r.is_empty().then_some(request)
}

/// Parse an answer (the SVSM's side); `None` if it is malformed: a duplicate or invalid
/// name, more than [`MAX_BLOBS`] changes or blobs, a length past the end, trailing bytes.
pub fn parse_answer(message: &[u8]) -> Option<Answer<'_>> {
    let (&tag, rest) = message.split_first()?;
    let mut r = Reader::new(rest);
    let answer = match tag {
        STARTED => Answer::Started(changes(&mut r)?),
        RESPONSE => {
            let len = usize::try_from(r.u32()?).ok()?;
            let response = r.take(len)?;
            let changes = changes(&mut r)?;
            let cycles = r.take(8)?.try_into().ok().map(u64::from_be_bytes)?;
            Answer::Response { response, changes, engine_cycles: cycles }
        }
        FAILED => Answer::Failed(r.u32()?),
        SAVED => Answer::Saved(state(&mut r)?),
        _ => return None,
    };
    let unique = match &answer {
        Answer::Started(c) | Answer::Response { changes: c, .. } => {
            c.iter().enumerate().all(|(i, a)| c.iter().skip(i + 1).all(|b| b.name != a.name))
        }
        // A blob list refuses duplicates as it parses.
        Answer::Failed(_) | Answer::Saved(_) => true,
    };
    (unique && r.is_empty()).then_some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn change(name: &[u8], data: Option<&[u8]>) -> NvChange {
        NvChange { name: name.to_vec(), data: data.map(<[u8]>::to_vec) }
    }

    #[test]
    fn every_message_parses_back_to_what_was_sent() {
        let mut nv = NvBlobs::new();
        nv.insert(b"permall".to_vec(), vec![7; 3000]);
        nv.insert(b"x".to_vec(), vec![]);
        assert_eq!(parse_request(&start(&nv).unwrap()), Some(Request::Start(nv)));
        assert_eq!(parse_request(&command(&[0x80, 1, 2]).unwrap()), Some(Request::Command(&[0x80, 1, 2])));
        let changes = vec![change(b"permall", Some(&[1, 2, 3])), change(b"volatilestate", None)];
        assert_eq!(parse_answer(&started(&changes).unwrap()), Some(Answer::Started(changes.clone())));
        let r = response(&[0x80, 1, 0, 0, 0, 10, 0, 0, 0, 0], &changes, 0x0102_0304_0506).unwrap();
        let parsed = Answer::Response {
            response: &[0x80, 1, 0, 0, 0, 10, 0, 0, 0, 0],
            changes,
            engine_cycles: 0x0102_0304_0506,
        };
        assert_eq!(parse_answer(&r), Some(parsed));
        assert_eq!(parse_answer(&failed(0x800).unwrap()), Some(Answer::Failed(0x800)));
    }

    #[test]
    fn a_malformed_answer_is_refused_at_every_cut_and_with_trailing_bytes() {
        let changes = vec![change(b"permall", Some(&[9; 40]))];
        let good = response(&[0x80, 1, 0, 0, 0, 10, 0, 0, 0, 0], &changes, 77).unwrap();
        for cut in 0..good.len() {
            assert_eq!(parse_answer(&good[..cut]), None, "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(parse_answer(&long), None);
        assert_eq!(parse_answer(&[9]), None, "unknown tag");
    }

    #[test]
    fn duplicate_empty_or_overlong_names_and_oversized_blobs_are_refused() {
        let twice = vec![change(b"a", None), change(b"a", Some(&[1]))];
        let mut m = Message::new(STARTED).unwrap();
        m.u32(2).unwrap();
        for c in &twice {
            m.bytes(&[0, 1]).unwrap().bytes(&c.name).unwrap();
            match &c.data {
                None => m.bytes(&[0]).unwrap(),
                Some(d) => m.bytes(&[1]).unwrap().u32(d.len()).unwrap().bytes(d).unwrap(),
            };
        }
        assert_eq!(parse_answer(&m.0), None, "one name twice");
        assert_eq!(started(&[change(b"", None)]), None, "an empty name is not encoded");
        assert_eq!(started(&[change(&[b'n'; 65], None)]), None, "a long name is not encoded");
        // A hostile length field: 0xFFFFFFFF bytes claimed, 0 present.
        assert_eq!(parse_answer(&[STARTED, 0, 0, 0, 1, 0, 1, b'a', 1, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(parse_answer(&[STARTED, 0, 0, 0, 1, 0, 1, b'a', 2]), None, "kind neither 0 nor 1");
        assert_eq!(started(&[change(b"a", Some(&vec![0; MAX_BLOB_LEN + 1]))]), None);
    }

    #[test]
    fn a_message_past_the_limit_is_not_built() {
        let mut nv = NvBlobs::new();
        nv.insert(b"a".to_vec(), vec![0; MAX_BLOB_LEN]);
        nv.insert(b"b".to_vec(), vec![0; MAX_BLOB_LEN]);
        assert_eq!(start(&nv), None);
        assert!(command(&vec![0; MAX_MESSAGE]).is_none());
    }

    #[test]
    fn a_hostile_count_claims_no_memory_it_cannot_back() {
        // A count of 4 billion changes with no bytes behind it ends at the first missing
        // one instead of reserving room for all of them.
        assert_eq!(parse_answer(&[STARTED, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(parse_request(&[START, 0xFF, 0xFF, 0xFF, 0xFF]), None);
    }

    fn saved_state() -> TpmState {
        let mut nv = NvBlobs::new();
        nv.insert(b"permall".to_vec(), vec![7; 2500]);
        TpmState { nv, volatile: vec![0x5a; 9000] }
    }

    #[test]
    fn the_migration_messages_parse_back_to_what_was_sent() {
        let state = saved_state();
        assert_eq!(parse_request(&resume(&state).unwrap()), Some(Request::Resume(state.clone())));
        assert_eq!(parse_request(&save().unwrap()), Some(Request::Save));
        assert_eq!(parse_answer(&saved(&state).unwrap()), Some(Answer::Saved(state)));
        let empty = TpmState::default();
        assert_eq!(parse_answer(&saved(&empty).unwrap()), Some(Answer::Saved(empty)));
    }

    #[test]
    fn a_malformed_saved_state_is_refused() {
        let good = saved(&saved_state()).unwrap();
        for cut in 0..good.len() {
            assert_eq!(parse_answer(&good[..cut]), None, "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(parse_answer(&long), None, "trailing bytes");
        assert_eq!(parse_request(&[SAVE, 0]), None, "SAVE carries nothing");
        // A volatile state past the limit is neither built nor accepted.
        let big = TpmState { volatile: vec![0; MAX_VOLATILE_LEN + 1], ..TpmState::default() };
        assert_eq!(saved(&big), None);
        let mut claimed = vec![SAVED];
        claimed.extend_from_slice(&((MAX_VOLATILE_LEN + 1) as u32).to_be_bytes());
        claimed.extend(vec![0; MAX_VOLATILE_LEN + 1]);
        claimed.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(parse_answer(&claimed), None);
        // One blob name twice.
        let mut twice = vec![SAVED, 0, 0, 0, 0, 0, 0, 0, 2];
        for _ in 0..2 {
            twice.extend_from_slice(&[0, 1, b'a', 0, 0, 0, 1, 9]);
        }
        assert_eq!(parse_answer(&twice), None);
    }
}
