//! The `svm` platform's seam on the chip: [`BareSvm`] is the machine every CPU shares
//! (guest-physical copies, the nested page tables' memory, kicks, the software PSP, the
//! console), [`BareCpu`] what one CPU does alone (VMRUN, CPUID). Everything above them is
//! `bulwark_svm`'s.
//!
//! Every CPU calls [`BareSvm`] at once. Guest-physical copies, kicks and the clock need
//! no lock; the nested page tables and the PSP each have their own, a leaf held for one
//! call (the platform changes the tables only under its page-state lock anyway).
#![expect(unsafe_code, reason = "VMCBs and nested page tables in SVSM memory")]

use super::super::pages::Page;
use super::super::{clock, console, cpu, guest_phys};
use super::npt::NestedPageTable;
use super::{kick, vmrun};
use abi::vmcb::offset;
use abi::vmsa::VmsaField;
use kernel::log_ring::LogLost;
use kernel::platform::{GuestRequestError, Level};
use spin::Mutex;
use svm::hw::{Fault, LogToGuestError, PageMem, SvmCpu, SvmHw};
use svm::npt::Access;

/// The SVSM's own memory (the image and everything it allocates): no guest-physical
/// access and no nested mapping may reach into it.
pub const SVSM_REGION: core::ops::Range<u64> = svm::launch::QEMU.svsm_region;

fn outside_svsm(gpa: u64, len: usize) -> bool {
    let end = gpa.saturating_add(len as u64);
    end <= SVSM_REGION.start || gpa >= SVSM_REGION.end
}

impl PageMem for Page {
    fn phys(&self) -> u64 {
        Page::phys(self)
    }
    fn bytes(&self) -> &[u8] {
        self.run_bytes()
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.run_bytes_mut()
    }
}

/// The machine, as the platform holds it.
pub struct BareSvm {
    pub npt: Mutex<NestedPageTable>,
    /// The software PSP that answers the SVSM's guest requests (attestation).
    pub psp: Mutex<Option<softpsp::SoftPsp>>,
}

impl SvmHw for BareSvm {
    type Page = Page;

    fn alloc(&self, count: usize) -> Option<Page> {
        Page::zeroed_run(count)
    }

    fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Fault> {
        if !outside_svsm(gpa, buf.len()) {
            return Err(Fault);
        }
        // SAFETY: outside the SVSM region (checked), which holds every Rust object (image,
        // heap, stacks), so no reference points into the range; the platform reaches only
        // pages its RMP holds as guest RAM, never device registers.
        if unsafe { guest_phys::read(gpa, buf) } { Ok(()) } else { Err(Fault) }
    }

    fn write_guest(&self, gpa: u64, data: &[u8]) -> Result<(), Fault> {
        if !outside_svsm(gpa, data.len()) {
            return Err(Fault);
        }
        // SAFETY: as in `read_guest`.
        if unsafe { guest_phys::write(gpa, data) } { Ok(()) } else { Err(Fault) }
    }

    fn zero_guest(&self, gpa: u64, len: usize) -> Result<(), Fault> {
        if !outside_svsm(gpa, len) {
            return Err(Fault);
        }
        // SAFETY: as in `read_guest`.
        if unsafe { guest_phys::zero(gpa, len) } { Ok(()) } else { Err(Fault) }
    }

    fn npt_set(&self, gpa: u64, access: Option<Access>) -> Result<(), Fault> {
        // The platform maps only guest pages; SVSM memory is refused here as well.
        if access.is_some() && !outside_svsm(gpa, 4096) {
            return Err(Fault);
        }
        self.npt.lock().set(gpa, access).ok_or(Fault)
    }

    fn npt_set_region(&self, gpa: u64, access: Option<Access>) -> Result<(), Fault> {
        // As in `npt_set`, for the whole 2 MiB.
        if access.is_some() && !outside_svsm(gpa, 2 << 20) {
            return Err(Fault);
        }
        self.npt.lock().set_region(gpa, access).ok_or(Fault)
    }

    fn npt_root(&self) -> u64 {
        self.npt.lock().root()
    }

    fn next_rip_saved(&self) -> bool {
        super::next_rip_saved()
    }

    fn kick(&self, cpu: u32) {
        kick::kick(cpu);
    }

    fn kick_pending(&self, cpu: u32) -> bool {
        kick::pending(cpu)
    }

    fn vcpus_changed(&self) {
        kick::vcpus_changed();
    }

    fn generation(&self) -> u64 {
        kick::generation()
    }

    fn rdtsc(&self) -> u64 {
        clock::rdtsc()
    }

    fn heap_usage(&self) -> Option<kernel::platform::HeapUsage> {
        let (used, size) = super::super::heap::usage();
        Some(kernel::platform::HeapUsage { used: used as u64, size: size as u64 })
    }

    fn guest_request(&self, request: &[u8; 4096], response: &mut [u8; 4096]) -> Result<(), GuestRequestError> {
        let mut psp = self.psp.lock();
        let psp = psp.as_mut().ok_or(GuestRequestError::Unavailable)?;
        // The firmware's refusals all read as INVALID_PARAM (0x16): the SVSM only needs to
        // know that no answer came.
        psp.guest_request(request, response).map_err(|e| {
            crate::println!("svm: the PSP refused a guest request: {e:?}");
            GuestRequestError::Firmware(0x16)
        })
    }

    fn fatal(&self, why: core::fmt::Arguments<'_>) -> ! {
        crate::println!("svm: stopping: {why}");
        crate::bare::exit::failure()
    }

    fn log(&self, level: Level, args: core::fmt::Arguments<'_>) {
        crate::println!("[{level:?}] {args}");
    }

    fn log_read(&self, offset: u64, out: &mut [u8]) -> Result<usize, LogLost> {
        console::log_read(offset, out)
    }

    fn log_written(&self) -> u64 {
        console::log_written()
    }

    fn log_to_guest(&self, offset: u64, gpa: u64, len: usize) -> Option<Result<usize, LogToGuestError>> {
        // Straight from the ring into the guest's page, under the console's lock (a copy
        // of at most a page; nothing in it can fault: the range is guest RAM, checked).
        let copied = console::with_log(offset, len, |a, b| {
            let second = gpa.checked_add(a.len() as u64).ok_or(LogToGuestError::Fault)?;
            for (at, piece) in [(gpa, a), (second, b)] {
                if !piece.is_empty() {
                    self.write_guest(at, piece).map_err(|_| LogToGuestError::Fault)?;
                }
            }
            Ok(a.len() + b.len())
        });
        Some(match copied {
            Some(Ok(copied)) => copied,
            Some(Err(lost)) => Err(LogToGuestError::Lost(lost)),
            None => Err(LogToGuestError::Busy),
        })
    }
}

/// One CPU, with the page its VMRUN trampoline keeps the host's state in.
pub struct BareCpu {
    pub cpu: u32,
    pub host_state_pa: u64,
    /// The exit before the one just taken (VMCB, code, EXITINFO1, RIP): what the report of
    /// an emulator fault shows (`check_exit`).
    pub previous_exit: [u64; 4],
}

impl BareCpu {
    pub fn new(cpu: u32, host_state_pa: u64) -> Self {
        Self { cpu, host_state_pa, previous_exit: [0; 4] }
    }

    /// QEMU 7.2's TCG has, rarely (twice so far; none in 92 boots in a row here), left the
    /// SVSM's own state in a VMCB after a #VMEXIT: RIP right after our VMRUN, CR3 this
    /// CPU's root, the values VMRUN keeps in the host save area. The guest's state is
    /// gone then, and the vCPU would loop on faults it cannot take. No SVSM path writes
    /// host state into a VMCB (docs/platforms/svm.md, "An emulator fault"). The exit is
    /// reported with the one before it, and becomes VMEXIT_INVALID, so the vCPU is broken
    /// the usual way (the startup vCPU ends the run; `cargo xtask` recognizes the line).
    /// A guest that builds the same pair on purpose (a MOV to CR3 with the SVSM's root
    /// right before that address) only breaks its own vCPU, as a triple fault would.
    fn check_exit(&mut self, vmcb: &mut Page) {
        let bytes = vmcb.run_bytes();
        let at =
            |off: usize| bytes.get(off..off + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0);
        let save = |f: VmsaField| at(offset::SAVE + f.offset());
        let exit = [vmcb.phys(), at(offset::EXIT_CODE), at(offset::EXIT_INFO1), save(VmsaField::Rip)];
        let previous = core::mem::replace(&mut self.previous_exit, exit);
        if save(VmsaField::Rip) != vmrun::exit_address() || save(VmsaField::Cr3) != cpu::read_cr3() {
            return;
        }
        crate::println!(
            "svm: {EMULATOR_FAULT} (cpu {}, VMCB {:#x}: RIP {:#x}, CR3 {:#x}; exit {:#x}, info1 {:#x}, info2 {:#x}, \
             interrupt info {:#x}; the exit before on this CPU: VMCB {:#x}, exit {:#x}, info1 {:#x}, RIP {:#x})",
            self.cpu,
            exit[0],
            exit[3],
            save(VmsaField::Cr3),
            exit[1],
            exit[2],
            at(offset::EXIT_INFO2),
            at(offset::EXIT_INT_INFO),
            previous[0],
            previous[1],
            previous[2],
            previous[3],
        );
        if let Some(code) = vmcb.run_bytes_mut().get_mut(offset::EXIT_CODE..offset::EXIT_CODE + 8) {
            code.copy_from_slice(&abi::vmcb::exit::INVALID.to_le_bytes());
        }
    }
}

/// The start of the report of QEMU's SVM emulation fault (`BareCpu::check_exit`); `cargo
/// xtask` looks for it.
pub const EMULATOR_FAULT: &str = "emulator fault: the VMCB holds the SVSM's own state after a #VMEXIT";

impl SvmCpu<Page> for BareCpu {
    fn vmrun(&mut self, vmcb: &mut Page, regs: &mut vmrun::GuestRegs) -> bool {
        // GIF off before the kick check: from here on a kick's NMI is held until the guest
        // runs and makes it exit at once.
        vmrun::clgi();
        if !kick::enter(self.cpu) {
            vmrun::stgi();
            return false;
        }
        // SAFETY: SVM is enabled on every CPU that runs vCPUs, GIF is clear; the VMCB page
        // is owned by the vCPU this CPU took out (nobody else touches it during the call);
        // its nested page tables map only guest pages, never SVSM memory (`npt_set`); the
        // host-state page is this CPU's own.
        unsafe { vmrun::run(vmcb.phys(), regs, self.host_state_pa) };
        kick::exited(self.cpu);
        self.check_exit(vmcb);
        true
    }

    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let (a, b, c, d) = cpu::cpuid(leaf, subleaf);
        [a, b, c, d]
    }

    fn generation(&self) -> u64 {
        kick::generation()
    }

    fn attention(&self) -> bool {
        self.cpu == 0 && super::super::migration::armed()
    }
}
