//! The `snp` platform on the model: the hardware seam (`SnpHw`) over the machine's RMP
//! and memory, and a software host that answers the GHCB MSR protocol and GHCB events
//! the way KVM does, with knobs to misbehave. With it, `bulwark-snp`'s `SnpPlatform` runs
//! the kernel in the model's tests, the conformance suite included.
//!
//! The shared pages sit at the start of the SVSM region (`SHARED_BASE`), which the
//! kernel never hands out: the boot CPU's GHCB, the guest-request pages, then one GHCB
//! for each further CPU (`MODEL_CPUS` in all). Each CPU has its own GHCB MSR and
//! registration, as each host vCPU does. The host numbers vCPUs it learns of through
//! AP_CREATION with the smallest free index, as the kernel's vCPU registry does.
//!
//! At every exit the host checks that the SVSM holds none of the platform's locks
//! (`watch`): they are leaves, never held across a host exit. And a test can make
//! another CPU's work happen while the host handles one CPU's event (`meanwhile`), as
//! a real host runs other vCPUs meanwhile.

use crate::machine::{Machine, ModelVcpu};
use abi::ghcb::{exit, ioio, msr, offset};
use abi::hw::rmpadjust::PERM_ALL;
use abi::vmsa::VmsaField;
use kernel::addr::{PageAddr, PageSize};
use kernel::platform::{GuestRequestError, HwError, Platform, PvalidateEffect};
use rmp::Size;
use snp::SnpShared;
use snp::ghcb::Ghcb;
use snp::hw::{CERT_PAGES, Fault, SHARED_PAGES, Shared, SnpHw};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where the model puts the SVSM's shared pages by default: GHCB, request, response,
/// certificates.
pub const SHARED_BASE: u64 = crate::world::SVSM_BASE;

/// CPUs the model's snp platform has, each with its own GHCB page.
pub const MODEL_CPUS: usize = 16;

/// Work another CPU does while the host handles one CPU's GHCB event with `exit_code`
/// (once, at the first such event). It runs on the model's one thread, inside the first
/// CPU's exit: a lock that CPU still held would stop it (for good, with a spin lock), so
/// a test that installs it guards with a timeout.
pub struct Meanwhile {
    pub exit_code: u64,
    pub run: Box<OtherCpu>,
}

/// The other CPU's work, given the machine and the host while the first CPU's exit waits.
pub type OtherCpu = dyn FnMut(&mut Machine, &mut SnpHost) + Send;

impl std::fmt::Debug for Meanwhile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meanwhile").field("exit_code", &self.exit_code).finish_non_exhaustive()
    }
}

/// The host's side of the snp platform.
#[derive(Debug)]
pub struct SnpHost {
    /// Each CPU's GHCB MSR.
    pub msrs: BTreeMap<usize, u64>,
    /// Each CPU's registered GHCB.
    pub registered: BTreeMap<usize, u64>,
    /// The GHCB protocol range the host speaks.
    pub protocol: (u16, u16),
    pub features: u64,
    /// Fail page-state changes with this error code.
    pub psc_error: Option<u64>,
    /// Refuse AP_CREATION events.
    pub refuse_ap_creation: bool,
    /// The SVSM has no memory for a new CPU's own state (`SnpHw::prepare_cpu`).
    pub refuse_cpu_state: bool,
    /// Run the SVSM's own VMSA a vCPU's creation hands over (it becomes busy) and answer
    /// that AP_CREATE with "refused".
    pub run_refused_svsm_vmsas: bool,
    /// Refuse string port I/O (as a host that only does single ports would).
    pub refuse_string_io: bool,
    /// Bytes the SVSM wrote to the serial port (0x3F8) through IOIO events.
    pub console: Vec<u8>,
    /// Serial IOIO events, string or single.
    pub console_exits: u64,
    /// The termination request (reason set, code), once made.
    pub terminated: Option<(u8, u8)>,
    /// RUN_VMPL events: how many times the SVSM handed a CPU back to the guest.
    pub resumes: u64,
    /// AP_CREATION events: (request, APIC ID, VMSA gpa, VMPL of that VMSA).
    pub ap_events: Vec<(u64, u32, u64, u8)>,
    /// GHCB events by exit code.
    pub events: Vec<u64>,
    /// What an RDTSC answers (incremented per read).
    pub tsc: u64,
    /// Where the SVSM's shared pages are (GHCB, request, response, certificates).
    pub shared_base: u64,
    /// VMSAs a CPU is running right now (the hardware refuses to unflag them: FAIL_INUSE),
    /// for VMSAs the model's vCPU table does not hold, such as the SVSM's own.
    pub busy_vmsas: std::collections::BTreeSet<u64>,
    /// The platform's shared state, once it started: no lock of it may be held at an exit.
    pub watch: Option<Arc<SnpShared>>,
    pub meanwhile: Option<Meanwhile>,
    /// The device whose registers MMIO events reach (the state disk), if the host has one.
    pub mmio: Option<HostDevice>,
}

/// A device's registers on the host's side of MMIO events.
pub struct HostDevice(pub Box<dyn blk::pci::Registers + Send>);

impl std::fmt::Debug for HostDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostDevice")
    }
}

impl SnpHost {
    /// The GHCB MSR of `cpu`.
    pub fn msr(&self, cpu: usize) -> u64 {
        self.msrs.get(&cpu).copied().unwrap_or(0)
    }

    /// The GHCB `cpu` registered, if it did.
    pub fn registered_ghcb(&self, cpu: usize) -> Option<u64> {
        self.registered.get(&cpu).copied()
    }
}

impl Default for SnpHost {
    fn default() -> Self {
        Self {
            msrs: BTreeMap::new(),
            registered: BTreeMap::new(),
            protocol: (1, 2),
            features: msr::HV_FEATURE_SNP | msr::HV_FEATURE_SNP_AP_CREATION,
            psc_error: None,
            refuse_ap_creation: false,
            refuse_cpu_state: false,
            run_refused_svsm_vmsas: false,
            refuse_string_io: false,
            console: Vec::new(),
            console_exits: 0,
            terminated: None,
            resumes: 0,
            ap_events: Vec::new(),
            events: Vec::new(),
            tsc: 1_000_000,
            shared_base: SHARED_BASE,
            busy_vmsas: Default::default(),
            watch: None,
            meanwhile: None,
            mmio: None,
        }
    }
}

/// The seam for one CPU's entry: the machine and its host, borrowed.
#[derive(Debug)]
pub struct ModelSnpHw<'a> {
    pub machine: &'a mut Machine,
    pub host: &'a mut SnpHost,
    /// The CPU (`0..MODEL_CPUS`): its GHCB page and MSR.
    pub cpu: usize,
}

impl<'a> ModelSnpHw<'a> {
    /// The boot CPU's seam.
    pub fn new(machine: &'a mut Machine, host: &'a mut SnpHost) -> Self {
        Self { machine, host, cpu: 0 }
    }

    /// CPU `cpu`'s seam (the last CPU for any index past `MODEL_CPUS`).
    pub fn on_cpu(machine: &'a mut Machine, host: &'a mut SnpHost, cpu: usize) -> Self {
        Self { machine, host, cpu: cpu.min(MODEL_CPUS - 1) }
    }
}

fn shared_gpa(base: u64, cpu: usize, page: Shared) -> u64 {
    let index = match page {
        Shared::Ghcb if cpu == 0 => 0,
        Shared::Ghcb => SHARED_PAGES.len() + cpu.min(MODEL_CPUS - 1) - 1,
        Shared::Request => 1,
        Shared::Response => 2,
        Shared::Certs(i) => 3 + i.min(CERT_PAGES - 1),
    };
    base + index as u64 * 4096
}

impl ModelSnpHw<'_> {
    /// Host view of a page the SVSM shares: the bytes if the page really is shared; a
    /// private page would show the host only ciphertext, recorded as a violation.
    fn host_page(&self, gpa: u64) -> Option<[u8; 4096]> {
        if self.machine.rmp.entry(gpa >> 12).is_some_and(|e| e.assigned) {
            self.machine.record_violation(format!("host reads private page {gpa:#x} as shared"));
            return None;
        }
        let mut page = [0u8; 4096];
        self.machine.raw_read(gpa, &mut page);
        Some(page)
    }

    fn msr_protocol(&mut self) {
        let request = self.host.msr(self.cpu);
        let data = request >> 12;
        let answer = match request & msr::INFO_MASK {
            msr::SEV_INFO_REQ => {
                let (min, max) = self.host.protocol;
                u64::from(max) << 48 | u64::from(min) << 32 | 51 << 24 | msr::SEV_INFO_RESP
            }
            msr::HV_FEATURES_REQ => self.host.features << 12 | msr::HV_FEATURES_RESP,
            msr::REGISTER_GPA_REQ => {
                self.host.registered.insert(self.cpu, data << 12);
                data << 12 | msr::REGISTER_GPA_RESP
            }
            msr::PSC_REQ => {
                let pfn = data & ((1 << 40) - 1);
                let op = request >> 52 & 0xF;
                match (self.host.psc_error, op) {
                    (Some(e), _) => e << 32 | msr::PSC_RESP,
                    (None, msr::PSC_SHARED) => {
                        self.machine.rmp.host_unassign(pfn, 1);
                        msr::PSC_RESP
                    }
                    (None, msr::PSC_PRIVATE) => {
                        self.machine.rmp.host_assign(pfn, 1);
                        msr::PSC_RESP
                    }
                    (None, _) => 1 << 32 | msr::PSC_RESP,
                }
            }
            msr::TERM_REQ => {
                self.host.terminated = Some(((request >> 12 & 0xF) as u8, (request >> 16 & 0xFF) as u8));
                request
            }
            _ => 0,
        };
        self.host.msrs.insert(self.cpu, answer);
    }

    fn ghcb_event(&mut self, gpa: u64) {
        let Some(page) = self.host_page(gpa) else { return };
        let mut g = Ghcb::from_page(page);
        let code = g.get(offset::SW_EXIT_CODE).unwrap_or(0);
        let info1 = g.get(offset::SW_EXIT_INFO_1).unwrap_or(0);
        let info2 = g.get(offset::SW_EXIT_INFO_2).unwrap_or(0);
        let rax = g.get(offset::RAX);
        let input = g.clone();
        self.host.events.push(code);
        g.clear_valid();
        let mut result = 0;
        match code {
            exit::RUN_VMPL => self.host.resumes += 1,
            exit::AP_CREATION => result = self.ap_creation(info1, info2),
            exit::GUEST_REQUEST | exit::EXT_GUEST_REQUEST => {
                let status = self.guest_request(info1, info2, code == exit::EXT_GUEST_REQUEST, &input, &mut g);
                g.set(offset::SW_EXIT_INFO_2, status);
            }
            exit::IOIO if info1 & ioio::STRING != 0 => result = self.string_io(gpa, info1, info2, &input),
            exit::IOIO => {
                let port = info1 >> ioio::PORT_SHIFT & 0xFFFF;
                if info1 & ioio::IN != 0 {
                    g.set(offset::RAX, 0);
                } else if port == 0x3F8 && info1 & ioio::SIZE8 != 0 {
                    self.host.console.push(rax.unwrap_or(0) as u8);
                    self.host.console_exits += 1;
                } else if port == 0x3F8 {
                    // A wider OUT would also hit the UART's next register.
                    self.machine.record_violation(format!("IOIO to the UART with exit info {info1:#x}"));
                }
            }
            exit::MMIO_READ | exit::MMIO_WRITE => result = self.mmio(gpa, code, info1, info2, &input, &mut g),
            exit::RDTSC | exit::RDTSCP => {
                self.host.tsc += 1000;
                g.set(offset::RAX, self.host.tsc & 0xFFFF_FFFF);
                g.set(offset::RDX, self.host.tsc >> 32);
                g.set(offset::RCX, 0);
            }
            exit::MSR => {
                if info1 == 0 {
                    g.set(offset::RAX, 0x1234);
                    g.set(offset::RDX, 0);
                }
            }
            _ => result = 1,
        }
        g.set(offset::SW_EXIT_INFO_1, result);
        // The event is done; the CPU has not resumed yet.
        self.meanwhile(code);
        self.machine.raw_write(gpa, g.page());
    }

    /// Run the other CPU's work a test set for this exit code (once: taken out first, so
    /// the work's own exits, nested in this one, do not run it again).
    fn meanwhile(&mut self, code: u64) {
        if let Some(mut work) = self.host.meanwhile.take_if(|m| m.exit_code == code) {
            (work.run)(self.machine, self.host);
        }
    }

    /// REP OUTSB to the serial port from the GHCB's shared buffer (what KVM's
    /// `sev_es_string_io` takes: count in SW_EXITINFO2, the data at SW_SCRATCH): 0 done,
    /// 1 refused.
    fn string_io(&mut self, ghcb: u64, info1: u64, count: u64, input: &Ghcb) -> u64 {
        let port = info1 >> ioio::PORT_SHIFT & 0xFFFF;
        if self.host.refuse_string_io || info1 & ioio::IN != 0 || port != 0x3F8 {
            return 1;
        }
        let buffer = ghcb + offset::SHARED_BUFFER as u64;
        let wanted = info1 & (ioio::SIZE8 | ioio::SIZE16 | ioio::SIZE32 | ioio::REP) == ioio::SIZE8 | ioio::REP;
        let fits = usize::try_from(count).is_ok_and(|n| n <= offset::SHARED_BUFFER_LEN);
        if !wanted || !fits || input.get(offset::SW_SCRATCH) != Some(buffer) {
            self.machine.record_violation(format!(
                "string IOIO to the UART with exit info {info1:#x}, count {count}, scratch {:?}",
                input.get(offset::SW_SCRATCH)
            ));
            return 1;
        }
        let data = &input.page()[offset::SHARED_BUFFER..offset::SHARED_BUFFER + count as usize];
        self.host.console.extend_from_slice(data);
        self.host.console_exits += 1;
        0
    }

    /// An MMIO read or write of the host's device (`SnpHost::mmio`), its data in the GHCB's
    /// shared buffer as KVM takes it (`sev_es_mmio`): 0 done, 1 refused (no device, a width
    /// the model's devices do not have, or a buffer elsewhere).
    fn mmio(&mut self, ghcb: u64, code: u64, addr: u64, len: u64, input: &Ghcb, g: &mut Ghcb) -> u64 {
        use blk::pci::Width;
        let buffer = ghcb + offset::SHARED_BUFFER as u64;
        if input.get(offset::SW_SCRATCH) != Some(buffer) {
            self.machine.record_violation(format!("MMIO with scratch {:?}", input.get(offset::SW_SCRATCH)));
            return 1;
        }
        let width = match len {
            1 => Width::Byte,
            2 => Width::Word,
            4 => Width::Dword,
            _ => return 1,
        };
        let Some(device) = &self.host.mmio else { return 1 };
        let data = &mut g.shared_buffer_mut()[..len as usize];
        if code == exit::MMIO_READ {
            let value = device.0.read(addr, width).to_le_bytes();
            data.copy_from_slice(&value[..len as usize]);
        } else {
            let mut value = [0u8; 4];
            value[..len as usize].copy_from_slice(&input.page()[offset::SHARED_BUFFER..][..len as usize]);
            device.0.write(addr, width, u32::from_le_bytes(value));
        }
        0
    }

    /// AP_CREATION: 0 accepted, 1 refused.
    fn ap_creation(&mut self, info1: u64, vmsa: u64) -> u64 {
        let (request, vmpl, apic_id) = (info1 & 0xFFFF, (info1 >> 16 & 0xF) as u8, (info1 >> 32) as u32);
        // A real host cannot read the encrypted VMSA: it goes by the VMPL the guest names.
        // The model can, and checks the two agree.
        let page_vmpl = self.machine.vmsa_field(vmsa, VmsaField::Vmpl) as u8;
        if request == exit::AP_CREATE && page_vmpl != vmpl {
            self.machine.record_violation(format!(
                "AP_CREATE names VMPL{vmpl} for the VMSA at {vmsa:#x}, which is a VMPL{page_vmpl} VMSA"
            ));
        }
        self.host.ap_events.push((request, apic_id, vmsa, vmpl));
        if self.host.refuse_ap_creation {
            return 1;
        }
        if self.host.run_refused_svsm_vmsas && request == exit::AP_CREATE && vmpl == 0 {
            // A hostile host runs the SVSM's VMSA and answers "refused" all the same.
            self.host.busy_vmsas.insert(vmsa);
            return 1;
        }
        let is_vmsa = self.machine.rmp.entry(vmsa >> 12).is_some_and(|e| e.vmsa);
        match request {
            exit::AP_CREATE if !is_vmsa => {
                self.machine.record_violation(format!("AP_CREATE of {vmsa:#x}, which is not a VMSA page"));
                1
            }
            // The SVSM's own VMSA: the host would run it at VMPL0; the model has no CPU
            // to run it on.
            exit::AP_CREATE if vmpl == 0 => 0,
            exit::AP_CREATE => {
                let vcpus = &mut self.machine.vcpus;
                if !vcpus.values().any(|v| v.vmsa == vmsa) {
                    let index = (0u32..).find(|i| !vcpus.contains_key(i)).unwrap_or(u32::MAX);
                    vcpus.insert(index, ModelVcpu { vmsa, apic_id, running: false, svsm_pages: vec![] });
                }
                0
            }
            exit::AP_DESTROY => {
                self.machine.vcpus.retain(|_, v| v.vmsa != vmsa);
                0
            }
            _ => 1,
        }
    }

    /// A guest request through the machine's PSP; returns SW_EXITINFO2.
    fn guest_request(&mut self, req_gpa: u64, resp_gpa: u64, extended: bool, input: &Ghcb, g: &mut Ghcb) -> u64 {
        let Some(request) = self.host_page(req_gpa) else { return 1 << 32 };
        if extended {
            let certs = self.machine.certificates.clone();
            let (certs_gpa, pages) = (input.get(offset::RAX).unwrap_or(0), input.get(offset::RBX).unwrap_or(0));
            let need = certs.len().div_ceil(4096) as u64;
            if need > pages {
                g.set(offset::RBX, need);
                return 1 << 32;
            }
            for (i, chunk) in certs.chunks(4096).enumerate() {
                if self.host_page(certs_gpa + i as u64 * 4096).is_some() {
                    self.machine.raw_write(certs_gpa + i as u64 * 4096, chunk);
                }
            }
        }
        let mut response = [0u8; 4096];
        match Platform::guest_request(self.machine, &request, &mut response) {
            Ok(()) => {
                if self.host_page(resp_gpa).is_some() {
                    self.machine.raw_write(resp_gpa, &response);
                }
                0
            }
            Err(GuestRequestError::Firmware(code)) => u64::from(code),
            Err(GuestRequestError::Host(code)) => u64::from(code) << 32,
            Err(GuestRequestError::Unavailable) => 2 << 32,
        }
    }
}

impl SnpHw for ModelSnpHw<'_> {
    fn pvalidate(&mut self, gpa: u64, huge: bool, validate: bool) -> Result<(u32, bool), Fault> {
        let size = if huge { Size::Huge } else { Size::Small };
        let rmp = &mut self.machine.rmp;
        match crate::heap::as_host(|| rmp.pvalidate(gpa, size, validate)) {
            Ok(PvalidateEffect::Changed) => Ok((0, false)),
            Ok(PvalidateEffect::Unchanged) => Ok((0, true)),
            Err(HwError::Rc(code)) => Ok((code, false)),
            Err(HwError::Fault | HwError::NoMemory) => Err(Fault),
        }
    }

    fn rmpadjust(&mut self, gpa: u64, huge: bool, attrs: u64) -> Result<u32, Fault> {
        let size = if huge { PageSize::Size2M } else { PageSize::Size4K };
        let Some(page) = PageAddr::new(gpa) else { return Ok(abi::hw::rc::FAIL_INPUT) };
        let (vmpl, perms, vmsa) = ((attrs & 0xFF) as u8, (attrs >> 8 & 0xFF) as u8 & PERM_ALL, attrs & (1 << 16) != 0);
        if !vmsa && self.host.busy_vmsas.contains(&gpa) {
            return Ok(abi::hw::rc::FAIL_INUSE);
        }
        match Platform::rmpadjust(&mut *self.machine, page, size, vmpl, perms, vmsa) {
            Ok(()) => Ok(0),
            Err(HwError::Rc(code)) => Ok(code),
            Err(HwError::Fault | HwError::NoMemory) => Err(Fault),
        }
    }

    fn rmpquery(&self, gpa: u64) -> Result<(u32, u64), Fault> {
        let pfn = gpa >> 12;
        match self.machine.rmp.entry(pfn) {
            Some(e) if e.assigned => {
                let perms = (1..=3).map(|v| u64::from(self.machine.vmpl_perms(pfn, v)) << (8 * (v - 1)));
                Ok((0, perms.fold(0, |a, b| a | b)))
            }
            _ => Err(Fault),
        }
    }

    fn flush_tlb_all(&mut self) {
        self.machine.flush_tlbs();
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Fault> {
        Platform::read(&*self.machine, kernel::addr::Gpa(gpa), buf).map_err(|_| Fault)
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), Fault> {
        crate::heap::as_host(|| self.machine.check_vmsa_write(gpa, data.len()));
        Platform::write(&mut *self.machine, kernel::addr::Gpa(gpa), data).map_err(|_| Fault)
    }

    fn shared_gpa(&self, page: Shared) -> u64 {
        shared_gpa(self.host.shared_base, self.cpu, page)
    }

    fn shared_read(&self, page: Shared, offset: usize, buf: &mut [u8]) {
        self.machine.raw_read(self.shared_gpa(page) + offset as u64, buf);
    }

    fn shared_write(&mut self, page: Shared, offset: usize, data: &[u8]) {
        let gpa = self.shared_gpa(page) + offset as u64;
        crate::heap::as_host(|| self.machine.raw_write(gpa, data));
    }

    fn read_ghcb_msr(&self) -> u64 {
        self.host.msr(self.cpu)
    }

    fn write_ghcb_msr(&mut self, value: u64) {
        self.host.msrs.insert(self.cpu, value);
    }

    fn heap_usage(&self) -> Option<kernel::platform::HeapUsage> {
        crate::heap::usage()
    }

    fn prepare_cpu(&mut self, _index: u32) -> bool {
        !self.host.refuse_cpu_state
    }

    fn halt(&mut self) -> ! {
        crate::heap::as_host(|| panic!("the SVSM halted its CPU after a termination request"))
    }

    fn vmgexit(&mut self) {
        // The host runs: its memory is not the SVSM's heap.
        crate::heap::as_host(|| self.host_runs());
    }
}

impl ModelSnpHw<'_> {
    fn host_runs(&mut self) {
        if let Some(shared) = &self.host.watch {
            for lock in shared.locks_held() {
                self.machine.record_violation(format!("CPU {} exits to the host holding the {lock} lock", self.cpu));
            }
        }
        let value = self.host.msr(self.cpu);
        if value & msr::INFO_MASK == 0 && Some(value) == self.host.registered_ghcb(self.cpu) {
            self.ghcb_event(value);
        } else if value & msr::INFO_MASK == 0 {
            self.machine.record_violation(format!("VMGEXIT with unregistered GHCB {value:#x}"));
        } else {
            self.msr_protocol();
        }
    }
}
