//! The `snp` platform on SEV-SNP hardware (docs/platforms/snp.md): the boot from an
//! IGVM image, #VC, the per-vCPU request loop of spec 58019 section 5. The logic is
//! `bulwark-snp`'s, shared with the model's tests; here are only the CPU's side of it
//! (`instr`, `hw`, `paging`) and the order things happen in.

mod hw;
mod instr;
mod paging;

use super::exceptions::Frame;
use abi::ghcb::{VC_PAGE_NOT_VALIDATED, exit, term};
use abi::igvm::{BOOT_INFO_MAGIC, BootInfo, MemoryMapEntry};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use hw::BareSnp;
use kernel::addr::{Gpa, PageAddr, PageRange};
use kernel::vcpu::VcpuIndex;
use kernel::{Svsm, SvsmConfig};
use snp::SnpPlatform;
use snp::cpuid::CpuidTable;
use snp::vc::VcRegs;
use spin::Mutex;
use spin::once::Once;
use zerocopy::FromBytes;

/// Set once the snp platform is up; the exception path then handles #VC.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The launch's CPUID page, copied once.
static CPUID: Once<CpuidTable> = Once::new();
/// The platform and the kernel, shared by every CPU's request loop.
static SHARED: Mutex<Option<(SnpPlatform<BareSnp>, Svsm)>> = Mutex::new(None);

/// Stack for each AP's request loop (the vTPM's C code needs more than the vCPU's
/// SVSM pages hold).
const AP_STACK: usize = 64 * 1024;
/// Where the guest's first VMSA and calling area go: the VMSA in SVSM memory just below
/// the boot block, the calling area in guest RAM just below the SVSM region (the guest
/// finds it in the secrets page and must keep it reserved).
const GUEST_VMSA_GPA: u64 = abi::igvm::BOOT_BLOCK_BASE - 0x1000;
const CALLING_AREA_GPA: u64 = abi::igvm::SVSM_REGION_BASE - 0x1000;

/// Is this an SEV-SNP guest? (SEV_STATUS is never intercepted.)
pub fn detected() -> bool {
    instr::sev_status() & abi::ghcb::sev_status::SNP != 0
}

fn terminate(code: u8) -> ! {
    snp::ghcb::terminate(&mut BareSnp, term::SET_BULWARK, code);
    instr::halt_forever()
}

/// Boot on SNP from the IGVM image's boot information. Does not return: the boot CPU
/// ends in its request loop.
pub fn boot(info_gpa: u64) -> ! {
    // SAFETY: GS base is this CPU's index on the snp platform and nothing else.
    unsafe { instr::set_gs_base(0) };
    let mut info = [0u8; core::mem::size_of::<BootInfo>()];
    // SAFETY: the boot block is part of the launch-validated SVSM region.
    let ok = unsafe { instr::copy(info.as_mut_ptr(), info_gpa as *const u8, info.len()) };
    // The image is linked into the region the boot information names; anything else is
    // not an image this SVSM was built into.
    let sane = |i: &BootInfo| {
        ok && i.magic == BOOT_INFO_MAGIC
            && i.svsm_base == abi::igvm::SVSM_REGION_BASE
            && i.svsm_size == abi::igvm::SVSM_REGION_SIZE
            && (1..=3).contains(&i.guest_vmpl)
    };
    let Some(info) = BootInfo::read_from_bytes(&info).ok().filter(sane) else { terminate(term::BOOT_INFO) };
    let mut page = [0u8; 4096];
    // SAFETY: as above; the CPUID page is in the boot block.
    if !unsafe { instr::copy(page.as_mut_ptr(), info.cpuid_gpa as *const u8, 4096) } {
        terminate(term::BOOT_INFO);
    }
    let Ok(table) = CpuidTable::parse(&page) else { terminate(term::BOOT_INFO) };
    let c_bit = (table.lookup(0x8000_001F, 0, 1, 0)[1] & 0x3F) as u8;
    let signature = table.lookup(1, 0, 1, 0)[0];
    CPUID.call_once(|| table);
    if !(32..52).contains(&c_bit) {
        terminate(term::BOOT_INFO);
    }
    paging::install(c_bit);
    // SEV_FEATURES as the VMSAs of this guest carry them: SEV_STATUS bits 2.. map to
    // SEV_FEATURES bits 0..
    let sev_features = instr::sev_status() >> 2;
    let guest_vmpl = info.guest_vmpl as u8;
    let mut platform = match SnpPlatform::start(BareSnp, guest_vmpl, sev_features) {
        Ok(p) => p,
        Err(e) => {
            let (set, code) = e.reason();
            snp::ghcb::terminate(&mut BareSnp, set, code);
            instr::halt_forever()
        }
    };
    ACTIVE.store(true, Ordering::Release);
    // From here port I/O works (#VC), so the console does.
    super::console::init();
    println!("bulwark-svsm {}: booted from IGVM on SEV-SNP, C-bit {c_bit}", env!("CARGO_PKG_VERSION"));
    // Kernel log lines go to COM1 through GHCB events, beside the console's own output.
    platform.state.console_port = Some(0x3F8);
    platform.state.svsm_entry = Some(snp::vmsa::SvsmCpuState {
        rip: super::entry::igvm_ap_entry(),
        rsp: 0,
        cr3: instr::read_cr3(),
        gdtr_base: abi::igvm::GDT_GPA,
        gdtr_limit: 23,
        code_selector: abi::igvm::CODE_SELECTOR,
        data_selector: abi::igvm::DATA_SELECTOR,
        argument: 0,
    });
    let config = match config(&info, &mut platform, signature) {
        Ok(c) => c,
        Err(why) => {
            println!("FAILED: {why}");
            terminate(term::BOOT_INFO)
        }
    };
    let mut svsm = match Svsm::new(config, &mut platform) {
        Ok(s) => s,
        Err(e) => {
            println!("FAILED: kernel refused the launch: {e:?}");
            terminate(term::BOOT_INFO)
        }
    };
    svsm.check_psp_channel(&mut platform);
    // VMPCK0 is gone from the secrets page now: the guest may read the rest (its VMPCKs,
    // the SVSM fields).
    if let Some(secrets) = PageAddr::new(info.secrets_gpa) {
        use kernel::platform::Platform;
        let read = abi::hw::rmpadjust::PERM_READ;
        if platform.rmpadjust(secrets, kernel::addr::PageSize::Size4K, guest_vmpl, read, false).is_err() {
            println!("snp: the guest cannot be given the secrets page");
        }
    }
    super::clock::calibrate();
    match super::vtpm::manufacture() {
        Ok(v) => svsm.install_vtpm(v),
        Err(e) => println!("vtpm: {e}; protocol 2 is not served"),
    }
    *SHARED.lock() = Some((platform, svsm));
    println!("snp: serving the guest at VMPL{guest_vmpl}");
    serve(VcpuIndex::STARTUP, guest_vmpl)
}

/// The kernel's launch description, after making the guest's first vCPU and calling
/// area (validated here, so they count as validated at launch).
fn config(info: &BootInfo, p: &mut SnpPlatform<BareSnp>, signature: u32) -> Result<SvsmConfig, &'static str> {
    use kernel::platform::Platform;
    let ram = memory_map(info)?;
    let page = |gpa: u64| PageAddr::new(gpa).ok_or("unaligned launch page");
    let (vmsa, ca) = (page(GUEST_VMSA_GPA)?, page(CALLING_AREA_GPA)?);
    p.pvalidate(ca, kernel::addr::PageSize::Size4K, true).map_err(|_| "cannot validate the calling area")?;
    p.zero_pages(PageRange::new(ca, 1).ok_or("calling area")?).map_err(|_| "cannot zero the calling area")?;
    p.rmpadjust(ca, kernel::addr::PageSize::Size4K, info.guest_vmpl as u8, abi::hw::rmpadjust::PERM_ALL, false)
        .map_err(|_| "cannot give the calling area to the guest")?;
    p.launch_guest_vcpu(vmsa, 0, signature).map_err(|_| "cannot make the guest's VMSA")?;
    let svsm_region = PageRange::new(page(info.svsm_base)?, info.svsm_size >> 12).ok_or("bad SVSM region")?;
    let (_, image_end) = super::entry::image_bounds();
    let first_free = image_end.next_multiple_of(4096);
    let pool_end = GUEST_VMSA_GPA;
    let mut prevalidated = Vec::new();
    if info.firmware_size != 0 {
        prevalidated.push(PageRange::new(page(info.firmware_base)?, info.firmware_size >> 12).ok_or("firmware")?);
    }
    prevalidated.push(PageRange::new(ca, 1).ok_or("calling area")?);
    let vp_count = read_u32(info.vp_count_gpa).unwrap_or(1).clamp(1, hw::MAX_CPUS as u32);
    Ok(SvsmConfig {
        ram,
        svsm_region,
        pool_reserve: (first_free >> 12..pool_end >> 12).map(PageAddr::from_pfn).collect(),
        prevalidated,
        startup_vmsa: vmsa,
        startup_calling_area: Gpa(CALLING_AREA_GPA),
        startup_apic_id: 0,
        max_vcpus: vp_count as usize,
        pages_per_call: 4096,
        secrets_page: Some(page(info.secrets_gpa)?),
    })
}

fn read_u32(gpa: u64) -> Option<u32> {
    let mut b = [0u8; 4];
    // SAFETY: a parameter page of the boot block, launch-validated.
    unsafe { instr::copy(b.as_mut_ptr(), gpa as *const u8, 4) }.then(|| u32::from_le_bytes(b))
}

/// Guest RAM from the loader's memory-map parameter area.
fn memory_map(info: &BootInfo) -> Result<Vec<PageRange>, &'static str> {
    let len = (info.memory_map_pages as usize).min(4) * 4096;
    let mut bytes = alloc::vec![0u8; len];
    // SAFETY: the parameter area is in the boot block, launch-validated.
    if !unsafe { instr::copy(bytes.as_mut_ptr(), info.memory_map_gpa as *const u8, len) } {
        return Err("memory map unreadable");
    }
    let entries = bytes
        .chunks_exact(core::mem::size_of::<MemoryMapEntry>())
        .filter_map(|c| MemoryMapEntry::read_from_bytes(c).ok())
        .take_while(|e| e.number_of_pages != 0);
    let ram: Vec<PageRange> = entries
        .filter(|e| e.entry_type == abi::igvm::MEMORY_TYPE_MEMORY)
        .filter_map(|e| PageRange::new(PageAddr::from_pfn(e.starting_gpa_page_number), e.number_of_pages))
        .collect();
    if ram.is_empty() { Err("the memory map has no RAM") } else { Ok(ram) }
}

/// A CPU's request loop: hand the CPU to the guest, serve its call, repeat.
fn serve(vcpu: VcpuIndex, guest_vmpl: u8) -> ! {
    loop {
        if let Err(e) = snp::ghcb::run_vmpl(guest_vmpl).call(&mut BareSnp) {
            println!("snp: the host refused to run VMPL{guest_vmpl}: {e:?}");
            terminate(term::GHCB_SETUP);
        }
        let mut shared = SHARED.lock();
        if let Some((platform, svsm)) = shared.as_mut() {
            svsm.handle_entry(platform, vcpu);
        }
    }
}

/// An AP's first Rust code, on the stack in its SVSM pages: become this CPU, share and
/// register its GHCB, move to a real stack, serve.
pub extern "C" fn ap_main(index: u64) -> ! {
    // SAFETY: as in `boot`.
    unsafe { instr::set_gs_base(index) };
    // Its own GDT/IDT/TSS before anything can raise #VC, and SSE for the vTPM's C code.
    super::cpu_tables::load();
    super::fpu::enable_sse();
    let mut hw = BareSnp;
    let gpa = snp::SnpHw::shared_gpa(&hw, snp::Shared::Ghcb);
    let shared = matches!(snp::SnpHw::pvalidate(&mut hw, gpa, false, false), Ok((0, _)))
        && snp::ghcb::page_state_change(&mut hw, gpa, abi::ghcb::msr::PSC_SHARED).is_ok()
        && snp::ghcb::register(&mut hw, gpa).is_ok();
    if !shared {
        terminate(term::GHCB_SETUP);
    }
    let stack = alloc::boxed::Box::leak(alloc::vec![0u8; AP_STACK].into_boxed_slice());
    let top = (stack.as_ptr() as u64 + AP_STACK as u64) & !0xF;
    // SAFETY: the stack is leaked, so it lives forever; its top is 16-byte aligned.
    unsafe { instr::switch_stack(top, ap_serve, index) }
}

extern "C" fn ap_serve(index: u64) -> ! {
    let vmpl = SHARED.lock().as_ref().map_or(1, |(p, _)| p.state.guest_vmpl);
    serve(VcpuIndex(index as u32), vmpl)
}

/// The exception path's hook: `true` if the exception was the snp platform's to handle
/// and the CPU may go on.
pub fn exception(frame: &mut Frame) -> bool {
    if !ACTIVE.load(Ordering::Acquire) {
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
    if ACTIVE.load(Ordering::Acquire) {
        terminate(term::PANIC);
    }
}
