//! Per-CPU page tables: each CPU runs on a page-table root of its own. The kernel's
//! mappings of the boot tables are shared (slot 0: the identity map, of the first 4 GiB
//! on svm and 512 GiB on snp; slots 256..=510: the snp platform's alias map); slots
//! 1..=255 are a process's while one runs ([`set_user_half`]); the top slot maps this
//! CPU's private data page at [`PER_CPU_VA`], so code finds "its" CPU's state at one fixed
//! address and no CPU can reach another's through it. Every entry made here names
//! private memory (`pages::private`: the C-bit on SNP).
#![expect(unsafe_code, reason = "each CPU's page tables and private page")]

use super::pages::{Page, private};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Where each CPU sees its own data page: in the top 2 GiB, so the system call entry
/// can reach its fields with 32-bit absolute addresses before it has a register to spare.
pub const PER_CPU_VA: u64 = 0xFFFF_FFFF_FFE0_0000;
/// Offsets of [`PerCpu`]'s fields, for the user-mode entry code (`user/entry.rs`).
pub const KERNEL_RSP_OFFSET: u64 = 8;
pub const USER_RSP_OFFSET: u64 = 16;
pub const TSS_RSP0_OFFSET: u64 = 24;
pub const IN_USER_OFFSET: u64 = 40;
const PRESENT_WRITABLE: u64 = 0b11;
const NO_EXECUTE: u64 = 1 << 63;

/// What a CPU keeps in its private page.
#[repr(C)]
struct PerCpu {
    index: AtomicU32,
    /// Where a process's system call or fault returns to: the kernel stack `run_user`
    /// left (set by `user/entry.rs`).
    kernel_rsp: u64,
    /// The process's RSP while its system call is taken (`user/entry.rs`).
    user_rsp: u64,
    /// The address of this CPU's TSS.RSP0 (`cpu_tables`), which `run_user` points at the
    /// kernel stack so a fault in user mode lands there.
    tss_rsp0: u64,
    /// This CPU's page-table root (physical = virtual).
    root: u64,
    /// 1 from just before `run_user` enters CPL 3 until the way back to the kernel
    /// (`user/entry.rs`): an exception frame that names CPL 3 outside that window was
    /// shaped by the host, not taken in a process.
    in_user: u64,
}
const _: () = assert!(core::mem::offset_of!(PerCpu, kernel_rsp) as u64 == KERNEL_RSP_OFFSET);
const _: () = assert!(core::mem::offset_of!(PerCpu, user_rsp) as u64 == USER_RSP_OFFSET);
const _: () = assert!(core::mem::offset_of!(PerCpu, tss_rsp0) as u64 == TSS_RSP0_OFFSET);
const _: () = assert!(core::mem::offset_of!(PerCpu, in_user) as u64 == IN_USER_OFFSET);

/// The tables and page one CPU owns; they live as long as the CPU (leaked).
struct Tables {
    root: Page,
    pdpt: Page,
    pd: Page,
    pt: Page,
    data: Page,
}

/// The PML4 entry for the lower half that every CPU's root takes: 0 until
/// [`close_low_memory`] made one whose low 2 MiB are no-execute (the boot map's own slot
/// 0 until then).
static LOWER_HALF: AtomicU64 = AtomicU64::new(0);

/// The PML4 slots of the kernel's upper half that every CPU's root shares with the boot
/// tables (the top slot is each CPU's own).
const KERNEL_UPPER: core::ops::Range<usize> = 256..511;

/// Build this CPU's root (sharing the boot map's kernel slots) and switch to it. Returns
/// the root, which a CPU that comes back under the same index enters again ([`enter`]).
pub fn install(cpu: u32, boot_root: u64) -> Option<u64> {
    let root = build(cpu, boot_root)?;
    enter(root);
    Some(root)
}

/// Build the root of CPU index `cpu` without switching to it: for a CPU that will run
/// later (the snp platform makes a new vCPU's before its creation commits, on the CPU
/// serving that call, which must stay on its own root). `None` without memory.
pub fn build(cpu: u32, boot_root: u64) -> Option<u64> {
    let mut t = Tables {
        root: Page::zeroed()?,
        pdpt: Page::zeroed()?,
        pd: Page::zeroed()?,
        pt: Page::zeroed()?,
        data: Page::zeroed()?,
    };
    // SAFETY: `boot_root` is the boot PML4, identity-mapped and never freed; slot 0 and
    // the kernel's upper slots are read by value.
    let boot_low = unsafe { core::ptr::read_volatile(boot_root as *const u64) };
    for i in KERNEL_UPPER {
        // SAFETY: as above; `i` is below 512.
        let entry = unsafe { core::ptr::read_volatile((boot_root as *const u64).add(i)) };
        *t.root.words_mut().get_mut(i)? = entry;
    }
    let low = match LOWER_HALF.load(Ordering::Acquire) {
        0 => boot_low,
        closed => closed,
    };
    // PER_CPU_VA's index (its 9 bits from bit `shift`) in the table of one level.
    let slot = |shift: u32| usize::try_from((PER_CPU_VA >> shift) & 0x1FF).ok();
    t.root.words_mut()[0] = low;
    t.root.words_mut()[511] = private(t.pdpt.phys()) | PRESENT_WRITABLE;
    *t.pdpt.words_mut().get_mut(slot(30)?)? = private(t.pd.phys()) | PRESENT_WRITABLE;
    *t.pd.words_mut().get_mut(slot(21)?)? = private(t.pt.phys()) | PRESENT_WRITABLE;
    *t.pt.words_mut().get_mut(slot(12)?)? = private(t.data.phys()) | PRESENT_WRITABLE | NO_EXECUTE;
    let root = t.root.phys();
    // SAFETY: the data page is zeroed, owned by these tables and large enough for PerCpu;
    // nothing else refers to it yet.
    unsafe {
        let data = t.data.phys() as *mut PerCpu;
        (*data).index.store(cpu, Ordering::Relaxed);
        (*data).root = root;
    }
    core::mem::forget(t);
    Some(root)
}

/// Switch to a root [`install`] made (for this CPU's index: a re-created vCPU on snp).
pub fn enter(root: u64) {
    // SAFETY: `install` made `root`: it maps everything the boot root maps for the kernel
    // (slot 0 and the upper slots), plus the index's per-CPU page; its tables are leaked,
    // so they outlive their use as CR3. A process's user half is cleared whenever a run
    // ends, so the root maps no process.
    unsafe { super::cpu::load_cr3(private(root)) };
}

/// Whether GS base holds the CPU's index (the snp platform finds each CPU's GHCB by it).
static GS_BASE_IS_INDEX: AtomicBool = AtomicBool::new(false);

/// From now on [`restore_gs_base`] puts each CPU's index back into GS base.
pub fn keep_index_in_gs_base() {
    GS_BASE_IS_INDEX.store(true, Ordering::Release);
}

/// After a process ran: put the CPU's index back into GS base where the platform keeps
/// it there. A process can change GS base at CPL 3 (a MOV to GS loads the base of the
/// descriptor it names), and the kernel must not then take another CPU's GHCB for its
/// own. Until this runs nothing in the kernel reads GS: the way back from CPL 3 (SYSCALL,
/// an exception, `user/entry.rs`) does not.
pub fn restore_gs_base() {
    const GS_BASE: u32 = 0xC000_0101;
    if GS_BASE_IS_INDEX.load(Ordering::Acquire) {
        // SAFETY: GS_BASE exists on every x86-64 CPU, and on the platform that keeps the
        // index there nothing else is kept in it.
        unsafe { super::cpu::wrmsr(GS_BASE, u64::from(this_cpu())) };
    }
}

/// The running CPU's index (0 = boot CPU), from its private page.
pub fn this_cpu() -> u32 {
    // SAFETY: every CPU installs its tables before anything calls this; PER_CPU_VA then
    // maps that CPU's own PerCpu.
    unsafe { (*(PER_CPU_VA as *const PerCpu)).index.load(Ordering::Relaxed) }
}

/// Whether this CPU runs a process: between `run_user`'s way into CPL 3 and the way back.
pub fn in_user() -> bool {
    // SAFETY: as in `this_cpu`; the field is written only by this CPU (`user/entry.rs`).
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*(PER_CPU_VA as *const PerCpu)).in_user)) != 0 }
}

/// Note where this CPU's TSS.RSP0 is (`cpu_tables::load` tells).
pub fn set_tss_rsp0(address: u64) {
    // SAFETY: PER_CPU_VA maps this CPU's own PerCpu (installed before its tables are
    // loaded); only this CPU writes its page, with interrupts off.
    unsafe { (*(PER_CPU_VA as *mut PerCpu)).tss_rsp0 = address };
}

/// Put a process's user-half PML4 entries (slots 1..=255) into this CPU's root and
/// flush its TLB (CR3 reload: the SVSM uses no global pages), or clear them (`None`).
pub fn set_user_half(entries: Option<&[u64; 255]>) {
    // SAFETY: PER_CPU_VA maps this CPU's PerCpu, whose `root` is this CPU's PML4 (an
    // identity-mapped page owned by the leaked tables). Slots 1..=255 map nothing the
    // kernel uses (its identity map is slot 0, the snp alias map slot 256, the per-CPU
    // page slot 511), so changing
    // them cannot unmap running code; the CR3 reload flushes the old user translations.
    unsafe {
        let root = (*(PER_CPU_VA as *const PerCpu)).root;
        let slots = (root as *mut u64).add(1);
        for i in 0..255 {
            slots.add(i).write_volatile(entries.and_then(|e| e.get(i)).copied().unwrap_or(0));
        }
        super::cpu::load_cr3(private(root));
    }
}

/// Make the low 2 MiB no-execute for every CPU from now on, without a TLB shootdown: the
/// CPUs' roots take a copy of the identity map's first-GiB tables whose low 2 MiB entry
/// is no-execute, and the boot map keeps its own, executable, for the AP trampoline
/// (`smp.rs`), which runs on the boot map and nowhere else. This CPU switches at once;
/// each AP takes the copy when it installs its root ([`install`]), a CR3 load that
/// forgets what the trampoline cached. The low 2 MiB are guest RAM the guest can write:
/// no SVSM code may ever run from them. Call after [`harden_identity_map`] (the copy
/// shares its tables below the first level) and before the APs start. `None` without
/// memory for the copy.
pub fn close_low_memory(boot_root: u64) -> Option<()> {
    let mut pdpt = Page::zeroed()?;
    let mut pd = Page::zeroed()?;
    // SAFETY: `boot_root` is the boot PML4: its slot 0 names the identity map's PDPT, whose
    // slot 0 names the first GiB's PD, all identity-mapped and never freed; they are only
    // read here. The copies are this function's own pages until they are leaked below.
    let (boot_low, boot_pdpt0) = unsafe {
        let boot_low = core::ptr::read_volatile(boot_root as *const u64);
        let boot_pdpt = boot_low & ADDRESS;
        for (i, word) in (0u64..).zip(pdpt.words_mut().iter_mut()) {
            *word = core::ptr::read_volatile((boot_pdpt + 8 * i) as *const u64);
        }
        let boot_pd = core::ptr::read_volatile(boot_pdpt as *const u64);
        for (i, word) in (0u64..).zip(pd.words_mut().iter_mut()) {
            *word = core::ptr::read_volatile(((boot_pd & ADDRESS) + 8 * i) as *const u64);
        }
        (boot_low, boot_pd)
    };
    *pd.words_mut().first_mut()? |= NO_EXECUTE;
    *pdpt.words_mut().first_mut()? = pd.phys() | (boot_pdpt0 & !ADDRESS);
    let low = pdpt.phys() | (boot_low & !ADDRESS);
    core::mem::forget(pd);
    core::mem::forget(pdpt);
    LOWER_HALF.store(low, Ordering::Release);
    // SAFETY: PER_CPU_VA maps this CPU's PerCpu, whose `root` is its PML4; slot 0 gets an
    // entry for the same memory with fewer rights (no code runs below the image), and the
    // CR3 reload drops this CPU's cached translations of it.
    unsafe {
        let root = (*(PER_CPU_VA as *const PerCpu)).root;
        core::ptr::write_volatile(root as *mut u64, low);
        super::cpu::load_cr3(private(root));
    }
    Some(())
}

/// Flags of an identity-map entry, and the address bits of a table entry.
const PAGE_SIZE_BIT: u64 = 1 << 7;
const ADDRESS: u64 = 0x000F_FFFF_FFFF_F000;
/// The boot map's low 2 MiB stay executable: the AP trampoline runs there in long mode
/// (`smp.rs`) on the boot map; the CPUs' own roots close them ([`close_low_memory`]).
const LOW_EXECUTABLE: u64 = 2 << 20;

/// Make the boot identity map (4 GiB of 2 MiB pages, shared by every CPU's root)
/// no-execute everywhere but the image's code: the 2 MiB page holding `text` is split into
/// 4 KiB pages, executable only where they hold code. Done before the APs start, so each
/// loads it with its first CR3; the boot CPU reloads its own here. `None` without memory
/// for the split's page table (the map then stays as it was).
pub fn harden_identity_map(boot_root: u64, text: (u64, u64)) -> Option<usize> {
    let (text_start, text_end) = text;
    let mut split = 0;
    // SAFETY: `boot_root` is the boot PML4 (identity-mapped, never freed): its slot 0
    // names the PDPT whose first four entries name the four PDs of the identity map, all
    // in the image's .bss. Entries are changed one 8-byte store at a time: each store
    // leaves a valid entry (the same frame, fewer rights), and the split's page table is
    // complete before the PD entry points at it. Code keeps running: the pages holding it
    // stay executable.
    unsafe {
        let pdpt = core::ptr::read_volatile(boot_root as *const u64) & ADDRESS;
        for gib in 0..4u64 {
            let pd = core::ptr::read_volatile((pdpt + 8 * gib) as *const u64) & ADDRESS;
            for i in 0..512u64 {
                let entry = (pd + 8 * i) as *mut u64;
                let value = core::ptr::read_volatile(entry);
                let base = (gib << 30) | (i << 21);
                if value & PAGE_SIZE_BIT == 0 || base < LOW_EXECUTABLE {
                    continue;
                }
                if base + (2 << 20) <= text_start || base >= text_end {
                    core::ptr::write_volatile(entry, value | NO_EXECUTE);
                    continue;
                }
                let mut pt = Page::zeroed()?;
                for (j, pte) in (0u64..).zip(pt.words_mut().iter_mut()) {
                    let page = base + (j << 12);
                    let code = page < text_end && page + 4096 > text_start;
                    *pte = page | PRESENT_WRITABLE | if code { 0 } else { NO_EXECUTE };
                }
                core::ptr::write_volatile(entry, pt.phys() | PRESENT_WRITABLE);
                core::mem::forget(pt);
                split += 1;
            }
        }
        super::cpu::load_cr3(super::cpu::read_cr3());
    }
    Some(split)
}
