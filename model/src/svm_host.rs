//! The `svm` platform on the model: `bulwark-svm`'s `SvmPlatform` over a software
//! machine, so the kernel runs in the model's tests on the platform the QEMU run uses,
//! the conformance suite included.
//!
//! [`ModelSvmHw`] is the machine every CPU shares: the model's guest memory, nested
//! paging as a record of what each guest page maps to (what the guest can reach), kicks,
//! the model's PSP, a log ring. [`ModelSvmCpu`] is one CPU: a software VMRUN that reads
//! the VMCB as the hardware would (TLB flush, event injection, the checks VMRUN makes)
//! and hands back the exit the guest side staged. The world drives the same steps as
//! every CPU's loop on bare metal (`svm::run`), one CPU at a time: vCPU `i` lives on CPU
//! `i`, and each vCPU is "in the guest" (taken out of the platform) between its calls and
//! stays in its CPU's hands while the CPU serves its call, so changes reach it through
//! its slot and a kick, as on bare metal. The shared part (`SvmShared`) is put together
//! for each step from the platform's state and the world's machine, and the kernel gets
//! the per-CPU `SvmPlatform` of the CPU that serves, as on bare metal.
//!
//! The model checks the platform's side too (`Machine::violations`): nested paging that
//! maps SVSM memory, a VMRUN of a VMCB without the intercepts, nested paging or interrupt
//! masking the platform promises.

use crate::machine::{Machine, ModelVcpu};
use crate::world::{LOW_VALIDATED_END, SECRETS_GPA, STARTUP_CA_GPA, STARTUP_VMSA_GPA, SVSM_BASE, World, WorldConfig};
use abi::hw::EFER_SVME;
use abi::hw::rmpadjust::{PERM_READ, PERM_WRITE};
use abi::vmcb::{V_INTR_MASKING, event, exit, misc1, misc2, offset};
use abi::vmsa::VmsaField;
use guest::client::Regs;
use kernel::Svsm;
use kernel::log_ring::{LogLost, LogRing};
use kernel::platform::{GuestRequestError, Level, Platform};
use kernel::request::EntryOutcome;
use kernel::vcpu::VcpuIndex;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use svm::hw::{Fault, LogToGuestError, PageMem, SvmCpu, SvmHw};
use svm::launch::{Layout, Plan};
use svm::npt::Access;
use svm::run::{End, Taken, Then, run_until_shared};
use svm::vcpu::GuestRegs;
use svm::vcpu::SvmVcpu;
use svm::{SvmShared, SvmState};

/// Bytes of log the svm platform keeps on the model (small, so tests can overflow it).
pub const LOG_BYTES: usize = crate::machine::MODEL_LOG_BYTES;
/// The guest's initial page tables in the model's layout (after the startup VMSA).
pub const PAGE_TABLES_GPA: u64 = 0x10_3000;
/// Physical addresses of SVSM memory on the model: past any guest RAM.
const SVSM_MEMORY: u64 = 0x7F00_0000_0000;
const NPT_ROOT: u64 = SVSM_MEMORY - 0x1000;

/// The model's layout for the svm platform: the model world's (`world.rs`), so the
/// conformance facts are the same on every platform.
pub fn layout(config: &WorldConfig) -> Layout {
    Layout {
        secrets: SECRETS_GPA,
        calling_area: STARTUP_CA_GPA,
        vmsa: STARTUP_VMSA_GPA,
        page_tables: PAGE_TABLES_GPA,
        svsm_region: SVSM_BASE..SVSM_BASE + config.svsm_size,
        huge_from: config.huge_from,
        image_from: 0,
        ram_limit: config.ram_bytes,
        max_vcpus: config.max_vcpus,
        pages_per_call: config.pages_per_call,
    }
}

/// The guest "image" the model launches: the low 4 MiB the model world validates at
/// launch (firmware and scratch), around the launch pages.
pub fn image() -> [(u64, u64); 2] {
    let after_tables = PAGE_TABLES_GPA + svm::launch::PAGE_TABLE_PAGES * 4096;
    [(0, SECRETS_GPA), (after_tables, LOW_VALIDATED_END - after_tables)]
}

/// SVSM memory on the model: a buffer with a physical address no guest page has.
#[derive(Debug)]
pub struct ModelPage {
    phys: u64,
    bytes: Vec<u8>,
}

impl PageMem for ModelPage {
    fn phys(&self) -> u64 {
        self.phys
    }
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl ModelPage {
    fn u64(&self, off: usize) -> u64 {
        self.bytes.get(off..off + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
    fn set_u64(&mut self, off: usize, v: u64) {
        if let Some(b) = self.bytes.get_mut(off..off + 8) {
            b.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// What the guest does next on a vCPU: the exit its instruction makes, with the
/// registers it set before.
#[derive(Clone, Copy, Debug)]
struct Staged {
    code: u64,
    info1: u64,
    regs: Regs,
}

/// The model's hardware for the svm platform.
#[derive(Debug)]
pub struct SvmHost {
    /// Where guest RAM ends.
    pub ram_end: u64,
    /// The SVSM region: nested paging must never map it.
    pub svsm_region: std::ops::Range<u64>,
    /// What nested paging maps, by pfn: what the guest can reach.
    pub npt: BTreeMap<u64, Access>,
    /// Each guest ASID's TLB: what it reached before, kept until a VMRUN flushes it.
    pub tlbs: RefCell<BTreeMap<u32, BTreeMap<u64, Access>>>,
    /// CPUs kicked that have not come back yet.
    pub kicked: BTreeSet<u32>,
    /// Kicks so far.
    pub kicks: u64,
    /// TLB flushes VMRUN made so far.
    pub flushes: u64,
    /// Events delivered to the guest: (ASID, EVENTINJ).
    pub injected: Vec<(u32, u64)>,
    pub generation: u64,
    pub log: Vec<(Level, String)>,
    log_ring: Box<LogRing<LOG_BYTES>>,
    /// The console's lock stays taken (another CPU holds it): log copies find it busy.
    pub log_busy: bool,
    tsc: std::cell::Cell<u64>,
    next_phys: u64,
    staged: Option<Staged>,
}

impl SvmHost {
    fn new(config: &WorldConfig) -> Self {
        Self {
            ram_end: config.ram_bytes,
            svsm_region: SVSM_BASE..SVSM_BASE + config.svsm_size,
            npt: BTreeMap::new(),
            tlbs: RefCell::new(BTreeMap::new()),
            kicked: BTreeSet::new(),
            kicks: 0,
            flushes: 0,
            injected: Vec::new(),
            generation: 0,
            log: Vec::new(),
            log_ring: Box::new(LogRing::new()),
            log_busy: false,
            tsc: std::cell::Cell::new(1_000_000),
            next_phys: SVSM_MEMORY,
            staged: None,
        }
    }

    /// Can the guest vCPU with `asid` access `[gpa, gpa + len)` with `need`
    /// (abi::hw::rmpadjust::PERM_READ/PERM_WRITE), through its TLB and nested paging? A
    /// page it reached before keeps the access cached then until a VMRUN flushes. `Err`
    /// names the first refused address.
    pub fn guest_access(&self, asid: u32, gpa: u64, len: usize, need: u8) -> Result<(), u64> {
        if len == 0 {
            return Ok(());
        }
        let last = gpa.checked_add(len as u64 - 1).ok_or(gpa)?;
        let allows = |a: &Access| need & PERM_WRITE == 0 || a.write;
        let mut tlbs = self.tlbs.borrow_mut();
        let tlb = tlbs.entry(asid).or_default();
        for pfn in gpa >> 12..=last >> 12 {
            if tlb.get(&pfn).is_some_and(allows) {
                continue;
            }
            match self.npt.get(&pfn) {
                Some(a) if allows(a) && need & !(PERM_READ | PERM_WRITE) == 0 => {
                    tlb.insert(pfn, *a);
                }
                _ => return Err((pfn << 12).max(gpa)),
            }
        }
        Ok(())
    }

    /// Log lines the platform emitted.
    pub fn logged(&self, part: &str) -> bool {
        self.log.iter().any(|(_, l)| l.contains(part))
    }

    /// VMRUN's entry into the guest: the flush and the event the VMCB asks for, and the
    /// checks VMRUN makes. `false` if VMRUN refuses the state (EFER.SVME clear).
    fn enter(&mut self, machine: &Machine, vmcb: &mut ModelPage) -> bool {
        let asid = u32::try_from(vmcb.u64(offset::GUEST_ASID) & 0xFFFF_FFFF).unwrap_or(0);
        let controls = vmcb.u64(offset::INTERCEPT_MISC1) & 0xFFFF_FFFF;
        let misc2 = vmcb.u64(offset::INTERCEPT_MISC2) & 0xFFFF_FFFF;
        let needed1 = u64::from(misc1::MSR_PROT | misc1::IOIO_PROT | misc1::NMI | misc1::CPUID | misc1::SHUTDOWN);
        let needed2 = u64::from(misc2::VMRUN | misc2::VMMCALL | misc2::CLGI | misc2::STGI);
        if controls & needed1 != needed1 || misc2 & needed2 != needed2 {
            machine.record_violation(format!("VMRUN of ASID {asid} without the platform's intercepts"));
        }
        if vmcb.u64(offset::NP_ENABLE) & 1 == 0 || vmcb.u64(offset::N_CR3) != NPT_ROOT {
            machine.record_violation(format!("VMRUN of ASID {asid} without the platform's nested page tables"));
        }
        if vmcb.u64(offset::V_INTR) & V_INTR_MASKING == 0 {
            machine.record_violation(format!("VMRUN of ASID {asid} with V_INTR_MASKING clear"));
        }
        if asid == 0 {
            machine.record_violation("VMRUN with ASID 0 (the host's)".into());
        }
        let flush = vmcb.bytes.get(offset::TLB_CONTROL).copied().unwrap_or(0);
        if flush != 0 {
            self.tlbs.borrow_mut().remove(&asid);
            self.flushes += 1;
            if let Some(b) = vmcb.bytes.get_mut(offset::TLB_CONTROL) {
                *b = 0;
            }
        }
        let inj = vmcb.u64(offset::EVENT_INJ);
        if inj & event::VALID != 0 {
            self.injected.push((asid, inj));
            vmcb.set_u64(offset::EVENT_INJ, inj & !event::VALID);
        }
        let efer = vmcb.u64(offset::SAVE + VmsaField::Efer.offset());
        efer & EFER_SVME != 0
    }
}

/// The machine every CPU shares, for one step (the model runs one CPU at a time, so the
/// cells are never borrowed twice).
#[derive(Debug)]
pub struct ModelSvmHw<'a> {
    machine: RefCell<&'a mut Machine>,
    host: RefCell<&'a mut SvmHost>,
}

impl<'a> ModelSvmHw<'a> {
    pub fn new(machine: &'a mut Machine, host: &'a mut SvmHost) -> Self {
        Self { machine: RefCell::new(machine), host: RefCell::new(host) }
    }

    fn in_ram(&self, gpa: u64, len: usize) -> bool {
        gpa.checked_add(len as u64).is_some_and(|end| end <= self.host.borrow().ram_end)
    }
}

impl SvmHw for ModelSvmHw<'_> {
    type Page = ModelPage;

    fn alloc(&self, count: usize) -> Option<ModelPage> {
        // The SVSM's memory: counted against its heap, as on bare metal.
        let len = count.checked_mul(4096)?;
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(len).ok()?;
        bytes.resize(len, 0);
        let mut host = self.host.borrow_mut();
        let phys = host.next_phys;
        host.next_phys += len as u64;
        Some(ModelPage { phys, bytes })
    }

    fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Fault> {
        if !self.in_ram(gpa, buf.len()) {
            return Err(Fault);
        }
        let machine = self.machine.borrow();
        machine.raw_read(gpa, buf);
        // Another vCPU's racing write (`Machine::race`) lands right after this read.
        machine.after_read(gpa, buf.len());
        Ok(())
    }

    fn write_guest(&self, gpa: u64, data: &[u8]) -> Result<(), Fault> {
        if !self.in_ram(gpa, data.len()) {
            return Err(Fault);
        }
        let mut machine = self.machine.borrow_mut();
        crate::heap::as_host(|| machine.raw_write(gpa, data));
        Ok(())
    }

    fn zero_guest(&self, gpa: u64, len: usize) -> Result<(), Fault> {
        if !self.in_ram(gpa, len) {
            return Err(Fault);
        }
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut machine = self.machine.borrow_mut();
        let mut at = 0;
        while at < len {
            let n = (len - at).min(ZEROS.len());
            crate::heap::as_host(|| machine.raw_write(gpa + at as u64, &ZEROS[..n]));
            at += n;
        }
        Ok(())
    }

    fn npt_set(&self, gpa: u64, access: Option<Access>) -> Result<(), Fault> {
        let pfn = gpa >> 12;
        let mut host = self.host.borrow_mut();
        if access.is_some() && host.svsm_region.contains(&(pfn << 12)) {
            self.machine.borrow().record_violation(format!("nested paging maps SVSM page {gpa:#x}"));
        }
        if !svm::npt::mappable(gpa) {
            return Err(Fault);
        }
        let npt = &mut host.npt;
        crate::heap::as_host(|| match access {
            Some(a) => npt.insert(pfn, a),
            None => npt.remove(&pfn),
        });
        Ok(())
    }

    /// The model keeps what the guest can reach by page, whatever the leaf size.
    fn npt_set_region(&self, gpa: u64, access: Option<Access>) -> Result<(), Fault> {
        if gpa & 0x1F_FFFF != 0 {
            self.machine.borrow().record_violation(format!("a 2 MiB nested leaf at unaligned {gpa:#x}"));
            return Err(Fault);
        }
        (0..svm::npt::REGION_PAGES).try_for_each(|i| self.npt_set(gpa + (i << 12), access))
    }

    fn npt_root(&self) -> u64 {
        NPT_ROOT
    }

    fn kick(&self, cpu: u32) {
        let mut host = self.host.borrow_mut();
        crate::heap::as_host(|| host.kicked.insert(cpu));
        host.kicks += 1;
    }

    fn kick_pending(&self, cpu: u32) -> bool {
        self.host.borrow().kicked.contains(&cpu)
    }

    fn vcpus_changed(&self) {
        self.host.borrow_mut().generation += 1;
    }

    fn generation(&self) -> u64 {
        self.host.borrow().generation
    }

    fn heap_usage(&self) -> Option<kernel::platform::HeapUsage> {
        crate::heap::usage()
    }

    fn rdtsc(&self) -> u64 {
        let host = self.host.borrow();
        host.tsc.set(host.tsc.get() + 1000);
        host.tsc.get()
    }

    fn guest_request(&self, request: &[u8; 4096], response: &mut [u8; 4096]) -> Result<(), GuestRequestError> {
        Platform::guest_request(&mut **self.machine.borrow_mut(), request, response)
    }

    fn fatal(&self, why: std::fmt::Arguments<'_>) -> ! {
        // As on the model's own platform: the panic belongs to the test, not the SVSM's heap.
        let why = crate::heap::as_host(|| why.to_string());
        crate::heap::as_host(|| panic!("the SVSM stopped: {why}"))
    }

    fn log(&self, level: Level, args: std::fmt::Arguments<'_>) {
        let mut host = self.host.borrow_mut();
        crate::heap::as_host(|| {
            let line = args.to_string();
            if std::env::var_os("BULWARK_MODEL_LOG").is_some() {
                eprintln!("[svsm {level:?}] {line}");
            }
            host.log_ring.push(format!("[{level:?}] {line}\n").as_bytes());
            host.log.push((level, line));
        });
    }

    fn log_read(&self, offset: u64, out: &mut [u8]) -> Result<usize, LogLost> {
        self.host.borrow().log_ring.read(offset, out)
    }

    fn log_written(&self) -> u64 {
        self.host.borrow().log_ring.written()
    }

    /// Straight from the ring, as the bare console copies (`svsm/src/bare/svm/hw.rs`).
    fn log_to_guest(&self, offset: u64, gpa: u64, len: usize) -> Option<Result<usize, LogToGuestError>> {
        let host = self.host.borrow();
        if host.log_busy {
            return Some(Err(LogToGuestError::Busy));
        }
        let segments = match host.log_ring.segments(offset, len) {
            Ok(segments) => segments,
            Err(lost) => return Some(Err(LogToGuestError::Lost(lost))),
        };
        let mut at = gpa;
        for s in segments.iter().filter(|s| !s.is_empty()) {
            if self.write_guest(at, s).is_err() {
                return Some(Err(LogToGuestError::Fault));
            }
            at += s.len() as u64;
        }
        Some(Ok(segments.iter().map(|s| s.len()).sum()))
    }
}

/// One CPU of the model.
#[derive(Debug)]
pub struct ModelSvmCpu<'a> {
    pub cpu: u32,
    pub machine: &'a Machine,
    pub host: &'a mut SvmHost,
}

impl SvmCpu<ModelPage> for ModelSvmCpu<'_> {
    fn vmrun(&mut self, vmcb: &mut ModelPage, regs: &mut GuestRegs) -> bool {
        if self.host.kicked.remove(&self.cpu) {
            return false;
        }
        let runs = self.host.enter(self.machine, vmcb);
        // With nothing staged the guest has nothing to do: it is called back, as a kick
        // would (the world stages the guest's next instruction before it runs a CPU).
        let Some(step) = self.host.staged.take() else { return false };
        let code = if runs { step.code } else { exit::INVALID };
        vmcb.set_u64(offset::SAVE + VmsaField::Rax.offset(), step.regs.rax);
        regs.rcx = step.regs.rcx;
        regs.rdx = step.regs.rdx;
        regs.r8 = step.regs.r8;
        regs.r9 = step.regs.r9;
        vmcb.set_u64(offset::EXIT_CODE, code);
        vmcb.set_u64(offset::EXIT_INFO1, step.info1);
        vmcb.set_u64(offset::EXIT_INFO2, 0);
        true
    }

    fn cpuid(&mut self, leaf: u32, _subleaf: u32) -> [u32; 4] {
        // The model's CPU announces nothing of its own.
        [if leaf == 0 { 0x8000_001F } else { 0 }, 0, 0, 0]
    }

    fn generation(&self) -> u64 {
        self.host.generation
    }
}

/// The svm platform's parts that outlive an entry.
#[derive(Debug)]
pub struct SvmWorld {
    pub host: SvmHost,
    /// The platform's state, lent to an `SvmShared` for each step.
    pub state: Option<SvmState<ModelPage>>,
    /// What the kernel made of the last call it served.
    pub last_entry: Option<EntryOutcome>,
    /// The vCPU each CPU has in the guest.
    pub running: BTreeMap<u32, Taken<ModelPage>>,
    /// The vCPU each CPU ran last (its round robin).
    last: BTreeMap<u32, u32>,
    /// CPUs (one per possible vCPU).
    pub cpus: u32,
    /// Why the run ended, if a CPU's loop would have stopped.
    pub ended: Option<End>,
    /// The guest is paused ([`pause`]): no CPU takes a vCPU.
    paused: bool,
}

impl SvmWorld {
    /// `f` on the vCPU with `index`, wherever it is (in the guest, or in the platform).
    pub fn with_vcpu<R>(&self, index: u32, f: impl FnOnce(&SvmVcpu<ModelPage>) -> R) -> Option<R> {
        let cpu = index % self.cpus.max(1);
        match self.running.get(&cpu) {
            Some(t) if t.index == index => Some(f(&t.vcpu)),
            _ => self.state.as_ref()?.slots.with(index, |v| f(v)),
        }
    }

    /// The registers the guest on vCPU `index` sees.
    fn regs(&self, index: u32) -> Option<Regs> {
        self.with_vcpu(index, |v| Regs {
            rax: v.field(VmsaField::Rax),
            rcx: v.field(VmsaField::Rcx),
            rdx: v.field(VmsaField::Rdx),
            r8: v.field(VmsaField::R8),
            r9: v.field(VmsaField::R9),
        })
    }

    /// The ASID of a vCPU in the guest (`None`: it is not running).
    pub fn asid(&self, index: u32) -> Option<u32> {
        let cpu = index % self.cpus.max(1);
        let t = self.running.get(&cpu).filter(|t| t.index == index)?;
        Some(t.vcpu.vmcb.u32(offset::GUEST_ASID))
    }

    /// Can the guest on vCPU `index` access `[gpa, gpa + len)` with `need`?
    pub fn guest_access(&self, index: u32, gpa: u64, len: usize, need: u8) -> Result<(), u64> {
        let asid = self.asid(index).ok_or(gpa)?;
        self.host.guest_access(asid, gpa, len, need)
    }

    pub fn state(&self) -> &SvmState<ModelPage> {
        match &self.state {
            Some(s) => s,
            None => unreachable!("the svm state is put back after every step"),
        }
    }
}

/// A world on the svm platform: the model's machine, launched by `bulwark-svm`'s launch
/// in the model's layout, the kernel on `SvmPlatform`, every vCPU in the guest.
pub fn new_world(config: WorldConfig) -> World {
    let mut m = Machine::new(config.ram_bytes, config.huge_from);
    // The svm platform keeps its own RMP (`SvmState::rmp`); the machine's stays empty,
    // so nothing reads a stale one.
    m.rmp = rmp::Rmp::new(0);
    m.log_level = config.log_level;
    m.psp = Some(crate::psp_model::launch([0xA0; 32]));
    m.certificates = crate::psp_model::certificate_table();
    let mut host = SvmHost::new(&config);
    let reserve = config.pool_reserve_pages.min(config.svsm_size / 4096) * 4096;
    let image_end = SVSM_BASE + config.svsm_size - reserve;
    let launched = launch(&mut m, &mut host, &config, image_end);
    let (p, svsm_config) = match launched {
        Ok(l) => l,
        Err(e) => panic!("the model's svm launch layout is valid: {e:?}"),
    };
    p.state.set_log_level(config.log_level);
    let made = crate::heap::in_svsm(|| Svsm::new(svsm_config, &mut p.platform(0)));
    let state = p.state;
    let mut svsm = match made {
        Ok(s) => s,
        Err(e) => unreachable!("the model's svm launch is valid: {e:?}"),
    };
    if config.vtpm {
        match crate::vtpm_model::vtpm() {
            Ok(v) => crate::heap::in_svsm(|| svsm.install_vtpm(v)),
            Err(e) => panic!("the model's vTPM did not start: {e}"),
        }
    }
    let cpus = u32::try_from(config.max_vcpus.max(1)).unwrap_or(1);
    let svm = SvmWorld {
        host,
        state: Some(state),
        last_entry: None,
        running: BTreeMap::new(),
        last: BTreeMap::new(),
        cpus,
        ended: None,
        paused: false,
    };
    let mut w = World { machine: m, svsm, config, host: Default::default(), snp: None, svm: Some(svm) };
    settle(&mut w);
    w
}

/// The svm launch in the model's layout, on `machine`.
fn launch<'a>(
    machine: &'a mut Machine,
    host: &'a mut SvmHost,
    config: &WorldConfig,
    image_end: u64,
) -> Result<(SvmShared<ModelSvmHw<'a>>, kernel::SvsmConfig), svm::launch::LaunchError> {
    let mut plan = Plan::new(layout(config), &[(0, config.ram_bytes)], config.ram_bytes, image_end)?;
    for (at, len) in image() {
        plan.add_segment(at, len)?;
    }
    // The model's PSP keeps VMPCK0 = [0xA0; 32] (`psp_model`).
    let vmpcks = [[0xA0; 32], [0xA1; 32], [0xA2; 32], [0xA3; 32]];
    let certificates = machine.certificates.clone();
    let cpus = u32::try_from(config.max_vcpus.max(1)).unwrap_or(u32::MAX);
    SvmShared::launch(ModelSvmHw::new(machine, host), plan, 0, cpus, &vmpcks, certificates)
}

/// The platform's shared part, from its state and the world's machine, for `f`.
pub fn with_shared<R>(w: &mut World, f: impl FnOnce(&SvmShared<ModelSvmHw<'_>>, &Svsm) -> R) -> R {
    let Some(svm) = w.svm.as_mut() else { unreachable!("an svm world") };
    let Some(state) = svm.state.take() else { unreachable!("the svm state is put back after every step") };
    let shared = SvmShared { hw: ModelSvmHw::new(&mut w.machine, &mut svm.host), state };
    let r = f(&shared, &w.svsm);
    svm.state = Some(shared.state);
    r
}

/// One turn of `cpu`'s loop: run its vCPU until an exit needs the SVSM (or a kick, or
/// the guest has nothing staged), let the platform handle it, and take what runs next.
fn cycle(w: &mut World, cpu: u32) {
    let Some(svm) = w.svm.as_mut() else { return };
    let Some(mut t) = svm.running.remove(&cpu) else { return };
    let mut c = ModelSvmCpu { cpu, machine: &w.machine, host: &mut svm.host };
    let exit = run_until_shared(&mut c, &mut t);
    svm.last.insert(cpu, t.index);
    let after = with_shared(w, |s, svsm| {
        crate::heap::in_svsm(|| {
            let handled = s.after_run(svsm, &mut t, exit, cpu);
            // As on bare metal: the vCPU stays out to run on, or goes back to its slot.
            match handled {
                Ok(h) if h.then == Then::RunOn => (Some(t), Ok(h.served)),
                other => {
                    s.put_back(t);
                    (None, other.map(|h| h.served))
                }
            }
        })
    });
    let Some(svm) = w.svm.as_mut() else { return };
    match after {
        (again, Ok(served)) => {
            if let Some(t) = again {
                svm.running.insert(cpu, t);
            }
            if served.is_some() {
                svm.last_entry = served;
            }
        }
        (_, Err(end)) => {
            w.machine.record_violation(format!("cpu {cpu}'s loop ended: {end:?}"));
            if let Some(svm) = w.svm.as_mut() {
                svm.ended = Some(end);
            }
        }
    }
}

/// Every CPU without a vCPU in the guest takes its next one; every kicked CPU comes
/// back first; the vCPUs that enter the guest get what VMRUN does on entry (the flush,
/// the injected event), since the guest runs at once on bare metal. The machine's vCPU
/// list mirrors the platform's, for the guest side.
pub fn settle(w: &mut World) {
    let cpus = w.svm.as_ref().map_or(0, |s| s.cpus);
    loop {
        let kicked: Vec<u32> = w.svm.as_ref().map_or(Vec::new(), |s| s.host.kicked.iter().copied().collect());
        if kicked.is_empty() {
            break;
        }
        for cpu in kicked {
            cycle(w, cpu);
            if let Some(svm) = w.svm.as_mut() {
                svm.host.kicked.remove(&cpu);
            }
        }
    }
    for cpu in 0..cpus {
        let Some(svm) = w.svm.as_ref() else { return };
        if svm.running.contains_key(&cpu) || svm.paused {
            continue;
        }
        let (last, generation) = (svm.last.get(&cpu).copied(), svm.host.generation);
        let taken = with_shared(w, |s, _| s.take_next(cpu, last, generation));
        if let (Some(t), Some(svm)) = (taken, w.svm.as_mut()) {
            svm.running.insert(cpu, t);
        }
    }
    let Some(svm) = w.svm.as_mut() else { return };
    for t in svm.running.values_mut() {
        if !svm.host.enter(&w.machine, t.vcpu.vmcb.page_mut()) {
            w.machine.record_violation(format!("vCPU {} entered with EFER.SVME = 0", t.index));
        }
    }
    mirror(w);
}

/// Pause the guest, as a migration's last round does (and a destination before its
/// guest runs): every CPU gives its vCPU back to its slot, where the SVSM holds its whole
/// state, and takes none until [`resume`]. Nothing in a world of another platform.
pub fn pause(w: &mut World) {
    let Some(svm) = w.svm.as_mut() else { return };
    svm.paused = true;
    let running = core::mem::take(&mut svm.running);
    with_shared(w, |s, _| {
        for t in running.into_values() {
            s.put_back(t);
        }
    });
    mirror(w);
}

/// Let the paused guest run again.
pub fn resume(w: &mut World) {
    let Some(svm) = w.svm.as_mut() else { return };
    svm.paused = false;
    settle(w);
}

/// The machine's vCPU list from the platform's slots (the guest side looks vCPUs up
/// there).
fn mirror(w: &mut World) {
    let Some(svm) = w.svm.as_ref() else { return };
    let vcpus: BTreeMap<u32, ModelVcpu> = svm
        .state()
        .slots
        .vmsas()
        .map(|(i, vmsa)| {
            let apic_id = w.svsm.vcpus().get(VcpuIndex(i)).map_or(i, |v| v.apic_id);
            let running = svm.running.values().any(|t| t.index == i);
            (i, ModelVcpu { vmsa, apic_id, running, svsm_pages: vec![] })
        })
        .collect();
    w.machine.vcpus = vcpus;
}

/// The guest on vCPU `index` executes VMMCALL with `regs` (or, if the host knob says so,
/// makes another exit): its CPU's loop handles it, the changes reach every other CPU,
/// and `regs` are what the guest finds after the instruction. Returns what the kernel
/// made of the call, if it served one.
pub fn request(w: &mut World, index: VcpuIndex, regs: &mut Regs) -> Option<EntryOutcome> {
    let svm = w.svm.as_mut()?;
    // Not in the guest (stopped or gone): it executes nothing.
    svm.asid(index.0)?;
    if w.host.drop_requests > 0 {
        w.host.drop_requests -= 1;
        return None;
    }
    let code =
        w.host.exit_code.map_or(exit::VMMCALL, |c| if c == abi::hw::SVM_EXIT_VMGEXIT { exit::VMMCALL } else { c });
    svm.host.staged = Some(Staged { code, info1: 0, regs: *regs });
    svm.last_entry = None;
    let cpu = index.0 % svm.cpus.max(1);
    cycle(w, cpu);
    settle(w);
    let svm = w.svm.as_ref()?;
    if let Some(now) = svm.regs(index.0) {
        *regs = now;
    }
    svm.last_entry
}

/// The guest on vCPU `index` executes VMMCALL with the registers it has (for
/// `World::enter`: an entry without a new request).
pub fn enter(w: &mut World, index: VcpuIndex) -> EntryOutcome {
    let Some(mut regs) = w.svm.as_ref().and_then(|s| s.regs(index.0)) else { return EntryOutcome::UnknownVcpu };
    request(w, index, &mut regs).unwrap_or(EntryOutcome::UnknownVcpu)
}

/// A VMSA field as the svm platform holds it (the vCPU's VMCB), or from the page for a
/// VMSA no vCPU has.
pub fn vmsa_field(w: &World, vmsa: u64, field: VmsaField) -> u64 {
    let Some(svm) = w.svm.as_ref() else { return w.machine.vmsa_field(vmsa, field) };
    let index = svm.state().slots.vmsas().find(|(_, g)| *g == vmsa).map(|(i, _)| i);
    match index.and_then(|i| svm.with_vcpu(i, |v| v.field(field))) {
        Some(value) => value,
        None => w.machine.vmsa_field(vmsa, field),
    }
}
