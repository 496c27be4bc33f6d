//! The I/O permission map (AMD APM vol. 2, section 15.10): 12 KiB the VMCB points at, one
//! bit per port. With the VMCB's IOIO_PROT intercept set, an IN, OUT, INS or OUTS exits
//! when the bit of any port it touches is set (a 2-byte access to port `p` checks `p`
//! and `p + 1`; the third page holds the bits past port 0xFFFF for accesses that wrap).
//!
//! Policy: every port is the SVSM's except the guest's own ([`GUEST_PORTS`]): its serial
//! ports and QEMU's debug-exit device. On SNP no device can DMA into the SVSM's private
//! memory; here the devices are emulated by QEMU and reach all of RAM, so a guest that
//! programmed one (PCI configuration at 0xCF8/0xCFC, an IDE or floppy DMA engine) could
//! have it write SVSM memory. An exit for any other port is refused with #GP ([`on_exit`]).

use core::ops::RangeInclusive;

/// Size of the map in bytes.
pub const SIZE: usize = 0x3000;

/// Ports the guest may use directly: COM2 (its console), COM4 (the host agent's
/// channel) and QEMU's `isa-debug-exit` device (how the guest ends the run).
pub const GUEST_PORTS: [RangeInclusive<u16>; 3] = [0x2F8..=0x2FF, 0x2E8..=0x2EF, 0xF4..=0xF7];

/// Where the bit for `port` is: byte offset and bit in that byte. Ports past 0xFFFF
/// (reached by a multi-byte access that starts near the top) have bits in the third page.
pub fn position(port: u32) -> Option<(usize, u8)> {
    let byte = usize::try_from(port / 8).ok().filter(|b| *b < SIZE)?;
    Some((byte, (port % 8) as u8))
}

/// Fill `map` from the policy: every bit set except those of [`GUEST_PORTS`]. A map of
/// the wrong size is left fully set (every access exits).
pub fn build(map: &mut [u8]) {
    map.fill(0xFF);
    if map.len() != SIZE {
        return;
    }
    for port in GUEST_PORTS.into_iter().flatten() {
        if let Some((byte, bit)) = position(u32::from(port))
            && let Some(b) = map.get_mut(byte)
        {
            *b &= !(1 << bit);
        }
    }
}

/// Does `map` make a `size`-byte access to `port` exit?
pub fn intercepts(map: &[u8], port: u16, size: u8) -> bool {
    (0..u32::from(size.max(1))).any(|i| match position(u32::from(port) + i) {
        Some((byte, bit)) => map.get(byte).is_none_or(|b| b & (1 << bit) != 0),
        None => true,
    })
}

/// Is `port` one of the guest's own?
pub fn is_guest_port(port: u16) -> bool {
    GUEST_PORTS.iter().any(|r| r.contains(&port))
}

/// An intercepted I/O instruction, decoded from EXITINFO1 (APM vol. 2, figure 15-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoExit {
    pub port: u16,
    /// IN or INS (else OUT or OUTS).
    pub input: bool,
    /// INS or OUTS.
    pub string: bool,
    pub rep: bool,
    /// Bytes per access: 1, 2 or 4 (0 if EXITINFO1 names none).
    pub size: u8,
}

impl IoExit {
    /// Decode EXITINFO1; every value decodes (the hardware sets one size bit, a forged
    /// value may set none or several: the smallest set one counts).
    pub fn decode(info1: u64) -> Self {
        let size = match (info1 >> 4) & 0b111 {
            0 => 0,
            s if s & 1 != 0 => 1,
            s if s & 2 != 0 => 2,
            _ => 4,
        };
        Self {
            port: ((info1 >> 16) & 0xFFFF) as u16,
            input: info1 & 1 != 0,
            string: info1 & (1 << 2) != 0,
            rep: info1 & (1 << 3) != 0,
            size,
        }
    }
}

/// Why an I/O exit is refused (the guest gets #GP(0), RIP stays on the instruction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoRefusal {
    /// The port is the SVSM's.
    NotTheGuests,
    /// An exit for one of the guest's own ports: the map in force is not this policy's.
    /// Refused all the same: the SVSM emulates no device.
    NotIntercepted,
}

/// What an intercepted I/O access does: the SVSM emulates no port, so it is always
/// refused; the reason says whether the map let it through by mistake.
pub fn on_exit(io: &IoExit) -> IoRefusal {
    let size = if io.size == 0 { 1 } else { io.size };
    let own = (0..u32::from(size)).all(|i| u16::try_from(u32::from(io.port) + i).is_ok_and(is_guest_port));
    if own { IoRefusal::NotIntercepted } else { IoRefusal::NotTheGuests }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    fn built() -> std::vec::Vec<u8> {
        let mut map = vec![0u8; SIZE];
        build(&mut map);
        map
    }

    /// Bit positions from APM vol. 2 section 15.10.1: bit `port` of the map, counted from
    /// bit 0 of byte 0.
    #[test]
    fn positions_follow_the_apm_layout() {
        assert_eq!(position(0), Some((0, 0)));
        assert_eq!(position(7), Some((0, 7)));
        assert_eq!(position(8), Some((1, 0)));
        assert_eq!(position(0xCF8), Some((0x19F, 0)));
        assert_eq!(position(0x2F8), Some((0x5F, 0)));
        assert_eq!(position(0xFFFF), Some((0x1FFF, 7)));
        assert_eq!(position(0x10000), Some((0x2000, 0)), "third page: past the last port");
        assert_eq!(position(0x17FFF), Some((0x2FFF, 7)));
        assert_eq!(position(0x18000), None);
    }

    #[test]
    fn the_guest_reaches_its_own_ports_and_nothing_else() {
        let map = built();
        for port in 0..=u16::MAX {
            assert_eq!(intercepts(&map, port, 1), !is_guest_port(port), "port {port:#x}");
        }
        assert!(map[0x2000..].iter().all(|b| *b == 0xFF), "the wrap-around page is all set");
        let clear: u32 = map.iter().map(|b| b.count_zeros()).sum();
        assert_eq!(clear, 8 + 8 + 4);
    }

    /// The ports next to the guest's: another UART's registers, the PCI configuration
    /// ports and the PIT/PIC neighbours of the debug-exit device all exit.
    #[test]
    fn neighbours_of_guest_ports_exit() {
        let map = built();
        for port in [0x2F7, 0x300, 0x2E7, 0x2F0, 0xF3, 0xF8, 0x3F8, 0xCF8, 0xCFC, 0x70, 0x20, 0x60] {
            assert!(intercepts(&map, port, 1), "port {port:#x}");
        }
        assert!(!intercepts(&map, 0x2F8, 4) && !intercepts(&map, 0xF4, 4));
    }

    /// A wide access that starts on a guest port but runs into the SVSM's exits, the one
    /// that wraps past 0xFFFF too (every bit it touches is checked, as KVM does for its
    /// nested guests: arch/x86/kvm/svm/nested.c, `nested_svm_intercept_ioio`).
    #[test]
    fn wide_accesses_are_checked_on_every_byte() {
        let map = built();
        assert!(intercepts(&map, 0x2FE, 4), "0x2FE..0x301 reaches 0x300");
        assert!(intercepts(&map, 0xF6, 4), "0xF6..0xF9 reaches 0xF8");
        assert!(!intercepts(&map, 0x2FE, 2));
        assert!(intercepts(&map, 0xFFFF, 2));
    }

    #[test]
    fn a_map_of_the_wrong_size_intercepts_everything() {
        let mut short = vec![0u8; SIZE - 1];
        build(&mut short);
        assert!(short.iter().all(|b| *b == 0xFF));
        assert!(intercepts(&short, 0x2F8, 1));
        assert!(intercepts(&[], 0x2F8, 1), "no map: every port exits");
    }

    /// EXITINFO1 as QEMU's TCG builds it (target/i386/tcg/translate.c, `gen_check_io`,
    /// then `helper_svm_check_io` in target/i386/tcg/system/svm_helper.c): port in 31:16,
    /// one size bit in 6:4, REP in 3, string in 2, IN in bit 0.
    #[test]
    fn exit_info_decodes() {
        let out_b_cf8 = 0x0CF8_u64 << 16 | 1 << 4 | 1 << 9;
        assert_eq!(IoExit::decode(out_b_cf8), IoExit { port: 0xCF8, input: false, string: false, rep: false, size: 1 });
        let in_l_cfc = 0x0CFC_u64 << 16 | 1 << 6 | 1;
        assert_eq!(IoExit::decode(in_l_cfc), IoExit { port: 0xCFC, input: true, string: false, rep: false, size: 4 });
        let rep_outsw = 0x1F0_u64 << 16 | 1 << 5 | 1 << 3 | 1 << 2;
        let d = IoExit::decode(rep_outsw);
        assert!(d.string && d.rep && d.size == 2 && d.port == 0x1F0);
    }

    /// Forged EXITINFO1 values (no size, several sizes, bits above 31) decode without
    /// panicking and are refused.
    #[test]
    fn hostile_exit_info_is_refused() {
        for info1 in [0, u64::MAX, 0x70, 0xFFFF_0000, 0xFFFF_FFFF_0000_0000, 0x02F8_0000] {
            let io = IoExit::decode(info1);
            assert!(io.size <= 4);
            let _ = on_exit(&io);
        }
        assert_eq!(on_exit(&IoExit::decode(0xCF8 << 16 | 1 << 4)), IoRefusal::NotTheGuests);
        assert_eq!(on_exit(&IoExit::decode(0x2F8 << 16 | 1 << 4)), IoRefusal::NotIntercepted);
        assert_eq!(on_exit(&IoExit::decode(0x2FE << 16 | 1 << 6)), IoRefusal::NotTheGuests);
        assert_eq!(on_exit(&IoExit::decode(0xFFFF << 16 | 1 << 6)), IoRefusal::NotTheGuests);
    }
}
