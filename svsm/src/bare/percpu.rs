//! Per-CPU page tables: each CPU runs on a page-table root of its own. The lower half
//! (the identity map of the first 4 GiB the boot code built) is shared; the top PML4 slot
//! maps this CPU's private data page at [`PER_CPU_VA`], so code finds "its" CPU's state at
//! one fixed address and no CPU can reach another's through it.
#![expect(unsafe_code, reason = "each CPU's page tables and private page")]

use super::pages::Page;
use core::sync::atomic::{AtomicU32, Ordering};

/// Where each CPU sees its own data page.
pub const PER_CPU_VA: u64 = 0xFFFF_FF80_0000_0000;
const PRESENT_WRITABLE: u64 = 0b11;
const NO_EXECUTE: u64 = 1 << 63;

/// What a CPU keeps in its private page.
#[repr(C)]
struct PerCpu {
    index: AtomicU32,
}

/// The tables and page one CPU owns; they live as long as the CPU (leaked).
struct Tables {
    root: Page,
    pdpt: Page,
    pd: Page,
    pt: Page,
    data: Page,
}

/// Build this CPU's root (sharing the boot map's lower half) and switch to it.
pub fn install(cpu: u32, boot_root: u64) -> Option<()> {
    let mut t = Tables {
        root: Page::zeroed()?,
        pdpt: Page::zeroed()?,
        pd: Page::zeroed()?,
        pt: Page::zeroed()?,
        data: Page::zeroed()?,
    };
    // SAFETY: `boot_root` is the boot PML4, identity-mapped and never freed; slot 0 is
    // read by value.
    let low = unsafe { core::ptr::read_volatile(boot_root as *const u64) };
    // PER_CPU_VA's index (its 9 bits from bit `shift`) in the table of one level.
    let slot = |shift: u32| usize::try_from((PER_CPU_VA >> shift) & 0x1FF).ok();
    t.root.words_mut()[0] = low;
    t.root.words_mut()[511] = t.pdpt.phys() | PRESENT_WRITABLE;
    *t.pdpt.words_mut().get_mut(slot(30)?)? = t.pd.phys() | PRESENT_WRITABLE;
    *t.pd.words_mut().get_mut(slot(21)?)? = t.pt.phys() | PRESENT_WRITABLE;
    *t.pt.words_mut().get_mut(slot(12)?)? = t.data.phys() | PRESENT_WRITABLE | NO_EXECUTE;
    let root = t.root.phys();
    // SAFETY: the data page is zeroed, owned by these tables and large enough for PerCpu.
    unsafe { (*(t.data.phys() as *const PerCpu)).index.store(cpu, Ordering::Relaxed) };
    core::mem::forget(t);
    // SAFETY: the new root maps everything the boot root mapped (same lower half), plus
    // the per-CPU page; its tables are leaked, so they outlive their use as CR3.
    unsafe { super::cpu::load_cr3(root) };
    Some(())
}

/// The running CPU's index (0 = boot CPU), from its private page.
pub fn this_cpu() -> u32 {
    // SAFETY: every CPU installs its tables before anything calls this; PER_CPU_VA then
    // maps that CPU's own PerCpu.
    unsafe { (*(PER_CPU_VA as *const PerCpu)).index.load(Ordering::Relaxed) }
}
