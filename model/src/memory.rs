//! Sparse guest-physical memory: pages that were never written read as zeros and cost
//! nothing, so a model guest can have gigabytes of RAM.

use std::collections::BTreeMap;
use std::ops::Range;

const PAGE: usize = 4096;

#[derive(Debug, Default)]
pub struct Memory {
    /// Written pages by pfn; ordered so a range of pages is zeroed in one sweep.
    pages: BTreeMap<u64, Box<[u8; PAGE]>>,
}

impl Memory {
    pub fn read(&self, gpa: u64, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let addr = gpa + done as u64;
            let off = (addr % PAGE as u64) as usize;
            let n = (PAGE - off).min(buf.len() - done);
            match self.pages.get(&(addr / PAGE as u64)) {
                Some(p) => buf[done..done + n].copy_from_slice(&p[off..off + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
    }

    pub fn write(&mut self, gpa: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let addr = gpa + done as u64;
            let off = (addr % PAGE as u64) as usize;
            let n = (PAGE - off).min(data.len() - done);
            let page = self.pages.entry(addr / PAGE as u64).or_insert_with(|| Box::new([0; PAGE]));
            page[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    pub fn zero_pages(&mut self, pfns: Range<u64>) {
        let written: Vec<u64> = self.pages.range(pfns).map(|(pfn, _)| *pfn).collect();
        for pfn in written {
            self.pages.remove(&pfn);
        }
    }
}
