//! The `svm` platform's instructions: the SVSM as an L1 hypervisor under QEMU's SVM
//! emulation, the guest as an L2 VM (docs/platforms/svm.md, docs/facts.md section 5).
//! What the platform decides (exits, permission maps, nested paging from the RMP, vCPU
//! slots, the launch layout) is the host-tested `bulwark-svm` crate (`svm/`); this module
//! is its seam on the chip.
//!
//! - [`enable`]: check SVM and nested paging, set EFER.SVME and the host save area;
//! - [`disk`]: the sealed store's virtio-blk disk;
//! - [`migration_device`]: the migration pages, on QEMU's ivshmem device;
//! - [`pci`]: PCI configuration space;
//! - [`hw`]: `SvmHw` and `SvmCpu` on the chip;
//! - [`npt`]: the nested page tables' memory;
//! - [`vmrun`]: the one unsafe trampoline that enters the guest and comes back;
//! - [`kick`]: making another CPU leave the guest (shootdown, vCPU stop), waking idle ones;
//! - [`psp`]: the software PSP that signs this platform's attestation reports;
//! - [`vcek_cert`]: its VCEK certificate, issued from the launcher's kit.
#![expect(unsafe_code, reason = "EFER.SVME and the host save area")]

pub mod hw;
pub mod kick;
pub mod migration_device;
pub mod npt;
pub mod psp;
pub mod vcek_cert;
pub mod vmrun;

use super::cpu::{self, EFER_SVME, MSR_EFER, MSR_VM_HSAVE_PA};
use super::pages::Page;

/// Why SVM cannot run here.
#[derive(Debug)]
pub enum SvmError {
    NoSvm,
    NoNestedPaging,
    OutOfMemory,
}

/// SVM is on for this CPU; the host save area and the page VMSAVE keeps the host's
/// FS/GS/TR/syscall state in live as long as this value.
pub struct Svm {
    _hsave: Page,
    host_state: Page,
}

impl Svm {
    /// The page the VMRUN trampoline saves this CPU's host state into.
    pub fn host_state_phys(&self) -> u64 {
        self.host_state.phys()
    }
}

/// Whether this CPU saves the next RIP of an intercepted instruction (NRIP save, CPUID
/// 0x8000000A EDX bit 3; QEMU's TCG does not).
pub fn next_rip_saved() -> bool {
    let (_, _, _, edx) = cpu::cpuid(0x8000_000A, 0);
    edx & (1 << 3) != 0
}

pub fn enable() -> Result<Svm, SvmError> {
    let (_, _, ecx, _) = cpu::cpuid(0x8000_0001, 0);
    if ecx & (1 << 2) == 0 {
        return Err(SvmError::NoSvm);
    }
    let (_, _, _, edx) = cpu::cpuid(0x8000_000A, 0);
    if edx & 1 == 0 {
        return Err(SvmError::NoNestedPaging);
    }
    let hsave = Page::zeroed().ok_or(SvmError::OutOfMemory)?;
    let host_state = Page::zeroed().ok_or(SvmError::OutOfMemory)?;
    // SAFETY: EFER and VM_HSAVE_PA exist on every CPU with SVM (checked above); setting
    // SVME only enables the SVM instructions, and the host save area is a page this value
    // keeps alive for as long as SVM is used.
    unsafe {
        cpu::wrmsr(MSR_EFER, cpu::rdmsr(MSR_EFER) | EFER_SVME);
        cpu::wrmsr(MSR_VM_HSAVE_PA, hsave.phys());
    }
    Ok(Svm { _hsave: hsave, host_state })
}
