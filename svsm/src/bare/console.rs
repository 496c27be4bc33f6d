//! The SVSM console: COM1 (16550 UART at 0x3F8, 115200 8N1) for now; a log-buffer
//! backend joins it later. `println!` writes here.

use super::port::{inb, outb};
use core::fmt::{self, Write};

const COM1: u16 = 0x3F8;
const LSR_THR_EMPTY: u8 = 1 << 5;

pub fn init() {
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 3, 0x80); // DLAB on
    outb(COM1, 0x01); // divisor 1: 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8N1, DLAB off
    outb(COM1 + 2, 0xC7); // FIFO on, cleared
    outb(COM1 + 4, 0x03); // DTR, RTS
}

fn put(byte: u8) {
    while inb(COM1 + 5) & LSR_THR_EMPTY == 0 {}
    outb(COM1, byte);
}

/// The serial console.
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                put(b'\r');
            }
            put(b);
        }
        Ok(())
    }
}

pub fn print(args: fmt::Arguments<'_>) {
    // Serial writes cannot fail.
    let _ = Serial.write_fmt(args);
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::bare::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
