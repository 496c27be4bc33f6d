//! The SNP CPUID page the image carries (SNP firmware ABI, "CPUID function table"; layout
//! `abi::ghcb::cpuid_page`).
//!
//! The values are those of an EPYC 7003 (Milan, family 19h) guest with SNP. They are a
//! starting point, not the truth for any host: QEMU ignores them and fills the page from
//! KVM's CPUID for the vCPU before SNP_LAUNCH_UPDATE, and for any loader the PSP checks each
//! entry against the processor and rejects the page (returning corrected values) when one
//! claims more than the hardware has. The page is CPUID type, so its contents never reach
//! the launch digest.

use abi::ghcb::cpuid_page::{CpuidEntry, CpuidPage, MAX_ENTRIES};
use zerocopy::{FromZeros, IntoBytes};

/// `(eax_in, ecx_in, xcr0_in, [eax, ebx, ecx, edx])`; xss_in is 0 throughout.
const LEAVES: &[(u32, u32, u64, [u32; 4])] = &[
    // Highest standard leaf 0x10; "AuthenticAMD".
    (0x0, 0, 0, [0x10, 0x6874_7541, 0x444D_4163, 0x6974_6E65]),
    // Family 19h model 01h stepping 1; CLFLUSH line 64 bytes; SSE3..AVX, AES, XSAVE,
    // RDRAND, x2APIC, hypervisor present (ECX); the usual AMD EDX set.
    (0x1, 0, 0, [0x00A0_0F11, 0x0000_0800, 0xF6F8_3203, 0x178B_FBFF]),
    // FSGSBASE, BMI1/2, AVX2, SMEP, SMAP, INVPCID, PQM/PQE, RDSEED, ADX, CLFLUSHOPT, CLWB,
    // SHA (EBX); UMIP, CET shadow stack, VAES, VPCLMULQDQ, RDPID (ECX); FSRM (EDX).
    (0x7, 0, 0, [0, 0x219C_95A9, 0x0040_0684, 0x0000_0010]),
    // Extended topology, SMT level: one logical processor.
    (0xB, 0, 0, [1, 1, 0x100, 0]),
    // XSAVE: x87, SSE, AVX supported; sizes for XCR0 = x87 (the VMSA's XCR0) and for all.
    (0xD, 0, 1, [0x7, 0x240, 0x340, 0]),
    // XSAVEOPT, XSAVEC, XGETBV1, XSAVES; size for XCR0 = x87, XSS = 0.
    (0xD, 1, 1, [0xF, 0x240, 0, 0]),
    // Highest extended leaf 0x8000_0021; "AuthenticAMD".
    (0x8000_0000, 0, 0, [0x8000_0021, 0x6874_7541, 0x444D_4163, 0x6974_6E65]),
    // LAHF/SAHF, CmpLegacy, ABM, SSE4A, MisAlignSse, PREFETCHW, topology extensions (ECX);
    // SYSCALL, NX, MmxExt, FFXSR, 1 GiB pages, RDTSCP, long mode (EDX).
    (0x8000_0001, 0, 0, [0x00A0_0F11, 0x4000_0000, 0x0040_01E3, 0x2FD3_FBFF]),
    // 48-bit physical and linear addresses; CLZERO, IBPB.
    (0x8000_0008, 0, 0, [0x3030, 0x0000_1001, 0, 0]),
    // SEV, SEV-ES, SEV-SNP, VMPLs (EAX); C-bit 51, 1 bit of physical address space
    // reduction, 4 VMPLs (EBX); 509 encrypted guests, SEV-ES ASIDs from 0x80.
    (0x8000_001F, 0, 0, [0x3A, 0x4073, 0x1FD, 0x80]),
];

const _: () = assert!(LEAVES.len() <= MAX_ENTRIES);

/// The CPUID page's bytes.
pub fn page() -> Vec<u8> {
    let mut page = CpuidPage::new_zeroed();
    page.count = LEAVES.len() as u32;
    for (slot, &(eax_in, ecx_in, xcr0_in, [eax, ebx, ecx, edx])) in page.entries.iter_mut().zip(LEAVES) {
        *slot = CpuidEntry { eax_in, ecx_in, xcr0_in, eax, ebx, ecx, edx, ..CpuidEntry::default() };
    }
    page.as_bytes().to_vec()
}
