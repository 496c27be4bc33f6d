//! The user-mode system call ABI (docs/syscalls.md): numbers, error codes, flags and the
//! BATCH records.
//!
//! Numbers are `class << 32 | n` as COCONUT-SVSM numbers them (its `syscall/src/def.rs`):
//! class 0 core, class 1 file system, class 3 VM management. Where COCONUT has a number
//! we use it; the calls its design names but never numbered take the free numbers of
//! their class, and Bulwark's own calls live in class [`CLASS_BULWARK`], far from
//! COCONUT's classes so that theirs can grow.
//!
//! Registers: RAX holds the number and returns the result; arguments in RDI, RSI, R8,
//! R9, R10 (COCONUT's order; RDX is not used). A result in the top 64 Ki values of the
//! u64 range is an error: the negated [`SysError`] code, sign-extended.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const CLASS_CORE: u64 = 0;
pub const CLASS_FS: u64 = 1;
pub const CLASS_VM: u64 = 3;
/// Bulwark's own calls (service runtime and IPC).
pub const CLASS_BULWARK: u64 = 0x80;

const fn nr(class: u64, n: u64) -> u64 {
    class << 32 | n
}

/// The class of a call number.
pub const fn class_of(number: u64) -> u64 {
    number >> 32
}

// Class 0, COCONUT's numbers.
/// EXIT(code): ends the process; never returns.
pub const EXIT: u64 = nr(CLASS_CORE, 0);
/// MMAP(handle, addr, offset, length, flags) -> address (COCONUT PR #927's numbers).
pub const MMAP: u64 = nr(CLASS_CORE, 1);
/// MUNMAP(addr, length).
pub const MUNMAP: u64 = nr(CLASS_CORE, 2);
/// EXEC(name, name_len, handles, count, arg) -> process id of a new process from the
/// image's module `name`, started with RDI = `arg` and with the caller's `count` handles
/// (u32s at `handles`, at most [`EXEC_MAX_HANDLES`]) as its handles 0, 1, ...: passing
/// a handle closes it here and opens it there. Needs a right the kernel grants at start.
pub const EXEC: u64 = nr(CLASS_CORE, 4);
/// Most handles one EXEC passes.
pub const EXEC_MAX_HANDLES: usize = 8;
/// Longest module name EXEC takes.
pub const MODULE_NAME_MAX: usize = 32;
/// CLOSE(handle).
pub const CLOSE: u64 = nr(CLASS_CORE, 10);
// Class 0, named in COCONUT's design, numbered here (5..=9 are free in COCONUT's code).
/// THREAD_CREATE(entry, stack_top, arg) -> thread id.
pub const THREAD_CREATE: u64 = nr(CLASS_CORE, 5);
/// WAIT_FOR_EVENT(handle) -> the event's value; blocks.
pub const WAIT_FOR_EVENT: u64 = nr(CLASS_CORE, 6);
/// BATCH(in, out, count) -> records run.
pub const BATCH: u64 = nr(CLASS_CORE, 7);
/// OPEN_PHYSMEM(index, info) -> handle of the index-th range of guest memory; writes the
/// range as a [`PhysmemRange`] at `info`. MMAP of the handle maps pages of the range
/// (`offset` from its base).
pub const OPEN_PHYSMEM: u64 = nr(CLASS_CORE, 8);
// Class 3.
/// CAPABILITIES(index) -> value (index 0: how many indices follow).
pub const CAPABILITIES: u64 = nr(CLASS_VM, 0);
// Class 3, named in COCONUT's design, numbered here (COCONUT's code has only 3.0).
/// VM_OPEN(index) -> handle of VM `index` (a bit of [`caps::VM_BITMAP`]); one process at
/// a time may hold a VM open.
pub const VM_OPEN: u64 = nr(CLASS_VM, 1);
/// IOIO_EVENT(vm, first_port, count) -> handle of an event source: the VM's accesses to
/// ports `first_port..first_port + count` come to this process as [`IoAccess`] requests
/// (CHANNEL_RECEIVE), each answered with CHANNEL_REPLY (an IN's value, 4 bytes).
pub const IOIO_EVENT: u64 = nr(CLASS_VM, 2);
/// MMIO_EVENT(vm, gpa, length) -> handle of an event source: the VM's loads and stores
/// to the pages `gpa..gpa + length` (page-aligned, at most [`MMIO_MAX_PAGES`], never its
/// RAM or the SVSM's) come to this process as [`MmioAccess`] requests, each answered with
/// CHANNEL_REPLY (a load's value, 8 bytes).
pub const MMIO_EVENT: u64 = nr(CLASS_VM, 3);
/// VCPU_OPEN(vm, index) -> handle of vCPU `index` (at most [`VCPU_MAX_INDEX`]) of the
/// open VM `vm` as a VCPU object, open in one process at a time: an event source bound
/// to the vCPU's CPU. The vCPU's exits the kernel leaves to user mode (CPUID of
/// [`VCPU_CPUID_LEAVES`]) come to this process as [`VcpuExit`] requests, each answered
/// with CHANNEL_REPLY (for CPUID: EAX, EBX, ECX, EDX, 16 bytes).
pub const VCPU_OPEN: u64 = nr(CLASS_VM, 4);
/// The highest vCPU index VCPU_OPEN takes.
pub const VCPU_MAX_INDEX: u64 = 255;
/// The CPUID leaves a vCPU's VCPU object answers: the top 16 of the first hypervisor
/// range (0x40000000..0x400000FF). Hypervisor interfaces (KVM's, Hyper-V's, Xen's) and
/// the guests that look for them use its bottom; none of them uses these.
pub const VCPU_CPUID_LEAVES: core::ops::RangeInclusive<u32> = 0x4000_00F0..=0x4000_00FF;
// Class 0x80.
/// LOG(buf, len): one line into the SVSM log, tagged with the process.
pub const LOG: u64 = nr(CLASS_BULWARK, 0);
/// CLOCK() -> nanoseconds since the SVSM started (monotonic).
pub const CLOCK: u64 = nr(CLASS_BULWARK, 1);
/// GETRANDOM(buf, len) -> len: bytes from the SVSM's entropy source.
pub const GETRANDOM: u64 = nr(CLASS_BULWARK, 2);
/// CHANNEL_RECEIVE(handle, buf, len) -> request length; blocks until a request waits.
pub const CHANNEL_RECEIVE: u64 = nr(CLASS_BULWARK, 3);
/// CHANNEL_REPLY(handle, buf, len): answers the request last received.
pub const CHANNEL_REPLY: u64 = nr(CLASS_BULWARK, 4);

/// Error codes (COCONUT's `SysCallError` values); returned negated in RAX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub enum SysError {
    /// A malformed argument.
    Inval = -1,
    /// No such call.
    NoSys = -2,
    /// Out of memory, address space or handles.
    NoMem = -3,
    /// Not allowed for this process.
    Perm = -4,
    /// A user address that is not mapped as the call needs.
    Fault = -5,
    /// The object is in use (a second open of a VM, a channel with a request in flight).
    Busy = -6,
    /// No such handle or object.
    NotFound = -7,
    /// The object does not support the call.
    NotSupp = -8,
    /// Already exists.
    Exist = -9,
}

impl SysError {
    /// The value of RAX that reports this error.
    pub const fn to_rax(self) -> u64 {
        self as i64 as u64
    }

    /// The error a RAX value reports, if it is one.
    pub fn from_rax(rax: u64) -> Option<Result<Self, u64>> {
        if rax <= u64::MAX - 0xffff {
            return None;
        }
        Some(match rax as i64 {
            -1 => Ok(Self::Inval),
            -2 => Ok(Self::NoSys),
            -3 => Ok(Self::NoMem),
            -4 => Ok(Self::Perm),
            -5 => Ok(Self::Fault),
            -6 => Ok(Self::Busy),
            -7 => Ok(Self::NotFound),
            -8 => Ok(Self::NotSupp),
            -9 => Ok(Self::Exist),
            _ => Err(rax),
        })
    }
}

/// MMAP flags (COCONUT PR #927's bits).
pub mod map {
    pub const READ: u64 = 1;
    pub const WRITE: u64 = 2;
    pub const EXEC: u64 = 4;
    pub const PRIVATE: u64 = 8;
    pub const ANONYMOUS: u64 = 0x10;
    pub const FIXED: u64 = 0x20;
    pub const ALL: u64 = READ | WRITE | EXEC | PRIVATE | ANONYMOUS | FIXED;
}

/// "No object": MMAP of anonymous memory. Not 0, which COCONUT binds to the log.
pub const NO_HANDLE: u64 = u32::MAX as u64;

/// CAPABILITIES indices.
pub mod caps {
    /// How many indices follow index 0.
    pub const COUNT: u64 = 0;
    /// Bit n: VM index n exists and may be opened (SEV: VMPL n; TDX: VM id n).
    pub const VM_BITMAP: u64 = 1;
    /// Bits 0..=2: the platform (0 native, 1 SNP, 2 TDX partitioning), as COCONUT.
    pub const FEATURES: u64 = 2;
    /// How many guest memory ranges OPEN_PHYSMEM offers.
    pub const PHYSMEM_RANGES: u64 = 3;
    pub const LAST: u64 = PHYSMEM_RANGES;
}

/// Platform bits of [`caps::FEATURES`] beyond the platform number.
pub mod features {
    /// IOIO_EVENT is served: the SVSM sees the guest's port accesses (the svm platform;
    /// under SEV-SNP the guest's port I/O goes to the host, never through the SVSM).
    pub const IOIO_EVENTS: u64 = 1 << 8;
    /// MMIO_EVENT is served: the SVSM runs the guest's nested paging (the svm platform).
    pub const MMIO_EVENTS: u64 = 1 << 9;
    /// VCPU_OPEN is served: the SVSM takes the guest's CPUID exits (the svm platform;
    /// under SEV-SNP the guest answers CPUID from its CPUID page).
    pub const VCPU_EVENTS: u64 = 1 << 10;
}

/// What a VCPU object's request is about ([`VcpuExit::kind`]).
pub mod vcpu_exit {
    /// The vCPU ran CPUID with EAX = `leaf`, ECX = `subleaf`; the reply is EAX, EBX,
    /// ECX, EDX (16 bytes).
    pub const CPUID: u32 = 1;
}

/// One exit of a guest vCPU, as its VCPU object's request carries it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuExit {
    /// What it is ([`vcpu_exit`]).
    pub kind: u32,
    /// The vCPU's index.
    pub vcpu: u32,
    pub leaf: u32,
    pub subleaf: u32,
    /// Where the guest is (the exiting instruction).
    pub rip: u64,
}
crate::assert_size!(VcpuExit, 24);

/// What OPEN_PHYSMEM writes: the guest-physical range the handle maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PhysmemRange {
    pub base: u64,
    pub length: u64,
}
crate::assert_size!(PhysmemRange, 16);

/// Most pages one MMIO_EVENT claims.
pub const MMIO_MAX_PAGES: u64 = 16;

/// One load or store of a guest vCPU to a claimed MMIO page, as an MMIO event's request
/// carries it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MmioAccess {
    /// Where (all `size` bytes lie in the event's pages).
    pub gpa: u64,
    /// A store's value, `size` bytes; a load: 0.
    pub data: u64,
    /// The vCPU that made it.
    pub vcpu: u32,
    /// 1, 2, 4 or 8 bytes.
    pub size: u8,
    /// 1 for a store, 0 for a load (the reply's 8 bytes are the value).
    pub write: u8,
    pub reserved: [u8; 2],
}
crate::assert_size!(MmioAccess, 24);

/// Most ports one IOIO_EVENT claims.
pub const IOIO_MAX_PORTS: u64 = 64;

/// One port access of a guest vCPU, as an IOIO event's request carries it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IoAccess {
    /// The port the access starts at (all `size` bytes lie in the event's ports).
    pub port: u16,
    /// 1, 2 or 4 bytes.
    pub size: u8,
    /// 1 for OUT (the guest writes `data`), 0 for IN (the reply's 4 bytes are the value).
    pub write: u8,
    /// The vCPU that made it.
    pub vcpu: u32,
    /// OUT: the value written, `size` bytes; IN: 0.
    pub data: u32,
    pub reserved: u32,
}
crate::assert_size!(IoAccess, 16);

/// The test device device models at CPL 3 serve on the svm platform (the probe
/// module's mode 14 its ports, and the process it starts with EXEC, mode 15, its MMIO
/// page; docs/syscalls.md "VM objects and device models"); the test guest checks it.
pub mod test_device {
    /// Its ports: `FIRST..FIRST + COUNT`.
    pub const FIRST: u16 = 0xB10;
    pub const COUNT: u16 = 8;
    /// Ports `FIRST..FIRST + 4`: a 4-byte register, each byte its own port.
    pub const REGISTER: u16 = FIRST;
    /// Ports `FIRST + 4..FIRST + 8`: reads count the port accesses served (this one
    /// included); the dword [`CRASH`] written here makes the ports' device model fault.
    pub const COUNTER: u16 = FIRST + 4;
    /// The test-only command that makes the device model fault (crash isolation).
    pub const CRASH: u32 = 0xDEAD_DEAD;
    /// Its MMIO page (not RAM on any x86 machine QEMU builds: below the I/O APIC): an
    /// 8-byte register at offset 0, and at offset 8 a read-only count of the page's
    /// accesses served.
    pub const MMIO: u64 = 0xFEB0_0000;
}

/// Most records one BATCH runs.
pub const BATCH_MAX: u64 = 64;

/// One call of a BATCH.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BatchIn {
    pub number: u64,
    pub args: [u64; 5],
    /// Copied to the matching [`BatchOut`] untouched.
    pub user_data: u64,
}
crate::assert_size!(BatchIn, 56);

/// The result of one call of a BATCH.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BatchOut {
    /// RAX as the call alone would have returned it.
    pub result: u64,
    pub user_data: u64,
}
crate::assert_size!(BatchOut, 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coconut_numbers_are_kept() {
        // coconut-svsm/svsm syscall/src/def.rs: EXIT class0+0, EXEC +4, CLOSE +10,
        // CAPABILITIES class3+0.
        assert_eq!((EXIT, EXEC, CLOSE, CAPABILITIES), (0, 4, 10, 3 << 32));
        assert_eq!(class_of(LOG), CLASS_BULWARK);
    }

    #[test]
    fn errors_round_trip_through_rax() {
        for e in [SysError::Inval, SysError::NoSys, SysError::Fault, SysError::Exist] {
            assert_eq!(SysError::from_rax(e.to_rax()), Some(Ok(e)));
        }
        assert_eq!(SysError::Inval.to_rax(), u64::MAX);
        assert_eq!(SysError::from_rax(0x1000), None);
        assert_eq!(SysError::from_rax(u64::MAX - 0xffff), None);
        assert_eq!(SysError::from_rax(u64::MAX - 100), Some(Err(u64::MAX - 100)));
    }
}
