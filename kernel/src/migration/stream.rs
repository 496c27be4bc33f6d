//! The state stream a migration session carries, as items in a fixed order
//! (docs/migration.md "The state stream"):
//!
//! ```text
//! item: u8 kind | u32 length (big-endian) | bytes
//! kind 1 memory chunk (BWMM)   kind 2 services (BWSS)
//! kind 3 deposits (BWDP)       kind 4 a vCPU (BWVC)
//! kind 5 the end: u32 how many vCPUs the stream carried
//! ```
//!
//! The source sends memory chunks while its guest runs (pre-copy rounds), then, with the
//! guest stopped, the last round ([`Svsm::export_last_round`]): the last memory chunks,
//! the services, the startup vCPU, the deposits, the other vCPUs, the end. The
//! destination takes
//! the bytes as the session hands them over, in pieces of any size ([`Incoming`]), and
//! applies each item once it is whole. An item out of that order, of an unknown kind,
//! longer than any item can be, or one the SVSM refuses ends the stream: the session
//! then aborts, and the source's guest runs on.

use super::memory::MemoryImportError;
use super::vcpus::VcpuImportError;
use super::{MAX_CHUNK_PAGES, MAX_SERVICE_STATE, ServiceState, ServiceStateError};
use crate::platform::Platform;
use crate::svsm::Svsm;
use alloc::vec::Vec;

/// What an item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Item {
    Memory = 1,
    Services = 2,
    Deposits = 3,
    Vcpu = 4,
    End = 5,
}

impl Item {
    fn of(kind: u8) -> Option<Self> {
        Some(match kind {
            1 => Self::Memory,
            2 => Self::Services,
            3 => Self::Deposits,
            4 => Self::Vcpu,
            5 => Self::End,
            _ => return None,
        })
    }
}

/// An item's header: its kind and length.
const HEADER: usize = 5;
/// The longest item: services and deposits are bounded by [`MAX_SERVICE_STATE`], a
/// memory chunk by [`MAX_CHUNK_PAGES`] records, a vCPU by two pages and its fields.
pub const MAX_ITEM: usize = MAX_SERVICE_STATE + 4096;
const _: () = assert!(8 + MAX_CHUNK_PAGES * (8 + 1 + 3 + 4096) <= MAX_ITEM);

/// Append an item to `out`.
pub fn frame(out: &mut Vec<u8>, item: Item, bytes: &[u8]) -> Result<(), ServiceStateError> {
    let len = u32::try_from(bytes.len()).map_err(|_| ServiceStateError::TooLarge)?;
    if bytes.len() > MAX_ITEM {
        return Err(ServiceStateError::TooLarge);
    }
    out.try_reserve(HEADER + bytes.len()).map_err(|_| ServiceStateError::OutOfMemory)?;
    out.push(item as u8);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Where a stream is in the order of its items.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stage {
    /// Memory chunks so far (or nothing).
    #[default]
    Memory,
    /// The services arrived; the startup vCPU comes next.
    Services,
    /// The startup vCPU arrived; the deposits come next.
    Startup,
    /// The deposits arrived; the other vCPUs follow, then the end.
    Vcpus,
    /// The end arrived: nothing more may come.
    Done,
}

impl Stage {
    /// The stage after an item of `kind`, or `None` if it may not come now.
    pub fn after(self, kind: Item) -> Option<Self> {
        match (self, kind) {
            (Self::Memory, Item::Memory) => Some(Self::Memory),
            (Self::Memory, Item::Services) => Some(Self::Services),
            (Self::Services, Item::Vcpu) => Some(Self::Startup),
            (Self::Startup, Item::Deposits) => Some(Self::Vcpus),
            (Self::Vcpus, Item::Vcpu) => Some(Self::Vcpus),
            (Self::Vcpus, Item::End) => Some(Self::Done),
            _ => None,
        }
    }
}

/// Why an incoming stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// An unknown kind, an item longer than [`MAX_ITEM`], an item out of order, or a
    /// stream that ended before its last round was whole.
    Malformed,
    /// The heap could not hold an item.
    OutOfMemory,
    Memory(MemoryImportError),
    Services(ServiceStateError),
    Vcpu(VcpuImportError),
}

/// The destination's side of a stream.
#[derive(Debug, Default)]
pub struct Incoming {
    /// The bytes of the item not yet whole (its header first).
    partial: Vec<u8>,
    stage: Stage,
    services: Option<ServiceState>,
    /// vCPUs applied so far.
    vcpus: u32,
    /// Set once an item failed: the stream takes nothing more.
    failed: bool,
}

impl Incoming {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// vCPUs applied so far, the startup vCPU included.
    pub fn vcpus(&self) -> u32 {
        self.vcpus
    }

    /// Take the next bytes of the stream and apply each item they complete.
    pub fn take<P: Platform + ?Sized>(&mut self, svsm: &Svsm, p: &mut P, mut bytes: &[u8]) -> Result<(), StreamError> {
        if self.failed {
            return Err(StreamError::Malformed);
        }
        while !bytes.is_empty() {
            // The header first, then the body it announces (checked before any of it
            // is kept).
            let whole = if self.partial.len() < HEADER { HEADER } else { HEADER.saturating_add(self.header_len()) };
            let (now, rest) = bytes.split_at(whole.saturating_sub(self.partial.len()).min(bytes.len()));
            bytes = rest;
            self.partial.try_reserve(now.len()).map_err(|_| self.fail(StreamError::OutOfMemory))?;
            self.partial.extend_from_slice(now);
            if self.partial.len() == HEADER {
                self.check_header()?;
            }
            if self.partial.len() >= HEADER && self.partial.len() == HEADER.saturating_add(self.header_len()) {
                let item = core::mem::take(&mut self.partial);
                self.apply(svsm, p, &item).map_err(|e| self.fail(e))?;
            }
        }
        Ok(())
    }

    /// The stream is over (the session committed): the services it carried, for the
    /// caller to start the vTPM from and apply. Refused unless the last round is whole.
    pub fn finish(self) -> Result<ServiceState, StreamError> {
        match (self.failed, self.stage, self.partial.is_empty(), self.services) {
            (false, Stage::Done, true, Some(services)) => Ok(services),
            _ => Err(StreamError::Malformed),
        }
    }

    fn fail(&mut self, e: StreamError) -> StreamError {
        self.failed = true;
        e
    }

    fn header_len(&self) -> usize {
        let len = self.partial.get(1..HEADER).and_then(|l| <[u8; 4]>::try_from(l).ok()).map(u32::from_be_bytes);
        len.and_then(|l| usize::try_from(l).ok()).unwrap_or(usize::MAX)
    }

    /// A whole header: a known kind that may come now, and a length any item can have.
    fn check_header(&mut self) -> Result<(), StreamError> {
        let kind = self.partial.first().copied().and_then(Item::of);
        let fits = self.header_len() <= MAX_ITEM;
        match kind.and_then(|k| self.stage.after(k)) {
            Some(_) if fits => Ok(()),
            _ => Err(self.fail(StreamError::Malformed)),
        }
    }

    fn apply<P: Platform + ?Sized>(&mut self, svsm: &Svsm, p: &mut P, item: &[u8]) -> Result<(), StreamError> {
        let (kind, body) = match item.split_first() {
            Some((kind, rest)) => (Item::of(*kind).ok_or(StreamError::Malformed)?, rest.get(4..).unwrap_or(&[])),
            None => return Err(StreamError::Malformed),
        };
        let next = self.stage.after(kind).ok_or(StreamError::Malformed)?;
        match kind {
            Item::Memory => {
                svsm.import_memory(p, body).map_err(StreamError::Memory)?;
            }
            Item::Services => self.services = Some(ServiceState::decode(body).map_err(StreamError::Services)?),
            Item::Deposits => {
                svsm.import_deposits(p, body).map_err(StreamError::Vcpu)?;
            }
            // The first vCPU is the startup vCPU, and only the first.
            Item::Vcpu if self.stage == Stage::Services => {
                svsm.import_startup_vcpu(p, body).map_err(StreamError::Vcpu)?;
                self.vcpus = self.vcpus.saturating_add(1);
            }
            Item::Vcpu => {
                svsm.import_vcpu(p, body).map_err(StreamError::Vcpu)?;
                self.vcpus = self.vcpus.saturating_add(1);
            }
            // The count makes a stream cut after any vCPU incomplete by itself, not only
            // through the session's commit.
            Item::End => {
                if body != self.vcpus.to_be_bytes() {
                    return Err(StreamError::Malformed);
                }
            }
        }
        self.stage = next;
        Ok(())
    }
}

impl Svsm {
    /// The last round, with the guest stopped, as stream items: the pages `dirty` since
    /// the previous round (see [`super::DirtyLog`]), the services, the startup vCPU, the
    /// deposits, then the other vCPUs.
    pub fn export_last_round<P: Platform + ?Sized>(&self, p: &P, dirty: &[u64]) -> Result<Vec<u8>, ServiceStateError> {
        let mut out = Vec::new();
        for pfns in dirty.chunks(MAX_CHUNK_PAGES) {
            frame(&mut out, Item::Memory, &self.export_pages(p, pfns)?)?;
        }
        frame(&mut out, Item::Services, &self.export_services(p)?.encode()?)?;
        let vcpus = self.export_vcpus(p)?;
        let (startup, others) = vcpus.split_first().ok_or(ServiceStateError::Malformed)?;
        frame(&mut out, Item::Vcpu, startup)?;
        frame(&mut out, Item::Deposits, &self.export_deposits()?)?;
        for vcpu in others {
            frame(&mut out, Item::Vcpu, vcpu)?;
        }
        let count = u32::try_from(vcpus.len()).map_err(|_| ServiceStateError::TooLarge)?;
        frame(&mut out, Item::End, &count.to_be_bytes())?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_in_one_order() {
        use Item::*;
        let good = [Memory, Memory, Services, Vcpu, Deposits, Vcpu, Vcpu, End];
        let mut stage = Stage::default();
        for item in good {
            stage = stage.after(item).expect("in order");
        }
        assert_eq!(stage, Stage::Done);
        // Everything else is refused at the point it comes.
        for wrong in [
            &[Services, Memory][..],
            &[Vcpu],
            &[Deposits],
            &[Services, Services],
            &[Services, Deposits],
            &[Services, Vcpu, Vcpu],
            &[Services, Vcpu, Memory],
            &[Services, Vcpu, Deposits, Deposits],
            &[Services, Vcpu, Deposits, Memory],
            &[Services, Vcpu, End],
            &[Services, Vcpu, Deposits, End, Vcpu],
        ] {
            let mut stage = Some(Stage::default());
            for item in wrong {
                stage = stage.and_then(|s| s.after(*item));
            }
            assert_eq!(stage, None, "{wrong:?}");
        }
    }

    #[test]
    fn a_frame_is_kind_length_bytes() {
        let mut out = Vec::new();
        frame(&mut out, Item::Deposits, b"abc").unwrap();
        assert_eq!(out, [3, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(frame(&mut out, Item::Memory, &alloc::vec![0; MAX_ITEM + 1]), Err(ServiceStateError::TooLarge));
    }
}
