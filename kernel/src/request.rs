//! The request loop of spec 58019 section 5: one entry of the SVSM on behalf of one guest
//! vCPU.
//!
//! Order, as the spec prescribes:
//! 1. set the caller's VMSA.EFER.SVME = 0, so the host cannot run it meanwhile;
//! 2. check the exit code is the call gate; if not, restore SVME and do nothing else;
//! 3. check SVSM_CALL_PENDING; 0 means a spurious entry: restore SVME, do nothing else;
//! 4. read RAX and the argument registers, dispatch the call;
//! 5. write RAX and the output registers, clear SVSM_CALL_PENDING, then set SVME = 1.
//!
//! A host that breaks the caller's VMSA or calling area gets no answer (there is no one
//! to give it to); the SVSM logs the fault and keeps serving.

use crate::addr::Gpa;
use crate::caller::Caller;
use crate::pages::PageRole;
use crate::platform::{MemoryFault, Platform};
use crate::protocols::{self, CallContext, CallRegs, Reply};
use crate::stats::Counters;
use crate::svsm::Svsm;
use crate::vcpu::VcpuIndex;
use crate::{error::CallError, log};
use abi::calling_area::{CALL_PENDING_NONE, CALL_PENDING_REQUESTED, MEM_AVAILABLE_OFFSET};
use abi::hw::EFER_SVME;
use abi::protocol::CallId;
use abi::result::ResultCode;
use abi::vmsa::VmsaField;
use core::sync::atomic::Ordering;

/// Writes of SVSM_MEM_AVAILABLE one call makes at most while the pool changes under it.
const MEM_FLAG_ROUNDS: usize = 4;

/// What one entry of the SVSM did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryOutcome {
    /// A call was served with this result.
    Served(ResultCode),
    /// CALL_PENDING was 0: the host entered without a guest request.
    Spurious,
    /// The caller's exit code was not the call gate.
    WrongExitCode(u64),
    /// No such vCPU (deleted or never created).
    UnknownVcpu,
    /// The host made the caller's VMSA or calling area inaccessible.
    HostFault(MemoryFault),
}

impl Svsm {
    /// Serve one entry for guest vCPU `vcpu`.
    ///
    /// Every CPU may serve an entry at the same time (`&self`); the caller's own vCPU is
    /// read from its own slot, so a call that touches nothing else takes no lock another
    /// CPU's call needs.
    pub fn handle_entry<P: Platform + ?Sized>(&self, p: &mut P, vcpu: VcpuIndex) -> EntryOutcome {
        // Pinned until answered: neither DELETE_VCPU nor a replacement can hand the VMSA
        // or the calling area back to the guest while the answer is still due in them.
        let Some((v, _in_call)) = self.vcpus.begin_call(vcpu) else {
            log!(p, Warn, "entry for unknown vCPU {} (or one being deleted or replaced, or in a call already)", vcpu.0);
            return EntryOutcome::UnknownVcpu;
        };
        let (vmsa, ca) = (v.vmsa, v.calling_area);
        match self.serve(p, vcpu, vmsa, ca) {
            Ok(outcome) => outcome,
            Err(fault) => {
                Counters::count(&self.stats.host_faults);
                log!(p, Error, "vCPU {}: host fault at {:#x}; entry dropped", vcpu.0, fault.gpa.0);
                EntryOutcome::HostFault(fault)
            }
        }
    }

    fn serve<P: Platform + ?Sized>(
        &self,
        p: &mut P,
        vcpu: VcpuIndex,
        vmsa: crate::addr::PageAddr,
        ca: Gpa,
    ) -> Result<EntryOutcome, MemoryFault> {
        // 1. Hold the vCPU.
        let efer = p.vmsa_read(vmsa, VmsaField::Efer)?;
        p.vmsa_write(vmsa, VmsaField::Efer, efer & !EFER_SVME)?;
        let served = self.serve_held(p, vcpu, vmsa, ca);
        // Whatever happened, the vCPU can run again: a calling area the host took away
        // between the guest's request and the SVSM's read leaves CALL_PENDING set, which
        // the guest reads as "not executed" (Linux retries), instead of a vCPU that can
        // never resume. (Only a VMSA the host took makes this write fail too.)
        let released = p.vmsa_write(vmsa, VmsaField::Efer, efer | EFER_SVME);
        let outcome = served?;
        released?;
        Ok(outcome)
    }

    /// Steps 2-5 of an entry, with the vCPU held (SVME = 0).
    fn serve_held<P: Platform + ?Sized>(
        &self,
        p: &mut P,
        vcpu: VcpuIndex,
        vmsa: crate::addr::PageAddr,
        ca: Gpa,
    ) -> Result<EntryOutcome, MemoryFault> {
        // 2. The exit code must be the call gate.
        let exit_code = p.vmsa_read(vmsa, VmsaField::ExitCode)?;
        if exit_code != P::CALL_EXIT_CODE {
            Counters::count(&self.stats.wrong_exit_code);
            log!(p, Warn, "vCPU {}: entry with exit code {:#x}, ignored", vcpu.0, exit_code);
            return Ok(EntryOutcome::WrongExitCode(exit_code));
        }

        // 3. Was a call requested?
        let mut pending = [0u8];
        p.read(ca, &mut pending)?;
        if pending[0] == CALL_PENDING_NONE {
            Counters::count(&self.stats.spurious_entries);
            log!(p, Debug, "vCPU {}: spurious entry (CALL_PENDING = 0)", vcpu.0);
            return Ok(EntryOutcome::Spurious);
        }

        // 4. Read the request and dispatch it.
        let regs = CallRegs {
            rax: p.vmsa_read(vmsa, VmsaField::Rax)?,
            rcx: p.vmsa_read(vmsa, VmsaField::Rcx)?,
            rdx: p.vmsa_read(vmsa, VmsaField::Rdx)?,
            r8: p.vmsa_read(vmsa, VmsaField::R8)?,
            r9: p.vmsa_read(vmsa, VmsaField::R9)?,
        };
        let id = CallId::from_rax(regs.rax);
        let reply = if pending[0] == CALL_PENDING_REQUESTED {
            // The VMPL field is one byte wide; a wider value (a platform bug) counts as the
            // least privileged caller there can be.
            let vmpl = u8::try_from(p.vmsa_read(vmsa, VmsaField::Vmpl)?).unwrap_or(u8::MAX);
            let caller = Caller { vmpl, top_vmpl: self.guest_vmpl };
            protocols::dispatch(self, p, &CallContext { vcpu, caller, id, regs })
        } else {
            Reply::err(CallError::InvalidFormat(pending[0]))
        };
        let result = reply.result();
        self.stats.record(id.protocol, !result.is_success());
        if let Err(e) = &reply.status {
            log!(p, Debug, "vCPU {}: call {}:{} -> {} ({:?})", vcpu.0, id.protocol.0, id.call, result, e);
        }

        // 5. Answer: registers, SVSM_MEM_AVAILABLE, CALL_PENDING, and only then SVME.
        p.vmsa_write(vmsa, VmsaField::Rax, u64::from(result.0))?;
        for (field, value) in [
            (VmsaField::Rcx, reply.rcx),
            (VmsaField::Rdx, reply.rdx),
            (VmsaField::R8, reply.r8),
            (VmsaField::R9, reply.r9),
        ] {
            if let Some(v) = value {
                p.vmsa_write(vmsa, field, v)?;
            }
        }
        self.sync_mem_available(p);
        protocols::ocp::post_events(self, p);
        // A REMAP_CA that moved the calling area answered in the old one itself, before
        // the old page stopped being a calling area: writing `ca` here could land in a
        // page another vCPU deposited meanwhile. (Only the caller moves its own area, so
        // otherwise `ca` is still its area.)
        if !reply.calling_area_moved {
            p.write(ca, &[CALL_PENDING_NONE])?;
        }
        Ok(EntryOutcome::Served(result))
    }

    /// Keep SVSM_MEM_AVAILABLE of the startup vCPU's calling area equal to "free
    /// deposited pages exist" (spec 58019 section 6.6), after every call, whichever call
    /// changed the pool.
    fn sync_mem_available<P: Platform + ?Sized>(&self, p: &mut P) {
        // Again while the pool changed under the write: a vCPU that changed it meanwhile
        // may have found the record still equal to its own wish and left the flag to this
        // one. A pool that keeps changing is caught up with by a later call.
        for _ in 0..MEM_FLAG_ROUNDS {
            let want = u8::from(self.mem_available.load(Ordering::Acquire));
            let written = self.mem_flag_written.load(Ordering::Acquire);
            if written == want {
                return;
            }
            let Some(ca) = self.vcpus.startup().map(|v| v.calling_area) else { return };
            let Some(flag_gpa) = ca.checked_add(MEM_AVAILABLE_OFFSET) else { return };
            // Under the page's lock, which a DEPOSIT_MEM or CREATE_VCPU of the page takes
            // too, and only while the page is still the startup vCPU's calling area: a
            // REMAP_CA on another CPU may have moved it away, after which the page may be
            // deposited and is never the SVSM's to write for the guest. Skipped, the flag
            // is written after a later call.
            let page = ca.page();
            let mut held = self.pages.lock(page, page);
            let still = held.role(page) == Some(PageRole::CallingArea(VcpuIndex::STARTUP))
                && self.vcpus.startup().is_some_and(|v| v.calling_area == ca);
            if !still {
                return;
            }
            match p.write(flag_gpa, &[want]) {
                // Recorded only if nothing changed the record meanwhile: a REMAP_CA of the
                // startup vCPU marks it unknown, and this write then went to the old area,
                // so the new one must still be written.
                // A failed exchange means another vCPU recorded its own write meanwhile, and
                // this one may have overwritten it in the page: the record is unknown then,
                // and the next round writes what the pool says now.
                Ok(()) => {
                    if self
                        .mem_flag_written
                        .compare_exchange(written, want, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        self.mem_flag_written.store(crate::svsm::MEM_FLAG_UNKNOWN, Ordering::Release);
                    }
                }
                Err(f) => {
                    log!(p, Warn, "cannot update SVSM_MEM_AVAILABLE at {:#x}", f.gpa.0);
                    return;
                }
            }
            drop(held);
        }
    }
}
