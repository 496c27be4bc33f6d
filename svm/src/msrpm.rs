//! The MSR permission map (AMD APM vol. 2, section 15.11): 8 KiB the VMCB points at, two
//! bits per MSR for three ranges of 0x2000 MSRs each (bit `2n` intercepts the read of the
//! range's `n`th MSR, bit `2n + 1` the write). With the VMCB's MSR_PROT intercept set, an
//! access whose bit is set exits, and so does every access to an MSR outside the ranges.
//! [`build`] makes the map from the policy in `msr`: everything intercepted except what
//! the policy passes.

use crate::msr::{Action, RULES};

/// Size of the map in bytes.
pub const SIZE: usize = 0x2000;

/// MSRs per range.
const RANGE_LEN: u32 = 0x2000;

/// The ranges: first MSR, and the byte offset of its bits in the map. The last 2 KiB of
/// the map are reserved.
const RANGES: [(u32, usize); 3] = [(0x0000_0000, 0x0000), (0xC000_0000, 0x0800), (0xC001_0000, 0x1000)];

/// Where the intercept bit for reading (or, if `write`, writing) `msr` is: byte offset in
/// the map and bit in that byte. `None` for an MSR outside the ranges (it always exits).
pub fn position(msr: u32, write: bool) -> Option<(usize, u8)> {
    RANGES.iter().find_map(|&(first, offset)| {
        let n = msr.checked_sub(first).filter(|n| *n < RANGE_LEN)?;
        let bit = n as usize * 2 + usize::from(write);
        Some((offset + bit / 8, u8::try_from(bit % 8).ok()?))
    })
}

/// Fill `map` from the policy: every bit set (reserved bytes included) except those of
/// the accesses [`RULES`] passes.
pub fn build(map: &mut [u8; SIZE]) {
    map.fill(0xFF);
    for rule in RULES {
        for (write, action) in [(false, rule.read), (true, rule.write)] {
            if action != Action::Pass {
                continue;
            }
            for msr in rule.first..=rule.last {
                if let Some((byte, bit)) = position(msr, write)
                    && let Some(b) = map.get_mut(byte)
                {
                    *b &= !(1 << bit);
                }
            }
        }
    }
}

/// Does `map` make the read (or write) of `msr` exit?
pub fn intercepts(map: &[u8; SIZE], msr: u32, write: bool) -> bool {
    match position(msr, write) {
        Some((byte, bit)) => map.get(byte).is_none_or(|b| b & (1 << bit) != 0),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msr::{self, index, rule_for};

    fn built() -> [u8; SIZE] {
        let mut map = [0u8; SIZE];
        build(&mut map);
        map
    }

    /// Bit positions at the start and end of each range, worked out from APM vol. 2
    /// table 15-11 (bytes 0x000-0x7FF, 0x800-0xFFF, 0x1000-0x17FF; read bit, then write).
    #[test]
    fn positions_follow_the_apm_layout() {
        let cases = [
            (0x0000_0000, false, (0x000, 0)),
            (0x0000_0000, true, (0x000, 1)),
            (0x0000_0003, true, (0x000, 7)),
            (0x0000_0004, false, (0x001, 0)),
            (0x0000_001B, false, (0x006, 6)), // APIC_BASE
            (0x0000_0277, true, (0x09D, 7)),  // PAT
            (0x0000_1FFF, true, (0x7FF, 7)),
            (0xC000_0000, false, (0x800, 0)),
            (0xC000_0080, false, (0x820, 0)), // EFER
            (0xC000_0080, true, (0x820, 1)),
            (0xC000_0102, true, (0x840, 5)), // KERNEL_GS_BASE
            (0xC000_1FFF, true, (0xFFF, 7)),
            (0xC001_0000, false, (0x1000, 0)),
            (0xC001_0117, false, (0x1045, 6)), // VM_HSAVE_PA
            (0xC001_0117, true, (0x1045, 7)),
            (0xC001_1FFF, true, (0x17FF, 7)),
        ];
        for (msr, write, at) in cases {
            assert_eq!(position(msr, write), Some(at), "MSR {msr:#x} write {write}");
        }
    }

    #[test]
    fn msrs_outside_the_ranges_have_no_bit() {
        for msr in [0x2000, 0xBFFF_FFFF, 0xC000_2000, 0xC000_FFFF, 0xC001_2000, index::SVSM_CAA, u32::MAX] {
            assert_eq!(position(msr, false), None, "{msr:#x}");
            assert_eq!(position(msr, true), None, "{msr:#x}");
        }
    }

    /// Every MSR of every range, both directions: a bit of its own, never shared.
    #[test]
    fn every_access_has_its_own_bit() {
        let mut seen = [0u8; SIZE];
        for (first, _) in RANGES {
            for msr in first..first + RANGE_LEN {
                for write in [false, true] {
                    let (byte, bit) = position(msr, write).unwrap();
                    assert_eq!(seen[byte] & (1 << bit), 0, "MSR {msr:#x} shares a bit");
                    seen[byte] |= 1 << bit;
                }
            }
        }
        assert!(seen[..0x1800].iter().all(|b| *b == 0xFF));
        assert!(seen[0x1800..].iter().all(|b| *b == 0));
    }

    /// The built map passes exactly what the policy passes, and intercepts everything
    /// else, reserved bytes included.
    #[test]
    fn the_map_is_the_policy() {
        let map = built();
        for (first, _) in RANGES {
            for msr in first..first + RANGE_LEN {
                let r = rule_for(msr);
                assert_eq!(intercepts(&map, msr, false), r.read != Action::Pass, "read {msr:#x}");
                assert_eq!(intercepts(&map, msr, true), r.write != Action::Pass, "write {msr:#x}");
            }
        }
        assert!(map[0x1800..].iter().all(|b| *b == 0xFF));
    }

    #[test]
    fn the_dangerous_msrs_exit() {
        let map = built();
        let dangerous = [
            index::VM_HSAVE_PA,
            index::APIC_BASE,
            0x830, // x2APIC ICR
            index::SYSCFG,
            index::VM_CR,
            index::TSC_RATIO,
            index::MTRR_VARIABLE_FIRST,
            index::PAT,
        ];
        for msr in dangerous {
            assert!(intercepts(&map, msr, false) && intercepts(&map, msr, true), "{msr:#x}");
        }
        // The TSC reads through the SVSM (emulated) and is never written.
        assert!(intercepts(&map, index::TSC, false) && intercepts(&map, index::TSC, true));
        // EFER: reads pass, writes are checked.
        assert!(!intercepts(&map, index::EFER, false) && intercepts(&map, index::EFER, true));
        // The syscall and segment-base MSRs pass both ways.
        for msr in [index::STAR, 0xC000_0082, index::SFMASK, index::FS_BASE, index::KERNEL_GS_BASE, 0x174, 0x176] {
            assert!(!intercepts(&map, msr, false) && !intercepts(&map, msr, true), "{msr:#x}");
        }
        // Beyond the ranges every access exits.
        assert!(intercepts(&map, 0xC001_2000, false) && intercepts(&map, index::SVSM_CAA, false));
    }

    /// Exactly the passed accesses are clear: nothing else slipped out of the map.
    #[test]
    fn only_passed_bits_are_clear() {
        let map = built();
        let clear: u32 = map.iter().map(|b| b.count_zeros()).sum();
        let passed: u32 = msr::RULES
            .iter()
            .map(|r| (r.last - r.first + 1) * (u32::from(r.read == Action::Pass) + u32::from(r.write == Action::Pass)))
            .sum();
        assert_eq!(clear, passed);
        assert_eq!(passed, 2 * (3 + 4 + 3) + 1);
    }
}
