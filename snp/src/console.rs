//! Serial output through the GHCB: a whole line in one host exit, with no lock.
//!
//! On SNP every port write is a host exit. Byte by byte, several CPUs' lines would mix
//! unless a console lock were held for the whole line, and that lock would be held
//! across one exit per byte: a slow host would stall every CPU that logs. Instead a
//! line (built first in the caller's buffer) goes out as one string-output event, REP
//! OUTSB from the GHCB's shared buffer: SW_EXITINFO1 names the port with the string and
//! REP bits, SW_EXITINFO2 the count, SW_SCRATCH the buffer (as Linux's `vc_handle_ioio`
//! does for OUTS, arch/x86/coco/sev; KVM takes the count from SW_EXITINFO2 in
//! `sev_es_string_io`). The host handles an exit's data at once, so lines come out
//! whole with no lock in the SVSM. A line longer than the shared buffer (2032 bytes) goes
//! out in pieces, which other CPUs' lines may come between.
//!
//! A host that refuses string I/O gets single-byte events from then on (remembered in an
//! atomic); lines of several CPUs may then mix, which only that host sees.

use crate::ghcb::{Ghcb, GhcbError};
use crate::hw::{Shared, SnpHw};
use abi::ghcb::{exit, ioio, offset};
use core::sync::atomic::{AtomicBool, Ordering};

/// A serial port reached through GHCB port-I/O events.
#[derive(Debug)]
pub struct SerialConsole {
    port: u16,
    /// The host refused a string event: write byte by byte.
    bytewise: AtomicBool,
}

impl SerialConsole {
    pub const fn new(port: u16) -> Self {
        Self { port, bytewise: AtomicBool::new(false) }
    }

    /// Write `bytes` (a line, ideally): one exit per 2032 bytes, or one per byte after
    /// the host refused string I/O. Stops at the first event the host fails.
    pub fn write<H: SnpHw + ?Sized>(&self, hw: &mut H, bytes: &[u8]) -> Result<(), GhcbError> {
        for chunk in bytes.chunks(offset::SHARED_BUFFER_LEN) {
            if !self.bytewise.load(Ordering::Relaxed) {
                match self.string_out(hw, chunk) {
                    Ok(()) => continue,
                    // The host answered, with an error: it does not do string I/O.
                    Err(GhcbError::Host(_)) => self.bytewise.store(true, Ordering::Relaxed),
                    Err(e) => return Err(e),
                }
            }
            for &b in chunk {
                self.byte_out(hw, b)?;
            }
        }
        Ok(())
    }

    fn info(&self, string: bool) -> u64 {
        let kind = if string { ioio::STRING | ioio::REP } else { 0 };
        u64::from(self.port) << ioio::PORT_SHIFT | kind | ioio::SIZE8 | ioio::ADDR64
    }

    fn string_out<H: SnpHw + ?Sized>(&self, hw: &mut H, chunk: &[u8]) -> Result<(), GhcbError> {
        let mut g = Ghcb::event(exit::IOIO, self.info(true), chunk.len() as u64);
        if let Some(buffer) = g.shared_buffer_mut().get_mut(..chunk.len()) {
            buffer.copy_from_slice(chunk);
        }
        g.set(offset::SW_SCRATCH, hw.shared_gpa(Shared::Ghcb) + offset::SHARED_BUFFER as u64);
        g.call(hw)
    }

    fn byte_out<H: SnpHw + ?Sized>(&self, hw: &mut H, b: u8) -> Result<(), GhcbError> {
        let mut g = Ghcb::event(exit::IOIO, self.info(false), 0);
        g.set(offset::RAX, u64::from(b));
        g.call(hw)
    }
}
