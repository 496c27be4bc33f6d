//! A VMCB and typed access to its fields (layout: `abi::vmcb`). The page is SVSM memory
//! the CPU reads by physical address during VMRUN; every access here is a bounded copy.

use crate::hw::PageMem;
use abi::vmcb::offset;
use abi::vmsa::VmsaField;

/// A segment register in the save area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub attrib: u16,
    pub limit: u32,
    pub base: u64,
}

#[derive(Debug)]
pub struct Vmcb<P> {
    page: P,
}

impl<P: PageMem> Vmcb<P> {
    /// A VMCB in `page` (zeroed: no intercepts, no state).
    pub fn new(page: P) -> Self {
        Self { page }
    }

    pub fn phys(&self) -> u64 {
        self.page.phys()
    }

    /// The page itself, for VMRUN.
    pub fn page_mut(&mut self) -> &mut P {
        &mut self.page
    }

    fn field<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.page.bytes().get(off..off + N) {
            out.copy_from_slice(src);
        }
        out
    }

    fn set_field(&mut self, off: usize, bytes: &[u8]) {
        if let Some(dst) = self.page.bytes_mut().get_mut(off..off + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }

    pub fn u64(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.field(off))
    }
    pub fn u8(&self, off: usize) -> u8 {
        self.field::<1>(off)[0]
    }
    pub fn u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.field(off))
    }
    pub fn set_u64(&mut self, off: usize, v: u64) {
        self.set_field(off, &v.to_le_bytes());
    }
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.set_field(off, &v.to_le_bytes());
    }
    pub fn set_u8(&mut self, off: usize, v: u8) {
        self.set_field(off, &[v]);
    }

    pub fn set_segment(&mut self, off: usize, s: Segment) {
        self.set_field(off, &s.selector.to_le_bytes());
        self.set_field(off + 2, &s.attrib.to_le_bytes());
        self.set_field(off + 4, &s.limit.to_le_bytes());
        self.set_field(off + 8, &s.base.to_le_bytes());
    }

    pub fn segment(&self, off: usize) -> Segment {
        Segment {
            selector: u16::from_le_bytes(self.field(off)),
            attrib: u16::from_le_bytes(self.field(off + 2)),
            limit: u32::from_le_bytes(self.field(off + 4)),
            base: u64::from_le_bytes(self.field(off + 8)),
        }
    }

    /// A save-area field that the VMCB shares with the VMSA layout.
    pub fn save(&self, f: VmsaField) -> u64 {
        let off = offset::SAVE + f.offset();
        match f.width() {
            1 => u64::from(self.field::<1>(off)[0]),
            _ => self.u64(off),
        }
    }
    pub fn set_save(&mut self, f: VmsaField, v: u64) {
        let off = offset::SAVE + f.offset();
        match f.width() {
            1 => self.set_u8(off, v.to_le_bytes()[0]),
            _ => self.set_u64(off, v),
        }
    }

    /// Overwrite the start of the state-save area with `bytes` (a VMSA's first part).
    pub fn copy_into_save(&mut self, bytes: &[u8]) {
        self.set_field(offset::SAVE, bytes);
    }

    /// The start of the state-save area, as the first bytes of a VMSA.
    pub fn copy_from_save(&self, out: &mut [u8]) {
        if let Some(src) = self.page.bytes().get(offset::SAVE..offset::SAVE + out.len()) {
            out.copy_from_slice(src);
        }
    }

    pub fn exit_code(&self) -> u64 {
        self.u64(offset::EXIT_CODE)
    }
}
