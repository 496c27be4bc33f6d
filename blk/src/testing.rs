//! A virtio-blk PCI device played in software, for tests: its registers ([`FakeRegisters`],
//! at [`LAYOUT`], which the driver reaches through the real [`crate::pci::ModernPci`]),
//! its side of the split virtqueue (virtio 1.2, 2.7), a disk in memory, and the ways a
//! hostile or failing host misbehaves ([`Misbehave`]). The driver's side runs unchanged;
//! [`TestHal`] bounces every buffer through pages of its own, as the SVSM's `Hal`s do.
//!
//! The device reads and writes the driver's DMA pages by address, as hardware does: in a
//! test process a "physical" address is the page's address in the process.
#![expect(
    unsafe_code,
    reason = "a device's side of the virtqueue: the driver's DMA pages, read and written by address"
)]
// Test infrastructure: it may index and truncate freely (the device's disk is the test's).
#![allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]

extern crate std;

use crate::pci::{ModernPci, Registers, Width};
use crate::virtio_pci::{Layout, Window};
use crate::{Features, SERIAL_LEN, STATUS_OK, request};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;
use core::ptr::NonNull;
use std::sync::{Mutex, MutexGuard};
use virtio_drivers::transport::{DeviceStatus, DeviceType};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};
use zerocopy::{FromBytes, IntoBytes};

const PAGE: usize = 4096;

/// Descriptor flags (virtio 1.2, 2.7.5).
const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;

/// How the device misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehave {
    /// An honest device.
    None,
    /// Takes requests and never completes them.
    NeverAnswer,
    /// Completes every request with an I/O error status.
    ErrorStatus,
    /// Completes requests without writing their status byte (or any data).
    NoStatus,
    /// Puts a request in the used ring that the driver did not make.
    WrongToken,
    /// Changes its configuration generation on every read.
    GenerationChanges,
    /// Offers the read-only feature.
    ReadOnly,
    /// Says the request queue notifies at this offset (times the multiplier).
    NotifyOffset(u16),
    /// Offers platform DMA and refuses the features (FEATURES_OK does not stay) unless the
    /// driver takes it, as QEMU does for a confidential guest's devices.
    RequiresPlatformDma,
    /// Offers only the legacy interface (no VERSION_1).
    Legacy,
    /// Never keeps FEATURES_OK, whatever the driver takes.
    RefusesFeatures,
    /// Never acknowledges a reset: its status keeps reading what it was.
    NoResetAck,
    /// Answers the first `n` requests honestly, then never again.
    LoseAfter(usize),
}

/// Where the driver placed the request queue.
#[derive(Clone, Copy, Debug)]
struct Queue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

/// The device's state, shared by its transport and its platform.
#[derive(Debug)]
pub struct Device {
    /// The disk's bytes.
    pub disk: Vec<u8>,
    /// Its serial number (at most 20 bytes).
    pub serial: Vec<u8>,
    pub misbehave: Misbehave,
    /// Requests completed, and flushes among them.
    pub completed: usize,
    pub flushes: usize,
    /// Notifications the driver sent, and where the last one went.
    pub notifications: usize,
    pub last_notify: Option<u64>,
    /// What the driver logged through its platform.
    pub log: Vec<String>,
    /// A hostile host's script (the fuzz target's): one action per request it takes,
    /// read from the front; honest once it is used up (see [`Device::serve`]).
    pub script: alloc::collections::VecDeque<u8>,
    status: u8,
    driver_features: u64,
    generation: Cell<u8>,
    /// The common configuration's select registers and the queue's, as the driver wrote.
    device_feature_select: u32,
    driver_feature_select: u32,
    queue_select: u16,
    pending: Queue,
    queue: Option<Queue>,
    last_avail: u16,
    used_idx: u16,
    /// The platform's clock: each reading moves it on a millisecond, so a driver that waits
    /// for a device that never answers reaches its deadline without the test waiting.
    now_ns: Cell<u64>,
}

/// The device, as both its registers and its platform hold it (and a model host, which
/// must be `Send`).
#[derive(Clone, Debug)]
pub struct SharedDevice(Arc<Mutex<Device>>);

impl SharedDevice {
    /// The device, to look at or change (a test's).
    pub fn lock(&self) -> MutexGuard<'_, Device> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A device with a disk of `blocks` zeroed blocks and serial number `serial`.
pub fn device(blocks: usize, serial: &[u8], misbehave: Misbehave) -> SharedDevice {
    SharedDevice(Arc::new(Mutex::new(Device {
        disk: vec![0; blocks * crate::BLOCK_SIZE],
        serial: serial.to_vec(),
        misbehave,
        completed: 0,
        flushes: 0,
        notifications: 0,
        last_notify: None,
        log: Vec::new(),
        script: alloc::collections::VecDeque::new(),
        status: 0,
        driver_features: 0,
        generation: Cell::new(0),
        device_feature_select: 0,
        driver_feature_select: 0,
        queue_select: 0,
        pending: Queue { size: 0, desc: 0, avail: 0, used: 0 },
        queue: None,
        last_avail: 0,
        used_idx: 0,
        now_ns: Cell::new(0),
    })))
}

/// Where the device's register windows are: one BAR at [`BAR`], QEMU's arrangement.
pub const BAR: u64 = 0xFE00_0000;
pub const LAYOUT: Layout = Layout {
    common: Window { start: BAR, len: 0x1000 },
    notify: Window { start: BAR + 0x3000, len: 0x1000 },
    notify_multiplier: 4,
    device: Some(Window { start: BAR + 0x2000, len: 0x1000 }),
};

/// The device's registers, as the platform's register accesses reach them.
#[derive(Debug)]
pub struct FakeRegisters(pub SharedDevice);

/// The device's transport: the real one, on its registers.
pub fn transport(device: &SharedDevice) -> ModernPci<FakeRegisters> {
    ModernPci::new(FakeRegisters(device.clone()), LAYOUT, DeviceType::Block)
}

/// Where the device's virtio-mmio slot is when it is reached over MMIO instead (QEMU's
/// first slot for the SVSM).
pub const MMIO_SLOT: u64 = 0xFEF0_0000;

/// The same device as a virtio-mmio slot at [`MMIO_SLOT`] (virtio 1.2, 4.2.2): its
/// registers map onto the PCI common configuration's, its configuration follows at 0x100.
#[derive(Debug)]
pub struct FakeMmioRegisters(pub SharedDevice);

/// A virtio-mmio register's counterpart in the PCI common configuration.
fn mmio_to_common(offset: u64) -> Option<u64> {
    Some(match offset {
        0x010 => 0x04,
        0x014 => 0x00,
        0x020 => 0x0C,
        0x024 => 0x08,
        0x030 => 0x16,
        0x034 | 0x038 => 0x18,
        0x044 => 0x1C,
        0x070 => 0x14,
        0x080 => 0x20,
        0x084 => 0x24,
        0x090 => 0x28,
        0x094 => 0x2C,
        0x0A0 => 0x30,
        0x0A4 => 0x34,
        0x0FC => 0x15,
        _ => return None,
    })
}

impl Registers for FakeMmioRegisters {
    fn read(&self, addr: u64, width: Width) -> u32 {
        let device = self.0.lock();
        let Some(offset) = addr.checked_sub(MMIO_SLOT).filter(|o| *o < 0x1000) else { return u32::MAX };
        match offset {
            0x000 => 0x7472_6976,
            0x004 => {
                if device.misbehave == Misbehave::Legacy {
                    1
                } else {
                    2
                }
            }
            0x008 => 2,
            0x00C => 0x554D_4551,
            0x100.. => device.config(offset - 0x100, width),
            _ => mmio_to_common(offset).map_or(0, |common| device.register(common)),
        }
    }

    fn write(&self, addr: u64, _width: Width, value: u32) {
        let mut device = self.0.lock();
        let Some(offset) = addr.checked_sub(MMIO_SLOT).filter(|o| *o < 0x1000) else { return };
        if offset == 0x050 {
            device.notifications += 1;
            device.last_notify = Some(addr);
            device.serve();
        } else if let Some(common) = mmio_to_common(offset) {
            device.set_register(common, value);
        }
    }
}

/// The platform: a clock and a log. (Notifications reach the device through its
/// registers, and it serves them at once.)
#[derive(Debug)]
pub struct FakePlatform(pub SharedDevice);

impl crate::Platform for FakePlatform {
    fn now_ns(&self) -> u64 {
        let device = self.0.lock();
        let now = device.now_ns.get() + 1_000_000;
        device.now_ns.set(now);
        now
    }

    fn log(&self, line: core::fmt::Arguments<'_>) {
        self.0.lock().log.push(std::format!("{line}"));
    }
}

impl Device {
    /// The driver's features once it accepted them.
    pub fn driver_features(&self) -> Features {
        Features::from_bits_truncate(self.driver_features)
    }

    /// The platform clock's reading now (each reading moves it a millisecond on).
    pub fn clock_ns(&self) -> u64 {
        self.now_ns.get()
    }

    /// Whether the driver has reset the device (status 0) since it last started it.
    pub fn is_reset(&self) -> bool {
        self.status == 0
    }

    /// Serve every request the driver made available. With a script, each request takes
    /// its next byte as an action: 0 to 3 honest, 4 never answered, 5 an error status, 6
    /// no status written, 7 another request's id (the next two bytes), 8 up to three more
    /// used entries with ids of the next bytes, 9 a used length of the next four bytes,
    /// 10 the request's descriptor overwritten with the next 16 bytes once done.
    fn serve(&mut self) {
        let Some(q) = self.queue else { return };
        loop {
            let avail_idx = read::<u16>(q.avail + 2);
            if avail_idx == self.last_avail {
                return;
            }
            let slot = u64::from(self.last_avail % q.size);
            let head = read::<u16>(q.avail + 4 + 2 * slot);
            self.last_avail = self.last_avail.wrapping_add(1);
            let honest = match self.misbehave {
                Misbehave::NeverAnswer => return,
                Misbehave::LoseAfter(n) if self.completed >= n => return,
                _ => true,
            };
            let action = self.script.pop_front().unwrap_or(0);
            if action == 4 {
                return;
            }
            let mut written = if honest && action != 6 { self.perform(q, head, action == 5) } else { 0 };
            let mut id = if self.misbehave == Misbehave::WrongToken { u32::from(head) + 1 } else { u32::from(head) };
            let mut extra = 0;
            match action {
                7 => id = u32::from(u16::from_le_bytes([self.byte(), self.byte()])),
                8 => extra = self.byte() % 4,
                9 => written = u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()]),
                10 => {
                    let junk: Vec<u8> = (0..16).map(|_| self.byte()).collect();
                    copy_out(q.desc + 16 * u64::from(head % q.size), &junk);
                }
                _ => {}
            }
            self.push_used(q, id, written);
            for _ in 0..extra {
                let bogus = u32::from(self.byte());
                self.push_used(q, bogus, 0);
            }
            self.completed += 1;
        }
    }

    fn byte(&mut self) -> u8 {
        self.script.pop_front().unwrap_or(0)
    }

    fn push_used(&mut self, q: Queue, id: u32, len: u32) {
        let used_slot = u64::from(self.used_idx % q.size);
        write(q.used + 4 + 8 * used_slot, id);
        write(q.used + 4 + 8 * used_slot + 4, len);
        self.used_idx = self.used_idx.wrapping_add(1);
        write(q.used + 2, self.used_idx);
    }

    /// Perform the request whose chain starts at descriptor `head`; the bytes written.
    fn perform(&mut self, q: Queue, head: u16, error_status: bool) -> u32 {
        if self.misbehave == Misbehave::NoStatus {
            return 0;
        }
        let mut chain = Vec::new();
        let mut index = head;
        for _ in 0..q.size {
            let at = q.desc + 16 * u64::from(index);
            let (addr, len, flags, next) =
                (read::<u64>(at), read::<u32>(at + 8), read::<u16>(at + 12), read::<u16>(at + 14));
            chain.push((addr, len as usize, flags & DESC_WRITE != 0));
            if flags & DESC_NEXT == 0 {
                break;
            }
            index = next;
        }
        let Some(&(header, 16, false)) = chain.first() else { return 0 };
        let Some(&(status_at, 1, true)) = chain.last() else { return 0 };
        let kind = read::<u32>(header);
        let sector = read::<u64>(header + 8);
        let data = chain.get(1..chain.len() - 1).unwrap_or(&[]);
        let start = usize::try_from(sector).unwrap_or(usize::MAX).saturating_mul(512);
        let mut status = STATUS_OK;
        let mut written = 0;
        match (kind, data) {
            (request::IN, [(at, len, true)]) if start.saturating_add(*len) <= self.disk.len() => {
                copy_out(*at, &self.disk[start..start + len]);
                written = *len;
            }
            (request::OUT, [(at, len, false)]) if start.saturating_add(*len) <= self.disk.len() => {
                let bytes = copy_in(*at, *len);
                self.disk[start..start + len].copy_from_slice(&bytes);
            }
            (request::FLUSH, []) => self.flushes += 1,
            (request::GET_ID, [(at, SERIAL_LEN, true)]) => {
                let mut id = [0u8; SERIAL_LEN];
                let n = self.serial.len().min(SERIAL_LEN);
                id[..n].copy_from_slice(&self.serial[..n]);
                copy_out(*at, &id);
                written = SERIAL_LEN;
            }
            _ => status = 1,
        }
        if self.misbehave == Misbehave::ErrorStatus || error_status {
            status = 1;
        }
        write(status_at, status);
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }
}

fn read<T: FromBytes>(addr: u64) -> T {
    // SAFETY: `addr` is inside a page the driver's `Hal` handed the device (a queue page or
    // a bounce page of `TestHal`, both live for the test), as the driver's descriptors and
    // queue addresses say; unaligned reads because a device may not assume alignment.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

fn write<T: IntoBytes>(addr: u64, value: T) {
    // SAFETY: as in `read`: a page the driver handed the device, live for the test.
    unsafe { core::ptr::write_unaligned(addr as *mut T, value) }
}

fn copy_out(addr: u64, bytes: &[u8]) {
    // SAFETY: as in `read`: the descriptor gives the buffer's address and length.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) }
}

fn copy_in(addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    // SAFETY: as in `read`: the descriptor gives the buffer's address and length.
    unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), len) };
    out
}

impl Device {
    fn device_features(&self) -> u64 {
        let mut features = Features::VERSION_1 | Features::FLUSH;
        match self.misbehave {
            Misbehave::ReadOnly => features |= Features::RO,
            Misbehave::RequiresPlatformDma => features |= Features::ACCESS_PLATFORM,
            Misbehave::Legacy => features -= Features::VERSION_1,
            _ => {}
        }
        features.bits()
    }

    fn reset(&mut self) {
        self.queue = None;
        self.last_avail = 0;
        self.used_idx = 0;
    }

    fn register(&self, offset: u64) -> u32 {
        let features = self.device_features();
        match offset {
            0x00 => self.device_feature_select,
            0x04 if self.device_feature_select == 0 => (features & 0xFFFF_FFFF) as u32,
            0x04 if self.device_feature_select == 1 => (features >> 32) as u32,
            0x08 => self.driver_feature_select,
            0x12 => 1,
            0x14 => u32::from(self.status),
            0x15 => {
                if self.misbehave == Misbehave::GenerationChanges {
                    self.generation.set(self.generation.get().wrapping_add(1));
                }
                u32::from(self.generation.get())
            }
            0x16 => u32::from(self.queue_select),
            0x18 if self.queue_select == 0 => 256,
            0x1C => u32::from(self.queue_select == 0 && self.queue.is_some()),
            0x1E => match self.misbehave {
                Misbehave::NotifyOffset(off) => u32::from(off),
                _ => 0,
            },
            _ => 0,
        }
    }

    fn set_register(&mut self, offset: u64, value: u32) {
        let set_half = |field: &mut u64, high: bool| {
            *field = if high {
                (*field & 0xFFFF_FFFF) | u64::from(value) << 32
            } else {
                (*field & !0xFFFF_FFFF) | u64::from(value)
            };
        };
        match offset {
            0x00 => self.device_feature_select = value,
            0x08 => self.driver_feature_select = value,
            0x0C => {
                let high = self.driver_feature_select == 1;
                set_half(&mut self.driver_features, high);
            }
            0x14 => {
                if value == 0 && self.misbehave == Misbehave::NoResetAck {
                    return;
                }
                let mut status = value as u8;
                let wanted = Features::from_bits_truncate(self.driver_features);
                let required = Features::from_bits_truncate(self.device_features()) & Features::ACCESS_PLATFORM;
                if !wanted.contains(required) || self.misbehave == Misbehave::RefusesFeatures {
                    // FEATURES_OK does not stay: the device cannot work without them.
                    status &= !(DeviceStatus::FEATURES_OK.bits() as u8);
                }
                self.status = status;
                if value == 0 {
                    self.reset();
                }
            }
            0x16 => self.queue_select = value as u16,
            0x18 => self.pending.size = value as u16,
            0x1C if self.queue_select == 0 && value == 1 => self.queue = Some(self.pending),
            0x1C if self.queue_select == 0 => self.queue = None,
            0x20 | 0x24 => set_half(&mut self.pending.desc, offset == 0x24),
            0x28 | 0x2C => set_half(&mut self.pending.avail, offset == 0x2C),
            0x30 | 0x34 => set_half(&mut self.pending.used, offset == 0x34),
            _ => {}
        }
    }

    /// The block device's configuration: its capacity in sectors.
    fn config(&self, offset: u64, width: Width) -> u32 {
        let sectors = (self.disk.len() / 512) as u64;
        let bytes = sectors.to_le_bytes();
        let mut value = [0u8; 4];
        for (i, byte) in value.iter_mut().take(width.bytes() as usize).enumerate() {
            *byte = bytes.get(offset as usize + i).copied().unwrap_or(0);
        }
        u32::from_le_bytes(value)
    }
}

impl Registers for FakeRegisters {
    fn read(&self, addr: u64, width: Width) -> u32 {
        let device = self.0.lock();
        let common = LAYOUT.common;
        let config = LAYOUT.device.unwrap_or(Window { start: 0, len: 0 });
        if (common.start..common.start + common.len).contains(&addr) {
            let value = device.register(addr - common.start);
            // A narrower read of a register gives its low bytes.
            match width {
                Width::Byte => value & 0xFF,
                Width::Word => value & 0xFFFF,
                Width::Dword => value,
            }
        } else if (config.start..config.start + config.len).contains(&addr) {
            device.config(addr - config.start, width)
        } else {
            u32::MAX
        }
    }

    fn write(&self, addr: u64, _width: Width, value: u32) {
        let mut device = self.0.lock();
        let common = LAYOUT.common;
        let notify = LAYOUT.notify;
        if (common.start..common.start + common.len).contains(&addr) {
            device.set_register(addr - common.start, value);
        } else if (notify.start..notify.start + notify.len).contains(&addr) {
            device.notifications += 1;
            device.last_notify = Some(addr);
            device.serve();
        }
    }
}

/// The tests' `Hal`: zeroed pages from the process's heap, and a bounce page per shared
/// buffer, copied in when shared (whatever the direction, so a byte the device does not
/// write keeps the driver's value) and out when the device wrote it. A lost request's
/// bounce pages stay allocated until [`free_lost_bounce_pages`].
#[derive(Debug)]
pub struct TestHal;

std::thread_local! {
    /// Bounce pages shared and not yet unshared: (address, pages).
    static BOUNCED: core::cell::RefCell<Vec<(u64, usize)>> = const { core::cell::RefCell::new(Vec::new()) };
}

/// Free the bounce pages of requests that never came back, once no device can write them
/// (the test dropped its devices).
pub fn free_lost_bounce_pages() {
    for (addr, pages) in BOUNCED.with(|b| core::mem::take(&mut *b.borrow_mut())) {
        if let Some(ptr) = NonNull::new(addr as *mut u8) {
            // SAFETY: `addr` came from `dma_alloc` with this many pages and was not freed
            // (it would have left the list).
            unsafe { std::alloc::dealloc(ptr.as_ptr(), page_layout(pages)) };
        }
    }
}

// SAFETY: every shared buffer is a bounce copy, and a lost request's bounce pages stay
// allocated (listed in `BOUNCED`) until the test frees them with no device left.
unsafe impl crate::BouncingHal for TestHal {}

fn page_layout(pages: usize) -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(pages.max(1) * PAGE, PAGE).unwrap_or_else(|_| std::process::abort())
}

// SAFETY: `dma_alloc` returns fresh zeroed page-aligned memory owned by the caller until
// `dma_dealloc` (which frees exactly it); `share` returns a fresh bounce page holding a copy
// of the buffer, and `unshare` copies back at most the buffer's length and frees it.
unsafe impl Hal for TestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(page_layout(pages)) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::process::abort());
        (ptr.as_ptr() as u64, ptr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: `vaddr` came from `dma_alloc` with this many pages.
        unsafe { std::alloc::dealloc(vaddr.as_ptr(), page_layout(pages)) };
        0
    }

    unsafe fn mmio_phys_to_virt(_paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        // The fake transport has no registers in memory.
        std::process::abort()
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let len = buffer.len();
        let pages = len.div_ceil(PAGE).max(1);
        let (phys, bounce) = Self::dma_alloc(pages, BufferDirection::Both);
        // SAFETY: the caller's buffer is valid for `len` bytes; the bounce page is fresh and
        // at least that long.
        unsafe { core::ptr::copy_nonoverlapping(buffer.as_ptr().cast::<u8>(), bounce.as_ptr(), len) };
        BOUNCED.with(|b| b.borrow_mut().push((phys, pages)));
        phys
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let len = buffer.len();
        let bounce = paddr as *mut u8;
        if !matches!(direction, BufferDirection::DriverToDevice) {
            // SAFETY: `paddr` is the bounce page `share` made for this buffer, `len` long.
            unsafe { core::ptr::copy_nonoverlapping(bounce, buffer.as_ptr().cast::<u8>(), len) };
        }
        BOUNCED.with(|b| b.borrow_mut().retain(|(addr, _)| *addr != paddr));
        // SAFETY: the bounce page came from `dma_alloc` with this many pages.
        unsafe { Self::dma_dealloc(paddr, NonNull::new_unchecked(bounce), len.div_ceil(PAGE).max(1)) };
    }
}

/// The fuzz target's harness (`fuzz/fuzz_targets/disk.rs`; `blk/tests/driver.rs` runs it
/// too): a device whose host follows `data` (its size and a script of misbehaviour, see
/// [`Device::serve`]) under a driver making reads, writes and flushes `data` chooses.
/// Nothing may panic, a device once lost gets no request again, and a request the device
/// answered honestly reads back what it holds. `Err` names a broken promise.
pub fn fuzz_driver(data: &[u8]) -> Result<(), &'static str> {
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next().unwrap_or(0);
    let shape = next();
    let blocks = 1 + usize::from(shape % 8);
    let dev = device(blocks, b"bulwark-state", Misbehave::None);
    let script_len = usize::from(next());
    let script: Vec<u8> = (0..script_len).map(|_| next() % 11).collect();
    dev.lock().script = script.into_iter().collect();
    let platform = FakePlatform(dev.clone());
    // The device over PCI or in a virtio-mmio slot, as the input says.
    let outcome = if shape & 0x80 == 0 {
        let started = crate::VirtioBlk::<TestHal, _, _>::start(transport(&dev), b"bulwark-state", |t| {
            t.can_notify(crate::REQUEST_QUEUE).then_some(platform)
        });
        started.map_or(Ok(()), |blk| drive(blk, &dev, blocks, &mut next))
    } else {
        let Ok(slot) = crate::mmio::ModernMmio::probe(FakeMmioRegisters(dev.clone()), MMIO_SLOT) else {
            return Err("the device's slot was not probed");
        };
        let started = crate::VirtioBlk::<TestHal, _, _>::start(slot, b"bulwark-state", |_| Some(platform));
        started.map_or(Ok(()), |blk| drive(blk, &dev, blocks, &mut next))
    };
    free_lost_bounce_pages();
    outcome
}

/// The driver's side of [`fuzz_driver`]: reads, writes and flushes `next` chooses.
fn drive<T: virtio_drivers::transport::Transport>(
    mut blk: crate::VirtioBlk<TestHal, T, FakePlatform>,
    dev: &SharedDevice,
    blocks: usize,
    next: &mut impl FnMut() -> u8,
) -> Result<(), &'static str> {
    for _ in 0..64 {
        let op = next();
        let index = u64::from(next()) % (blocks as u64 + 2);
        let fill = next();
        let lost_before = blk.is_lost();
        let (notified, honest) = {
            let d = dev.lock();
            (d.notifications, d.script.is_empty())
        };
        let result = match op % 3 {
            0 => {
                let mut buf = [0u8; crate::BLOCK_SIZE];
                let r = blk.read(index, &mut buf);
                if r.is_ok() && honest {
                    let d = dev.lock();
                    let at = index as usize * crate::BLOCK_SIZE;
                    if d.disk.get(at..at + crate::BLOCK_SIZE) != Some(&buf[..]) {
                        return Err("an honest read returned other bytes than the disk holds");
                    }
                }
                r
            }
            1 => blk.write(index, &[fill; crate::BLOCK_SIZE]),
            _ => blk.flush(),
        };
        if lost_before && (result.is_ok() || dev.lock().notifications != notified) {
            return Err("a lost device got a request");
        }
        if index >= blocks as u64 && op % 3 != 2 && result.is_ok() {
            return Err("a block past the end was accepted");
        }
    }
    Ok(())
}
