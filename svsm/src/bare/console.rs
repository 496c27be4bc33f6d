//! The SVSM console: COM1. `println!` writes here.

use core::fmt::Write;
use x86::uart::Uart16550;

pub fn init() {
    Uart16550::COM1.init();
}

pub fn print(args: core::fmt::Arguments<'_>) {
    // Serial writes cannot fail.
    let mut com1 = Uart16550::COM1;
    let _ = com1.write_fmt(args);
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::bare::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
