//! The SVSM's state and its construction at start-up.
//!
//! [`Svsm`] owns everything the protocols change: page ownership and the validation
//! bitmap, the vCPU registry, the page pool and the counters. It holds no platform; the
//! platform is lent to each entry ([`Svsm::handle_entry`] in `request.rs`), which keeps
//! the seam explicit and lets tests own the machine model.

use crate::addr::{Gpa, PageAddr, PageRange};
use crate::pages::{LayoutError, PageRole, PageTracker};
use crate::platform::{MemoryFault, Platform};
use crate::pool::PagePool;
use crate::protocols::ocp::sources::{SourceKind, Sources};
use crate::psp_channel::PspChannel;
use crate::stats::Stats;
use crate::vcpu::{Vcpu, VcpuIndex, VcpuRegistry};
use abi::hw::sev_features;
use abi::vmsa::VmsaField;
use alloc::vec::Vec;

/// SVSM pages each created vCPU needs for its SVSM-side context: the SVSM's own VMSA for
/// that vCPU and an 8 KiB stack.
pub const VCPU_CONTEXT_PAGES: usize = 3;

/// Pages with a role other than deposited the SVSM can hold: per vCPU its VMSA, a VMSA a
/// replacement retired and its calling area, plus the secrets page.
fn max_roles(max_vcpus: usize) -> usize {
    max_vcpus.saturating_mul(3).saturating_add(1)
}

/// SEV_FEATURES the SVSM can serve a guest with. Others make it refuse to start
/// (spec 58019 section 4.1: "terminate if unsupported features are enabled").
pub const SUPPORTED_SEV_FEATURES: u64 = sev_features::SNP_ACTIVE
    | sev_features::VTOM
    | sev_features::REFLECT_VC
    | sev_features::RESTRICTED_INJECTION
    | sev_features::ALTERNATE_INJECTION
    | sev_features::DEBUG_SWAP
    | sev_features::PREVENT_HOST_IBS
    | sev_features::BTB_ISOLATION;

/// What the launch tells the SVSM about the machine.
#[derive(Clone, Debug)]
pub struct SvsmConfig {
    /// Guest RAM ranges.
    pub ram: Vec<PageRange>,
    /// The SVSM's own region (SVSM_BASE / SVSM_SIZE).
    pub svsm_region: PageRange,
    /// Pages inside the SVSM region that the image leaves free for the page pool.
    pub pool_reserve: Vec<PageAddr>,
    /// Guest pages validated at launch (firmware, calling area, ...).
    pub prevalidated: Vec<PageRange>,
    pub startup_vmsa: PageAddr,
    pub startup_calling_area: Gpa,
    pub startup_apic_id: u32,
    /// Most vCPUs the SVSM will serve, including the startup vCPU.
    pub max_vcpus: usize,
    /// Work one call may do before it returns SVSM_ERR_INCOMPLETE, in 4 KiB pages.
    pub pages_per_call: u64,
    /// The SNP secrets page, if the platform has one: the SVSM publishes itself there
    /// (spec 58019 section 4.1) and erases VMPCK0 before the guest runs.
    pub secrets_page: Option<PageAddr>,
}

/// Why the SVSM refuses to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    Layout(LayoutError),
    /// The pool reserve must lie inside the SVSM region.
    ReserveOutsideSvsm(PageAddr),
    /// The startup VMSA or calling area overlaps the SVSM region or is not RAM.
    StartupPageInvalid(Gpa),
    /// The calling area must be 8-byte aligned.
    CallingAreaMisaligned(Gpa),
    /// The guest would run at VMPL0, beside the SVSM.
    GuestAtVmpl0,
    /// The startup VMSA names a VMPL that does not exist.
    GuestVmplInvalid(u64),
    /// SEV_FEATURES asks for what the SVSM cannot serve.
    UnsupportedSevFeatures(u64),
    Vmsa(MemoryFault),
    Secrets(MemoryFault),
    /// The heap cannot hold the SVSM's own records.
    NoMemory,
}

/// Write the SVSM fields of the secrets page and move VMPCK0 out of it, so the guest can
/// find the SVSM and cannot talk to the PSP as VMPL0. Returns VMPCK0.
fn publish<P: Platform + ?Sized>(
    p: &mut P,
    secrets: PageAddr,
    config: &SvsmConfig,
    guest_vmpl: u8,
) -> Result<[u8; 32], MemoryFault> {
    use abi::secrets::{SecretsPage, SvsmSecretsFields};
    use core::mem::offset_of;
    use zerocopy::IntoBytes;
    let fields = SvsmSecretsFields {
        svsm_base: config.svsm_region.start().raw(),
        svsm_size: config.svsm_region.pages() * abi::PAGE_SIZE,
        svsm_caa: config.startup_calling_area.0,
        svsm_max_version: abi::protocol::CORE_PROTOCOL_VERSION,
        svsm_guest_vmpl: guest_vmpl,
        reserved: [0; 3],
    };
    let at = |off: usize| Gpa(secrets.raw() + off as u64);
    p.write(at(offset_of!(SecretsPage, svsm)), fields.as_bytes())?;
    let mut vmpck0 = [0u8; 32];
    p.read(at(offset_of!(SecretsPage, vmpck0)), &mut vmpck0)?;
    p.write(at(offset_of!(SecretsPage, vmpck0)), &[0u8; 32])?;
    Ok(vmpck0)
}

#[derive(Debug)]
pub struct Svsm {
    pub(crate) pages: PageTracker,
    pub(crate) vcpus: VcpuRegistry,
    pub(crate) pool: PagePool,
    pub(crate) stats: Stats,
    pub(crate) max_vcpus: usize,
    /// The most privileged VMPL the guest runs at: the startup vCPU's.
    pub(crate) guest_vmpl: u8,
    pub(crate) pages_per_call: u64,
    /// The SVSM_MEM_AVAILABLE value last written to the startup calling area; `None`
    /// forces a write (at start and after the startup vCPU remaps its area).
    pub(crate) mem_flag_written: Option<bool>,
    /// The SVSM's own channel to the PSP, under VMPCK0 taken out of the guest-visible
    /// secrets page (attestation at VMPL0).
    pub(crate) psp: PspChannel,
    /// The Observability and Configuration Protocol's sources.
    pub(crate) ocp: Sources,
    /// The vTPM (protocol 2), once the platform installed one.
    pub(crate) vtpm: Option<vtpm::Vtpm>,
}

impl Svsm {
    pub fn new<P: Platform + ?Sized>(config: SvsmConfig, p: &mut P) -> Result<Self, InitError> {
        let max_vcpus = config.max_vcpus.max(1);
        let mut pages =
            PageTracker::new(&config.ram, config.svsm_region, max_roles(max_vcpus)).map_err(InitError::Layout)?;
        if let Some(bad) = config.pool_reserve.iter().find(|pg| !config.svsm_region.contains_pfn(pg.pfn())) {
            return Err(InitError::ReserveOutsideSvsm(*bad));
        }
        for r in &config.prevalidated {
            pages.record_validated(*r, true).map_err(|_| InitError::NoMemory)?;
        }
        let ca = config.startup_calling_area;
        if !ca.is_aligned(8) {
            return Err(InitError::CallingAreaMisaligned(ca));
        }
        for page in [config.startup_vmsa, ca.page()] {
            let one = PageRange::new(page, 1).ok_or(InitError::StartupPageInvalid(page.gpa()))?;
            if pages.check_target(one).is_err() {
                return Err(InitError::StartupPageInvalid(page.gpa()));
            }
        }
        if config.startup_vmsa == ca.page() {
            return Err(InitError::StartupPageInvalid(ca));
        }
        let vmpl = match p.vmsa_read(config.startup_vmsa, VmsaField::Vmpl).map_err(InitError::Vmsa)? {
            0 => return Err(InitError::GuestAtVmpl0),
            v @ 1..=3 => v as u8,
            v => return Err(InitError::GuestVmplInvalid(v)),
        };
        let features = p.vmsa_read(config.startup_vmsa, VmsaField::SevFeatures).map_err(InitError::Vmsa)?;
        if features & !SUPPORTED_SEV_FEATURES != 0 {
            return Err(InitError::UnsupportedSevFeatures(features & !SUPPORTED_SEV_FEATURES));
        }
        let vmpck0 = match config.secrets_page {
            Some(secrets) => publish(p, secrets, &config, vmpl).map_err(InitError::Secrets)?,
            None => [0; 32],
        };
        if let Some(secrets) = config.secrets_page {
            pages.set_role(secrets, PageRole::Secrets).map_err(|_| InitError::NoMemory)?;
        }
        pages.set_role(config.startup_vmsa, PageRole::Vmsa(VcpuIndex::STARTUP)).map_err(|_| InitError::NoMemory)?;
        pages.set_role(ca.page(), PageRole::CallingArea(VcpuIndex::STARTUP)).map_err(|_| InitError::NoMemory)?;
        let startup = Vcpu {
            apic_id: config.startup_apic_id,
            vmsa: config.startup_vmsa,
            vmpl,
            creator_vmpl: vmpl,
            retired: None,
            calling_area: ca,
            svsm_pages: Vec::new(),
        };
        let vcpus = VcpuRegistry::new(startup, max_vcpus).map_err(|_| InitError::NoMemory)?;
        let top_pfn = config.ram.iter().map(|r| r.end_pfn()).max().unwrap_or(0);
        let pool = PagePool::new(config.pool_reserve, top_pfn).map_err(|_| InitError::NoMemory)?;
        Ok(Self {
            pages,
            vcpus,
            pool,
            stats: Stats::default(),
            max_vcpus,
            guest_vmpl: vmpl,
            pages_per_call: config.pages_per_call.max(1),
            mem_flag_written: None,
            psp: PspChannel::new(vmpck0),
            ocp: Sources::builtin(P::NAME),
            vtpm: None,
        })
    }

    /// Ask the PSP for one report (report data all zero) before serving the guest. It
    /// proves VMPCK0 and the host's relay work, and it lets a platform that receives the
    /// certificate table only with reports (SNP's extended guest request) know it before
    /// the guest asks for sizes. A failure is logged; the attestation protocol then
    /// reports it to the guest on each call.
    pub fn check_psp_channel<P: Platform + ?Sized>(&mut self, p: &mut P) -> bool {
        match self.psp.request_report(p, &[0; 64]) {
            Ok(_) => {
                crate::log!(p, Info, "PSP channel: a report arrived under VMPCK0");
                true
            }
            Err(e) => {
                crate::log!(p, Warn, "PSP channel: no report at boot: {e:?}");
                false
            }
        }
    }

    /// Serve protocol 2 with `vtpm` from now on: QUERY_PROTOCOL announces it, its EK
    /// public area becomes the vTPM entry of the attestation manifest, and its call
    /// counters become OCP sources.
    pub fn install_vtpm(&mut self, vtpm: vtpm::Vtpm) {
        self.vtpm = Some(vtpm);
        const VTPM: u32 = abi::protocol::ProtocolId::VTPM.0;
        // Distinct, short, constant names: registering them cannot fail, and a second
        // install finds them registered already.
        let _ = self.ocp.register("calls.vtpm", SourceKind::Counter(|s| s.stats.per_protocol[2].calls), VTPM);
        let _ = self.ocp.register("errors.vtpm", SourceKind::Counter(|s| s.stats.per_protocol[2].errors), VTPM);
    }

    /// The installed vTPM.
    pub fn vtpm(&self) -> Option<&vtpm::Vtpm> {
        self.vtpm.as_ref()
    }

    /// VMPCK0 as the launch provided it (all zero without a secrets page).
    pub fn vmpck0(&self) -> &[u8; 32] {
        self.psp.vmpck0()
    }

    /// The Observability protocol's sources; a service adds its own here.
    pub fn ocp_sources(&mut self) -> &mut Sources {
        &mut self.ocp
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn pool_stats(&self) -> crate::pool::PoolStats {
        self.pool.stats()
    }

    pub fn vcpus(&self) -> &VcpuRegistry {
        &self.vcpus
    }

    pub fn pages(&self) -> &PageTracker {
        &self.pages
    }
}
