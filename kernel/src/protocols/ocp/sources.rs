//! The sources the Observability and Configuration Protocol exposes, and the one small
//! API a service uses to add its own: [`Sources::register`]. An index, once given, names
//! the same source for the SVSM's lifetime (sources are only ever added).

use crate::platform::{Level, Platform};
use crate::svsm::Svsm;
use alloc::string::String;
use alloc::vec::Vec;

/// What a source holds, and how its bytes are made.
#[derive(Clone, Copy, Debug)]
pub enum SourceKind {
    /// The SVSM's log: UTF-8 text, read at absolute offsets since boot.
    Log,
    /// A number (u64, little-endian, 8 bytes) computed from the SVSM's state.
    Value(fn(&Svsm) -> u64),
    /// A fixed text (UTF-8).
    Text(&'static str),
    /// A setting the guest may read and write.
    Setting(Setting),
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
}

impl Source {
    pub fn writable(&self) -> bool {
        matches!(self.kind, SourceKind::Setting(_))
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
}

impl Sources {
    /// The sources every SVSM has, for a platform called `platform`.
    pub fn builtin(platform: &'static str) -> Self {
        let git = option_env!("BULWARK_GIT_HASH").unwrap_or("unknown");
        let builtin: [(&'static str, SourceKind); 15] = [
            ("log", SourceKind::Log),
            ("config.log_level", SourceKind::Setting(Setting::LogLevel)),
            ("build.version", SourceKind::Text(env!("CARGO_PKG_VERSION"))),
            ("build.git", SourceKind::Text(git)),
            ("build.platform", SourceKind::Text(platform)),
            ("memory.svsm_pages_total", SourceKind::Value(|s| s.pool.stats().reserve_total)),
            ("memory.svsm_pages_free", SourceKind::Value(|s| s.pool.stats().reserve_free)),
            ("memory.deposited_pages", SourceKind::Value(|s| s.pool.stats().deposited_total)),
            ("memory.deposited_pages_free", SourceKind::Value(|s| s.pool.stats().deposited_free)),
            ("calls.core", SourceKind::Value(|s| s.stats.per_protocol[0].calls)),
            ("errors.core", SourceKind::Value(|s| s.stats.per_protocol[0].errors)),
            ("calls.attestation", SourceKind::Value(|s| s.stats.per_protocol[1].calls)),
            ("errors.attestation", SourceKind::Value(|s| s.stats.per_protocol[1].errors)),
            ("calls.ocp", SourceKind::Value(|s| s.stats.per_protocol[5].calls)),
            ("errors.ocp", SourceKind::Value(|s| s.stats.per_protocol[5].errors)),
        ];
        let mut s = Self::default();
        for (name, kind) in builtin {
            // Distinct, short, constant names: registering them cannot fail.
            let _ = s.register(name, kind);
        }
        s
    }

    /// Add a source; returns its index.
    pub fn register(&mut self, name: &'static str, kind: SourceKind) -> Result<u32, RegisterError> {
        if name.is_empty() || name.len() > abi::ocp::NAME_MAX {
            return Err(RegisterError::BadName);
        }
        if self.list.iter().any(|s| s.name == name) {
            return Err(RegisterError::Taken);
        }
        self.list.try_reserve(1).map_err(|_| RegisterError::NoMemory)?;
        self.list.push(Source { name, kind });
        Ok((self.list.len() - 1) as u32)
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

/// The bytes of a source other than the log, as they are now.
pub fn snapshot<P: Platform + ?Sized>(svsm: &Svsm, p: &P, kind: SourceKind) -> Vec<u8> {
    match kind {
        SourceKind::Log => Vec::new(),
        SourceKind::Value(f) => f(svsm).to_le_bytes().to_vec(),
        SourceKind::Text(t) => t.as_bytes().to_vec(),
        SourceKind::Setting(Setting::LogLevel) => {
            let mut s = String::from(level_name(p.log_level()));
            s.push('\n');
            s.into_bytes()
        }
    }
}

/// Parse what a guest wrote to the log-level setting.
pub fn parse_level(data: &[u8]) -> Option<Level> {
    let text = core::str::from_utf8(data).ok()?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    [Level::Error, Level::Warn, Level::Info, Level::Debug].into_iter().find(|l| level_name(*l) == text)
}
