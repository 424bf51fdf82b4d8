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
    /// POST, PUT, DELETE, OPTIONS or PATCH: passed on by a route (`--route`), answered
    /// 405 with `Allow` anywhere else.
    Other,
    /// TRACE and CONNECT: 405 everywhere, as nginx answers them.
    Refused,
}

/// How a message's body is delimited (RFC 9112 §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// An answer that ends when its sender closes (HTTP/1.0, no length); never a request.
    UntilClose,
}

/// One parsed request head, borrowing from the read buffer.
#[derive(Debug)]
pub struct Request<'b> {
    /// The request line without its CR LF, for the access log (see [`Request::line_as_sent`]).
    pub line: &'b [u8],
    /// The whole head as received, request line to the empty line: a route copies its
    /// header lines.
    pub head: &'b [u8],
    pub method: Method,
    /// The method as sent (`POST`), for a route.
    pub method_name: &'b [u8],
    /// The path as sent, still percent-encoded: the target without its query and
    /// fragment, an absolute-form target reduced to its path (`/` when it has none).
    pub path: &'b [u8],
    /// What followed `?`, if anything did.
    pub query: Option<&'b [u8]>,
    /// The HTTP/1.x minor digit the client sent, when it was above 1 and the line was
    /// read as HTTP/1.1.
    pub minor_sent: Option<u8>,
    pub keep_alive: bool,
    pub http10: bool,
    /// Bytes the head occupies in the buffer; the next pipelined request starts there.
    pub head_len: usize,
    /// Where the body ends. Only a route reads a body: any other answer to a request
    /// with one closes the connection, the body unread.
    pub framing: Framing,
    /// A transfer coding before the final `chunked` (`gzip, chunked`), which a route
    /// cannot pass on after decoding the chunks: 501 there.
    pub other_codings: bool,
    /// The `Expect` value, if any: a route answers `100-continue` itself, anything else
    /// 417.
    pub expect: Option<&'b [u8]>,
    /// The `Authorization` value, for a route's `--route-auth`.
    pub authorization: Option<&'b [u8]>,
    pub if_match: Option<&'b [u8]>,
    pub if_unmodified_since: Option<&'b [u8]>,
    pub if_none_match: Option<&'b [u8]>,
    pub if_modified_since: Option<&'b [u8]>,
    pub range: Option<&'b [u8]>,
    pub if_range: Option<&'b [u8]>,
    /// For the access log.
    pub user_agent: Option<&'b [u8]>,
    pub referer: Option<&'b [u8]>,
}

/// A request the connection cannot go on from: answered with `status`, then closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    pub status: Status,
    pub why: &'static str,
}

fn reject(status: Status, why: &'static str) -> Reject {
    Reject { status, why }
}

/// Parses the head at the start of `buf` as [`parse`] does, except that a request line
/// naming HTTP/1.x with a single digit x > 1 is read as HTTP/1.1 (RFC 9110 §2.5): that
/// digit is rewritten to `1` in `buf` once the whole head is there (so the digit sent is
/// known when the head is answered), and remembered for the access log. A line refused
/// for any other reason is refused, never corrected (RFC 9112 §3).
pub fn parse_head(buf: &mut [u8]) -> Result<Option<Request<'_>>, Reject> {
    let minor_sent = match later_minor_version_at(buf) {
        None => None,
        Some(_) if !head_complete(buf) => return incomplete(buf),
        Some(at) => Some(std::mem::replace(&mut buf[at], b'1')),
    };
    let mut parsed = parse(buf)?;
    if let Some(req) = &mut parsed {
        req.minor_sent = minor_sent;
    }
    Ok(parsed)
}

/// Whether `buf` holds the empty line that ends a head.
fn head_complete(buf: &[u8]) -> bool {
    buf.windows(2).any(|w| w == b"\n\n") || buf.windows(4).any(|w| w == b"\r\n\r\n")
}

/// Where the minor digit of `HTTP/1.x` is, when the request line is exactly
/// `METHOD SP TARGET SP HTTP/1.x` with x in 2..=9.
fn later_minor_version_at(buf: &[u8]) -> Option<usize> {
    let line = request_line(buf);
    // The version first: for every HTTP/1.0 and 1.1 request this is the whole cost.
    let [.., b' ', b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9'] = line else {
        return None;
    };
    let last = line.len() - 9;
    let first = line.iter().position(|&b| b == b' ')?;
    if first == 0 || first >= last || line[first + 1..last].contains(&b' ') {
        return None;
    }
    Some(line.len() - 1)
}

/// The first line of `buf`, without its CR LF.
pub fn request_line(buf: &[u8]) -> &[u8] {
    let line = match buf.iter().position(|&b| b == b'\n') {
        Some(end) => &buf[..end],
        None => buf,
    };
    line.strip_suffix(b"\r").unwrap_or(line)
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
    let (method, http10, (path, query)) = method_version_target(&req)?;
    let mut parsed = Request {
        line: request_line(buf),
        head: &buf[..head_len],
        method,
        method_name: req.method.unwrap_or("").as_bytes(),
        path,
        query,
        minor_sent: None,
        keep_alive: !http10,
        http10,
        head_len,
        framing: Framing::None,
        other_codings: false,
        expect: None,
        authorization: None,
        if_match: None,
        if_unmodified_since: None,
        if_none_match: None,
        if_modified_since: None,
        range: None,
        if_range: None,
        user_agent: None,
        referer: None,
    };
    let mut framing = FramingHeaders::default();
    for header in req.headers.iter() {
        let name = header.name.as_bytes();
        if !framing.read(name, header.value, &parsed)? {
            parsed.note_header(name, header.value);
        }
    }
    framing.check(&mut parsed)?;
    Ok(Some(parsed))
}

/// The method, whether it is HTTP/1.0, and the target's path and query.
fn method_version_target<'b>(
    req: &httparse::Request<'_, 'b>,
) -> Result<(Method, bool, PathAndQuery<'b>), Reject> {
    // httparse fills all three on Complete; the defaults are never used.
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" | "PUT" | "DELETE" | "OPTIONS" | "PATCH" => Method::Other,
        "TRACE" | "CONNECT" => Method::Refused,
        _ => return Err(reject(response::NOT_IMPLEMENTED, "unknown method")),
    };
    let http10 = req.version.unwrap_or(1) == 0;
    let target = match req.path.unwrap_or("").as_bytes() {
        // `OPTIONS *` (asterisk form) asks about the server as a whole: it gets the same
        // 405 with `Allow` as any OPTIONS, not a 400.
        b"*" if req.method == Some("OPTIONS") => (&b"*"[..], None),
        // CONNECT names `host:port` (authority form); it is answered 405 all the same.
        raw if req.method == Some("CONNECT") && raw.len() <= MAX_URI => (raw, None),
        raw => path_and_query(raw)?,
    };
    Ok((method, http10, target))
}

/// What the headers say about the connection and where the request ends.
#[derive(Default)]
struct FramingHeaders {
    /// `Connection: close` (or, in HTTP/1.0, `keep-alive`), once seen.
    keep_alive: Option<bool>,
    content_length: Option<u64>,
    chunked: bool,
    other_codings: bool,
    hosts: usize,
}

impl FramingHeaders {
    /// Takes a framing header (Host, Connection, Content-Length, Transfer-Encoding);
    /// `Ok(false)` for any other.
    fn read(&mut self, name: &[u8], value: &[u8], req: &Request<'_>) -> Result<bool, Reject> {
        // Dispatch on length first: most headers are skipped after one comparison.
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                if !is_valid_authority(value) {
                    return Err(reject(response::BAD_REQUEST, "invalid Host"));
                }
                self.hosts += 1;
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in value.split(|&b| b == b',').map(trim) {
                    if token.eq_ignore_ascii_case(b"close") {
                        self.keep_alive = Some(false);
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && req.http10 {
                        self.keep_alive = Some(true);
                    }
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let len = parse_decimal(trim(value))
                    .ok_or(reject(response::BAD_REQUEST, "invalid Content-Length"))?;
                if self.content_length.is_some_and(|l| l != len) {
                    return Err(reject(response::BAD_REQUEST, "conflicting Content-Length"));
                }
                self.content_length = Some(len);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                // Only a body framed by a final `chunked` has a known end (RFC 9112
                // §6.3): any other coding, or one in HTTP/1.0, leaves us unable to find
                // the next request.
                if req.http10 || !ends_in_chunked(value) {
                    return Err(reject(
                        response::BAD_REQUEST,
                        "Transfer-Encoding without a final chunked",
                    ));
                }
                // `gzip, chunked`, or chunked twice (also over two lines).
                self.other_codings |= self.chunked || codings(value) > 1;
                self.chunked = true;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Refuses what request smuggling relies on, and settles keep-alive and body.
    fn check(self, req: &mut Request<'_>) -> Result<(), Reject> {
        if self.content_length.is_some() && self.chunked {
            return Err(reject(
                response::BAD_REQUEST,
                "both Content-Length and Transfer-Encoding",
            ));
        }
        // RFC 9112 §3.2: 400 for any request with more than one Host, and for an
        // HTTP/1.1 request without one.
        if self.hosts > 1 || (!req.http10 && self.hosts == 0) {
            return Err(reject(
                response::BAD_REQUEST,
                "a request has at most one Host, and HTTP/1.1 exactly one",
            ));
        }
        req.framing = match (self.chunked, self.content_length) {
            (true, _) => Framing::Chunked,
            (false, Some(len)) => Framing::Length(len),
            (false, None) => Framing::None,
        };
        if req.has_body() && matches!(req.method, Method::Get | Method::Head) {
            return Err(reject(response::BAD_REQUEST, "GET and HEAD take no body"));
        }
        req.keep_alive = self.keep_alive.unwrap_or(!req.http10);
        req.other_codings = self.other_codings;
        Ok(())
    }
}

impl<'b> Request<'b> {
    /// The request line as the client sent it, for the access log: with the HTTP/1.x
    /// minor digit it sent, where [`parse_head`] read a later one as HTTP/1.1.
    pub fn line_as_sent(&self) -> std::borrow::Cow<'b, [u8]> {
        match (self.minor_sent, self.line.split_last()) {
            (Some(digit), Some((_, before))) => {
                let mut line = before.to_vec();
                line.push(digit);
                line.into()
            }
            _ => self.line.into(),
        }
    }

    /// Whether a body follows the head.
    pub fn has_body(&self) -> bool {
        !matches!(self.framing, Framing::None | Framing::Length(0))
    }

    /// Keeps a conditional or range header for [`crate::http::files::plan`], what the
    /// access log shows, and what a route needs (`Expect`, `Authorization`).
    fn note_header(&mut self, name: &[u8], value: &'b [u8]) {
        let slot = match name.len() {
            6 if name.eq_ignore_ascii_case(b"expect") => &mut self.expect,
            13 if name.eq_ignore_ascii_case(b"authorization") => &mut self.authorization,
            5 if name.eq_ignore_ascii_case(b"range") => &mut self.range,
            7 if name.eq_ignore_ascii_case(b"referer") => &mut self.referer,
            10 if name.eq_ignore_ascii_case(b"user-agent") => &mut self.user_agent,
            8 if name.eq_ignore_ascii_case(b"if-range") => &mut self.if_range,
            8 if name.eq_ignore_ascii_case(b"if-match") => &mut self.if_match,
            13 if name.eq_ignore_ascii_case(b"if-none-match") => &mut self.if_none_match,
            17 if name.eq_ignore_ascii_case(b"if-modified-since") => &mut self.if_modified_since,
            19 if name.eq_ignore_ascii_case(b"if-unmodified-since") => {
                &mut self.if_unmodified_since
            }
            _ => return,
        };
        *slot = Some(value);
    }
}

/// What to say about a request line httparse refused for its version: another major
/// version gets 505, anything else is not HTTP. (HTTP/1.x with x > 1 is 400 here: only
/// [`parse_head`] reads it as HTTP/1.1.)
fn version_reject(buf: &[u8]) -> Reject {
    let line = request_line(buf);
    let Some(space) = line.iter().rposition(|&b| b == b' ') else {
        return reject(response::BAD_REQUEST, "not an HTTP request");
    };
    match &line[space + 1..] {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && *major != b'1' && minor.is_ascii_digit() =>
        {
            reject(
                response::HTTP_VERSION_NOT_SUPPORTED,
                "not HTTP/1 (this server speaks HTTP/1.1)",
            )
        }
        _ => reject(response::BAD_REQUEST, "malformed request line"),
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

/// A request target's path (still percent-encoded) and query.
type PathAndQuery<'b> = (&'b [u8], Option<&'b [u8]>);

/// Splits a request target into path and query (RFC 9112 §3.2): origin-form as is,
/// absolute-form (`http://host/path`, which servers must accept) by what follows its
/// authority, which must be a valid host with no userinfo (RFC 9110 §4.2.4) and not
/// empty (§4.2.1). A fragment, which no request target may carry, is cut off as nginx
/// does: it never becomes part of a file name.
fn path_and_query(target: &[u8]) -> Result<PathAndQuery<'_>, Reject> {
    if target.len() > MAX_URI {
        return Err(reject(response::URI_TOO_LONG, "request target too long"));
    }
    let target = target.split(|&b| b == b'#').next().unwrap_or(target);
    let rest = match target.first() {
        Some(b'/') => target,
        _ => after_authority(target)?,
    };
    let (path, query) = match rest.iter().position(|&b| b == b'?') {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    // `http://host` and `http://host?q` name the root.
    Ok((if path.is_empty() { b"/" } else { path }, query))
}

/// What follows `http://authority` or `https://authority` in an absolute-form target.
fn after_authority(target: &[u8]) -> Result<&[u8], Reject> {
    let not_a_path = reject(response::BAD_REQUEST, "request target is not a path");
    let rest = [&b"http://"[..], b"https://"]
        .into_iter()
        .find(|scheme| {
            target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme)
        })
        .map(|scheme| &target[scheme.len()..])
        .ok_or(not_a_path)?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains(&b'@') {
        return Err(reject(
            response::BAD_REQUEST,
            "userinfo in the request target",
        ));
    }
    match host_and_port(authority) {
        Some((host, _)) if !host.is_empty() => Ok(&rest[end..]),
        _ => Err(reject(
            response::BAD_REQUEST,
            "invalid host in the request target",
        )),
    }
}

/// `Host: uri-host [ ":" port ]` (RFC 9112 §3.2, RFC 3986 §3.2.2): a reg-name, an IPv4
/// address or an IP literal in brackets, and a port of digits. Empty is allowed (a
/// target without an authority).
fn is_valid_authority(value: &[u8]) -> bool {
    host_and_port(value).is_some()
}

/// The host and port of `uri-host [ ":" port ]`, when valid.
fn host_and_port(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let (host, port) = match value.first() {
        Some(b'[') => {
            let close = value.iter().position(|&b| b == b']')?;
            (&value[..=close], &value[close + 1..])
        }
        _ => match value.iter().position(|&b| b == b':') {
            Some(at) => (&value[..at], &value[at..]),
            None => (value, &b""[..]),
        },
    };
    let port = match port {
        [] => port,
        [b':', digits @ ..] if digits.iter().all(u8::is_ascii_digit) => digits,
        _ => return None,
    };
    is_valid_host(host).then_some((host, port))
}

/// An IP literal (`[v6]` or `[vX.future]`) or a reg-name: unreserved characters,
/// sub-delims and percent-escapes, with no empty label (`..`), which nginx refuses too.
fn is_valid_host(host: &[u8]) -> bool {
    if let [b'[', inner @ .., b']'] = host {
        return is_ip_literal(inner);
    }
    let mut rest = host;
    while let Some((&b, tail)) = rest.split_first() {
        rest = match b {
            b'%' => match tail {
                [h, l, tail @ ..] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => tail,
                _ => return false,
            },
            b if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b) => tail,
            _ => return false,
        };
    }
    !host.windows(2).any(|w| w == b"..")
}

/// The inside of `[...]`: an IPv6 address, or `vHEX.` followed by what IPvFuture allows.
fn is_ip_literal(inner: &[u8]) -> bool {
    if let [b'v' | b'V', rest @ ..] = inner {
        let Some(dot) = rest.iter().position(|&b| b == b'.') else {
            return false;
        };
        let (version, tail) = (&rest[..dot], &rest[dot + 1..]);
        return !version.is_empty()
            && version.iter().all(u8::is_ascii_hexdigit)
            && !tail.is_empty()
            && tail
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:".contains(&b));
    }
    std::str::from_utf8(inner).is_ok_and(|text| text.parse::<std::net::Ipv6Addr>().is_ok())
}

/// How many codings a Transfer-Encoding value lists (empty list elements do not count).
fn codings(value: &[u8]) -> usize {
    value
        .split(|&b| b == b',')
        .filter(|coding| !trim(coding).is_empty())
        .count()
}

/// Whether the last coding in a Transfer-Encoding value is `chunked`.
fn ends_in_chunked(value: &[u8]) -> bool {
    let last = value.rsplit(|&b| b == b',').next().unwrap_or(value);
    trim(last).eq_ignore_ascii_case(b"chunked")
}

pub fn parse_decimal(text: &[u8]) -> Option<u64> {
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
        assert_eq!(req.method, Method::Other);
        assert!(parse(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n").is_err());
    }

    #[test]
    fn parses_an_apt_request() {
        let buf = b"GET /debian/dists/bookworm/InRelease HTTP/1.1\r\nHost: deb\r\n\
            Cache-Control: max-age=0\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
            User-Agent: Debian APT-HTTP/1.3 (2.6.1)\r\n\r\nGET /next";
        let req = parse(buf).unwrap().unwrap();
        assert_eq!(req.method, Method::Get);
        assert_eq!(req.path, b"/debian/dists/bookworm/InRelease");
        assert_eq!(req.query, None);
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

    fn head_status(buf: &[u8]) -> u16 {
        match parse_head(&mut buf.to_vec()) {
            Ok(Some(_)) => 200,
            Ok(None) => 0,
            Err(r) => r.status.code,
        }
    }

    #[test]
    fn a_later_minor_version_is_read_as_1_1() {
        let mut buf = b"GET / HTTP/1.2\r\nHost: a\r\n\r\n".to_vec();
        let req = parse_head(&mut buf).unwrap().unwrap();
        assert!(!req.http10);
        assert_eq!(head_status(b"GET / HTTP/1.9\r\nHost: a\r\n\r\n"), 200);
        // Still not a valid head once read as HTTP/1.1: refused, not retried.
        assert_eq!(head_status(b"GET / HTTP/1.5\r\n\r\n"), 400);
    }

    #[test]
    fn a_request_line_with_more_than_three_parts_is_refused() {
        // Used to be "corrected" over and over, pinning the worker.
        assert_eq!(head_status(b"GET /a b HTTP/1.0\r\n\r\n"), 400);
        assert_eq!(head_status(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(head_status(b"GET /a b HTTP/1.2\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(head_status(b"GET  / HTTP/1.3\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(head_status(b" HTTP/1.2\r\n\r\n"), 400);
    }

    #[test]
    fn an_invalid_host_is_refused() {
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"), 200);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: deb.debian.org\r\n\r\n"),
            200
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost:\r\n\r\n"), 200);
    }

    #[test]
    fn a_transfer_coding_other_than_a_final_chunked_is_refused() {
        let post = |te: &str| {
            status(
                format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n").as_bytes(),
            )
        };
        assert_eq!(post("xchunked"), 400);
        assert_eq!(post("chunked, gzip"), 400);
        // Framed well: parsed, then answered 405 for the method.
        assert_eq!(post("gzip, chunked"), 200);
        assert_eq!(post("Chunked"), 200);
        assert_eq!(
            status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
    }

    #[test]
    fn versions_other_than_1_0_and_1_1() {
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
        assert_eq!(req.method, Method::Refused);
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
        assert_eq!(
            (req.path, req.query),
            (&b"/pool/a.deb"[..], Some(&b"x"[..]))
        );
        let path = |target: &str| {
            let head = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
            match parse(head.as_bytes()) {
                Ok(Some(req)) => Ok((
                    String::from_utf8(req.path.to_vec()).unwrap(),
                    req.query.map(|q| String::from_utf8(q.to_vec()).unwrap()),
                )),
                Ok(None) => panic!("{target}: incomplete"),
                Err(r) => Err(r.status.code),
            }
        };
        let ok = |p: &str, q: Option<&str>| Ok((p.to_string(), q.map(str::to_string)));
        // The authority ends at the first `/`, `?` or `#`, whatever follows.
        assert_eq!(path("http://x?/small.txt"), ok("/", Some("/small.txt")));
        assert_eq!(path("http://x#/small.txt"), ok("/", None));
        assert_eq!(path("HTTPS://x:8443/a"), ok("/a", None));
        assert_eq!(path("http://[::1]:80/a?b#c"), ok("/a", Some("b")));
        assert_eq!(path("http://x:/a"), ok("/a", None));
        // A fragment is never part of a file name.
        assert_eq!(path("/a#b"), ok("/a", None));
        assert_eq!(path("/a?q#f"), ok("/a", Some("q")));
        // Userinfo is an error (RFC 9110 §4.2.4), an empty host invalid (§4.2.1).
        assert_eq!(path("http://u:p@x/f"), Err(400));
        assert_eq!(path("http://@x/f"), Err(400));
        assert_eq!(path("http:///f"), Err(400));
        assert_eq!(path("http://:80/f"), Err(400));
        assert_eq!(path("http://x:y/f"), Err(400));
        assert_eq!(path("http://[/f"), Err(400));
        assert_eq!(path("ftp://x/f"), Err(400));
    }

    #[test]
    fn host_is_uri_host_and_port() {
        for good in [
            "deb.debian.org",
            "deb.debian.org:80",
            "127.0.0.1",
            "[::1]",
            "[::1]:8080",
            "[v1.x]",
            "a%41b",
            ".a",
            "a.",
            "a:",
            "",
        ] {
            let head = format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n");
            assert_eq!(status(head.as_bytes()), 200, "{good:?}");
        }
        for bad in [
            ":::::", "[", "..", "a..b", "a:b", "a:80:80", "[::1]x", "[::g]", "a b", "a/b", "u@a",
            "a%4", "[v.x]", "[v1.]",
        ] {
            let head = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert_eq!(status(head.as_bytes()), 400, "{bad:?}");
        }
    }

    #[test]
    fn more_than_one_host_is_refused_in_any_version() {
        assert_eq!(status(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.0\r\n\r\n"), 200);
    }

    #[test]
    fn the_line_as_sent_keeps_the_minor_version() {
        let mut buf = b"GET / HTTP/1.7\r\nHost: a\r\n\r\n".to_vec();
        let req = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(req.line, b"GET / HTTP/1.1");
        assert_eq!(&*req.line_as_sent(), b"GET / HTTP/1.7");
        // Not rewritten before the head is whole: the digit is still there to be kept
        // when the rest arrives.
        let mut part = b"GET / HTTP/1.7\r\nHost: a\r\n".to_vec();
        assert!(parse_head(&mut part).unwrap().is_none());
        assert_eq!(part, b"GET / HTTP/1.7\r\nHost: a\r\n");
        let mut plain = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        let req = parse_head(&mut plain).unwrap().unwrap();
        assert_eq!(&*req.line_as_sent(), b"GET / HTTP/1.1");
    }
}
