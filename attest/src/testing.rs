//! Building signed reports and whole evidence for tests of the verifier.
//!
//! The SVSM's own report generator lives in the no_std `softpsp` crate; this one is a
//! host-side stand-in with the same layout (SNP firmware ABI ATTESTATION_REPORT,
//! `abi::attest::report`), so verifier tests need no SVSM. Everything here panics
//! freely on misuse: it is test infrastructure.

use crate::chain::TestAuthority;
use crate::manifest::{SealedState, VtpmLineage};
use crate::verify::{Certificates, Evidence, expected_report_data};
use crate::{cert_table, manifest};
use abi::attest::report as off;
use abi::attest::{REPORT_SIZE, SEALED_STATE_GUID, VTPM_LINEAGE_GUID, VTPM_SERVICE_GUID};
use p384::ecdsa::SigningKey;
use std::sync::OnceLock;

/// The fields of a report that a test may want to choose. Reserved bytes are always
/// zero and the signature is computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFields {
    pub version: u32,
    pub guest_svn: u32,
    pub policy: u64,
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    pub vmpl: u32,
    pub signature_algo: u32,
    pub current_tcb: [u8; 8],
    pub platform_info: u64,
    pub key_info: u32,
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    pub id_key_digest: [u8; 48],
    pub author_key_digest: [u8; 48],
    pub report_id: [u8; 32],
    pub report_id_ma: [u8; 32],
    pub reported_tcb: [u8; 8],
    /// CPUID family, model, stepping (versions 3 and later).
    pub cpuid: [u8; 3],
    pub chip_id: [u8; 64],
    pub committed_tcb: [u8; 8],
    /// Build, minor, major, in report order.
    pub current_version: [u8; 3],
    pub committed_version: [u8; 3],
    pub launch_tcb: [u8; 8],
}

/// The CHIP_ID of test reports: non-zero (`sev` needs that) and self-describing.
pub const TEST_CHIP_ID: [u8; 64] = {
    let tag = b"BULWARK-TEST-NOT-HW";
    let mut id = [0u8; 64];
    let mut i = 0;
    while i < tag.len() {
        id[i] = tag[i];
        i += 1;
    }
    id
};

/// A Genoa-layout TCB: bootloader 9, TEE 0, SNP 23, microcode 72.
pub const TEST_TCB: [u8; 8] = [9, 0, 0, 0, 0, 0, 23, 72];

impl Default for ReportFields {
    /// A version-3 report at VMPL 0 from a "Genoa" (family 0x19, model 0x11, stepping
    /// 1), which `sev` 8 verifies.
    fn default() -> Self {
        let mut measurement = [0u8; 48];
        for (i, b) in measurement.iter_mut().enumerate() {
            *b = 0x80 | i as u8;
        }
        Self {
            version: off::VERSION_3,
            guest_svn: 0,
            policy: 0x3_0000, // SMT allowed, bit 17 (reserved, must be 1)
            family_id: [0; 16],
            image_id: [0; 16],
            vmpl: 0,
            signature_algo: off::ALGO_ECDSA_P384_SHA384,
            current_tcb: TEST_TCB,
            platform_info: 1, // SMT enabled
            key_info: 0,      // signed by the VCEK
            measurement,
            host_data: [0; 32],
            id_key_digest: [0; 48],
            author_key_digest: [0; 48],
            report_id: [0x11; 32],
            report_id_ma: [0xff; 32],
            reported_tcb: TEST_TCB,
            cpuid: [0x19, 0x11, 0x01],
            chip_id: TEST_CHIP_ID,
            committed_tcb: TEST_TCB,
            current_version: [28, 55, 1],
            committed_version: [28, 55, 1],
            launch_tcb: TEST_TCB,
        }
    }
}

/// The report bytes for `fields` and `report_data`, signature left zero.
pub fn layout_report(fields: &ReportFields, report_data: &[u8; 64]) -> [u8; REPORT_SIZE] {
    let mut r = [0u8; REPORT_SIZE];
    let mut put = |at: usize, bytes: &[u8]| r[at..at + bytes.len()].copy_from_slice(bytes);
    put(off::VERSION, &fields.version.to_le_bytes());
    put(off::GUEST_SVN, &fields.guest_svn.to_le_bytes());
    put(off::POLICY, &fields.policy.to_le_bytes());
    put(off::FAMILY_ID, &fields.family_id);
    put(off::IMAGE_ID, &fields.image_id);
    put(off::VMPL, &fields.vmpl.to_le_bytes());
    put(off::SIGNATURE_ALGO, &fields.signature_algo.to_le_bytes());
    put(off::CURRENT_TCB, &fields.current_tcb);
    put(off::PLATFORM_INFO, &fields.platform_info.to_le_bytes());
    put(off::KEY_INFO, &fields.key_info.to_le_bytes());
    put(off::REPORT_DATA, report_data);
    put(off::MEASUREMENT, &fields.measurement);
    put(off::HOST_DATA, &fields.host_data);
    put(off::ID_KEY_DIGEST, &fields.id_key_digest);
    put(off::AUTHOR_KEY_DIGEST, &fields.author_key_digest);
    put(off::REPORT_ID, &fields.report_id);
    put(off::REPORT_ID_MA, &fields.report_id_ma);
    put(off::REPORTED_TCB, &fields.reported_tcb);
    if fields.version >= 3 {
        put(off::CPUID_FAMILY, &fields.cpuid);
    }
    put(off::CHIP_ID, &fields.chip_id);
    put(off::COMMITTED_TCB, &fields.committed_tcb);
    put(off::CURRENT_BUILD, &fields.current_version);
    put(off::COMMITTED_BUILD, &fields.committed_version);
    put(off::LAUNCH_TCB, &fields.launch_tcb);
    r
}

/// Sign bytes `0..0x2A0` of `report` in place, as the software PSP does (`softpsp::report`):
/// R and S little-endian in their 72-byte fields, everything after them zero.
pub fn sign_in_place(report: &mut [u8; REPORT_SIZE], key: &SigningKey) {
    report[off::SIGNED_LEN..].fill(0);
    softpsp::report::sign(report, key).expect("a valid key signs");
}

/// A signed report: [`layout_report`] then [`sign_in_place`].
pub fn sign_report(fields: &ReportFields, report_data: &[u8; 64], key: &SigningKey) -> [u8; REPORT_SIZE] {
    let mut r = layout_report(fields, report_data);
    sign_in_place(&mut r, key);
    r
}

/// A fixed P-384 key for test VCEKs (deterministic, so failures reproduce).
pub fn test_vcek_key() -> SigningKey {
    let mut scalar = [0u8; 48];
    for (i, b) in scalar.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(1);
    }
    SigningKey::from_slice(&scalar).expect("a fixed scalar below the group order")
}

/// A stand-in vTPM EK public area (TPMT_PUBLIC: type RSA, nameAlg SHA-256, ...).
pub fn test_ek_public() -> Vec<u8> {
    let mut ek = vec![0x00, 0x01, 0x00, 0x0b, 0x00, 0x03, 0x00, 0x72];
    ek.extend((0..300u16).map(|i| (i * 7) as u8));
    ek
}

/// One complete, valid set of evidence and what made it.
#[derive(Debug)]
pub struct Sample {
    pub authority: &'static TestAuthority,
    pub vcek_key: SigningKey,
    pub vcek_der: Vec<u8>,
    pub fields: ReportFields,
    /// Report, certificate table, nonce and a manifest naming the vTPM.
    pub evidence: Evidence,
}

impl Sample {
    /// The same nonce and manifest with a report made from `fields` (signed by the
    /// sample VCEK).
    pub fn with_fields(&self, fields: &ReportFields) -> Evidence {
        let rd = expected_report_data(&self.evidence.nonce, &self.evidence.manifest);
        Evidence { report: sign_report(fields, &rd, &self.vcek_key).to_vec(), ..self.evidence.clone() }
    }

    /// The same nonce with `manifest` in place of the sample's, under a report whose
    /// REPORT_DATA covers it (signed by the sample VCEK): evidence an SVSM with other
    /// services would give.
    pub fn with_manifest(&self, manifest: Vec<u8>) -> Evidence {
        let rd = expected_report_data(&self.evidence.nonce, &manifest);
        Evidence { report: sign_report(&self.fields, &rd, &self.vcek_key).to_vec(), manifest, ..self.evidence.clone() }
    }

    /// [`Sample::with_manifest`] for a manifest naming the vTPM (with the lineage of a
    /// TPM manufactured there, [`test_lineage`]) and `state`, the sealed state as the
    /// SVSM publishes it.
    pub fn with_sealed_state(&self, state: &SealedState) -> Evidence {
        self.with_vtpm_and_state(Some(&test_lineage()), Some(state))
    }

    /// [`Sample::with_manifest`] for a manifest naming the vTPM, its lineage entry if
    /// `lineage` is given, and the sealed state if `state` is.
    pub fn with_vtpm_and_state(&self, lineage: Option<&VtpmLineage>, state: Option<&SealedState>) -> Evidence {
        let ek = test_ek_public();
        let lineage = lineage.map(manifest::encode_vtpm_lineage);
        let state = state.map(manifest::encode_sealed_state);
        let mut services = vec![(VTPM_SERVICE_GUID, &ek[..])];
        services.extend(lineage.as_deref().map(|entry| (VTPM_LINEAGE_GUID, entry)));
        services.extend(state.as_deref().map(|entry| (SEALED_STATE_GUID, entry)));
        self.with_manifest(manifest::encode(&services).expect("encode manifest"))
    }

    /// The sample's certificates as three DER blobs.
    pub fn der_certificates(&self) -> Certificates {
        Certificates::Der {
            ark: self.authority.ark_der().to_vec(),
            ask: self.authority.ask_der().to_vec(),
            vcek: self.vcek_der.clone(),
        }
    }
}

/// The lineage of the sample's TPM: manufactured where it runs, at version 1, kept.
pub fn test_lineage() -> VtpmLineage {
    VtpmLineage { version: 1, incarnation: [0x7e; 16], ancestors: vec![], kept: true }
}

/// The sample evidence, built once per process (one RSA-4096 signature for the VCEK
/// certificate, plus the authority's two).
pub fn sample() -> &'static Sample {
    static SAMPLE: OnceLock<Sample> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        let authority = TestAuthority::shared();
        let vcek_key = test_vcek_key();
        let sec1 = vcek_key.verifying_key().to_encoded_point(false);
        let vcek_der = authority.issue_vcek(sec1.as_bytes(), &TEST_CHIP_ID).expect("issue the test VCEK");
        let nonce: Vec<u8> = (0..64u8).map(|i| i ^ 0xa5).collect();
        let manifest = manifest::encode(&[(VTPM_SERVICE_GUID, &test_ek_public())]).expect("encode manifest");
        let fields = ReportFields::default();
        let report = sign_report(&fields, &expected_report_data(&nonce, &manifest), &vcek_key).to_vec();
        let table = cert_table::encode(&[
            (&abi::attest::cert_table::ARK, authority.ark_der()),
            (&abi::attest::cert_table::ASK, authority.ask_der()),
            (&abi::attest::cert_table::VCEK, &vcek_der),
        ])
        .expect("encode certificate table");
        let evidence = Evidence { report, certificates: Certificates::Table(table), nonce, manifest, service: None };
        Sample { authority, vcek_key, vcek_der, fields, evidence }
    })
}

/// `python3` with virtee's `sev-snp-measure` 0.0.13 importable (`sevsnpmeasure`), the
/// independent launch-digest implementation the cross-check tests compare against. It is
/// installed with pip from PyPI into `target/pydeps` on first use; a lock file keeps test
/// binaries that run at the same time from installing into it together.
pub fn python_with_sev_snp_measure() -> std::process::Command {
    use std::path::PathBuf;
    use std::process::Command;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let deps = target.join("pydeps");
    std::fs::create_dir_all(&target).expect("the target directory can be made");
    let lock = std::fs::File::create(target.join("pydeps.lock")).expect("the lock file can be made");
    lock.lock().expect("the lock file can be locked");
    let probe = || {
        Command::new("python3")
            .args(["-c", "import sevsnpmeasure.gctx"])
            .env("PYTHONPATH", &deps)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !probe() {
        // A distribution's Python may call itself externally managed; installing into a
        // directory of our own is fine either way.
        let install = |extra: &[&str]| {
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                .args(extra)
                .arg("--target")
                .arg(&deps)
                .arg("sev-snp-measure==0.0.13")
                .status()
                .expect("python3 runs (install python3 and pip)")
                .success()
        };
        let installed = install(&[]) || install(&["--break-system-packages"]);
        assert!(installed && probe(), "pip could not install sev-snp-measure into {}", deps.display());
    }
    let mut c = Command::new("python3");
    c.env("PYTHONPATH", deps);
    c
}
