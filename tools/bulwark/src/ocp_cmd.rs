//! `bulwark ocp list|read|write`: the Observability and Configuration Protocol, through
//! the guest calling convention, against the SVSM on the SEV-SNP model (each command
//! launches a fresh model guest), or with `--qemu HOST:PORT` against the SVSM in a QEMU run
//! through its guest's host agent (`cargo xtask boot --agent PORT`).
//!
//! Exit status: 0 on success, 1 when the SVSM refuses, 2 on a usage error.

use crate::agent::Agent;
use conformance::Env;
use guest::ocp::SourceEntry;
use guest::{Client, Transport};
use model::conformance_env::ModelEnv;
use serde_json::json;
use std::process::ExitCode;

const USAGE: &str = "usage: bulwark ocp list [--json] [--qemu HOST:PORT]
       bulwark ocp read NAME [--json] [--qemu HOST:PORT]
       bulwark ocp write NAME VALUE [--json] [--qemu HOST:PORT]

  --qemu HOST:PORT  the SVSM of a QEMU run (`cargo xtask boot --agent PORT`), reached
               through its guest; without it, a fresh SVSM on the model

  list         every source: index, name, whether it is writeable
  read NAME    a source's value (numbers for memory.*, calls.*, errors.*; text otherwise;
               the whole log for `log`)
  write NAME VALUE
               write a setting (e.g. `config.log_level debug`), then read it back";

/// Where the protocol's calls go.
trait Port {
    fn entries(&mut self) -> Result<Vec<SourceEntry>, String>;
    /// The whole source.
    fn read(&mut self, index: u32) -> Result<Vec<u8>, String>;
    /// Returns the bytes taken.
    fn write(&mut self, index: u32, data: &[u8]) -> Result<u32, String>;

    fn index(&mut self, name: &str) -> Result<u32, String> {
        let all = self.entries()?;
        all.iter().position(|e| e.name() == Some(name)).map(|i| i as u32).ok_or_else(|| {
            let names: Vec<&str> = all.iter().filter_map(|e| e.name()).collect();
            format!("no source `{name}` (sources: {})", names.join(", "))
        })
    }
}

impl Port for Agent {
    fn entries(&mut self) -> Result<Vec<SourceEntry>, String> {
        let bytes = self.ask("list")?;
        Ok(bytes
            .chunks_exact(abi::ocp::ENTRY_SIZE)
            .filter_map(|e| <&[u8; abi::ocp::ENTRY_SIZE]>::try_from(e).ok())
            .map(SourceEntry::decode)
            .collect())
    }

    fn read(&mut self, index: u32) -> Result<Vec<u8>, String> {
        self.ask(&format!("read {index}"))
    }

    fn write(&mut self, index: u32, data: &[u8]) -> Result<u32, String> {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        let n = self.ask(&format!("write {index} {hex}"))?;
        <[u8; 4]>::try_from(n.as_slice()).map(u32::from_le_bytes).map_err(|_| "the agent's count is not 4 bytes".into())
    }
}

/// A model guest with a buffer for the protocol's data.
struct Session {
    env: ModelEnv,
    buffer: u64,
}

impl Session {
    fn new() -> Self {
        let env = ModelEnv::new();
        let buffer = env.facts().scratch;
        Self { env, buffer }
    }

    fn client(&mut self) -> Client<&mut ModelEnv> {
        let ca = self.env.calling_area();
        Client::new(&mut self.env, ca)
    }
}

impl Port for Session {
    fn entries(&mut self) -> Result<Vec<SourceEntry>, String> {
        let buffer = self.buffer;
        let count = self.client().ocp_list(0, buffer, 64).map_err(|e| format!("SVSM_OCP_LIST: {e:?}"))?;
        let mut out = Vec::new();
        for i in 0..count as u64 {
            let mut e = [0u8; abi::ocp::ENTRY_SIZE];
            self.env.read(buffer + i * abi::ocp::ENTRY_SIZE as u64, &mut e).map_err(|e| format!("{e:?}"))?;
            out.push(SourceEntry::decode(&e));
        }
        Ok(out)
    }

    /// The whole source, read a chunk at a time from offset 0 (as the QEMU guest's agent
    /// reads it: a log whose first bytes were overwritten gives `guest::ocp::OVERWRITTEN`,
    /// then the log from its oldest byte held).
    fn read(&mut self, index: u32) -> Result<Vec<u8>, String> {
        let buffer = self.buffer;
        let mut data = Vec::new();
        match self.client().ocp_read_whole(index, buffer, &mut |piece| data.extend_from_slice(piece)) {
            Ok(true) => Ok(data),
            Ok(false) => Err("the log moves on faster than it can be read".into()),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    fn write(&mut self, index: u32, data: &[u8]) -> Result<u32, String> {
        let buffer = self.buffer;
        self.env.write(buffer, data).map_err(|e| format!("{e:?}"))?;
        self.client().ocp_write(index, buffer, data.len() as u32).map_err(|e| format!("{e:?}"))
    }
}

fn value_json(name: &str, data: &[u8]) -> serde_json::Value {
    match <[u8; 8]>::try_from(data) {
        Ok(b) if abi::ocp::holds_number(name) => json!(u64::from_le_bytes(b)),
        _ => json!(String::from_utf8_lossy(data)),
    }
}

fn value_text(name: &str, data: &[u8]) -> String {
    match value_json(name, data) {
        serde_json::Value::String(s) => s.trim_end().to_string(),
        other => other.to_string(),
    }
}

pub fn main(args: &[String]) -> ExitCode {
    let (mut json, mut qemu, mut words) = (false, None, Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "--qemu" => match it.next() {
                Some(at) => qemu = Some(at.as_str()),
                None => {
                    eprintln!("bulwark ocp: --qemu needs HOST:PORT\n\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            word => words.push(word),
        }
    }
    let port: Result<Box<dyn Port>, String> = match qemu {
        None => Ok(Box::new(Session::new())),
        Some(at) => Agent::connect(at).map(|a| Box::new(a) as Box<dyn Port>),
    };
    let mut port = match port {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bulwark ocp: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match words.as_slice() {
        ["list"] => list(port.as_mut(), json),
        ["read", name] => read(port.as_mut(), name, json),
        ["write", name, value] => write(port.as_mut(), name, value, json),
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("bulwark ocp: bad arguments\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bulwark ocp: {e}");
            ExitCode::FAILURE
        }
    }
}

fn list(port: &mut dyn Port, json: bool) -> Result<String, String> {
    let entries = port.entries()?;
    if json {
        let v: Vec<_> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| json!({"index": i, "name": e.name(), "writeable": e.writeable()}))
            .collect();
        return serde_json::to_string_pretty(&v).map_err(|e| e.to_string());
    }
    let mut out = String::from("index  source                        writeable\n");
    for (i, e) in entries.iter().enumerate() {
        out.push_str(&format!(
            "{i:>5}  {:<30}{}\n",
            e.name().unwrap_or("(not UTF-8)"),
            if e.writeable() { "yes" } else { "" }
        ));
    }
    Ok(out.trim_end().to_string())
}

fn read(port: &mut dyn Port, name: &str, json: bool) -> Result<String, String> {
    let index = port.index(name)?;
    let data = port.read(index)?;
    if json {
        let v = json!({"index": index, "name": name, "bytes": data.len(), "value": value_json(name, &data)});
        return serde_json::to_string_pretty(&v).map_err(|e| e.to_string());
    }
    Ok(value_text(name, &data))
}

fn write(port: &mut dyn Port, name: &str, value: &str, json: bool) -> Result<String, String> {
    let index = port.index(name)?;
    let taken =
        port.write(index, value.as_bytes()).map_err(|e| format!("SVSM_OCP_WRITE refused `{value}` for {name}: {e}"))?;
    let now = port.read(index)?;
    if json {
        let v = json!({"index": index, "name": name, "written": taken, "value": value_json(name, &now)});
        return serde_json::to_string_pretty(&v).map_err(|e| e.to_string());
    }
    Ok(format!("{name} = {} ({taken} bytes written)", value_text(name, &now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_read_and_write_answer_like_the_sources_are() {
        let mut s = Session::new();
        let listing = list(&mut s, false).unwrap();
        assert!(listing.contains("config.log_level") && listing.contains("yes"), "{listing}");
        assert_eq!(read(&mut s, "build.platform", false).unwrap(), "model");
        let total: serde_json::Value =
            serde_json::from_str(&read(&mut s, "memory.svsm_pages_total", true).unwrap()).unwrap();
        assert!(total["value"].as_u64().is_some_and(|n| n > 0), "{total}");
        assert_eq!(
            write(&mut s, "config.log_level", "debug", false).unwrap(),
            "config.log_level = debug (5 bytes written)"
        );
        assert!(write(&mut s, "config.log_level", "loud", false).is_err());
        assert!(write(&mut s, "build.version", "2", false).is_err());
        assert!(read(&mut s, "no.such.source", false).unwrap_err().contains("no source"));
        assert_eq!(main(&["frobnicate".into()]), ExitCode::from(2));
        assert_eq!(main(&["list".into(), "--qemu".into()]), ExitCode::from(2));
    }

    /// A log that wrapped (a long run: a live migration logs its progress) reads from its
    /// oldest byte held, after a note of what was lost; before, the read failed.
    #[test]
    fn a_log_that_wrapped_reads_from_its_oldest_byte() {
        let mut s = Session::new();
        let size = model::machine::MODEL_LOG_BYTES as u64;
        let mut n = 0;
        while s.env.world.machine.log_ring.written() < 3 * size {
            s.env.world.machine.log_ring.push(format!("line {n}\n").as_bytes());
            n += 1;
        }
        let log = read(&mut s, "log", false).unwrap();
        let note = std::str::from_utf8(guest::ocp::OVERWRITTEN).unwrap().trim_end();
        assert!(log.starts_with(note), "{}", &log[..80]);
        assert!(log.ends_with(&format!("line {}", n - 1)), "the newest line is there");
        assert!(log.len() as u64 <= size + 2 * 4096, "about the ring's size: {}", log.len());
    }
}
