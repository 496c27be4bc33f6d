//! SVSM memory for the crate's tests: a heap buffer with a made-up physical address.

use crate::hw::PageMem;
use core::sync::atomic::{AtomicU64, Ordering};
use std::vec;
use std::vec::Vec;

static NEXT: AtomicU64 = AtomicU64::new(0x10_0000_0000);

#[derive(Debug)]
pub struct TestPage {
    phys: u64,
    bytes: Vec<u8>,
}

impl TestPage {
    pub fn new(count: usize) -> Self {
        let phys = NEXT.fetch_add(count as u64 * 4096, Ordering::Relaxed);
        Self { phys, bytes: vec![0; count * 4096] }
    }
}

impl PageMem for TestPage {
    fn phys(&self) -> u64 {
        self.phys
    }
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}
