//! The seam for the crate's tests: sparse guest memory, nested mappings recorded by page,
//! kicks and log lines recorded, and a CPU that replays scripted exits.

use crate::hw::{Fault, PageMem, SvmCpu, SvmHw};
use crate::npt::Access;
use crate::test_page::TestPage;
use crate::vcpu::GuestRegs;
use abi::vmcb::offset;
use kernel::log_ring::LogLost;
use kernel::platform::{GuestRequestError, Level};
use std::boxed::Box;
use std::collections::{BTreeMap, VecDeque};
use std::format;
use std::string::String;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::vec::Vec;

/// The machine every CPU shares, for tests on several threads: each part behind its own
/// lock, as the chip's seam keeps them.
#[derive(Debug, Default)]
pub struct TestHw {
    /// Guest memory by page; pages never written read as zero.
    pub memory: Mutex<BTreeMap<u64, Box<[u8; 4096]>>>,
    /// Where guest-physical memory ends.
    pub memory_end: u64,
    /// What nested paging maps with 4 KiB leaves, by pfn.
    pub npt: Mutex<BTreeMap<u64, Access>>,
    /// What nested paging maps with 2 MiB leaves, by region (pfn / 512).
    pub npt_large: Mutex<BTreeMap<u64, Access>>,
    /// Refuse 2 MiB mappings from this pfn up (no memory for a directory table).
    pub npt_directories_full_from: Option<u64>,
    /// Regions with a table of 4 KiB leaves (kept once made, as on the chip).
    pub npt_tables: Mutex<std::collections::BTreeSet<u64>>,
    /// Refuse 4 KiB mappings and splits of 2 MiB leaves from this pfn up (no memory for a
    /// table of 4 KiB leaves; the directories a 2 MiB leaf needs are always had).
    pub npt_full_from: Option<u64>,
    /// Every kick so far, in order.
    pub kicks: Mutex<Vec<u32>>,
    /// CPUs kicked: their kick stays pending (no CPU answers it in these tests).
    pub pending: Mutex<std::collections::BTreeSet<u32>>,
    pub generation: AtomicU64,
    pub log: Mutex<Vec<(Level, String)>>,
    /// Allocations left before `alloc` fails.
    pub allocs_left: Mutex<Option<usize>>,
    /// What `next_rip_saved` answers (QEMU's TCG: false).
    pub next_rip_saved: bool,
}

impl TestHw {
    pub fn new(memory_end: u64) -> Self {
        Self { memory_end, ..Self::default() }
    }

    fn in_memory(&self, gpa: u64, len: usize) -> bool {
        gpa.checked_add(len as u64).is_some_and(|end| end <= self.memory_end)
    }

    pub fn read(&self, gpa: u64, buf: &mut [u8]) {
        let memory = self.memory.lock().unwrap();
        for (i, b) in buf.iter_mut().enumerate() {
            let a = gpa + i as u64;
            *b = memory.get(&(a >> 12)).map_or(0, |p| p[(a & 0xFFF) as usize]);
        }
    }

    pub fn write(&self, gpa: u64, data: &[u8]) {
        let mut memory = self.memory.lock().unwrap();
        for (i, b) in data.iter().enumerate() {
            let a = gpa + i as u64;
            memory.entry(a >> 12).or_insert_with(|| Box::new([0; 4096]))[(a & 0xFFF) as usize] = *b;
        }
    }

    pub fn u64_at(&self, gpa: u64) -> u64 {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b);
        u64::from_le_bytes(b)
    }

    /// What nested paging maps at `gpa`.
    pub fn mapped(&self, gpa: u64) -> Option<Access> {
        let large = self.npt_large.lock().unwrap().get(&(gpa >> 21)).copied();
        large.or_else(|| self.npt.lock().unwrap().get(&(gpa >> 12)).copied())
    }

    /// Is `gpa` mapped by a 2 MiB leaf?
    pub fn mapped_large(&self, gpa: u64) -> bool {
        self.npt_large.lock().unwrap().contains_key(&(gpa >> 21))
    }

    /// How many 4 KiB leaves nested paging holds.
    pub fn small_leaves(&self) -> usize {
        self.npt.lock().unwrap().len()
    }

    /// How many tables of 4 KiB leaves nested paging holds.
    pub fn tables(&self) -> usize {
        self.npt_tables.lock().unwrap().len()
    }

    fn npt_full(&self, pfn: u64) -> bool {
        self.npt_full_from.is_some_and(|from| pfn >= from)
    }

    /// The CPUs kicked so far, and forget them.
    pub fn take_kicks(&self) -> Vec<u32> {
        core::mem::take(&mut *self.kicks.lock().unwrap())
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn logged(&self, part: &str) -> bool {
        self.log.lock().unwrap().iter().any(|(_, l)| l.contains(part))
    }
}

impl SvmHw for TestHw {
    type Page = TestPage;

    fn alloc(&self, count: usize) -> Option<TestPage> {
        if let Some(left) = self.allocs_left.lock().unwrap().as_mut() {
            *left = left.checked_sub(1)?;
        }
        Some(TestPage::new(count))
    }

    fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Fault> {
        if !self.in_memory(gpa, buf.len()) {
            return Err(Fault);
        }
        self.read(gpa, buf);
        Ok(())
    }

    fn write_guest(&self, gpa: u64, data: &[u8]) -> Result<(), Fault> {
        if !self.in_memory(gpa, data.len()) {
            return Err(Fault);
        }
        self.write(gpa, data);
        Ok(())
    }

    fn zero_guest(&self, gpa: u64, len: usize) -> Result<(), Fault> {
        if !self.in_memory(gpa, len) {
            return Err(Fault);
        }
        let mut memory = self.memory.lock().unwrap();
        for pfn in gpa >> 12..(gpa + len as u64).div_ceil(4096) {
            memory.remove(&pfn);
        }
        Ok(())
    }

    fn npt_set(&self, gpa: u64, access: Option<Access>) -> Result<(), Fault> {
        let (pfn, region) = (gpa >> 12, gpa >> 21);
        let mut large = self.npt_large.lock().unwrap();
        if let Some(&whole) = large.get(&region) {
            if access == Some(whole) {
                return Ok(());
            }
            if self.npt_full(pfn) {
                return Err(Fault);
            }
            large.remove(&region);
            self.npt_tables.lock().unwrap().insert(region);
            let mut npt = self.npt.lock().unwrap();
            for p in region * 512..region * 512 + 512 {
                npt.insert(p, whole);
            }
        }
        drop(large);
        let mut tables = self.npt_tables.lock().unwrap();
        if !tables.contains(&region) {
            if access.is_none() {
                return Ok(());
            }
            if self.npt_full(pfn) {
                return Err(Fault);
            }
            tables.insert(region);
        }
        drop(tables);
        let mut npt = self.npt.lock().unwrap();
        match access {
            Some(a) => npt.insert(gpa >> 12, a),
            None => npt.remove(&(gpa >> 12)),
        };
        Ok(())
    }

    fn npt_set_region(&self, gpa: u64, access: Option<Access>) -> Result<(), Fault> {
        let region = gpa >> 21;
        assert_eq!(gpa & 0x1F_FFFF, 0, "a 2 MiB leaf maps an aligned region");
        if access.is_some() && self.npt_directories_full_from.is_some_and(|from| gpa >> 12 >= from) {
            return Err(Fault);
        }
        if self.npt_tables.lock().unwrap().contains(&region) {
            let mut npt = self.npt.lock().unwrap();
            for p in region * 512..region * 512 + 512 {
                match access {
                    Some(a) => npt.insert(p, a),
                    None => npt.remove(&p),
                };
            }
            return Ok(());
        }
        let mut large = self.npt_large.lock().unwrap();
        match access {
            Some(a) => large.insert(region, a),
            None => large.remove(&region),
        };
        Ok(())
    }

    fn npt_root(&self) -> u64 {
        0x7000_0000
    }

    fn next_rip_saved(&self) -> bool {
        self.next_rip_saved
    }

    fn kick(&self, cpu: u32) {
        self.kicks.lock().unwrap().push(cpu);
        self.pending.lock().unwrap().insert(cpu);
    }

    fn kick_pending(&self, cpu: u32) -> bool {
        self.pending.lock().unwrap().contains(&cpu)
    }

    fn vcpus_changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn rdtsc(&self) -> u64 {
        1_000_000
    }

    fn guest_request(&self, _: &[u8; 4096], _: &mut [u8; 4096]) -> Result<(), GuestRequestError> {
        Err(GuestRequestError::Unavailable)
    }

    fn fatal(&self, why: core::fmt::Arguments<'_>) -> ! {
        panic!("fatal: {why}")
    }

    fn log(&self, level: Level, args: core::fmt::Arguments<'_>) {
        self.log.lock().unwrap().push((level, format!("{args}")));
    }

    fn log_read(&self, _: u64, _: &mut [u8]) -> Result<usize, LogLost> {
        Ok(0)
    }

    fn log_written(&self) -> u64 {
        0
    }
}

/// One scripted exit: code, EXITINFO1, EXITINFO2, EXITINTINFO (an event whose delivery
/// the exit cut short), and what the guest put in RAX, RCX and RDX before it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Step {
    pub code: u64,
    pub info1: u64,
    pub info2: u64,
    pub exit_int_info: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    /// What a CPU with NRIP save writes to the VMCB's NEXT_RIP.
    pub next_rip: u64,
}

/// A CPU whose guest makes the scripted exits, then is called back (as by a kick).
#[derive(Debug, Default)]
pub struct TestCpu {
    pub script: VecDeque<Step>,
    pub generation: u64,
    /// Each entry: the VMCB's EVENT_INJ and TLB_CONTROL when it was entered.
    pub entries: Vec<(u64, u8)>,
    /// What `attention` answers (the CPU's loop wants to look between exits).
    pub attention: bool,
}

impl SvmCpu<TestPage> for TestCpu {
    fn vmrun(&mut self, vmcb: &mut TestPage, regs: &mut GuestRegs) -> bool {
        let Some(step) = self.script.pop_front() else { return false };
        let b = vmcb.bytes_mut();
        let get = |b: &[u8], off: usize| u64::from_le_bytes(b[off..off + 8].try_into().unwrap());
        self.entries.push((get(b, offset::EVENT_INJ), b[offset::TLB_CONTROL]));
        // The event is delivered on entry: the CPU clears its valid bit.
        let inj = get(b, offset::EVENT_INJ) & !abi::vmcb::event::VALID;
        b[offset::EVENT_INJ..offset::EVENT_INJ + 8].copy_from_slice(&inj.to_le_bytes());
        let rax = offset::SAVE + abi::vmsa::VmsaField::Rax.offset();
        b[rax..rax + 8].copy_from_slice(&step.rax.to_le_bytes());
        regs.rcx = step.rcx;
        regs.rdx = step.rdx;
        for (off, v) in [
            (offset::EXIT_CODE, step.code),
            (offset::EXIT_INFO1, step.info1),
            (offset::EXIT_INFO2, step.info2),
            (offset::EXIT_INT_INFO, step.exit_int_info),
            (offset::NEXT_RIP, step.next_rip),
        ] {
            b[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        true
    }

    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        [leaf, subleaf, 0xC, 0xD]
    }

    fn generation(&self) -> u64 {
        self.generation
    }

    fn attention(&self) -> bool {
        self.attention
    }
}
