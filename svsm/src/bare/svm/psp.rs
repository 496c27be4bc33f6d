//! The `svm` platform's PSP: there is no AMD firmware under QEMU, so the SVSM runs the
//! software one of `bulwark-psp` for itself. Its VCEK is a P-384 key drawn from RDRAND at
//! every boot and never leaves the SVSM; its reports have the real layout, and say in
//! CHIP_ID that they are not rooted in hardware.

use p384::ecdsa::SigningKey;
use psp::SoftPsp;
use psp::report::Identity;

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

/// The firmware for this boot's guest: VMPCK0 as the launch put it in the secrets page,
/// and `measurement` (SHA-384 of what was launched) in every report.
pub fn launch(vmpck0: [u8; 32], measurement: [u8; 48]) -> Result<SoftPsp, &'static str> {
    // TCB_VERSION, Milan/Genoa layout: [boot loader, TEE, 0, 0, 0, 0, SNP, microcode].
    let tcb = u64::from_le_bytes([3, 0, 0, 0, 0, 0, 8, 0x73]);
    let identity = Identity {
        // SMT allowed (bit 16), bit 17 reserved-must-be-one; not debuggable.
        policy: 0x3_0000,
        family_id: [0; 16],
        image_id: [0; 16],
        guest_svn: 0,
        tcb,
        platform_info: 0,
        measurement,
        host_data: [0; 32],
        report_id: [0; 32],
        chip_id: abi::attest::SVM_CHIP_ID,
        cpuid: [0x19, 0x11, 0x01],
        firmware: [0, 55, 1],
    };
    Ok(SoftPsp::new(vmpck0, fresh_vcek()?, identity))
}
