//! `bulwark tpm-bridge` as tpm2-tools and other simulator clients meet it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

/// A bridge on a free port pair, stopped when dropped.
struct Bridge {
    child: Child,
    port: u16,
}

impl Bridge {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .args(["tpm-bridge", "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
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
