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
use crate::protocols::ocp::sources::{self, SourceKind, Sources};
use crate::psp_channel::PspChannel;
use crate::stats::{Counters, Stats};
use crate::vcpu::{Vcpu, VcpuIndex, VcpuRegistry};
use abi::hw::sev_features;
use abi::vmsa::VmsaField;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use spin::Mutex;

pub use crate::vcpu::VCPU_CONTEXT_PAGES;

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

/// The SVSM, shared by every CPU that serves the guest ([`Svsm::handle_entry`] takes
/// `&self`).
///
/// Concurrency: nothing here is one lock all CPUs share. Each part says what guards it,
/// and the order locks are taken in is: the vCPU set's change lock, then region locks
/// (`PageTracker::lock`), then the pool; the vTPM, the PSP channel and the event ring each
/// stand alone and are held while their own work runs (a vTPM command holds only the vTPM,
/// so other vCPUs' core calls go on). No lock is held while the platform leaves for the
/// host except those (the PSP channel during a guest request). docs/architecture.md,
/// "Concurrency".
#[derive(Debug)]
pub struct Svsm {
    /// Page records: atomics and per-region locks inside.
    pub(crate) pages: PageTracker,
    /// vCPUs: a lock per vCPU, and one for changes to the set.
    pub(crate) vcpus: VcpuRegistry,
    pub(crate) pool: Mutex<PagePool>,
    /// "Free deposited pages exist", kept by whoever changes the pool: read on every call
    /// (SVSM_MEM_AVAILABLE) without the pool's lock.
    pub(crate) mem_available: AtomicBool,
    pub(crate) stats: Counters,
    pub(crate) max_vcpus: usize,
    /// The most privileged VMPL the guest runs at: the startup vCPU's.
    pub(crate) guest_vmpl: u8,
    pub(crate) pages_per_call: u64,
    /// The SVSM_MEM_AVAILABLE value last written to the startup calling area:
    /// `MEM_FLAG_UNKNOWN` forces a write (at start and after the startup vCPU remaps).
    pub(crate) mem_flag_written: AtomicU8,
    /// The SVSM's own channel to the PSP, under VMPCK0 taken out of the guest-visible
    /// secrets page (attestation at VMPL0). One exchange at a time.
    pub(crate) psp: Mutex<PspChannel>,
    /// The Observability and Configuration Protocol's sources (fixed once serving starts;
    /// the event ring has its own lock inside).
    pub(crate) ocp: Sources,
    /// The vTPM (protocol 2), once the platform installed one. One command at a time.
    pub(crate) vtpm: Option<Mutex<vtpm::Vtpm>>,
    /// Its EK public area (fixed at manufacture), for the manifest without the vTPM's lock.
    pub(crate) vtpm_ek: alloc::vec::Vec<u8>,
    /// Its lineage while no sealed state keeps it (then the sealed state's summary has
    /// it): manufactured here, or the incarnation a migration made.
    /// (Boxed: a lineage names up to 32 ancestors, and `Svsm` must stay small enough to
    /// move on the boot stack. Set at boot, where infallible allocation is the rule.)
    vtpm_lineage: Option<alloc::boxed::Box<crate::vtpm_lineage::Lineage>>,
    /// The sealed state, once the platform opened it: its committed state is an entry of
    /// the attestation manifest.
    pub(crate) sealed: Option<crate::sealed::SharedSealed>,
    /// The sealed state's committed state, readable without waiting on a commit.
    sealed_summary: Option<crate::sealed::SealedSummary>,
    /// A live migration's dirty tracking, while it runs (`migration::dirty`).
    pub(crate) dirty: Mutex<Option<crate::migration::DirtyLog>>,
    /// Set while `dirty` holds a log: a nested fault checks it without the lock.
    pub(crate) tracking: AtomicBool,
    /// VMs open in service processes and the ports device models claimed
    /// (`user::vm`): shared with the processes' system calls.
    vms: alloc::sync::Arc<crate::user::vm::VmObjects>,
}

// Every CPU serves calls through one shared `Svsm` (a `&'static` on bare metal): the
// compiler holds it to that.
const _: () = {
    const fn shared_by_every_cpu<T: Send + Sync>() {}
    shared_by_every_cpu::<Svsm>();
};

/// `mem_flag_written` before anything was written.
pub(crate) const MEM_FLAG_UNKNOWN: u8 = 2;

impl Svsm {
    pub fn new<P: Platform + ?Sized>(config: SvsmConfig, p: &mut P) -> Result<Self, InitError> {
        let max_vcpus = config.max_vcpus.max(1);
        // Guest memory no device model may claim for MMIO: RAM and the SVSM's region.
        let mut forbidden = Vec::new();
        forbidden.try_reserve_exact(config.ram.len() + 1).map_err(|_| InitError::NoMemory)?;
        for r in config.ram.iter().chain(core::iter::once(&config.svsm_region)) {
            forbidden.push((r.start().raw(), r.start().raw().saturating_add(r.pages().saturating_mul(4096))));
        }
        let pages =
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
            v @ 1..=3 => u8::try_from(v).map_err(|_| InitError::GuestVmplInvalid(v))?,
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
            svsm_pages: None,
        };
        let vcpus = VcpuRegistry::new(startup, max_vcpus).map_err(|_| InitError::NoMemory)?;
        let top_pfn = config.ram.iter().map(|r| r.end_pfn()).max().unwrap_or(0);
        let pool = PagePool::new(config.pool_reserve, top_pfn).map_err(|_| InitError::NoMemory)?;
        Ok(Self {
            pages,
            vcpus,
            pool: Mutex::new(pool),
            mem_available: AtomicBool::new(false),
            stats: Counters::default(),
            max_vcpus,
            guest_vmpl: vmpl,
            pages_per_call: config.pages_per_call.max(1),
            mem_flag_written: AtomicU8::new(MEM_FLAG_UNKNOWN),
            psp: Mutex::new(PspChannel::new(vmpck0)),
            ocp: Sources::builtin(P::NAME),
            vtpm: None,
            vtpm_ek: Vec::new(),
            vtpm_lineage: None,
            sealed: None,
            sealed_summary: None,
            dirty: Mutex::new(None),
            tracking: AtomicBool::new(false),
            vms: alloc::sync::Arc::new(crate::user::vm::VmObjects::new(forbidden)),
        })
    }

    /// Ask the PSP for one report (report data all zero) before serving the guest. It
    /// proves VMPCK0 and the host's relay work, and it lets a platform that receives the
    /// certificate table only with reports (SNP's extended guest request) know it before
    /// the guest asks for sizes. A failure is logged; the attestation protocol then
    /// reports it to the guest on each call.
    pub fn check_psp_channel<P: Platform + ?Sized>(&self, p: &mut P) -> bool {
        let answer = self.psp.lock().request_report(p, &[0; 64]);
        match answer {
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

    /// The guest SVN and committed TCB version an attestation report of this launch
    /// names: on SEV-SNP, what the sealed store's key request names (the PSP derives keys
    /// for these or lower values only). The report comes from the PSP under VMPCK0; the
    /// host cannot change it.
    pub fn reported_key_params<P: Platform + ?Sized>(
        &self,
        p: &mut P,
    ) -> Result<crate::sealed::KeyParams, crate::psp_channel::ChannelError> {
        use abi::attest::report;
        let report = self.psp.lock().request_report(p, &[0; 64])?;
        let field = |at: usize, buf: &mut [u8]| {
            if let Some(bytes) = report.get(at..at + buf.len()) {
                buf.copy_from_slice(bytes);
            }
        };
        let (mut svn, mut tcb) = ([0u8; 4], [0u8; 8]);
        field(report::GUEST_SVN, &mut svn);
        field(report::COMMITTED_TCB, &mut tcb);
        Ok(crate::sealed::KeyParams { guest_svn: u32::from_le_bytes(svn), tcb_version: u64::from_le_bytes(tcb) })
    }

    /// The sealed store's key (docs/persistence.md): derived by the PSP, bound to this
    /// launch's measurement and policy at VMPL 0, with the guest SVN and TCB the launch
    /// reports. Only the same measured SVSM on the same chip gets it.
    pub fn sealing_key<P: Platform + ?Sized>(
        &self,
        p: &mut P,
        svn: u32,
        tcb: u64,
    ) -> Result<[u8; 32], crate::psp_channel::ChannelError> {
        use abi::attest::guest_message as gm;
        let request = psp::key::KeyRequest {
            fields: gm::FIELD_MEASUREMENT | gm::FIELD_GUEST_POLICY | gm::FIELD_GUEST_SVN | gm::FIELD_TCB_VERSION,
            vmpl: 0,
            guest_svn: svn,
            tcb_version: tcb,
        };
        self.psp.lock().derive_key(p, &request)
    }

    /// Serve protocol 2 with `vtpm` from now on: QUERY_PROTOCOL announces it, its EK
    /// public area becomes the vTPM entry of the attestation manifest, and its call
    /// counters become OCP sources.
    /// Without a sealed state that keeps it, its lineage is that of a TPM manufactured
    /// here ([`Svsm::install_arrived_vtpm`] for one a migration brought).
    pub fn install_vtpm(&mut self, vtpm: vtpm::Vtpm) {
        self.vtpm_lineage =
            Some(alloc::boxed::Box::new(crate::vtpm_lineage::Lineage::manufactured(vtpm.ek_public(), 0)));
        self.vtpm_ek = vtpm.ek_public().to_vec();
        self.vtpm = Some(Mutex::new(vtpm));
        const VTPM: u32 = abi::protocol::ProtocolId::VTPM.0;
        // Distinct, short, constant names: registering them cannot fail, and a second
        // install finds them registered already.
        let _ = self.ocp.register("calls.vtpm", SourceKind::Counter(|s| s.stats.calls(2)), VTPM);
        let _ = self.ocp.register("errors.vtpm", SourceKind::Counter(|s| s.stats.errors(2)), VTPM);
    }

    /// [`Svsm::install_vtpm`] for the vTPM a live migration brought, as the incarnation
    /// `lineage` ([`crate::vtpm_lineage::Lineage::arrived`]); a sealed state that keeps it
    /// has recorded the same.
    pub fn install_arrived_vtpm(&mut self, vtpm: vtpm::Vtpm, lineage: crate::vtpm_lineage::Lineage) {
        self.install_vtpm(vtpm);
        self.vtpm_lineage = Some(alloc::boxed::Box::new(lineage));
    }

    /// The installed vTPM's lineage, and whether a sealed state keeps it (its commits then
    /// count the versions). Never waits on a commit in progress.
    pub fn vtpm_lineage(&self) -> Option<(crate::vtpm_lineage::Lineage, bool)> {
        self.vtpm_lineage_in(self.sealed_summary_now().as_ref())
    }

    /// [`Svsm::vtpm_lineage`] as of `summary` (one snapshot of the sealed state, so the
    /// manifest's entries come from one commit).
    pub fn vtpm_lineage_in(
        &self,
        summary: Option<&crate::sealed::Summary>,
    ) -> Option<(crate::vtpm_lineage::Lineage, bool)> {
        self.vtpm.as_ref()?;
        match summary.and_then(|summary| summary.vtpm) {
            Some(lineage) => Some((lineage, true)),
            None => self.vtpm_lineage.as_deref().map(|lineage| (*lineage, false)),
        }
    }

    /// The sealed state's summary as it is now, in one hold of its lock (`None` without a
    /// sealed state). Never waits on a commit in progress.
    pub fn sealed_summary_now(&self) -> Option<crate::sealed::Summary> {
        self.sealed_summary.as_ref().map(|summary| *summary.lock())
    }

    /// Report `sealed` from now on: its committed state is the sealed-state entry of the
    /// attestation manifest and two OCP sources (`sealed.root`, a digest whose change
    /// events mark each commit, and `sealed.generation`), and the settings it keeps (the
    /// log level) apply again.
    pub fn install_sealed<P: Platform + ?Sized>(&mut self, p: &mut P, sealed: crate::sealed::SharedSealed) {
        if let Some(level) = sealed.lock().get(sources::LOG_LEVEL_KEY).and_then(sources::parse_level) {
            p.set_log_level(level);
        }
        self.sealed_summary = Some(sealed.lock().summary());
        self.sealed = Some(sealed);
        const NONE: u32 = abi::ocp::typed::PROTOCOL_NONE;
        // Distinct, short, constant names: registering them cannot fail, and a second
        // install finds them registered already.
        let root = |s: &Svsm| s.sealed_state_entry().map_or([0; 32], |e| e.root);
        if let Ok(index) = self.ocp.register("sealed.root", SourceKind::Sha256(root), NONE) {
            self.ocp.sealed_root = Some(index);
        }
        let _ = self.ocp.register("sealed.generation", SourceKind::Counter(Svsm::sealed_generation), NONE);
    }

    /// The most privileged VMPL the guest runs at (the startup vCPU's).
    pub fn guest_vmpl(&self) -> u8 {
        self.guest_vmpl
    }

    /// The sealed state's committed generation (0 without one); never waits on a commit.
    pub fn sealed_generation(&self) -> u64 {
        self.sealed_state_entry().map_or(0, |e| e.generation)
    }

    /// Keep `value` under `key` in the sealed state, if there is one: one commit, none if
    /// the kept value is `value` already (a setting written again to the same value
    /// changes no state, so it makes no new generation and no change event).
    pub fn keep_setting(&self, key: &[u8], value: &[u8]) -> Result<(), store::StoreError> {
        match &self.sealed {
            Some(sealed) => {
                let mut sealed = sealed.lock();
                if sealed.get(key) == Some(value) && sealed.failed().is_none() {
                    return Ok(());
                }
                sealed.update(|s| s.put(key, value))
            }
            None => Ok(()),
        }
    }

    /// Whether a live migration's source may commit: the sealed state (if any) can take
    /// the tombstone of the vTPM that moves after it ([`crate::sealed::vtpm_can_move`]).
    pub fn vtpm_can_move_away(&self) -> bool {
        self.sealed.as_ref().is_none_or(|sealed| crate::sealed::vtpm_can_move(sealed, self.moving_vtpm()))
    }

    /// The EK public area of the vTPM a migration takes: the one serving here, if any (a
    /// kept vTPM that did not start this boot does not move, and its state stays kept).
    fn moving_vtpm(&self) -> Option<&[u8]> {
        self.vtpm.as_ref().map(|_| self.vtpm_ek.as_slice())
    }

    /// Whether a live migration's destination can keep the arriving vTPM with
    /// `ek_public` at NV state `version`: in its sealed state
    /// ([`crate::sealed::can_keep_vtpm`]), or, without one, only a vTPM the source did not
    /// keep across reboots either (`kept`): the source gives its copy up, and this SVSM
    /// could not keep it past its next boot.
    pub fn can_keep_arriving_vtpm(&self, ek_public: &[u8], kept: bool, version: u64) -> bool {
        match &self.sealed {
            Some(sealed) => crate::sealed::can_keep_vtpm(sealed, ek_public, version),
            None => !kept,
        }
    }

    /// A live migration committed: the vTPM is the destination's now, and the sealed
    /// state must never start it again ([`crate::sealed::mark_vtpm_moved_retrying`]: tried
    /// again while `keep_trying`, which waits, says so). Nothing to do without a sealed
    /// state. `Ok(true)` if a vTPM was kept and is marked now.
    pub fn vtpm_moved_away(&self, keep_trying: impl FnMut() -> bool) -> Result<bool, store::StoreError> {
        match &self.sealed {
            Some(sealed) => crate::sealed::mark_vtpm_moved_retrying(sealed, self.moving_vtpm(), keep_trying),
            None => Ok(false),
        }
    }

    /// An attestation with `nonce` is about to be served: its link goes into the sealed
    /// state's attestation chain (`sealed::note_attestation`), one commit. Nothing to do
    /// without a sealed state.
    pub fn note_attestation(&self, nonce: &[u8]) -> Result<(), store::StoreError> {
        match &self.sealed {
            Some(sealed) => crate::sealed::note_attestation(sealed, nonce),
            None => Ok(()),
        }
    }

    /// The sealed state's manifest entry: the committed state the SVSM runs on, and
    /// whether the sealed state closed since boot. Never waits on a commit in progress.
    pub fn sealed_state_entry(&self) -> Option<abi::attest::SealedStateEntry> {
        self.sealed_summary.as_ref().map(|summary| summary.lock().entry)
    }

    /// The installed vTPM's EK public area.
    pub fn vtpm_ek(&self) -> Option<&[u8]> {
        self.vtpm.as_ref().map(|_| &self.vtpm_ek[..])
    }

    /// VMPCK0 as the launch provided it (all zero without a secrets page).
    pub fn vmpck0(&self) -> [u8; 32] {
        *self.psp.lock().vmpck0()
    }

    /// The Observability protocol's sources; a service adds its own here.
    pub fn ocp_sources(&mut self) -> &mut Sources {
        &mut self.ocp
    }

    /// The counters as they are now.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    pub fn pool_stats(&self) -> crate::pool::PoolStats {
        self.pool.lock().stats()
    }

    /// Keep `mem_available` in step with the pool (the caller just changed it).
    pub(crate) fn pool_changed(&self, pool: &PagePool) {
        self.mem_available.store(pool.mem_available(), Ordering::Release);
    }

    pub fn vcpus(&self) -> &VcpuRegistry {
        &self.vcpus
    }

    pub fn pages(&self) -> &PageTracker {
        &self.pages
    }

    /// The VM objects and port claims of service processes: the platform's exit handler
    /// hands a claimed port access to its device model (`user::vm::VmObjects::serve`).
    pub fn vm_objects(&self) -> &alloc::sync::Arc<crate::user::vm::VmObjects> {
        &self.vms
    }
}
#[cfg(test)]
mod size {
    /// The bare-metal SVSM builds and moves its `Svsm` on a 64 KiB boot stack, which sits
    /// right after the boot page tables: a structure of 11 KiB, moved a few times, once
    /// ran past the stack's end and unmapped the local APIC. Large arrays go on the heap.
    #[test]
    fn the_svsm_stays_small_enough_to_move_on_the_boot_stack() {
        let size = core::mem::size_of::<super::Svsm>();
        assert!(size <= 1024, "Svsm is {size} bytes");
    }
}
