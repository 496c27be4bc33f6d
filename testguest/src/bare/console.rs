//! The test guest's console: COM2 (0x2F8), separate from the SVSM's COM1.

use super::io::{inb, outb};
use core::fmt::{self, Write};

const COM2: u16 = 0x2F8;

pub fn init() {
    outb(COM2 + 1, 0x00);
    outb(COM2 + 3, 0x80);
    outb(COM2, 0x01);
    outb(COM2 + 1, 0x00);
    outb(COM2 + 3, 0x03);
    outb(COM2 + 2, 0xC7);
    outb(COM2 + 4, 0x03);
}

struct Serial;

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

fn put(b: u8) {
    while inb(COM2 + 5) & (1 << 5) == 0 {}
    outb(COM2, b);
}

pub fn print(args: fmt::Arguments<'_>) {
    let _ = Serial.write_fmt(args);
}

macro_rules! println {
    ($($arg:tt)*) => {
        $crate::bare::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
