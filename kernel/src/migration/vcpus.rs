//! The guest's vCPUs and the pages it deposited, as a migration's last round moves them
//! (docs/migration.md "vCPUs and deposits"). The guest is stopped by then, so each VMSA
//! holds its vCPU's whole state.
//!
//! Deposits, integers big-endian: `"BWDP" | u32 count | count * (u64 gpa | u32 pages)`,
//! runs of deposited pages. Their bytes do not move: they hold the source SVSM's own
//! per-vCPU context, which the destination makes again.
//!
//! A vCPU, one record each, the startup vCPU first:
//!
//! ```text
//! "BWVC" | u32 APIC ID | u8 creator VMPL | u64 VMSA gpa | u64 calling-area gpa
//!        | u8 perms of VMPL1, VMPL2, VMPL3 on the calling area's page
//!        | 4096 bytes: the calling area's page | 4096 bytes: the VMSA
//! ```
//!
//! The destination makes each vCPU as CREATE_VCPU would for its creator, with every check
//! of that call: the VMSA page goes to the guest with the source's VMSA in it, and the
//! SVSM then takes it (revoke, check, make it a VMSA). So a record that names SVSM memory,
//! a VMSA more privileged than its creator or with other SEV features, or an APIC ID in
//! use is refused as the call would refuse it.

use super::memory::MemoryImportError;
use super::{In, Out, ServiceStateError};
use crate::addr::{Gpa, PageAddr, PageRange, PageSize};
use crate::caller::Caller;
use crate::error::CallError;
use crate::pages::PageRole;
use crate::platform::{Platform, PvalidateEffect};
use crate::protocols::core::vcpu::{Request, create_new};
use crate::svsm::{MEM_FLAG_UNKNOWN, Svsm};
use crate::vcpu::VcpuIndex;
use abi::hw::rmpadjust::{PERM_ALL, PERM_NONE};
use abi::vmsa::Vmsa;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use zerocopy::FromBytes;

const DEPOSITS_MAGIC: &[u8; 4] = b"BWDP";
const VCPU_MAGIC: &[u8; 4] = b"BWVC";
const PAGE_BYTES: usize = 4096;

/// What importing vCPUs or deposits refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuImportError {
    /// Not such a record: bad magic, a cut or overlong record, a bad field.
    Malformed,
    /// A page that is not the guest's RAM, or one the SVSM holds already.
    NotGuestMemory { gpa: u64 },
    /// The platform refused to validate, change or write a page or a VMSA.
    Platform { gpa: u64 },
    /// No room to record a page's new state.
    NoRoom,
    /// The first record is not this SVSM's startup vCPU (another launch), or its VMSA
    /// runs at another VMPL or with other SEV features.
    StartupMismatch,
    /// The SVSM refused to make the vCPU, as it would refuse CREATE_VCPU.
    Refused(CallError),
}

impl From<MemoryImportError> for VcpuImportError {
    fn from(e: MemoryImportError) -> Self {
        match e {
            MemoryImportError::Malformed | MemoryImportError::BadPermissions { .. } => Self::Malformed,
            MemoryImportError::NotGuestMemory { gpa } => Self::NotGuestMemory { gpa },
            MemoryImportError::Platform { gpa } => Self::Platform { gpa },
            MemoryImportError::NoRoom => Self::NoRoom,
        }
    }
}

/// A vCPU record, parsed.
struct VcpuRecord<'a> {
    apic_id: u32,
    creator_vmpl: u8,
    vmsa: PageAddr,
    calling_area: Gpa,
    ca_perms: [u8; 3],
    ca_page: &'a [u8],
    image: &'a [u8; PAGE_BYTES],
}

impl<'a> VcpuRecord<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, VcpuImportError> {
        let bad = |_| VcpuImportError::Malformed;
        let mut input = In(bytes);
        if input.take(4).map_err(bad)? != VCPU_MAGIC {
            return Err(VcpuImportError::Malformed);
        }
        let apic_id = u32::from_be_bytes(array(input.take(4).map_err(bad)?)?);
        let creator_vmpl = *input.take(1).map_err(bad)?.first().ok_or(VcpuImportError::Malformed)?;
        let vmsa =
            PageAddr::new(u64::from_be_bytes(array(input.take(8).map_err(bad)?)?)).ok_or(VcpuImportError::Malformed)?;
        let calling_area = Gpa(u64::from_be_bytes(array(input.take(8).map_err(bad)?)?));
        let ca_perms: [u8; 3] = array(input.take(3).map_err(bad)?)?;
        let ca_page = input.take(PAGE_BYTES).map_err(bad)?;
        let image: &[u8; PAGE_BYTES] =
            input.take(PAGE_BYTES).map_err(bad)?.try_into().map_err(|_| VcpuImportError::Malformed)?;
        let valid = (1..=3).contains(&creator_vmpl)
            && calling_area.is_aligned(8)
            && calling_area.page() != vmsa
            && ca_perms.iter().all(|p| p & !PERM_ALL == 0)
            && input.0.is_empty();
        if !valid {
            return Err(VcpuImportError::Malformed);
        }
        Ok(Self { apic_id, creator_vmpl, vmsa, calling_area, ca_perms, ca_page, image })
    }
}

fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], VcpuImportError> {
    bytes.try_into().map_err(|_| VcpuImportError::Malformed)
}

/// Runs of pages, merged as they come in increasing order.
struct Runs {
    out: Out,
    count: usize,
    open: Option<(u64, u64)>,
}

impl Runs {
    fn add(&mut self, pfn: u64) -> Result<(), ServiceStateError> {
        match &mut self.open {
            Some((start, pages)) if *start + *pages == pfn && *pages < u64::from(u32::MAX) => *pages += 1,
            _ => {
                self.close()?;
                self.open = Some((pfn, 1));
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), ServiceStateError> {
        if let Some((start, pages)) = self.open.take() {
            let pages = u32::try_from(pages).map_err(|_| ServiceStateError::TooLarge)?;
            self.out.bytes(&(start << 12).to_be_bytes())?.bytes(&pages.to_be_bytes())?;
            self.count += 1;
        }
        Ok(())
    }
}

impl Svsm {
    /// The pages the guest deposited, free or serving a vCPU's SVSM-side context.
    pub fn export_deposits(&self) -> Result<Vec<u8>, ServiceStateError> {
        let mut out = Out(Vec::new());
        out.bytes(DEPOSITS_MAGIC)?.u32(0)?;
        let mut runs = Runs { out, count: 0, open: None };
        {
            let pool = self.pool.lock();
            let mut from = 0;
            while let Some(page) = pool.next_free_deposited(from) {
                runs.add(page.pfn())?;
                from = page.pfn() + 1;
            }
        }
        runs.close()?;
        for (_, vcpu) in self.vcpus.iter() {
            for page in vcpu.context_pages() {
                if self.pages.is_deposited(*page) {
                    runs.add(page.pfn())?;
                }
            }
        }
        runs.close()?;
        let count = u32::try_from(runs.count).map_err(|_| ServiceStateError::TooLarge)?;
        let mut bytes = runs.out.0;
        bytes.get_mut(4..8).ok_or(ServiceStateError::Malformed)?.copy_from_slice(&count.to_be_bytes());
        Ok(bytes)
    }

    /// Every vCPU as one record each, the startup vCPU first. The guest must be stopped
    /// (its VMSAs then hold its state). A vCPU halfway through a replacement (a retired
    /// VMSA not yet deleted) is refused: the guest finishes bringing its CPU online first.
    pub fn export_vcpus<P: Platform + ?Sized>(&self, p: &P) -> Result<Vec<Vec<u8>>, ServiceStateError> {
        let mut records = Vec::new();
        records.try_reserve_exact(self.vcpus.count()).map_err(|_| ServiceStateError::OutOfMemory)?;
        let mut page = [0u8; PAGE_BYTES];
        for (_, vcpu) in self.vcpus.iter() {
            if vcpu.retired.is_some() {
                return Err(ServiceStateError::VcpuChanging);
            }
            let mut out = Out(Vec::new());
            out.bytes(VCPU_MAGIC)?
                .bytes(&vcpu.apic_id.to_be_bytes())?
                .bytes(&[vcpu.creator_vmpl])?
                .bytes(&vcpu.vmsa.raw().to_be_bytes())?
                .bytes(&vcpu.calling_area.0.to_be_bytes())?;
            let ca = vcpu.calling_area.page();
            for vmpl in 1..=3 {
                let perms = p.vmpl_permissions(ca, vmpl).ok_or(ServiceStateError::Platform)?;
                out.bytes(&[perms])?;
            }
            p.read(ca.gpa(), &mut page).map_err(|_| ServiceStateError::Platform)?;
            out.bytes(&page)?;
            p.vmsa_image(vcpu.vmsa, &mut page).map_err(|_| ServiceStateError::Platform)?;
            out.bytes(&page)?;
            records.push(out.0);
        }
        Ok(records)
    }

    /// Take the source's deposits on the destination: each page taken from the guest's
    /// VMPLs (a page a pre-copy round sent before the guest deposited it is validated
    /// here, with the guest's permissions), validated for the SVSM, zeroed, recorded as
    /// deposited and put in the pool. The guest can withdraw it as it could on the
    /// source. Every run is checked before any page changes (guest RAM, no role, no two
    /// runs overlapping). Returns the number of pages taken.
    pub fn import_deposits<P: Platform + ?Sized>(&self, p: &mut P, bytes: &[u8]) -> Result<u64, VcpuImportError> {
        let bad = |_| VcpuImportError::Malformed;
        let mut input = In(bytes);
        if input.take(4).map_err(bad)? != DEPOSITS_MAGIC {
            return Err(VcpuImportError::Malformed);
        }
        let count = input.u32().map_err(bad)?;
        let mut runs = Vec::new();
        runs.try_reserve_exact(count.min(input.0.len() / 12)).map_err(|_| VcpuImportError::NoRoom)?;
        for _ in 0..count {
            let gpa = u64::from_be_bytes(array(input.take(8).map_err(bad)?)?);
            let pages = u32::from_be_bytes(array(input.take(4).map_err(bad)?)?);
            let start = PageAddr::new(gpa).ok_or(VcpuImportError::Malformed)?;
            let range = PageRange::new(start, u64::from(pages)).ok_or(VcpuImportError::Malformed)?;
            if !self.pages.is_ram(range) || self.pages.check_target(range).is_err() {
                return Err(VcpuImportError::NotGuestMemory { gpa });
            }
            runs.try_reserve(1).map_err(|_| VcpuImportError::NoRoom)?;
            runs.push(range);
        }
        if !input.0.is_empty() {
            return Err(VcpuImportError::Malformed);
        }
        runs.sort_unstable_by_key(|r| r.start_pfn());
        if runs.windows(2).any(|w| w.first().zip(w.get(1)).is_some_and(|(a, b)| a.end_pfn() > b.start_pfn())) {
            return Err(VcpuImportError::Malformed);
        }
        let mut taken = 0;
        for range in runs {
            for page in range.iter() {
                self.take_deposit(p, page)?;
                taken += 1;
            }
        }
        // No CPU may keep a translation that lets the guest write a page the SVSM took.
        p.flush_guest_tlb();
        Ok(taken)
    }

    /// One deposited page, as DEPOSIT_MEM takes one, under its stripe's lock.
    fn take_deposit<P: Platform + ?Sized>(&self, p: &mut P, page: PageAddr) -> Result<(), VcpuImportError> {
        let gpa = page.raw();
        let hw = |_| VcpuImportError::Platform { gpa };
        let one = PageRange::new(page, 1).ok_or(VcpuImportError::Malformed)?;
        let mut held = self.pages.lock(page, page);
        if held.check_target(one).is_err() || held.check_unmapped(one).is_err() {
            return Err(VcpuImportError::NotGuestMemory { gpa });
        }
        held.reserve_deposited(one).map_err(|_| VcpuImportError::NoRoom)?;
        self.pool.lock().reserve_deposit(one).map_err(|_| VcpuImportError::NoRoom)?;
        if held.is_validated(page) {
            for vmpl in 1..=3 {
                p.rmpadjust(page, PageSize::Size4K, vmpl, PERM_NONE, false).map_err(hw)?;
            }
        } else {
            held.prepare_validation(one).map_err(|_| VcpuImportError::NoRoom)?;
            // Validated behind the SVSM's back (at launch): some VMPL may still reach it,
            // so it is no page for the SVSM's own state.
            if p.pvalidate(page, PageSize::Size4K, true).map_err(hw)? != PvalidateEffect::Changed {
                return Err(VcpuImportError::Platform { gpa });
            }
            held.set_validated(one, true);
        }
        // What the host or the guest left there must not reach a later withdrawal.
        p.zero_pages(one).map_err(|_| VcpuImportError::Platform { gpa })?;
        let recorded = held.set_deposited(one, true) && {
            let mut pool = self.pool.lock();
            let added = pool.add_deposited(one);
            self.pool_changed(&pool);
            added
        };
        if recorded { Ok(()) } else { Err(VcpuImportError::NoRoom) }
    }

    /// The startup vCPU's record, the first vCPU a stream carries (after the guest's
    /// memory and the services, before the deposits: it may free the launch's calling
    /// area, which the guest may have deposited since). The startup vCPU exists already
    /// on this side: it takes the source's state and calling area. A record for any
    /// other VMSA is refused (`StartupMismatch`).
    pub fn import_startup_vcpu<P: Platform + ?Sized>(&self, p: &mut P, bytes: &[u8]) -> Result<(), VcpuImportError> {
        let record = VcpuRecord::parse(bytes)?;
        let startup = self.vcpus.startup().ok_or(VcpuImportError::StartupMismatch)?;
        if record.vmsa != startup.vmsa {
            return Err(VcpuImportError::StartupMismatch);
        }
        self.import_startup(p, &record, startup.apic_id, startup.creator_vmpl, startup.calling_area)
    }

    /// One of the other vCPUs (after the deposits: their SVSM pages come from the pool),
    /// made as CREATE_VCPU from its creator would make it, then run (the platform is
    /// told). The startup vCPU's VMSA is refused here like any page the SVSM holds.
    pub fn import_vcpu<P: Platform + ?Sized>(&self, p: &mut P, bytes: &[u8]) -> Result<(), VcpuImportError> {
        let record = VcpuRecord::parse(bytes)?;
        let (vmsa, ca) = (record.vmsa, record.calling_area);
        // CREATE_VCPU only ever hears from the guest's own VMPLs: a creator more privileged
        // than the guest's top VMPL would pass checks that trust the top VMPL.
        if record.creator_vmpl < self.guest_vmpl {
            return Err(VcpuImportError::Malformed);
        }
        // Both pages are plain guest memory here before either changes.
        for page in [vmsa, ca.page()] {
            let one = PageRange::new(page, 1).ok_or(VcpuImportError::Malformed)?;
            if !self.pages.is_ram(one) || self.pages.check_target(one).is_err() {
                return Err(VcpuImportError::NotGuestMemory { gpa: page.raw() });
            }
        }
        // The VMSA page as the creator had it before CREATE_VCPU: its memory, holding the
        // state; the calling area's page as the source had it.
        let creator_perms =
            core::array::from_fn(|i| if i < usize::from(record.creator_vmpl) { PERM_ALL } else { PERM_NONE });
        self.give_page(p, vmsa, creator_perms, record.image)?;
        self.give_page(p, ca.page(), record.ca_perms, record.ca_page)?;
        let caller = Caller { vmpl: record.creator_vmpl, top_vmpl: self.guest_vmpl };
        let request = Request { vmsa, ca: ca.page(), apic_id: record.apic_id };
        let (index, pages) = {
            let _change = self.vcpus.change();
            if self.vcpus.find_by_apic_id(record.apic_id).is_some() {
                return Err(VcpuImportError::Refused(CallError::InvalidParameter("APIC ID has a vCPU already")));
            }
            let mut held = self.pages.lock(vmsa, ca.page());
            create_new(self, &mut held, p, caller, request).map_err(VcpuImportError::Refused)?
        };
        // Creation marked the area's first byte "no call pending": the page as it was.
        p.write(ca.page().gpa(), record.ca_page).map_err(|_| VcpuImportError::Platform { gpa: ca.0 })?;
        self.vcpus.update(index, |v| v.calling_area = ca);
        p.vcpu_created(index, vmsa, record.apic_id, &pages);
        p.vcpu_arrived(vmsa, record.image);
        crate::log!(p, Info, "vCPU {} arrived: APIC ID {}, VMSA {:#x}", index.0, record.apic_id, vmsa.raw());
        Ok(())
    }

    fn import_startup<P: Platform + ?Sized>(
        &self,
        p: &mut P,
        record: &VcpuRecord<'_>,
        apic_id: u32,
        creator_vmpl: u8,
        calling_area: Gpa,
    ) -> Result<(), VcpuImportError> {
        let vmsa = record.vmsa;
        let platform = |_| VcpuImportError::Platform { gpa: vmsa.raw() };
        let state = Vmsa::read_from_bytes(record.image).map_err(|_| VcpuImportError::Malformed)?;
        let vmpl = p.vmsa_read(vmsa, abi::vmsa::VmsaField::Vmpl).map_err(platform)?;
        let features = p.vmsa_read(vmsa, abi::vmsa::VmsaField::SevFeatures).map_err(platform)?;
        if record.apic_id != apic_id
            || record.creator_vmpl != creator_vmpl
            || u64::from(state.vmpl) != vmpl
            || state.sev_features != features
            || state.efer & abi::hw::EFER_SVME == 0
        {
            return Err(VcpuImportError::StartupMismatch);
        }
        let (old, new) = (calling_area.page(), record.calling_area.page());
        if new != old {
            // The source's guest moved its calling area (REMAP_CA): the page it chose
            // becomes the area here, and the launch's one plain memory.
            let one = PageRange::new(new, 1).ok_or(VcpuImportError::Malformed)?;
            if self.pages.role(new).is_some() || !self.importable(one) || !self.pages.role_room(1) {
                return Err(VcpuImportError::NotGuestMemory { gpa: new.raw() });
            }
        }
        self.give_page(p, new, record.ca_perms, record.ca_page)?;
        if new != old {
            self.pages.clear_role(old);
            self.pages.set_role(new, PageRole::CallingArea(VcpuIndex::STARTUP)).map_err(|_| VcpuImportError::NoRoom)?;
        }
        self.vcpus.update(VcpuIndex::STARTUP, |v| v.calling_area = record.calling_area);
        self.mem_flag_written.store(MEM_FLAG_UNKNOWN, Ordering::Release);
        p.vmsa_restore(vmsa, record.image).map_err(platform)
    }
}
