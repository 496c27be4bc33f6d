//! The GHCB protocol (AMD 56421, "SEV-ES Guest-Hypervisor Communication Block
//! Standardization", version 2): the GHCB MSR, its MSR-protocol codes, the GHCB page
//! layout and the exit codes an SVSM uses. Codes only; the logic is in `snp/`.

/// The GHCB MSR: a guest writes a request (or its GHCB's gpa) here before VMGEXIT.
pub const GHCB_MSR: u32 = 0xC001_0130;
/// SEV_STATUS: which SEV features this guest runs with (read-only, never intercepted).
pub const SEV_STATUS_MSR: u32 = 0xC001_0131;
pub mod sev_status {
    pub const SEV: u64 = 1 << 0;
    pub const SEV_ES: u64 = 1 << 1;
    pub const SNP: u64 = 1 << 2;
}

/// The MSR protocol: GHCBInfo in bits 11:0, data in 63:12.
pub mod msr {
    pub const INFO_MASK: u64 = 0xFFF;
    pub const SEV_INFO_RESP: u64 = 0x001;
    pub const SEV_INFO_REQ: u64 = 0x002;
    pub const CPUID_REQ: u64 = 0x004;
    pub const CPUID_RESP: u64 = 0x005;
    pub const REGISTER_GPA_REQ: u64 = 0x012;
    pub const REGISTER_GPA_RESP: u64 = 0x013;
    pub const PSC_REQ: u64 = 0x014;
    pub const PSC_RESP: u64 = 0x015;
    pub const RUN_VMPL_REQ: u64 = 0x016;
    pub const RUN_VMPL_RESP: u64 = 0x017;
    pub const HV_FEATURES_REQ: u64 = 0x080;
    pub const HV_FEATURES_RESP: u64 = 0x081;
    pub const TERM_REQ: u64 = 0x100;
    /// Page-state-change operations (bits 55:52 of PSC_REQ).
    pub const PSC_PRIVATE: u64 = 1;
    pub const PSC_SHARED: u64 = 2;
    /// HV_FEATURES bits.
    pub const HV_FEATURE_SNP: u64 = 1 << 0;
    pub const HV_FEATURE_SNP_AP_CREATION: u64 = 1 << 1;
    pub const HV_FEATURE_SNP_RESTRICTED_INJECTION: u64 = 1 << 2;
    /// The host runs one guest at several VMPLs (GHCB 2.03, bit 5).
    pub const HV_FEATURE_SNP_MULTI_VMPL: u64 = 1 << 5;
    /// GHCB protocol versions Bulwark speaks (2 adds the SNP events it needs).
    pub const PROTOCOL_MIN: u16 = 2;
    pub const PROTOCOL_MAX: u16 = 2;
}

/// Termination reason code sets (bits 15:12 of TERM_REQ) and codes (23:16).
pub mod term {
    /// Set 0: defined by the GHCB specification.
    pub const SET_GHCB: u8 = 0;
    pub const GENERAL: u8 = 0;
    pub const PROTOCOL_UNSUPPORTED: u8 = 1;
    pub const SNP_UNSUPPORTED: u8 = 2;
    /// Set 1 is the guest's own (Linux uses it too); Bulwark's codes in it:
    pub const SET_BULWARK: u8 = 1;
    /// The GHCB page could not be registered or made shared.
    pub const GHCB_SETUP: u8 = 0;
    /// A page-state change failed.
    pub const PAGE_STATE: u8 = 1;
    /// PVALIDATE of the SVSM's own memory failed.
    pub const PVALIDATE: u8 = 2;
    /// The launch handed over no usable boot information (BootInfo, secrets, CPUID page).
    pub const BOOT_INFO: u8 = 3;
    /// A #VC the SVSM cannot handle for itself.
    pub const UNHANDLED_VC: u8 = 4;
    /// A panic inside the SVSM.
    pub const PANIC: u8 = 5;
    /// Undoing a half-done change failed: the SVSM's records no longer match the RMP,
    /// so it stops rather than serve on them (only a host changing the RMP under the SVSM
    /// gets here).
    pub const INCONSISTENT: u8 = 6;
}

/// SW_EXITCODE values.
pub mod exit {
    pub const RDTSC: u64 = 0x6E;
    pub const CPUID: u64 = 0x72;
    pub const IOIO: u64 = 0x7B;
    pub const MSR: u64 = 0x7C;
    pub const VMMCALL: u64 = 0x81;
    pub const RDTSCP: u64 = 0x87;
    pub const NPF: u64 = 0x400;
    /// MMIO through the host (GHCB spec, "MMIO Read/Write"): SW_EXITINFO1 the address,
    /// SW_EXITINFO2 the byte count, SW_SCRATCH the buffer holding (or receiving) the data.
    pub const MMIO_READ: u64 = 0x8000_0001;
    pub const MMIO_WRITE: u64 = 0x8000_0002;
    pub const PSC: u64 = 0x8000_0010;
    pub const GUEST_REQUEST: u64 = 0x8000_0011;
    pub const EXT_GUEST_REQUEST: u64 = 0x8000_0012;
    pub const AP_CREATION: u64 = 0x8000_0013;
    pub const RUN_VMPL: u64 = 0x8000_0018;
    pub const HV_FEATURES: u64 = 0x8000_FFFD;
    pub const TERMINATE: u64 = 0x8000_FFFE;
    /// AP_CREATION requests (SW_EXITINFO1 bits 31:0).
    pub const AP_CREATE_ON_INIT: u64 = 0;
    pub const AP_CREATE: u64 = 1;
    pub const AP_DESTROY: u64 = 2;
}

/// Host errors of a guest request (SW_EXITINFO2 bits 63:32).
pub mod guest_request {
    /// The certificate buffer is too small; RBX holds the pages needed. The message did
    /// not reach the PSP.
    pub const INVALID_LEN: u32 = 1;
    /// The host is throttling requests: the message did not reach the PSP; send the same
    /// one again.
    pub const BUSY: u32 = 2;
}

/// #VC error code of an access to a page that is not validated.
pub const VC_PAGE_NOT_VALIDATED: u64 = 0x404;

/// Offsets of the GHCB page fields Bulwark uses (the save area mirrors the VMSA's).
pub mod offset {
    pub const RAX: usize = 0x1F8;
    pub const RCX: usize = 0x308;
    pub const RDX: usize = 0x310;
    pub const RBX: usize = 0x318;
    pub const SW_EXIT_CODE: usize = 0x390;
    pub const SW_EXIT_INFO_1: usize = 0x398;
    pub const SW_EXIT_INFO_2: usize = 0x3A0;
    pub const SW_SCRATCH: usize = 0x3A8;
    pub const XCR0: usize = 0x3E8;
    /// One bit per quadword of the save area: which fields the writer set.
    pub const VALID_BITMAP: usize = 0x3F0;
    pub const VALID_BITMAP_LEN: usize = 16;
    pub const SHARED_BUFFER: usize = 0x800;
    pub const SHARED_BUFFER_LEN: usize = 0x7F0;
    pub const PROTOCOL_VERSION: usize = 0xFFA;
    pub const USAGE: usize = 0xFFC;
}

/// IOIO exit information (SW_EXITINFO1) bits.
pub mod ioio {
    pub const IN: u64 = 1 << 0;
    pub const STRING: u64 = 1 << 2;
    pub const REP: u64 = 1 << 3;
    pub const SIZE8: u64 = 1 << 4;
    pub const SIZE16: u64 = 1 << 5;
    pub const SIZE32: u64 = 1 << 6;
    pub const ADDR16: u64 = 1 << 7;
    pub const ADDR32: u64 = 1 << 8;
    pub const ADDR64: u64 = 1 << 9;
    pub const PORT_SHIFT: u32 = 16;
}

/// The SNP CPUID page (SNP firmware ABI, CPUID function table).
pub mod cpuid_page {
    use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

    pub const MAX_ENTRIES: usize = 64;

    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
    #[repr(C)]
    pub struct CpuidEntry {
        pub eax_in: u32,
        pub ecx_in: u32,
        pub xcr0_in: u64,
        pub xss_in: u64,
        pub eax: u32,
        pub ebx: u32,
        pub ecx: u32,
        pub edx: u32,
        pub reserved: u64,
    }
    crate::assert_size!(CpuidEntry, 48);

    #[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
    #[repr(C)]
    pub struct CpuidPage {
        pub count: u32,
        pub reserved0: u32,
        pub reserved1: u64,
        pub entries: [CpuidEntry; MAX_ENTRIES],
        pub tail: [u8; 4096 - 16 - 48 * MAX_ENTRIES],
    }
    crate::assert_size!(CpuidPage, 4096);
}
