//! One attestation call on the model, as a guest makes it: the evidence `bulwark attest
//! demo` writes out and the tests verify.

use crate::conformance_env::ModelEnv;
use abi::attest::{AttestServicesOp, AttestSingleServiceOp, BufferRecord, REPORT_SIZE};
use abi::protocol::{CallId, ProtocolId, attest_call};
use abi::result::ResultCode;
use conformance::Env;
use guest::{Client, Regs, Transport};
use zerocopy::IntoBytes;

/// What the guest gets back, with the nonce it chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelEvidence {
    pub report: Vec<u8>,
    /// The GHCB certificate table (ARK, ASK, VCEK).
    pub certificates: Vec<u8>,
    pub nonce: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl ModelEvidence {
    /// The evidence as a verifier takes it (a whole manifest).
    pub fn into_evidence(self) -> attest::verify::Evidence {
        attest::verify::Evidence {
            report: self.report,
            certificates: attest::verify::Certificates::Table(self.certificates),
            nonce: self.nonce,
            manifest: self.manifest,
            service: None,
        }
    }
}

/// Launch a model guest and have it call SVSM_ATTEST_SERVICES with `nonce`.
pub fn obtain(nonce: &[u8]) -> Result<ModelEvidence, String> {
    obtain_from(&mut ModelEnv::new(), nonce)
}

/// The same call on an existing model guest (its scratch pages are used for the buffers).
pub fn obtain_from(env: &mut ModelEnv, nonce: &[u8]) -> Result<ModelEvidence, String> {
    obtain_call(env, nonce, None)
}

/// SVSM_ATTEST_SINGLE_SERVICE for `service` on a fresh model guest: the evidence's
/// `manifest` is that service's data.
pub fn obtain_single(nonce: &[u8], service: abi::guid::Guid) -> Result<ModelEvidence, String> {
    obtain_call(&mut ModelEnv::new(), nonce, Some(service))
}

fn obtain_call(env: &mut ModelEnv, nonce: &[u8], service: Option<abi::guid::Guid>) -> Result<ModelEvidence, String> {
    let s = env.facts().scratch;
    let (op_gpa, report, nonce_gpa, manifest, certs) = (s, s + 0x1000, s + 0x2000, s + 0x3000, s + 0x4000);
    let record = |gpa, len| BufferRecord { gpa, len, reserved: 0 };
    let op = AttestServicesOp {
        report: record(report, 0x1000),
        nonce: record(nonce_gpa, nonce.len() as u32),
        manifest: record(manifest, 0x1000),
        certificates: record(certs, 0x4000),
    };
    env.write(nonce_gpa, nonce).map_err(|e| format!("{e:?}"))?;
    let call = match service {
        None => {
            env.write(op_gpa, op.as_bytes()).map_err(|e| format!("{e:?}"))?;
            attest_call::ATTEST_SERVICES
        }
        Some(guid) => {
            let single = AttestSingleServiceOp { base: op, service_guid: guid.0, manifest_version: 0, reserved: 0 };
            env.write(op_gpa, single.as_bytes()).map_err(|e| format!("{e:?}"))?;
            attest_call::ATTEST_SINGLE_SERVICE
        }
    };
    let ca = env.calling_area();
    let mut client = Client::new(env, ca);
    let rax = CallId::new(ProtocolId::ATTEST, call).to_rax();
    let out =
        client.issue(Regs { rax, rcx: op_gpa, rdx: u64::MAX, r8: u64::MAX, r9: 0 }).map_err(|e| format!("{e:?}"))?;
    let result = ResultCode::from_rax(out.rax);
    if result != ResultCode::SUCCESS {
        return Err(format!("attestation call {call}: {result}"));
    }
    let mut read = |gpa: u64, len: u64| -> Result<Vec<u8>, String> {
        let mut b = vec![0u8; len as usize];
        client.transport.read(gpa, &mut b).map_err(|e| format!("{e:?}"))?;
        Ok(b)
    };
    Ok(ModelEvidence {
        report: read(report, REPORT_SIZE as u64)?,
        manifest: read(manifest, out.rcx.min(0x1000))?,
        certificates: read(certs, out.rdx.min(0x4000))?,
        nonce: nonce.to_vec(),
    })
}
