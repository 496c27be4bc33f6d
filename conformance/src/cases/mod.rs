//! The cases, grouped by spec section.

mod attest;
mod convention;
mod memory;
mod ocp;
mod pvalidate;
mod query;
mod remap;
mod vcpu;
mod vmpl;
mod vtpm;

use crate::Case;

macro_rules! case {
    ($name:literal, $what:literal, $f:path) => {
        Case { name: $name, what: $what, run: $f }
    };
}

/// Every case, in spec order.
pub static CASES: &[Case] = &[
    case!("4.1/secrets-page-fields", "SVSM_BASE/SIZE/CAA/MAX_VERSION/GUEST_VMPL published", convention::secrets_fields),
    case!("4.1/vmpck0-erased", "VMPCK0 zeroed, other VMPCKs kept", convention::vmpck0_erased),
    case!("3/svsm-memory-private", "the guest cannot read SVSM memory", convention::svsm_memory_private),
    case!("5/call-completes", "CALL_PENDING cleared and RAX = SUCCESS after a call", convention::call_completes),
    case!("5/result-is-32-bit", "RAX carries a zero-extended 32-bit result", convention::result_32_bit),
    case!("5/unsupported-protocol", "unknown protocol -> UNSUPPORTED_PROTOCOL", convention::unsupported_protocol),
    case!("5/unsupported-call", "unknown core call -> UNSUPPORTED_CALL", convention::unsupported_call),
    case!("5/call-pending-reserved-value", "CALL_PENDING = 2 -> INVALID_FORMAT", convention::invalid_format),
    case!("5/host-drops-call", "a call the host never ran is seen as not executed", convention::host_drops_call),
    case!("5/spurious-entry", "entry with CALL_PENDING = 0 changes nothing", convention::spurious_entry),
    case!("5/wrong-exit-code", "entry with a non-VMGEXIT exit code is ignored", convention::wrong_exit_code),
    case!(
        "2/vmpl2-memory",
        "a VMPL2 caller cannot PVALIDATE, DEPOSIT, WITHDRAW into or REMAP_CA to a page VMPL1 kept",
        vmpl::memory
    ),
    case!(
        "2/vmpl2-vcpus",
        "a VMPL2 caller cannot delete or replace a VMPL1 vCPU, nor make a VMSA of VMPL1's page",
        vmpl::vcpus
    ),
    case!("2/vmpl2-services", "a VMPL2 caller's attestation, vTPM and OCP buffers must be its own", vmpl::services),
    case!("6.1/remap-ca", "REMAP_CA moves the calling area; old and new CALL_PENDING are 0", remap::remap),
    case!("6.1/remap-ca-inside-page", "an 8-byte aligned calling area inside a page works", remap::remap_inside_page),
    case!("6.1/remap-ca-misaligned", "misaligned gpa -> INVALID_PARAMETER", remap::misaligned),
    case!(
        "6.1/remap-ca-bad-address",
        "SVSM, VMSA, secrets page, unvalidated or non-RAM gpa -> INVALID_ADDRESS",
        remap::bad_address
    ),
    case!("6.2/pvalidate-4k", "4 KiB pages validated, zeroed, usable; next = count", pvalidate::validate_4k),
    case!("6.2/pvalidate-invalidate", "invalidated pages are unusable; validate again works", pvalidate::invalidate),
    case!("6.2/pvalidate-revokes-first", "invalidation leaves no lower-VMPL access", pvalidate::revokes_first),
    case!("6.2/pvalidate-zeroes", "host data in a page is gone once validated", pvalidate::zeroes),
    case!(
        "6.2/pvalidate-host-reassigned",
        "a page the host swapped is not silently re-validated",
        pvalidate::host_reassigned
    ),
    case!("6.2/pvalidate-2m", "2 MiB entry on a 2 MiB RMP page", pvalidate::validate_2m),
    case!(
        "6.2/pvalidate-size-mismatch",
        "2 MiB on 4 KiB RMP and 4 KiB on 2 MiB RMP -> 0x80001006",
        pvalidate::size_mismatch
    ),
    case!(
        "6.2/pvalidate-linux-fallback",
        "the client retries a mismatched 2 MiB entry as 4 KiB",
        pvalidate::linux_fallback
    ),
    case!("6.2/pvalidate-no-change", "double validation -> 0x80001010 unless ignore-CF", pvalidate::no_change),
    case!(
        "6.2/pvalidate-list-bounds",
        "0 entries, page crossing, next >= count, misaligned -> INVALID_PARAMETER",
        pvalidate::list_bounds
    ),
    case!(
        "6.2/pvalidate-entry-format",
        "reserved bits, reserved size, misaligned 2 MiB -> INVALID_PARAMETER",
        pvalidate::entry_format
    ),
    case!(
        "6.2/pvalidate-svsm-owned",
        "SVSM memory, VMSA, calling area, non-RAM -> INVALID_ADDRESS",
        pvalidate::svsm_owned
    ),
    case!("6.2/pvalidate-list-page", "an entry naming the list's own page -> INVALID_ADDRESS", pvalidate::list_page),
    case!(
        "6.2/pvalidate-list-location",
        "list in SVSM or unvalidated memory -> INVALID_ADDRESS",
        pvalidate::list_location
    ),
    case!("6.2/pvalidate-partial", "failure stops at the failing entry; earlier entries done", pvalidate::partial),
    case!("6.2/pvalidate-incomplete", "INCOMPLETE resumes through next, RCX unchanged", pvalidate::incomplete),
    case!("6.2/pvalidate-resume-index", "processing starts at the guest's next index", pvalidate::resume_index),
    case!("6.2/pvalidate-race", "a vCPU rewriting the list mid-call cannot change what is done", pvalidate::race),
    case!("6.3/create-vcpu", "a new vCPU runs and calls the SVSM; its VMSA is private", vcpu::create),
    case!("6.3/create-vcpu-alignment", "misaligned VMSA or calling area -> INVALID_PARAMETER", vcpu::create_alignment),
    case!(
        "6.3/create-vcpu-conflicts",
        "SVSM memory, live VMSA or CA, VMSA == CA -> INVALID_ADDRESS",
        vcpu::create_conflicts
    ),
    case!(
        "6.3/create-vcpu-vmsa-checks",
        "VMPL 0, VMPL 4, other SEV_FEATURES -> INVALID_PARAMETER",
        vcpu::create_vmsa_checks
    ),
    case!(
        "6.3/create-vcpu-svme-set",
        "a VMSA with EFER.SVME = 1 (Linux, OVMF, COCONUT) is accepted",
        vcpu::create_svme_set
    ),
    case!(
        "6.3/create-vcpu-apic-id",
        "the startup vCPU's APIC ID -> INVALID_PARAMETER (R8 bits 63:32 ignored)",
        vcpu::create_duplicate_apic
    ),
    case!(
        "6.3/create-vcpu-replaces",
        "CPU online as Linux does it: CREATE_VCPU(new VMSA, same APIC ID and CA) before DELETE_VCPU(old)",
        vcpu::create_replaces
    ),
    case!(
        "6.3/create-vcpu-needs-memory",
        "pool exhausted -> 0x4nnnnnnn; deposit makes it succeed",
        vcpu::create_needs_memory
    ),
    case!("6.4/delete-vcpu", "deleted vCPU's VMSA and CA return to the guest", vcpu::delete),
    case!("6.4/delete-vcpu-refusals", "startup, unknown, misaligned, self -> INVALID_PARAMETER", vcpu::delete_refusals),
    case!("6.4/delete-vcpu-in-use", "a running VMSA -> 0x80001003", vcpu::delete_in_use),
    case!("6.5/deposit", "deposited pages leave the guest; SVSM_MEM_AVAILABLE set", memory::deposit),
    case!(
        "6.5/deposit-conflicts",
        "SVSM, VMSA, CA, deposited, unvalidated -> INVALID_ADDRESS",
        memory::deposit_conflicts
    ),
    case!(
        "6.5/deposit-list-format",
        "list bounds and entry reserved bits -> INVALID_PARAMETER",
        memory::deposit_format
    ),
    case!("6.5/deposit-partial", "failure leaves the next index at the failing entry", memory::deposit_partial),
    case!("6.5/deposit-2m", "2 MiB deposit of 4 KiB RMP pages; of a 2 MiB RMP page -> 0x80001006", memory::deposit_2m),
    case!("6.6/withdraw", "withdrawn pages are zeroed and the guest's again; flag cleared", memory::withdraw),
    case!("6.6/withdraw-empty", "nothing to withdraw -> 0 entries, SUCCESS", memory::withdraw_empty),
    case!(
        "6.6/withdraw-room",
        "no room -> INVALID_PARAMETER; little room -> partial, flag stays",
        memory::withdraw_room
    ),
    case!("6.6/withdraw-in-use", "pages backing a vCPU are not withdrawn until it is deleted", memory::withdraw_in_use),
    case!("6.7/query-protocol", "core v1 served; other versions and protocols -> 0", query::query_protocol),
    case!("6.8/vtom-query", "query reports support, alignment, range; extra bits refused", query::vtom_query),
    case!("6.8/vtom-configure", "configure sets vTOM, CR3, RIP, RSP in the VMSA", query::vtom_configure),
    case!(
        "6.8/vtom-refusals",
        "reserved bits, bad values, several vCPUs refused with the spec's codes",
        query::vtom_refusals
    ),
    case!(
        "7.1/attest-services",
        "a VMPL0 report bound to SHA-512(nonce || manifest); sizes in RCX/RDX/R8",
        attest::services
    ),
    case!("7.1/attest-sizes", "too-small buffers -> INVALID_PARAMETER with every size; nothing written", attest::sizes),
    case!(
        "7.1/attest-alignment",
        "misaligned or page-crossing operation, buffers, nonce -> INVALID_PARAMETER",
        attest::alignment
    ),
    case!(
        "7.1/attest-addresses",
        "operation or buffers in SVSM memory, a VMSA, unvalidated, non-RAM -> INVALID_ADDRESS",
        attest::addresses
    ),
    case!("7.1/attest-reserved", "reserved fields set -> INVALID_PARAMETER", attest::reserved),
    case!("7.1/attest-nonce-layouts", "u16 and u32 nonce records, and no nonce, all work", attest::nonce_layouts),
    case!("7.1/attest-single-service", "unknown service or version -> INVALID_PARAMETER", attest::single_service),
    case!(
        "7.1/attest-psp-failures",
        "PSP status -> 0x80001000, channel kept; forged answer -> key retired",
        attest::psp_failures
    ),
    case!(
        "7.1/attest-psp-lost-answer",
        "a lost answer retires the key; the core protocol keeps serving",
        attest::psp_lost_answer
    ),
    case!("8.1/vtpm-query", "QUERY_PROTOCOL(2,1); VTPM_QUERY: only TPM_SEND_COMMAND, no features", vtpm::query),
    case!("8.2/vtpm-command", "TPM commands run on the vTPM the SVSM started", vtpm::command),
    case!(
        "8.2/vtpm-malformed-command",
        "a command the TPM cannot parse -> the TPM's own error response; the TPM keeps working",
        vtpm::malformed
    ),
    case!(
        "8.2/vtpm-bad-request",
        "bad ordinal, locality != 0, oversized command -> INVALID_PARAMETER; page unchanged",
        vtpm::bad_request
    ),
    case!(
        "8.2/vtpm-unaligned-buffer",
        "a request buffer at any offset (edk2's static buffer) works; one reaching unvalidated memory -> INVALID_ADDRESS",
        vtpm::unaligned_buffer
    ),
    case!(
        "8.2/vtpm-addresses",
        "request page in SVSM memory, a VMSA, the secrets page, unvalidated, non-RAM -> INVALID_ADDRESS",
        vtpm::addresses
    ),
    case!(
        "8/vtpm-ek-in-manifest",
        "the manifest's vTPM entry is the EK that CreatePrimary(TCG default template) returns",
        vtpm::ek_in_manifest
    ),
    case!("ocp/list", "every source listed with flags and a zero-padded name; stable indexes; end", ocp::list),
    case!(
        "ocp/list-errors",
        "misaligned or bad buffer, 64-bit index or count -> INVALID_PARAMETER / INVALID_ADDRESS",
        ocp::list_errors
    ),
    case!("ocp/read-values", "counters count, offsets and short reads at the end of data", ocp::read_values),
    case!("ocp/read-errors", "bad index, buffer, size, offset -> the spec's error", ocp::read_errors),
    case!("ocp/write", "the log level is written whole; other values and sources refused", ocp::write_setting),
    case!("ocp/log", "the log returns every new line, in order, while logging continues", ocp::log),
    case!("ocp/log-overflow", "overwritten log bytes -> 0x80001000 with the oldest offset", ocp::log_overflow),
    case!("ocp/v2-list-typed", "typed entries: type, protocol tag, size; same sources as LIST", ocp::list_typed),
    case!("ocp/v2-read-register", "a register-sized source in RDX; others -> 0x80001001", ocp::read_register),
    case!("ocp/v2-read-batch", "several sources in one snapshot; all or nothing; bad arrays refused", ocp::read_batch),
    case!(
        "ocp/v2-notify",
        "change events on a guest ring; a full ring counts drops; stop; where a ring may not be",
        ocp::notify
    ),
];
