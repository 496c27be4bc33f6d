//! The hardware seam: what only the machine does, at instruction granularity. Everything
//! above it (which exits do what, which pages the guest reaches, where vCPUs are) is this
//! crate's and host-tested; the bare-metal SVSM implements the seam with the real
//! instructions (`svsm/src/bare/svm/`), the model in software (`model/src/svm_host.rs`).
//!
//! It has two halves. [`SvmHw`] is the machine every CPU shares (guest memory, nested
//! page table memory, kicks, the PSP, the console): its methods take `&self`, because
//! every CPU calls them at once, each while serving its own vCPU; an implementation that
//! keeps state guards it with locks of its own, which are leaves (nothing is called while
//! one is held). [`SvmCpu`] is what one CPU does alone with a vCPU it took out (VMRUN,
//! CPUID), so that running a guest never needs the shared state.

use crate::npt::Access;
use crate::vcpu::GuestRegs;
use kernel::log_ring::LogLost;
use kernel::platform::{GuestRequestError, Level};

/// SVSM memory the hardware reads by physical address (a VMCB, a permission map): a run
/// of zeroed 4 KiB pages the guest never reaches.
pub trait PageMem {
    /// Physical address of the first byte (page aligned).
    fn phys(&self) -> u64;
    /// All bytes of the run.
    fn bytes(&self) -> &[u8];
    fn bytes_mut(&mut self) -> &mut [u8];
}

/// A guest-physical access the machine could not make (beyond its memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault;

/// The machine as every CPU's SVSM uses it, at the same time.
pub trait SvmHw {
    type Page: PageMem;

    /// `count` contiguous zeroed pages of SVSM memory; `None` when there is no memory.
    fn alloc(&self, count: usize) -> Option<Self::Page>;

    /// Copy guest-physical memory. The platform has checked the range against its RMP.
    fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Fault>;
    fn write_guest(&self, gpa: u64, data: &[u8]) -> Result<(), Fault>;
    fn zero_guest(&self, gpa: u64, len: usize) -> Result<(), Fault>;

    /// Map the guest's 4 KiB page at `gpa` (identity, with `access`) in the nested page
    /// tables, or unmap it (`None`). A 2 MiB leaf over the page that maps it otherwise is
    /// split into a table first. `Err` when a table cannot be had (the platform answers
    /// it as a full heap, `HwError::NoMemory`) or `gpa` is beyond what nested paging maps
    /// or SVSM memory (which the RMP never lets the guest reach: not met); then nothing
    /// changed. The platform calls it only under its
    /// page-state lock, so two calls never race.
    fn npt_set(&self, gpa: u64, access: Option<Access>) -> Result<(), Fault>;
    /// Map the 2 MiB region at `gpa` (2 MiB aligned) alike with `access`, or unmap it
    /// (`None`): with one 2 MiB leaf, or, where the region has a table of 4 KiB leaves
    /// already, with its 512 leaves alike (a table is never taken out of use: a CPU still
    /// running the guest may walk it until the platform's flush reaches it). `Err` as for
    /// [`Self::npt_set`]; unmapping never fails.
    fn npt_set_region(&self, gpa: u64, access: Option<Access>) -> Result<(), Fault>;
    /// Root of the nested page tables (the VMCB's N_CR3).
    fn npt_root(&self) -> u64;
    /// Whether the CPU saves the next RIP of an intercepted instruction in the VMCB (NRIP
    /// save, CPUID 0x8000000A EDX bit 3). QEMU's TCG does not.
    fn next_rip_saved(&self) -> bool {
        false
    }

    /// Make `cpu` leave the guest and come back to the SVSM before it runs a vCPU again;
    /// returns once it is out of the guest. Never called with a platform lock held.
    fn kick(&self, cpu: u32);
    /// A kick of `cpu` that it has not answered yet (it answers by not entering the guest
    /// once, and coming back to put its vCPU in its slot). Whoever records something for
    /// a vCPU out on `cpu` kicks it afterwards, so without a pending kick nothing new was
    /// recorded for the vCPU `cpu` holds.
    fn kick_pending(&self, cpu: u32) -> bool;
    /// The set of runnable vCPUs changed: move the generation on and wake idle CPUs.
    fn vcpus_changed(&self);
    /// How often the set of runnable vCPUs changed so far.
    fn generation(&self) -> u64;
    /// What RDTSC gives the SVSM now.
    fn rdtsc(&self) -> u64;
    /// The SVSM heap's use now, if the seam can tell.
    fn heap_usage(&self) -> Option<kernel::platform::HeapUsage> {
        None
    }

    /// Hand a guest message to the PSP and wait for its answer (on this platform a
    /// software PSP inside the SVSM).
    fn guest_request(&self, request: &[u8; 4096], response: &mut [u8; 4096]) -> Result<(), GuestRequestError>;

    /// Stop the SVSM for good after logging `why` (`Platform::fatal`).
    fn fatal(&self, why: core::fmt::Arguments<'_>) -> !;

    /// Write one log line the platform decided to emit.
    fn log(&self, level: Level, args: core::fmt::Arguments<'_>);
    /// The console's log stream (the Observability protocol reads it).
    fn log_read(&self, offset: u64, out: &mut [u8]) -> Result<usize, LogLost>;
    fn log_written(&self) -> u64;
    /// Copy up to `len` bytes of the log stream from `offset` straight into guest memory
    /// at `gpa` (checked by the platform; at most two copies, for a ring that wraps): the
    /// bytes copied, 0 at the end of the stream. `None` (the default) where the log is not
    /// at hand; the platform then goes through a buffer.
    fn log_to_guest(&self, _offset: u64, _gpa: u64, _len: usize) -> Option<Result<usize, LogToGuestError>> {
        None
    }
}

/// Why [`SvmHw::log_to_guest`] copied nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogToGuestError {
    Lost(LogLost),
    Fault,
    /// The log could not be had now (its lock stayed taken): not the end of the log.
    Busy,
}

/// What one CPU does alone with a vCPU it took out of the platform.
pub trait SvmCpu<P: PageMem> {
    /// VMRUN the guest whose VMCB is `vmcb` with the general-purpose registers `regs`
    /// until its next #VMEXIT; `false` if a kick came first and the guest did not run.
    fn vmrun(&mut self, vmcb: &mut P, regs: &mut GuestRegs) -> bool;
    /// CPUID as this CPU answers it.
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// How often the set of runnable vCPUs changed so far (as [`SvmHw::generation`]).
    fn generation(&self) -> u64;
    /// Whether the CPU's own loop wants to look at something between the guest's exits
    /// (a migration to drive): a HLT or the SVSM's own interrupt then goes back to the loop
    /// instead of being handled on the spot.
    fn attention(&self) -> bool {
        false
    }
}
