//! The test guest's console: COM2, separate from the SVSM's COM1.

use core::fmt::Write;
use x86::uart::Uart16550;

pub fn init() {
    Uart16550::COM2.init();
}

pub fn print(args: core::fmt::Arguments<'_>) {
    let mut com2 = Uart16550::COM2;
    let _ = com2.write_fmt(args);
}

macro_rules! println {
    ($($arg:tt)*) => {
        $crate::bare::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
