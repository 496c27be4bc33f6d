//! The host is hostile: whatever it writes into the GHCB MSR, the GHCB page or the
//! shared pages, the snp platform answers with an error or a result and never panics.

use bulwark_snp::cpuid::CpuidTable;
use bulwark_snp::hw::{Fault, Shared, SnpHw};
use bulwark_snp::vc::{VcRegs, handle};
use bulwark_snp::{SnpConfig, SnpPlatform, StartError};
use kernel::addr::PageAddr;
use kernel::platform::Platform;
use kernel::vcpu::VcpuIndex;
use proptest::prelude::*;
use std::collections::VecDeque;

/// Hardware whose host answers from a script of random values: each VMGEXIT pops one MSR
/// value and one page of bytes the host "wrote" into the GHCB.
#[derive(Debug)]
struct ScriptedHost {
    msr: u64,
    msr_answers: VecDeque<u64>,
    pages: VecDeque<Vec<u8>>,
    shared: std::collections::HashMap<u64, Vec<u8>>,
    memory: std::collections::HashMap<u64, u8>,
}

fn shared_gpa(page: Shared) -> u64 {
    0x10_0000
        + 0x1000
            * match page {
                Shared::Ghcb => 0,
                Shared::Request => 1,
                Shared::Response => 2,
                Shared::Certs(i) => 3 + i as u64,
            }
}

impl SnpHw for ScriptedHost {
    fn pvalidate(&mut self, _: u64, _: bool, _: bool) -> Result<(u32, bool), Fault> {
        Ok((0, false))
    }
    fn rmpadjust(&mut self, _: u64, _: bool, _: u64) -> Result<u32, Fault> {
        Ok(0)
    }
    fn rmpquery(&self, _: u64) -> Result<(u32, u64), Fault> {
        // An instruction of the CPU: the host has no say in its answer.
        Ok((0, 0))
    }
    fn flush_tlb_all(&mut self) {}
    fn halt(&mut self) -> ! {
        panic!("halted")
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Fault> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = *self.memory.get(&(gpa + i as u64)).unwrap_or(&0);
        }
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), Fault> {
        for (i, b) in data.iter().enumerate() {
            self.memory.insert(gpa + i as u64, *b);
        }
        Ok(())
    }
    fn shared_gpa(&self, page: Shared) -> u64 {
        shared_gpa(page)
    }
    fn shared_read(&self, page: Shared, offset: usize, buf: &mut [u8]) {
        let p = self.shared.get(&shared_gpa(page)).cloned().unwrap_or_else(|| vec![0; 4096]);
        let end = (offset + buf.len()).min(p.len());
        let n = end.saturating_sub(offset);
        buf[..n].copy_from_slice(&p[offset..end]);
    }
    fn shared_write(&mut self, page: Shared, offset: usize, data: &[u8]) {
        let p = self.shared.entry(shared_gpa(page)).or_insert_with(|| vec![0; 4096]);
        p[offset..offset + data.len()].copy_from_slice(data);
    }
    fn read_ghcb_msr(&self) -> u64 {
        self.msr
    }
    fn write_ghcb_msr(&mut self, value: u64) {
        self.msr = value;
    }
    fn vmgexit(&mut self) {
        if let Some(v) = self.msr_answers.pop_front() {
            self.msr = v;
        }
        // The host scribbles over every shared page it likes.
        if let Some(mut bytes) = self.pages.pop_front() {
            bytes.resize(4096, 0);
            for page in [Shared::Ghcb, Shared::Response, Shared::Certs(0)] {
                self.shared.insert(shared_gpa(page), bytes.clone());
            }
        }
    }
}

fn host(msr_answers: Vec<u64>, pages: Vec<Vec<u8>>) -> ScriptedHost {
    ScriptedHost {
        msr: 0,
        msr_answers: msr_answers.into(),
        pages: pages.into(),
        shared: Default::default(),
        memory: Default::default(),
    }
}

/// MSR answers that get a platform through `start` (protocol 2, SNP + AP creation,
/// page-state changes and registration accepted).
fn agreeable() -> Vec<u64> {
    let mut v = vec![2u64 << 48 | 2 << 32 | 51 << 24 | 0x001, 0b11 << 12 | 0x081];
    v.extend(std::iter::repeat_n(0x015, 7));
    v.push(0x10_0000 | 0x013);
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn start_survives_any_msr_answers(answers in proptest::collection::vec(any::<u64>(), 0..12)) {
        let _ = SnpPlatform::start(host(answers, vec![]), SnpConfig::new(1, 1)).map(|_| ()).map_err(StartError::reason);
    }

    #[test]
    fn events_survive_any_ghcb_contents(pages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..4096), 1..6)) {
        let config = SnpConfig { console_port: Some(0x3F8), ..SnpConfig::new(1, 1) };
        let Ok(mut p) = SnpPlatform::start(host(agreeable(), vec![]), config) else {
            panic!("the agreeable host lets the platform start");
        };
        p.hw.pages = pages.into();
        let request = [0u8; 4096];
        let mut response = [0u8; 4096];
        let _ = p.guest_request(&request, &mut response);
        let _ = p.report_certificates();
        let page = PageAddr::new(0x20_0000).expect("aligned");
        p.vcpu_created(VcpuIndex(1), page, 3, &[]);
        let _ = p.vcpu_stop(page);
        let _ = p.resume_guest();
        kernel::log!(&mut p, Warn, "a line for the serial port");
        let table = CpuidTable::parse(&[0u8; 4096]).expect("empty table");
        for (code, insn) in [(0x7Bu64, &[0xECu8][..]), (0x7C, &[0x0F, 0x32]), (0x6E, &[0x0F, 0x31]), (0x87, &[0x0F, 0x01, 0xF9])] {
            let _ = handle(&mut p.hw, &table, code, insn, &mut VcRegs::default(), 1, 0);
        }
    }

    #[test]
    fn vc_decoding_survives_any_instruction_bytes(code in prop_oneof![Just(0x72u64), Just(0x7B), Just(0x7C), Just(0x6E), Just(0x87), any::<u64>()],
                                                    insn in proptest::collection::vec(any::<u8>(), 0..16)) {
        let mut hw = host(vec![], vec![vec![0xFF; 4096]]);
        let table = CpuidTable::parse(&[0u8; 4096]).expect("empty table");
        if let Ok(len) = handle(&mut hw, &table, code, &insn, &mut VcRegs::default(), 1, 0) {
            prop_assert!(len >= 1 && len <= insn.len(), "a handled instruction lies within the bytes given");
        }
    }
}

#[test]
fn a_host_that_answers_garbage_fails_the_guest_request_cleanly() {
    let Ok(mut p) = SnpPlatform::start(host(agreeable(), vec![]), SnpConfig::new(1, 1)) else { panic!("starts") };
    // The host leaves the GHCB untouched: SW_EXITINFO1 still holds the request's gpa.
    p.hw.pages = VecDeque::new();
    let mut response = [0u8; 4096];
    assert!(p.guest_request(&[0u8; 4096], &mut response).is_err());
    assert!(p.report_certificates().is_empty(), "no certificates from a failed request");
}
