//! What the vTPM benchmarks share: the SVSM's vTPM as a model guest reaches it, the TPM
//! they compare against (swtpm, with its state
//! directory, behind its TCP socket) and the trait both sides run commands through.

use bulwark_model::world::{MIB, World};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vtpm::wire::{self, ResponseHeader};

/// Something that runs TPM commands.
pub trait Tpm {
    fn run(&mut self, command: &[u8]) -> Vec<u8>;
}

/// The model SVSM's vTPM, through the guest calling convention.
pub struct ThroughSvsm(pub World);

impl Tpm for ThroughSvsm {
    fn run(&mut self, command: &[u8]) -> Vec<u8> {
        let mut response = vec![0u8; 4096];
        let n = self.0.client().vtpm_command(2 * MIB, command, &mut response).expect("SVSM_VTPM_CMD");
        response.truncate(n);
        response
    }
}

/// Fail the bench unless `response` is a success.
pub fn ok(response: &[u8], what: &str) {
    let code = ResponseHeader::parse(response).map_or(u32::MAX, |h| h.code);
    assert_eq!(code, 0, "{what}: TPM rc {code:#x}");
}

/// swtpm with its TCP server (raw TPM commands on the socket).
pub struct Swtpm {
    child: Child,
    stream: TcpStream,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Swtpm {
    pub fn start() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("bulwark-swtpm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let dir = TempDir(dir);
        let free = || TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
        let (port, ctrl) = (free().map_err(|e| e.to_string())?, free().map_err(|e| e.to_string())?);
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.0.display()))
            .args(["--server", &format!("type=tcp,port={port}"), "--ctrl", &format!("type=tcp,port={ctrl}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("swtpm: {e} (install the swtpm package)"))?;
        let started = Instant::now();
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(_) if started.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("swtpm did not listen: {e}")),
            }
        };
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Self { child, stream, _dir: dir })
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tpm for Swtpm {
    fn run(&mut self, command: &[u8]) -> Vec<u8> {
        self.stream.write_all(command).expect("send to swtpm");
        let mut response = vec![0u8; wire::HEADER_SIZE];
        self.stream.read_exact(&mut response).expect("swtpm response header");
        let size = ResponseHeader::parse(&response).expect("header").size as usize;
        response.resize(size, 0);
        self.stream.read_exact(&mut response[wire::HEADER_SIZE..]).expect("swtpm response");
        response
    }
}
