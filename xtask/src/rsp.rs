//! A small GDB remote-protocol client: enough to check the SVSM's own GDB stub the way GDB
//! would use it (stop reason, registers, memory, a single step, a refused read, continue).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::time::{Duration, Instant};

struct Rsp {
    stream: TcpStream,
}

impl Rsp {
    fn connect(port: u16, within: Duration) -> Result<Self, String> {
        let started = Instant::now();
        loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
                    return Ok(Self { stream });
                }
                Err(e) if started.elapsed() > within => return Err(format!("no GDB stub on port {port}: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn byte(&mut self) -> Result<u8, String> {
        let mut b = [0u8];
        self.stream.read_exact(&mut b).map_err(|e| format!("reading from the stub: {e}"))?;
        Ok(b[0])
    }

    fn send(&mut self, data: &str) -> Result<(), String> {
        let sum = data.bytes().fold(0u8, u8::wrapping_add);
        self.stream.write_all(format!("${data}#{sum:02x}").as_bytes()).map_err(|e| e.to_string())?;
        // The stub acknowledges every packet.
        match self.byte()? {
            b'+' => Ok(()),
            other => Err(format!("the stub answered `{}` instead of an acknowledgement", other as char)),
        }
    }

    /// The next packet from the stub (acknowledged, checksum verified).
    fn receive(&mut self) -> Result<String, String> {
        while self.byte()? != b'$' {}
        let mut data = Vec::new();
        loop {
            match self.byte()? {
                b'#' => break,
                b => data.push(b),
            }
        }
        let sum = [self.byte()?, self.byte()?];
        let sum =
            u8::from_str_radix(std::str::from_utf8(&sum).map_err(|e| e.to_string())?, 16).map_err(|e| e.to_string())?;
        if data.iter().fold(0u8, |a, b| a.wrapping_add(*b)) != sum {
            return Err("a packet from the stub has a bad checksum".into());
        }
        self.stream.write_all(b"+").map_err(|e| e.to_string())?;
        String::from_utf8(expand(&data)).map_err(|e| e.to_string())
    }

    fn ask(&mut self, data: &str) -> Result<String, String> {
        self.send(data)?;
        self.receive()
    }
}

/// Undo the protocol's run-length encoding: `X*n` is X followed by `n - 29` more X.
fn expand(data: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(data.len());
    let mut bytes = data.iter();
    while let Some(&b) = bytes.next() {
        match (b, out.last().copied()) {
            (b'*', Some(repeated)) => {
                let count = bytes.next().map_or(0, |n| n.saturating_sub(29));
                out.extend(std::iter::repeat_n(repeated, usize::from(count)));
            }
            _ => out.push(b),
        }
    }
    out
}

/// RIP from a `g` reply: 16 general registers of 8 bytes, then RIP, as little-endian hex.
fn rip(registers: &str) -> Result<u64, String> {
    let hex = registers.get(256..272).ok_or("the register reply is too short")?;
    let bytes: Vec<u8> = (0..8)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| "RIP is not 8 bytes")?))
}

fn stopped_by_trap(reply: &str) -> bool {
    (reply.starts_with('S') || reply.starts_with('T')) && reply.get(1..3) == Some("05")
}

/// Drive the stub on `port` as GDB would; `svsm` is the SVSM's region. Returns what was
/// seen, for the log.
pub fn check_svsm_stub(port: u16, svsm: Range<u64>) -> Result<String, String> {
    let mut gdb = Rsp::connect(port, Duration::from_secs(60))?;
    let seen = check(&mut gdb, svsm);
    if seen.is_err() {
        // Let the SVSM go on without the debugger rather than wait for one forever.
        let _ = gdb.send("D");
    }
    seen
}

fn check(gdb: &mut Rsp, svsm: Range<u64>) -> Result<String, String> {
    let stop = gdb.ask("?")?;
    if !stopped_by_trap(&stop) {
        return Err(format!("the stub's first stop reason is `{stop}`, not SIGTRAP"));
    }
    let at = rip(&gdb.ask("g")?)?;
    if !svsm.contains(&at) {
        return Err(format!("RIP {at:#x} is outside the SVSM ({:#x}..{:#x})", svsm.start, svsm.end));
    }
    let before = gdb.ask(&format!("m{:x},1", at - 1))?;
    if before != "cc" {
        return Err(format!("the byte before RIP is `{before}`, not the INT3 the SVSM stopped on"));
    }
    let step = gdb.ask("s")?;
    let stepped = rip(&gdb.ask("g")?)?;
    if !stopped_by_trap(&step) || stepped == at || !svsm.contains(&stepped) {
        return Err(format!("single step: stop `{step}`, RIP {at:#x} -> {stepped:#x}"));
    }
    let refused = gdb.ask("m0,8")?;
    if !refused.starts_with('E') {
        return Err(format!("reading guest memory at 0 through the stub gave `{refused}`, not an error"));
    }
    gdb.send("c")?;
    Ok(format!("stopped at {at:#x} on INT3, stepped to {stepped:#x}, guest memory refused ({refused}), continued"))
}
