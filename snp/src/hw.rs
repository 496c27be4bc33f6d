//! The hardware seam: what only an SEV-SNP CPU can do, at instruction granularity.

/// A memory access faulted: the page is not validated, not mapped, or the host took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault;

/// The pages the SVSM shares with the host (mapped without the C-bit). Everything read
/// from them is host input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shared {
    /// This CPU's GHCB.
    Ghcb,
    /// SNP_GUEST_REQUEST request and response pages.
    Request,
    Response,
    /// Buffer for the certificate table of an extended guest request.
    Certs(usize),
}

/// Pages in the certificate buffer (ARK + ASK + VCEK fit in well under 16 KiB).
pub const CERT_PAGES: usize = 4;

/// Shared pages in the order the platform converts them at start.
pub const SHARED_PAGES: [Shared; 3 + CERT_PAGES] = [
    Shared::Ghcb,
    Shared::Request,
    Shared::Response,
    Shared::Certs(0),
    Shared::Certs(1),
    Shared::Certs(2),
    Shared::Certs(3),
];

pub trait SnpHw {
    /// PVALIDATE: EAX and EFLAGS.CF, or a fault.
    fn pvalidate(&mut self, gpa: u64, huge: bool, validate: bool) -> Result<(u32, bool), Fault>;
    /// RMPADJUST with the attribute operand of `abi::hw::rmpadjust::attrs`: EAX, or a fault.
    fn rmpadjust(&mut self, gpa: u64, huge: bool, attrs: u64) -> Result<u32, Fault>;
    /// RMPQUERY of the 4 KiB page at `gpa`: (EAX, RDX). RDX holds the permission masks of
    /// VMPL1, VMPL2 and VMPL3 in bits 7:0, 15:8 and 23:16 (AMD APM vol. 3, RMPQUERY).
    /// Only called where the CPU has the instruction (`SnpState::rmpquery`).
    fn rmpquery(&self, gpa: u64) -> Result<(u32, u64), Fault>;
    /// Invalidate every TLB entry of this guest on every CPU, global ones too (INVLPGB
    /// for the guest's ASID), and wait until that is done (TLBSYNC).
    fn flush_tlb_all(&mut self);
    /// Copy private (encrypted) memory at `gpa`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Fault>;
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), Fault>;
    /// gpa of a shared page. Fixed for the SVSM's lifetime.
    fn shared_gpa(&self, page: Shared) -> u64;
    /// Copy from or to a shared page (`offset + len` within 4 KiB).
    fn shared_read(&self, page: Shared, offset: usize, buf: &mut [u8]);
    fn shared_write(&mut self, page: Shared, offset: usize, data: &[u8]);
    /// The GHCB MSR of this CPU.
    fn read_ghcb_msr(&self) -> u64;
    fn write_ghcb_msr(&mut self, value: u64);
    /// VMGEXIT: hand control to the host until it resumes this CPU.
    fn vmgexit(&mut self);
    /// Stop this CPU for good (after a termination request the host did not act on).
    fn halt(&mut self) -> !;
    /// The SVSM heap's use now, if the seam can tell.
    fn heap_usage(&self) -> Option<kernel::platform::HeapUsage> {
        None
    }
    /// Make the SVSM's own state for CPU `index` (its stacks, descriptor and page tables)
    /// if it has none yet, so the SVSM VMSA made for that index can run; `false` if there
    /// is no memory for it. What is made stays the index's.
    fn prepare_cpu(&mut self, _index: u32) -> bool {
        true
    }
}
