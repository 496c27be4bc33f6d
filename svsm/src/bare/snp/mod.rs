//! The `snp` platform on SEV-SNP hardware (docs/platforms/snp.md): the boot from an
//! IGVM image, #VC, the per-vCPU request loop of spec 58019 section 5. The logic is
//! `bulwark-snp`'s, shared with the model's tests; here are only the CPU's side of it
//! (`instr`, `hw`, `paging`) and the order things happen in.
//!
//! Each CPU serves its vCPU with its own platform handle (`BareSnp` reaches the running
//! CPU's GHCB through its GS base); the platform's shared state and the kernel are
//! shared by reference (`SNP`, `SVSM`) with no lock around them, so a CPU waiting on
//! the host (a guest request, AP creation, a console line) or running a long vTPM
//! command holds up no other CPU's calls.
#![expect(unsafe_code, reason = "per-CPU GS base and stacks, and instruction bytes for #VC")]

mod hw;
mod instr;
mod paging;

use super::exceptions::Frame;
use abi::ghcb::{VC_PAGE_NOT_VALIDATED, exit, term};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use hw::BareSnp;
use kernel::Svsm;
use kernel::vcpu::VcpuIndex;
use snp::console::SerialConsole;
use snp::cpuid::CpuidTable;
use snp::vc::VcRegs;
use snp::{SnpConfig, SnpPlatform, SnpShared, launch};
use spin::Mutex;
use spin::once::Once;

/// Set when the boot takes the snp path: from then on any failure ends the guest with a
/// GHCB termination request (port I/O would raise #VC, which needs a GHCB).
static SNP_BOOT: AtomicBool = AtomicBool::new(false);
/// Set once the snp platform is up; the exception path then handles #VC.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The guest's VMPL (its VM index for CAPABILITIES), once the platform is up.
static GUEST_VMPL: AtomicU8 = AtomicU8::new(0);
/// The launch's CPUID page, copied once.
static CPUID: Once<CpuidTable> = Once::new();
/// The platform's state all CPUs' handles share, once the boot CPU started it.
static SNP: Once<Arc<SnpShared>> = Once::new();
/// The kernel, shared by every CPU's request loop (`Svsm::handle_entry` takes `&self`).
static SVSM: Once<Svsm> = Once::new();
/// The serial port for `println!`, a line per GHCB exit (`console::set_line_writer`).
static SERIAL: SerialConsole = SerialConsole::new(0x3F8);
/// The image's boot PML4 (identity and alias maps), whose kernel slots each CPU's own
/// root shares (`percpu::install`), and the CR3 an AP enters with.
static BOOT_ROOT: AtomicU64 = AtomicU64::new(0);

// The kernel is shared by reference between CPUs: it must be Sync (its state has its own
// fine-grained locks) and Send.
const _: () = {
    const fn shared_between_cpus<T: Sync + Send>() {}
    shared_between_cpus::<Svsm>();
    shared_between_cpus::<SnpShared>();
};

/// Stack for each AP's request loop (the vTPM's C code needs more than the vCPU's
/// SVSM pages hold).
const AP_STACK: usize = 64 * 1024;

/// Is this an SEV-SNP guest? (SEV_STATUS is never intercepted.)
pub fn detected() -> bool {
    instr::sev_status() & abi::ghcb::sev_status::SNP != 0
}

pub(super) fn terminate(code: u8) -> ! {
    snp::ghcb::terminate(&mut BareSnp, term::SET_BULWARK, code);
    instr::halt_forever()
}

/// Boot on SNP from the IGVM image's boot information; `tss_rsp0` is where the boot
/// CPU's TSS keeps RSP0. Does not return: the boot CPU ends in its request loop.
pub fn boot(info_gpa: u64, tss_rsp0: u64) -> ! {
    SNP_BOOT.store(true, Ordering::Release);
    // SAFETY: GS base is this CPU's index on the snp platform and nothing else.
    unsafe { instr::set_gs_base(0) };
    // The image's page tables map the boot block: the launch can be read before ours.
    let Ok(max_cpus) = u32::try_from(hw::MAX_CPUS) else { terminate(term::BOOT_INFO) };
    let launch = match launch::take_over(&BareSnp, info_gpa, max_cpus) {
        Ok(l) => l,
        Err(_) => terminate(term::BOOT_INFO),
    };
    CPUID.call_once(|| launch.cpuid.clone());
    // The image's page tables carry the C-bit where the image builder put it; a CPUID
    // page that names another position is not this machine's (or not this image's).
    if !paging::entry_tables_have_c_bit(launch.c_bit) {
        terminate(term::BOOT_INFO);
    }
    paging::install(launch.c_bit);
    // Every table and CR3 made from here on names private memory with the C-bit; then
    // the boot CPU moves to a root of its own (the per-CPU page, room for a process).
    super::pages::set_c_bit(launch.c_bit);
    BOOT_ROOT.store(paging::boot_root(), Ordering::Release);
    let boot_cr3 = instr::read_cr3();
    if super::percpu::install(0, paging::boot_root()).is_none() {
        terminate(term::BOOT_INFO);
    }
    super::percpu::set_tss_rsp0(tss_rsp0);
    super::percpu::keep_index_in_gs_base();
    // SEV_FEATURES as the VMSAs of this guest carry them: SEV_STATUS bits 2.. map to
    // SEV_FEATURES bits 0..
    let sev_features = instr::sev_status() >> 2;
    let Ok(guest_vmpl) = u8::try_from(launch.info.guest_vmpl) else { terminate(term::BOOT_INFO) };
    let config = SnpConfig {
        // Kernel log lines go to COM1 through GHCB events, beside the console's own output.
        console_port: Some(0x3F8),
        // RMPQUERY (CPUID Fn8000_001F EAX[6], from the measured CPUID page) lets the SVSM
        // serve callers at a less privileged VMPL than the guest's own.
        rmpquery: launch.cpuid.lookup(0x8000_001F, 0, 0, 0)[0] & (1 << 6) != 0,
        ..SnpConfig::new(guest_vmpl, sev_features)
    };
    let mut platform = match SnpPlatform::start(BareSnp, config) {
        Ok(p) => p,
        Err(e) => {
            let (set, code) = e.reason();
            snp::ghcb::terminate(&mut BareSnp, set, code);
            instr::halt_forever()
        }
    };
    GHCB_SHARED[0].store(true, Ordering::Release);
    GUEST_VMPL.store(guest_vmpl, Ordering::Release);
    ACTIVE.store(true, Ordering::Release);
    // From here port I/O works (#VC), so the console does; a line goes out in one exit.
    super::console::init();
    super::console::set_line_writer(serial_line);
    println!("bulwark-svsm {}: booted from IGVM on SEV-SNP, C-bit {}", env!("CARGO_PKG_VERSION"), launch.c_bit);
    if platform.shared().hv_features & abi::ghcb::msr::HV_FEATURE_SNP_MULTI_VMPL == 0 {
        // Not fatal by itself (hosts differ in what they announce); RUN_VMPL will tell.
        println!("snp: warning: the host does not announce multi-VMPL support (HV_FEATURES bit 5)");
    }
    if !config.rmpquery {
        println!("snp: no RMPQUERY: calls from VMPLs below {guest_vmpl} may name no guest page");
    }
    platform.shared().set_svsm_entry(snp::vmsa::SvsmEntry {
        cpu: snp::vmsa::SvsmCpuState {
            rip: super::entry::igvm_ap_entry(),
            rsp: 0,
            // The boot tables, not the boot CPU's own root: an AP takes its own at once.
            cr3: boot_cr3,
            gdtr_base: abi::igvm::GDT_GPA,
            gdtr_limit: 23,
            code_selector: abi::igvm::CODE_SELECTOR,
            data_selector: abi::igvm::DATA_SELECTOR,
            argument: 0,
        },
        stack_base: hw::ap_entry_stacks(),
        stack_size: hw::AP_ENTRY_STACK as u64,
        stack_count: max_cpus,
    });
    let (_, image_end) = super::entry::image_bounds();
    let config = match launch::prepare(&mut platform, &launch, image_end) {
        Ok(c) => c,
        Err(e) => {
            println!("FAILED: launch: {e:?}");
            terminate(term::BOOT_INFO)
        }
    };
    let svsm_region = config.svsm_region;
    let mut svsm = match Svsm::new(config, &mut platform) {
        Ok(s) => s,
        Err(e) => {
            println!("FAILED: kernel refused the launch: {e:?}");
            terminate(term::BOOT_INFO)
        }
    };
    svsm.check_psp_channel(&mut platform);
    if let Err(e) = launch::open_secrets(&mut platform, &launch) {
        println!("snp: {e:?}");
    }
    super::clock::calibrate();
    let sealed = open_sealed_state(&svsm, &mut platform, &launch, svsm_region);
    // User mode: SYSCALL, SMEP and SMAP (CPUID raises #VC, served from the CPUID page
    // now that the platform is up); no time slices (docs/platforms/snp.md "User mode").
    super::user::boot_check(svsm.pages(), super::user::Checks::Snp);
    start_vtpm(&mut svsm, &mut platform, sealed);
    // Each vCPU the guest creates takes about 140 KiB more (its stacks and tables); the
    // vTPM's process holds about 3 MiB.
    let (used, size) = super::heap::usage();
    println!("heap: {} KiB of {} KiB in use", used / 1024, size / 1024);
    // Shared from here on: APs find both once the guest creates them.
    let svsm = SVSM.call_once(|| svsm);
    SNP.call_once(|| platform.shared().clone());
    println!("snp: serving the guest at VMPL{guest_vmpl}");
    serve(platform, svsm, VcpuIndex::STARTUP, false)
}

/// The state disk on SEV-SNP (docs/persistence.md "The disk"): its bounce pool on heap
/// pages given to the host, its registers through GHCB MMIO events.
fn open_sealed_state(
    svsm: &Svsm,
    platform: &mut SnpPlatform<BareSnp>,
    launch: &launch::Launch,
    svsm_region: kernel::addr::PageRange,
) -> super::sealed::Sealed {
    // The device's register windows (`snp::device::window_allowed`).
    let is_ram = |start: u64, end: u64| !snp::device::window_allowed(&launch.ram, svsm_region, start, end);
    // The host's virtio-mmio slots for the SVSM first (QEMU lists them in fw_cfg's
    // `etc/hardware-info`; the guest's firmware does not touch them), then the PCI bus.
    let slots: alloc::vec::Vec<u64> = super::fw_cfg::read_file("etc/hardware-info", 64 * 1024)
        .map(|file| blk::mmio::slots(&file).take(16).collect())
        .unwrap_or_default();
    if !slots.is_empty() {
        return super::sealed::open(svsm, platform, |platform| {
            super::disk::find_mmio(&slots, is_ram, || snp::device::GhcbMmio::new(BareSnp), || shared_pool(platform))
        });
    }
    super::sealed::open(svsm, platform, |platform| {
        super::disk::find(is_ram, |_| snp::device::GhcbMmio::new(BareSnp), || shared_pool(platform))
    })
}

/// The bounce pool's pages: taken from the heap for good and given to the host, reached
/// through the unencrypted alias of guest memory.
fn shared_pool(platform: &mut SnpPlatform<BareSnp>) -> Option<(u64, u64)> {
    let pages = super::pages::Page::zeroed_run(super::dma::POOL_PAGES)?;
    let base = pages.phys();
    // Never back to the heap, even if sharing fails midway: a page the host holds is not
    // the SVSM's to use again.
    core::mem::forget(pages);
    match platform.share_pages(base, super::dma::POOL_PAGES) {
        Ok(()) => Some((base, paging::ALIAS_BASE)),
        Err(e) => {
            println!("sealed: the state disk's bounce pages could not be shared ({e:?})");
            None
        }
    }
}

/// The vTPM in its service process at CPL 3, after the crash-isolation check, on what the
/// sealed state came to.
fn start_vtpm(svsm: &mut Svsm, platform: &mut SnpPlatform<BareSnp>, sealed: super::sealed::Sealed) {
    if !super::vtpm::crash_check() {
        println!("vtpm: protocol 2 is not served");
        return;
    }
    super::sealed::start_vtpm(svsm, platform, sealed);
}

/// `println!`'s serial output on SNP: the buffer in one GHCB string-I/O exit (a host that
/// refuses the serial port loses the line there; the console's log buffer has it).
fn serial_line(bytes: &[u8]) {
    let _ = SERIAL.write(&mut BareSnp, bytes);
}

/// A CPU's request loop: hand the CPU to the guest, serve its call, repeat. A new AP
/// looks for a call first: the host may have started its VMPL0 because the guest already
/// made one. Nothing here is locked: the CPU's handle is its own, and the kernel guards
/// its own state.
fn serve(mut platform: SnpPlatform<BareSnp>, svsm: &'static Svsm, vcpu: VcpuIndex, look_first: bool) -> ! {
    if look_first {
        svsm.handle_entry(&mut platform, vcpu);
    }
    loop {
        if let Err(e) = platform.resume_guest() {
            let vmpl = platform.config().guest_vmpl;
            println!("snp: the host refused to run VMPL{vmpl}: {e:?}");
            terminate(term::GHCB_SETUP);
        }
        svsm.handle_entry(&mut platform, vcpu);
    }
}

/// What a vCPU index keeps across the vCPUs created under it: deleting a vCPU frees its
/// SVSM pages, not these, so create/delete cycles do not drain the heap. Made before the
/// vCPU's creation commits (`prepare_ap`), part by part: a part made stays made when
/// another finds no memory, so a retry does not take the heap again.
#[derive(Default)]
struct ApSlot {
    tables: Option<super::cpu_tables::Tables>,
    /// Its page-table root (`percpu::install`).
    root: Option<u64>,
    stack_top: Option<u64>,
}

impl ApSlot {
    fn ready(&mut self) -> Option<(&mut super::cpu_tables::Tables, u64, u64)> {
        Some((self.tables.as_mut()?, self.root?, self.stack_top?))
    }
}

/// Make CPU `cpu`'s [`ApSlot`] whole if it is not (`SnpHw::prepare_cpu`, before the
/// creation of a vCPU with that index commits); `false` if the heap has no room for a
/// part of it (about 150 KiB: a 64 KiB stack, five 16 KiB interrupt stacks, the
/// descriptor and page tables).
pub(super) fn prepare_ap(cpu: usize) -> bool {
    let (Some(slot), Ok(cpu_index)) = (AP_SLOTS.get(cpu), u32::try_from(cpu)) else { return false };
    let mut slot = slot.lock();
    let slot = slot.get_or_insert_with(ApSlot::default);
    if slot.stack_top.is_none()
        && let Some(stack) = super::heap::zeroed::<u8>(AP_STACK)
    {
        let stack = stack.leak();
        slot.stack_top = Some((stack.as_ptr() as u64 + AP_STACK as u64) & !0xF);
    }
    if slot.root.is_none() {
        // Its own root: the per-CPU page user mode needs. Without one this CPU could not
        // run the vTPM's process when its vCPU calls it.
        // Built only: this CPU (the one serving the creation) stays on its own root.
        slot.root = super::percpu::build(cpu_index, BOOT_ROOT.load(Ordering::Acquire));
    }
    if slot.tables.is_none() {
        slot.tables = super::cpu_tables::build(false);
    }
    slot.ready().is_some()
}

static AP_SLOTS: [Mutex<Option<ApSlot>>; hw::MAX_CPUS] = [const { Mutex::new(None) }; hw::MAX_CPUS];
/// Whether the GHCB of an index was made shared already (doing it twice would
/// PVALIDATE a page the host owns).
static GHCB_SHARED: [AtomicBool; hw::MAX_CPUS] = [const { AtomicBool::new(false) }; hw::MAX_CPUS];

/// An AP's first Rust code, on its entry stack (`hw::ap_entry_stacks`): become this CPU,
/// load its tables, share (once) and register its GHCB, move to its 64 KiB stack, serve.
pub extern "C" fn ap_main(index: u64) -> ! {
    // SAFETY: as in `boot`.
    unsafe { instr::set_gs_base(index) };
    let cpu = hw::this_cpu();
    // `this_cpu` is below MAX_CPUS, the length of both.
    let (Some(ap_slot), Some(ghcb_shared)) = (AP_SLOTS.get(cpu), GHCB_SHARED.get(cpu)) else {
        terminate(term::GHCB_SETUP)
    };
    let stack_top = {
        // Made before the vCPU was created (`prepare_ap`); a host that starts an SVSM
        // VMSA the SVSM never created for this index finds none.
        let mut slot = ap_slot.lock();
        let Some((tables, root, stack_top)) = slot.as_mut().and_then(ApSlot::ready) else {
            terminate(term::GHCB_SETUP)
        };
        super::percpu::enter(root);
        // Its own GDT/IDT/TSS before anything can raise #VC.
        super::percpu::set_tss_rsp0(super::cpu_tables::activate(tables));
        stack_top
    };
    super::fpu::enable_sse();
    // No platform yet: the guest cannot have created this vCPU before serving began.
    let Some(shared) = SNP.get() else { terminate(term::GHCB_SETUP) };
    // Share this index's GHCB (once: doing it twice would PVALIDATE a page the host
    // owns) and register it (registration is per host vCPU: every new one registers).
    let share = !ghcb_shared.load(Ordering::Acquire);
    if SnpPlatform::join(BareSnp, shared.clone(), share).is_err() {
        terminate(term::GHCB_SETUP);
    }
    ghcb_shared.store(true, Ordering::Release);
    super::user::init_cpu();
    // SAFETY: the stack is leaked (it lives forever), its top 16-byte aligned, and no
    // other CPU uses this index's stack: the vCPU that had it was deleted only once its
    // SVSM VMSA had stopped running.
    unsafe { instr::switch_stack(stack_top, ap_serve, index) }
}

extern "C" fn ap_serve(index: u64) -> ! {
    let (Some(shared), Some(svsm)) = (SNP.get(), SVSM.get()) else { terminate(term::GHCB_SETUP) };
    // The index the platform gave this vCPU's SVSM VMSA: a u32.
    let Ok(index) = u32::try_from(index) else { terminate(term::GHCB_SETUP) };
    // The CPU joined in `ap_main`; its handle is made here, on its own stack.
    let platform = SnpPlatform::handle(BareSnp, shared.clone());
    serve(platform, svsm, VcpuIndex(index), true)
}

/// The guest's VMPL when the SVSM runs on SEV-SNP (`None` elsewhere).
pub fn guest_vmpl() -> Option<u8> {
    ACTIVE.load(Ordering::Acquire).then(|| GUEST_VMPL.load(Ordering::Acquire))
}

/// A #VC a process raised at CPL 3 with CPUID, RDTSC or RDTSCP (exit code `code`, the
/// instruction's bytes `insn`), answered into `regs` as for the SVSM's own code; the
/// instruction's length. `None` for every other exit (port I/O, MSRs, MMIO: nothing a
/// process may have served for it) and when not on SNP.
pub fn process_vc(code: u64, insn: &[u8], regs: &mut super::user::UserRegs) -> Option<u64> {
    if !ACTIVE.load(Ordering::Acquire) || ![exit::CPUID, exit::RDTSC, exit::RDTSCP].contains(&code) {
        return None;
    }
    let table = CPUID.get()?;
    let leaf = (regs.rax & 0xFFFF_FFFF, regs.rcx & 0xFFFF_FFFF);
    let mut vc = VcRegs { rax: regs.rax, rbx: regs.rbx, rcx: regs.rcx, rdx: regs.rdx };
    let len = snp::vc::handle(&mut BareSnp, table, code, insn, &mut vc, instr::xcr0(), 0).ok()?;
    if code == exit::CPUID {
        // The bits that follow CR4, as the CPU itself reports them (Linux fixes them up
        // the same way): a CPUID page that claimed OSXSAVE would have libcrypto's probe
        // run XGETBV, a #UD with CR4.OSXSAVE clear, and the vTPM's process would end.
        let cr4 = instr::read_cr4();
        let set = |reg: &mut u64, bit: u64, on: bool| *reg = if on { *reg | bit } else { *reg & !bit };
        match leaf {
            (1, _) => set(&mut vc.rcx, 1 << 27, cr4 & instr::CR4_OSXSAVE != 0),
            (7, 0) => set(&mut vc.rcx, 1 << 4, cr4 & instr::CR4_PKE != 0),
            _ => {}
        }
    }
    (regs.rax, regs.rbx, regs.rcx, regs.rdx) = (vc.rax, vc.rbx, vc.rcx, vc.rdx);
    u64::try_from(len).ok()
}

/// The exception path's hook: `true` if the exception was the snp platform's to handle
/// and the CPU may go on.
pub fn exception(frame: &mut Frame) -> bool {
    if !ACTIVE.load(Ordering::Acquire) {
        if SNP_BOOT.load(Ordering::Acquire) {
            // No GHCB yet: reporting would print, which raises #VC again. The MSR
            // protocol needs no GHCB.
            terminate(term::BOOT_INFO);
        }
        return false;
    }
    // A copy of guest memory hit a page the host took away: the copy fails instead.
    let recoverable = matches!(frame.vector, 13 | 14)
        || (frame.vector == 29 && matches!(frame.error, VC_PAGE_NOT_VALIDATED | exit::NPF));
    if recoverable && let Some(resume) = instr::copy_fixup(frame.rip) {
        frame.rip = resume;
        return true;
    }
    if frame.vector != 29 {
        return false;
    }
    let Some(table) = CPUID.get() else { return false };
    let mut insn = [0u8; 15];
    // SAFETY: RIP is in the SVSM's own code (a #VC from the guest never reaches here),
    // mapped and readable; 15 bytes may run past the function but stay in the image.
    if !unsafe { instr::copy(insn.as_mut_ptr(), frame.rip as *const u8, insn.len()) } {
        return false;
    }
    let mut regs = VcRegs { rax: frame.rax, rbx: frame.rbx, rcx: frame.rcx, rdx: frame.rdx };
    match snp::vc::handle(&mut BareSnp, table, frame.error, &insn, &mut regs, instr::xcr0(), 0) {
        Ok(len) => {
            (frame.rax, frame.rbx, frame.rcx, frame.rdx) = (regs.rax, regs.rbx, regs.rcx, regs.rdx);
            frame.rip += len as u64;
            true
        }
        Err(_) => false,
    }
}

/// Stop the guest for good (a fatal error in the SVSM).
pub fn fail() {
    if SNP_BOOT.load(Ordering::Acquire) {
        terminate(term::PANIC);
    }
}
