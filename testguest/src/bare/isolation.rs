//! The vCPU isolation benchmark: a long service call on one vCPU must not delay core
//! calls on another. vCPU 1 (on the second CPU) times QUERY_PROTOCOL round trips in a
//! loop, first while the boot vCPU only spins in the guest (idle), then while the boot
//! vCPU's TPM2_CreatePrimary of an RSA-2048 key (the TCG default EK template) runs in the
//! SVSM's vTPM. One line, `BENCH_ISOLATION ...`, reports both; `cargo xtask bench` reads
//! it over several boots.

use super::ap::{self, Latency};
use super::gate::Vmmcall;
use alloc::vec;
use guest::{Client, Transport};

/// Calls vCPU 1 times while the boot vCPU is idle: about as many as fit in the vTPM
/// command, so the worst call of each phase comes from a stretch of the same length.
const IDLE_CALLS: u64 = 20_000;

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// What one run measured.
pub struct Isolation {
    pub idle: Latency,
    pub busy: Latency,
    /// The CreatePrimary as the boot vCPU timed it, and its TPM response code.
    pub vtpm_cycles: u64,
    pub vtpm_rc: u32,
}

impl core::fmt::Display for Isolation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (i, b) = (&self.idle, &self.busy);
        write!(
            f,
            "BENCH_ISOLATION idle_calls={} idle_median_cycles={} idle_worst_cycles={} idle_span_cycles={} \
             idle_failed={} busy_calls={} busy_median_cycles={} busy_worst_cycles={} busy_span_cycles={} \
             busy_failed={} vtpm_cycles={} vtpm_rc={:#x}",
            i.calls,
            i.median,
            i.worst,
            i.span,
            i.failed,
            b.calls,
            b.median,
            b.worst,
            b.span,
            b.failed,
            self.vtpm_cycles,
            self.vtpm_rc
        )
    }
}

/// Create vCPU 1 (VMSA page `vmsa`, calling area `ca`, both validated guest pages), run
/// both phases, delete it again. `buffer` is a validated page for the vTPM command.
pub fn measure(c: &mut Client<Vmmcall>, vmsa: u64, ca: u64, buffer: u64) -> Result<Isolation, alloc::string::String> {
    let image = ap::vmsa(1).ok_or("no VMSA for vCPU 1")?;
    c.transport.write(vmsa, zerocopy::IntoBytes::as_bytes(&image)).map_err(|e| alloc::format!("{e:?}"))?;
    c.create_vcpu(vmsa, ca, 1).map_err(|e| alloc::format!("CREATE_VCPU: {e:?}"))?;
    let measured = phases(c, ca, buffer);
    let deleted = c.delete_vcpu(vmsa);
    let measured = measured?;
    deleted.map_err(|e| alloc::format!("DELETE_VCPU: {e:?}"))?;
    Ok(measured)
}

fn phases(c: &mut Client<Vmmcall>, ca: u64, buffer: u64) -> Result<Isolation, alloc::string::String> {
    if !ap::alive(1) {
        return Err("vCPU 1 does not answer".into());
    }
    // Idle: the boot vCPU spins in the guest until vCPU 1 made its calls.
    if !ap::start_timing(1, ca, IDLE_CALLS) {
        return Err("vCPU 1 did not start timing".into());
    }
    let idle = ap::stop_timing(1, true).ok_or("vCPU 1 did not finish")?;
    // Busy: the boot vCPU's CreatePrimary runs in the vTPM meanwhile.
    if !ap::start_timing(1, ca, u64::MAX) {
        return Err("vCPU 1 did not start timing".into());
    }
    let mut response = vec![0u8; abi::vtpm::BUFFER_SIZE];
    let t0 = rdtsc();
    let sent = c.vtpm_command(buffer, &vtpm::create_ek_command(), &mut response);
    let vtpm_cycles = rdtsc().saturating_sub(t0);
    let busy = ap::stop_timing(1, false).ok_or("vCPU 1 did not stop")?;
    let len = sent.map_err(|e| alloc::format!("CreatePrimary: {e:?}"))?;
    let response = response.get(..len).unwrap_or_default();
    let vtpm_rc = vtpm::wire::ResponseHeader::parse(response).map_or(u32::MAX, |h| h.code);
    // The key goes again (the vTPM keeps few objects).
    if let Some((handle, _)) = vtpm::create_primary_result(response) {
        let mut flush = vtpm::wire::Command::new(vtpm::wire::TPM_ST_NO_SESSIONS, vtpm::wire::TPM_CC_FLUSH_CONTEXT);
        flush.u32(handle);
        let mut out = vec![0u8; abi::vtpm::BUFFER_SIZE];
        let _ = c.vtpm_command(buffer, &flush.finish(), &mut out);
    }
    Ok(Isolation { idle, busy, vtpm_cycles, vtpm_rc })
}
