//! The SVSM's log as a byte stream: every byte ever logged has an absolute offset since
//! boot, and a ring keeps the last `N` of them. A reader that asks for bytes the ring no
//! longer holds is told so, with the oldest offset still there: loss is never silent.
//!
//! The bare-metal console and the model both keep their log in one; the Observability
//! protocol reads it (docs/protocols/ocp.md).

/// One log line built on the stack: logging must work when the heap is full (a log line
/// about running out of memory is the one most wanted then). Longer lines are cut, and
/// end in "...".
#[derive(Debug)]
pub struct LogLine {
    bytes: [u8; LogLine::MAX],
    len: usize,
}

impl LogLine {
    pub const MAX: usize = 256;

    /// `[Level] message\n`, cut to [`Self::MAX`] bytes.
    pub fn new(level: crate::platform::Level, args: core::fmt::Arguments<'_>) -> Self {
        let mut line = Self { bytes: [0; Self::MAX], len: 0 };
        let _ = core::fmt::write(&mut line, format_args!("[{level:?}] {args}"));
        if line.len == Self::MAX {
            line.len = Self::MAX - 4;
            line.push(b"...");
        }
        line.push(b"\n");
        line
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = Self::MAX.saturating_sub(self.len);
        let n = bytes.len().min(room);
        if let (Some(to), Some(from)) = (self.bytes.get_mut(self.len..self.len + n), bytes.get(..n)) {
            to.copy_from_slice(from);
            self.len += n;
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }
}

impl core::fmt::Write for LogLine {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Bytes at `offset` were overwritten before they were read; `oldest` is the first
/// offset still held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLost {
    pub oldest: u64,
}

/// All zero is an empty ring, so a large one can be made on the heap directly
/// (`FromZeros::new_box_zeroed`) without passing through the stack.
#[derive(zerocopy::FromZeros)]
pub struct LogRing<const N: usize> {
    bytes: [u8; N],
    /// Bytes logged since boot; the ring holds the last `N` of them.
    written: u64,
}

impl<const N: usize> core::fmt::Debug for LogRing<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LogRing").field("capacity", &N).field("written", &self.written).finish()
    }
}

impl<const N: usize> Default for LogRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> LogRing<N> {
    /// An empty ring (all zero: a `static` of it costs no image space).
    pub const fn new() -> Self {
        Self { bytes: [0; N], written: 0 }
    }

    pub fn push(&mut self, s: &[u8]) {
        // Only the last N bytes of a long write can be kept.
        let skip = s.len().saturating_sub(N);
        self.written += skip as u64;
        let mut rest = s.get(skip..).unwrap_or(&[]);
        // At most two copies: up to the ring's end, then on from its start.
        while !rest.is_empty() {
            let at = self.position(self.written);
            let (now, later) = rest.split_at(rest.len().min(N - at));
            if let Some(to) = self.bytes.get_mut(at..at + now.len()) {
                to.copy_from_slice(now);
            }
            self.written += now.len() as u64;
            rest = later;
        }
    }

    /// Where in the ring the byte at `offset` lives.
    fn position(&self, offset: u64) -> usize {
        // Below N, which is a usize.
        usize::try_from(offset % N as u64).unwrap_or(0)
    }

    /// Bytes logged since boot (the offset the next byte will have).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The oldest offset still held; everything before it was overwritten.
    pub fn oldest(&self) -> u64 {
        self.written.saturating_sub(N as u64)
    }

    /// The bytes from `offset` on, at most `max` of them, where the ring holds them: two
    /// slices, the second empty unless they wrap around the ring's end (at the end of the
    /// log, or beyond it, both are empty).
    pub fn segments(&self, offset: u64, max: usize) -> Result<[&[u8]; 2], LogLost> {
        if offset < self.oldest() {
            return Err(LogLost { oldest: self.oldest() });
        }
        let n = usize::try_from(self.written.saturating_sub(offset)).unwrap_or(usize::MAX).min(max);
        let at = self.position(offset);
        let first = n.min(N - at);
        Ok([self.bytes.get(at..at + first).unwrap_or(&[]), self.bytes.get(..n - first).unwrap_or(&[])])
    }

    /// Copy the bytes from `offset` on into `out`; returns how many (0 at the end of the
    /// log, or beyond it).
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<usize, LogLost> {
        let [a, b] = self.segments(offset, out.len())?;
        let (to_a, rest) = out.split_at_mut(a.len());
        to_a.copy_from_slice(a);
        if let Some(to_b) = rest.get_mut(..b.len()) {
            to_b.copy_from_slice(b);
        }
        Ok(a.len() + b.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_line_is_cut_on_the_stack() {
        use crate::platform::Level;
        let short = LogLine::new(Level::Warn, format_args!("x = {}", 7));
        assert_eq!(short.as_bytes(), b"[Warn] x = 7\n");
        let long = LogLine::new(Level::Info, format_args!("{}", "y".repeat(400)));
        assert_eq!(long.as_bytes().len(), LogLine::MAX - 4 + 3 + 1);
        assert!(long.as_bytes().ends_with(b"...\n"));
    }

    #[test]
    fn reads_follow_absolute_offsets_across_the_wrap() {
        let mut r = LogRing::<8>::new();
        r.push(b"abcdef");
        let mut out = [0u8; 16];
        assert_eq!(r.read(2, &mut out), Ok(4));
        assert_eq!(&out[..4], b"cdef");
        r.push(b"ghij");
        assert_eq!((r.written(), r.oldest()), (10, 2));
        assert_eq!(r.read(2, &mut out), Ok(8));
        assert_eq!(&out[..8], b"cdefghij");
        assert_eq!(r.read(1, &mut out), Err(LogLost { oldest: 2 }), "overwritten bytes are reported");
        assert_eq!(r.read(10, &mut out), Ok(0), "nothing new yet");
        assert_eq!(r.read(99, &mut out), Ok(0));
    }

    #[test]
    fn a_write_longer_than_the_ring_keeps_its_tail_and_counts_the_rest() {
        let mut r = LogRing::<4>::new();
        r.push(b"0123456789");
        let mut out = [0u8; 4];
        assert_eq!(r.read(6, &mut out), Ok(4));
        assert_eq!(&out, b"6789");
        assert_eq!(r.written(), 10);
    }

    #[test]
    fn short_buffers_get_the_first_bytes() {
        let mut r = LogRing::<16>::new();
        r.push(b"hello world");
        let mut out = [0u8; 5];
        assert_eq!(r.read(6, &mut out), Ok(5));
        assert_eq!(&out, b"world");
    }

    #[test]
    fn a_read_across_the_ring_end_is_two_slices_and_never_more() {
        let mut r = LogRing::<8>::new();
        r.push(b"abcdefghij"); // ring: "ijcdefgh", oldest offset 2
        assert_eq!(r.segments(2, 100), Ok([&b"cdefgh"[..], &b"ij"[..]]));
        assert_eq!(r.segments(4, 3), Ok([&b"efg"[..], &b""[..]]));
        assert_eq!(r.segments(9, 100), Ok([&b"j"[..], &b""[..]]), "from the ring's start");
        assert_eq!(r.segments(10, 100), Ok([&b""[..], &b""[..]]));
        assert_eq!(r.segments(1, 1), Err(LogLost { oldest: 2 }));
    }
}
