//! `SnpHw` on the chip: the instructions of `instr`, memory through `paging`'s maps, and
//! the pages the SVSM shares with the host (statics of the image, one GHCB per CPU).
#![expect(unsafe_code, reason = "the GHCB page and guest memory through the SNP mappings")]

use super::{instr, paging};
use core::cell::UnsafeCell;
use snp::hw::{CERT_PAGES, Fault, Shared, SnpHw};

/// CPUs the snp platform serves (one GHCB each).
pub const MAX_CPUS: usize = 64;

#[repr(C, align(4096))]
struct SharedPage(UnsafeCell<[u8; 4096]>);

// SAFETY: the pages are only reached through `BareSnp`, by address, with volatile
// copies; the host may change them at any time, which the copies tolerate.
unsafe impl Sync for SharedPage {}

impl SharedPage {
    const fn new() -> Self {
        Self(UnsafeCell::new([0; 4096]))
    }
}

static GHCBS: [SharedPage; MAX_CPUS] = [const { SharedPage::new() }; MAX_CPUS];
static REQUEST: SharedPage = SharedPage::new();
static RESPONSE: SharedPage = SharedPage::new();
static CERTS: [SharedPage; CERT_PAGES] = [const { SharedPage::new() }; CERT_PAGES];

/// Bytes of each AP's entry stack, which it leaves for a 64 KiB heap stack at once.
pub const AP_ENTRY_STACK: usize = 16 * 1024;

#[repr(C, align(16))]
struct EntryStacks(UnsafeCell<[[u8; AP_ENTRY_STACK]; MAX_CPUS]>);

// SAFETY: slot i is used only by the CPU of vCPU i, from its entry until it switches
// stacks; nothing else touches the memory.
unsafe impl Sync for EntryStacks {}

static AP_ENTRY_STACKS: EntryStacks = EntryStacks(UnsafeCell::new([[0; AP_ENTRY_STACK]; MAX_CPUS]));

/// Base of the APs' entry stacks (slot i for vCPU i; its top is the next slot's base).
pub fn ap_entry_stacks() -> u64 {
    AP_ENTRY_STACKS.0.get() as u64
}

/// The running CPU's index (its GS base, set at its entry).
pub fn this_cpu() -> usize {
    usize::try_from(instr::gs_base()).map_or(MAX_CPUS - 1, |cpu| cpu.min(MAX_CPUS - 1))
}

/// The hardware of the running CPU. A handle: every CPU makes its own.
#[derive(Debug, Default)]
pub struct BareSnp;

fn in_map(gpa: u64, len: usize) -> bool {
    gpa.checked_add(len as u64).is_some_and(|end| end <= paging::MAPPED_TOP)
}

fn page_len(huge: bool) -> usize {
    if huge { 2 << 20 } else { 4096 }
}

impl SnpHw for BareSnp {
    fn pvalidate(&mut self, gpa: u64, huge: bool, validate: bool) -> Result<(u32, bool), Fault> {
        if !in_map(gpa, page_len(huge)) {
            return Err(Fault);
        }
        // SAFETY: the kernel validates guest pages and rescinds only pages it no longer
        // uses; the platform rescinds only its shared pages, before it shares them.
        Ok(unsafe { instr::pvalidate(gpa, huge, validate) })
    }

    fn rmpadjust(&mut self, gpa: u64, huge: bool, attrs: u64) -> Result<u32, Fault> {
        if !in_map(gpa, page_len(huge)) {
            return Err(Fault);
        }
        // SAFETY: RMPADJUST targets a lower VMPL only (the attribute's VMPL is >= 1), so
        // the SVSM's own access is never reduced.
        Ok(unsafe { instr::rmpadjust(gpa, huge, attrs) })
    }

    fn rmpquery(&self, gpa: u64) -> Result<(u32, u64), Fault> {
        if !in_map(gpa, 4096) {
            return Err(Fault);
        }
        Ok(instr::rmpquery(gpa))
    }

    fn flush_tlb_all(&mut self) {
        instr::flush_tlb_all()
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Fault> {
        if !in_map(gpa, buf.len()) {
            return Err(Fault);
        }
        // SAFETY: identity-mapped (checked); faults are recovered by `copy`; `buf` is the
        // caller's own buffer.
        unsafe { instr::copy(buf.as_mut_ptr(), gpa as *const u8, buf.len()) }.then_some(()).ok_or(Fault)
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), Fault> {
        if !in_map(gpa, data.len()) {
            return Err(Fault);
        }
        // SAFETY: as in `read`; the kernel writes only guest pages and its own VMSAs,
        // never memory a Rust object lives in.
        unsafe { instr::copy(gpa as *mut u8, data.as_ptr(), data.len()) }.then_some(()).ok_or(Fault)
    }

    fn shared_gpa(&self, page: Shared) -> u64 {
        // An index past the end takes the last page, as `this_cpu` clamps (neither
        // index is ever past the end).
        let [.., last_ghcb] = &GHCBS;
        let [.., last_cert] = &CERTS;
        let p: &SharedPage = match page {
            Shared::Ghcb => GHCBS.get(this_cpu()).unwrap_or(last_ghcb),
            Shared::Request => &REQUEST,
            Shared::Response => &RESPONSE,
            Shared::Certs(i) => CERTS.get(i).unwrap_or(last_cert),
        };
        p.0.get() as u64
    }

    fn shared_read(&self, page: Shared, offset: usize, buf: &mut [u8]) {
        let Some(end) = offset.checked_add(buf.len()).filter(|e| *e <= 4096) else { return };
        let at = paging::ALIAS_BASE + self.shared_gpa(page) + offset as u64;
        // SAFETY: the alias maps the shared page unencrypted; the range is inside it
        // (checked: `end`); a copy, never a reference, as the host may change it.
        unsafe { instr::copy(buf.as_mut_ptr(), at as *const u8, end - offset) };
    }

    fn shared_write(&mut self, page: Shared, offset: usize, data: &[u8]) {
        let Some(end) = offset.checked_add(data.len()).filter(|e| *e <= 4096) else { return };
        let at = paging::ALIAS_BASE + self.shared_gpa(page) + offset as u64;
        // SAFETY: as in `shared_read`.
        unsafe { instr::copy(at as *mut u8, data.as_ptr(), end - offset) };
    }

    fn read_ghcb_msr(&self) -> u64 {
        instr::read_ghcb_msr()
    }

    fn write_ghcb_msr(&mut self, value: u64) {
        instr::write_ghcb_msr(value)
    }

    fn vmgexit(&mut self) {
        instr::vmgexit()
    }

    fn halt(&mut self) -> ! {
        instr::halt_forever()
    }

    fn heap_usage(&self) -> Option<kernel::platform::HeapUsage> {
        let (used, size) = super::super::heap::usage();
        Some(kernel::platform::HeapUsage { used: used as u64, size: size as u64 })
    }

    fn prepare_cpu(&mut self, index: u32) -> bool {
        let serving = super::super::percpu::this_cpu();
        let made = usize::try_from(index).is_ok_and(super::prepare_ap);
        // The CPU serving the creation stays itself (its root, its per-CPU page): a
        // preparation that switched it to the new index's would share that CPU's state
        // with the new one (found by review). Checked, since nothing else would notice.
        if super::super::percpu::this_cpu() != serving {
            super::terminate(abi::ghcb::term::GHCB_SETUP);
        }
        made
    }
}
