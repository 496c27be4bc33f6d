//! The SNP attestation report, version 3 (offsets in `abi::attest::report`): what a
//! platform puts in it, and the ECDSA P-384 signature over its first 0x2A0 bytes.

use abi::attest::REPORT_SIZE;
use abi::attest::report as r;
use p384::ecdsa::signature::hazmat::PrehashSigner;
use p384::ecdsa::{Signature, SigningKey};
use sha2::{Digest, Sha384};

/// The fields a platform fixes for every report it signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub policy: u64,
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    pub guest_svn: u32,
    /// One TCB_VERSION for current, reported, committed and launch TCB.
    pub tcb: u64,
    pub platform_info: u64,
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    pub report_id: [u8; 32],
    /// Must not be all zero: verifiers take an all-zero CHIP_ID as "masked" and then
    /// cannot tell the processor generation of a version 2 report.
    pub chip_id: [u8; 64],
    /// CPUID family, model, stepping (family 0x19 model 0x11 is Genoa).
    pub cpuid: [u8; 3],
    /// Firmware build, minor, major.
    pub firmware: [u8; 3],
}

impl Identity {
    /// A platform with no AMD part behind it: a "Genoa" (CPUID family 0x19 model 0x11,
    /// which verifiers know), firmware 1.55, one TCB for everything, a guest policy that
    /// allows SMT and not debugging. `chip_id` should say what the platform really is.
    pub fn emulated(measurement: [u8; 48], chip_id: [u8; 64]) -> Self {
        Self {
            // ABI 0.0, SMT allowed (bit 16), bit 17 reserved-must-be-one; debug off.
            policy: 0x3_0000,
            family_id: [0; 16],
            image_id: [0; 16],
            guest_svn: 0,
            // TCB_VERSION, Milan/Genoa layout: [boot loader, TEE, 0, 0, 0, 0, SNP, microcode].
            tcb: u64::from_le_bytes([3, 0, 0, 0, 0, 0, 8, 0x73]),
            platform_info: 0,
            measurement,
            host_data: [0; 32],
            report_id: [0; 32],
            chip_id,
            cpuid: [0x19, 0x11, 0x01],
            firmware: [0, 55, 1],
        }
    }
}

/// An unsigned report for `report_data`, requested at `vmpl`.
pub fn build(id: &Identity, report_data: &[u8; 64], vmpl: u32) -> [u8; REPORT_SIZE] {
    let mut b = [0u8; REPORT_SIZE];
    let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
    put(r::VERSION, &r::VERSION_3.to_le_bytes());
    put(r::GUEST_SVN, &id.guest_svn.to_le_bytes());
    put(r::POLICY, &id.policy.to_le_bytes());
    put(r::FAMILY_ID, &id.family_id);
    put(r::IMAGE_ID, &id.image_id);
    put(r::VMPL, &vmpl.to_le_bytes());
    put(r::SIGNATURE_ALGO, &r::ALGO_ECDSA_P384_SHA384.to_le_bytes());
    put(r::CURRENT_TCB, &id.tcb.to_le_bytes());
    put(r::PLATFORM_INFO, &id.platform_info.to_le_bytes());
    // KEY_INFO stays 0: signed with the VCEK, no author key, chip ID not masked.
    put(r::REPORT_DATA, report_data);
    put(r::MEASUREMENT, &id.measurement);
    put(r::HOST_DATA, &id.host_data);
    put(r::REPORT_ID, &id.report_id);
    put(r::REPORTED_TCB, &id.tcb.to_le_bytes());
    put(r::CPUID_FAMILY, &id.cpuid);
    put(r::CHIP_ID, &id.chip_id);
    put(r::COMMITTED_TCB, &id.tcb.to_le_bytes());
    put(r::CURRENT_BUILD, &id.firmware);
    put(r::COMMITTED_BUILD, &id.firmware);
    put(r::LAUNCH_TCB, &id.tcb.to_le_bytes());
    b
}

/// Sign `report` in place: SHA-384 of bytes 0..0x2A0, ECDSA P-384 (RFC 6979, no RNG
/// needed), R and S stored little-endian in their 72-byte fields.
pub fn sign(report: &mut [u8; REPORT_SIZE], key: &SigningKey) -> Result<(), p384::ecdsa::Error> {
    let digest = Sha384::digest(&report[..r::SIGNED_LEN]);
    let signature: Signature = key.sign_prehash(&digest)?;
    let (big_r, big_s) = signature.split_bytes();
    for (at, component) in [(r::SIGNATURE_R, big_r), (r::SIGNATURE_S, big_s)] {
        let field = &mut report[at..at + r::SIGNATURE_COMPONENT];
        field.fill(0);
        for (i, byte) in component.iter().rev().enumerate() {
            field[i] = *byte;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p384::ecdsa::VerifyingKey;
    use p384::ecdsa::signature::hazmat::PrehashVerifier;

    pub fn identity() -> Identity {
        Identity {
            measurement: [3; 48],
            host_data: [4; 32],
            report_id: [5; 32],
            ..Identity::emulated([3; 48], [6; 64])
        }
    }

    #[test]
    fn fields_land_at_the_abi_offsets_and_reserved_bytes_stay_zero() {
        let b = build(&identity(), &[0xAA; 64], 0);
        assert_eq!(&b[r::VERSION..r::VERSION + 4], &3u32.to_le_bytes());
        assert_eq!(&b[r::REPORT_DATA..r::REPORT_DATA + 64], &[0xAA; 64]);
        assert_eq!(&b[r::MEASUREMENT..r::MEASUREMENT + 48], &[3; 48]);
        assert_eq!(&b[r::CHIP_ID..r::CHIP_ID + 64], &[6; 64]);
        assert_eq!(b[r::CPUID_MODEL], 0x11);
        assert_eq!(&b[r::SIGNATURE_ALGO..r::SIGNATURE_ALGO + 4], &1u32.to_le_bytes());
        for range in r::RESERVED {
            assert!(b[range.clone()].iter().all(|x| *x == 0), "reserved {range:x?}");
        }
    }

    #[test]
    fn the_signature_verifies_over_the_signed_bytes_only() {
        let key = SigningKey::from_slice(&[0x42; 48]).unwrap();
        let mut b = build(&identity(), &[0; 64], 0);
        sign(&mut b, &key).unwrap();
        let mut big_r = [0u8; 48];
        let mut big_s = [0u8; 48];
        for i in 0..48 {
            big_r[47 - i] = b[r::SIGNATURE_R + i];
            big_s[47 - i] = b[r::SIGNATURE_S + i];
        }
        assert!(b[r::SIGNATURE_R + 48..r::SIGNATURE_S].iter().all(|x| *x == 0), "R padding");
        let sig = Signature::from_scalars(big_r, big_s).unwrap();
        let verifier = VerifyingKey::from(&key);
        let digest = Sha384::digest(&b[..r::SIGNED_LEN]);
        verifier.verify_prehash(&digest, &sig).unwrap();
        b[r::REPORT_DATA] ^= 1;
        assert!(verifier.verify_prehash(&Sha384::digest(&b[..r::SIGNED_LEN]), &sig).is_err());
    }
}
