//! The VCEK certificate of the `svm` platform's per-boot key, issued inside the SVSM from
//! the launcher's issuing kit (`abi::attest::issuing_kit`): the kit's TBSCertificate with
//! this boot's public point put in, signed RSASSA-PSS (SHA-384, salt 48) with the ASK key,
//! as AMD's certificates are. Then the certificate table the attestation protocol returns
//! (ARK, ASK, VCEK).

use abi::attest::cert_table;
use abi::attest::issuing_kit::{Kit, POINT_LEN};
use alloc::vec::Vec;
use rand_core::{CryptoRng, RngCore};
use rsa::RsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use sha2::Sha384;

/// RDRAND as the PSS salt's randomness.
struct Rdrand;

impl RngCore for Rdrand {
    fn next_u32(&mut self) -> u32 {
        super::super::cpu::low32(self.next_u64())
    }
    fn next_u64(&mut self) -> u64 {
        // A CPU without a working RDRAND has no PSP either; the launch refuses earlier
        // (it draws the VMPCKs and the VCEK from RDRAND), so this path has RDRAND.
        super::super::cpu::rdrand().unwrap_or(0)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            for (byte, random) in chunk.iter_mut().zip(self.next_u64().to_le_bytes()) {
                *byte = random;
            }
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for Rdrand {}

/// A DER length field (short form, or long form of one or two bytes).
fn der_len(len: usize, out: &mut Vec<u8>) -> Result<(), &'static str> {
    match (u8::try_from(len), u16::try_from(len)) {
        (Ok(short @ 0..=0x7F), _) => out.push(short),
        (Ok(byte), _) => out.extend_from_slice(&[0x81, byte]),
        (_, Ok(word)) => {
            out.push(0x82);
            out.extend_from_slice(&word.to_be_bytes());
        }
        _ => return Err("a DER length above 64 KiB"),
    }
    Ok(())
}

/// The VCEK certificate (DER) for `point` (uncompressed P-384).
pub fn issue(kit: &Kit<'_>, point: &[u8; POINT_LEN]) -> Result<Vec<u8>, &'static str> {
    let ask = RsaPrivateKey::from_pkcs8_der(kit.ask_key_pkcs8).map_err(|_| "the kit's ASK key does not decode")?;
    let mut tbs = kit.vcek_tbs_template.to_vec();
    let point_at = kit.point_offset..kit.point_offset.saturating_add(POINT_LEN);
    tbs.get_mut(point_at).ok_or("the kit's point lies outside its TBSCertificate")?.copy_from_slice(point);
    let signer = rsa::pss::SigningKey::<Sha384>::new(ask);
    let signature = signer.sign_with_rng(&mut Rdrand, &tbs).to_vec();
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, BIT STRING }
    let mut bits = Vec::with_capacity(signature.len() + 4);
    bits.push(0x03);
    der_len(signature.len() + 1, &mut bits)?;
    bits.push(0); // no unused bits
    bits.extend_from_slice(&signature);
    let body = tbs.len() + kit.signature_algorithm.len() + bits.len();
    if body > 0xFFFF {
        return Err("the VCEK certificate would be too large");
    }
    let mut cert = Vec::with_capacity(body + 4);
    cert.push(0x30);
    der_len(body, &mut cert)?;
    cert.extend_from_slice(&tbs);
    cert.extend_from_slice(kit.signature_algorithm);
    cert.extend_from_slice(&bits);
    Ok(cert)
}

/// The certificate table for this boot: ARK, ASK, and the VCEK certificate.
pub fn table(kit: &Kit<'_>, vcek_der: &[u8]) -> Option<Vec<u8>> {
    let entries = [(cert_table::ARK, kit.ark_der), (cert_table::ASK, kit.ask_der), (cert_table::VCEK, vcek_der)];
    let mut out = alloc::vec![0u8; cert_table::encoded_len(&[kit.ark_der, kit.ask_der, vcek_der])];
    let n = cert_table::encode_into(&entries, &mut out)?;
    out.truncate(n);
    Some(out)
}
