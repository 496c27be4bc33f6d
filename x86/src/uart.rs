//! A 16550 UART at an I/O base (COM1 0x3F8, COM2 0x2F8, COM3 0x3E8, COM4 0x2E8), 115200
//! 8N1, polled.

use crate::port::{inb, outb};
use core::fmt;

#[derive(Clone, Copy, Debug)]
pub struct Uart16550 {
    pub base: u16,
}

const LSR_DATA_READY: u8 = 1;
const LSR_THR_EMPTY: u8 = 1 << 5;

impl Uart16550 {
    pub const COM1: Self = Self { base: 0x3F8 };
    pub const COM2: Self = Self { base: 0x2F8 };
    pub const COM3: Self = Self { base: 0x3E8 };
    pub const COM4: Self = Self { base: 0x2E8 };

    pub fn init(self) {
        outb(self.base + 1, 0x00); // no interrupts
        outb(self.base + 3, 0x80); // DLAB on
        outb(self.base, 0x01); // divisor 1: 115200 baud
        outb(self.base + 1, 0x00);
        outb(self.base + 3, 0x03); // 8N1, DLAB off
        outb(self.base + 2, 0xC7); // FIFO on, cleared
        outb(self.base + 4, 0x03); // DTR, RTS
    }

    /// Send one byte as is (no newline translation).
    pub fn put(self, byte: u8) {
        while inb(self.base + 5) & LSR_THR_EMPTY == 0 {}
        outb(self.base, byte);
    }

    /// Is a UART there? (Its scratch register keeps what is written; without a device the
    /// port reads as all ones.)
    pub fn present(self) -> bool {
        [0x5A, 0xA5].iter().all(|v| {
            outb(self.base + 7, *v);
            inb(self.base + 7) == *v
        })
    }

    /// The next received byte, if one is waiting.
    pub fn try_get(self) -> Option<u8> {
        (inb(self.base + 5) & LSR_DATA_READY != 0).then(|| inb(self.base))
    }
}

impl fmt::Write for Uart16550 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}
