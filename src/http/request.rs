//! Request heads: httparse does the tokenising; this file enforces the limits and the
//! framing rules (no bodies where none belong, no Content-Length/Transfer-Encoding
//! ambiguity that request smuggling relies on).

use std::mem::MaybeUninit;

use super::response::{self, Status};

/// Largest request head accepted (request line plus headers), else 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// Longest request target accepted, else 414.
pub const MAX_URI: usize = 8 * 1024;
/// More header lines than this is 431 too; apt sends about eight.
const MAX_HEADERS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// A standard method this server does not serve: 405 with `Allow`.
    NotAllowed,
}

/// One parsed request head, borrowing from the read buffer.
#[derive(Debug)]
pub struct Request<'b> {
    pub method: Method,
    /// The path and query as sent (absolute-form targets reduced to the path).
    pub target: &'b [u8],
    pub keep_alive: bool,
    pub http10: bool,
    /// Bytes the head occupies in the buffer; the next pipelined request starts there.
    pub head_len: usize,
    /// A body follows that this server does not read (only possible with NotAllowed):
    /// the connection has to close after the answer.
    pub has_body: bool,
    pub if_match: Option<&'b [u8]>,
    pub if_unmodified_since: Option<&'b [u8]>,
    pub if_none_match: Option<&'b [u8]>,
    pub if_modified_since: Option<&'b [u8]>,
    pub range: Option<&'b [u8]>,
    pub if_range: Option<&'b [u8]>,
}

/// A request the connection cannot go on from: answered with `status`, then closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    pub status: Status,
    pub why: &'static str,
    /// The request is HTTP/1.x with x > 1, which is to be read as HTTP/1.1 (RFC 9110
    /// §2.5) but which httparse refuses: the offset of the minor digit, for the caller
    /// to rewrite to `1` before parsing again.
    pub later_minor_version_at: Option<usize>,
}

fn reject(status: Status, why: &'static str) -> Reject {
    Reject {
        status,
        why,
        later_minor_version_at: None,
    }
}

/// Parses the head at the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<Request<'_>>, Reject> {
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return incomplete(buf),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(reject(
                response::HEADER_FIELDS_TOO_LARGE,
                "too many header fields",
            ))
        }
        Err(httparse::Error::Version) => return Err(version_reject(buf)),
        Err(_) => return Err(reject(response::BAD_REQUEST, "malformed request head")),
    };
    if head_len > MAX_HEAD {
        return Err(reject(
            response::HEADER_FIELDS_TOO_LARGE,
            "request head too large",
        ));
    }
    // httparse fills all three on Complete; the defaults are never used.
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" | "PUT" | "DELETE" | "OPTIONS" | "PATCH" | "TRACE" | "CONNECT" => Method::NotAllowed,
        _ => return Err(reject(response::NOT_IMPLEMENTED, "unknown method")),
    };
    let http10 = req.version.unwrap_or(1) == 0;
    let target = match req.path.unwrap_or("").as_bytes() {
        // `OPTIONS *` (asterisk form) asks about the server as a whole: it gets the same
        // 405 with `Allow` as any OPTIONS, not a 400.
        b"*" if req.method == Some("OPTIONS") => &b"*"[..],
        // CONNECT names `host:port` (authority form); it is answered 405 all the same.
        raw if req.method == Some("CONNECT") && raw.len() <= MAX_URI => raw,
        raw => origin_form(raw)?,
    };

    let mut keep_alive = !http10;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut hosts = 0;
    let mut parsed = Request {
        method,
        target,
        keep_alive,
        http10,
        head_len,
        has_body: false,
        if_match: None,
        if_unmodified_since: None,
        if_none_match: None,
        if_modified_since: None,
        range: None,
        if_range: None,
    };
    for header in req.headers.iter() {
        let name = header.name.as_bytes();
        let value = header.value;
        // Dispatch on length first: most headers are skipped after one comparison.
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => hosts += 1,
            5 if name.eq_ignore_ascii_case(b"range") => parsed.range = Some(value),
            8 if name.eq_ignore_ascii_case(b"if-range") => parsed.if_range = Some(value),
            8 if name.eq_ignore_ascii_case(b"if-match") => parsed.if_match = Some(value),
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in value.split(|&b| b == b',') {
                    let token = trim(token);
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                        keep_alive = true;
                    }
                }
            }
            13 if name.eq_ignore_ascii_case(b"if-none-match") => parsed.if_none_match = Some(value),
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let len = parse_decimal(trim(value))
                    .ok_or(reject(response::BAD_REQUEST, "invalid Content-Length"))?;
                if content_length.is_some_and(|l| l != len) {
                    return Err(reject(response::BAD_REQUEST, "conflicting Content-Length"));
                }
                content_length = Some(len);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => chunked = true,
            17 if name.eq_ignore_ascii_case(b"if-modified-since") => {
                parsed.if_modified_since = Some(value)
            }
            19 if name.eq_ignore_ascii_case(b"if-unmodified-since") => {
                parsed.if_unmodified_since = Some(value)
            }
            _ => {}
        }
    }
    if content_length.is_some() && chunked {
        return Err(reject(
            response::BAD_REQUEST,
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if !http10 && hosts != 1 {
        return Err(reject(
            response::BAD_REQUEST,
            "HTTP/1.1 needs exactly one Host",
        ));
    }
    let has_body = chunked || content_length.is_some_and(|l| l > 0);
    if has_body && method != Method::NotAllowed {
        return Err(reject(response::BAD_REQUEST, "GET and HEAD take no body"));
    }
    parsed.keep_alive = keep_alive && !has_body;
    parsed.has_body = has_body;
    Ok(Some(parsed))
}

/// What to say about a request line httparse refused for its version: another major
/// version gets 505, HTTP/1.x with x > 1 is to be retried as HTTP/1.1, anything else
/// is not HTTP.
fn version_reject(buf: &[u8]) -> Reject {
    let line = match buf.iter().position(|&b| b == b'\n') {
        Some(end) => &buf[..end],
        None => buf,
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(space) = line.iter().rposition(|&b| b == b' ') else {
        return reject(response::BAD_REQUEST, "not an HTTP request");
    };
    match &line[space + 1..] {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor] if minor.is_ascii_digit() => Reject {
            later_minor_version_at: Some(space + 8),
            ..reject(response::BAD_REQUEST, "a later HTTP/1 minor version")
        },
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            reject(
                response::HTTP_VERSION_NOT_SUPPORTED,
                "not HTTP/1 (this server speaks HTTP/1.1)",
            )
        }
        _ => reject(response::BAD_REQUEST, "not an HTTP request"),
    }
}

/// An incomplete head: wait for more, unless it is already over a limit.
fn incomplete(buf: &[u8]) -> Result<Option<Request<'_>>, Reject> {
    // No end of the request line yet and already longer than any allowed one.
    if buf.len() > MAX_URI + 32 && !buf[..MAX_URI + 32].contains(&b'\n') {
        return Err(reject(response::URI_TOO_LONG, "request target too long"));
    }
    if buf.len() >= MAX_HEAD {
        return Err(reject(
            response::HEADER_FIELDS_TOO_LARGE,
            "request head too large",
        ));
    }
    Ok(None)
}

/// Reduces the request target to a path: origin-form as is, absolute-form
/// (`http://host/path`, which servers must accept) to its path.
fn origin_form(target: &[u8]) -> Result<&[u8], Reject> {
    if target.len() > MAX_URI {
        return Err(reject(response::URI_TOO_LONG, "request target too long"));
    }
    if target.first() == Some(&b'/') {
        return Ok(target);
    }
    for scheme in [&b"http://"[..], b"https://"] {
        if target.len() > scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &target[scheme.len()..];
            return Ok(match rest.iter().position(|&b| b == b'/') {
                Some(at) => &rest[at..],
                None => b"/",
            });
        }
    }
    Err(reject(
        response::BAD_REQUEST,
        "request target is not a path",
    ))
}

fn parse_decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 {
        return None;
    }
    text.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Strips spaces and tabs (`<[u8]>::trim_ascii` needs a newer Rust than our MSRV).
pub fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// The path part of a target, without `?query`.
pub fn path_of(target: &[u8]) -> &[u8] {
    match target.iter().position(|&b| b == b'?') {
        Some(at) => &target[..at],
        None => target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(buf: &[u8]) -> u16 {
        match parse(buf) {
            Ok(Some(_)) => 200,
            Ok(None) => 0,
            Err(r) => r.status.code,
        }
    }

    #[test]
    fn options_asterisk_is_a_method_question_not_a_bad_path() {
        let req = parse(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.method, Method::NotAllowed);
        assert!(parse(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n").is_err());
    }

    #[test]
    fn parses_an_apt_request() {
        let buf = b"GET /debian/dists/bookworm/InRelease HTTP/1.1\r\nHost: deb\r\n\
            Cache-Control: max-age=0\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
            User-Agent: Debian APT-HTTP/1.3 (2.6.1)\r\n\r\nGET /next";
        let req = parse(buf).unwrap().unwrap();
        assert_eq!(req.method, Method::Get);
        assert_eq!(req.target, b"/debian/dists/bookworm/InRelease");
        assert!(req.keep_alive);
        assert_eq!(&buf[req.head_len..], b"GET /next");
        assert_eq!(
            req.if_modified_since,
            Some(&b"Sun, 06 Nov 1994 08:49:37 GMT"[..])
        );
    }

    #[test]
    fn keep_alive_rules() {
        let req = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!req.keep_alive);
        let req = parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(req.keep_alive);
        let req = parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x, close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!req.keep_alive);
    }

    #[test]
    fn bad_input_gets_its_status() {
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\n"), 0);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost a\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n"), 501);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
            200
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            400
        );
        assert_eq!(status(b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(MAX_URI));
        assert_eq!(status(long.as_bytes()), 414);
        let long = format!("GET /{}", "a".repeat(MAX_URI + 100));
        assert_eq!(status(long.as_bytes()), 414);
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert_eq!(status(big.as_bytes()), 431);
        let many = format!(
            "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
            "X: 1\r\n".repeat(100)
        );
        assert_eq!(status(many.as_bytes()), 431);
    }

    #[test]
    fn versions_other_than_1_0_and_1_1() {
        let buf = b"GET / HTTP/1.2\r\nHost: a\r\n\r\n";
        let r = parse(buf).unwrap_err();
        assert_eq!(r.later_minor_version_at, Some(13));
        assert_eq!(buf[13], b'2');
        assert_eq!(status(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
        assert_eq!(status(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 505);
        assert_eq!(status(b"GET / HTTX/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.10\r\nHost: a\r\n\r\n"), 400);
    }

    #[test]
    fn connect_is_a_method_not_allowed_not_a_bad_path() {
        let req = parse(b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.method, Method::NotAllowed);
        assert_eq!(
            status(b"GET example.org:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
            400
        );
    }

    #[test]
    fn absolute_form_becomes_a_path() {
        let req = parse(b"GET http://deb.example/pool/a.deb?x HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.target, b"/pool/a.deb?x");
        assert_eq!(path_of(req.target), b"/pool/a.deb");
    }
}
