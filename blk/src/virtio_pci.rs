//! The register windows of a virtio PCI device, checked before the SVSM drives it.
//!
//! A modern virtio PCI device names where its register structures are with vendor
//! capabilities in configuration space: a BAR index, an offset and a length each (virtio
//! 1.2, 4.1.4 "Virtio Structure PCI Capabilities"). The host writes them. The
//! `virtio-drivers` crate takes them as they come: a BAR index of 6 or more reads some
//! other configuration register as a BAR, and an offset plus length past 4 GiB wraps its
//! bound check, so a host could point the registers the SVSM writes (status, queue
//! addresses, notifications) at any memory, the SVSM's own included. [`check`] refuses a
//! device unless every window lies inside one of the memory BARs the SVSM checked itself;
//! the queue's notification address is computed here once, at start, and bounded
//! ([`notify_address`]), instead of from a register the host may change before each
//! notification (the crate's own notify indexes with it and panics outside the window).

/// Capability types (`cfg_type`) of the structures a driver uses.
pub const CAP_COMMON: u8 = 1;
pub const CAP_NOTIFY: u8 = 2;
pub const CAP_ISR: u8 = 3;
pub const CAP_DEVICE: u8 = 4;

/// The common configuration structure's size (`virtio_pci_common_cfg`), and where its
/// queue select and queue notify offset registers are (both 16 bits).
pub const COMMON_LEN: u64 = 0x38;
pub const QUEUE_SELECT: u64 = 0x16;
pub const QUEUE_NOTIFY_OFF: u64 = 0x1E;
/// A notification is a 16-bit write.
const NOTIFY_WRITE: u64 = 2;

/// One vendor capability as configuration space says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub cfg_type: u8,
    /// The capability's own length: under 16 it names no structure (the crate skips it),
    /// a notify capability needs 20 for its multiplier.
    pub cap_len: u8,
    pub bar: u8,
    pub offset: u32,
    pub length: u32,
    /// Read only for a notify capability.
    pub notify_multiplier: u32,
}

/// A physical address range: `start..start + len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub len: u64,
}

/// What the SVSM needs of a checked device: its common configuration, notification and
/// device-specific configuration windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub common: Window,
    pub notify: Window,
    pub notify_multiplier: u32,
    /// The device-specific configuration (a block device's capacity), if it has one.
    pub device: Option<Window>,
}

/// Why a device's capabilities are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapError {
    /// A window names a BAR that is not one of the six, or not a memory BAR.
    NoSuchBar(u8),
    /// A window reaches past the end of its BAR.
    OutsideBar(u8),
    MissingCommon,
    MissingNotify,
    /// The common configuration window is smaller than the structure.
    CommonTooShort,
    /// virtio requires an even notify offset multiplier (the crate refuses an odd one).
    OddMultiplier,
    /// The common configuration is not 8-aligned, the notify window not 2-aligned, or the
    /// device configuration not 4-aligned.
    Misaligned,
}

/// Check every structure window of a device (capability types 1 to 4, all of them, though
/// the crate maps only the first of each): each must lie inside one of `bars` (the six
/// BARs as `(address, size)` for a memory BAR the caller checked, `None` otherwise).
/// The first common and notify capabilities (the ones the crate uses) give the layout.
pub fn check(bars: &[Option<(u64, u64)>; 6], caps: impl IntoIterator<Item = Capability>) -> Result<Layout, CapError> {
    let (mut common, mut notify, mut device) = (None, None, None);
    for cap in caps {
        // Only the structures a driver maps: not, say, the PCI configuration access
        // capability (type 5), whose BAR fields are the driver's to fill (QEMU's name BAR
        // 0, its I/O BAR, with no length).
        if cap.cap_len < 16 || !(CAP_COMMON..=CAP_DEVICE).contains(&cap.cfg_type) {
            continue;
        }
        let (base, size) = bars.get(usize::from(cap.bar)).copied().flatten().ok_or(CapError::NoSuchBar(cap.bar))?;
        let end = u64::from(cap.offset) + u64::from(cap.length);
        if end > size {
            return Err(CapError::OutsideBar(cap.bar));
        }
        let start = base.checked_add(u64::from(cap.offset)).ok_or(CapError::OutsideBar(cap.bar))?;
        let window = Window { start, len: u64::from(cap.length) };
        match cap.cfg_type {
            CAP_COMMON if common.is_none() => common = Some(window),
            CAP_NOTIFY if cap.cap_len >= 20 && notify.is_none() => notify = Some((window, cap.notify_multiplier)),
            CAP_DEVICE if device.is_none() => device = Some(window),
            _ => {}
        }
    }
    let common = common.ok_or(CapError::MissingCommon)?;
    if common.len < COMMON_LEN {
        return Err(CapError::CommonTooShort);
    }
    // The structure has 64-bit registers; a notification is a 16-bit write.
    if common.start % 8 != 0 {
        return Err(CapError::Misaligned);
    }
    let (notify, notify_multiplier) = notify.ok_or(CapError::MissingNotify)?;
    if notify.start % 2 != 0 {
        return Err(CapError::Misaligned);
    }
    if notify_multiplier % 2 != 0 {
        return Err(CapError::OddMultiplier);
    }
    // The device configuration is read a dword at a time where a field is dword-sized.
    if device.is_some_and(|d| !d.start.is_multiple_of(4)) {
        return Err(CapError::Misaligned);
    }
    Ok(Layout { common, notify, notify_multiplier, device })
}

/// Where a queue's notification goes, given its `queue_notify_off`: inside the notify
/// window, or nowhere.
pub fn notify_address(layout: &Layout, notify_off: u16) -> Option<u64> {
    let offset = u64::from(notify_off) * u64::from(layout.notify_multiplier);
    if offset + NOTIFY_WRITE > layout.notify.len {
        return None;
    }
    layout.notify.start.checked_add(offset)
}

/// Whether `start..start + len` lies inside one of `windows` (a device register access
/// the driver asks to map).
pub fn inside_any(windows: &[Window], start: u64, len: u64) -> bool {
    let Some(end) = start.checked_add(len) else { return false };
    windows.iter().any(|w| w.start <= start && w.start.checked_add(w.len).is_some_and(|w_end| end <= w_end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    const BAR4: (u64, u64) = (0xFE00_0000, 0x4000);

    fn bars() -> [Option<(u64, u64)>; 6] {
        [None, Some((0xFEB0_0000, 0x1000)), None, None, Some(BAR4), None]
    }

    fn cap(cfg_type: u8, bar: u8, offset: u32, length: u32) -> Capability {
        Capability { cfg_type, cap_len: 16, bar, offset, length, notify_multiplier: 0 }
    }

    /// QEMU's virtio-blk-pci: the four structures in BAR 4, notify multiplier 4.
    fn qemu() -> vec::Vec<Capability> {
        vec![
            cap(CAP_COMMON, 4, 0, 0x1000),
            cap(CAP_ISR, 4, 0x1000, 0x1000),
            cap(CAP_DEVICE, 4, 0x2000, 0x1000),
            Capability { cap_len: 20, notify_multiplier: 4, ..cap(CAP_NOTIFY, 4, 0x3000, 0x1000) },
        ]
    }

    #[test]
    fn qemus_layout_is_taken() {
        let layout = check(&bars(), qemu()).unwrap();
        assert_eq!(layout.common, Window { start: 0xFE00_0000, len: 0x1000 });
        assert_eq!(layout.notify, Window { start: 0xFE00_3000, len: 0x1000 });
        assert_eq!(layout.device, Some(Window { start: 0xFE00_2000, len: 0x1000 }));
        assert_eq!(notify_address(&layout, 0), Some(0xFE00_3000));
        assert_eq!(notify_address(&layout, 1), Some(0xFE00_3004));
    }

    /// A BAR index past the six reads another configuration register as a BAR in the
    /// crate; an I/O or absent BAR has no memory window.
    #[test]
    fn a_window_in_no_checked_memory_bar_is_refused() {
        for bar in [0u8, 2, 6, 7, 0xFF] {
            let mut caps = qemu();
            caps[2].bar = bar;
            assert_eq!(check(&bars(), caps), Err(CapError::NoSuchBar(bar)), "BAR {bar}");
        }
    }

    /// Offset plus length past the BAR, including sums that wrap 32 bits (the crate adds
    /// them as u32).
    #[test]
    fn a_window_past_its_bar_is_refused() {
        for (offset, length) in [(0x3001, 0x1000), (0x4000, 1), (u32::MAX, 2), (0xFFFF_F000, 0x2000)] {
            let mut caps = qemu();
            caps[1].offset = offset;
            caps[1].length = length;
            assert_eq!(check(&bars(), caps), Err(CapError::OutsideBar(4)), "{offset:#x} + {length:#x}");
        }
    }

    /// Capabilities too short to name a structure are skipped, as the crate skips them,
    /// and a second capability of a type is checked too, though the first one is used.
    #[test]
    fn short_capabilities_are_skipped_and_later_ones_checked() {
        let mut caps = qemu();
        caps.push(Capability { cap_len: 15, ..cap(CAP_COMMON, 9, 0, 0) });
        // QEMU's PCI configuration access capability: BAR 0 (I/O), no length.
        caps.push(Capability { cap_len: 20, ..cap(5, 0, 0, 0) });
        assert!(check(&bars(), caps.clone()).is_ok());
        caps.push(cap(CAP_COMMON, 1, 0x800, 0x1000));
        assert_eq!(check(&bars(), caps), Err(CapError::OutsideBar(1)));
        // A notify capability without room for its multiplier is not the notify window.
        let mut caps = qemu();
        caps[3].cap_len = 16;
        assert_eq!(check(&bars(), caps), Err(CapError::MissingNotify));
    }

    #[test]
    fn the_structures_the_driver_needs_must_be_there_and_whole() {
        assert_eq!(check(&bars(), qemu().into_iter().skip(1)), Err(CapError::MissingCommon));
        let mut caps = qemu();
        caps[0].length = 0x30;
        assert_eq!(check(&bars(), caps), Err(CapError::CommonTooShort));
        let mut caps = qemu();
        caps[3].notify_multiplier = 3;
        assert_eq!(check(&bars(), caps), Err(CapError::OddMultiplier));
        let mut caps = qemu();
        caps[0].offset = 4;
        assert_eq!(check(&bars(), caps), Err(CapError::Misaligned));
        let mut caps = qemu();
        caps[3].offset = 0x3001;
        caps[3].length = 0x800;
        assert_eq!(check(&bars(), caps), Err(CapError::Misaligned));
        let mut caps = qemu();
        caps[2].offset = 0x2002;
        assert_eq!(check(&bars(), caps), Err(CapError::Misaligned));
    }

    /// The notification address stays inside the window whatever offset the device
    /// reports (the crate's own notify panics outside it).
    #[test]
    fn a_notify_offset_outside_the_window_gives_no_address() {
        let layout = check(&bars(), qemu()).unwrap();
        assert_eq!(notify_address(&layout, 0x3FF), Some(0xFE00_3FFC));
        assert_eq!(notify_address(&layout, 0x400), None);
        assert_eq!(notify_address(&layout, u16::MAX), None);
        let huge = Layout { notify_multiplier: u32::MAX - 1, ..layout };
        assert_eq!(notify_address(&huge, u16::MAX), None);
    }

    #[test]
    fn register_accesses_must_lie_inside_a_window() {
        let windows = [Window { start: 0x1000, len: 0x1000 }, Window { start: 0x8000, len: 0x10 }];
        assert!(inside_any(&windows, 0x1000, 0x1000));
        assert!(inside_any(&windows, 0x8008, 8));
        assert!(!inside_any(&windows, 0x1FFF, 2));
        assert!(!inside_any(&windows, 0x4000, 1));
        assert!(!inside_any(&windows, u64::MAX, 2));
    }
}
