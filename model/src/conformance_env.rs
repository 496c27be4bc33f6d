//! The conformance suite on the model: each case gets a freshly launched world, runs as
//! the guest's startup vCPU, and fails if the machine saw the SVSM break the calling
//! convention (see `Machine::violations`).
//!
//! On the svm platform (`svm_host`) the SVSM is the guest's hypervisor, so some of a
//! host's powers have no counterpart: nothing sits between the guest's VMMCALL and the
//! SVSM to drop it, no host reassigns pages (the RMP is the SVSM's own), and a vCPU that
//! runs on another CPU is kicked out of the guest and stopped rather than found in use. A
//! case that uses one of those is skipped with the reason. Guest code below VMPL1 does not
//! run there either (one nested page table, VMPL1's), as in the QEMU run.

use crate::machine::Race;
use crate::world::{self, MIB, PlatformKind, World, WorldConfig};
use abi::hw::rmpadjust::PERM_READ;
use abi::vmsa::VmsaField;
use conformance::{Case, Env, Facts, HostControl, Verdict};
use guest::client::{GuestFault, Regs, Transport};
use kernel::stats::Stats;
use kernel::vcpu::VcpuIndex;

/// Per-call work budget used for conformance, small enough to exercise INCOMPLETE.
pub const CONFORMANCE_PAGES_PER_CALL: u64 = 256;

#[derive(Debug)]
pub struct ModelEnv {
    pub world: World,
    vcpu: VcpuIndex,
    calling_area: u64,
    /// A host power the case used that the platform has no counterpart for (svm).
    unsupported: Option<&'static str>,
}

impl Default for ModelEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl ModelEnv {
    pub fn new() -> Self {
        Self::on(PlatformKind::Model)
    }

    /// A fresh world served through `platform`.
    pub fn on(platform: PlatformKind) -> Self {
        Self::with(WorldConfig { platform, ..Self::config() })
    }

    /// The world configuration the suite runs with.
    pub fn config() -> WorldConfig {
        WorldConfig { pages_per_call: CONFORMANCE_PAGES_PER_CALL, ..WorldConfig::default() }
    }

    /// A fresh world made with `config` (start from [`Self::config`]).
    pub fn with(config: WorldConfig) -> Self {
        Self {
            world: World::new(config),
            vcpu: VcpuIndex::STARTUP,
            calling_area: world::STARTUP_CA_GPA,
            unsupported: None,
        }
    }

    fn on_svm(&self) -> bool {
        self.world.config.platform == PlatformKind::Svm
    }

    /// Note a host power the platform lacks: the case is skipped with `why`.
    fn unsupported(&mut self, why: &'static str) {
        self.unsupported.get_or_insert(why);
    }

    /// `f` on the RMP that holds page state (on svm the platform's, under its lock).
    fn with_rmp<R>(&self, f: impl FnOnce(&rmp::Rmp) -> R) -> R {
        match &self.world.svm {
            Some(svm) => f(&svm.state().rmp()),
            None => f(&self.world.machine.rmp),
        }
    }
}

impl Transport for ModelEnv {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestFault> {
        self.world.vcpu(self.vcpu).read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestFault> {
        self.world.vcpu(self.vcpu).write(gpa, data)
    }
    fn exchange_u8(&mut self, gpa: u64, value: u8) -> Result<u8, GuestFault> {
        self.world.vcpu(self.vcpu).exchange_u8(gpa, value)
    }
    fn request_svsm(&mut self, regs: &mut Regs) {
        self.world.vcpu(self.vcpu).request_svsm(regs)
    }
}

impl Env for ModelEnv {
    fn facts(&self) -> Facts {
        let c = &self.world.config;
        Facts {
            secrets_page: world::SECRETS_GPA,
            startup_vmsa: world::STARTUP_VMSA_GPA,
            sev_features: abi::hw::sev_features::SNP_ACTIVE,
            scratch: 2 * MIB,
            scratch_pages: (world::LOW_VALIDATED_END - 2 * MIB) / 4096,
            free_small: world::LOW_VALIDATED_END,
            free_small_pages: (world::SVSM_BASE - world::LOW_VALIDATED_END) / 4096,
            free_huge: c.huge_from,
            free_huge_count: (c.ram_bytes - c.huge_from) / (2 * MIB),
            not_ram: c.ram_bytes + 4 * MIB,
            pages_per_call: c.pages_per_call,
            attestation: true,
            log_bytes: match c.platform {
                PlatformKind::Model => crate::machine::MODEL_LOG_BYTES as u64,
                PlatformKind::Snp => snp::LOG_BYTES as u64,
                PlatformKind::Svm => crate::svm_host::LOG_BYTES as u64,
            },
        }
    }
    fn calling_area(&self) -> u64 {
        self.calling_area
    }
    fn set_calling_area(&mut self, gpa: u64) {
        self.calling_area = gpa;
    }
    fn select_vcpu(&mut self, apic_id: u32, calling_area: u64) -> Result<bool, conformance::CaseError> {
        Ok(match self.world.vcpu_by_apic_id(apic_id) {
            Some(v) => {
                self.vcpu = v;
                self.calling_area = calling_area;
                true
            }
            None => false,
        })
    }
    fn write_vmsa(&mut self, gpa: u64, _apic_id: u32) -> Result<(), conformance::CaseError> {
        // The model never runs created vCPUs' code: the fields the SVSM checks suffice.
        let mut vmsa = abi::vmsa::Vmsa::zeroed();
        vmsa.vmpl = 1;
        vmsa.efer = 0x500;
        vmsa.sev_features = abi::hw::sev_features::SNP_ACTIVE;
        Ok(self.write(gpa, zerocopy::IntoBytes::as_bytes(&vmsa))?)
    }
    fn host(&mut self) -> Option<&mut dyn HostControl> {
        Some(self)
    }
    fn grant_lower_vmpl(&mut self, gpa: u64, vmpl: u8, perms: u8) -> Result<(), conformance::CaseError> {
        if self.on_svm() {
            return Err(conformance::CaseError::Skip("one nested page table on svm (VMPL1's): no guest code below it"));
        }
        // RMPADJUST at the guest's VMPL: only a less privileged VMPL, only permissions the
        // guest's VMPL holds itself, only on a validated page.
        let own = self.world.machine.rmp.vmpl_perms(gpa >> 12, world::GUEST_VMPL);
        let e = self.world.machine.rmp.entry_mut(gpa >> 12);
        match e {
            Some(e) if vmpl > world::GUEST_VMPL && vmpl <= 3 && e.validated && perms & !own == 0 => {
                e.perms[usize::from(vmpl)] = perms;
                Ok(())
            }
            _ => Err(conformance::CaseError::Fail(format!("RMPADJUST({gpa:#x}, VMPL{vmpl}, {perms:#x}) refused"))),
        }
    }
}

impl HostControl for ModelEnv {
    fn psp_fault(&mut self, fault: conformance::PspFault) {
        self.world.machine.psp_fault = Some(fault);
    }
    fn drop_next_request(&mut self) {
        if self.on_svm() {
            self.unsupported("no host between the guest and the SVSM on svm: every VMMCALL exits to the SVSM");
            return;
        }
        self.world.host.drop_requests += 1;
    }
    fn set_exit_code(&mut self, code: Option<u64>) {
        // On svm the guest's exit is another instruction's (0x7B: an I/O instruction): it
        // must never be served as a call.
        self.world.host.exit_code = code;
    }
    fn enter_without_request(&mut self) -> u64 {
        self.world.enter(self.vcpu);
        let vmsa = self.world.machine.vcpus.get(&self.vcpu.0).map_or(0, |v| v.vmsa);
        self.vmsa_field(vmsa, VmsaField::Rax)
    }
    fn set_running(&mut self, vmsa: u64, running: bool) {
        if self.on_svm() {
            self.unsupported(
                "a vCPU that runs on another CPU is kicked out of the guest and stopped on svm: never in use",
            );
            return;
        }
        for v in self.world.machine.vcpus.values_mut().filter(|v| v.vmsa == vmsa) {
            v.running = running;
        }
    }
    fn race(&mut self, trigger: u64, gpa: u64, bytes: &[u8]) {
        self.world.machine.race(Race { trigger, gpa, bytes: bytes.to_vec() });
    }
    fn reassign_page(&mut self, gpa: u64) {
        if self.on_svm() {
            self.unsupported("no host reassigns guest pages on svm: the RMP is the SVSM's own");
            return;
        }
        self.world.machine.rmp.host_assign(gpa >> 12, 1);
        // The host flushes after RMPUPDATE, as KVM does.
        self.world.machine.flush_tlbs();
    }
    fn write_memory(&mut self, gpa: u64, bytes: &[u8]) {
        self.world.machine.raw_write(gpa, bytes);
    }
    fn vmpl_can_read(&self, gpa: u64, vmpl: u8) -> bool {
        self.with_rmp(|rmp| rmp.allows(gpa >> 12, vmpl, PERM_READ))
    }
    fn rmp_permissions(&self, gpa: u64, vmpl: u8) -> u8 {
        self.with_rmp(|rmp| rmp.entry(gpa >> 12).map_or(0, |e| e.perms[usize::from(vmpl & 3)]))
    }
    fn vmsa_field(&self, vmsa: u64, field: VmsaField) -> u64 {
        // On svm a vCPU's registers live in its VMCB; elsewhere (and for a VMSA no vCPU
        // runs on) in guest memory.
        crate::svm_host::vmsa_field(&self.world, vmsa, field)
    }
}

/// Run one case on a fresh world; a machine-level violation fails the case, a host power
/// the platform lacks skips it. Returns the verdict and what the SVSM counted while
/// serving the case.
pub fn run_case(case: &Case) -> (Verdict, Stats) {
    run_case_on(case, PlatformKind::Model)
}

/// `run_case` with the kernel served through `platform`.
pub fn run_case_on(case: &Case, platform: PlatformKind) -> (Verdict, Stats) {
    run_case_with(case, WorldConfig { platform, ..ModelEnv::config() })
}

/// `run_case` in a world made with `config` (start from [`ModelEnv::config`]).
pub fn run_case_with(case: &Case, config: WorldConfig) -> (Verdict, Stats) {
    let mut env = ModelEnv::with(config);
    let verdict = case.run(&mut env);
    let violations = env.world.machine.violations();
    let verdict = match (verdict, env.unsupported) {
        (_, Some(why)) => Verdict::Skip(why),
        (Verdict::Pass, None) if !violations.is_empty() => {
            Verdict::Fail(format!("calling-convention violations: {violations:?}"))
        }
        (v, None) => v,
    };
    (verdict, env.world.svsm.stats().clone())
}
