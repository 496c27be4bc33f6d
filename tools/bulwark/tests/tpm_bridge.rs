//! `bulwark tpm-bridge` as tpm2-tools and other simulator clients meet it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A bridge on a free port pair, stopped when dropped.
struct Bridge {
    child: Child,
    port: u16,
}

impl Bridge {
    fn start() -> Self {
        Self::spawn(&[], Stdio::null())
    }

    /// A bridge and the lines of its log (its stderr) as they come.
    fn start_logged() -> (Self, mpsc::Receiver<String>) {
        let mut bridge = Self::spawn(&[], Stdio::piped());
        let stderr = bridge.child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (bridge, rx)
    }

    fn spawn(args: &[&str], stderr: Stdio) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .args(["tpm-bridge", "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("bulwark starts");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("a first line");
        let port = line
            .rsplit_once("127.0.0.1:")
            .and_then(|(_, rest)| rest.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in `{line}`"));
        Self { child, port }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send(s: &mut TcpStream, locality: u8, size: u32, command: &[u8]) -> Vec<u8> {
    let mut req = 8u32.to_be_bytes().to_vec();
    req.push(locality);
    req.extend_from_slice(&size.to_be_bytes());
    req.extend_from_slice(command);
    s.write_all(&req).expect("send");
    let mut n = [0u8; 4];
    s.read_exact(&mut n).expect("response size");
    let mut response = vec![0u8; u32::from_be_bytes(n) as usize];
    s.read_exact(&mut response).expect("response");
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).expect("ack");
    assert_eq!(ack, [0; 4]);
    response
}

fn rc(response: &[u8]) -> u32 {
    u32::from_be_bytes(response[6..10].try_into().expect("a header"))
}

const GET_RANDOM_8: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7B, 0, 8];

#[test]
fn the_scripted_tpm2_tools_session_passes_on_the_model() {
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["tpm-bridge", "--check", "--json"])
        .output()
        .expect("bulwark runs");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let failed: Vec<_> = report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["passed"] != true)
        .map(|s| format!("{}: {}", s["name"], s["detail"]))
        .collect();
    assert!(failed.is_empty(), "failed steps: {failed:#?}");
    assert_eq!(report["steps"].as_array().map(Vec::len), Some(11));
    assert!(out.status.success());
}

#[test]
fn simulator_clients_get_tpm_answers_for_what_the_svsm_refuses() {
    let bridge = Bridge::start();
    let mut s = TcpStream::connect(("127.0.0.1", bridge.port)).expect("command port");
    // Handshake: server version 1, then flags and the ack.
    s.write_all(&[0, 0, 0, 15, 0, 0, 0, 1]).expect("handshake");
    let mut hs = [0u8; 12];
    s.read_exact(&mut hs).expect("handshake answer");
    assert_eq!(&hs[..4], &[0, 0, 0, 1]);
    assert_eq!(&hs[8..], &[0; 4]);

    let r = send(&mut s, 0, 12, &GET_RANDOM_8);
    assert_eq!((rc(&r), r.len()), (0, 20));
    // Locality 1: the SVSM refuses it (INVALID_PARAMETER); the client sees TPM_RC_LOCALITY.
    assert_eq!(rc(&send(&mut s, 1, 12, &GET_RANDOM_8)), 0x907);
    // A command larger than the SVSM's request page: TPM_RC_COMMAND_SIZE, stream in step.
    let big = vec![0u8; 5000];
    assert_eq!(rc(&send(&mut s, 0, 5000, &big)), 0x095);
    // Garbage: the TPM's own error.
    assert_ne!(rc(&send(&mut s, 0, 3, &[1, 2, 3])), 0);
    assert_eq!(rc(&send(&mut s, 0, 12, &GET_RANDOM_8)), 0);

    // The platform port acknowledges power and NV signals without touching the TPM.
    let mut p = TcpStream::connect(("127.0.0.1", bridge.port + 1)).expect("platform port");
    for signal in [2u32, 1, 11] {
        p.write_all(&signal.to_be_bytes()).expect("signal");
        let mut ack = [0u8; 4];
        p.read_exact(&mut ack).expect("ack");
        assert_eq!(ack, [0; 4]);
    }
    assert_eq!(rc(&send(&mut s, 0, 12, &GET_RANDOM_8)), 0, "a power cycle signal reset the vTPM");
}

/// One TPM_SEND_COMMAND the way Debian 12's tpm2-tss 3.2.1 sends it: its mssim TCTI
/// (src/tss2-tcti/tcti-mssim.c, `tcti_mssim_transmit`) writes the 9-byte simulator header
/// (`send_sim_cmd_setup`) and then the command in a second write, on a socket with Nagle's
/// algorithm on. The answer is read as that TCTI reads it: size, response, then the 0 word.
fn send_split(s: &mut TcpStream, command: &[u8]) -> Vec<u8> {
    let mut header = 8u32.to_be_bytes().to_vec();
    header.push(0);
    header.extend_from_slice(&(command.len() as u32).to_be_bytes());
    s.write_all(&header).expect("header");
    s.write_all(command).expect("command");
    let mut n = [0u8; 4];
    s.read_exact(&mut n).expect("response size");
    let mut response = vec![0u8; u32::from_be_bytes(n) as usize];
    s.read_exact(&mut response).expect("response");
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).expect("ack");
    response
}

#[test]
fn a_kept_connection_whose_client_splits_header_and_command_does_not_wait_for_delayed_acks() {
    // tpm2-abrmd keeps one such connection for all its clients: with the bridge delaying its
    // ACK of the header, Nagle holds the command back until the delayed-ACK timer (40 ms on
    // Linux) fires, on every command.
    let bridge = Bridge::start();
    let mut s = TcpStream::connect(("127.0.0.1", bridge.port)).expect("command port");
    assert!(!s.nodelay().expect("nodelay"), "the client must keep Nagle on, as tpm2-tss 3.2.1 does");
    // Linux acknowledges at once in a connection's first exchanges; the stall shows once it
    // has judged the connection interactive.
    for _ in 0..5 {
        assert_eq!(rc(&send_split(&mut s, &GET_RANDOM_8)), 0);
    }
    let mut times: Vec<Duration> = (0..20)
        .map(|_| {
            let started = Instant::now();
            let r = send_split(&mut s, &GET_RANDOM_8);
            let elapsed = started.elapsed();
            assert_eq!((rc(&r), r.len()), (0, 20));
            elapsed
        })
        .collect();
    times.sort();
    let median = times[times.len() / 2];
    // A GetRandom on the model takes well under a millisecond; 10 ms leaves room for a busy
    // machine and is a quarter of one delayed ACK.
    assert!(median < Duration::from_millis(10), "median {median:?} per command on a kept connection; all: {times:?}");
}

#[test]
fn the_log_names_context_and_policy_commands_as_the_tpm_spec_does() {
    // The codes of TPM 2.0 Part 2's TPM_CC table the log had wrong: ContextLoad and
    // ContextSave swapped, PolicySecret (0x151) and PolicyGetDigest (0x189) given to
    // PolicyAuthValue and PolicyPCR. tpm2-abrmd sends ContextSave/ContextLoad around every
    // client's objects, so a wrong name there misleads anyone reading the log. CertifyX509
    // and ACT_SetTimeout stand for the ends of the table.
    let (bridge, log) = Bridge::start_logged();
    let mut s = TcpStream::connect(("127.0.0.1", bridge.port)).expect("command port");
    let codes = [0x161u32, 0x162, 0x16B, 0x17F, 0x197, 0x198, 0x15A];
    for code in codes {
        // A bare header: the TPM answers with an error code, the log still names the command.
        let mut command = vec![0x80, 0x01, 0, 0, 0, 10];
        command.extend_from_slice(&code.to_be_bytes());
        assert_ne!(rc(&send(&mut s, 0, 10, &command)), 0);
    }
    let names: Vec<String> = codes
        .iter()
        .map(|_| {
            let line = log.recv_timeout(Duration::from_secs(10)).expect("a log line per command");
            let rest = line.strip_prefix("tpm-bridge: ").unwrap_or_else(|| panic!("not a command line: `{line}`"));
            rest.split("  ").next().unwrap_or("").trim().to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "ContextLoad",
            "ContextSave",
            "PolicyAuthValue",
            "PolicyPCR",
            "CertifyX509",
            "ACT_SetTimeout",
            "command 0x15a"
        ]
    );
}

/// A stand-in for a QEMU run's guest agent (`testguest/src/bare/agent.rs`): answers every
/// `tpm <hex>` line with `OK <response>`, sending the answer the way QEMU's serial port
/// reaches its socket back end: one byte per write (hw/char/serial.c, `serial_xmit`), with
/// Nagle's algorithm on (the back end's default without `nodelay`). Its port.
fn fake_agent(response: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        let (s, _) = listener.accept().expect("the bridge connects");
        let mut out = s.try_clone().expect("clone");
        let answer: String = "OK "
            .chars()
            .chain(response.iter().flat_map(|b| format!("{b:02x}").chars().collect::<Vec<_>>()))
            .chain(['\n'])
            .collect();
        for line in BufReader::new(s).lines().map_while(Result::ok) {
            assert!(line.starts_with("tpm "), "the bridge sent `{line}`");
            for byte in answer.bytes() {
                if out.write_all(&[byte]).is_err() {
                    return;
                }
            }
        }
    });
    port
}

#[test]
fn a_kept_agent_connection_to_a_qemu_guest_does_not_wait_for_delayed_acks() {
    // GetRandom's answer: 8 bytes.
    const RESPONSE: [u8; 20] = [0x80, 0x01, 0, 0, 0, 20, 0, 0, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    let agent = fake_agent(&RESPONSE);
    let bridge = Bridge::spawn(&["--qemu", &format!("127.0.0.1:{agent}")], Stdio::null());
    let mut s = TcpStream::connect(("127.0.0.1", bridge.port)).expect("command port");
    // This client sends each command in one write: only the agent side can stall.
    s.set_nodelay(true).expect("nodelay");
    for _ in 0..5 {
        assert_eq!(send(&mut s, 0, 12, &GET_RANDOM_8), RESPONSE);
    }
    let mut times: Vec<Duration> = (0..20)
        .map(|_| {
            let started = Instant::now();
            assert_eq!(send(&mut s, 0, 12, &GET_RANDOM_8), RESPONSE);
            started.elapsed()
        })
        .collect();
    times.sort();
    let median = times[times.len() / 2];
    assert!(median < Duration::from_millis(10), "median {median:?} per command through the agent; all: {times:?}");
}
