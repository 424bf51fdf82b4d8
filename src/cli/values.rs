//! The flags' value parsers, named in each flag's `value_parser = ...`: a value is typed
//! where its flag is declared, and clap puts the flag's name in front of every error
//! ("invalid value 'soon' for '--exit-idle-time <TIMESPAN>': ..."), so no message here
//! repeats it. Values whose syntax belongs to a type elsewhere (`ListenAddr`, `IpRange`,
//! systemd time spans) are parsed by that type; these add what only the flags decide.

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use crate::admission::networks::IpRange;
use crate::admission::proxy_header::Version;
use crate::log::Level;
use crate::proxy::Target;

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

/// `--route PREFIX=TARGET`: TARGET in the proxy's syntax.
pub fn route(text: &str) -> Result<(String, Target), String> {
    let (prefix, target) = prefixed(text, "TARGET", "/api/=/home/archive/aptly.sock")?;
    Ok((prefix, Target::parse(target)?))
}

/// `--route-allow PREFIX=CIDR`.
pub fn route_allow(text: &str) -> Result<(String, IpRange), String> {
    let (prefix, range) = prefixed(text, "CIDR", "/api/=10.0.0.0/8")?;
    Ok((prefix, range.parse()?))
}

/// `--route-auth PREFIX=FILE`.
pub fn route_auth(text: &str) -> Result<(String, std::path::PathBuf), String> {
    let (prefix, file) = prefixed(text, "FILE", "/api/=/etc/ringsock/aptly.htpasswd")?;
    Ok((prefix, file.into()))
}

/// `PREFIX=VALUE`, the prefix a path: it starts with `/`, and is printable ASCII with no
/// quote or backslash (it names the route in /metrics' labels).
fn prefixed<'a>(text: &'a str, what: &str, example: &str) -> Result<(String, &'a str), String> {
    let Some((prefix, value)) = text.split_once('=') else {
        return Err(format!("expected PREFIX={what}, e.g. {example}"));
    };
    let printable = |c: char| c.is_ascii_graphic() && c != '"' && c != '\\';
    if !prefix.starts_with('/') || !prefix.chars().all(printable) {
        return Err(format!(
            "the prefix {prefix:?} is not a path: it starts with / and has no spaces, quotes \
             or backslashes, e.g. {example}"
        ));
    }
    Ok((prefix.to_string(), value))
}

/// A size in bytes, with nginx's suffixes: `512k`, `100m`, `2g` (powers of 1024).
pub fn size(text: &str) -> Result<u64, String> {
    let lower = text.to_ascii_lowercase();
    let (digits, shift) = match lower.as_bytes().last() {
        Some(b'k') => (&lower[..lower.len() - 1], 10),
        Some(b'm') => (&lower[..lower.len() - 1], 20),
        Some(b'g') => (&lower[..lower.len() - 1], 30),
        _ => (&lower[..], 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| "give a size in bytes, or with k, m or g, e.g. 2g".into())
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
    fn routes_and_sizes() {
        let (prefix, target) = route("/api/=/home/archive/aptly.sock").unwrap();
        assert_eq!(prefix, "/api/");
        assert_eq!(target, Target::parse("/home/archive/aptly.sock").unwrap());
        assert_eq!(route("/api/=127.0.0.1:8080").unwrap().0, "/api/");
        assert!(route("/api/").unwrap_err().contains("PREFIX=TARGET"));
        assert!(route("api/=/x.sock").unwrap_err().contains("not a path"));
        assert!(route("/a\"b/=/x.sock").unwrap_err().contains("not a path"));
        assert!(route("/api/=").unwrap_err().contains("TARGET"));
        assert!(route_allow("/api/=10.0.0.0/33")
            .unwrap_err()
            .contains("0 to 32"));
        assert_eq!(size("2g"), Ok(2 << 30));
        assert_eq!(size("512K"), Ok(512 << 10));
        assert_eq!(size("1000"), Ok(1000));
        assert!(size("1.5g").unwrap_err().contains("e.g. 2g"));
        assert!(size("99999999999g").is_err());
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
