//! The conformance suite over real VMMCALLs. The cases expect a freshly launched SVSM;
//! here one SVSM serves them all, so before each case the runner puts the guest's memory
//! back the way the case expects, through the SVSM itself: the calling area returns to its
//! launch place, vCPUs the cases create are deleted, deposited memory is withdrawn, the
//! case regions are invalidated and the scratch region validated again.
#![expect(unsafe_code, reason = "a list page the SVSM's calls read")]

use super::gate::Vmmcall;
use abi::core_protocol::PvalidateEntry;
use conformance::{CASES, CaseError, Env, Facts, HostControl, Verdict};
use guest::{Client, GuestFault, Regs, Transport};

const SECRETS: u64 = 0x8000;
pub const STARTUP_CA: u64 = 0x9000;
const STARTUP_VMSA: u64 = 0xA000;
pub const SCRATCH: u64 = 0x0400_0000;
const SCRATCH_PAGES: u64 = 256;
const FREE_SMALL: u64 = 0x0600_0000;
const FREE_SMALL_PAGES: u64 = 1024;
const FREE_HUGE: u64 = 0x1000_0000;
const FREE_HUGE_COUNT: u64 = 4;

/// The runner's own list page: inside the image, validated at launch, used by no case.
#[repr(C, align(4096))]
struct ListPage(core::cell::UnsafeCell<[u8; 4096]>);
// SAFETY: only its address is used; the SVSM and this guest write it by copy.
unsafe impl Sync for ListPage {}
static LIST: ListPage = ListPage(core::cell::UnsafeCell::new([0; 4096]));

struct SvmEnv {
    calling_area: u64,
    /// The secondary vCPU the cases act as, or `None` for the boot vCPU.
    current: Option<u32>,
    /// The boot vCPU's calling area, kept while a case acts as another vCPU.
    boot_calling_area: u64,
}

/// Probe every page of `[gpa, gpa + len)` first, so an access the SVSM refuses becomes a
/// `GuestFault` the case sees instead of an exception that ends the run.
fn accessible(gpa: u64, len: usize) -> Result<(), GuestFault> {
    let end = gpa.checked_add(len as u64).ok_or(GuestFault { gpa })?;
    for page in (gpa & !0xFFF..end).step_by(4096) {
        if !super::probe::readable(page.max(gpa)) {
            return Err(GuestFault { gpa: page.max(gpa) });
        }
    }
    Ok(())
}

impl Transport for SvmEnv {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestFault> {
        accessible(gpa, buf.len())?;
        Vmmcall.read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestFault> {
        // Guest RAM is mapped read-write or not at all on this platform (the read-only
        // secrets page aside, which no case writes), so a read probe tells.
        accessible(gpa, data.len())?;
        Vmmcall.write(gpa, data)
    }
    fn exchange_u8(&mut self, gpa: u64, value: u8) -> Result<u8, GuestFault> {
        accessible(gpa, 1)?;
        Vmmcall.exchange_u8(gpa, value)
    }
    fn request_svsm(&mut self, regs: &mut Regs) {
        match self.current {
            // If it does not answer, the registers stay and the call reads as not executed.
            Some(apic) => {
                super::ap::call(apic, regs);
            }
            None => Vmmcall.request_svsm(regs),
        }
    }
}

impl Env for SvmEnv {
    fn facts(&self) -> Facts {
        Facts {
            secrets_page: SECRETS,
            startup_vmsa: STARTUP_VMSA,
            sev_features: abi::hw::sev_features::SNP_ACTIVE,
            scratch: SCRATCH,
            scratch_pages: SCRATCH_PAGES,
            free_small: FREE_SMALL,
            free_small_pages: FREE_SMALL_PAGES,
            free_huge: FREE_HUGE,
            free_huge_count: FREE_HUGE_COUNT,
            // In q35's PCI hole: RAM below 4 GiB ends by 2.75 GiB, whatever RAM the run
            // gives (`cargo xtask migrate --guest-mib 2048` gives 2.4 GiB; 768 MiB, the
            // address before, was RAM from 1 GiB of growth on).
            not_ram: 0xC000_0000,
            pages_per_call: 256,
            // The SVSM runs a software PSP on this platform.
            attestation: true,
            // The SVSM console's buffer (svsm/src/bare/console.rs).
            log_bytes: 64 * 1024,
        }
    }
    fn calling_area(&self) -> u64 {
        self.calling_area
    }
    fn set_calling_area(&mut self, gpa: u64) {
        self.calling_area = gpa;
        if self.current.is_none() {
            self.boot_calling_area = gpa;
        }
    }
    fn select_vcpu(&mut self, apic_id: u32, calling_area: u64) -> Result<bool, CaseError> {
        let exists = apic_id == 0 || super::ap::alive(apic_id);
        if exists {
            self.current = (apic_id != 0).then_some(apic_id);
            self.calling_area = calling_area;
            if apic_id == 0 {
                self.boot_calling_area = calling_area;
            }
        }
        Ok(exists)
    }
    fn write_vmsa(&mut self, gpa: u64, apic_id: u32) -> Result<(), CaseError> {
        let vmsa = super::ap::vmsa(apic_id).ok_or(CaseError::Skip("APIC ID beyond the test guest's mailboxes"))?;
        Ok(self.write(gpa, zerocopy::IntoBytes::as_bytes(&vmsa))?)
    }
    fn host(&mut self) -> Option<&mut dyn HostControl> {
        None
    }
}

fn list_gpa() -> u64 {
    LIST.0.get() as u64
}

/// Put the SVSM and the guest's memory back to what a case expects.
fn reset(env: &mut SvmEnv) -> Result<(), guest::CallError> {
    env.current = None;
    env.calling_area = env.boot_calling_area;
    let mut c = Client::new(Vmmcall, env.calling_area);
    if env.calling_area != STARTUP_CA {
        c.remap_ca(STARTUP_CA)?;
        env.calling_area = STARTUP_CA;
        env.boot_calling_area = STARTUP_CA;
    }
    for slot in 0..8 {
        let _ = c.delete_vcpu(SCRATCH + 0x10_000 + slot * 0x2000);
    }
    let mut out = [0u64; 64];
    while c.withdraw(list_gpa(), &mut out)? > 0 {}
    let invalidate = |gpa: u64, huge: bool| PvalidateEntry::new(gpa, huge, false, true);
    let mut entries = [PvalidateEntry::default(); 510];
    for chunk in 0..(SCRATCH_PAGES + FREE_SMALL_PAGES).div_ceil(510) {
        let mut n = 0;
        for i in chunk * 510..((chunk + 1) * 510).min(SCRATCH_PAGES + FREE_SMALL_PAGES) {
            let gpa = if i < SCRATCH_PAGES { SCRATCH + i * 4096 } else { FREE_SMALL + (i - SCRATCH_PAGES) * 4096 };
            entries[n] = invalidate(gpa, false);
            n += 1;
        }
        c.pvalidate(&entries[..n], list_gpa())?;
    }
    let huge: [PvalidateEntry; 4] = core::array::from_fn(|i| invalidate(FREE_HUGE + (i as u64) * 0x20_0000, true));
    c.pvalidate(&huge, list_gpa())?;
    let scratch: [PvalidateEntry; 256] =
        core::array::from_fn(|i| PvalidateEntry::new(SCRATCH + i as u64 * 4096, false, true, false));
    c.pvalidate(&scratch, list_gpa())?;
    Ok(())
}

/// Run every case, starting with the calling area at `calling_area`; returns (passed,
/// failed, skipped).
pub fn run(calling_area: u64) -> (u32, u32, u32) {
    let mut env = SvmEnv { calling_area, current: None, boot_calling_area: calling_area };
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for case in CASES {
        if let Err(e) = reset(&mut env) {
            println!("RESULT {} fail could not reset the guest's memory before the case: {e:?}", case.name);
            failed += 1;
            continue;
        }
        match case.run(&mut env) {
            Verdict::Pass => {
                passed += 1;
                println!("RESULT {} pass", case.name);
            }
            Verdict::Skip(why) => {
                skipped += 1;
                println!("RESULT {} skip {why}", case.name);
            }
            Verdict::Fail(why) => {
                failed += 1;
                println!("RESULT {} fail {why}", case.name);
            }
        }
    }
    // Leave things as the cases found them: the calling area back at its launch place,
    // scratch memory validated (the host agent uses both).
    if let Err(e) = reset(&mut env) {
        println!("suite: could not reset after the last case: {e:?}");
    }
    (passed, failed, skipped)
}
