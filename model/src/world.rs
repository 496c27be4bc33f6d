//! A launched confidential VM on the model: the machine, the Bulwark kernel serving it,
//! and guest vCPUs that call the SVSM through the real calling convention.
//!
//! Launch layout (guest-physical), all on 4 KiB RMP entries below `huge_from`:
//!
//! | range | what |
//! |---|---|
//! | `0 .. 4 MiB` | guest memory validated at launch (firmware, scratch) |
//! | `0x10_0000` | secrets page (guest may read) |
//! | `0x10_1000` | startup calling area |
//! | `0x10_2000` | startup VMSA (VMPL1) |
//! | `4 MiB .. 8 MiB` | guest RAM, not validated |
//! | `8 MiB .. 8 MiB + svsm_size` | the SVSM (VMPL0 only) |
//! | above | guest RAM, not validated; 2 MiB RMP entries from `huge_from` |

use crate::machine::Machine;
use crate::snp_cpus::SnpCpus;
use crate::snp_host::{ModelSnpHw, SnpHost};
use abi::hw::rmpadjust::{PERM_ALL, PERM_READ, PERM_WRITE};
use abi::hw::{EFER_SVME, sev_features};
use abi::vmsa::VmsaField;
use guest::Client;
use guest::client::{GuestFault, Regs, Transport};
use kernel::addr::{Gpa, PageAddr, PageRange};
use kernel::platform::Level;
use kernel::request::EntryOutcome;
use kernel::vcpu::VcpuIndex;
use kernel::{Svsm, SvsmConfig};
use snp::{SnpConfig, SnpPlatform};
use std::sync::Arc;

pub const MIB: u64 = 1 << 20;
pub const SECRETS_GPA: u64 = 0x10_0000;
pub const STARTUP_CA_GPA: u64 = 0x10_1000;
pub const STARTUP_VMSA_GPA: u64 = 0x10_2000;
/// End of the memory validated at launch.
pub const LOW_VALIDATED_END: u64 = 4 * MIB;
pub const SVSM_BASE: u64 = 8 * MIB;
/// The guest runs at VMPL1.
pub const GUEST_VMPL: u8 = 1;

#[derive(Clone, Debug)]
pub struct WorldConfig {
    pub ram_bytes: u64,
    /// RAM from here up is assigned as 2 MiB RMP pages.
    pub huge_from: u64,
    pub svsm_size: u64,
    /// Pages at the end of the SVSM region left free for its page pool.
    pub pool_reserve_pages: u64,
    pub max_vcpus: usize,
    pub pages_per_call: u64,
    /// vTOM support the platform offers (None: unsupported).
    pub vtom: Option<kernel::platform::VtomLimits>,
    pub log_level: Level,
    /// Install the vTPM (libtpms) so protocol 2 is served.
    pub vtpm: bool,
    /// Run the vTPM as a service process behind a channel (`user_host`), as the SVSM runs
    /// it at CPL 3, instead of calling libtpms from the kernel.
    pub vtpm_in_process: bool,
    /// Which platform serves the kernel.
    pub platform: PlatformKind,
}

/// The platform between the kernel and the machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PlatformKind {
    /// The machine itself implements `Platform` (the reference semantics).
    #[default]
    Model,
    /// `bulwark-snp`'s `SnpPlatform` over the machine's RMP and a software host
    /// (`snp_host`): GHCB protocol, AP creation, shared pages, VMSAs in memory.
    Snp,
    /// `bulwark-svm`'s `SvmPlatform` over the machine's memory (`svm_host`): VMCBs, a
    /// software VMRUN, nested paging recorded page by page, the svm launch.
    Svm,
}

/// The snp platform's parts that outlive an entry: the host and the CPUs' shared
/// state (each entry makes its CPU's handle, `snp_cpus`).
#[derive(Debug)]
pub struct SnpWorld {
    pub host: SnpHost,
    pub cpus: SnpCpus,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            ram_bytes: 256 * MIB,
            huge_from: 64 * MIB,
            svsm_size: 4 * MIB,
            pool_reserve_pages: 2 * kernel::svsm::VCPU_CONTEXT_PAGES as u64,
            max_vcpus: 8,
            pages_per_call: 4096,
            vtom: Some(kernel::platform::VtomLimits { align_log2: 21, min: 2 * MIB, max: 1 << 46 }),
            log_level: Level::Info,
            vtpm: true,
            vtpm_in_process: false,
            platform: PlatformKind::Model,
        }
    }
}

/// What the host does with the guest's next requests.
#[derive(Clone, Debug, Default)]
pub struct Host {
    /// Ignore this many SVSM requests (the call never runs).
    pub drop_requests: u32,
    /// Enter the SVSM with this exit code instead of VMGEXIT's.
    pub exit_code: Option<u64>,
}

#[derive(Debug)]
pub struct World {
    pub machine: Machine,
    pub svsm: Svsm,
    pub config: WorldConfig,
    pub host: Host,
    /// Set when `config.platform` is `Snp`.
    pub snp: Option<SnpWorld>,
    /// Set when `config.platform` is `Svm`.
    pub svm: Option<crate::svm_host::SvmWorld>,
}

fn range(start: u64, bytes: u64) -> PageRange {
    PageRange::new(PageAddr::from_pfn(start >> 12), bytes.div_ceil(4096))
        .unwrap_or_else(|| unreachable!("static layout"))
}

impl World {
    pub fn new(config: WorldConfig) -> Self {
        if config.platform == PlatformKind::Svm {
            return crate::svm_host::new_world(config);
        }
        let mut m = Machine::new(config.ram_bytes, config.huge_from);
        m.vtom = config.vtom;
        m.log_level = config.log_level;
        // The launch: validate low memory and the SVSM, set permissions, build the VMSA.
        for pfn in 0..LOW_VALIDATED_END >> 12 {
            let e = m.rmp.entry_mut(pfn).unwrap_or_else(|| unreachable!("RAM covers low memory"));
            e.validated = true;
            e.perms[usize::from(GUEST_VMPL)] = PERM_ALL;
        }
        for pfn in SVSM_BASE >> 12..(SVSM_BASE + config.svsm_size) >> 12 {
            let e = m.rmp.entry_mut(pfn).unwrap_or_else(|| unreachable!("RAM covers the SVSM"));
            e.validated = true;
        }
        if let Some(e) = m.rmp.entry_mut(SECRETS_GPA >> 12) {
            e.perms[usize::from(GUEST_VMPL)] = PERM_READ;
        }
        let snp = config.platform == PlatformKind::Snp;
        if !snp && let Some(e) = m.rmp.entry_mut(STARTUP_VMSA_GPA >> 12) {
            e.perms[usize::from(GUEST_VMPL)] = 0;
            e.vmsa = true;
        }
        // Secrets page content from the PSP: all four VMPCKs are set.
        for (i, off) in [0x20u64, 0x40, 0x60, 0x80].iter().enumerate() {
            m.raw_write(SECRETS_GPA + off, &[0xA0 + i as u8; 32]);
        }
        // The PSP keeps the same VMPCK0 (it is the firmware's key for this guest).
        m.psp = Some(crate::psp_model::launch([0xA0; 32]));
        m.certificates = crate::psp_model::certificate_table();
        if !snp {
            m.set_vmsa_field(STARTUP_VMSA_GPA, VmsaField::Vmpl, u64::from(GUEST_VMPL));
            m.set_vmsa_field(STARTUP_VMSA_GPA, VmsaField::Efer, EFER_SVME | 0x500);
            m.set_vmsa_field(STARTUP_VMSA_GPA, VmsaField::SevFeatures, sev_features::SNP_ACTIVE);
            m.vcpus.insert(
                0,
                crate::machine::ModelVcpu { vmsa: STARTUP_VMSA_GPA, apic_id: 0, running: false, svsm_pages: vec![] },
            );
        }

        let svsm_pages = config.svsm_size / 4096;
        let reserve_first = (SVSM_BASE >> 12) + svsm_pages - config.pool_reserve_pages.min(svsm_pages);
        let svsm_config = SvsmConfig {
            ram: vec![range(0, config.ram_bytes)],
            svsm_region: range(SVSM_BASE, config.svsm_size),
            pool_reserve: (reserve_first..(SVSM_BASE >> 12) + svsm_pages).map(PageAddr::from_pfn).collect(),
            prevalidated: vec![range(0, LOW_VALIDATED_END)],
            startup_vmsa: PageAddr::from_pfn(STARTUP_VMSA_GPA >> 12),
            startup_calling_area: Gpa(STARTUP_CA_GPA),
            startup_apic_id: 0,
            max_vcpus: config.max_vcpus,
            pages_per_call: config.pages_per_call,
            secrets_page: Some(PageAddr::from_pfn(SECRETS_GPA >> 12)),
        };
        let mut snp_world = None;
        let made = if snp {
            let mut host = SnpHost::default();
            let hw = ModelSnpHw::new(&mut m, &mut host);
            // The model's CPU has RMPQUERY.
            let snp_config = SnpConfig {
                console_port: Some(0x3F8),
                rmpquery: true,
                log_level: config.log_level,
                ..SnpConfig::new(GUEST_VMPL, sev_features::SNP_ACTIVE)
            };
            let mut p = match SnpPlatform::start(hw, snp_config) {
                Ok(p) => p,
                Err(e) => panic!("the model's host offers what the snp platform needs: {e:?}"),
            };
            // As on hardware, the SVSM builds the guest's first vCPU itself.
            if let Err(e) = p.launch_guest_vcpu(svsm_config.startup_vmsa, 0, 0x00A0_0F11) {
                panic!("the startup VMSA could not be made: {e:?}");
            }
            let made = crate::heap::in_svsm(|| {
                Svsm::new(svsm_config, &mut p).inspect(|svsm| {
                    svsm.check_psp_channel(&mut p);
                })
            });
            let shared = p.shared().clone();
            host.watch = Some(shared.clone());
            snp_world = Some(SnpWorld { host, cpus: SnpCpus::new(shared) });
            made
        } else {
            crate::heap::in_svsm(|| Svsm::new(svsm_config, &mut m))
        };
        let mut svsm = match made {
            Ok(s) => s,
            Err(e) => unreachable!("the model's launch layout is valid: {e:?}"),
        };
        if config.vtpm {
            let vtpm =
                if config.vtpm_in_process { crate::vtpm_model::vtpm_in_process() } else { crate::vtpm_model::vtpm() };
            match vtpm {
                Ok(v) => crate::heap::in_svsm(|| svsm.install_vtpm(v)),
                Err(e) => panic!("the model's vTPM did not start: {e}"),
            }
        }
        Self { machine: m, svsm, config, host: Host::default(), snp: snp_world, svm: None }
    }

    /// The host enters the SVSM for `vcpu`. On the snp platform the SVSM then hands the
    /// CPU back with RUN_VMPL, as its request loop does.
    pub fn enter(&mut self, vcpu: VcpuIndex) -> EntryOutcome {
        if self.svm.is_some() {
            return crate::svm_host::enter(self, vcpu);
        }
        let Some(snp) = self.snp.as_mut() else {
            return crate::heap::in_svsm(|| self.svsm.handle_entry(&mut self.machine, vcpu));
        };
        crate::snp_cpus::enter(&mut self.machine, &mut snp.host, &mut snp.cpus, &self.svsm, vcpu)
    }

    /// A world around a launch made elsewhere on the snp platform (an IGVM image loaded
    /// into `machine`, the kernel started by `snp::launch`): guests call it as in any
    /// other world. `config` only records the platform.
    pub fn adopt_snp(machine: Machine, svsm: Svsm, mut host: SnpHost, shared: Arc<snp::SnpShared>) -> Self {
        let config = WorldConfig { platform: PlatformKind::Snp, ..WorldConfig::default() };
        host.watch = Some(shared.clone());
        Self {
            machine,
            svsm,
            config,
            host: Host::default(),
            snp: Some(SnpWorld { host, cpus: SnpCpus::new(shared) }),
            svm: None,
        }
    }

    /// Tell the snp platform where a new CPU enters the SVSM, so each new vCPU gets its
    /// own VMPL0 VMSA (the bare-metal boot sets this).
    pub fn set_snp_entry(&mut self, entry: snp::vmsa::SvsmEntry) {
        if let Some(snp) = &self.snp {
            snp.cpus.shared.set_svsm_entry(entry);
        }
    }

    /// The snp platform's shared state (log ring, vCPU records), if this world runs it.
    pub fn snp_shared(&self) -> Option<&Arc<snp::SnpShared>> {
        self.snp.as_ref().map(|s| &s.cpus.shared)
    }

    /// The guest side of vCPU `index`.
    pub fn vcpu(&mut self, index: VcpuIndex) -> GuestVcpu<'_> {
        let vmpl = self
            .machine
            .vcpus
            .get(&index.0)
            .map_or(GUEST_VMPL, |v| self.machine.vmsa_field(v.vmsa, VmsaField::Vmpl) as u8);
        GuestVcpu { world: self, index, vmpl }
    }

    /// A client on vCPU `index`, using calling area `ca`.
    pub fn client_at(&mut self, index: VcpuIndex, ca: u64) -> Client<GuestVcpu<'_>> {
        Client::new(self.vcpu(index), ca)
    }

    /// A client on the startup vCPU with the launch calling area.
    pub fn client(&mut self) -> Client<GuestVcpu<'_>> {
        self.client_at(VcpuIndex::STARTUP, STARTUP_CA_GPA)
    }

    /// The machine's vCPU index for an APIC ID.
    pub fn vcpu_by_apic_id(&self, apic_id: u32) -> Option<VcpuIndex> {
        self.machine.vcpus.iter().find(|(_, v)| v.apic_id == apic_id).map(|(i, _)| VcpuIndex(*i))
    }
}

/// A guest vCPU: memory accesses with its VMPL's permissions, and VMGEXIT.
#[derive(Debug)]
pub struct GuestVcpu<'w> {
    pub world: &'w mut World,
    pub index: VcpuIndex,
    pub vmpl: u8,
}

impl GuestVcpu<'_> {
    /// The access goes through this vCPU's TLB (`Machine::guest_access`): stale
    /// permissions stay usable until the SVSM flushes.
    fn check(&self, gpa: u64, len: usize, need: u8) -> Result<(), GuestFault> {
        if let Some(svm) = &self.world.svm {
            return svm.guest_access(self.index.0, gpa, len, need).map_err(|gpa| GuestFault { gpa });
        }
        self.world.machine.guest_access(self.index.0, self.vmpl, gpa, len, need).map_err(|gpa| GuestFault { gpa })
    }
}

impl Transport for GuestVcpu<'_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestFault> {
        self.check(gpa, buf.len(), PERM_READ)?;
        self.world.machine.raw_read(gpa, buf);
        Ok(())
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestFault> {
        self.check(gpa, data.len(), PERM_WRITE)?;
        self.world.machine.raw_write(gpa, data);
        Ok(())
    }

    fn exchange_u8(&mut self, gpa: u64, value: u8) -> Result<u8, GuestFault> {
        self.check(gpa, 1, PERM_READ | PERM_WRITE)?;
        let mut old = [0u8];
        self.world.machine.raw_read(gpa, &mut old);
        self.world.machine.raw_write(gpa, &[value]);
        Ok(old[0])
    }

    fn request_svsm(&mut self, regs: &mut Regs) {
        if self.world.svm.is_some() {
            crate::svm_host::request(self.world, self.index, regs);
            return;
        }
        let Some(vmsa) = self.world.machine.vcpus.get(&self.index.0).map(|v| v.vmsa) else { return };
        let exit_code = self.world.host.exit_code.unwrap_or(abi::hw::SVM_EXIT_VMGEXIT);
        vmgexit_saves(&mut self.world.machine, vmsa, regs, exit_code);
        if self.world.host.drop_requests > 0 {
            self.world.host.drop_requests -= 1;
        } else {
            self.world.enter(self.index);
        }
        *regs = vmrun_loads(&self.world.machine, vmsa, self.index);
    }
}

/// VMGEXIT from the guest: the hardware saves the guest's registers into its VMSA.
pub(crate) fn vmgexit_saves(m: &mut Machine, vmsa: u64, regs: &Regs, exit_code: u64) {
    for (field, v) in [
        (VmsaField::Rax, regs.rax),
        (VmsaField::Rcx, regs.rcx),
        (VmsaField::Rdx, regs.rdx),
        (VmsaField::R8, regs.r8),
        (VmsaField::R9, regs.r9),
    ] {
        m.set_vmsa_field(vmsa, field, v);
    }
    m.set_vmsa_field(vmsa, VmsaField::ExitCode, exit_code);
}

/// The host resumes the guest from its VMSA (VMRUN refuses a VMSA with SVME = 0).
pub(crate) fn vmrun_loads(m: &Machine, vmsa: u64, index: VcpuIndex) -> Regs {
    if m.vmsa_field(vmsa, VmsaField::Efer) & EFER_SVME == 0 {
        m.violations.borrow_mut().push(format!("vCPU {} left with EFER.SVME = 0: the guest cannot resume", index.0));
    }
    Regs {
        rax: m.vmsa_field(vmsa, VmsaField::Rax),
        rcx: m.vmsa_field(vmsa, VmsaField::Rcx),
        rdx: m.vmsa_field(vmsa, VmsaField::Rdx),
        r8: m.vmsa_field(vmsa, VmsaField::R8),
        r9: m.vmsa_field(vmsa, VmsaField::R9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_svsm_keeps_vmpck0_and_the_guest_loses_it() {
        let w = World::new(WorldConfig::default());
        assert_eq!(w.svsm.vmpck0(), [0xA0; 32]);
        let mut page = [0u8; 64];
        w.machine.raw_read(SECRETS_GPA + 0x20, &mut page);
        assert_eq!(page[..32], [0; 32]);
        assert_eq!(page[32..], [0xA1; 32], "VMPCK1 stays for the guest");
    }

    #[test]
    fn a_refused_vcpu_creation_takes_nothing() {
        use guest::Transport;
        let mut w = World::new(WorldConfig::default());
        let before = w.svsm.pool_stats();
        let vmsa = 3 * MIB;
        let mut c = w.client();
        c.transport.write(vmsa + VmsaField::Vmpl.offset() as u64, &[0]).unwrap(); // VMPL 0: refused
        let r = c.create_vcpu(vmsa, vmsa + 0x1000, 1);
        assert_eq!(r.unwrap_err().result(), Some(abi::result::ResultCode::ERR_INVALID_PARAMETER));
        assert!(c.transport.write(vmsa, &[1]).is_ok(), "the VMSA page was given back");
        assert_eq!(w.svsm.pool_stats(), before, "the reserved SVSM pages were given back");
        assert!(w.machine.violations().is_empty());
    }
}
