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
//!
//! Where every port write is a host exit (SNP: each OUT raises #VC and becomes a GHCB
//! event), holding that lock while a line goes out byte by byte would hold it across one
//! host exit per byte, and a slow host would stall every CPU that prints. There the
//! platform installs a line writer (`set_line_writer`) that sends a whole buffer in one
//! exit: `print` then gathers its output in a buffer on the stack, copies it into the log
//! buffer under the lock, and writes it to the serial port after letting go of the lock.
//! Lines stay whole because each is one exit. (The failure-path replay still writes under
//! the lock: the SVSM stops right after it.)

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::log_ring::{LogLost, LogRing};
use spin::Mutex;
use spin::once::Once;
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

impl Console {
    /// Into the log buffer, and the count of bytes logged published for readers that
    /// must not wait on the lock ([`log_written`]).
    fn push_log(&mut self, bytes: &[u8]) {
        self.log.push(bytes);
        WRITTEN.store(self.log.written(), Ordering::Release);
    }
}

/// Bytes logged since boot, as of the last push: read without the console's lock, so an
/// OCP log read never takes a busy console for an empty log (it only ever lags).
static WRITTEN: AtomicU64 = AtomicU64::new(0);

impl Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.push_log(s.as_bytes());
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

/// A platform's way to send one buffer to the serial port in one host exit.
static LINE_WRITER: Once<fn(&[u8])> = Once::new();

/// From now on serial output goes out a buffer at a time through `write`, outside the
/// console lock (module docs).
pub fn set_line_writer(write: fn(&[u8])) {
    LINE_WRITER.call_once(|| write);
}

pub fn print(args: core::fmt::Arguments<'_>) {
    if let Some(write) = LINE_WRITER.get() {
        let mut line = LineBuffer { bytes: [0; LINE_BYTES], len: 0, write: *write };
        let _ = line.write_fmt(args);
        line.flush();
        return;
    }
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

/// Bytes `print` gathers before one exit: a line, or a piece of a longer one.
const LINE_BYTES: usize = 512;

/// Output on its way to one host exit.
struct LineBuffer {
    bytes: [u8; LINE_BYTES],
    len: usize,
    write: fn(&[u8]),
}

impl LineBuffer {
    /// Into the log buffer under the lock; then, the lock let go, to the serial port.
    fn flush(&mut self) {
        let Some(bytes) = self.bytes.get(..self.len).filter(|b| !b.is_empty()) else { return };
        let serial = match lock() {
            Some(mut console) => {
                console.push_log(bytes);
                console.backends == Backends::Both
            }
            None => true,
        };
        if serial {
            (self.write)(bytes);
        }
        self.len = 0;
    }
}

impl Write for LineBuffer {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let mut rest = s.as_bytes();
        while !rest.is_empty() {
            if self.len == LINE_BYTES {
                self.flush();
            }
            let n = rest.len().min(LINE_BYTES - self.len);
            if let (Some(to), Some(from)) = (self.bytes.get_mut(self.len..self.len + n), rest.get(..n)) {
                to.copy_from_slice(from);
            }
            self.len += n;
            rest = rest.get(n..).unwrap_or(&[]);
        }
        Ok(())
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
        // The log never reads more than the chunk holds.
        let Some(bytes) = chunk.get(..n) else { break };
        // A chunk may end inside a multi-byte character: invalid bytes print as '?'.
        for part in bytes.utf8_chunks() {
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

/// `f` with the log stream from `offset`, at most `max` bytes of it, as the ring holds it
/// (two pieces where it wraps), under the console's lock; `None` if the console stayed
/// busy (not an empty log: the caller says so rather than answer 0 bytes).
pub fn with_log<T>(offset: u64, max: usize, f: impl FnOnce(&[u8], &[u8]) -> T) -> Option<Result<T, LogLost>> {
    let console = lock()?;
    Some(console.log.segments(offset, max).map(|[a, b]| f(a, b)))
}

/// Bytes logged since boot (never waits on the console's lock).
pub fn log_written() -> u64 {
    WRITTEN.load(Ordering::Acquire)
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::bare::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
