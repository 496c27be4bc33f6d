//! MSG_KEY_REQ / MSG_KEY_RSP (SNP firmware ABI, "Key Derivation"): the payloads the SVSM
//! sends and reads to have the PSP derive a key bound to this guest's launch (its
//! measurement, policy, IDs, SVN and TCB, as the request selects). The sealed store
//! (docs/persistence.md) takes its key this way, so only the same measured SVSM on the
//! same chip opens it.

use abi::attest::guest_message as gm;

/// What a derived key is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRequest {
    /// GUEST_FIELD_SELECT: which launch fields are mixed in (`gm::FIELD_*`).
    pub fields: u64,
    /// The VMPL the key is for: the requester's or a less privileged one.
    pub vmpl: u32,
    /// The guest SVN mixed in: at most the guest's own.
    pub guest_svn: u32,
    /// The TCB version mixed in: at most the committed one.
    pub tcb_version: u64,
}

impl KeyRequest {
    /// The MSG_KEY_REQ payload (the VCEK as root key).
    pub fn payload(&self) -> [u8; gm::KEY_REQ_LEN] {
        let mut p = [0u8; gm::KEY_REQ_LEN];
        let mut put = |at: usize, bytes: &[u8]| {
            if let Some(dst) = p.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        };
        put(gm::KEY_REQ_FIELD_SELECT, &self.fields.to_le_bytes());
        put(gm::KEY_REQ_VMPL, &self.vmpl.to_le_bytes());
        put(gm::KEY_REQ_GUEST_SVN, &self.guest_svn.to_le_bytes());
        put(gm::KEY_REQ_TCB_VERSION, &self.tcb_version.to_le_bytes());
        p
    }
}

/// A MSG_KEY_REQ payload read back (the PSP's side): ROOT_KEY_SELECT and the request.
pub fn parse_request(payload: &[u8]) -> Option<(u32, KeyRequest)> {
    let u32_at = |at: usize| Some(u32::from_le_bytes(payload.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(payload.get(at..at + 8)?.try_into().ok()?));
    let request = KeyRequest {
        fields: u64_at(gm::KEY_REQ_FIELD_SELECT)?,
        vmpl: u32_at(gm::KEY_REQ_VMPL)?,
        guest_svn: u32_at(gm::KEY_REQ_GUEST_SVN)?,
        tcb_version: u64_at(gm::KEY_REQ_TCB_VERSION)?,
    };
    Some((u32_at(gm::KEY_REQ_ROOT_KEY_SELECT)?, request))
}

/// The key of a MSG_KEY_RSP payload, or the firmware's status if it refused.
pub fn key_from_response(payload: &[u8]) -> Result<[u8; 32], u32> {
    let status = payload
        .get(gm::KEY_RSP_STATUS..gm::KEY_RSP_STATUS + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(u32::MAX, u32::from_le_bytes);
    if status != 0 {
        return Err(status);
    }
    payload.get(gm::KEY_RSP_KEY..gm::KEY_RSP_KEY + 32).and_then(|k| k.try_into().ok()).ok_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's include/uapi/linux/sev-guest.h `struct snp_derived_key_req`: root_key_select
    /// u32, rsvd u32, guest_field_select u64, vmpl u32, guest_svn u32, tcb_version u64; the
    /// field bits as AMD's sev-guest tools (snp-derive-key.h) name them: policy 0, image
    /// ID 1, family ID 2, measurement 3, SVN 4, TCB 5.
    #[test]
    fn the_request_is_laid_out_as_linuxs_snp_derived_key_req() {
        let r = KeyRequest {
            fields: gm::FIELD_MEASUREMENT | gm::FIELD_GUEST_POLICY,
            vmpl: 1,
            guest_svn: 2,
            tcb_version: 0x0807,
        };
        let p = r.payload();
        assert_eq!(&p[0..8], &[0; 8], "VCEK root, reserved");
        assert_eq!(&p[8..16], &9u64.to_le_bytes());
        assert_eq!(&p[16..20], &1u32.to_le_bytes());
        assert_eq!(&p[20..24], &2u32.to_le_bytes());
        assert_eq!(&p[24..32], &0x0807u64.to_le_bytes());
        assert_eq!(parse_request(&p), Some((0, r)));
        assert_eq!(parse_request(&p[..31]), None);
    }

    #[test]
    fn a_response_gives_its_key_or_its_status() {
        let mut rsp = [0u8; gm::KEY_RSP_LEN];
        rsp[gm::KEY_RSP_KEY..].copy_from_slice(&[7; 32]);
        assert_eq!(key_from_response(&rsp), Ok([7; 32]));
        rsp[0] = 0x16;
        assert_eq!(key_from_response(&rsp), Err(0x16));
        assert_eq!(key_from_response(&rsp[..8]), Err(0x16));
        assert_eq!(key_from_response(&[]), Err(u32::MAX));
    }
}
