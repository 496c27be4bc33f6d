//! Live migration on the bare svm SVSM: the two ends of a session over the migration
//! device (`svm::migration_device`), driven by CPU 0 (docs/migration.md, "The QEMU end to
//! end").
//!
//! - **Destination** (`migrate=incoming` on the command line): before the guest's first
//!   instruction, [`receive`] waits for the host to start the pages, runs the session to
//!   its end and applies the state stream as it arrives (`kernel::migration::stream`). The
//!   guest runs only if the stream completed under a FINISH; otherwise the SVSM stops and
//!   the guest never ran here.
//! - **Source**: [`arm`] keeps the device; CPU 0 calls [`poll`] between its guest's exits.
//!   When the host writes `RUNNING` into the outbound page, a session starts; once the
//!   peer is attested, the rounds run while the guest does: dirty tracking on, every
//!   validated page, then the pages written meanwhile, round after round. When a round is
//!   small enough (or enough rounds have passed), [`poll`] asks for the pause and
//!   [`last_round`] stops every vCPU, sends what is left, commits, and ends this SVSM (the
//!   guest runs on at the destination). Any failure before the commit gives the guest
//!   back its pages' write access and lets it run on here.

use super::clock;
use super::cpu;
use super::native::Shared;
use super::svm::hw::BareSvm;
use super::svm::migration_device::{BarPage, Rings};
use alloc::boxed::Box;
use alloc::vec::Vec;
use kernel::Svsm;
use kernel::migration::stream::{self, Incoming, Item, StreamError};
use kernel::migration::{DirtyLogError, ServiceState, ServiceStateError};
use migrate::channel::{MigrationChannel, MigrationPage, PageChannel};
use migrate::evidence::ReportVerifier;
use migrate::session::{
    self, Config, Destination, DestinationOutcome, DestinationPhase, EvidenceError, EvidenceProvider, MAX_STATE_CHUNK,
    MigrationError, PeerVerifier, REPORT_DATA_LEN, Source, SourceOutcome, SourcePhase,
};
use spin::Mutex;
use svm::SvmShared;

type Channel = PageChannel<BarPage, BarPage>;

/// A dirty round this small (pages) is sent with the guest stopped: the last one.
const LAST_ROUND_PAGES: usize = 32;
/// Pages per memory item: the SVSM's heap is a few MiB, shared with the vTPM and the
/// page tables, so the stream is made in small pieces.
const CHUNK_PAGES: usize = 16;
/// Rounds before the last one whatever their size (a guest that writes faster than
/// the channel moves would never get below [`LAST_ROUND_PAGES`]).
const MAX_DIRTY_ROUNDS: u32 = 8;
/// How long [`poll`] may keep CPU 0 from its guest at a time.
const SLICE_NS: u64 = 2_000_000;
/// How long the last round may take before the source gives up and its guest runs on
/// (it is stopped meanwhile).
const LAST_ROUND_DEADLINE_NS: u64 = 20_000_000_000;
/// How long the source offers its FINISH, after its commit, until the destination's
/// FINISH_ACK comes (and how long a destination that approved a commit waits for it).
const FINISH_DEADLINE_NS: u64 = 300_000_000_000;
/// How long the source waits for the FINISH_ACK after it offered its FINISH before it
/// offers it again (the host may have lost or changed it).
const FINISH_OFFER_NS: u64 = 2_000_000_000;
/// Dirty pages taken from the log at a time (8 bytes each in the list): a round of a guest
/// that wrote more is taken over several (the last round, with the guest stopped, until
/// none is left).
const TAKE_PAGES: usize = 16 * 1024;
/// Polls of the channel that found nothing before the destination naps between polls.
const IDLE_SPINS: u32 = 64;
/// The destination's nap between polls once the channel is idle: short against a ring's
/// worth of records (some 256 KiB), long enough to give the host's core away.
const IDLE_NAP_US: u32 = 50;
/// The nap while waiting for the host to start the migration pages.
const WAIT_NAP_US: u32 = 1000;
/// How often the destination says how much it received.
const PROGRESS_NS: u64 = 1_000_000_000;
/// How long the session may stand still (no frame moved either way) while the guest runs
/// before the source gives up on it.
const STALL_NS: u64 = 30_000_000_000;

/// Heap that must stay free once an arriving vTPM runs here: what the guest's arrival
/// still allocates after the commit and cannot fail gracefully (the vTPM's storage and
/// lineage boxes, the source's slot when this SVSM is armed again), with room to spare.
const ARRIVAL_HEAP: usize = 64 * 1024;

/// Why a migration failed or could not start, printed where it ends. Never built on the
/// heap: a message made with `format!` would abort the SVSM on a full heap, just when a
/// migration fails for want of memory.
#[derive(Clone, Copy, Debug)]
pub enum Failure {
    /// Said in full.
    Said(&'static str),
    /// A session's call or the channel under it failed.
    Session(MigrationError),
    /// The session ended with this error.
    SessionFailed(MigrationError),
    /// The destination refused the state stream.
    Stream(StreamError),
    /// Making the state stream (what was being made, and why not).
    State(&'static str, ServiceStateError),
    /// Dirty tracking failed.
    Dirty(DirtyLogError),
    /// The arriving vTPM did not start.
    Vtpm(&'static str),
    /// After the commit: the vTPM's tombstone could not be kept.
    NotMarked(store::StoreError),
    /// After the commit: the destination aborted.
    GaveUp(MigrationError),
    /// After the commit: no FINISH_ACK after this many copies of the FINISH.
    NoFinishAck(u32),
}

impl From<&'static str> for Failure {
    fn from(why: &'static str) -> Self {
        Self::Said(why)
    }
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Said(why) => f.write_str(why),
            Self::Session(e) => write!(f, "{e:?}"),
            Self::SessionFailed(e) => write!(f, "the session failed: {e:?}"),
            Self::Stream(e) => write!(f, "the state stream: {e:?}"),
            Self::State(what, e) => write!(f, "{what}: {e:?}"),
            Self::Dirty(e) => write!(f, "dirty tracking: {e:?}"),
            Self::Vtpm(why) => write!(f, "the vTPM: {why}"),
            Self::NotMarked(e) => {
                write!(f, "the vTPM could not be marked as moved in the sealed state ({e:?}); no FINISH")
            }
            Self::GaveUp(e) => write!(f, "the destination gave up after the commit ({e:?})"),
            Self::NoFinishAck(copies) => write!(
                f,
                "no FINISH_ACK after {copies} cop(ies) of the FINISH: the destination runs the guest if one reached it"
            ),
        }
    }
}

/// Bytes the SVSM's heap has free.
fn heap_free() -> usize {
    let (used, size) = super::heap::usage();
    size.saturating_sub(used)
}

/// A copy of the device's rings for a session's channel (a clone of a page is the same
/// page); `None` without heap.
fn rings_copy(pages: &Rings) -> Option<Rings> {
    let copy = |ring: &Vec<BarPage>| {
        let mut v = Vec::new();
        v.try_reserve_exact(ring.len()).ok()?;
        v.extend_from_slice(ring);
        Some(v)
    };
    let [outbound, inbound] = pages;
    Some([copy(outbound)?, copy(inbound)?])
}

/// RDRAND as the session's entropy (the ephemeral key, the HELLO nonce).
fn rdrand(buf: &mut [u8]) -> Result<(), migrate::EntropyError> {
    for chunk in buf.chunks_mut(8) {
        let word = cpu::rdrand().ok_or(migrate::EntropyError)?.to_le_bytes();
        chunk.copy_from_slice(word.get(..chunk.len()).ok_or(migrate::EntropyError)?);
    }
    Ok(())
}

/// This SVSM's evidence: a report from its PSP and the certificate table.
struct Evidence<'a> {
    svsm: &'a Svsm,
    platform: &'a SvmShared<BareSvm>,
}

impl EvidenceProvider for Evidence<'_> {
    fn evidence(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, EvidenceError> {
        let (report, table) =
            self.svsm.migration_evidence(&mut self.platform.platform(0), report_data).map_err(|_| EvidenceError)?;
        migrate::evidence::encode(&report, &table).ok_or(EvidenceError)
    }
}

/// Who this SVSM is and whom it trusts ([`config`]), worked out once per boot, before
/// any session: it parses and checks this SVSM's own certificate chain and report, which
/// x509-cert and rsa do on the heap without failing gracefully. A migration the host
/// starts later, when a guest may have filled the heap, must not.
static IDENTITY: spin::Once<(Config, ReportVerifier)> = spin::Once::new();

fn identity(
    svsm: &Svsm,
    platform: &SvmShared<BareSvm>,
    rings: &Rings,
) -> Result<&'static (Config, ReportVerifier), Failure> {
    IDENTITY.try_call_once(|| config(svsm, platform, rings)).map_err(Failure::Said)
}

/// Who this SVSM is, and whom it trusts: its own report, checked under the ARK of its own
/// certificate table (on svm, the launcher's kit), gives the measurement and policy a
/// peer must have; the peer's chain must end at the same ARK. The peer's evidence is
/// checked only with [`migrate::evidence::VERIFY_HEAP`] free (see there).
fn config(svsm: &Svsm, platform: &SvmShared<BareSvm>, rings: &Rings) -> Result<(Config, ReportVerifier), &'static str> {
    let mut nonce = [0u8; REPORT_DATA_LEN];
    rdrand(&mut nonce).map_err(|_| "no entropy")?;
    let (report, table) =
        svsm.migration_evidence(&mut platform.platform(0), &nonce).map_err(|_| "no report from the PSP")?;
    let verifier = ReportVerifier::trusting_ark_of(&table).ok_or("no ARK in the certificate table")?;
    let verifier = verifier.with_heap_check(heap_free);
    let evidence = migrate::evidence::encode(&report, &table).ok_or("the evidence does not encode")?;
    let identity = verifier.verify(&evidence, &nonce).map_err(|_| "its own report does not verify")?;
    // The ring mode when the device has a ring: both directions are the same size.
    let ring = rings.iter().map(Vec::len).min().unwrap_or(0);
    let ring_pages = u16::try_from(ring).ok().filter(|&n| n >= migrate::session::MIN_RING_PAGES);
    Ok((Config { identity, ring_pages, aes: aes() }, verifier))
}

/// Move the session's frames as far as the channel allows now; `Ok(true)` if anything moved.
fn pump<E: session::Endpoint>(endpoint: &mut E, channel: &mut Channel) -> Result<bool, Failure> {
    session::pump(endpoint, channel).map_err(Failure::Session)
}

/// The destination's side: wait for the host, take the whole state, and say what the
/// services were (the vTPM to resume, the settings to apply). The channel gets copies of
/// `pages`: the device is armed again after a migration that arrived.
pub fn receive(svsm: &Svsm, platform: &SvmShared<BareSvm>, pages: &Rings) -> Result<Arrived, Failure> {
    println!("migration: incoming; waiting for the host to start the migration pages");
    let (config, verifier) = identity(svsm, platform, pages)?;
    let [outbound, mut inbound] = rings_copy(pages).ok_or("no heap for the migration pages")?;
    let first_inbound = inbound.first_mut().ok_or("no inbound page")?;
    while first_inbound.read_status() != abi::migration::MigrationStatus::INCOMING {
        clock::nap(WAIT_NAP_US);
    }
    let mut channel = PageChannel::with_rings(outbound, inbound);
    let evidence = Evidence { svsm, platform };
    let mut session = Destination::start(*config, verifier, evidence, &mut rdrand).map_err(Failure::Session)?;
    // The COMMIT_ACK only once the stream is whole and the vTPM runs again here: after
    // the ACK the source never runs the guest again, so nothing may fail here after it.
    session.hold_commit_ack();
    let mut incoming = Some(Incoming::new());
    let mut arrived = None;
    let started = clock::monotonic_ns();
    let (mut received, mut reported, mut reported_at) = (0usize, 0usize, started);
    let mut attested = false;
    let mut idle = 0u32;
    let mut last_progress = started;
    let mut spent = Spent::default();
    let taken = loop {
        let moved = match Spent::timed(&mut spent.channel, || pump(&mut session, &mut channel)) {
            Ok(moved) => moved,
            // Waiting for the FINISH, the session passes over what does not open as it
            // (the source offers the FINISH again): named here, and the wait goes on.
            Err(e) if session.phase() == DestinationPhase::AwaitFinish => {
                println!("migration: passed over while waiting for the FINISH: {e}");
                true
            }
            Err(e) => break Err(e),
        };
        let now = clock::monotonic_ns();
        // Once this side approved the commit, the source may have stopped for good: no
        // abort any more, and the host gets as long for the FINISH as the source waits.
        let limit = if arrived.is_some() { FINISH_DEADLINE_NS } else { STALL_NS };
        if moved {
            last_progress = now;
        } else if now.saturating_sub(last_progress) > limit {
            if arrived.is_some() {
                break Err(Failure::Said(
                    "the FINISH never came after this SVSM approved the commit (the guest is lost, never run twice)",
                ));
            }
            let _ = session.abort(session::AbortReason::INTERNAL);
            break Err(Failure::Said("neither the host nor the source moved for 30 s"));
        }
        if !attested && session.peer().is_some() {
            attested = true;
            println!("migration: the source is attested (same measurement and policy); receiving");
        }
        let mut refused = None;
        while let Some(chunk) = session.take_state() {
            received += chunk.len();
            let taken = incoming.as_mut().ok_or(StreamError::Malformed);
            let applied = Spent::timed(&mut spent.records, || {
                taken.and_then(|i| i.take(svsm, &mut platform.platform(0), &chunk))
            });
            if let Err(e) = applied {
                refused = Some(Failure::Stream(e));
                break;
            }
        }
        if refused.is_none() && session.phase() == DestinationPhase::CommitVerified && arrived.is_none() {
            match ready_to_run(svsm, incoming.take()) {
                Ok(ready) => {
                    arrived = Some(ready);
                    if let Err(e) = session.approve_commit() {
                        break Err(Failure::Session(e));
                    }
                }
                Err(why) => refused = Some(why),
            }
        }
        if let Some(why) = refused {
            let _ = session.abort(session::AbortReason::INTERNAL);
            break Err(why);
        }
        // Progress as soon as state arrives, then once a second at most: a line per MiB
        // filled the 64 KiB log ring in a migration of 2 GiB, and the log's earlier lines
        // with it.
        let due = reported == 0 || clock::monotonic_ns().saturating_sub(reported_at) >= PROGRESS_NS;
        if received > reported && due {
            (reported, reported_at) = (received, clock::monotonic_ns());
            println!("migration: {} KiB received", received / 1024);
        }
        match session.outcome() {
            // Nothing moved for a while: the source is sealing its next records, or the
            // host relaying them. Napping frees the core they need (on a host with few).
            DestinationOutcome::InProgress if moved => idle = 0,
            DestinationOutcome::InProgress => {
                idle += 1;
                if idle >= IDLE_SPINS {
                    clock::nap(IDLE_NAP_US);
                }
            }
            DestinationOutcome::Completed => break Ok(()),
            DestinationOutcome::Failed(e) => break Err(Failure::SessionFailed(e)),
        }
    };
    if let Err(why) = taken {
        // The ABORT, if the host takes it soon: the source then runs on at once.
        let deadline = clock::monotonic_ns() + 1_000_000_000;
        while !session::Endpoint::is_done(&session) && clock::monotonic_ns() < deadline {
            if pump(&mut session, &mut channel).is_err() {
                break;
            }
        }
        return Err(why);
    }
    // The FINISH_ACK, so the source stops offering its FINISH; the host gets a second.
    let deadline = clock::monotonic_ns().saturating_add(1_000_000_000);
    while clock::monotonic_ns() < deadline {
        let _ = pump(&mut session, &mut channel);
        if session::Endpoint::is_done(&session) && channel.close().unwrap_or(true) {
            break;
        }
    }
    let arrived = arrived.ok_or("a FINISH before the approved commit")?;
    let ms = clock::monotonic_ns().saturating_sub(started) / 1_000_000;
    println!(
        "migration: completed: {} KiB of state in {ms} ms, {} vCPU(s); the guest runs here",
        received / 1024,
        arrived.vcpus
    );
    println!(
        "migration: the destination's time: {} ms in the channel (taking fragments, opening records, polling the host), {} ms applying the stream",
        spent.channel / 1_000_000,
        spent.records / 1_000_000
    );
    Ok(arrived)
}

/// What a completed migration brought: the services' state and, if the source had one,
/// its vTPM running again here.
pub struct Arrived {
    pub services: ServiceState,
    pub vtpm: Option<vtpm::Vtpm>,
    /// The vTPM's new incarnation here (docs/migration.md, "The vTPM's lineage").
    pub lineage: Option<kernel::vtpm_lineage::Lineage>,
    pub vcpus: u32,
}

/// At the verified COMMIT: the stream must be whole (every vCPU, the end), the vTPM must
/// run again here, and this SVSM's sealed state (if it has one) must be able to keep it,
/// or the destination refuses the commit and the source runs on: after the commit the
/// source marks its own copy as moved, and a vTPM this side cannot keep would be lost.
/// Nothing is written to this SVSM's sealed store yet: until FINISH the source may still
/// run the guest, and a store holding a copy of its TPM would be a fork waiting for a
/// reboot.
///
/// The guest has not run here yet, so nothing else takes from the heap meanwhile: what it
/// has free, checked before and after the vTPM starts, holds for the allocations from
/// here to the guest's first instruction that cannot fail gracefully (the vTPM service's
/// channel and boxes, its storage's box after the commit: [`ARRIVAL_HEAP`]). With less,
/// the commit is refused.
fn ready_to_run(svsm: &Svsm, incoming: Option<Incoming>) -> Result<Arrived, Failure> {
    const NO_ROOM: &str = "too little heap is left to run the guest here";
    let incoming = incoming.ok_or("the state stream")?;
    let vcpus = incoming.vcpus();
    let services = incoming.finish().map_err(Failure::Stream)?;
    if let Some(snapshot) = &services.vtpm
        && !svsm.can_keep_arriving_vtpm(&snapshot.ek_public, snapshot.kept, snapshot.lineage.version)
    {
        return Err(Failure::Said(
            "the vTPM could not be kept here (this SVSM's sealed state keeps another vTPM, a newer state of this one, or is closed; or it has none and the source kept its vTPM across reboots)",
        ));
    }
    if heap_free() < ARRIVAL_HEAP {
        return Err(Failure::Said(NO_ROOM));
    }
    let (vtpm, lineage) = match &services.vtpm {
        Some(snapshot) => {
            let mut incarnation = [0u8; 16];
            rdrand(&mut incarnation).map_err(|_| "no entropy for the vTPM's new incarnation")?;
            let lineage = kernel::vtpm_lineage::Lineage::arrived(&snapshot.lineage, incarnation)
                .ok_or("the vTPM's version cannot grow")?;
            (Some(super::vtpm::resume(snapshot).map_err(Failure::Vtpm)?), Some(lineage))
        }
        None => (None, None),
    };
    if heap_free() < ARRIVAL_HEAP {
        return Err(Failure::Said(NO_ROOM));
    }
    Ok(Arrived { services, vtpm, lineage, vcpus })
}

/// Where a side's time went (ns), printed when its session ends: a profile of the
/// migration on this machine.
#[derive(Default)]
struct Spent {
    /// In the session and the channel: sealing or opening records, moving fragments
    /// through the pages, and polling the host's registers while it has not answered.
    channel: u64,
    /// Applying the stream (destination).
    records: u64,
    /// Reading guest memory into stream items (source).
    export: u64,
}

impl Spent {
    /// `f`, its time added to `slot`.
    fn timed<R>(slot: &mut u64, f: impl FnOnce() -> R) -> R {
        let started = clock::monotonic_ns();
        let r = f();
        *slot = slot.saturating_add(clock::monotonic_ns().saturating_sub(started));
        r
    }
}

/// Where the source's session is.
enum Round {
    /// The handshake: nothing sent yet.
    Handshake,
    /// The first round, every validated page, from this pfn on.
    Full(u64),
    /// Dirty round `n`: the pages written during the round before, still to send (`None`
    /// until the round begins; taken at once then, so a guest that keeps writing cannot
    /// stretch a round).
    Dirty { n: u32, todo: Option<Vec<u64>> },
    /// The guest must stop for the last round.
    Last,
}

struct Outgoing {
    session: Source<&'static ReportVerifier, Evidence<'static>>,
    channel: Channel,
    round: Round,
    /// Stream bytes framed and not yet handed to the session.
    pending: Vec<u8>,
    /// The pages of the round that turned out small enough to be sent with the last one.
    carried: Vec<u64>,
    /// When the channel last moved a frame (a peer or host that stops is given up on).
    last_progress: u64,
    /// When the first round began, and what the cipher alone does (KiB/s).
    precopy_started: u64,
    cipher_kib_s: u64,
    spent: Spent,
    sent: usize,
    tracking: bool,
    started: u64,
}

/// The source's side: the device, and the session under way if there is one.
struct Armed {
    /// The device's rings; each session's channel gets copies (a clone is the same page).
    pages: Rings,
    /// The session. Its room is taken when the device is armed, before the guest runs:
    /// a migration the host starts, when a guest may have filled the heap, needs none.
    session: Box<Option<Outgoing>>,
}

static SOURCE: Mutex<Option<Armed>> = Mutex::new(None);
static ARMED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Keep the device: this SVSM may become a migration's source. Before the guest runs (at
/// boot, or after a migration arrived, with [`ARRIVAL_HEAP`] free): who this SVSM is is
/// worked out now ([`identity`]), and the session's room taken (a fixed size, infallibly).
pub fn arm(svsm: &Svsm, platform: &SvmShared<BareSvm>, pages: Rings) {
    if let Err(e) = identity(svsm, platform, &pages) {
        println!("migration: this SVSM cannot be a migration's source ({e})");
        return;
    }
    *SOURCE.lock() = Some(Armed { pages, session: Box::new(None) });
    ARMED.store(true, core::sync::atomic::Ordering::Release);
}

/// Whether CPU 0 should look at the migration between its guest's exits.
pub fn armed() -> bool {
    ARMED.load(core::sync::atomic::Ordering::Acquire)
}

/// A session is under way (from the host's `RUNNING` to its end).
static SESSION: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// How long CPU 0's guest may run at most before CPU 0 looks at the migration again
/// (`native.rs` keeps the local-APIC timer at that): 10 ms while it waits for the host
/// to start one, 1 ms while a session runs. A guest that never exits on its own then
/// gives CPU 0 a thousand looks a second: in the proposal's 2 KiB page mode each look
/// moves about one page, so 10 ms would cap that mode at 200 KiB/s.
pub fn poll_period_ms() -> u32 {
    if SESSION.load(core::sync::atomic::Ordering::Acquire) { 1 } else { 10 }
}

/// What CPU 0 must do after [`poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Run the guest on.
    RunOn,
    /// Put its vCPU back and call [`last_round`].
    Pause,
}

/// Drive the source for a moment (CPU 0, between its guest's exits).
pub fn poll(shared: &'static Shared) -> Poll {
    let mut slot = SOURCE.lock();
    let Some(armed) = slot.as_mut() else { return Poll::RunOn };
    if armed.session.is_none() {
        let started = armed.pages[0].first_mut().map(|page| page.read_status());
        if started != Some(abi::migration::MigrationStatus::RUNNING) {
            return Poll::RunOn;
        }
        match start(shared, &armed.pages) {
            Ok(out) => {
                *armed.session = Some(out);
                SESSION.store(true, core::sync::atomic::Ordering::Release);
            }
            Err(e) => {
                println!("migration: could not start: {e}; the guest runs on here, and a new migration may start");
                stream_ended(&mut armed.pages);
                return Poll::RunOn;
            }
        }
    }
    let Some(out) = armed.session.as_mut() else { return Poll::RunOn };
    let deadline = clock::monotonic_ns() + SLICE_NS;
    let failed = loop {
        match step(shared, out) {
            Ok(Step::Again) if clock::monotonic_ns() < deadline => {}
            Ok(Step::Again | Step::Idle) => return Poll::RunOn,
            Ok(Step::Pause) => return Poll::Pause,
            Err(e) => break e,
        }
    };
    give_up(shared, armed, failed);
    Poll::RunOn
}

/// How fast this CPU seals the state stream's records (KiB/s): 512 KiB in 64 KiB
/// records, the size the stream uses, through the record layer's own code.
/// AES-NI and PCLMULQDQ where CPUID announces them (the svm platform runs on the CPU QEMU
/// gives it, and has enabled SSE on every CPU: `fpu::enable_sse`), else the portable
/// AES-GCM.
fn aes() -> session::Aes {
    if x86::aesni::supported() { session::Aes::Hardware } else { session::Aes::Portable }
}

fn cipher_rate() -> u64 {
    // Measured once per boot (about 0.1 s of CPU 0 under TCG): a host that restarts
    // migrations cannot make CPU 0 pay for it again.
    static RATE: spin::Once<u64> = spin::Once::new();
    *RATE.call_once(measure_cipher)
}

fn measure_cipher() -> u64 {
    let started = clock::monotonic_ns();
    let Ok(bytes) = session::seal_for_benchmark(8, MAX_STATE_CHUNK, aes()) else { return 0 };
    let ns = clock::monotonic_ns().saturating_sub(started).max(1);
    u64::try_from(bytes).unwrap_or(u64::MAX).saturating_mul(1_000_000_000 / 1024) / ns
}

fn start(shared: &'static Shared, pages: &Rings) -> Result<Outgoing, Failure> {
    let cipher = cipher_rate();
    println!(
        "migration: the host started a migration; attesting the destination (this CPU seals the stream at {cipher} KiB/s with AES-256-GCM, {:?} AES)",
        aes()
    );
    let (config, verifier) = IDENTITY.get().ok_or("this SVSM's identity was not worked out")?;
    let [outbound, inbound] = rings_copy(pages).ok_or("no heap for the migration pages")?;
    let evidence = Evidence { svsm: &shared.svsm, platform: &shared.platform };
    let session = Source::start(*config, verifier, evidence, &mut rdrand).map_err(Failure::Session)?;
    Ok(Outgoing {
        session,
        channel: PageChannel::with_rings(outbound, inbound),
        round: Round::Handshake,
        pending: Vec::new(),
        carried: Vec::new(),
        last_progress: clock::monotonic_ns(),
        precopy_started: 0,
        cipher_kib_s: cipher,
        spent: Spent::default(),
        sent: 0,
        tracking: false,
        started: clock::monotonic_ns(),
    })
}

enum Step {
    /// Something moved: go on.
    Again,
    /// Waiting for the host or the peer.
    Idle,
    /// The last round is due.
    Pause,
}

/// One step of the source while the guest runs.
fn step(shared: &Shared, out: &mut Outgoing) -> Result<Step, Failure> {
    // Until the keys, this pump may check the destination's evidence, where x509-cert and
    // rsa allocate without failing gracefully while the guest's vCPUs run on the other
    // CPUs: the heap the check needs is held back from them for the pump (without that
    // much free the check refuses by itself, `VERIFY_HEAP`).
    let checking = matches!(out.session.phase(), SourcePhase::AwaitHello | SourcePhase::AwaitEvidence);
    let held = checking.then(|| super::heap::hold_back(migrate::evidence::VERIFY_HEAP));
    let moved = Spent::timed(&mut out.spent.channel, || pump(&mut out.session, &mut out.channel));
    drop(held);
    let moved = moved?;
    if let SourceOutcome::KeepRunning(e) = out.session.outcome() {
        return Err(Failure::SessionFailed(e));
    }
    let now = clock::monotonic_ns();
    if moved {
        out.last_progress = now;
    } else if now.saturating_sub(out.last_progress) > STALL_NS {
        return Err(Failure::Said("neither the host nor the destination moved for 30 s"));
    }
    if !out.session.can_send_state() {
        return Ok(if moved { Step::Again } else { Step::Idle });
    }
    if !out.pending.is_empty() {
        send_pending(out)?;
        return Ok(Step::Again);
    }
    let p = &mut shared.platform.platform(0);
    let svsm = &shared.svsm;
    match out.round {
        Round::Handshake => {
            println!("migration: the destination is attested (same measurement and policy); pre-copy starts");
            svsm.start_dirty_tracking(p).map_err(Failure::Dirty)?;
            out.tracking = true;
            out.precopy_started = clock::monotonic_ns();
            out.round = Round::Full(0);
        }
        Round::Full(from) => {
            let (chunk, next) = Spent::timed(&mut out.spent.export, || svsm.export_memory_up_to(p, from, CHUNK_PAGES))
                .map_err(|e| Failure::State("memory", e))?;
            stream::frame(&mut out.pending, Item::Memory, &chunk).map_err(|e| Failure::State(FRAMING, e))?;
            out.round = match next {
                Some(next) => Round::Full(next),
                None => {
                    println!(
                        "migration: round 1 (every validated page): {} KiB",
                        (out.sent + out.pending.len()) / 1024
                    );
                    Round::Dirty { n: 2, todo: None }
                }
            };
        }
        Round::Dirty { n, ref mut todo } => {
            let pages = match todo {
                Some(pages) => pages,
                None => {
                    let mut pages = svsm.take_dirty(p, TAKE_PAGES).map_err(Failure::Dirty)?;
                    println!("migration: round {n}: {} page(s) written during the round before", pages.len());
                    if pages.len() < LAST_ROUND_PAGES || n >= MAX_DIRTY_ROUNDS {
                        // Those pages go with the last round, the guest stopped.
                        out.carried = pages;
                        out.round = Round::Last;
                        println!("migration: the guest stops for the last round");
                        return Ok(Step::Pause);
                    }
                    pages.reverse();
                    todo.insert(pages)
                }
            };
            // The last pages of the list, read in place: no copy of them on the heap.
            let at = pages.len().saturating_sub(CHUNK_PAGES);
            let chunk = pages.get(at..).unwrap_or_default();
            let records = Spent::timed(&mut out.spent.export, || svsm.export_pages(p, chunk))
                .map_err(|e| Failure::State("memory", e))?;
            pages.truncate(at);
            if pages.is_empty() {
                out.round = Round::Dirty { n: n + 1, todo: None };
            }
            stream::frame(&mut out.pending, Item::Memory, &records).map_err(|e| Failure::State(FRAMING, e))?;
        }
        Round::Last => return Ok(Step::Pause),
    }
    Ok(Step::Again)
}

/// What a failure to frame the stream was doing.
const FRAMING: &str = "framing the state stream";

/// Hand the session as much of the pending stream as one record carries.
fn send_pending(out: &mut Outgoing) -> Result<(), Failure> {
    let n = out.pending.len().min(MAX_STATE_CHUNK);
    let chunk = out.pending.get(..n).ok_or("the pending stream")?;
    let session = &mut out.session;
    Spent::timed(&mut out.spent.channel, || session.send_state(chunk)).map_err(Failure::Session)?;
    out.pending.drain(..n);
    out.sent += n;
    Ok(())
}

/// The session failed before the commit: the guest gets its write access back and runs
/// on here.
/// The device is kept for the next migration the host starts: this SVSM writes
/// `COMPLETED` into its outbound page (its stream has ended), and a new session begins
/// when the host writes `RUNNING` there again. It often follows a full heap: nothing
/// here allocates but the ABORT's record, which may fail.
fn give_up(shared: &Shared, armed: &mut Armed, why: Failure) {
    if let Some(out) = armed.session.as_mut() {
        let _ = out.session.abort(session::AbortReason::INTERNAL);
        // The ABORT, if the host takes it soon: the destination then stops at once.
        let deadline = clock::monotonic_ns() + 1_000_000_000;
        while !session::Endpoint::is_done(&out.session) && clock::monotonic_ns() < deadline {
            if pump(&mut out.session, &mut out.channel).is_err() {
                break;
            }
        }
        if out.tracking && shared.svsm.stop_dirty_tracking(&mut shared.platform.platform(0)).is_err() {
            println!("migration: dirty tracking did not stop cleanly");
        }
    }
    if shared.platform.paused() {
        shared.platform.resume();
    }
    println!("migration: failed ({why}); the guest runs on here, and a new migration may start");
    // The session's memory goes back to the heap; its room stays for the next one.
    *armed.session = None;
    SESSION.store(false, core::sync::atomic::Ordering::Release);
    stream_ended(&mut armed.pages);
}

/// Says on the outbound page that this SVSM's stream has ended (`COMPLETED`): the host
/// starts the pages again for the next migration.
pub fn stream_ended(pages: &mut Rings) {
    if let Some(page) = pages[0].first_mut() {
        page.write_status(abi::migration::MigrationStatus::COMPLETED);
    }
}

/// The last round, on CPU 0 holding no vCPU: stop the guest, send the rest, commit. On a
/// commit this SVSM ends (the guest runs on at the destination); on a failure before it
/// the guest runs on here.
pub fn last_round(shared: &'static Shared) {
    let mut slot = SOURCE.lock();
    let Some(armed) = slot.as_mut() else { return };
    let Some(out) = armed.session.as_mut() else { return };
    // After the COMMIT_ACK the vTPM must be marked as moved in this SVSM's sealed state;
    // a state that cannot take the mark (closed by a write the host failed) keeps the
    // guest here instead of losing it.
    let failed = if !shared.svsm.vtpm_can_move_away() {
        Failure::Said("this SVSM's sealed state is closed: its vTPM could not be marked as moved")
    } else {
        let paused_at = clock::monotonic_ns();
        shared.platform.pause(0);
        match commit(shared, out, paused_at) {
            Ok(()) => committed(shared, out, paused_at),
            Err(e) => e,
        }
    };
    give_up(shared, armed, failed);
}

/// Committed: the guest is the destination's now. It never runs here again, whatever
/// becomes of the FINISH: this SVSM ends.
fn committed(shared: &Shared, out: &mut Outgoing, paused_at: u64) -> ! {
    // The figures end at the commit, not at the host's taking of the FINISH.
    let now = clock::monotonic_ns();
    // The vTPM is the destination's too: this SVSM's sealed state must never start it
    // again (a host booting this image on this disk would have two of one TPM). Marked
    // before the FINISH lets the destination run; if the mark cannot be made, no FINISH
    // goes: the guest is lost, never forked. A disk refusal that left the sealed state
    // open is tried again every 50 ms for up to 4 minutes: after the commit the guest
    // never runs here again, so waiting for a slow host costs nothing, and giving up
    // early could lose the guest. The last minute of the destination's 5 is the FINISH's.
    let deadline = now.saturating_add(FINISH_DEADLINE_NS);
    let retry_until = deadline.saturating_sub(FINISH_DEADLINE_NS / 5);
    let mut tries = 0u32;
    let keep_trying = || {
        tries = tries.saturating_add(1);
        if tries == 1 {
            println!("migration: the host refused the vTPM's tombstone; trying again for up to 4 minutes");
        }
        clock::spin_until(clock::monotonic_ns().saturating_add(50_000_000).min(retry_until));
        clock::monotonic_ns() < retry_until
    };
    let finished = match shared.svsm.vtpm_moved_away(keep_trying) {
        Ok(marked) => {
            if marked {
                println!(
                    "migration: the vTPM is marked as moved in this SVSM's sealed state: it never starts here again"
                );
            }
            hand_over_finish(out, deadline)
        }
        Err(e) => Err(Failure::NotMarked(e)),
    };
    let downtime = now.saturating_sub(paused_at) / 1_000_000;
    let total = now.saturating_sub(out.started) / 1_000_000;
    let moving_ms = now.saturating_sub(out.precopy_started) / 1_000_000;
    let rate = u64::try_from(out.sent / 1024).unwrap_or(u64::MAX).saturating_mul(1000) / moving_ms.max(1);
    println!(
        "migration: committed: {} KiB of state in {total} ms, the guest stopped for {downtime} ms; it runs on at the destination, this SVSM stops",
        out.sent / 1024
    );
    println!(
        "migration: throughput {rate} KiB/s over {moving_ms} ms of state transfer; the cipher alone {} KiB/s",
        out.cipher_kib_s
    );
    println!(
        "migration: the source's time: {} ms reading guest memory, {} ms in the channel (sealing records, moving fragments, polling the host); the rest ran the guest",
        out.spent.export / 1_000_000,
        out.spent.channel / 1_000_000
    );
    if let Err(e) = finished {
        println!("migration: {e}; this SVSM never runs it again (lost rather than run twice)");
    }
    super::exit::migrated()
}

/// Everything the guest still has, then the COMMIT, until the destination confirms it.
fn commit(shared: &Shared, out: &mut Outgoing, paused_at: u64) -> Result<(), Failure> {
    let p = &mut shared.platform.platform(0);
    let svsm = &shared.svsm;
    // The guest is stopped: the log only shrinks. Its pages are taken a batch at a time.
    let mut dirty = core::mem::take(&mut out.carried);
    let mut log_empty = false;
    // The dirty pages a chunk at a time, then the rest of the last round (the services,
    // the vCPUs, the deposits, the end): the heap holds one piece at a time.
    let mut rest_made = false;
    let deadline = paused_at + LAST_ROUND_DEADLINE_NS;
    let mut committed = false;
    loop {
        if clock::monotonic_ns() > deadline {
            return Err(Failure::Said("the last round timed out"));
        }
        let pumped = Spent::timed(&mut out.spent.channel, || pump(&mut out.session, &mut out.channel));
        // The outcome first: once committed the guest never runs here again, whatever else
        // the call said.
        match out.session.outcome() {
            SourceOutcome::KeepRunning(e) => return Err(Failure::SessionFailed(e)),
            SourceOutcome::Committed => return Ok(()),
            SourceOutcome::InProgress => pumped?,
        };
        if !out.session.can_send_state() {
            continue;
        }
        if !out.pending.is_empty() {
            send_pending(out)?;
        } else if dirty.is_empty() && !log_empty {
            dirty = svsm.take_dirty(p, TAKE_PAGES).map_err(Failure::Dirty)?;
            log_empty = dirty.is_empty();
        } else if !dirty.is_empty() {
            let at = dirty.len().saturating_sub(CHUNK_PAGES);
            let chunk = dirty.get(at..).unwrap_or_default();
            let records = Spent::timed(&mut out.spent.export, || svsm.export_pages(p, chunk))
                .map_err(|e| Failure::State("memory", e))?;
            dirty.truncate(at);
            stream::frame(&mut out.pending, Item::Memory, &records).map_err(|e| Failure::State(FRAMING, e))?;
        } else if !rest_made {
            out.pending = Spent::timed(&mut out.spent.export, || svsm.export_last_round(p, &[]))
                .map_err(|e| Failure::State("the last round", e))?;
            rest_made = true;
        } else if !committed {
            out.session.commit().map_err(Failure::Session)?;
            committed = true;
        }
    }
}

/// The FINISH until the destination's FINISH_ACK says it runs the guest, then the page's
/// `COMPLETED` (the host reads the page's file, which outlives QEMU): pump until the
/// channel is closed. No FINISH_ACK [`FINISH_OFFER_NS`] after the last copy was offered:
/// the same FINISH again (the host may have lost or changed it). What comes back that is
/// not the FINISH_ACK is named by `pump` and changes nothing: the guest never runs here
/// again.
fn hand_over_finish(out: &mut Outgoing, deadline: u64) -> Result<(), Failure> {
    let mut offers = 0u32;
    let mut offered_at = clock::monotonic_ns();
    let mut passed_over = None;
    loop {
        if let Err(e) = pump(&mut out.session, &mut out.channel) {
            passed_over = Some(e);
        }
        let now = clock::monotonic_ns();
        if out.session.finish_acknowledged() {
            // The destination runs the guest: the page's COMPLETED is the host's, as long
            // as the deadline lets it take the last fragments.
            if out.channel.close() != Ok(false) || now > deadline {
                if offers > 0 {
                    println!("migration: the FINISH was offered {} time(s) before its FINISH_ACK came", offers + 1);
                }
                return Ok(());
            }
            continue;
        }
        if now.saturating_sub(offered_at) > FINISH_OFFER_NS {
            match out.session.offer_finish_again() {
                Ok(true) => {
                    offers = offers.saturating_add(1);
                    offered_at = now;
                    let copy = offers + 1;
                    match passed_over.take() {
                        Some(e) => println!(
                            "migration: no FINISH_ACK from the destination yet; the FINISH again (copy {copy}), after {e}"
                        ),
                        None => println!(
                            "migration: no FINISH_ACK from the destination yet; the FINISH again (copy {copy})"
                        ),
                    }
                }
                Ok(false) => {}
                Err(e) => return Err(Failure::GaveUp(e)),
            }
        }
        if now > deadline {
            return Err(Failure::NoFinishAck(offers + 1));
        }
    }
}
