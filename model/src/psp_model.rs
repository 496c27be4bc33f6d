//! The model's PSP: the software firmware of `bulwark-softpsp` with the identity of a made-up
//! Genoa part, and the certificate chain that lets a verifier check its reports.
//!
//! Nothing here is rooted in AMD hardware: the chip ID says so in ASCII, and so do the
//! certificates' names.

use p384::ecdsa::SigningKey;
use softpsp::SoftPsp;
use softpsp::report::Identity;

/// CHIP_ID of the model's reports: non-zero (verifiers need that) and self-describing.
pub const CHIP_ID: [u8; 64] = abi::attest::chip_id_tag(b"BULWARK-MODEL-PSP (NOT AMD HARDWARE)");

/// What the model's firmware reports about the platform and the launch.
pub fn identity() -> Identity {
    let mut measurement = [0u8; 48];
    measurement[..21].copy_from_slice(b"bulwark model launch ");
    Identity { platform_info: 1, report_id: [0x11; 32], ..Identity::emulated(measurement, CHIP_ID) }
}

/// The model's VCEK: a fixed P-384 key, so runs are reproducible.
pub fn vcek() -> SigningKey {
    let mut scalar = [0u8; 48];
    for (i, b) in scalar.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    match SigningKey::from_slice(&scalar) {
        Ok(k) => k,
        Err(_) => unreachable!("a fixed scalar below the group order"),
    }
}

/// The firmware for a guest whose secrets page holds `vmpck0`.
pub fn launch(vmpck0: [u8; 32]) -> SoftPsp {
    SoftPsp::new(vmpck0, vcek(), identity())
}

/// The certificate table the model's host hands out with reports: ARK and ASK of the test
/// authority (`bulwark-attest`), and the VCEK certificate for [`vcek`]. Made once per
/// process (an RSA-4096 signature).
pub fn certificate_table() -> Vec<u8> {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TABLE
        .get_or_init(|| {
            let authority = attest::chain::TestAuthority::shared();
            let point = vcek().verifying_key().to_encoded_point(false);
            let issued = authority.issue_vcek(point.as_bytes(), &CHIP_ID).and_then(|vcek| {
                attest::cert_table::encode(&[
                    (&abi::attest::cert_table::ARK, authority.ark_der()),
                    (&abi::attest::cert_table::ASK, authority.ask_der()),
                    (&abi::attest::cert_table::VCEK, &vcek),
                ])
                .map_err(|e| attest::chain::ChainError::Build(e.to_string()))
            });
            match issued {
                Ok(table) => table,
                Err(e) => unreachable!("the fixture authority certifies the model's VCEK: {e}"),
            }
        })
        .clone()
}
