//! Leveled logging to stderr, with syslog priority prefixes when journald reads it.
//!
//! A daemon under systemd writes to a stream that journald parses: `<3>` marks an
//! error, `<4>` a warning and so on, which keeps `journalctl -p` useful. Outside the
//! journal (a terminal, a test) lines read `ringsock: warning: ...` instead.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 3,
    Warn = 4,
    Info = 6,
    Debug = 7,
}

impl Level {
    /// Accepts the names systemd uses for `SYSTEMD_LOG_LEVEL` as well as the usual ones.
    pub fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "emerg" | "alert" | "crit" | "err" | "error" | "0" | "1" | "2" | "3" => {
                Some(Level::Error)
            }
            "warning" | "warn" | "4" => Some(Level::Warn),
            "notice" | "info" | "5" | "6" => Some(Level::Info),
            "debug" | "7" => Some(Level::Debug),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static JOURNAL: AtomicBool = AtomicBool::new(false);

/// Sets the level and the output format once at start.
///
/// The level comes from `--log-level`, else `RINGSOCK_LOG_LEVEL`, else
/// `SYSTEMD_LOG_LEVEL` (which systemd-socket-proxyd honours), else info.
/// A variable that is not a level is ignored with a warning, as systemd's own tools do:
/// a service must not fail to start over an inherited setting.
pub fn init(flag: Option<Level>) {
    JOURNAL.store(
        std::env::var_os("JOURNAL_STREAM").is_some(),
        Ordering::Relaxed,
    );
    let mut ignored = Vec::new();
    let level = flag.unwrap_or_else(|| {
        for var in ["RINGSOCK_LOG_LEVEL", "SYSTEMD_LOG_LEVEL"] {
            if let Ok(value) = std::env::var(var) {
                match Level::parse(&value) {
                    Some(level) => return level,
                    None => ignored.push((var, value)),
                }
            }
        }
        Level::Info
    });
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
    for (var, value) in ignored {
        crate::warn!(
            "ignoring {var}={value:?}: not a log level (use error, warning, info or debug)"
        );
    }
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

pub fn write(level: Level, args: fmt::Arguments<'_>) {
    let line = if JOURNAL.load(Ordering::Relaxed) {
        format!("<{}>{}\n", level as u8, args)
    } else {
        format!("ringsock: {}: {}\n", level.label(), args)
    };
    // One write per line so lines from several workers never interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[macro_export]
macro_rules! log_at {
    ($level:expr, $($arg:tt)+) => {
        if $crate::log::enabled($level) {
            $crate::log::write($level, format_args!($($arg)+));
        }
    };
}
#[macro_export]
macro_rules! error { ($($arg:tt)+) => { $crate::log_at!($crate::log::Level::Error, $($arg)+) }; }
#[macro_export]
macro_rules! warn { ($($arg:tt)+) => { $crate::log_at!($crate::log::Level::Warn, $($arg)+) }; }
#[macro_export]
macro_rules! info { ($($arg:tt)+) => { $crate::log_at!($crate::log::Level::Info, $($arg)+) }; }
#[macro_export]
macro_rules! debug { ($($arg:tt)+) => { $crate::log_at!($crate::log::Level::Debug, $($arg)+) }; }

/// Lets through at most one message per interval and counts the rest, so a target
/// that is down, or an fd limit that is hit, cannot flood the journal.
pub struct RateLimit {
    interval_ms: u64,
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub const fn new(interval: Duration) -> RateLimit {
        RateLimit {
            interval_ms: interval.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Returns `Some(suppressed_since_last)` when a message may be written now.
    pub fn check(&self) -> Option<u64> {
        let now = monotonic_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.interval_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    // Offset by one interval's worth so the very first check always passes.
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Writes a warning through a [`RateLimit`], noting how many were dropped before it.
#[macro_export]
macro_rules! warn_limited {
    ($limit:expr, $($arg:tt)+) => {
        if let Some(dropped) = $limit.check() {
            if dropped > 0 {
                $crate::warn!("{} ({} similar messages suppressed)", format_args!($($arg)+), dropped);
            } else {
                $crate::warn!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_systemd_level_names() {
        assert_eq!(Level::parse("err"), Some(Level::Error));
        assert_eq!(Level::parse("WARNING"), Some(Level::Warn));
        assert_eq!(Level::parse("notice"), Some(Level::Info));
        assert_eq!(Level::parse("7"), Some(Level::Debug));
        assert_eq!(Level::parse("loud"), None);
    }

    #[test]
    fn rate_limit_counts_what_it_drops() {
        let limit = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.check(), Some(0));
        assert_eq!(limit.check(), None);
        assert_eq!(limit.check(), None);
        assert_eq!(limit.suppressed.load(Ordering::Relaxed), 2);
    }
}
