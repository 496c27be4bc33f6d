//! The GHCB: the page image the SVSM fills before a VMGEXIT, and the MSR protocol for
//! what must work before (or without) a GHCB page.
//!
//! Everything the host writes back is untrusted: only the fields the event defines are
//! read, and only if their valid bit is set. (A host that does not answer at all leaves
//! the request's own valid bits; every event therefore sets SW_EXITINFO1 to a value the
//! host must overwrite with 0 for success.)

use crate::hw::{Shared, SnpHw};
use abi::ghcb::{exit, msr, offset};

/// What went wrong talking to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GhcbError {
    /// An MSR-protocol answer with the wrong GHCBInfo code (the raw MSR value).
    UnexpectedResponse(u64),
    /// The host answered the request with this error code.
    Host(u64),
    /// SW_EXITINFO1 was not marked valid in the returned GHCB.
    NoResponse,
    /// No protocol version both sides speak: the host's (min, max).
    Version(u16, u16),
    /// The host lacks an SNP feature the SVSM needs (the HV_FEATURES bits).
    Features(u64),
}

/// A GHCB page image.
#[derive(Clone)]
pub struct Ghcb {
    page: [u8; 4096],
}

impl core::fmt::Debug for Ghcb {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ghcb")
            .field("exit_code", &self.get(offset::SW_EXIT_CODE))
            .field("info1", &self.get(offset::SW_EXIT_INFO_1))
            .field("info2", &self.get(offset::SW_EXIT_INFO_2))
            .finish()
    }
}

impl Ghcb {
    /// An event: SW_EXITCODE and both exit infos set, protocol version 2, usage 0.
    pub fn event(exit_code: u64, info1: u64, info2: u64) -> Self {
        let mut g = Self { page: [0; 4096] };
        g.set(offset::SW_EXIT_CODE, exit_code);
        g.set(offset::SW_EXIT_INFO_1, info1);
        g.set(offset::SW_EXIT_INFO_2, info2);
        g.page[offset::PROTOCOL_VERSION..offset::PROTOCOL_VERSION + 2]
            .copy_from_slice(&msr::PROTOCOL_MAX.to_le_bytes());
        g
    }

    /// A page image as the host left it (model host, tests).
    pub fn from_page(page: [u8; 4096]) -> Self {
        Self { page }
    }

    pub fn page(&self) -> &[u8; 4096] {
        &self.page
    }

    /// Set a save-area quadword and mark it valid.
    pub fn set(&mut self, at: usize, value: u64) {
        // The offsets are the save area's constants, inside the page.
        let Some(slot) = self.page.get_mut(at..at + 8) else { return };
        slot.copy_from_slice(&value.to_le_bytes());
        let bit = at / 8;
        if let Some(valid) = self.page.get_mut(offset::VALID_BITMAP + bit / 8) {
            *valid |= 1 << (bit % 8);
        }
    }

    /// A save-area quadword, if the writer marked it valid.
    pub fn get(&self, at: usize) -> Option<u64> {
        let bit = at / 8;
        let valid = self.page.get(offset::VALID_BITMAP + bit / 8).is_some_and(|v| v & (1 << (bit % 8)) != 0);
        let b: [u8; 8] = self.page.get(at..at + 8)?.try_into().ok()?;
        valid.then(|| u64::from_le_bytes(b))
    }

    /// Forget every valid bit (the host does this before it writes its answer).
    pub fn clear_valid(&mut self) {
        self.page[offset::VALID_BITMAP..offset::VALID_BITMAP + offset::VALID_BITMAP_LEN].fill(0);
    }

    /// The shared buffer inside the GHCB (string I/O, scratch data).
    pub fn shared_buffer_mut(&mut self) -> &mut [u8] {
        &mut self.page[offset::SHARED_BUFFER..offset::SHARED_BUFFER + offset::SHARED_BUFFER_LEN]
    }

    /// Run the event: copy the image into this CPU's GHCB page, point the MSR at it,
    /// VMGEXIT, copy the host's answer back. `Ok` if SW_EXITINFO1 is valid and its low
    /// half is zero; the host's error otherwise.
    pub fn call<H: SnpHw + ?Sized>(&mut self, hw: &mut H) -> Result<(), GhcbError> {
        hw.shared_write(Shared::Ghcb, 0, &self.page);
        let gpa = hw.shared_gpa(Shared::Ghcb);
        hw.write_ghcb_msr(gpa);
        hw.vmgexit();
        hw.shared_read(Shared::Ghcb, 0, &mut self.page);
        match self.get(offset::SW_EXIT_INFO_1) {
            None => Err(GhcbError::NoResponse),
            Some(info1) if info1 & 0xFFFF_FFFF == 0 => Ok(()),
            Some(info1) => Err(GhcbError::Host(info1)),
        }
    }
}

/// One MSR-protocol exchange: write `request`, VMGEXIT, read the answer, and put the
/// MSR back to what it held (this CPU's GHCB gpa, once registered).
pub fn msr_call<H: SnpHw + ?Sized>(hw: &mut H, request: u64, response_code: u64) -> Result<u64, GhcbError> {
    let saved = hw.read_ghcb_msr();
    hw.write_ghcb_msr(request);
    hw.vmgexit();
    let answer = hw.read_ghcb_msr();
    hw.write_ghcb_msr(saved);
    if answer & msr::INFO_MASK != response_code {
        return Err(GhcbError::UnexpectedResponse(answer));
    }
    Ok(answer)
}

/// SEV_INFO: check the host speaks GHCB protocol 2; returns the C-bit position it reports.
pub fn negotiate<H: SnpHw + ?Sized>(hw: &mut H) -> Result<u8, GhcbError> {
    let answer = msr_call(hw, msr::SEV_INFO_REQ, msr::SEV_INFO_RESP)?;
    // GHCBData[63:48] and [47:32]; each fits its u16.
    let max = u16::try_from(answer >> 48).unwrap_or(u16::MAX);
    let min = u16::try_from((answer >> 32) & 0xFFFF).unwrap_or(u16::MAX);
    if min > msr::PROTOCOL_MAX || max < msr::PROTOCOL_MIN {
        return Err(GhcbError::Version(min, max));
    }
    Ok(u8::try_from((answer >> 24) & 0xFF).unwrap_or(0))
}

/// HV_FEATURES: the host must offer SNP and AP creation.
pub fn check_features<H: SnpHw + ?Sized>(hw: &mut H) -> Result<u64, GhcbError> {
    let answer = msr_call(hw, msr::HV_FEATURES_REQ, msr::HV_FEATURES_RESP)?;
    let features = answer >> 12;
    let needed = msr::HV_FEATURE_SNP | msr::HV_FEATURE_SNP_AP_CREATION;
    if features & needed != needed {
        return Err(GhcbError::Features(features));
    }
    Ok(features)
}

/// Register `gpa` as this CPU's GHCB.
pub fn register<H: SnpHw + ?Sized>(hw: &mut H, gpa: u64) -> Result<(), GhcbError> {
    let gfn = gpa >> 12;
    let answer = msr_call(hw, msr::REGISTER_GPA_REQ | gfn << 12, msr::REGISTER_GPA_RESP)?;
    if answer >> 12 != gfn {
        return Err(GhcbError::Host(answer >> 12));
    }
    hw.write_ghcb_msr(gpa);
    Ok(())
}

/// Ask the host to make one 4 KiB page private or shared (`msr::PSC_PRIVATE/PSC_SHARED`).
pub fn page_state_change<H: SnpHw + ?Sized>(hw: &mut H, gpa: u64, op: u64) -> Result<(), GhcbError> {
    let request = msr::PSC_REQ | (gpa >> 12 & ((1 << 40) - 1)) << 12 | (op & 0xF) << 52;
    let answer = msr_call(hw, request, msr::PSC_RESP)?;
    match answer >> 32 {
        0 => Ok(()),
        error => Err(GhcbError::Host(error)),
    }
}

/// Read `N` bytes (1, 2, 4 or 8) of a device register at `gpa` through the host (the GHCB's
/// MMIO read; the SVSM's loads from a device's page would raise #VC instead). The bytes
/// are the host's to choose.
pub fn mmio_read<H: SnpHw + ?Sized, const N: usize>(hw: &mut H, gpa: u64) -> Result<[u8; N], GhcbError> {
    let mut g = Ghcb::event(exit::MMIO_READ, gpa, N as u64);
    g.set(offset::SW_SCRATCH, hw.shared_gpa(Shared::Ghcb) + offset::SHARED_BUFFER as u64);
    g.call(hw)?;
    let mut value = [0u8; N];
    let answer = g.shared_buffer_mut().get(..N).ok_or(GhcbError::NoResponse)?;
    value.copy_from_slice(answer);
    Ok(value)
}

/// Write `data` (1, 2, 4 or 8 bytes) to a device register at `gpa` through the host (the
/// GHCB's MMIO write).
pub fn mmio_write<H: SnpHw + ?Sized>(hw: &mut H, gpa: u64, data: &[u8]) -> Result<(), GhcbError> {
    let mut g = Ghcb::event(exit::MMIO_WRITE, gpa, data.len() as u64);
    g.set(offset::SW_SCRATCH, hw.shared_gpa(Shared::Ghcb) + offset::SHARED_BUFFER as u64);
    let buffer = g.shared_buffer_mut().get_mut(..data.len()).ok_or(GhcbError::NoResponse)?;
    buffer.copy_from_slice(data);
    g.call(hw)
}

/// The TERM_REQ value for a reason.
pub fn termination_request(set: u8, code: u8) -> u64 {
    msr::TERM_REQ | u64::from(set & 0xF) << 12 | u64::from(code) << 16
}

/// Ask the host to end the guest. The host does not resume a CPU after this; if it does
/// anyway, the caller must stop (halt) rather than go on.
pub fn terminate<H: SnpHw + ?Sized>(hw: &mut H, set: u8, code: u8) {
    hw.write_ghcb_msr(termination_request(set, code));
    hw.vmgexit();
}

/// SW_EXITINFO1 of an AP_CREATION event: the request in bits 15:0, the VMPL of the VMSA
/// in 19:16 (the host cannot read it from the encrypted page), the APIC ID in 63:32.
pub fn ap_creation_info(request: u64, vmpl: u8, apic_id: u32) -> u64 {
    request & 0xFFFF | u64::from(vmpl & 0xF) << 16 | u64::from(apic_id) << 32
}

/// The event that leaves VMPL0 for `vmpl` (spec 58019 section 5: the SVSM's return to
/// the guest).
pub fn run_vmpl(vmpl: u8) -> Ghcb {
    Ghcb::event(exit::RUN_VMPL, u64::from(vmpl), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_bitmap_tracks_set_fields() {
        let mut g = Ghcb::event(exit::CPUID, 0, 0);
        assert_eq!(g.get(offset::SW_EXIT_CODE), Some(exit::CPUID));
        assert_eq!(g.get(offset::RAX), None, "never set, so not valid");
        g.set(offset::RAX, 7);
        assert_eq!(g.get(offset::RAX), Some(7));
        // RAX is quadword 0x3F of the save area: bit 7 of bitmap byte 7.
        assert_eq!(g.page()[offset::VALID_BITMAP + 7] & 0x80, 0x80);
        g.clear_valid();
        assert_eq!(g.get(offset::RAX), None);
        assert_eq!(g.page()[offset::PROTOCOL_VERSION], 2);
    }

    #[test]
    fn termination_encoding() {
        // Set 1, code 3: GHCBInfo 0x100, set in 15:12, code in 23:16.
        assert_eq!(termination_request(1, 3), 0x0003_1100);
        assert_eq!(termination_request(0, 2), 0x0002_0100);
    }

    #[test]
    fn ap_creation_encoding() {
        assert_eq!(ap_creation_info(exit::AP_CREATE, 1, 5), 0x5_0001_0001);
        assert_eq!(ap_creation_info(exit::AP_DESTROY, 0, 7), 0x7_0000_0002);
    }
}
