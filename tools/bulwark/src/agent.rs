//! The host end of the test guest's agent channel (testguest/src/bare/agent.rs): a QEMU
//! run's guest serves requests on its COM4, which `cargo xtask boot --agent PORT` puts on a
//! TCP port. One request line, one answer line (`OK <hex>` or `ERR <why>`). QEMU sends the
//! answer a byte at a time, so the connection acknowledges at once (`quickack`).

use crate::quickack::QuickAckStream;

/// A QEMU run's SVSM, through its guest's agent (one request line, one answer line).
pub struct Agent {
    stream: std::io::BufReader<QuickAckStream>,
}

impl Agent {
    pub fn connect(at: &str) -> Result<Self, String> {
        let stream = std::net::TcpStream::connect(at).map_err(|e| format!("no guest agent at {at}: {e}"))?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(60))).map_err(|e| e.to_string())?;
        let stream = QuickAckStream::new(stream).map_err(|e| e.to_string())?;
        Ok(Self { stream: std::io::BufReader::new(stream) })
    }

    pub fn ask(&mut self, request: &str) -> Result<Vec<u8>, String> {
        use std::io::{BufRead, Write};
        self.stream.get_mut().write_all(format!("{request}\n").as_bytes()).map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stream.read_line(&mut line).map_err(|e| format!("reading the agent's answer: {e}"))?;
        let line = line.trim_end();
        match line.split_once(' ') {
            Some(("OK", hex)) => (0..hex.len())
                .step_by(2)
                .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| format!("the agent answered bad hex: {line}")),
            Some(("ERR", why)) => Err(why.to_string()),
            _ => Err(format!("the agent answered `{line}`")),
        }
    }
}
