//! `bulwark igvm measure`: the launch digest QEMU/KVM produce when they launch an IGVM
//! file on SEV-SNP, predicted from the file. The rules (directive to page type, ordering)
//! are QEMU's, as docs/platforms/snp-launch.md records them; a file that breaks QEMU/KVM's
//! rules for the VMSA (`kvm`) is refused.

use super::kvm;
use attest::launch_digest::{LaunchDigest, PageType, VMSA_GPA};
use igvm::{IgvmDirectiveHeader, IgvmFile, IgvmPlatformHeader};
use igvm_defs::{IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType};
use sha2::{Digest, Sha384};
use std::collections::HashMap;
use zerocopy::IntoBytes;

const PAGE: usize = 4096;

/// One SNP_LAUNCH_UPDATE page as the PSP measures it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasuredPage {
    pub gpa: u64,
    pub page_type: PageType,
    /// PAGE_INFO CONTENTS: SHA-384 of the page for NORMAL and VMSA pages, zero otherwise.
    pub contents: [u8; 48],
    /// A NORMAL page the file gives no data for (measured as 4 KiB of zeros).
    pub zero: bool,
}

pub fn type_name(t: PageType) -> &'static str {
    match t {
        PageType::Normal => "normal",
        PageType::Vmsa => "vmsa",
        PageType::Zero => "zero",
        PageType::Unmeasured => "unmeasured",
        PageType::Secrets => "secrets",
        PageType::Cpuid => "cpuid",
    }
}

/// Parse an IGVM file, all platforms (QEMU's grouping of page data depends on the
/// directives' positions among all of them).
pub fn parse(bytes: &[u8]) -> Result<IgvmFile, String> {
    // The igvm crate can panic on some crafted inputs (unchecked offset arithmetic); a bad
    // file must give an error, and without the panic message.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let parsed = std::panic::catch_unwind(|| IgvmFile::new_from_binary(bytes, None));
    std::panic::set_hook(hook);
    match parsed {
        Ok(Ok(file)) => Ok(file),
        Ok(Err(e)) => Err(format!("not a valid IGVM file: {e}")),
        Err(_) => Err("not a valid IGVM file (the igvm parser gave up on it)".into()),
    }
}

/// The compatibility mask of the file's SEV-SNP platform.
fn snp_mask(file: &IgvmFile) -> Result<u32, String> {
    file.platforms()
        .iter()
        .find_map(|p| match p {
            IgvmPlatformHeader::SupportedPlatform(info) if info.platform_type == IgvmPlatformType::SEV_SNP => {
                Some(info.compatibility_mask)
            }
            _ => None,
        })
        .ok_or_else(|| "the file has no SEV-SNP platform".into())
}

fn sha384(bytes: &[u8]) -> [u8; 48] {
    let mut page = [0u8; PAGE];
    page[..bytes.len().min(PAGE)].copy_from_slice(&bytes[..bytes.len().min(PAGE)]);
    Sha384::digest(page).into()
}

/// What QEMU sends for one PageData directive (backends/igvm.c, target/i386/sev.c).
fn page(gpa: u64, flags: IgvmPageDataFlags, data_type: IgvmPageDataType, data: &[u8]) -> Result<MeasuredPage, String> {
    let unhashed = |page_type| MeasuredPage { gpa, page_type, contents: [0; 48], zero: false };
    Ok(match data_type {
        IgvmPageDataType::NORMAL if flags.unmeasured() => unhashed(PageType::Unmeasured),
        // A page without data is NORMAL too, never ZERO: QEMU sends it as a page of zeros.
        IgvmPageDataType::NORMAL => {
            MeasuredPage { gpa, page_type: PageType::Normal, contents: sha384(data), zero: data.is_empty() }
        }
        IgvmPageDataType::SECRETS => unhashed(PageType::Secrets),
        IgvmPageDataType::CPUID_DATA | IgvmPageDataType::CPUID_XF => unhashed(PageType::Cpuid),
        other => return Err(format!("page data at {gpa:#x} has a data type QEMU does not know ({})", other.0)),
    })
}

/// The pages of a QEMU run of page data: what must follow for the next page to extend it.
#[derive(PartialEq)]
struct RunKey {
    index: usize,
    gpa: u64,
    flags: IgvmPageDataFlags,
    data_type: IgvmPageDataType,
    mask: u32,
    has_data: bool,
}

/// QEMU's order of pages: it holds a run of contiguous page data (same attributes,
/// consecutive directives) and sends it when a page that does not extend it arrives, or
/// at the end; parameter inserts go out at once, so ahead of the run being held.
#[derive(Default)]
struct Queue {
    out: Vec<MeasuredPage>,
    held: Vec<MeasuredPage>,
    last: Option<RunKey>,
}

impl Queue {
    fn page_data(&mut self, key: RunKey, page: MeasuredPage) {
        let extends = self
            .last
            .as_ref()
            .is_some_and(|l| RunKey { index: l.index + 1, gpa: l.gpa.wrapping_add(PAGE as u64), ..*l } == key);
        if !extends {
            self.out.append(&mut self.held);
        }
        self.held.push(page);
        self.last = Some(key);
    }

    fn unmeasured(&mut self, gpa: u64) {
        self.out.push(MeasuredPage { gpa, page_type: PageType::Unmeasured, contents: [0; 48], zero: false });
    }

    fn finish(mut self) -> Vec<MeasuredPage> {
        self.out.append(&mut self.held);
        self.out
    }
}

/// The pages KVM measures for `file` on SEV-SNP with `vcpus` vCPUs, in order.
pub fn pages(file: &IgvmFile, vcpus: u32) -> Result<Vec<MeasuredPage>, String> {
    let snp = snp_mask(file)?;
    let mut queue = Queue::default();
    let mut areas: HashMap<u32, u64> = HashMap::new();
    // The boot vCPU's VMSA, once seen: nothing measured may follow it.
    let mut vmsa: Option<[u8; 48]> = None;
    for (index, d) in file.directives().iter().enumerate() {
        match d {
            IgvmDirectiveHeader::PageData { gpa, compatibility_mask, flags, data_type, data }
                if compatibility_mask & snp != 0 =>
            {
                if vmsa.is_some() {
                    return Err(kvm::after_vmsa("page data", *gpa));
                }
                if flags.is_2mb_page() {
                    return Err(format!("page data at {gpa:#x} is a 2 MiB page, which this tool does not measure"));
                }
                let (flags, data_type, mask, has_data) = (*flags, *data_type, *compatibility_mask, !data.is_empty());
                let key = RunKey { index, gpa: *gpa, flags, data_type, mask, has_data };
                queue.page_data(key, page(*gpa, flags, data_type, data)?);
            }
            IgvmDirectiveHeader::ParameterArea { number_of_bytes, parameter_area_index, .. } => {
                // QEMU keeps an area's size in 32 bits.
                if *number_of_bytes > u64::from(u32::MAX) {
                    return Err(format!("parameter area {parameter_area_index} is larger than 4 GiB"));
                }
                areas.insert(*parameter_area_index, *number_of_bytes);
            }
            IgvmDirectiveHeader::ParameterInsert(p) if p.compatibility_mask & snp != 0 => {
                if vmsa.is_some() {
                    return Err(kvm::after_vmsa("a parameter insert", p.gpa));
                }
                let bytes = areas
                    .get(&p.parameter_area_index)
                    .ok_or_else(|| format!("parameter insert at {:#x} names no parameter area", p.gpa))?;
                for i in 0..bytes.div_ceil(PAGE as u64) {
                    queue.unmeasured(p.gpa.wrapping_add(i * PAGE as u64));
                }
            }
            IgvmDirectiveHeader::SnpVpContext { gpa, compatibility_mask, vp_index, vmsa: v }
                if compatibility_mask & snp != 0 =>
            {
                if vmsa.is_some() {
                    return Err(kvm::second_vmsa(*vp_index));
                }
                kvm::check_vmsa(*gpa, *vp_index, v)?;
                vmsa = Some(sha384(v.as_bytes()));
            }
            _ => {}
        }
    }
    let mut out = queue.finish();
    out.push(MeasuredPage { gpa: VMSA_GPA, page_type: PageType::Vmsa, contents: the_vmsa(vmsa, vcpus)?, zero: false });
    Ok(out)
}

/// KVM measures the boot vCPU's VMSA at LAUNCH_FINISH; QEMU starts the vCPUs the file gives
/// no VMSA for from its own reset state, which this tool cannot predict.
fn the_vmsa(vmsa: Option<[u8; 48]>, vcpus: u32) -> Result<[u8; 48], String> {
    if vcpus == 0 {
        return Err("--vcpus must be at least 1".into());
    }
    let contents = vmsa.ok_or("the file carries no SEV-SNP VMSA for vCPU 0")?;
    if vcpus > 1 {
        return Err(format!(
            "the file carries no VMSA for vCPU 1: QEMU would start vCPUs 1..{} from its reset state, whose \
             measurement this tool cannot predict (QEMU/KVM take one VMSA from the file, the boot vCPU's)",
            vcpus - 1
        ));
    }
    Ok(contents)
}

/// The launch digest of `pages`.
pub fn digest(pages: &[MeasuredPage]) -> [u8; 48] {
    let mut d = LaunchDigest::new();
    for p in pages {
        d.update(p.page_type, p.gpa, &p.contents);
    }
    d.digest()
}

#[cfg(test)]
mod tests {
    use super::*;
    use igvm::IgvmRevision;
    use igvm_defs::{IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_SUPPORTED_PLATFORM};

    const SNP: u32 = 1;
    const NATIVE: u32 = 2;

    fn data(gpa: u64, mask: u32, data: Vec<u8>) -> IgvmDirectiveHeader {
        IgvmDirectiveHeader::PageData {
            gpa,
            compatibility_mask: mask,
            flags: IgvmPageDataFlags::new(),
            data_type: IgvmPageDataType::NORMAL,
            data,
        }
    }

    /// The (gpa, type) sequence measured for `directives` (an area of 2 pages, index 0,
    /// declared first; one VMSA last).
    fn order(directives: Vec<IgvmDirectiveHeader>) -> Vec<(u64, PageType)> {
        let platform = |compatibility_mask, platform_type| {
            IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
                compatibility_mask,
                highest_vtl: 0,
                platform_type,
                platform_version: 1,
                shared_gpa_boundary: 0,
            })
        };
        let mut all = vec![IgvmDirectiveHeader::ParameterArea {
            number_of_bytes: 0x2000,
            parameter_area_index: 0,
            initial_data: vec![],
        }];
        all.extend(directives);
        all.push(IgvmDirectiveHeader::SnpVpContext {
            gpa: VMSA_GPA,
            compatibility_mask: SNP,
            vp_index: 0,
            vmsa: super::super::start::vmsa(0x100_0000),
        });
        let platforms = vec![platform(SNP, IgvmPlatformType::SEV_SNP), platform(NATIVE, IgvmPlatformType::NATIVE)];
        let file = IgvmFile::new(IgvmRevision::V1, platforms, vec![], all).unwrap();
        pages(&file, 1).unwrap().into_iter().map(|p| (p.gpa, p.page_type)).collect()
    }

    const INSERT: IgvmDirectiveHeader = IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
        gpa: 0x9000,
        compatibility_mask: SNP,
        parameter_area_index: 0,
    });

    #[test]
    fn an_insert_after_a_run_of_page_data_is_measured_before_the_run() {
        use PageType::{Normal as N, Unmeasured as U, Vmsa as V};
        let run = || vec![data(0x1000, SNP, vec![1]), data(0x2000, SNP, vec![2])];
        assert_eq!(
            order([run(), vec![INSERT]].concat()),
            [(0x9000, U), (0xA000, U), (0x1000, N), (0x2000, N), (VMSA_GPA, V)]
        );
        // A page that does not extend the run (not contiguous; no data after data; a
        // directive of another platform in between) sends the run before the insert.
        for breaker in [
            vec![data(0x4000, SNP, vec![3])],
            vec![data(0x3000, SNP, vec![])],
            vec![data(0x7000, NATIVE, vec![3]), data(0x3000, SNP, vec![3])],
        ] {
            let measured = order([run(), breaker, vec![INSERT]].concat());
            assert_eq!(measured[..4], [(0x1000, N), (0x2000, N), (0x9000, U), (0xA000, U)], "{measured:x?}");
        }
    }

    #[test]
    fn page_types_follow_qemu() {
        let flags = IgvmPageDataFlags::new().with_unmeasured(true);
        let typed = |gpa, data_type, flags| IgvmDirectiveHeader::PageData {
            gpa,
            compatibility_mask: SNP | NATIVE,
            flags,
            data_type,
            data: vec![],
        };
        let measured = order(vec![
            typed(0x1000, IgvmPageDataType::NORMAL, flags),
            typed(0x2000, IgvmPageDataType::SECRETS, flags),
            typed(0x3000, IgvmPageDataType::CPUID_XF, IgvmPageDataFlags::new()),
            typed(0x4000, IgvmPageDataType::NORMAL, IgvmPageDataFlags::new()),
            data(0x5000, NATIVE, vec![9]),
        ]);
        let types: Vec<_> = measured.iter().map(|m| m.1).collect();
        use PageType::*;
        assert_eq!(types, [Unmeasured, Secrets, Cpuid, Normal, Vmsa]);
    }
}
