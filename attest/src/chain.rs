//! A test certificate authority that issues ARK -> ASK -> VCEK chains that `sev` 8
//! accepts, for the platforms that have no AMD PSP (the model, QEMU) and for tests.
//!
//! The shape copies AMD's (and is what `sev`'s `crypto_nossl` verifier requires): ARK
//! and ASK are RSA-4096 keys with an rsaEncryption SPKI; every certificate is signed
//! with RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48; the VCEK certifies a P-384 key and
//! carries the report's CHIP_ID in AMD's hwID extension. Every name says "NOT AMD", and
//! the verifier reports such a chain as not rooted in AMD hardware.
//!
//! The ARK and ASK keys are fixtures (`attest/fixtures/TEST-ONLY-*.pem`), public and
//! worthless as a root: generating RSA-4096 keys takes seconds even in release builds.
//! The certificates are made fresh at run time, valid from a day ago for 25 years.

use rsa::RsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rsa::rand_core::OsRng;
use sha2::{Digest, Sha384};
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::asn1::OctetString;
use x509_cert::der::oid::{AssociatedOid, ObjectIdentifier};
use x509_cert::der::{Encode, Length, Writer};
use x509_cert::ext::{AsExtension, Extension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::{Time, Validity};

/// The test ARK's private key (PKCS#8). Public on purpose: it is a test key.
pub const ARK_KEY_PEM: &str = include_str!("../fixtures/TEST-ONLY-ark-rsa4096.pk8.pem");
/// The test ASK's private key (PKCS#8). Whoever holds it can issue VCEKs under the
/// test ARK, which is why nothing may treat the test ARK as a root of trust.
pub const ASK_KEY_PEM: &str = include_str!("../fixtures/TEST-ONLY-ask-rsa4096.pk8.pem");

/// The organisation in every name this authority writes.
pub const ORGANIZATION: &str = "Bulwark emulated platform (NOT AMD)";

/// AMD's VCEK extension `hwID` (1.3.6.1.4.1.3704.1.4): the raw 64-byte CHIP_ID.
pub const HWID_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");

const VALIDITY: Duration = Duration::from_secs(25 * 365 * 86400);
const BACKDATE: Duration = Duration::from_secs(86400);

/// Why a certificate could not be made.
#[derive(Debug)]
pub enum ChainError {
    /// A private key did not decode or could not be generated.
    Key(String),
    /// The VCEK public key is not an uncompressed P-384 point.
    PublicKey(String),
    /// x509-cert failed to build or sign a certificate.
    Build(String),
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(e) => write!(f, "test CA key: {e}"),
            Self::PublicKey(e) => write!(f, "VCEK public key: {e}"),
            Self::Build(e) => write!(f, "building a certificate: {e}"),
        }
    }
}

impl std::error::Error for ChainError {}

/// An ARK and an ASK certificate, and the ASK key to issue VCEKs with.
pub struct TestAuthority {
    ark_der: Vec<u8>,
    ask_der: Vec<u8>,
    ask_name: Name,
    ask_signer: rsa::pss::SigningKey<Sha384>,
    /// The ASK key as PKCS#8 DER, for issuing kits.
    ask_key_der: Vec<u8>,
}

impl fmt::Debug for TestAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestAuthority")
            .field("ark_der", &self.ark_der.len())
            .field("ask_der", &self.ask_der.len())
            .field("ask_name", &self.ask_name.to_string())
            .finish_non_exhaustive()
    }
}

impl TestAuthority {
    /// Certificates for the fixture ARK and ASK keys.
    pub fn new() -> Result<Self, ChainError> {
        let ark = RsaPrivateKey::from_pkcs8_pem(ARK_KEY_PEM).map_err(|e| ChainError::Key(e.to_string()))?;
        let ask = RsaPrivateKey::from_pkcs8_pem(ASK_KEY_PEM).map_err(|e| ChainError::Key(e.to_string()))?;
        Self::from_keys(ark, ask)
    }

    /// One authority per process, made on first use: building it costs two RSA-4096
    /// signatures, which debug builds feel.
    pub fn shared() -> &'static TestAuthority {
        static SHARED: OnceLock<TestAuthority> = OnceLock::new();
        // The inputs are compile-time fixtures; failing here is a bug in this crate (or
        // no OS randomness for the PSS salt), not bad input.
        SHARED.get_or_init(|| Self::new().expect("the fixture test authority builds"))
    }

    /// An authority with fresh RSA keys of `bits` bits (at most 4096, which `sev`
    /// accepts). Slow: seconds per key.
    pub fn generate(bits: usize) -> Result<Self, ChainError> {
        let ark = RsaPrivateKey::new(&mut OsRng, bits).map_err(|e| ChainError::Key(e.to_string()))?;
        let ask = RsaPrivateKey::new(&mut OsRng, bits).map_err(|e| ChainError::Key(e.to_string()))?;
        Self::from_keys(ark, ask)
    }

    /// An authority for the given ARK and ASK keys.
    pub fn from_keys(ark: RsaPrivateKey, ask: RsaPrivateKey) -> Result<Self, ChainError> {
        let ark_name = name("ARK-Bulwark")?;
        let ask_name = name("ASK-Bulwark")?;
        let ask_key_der = ask.to_pkcs8_der().map_err(|e| ChainError::Key(e.to_string()))?.as_bytes().to_vec();
        let ark_signer = rsa::pss::SigningKey::<Sha384>::new(ark.clone());
        let ask_signer = rsa::pss::SigningKey::<Sha384>::new(ask.clone());
        let ark_der = build(
            Profile::Root,
            SerialNumber::from(1u32),
            ark_name.clone(),
            SubjectPublicKeyInfoOwned::from_key(ark.to_public_key()).map_err(build_err)?,
            &ark_signer,
            None,
        )?;
        let ask_der = build(
            Profile::SubCA { issuer: ark_name, path_len_constraint: Some(0) },
            SerialNumber::from(2u32),
            ask_name.clone(),
            SubjectPublicKeyInfoOwned::from_key(ask.to_public_key()).map_err(build_err)?,
            &ark_signer,
            None,
        )?;
        Ok(Self { ark_der, ask_der, ask_name, ask_signer, ask_key_der })
    }

    /// The ARK certificate (DER), self-signed.
    pub fn ark_der(&self) -> &[u8] {
        &self.ark_der
    }

    /// The ASK certificate (DER), signed by the ARK.
    pub fn ask_der(&self) -> &[u8] {
        &self.ask_der
    }

    /// A VCEK certificate (DER) for a P-384 public key (SEC1, uncompressed: 97 bytes),
    /// signed by the ASK, with `chip_id` in the hwID extension. The serial number is
    /// derived from the key, so issuing twice for one key gives the same serial.
    pub fn issue_vcek(&self, p384_public_sec1: &[u8], chip_id: &[u8; 64]) -> Result<Vec<u8>, ChainError> {
        if p384_public_sec1.len() != 97 || p384_public_sec1.first() != Some(&4) {
            return Err(ChainError::PublicKey(format!(
                "{} bytes; an uncompressed P-384 point is 97 bytes starting with 04",
                p384_public_sec1.len()
            )));
        }
        let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(p384_public_sec1)
            .map_err(|e| ChainError::PublicKey(e.to_string()))?;
        let spki = SubjectPublicKeyInfoOwned::from_key(key).map_err(build_err)?;
        let digest = Sha384::digest(p384_public_sec1);
        let mut serial = [0u8; 16];
        serial.copy_from_slice(&digest[..16]);
        serial[0] = (serial[0] & 0x3f) | 0x40; // positive, and no leading zero to strip
        build(
            Profile::Leaf {
                issuer: self.ask_name.clone(),
                enable_key_agreement: false,
                enable_key_encipherment: false,
            },
            SerialNumber::new(&serial).map_err(build_err)?,
            name("VCEK-Bulwark")?,
            spki,
            &self.ask_signer,
            Some(&HwId(*chip_id)),
        )
    }
}

impl TestAuthority {
    /// The issuing kit for an SVSM without an AMD PSP (`abi::attest::issuing_kit`): ARK
    /// and ASK certificates, the ASK key, and a VCEK certificate template for `chip_id`
    /// whose public point the SVSM replaces with its own before it signs.
    pub fn issuing_kit(&self, chip_id: &[u8; 64]) -> Result<Vec<u8>, ChainError> {
        use abi::attest::issuing_kit::{MAGIC, POINT_LEN};
        use x509_cert::der::Decode;
        let placeholder =
            p384::ecdsa::SigningKey::from_slice(&[0x5A; 48]).map_err(|e| ChainError::Key(e.to_string()))?;
        let point = placeholder.verifying_key().to_encoded_point(false);
        let cert = x509_cert::Certificate::from_der(&self.issue_vcek(point.as_bytes(), chip_id)?).map_err(build_err)?;
        let tbs = cert.tbs_certificate.to_der().map_err(build_err)?;
        let algorithm = cert.signature_algorithm.to_der().map_err(build_err)?;
        let mut at = tbs.windows(POINT_LEN).enumerate().filter(|(_, w)| *w == point.as_bytes()).map(|(i, _)| i);
        let (Some(offset), None) = (at.next(), at.next()) else {
            return Err(ChainError::Build("the placeholder point is not in the template exactly once".into()));
        };
        let offset = (offset as u32).to_le_bytes();
        let mut kit = MAGIC.to_vec();
        for part in [&self.ark_der[..], &self.ask_der, &self.ask_key_der, &tbs, &algorithm, &offset] {
            kit.extend_from_slice(&(part.len() as u32).to_le_bytes());
            kit.extend_from_slice(part);
        }
        Ok(kit)
    }
}

fn name(cn: &str) -> Result<Name, ChainError> {
    Name::from_str(&format!("CN={cn},O={ORGANIZATION}")).map_err(build_err)
}

fn build_err(e: impl fmt::Display) -> ChainError {
    ChainError::Build(e.to_string())
}

fn build(
    profile: Profile,
    serial: SerialNumber,
    subject: Name,
    spki: SubjectPublicKeyInfoOwned,
    signer: &rsa::pss::SigningKey<Sha384>,
    hwid: Option<&HwId>,
) -> Result<Vec<u8>, ChainError> {
    let now = SystemTime::now();
    let not_before = Time::try_from(now - BACKDATE).map_err(build_err)?;
    let not_after = Time::try_from(now + VALIDITY).map_err(build_err)?;
    let validity = Validity { not_before, not_after };
    let mut builder = CertificateBuilder::new(profile, serial, validity, subject, spki, signer).map_err(build_err)?;
    if let Some(hwid) = hwid {
        builder.add_extension(hwid).map_err(build_err)?;
    }
    let cert = builder.build_with_rng::<rsa::pss::Signature>(&mut OsRng).map_err(build_err)?;
    cert.to_der().map_err(build_err)
}

/// The hwID extension, as AMD's VCEKs carry it: extnValue holds a DER OCTET STRING of
/// the 64 CHIP_ID bytes (older VCEKs held the bytes bare; verifiers read both,
/// `abi::attest::hwid_names`).
struct HwId([u8; 64]);

impl AssociatedOid for HwId {
    const OID: ObjectIdentifier = HWID_OID;
}

impl Encode for HwId {
    fn encoded_len(&self) -> x509_cert::der::Result<Length> {
        OctetString::new(self.0.to_vec())?.encoded_len()
    }

    fn encode(&self, writer: &mut impl Writer) -> x509_cert::der::Result<()> {
        OctetString::new(self.0.to_vec())?.encode(writer)
    }
}

impl AsExtension for HwId {
    fn critical(&self, _subject: &Name, _extensions: &[Extension]) -> bool {
        false
    }

    fn to_extension(&self, _subject: &Name, _extensions: &[Extension]) -> x509_cert::der::Result<Extension> {
        Ok(Extension { extn_id: HWID_OID, critical: false, extn_value: OctetString::new(self.to_der()?)? })
    }
}

#[cfg(test)]
mod kit_tests {
    use super::*;

    #[test]
    fn an_issuing_kit_parses_and_its_template_holds_one_point() {
        let kit = TestAuthority::shared().issuing_kit(&[7; 64]).unwrap();
        let parsed = abi::attest::issuing_kit::parse(&kit).unwrap();
        assert_eq!(parsed.ark_der, TestAuthority::shared().ark_der());
        assert_eq!(parsed.vcek_tbs_template[parsed.point_offset], 0x04, "an uncompressed point starts with 04");
        assert!(rsa::RsaPrivateKey::from_pkcs8_der(parsed.ask_key_pkcs8).is_ok());
    }
}
