//! The flags' value parsers, named in each flag's `value_parser = ...`: a value is typed
//! where its flag is declared, and clap puts the flag's name in front of every error
//! ("invalid value 'soon' for '--exit-idle-time <TIMESPAN>': ..."), so no message here
//! repeats it. Values whose syntax belongs to a type elsewhere (`ListenAddr`, `IpRange`,
//! systemd time spans) are parsed by that type; these add what only the flags decide.

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use crate::admission::proxy_header::Version;
use crate::log::Level;

/// A systemd time span, `None` for infinity. An alias rather than `Option<Duration>`
/// written out, which clap's derive would take for an optional flag.
pub type Timespan = Option<Duration>;

/// A systemd time span or infinity: `500ms`, `30s`, `5min`, `1h 30s`, `infinity`.
pub fn timespan(text: &str) -> Result<Timespan, String> {
    crate::systemd::timespan::parse(text)
}

/// A time span that must end: the timeouts a connection cannot be left without.
pub fn finite_timespan(text: &str) -> Result<Duration, String> {
    timespan(text)?.ok_or_else(|| "cannot be infinity".into())
}

/// A count of at least 1: `--threads`, `-c`, `--per-client-burst`. Not clap's range
/// parser, whose message would read "0 is not in 1..=18446744073709551615".
pub fn at_least_one<T>(text: &str) -> Result<T, String>
where
    T: FromStr + Default + PartialEq,
    T::Err: Display,
{
    nonzero(text, "must be at least 1")
}

/// `--per-client-connections`: 0 is refused, not taken for "no limit".
pub fn per_client_max(text: &str) -> Result<u32, String> {
    nonzero(text, "must be at least 1 (leave it out for no limit)")
}

/// `--io-threads`.
pub fn io_threads(text: &str) -> Result<usize, String> {
    nonzero(
        text,
        "must be at least 1: files that are not cached need a thread to be read without \
         stalling a worker",
    )
}

fn nonzero<T>(text: &str, zero: &str) -> Result<T, String>
where
    T: FromStr + Default + PartialEq,
    T::Err: Display,
{
    match text.parse::<T>() {
        Ok(n) if n == T::default() => Err(zero.into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// `--per-client-rate`: requests a second, `R` or `R/s`, at least 1.
pub fn per_second(text: &str) -> Result<u32, String> {
    match text.strip_suffix("/s").unwrap_or(text).parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("give requests per second as a whole number, e.g. 40 or 40/s".into()),
    }
}

/// `--log-level`: the names systemd takes for `SYSTEMD_LOG_LEVEL` too.
pub fn log_level(text: &str) -> Result<Level, String> {
    Level::parse(text).ok_or_else(|| "use error, warning, info or debug".into())
}

/// `-p/--proxy-protocol=VERSION`.
pub fn proxy_version(text: &str) -> Result<Version, String> {
    match text {
        "v1" | "1" => Ok(Version::V1),
        "v2" | "2" => Ok(Version::V2),
        _ => Err("use v1 (the default) or v2".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_spans_allow_infinity_unless_they_must_end() {
        assert_eq!(timespan("5min"), Ok(Some(Duration::from_secs(300))));
        assert_eq!(timespan("infinity"), Ok(None));
        assert!(timespan("soon").unwrap_err().contains("expected a number"));
        assert_eq!(finite_timespan("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(
            finite_timespan("infinity").unwrap_err(),
            "cannot be infinity"
        );
        assert!(finite_timespan("").unwrap_err().contains("empty time span"));
    }

    #[test]
    fn counts_refuse_zero_and_say_why() {
        assert_eq!(at_least_one::<usize>("16384"), Ok(16384));
        assert_eq!(at_least_one::<u32>("0").unwrap_err(), "must be at least 1");
        assert!(at_least_one::<usize>("many")
            .unwrap_err()
            .contains("invalid digit"));
        assert!(at_least_one::<u32>("4294967296")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(per_client_max("12"), Ok(12));
        assert!(per_client_max("0").unwrap_err().contains("no limit"));
        assert_eq!(io_threads("32"), Ok(32));
        assert!(io_threads("0").unwrap_err().contains("stalling a worker"));
    }

    #[test]
    fn a_rate_is_a_whole_number_a_second() {
        assert_eq!(per_second("40"), Ok(40));
        assert_eq!(per_second("40/s"), Ok(40));
        for bad in ["0", "0/s", "4x", "40/min", "1.5", "", "/s"] {
            assert!(per_second(bad).unwrap_err().contains("e.g. 40"), "{bad}");
        }
    }

    #[test]
    fn log_levels_and_proxy_versions() {
        assert_eq!(log_level("warning"), Ok(Level::Warn));
        assert_eq!(log_level("err"), Ok(Level::Error));
        assert!(log_level("loud").unwrap_err().contains("debug"));
        assert_eq!(proxy_version("v1"), Ok(Version::V1));
        assert_eq!(proxy_version("2"), Ok(Version::V2));
        assert!(proxy_version("v3").unwrap_err().contains("v1"));
    }
}
