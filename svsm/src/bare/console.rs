//! The SVSM console, with switchable backends: the serial port (COM1) and an in-memory
//! log buffer. `println!` writes to the ones switched on.
//!
//! The log buffer keeps the last [`LOG_BYTES`] bytes whatever the serial port does, so a
//! run that keeps its log off the host-visible serial port (`console=log` on the command
//! line: on SNP hardware the serial port is the host's) still has it. When the SVSM stops
//! on a failure with the serial port off, the buffer is replayed there: the crash report
//! comes with the log that led to it.
//!
//! One lock serializes the CPUs' lines. The failure path never waits for it forever: a
//! CPU that faulted while printing must still be able to report.

use core::fmt::Write;
use kernel::log_ring::{LogLost, LogRing};
use spin::Mutex;
use x86::uart::Uart16550;

/// Size of the in-memory log buffer.
pub const LOG_BYTES: usize = 64 * 1024;

/// Which backends receive output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backends {
    /// Serial port and log buffer (the default).
    Both = 0,
    /// Log buffer only: nothing reaches the serial port until a failure.
    LogOnly,
}

/// All-zero when the SVSM starts, so the 64 KiB buffer costs no image space (.bss).
struct Console {
    backends: Backends,
    log: LogRing<LOG_BYTES>,
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.log.push(s.as_bytes());
        if self.backends == Backends::Both {
            // Serial writes cannot fail.
            let mut serial = Uart16550::COM1;
            let _ = serial.write_str(s);
        }
        Ok(())
    }
}

static CONSOLE: Mutex<Console> = Mutex::new(Console { backends: Backends::Both, log: LogRing::new() });

pub fn init() {
    Uart16550::COM1.init();
}

/// Switch backends (from the command line's `console=log|serial`).
pub fn switch(backends: Backends) {
    if let Some(mut console) = lock() {
        console.backends = backends;
    }
}

/// Take the console lock, or go without it if it seems held for good: a CPU that faulted
/// while printing must still be able to report.
fn lock() -> Option<spin::MutexGuard<'static, Console>> {
    for _ in 0..10_000_000u32 {
        if let Some(guard) = CONSOLE.try_lock() {
            return Some(guard);
        }
        core::hint::spin_loop();
    }
    None
}

pub fn print(args: core::fmt::Arguments<'_>) {
    match lock() {
        Some(mut console) => {
            let _ = console.write_fmt(args);
        }
        None => {
            let mut serial = Uart16550::COM1;
            let _ = serial.write_fmt(args);
        }
    }
}

/// Before the SVSM stops on a failure: with the serial port off, replay the log buffer
/// there so the report comes with its context.
pub fn replay_for_failure() {
    let Some(console) = lock() else { return };
    if console.backends == Backends::Both {
        return;
    }
    let mut serial = Uart16550::COM1;
    let (oldest, written) = (console.log.oldest(), console.log.written());
    let _ = writeln!(serial, "--- console log buffer ({written} bytes, {oldest} older bytes lost) ---");
    let mut chunk = [0u8; 512];
    let mut at = oldest;
    while let Ok(n @ 1..) = console.log.read(at, &mut chunk) {
        // A chunk may end inside a multi-byte character: invalid bytes print as '?'.
        for part in chunk[..n].utf8_chunks() {
            let _ = serial.write_str(part.valid());
            if !part.invalid().is_empty() {
                let _ = serial.write_str("?");
            }
        }
        at += n as u64;
    }
    let _ = writeln!(serial, "--- end of console log buffer ---");
}

/// Read the log stream from its absolute `offset` (the Observability protocol's `log`).
pub fn log_read(offset: u64, out: &mut [u8]) -> Result<usize, LogLost> {
    lock().map_or(Ok(0), |console| console.log.read(offset, out))
}

/// Bytes logged since boot.
pub fn log_written() -> u64 {
    lock().map_or(0, |console| console.log.written())
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::bare::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
