//! An L2 guest vCPU on the `svm` platform: its VMCB, the general-purpose registers the
//! VMCB does not hold, and the VMSA fields SVM has no place for (VMPL, SEV_FEATURES,
//! vTOM). The guest page named as its VMSA identifies it to the kernel.

use crate::hw::PageMem;
use crate::msr::{self, Access, Answer, GuestState, Refusal};
use crate::vmcb::{Segment, Vmcb};
use abi::hw::EFER_SVME;
use abi::vmcb::{event, misc1, misc2, offset};
use abi::vmsa::VmsaField;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// The guest's general-purpose registers that the VMCB does not hold, in the order the
/// VMRUN trampoline loads and stores them (`svsm/src/bare/svm/vmrun.rs` checks the
/// offsets).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegs {
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

impl GuestRegs {
    /// The registers a VMSA holds in its own slots.
    fn of(state: &abi::vmsa::Vmsa) -> Self {
        Self {
            rbx: state.rbx,
            rcx: state.rcx,
            rdx: state.rdx,
            rsi: state.rsi,
            rdi: state.rdi,
            rbp: state.rbp,
            r8: state.r8,
            r9: state.r9,
            r10: state.r10,
            r11: state.r11,
            r12: state.r12,
            r13: state.r13,
            r14: state.r14,
            r15: state.r15,
        }
    }
}

/// Why the guest stopped running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: u64,
    pub info1: u64,
    pub info2: u64,
}

/// What every vCPU's VMCB points at: the nested page tables and the permission maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Controls {
    pub npt_root: u64,
    pub msrpm: u64,
    pub iopm: u64,
    /// The CPU saves the next RIP of an intercepted instruction (NRIP save).
    pub next_rip_saved: bool,
}

/// The intercepts: CPUID (discovery), HLT (a yield), NMI (a kick), SHUTDOWN, MSR and I/O
/// through their maps, INVD, and every SVM instruction (the guest runs no VMs of its own
/// and must not clear GIF, which would hold the NMI that makes its CPU leave the guest
/// for a kick). VMMCALL is the call gate.
pub const INTERCEPT_MISC1: u32 = misc1::INTR
    | misc1::NMI
    | misc1::CPUID
    | misc1::INVD
    | misc1::HLT
    | misc1::INVLPGA
    | misc1::SHUTDOWN
    | misc1::MSR_PROT
    | misc1::IOIO_PROT;
pub const INTERCEPT_MISC2: u32 = misc2::VMRUN
    | misc2::VMMCALL
    | misc2::VMLOAD
    | misc2::VMSAVE
    | misc2::STGI
    | misc2::CLGI
    | misc2::SKINIT
    | misc2::XSETBV;

/// Size of the VMCB state-save area that mirrors the VMSA's first bytes.
pub const SAVE_AREA: usize = 0x298;
/// Where a VMSA keeps DR0-DR3 and their address masks (eight u64s); reserved in a VMCB.
const DEBUG_ADDRESSES: usize = core::mem::offset_of!(abi::vmsa::Vmsa, dr0);

/// The low 32 bits of a register (EAX of RAX, ECX of RCX: what CPUID, RDMSR and a
/// dword IN or OUT use).
pub(crate) fn low32(value: u64) -> u32 {
    u32::try_from(value & 0xFFFF_FFFF).unwrap_or(u32::MAX)
}

/// The VMPL a vCPU runs at unless its VMSA says otherwise (one guest level).
pub const GUEST_VMPL: u8 = 1;

/// A vCPU's x87, MMX and SSE registers in FXSAVE form. VMRUN does not switch them, so
/// they stay in the CPU while the vCPU runs and come here when another vCPU takes the
/// CPU: without it two vCPUs sharing a CPU (two VMPLs of one CPU, say) would see each
/// other's registers. Only FXSAVE (through [`Self::as_mut_ptr`]) and [`Self::reset`]
/// fill it, so FXRSTOR never meets reserved MXCSR bits.
#[repr(C, align(16))]
#[derive(Clone, Debug)]
pub struct FpuImage([u8; 512]);

impl FpuImage {
    /// The state after reset: FCW 0x037F, MXCSR 0x1F80 (every exception masked), the
    /// rest zero.
    pub fn reset() -> Self {
        let mut bytes = [0u8; 512];
        if let Some(fcw) = bytes.get_mut(0..2) {
            fcw.copy_from_slice(&0x037Fu16.to_le_bytes());
        }
        if let Some(mxcsr) = bytes.get_mut(24..28) {
            mxcsr.copy_from_slice(&0x1F80u32.to_le_bytes());
        }
        Self(bytes)
    }

    /// Where FXSAVE writes the image (512 bytes, 16-byte aligned).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr()
    }

    /// Where FXRSTOR reads it.
    pub fn as_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }

    pub fn bytes(&self) -> &[u8; 512] {
        &self.0
    }

    /// The image as a VMSA's x87/SSE fields, in `page`: the SEV-ES save area's layout,
    /// filled as KVM's `sev_es_sync_vmsa` fills it from an FXSAVE image (the tag word as
    /// FXSAVE abridges it; each x87 register's bytes 0-7 in one 64-byte run, bytes 8-9 in
    /// another; no YMM upper halves, which FXSAVE does not hold).
    pub fn write_vmsa(&self, page: &mut [u8; 4096]) {
        let image = &self.0;
        for (at_vmsa, at_image, len) in FPU_FIELDS {
            copy(page, at_vmsa, image, at_image, len);
        }
        for i in 0..8 {
            copy(page, vmsa_fpu::ST + 8 * i, image, fx::ST + 16 * i, 8);
            copy(page, vmsa_fpu::ST + 64 + 2 * i, image, fx::ST + 16 * i + 8, 2);
        }
    }

    /// An image from a VMSA's x87/SSE fields ([`Self::write_vmsa`] backwards), with what
    /// FXRSTOR would refuse cleared: MXCSR keeps [`MXCSR_LOADABLE`], the tag word its
    /// abridged byte, the opcode its 11 bits.
    pub fn from_vmsa(page: &[u8; 4096]) -> Self {
        let mut image = [0u8; 512];
        for (at_vmsa, at_image, len) in FPU_FIELDS {
            copy(&mut image, at_image, page, at_vmsa, len);
        }
        for i in 0..8 {
            copy(&mut image, fx::ST + 16 * i, page, vmsa_fpu::ST + 8 * i, 8);
            copy(&mut image, fx::ST + 16 * i + 8, page, vmsa_fpu::ST + 64 + 2 * i, 2);
        }
        // FXSAVE's tag word is one abridged byte; the byte after it is reserved.
        if let Some(reserved) = image.get_mut(fx::FTW + 1) {
            *reserved = 0;
        }
        if let Some(fop) = image.get_mut(fx::FOP + 1) {
            *fop &= 0x07;
        }
        if let Some(mxcsr) = image.get_mut(fx::MXCSR..fx::MXCSR + 4).and_then(|m| <&mut [u8; 4]>::try_from(m).ok()) {
            *mxcsr = (u32::from_le_bytes(*mxcsr) & MXCSR_LOADABLE).to_le_bytes();
        }
        Self(image)
    }
}

/// The x87/SSE fields a VMSA and an FXSAVE image share: (VMSA offset, image offset,
/// bytes). The x87 registers themselves are laid out differently (`write_vmsa`).
const FPU_FIELDS: [(usize, usize, usize); 8] = [
    (vmsa_fpu::FCW, fx::FCW, 2),
    (vmsa_fpu::FSW, fx::FSW, 2),
    (vmsa_fpu::FTW, fx::FTW, 2),
    (vmsa_fpu::FOP, fx::FOP, 2),
    (vmsa_fpu::RIP, fx::RIP, 8),
    (vmsa_fpu::DP, fx::DP, 8),
    (vmsa_fpu::MXCSR, fx::MXCSR, 4),
    (vmsa_fpu::XMM, fx::XMM, 256),
];

/// The MXCSR bits FXRSTOR loads on every x86-64 CPU: all but DAZ (bit 6, which older
/// CPUs lack) and the reserved bits above 15. A VMSA from elsewhere is masked to them
/// rather than make the SVSM fault; DAZ does not travel yet.
pub const MXCSR_LOADABLE: u32 = 0xFFBF;

/// Offsets in an FXSAVE64 image.
mod fx {
    pub const FCW: usize = 0;
    pub const FSW: usize = 2;
    pub const FTW: usize = 4;
    pub const FOP: usize = 6;
    pub const RIP: usize = 8;
    pub const DP: usize = 16;
    pub const MXCSR: usize = 24;
    pub const ST: usize = 32;
    pub const XMM: usize = 160;
}

/// Offsets of the x87/SSE fields in a VMSA (the SEV-ES save area; `abi::vmsa::Vmsa`
/// names the first ones: `x87_dp` at 0x400).
mod vmsa_fpu {
    pub const DP: usize = 0x400;
    pub const MXCSR: usize = 0x408;
    pub const FTW: usize = 0x40C;
    pub const FSW: usize = 0x40E;
    pub const FCW: usize = 0x410;
    pub const FOP: usize = 0x412;
    pub const RIP: usize = 0x418;
    pub const ST: usize = 0x420;
    pub const XMM: usize = 0x470;
}

/// `len` bytes from `src[from..]` to `dst[to..]`; nothing if either is out of range.
fn copy(dst: &mut [u8], to: usize, src: &[u8], from: usize, len: usize) {
    if let (Some(d), Some(s)) = (dst.get_mut(to..to + len), src.get(from..from + len)) {
        d.copy_from_slice(s);
    }
}

/// CPUID leaf 1 ECX: XSAVE, OSXSAVE (CR4.OSXSAVE as the guest set it), AVX.
const CPUID1_ECX_XSAVE: u32 = 1 << 26;
const CPUID1_ECX_OSXSAVE: u32 = 1 << 27;
const CPUID1_ECX_AVX: u32 = 1 << 28;

/// What of an event (EXITINTINFO's layout, which EVENTINJ shares) may be delivered on
/// the next entry: a valid external interrupt, NMI or exception (vector 0..=30 but 2:
/// QEMU's VMRUN refuses 2 and 31 and up; an error code exactly for the vectors that push
/// one), as it is; anything else 0. A software interrupt
/// (INTn, and INT3/INTO as exceptions 3 and 4) is not: RIP is still on its instruction,
/// which raises it again when the guest goes on (KVM re-executes them likewise where it
/// has no next-RIP to inject with). Also the check on an event a migration brings, so a
/// VMSA can never make VMRUN refuse the vCPU.
fn deliverable(info: u64) -> u64 {
    const RESERVED: u64 = 0x7FFF_F000;
    let (kind, vector) = (info & event::TYPE, info & event::VECTOR);
    let error_code = info & event::ERROR_CODE_VALID != 0;
    let ok = match kind {
        event::TYPE_INTR | event::TYPE_NMI => !error_code,
        event::TYPE_EXCEPTION => {
            // #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC, #SX push an error code.
            let pushes = matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30);
            vector <= 30 && vector != 2 && vector != event::BP && vector != event::OF && error_code == pushes
        }
        _ => false,
    };
    if info & event::VALID != 0 && info & RESERVED == 0 && ok { info } else { 0 }
}

#[derive(Debug)]
pub struct SvmVcpu<P> {
    pub vmcb: Vmcb<P>,
    pub regs: GuestRegs,
    /// Its x87/SSE registers while another vCPU has its CPU.
    pub fpu: FpuImage,
    /// Its debug address registers DR0-DR3 while another vCPU has its CPU (VMRUN switches
    /// DR6 and DR7, not these).
    pub debug_addresses: [u64; 4],
    /// The guest page that stands for this vCPU's VMSA.
    pub vmsa_gpa: u64,
    pub vmpl: u8,
    pub sev_features: u64,
    pub virtual_tom: u64,
    /// Stopped by DELETE_VCPU (or broken): it never runs again.
    pub stopped: bool,
    /// Which vCPU it is among those that had its index (set by `Slots::insert`).
    pub serial: u64,
    /// The last access refused to it (RIP, gpa) and how often in a row
    /// ([`SvmVcpu::refused_again`]).
    pub last_refusal: (u64, u64),
    pub refusals_in_a_row: u32,
    /// Its CPU saves the next RIP of an intercepted instruction ([`Self::step_over`]).
    pub next_rip_saved: bool,
}

/// Zero the VMCB's bytes where a VMSA keeps DR0-DR3 and their masks (reserved in a VMCB;
/// the vCPU keeps DR0-DR3 itself, `SvmVcpu::debug_addresses`).
fn clear_debug_addresses<P: PageMem>(vmcb: &mut Vmcb<P>) {
    for at in (DEBUG_ADDRESSES..DEBUG_ADDRESSES + 64).step_by(8) {
        vmcb.set_u64(offset::SAVE + at, 0);
    }
}

fn controls<P: PageMem>(vmcb: &mut Vmcb<P>, c: Controls, asid: u32) {
    vmcb.set_u32(offset::INTERCEPT_MISC1, INTERCEPT_MISC1);
    vmcb.set_u32(offset::INTERCEPT_MISC2, INTERCEPT_MISC2);
    // Its own ASID, so its TLB entries never mix with another vCPU's.
    vmcb.set_u32(offset::GUEST_ASID, asid.max(1));
    // Physical interrupts are the SVSM's (its timer, a wake-up IPI): with V_INTR_MASKING
    // the guest's IF masks only its virtual ones, and the INTR intercept makes a physical
    // one end the guest's run (`exit::Action::Interrupted`); the SVSM takes it once the
    // guest is out.
    vmcb.set_u64(offset::V_INTR, abi::vmcb::V_INTR_MASKING);
    vmcb.set_u64(offset::NP_ENABLE, 1);
    vmcb.set_u64(offset::N_CR3, c.npt_root);
    vmcb.set_u64(offset::MSRPM_BASE, c.msrpm);
    vmcb.set_u64(offset::IOPM_BASE, c.iopm);
    // A new VMCB flushes its ASID on its first entry: the ASID comes from the vCPU's
    // index, which a replaced or re-created vCPU reuses, and a flush recorded in the
    // old VMCB (after a page left the guest) went with it (found by review).
    vmcb.set_u8(offset::TLB_CONTROL, 1);
}

impl<P: PageMem> SvmVcpu<P> {
    /// The startup vCPU in 64-bit mode at `rip` with page tables at `cr3` (the launch
    /// state), in the VMCB page `page`.
    pub fn long_mode(page: P, c: Controls, vmsa_gpa: u64, rip: u64, cr3: u64) -> Self {
        let mut vmcb = Vmcb::new(page);
        controls(&mut vmcb, c, 1);
        let code = Segment { selector: 0x08, attrib: 0x0A9B, limit: 0xFFFF_FFFF, base: 0 };
        let data = Segment { selector: 0x10, attrib: 0x0C93, limit: 0xFFFF_FFFF, base: 0 };
        vmcb.set_segment(offset::CS, code);
        for seg in [offset::DS, offset::ES, offset::SS] {
            vmcb.set_segment(seg, data);
        }
        vmcb.set_segment(offset::GDTR, Segment { selector: 0, attrib: 0, limit: 0, base: 0 });
        vmcb.set_segment(offset::IDTR, Segment { selector: 0, attrib: 0, limit: 0, base: 0 });
        vmcb.set_segment(offset::TR, Segment { selector: 0, attrib: 0x008B, limit: 0xFFFF, base: 0 });
        // PE, MP, ET, NE, WP, PG; PAE, OSFXSR, OSXMMEXCPT; LME, LMA, SVME.
        vmcb.set_u64(offset::CR0, 0x8001_0033);
        vmcb.set_u64(offset::CR4, 0x620);
        vmcb.set_save(VmsaField::Cr3, cr3);
        vmcb.set_save(VmsaField::Efer, 0x500 | EFER_SVME);
        vmcb.set_u64(offset::RFLAGS, 0x2);
        vmcb.set_u64(offset::DR6, 0xFFFF_0FF0);
        vmcb.set_u64(offset::DR7, 0x400);
        vmcb.set_u64(offset::G_PAT, 0x0007_0406_0007_0406);
        vmcb.set_save(VmsaField::Rip, rip);
        Self {
            vmcb,
            regs: GuestRegs::default(),
            fpu: FpuImage::reset(),
            debug_addresses: [0; 4],
            vmsa_gpa,
            vmpl: GUEST_VMPL,
            sev_features: abi::hw::sev_features::SNP_ACTIVE,
            virtual_tom: 0,
            stopped: false,
            serial: 0,
            last_refusal: (0, 0),
            refusals_in_a_row: 0,
            next_rip_saved: c.next_rip_saved,
        }
    }

    /// A vCPU whose state is the VMSA page `vmsa` the guest built (CREATE_VCPU): the
    /// VMSA's first 0x298 bytes are the VMCB save area, the general-purpose registers
    /// come from their VMSA slots. `asid` is its own.
    pub fn from_vmsa(page: P, c: Controls, asid: u32, vmsa_gpa: u64, vmsa: &[u8; 4096]) -> Option<Self> {
        let state = abi::vmsa::Vmsa::read_from_bytes(vmsa).ok()?;
        let mut vmcb = Vmcb::new(page);
        controls(&mut vmcb, c, asid);
        vmcb.copy_into_save(vmsa.get(..SAVE_AREA)?);
        // CREATE_VCPU starts with DR0-DR3 clear, as SNP hardware does without DebugSwap.
        clear_debug_addresses(&mut vmcb);
        let regs = GuestRegs::of(&state);
        Some(Self {
            vmcb,
            regs,
            fpu: FpuImage::reset(),
            debug_addresses: [0; 4],
            vmsa_gpa,
            vmpl: state.vmpl,
            sev_features: state.sev_features,
            virtual_tom: state.virtual_tom,
            stopped: false,
            serial: 0,
            last_refusal: (0, 0),
            refusals_in_a_row: 0,
            next_rip_saved: c.next_rip_saved,
        })
    }

    /// Its whole state as a VMSA page (the inverse of [`Self::from_vmsa`]): the save
    /// area, the general-purpose registers in their VMSA slots, and the fields SVM keeps
    /// outside the VMCB. A live migration carries a vCPU in this form.
    pub fn to_vmsa(&self) -> [u8; 4096] {
        let mut state = abi::vmsa::Vmsa::new_zeroed();
        if let Some(save) = state.as_mut_bytes().get_mut(..SAVE_AREA) {
            self.vmcb.copy_from_save(save);
        }
        let r = &self.regs;
        (state.rbx, state.rcx, state.rdx, state.rsi, state.rdi, state.rbp) = (r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp);
        (state.r8, state.r9, state.r10, state.r11) = (r.r8, r.r9, r.r10, r.r11);
        (state.r12, state.r13, state.r14, state.r15) = (r.r12, r.r13, r.r14, r.r15);
        (state.vmpl, state.sev_features, state.virtual_tom) = (self.vmpl, self.sev_features, self.virtual_tom);
        // An event due on the next entry (one an exit cut short, `requeue_cut_event`, or a
        // #GP/#UD for an intercepted instruction) travels in the VMSA's EVENTINJ field.
        let pending = self.vmcb.u64(offset::EVENT_INJ);
        state.event_inj = if pending & event::VALID != 0 { pending } else { 0 };
        // DR0-DR3 are not in the VMCB (VMRUN does not switch them): the vCPU keeps its own.
        [state.dr0, state.dr1, state.dr2, state.dr3] = self.debug_addresses;
        const _: () = assert!(core::mem::size_of::<abi::vmsa::Vmsa>() == 4096);
        const _: () = assert!(core::mem::offset_of!(abi::vmsa::Vmsa, x87_dp) == vmsa_fpu::DP);
        let mut page = [0u8; 4096];
        page.copy_from_slice(state.as_bytes());
        self.fpu.write_vmsa(&mut page);
        page
    }

    /// Take the whole state of VMSA page `vmsa` (a migration's destination), keeping this
    /// vCPU's controls (intercepts, ASID, nested paging) and its place among the slots.
    pub fn restore(&mut self, vmsa: &[u8; 4096]) -> bool {
        let Ok(state) = abi::vmsa::Vmsa::read_from_bytes(vmsa) else { return false };
        let Some(save) = vmsa.get(..SAVE_AREA) else { return false };
        self.vmcb.copy_into_save(save);
        self.regs = GuestRegs::of(&state);
        (self.vmpl, self.sev_features, self.virtual_tom) = (state.vmpl, state.sev_features, state.virtual_tom);
        self.fpu = FpuImage::from_vmsa(vmsa);
        self.vmcb.set_u64(offset::EVENT_INJ, deliverable(state.event_inj));
        // Any address will do for DR0-DR3 (a breakpoint only compares it), so they are
        // taken as they come; the VMCB's own bytes there are reserved and stay zero.
        self.debug_addresses = [state.dr0, state.dr1, state.dr2, state.dr3];
        clear_debug_addresses(&mut self.vmcb);
        true
    }

    /// The exit VMRUN left in the VMCB.
    pub fn exit(&self) -> Exit {
        Exit {
            code: self.vmcb.exit_code(),
            info1: self.vmcb.u64(offset::EXIT_INFO1),
            info2: self.vmcb.u64(offset::EXIT_INFO2),
        }
    }

    /// An event whose delivery the exit cut short (EXITINTINFO valid: a nested page fault
    /// on the guest's stack or IDT, an interrupt that came mid-delivery) is delivered again
    /// on the next VMRUN, as AMD APM vol. 2 ("Event Injection", EXITINTINFO) asks of the
    /// hypervisor: dropped, the guest's #PF or single-step #DB would vanish. A handler that
    /// injects an event of its own after this replaces it. Kept out of line: it is on
    /// every exit's path and almost never taken.
    pub fn requeue_cut_event(&mut self) {
        let info = self.vmcb.u64(offset::EXIT_INT_INFO);
        if info & event::VALID != 0 {
            self.requeue(info);
        }
    }

    #[cold]
    #[inline(never)]
    fn requeue(&mut self, info: u64) {
        self.vmcb.set_u64(offset::EVENT_INJ, deliverable(info));
    }

    /// Flush the guest's TLB on the next VMRUN (after a nested-paging change).
    pub fn flush_tlb(&mut self) {
        // TLB_CONTROL is one byte: a wider write would clear V_INTR_MASKING next to it.
        self.vmcb.set_u8(offset::TLB_CONTROL, 1);
    }

    /// Advance RIP by `len` bytes (an instruction the SVSM decoded, or an I/O exit's
    /// EXITINFO2).
    pub fn skip(&mut self, len: u64) {
        let rip = self.vmcb.save(VmsaField::Rip);
        self.vmcb.set_save(VmsaField::Rip, rip.wrapping_add(len));
    }

    /// Step over the intercepted instruction, `len` bytes without prefixes: to the next
    /// RIP the CPU saved where it saves one (AMD CPUs with NRIP save, so a guest's
    /// prefixed CPUID or RDMSR lands after the whole instruction), else `len` on (QEMU's
    /// TCG saves none: a guest that pads the instruction with prefixes lands inside it,
    /// which is its own doing). A saved value that is not 1 to 15 bytes on is not
    /// trusted.
    #[inline]
    pub fn step_over(&mut self, len: u64) {
        let rip = self.vmcb.save(VmsaField::Rip);
        let saved = if self.next_rip_saved { self.vmcb.u64(offset::NEXT_RIP) } else { 0 };
        let next = match saved.wrapping_sub(rip) {
            1..=15 => saved,
            _ => rip.wrapping_add(len),
        };
        self.vmcb.set_save(VmsaField::Rip, next);
    }

    /// #GP(0) on the next VMRUN; RIP stays on the instruction, as for a fault.
    pub fn inject_gp(&mut self) {
        self.vmcb
            .set_u64(offset::EVENT_INJ, event::GP | event::TYPE_EXCEPTION | event::ERROR_CODE_VALID | event::VALID);
    }

    /// Count a refused access at `rip` to `gpa`: how many times in a row this vCPU has
    /// been refused that same access (1 for a new one).
    pub fn refused_again(&mut self, rip: u64, gpa: u64) -> u32 {
        if self.last_refusal == (rip, gpa) {
            self.refusals_in_a_row = self.refusals_in_a_row.saturating_add(1);
        } else {
            self.last_refusal = (rip, gpa);
            self.refusals_in_a_row = 1;
        }
        self.refusals_in_a_row
    }

    /// #UD on the next VMRUN: the instruction does not exist for the guest.
    pub fn inject_ud(&mut self) {
        self.vmcb.set_u64(offset::EVENT_INJ, event::UD | event::TYPE_EXCEPTION | event::VALID);
    }

    /// Answer an intercepted CPUID with what this CPU answered (`answer`, EAX..EDX for
    /// the leaf in EAX and subleaf in ECX), announcing the SVSM in 0x8000_001F EAX[28]
    /// (spec 58019 section 4.2), and step over the 2-byte instruction.
    pub fn answer_cpuid(&mut self, answer: [u32; 4]) {
        let leaf = self.cpuid_leaf().0;
        let [mut eax, mut ebx, mut ecx, mut edx] = answer;
        if leaf == abi::hw::discovery::CPUID_LEAF {
            eax |= abi::hw::discovery::CPUID_EAX_SVSM_PRESENT;
        }
        // No XSAVE: XCR0 and the state beyond FXSAVE's (AVX's upper halves) are not
        // switched between the vCPUs of one CPU, so a guest must not use them (and
        // XSETBV is #UD, `exit::UNDEFINED`).
        if leaf == 1 {
            ecx &= !(CPUID1_ECX_XSAVE | CPUID1_ECX_OSXSAVE | CPUID1_ECX_AVX);
        }
        if leaf == 0xD {
            [eax, ebx, ecx, edx] = [0; 4];
        }
        self.vmcb.set_save(VmsaField::Rax, u64::from(eax));
        self.regs.rbx = u64::from(ebx);
        self.regs.rcx = u64::from(ecx);
        self.regs.rdx = u64::from(edx);
        self.step_over(2);
    }

    /// The CPUID leaf (EAX) and subleaf (ECX) the guest asked for.
    pub fn cpuid_leaf(&self) -> (u32, u32) {
        (low32(self.vmcb.save(VmsaField::Rax)), low32(self.regs.rcx))
    }

    /// Answer an intercepted RDMSR (or, if `write`, WRMSR) as the MSR policy says
    /// (`msr`): a read's value into EDX:EAX, a write's new EFER or PAT into the VMCB, and
    /// RIP past the 2-byte instruction. On a refusal nothing changes but the injected
    /// #GP(0); RIP stays on the instruction. `calling_area` is this vCPU's (the discovery
    /// MSR's value), `tsc` what RDTSC gives the SVSM now.
    pub fn answer_msr(&mut self, write: bool, calling_area: u64, tsc: u64) -> (u32, Access, Result<Answer, Refusal>) {
        let msr = low32(self.regs.rcx);
        let access = match write {
            true => Access::Write(self.vmcb.save(VmsaField::Rax) & 0xFFFF_FFFF | self.regs.rdx << 32),
            false => Access::Read,
        };
        let mut state = GuestState {
            efer: self.vmcb.save(VmsaField::Efer),
            cr0: self.vmcb.u64(offset::CR0),
            pat: self.vmcb.u64(offset::G_PAT),
            calling_area,
            tsc: tsc.wrapping_add(self.vmcb.u64(offset::TSC_OFFSET)),
        };
        let answer = msr::on_exit(msr, access, &mut state);
        match answer {
            Ok(Answer::Read(value)) => {
                self.vmcb.set_save(VmsaField::Rax, value & 0xFFFF_FFFF);
                self.regs.rdx = value >> 32;
                self.step_over(2);
            }
            Ok(Answer::Written) => {
                self.vmcb.set_save(VmsaField::Efer, state.efer);
                self.vmcb.set_u64(offset::G_PAT, state.pat);
                self.step_over(2);
            }
            Err(_) => self.inject_gp(),
        }
        (msr, access, answer)
    }

    /// A VMSA field, from wherever SVM keeps it.
    pub fn field(&self, f: VmsaField) -> u64 {
        match f {
            VmsaField::Vmpl => u64::from(self.vmpl),
            VmsaField::SevFeatures => self.sev_features,
            VmsaField::VirtualTom => self.virtual_tom,
            VmsaField::ExitCode => self.vmcb.exit_code(),
            VmsaField::Rcx => self.regs.rcx,
            VmsaField::Rdx => self.regs.rdx,
            VmsaField::R8 => self.regs.r8,
            VmsaField::R9 => self.regs.r9,
            VmsaField::Efer | VmsaField::Rax | VmsaField::Cr3 | VmsaField::Rip | VmsaField::Rsp => self.vmcb.save(f),
        }
    }

    pub fn set_field(&mut self, f: VmsaField, v: u64) {
        match f {
            VmsaField::Vmpl => self.vmpl = v.to_le_bytes()[0],
            VmsaField::SevFeatures => self.sev_features = v,
            VmsaField::VirtualTom => self.virtual_tom = v,
            VmsaField::ExitCode => self.vmcb.set_u64(offset::EXIT_CODE, v),
            VmsaField::Rcx => self.regs.rcx = v,
            VmsaField::Rdx => self.regs.rdx = v,
            VmsaField::R8 => self.regs.r8 = v,
            VmsaField::R9 => self.regs.r9 = v,
            VmsaField::Efer | VmsaField::Rax | VmsaField::Cr3 | VmsaField::Rip | VmsaField::Rsp => {
                self.vmcb.set_save(f, v)
            }
        }
    }

    /// General register `index` (0 RAX .. 15 R15, the ModRM order).
    pub fn gpr(&self, index: u8) -> u64 {
        let r = &self.regs;
        match index {
            0 => self.vmcb.save(VmsaField::Rax),
            1 => r.rcx,
            2 => r.rdx,
            3 => r.rbx,
            4 => self.vmcb.save(VmsaField::Rsp),
            5 => r.rbp,
            6 => r.rsi,
            7 => r.rdi,
            8 => r.r8,
            9 => r.r9,
            10 => r.r10,
            11 => r.r11,
            12 => r.r12,
            13 => r.r13,
            14 => r.r14,
            _ => r.r15,
        }
    }

    /// Set general register `index` (0 RAX .. 15 R15).
    pub fn set_gpr(&mut self, index: u8, v: u64) {
        let r = &mut self.regs;
        match index {
            0 => self.vmcb.set_save(VmsaField::Rax, v),
            1 => r.rcx = v,
            2 => r.rdx = v,
            3 => r.rbx = v,
            4 => self.vmcb.set_save(VmsaField::Rsp, v),
            5 => r.rbp = v,
            6 => r.rsi = v,
            7 => r.rdi = v,
            8 => r.r8 = v,
            9 => r.r9 = v,
            10 => r.r10 = v,
            11 => r.r11 = v,
            12 => r.r12 = v,
            13 => r.r13 = v,
            14 => r.r14 = v,
            _ => r.r15 = v,
        }
    }

    /// What walking the guest's page tables needs: CR0, CR3, CR4, EFER.
    pub fn paging(&self) -> crate::mmio::Paging {
        let at = |off: usize| self.vmcb.u64(offset::SAVE + off);
        crate::mmio::Paging {
            cr0: at(core::mem::offset_of!(abi::vmsa::Vmsa, cr0)),
            cr3: self.vmcb.save(VmsaField::Cr3),
            cr4: at(core::mem::offset_of!(abi::vmsa::Vmsa, cr4)),
            efer: self.vmcb.save(VmsaField::Efer),
        }
    }

    /// Does the vCPU run 64-bit code (long mode, CS.L set)?
    pub fn in_64bit_code(&self) -> bool {
        const EFER_LMA: u64 = 1 << 10;
        const CS_L: u16 = 1 << 9;
        let cs = self.vmcb.segment(offset::SAVE + core::mem::offset_of!(abi::vmsa::Vmsa, cs));
        self.vmcb.save(VmsaField::Efer) & EFER_LMA != 0 && cs.attrib & CS_L != 0
    }

    /// Stop it for good: it never runs again, and VMRUN would refuse it (EFER.SVME = 0,
    /// the state DELETE_VCPU leaves a VMSA in).
    pub fn stop(&mut self) {
        self.stopped = true;
        let efer = self.field(VmsaField::Efer);
        self.set_field(VmsaField::Efer, efer & !EFER_SVME);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_page::TestPage;
    use abi::vmcb::V_INTR_MASKING;

    const C: Controls = Controls { npt_root: 0x1000, msrpm: 0x2000, iopm: 0x4000, next_rip_saved: false };

    fn startup() -> SvmVcpu<TestPage> {
        SvmVcpu::long_mode(TestPage::new(1), C, 0xA000, 0x20_0000, 0xB000)
    }

    #[test]
    fn the_launch_state_is_long_mode_with_every_intercept() {
        let v = startup();
        let m = &v.vmcb;
        assert_eq!(m.u32(offset::INTERCEPT_MISC1), INTERCEPT_MISC1);
        assert_eq!(m.u32(offset::INTERCEPT_MISC2), INTERCEPT_MISC2);
        assert_eq!(
            (m.u64(offset::N_CR3), m.u64(offset::MSRPM_BASE), m.u64(offset::IOPM_BASE)),
            (0x1000, 0x2000, 0x4000)
        );
        assert_eq!(m.u64(offset::NP_ENABLE), 1);
        assert_eq!(m.u32(offset::GUEST_ASID), 1);
        assert_eq!(m.u8(offset::TLB_CONTROL), 1, "a new VMCB flushes its ASID on its first entry");
        assert_eq!(m.u64(offset::V_INTR) & V_INTR_MASKING, V_INTR_MASKING);
        assert_eq!(v.field(VmsaField::Efer), 0x500 | EFER_SVME, "LME, LMA and SVME");
        assert_eq!((v.field(VmsaField::Rip), v.field(VmsaField::Cr3)), (0x20_0000, 0xB000));
        assert_eq!((v.field(VmsaField::Vmpl), v.vmsa_gpa), (1, 0xA000));
        assert_eq!(m.segment(offset::CS).attrib, 0x0A9B, "64-bit code segment");
        assert!(m.u32(offset::INTERCEPT_MISC2) & misc2::VMMCALL != 0, "the call gate exits");
    }

    /// TLB_CONTROL is one byte next to V_INTR: a flush must leave V_INTR_MASKING set, or
    /// the guest's IF would decide where the SVSM's own IPIs land. (The flush wrote eight
    /// bytes before this crate took it over, clearing it.)
    #[test]
    fn a_tlb_flush_keeps_interrupt_masking() {
        let mut v = startup();
        v.flush_tlb();
        assert_eq!(v.vmcb.u8(offset::TLB_CONTROL), 1);
        assert_eq!(v.vmcb.u64(offset::V_INTR) & V_INTR_MASKING, V_INTR_MASKING);
        assert_eq!(v.vmcb.u32(offset::GUEST_ASID), 1);
    }

    /// A guest-built VMSA: the save area comes over byte for byte, registers from their
    /// slots, and the fields SVM has no place for are kept beside the VMCB.
    #[test]
    fn a_vmsa_becomes_a_vmcb() {
        let mut vmsa = abi::vmsa::Vmsa::zeroed();
        vmsa.rip = 0xFFFF_8000_0000_1000;
        vmsa.rsp = 0x9000;
        vmsa.rax = 1;
        vmsa.rbx = 2;
        vmsa.r15 = 15;
        vmsa.efer = 0x1D00;
        vmsa.vmpl = 2;
        vmsa.sev_features = 1;
        vmsa.virtual_tom = 1 << 30;
        let bytes: [u8; 4096] = zerocopy::IntoBytes::as_bytes(&vmsa).try_into().unwrap();
        let v = SvmVcpu::from_vmsa(TestPage::new(1), C, 7, 0x5000, &bytes).unwrap();
        assert_eq!(v.field(VmsaField::Rip), 0xFFFF_8000_0000_1000);
        assert_eq!(v.field(VmsaField::Rsp), 0x9000);
        assert_eq!(v.field(VmsaField::Rax), 1);
        assert_eq!((v.regs.rbx, v.regs.r15), (2, 15));
        assert_eq!(v.field(VmsaField::Efer), 0x1D00);
        assert_eq!((v.vmpl, v.sev_features, v.virtual_tom), (2, 1, 1 << 30));
        assert_eq!(v.vmcb.u32(offset::GUEST_ASID), 7);
        assert_eq!(v.vmcb.u8(offset::TLB_CONTROL), 1, "its ASID may have been another vCPU's: flushed first");
        assert_eq!(v.vmcb.u32(offset::INTERCEPT_MISC1), INTERCEPT_MISC1, "the guest cannot choose intercepts");
        let asid0 = SvmVcpu::from_vmsa(TestPage::new(1), C, 0, 0x5000, &bytes).unwrap();
        assert_eq!(asid0.vmcb.u32(offset::GUEST_ASID), 1, "ASID 0 is the host's: never given to a guest");
    }

    /// A migration carries a vCPU as a VMSA page and makes it again on the other side:
    /// every register comes back, and the vCPU there keeps its own controls.
    #[test]
    fn a_vcpu_round_trips_through_a_vmsa_page() {
        let mut vmsa = abi::vmsa::Vmsa::zeroed();
        (vmsa.rip, vmsa.rsp, vmsa.rax, vmsa.cr3, vmsa.efer) = (0x1000, 0x9000, 1, 0xB000, 0x1D00);
        (vmsa.rbx, vmsa.rcx, vmsa.rdx, vmsa.rsi, vmsa.rdi, vmsa.rbp) = (2, 3, 4, 5, 6, 7);
        (vmsa.r8, vmsa.r9, vmsa.r10, vmsa.r11, vmsa.r12, vmsa.r13, vmsa.r14, vmsa.r15) = (8, 9, 10, 11, 12, 13, 14, 15);
        (vmsa.vmpl, vmsa.sev_features, vmsa.virtual_tom, vmsa.g_pat) = (2, 1, 1 << 30, 0x0007_0406_0007_0406);
        let bytes: [u8; 4096] = zerocopy::IntoBytes::as_bytes(&vmsa).try_into().unwrap();
        let mut source = SvmVcpu::from_vmsa(TestPage::new(1), C, 7, 0x5000, &bytes).unwrap();
        source.skip(3);
        source.regs.r12 = 0x1212;
        source.debug_addresses = [0x40_1000, 0x40_2000, 0, 0xFFFF_8000_0000_0000];
        let page = source.to_vmsa();
        let mut sent = vmsa;
        (sent.rip, sent.r12) = (0x1003, 0x1212);
        [sent.dr0, sent.dr1, sent.dr2, sent.dr3] = source.debug_addresses;
        // A new vCPU's x87/SSE state is the reset state, and it travels in the VMSA.
        (sent.x87_fcw, sent.mxcsr) = (0x037F, 0x1F80);
        assert!(page[..] == *zerocopy::IntoBytes::as_bytes(&sent), "the VMSA page is the vCPU's state");

        let mut destination = startup();
        assert!(destination.restore(&page));
        assert_eq!(destination.to_vmsa(), page, "every field arrived");
        assert_eq!(destination.debug_addresses, source.debug_addresses, "DR0-DR3 too (VMRUN does not switch them)");
        let reserved = (DEBUG_ADDRESSES..DEBUG_ADDRESSES + 64).step_by(8);
        assert!(reserved.map(|at| destination.vmcb.u64(offset::SAVE + at)).all(|v| v == 0), "the VMCB's bytes stay 0");
        assert_eq!(destination.vmcb.u32(offset::GUEST_ASID), 1, "the destination's own ASID");
        assert_eq!(destination.vmcb.u32(offset::INTERCEPT_MISC1), INTERCEPT_MISC1, "and its own intercepts");
    }

    /// An event due on the next entry travels in the VMSA's EVENTINJ field (0x3E0): a
    /// single-step #DB an exit cut short on the source is delivered on the destination.
    /// One the CPU would refuse, or a software interrupt, does not come back.
    #[test]
    fn a_pending_event_travels_in_the_vmsa() {
        let db = 1 | event::TYPE_EXCEPTION | event::VALID;
        let mut source = startup();
        source.vmcb.set_u64(offset::EXIT_INT_INFO, db);
        source.requeue_cut_event();
        let page = source.to_vmsa();
        let state = abi::vmsa::Vmsa::read_from_bytes(&page[..]).unwrap();
        assert_eq!(state.event_inj, db);
        let mut destination = startup();
        assert!(destination.restore(&page));
        assert_eq!(destination.vmcb.u64(offset::EVENT_INJ), db, "delivered on the destination's first entry");

        let gp = event::GP | event::TYPE_EXCEPTION | event::ERROR_CODE_VALID | event::VALID | 0x18 << 32;
        let nmi = event::TYPE_NMI | event::VALID | 2;
        let intr = 0x30 | event::TYPE_INTR | event::VALID;
        for ok in [db, gp, nmi, intr] {
            assert_eq!(deliverable(ok), ok, "{ok:#x}");
        }
        let refused = [
            db & !event::VALID,
            0x80 | event::TYPE_SOFT_INT | event::VALID,
            event::BP | event::TYPE_EXCEPTION | event::VALID,
            event::OF | event::TYPE_EXCEPTION | event::VALID,
            2 | event::TYPE_EXCEPTION | event::VALID,
            31 | event::TYPE_EXCEPTION | event::VALID,
            32 | event::TYPE_EXCEPTION | event::VALID,
            gp & !event::ERROR_CODE_VALID,
            db | event::ERROR_CODE_VALID,
            nmi | event::ERROR_CODE_VALID,
            db | 1 << 12,
            1 << 8 | event::VALID,
            7 << 8 | event::VALID,
        ];
        for bad in refused {
            assert_eq!(deliverable(bad), 0, "{bad:#x}");
            let mut state = abi::vmsa::Vmsa::read_from_bytes(&page[..]).unwrap();
            state.event_inj = bad;
            let bytes: [u8; 4096] = zerocopy::IntoBytes::as_bytes(&state).try_into().unwrap();
            assert!(destination.restore(&bytes));
            assert_eq!(destination.vmcb.u64(offset::EVENT_INJ), 0, "{bad:#x}");
        }
    }

    /// The x87/SSE state goes into a VMSA as KVM lays it out and comes back the same, with
    /// what FXRSTOR would refuse cleared.
    #[test]
    fn the_fpu_state_travels_in_the_vmsa_fields() {
        let mut page = [0u8; 4096];
        let mut set = |at: usize, bytes: &[u8]| page[at..at + bytes.len()].copy_from_slice(bytes);
        set(0x410, &0x027Fu16.to_le_bytes());
        set(0x40E, &0x3800u16.to_le_bytes());
        set(0x40C, &0x00C3u16.to_le_bytes());
        set(0x412, &0x0123u16.to_le_bytes());
        set(0x418, &0x1111_2222_3333_4444u64.to_le_bytes());
        set(0x400, &0x5555_6666_7777_8888u64.to_le_bytes());
        set(0x408, &0x0001_9FC0u32.to_le_bytes());
        for i in 0..80 {
            set(0x420 + i, &[i as u8 + 1]);
        }
        for i in 0..256 {
            set(0x470 + i, &[(i as u8) ^ 0x5A]);
        }
        let image = FpuImage::from_vmsa(&page);
        let fx = image.bytes();
        assert_eq!(&fx[0..8], &[0x7F, 0x02, 0x00, 0x38, 0xC3, 0x00, 0x23, 0x01]);
        assert_eq!(u32::from_le_bytes(fx[24..28].try_into().unwrap()), 0x9F80, "a reserved bit and DAZ cleared");
        assert_eq!(
            &fx[32..42],
            &[1, 2, 3, 4, 5, 6, 7, 8, 65, 66],
            "ST0: bytes 0-7, then bytes 8-9 from the second run"
        );
        assert_eq!(&fx[42..48], &[0; 6]);
        assert_eq!(&fx[160..176], &page[0x470..0x480]);
        let mut back = [0u8; 4096];
        image.write_vmsa(&mut back);
        page[0x408..0x40C].copy_from_slice(&0x9F80u32.to_le_bytes());
        assert!(back[0x400..0x570] == page[0x400..0x570], "every field back where it was");
    }

    /// A new vCPU's x87/SSE registers are the reset state, whichever vCPU had its CPU.
    #[test]
    fn a_new_vcpu_starts_with_the_reset_fpu_state() {
        for v in [startup(), SvmVcpu::from_vmsa(TestPage::new(1), C, 2, 0x5000, &[0; 4096]).unwrap()] {
            let image = v.fpu.bytes();
            assert_eq!(u16::from_le_bytes([image[0], image[1]]), 0x037F, "FCW");
            assert_eq!(u32::from_le_bytes(image[24..28].try_into().unwrap()), 0x1F80, "MXCSR");
            assert!(image[32..].iter().all(|b| *b == 0), "the registers are zero");
        }
    }

    #[test]
    fn fields_round_trip() {
        let mut v = startup();
        for (f, value) in [
            (VmsaField::Rax, 0x11),
            (VmsaField::Rcx, 0x22),
            (VmsaField::Rdx, 0x33),
            (VmsaField::R8, 0x44),
            (VmsaField::R9, 0x55),
            (VmsaField::Rip, 0x66),
            (VmsaField::Rsp, 0x77),
            (VmsaField::Cr3, 0x8000),
            (VmsaField::Efer, 0x1500),
            (VmsaField::ExitCode, 0x81),
            (VmsaField::SevFeatures, 3),
            (VmsaField::VirtualTom, 1 << 40),
            (VmsaField::Vmpl, 3),
        ] {
            v.set_field(f, value);
            assert_eq!(v.field(f), value, "{f:?}");
        }
        v.set_field(VmsaField::Vmpl, 0x1FF);
        assert_eq!(v.field(VmsaField::Vmpl), 0xFF, "one byte");
    }

    /// CPUID: the CPU's answer, with the SVSM bit added to 0x8000_001F EAX only (spec
    /// 58019 section 4.2).
    #[test]
    fn cpuid_announces_the_svsm_in_one_leaf() {
        let mut v = startup();
        v.set_field(VmsaField::Rax, u64::from(abi::hw::discovery::CPUID_LEAF));
        v.regs.rcx = 0;
        v.answer_cpuid([0x1, 0x2, 0x3, 0x4]);
        assert_eq!(v.field(VmsaField::Rax), u64::from(0x1 | abi::hw::discovery::CPUID_EAX_SVSM_PRESENT));
        assert_eq!((v.regs.rbx, v.regs.rcx, v.regs.rdx), (2, 3, 4));
        assert_eq!(v.field(VmsaField::Rip), 0x20_0002, "past the 2-byte CPUID");
        let mut w = startup();
        w.set_field(VmsaField::Rax, 0x8000_0001 | 0xFFFF_FFFF_0000_0000);
        w.answer_cpuid([0xA, 0xB, 0xC, 0xD]);
        assert_eq!(w.field(VmsaField::Rax), 0xA, "other leaves as the CPU answers; RAX's upper half ignored");
    }

    /// XSAVE is not offered (XCR0 and AVX state are not switched between vCPUs): leaf 1
    /// without XSAVE, OSXSAVE and AVX, leaf 0xD empty; every other feature bit as the CPU
    /// says.
    #[test]
    fn cpuid_hides_xsave() {
        let answer = |leaf: u32, cpu: [u32; 4]| {
            let mut v = startup();
            v.set_field(VmsaField::Rax, u64::from(leaf));
            v.answer_cpuid(cpu);
            (v.field(VmsaField::Rax), v.regs.rbx, v.regs.rcx, v.regs.rdx)
        };
        let all = u32::MAX;
        let without = u64::from(all & !(7 << 26));
        assert_eq!(answer(1, [1, 2, all, 4]), (1, 2, without, 4));
        assert_eq!(answer(0xD, [7, 0x240, 0x340, 0]), (0, 0, 0, 0));
        assert_eq!(answer(7, [0, all, all, all]).1, u64::from(all), "other leaves untouched");
    }

    /// RDMSR of the calling-area MSR: EDX:EAX, RIP past the 2-byte instruction. A refused
    /// access leaves RIP and the registers and injects #GP(0).
    #[test]
    fn msr_exits_answer_or_inject_gp() {
        let mut v = startup();
        v.regs.rcx = u64::from(abi::hw::discovery::MSR_SVSM_CAA);
        let (_, _, answer) = v.answer_msr(false, 0x1_2345_9000, 0);
        assert_eq!(answer, Ok(Answer::Read(0x1_2345_9000)));
        assert_eq!((v.field(VmsaField::Rax), v.regs.rdx), (0x2345_9000, 1));
        assert_eq!(v.field(VmsaField::Rip), 0x20_0002);
        assert_eq!(v.vmcb.u64(offset::EVENT_INJ), 0);

        let mut w = startup();
        w.regs.rcx = u64::from(crate::msr::index::VM_HSAVE_PA) | 0xFFFF_FFFF_0000_0000;
        w.set_field(VmsaField::Rax, 0x1000);
        w.regs.rdx = 0;
        let (msr, access, answer) = w.answer_msr(true, 0x9000, 0);
        assert_eq!((msr, access), (crate::msr::index::VM_HSAVE_PA, Access::Write(0x1000)), "ECX only");
        assert_eq!(answer, Err(Refusal::NotTheGuests));
        assert_eq!(w.field(VmsaField::Rip), 0x20_0000, "RIP stays on the faulting instruction");
        assert_eq!(
            w.vmcb.u64(offset::EVENT_INJ),
            event::GP | event::TYPE_EXCEPTION | event::ERROR_CODE_VALID | event::VALID
        );
    }

    /// WRMSR EFER and PAT land in the VMCB; the TSC read adds the VMCB's offset.
    #[test]
    fn emulated_writes_change_the_vmcb() {
        let mut v = startup();
        v.regs.rcx = u64::from(crate::msr::index::EFER);
        v.set_field(VmsaField::Rax, 0x1D01);
        v.regs.rdx = 0;
        assert_eq!(v.answer_msr(true, 0, 0).2, Ok(Answer::Written));
        assert_eq!(v.field(VmsaField::Efer), 0x1D01);
        v.regs.rcx = u64::from(crate::msr::index::PAT);
        v.set_field(VmsaField::Rax, 0x0007_0106);
        v.regs.rdx = 0x0407_0506;
        assert_eq!(v.answer_msr(true, 0, 0).2, Ok(Answer::Written));
        assert_eq!(v.vmcb.u64(offset::G_PAT), 0x0407_0506_0007_0106);
        v.vmcb.set_u64(offset::TSC_OFFSET, 1000);
        v.regs.rcx = u64::from(crate::msr::index::TSC);
        assert_eq!(v.answer_msr(false, 0, 5).2, Ok(Answer::Read(1005)));
    }

    #[test]
    fn a_stopped_vcpu_cannot_be_entered() {
        let mut v = startup();
        v.stop();
        assert!(v.stopped);
        assert_eq!(v.field(VmsaField::Efer) & EFER_SVME, 0, "VMRUN refuses it");
        assert_eq!(v.field(VmsaField::Efer), 0x500, "nothing else changed");
    }

    #[test]
    fn injected_events() {
        let mut v = startup();
        v.inject_ud();
        assert_eq!(v.vmcb.u64(offset::EVENT_INJ), event::UD | event::TYPE_EXCEPTION | event::VALID);
        v.skip(u64::MAX);
        assert_eq!(v.field(VmsaField::Rip), 0x1F_FFFF, "RIP wraps instead of overflowing");
    }
}
