//! `bulwark tpm-bridge`: real TPM clients reach the SVSM's vTPM through the real protocol
//! path. The bridge serves the Microsoft TPM simulator's TCP protocol (what tpm2-tools'
//! `mssim` TCTI speaks) and turns each TPM command into SVSM_VTPM_CMD: on a model guest in
//! this process, or with `--qemu HOST:PORT` through the test guest of a QEMU run (host ->
//! guest serial port -> VMMCALL -> SVSM).
//!
//! Simulator protocol (big-endian u32 words): the command port takes TPM_SEND_COMMAND (8:
//! locality u8, size u32, command; answered with size u32, response, then a u32 0),
//! REMOTE_HANDSHAKE (15), SESSION_END (20) and STOP (21). The platform port (the command
//! port plus one) takes power, NV, cancel and reset signals; each is acknowledged with 0
//! and changes nothing: the host does not get to power-cycle or reset the guest's TPM.

use crate::agent::Agent;
use crate::quickack::QuickAckStream;
use crate::tpm_session::Persist;
use conformance::Env;
use guest::Client;
use guest::vtpm::VtpmError;
use model::conformance_env::ModelEnv;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Instant;
use tpm2_protocol::data::TpmCc;

const USAGE: &str = "usage: bulwark tpm-bridge [--port P] [--qemu HOST:PORT] [--check [--manifest FILE] [--json]]
                            [--persist record|verify --state FILE]

Serves the MS TPM simulator protocol on 127.0.0.1:P (commands) and P+1 (platform) and
forwards every TPM command to the SVSM's vTPM as SVSM_VTPM_CMD. Point tpm2-tools at it
with --tcti mssim:host=127.0.0.1,port=P (or TPM2TOOLS_TCTI).

  --port P          command port (default 2321; with --check, a free one; 0: a free one)
  --qemu HOST:PORT  the vTPM of a QEMU run (`cargo xtask boot --agent PORT`), reached
                    through its guest; without it, the vTPM of a model guest
  --check           run the scripted tpm2-tools session against the bridge, print each
                    step and exit with its verdict
  --manifest FILE   with --check: the attestation services manifest to hold the EK
                    against (without it, the SVSM is asked for one over protocol 1)
  --json            with --check or --persist: the verdict as JSON
  --persist MODE    a persistence session instead: `record` defines an NV index with
                    random bytes and makes the EK persistent, and writes what it left into
                    --state FILE; `verify` (a later boot, same state disk) checks the bytes,
                    the persistent EK (a salted session) and the manifest's EK against it";

/// Simulator command words.
const TPM_SEND_COMMAND: u32 = 8;
const TPM_REMOTE_HANDSHAKE: u32 = 15;
const TPM_SESSION_END: u32 = 20;
const TPM_STOP: u32 = 21;
/// TPM_RC_LOCALITY: what a TPM answers a command from a locality it does not accept.
const TPM_RC_LOCALITY: u32 = 0x907;

/// Where TPM commands go.
pub trait VtpmPort: Send {
    /// The TPM's response to `command` sent at `locality`.
    fn command(&mut self, locality: u8, command: &[u8]) -> Result<Vec<u8>, String>;
    /// The attestation services manifest of the SVSM behind the port.
    fn manifest(&mut self) -> Result<Vec<u8>, String>;
}

/// A model guest: the page the request goes through is scratch memory.
pub struct ModelPort {
    env: ModelEnv,
}

impl ModelPort {
    pub fn new() -> Self {
        Self { env: ModelEnv::new() }
    }
}

impl Default for ModelPort {
    fn default() -> Self {
        Self::new()
    }
}

impl VtpmPort for ModelPort {
    fn command(&mut self, locality: u8, command: &[u8]) -> Result<Vec<u8>, String> {
        let page = self.env.facts().scratch;
        let ca = self.env.calling_area();
        let mut response = vec![0u8; abi::vtpm::BUFFER_SIZE];
        // The simulator's locality goes on to the SVSM, which is the one to judge it.
        match Client::new(&mut self.env, ca).vtpm_command_at(page, locality, command, &mut response) {
            Ok(n) => {
                response.truncate(n);
                Ok(response)
            }
            Err(VtpmError::Call(guest::CallError::Failed(rc))) if locality != 0 => {
                eprintln!("tpm-bridge: locality {locality} refused by the SVSM ({rc})");
                Ok(vtpm::wire::error_response(TPM_RC_LOCALITY))
            }
            Err(e) => Err(format!("SVSM_VTPM_CMD: {e:?}")),
        }
    }

    fn manifest(&mut self) -> Result<Vec<u8>, String> {
        model::attest_demo::obtain_from(&mut self.env, &[0u8; 64]).map(|e| e.manifest)
    }
}

impl VtpmPort for Agent {
    fn command(&mut self, locality: u8, command: &[u8]) -> Result<Vec<u8>, String> {
        if locality != 0 {
            // The guest's driver, like Linux's, sends locality 0 only.
            return Ok(vtpm::wire::error_response(TPM_RC_LOCALITY));
        }
        let hex: String = command.iter().map(|b| format!("{b:02x}")).collect();
        self.ask(&format!("tpm {hex}"))
    }

    fn manifest(&mut self) -> Result<Vec<u8>, String> {
        self.ask("manifest")
    }
}

fn read_u32(s: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// The command's name in the TPM 2.0 library spec (Part 2, TPM_CC), without the `TPM_CC_`
/// prefix, or its code in hex when it has none.
fn command_name(command: &[u8]) -> String {
    let code = command.get(6..10).map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    match TpmCc::try_from(code) {
        Ok(cc) => {
            let name = cc.to_string();
            // The crate spells one name TPM2_ACT_SetTimeout.
            let short = name.strip_prefix("TPM_CC_").or_else(|| name.strip_prefix("TPM2_"));
            short.unwrap_or(&name).to_string()
        }
        // TPM2_CertifyX509 (spec revision 1.59, which libtpms implements) is missing from the
        // crate's table.
        Err(_) if code == 0x197 => "CertifyX509".to_string(),
        Err(_) => format!("command {code:#x}"),
    }
}

/// Serve one client connection on the command port until it ends its session. Returns
/// `true` if the client asked the bridge to stop.
fn serve_client(s: TcpStream, port: &mut dyn VtpmPort, verbose: bool) -> std::io::Result<bool> {
    let mut s = QuickAckStream::new(s)?;
    loop {
        let word = match read_u32(&mut s) {
            Ok(w) => w,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        };
        match word {
            TPM_SEND_COMMAND => {
                let mut locality = [0u8; 1];
                s.read_exact(&mut locality)?;
                let size = read_u32(&mut s)? as usize;
                if size > abi::vtpm::MAX_COMMAND_SIZE {
                    // The SVSM's page cannot carry it; the client gets the TPM's answer
                    // to an oversized command and the stream stays in step.
                    std::io::copy(&mut (&mut s).take(size as u64), &mut std::io::sink())?;
                    let r = vtpm::wire::error_response(0x095); // TPM_RC_COMMAND_SIZE
                    send_response(&mut s, &r)?;
                    continue;
                }
                let mut command = vec![0u8; size];
                s.read_exact(&mut command)?;
                let started = Instant::now();
                let response = match port.command(locality[0], &command) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("tpm-bridge: {e}");
                        vtpm::wire::error_response(vtpm::wire::TPM_RC_FAILURE)
                    }
                };
                if verbose {
                    let rc = vtpm::wire::ResponseHeader::parse(&response).map_or(u32::MAX, |h| h.code);
                    eprintln!(
                        "tpm-bridge: {:<16} {:>5} B -> rc {rc:#05x} {:>5} B  {:.1} ms",
                        command_name(&command),
                        command.len(),
                        response.len(),
                        started.elapsed().as_secs_f64() * 1e3
                    );
                }
                send_response(&mut s, &response)?;
            }
            TPM_REMOTE_HANDSHAKE => {
                let _client_version = read_u32(&mut s)?;
                // Server version 1; flags: TPM powered, NV available (bits 0, 2); then the ack.
                let answer: Vec<u8> = [1u32, 0b101, 0].iter().flat_map(|w| w.to_be_bytes()).collect();
                s.write_all(&answer)?;
            }
            TPM_SESSION_END => return Ok(false),
            TPM_STOP => return Ok(true),
            other => {
                eprintln!("tpm-bridge: unsupported simulator command {other}; closing the connection");
                return Ok(false);
            }
        }
    }
}

/// The response in one write: size, response, then the 0 word.
fn send_response(s: &mut QuickAckStream, response: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(response.len() + 8);
    out.extend_from_slice(&(response.len() as u32).to_be_bytes());
    out.extend_from_slice(response);
    out.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&out)
}

/// Acknowledge platform signals (power, NV, cancel, reset) with 0, changing nothing.
fn serve_platform(listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut s) = conn.and_then(QuickAckStream::new) else { continue };
        std::thread::spawn(move || {
            while let Ok(word) = read_u32(&mut s) {
                if s.write_all(&0u32.to_be_bytes()).is_err() || word == TPM_SESSION_END || word == TPM_STOP {
                    break;
                }
            }
        });
    }
}

/// A running bridge: its command port.
pub struct Bridge {
    pub port: u16,
}

/// Bind both ports (P and P + 1; P = 0 picks a free pair) and serve in the background.
pub fn start(port: u16, mut vtpm: Box<dyn VtpmPort>, verbose: bool) -> Result<Bridge, String> {
    let (commands, platform) = bind_pair(port)?;
    let port = commands.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || serve_platform(platform));
    std::thread::spawn(move || {
        for conn in commands.incoming() {
            let Ok(s) = conn else { continue };
            match serve_client(s, vtpm.as_mut(), verbose) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => eprintln!("tpm-bridge: connection ended: {e}"),
            }
        }
    });
    Ok(Bridge { port })
}

fn bind_pair(port: u16) -> Result<(TcpListener, TcpListener), String> {
    if port != 0 {
        let c = TcpListener::bind(("127.0.0.1", port)).map_err(|e| format!("port {port}: {e}"))?;
        let p = TcpListener::bind(("127.0.0.1", port + 1)).map_err(|e| format!("port {}: {e}", port + 1))?;
        return Ok((c, p));
    }
    // A free pair: ask the OS for a port and try the next one for the platform.
    for _ in 0..32 {
        let c = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let p = c.local_addr().map_err(|e| e.to_string())?.port();
        if p < u16::MAX
            && let Ok(platform) = TcpListener::bind(("127.0.0.1", p + 1))
        {
            return Ok((c, platform));
        }
    }
    Err("no free pair of ports".into())
}

pub fn main(args: &[String]) -> ExitCode {
    let (mut port, mut qemu, mut check, mut manifest, mut json) = (None, None, false, None, false);
    let (mut persist, mut state) = (None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.clone().next()) {
            ("--port", Some(p)) if p.parse::<u16>().is_ok_and(|p| p < u16::MAX) => {
                port = p.parse().ok();
                it.next();
            }
            ("--qemu", Some(at)) => {
                qemu = Some(at.clone());
                it.next();
            }
            ("--manifest", Some(f)) => {
                manifest = Some(f.clone());
                it.next();
            }
            ("--check", _) => check = true,
            ("--persist", Some(m)) if m == "record" || m == "verify" => {
                persist = Some(if m == "record" { Persist::Record } else { Persist::Verify });
                check = true;
                it.next();
            }
            ("--state", Some(f)) => {
                state = Some(std::path::PathBuf::from(f));
                it.next();
            }
            ("--json", _) => json = true,
            ("help" | "--help" | "-h", _) => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("bulwark tpm-bridge: bad argument `{a}`\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let mut vtpm: Box<dyn VtpmPort> = match &qemu {
        None => Box::new(ModelPort::new()),
        Some(at) => match Agent::connect(at) {
            Ok(a) => Box::new(a),
            Err(e) => {
                eprintln!("bulwark tpm-bridge: {e}");
                return ExitCode::from(2);
            }
        },
    };
    if !check {
        let bridge = match start(port.unwrap_or(2321), vtpm, true) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("bulwark tpm-bridge: {e}");
                return ExitCode::from(2);
            }
        };
        let target = if qemu.is_some() { "the QEMU run's vTPM" } else { "a model guest's vTPM" };
        println!("tpm-bridge: serving {target} on 127.0.0.1:{} (platform port {})", bridge.port, bridge.port + 1);
        println!("tpm-bridge: try  tpm2_getrandom --tcti mssim:host=127.0.0.1,port={} 16 --hex", bridge.port);
        loop {
            std::thread::park();
        }
    }
    // The manifest is read before the bridge takes the port over.
    let manifest = match manifest {
        Some(f) => std::fs::read(&f).map_err(|e| format!("{f}: {e}")),
        None => vtpm.manifest(),
    };
    let manifest = match manifest {
        Ok(m) => m,
        Err(e) => {
            eprintln!("bulwark tpm-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    // The check picks a free pair of ports unless told one.
    let bridge = match start(port.unwrap_or(0), vtpm, false) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bulwark tpm-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match (persist, &state) {
        (None, _) => crate::tpm_session::run(bridge.port, &manifest),
        (Some(mode), Some(state)) => crate::tpm_session::run_persist(bridge.port, &manifest, mode, state),
        (Some(_), None) => {
            eprintln!("bulwark tpm-bridge: --persist needs --state FILE\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
