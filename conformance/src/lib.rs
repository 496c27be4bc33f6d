//! The conformance suite: one case per behaviour of spec 58019 a guest can observe,
//! success paths and every error the spec names, each named after its section.
//!
//! Cases talk to the SVSM only through the guest calling convention ([`guest::Client`]
//! over the environment's [`guest::Transport`]), so the same cases run on the hosted
//! model and, over real VMMCALLs, in the test guest. Cases that need the host to
//! misbehave (spurious entries, wrong exit codes, racing vCPUs) use [`HostControl`] and
//! are skipped where the environment has none.
//!
//! Each case expects a freshly launched SVSM.
#![no_std]

extern crate alloc;

mod cases;
mod check;

use abi::vmsa::VmsaField;
use alloc::string::String;
use guest::Transport;

pub use cases::CASES;
pub use check::CaseError;

/// Where things are in the environment's guest-physical memory.
#[derive(Clone, Copy, Debug)]
pub struct Facts {
    pub secrets_page: u64,
    pub startup_vmsa: u64,
    /// The guest's SEV_FEATURES (new VMSAs must match).
    pub sev_features: u64,
    /// Validated guest pages free for parameters: `scratch .. scratch + scratch_pages`.
    pub scratch: u64,
    pub scratch_pages: u64,
    /// Unvalidated RAM on 4 KiB RMP entries, 2 MiB aligned.
    pub free_small: u64,
    pub free_small_pages: u64,
    /// Unvalidated RAM on 2 MiB RMP entries, 2 MiB aligned; count of 2 MiB pages.
    pub free_huge: u64,
    pub free_huge_count: u64,
    /// A page-aligned gpa that is not RAM.
    pub not_ram: u64,
    /// Work per call before SVSM_ERR_INCOMPLETE, in pages (0 if unknown).
    pub pages_per_call: u64,
    /// The platform answers guest requests (a PSP, or a software one): attestation
    /// reports can be had.
    pub attestation: bool,
    /// Size of the SVSM's log buffer in bytes (0 if unknown).
    pub log_bytes: u64,
}

/// Ways the PSP (or the host carrying its messages) can misbehave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PspFault {
    /// The host never delivers the answer.
    DropAnswer,
    /// The answer arrives with one byte changed.
    CorruptAnswer,
    /// The firmware answers with this error status.
    Status(u32),
    /// The host answers BUSY without passing the message on, this many times in a row.
    Busy(u8),
}

/// The environment a case runs in: a guest vCPU's view (memory and the SVSM gate).
pub trait Env: Transport {
    fn facts(&self) -> Facts;
    /// The calling area of the selected vCPU.
    fn calling_area(&self) -> u64;
    fn set_calling_area(&mut self, gpa: u64);
    /// Act as the vCPU with this APIC ID; `Ok(false)` if there is none, `Err(Skip)` if
    /// this environment cannot run vCPUs other than the startup one.
    fn select_vcpu(&mut self, apic_id: u32, calling_area: u64) -> Result<bool, CaseError>;
    /// Write at `gpa` the VMSA of a new vCPU with `apic_id` that can run in this
    /// environment: VMPL1, EFER.SVME clear, the guest's SEV_FEATURES, and whatever state
    /// the environment's secondary-vCPU code needs. Cases then change single fields.
    fn write_vmsa(&mut self, gpa: u64, apic_id: u32) -> Result<(), CaseError>;
    /// Control of the host, where the environment has it.
    fn host(&mut self) -> Option<&mut dyn HostControl>;
    /// The guest, at its own VMPL, gives the less privileged `vmpl` the RMP permissions
    /// `perms` (abi::hw::rmpadjust::PERM_*) on the page at `gpa`, with RMPADJUST as a
    /// VMPL1 kernel that runs code at VMPL2 would. `Err(Skip)` where the environment has
    /// no lower VMPLs to run.
    fn grant_lower_vmpl(&mut self, _gpa: u64, _vmpl: u8, _perms: u8) -> Result<(), CaseError> {
        Err(CaseError::Skip("no guest code runs below the guest's VMPL here"))
    }
}

/// A host the suite can make misbehave, and look through.
pub trait HostControl {
    /// The host ignores the guest's next SVSM request.
    fn drop_next_request(&mut self);
    /// The host enters the SVSM with this exit code (None: the right one).
    fn set_exit_code(&mut self, code: Option<u64>);
    /// The host enters the SVSM for the selected vCPU without a guest request; returns
    /// the vCPU's RAX afterwards.
    fn enter_without_request(&mut self) -> u64;
    /// Mark a vCPU as running (its VMSA in use).
    fn set_running(&mut self, vmsa: u64, running: bool);
    /// Another vCPU writes `bytes` at `gpa` right after the SVSM first reads `trigger`.
    fn race(&mut self, trigger: u64, gpa: u64, bytes: &[u8]);
    /// The host reassigns a page (RMPUPDATE): it loses validation and permissions.
    fn reassign_page(&mut self, gpa: u64);
    /// The host writes memory behind the guest (e.g. into a page not yet validated).
    fn write_memory(&mut self, gpa: u64, bytes: &[u8]);
    /// May `vmpl` read the page at `gpa` (RMP permission and validation)?
    fn vmpl_can_read(&self, gpa: u64, vmpl: u8) -> bool;
    /// The RMP permission bits of `vmpl` for the page at `gpa`, validated or not.
    fn rmp_permissions(&self, gpa: u64, vmpl: u8) -> u8;
    fn vmsa_field(&self, vmsa: u64, field: VmsaField) -> u64;
    /// The PSP (or the host relaying to it) misbehaves on the next guest request.
    fn psp_fault(&mut self, fault: PspFault);
}

/// One conformance case.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// `section/what`, e.g. `6.2/pvalidate-2m`.
    pub name: &'static str,
    /// What a pass shows.
    pub what: &'static str,
    pub run: fn(&mut dyn Env) -> Result<(), CaseError>,
}

/// The verdict of one case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
    Skip(&'static str),
}

impl Case {
    pub fn run(&self, env: &mut dyn Env) -> Verdict {
        match (self.run)(env) {
            Ok(()) => Verdict::Pass,
            Err(CaseError::Fail(why)) => Verdict::Fail(why),
            Err(CaseError::Skip(why)) => Verdict::Skip(why),
        }
    }
}
