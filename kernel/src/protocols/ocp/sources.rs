//! The sources the Observability and Configuration Protocol exposes, and the one small
//! API a service uses to add its own: [`Sources::register`]. An index, once given, names
//! the same source for the SVSM's lifetime (sources are only ever added).

use crate::platform::{HeapUsage, Level, Platform};
use crate::svsm::Svsm;
use alloc::vec::Vec;

/// What a source holds, and how its bytes are made.
#[derive(Clone, Copy, Debug)]
pub enum SourceKind {
    /// The SVSM's log: UTF-8 text, read at absolute offsets since boot.
    Log,
    /// A number that may go up and down (u64, little-endian, 8 bytes), from the SVSM's
    /// state.
    Value(fn(&Svsm) -> u64),
    /// A number that only grows (u64, little-endian, 8 bytes).
    Counter(fn(&Svsm) -> u64),
    /// A fixed text (UTF-8).
    Text(&'static str),
    /// A setting the guest may read and write.
    Setting(Setting),
    /// A SHA-256 digest (32 bytes), from the SVSM's state.
    Sha256(fn(&Svsm) -> [u8; 32]),
    /// A number about the SVSM heap (u64, little-endian, 8 bytes), from the platform; 0
    /// where the platform cannot tell.
    Heap(fn(HeapUsage) -> u64),
}

/// Settings a guest may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// The log level: `error`, `warn`, `info` or `debug` (ASCII, an optional newline).
    LogLevel,
}

#[derive(Clone, Copy, Debug)]
pub struct Source {
    pub name: &'static str,
    pub kind: SourceKind,
    /// The protocol the source belongs to (`abi::ocp::typed::PROTOCOL_NONE`: the SVSM).
    pub protocol: u32,
}

impl Source {
    pub fn writable(&self) -> bool {
        matches!(self.kind, SourceKind::Setting(_))
    }

    /// The version 2 type (`abi::ocp::source_type`).
    pub fn type_code(&self) -> u32 {
        use abi::ocp::source_type as t;
        match self.kind {
            SourceKind::Log => t::LOG_STREAM,
            SourceKind::Value(_) | SourceKind::Heap(_) => t::VALUE,
            SourceKind::Counter(_) => t::COUNTER,
            SourceKind::Text(_) | SourceKind::Setting(_) => t::STRING,
            SourceKind::Sha256(_) => t::SHA256,
        }
    }

    /// Bytes of a fixed-size source, `None` if its size varies.
    pub fn fixed_size(&self) -> Option<u32> {
        match self.kind {
            SourceKind::Value(_) | SourceKind::Counter(_) | SourceKind::Heap(_) => Some(8),
            SourceKind::Sha256(_) => Some(32),
            SourceKind::Log | SourceKind::Text(_) | SourceKind::Setting(_) => None,
        }
    }
}

/// Why a source could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// Longer than an entry holds (`abi::ocp::NAME_MAX`), or empty.
    BadName,
    /// Another source has this name.
    Taken,
    NoMemory,
}

#[derive(Debug, Default)]
pub struct Sources {
    list: Vec<Source>,
    /// Where change events go (version 2 NOTIFY), if the guest asked for them. Its own
    /// lock: every vCPU may post events.
    pub(crate) notify: spin::Mutex<Option<NotifyRing>>,
    /// A ring is set up: read at the end of every call without the lock.
    pub(crate) notify_active: core::sync::atomic::AtomicBool,
    /// The index of `sealed.root`, once the sealed state is installed: a commit is a
    /// change event of it.
    pub(crate) sealed_root: Option<u32>,
}

/// The SVSM's side of a change-event ring.
#[derive(Debug)]
pub(crate) struct NotifyRing {
    pub gpa: crate::addr::Gpa,
    /// Who set the ring up: it is written with that caller's permissions.
    pub caller: crate::caller::Caller,
    /// The next event's counter (the page's `head` is a copy the guest may not change).
    pub head: u32,
    pub dropped: u32,
    /// Log bytes already announced.
    pub log_seen: u64,
    /// Sources written during the call being served, to announce at its end.
    pub written: Vec<u32>,
    /// The sealed state's generation already announced.
    pub sealed_seen: u64,
}

impl Sources {
    /// The sources every SVSM has, for a platform called `platform`.
    pub fn builtin(platform: &'static str) -> Self {
        let git = option_env!("BULWARK_GIT_HASH").unwrap_or("unknown");
        const NONE: u32 = abi::ocp::typed::PROTOCOL_NONE;
        let builtin: [(&'static str, SourceKind, u32); 17] = [
            ("log", SourceKind::Log, NONE),
            ("config.log_level", SourceKind::Setting(Setting::LogLevel), NONE),
            ("build.version", SourceKind::Text(env!("CARGO_PKG_VERSION")), NONE),
            ("build.git", SourceKind::Text(git), NONE),
            ("build.platform", SourceKind::Text(platform), NONE),
            ("memory.svsm_pages_total", SourceKind::Value(|s| s.pool.lock().stats().reserve_total), 0),
            ("memory.svsm_pages_free", SourceKind::Value(|s| s.pool.lock().stats().reserve_free), 0),
            ("memory.deposited_pages", SourceKind::Value(|s| s.pool.lock().stats().deposited_total), 0),
            ("memory.deposited_pages_free", SourceKind::Value(|s| s.pool.lock().stats().deposited_free), 0),
            ("calls.core", SourceKind::Counter(|s| s.stats.calls(0)), 0),
            ("errors.core", SourceKind::Counter(|s| s.stats.errors(0)), 0),
            ("calls.attestation", SourceKind::Counter(|s| s.stats.calls(1)), 1),
            ("errors.attestation", SourceKind::Counter(|s| s.stats.errors(1)), 1),
            ("calls.ocp", SourceKind::Counter(|s| s.stats.calls(5)), 5),
            ("errors.ocp", SourceKind::Counter(|s| s.stats.errors(5)), 5),
            ("memory.heap_bytes_used", SourceKind::Heap(|h| h.used), NONE),
            ("memory.heap_bytes_total", SourceKind::Heap(|h| h.size), NONE),
        ];
        let mut s = Self::default();
        for (name, kind, protocol) in builtin {
            // Distinct, short, constant names: registering them cannot fail.
            let _ = s.register(name, kind, protocol);
        }
        s
    }

    /// Add a source belonging to `protocol` (`abi::ocp::typed::PROTOCOL_NONE` for the SVSM
    /// as a whole); returns its index.
    pub fn register(&mut self, name: &'static str, kind: SourceKind, protocol: u32) -> Result<u32, RegisterError> {
        if name.is_empty() || name.len() > abi::ocp::NAME_MAX {
            return Err(RegisterError::BadName);
        }
        if self.list.iter().any(|s| s.name == name) {
            return Err(RegisterError::Taken);
        }
        self.list.try_reserve(1).map_err(|_| RegisterError::NoMemory)?;
        self.list.push(Source { name, kind, protocol });
        u32::try_from(self.list.len() - 1).map_err(|_| RegisterError::NoMemory)
    }

    pub fn get(&self, index: u32) -> Option<&Source> {
        self.list.get(index as usize)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Source> {
        self.list.iter()
    }
}

pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
    }
}

/// The bytes of a source other than the log, as they are now. Held without allocation:
/// reads are guest-triggered, and the heap may be exhausted (docs/architecture.md).
#[derive(Clone, Copy, Debug)]
pub enum Snapshot {
    /// A value, a digest or a short text built now (at most 32 bytes).
    Inline([u8; 32], usize),
    /// A constant text.
    Static(&'static [u8]),
}

impl Snapshot {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Snapshot::Inline(b, n) => b.get(..*n).unwrap_or(b),
            Snapshot::Static(b) => b,
        }
    }

    fn inline(parts: &[&[u8]]) -> Self {
        let mut b = [0u8; 32];
        let mut n = 0;
        for part in parts {
            for byte in part.iter() {
                if let Some(slot) = b.get_mut(n) {
                    *slot = *byte;
                    n += 1;
                }
            }
        }
        Snapshot::Inline(b, n)
    }
}

pub fn snapshot<P: Platform + ?Sized>(svsm: &Svsm, p: &P, kind: SourceKind) -> Snapshot {
    match kind {
        SourceKind::Log => Snapshot::Static(&[]),
        SourceKind::Value(f) | SourceKind::Counter(f) => Snapshot::inline(&[&f(svsm).to_le_bytes()]),
        SourceKind::Text(t) => Snapshot::Static(t.as_bytes()),
        SourceKind::Setting(Setting::LogLevel) => Snapshot::inline(&[level_name(p.log_level()).as_bytes(), b"\n"]),
        SourceKind::Sha256(f) => Snapshot::inline(&[&f(svsm)]),
        SourceKind::Heap(f) => Snapshot::inline(&[&p.heap_usage().map_or(0, f).to_le_bytes()]),
    }
}

/// Where the sealed state keeps the log level.
pub const LOG_LEVEL_KEY: &[u8] = b"ocp/config.log_level";

/// Parse what a guest wrote to the log-level setting.
pub fn parse_level(data: &[u8]) -> Option<Level> {
    let text = core::str::from_utf8(data).ok()?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    [Level::Error, Level::Warn, Level::Info, Level::Debug].into_iter().find(|l| level_name(*l) == text)
}
