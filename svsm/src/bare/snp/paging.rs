//! The snp platform's address space: guest-physical memory identity-mapped with the
//! C-bit (private) for the first 512 GiB (PML4 slot 0), and the same range again at
//! `ALIAS_BASE` (slot 256, in the kernel's upper half) without it and never executable,
//! the way the SVSM reads and writes the pages it shares with the host. 1 GiB pages keep
//! it to two tables. Slots 1..=255 stay free for a process's user half
//! (`percpu::set_user_half`).
#![expect(unsafe_code, reason = "the SNP page tables (C-bit)")]

use super::instr;
use core::cell::UnsafeCell;

/// Where the unencrypted alias of guest-physical 0 starts (PML4 slot 256).
pub const ALIAS_BASE: u64 = 0xFFFF_8000_0000_0000;
const ALIAS_SLOT: usize = 256;
/// Top of the identity map.
pub const MAPPED_TOP: u64 = 1 << 39;

const PRESENT_WRITABLE: u64 = 0b11;
const HUGE: u64 = 1 << 7;
/// Host-writable memory is never code (EFER.NXE is on from the entry code).
const NO_EXECUTE: u64 = 1 << 63;

#[repr(C, align(4096))]
struct Table(UnsafeCell<[u64; 512]>);

// SAFETY: written once by the boot CPU before any other CPU runs, read only by the MMU.
unsafe impl Sync for Table {}

static IDENTITY: Table = Table(UnsafeCell::new([0; 512]));
static ALIAS: Table = Table(UnsafeCell::new([0; 512]));

/// CR3's address bits below 1 TiB: the boot block is far below, and the bits above hold
/// the C-bit once `install` has set it.
const CR3_ADDRESS: u64 = 0x0000_00FF_FFFF_F000;

/// The running PML4: the image's entry tables (`abi::igvm::PML4_GPA`), which the entry
/// code loaded into CR3 from 32-bit code, so without the C-bit.
fn pml4() -> *mut u64 {
    (instr::read_cr3() & CR3_ADDRESS) as *mut u64
}

/// The boot PML4's address (identity-mapped), whose kernel slots every CPU's own root
/// shares (`percpu::install`).
pub fn boot_root() -> u64 {
    pml4() as u64
}

/// Whether the entry tables' first PML4 entry carries `c_bit`: the image builder put the
/// C-bit there, so a CPUID page naming another position is not this machine's (or not
/// this image's).
pub fn entry_tables_have_c_bit(c_bit: u8) -> bool {
    // SAFETY: the PML4 is a page of the image's boot block, identity-mapped by the very
    // tables it roots, and only read here.
    let entry = unsafe { core::ptr::read_volatile(pml4()) };
    entry & (1u64 << c_bit) != 0
}

/// Install both maps into the running page tables and load CR3 with the C-bit. `c_bit`
/// comes from the CPUID page (which the PSP checked), never from the host's SEV_INFO
/// answer: a host that lied about it would make the SVSM write its secrets unencrypted.
pub fn install(c_bit: u8) {
    let c = 1u64 << c_bit;
    let identity = IDENTITY.0.get();
    let alias = ALIAS.0.get();
    // SAFETY: the boot CPU runs alone here, so nothing else reads the tables; both are
    // statics of the image (identity-mapped, encrypted).
    unsafe {
        for (i, (id, al)) in (0u64..).zip((*identity).iter_mut().zip((*alias).iter_mut())) {
            *id = i << 30 | c | HUGE | PRESENT_WRITABLE;
            *al = i << 30 | HUGE | PRESENT_WRITABLE | NO_EXECUTE;
        }
    }
    let pml4 = pml4();
    // SAFETY: CR3's PML4 is a page of the image's boot block, identity-mapped. Slot 0
    // keeps mapping the running code the same way (identity, encrypted); slot 256 was
    // empty. Reloading CR3, now with the C-bit (the PML4 is private), flushes the old
    // translations.
    unsafe {
        core::ptr::write_volatile(pml4, identity as u64 | c | PRESENT_WRITABLE);
        core::ptr::write_volatile(pml4.add(ALIAS_SLOT), alias as u64 | c | PRESENT_WRITABLE);
        instr::write_cr3(pml4 as u64 | c);
    }
}
