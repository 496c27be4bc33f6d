//! The calling convention and the typed core-protocol calls.

use abi::PAGE_SIZE;
use abi::calling_area::{CALL_PENDING_NONE, CALL_PENDING_REQUESTED};
use abi::core_protocol::{DepositEntry, LIST_ENTRY_SIZE, LIST_HEADER_SIZE, ListHeader, PvalidateEntry, vtom};
use abi::protocol::{CallId, ProtocolId, core_call, query_protocol_rcx};
use abi::result::ResultCode;
use zerocopy::{FromBytes, IntoBytes};

/// The registers of a call: inputs before the gate, outputs after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub r8: u64,
    pub r9: u64,
}

/// A guest memory access faulted (the page is not validated, not the guest's, or absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestFault {
    pub gpa: u64,
}

/// How the guest reaches its memory and the SVSM.
pub trait Transport {
    /// Copy guest memory, with the guest's own permissions.
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestFault>;
    /// Write guest memory, with the guest's own permissions.
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestFault>;
    /// Atomically exchange the byte at `gpa` with `value`; returns the old value.
    fn exchange_u8(&mut self, gpa: u64, value: u8) -> Result<u8, GuestFault>;
    /// Request the SVSM (VMGEXIT / VMMCALL). `regs` holds the inputs and receives the
    /// registers as the guest sees them after the return.
    fn request_svsm(&mut self, regs: &mut Regs);
}

/// Pages the guest can give the SVSM when it asks for memory.
pub trait PageSource {
    /// A validated 4 KiB page the guest no longer needs, or `None`.
    fn take_page(&mut self) -> Option<u64>;
}

/// Why a call did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallError {
    /// SVSM_CALL_PENDING was still 1: the SVSM never ran the call.
    NotExecuted,
    /// The SVSM answered with this result.
    Failed(ResultCode),
    /// INCOMPLETE or BUSY more often than the retry limit.
    TooManyRetries,
    /// The guest could not touch its own memory.
    Fault(GuestFault),
}

impl From<GuestFault> for CallError {
    fn from(f: GuestFault) -> Self {
        Self::Fault(f)
    }
}

impl CallError {
    /// The SVSM's result code, if it answered.
    pub fn result(self) -> Option<ResultCode> {
        match self {
            Self::Failed(r) => Some(r),
            _ => None,
        }
    }
}

/// INCOMPLETE/BUSY retries before a call gives up (Linux retries without bound; a test
/// client must not hang).
pub const DEFAULT_RETRY_LIMIT: u32 = 100_000;

/// A vCPU's connection to the SVSM.
#[derive(Debug)]
pub struct Client<T> {
    pub transport: T,
    /// gpa of this vCPU's calling area.
    pub calling_area: u64,
    pub retry_limit: u32,
}

impl<T: Transport> Client<T> {
    pub fn new(transport: T, calling_area: u64) -> Self {
        Self { transport, calling_area, retry_limit: DEFAULT_RETRY_LIMIT }
    }

    /// One pass through the gate, exactly as Linux issues it. Returns the registers
    /// after the call, whatever the result.
    pub fn issue(&mut self, input: Regs) -> Result<Regs, CallError> {
        let mut regs = input;
        self.transport.write(self.calling_area, &[CALL_PENDING_REQUESTED])?;
        self.transport.request_svsm(&mut regs);
        let pending = self.transport.exchange_u8(self.calling_area, CALL_PENDING_NONE)?;
        if pending != CALL_PENDING_NONE {
            return Err(CallError::NotExecuted);
        }
        Ok(regs)
    }

    /// Issue a call, retrying INCOMPLETE and BUSY with the same inputs; success returns
    /// the output registers.
    pub fn call(&mut self, id: CallId, rcx: u64, rdx: u64, r8: u64, r9: u64) -> Result<Regs, CallError> {
        let input = Regs { rax: id.to_rax(), rcx, rdx, r8, r9 };
        for _ in 0..=self.retry_limit {
            let out = self.issue(input)?;
            match ResultCode::from_rax(out.rax) {
                ResultCode::SUCCESS => return Ok(out),
                ResultCode::ERR_INCOMPLETE | ResultCode::ERR_BUSY => continue,
                other => return Err(CallError::Failed(other)),
            }
        }
        Err(CallError::TooManyRetries)
    }

    /// Like [`Client::call`], but answers "more memory needed" by depositing pages from
    /// `source` (using the page at `list_gpa` for the deposit list) and retrying.
    pub fn call_with_deposit(
        &mut self,
        id: CallId,
        regs: [u64; 4],
        source: &mut dyn PageSource,
        list_gpa: u64,
    ) -> Result<Regs, CallError> {
        loop {
            match self.call(id, regs[0], regs[1], regs[2], regs[3]) {
                Err(CallError::Failed(r)) => match r.memory_needed() {
                    Some(pages) => self.deposit_from(source, pages, list_gpa, r)?,
                    None => return Err(CallError::Failed(r)),
                },
                other => return other,
            }
        }
    }

    fn deposit_from(
        &mut self,
        source: &mut dyn PageSource,
        pages: u32,
        list_gpa: u64,
        why: ResultCode,
    ) -> Result<(), CallError> {
        let capacity = list_capacity(list_gpa);
        let mut left = pages as u64;
        while left > 0 {
            let mut entries = [0u64; 511];
            let mut n = 0usize;
            while (n as u64) < left.min(capacity) {
                let Some(page) = source.take_page() else { break };
                entries[n] = DepositEntry::new(page, false).0;
                n += 1;
            }
            if n == 0 {
                return Err(CallError::Failed(why));
            }
            self.write_list(list_gpa, &entries[..n])?;
            self.call(CallId::new(ProtocolId::CORE, core_call::DEPOSIT_MEM), list_gpa, 0, 0, 0)?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Write a PVALIDATE / deposit list (header with next = 0, then the entries).
    pub fn write_list(&mut self, list_gpa: u64, entries: &[u64]) -> Result<(), CallError> {
        let header = ListHeader { entries: entries.len() as u16, next: 0, reserved: 0 };
        self.transport.write(list_gpa, header.as_bytes())?;
        self.transport.write(list_gpa + LIST_HEADER_SIZE, entries.as_bytes())?;
        Ok(())
    }

    /// Read back a list header (to see the SVSM's next-entry index).
    pub fn read_list_header(&mut self, list_gpa: u64) -> Result<ListHeader, CallError> {
        let mut h = ListHeader::default();
        self.transport.read(list_gpa, h.as_mut_bytes())?;
        Ok(h)
    }

    // ---- Typed core-protocol calls (section 6) ----

    fn core(&mut self, call: u32, rcx: u64, rdx: u64, r8: u64, r9: u64) -> Result<Regs, CallError> {
        self.call(CallId::new(ProtocolId::CORE, call), rcx, rdx, r8, r9)
    }

    /// SVSM_CORE_REMAP_CA; on success this client uses the new area.
    pub fn remap_ca(&mut self, new_ca: u64) -> Result<(), CallError> {
        self.core(core_call::REMAP_CA, new_ca, 0, 0, 0)?;
        self.calling_area = new_ca;
        Ok(())
    }

    /// SVSM_CORE_PVALIDATE of the list already at `list_gpa`.
    pub fn pvalidate_list(&mut self, list_gpa: u64) -> Result<(), CallError> {
        self.core(core_call::PVALIDATE, list_gpa, 0, 0, 0).map(|_| ())
    }

    /// Validate or invalidate `entries`, writing lists at `list_gpa` as needed. Like
    /// Linux, a 2 MiB entry refused with FAIL_SIZEMISMATCH (0x8000_1006) is retried as
    /// 512 entries of 4 KiB.
    pub fn pvalidate(&mut self, entries: &[PvalidateEntry], list_gpa: u64) -> Result<(), CallError> {
        let capacity = list_capacity(list_gpa) as usize;
        let mut rest = entries;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(capacity)];
            let raw: [u64; 511] = core::array::from_fn(|i| chunk.get(i).map_or(0, |e| e.0));
            self.write_list(list_gpa, &raw[..chunk.len()])?;
            match self.pvalidate_list(list_gpa) {
                Ok(()) => rest = &rest[chunk.len()..],
                Err(CallError::Failed(r)) if r == ResultCode::core_hw_fail(abi::hw::rc::FAIL_SIZEMISMATCH) => {
                    let failed = usize::from(self.read_list_header(list_gpa)?.next);
                    let Some(big) = chunk.get(failed).copied() else { return Err(CallError::Failed(r)) };
                    if big.size() != abi::core_protocol::EntrySize::Size2M {
                        return Err(CallError::Failed(r));
                    }
                    let small: [PvalidateEntry; 512] = core::array::from_fn(|i| {
                        PvalidateEntry::new(big.gpa() + i as u64 * PAGE_SIZE, false, big.validate(), big.ignore_cf())
                    });
                    self.pvalidate(&small, list_gpa)?;
                    rest = &rest[failed + 1..];
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// SVSM_CORE_CREATE_VCPU.
    pub fn create_vcpu(&mut self, vmsa: u64, calling_area: u64, apic_id: u32) -> Result<(), CallError> {
        self.core(core_call::CREATE_VCPU, vmsa, calling_area, u64::from(apic_id), 0).map(|_| ())
    }

    /// SVSM_CORE_DELETE_VCPU.
    pub fn delete_vcpu(&mut self, vmsa: u64) -> Result<(), CallError> {
        self.core(core_call::DELETE_VCPU, vmsa, 0, 0, 0).map(|_| ())
    }

    /// SVSM_CORE_DEPOSIT_MEM of `entries`, using the page at `list_gpa` for the list.
    pub fn deposit(&mut self, entries: &[DepositEntry], list_gpa: u64) -> Result<(), CallError> {
        for chunk in entries.chunks(list_capacity(list_gpa) as usize) {
            let raw: [u64; 511] = core::array::from_fn(|i| chunk.get(i).map_or(0, |e| e.0));
            self.write_list(list_gpa, &raw[..chunk.len()])?;
            self.core(core_call::DEPOSIT_MEM, list_gpa, 0, 0, 0)?;
        }
        Ok(())
    }

    /// SVSM_CORE_WITHDRAW_MEM into the list at `list_gpa`; returns the pages withdrawn
    /// (at most `out.len()`, written into `out`).
    pub fn withdraw(&mut self, list_gpa: u64, out: &mut [u64]) -> Result<usize, CallError> {
        self.core(core_call::WITHDRAW_MEM, list_gpa, 0, 0, 0)?;
        let mut count = [0u8; 2];
        self.transport.read(list_gpa, &mut count)?;
        let n = usize::from(u16::from_le_bytes(count)).min(out.len());
        let mut bytes = [0u8; 8];
        for (i, slot) in out.iter_mut().take(n).enumerate() {
            self.transport.read(list_gpa + LIST_HEADER_SIZE + i as u64 * LIST_ENTRY_SIZE, &mut bytes)?;
            *slot = u64::read_from_bytes(&bytes).unwrap_or(0);
        }
        Ok(n)
    }

    /// SVSM_CORE_QUERY_PROTOCOL: `Some((max, min))` if served at `version`.
    pub fn query_protocol(&mut self, protocol: ProtocolId, version: u32) -> Result<Option<(u32, u32)>, CallError> {
        let out = self.core(core_call::QUERY_PROTOCOL, query_protocol_rcx(protocol, version), 0, 0, 0)?;
        Ok((out.rcx != 0).then_some(((out.rcx >> 32) as u32, out.rcx as u32)))
    }

    /// SVSM_CORE_CONFIGURE_VTOM query: `Some((align_log2, min, max))` if supported.
    pub fn vtom_query(&mut self) -> Result<Option<(u8, u64, u64)>, CallError> {
        let out = self.core(core_call::CONFIGURE_VTOM, vtom::QUERY, 0, 0, 0)?;
        if out.rcx & vtom::RESULT_SUPPORTED == 0 {
            return Ok(None);
        }
        Ok(Some(((out.rcx >> vtom::RESULT_ALIGN_SHIFT) as u8, out.rdx, out.r8)))
    }

    /// SVSM_CORE_CONFIGURE_VTOM configure: enable at `value` or disable (`None`).
    pub fn vtom_configure(&mut self, value: Option<u64>) -> Result<(), CallError> {
        let rcx = match value {
            Some(v) => (v & vtom::VALUE_MASK) | vtom::ENABLE,
            None => 0,
        };
        self.core(core_call::CONFIGURE_VTOM, rcx, 0, 0, 0).map(|_| ())
    }
}

/// Entries a list at `gpa` can hold without crossing its 4 KiB page.
pub fn list_capacity(gpa: u64) -> u64 {
    (PAGE_SIZE - gpa % PAGE_SIZE).saturating_sub(LIST_HEADER_SIZE) / LIST_ENTRY_SIZE
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestFault> {
        (**self).read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestFault> {
        (**self).write(gpa, data)
    }
    fn exchange_u8(&mut self, gpa: u64, value: u8) -> Result<u8, GuestFault> {
        (**self).exchange_u8(gpa, value)
    }
    fn request_svsm(&mut self, regs: &mut Regs) {
        (**self).request_svsm(regs)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// A scripted SVSM: answers each gate with the next result, or leaves the call
    /// pending; records the RAX values it saw and serves deposits.
    struct Scripted {
        memory: Vec<u8>,
        answers: Vec<Option<ResultCode>>,
        seen: Vec<Regs>,
    }

    impl Scripted {
        fn new(answers: &[Option<ResultCode>]) -> Self {
            Self { memory: std::vec![0; 0x4000], answers: answers.iter().rev().copied().collect(), seen: Vec::new() }
        }
    }

    impl Transport for Scripted {
        fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestFault> {
            let at = gpa as usize;
            buf.copy_from_slice(self.memory.get(at..at + buf.len()).ok_or(GuestFault { gpa })?);
            Ok(())
        }
        fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestFault> {
            let at = gpa as usize;
            self.memory.get_mut(at..at + data.len()).ok_or(GuestFault { gpa })?.copy_from_slice(data);
            Ok(())
        }
        fn exchange_u8(&mut self, gpa: u64, value: u8) -> Result<u8, GuestFault> {
            let old = self.memory[gpa as usize];
            self.memory[gpa as usize] = value;
            Ok(old)
        }
        fn request_svsm(&mut self, regs: &mut Regs) {
            self.seen.push(*regs);
            if let Some(answer) = self.answers.pop().flatten() {
                regs.rax = u64::from(answer.0);
                self.memory[0] = 0; // the SVSM clears CALL_PENDING
            }
        }
    }

    fn query() -> CallId {
        CallId::new(ProtocolId::CORE, core_call::QUERY_PROTOCOL)
    }

    #[test]
    fn incomplete_and_busy_are_retried_with_the_same_inputs() {
        let t =
            Scripted::new(&[Some(ResultCode::ERR_INCOMPLETE), Some(ResultCode::ERR_BUSY), Some(ResultCode::SUCCESS)]);
        let mut c = Client::new(t, 0);
        c.call(query(), 7, 8, 9, 10).unwrap();
        assert_eq!(c.transport.seen.len(), 3);
        assert!(c.transport.seen.iter().all(|r| r.rax == query().to_rax() && r.rcx == 7 && r.r9 == 10));
    }

    #[test]
    fn a_call_left_pending_was_not_executed() {
        let mut c = Client::new(Scripted::new(&[None]), 0);
        assert_eq!(c.call(query(), 0, 0, 0, 0), Err(CallError::NotExecuted));
        assert_eq!(c.transport.memory[0], 0, "the guest cleared CALL_PENDING itself");
    }

    #[test]
    fn errors_are_reported_not_retried() {
        let mut c = Client::new(Scripted::new(&[Some(ResultCode::ERR_INVALID_ADDRESS)]), 0);
        assert_eq!(c.call(query(), 0, 0, 0, 0), Err(CallError::Failed(ResultCode::ERR_INVALID_ADDRESS)));
        assert_eq!(c.transport.seen.len(), 1);
    }

    #[test]
    fn retries_are_bounded() {
        let mut c = Client::new(Scripted::new(&[Some(ResultCode::ERR_BUSY); 4]), 0);
        c.retry_limit = 2;
        assert_eq!(c.call(query(), 0, 0, 0, 0), Err(CallError::TooManyRetries));
    }

    struct Pages(Vec<u64>);
    impl PageSource for Pages {
        fn take_page(&mut self) -> Option<u64> {
            self.0.pop()
        }
    }

    #[test]
    fn memory_requests_are_answered_with_a_deposit() {
        let t =
            Scripted::new(&[Some(ResultCode::more_memory(2)), Some(ResultCode::SUCCESS), Some(ResultCode::SUCCESS)]);
        let mut c = Client::new(t, 0);
        let mut pages = Pages(std::vec![0x3000, 0x2000]);
        c.call_with_deposit(query(), [1, 2, 3, 4], &mut pages, 0x1000).unwrap();
        let deposit = c.transport.seen[1];
        assert_eq!(deposit.rax, CallId::new(ProtocolId::CORE, core_call::DEPOSIT_MEM).to_rax());
        assert_eq!(deposit.rcx, 0x1000);
        let list = c.read_list_header(0x1000).unwrap();
        assert_eq!((list.entries, list.next), (2, 0));
        assert_eq!(c.transport.seen[2].rcx, 1, "the original call was retried");
    }

    #[test]
    fn a_memory_request_without_pages_fails() {
        let t = Scripted::new(&[Some(ResultCode::more_memory(1))]);
        let mut c = Client::new(t, 0);
        let r = c.call_with_deposit(query(), [0; 4], &mut Pages(Vec::new()), 0x1000);
        assert_eq!(r, Err(CallError::Failed(ResultCode::more_memory(1))));
    }

    #[test]
    fn list_capacity_stops_at_the_page_end() {
        assert_eq!(list_capacity(0x1000), 511);
        assert_eq!(list_capacity(0x1FF0), 1);
        assert_eq!(list_capacity(0x1FF8), 0);
    }
}
