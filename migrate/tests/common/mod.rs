//! What the session tests share: a fake attestation (reports signed by a test P-384 key),
//! a deterministic entropy source, and a driver that runs a whole migration over the
//! in-memory relay.
#![allow(dead_code)]

use bulwark_migrate::EntropyError;
use bulwark_migrate::session::{
    self, Aes, Config, Destination, DestinationOutcome, DestinationPhase, Endpoint, EvidenceError, EvidenceProvider,
    FrameKind, MAX_RING_PAGES, MigrationError, Mode, PeerIdentity, PeerVerifier, REPORT_DATA_LEN, Source,
    SourceOutcome, SourcePhase, VerifyError,
};
use bulwark_migrate::testing::{Direction, Fault, Relay, Relayed};
use p384::ecdsa::signature::{Signer, Verifier};
use p384::ecdsa::{Signature, SigningKey, VerifyingKey};

/// The fake report: measurement (48) | policy (8) | report data (64) | certificate
/// filler length (u32) | filler | P-384 ECDSA signature (96) over everything before it.
/// The filler stands in for the certificate chain, so evidence spans several buffers.
const SIGNATURE_LEN: usize = 96;
pub const CERT_FILLER: usize = 2500;

pub fn authority(seed: u8) -> SigningKey {
    let mut bytes = [0u8; 48];
    bytes[0] = 0x5A;
    bytes[47] = seed;
    SigningKey::from_slice(&bytes).unwrap()
}

/// What the SVSM under test is; its PSP signs with `authority`.
#[derive(Clone)]
pub struct Attester {
    pub identity: PeerIdentity,
    pub authority: SigningKey,
    /// When set, reports carry this REPORT_DATA whatever is asked (a replayed report).
    pub fixed_report_data: Option<[u8; REPORT_DATA_LEN]>,
}

impl Attester {
    pub fn new(identity: PeerIdentity) -> Self {
        Self { identity, authority: authority(1), fixed_report_data: None }
    }
}

pub fn fake_report(identity: &PeerIdentity, report_data: &[u8; REPORT_DATA_LEN], key: &SigningKey) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&identity.measurement);
    out.extend_from_slice(&identity.policy.to_le_bytes());
    out.extend_from_slice(report_data);
    out.extend_from_slice(&(CERT_FILLER as u32).to_le_bytes());
    out.extend((0..CERT_FILLER).map(|i| (i % 251) as u8));
    let signature: Signature = key.sign(&out);
    out.extend_from_slice(&signature.to_bytes());
    out
}

impl EvidenceProvider for Attester {
    fn evidence(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, EvidenceError> {
        let data = self.fixed_report_data.unwrap_or(*report_data);
        Ok(fake_report(&self.identity, &data, &self.authority))
    }
}

/// Trusts reports signed by one authority key.
pub struct TestVerifier {
    pub trusted: VerifyingKey,
}

impl TestVerifier {
    pub fn new() -> Self {
        Self { trusted: *authority(1).verifying_key() }
    }
}

impl PeerVerifier for TestVerifier {
    fn verify(&self, evidence: &[u8], expected: &[u8; REPORT_DATA_LEN]) -> Result<PeerIdentity, VerifyError> {
        let fixed = 48 + 8 + 64 + 4;
        if evidence.len() < fixed + SIGNATURE_LEN {
            return Err(VerifyError::Malformed);
        }
        let (signed, signature) = evidence.split_at(evidence.len() - SIGNATURE_LEN);
        let filler = u32::from_le_bytes(signed[120..124].try_into().unwrap()) as usize;
        if signed.len() != fixed + filler {
            return Err(VerifyError::Malformed);
        }
        let signature = Signature::from_slice(signature).map_err(|_| VerifyError::Malformed)?;
        self.trusted.verify(signed, &signature).map_err(|_| VerifyError::Untrusted)?;
        if &signed[56..120] != expected {
            return Err(VerifyError::ReportDataMismatch);
        }
        Ok(PeerIdentity {
            measurement: signed[..48].try_into().unwrap(),
            policy: u64::from_le_bytes(signed[48..56].try_into().unwrap()),
        })
    }
}

/// xorshift64*: deterministic, never for anything real.
pub fn entropy(seed: u64) -> impl FnMut(&mut [u8]) -> Result<(), EntropyError> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move |buf: &mut [u8]| {
        for b in buf {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            *b = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8;
        }
        Ok(())
    }
}

/// Pseudo-random state bytes.
pub fn state_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    entropy(seed)(&mut out).unwrap();
    out
}

pub const IDENTITY: PeerIdentity = PeerIdentity { measurement: [0x11; 48], policy: 0x3_0000 };

/// One side's setup.
#[derive(Clone)]
pub struct Side {
    /// What the SVSM believes it is (its own launch, compared with the peer's).
    pub config: Config,
    /// What its reports say.
    pub attester: Attester,
}

impl Side {
    pub fn new() -> Self {
        Self {
            config: Config { identity: IDENTITY, ring_pages: None, aes: Aes::Portable },
            attester: Attester::new(IDENTITY),
        }
    }

    /// This SVSM offering a ring of `pages` pages (its channel has that many per direction).
    pub fn with_ring(pages: u16) -> Self {
        let mut side = Self::new();
        side.config.ring_pages = Some(pages);
        side
    }

    /// Another SVSM: both its belief and its reports change.
    pub fn running(identity: PeerIdentity) -> Self {
        Self { config: Config { identity, ring_pages: None, aes: Aes::Portable }, attester: Attester::new(identity) }
    }
}

/// The result of a migration run.
pub struct Run {
    pub source: SourceOutcome,
    pub destination: DestinationOutcome,
    /// Every chunk the destination took, concatenated (only meaningful if it completed).
    pub received: Vec<u8>,
    /// The destination accepted a COMMIT at some point (it then held exactly the state).
    pub commit_accepted: bool,
    pub source_mode: Option<Mode>,
    pub destination_mode: Option<Mode>,
    pub log: Vec<Relayed>,
    pub fault_applied: bool,
    /// The relay had to hang up on a stalled session.
    pub stalled: bool,
    /// Rounds of the driver's loop (each pumps both sides and the relay): what a
    /// migration costs in host round trips.
    pub rounds: u64,
    /// Errors `pump` returned, per side.
    pub source_errors: Vec<MigrationError>,
    pub destination_errors: Vec<MigrationError>,
    /// Times the source offered its FINISH again (no FINISH_ACK when the session stalled).
    pub finish_offers: u32,
    /// The source had the destination's FINISH_ACK.
    pub finish_acknowledged: bool,
}

impl Run {
    pub fn succeeded(&self) -> bool {
        self.source == SourceOutcome::Committed && self.destination == DestinationOutcome::Completed
    }

    /// The error the source's outcome names.
    pub fn source_error(&self) -> Option<MigrationError> {
        match self.source {
            SourceOutcome::KeepRunning(e) => Some(e),
            _ => None,
        }
    }

    /// The error the destination's outcome names.
    pub fn destination_error(&self) -> Option<MigrationError> {
        match self.destination {
            DestinationOutcome::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// The buffers relayed in `direction`.
    pub fn frames(&self, direction: Direction) -> impl Iterator<Item = &Relayed> {
        self.log.iter().filter(move |r| r.direction == direction)
    }
}

/// Also lets a test act on each side between rounds (an abort, say).
pub type Hook<'a> = &'a mut dyn FnMut(&mut Source<TestVerifier, Attester>, &mut Destination<TestVerifier, Attester>);

/// Runs a migration of `state` in chunks of `chunk` bytes over the relay with `fault`.
pub fn migrate(state: &[u8], chunk: usize, fault: Option<Fault>, source: Side, destination: Side) -> Run {
    migrate_with(state, chunk, fault, source, destination, &mut |_, _| {})
}

pub fn migrate_with(
    state: &[u8],
    chunk: usize,
    fault: Option<Fault>,
    source: Side,
    destination: Side,
    hook: Hook<'_>,
) -> Run {
    migrate_faulting(state, chunk, fault, None, source, destination, hook)
}

/// As [`migrate_with`], the fault applied to the first buffer starting a frame of `on`
/// (if given) rather than at its index, as `bulwark migrate relay --fault KIND@finish`.
pub fn migrate_faulting(
    state: &[u8],
    chunk: usize,
    fault: Option<Fault>,
    on: Option<FrameKind>,
    source: Side,
    destination: Side,
    hook: Hook<'_>,
) -> Run {
    // Both channels with as many ring pages as the larger offer (the smaller offer's side
    // uses no more than it offered).
    let pages = [source.config.ring_pages, destination.config.ring_pages]
        .into_iter()
        .flatten()
        .map(usize::from)
        .filter(|&p| p <= usize::from(MAX_RING_PAGES))
        .max()
        .unwrap_or(1);
    let (mut relay, mut source_channel, mut destination_channel) = Relay::connect_rings(fault, pages);
    if let Some(kind) = on {
        relay = relay.fault_on_first(kind);
    }
    let mut src = Source::start(source.config, TestVerifier::new(), source.attester, &mut entropy(1)).unwrap();
    let mut dst =
        Destination::start(destination.config, TestVerifier::new(), destination.attester, &mut entropy(2)).unwrap();
    let mut chunks = state.chunks(chunk.max(1));
    let mut commit_sent = false;
    let mut received = Vec::new();
    let mut commit_accepted = false;
    let (mut source_errors, mut destination_errors) = (Vec::new(), Vec::new());
    let mut hung_up = false;
    let mut stalled = false;
    let mut rounds = 0u64;
    let mut finish_offers = 0;
    loop {
        rounds += 1;
        assert!(rounds < 10_000_000, "the session does not end");
        let mut progress = false;
        hook(&mut src, &mut dst);
        if src.can_send_state() {
            match chunks.next() {
                Some(c) => src.send_state(c).unwrap(),
                None if !commit_sent => {
                    src.commit().unwrap();
                    commit_sent = true;
                }
                None => {}
            }
        }
        match session::pump(&mut src, &mut source_channel) {
            Ok(p) => progress |= p,
            Err(e) => {
                progress = true;
                source_errors.push(e);
            }
        }
        progress |= relay.pump();
        match session::pump(&mut dst, &mut destination_channel) {
            Ok(p) => progress |= p,
            Err(e) => {
                progress = true;
                destination_errors.push(e);
            }
        }
        while let Some(c) = dst.take_state() {
            received.extend_from_slice(&c);
        }
        if matches!(dst.phase(), DestinationPhase::AwaitFinish | DestinationPhase::Completed) && !commit_accepted {
            commit_accepted = true;
            assert!(received == state, "a COMMIT was accepted over state that differs");
        }
        progress |= relay.pump();
        // What the bare source does on a timer: no FINISH_ACK yet, the FINISH again (the
        // relay stalling stands in for the time passing), a bounded number of times.
        if !progress && !hung_up && src.phase() == SourcePhase::Committed && finish_offers < FINISH_OFFERS {
            progress = src.offer_finish_again().unwrap();
            finish_offers += u32::from(progress);
        }
        if !progress {
            if hung_up {
                break;
            }
            stalled = !(src.is_done() && dst.is_done());
            relay.hang_up();
            hung_up = true;
        }
    }
    Run {
        source: src.outcome(),
        destination: dst.outcome(),
        received,
        commit_accepted,
        source_mode: src.mode(),
        destination_mode: dst.mode(),
        log: relay.log().to_vec(),
        fault_applied: relay.fault_applied(),
        stalled,
        rounds,
        source_errors,
        destination_errors,
        finish_offers,
        finish_acknowledged: src.finish_acknowledged(),
    }
}

/// How often the test driver offers the FINISH again before it hangs up.
pub const FINISH_OFFERS: u32 = 3;
