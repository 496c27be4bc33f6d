//! The `svm` platform's PSP: there is no AMD firmware under QEMU, so the SVSM runs the
//! software one of `bulwark-softpsp` for itself. Its VCEK is a P-384 key drawn from RDRAND at
//! every boot and never leaves the SVSM; its reports have the real layout, and say in
//! CHIP_ID that they are not rooted in hardware.

use p384::ecdsa::SigningKey;
use softpsp::SoftPsp;
use softpsp::report::Identity;

/// A fresh P-384 key from RDRAND (a draw at or above the group order is drawn again).
fn fresh_vcek() -> Result<SigningKey, &'static str> {
    for _ in 0..8 {
        let mut scalar = [0u8; 48];
        for word in scalar.chunks_mut(8) {
            word.copy_from_slice(&super::super::cpu::rdrand().ok_or("no RDRAND for the VCEK")?.to_le_bytes());
        }
        if let Ok(key) = SigningKey::from_slice(&scalar) {
            scalar.fill(0);
            return Ok(key);
        }
    }
    Err("RDRAND gave no usable VCEK")
}

/// The chip secret MSG_KEY_REQ keys come from, for a PSP whose "chip" is the launcher:
/// drawn from the issuing kit's ASK key, so every boot with the same kit (the same
/// "machine") derives the same keys. The host holds that kit: on svm it can derive every
/// key, which is why svm is a development platform, not a confidential one.
pub fn chip_secret(ask_key_pkcs8: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha384};
    let digest = Sha384::new().chain_update(b"bulwark svm chip secret").chain_update(ask_key_pkcs8).finalize();
    let mut secret = [0u8; 32];
    secret.copy_from_slice(digest.get(..32).unwrap_or(&[0; 32]));
    secret
}

/// The firmware for this boot's guest: VMPCK0 as the launch put it in the secrets page,
/// and `measurement` (SHA-384 of what was launched) in every report.
pub fn launch(vmpck0: [u8; 32], measurement: [u8; 48]) -> Result<SoftPsp, &'static str> {
    let identity = Identity::emulated(measurement, abi::attest::SVM_CHIP_ID);
    Ok(SoftPsp::new(vmpck0, fresh_vcek()?, identity))
}
