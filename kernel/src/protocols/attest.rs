//! The attestation protocol (protocol 1; spec 58019 section 7, rev 1.00 as Linux calls it,
//! docs/facts.md section 1): SVSM_ATTEST_SERVICES and SVSM_ATTEST_SINGLE_SERVICE.
//!
//! The guest names four buffers (report, nonce, manifest, certificates) in an operation
//! structure. The SVSM builds the services manifest, asks the PSP over its own channel
//! for a VMPL0 report whose REPORT_DATA is SHA-512(nonce || manifest), and copies report,
//! manifest and certificates out. RCX, RDX and R8 always come back with the manifest,
//! certificate and report sizes (on success and when a buffer is too small), because
//! Linux resizes its buffers from them. Decisions the spec leaves open are in
//! docs/protocols/attestation.md.

use crate::addr::Gpa;
use crate::error::{CallError, CallResult};
use crate::guest_memory::{self, GuestView};
use crate::heap;
use crate::platform::Platform;
use crate::protocols::{CallContext, Reply};
use crate::psp_channel::ChannelError;
use crate::svsm::Svsm;
use abi::PAGE_SIZE;
use abi::attest::{
    ATTEST_CHAIN_GUID, AttestServicesOp, AttestSingleServiceOp, BufferRecord, ManifestEntry, ManifestHeader,
    REPORT_SIZE, SEALED_STATE_GUID, SERVICES_MANIFEST_GUID, SealedStateEntry, VTPM_LINEAGE_GUID, VTPM_SERVICE_GUID,
};
use abi::guid::Guid;
use abi::protocol::attest_call;
use alloc::vec::Vec;
use sha2::{Digest, Sha512};
use zerocopy::IntoBytes;

pub fn handle<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext) -> Reply {
    match ctx.id.call {
        attest_call::ATTEST_SERVICES => attest(svsm, p, ctx, false),
        attest_call::ATTEST_SINGLE_SERVICE => attest(svsm, p, ctx, true),
        _ => Reply::err(CallError::UnsupportedCall),
    }
}

/// The services that contribute to the manifest: (GUID, the service's attestation data).
/// The vTPM, when there is one, contributes its EK public area (TPMT_PUBLIC) and its
/// lineage (`VtpmLineageEntry` and its ancestors); the sealed state, when there is one, the
/// committed state it runs on (`SealedStateEntry`) and its attestation chain.
fn services<'a>(
    svsm: &'a Svsm,
    sealed: &'a Option<SealedStateEntry>,
    lineage: &'a Option<Vec<u8>>,
    chain: &'a Option<Vec<u8>>,
) -> CallResult<Vec<(Guid, &'a [u8])>> {
    let mut all = heap::with_capacity(4)?;
    all.extend(svsm.vtpm_ek().map(|ek| (VTPM_SERVICE_GUID, ek)));
    all.extend(lineage.as_deref().map(|entry| (VTPM_LINEAGE_GUID, entry)));
    all.extend(sealed.as_ref().map(|entry| (SEALED_STATE_GUID, entry.as_bytes())));
    all.extend(chain.as_deref().map(|entry| (ATTEST_CHAIN_GUID, entry)));
    Ok(all)
}

/// The services manifest (spec table 12): header, entries, then each service's data.
fn manifest(services: &[(Guid, &[u8])]) -> CallResult<Vec<u8>> {
    let too_big = || CallError::InvalidRequest("services manifest too large");
    let table = core::mem::size_of::<ManifestHeader>() + services.len() * core::mem::size_of::<ManifestEntry>();
    let total = services.iter().try_fold(table, |n, (_, data)| n.checked_add(data.len())).ok_or_else(too_big)?;
    let mut out = Vec::new();
    out.try_reserve_exact(total).map_err(|_| CallError::OutOfMemory)?;
    let header = ManifestHeader {
        guid: SERVICES_MANIFEST_GUID,
        length: u32::try_from(total).map_err(|_| too_big())?,
        service_count: u32::try_from(services.len()).map_err(|_| too_big())?,
    };
    out.extend_from_slice(header.as_bytes());
    let mut offset = table;
    for (guid, data) in services {
        let (at, length) = (u32::try_from(offset), u32::try_from(data.len()));
        let entry =
            ManifestEntry { guid: *guid, offset: at.map_err(|_| too_big())?, length: length.map_err(|_| too_big())? };
        out.extend_from_slice(entry.as_bytes());
        offset = offset.saturating_add(data.len());
    }
    for (_, data) in services {
        out.extend_from_slice(data);
    }
    Ok(out)
}

/// The manifest a call returns: every service's, or (SINGLE_SERVICE) the named service's
/// data alone.
fn build_manifest(svsm: &Svsm, service: Option<(Guid, u32)>) -> CallResult<Vec<u8>> {
    // One snapshot of the sealed state: its entry, the vTPM's lineage and the chain from
    // one commit.
    let summary = svsm.sealed_summary_now();
    let sealed = summary.as_ref().map(|s| s.entry);
    let lineage = match svsm.vtpm_lineage_in(summary.as_ref()) {
        Some((lineage, kept)) => Some(lineage.entry(kept).ok_or(CallError::OutOfMemory)?),
        None => None,
    };
    let chain = match summary.as_ref().map(|s| s.chain) {
        Some(chain) => Some(chain.entry().ok_or(CallError::OutOfMemory)?),
        None => None,
    };
    let all = services(svsm, &sealed, &lineage, &chain)?;
    match service {
        None => manifest(&all),
        Some((guid, version)) => {
            // Each service has one manifest version so far: 0 (its default) or 1.
            if version > 1 {
                return Err(CallError::InvalidParameter("unknown service manifest version"));
            }
            match all.iter().find(|(g, _)| *g == guid) {
                Some((_, data)) => heap::copy_of(data),
                None => Err(CallError::InvalidParameter("no such service")),
            }
        }
    }
}

/// A buffer the guest named: page-aligned when `aligned` is asked, inside one page when
/// `one_page`, and then checked as a parameter range (`write` for output buffers).
fn buffer(record: &BufferRecord, aligned: bool, one_page: bool, what: &'static str) -> CallResult<Option<Gpa>> {
    if record.reserved != 0 {
        return Err(CallError::InvalidParameter(what));
    }
    if record.len == 0 {
        return Ok(None);
    }
    let gpa = Gpa(record.gpa);
    if aligned && !gpa.is_aligned(PAGE_SIZE) {
        return Err(CallError::InvalidParameter(what));
    }
    if one_page && gpa.page_offset() + u64::from(record.len) > PAGE_SIZE {
        return Err(CallError::InvalidParameter(what));
    }
    Ok(Some(gpa))
}

fn check_range<P: Platform + ?Sized>(p: &P, view: GuestView<'_>, gpa: Gpa, len: usize, write: bool) -> CallResult<()> {
    if write {
        guest_memory::check_writable(p, view, gpa, len)
    } else {
        guest_memory::check_readable(p, view, gpa, len)
    }
}

fn attest<P: Platform + ?Sized>(svsm: &Svsm, p: &mut P, ctx: &CallContext, single: bool) -> Reply {
    let mut sizes = None;
    let status = attest_inner(svsm, p, ctx, single, &mut sizes);
    // Sizes go back whatever happened once they are known: Linux grows its buffers from
    // them after INVALID_PARAMETER. Before that, the registers stay as they were.
    match sizes {
        Some((manifest, certificates)) => {
            Reply::from(status).with_rcx(manifest).with_rdx(certificates).with_r8(REPORT_SIZE as u64)
        }
        None => Reply::from(status),
    }
}

fn attest_inner<P: Platform + ?Sized>(
    svsm: &Svsm,
    p: &mut P,
    ctx: &CallContext,
    single: bool,
    sizes: &mut Option<(u64, u64)>,
) -> CallResult<()> {
    // 1. The operation structure: 8-byte aligned, within one page, outside SVSM memory.
    let op_gpa = Gpa(ctx.regs.rcx);
    let op_len = if single { core::mem::size_of::<AttestSingleServiceOp>() } else { 0x40 } as u64;
    if !op_gpa.is_aligned(8) || op_gpa.page_offset() + op_len > PAGE_SIZE {
        return Err(CallError::InvalidParameter("operation structure misaligned or crossing a page"));
    }
    let (op, service): (AttestServicesOp, Option<(Guid, u32)>) = if single {
        let s: AttestSingleServiceOp = guest_memory::read(p, ctx.view(&svsm.pages), op_gpa)?;
        if s.reserved != 0 {
            return Err(CallError::InvalidParameter("reserved field of the operation is set"));
        }
        (s.base, Some((Guid(s.service_guid), s.manifest_version)))
    } else {
        (guest_memory::read(p, ctx.view(&svsm.pages), op_gpa)?, None)
    };

    // 2. The buffers: alignment and page rules first (INVALID_PARAMETER), then ownership
    //    (INVALID_ADDRESS for SVSM memory, VMSAs and the like).
    let report = buffer(&op.report, true, false, "report buffer")?;
    let nonce = buffer(&op.nonce, false, true, "nonce")?;
    let manifest_buf = buffer(&op.manifest, true, false, "manifest buffer")?;
    let certs_buf = buffer(&op.certificates, true, false, "certificates buffer")?;
    for (gpa, record, write) in
        [(report, &op.report, true), (nonce, &op.nonce, false), (manifest_buf, &op.manifest, true)]
            .into_iter()
            .chain([(certs_buf, &op.certificates, true)])
    {
        if let Some(gpa) = gpa {
            check_range(p, ctx.view(&svsm.pages), gpa, record.len as usize, write)?;
        }
    }
    let mut nonce_bytes = Vec::new();
    if let Some(gpa) = nonce {
        nonce_bytes = heap::zeroed(op.nonce.len as usize)?;
        guest_memory::read_bytes(p, ctx.view(&svsm.pages), gpa, &mut nonce_bytes)?;
    }

    // 3. What the SVSM will return, and whether it fits.
    let mut manifest = build_manifest(svsm, service)?;
    let certificates = if certs_buf.is_some() { heap::copy_of(p.report_certificates())? } else { Vec::new() };
    *sizes = Some((manifest.len() as u64, certificates.len() as u64));
    let fits = |buf: Option<Gpa>, record: &BufferRecord, need: usize| {
        need == 0 || (buf.is_some() && record.len as usize >= need)
    };
    if !fits(report, &op.report, REPORT_SIZE)
        || !fits(manifest_buf, &op.manifest, manifest.len())
        || !fits(certs_buf, &op.certificates, certificates.len())
    {
        return Err(CallError::InvalidParameter("a buffer is too small (sizes in RCX, RDX, R8)"));
    }
    // The call will be served: with a sealed state, its link goes into the attestation
    // chain first, and the manifest shows the state with it (docs/persistence.md, "The
    // attestation chain"). Only for a whole manifest, the evidence that shows the chain.
    // A link that did not commit fails the call: evidence of a state whose chain lacks
    // this attestation would let a fork pass the verifier's ledger. A closed sealed state
    // takes no more links; its manifest says it closed, which no verifier accepts.
    let open = |e: SealedStateEntry| e.flags & abi::attest::SEALED_STATE_FAILED == 0;
    if service.is_none() && svsm.sealed_state_entry().is_some_and(open) {
        if let Err(e) = svsm.note_attestation(&nonce_bytes) {
            crate::log!(p, Warn, "attestation: the chain's link was not committed: {:?}", e);
            return Err(CallError::AttestationFailed("the attestation chain's link could not be committed"));
        }
        manifest = build_manifest(svsm, service)?;
        *sizes = Some((manifest.len() as u64, certificates.len() as u64));
        if !fits(manifest_buf, &op.manifest, manifest.len()) {
            return Err(CallError::InvalidParameter("the manifest grew (sizes in RCX, RDX, R8)"));
        }
    }

    // 4. The report, bound to nonce and manifest.
    let mut digest = Sha512::new();
    digest.update(&nonce_bytes);
    digest.update(&manifest);
    let report_data: [u8; 64] = digest.finalize().into();
    // The channel's lock is held for the exchange (one guest request at a time, as the
    // sequence numbers require), and only by attestation.
    let answer = svsm.psp.lock().request_report(p, &report_data);
    let signed = answer.map_err(|e| {
        crate::log!(p, Warn, "attestation: no report from the PSP: {:?}", e);
        match e {
            ChannelError::Unavailable => CallError::AttestationFailed("the PSP channel is closed"),
            ChannelError::NoPsp => CallError::AttestationFailed("no PSP on this platform"),
            ChannelError::Transport(_) => CallError::AttestationFailed("the guest request was not answered"),
            ChannelError::BadAnswer(why) => CallError::AttestationFailed(why),
            ChannelError::Status(_) => CallError::AttestationFailed("the PSP refused the request"),
            ChannelError::NoMemory => CallError::OutOfMemory,
        }
    })?;

    // 5. Out: manifest, certificates, then the report (each checked again as the copy
    // goes): another vCPU may have taken one of the pages since step 2, and then the call
    // fails without a signed report left behind.
    if let Some(gpa) = manifest_buf.filter(|_| !manifest.is_empty()) {
        guest_memory::write_bytes(p, ctx.view(&svsm.pages), gpa, &manifest)?;
    }
    if let Some(gpa) = certs_buf.filter(|_| !certificates.is_empty()) {
        guest_memory::write_bytes(p, ctx.view(&svsm.pages), gpa, &certificates)?;
    }
    if let Some(gpa) = report {
        guest_memory::write_bytes(p, ctx.view(&svsm.pages), gpa, &signed[..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_manifest_is_the_24_byte_header() {
        let m = manifest(&[]).unwrap();
        assert_eq!(m.len(), 24);
        assert_eq!(&m[..16], &SERVICES_MANIFEST_GUID.0);
        assert_eq!(&m[16..24], &[24, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn service_data_follows_the_table_at_the_offsets_the_entries_give() {
        let a = Guid([1; 16]);
        let b = Guid([2; 16]);
        let m = manifest(&[(a, &[0xAA; 3][..]), (b, &[0xBB; 5][..])]).unwrap();
        let table = 24 + 2 * 24;
        assert_eq!(m.len(), table + 8);
        assert_eq!(&m[16..20], &((table + 8) as u32).to_le_bytes());
        assert_eq!(&m[24 + 16..24 + 24], &[table as u8, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(&m[48 + 16..48 + 24], &[(table + 3) as u8, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!(&m[table..], &[0xAA, 0xAA, 0xAA, 0xBB, 0xBB, 0xBB, 0xBB, 0xBB]);
    }
}
