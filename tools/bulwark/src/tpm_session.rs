//! The scripted tpm2-tools session `bulwark tpm-bridge --check` runs: the real TPM client
//! against the vTPM, through the bridge, with every result checked on the host (PCR
//! arithmetic, signatures, quotes, NV contents, the EK against the attestation manifest).
//!
//! The tools talk to the TPM directly (no resource manager), so every tool is followed by
//! a flush of transient objects and every step by a flush of sessions, as the tpm2-tools
//! documentation advises for that setup.

use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One tool invocation may take this long (RSA key generation under TCG is the slowest).
const TOOL_LIMIT: Duration = Duration::from_secs(120);
const NV_INDEX: &str = "0x1500016";
/// Where `--persist record` leaves state for a later boot: an NV index and the EK as a
/// persistent key (the TCG's recommended EK handle).
const KEPT_INDEX: &str = "0x1500017";
const KEPT_EK: &str = "0x81010001";

/// What one step showed.
#[derive(Debug)]
pub struct Step {
    pub name: &'static str,
    pub result: Result<String, String>,
    pub elapsed: Duration,
}

#[derive(Debug)]
pub struct Report {
    pub steps: Vec<Step>,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.result.is_ok())
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for s in &self.steps {
            let (verdict, detail) = match &s.result {
                Ok(d) => ("pass", d),
                Err(d) => ("FAIL", d),
            };
            out += &format!("{verdict}  {:<22} {:>7.1} ms  {detail}\n", s.name, s.elapsed.as_secs_f64() * 1e3);
        }
        let passed = self.steps.iter().filter(|s| s.result.is_ok()).count();
        out += &format!("tpm2-tools session: {passed} of {} steps passed\n", self.steps.len());
        out
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "passed": self.passed(),
            "steps": self.steps.iter().map(|s| json!({
                "name": s.name,
                "passed": s.result.is_ok(),
                "detail": match &s.result { Ok(d) | Err(d) => d },
                "ms": s.elapsed.as_secs_f64() * 1e3,
            })).collect::<Vec<_>>(),
        })
    }
}

/// A step: what it showed, or why it failed.
type StepFn<'a> = dyn Fn(&Tools) -> Result<String, String> + 'a;

/// Runs tpm2-tools against one bridge port in a private directory.
struct Tools {
    tcti: String,
    dir: PathBuf,
}

impl Tools {
    /// Run `tool args`, then flush the transient objects it left loaded (the TPM has
    /// three slots and tools that load a context file keep it loaded); its stdout, or why
    /// it failed.
    fn run(&self, tool: &str, args: &[&str]) -> Result<String, String> {
        let out = self.run_one(tool, args);
        self.run_one("tpm2_flushcontext", &["-t"])?;
        out
    }

    fn run_one(&self, tool: &str, args: &[&str]) -> Result<String, String> {
        let mut child = Command::new(tool)
            .args(args)
            .env("TPM2TOOLS_TCTI", &self.tcti)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{tool}: {e} (is tpm2-tools installed?)"))?;
        let started = Instant::now();
        loop {
            match child.try_wait().map_err(|e| e.to_string())? {
                Some(_) => break,
                None if started.elapsed() > TOOL_LIMIT => {
                    let _ = child.kill();
                    return Err(format!("{tool} took longer than {} s", TOOL_LIMIT.as_secs()));
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            Ok(stdout)
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            Err(format!("{tool} {} failed ({}): {last}", args.join(" "), out.status))
        }
    }

    fn file(&self, name: &str) -> Result<Vec<u8>, String> {
        std::fs::read(self.dir.join(name)).map_err(|e| format!("{name}: {e}"))
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<(), String> {
        std::fs::write(self.dir.join(name), data).map_err(|e| format!("{name}: {e}"))
    }

    /// Flush the sessions a step left loaded: without a resource manager nobody else does.
    fn flush(&self) -> Result<(), String> {
        self.run_one("tpm2_flushcontext", &["-l"]).map(|_| ())
    }

    fn pcr16(&self, file: &str) -> Result<Vec<u8>, String> {
        self.run("tpm2_pcrread", &["sha256:16", "-o", file])?;
        let v = self.file(file)?;
        if v.len() == 32 { Ok(v) } else { Err(format!("PCR 16 read as {} bytes", v.len())) }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The vTPM entry of an attestation services manifest.
fn manifest_ek(manifest: &[u8]) -> Result<Vec<u8>, String> {
    let services = attest::manifest::parse(manifest).map_err(|e| format!("the manifest does not parse: {e:?}"))?;
    services
        .iter()
        .find(|s| s.guid == abi::attest::VTPM_SERVICE_GUID)
        .map(|s| s.data.clone())
        .ok_or_else(|| "the manifest has no vTPM entry".to_string())
}

/// Run `steps` in a private directory against the bridge on `port`.
fn run_steps(port: u16, steps: &[(&'static str, &StepFn)]) -> Report {
    let dir = std::env::temp_dir().join(format!("bulwark-tpm2-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        let step = Step { name: "setup", result: Err(format!("{}: {e}", dir.display())), elapsed: Duration::ZERO };
        return Report { steps: vec![step] };
    }
    let t = Tools { tcti: format!("mssim:host=127.0.0.1,port={port}"), dir: dir.clone() };
    let mut report = Report { steps: Vec::new() };
    for (name, step) in steps {
        let started = Instant::now();
        let result = step(&t).and_then(|detail| t.flush().map(|()| detail));
        report.steps.push(Step { name, result, elapsed: started.elapsed() });
    }
    let _ = std::fs::remove_dir_all(&dir);
    report
}

/// What a persistence session does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persist {
    /// Leave an NV index with fresh random bytes and the EK as a persistent key, and
    /// write what a later boot must find into the state file.
    Record,
    /// Find what the state file says an earlier boot left: the same bytes at the index,
    /// the same EK at the persistent handle (used for a salted session, so its private
    /// part is there too) and in this boot's manifest.
    Verify,
}

/// The persistence session against the bridge on `port`; `state` is the file `Record`
/// writes and `Verify` reads.
pub fn run_persist(port: u16, manifest: &[u8], mode: Persist, state: &std::path::Path) -> Report {
    let record = |t: &Tools| record_state(t, manifest, state);
    let verify = |t: &Tools| verify_state(t, manifest, state);
    match mode {
        Persist::Record => run_steps(port, &[("startup", &startup), ("record NV + persistent EK", &record)]),
        Persist::Verify => run_steps(port, &[("startup", &startup), ("kept NV + persistent EK", &verify)]),
    }
}

fn record_state(t: &Tools, manifest: &[u8], state: &std::path::Path) -> Result<String, String> {
    // A state of an earlier record is replaced (the index and handle may be taken).
    let _ = t.run("tpm2_nvundefine", &[KEPT_INDEX, "-C", "o"]);
    let _ = t.run("tpm2_evictcontrol", &["-C", "o", "-c", KEPT_EK]);
    let mut data = [0u8; 32];
    getrandom_host(&mut data)?;
    t.put("kept.dat", &data)?;
    t.run("tpm2_nvdefine", &[KEPT_INDEX, "-C", "o", "-s", "32", "-a", "ownerread|ownerwrite"])?;
    t.run("tpm2_nvwrite", &[KEPT_INDEX, "-C", "o", "-i", "kept.dat"])?;
    createek(t, manifest)?;
    t.run_one("tpm2_evictcontrol", &["-C", "o", "-c", "ek.ctx", KEPT_EK])?;
    let ek = t.file("ek.pub")?;
    let record = json!({ "nv_index": KEPT_INDEX, "nv_data": hex(&data), "ek_handle": KEPT_EK, "ek_public": hex(ek.get(2..).unwrap_or(&[])) });
    std::fs::write(state, record.to_string()).map_err(|e| format!("{}: {e}", state.display()))?;
    Ok(format!("32 random bytes at {KEPT_INDEX}, the EK persistent at {KEPT_EK}; recorded in {}", state.display()))
}

fn verify_state(t: &Tools, manifest: &[u8], state: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(state).map_err(|e| format!("{}: {e}", state.display()))?;
    let record: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", state.display()))?;
    let field =
        |name: &str| record[name].as_str().map(str::to_string).ok_or(format!("{} has no {name}", state.display()));
    let (nv_data, ek_public) = (field("nv_data")?, field("ek_public")?);
    t.run("tpm2_nvread", &[KEPT_INDEX, "-C", "o", "-s", "32", "-o", "kept.out"])?;
    let back = hex(&t.file("kept.out")?);
    if back != nv_data {
        return Err(format!("{KEPT_INDEX} holds {back}, an earlier boot wrote {nv_data}"));
    }
    t.run("tpm2_readpublic", &["-c", KEPT_EK, "-o", "kept_ek.pub"])?;
    let public = t.file("kept_ek.pub")?;
    let public = hex(public.get(2..).ok_or("kept_ek.pub is shorter than its size field")?);
    if public != ek_public {
        return Err(format!("{KEPT_EK} holds another key than the EK an earlier boot made persistent"));
    }
    if hex(&manifest_ek(manifest)?) != ek_public {
        return Err("this boot's manifest names another EK than the earlier boot's".into());
    }
    // A salted session: the TPM decrypts the salt with the persistent key's private part.
    t.run_one("tpm2_startauthsession", &["--hmac-session", "-S", "salted.ctx", "-c", KEPT_EK])?;
    t.run_one("tpm2_flushcontext", &["salted.ctx"])?;
    Ok(format!(
        "{KEPT_INDEX} holds the earlier boot's 32 bytes; {KEPT_EK} is the same EK (and the manifest's), and salts a session"
    ))
}

/// Random bytes from the host (the recorded value must not be predictable from the run).
fn getrandom_host(buf: &mut [u8]) -> Result<(), String> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).map_err(|e| format!("/dev/urandom: {e}"))
}

/// Run the session against the bridge on `port`; `manifest` is the SVSM's attestation
/// services manifest, whose vTPM entry must be the EK.
pub fn run(port: u16, manifest: &[u8]) -> Report {
    let steps: [(&'static str, &StepFn); 11] = [
        ("startup", &startup),
        ("getrandom", &getrandom),
        ("pcrread+pcrextend", &pcr_extend),
        ("createprimary", &|t| {
            t.run("tpm2_createprimary", &["-C", "o", "-c", "primary.ctx"]).map(|_| "RSA-2048 storage primary".into())
        }),
        ("create+load", &create_load),
        ("sign+verifysignature", &sign_verify),
        ("quote", &quote),
        ("nvdefine+write+read", &nv),
        ("createek", &|t| createek(t, manifest)),
        ("clear", &clear),
        ("createek after clear", &|t| createek(t, manifest)),
    ];
    run_steps(port, &steps)
}

fn startup(t: &Tools) -> Result<String, String> {
    // The SVSM started the TPM when it manufactured it; tpm2_startup accepts that.
    t.run("tpm2_startup", &["-c"]).map(|_| "TPM2_Startup(CLEAR)".into())
}

fn getrandom(t: &Tools) -> Result<String, String> {
    let a = t.run("tpm2_getrandom", &["32", "--hex"])?;
    let b = t.run("tpm2_getrandom", &["32", "--hex"])?;
    if a.len() != 64 || a == b {
        return Err(format!("two draws: {a} and {b}"));
    }
    Ok(format!("32 bytes: {a}"))
}

fn pcr_extend(t: &Tools) -> Result<String, String> {
    let before = t.pcr16("pcr_before.bin")?;
    let digest: [u8; 32] = Sha256::digest(b"bulwark tpm2-tools session").into();
    t.run("tpm2_pcrextend", &[&format!("16:sha256={}", hex(&digest))])?;
    let after = t.pcr16("pcr_after.bin")?;
    let expected: Vec<u8> = Sha256::new().chain_update(&before).chain_update(digest).finalize().to_vec();
    if after != expected {
        return Err(format!("PCR 16 = {} after the extend, expected {}", hex(&after), hex(&expected)));
    }
    Ok(format!("PCR 16 = SHA-256(old || digest) = {}", &hex(&after)[..16]))
}

fn create_load(t: &Tools) -> Result<String, String> {
    t.run("tpm2_createprimary", &["-C", "o", "-c", "primary.ctx"])?;
    t.run("tpm2_create", &["-C", "primary.ctx", "-G", "ecc256", "-u", "key.pub", "-r", "key.priv"])?;
    t.run("tpm2_load", &["-C", "primary.ctx", "-u", "key.pub", "-r", "key.priv", "-c", "key.ctx"])?;
    Ok("ECC P-256 key under the storage primary, loaded".into())
}

fn sign_verify(t: &Tools) -> Result<String, String> {
    t.put("message.dat", b"a message the vTPM signs")?;
    t.put("other.dat", b"a message the vTPM did not sign")?;
    t.run("tpm2_load", &["-C", "primary.ctx", "-u", "key.pub", "-r", "key.priv", "-c", "key.ctx"])?;
    t.run("tpm2_sign", &["-c", "key.ctx", "-g", "sha256", "-o", "sig.bin", "message.dat"])?;
    t.run("tpm2_verifysignature", &["-c", "key.ctx", "-g", "sha256", "-m", "message.dat", "-s", "sig.bin"])?;
    if t.run("tpm2_verifysignature", &["-c", "key.ctx", "-g", "sha256", "-m", "other.dat", "-s", "sig.bin"]).is_ok() {
        return Err("the signature also verified for a different message".into());
    }
    Ok("ECDSA signature verifies; rejected for another message".into())
}

fn quote(t: &Tools) -> Result<String, String> {
    let nonce = "b0a7b0a7b0a7b0a7";
    t.run("tpm2_load", &["-C", "primary.ctx", "-u", "key.pub", "-r", "key.priv", "-c", "key.ctx"])?;
    t.run(
        "tpm2_quote",
        &[
            "-c",
            "key.ctx",
            "-l",
            "sha256:16",
            "-q",
            nonce,
            "-m",
            "q.msg",
            "-s",
            "q.sig",
            "-o",
            "q.pcrs",
            "-g",
            "sha256",
        ],
    )?;
    t.run(
        "tpm2_checkquote",
        &["-u", "key.pub", "-m", "q.msg", "-s", "q.sig", "-f", "q.pcrs", "-g", "sha256", "-q", nonce],
    )?;
    if t.run(
        "tpm2_checkquote",
        &["-u", "key.pub", "-m", "q.msg", "-s", "q.sig", "-f", "q.pcrs", "-g", "sha256", "-q", "00"],
    )
    .is_ok()
    {
        return Err("the quote also checked against a different nonce".into());
    }
    Ok("quote of PCR 16 checks with its nonce, fails with another".into())
}

fn nv(t: &Tools) -> Result<String, String> {
    let data: [u8; 32] = Sha256::digest(b"bulwark nv").into();
    t.put("nv.dat", &data)?;
    t.run("tpm2_nvdefine", &[NV_INDEX, "-C", "o", "-s", "32", "-a", "ownerread|ownerwrite"])?;
    t.run("tpm2_nvwrite", &[NV_INDEX, "-C", "o", "-i", "nv.dat"])?;
    t.run("tpm2_nvread", &[NV_INDEX, "-C", "o", "-s", "32", "-o", "nv.out"])?;
    let back = t.file("nv.out")?;
    if back != data {
        return Err(format!("read back {} instead of {}", hex(&back), hex(&data)));
    }
    Ok(format!("32 bytes at {NV_INDEX} read back intact"))
}

fn createek(t: &Tools, manifest: &[u8]) -> Result<String, String> {
    let _ = std::fs::remove_file(t.dir.join("ek.pub"));
    t.run("tpm2_createek", &["-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"])?;
    // ek.pub is a TPM2B_PUBLIC: a 2-byte size, then the TPMT_PUBLIC.
    let ek = t.file("ek.pub")?;
    let public = ek.get(2..).ok_or("ek.pub is shorter than its size field")?;
    let expected = manifest_ek(manifest)?;
    if public != expected.as_slice() {
        return Err(format!(
            "tpm2_createek gave a {}-byte public area unlike the manifest's {} bytes",
            public.len(),
            expected.len()
        ));
    }
    Ok(format!(
        "the EK equals the manifest's vTPM entry ({} bytes, SHA-256 {})",
        public.len(),
        &hex(&Sha256::digest(public))[..16]
    ))
}

fn clear(t: &Tools) -> Result<String, String> {
    t.run("tpm2_clear", &["-c", "p"])?;
    let handles = t.run("tpm2_getcap", &["handles-nv-index"])?;
    if handles.contains(&NV_INDEX[2..]) {
        return Err(format!("NV index {NV_INDEX} survived TPM2_Clear: {handles}"));
    }
    Ok("owner hierarchy cleared: the NV index is gone".into())
}
