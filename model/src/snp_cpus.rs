//! The snp platform's CPUs on the model, served as the bare-metal SVSM serves them
//! (svsm/src/bare/snp/mod.rs): each guest vCPU by its own CPU, each CPU with its own
//! platform handle (its own GHCB page and MSR), the kernel shared by all, and no lock
//! around the two. An entry builds the CPU's handle (joining the CPU first if it is
//! new), serves the call, and hands the CPU back with RUN_VMPL.
//!
//! [`SnpGuest`] is a guest vCPU that calls the SVSM this way without a `World`, so a
//! test can run one CPU's whole call inside another CPU's host exit
//! (`SnpHost::meanwhile`): what a real host does when it runs two vCPUs at once.

use crate::machine::Machine;
use crate::snp_host::{MODEL_CPUS, ModelSnpHw, SnpHost};
use crate::world::{vmgexit_saves, vmrun_loads};
use abi::hw::rmpadjust::{PERM_READ, PERM_WRITE};
use abi::vmsa::VmsaField;
use guest::client::{GuestFault, Regs, Transport};
use kernel::Svsm;
use kernel::request::EntryOutcome;
use kernel::vcpu::VcpuIndex;
use snp::{SnpPlatform, SnpShared};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The platform's shared state and which CPUs have joined it.
#[derive(Debug)]
pub struct SnpCpus {
    pub shared: Arc<SnpShared>,
    /// CPUs whose GHCB is shared and registered (the boot CPU from the start).
    joined: BTreeSet<usize>,
}

/// The CPU that serves vCPU `vcpu`: its own, as on hardware (GS base = vCPU index);
/// indices past the model's CPUs share its last one.
pub fn cpu_of(vcpu: VcpuIndex) -> usize {
    usize::try_from(vcpu.0).map_or(MODEL_CPUS - 1, |i| i.min(MODEL_CPUS - 1))
}

impl SnpCpus {
    /// The boot CPU started the platform; the others join when they first serve.
    pub fn new(shared: Arc<SnpShared>) -> Self {
        Self { shared, joined: BTreeSet::from([0]) }
    }

    /// `cpu`'s handle for one entry. A new CPU joins first (its GHCB shared and
    /// registered); if the host refuses, the CPU serves nothing (`None`), as a bare-metal
    /// CPU that stops the guest would not.
    pub fn handle<'a>(
        &mut self,
        machine: &'a mut Machine,
        host: &'a mut SnpHost,
        cpu: usize,
    ) -> Option<SnpPlatform<ModelSnpHw<'a>>> {
        let cpu = cpu.min(MODEL_CPUS - 1);
        if !self.joined.contains(&cpu) {
            let hw = ModelSnpHw::on_cpu(&mut *machine, &mut *host, cpu);
            if let Err(e) = crate::heap::in_svsm(|| SnpPlatform::join(hw, self.shared.clone(), true)) {
                eprintln!("snp model: CPU {cpu} could not join the platform: {e:?}");
                return None;
            }
            self.joined.insert(cpu);
        }
        Some(SnpPlatform::handle(ModelSnpHw::on_cpu(machine, host, cpu), self.shared.clone()))
    }
}

/// Serve one entry of `vcpu` on its own CPU, then hand the CPU back to the guest.
pub fn enter(
    machine: &mut Machine,
    host: &mut SnpHost,
    cpus: &mut SnpCpus,
    svsm: &Svsm,
    vcpu: VcpuIndex,
) -> EntryOutcome {
    let Some(mut p) = cpus.handle(machine, host, cpu_of(vcpu)) else {
        return EntryOutcome::UnknownVcpu;
    };
    let outcome = crate::heap::in_svsm(|| svsm.handle_entry(&mut p, vcpu));
    if let Err(e) = p.resume_guest() {
        p.hw.machine.record_violation(format!("RUN_VMPL failed: {e:?}"));
    }
    outcome
}

/// A guest vCPU calling the SVSM on its own CPU, with the machine and host lent to it.
/// The CPU must have joined the platform already (`SnpCpus::handle`).
#[derive(Debug)]
pub struct SnpGuest<'a> {
    pub machine: &'a mut Machine,
    pub host: &'a mut SnpHost,
    pub shared: Arc<SnpShared>,
    pub svsm: &'a Svsm,
    pub vcpu: VcpuIndex,
}

impl SnpGuest<'_> {
    fn vmpl(&self) -> u8 {
        self.machine
            .vcpus
            .get(&self.vcpu.0)
            .map_or(crate::world::GUEST_VMPL, |v| self.machine.vmsa_field(v.vmsa, VmsaField::Vmpl) as u8)
    }

    fn check(&self, gpa: u64, len: usize, need: u8) -> Result<(), GuestFault> {
        self.machine.guest_access(self.vcpu.0, self.vmpl(), gpa, len, need).map_err(|gpa| GuestFault { gpa })
    }
}

impl Transport for SnpGuest<'_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestFault> {
        self.check(gpa, buf.len(), PERM_READ)?;
        self.machine.raw_read(gpa, buf);
        Ok(())
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestFault> {
        self.check(gpa, data.len(), PERM_WRITE)?;
        self.machine.raw_write(gpa, data);
        Ok(())
    }

    fn exchange_u8(&mut self, gpa: u64, value: u8) -> Result<u8, GuestFault> {
        self.check(gpa, 1, PERM_READ | PERM_WRITE)?;
        let mut old = [0u8];
        self.machine.raw_read(gpa, &mut old);
        self.machine.raw_write(gpa, &[value]);
        Ok(old[0])
    }

    fn request_svsm(&mut self, regs: &mut Regs) {
        let Some(vmsa) = self.machine.vcpus.get(&self.vcpu.0).map(|v| v.vmsa) else { return };
        vmgexit_saves(self.machine, vmsa, regs, abi::hw::SVM_EXIT_VMGEXIT);
        let hw = ModelSnpHw::on_cpu(self.machine, self.host, cpu_of(self.vcpu));
        let mut p = SnpPlatform::handle(hw, self.shared.clone());
        crate::heap::in_svsm(|| self.svsm.handle_entry(&mut p, self.vcpu));
        if let Err(e) = p.resume_guest() {
            p.hw.machine.record_violation(format!("RUN_VMPL failed: {e:?}"));
        }
        *regs = vmrun_loads(self.machine, vmsa, self.vcpu);
    }
}
