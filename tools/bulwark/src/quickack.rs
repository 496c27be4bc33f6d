//! TCP connections on which the tool never waits for a delayed ACK: the bridge's simulator
//! clients (tpm2-tools, tpm2-abrmd) and the agent channel of a QEMU run.
//!
//! Both peers send a message in several small writes with Nagle's algorithm on, so every
//! write after the first stays in the peer until the first is acknowledged:
//! - tpm2-tss 3.2.1 (Debian 12) writes the simulator header, then the command
//!   (src/tss2-tcti/tcti-mssim.c, `tcti_mssim_transmit`);
//! - QEMU's serial port hands each byte the guest sends to its socket back end on its own
//!   (hw/char/serial.c, `serial_xmit`), and the socket back end leaves Nagle on unless told
//!   `nodelay`.
//!
//! Linux delays the ACK of data that gets no immediate answer (40 ms at the least) once it
//! judges a connection interactive, as it does any kept one, so each message paid one
//! delayed-ACK timeout. TCP_QUICKACK makes Linux acknowledge at once, but it is not sticky:
//! Linux goes back to delaying ACKs as soon as this side sends, so it is set again before
//! every read. TCP_NODELAY sends this side's own writes (each message one write) at once.

use std::io::{Read, Write};
use std::net::TcpStream;

/// A TCP stream that sets TCP_QUICKACK before every read, with TCP_NODELAY on.
#[derive(Debug)]
pub struct QuickAckStream {
    stream: TcpStream,
}

impl QuickAckStream {
    pub fn new(stream: TcpStream) -> std::io::Result<Self> {
        stream.set_nodelay(true)?;
        Ok(Self { stream })
    }
}

impl Read for QuickAckStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        #[cfg(target_os = "linux")]
        socket2::SockRef::from(&self.stream).set_tcp_quickack(true)?;
        self.stream.read(buf)
    }
}

impl Write for QuickAckStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}
