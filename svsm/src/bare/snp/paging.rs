//! The snp platform's address space: guest-physical memory identity-mapped with the
//! C-bit (private) for the first 512 GiB, and the same range again at `ALIAS_BASE`
//! without it, the way the SVSM reads and writes the pages it shares with the host.
//! 1 GiB pages keep it to two tables.

use super::instr;
use core::cell::UnsafeCell;

/// Where the unencrypted alias of guest-physical 0 starts (PML4 slot 2).
pub const ALIAS_BASE: u64 = 2 << 39;
/// Top of the identity map.
pub const MAPPED_TOP: u64 = 1 << 39;

const PRESENT_WRITABLE: u64 = 0b11;
const HUGE: u64 = 1 << 7;

#[repr(C, align(4096))]
struct Table(UnsafeCell<[u64; 512]>);

// SAFETY: written once by the boot CPU before any other CPU runs, read only by the MMU.
unsafe impl Sync for Table {}

static IDENTITY: Table = Table(UnsafeCell::new([0; 512]));
static ALIAS: Table = Table(UnsafeCell::new([0; 512]));

/// Install both maps into the running page tables. `c_bit` comes from the CPUID page
/// (which the PSP checked), never from the host's SEV_INFO answer: a host that lied
/// about it would make the SVSM write its secrets unencrypted.
pub fn install(c_bit: u8) {
    let c = 1u64 << c_bit;
    let identity = IDENTITY.0.get();
    let alias = ALIAS.0.get();
    // SAFETY: the boot CPU runs alone here, so nothing else reads the tables; both are
    // statics of the image (identity-mapped, encrypted).
    unsafe {
        for i in 0..512u64 {
            (*identity)[i as usize] = i << 30 | c | HUGE | PRESENT_WRITABLE;
            (*alias)[i as usize] = i << 30 | HUGE | PRESENT_WRITABLE;
        }
    }
    let cr3 = instr::read_cr3();
    let pml4 = (cr3 & !c & 0x000F_FFFF_FFFF_F000) as *mut u64;
    // SAFETY: CR3's PML4 is a page of the image's boot block, identity-mapped. Slot 0
    // keeps mapping the running code the same way (identity, encrypted); slot 2 was
    // empty. Reloading CR3 flushes the old translations.
    unsafe {
        core::ptr::write_volatile(pml4, identity as u64 | c | PRESENT_WRITABLE);
        core::ptr::write_volatile(pml4.add(2), alias as u64 | c | PRESENT_WRITABLE);
        instr::write_cr3(cr3);
    }
}
