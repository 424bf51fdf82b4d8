//! The properties every parser of outside bytes must keep, shared by the fuzz targets
//! (raw bytes from libFuzzer) and tests/properties.rs (structured cases from proptest),
//! so both check one definition. Each function panics when a property fails.

use std::time::Duration;

use ringsock::http::auth::header::{self as auth_header, MAX_VALUE};
use ringsock::http::auth::Htpasswd;
use ringsock::http::files::{self, FileInfo, Plan};
use ringsock::http::request::{self, Method, Request, MAX_HEAD, MAX_URI};
use ringsock::proxy::Target;
use ringsock::systemd::activation::{parse_environment, ListenAddr};
use ringsock::systemd::timespan;

/// A request head as the serve loop sees it: `parse_head` on the unanswered bytes.
pub fn head(bytes: &[u8]) {
    let plain = request::parse(bytes);
    if let Ok(Some(req)) = &plain {
        check_request(req, bytes.len());
    }
    let mut buf = bytes.to_vec();
    let head_len = match request::parse_head(&mut buf) {
        Ok(Some(req)) => {
            check_request(&req, bytes.len());
            // A head that parses as sent needs no rewrite.
            if let Ok(Some(plain)) = &plain {
                assert_eq!(plain.head_len, req.head_len);
                assert_eq!((plain.path, plain.query), (req.path, req.query));
                assert_eq!(&*req.line_as_sent(), plain.line);
            }
            for info in [
                FileInfo::new(0, 0, 0),
                FileInfo::new(1000, 1_700_000_000, 1_700_000_100),
            ] {
                check_plan(&info, &req);
            }
            Some(req.head_len)
        }
        // The serve loop waits for more only while the buffer can still hold a head.
        Ok(None) => {
            assert!(
                bytes.len() < MAX_HEAD,
                "incomplete at {} bytes",
                bytes.len()
            );
            None
        }
        Err(_) => None,
    };
    // The only rewrite is an HTTP/1.x minor digit lowered to 1.
    for (before, after) in bytes.iter().zip(&buf) {
        assert!(before == after || (b"23456789".contains(before) && *after == b'1'));
    }
    if let Some(head_len) = head_len {
        split_reads(&buf[..head_len]);
    }
}

/// A complete head arriving in two reads: the first part must only ever wait for more
/// (a 400 there would refuse a request that TCP happened to split), and the whole
/// parses the same without what followed it.
fn split_reads(head: &[u8]) {
    let whole = request::parse(head);
    assert!(
        matches!(&whole, Ok(Some(req)) if req.head_len == head.len()),
        "the head alone parses as {whole:?}"
    );
    for cut in [head.len() - 1, head.len() / 2, head.len() / 3] {
        let mut part = head[..cut].to_vec();
        let result = request::parse_head(&mut part);
        assert!(
            matches!(result, Ok(None)),
            "{cut} of {} bytes of a valid head parse as {result:?}",
            head.len()
        );
    }
}

fn check_request(req: &Request<'_>, buf_len: usize) {
    assert!(req.head_len <= buf_len && req.head_len <= MAX_HEAD);
    assert!(req.path.len() <= MAX_URI, "path of {}", req.path.len());
    // Only what is refused anyway (405: CONNECT's authority, OPTIONS *) may carry a
    // target that is not a path.
    if !matches!(req.method, Method::Other | Method::Refused) {
        assert_eq!(req.path.first(), Some(&b'/'));
        // A fragment never reaches the path or the query, nor the query the path.
        assert!(!req.path.contains(&b'#') && !req.query.is_some_and(|q| q.contains(&b'#')));
        assert!(!req.path.contains(&b'?'));
    }
    if req.has_body() {
        assert!(matches!(req.method, Method::Other | Method::Refused));
    }
    // The head a route copies is exactly what was parsed.
    assert_eq!(req.head.len(), req.head_len);
}

/// `files::plan` for any head: a partial answer lies within the file.
pub fn check_plan(info: &FileInfo, req: &Request<'_>) {
    if let Plan::Partial { first, last } = files::plan(info, req) {
        assert!(
            first <= last && last < info.len,
            "{first}-{last} of {}",
            info.len
        );
    }
}

/// A `Range` value for a file of `len` bytes.
pub fn range(value: &[u8], len: u64) {
    if let files::RangeSpec::Bytes { first, last } = files::parse_range(value, len) {
        assert!(first <= last && last < len, "{first}-{last} of {len}");
    }
}

/// The conditional and range headers a GET or HEAD can carry, in [`Request`]'s order.
#[derive(Clone, Debug, Default)]
pub struct Conditionals {
    pub head: bool,
    pub if_match: Option<Vec<u8>>,
    pub if_unmodified_since: Option<Vec<u8>>,
    pub if_none_match: Option<Vec<u8>>,
    pub if_modified_since: Option<Vec<u8>>,
    pub range: Option<Vec<u8>>,
    pub if_range: Option<Vec<u8>>,
}

/// `files::plan` on a head made of these header values.
pub fn plan(headers: &Conditionals, len: u64, mtime: i64, now: i64) {
    let req = Request {
        line: b"GET /f HTTP/1.1",
        head: b"",
        method_name: b"GET",
        method: if headers.head {
            Method::Head
        } else {
            Method::Get
        },
        path: b"/f",
        query: None,
        minor_sent: None,
        keep_alive: true,
        http10: false,
        head_len: 0,
        framing: request::Framing::None,
        other_codings: false,
        expect: None,
        authorization: None,
        if_match: headers.if_match.as_deref(),
        if_unmodified_since: headers.if_unmodified_since.as_deref(),
        if_none_match: headers.if_none_match.as_deref(),
        if_modified_since: headers.if_modified_since.as_deref(),
        range: headers.range.as_deref(),
        if_range: headers.if_range.as_deref(),
        user_agent: None,
        referer: None,
    };
    check_plan(&FileInfo::new(len, mtime, now), &req);
}

/// A URL path turned into a path under the root: never one that leaves it.
pub fn resolve(path: &[u8]) {
    let mut decoded = files::RelPath::default();
    if decoded.decode(path).is_err() {
        return;
    }
    let c_path = decoded
        .as_c_str()
        .expect("a decoded path is NUL-terminated");
    let name = decoded.as_bytes();
    let rel = c_path.to_bytes_with_nul();
    assert_eq!(c_path.to_bytes(), name, "{rel:?} has an inner NUL");
    assert!(
        !name.is_empty() && name[0] != b'/',
        "{rel:?} is not relative"
    );
    assert!(!name.contains(&b'\\'), "{rel:?} has a backslash");
    if name != b"." {
        for segment in name.split(|&b| b == b'/') {
            assert!(
                !matches!(segment, b"" | b"." | b".."),
                "{rel:?} has a {segment:?} segment"
            );
        }
    }
}

/// A proxy TARGET: what parses keeps the limits checked for it and prints back as the
/// same TARGET (the form logs and STATUS= show).
pub fn target(text: &str) {
    let Ok(target) = Target::parse(text) else {
        return;
    };
    match &target {
        Target::Path(path) => assert!(path.as_os_str().len() <= 107 && text.starts_with('/')),
        Target::Abstract(name) => assert!(!name.is_empty() && name.len() <= 107),
        Target::Host { host, .. } => {
            assert!(!host.is_empty() && !host.contains('/'));
            assert!(!host.contains(':') || host.contains('%'), "host {host:?}");
        }
        Target::Addr(_) => {}
    }
    assert_eq!(Target::parse(&target.to_string()), Ok(target));
}

/// A `--listen` address: printed back, it parses to the same address.
pub fn listen(text: &str) {
    if let Ok(addr) = ListenAddr::parse(text) {
        assert_eq!(ListenAddr::parse(&addr.to_string()), Ok(addr));
    }
}

/// A systemd time span: any span accepted can be added to a deadline and counted in
/// microseconds, as systemd's own 64-bit µs representation can.
pub fn timespan(text: &str) {
    match timespan::parse(text) {
        Ok(Some(span)) => {
            assert!(span.as_micros() < u128::from(u64::MAX), "{span:?}");
            let _ = std::time::Instant::now() + span;
            let _ = span.saturating_add(Duration::from_secs(1));
        }
        Ok(None) => assert_eq!(text.trim(), "infinity"),
        Err(_) => {}
    }
}

/// LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES: accepted only for our pid, with one name
/// per fd, each name exactly as listed.
pub fn activation_env(pid: Option<&str>, count: Option<&str>, names: Option<&str>, our: u32) {
    let Ok(Some(listed)) = parse_environment(pid, count, names, our) else {
        return;
    };
    assert_eq!(pid.and_then(|p| p.trim().parse().ok()), Some(our));
    let count: i32 = count.and_then(|c| c.trim().parse().ok()).expect("a count");
    assert!((0..=4096).contains(&count) && listed.len() == count as usize);
    match names {
        Some(names) => assert_eq!(listed.join(":"), names),
        None => assert!(listed.iter().all(|n| n == "unknown")),
    }
}

/// An htpasswd file: a file that is read has a user; one that is refused says why at a
/// line that is in it (`origin:N: ...`), or of the whole file (`origin: ...`).
pub fn htpasswd(text: &[u8]) {
    match Htpasswd::parse(text, "f") {
        Ok(file) => assert!(!file.is_empty()),
        Err(why) => {
            let rest = why.strip_prefix("f:").expect("the error names the file");
            if let Some((line, _)) = rest.split_once(": ") {
                if let Ok(line) = line.parse::<usize>() {
                    let lines = text.split(|&b| b == b'\n').count();
                    assert!((1..=lines).contains(&line), "line {line} of {lines}");
                }
            }
        }
    }
}

/// An `Authorization` value as sent, and `user:password` as a client encodes it: what
/// is read is what was encoded, split at the first colon.
pub fn authorization(value: &[u8], user_pass: &[u8]) {
    if let Some(read) = auth_header::parse_basic(value) {
        assert!(value.len() <= MAX_VALUE && !read.user.contains(&b':'));
        // Base64 takes 4 bytes for every 3.
        assert!((read.user.len() + 1 + read.password.len()) * 4 <= value.len() * 3);
    }
    let encoded = format!("Basic {}", base64(user_pass));
    let read = auth_header::parse_basic(encoded.as_bytes());
    let colon = user_pass.iter().position(|&b| b == b':');
    match (colon, read) {
        (Some(at), Some(read)) => {
            assert_eq!(read.user, &user_pass[..at]);
            assert_eq!(read.password, &user_pass[at + 1..]);
        }
        (Some(_), None) => assert!(encoded.len() > MAX_VALUE, "{encoded:?} refused"),
        (None, read) => assert_eq!(read, None),
    }
}

/// Standard base64 with padding, as RFC 7617 has clients send it; written here so the
/// property does not take the parser's own decoder on trust.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
