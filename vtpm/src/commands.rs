//! A few TPM 2.0 commands that touch NV state, built as TPM2 Part 3 lays them out, with
//! owner authorization by an empty password. The model's persistence tests and the
//! SVSM's benchmarks send them; a guest would use tpm2-tools.

use crate::wire::{self, Command, Reader};
use alloc::vec::Vec;

/// TPM_RH_OWNER: the owner hierarchy, which authorizes these commands.
pub const TPM_RH_OWNER: u32 = 0x4000_0001;
const TPM_CC_NV_DEFINE_SPACE: u32 = 0x0000_012A;
const TPM_CC_NV_WRITE: u32 = 0x0000_0137;
const TPM_CC_NV_UNDEFINE_SPACE: u32 = 0x0000_0122;
const TPM_CC_NV_READ: u32 = 0x0000_014E;
const TPM_CC_EVICT_CONTROL: u32 = 0x0000_0120;
const TPM_CC_READ_PUBLIC: u32 = 0x0000_0173;
const TPM_ALG_SHA256: u16 = 0x000B;
/// OWNERWRITE | AUTHWRITE | OWNERREAD | AUTHREAD | NO_DA, an ordinary index.
const NV_ATTRIBUTES: u32 = (1 << 1) | (1 << 2) | (1 << 17) | (1 << 18) | (1 << 25);

/// TPM2_NV_DefineSpace of an ordinary `size`-byte index at `index`, empty auth value.
pub fn nv_define_space(index: u32, size: u16) -> Vec<u8> {
    let mut c = Command::new(wire::TPM_ST_SESSIONS, TPM_CC_NV_DEFINE_SPACE);
    c.u32(TPM_RH_OWNER).password_auth();
    c.u16(0); // auth: empty
    // TPM2B_NV_PUBLIC: nvIndex, nameAlg, attributes, authPolicy (empty), dataSize.
    c.u16(14).u32(index).u16(TPM_ALG_SHA256).u32(NV_ATTRIBUTES).u16(0).u16(size);
    c.finish()
}

/// TPM2_NV_UndefineSpace of `index`.
pub fn nv_undefine_space(index: u32) -> Vec<u8> {
    let mut c = Command::new(wire::TPM_ST_SESSIONS, TPM_CC_NV_UNDEFINE_SPACE);
    c.u32(TPM_RH_OWNER).u32(index).password_auth();
    c.finish()
}

/// TPM2_NV_Write of `data` at `offset` of `index`.
pub fn nv_write(index: u32, offset: u16, data: &[u8]) -> Vec<u8> {
    let mut c = Command::new(wire::TPM_ST_SESSIONS, TPM_CC_NV_WRITE);
    c.u32(TPM_RH_OWNER).u32(index).password_auth();
    c.sized(data).u16(offset);
    c.finish()
}

/// TPM2_NV_Read of `size` bytes at `offset` of `index`.
pub fn nv_read(index: u32, offset: u16, size: u16) -> Vec<u8> {
    let mut c = Command::new(wire::TPM_ST_SESSIONS, TPM_CC_NV_READ);
    c.u32(TPM_RH_OWNER).u32(index).password_auth();
    c.u16(size).u16(offset);
    c.finish()
}

/// The data of a successful TPM2_NV_Read response.
pub fn nv_read_result(response: &[u8]) -> Option<&[u8]> {
    let mut body = Reader::new(response.get(wire::HEADER_SIZE..)?);
    let _parameter_size = body.u32()?;
    body.sized()
}

/// TPM2_EvictControl: make the loaded object `object` persistent at `persistent` (or,
/// with `object == persistent`, remove it).
pub fn evict_control(object: u32, persistent: u32) -> Vec<u8> {
    let mut c = Command::new(wire::TPM_ST_SESSIONS, TPM_CC_EVICT_CONTROL);
    c.u32(TPM_RH_OWNER).u32(object).password_auth();
    c.u32(persistent);
    c.finish()
}

/// TPM2_ReadPublic of `object`.
pub fn read_public(object: u32) -> Vec<u8> {
    let mut c = Command::new(wire::TPM_ST_NO_SESSIONS, TPM_CC_READ_PUBLIC);
    c.u32(object);
    c.finish()
}

/// The public area (TPMT_PUBLIC) of a successful TPM2_ReadPublic response.
pub fn read_public_result(response: &[u8]) -> Option<&[u8]> {
    Reader::new(response.get(wire::HEADER_SIZE..)?).sized()
}
