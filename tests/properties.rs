//! Property tests for every parser of outside bytes: request heads, ranges and
//! conditionals, URL paths, TARGET, `--listen`, time spans, the activation environment,
//! htpasswd files and `Authorization` values. The properties themselves live in
//! fuzz/src/lib.rs, shared with the fuzz targets; here proptest feeds them inputs shaped
//! like the real ones, in bounded counts.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

#[path = "../fuzz/src/lib.rs"]
mod checks;

use checks::Conditionals;

/// Enough cases to reach the interesting shapes; the whole file runs in a few seconds.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Picks one of `options` (owned, so strategies stay `'static`).
fn one_of(options: &[&str]) -> impl Strategy<Value = String> {
    select(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

fn request_line() -> impl Strategy<Value = String> {
    let method = one_of(&[
        "GET", "HEAD", "POST", "OPTIONS", "CONNECT", "BREW", "get", "",
    ]);
    let target = one_of(&[
        "/",
        "/debian/dists/bookworm/InRelease",
        "/pool/a%20b.deb?x=1",
        "*",
        "http://mirror/debian/",
        "https://m",
        "mirror:443",
        "/a b",
        "",
    ]);
    let version = one_of(&[
        "HTTP/1.1",
        "HTTP/1.0",
        "HTTP/1.2",
        "HTTP/1.9",
        "HTTP/2.0",
        "HTTP/1.10",
        "HTTP/1.",
    ]);
    (method, target, version).prop_map(|(m, t, v)| format!("{m} {t} {v}"))
}

fn header_line() -> impl Strategy<Value = String> {
    let name = one_of(&[
        "Host",
        "host",
        "Connection",
        "Content-Length",
        "Transfer-Encoding",
        "Range",
        "If-Range",
        "If-Match",
        "If-None-Match",
        "If-Modified-Since",
        "If-Unmodified-Since",
        "User-Agent",
        "Bad Name",
    ]);
    let value = one_of(&[
        "deb.debian.org",
        "[::1]:8080",
        "a/b",
        "close",
        "keep-alive, close",
        "0",
        "12",
        "-1",
        "99999999999999999999",
        "chunked",
        "gzip, chunked",
        "chunked, gzip",
        "bytes=0-99",
        "bytes=-5",
        "*",
        "W/\"x\"",
        "Sat, 10 Jun 2023 09:54:39 GMT",
        "Debian APT-HTTP/1.3 (2.6.1)",
        "",
    ]);
    (name, value).prop_map(|(n, v)| format!("{n}: {v}"))
}

/// A head of real-looking lines, possibly cut short or followed by more bytes.
fn head() -> impl Strategy<Value = Vec<u8>> {
    let eol = one_of(&["\r\n", "\n"]);
    (
        request_line(),
        vec(header_line(), 0..8),
        eol,
        any::<bool>(),
        vec(any::<u8>(), 0..16),
    )
        .prop_map(|(line, headers, eol, complete, tail)| {
            let mut text = line;
            for header in headers {
                text += &eol;
                text += &header;
            }
            text += &eol;
            if complete {
                text += &eol;
            }
            let mut bytes = text.into_bytes();
            bytes.extend(tail);
            bytes
        })
}

/// Dates in the three forms, some invalid, all with years a server can meet.
fn date() -> impl Strategy<Value = String> {
    (0i64..100_000, 0u8..40, 0u8..26, any::<bool>()).prop_map(|(year, day, hour, imf)| {
        if imf {
            format!("Sat, {day:02} Jun {year} {hour:02}:54:39 GMT")
        } else {
            format!(
                "Saturday, {day:02}-Jun-{:02} {hour:02}:54:39 GMT",
                year % 100
            )
        }
    })
}

fn range_value() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        Just(String::new()),
        (0u64..200).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("18446744073709551615".to_string()),
        Just("99999999999999999999".to_string()),
    ];
    let unit = one_of(&["bytes=", "BYTES=", "bytes = ", "items=", "bytes"]);
    let space = one_of(&["", " ", "\t"]);
    (unit, number.clone(), space, number, any::<bool>()).prop_map(|(u, a, s, b, two)| {
        let spec = format!("{u}{a}{s}-{s}{b}");
        if two {
            format!("{spec},0-1")
        } else {
            spec
        }
    })
}

fn file_len() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..300, Just(u64::MAX), any::<u64>()]
}

fn validator() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        date().prop_map(String::into_bytes),
        Just(b"\"6483c85f-64\"".to_vec()),
        Just(b"W/\"6483c85f-64\", *".to_vec()),
        vec(any::<u8>(), 0..40),
    ]
}

fn url_path() -> impl Strategy<Value = Vec<u8>> {
    let segment = one_of(&[
        "a", "deb", ".", "..", "", "%2e%2e", "%2E.", ".%2e", "a%2f..", "%2f", "%5c", "\\", "%00",
        "%", "%z1", "%2", "b%20c", "%C3%A9", "...",
    ]);
    (any::<bool>(), vec(segment, 0..8), vec(any::<u8>(), 0..4)).prop_map(
        |(leading, segments, tail)| {
            let mut path = if leading { b"/".to_vec() } else { Vec::new() };
            path.extend_from_slice(segments.join("/").as_bytes());
            path.extend(tail);
            path
        },
    )
}

fn address() -> impl Strategy<Value = String> {
    let host = one_of(&[
        "",
        "127.0.0.1",
        "::1",
        "[::1]",
        "[::1",
        "fe80::1%eth0",
        "host",
        "deb.debian.org",
        ":",
        "::",
        "[fe80::1%2]",
        "/run/aptly.sock",
        "@abstract",
        "@",
        "run/x.sock",
    ]);
    let port = one_of(&["", ":80", ":8080", ":08080", ":0", ":65536", ":http", ":"]);
    (host, port, "[ -~]{0,3}").prop_map(|(h, p, noise)| format!("{h}{p}{noise}"))
}

fn span() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        (0u64..1000).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("1.5".to_string()),
        Just(".".to_string()),
        Just("9".repeat(400)),
        Just("1e400".to_string()),
    ];
    let unit = one_of(&[
        "", "s", "ms", "us", "µs", "min", "h", "d", "w", "M", "y", "parsecs",
    ]);
    (vec((number, one_of(&["", " "]), unit), 0..4), any::<bool>()).prop_map(|(parts, inf)| {
        if inf {
            return "infinity".to_string();
        }
        parts
            .into_iter()
            .map(|(n, s, u)| format!("{n}{s}{u}"))
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// htpasswd lines: real ones (tests/fixtures/auth.htpasswd) and their near misses.
fn htpasswd_file() -> impl Strategy<Value = Vec<u8>> {
    let fixture = include_str!("fixtures/auth.htpasswd");
    let hashes: Vec<String> = fixture
        .lines()
        .filter_map(|l| l.split_once(':').filter(|_| !l.starts_with('#')))
        .map(|(_, h)| h.to_owned())
        .collect();
    let hash = (select(hashes), 0..80usize, any::<u8>()).prop_map(|(h, cut, c)| {
        let mut h = h.into_bytes();
        // As written, cut short, or with one byte changed.
        match cut % 3 {
            0 => {}
            1 => h.truncate(cut),
            _ => {
                let at = cut % h.len();
                h[at] = c;
            }
        }
        h
    });
    let user = one_of(&["alice", "bob", "", "a b", "#c", "ü", " alice "]);
    let line = (
        user,
        one_of(&[":", "", "::"]),
        hash,
        one_of(&["", ":x", "\r", " "]),
    )
        .prop_map(|(u, sep, h, end)| [u.as_bytes(), sep.as_bytes(), &h, end.as_bytes()].concat());
    let line =
        prop_oneof![4 => line, 1 => one_of(&["", "# c", "  ", "\r"]).prop_map(String::into_bytes)];
    vec(line, 0..6).prop_map(|lines| lines.join(&b'\n'))
}

fn user_pass() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        one_of(&["alice:alice-secret", "a:b:c", ":", "nocolon", "ü:ß", ""])
            .prop_map(String::into_bytes),
        vec(any::<u8>(), 0..80),
        vec(any::<u8>(), 3000..3100),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn request_heads(bytes in head()) {
        checks::head(&bytes);
    }

    #[test]
    fn request_heads_of_any_bytes(bytes in vec(any::<u8>(), 0..200)) {
        checks::head(&bytes);
    }

    #[test]
    fn ranges(value in range_value(), len in file_len()) {
        checks::range(value.as_bytes(), len);
    }

    #[test]
    fn conditionals(
        head in any::<bool>(),
        if_match in proptest::option::of(validator()),
        if_unmodified_since in proptest::option::of(validator()),
        if_none_match in proptest::option::of(validator()),
        if_modified_since in proptest::option::of(validator()),
        range in proptest::option::of(range_value().prop_map(String::into_bytes)),
        if_range in proptest::option::of(validator()),
        len in file_len(),
        mtime in prop_oneof![Just(1_686_390_879i64), any::<i64>()],
        age in -5i64..5,
    ) {
        let headers = Conditionals {
            head,
            if_match,
            if_unmodified_since,
            if_none_match,
            if_modified_since,
            range,
            if_range,
        };
        checks::plan(&headers, len, mtime, mtime.saturating_add(age));
    }

    #[test]
    fn url_paths(path in url_path()) {
        checks::resolve(&path);
    }

    #[test]
    fn proxy_targets(text in prop_oneof![address(), any::<String>()]) {
        checks::target(&text);
    }

    #[test]
    fn listen_addresses(text in prop_oneof![address(), any::<String>()]) {
        checks::listen(&text);
    }

    #[test]
    fn time_spans(text in prop_oneof![span(), any::<String>()]) {
        checks::timespan(&text);
    }

    #[test]
    fn activation_environment(
        pid in proptest::option::of(one_of(&["42", " 42", "41", "", "-42", "4294967338"])),
        count in proptest::option::of(one_of(&["0", "1", "2", " 3 ", "+2", "-1", "4096", "4097", "x"])),
        names in proptest::option::of(one_of(&["", "web", "web:local", "a:b:c", ":", "::"])),
    ) {
        checks::activation_env(pid.as_deref(), count.as_deref(), names.as_deref(), 42);
    }

    #[test]
    fn htpasswd_files(text in prop_oneof![htpasswd_file(), vec(any::<u8>(), 0..200)]) {
        checks::htpasswd(&text);
    }

    #[test]
    fn authorization_values(
        user_pass in user_pass(),
        scheme in one_of(&["Basic ", "basic  ", "Bearer ", "Basic", " BASIC "]),
        padded in any::<bool>(),
    ) {
        let token = checks::base64(&user_pass);
        let token = if padded { &token[..] } else { token.trim_end_matches('=') };
        checks::authorization(format!("{scheme}{token}").as_bytes(), &user_pass);
    }
}

/// Fuzz finding: a date with a huge year, or a negative hour, overflowed
/// `parse_http_date`'s arithmetic: a panic with overflow checks (debug builds, tests) and
/// a wrapped, arbitrary timestamp in release builds; a small negative hour was taken as a
/// valid date.
#[test]
fn a_date_with_a_huge_year_or_a_negative_time_is_not_a_date() {
    use ringsock::http::response::parse_http_date;
    for date in [
        "Sat, 10 Jun 300000000000 00:00:00 GMT",
        "Saturday, 10-Jun-9223372036854775807 00:00:00 GMT",
        "Sat Jun 10 00:00:00 -9223372036854775808",
        "u, 1 Jun 2 -9555559555557555:54:39 GMT",
        "Sat, 11 Jun 2023 -24:54:39 GMT",
    ] {
        assert_eq!(parse_http_date(date.as_bytes()), None, "{date}");
        for header in 0..3 {
            let mut headers = Conditionals {
                range: Some(b"bytes=0-0".to_vec()),
                ..Conditionals::default()
            };
            let value = Some(date.as_bytes().to_vec());
            match header {
                0 => headers.if_unmodified_since = value,
                1 => headers.if_modified_since = value,
                _ => headers.if_range = value,
            }
            checks::plan(&headers, 100, 1_686_390_879, 1_686_390_979);
        }
    }
}
