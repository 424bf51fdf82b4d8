//! Response heads: status lines, the headers every response carries, and HTTP dates.
//!
//! Heads are written straight into the connection's reused output buffer, so answering a
//! request allocates nothing; the `Date` value is formatted at most once a second per
//! worker.

use std::cell::Cell;
use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

/// A status code with its reason phrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: u16,
    pub reason: &'static str,
}

impl Status {
    const fn new(code: u16, reason: &'static str) -> Status {
        Status { code, reason }
    }

    /// 1 for 1xx, 2 for 2xx and so on; what metrics count by.
    pub fn class(self) -> usize {
        usize::from(self.code / 100)
    }
}

pub const OK: Status = Status::new(200, "OK");
pub const PARTIAL_CONTENT: Status = Status::new(206, "Partial Content");
pub const MOVED_PERMANENTLY: Status = Status::new(301, "Moved Permanently");
pub const NOT_MODIFIED: Status = Status::new(304, "Not Modified");
pub const BAD_REQUEST: Status = Status::new(400, "Bad Request");
pub const UNAUTHORIZED: Status = Status::new(401, "Unauthorized");
pub const FORBIDDEN: Status = Status::new(403, "Forbidden");
pub const NOT_FOUND: Status = Status::new(404, "Not Found");
pub const METHOD_NOT_ALLOWED: Status = Status::new(405, "Method Not Allowed");
pub const REQUEST_TIMEOUT: Status = Status::new(408, "Request Timeout");
pub const PRECONDITION_FAILED: Status = Status::new(412, "Precondition Failed");
pub const CONTENT_TOO_LARGE: Status = Status::new(413, "Content Too Large");
pub const URI_TOO_LONG: Status = Status::new(414, "URI Too Long");
pub const RANGE_NOT_SATISFIABLE: Status = Status::new(416, "Range Not Satisfiable");
pub const EXPECTATION_FAILED: Status = Status::new(417, "Expectation Failed");
pub const TOO_MANY_REQUESTS: Status = Status::new(429, "Too Many Requests");
pub const HEADER_FIELDS_TOO_LARGE: Status = Status::new(431, "Request Header Fields Too Large");
pub const INTERNAL_SERVER_ERROR: Status = Status::new(500, "Internal Server Error");
pub const NOT_IMPLEMENTED: Status = Status::new(501, "Not Implemented");
pub const BAD_GATEWAY: Status = Status::new(502, "Bad Gateway");
pub const SERVICE_UNAVAILABLE: Status = Status::new(503, "Service Unavailable");
pub const GATEWAY_TIMEOUT: Status = Status::new(504, "Gateway Timeout");
pub const HTTP_VERSION_NOT_SUPPORTED: Status = Status::new(505, "HTTP Version Not Supported");

pub const SERVER: &str = concat!("ringsock/", env!("CARGO_PKG_VERSION"));

/// How the response tells the client about the connection's future.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    /// HTTP/1.1 default: say nothing.
    KeepAlive,
    /// An HTTP/1.0 client that asked for keep-alive must hear it confirmed.
    KeepAlive10,
    Close,
}

/// Writes one response head into `out`: the caller adds headers between `start` and
/// `finish`.
pub struct HeadWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> HeadWriter<'a> {
    pub fn start(out: &'a mut Vec<u8>, status: Status, date: &[u8; DATE_LEN]) -> HeadWriter<'a> {
        out.extend_from_slice(b"HTTP/1.1 ");
        push_u64(out, u64::from(status.code));
        out.push(b' ');
        out.extend_from_slice(status.reason.as_bytes());
        out.extend_from_slice(b"\r\nServer: ");
        out.extend_from_slice(SERVER.as_bytes());
        out.extend_from_slice(b"\r\nDate: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
        HeadWriter { out }
    }

    pub fn header(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    pub fn header_u64(&mut self, name: &str, value: u64) -> &mut Self {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        push_u64(self.out, value);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// `Content-Range: bytes */LEN`, on a 416.
    pub fn unsatisfiable_range(&mut self, len: u64) -> &mut Self {
        self.out.extend_from_slice(b"Content-Range: bytes */");
        push_u64(self.out, len);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    pub fn content_length(&mut self, len: u64) -> &mut Self {
        self.out.extend_from_slice(b"Content-Length: ");
        push_u64(self.out, len);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// `Content-Range: bytes FIRST-LAST/LEN`.
    pub fn content_range(&mut self, first: u64, last: u64, len: u64) -> &mut Self {
        self.out.extend_from_slice(b"Content-Range: bytes ");
        push_u64(self.out, first);
        self.out.push(b'-');
        push_u64(self.out, last);
        self.out.push(b'/');
        push_u64(self.out, len);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// Ends the head; the body (if any) follows in the buffer returned.
    pub fn finish(self, connection: Connection) -> &'a mut Vec<u8> {
        match connection {
            Connection::KeepAlive => {}
            Connection::KeepAlive10 => self.out.extend_from_slice(b"Connection: keep-alive\r\n"),
            Connection::Close => self.out.extend_from_slice(b"Connection: close\r\n"),
        }
        self.out.extend_from_slice(b"\r\n");
        self.out
    }
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`
pub const DATE_LEN: usize = 29;

/// The `Date` header value for the current second, per worker (no locking, no atomics).
pub struct DateCache {
    second: Cell<i64>,
    text: Cell<[u8; DATE_LEN]>,
}

impl Default for DateCache {
    fn default() -> Self {
        DateCache {
            second: Cell::new(i64::MIN),
            text: Cell::new([b' '; DATE_LEN]),
        }
    }
}

impl DateCache {
    pub fn now(&self) -> [u8; DATE_LEN] {
        self.now_and_second().0
    }

    /// The `Date` value and the second it names, which bounds file dates in the same
    /// response.
    pub fn now_and_second(&self) -> ([u8; DATE_LEN], i64) {
        let now = unix_now_coarse();
        if now != self.second.get() {
            self.second.set(now);
            self.text.set(format_http_date(now));
        }
        (self.text.get(), now)
    }
}

/// Seconds since the epoch from the coarse clock: a vDSO read without a syscall, and
/// second resolution is all `Date` needs.
pub fn unix_now_coarse() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    ts.tv_sec
}

/// The last second httpdate formats (9999-12-31T23:59:59Z).
const LAST_FORMATTABLE: u64 = 253_402_300_799;

/// Formats seconds since the epoch as an IMF-fixdate (RFC 9110 §5.6.7). A time before
/// 1970 (a file's mtime can be) is written as the epoch, one after 9999 as its end.
pub fn format_http_date(secs: i64) -> [u8; DATE_LEN] {
    let secs = secs.clamp(0, LAST_FORMATTABLE as i64) as u64;
    let date = httpdate::HttpDate::from(UNIX_EPOCH + Duration::from_secs(secs));
    let mut out = [b' '; DATE_LEN];
    // An IMF-fixdate is exactly DATE_LEN bytes: the write cannot fall short.
    let _ = write!(&mut out[..], "{date}");
    out
}

/// Parses an IMF-fixdate, or the obsolete RFC 850 and asctime forms recipients must
/// still accept (RFC 9110 §5.6.7). `None` means "not a date": the header is ignored.
pub fn parse_http_date(text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?.trim();
    let time = httpdate::parse_http_date(text).ok()?;
    Some(time.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_dates() {
        assert_eq!(&format_http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &format_http_date(784_111_777),
            b"Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            &format_http_date(4_102_444_800),
            b"Fri, 01 Jan 2100 00:00:00 GMT"
        );
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                parse_http_date(text.as_bytes()),
                Some(784_111_777),
                "{text}"
            );
        }
        for secs in [0, 951_782_400, 1_700_000_000, 4_102_444_799] {
            assert_eq!(parse_http_date(&format_http_date(secs)), Some(secs));
        }
        assert_eq!(parse_http_date(b"yesterday"), None);
        // Outside what can be written: the nearest that can.
        assert_eq!(&format_http_date(-1), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &format_http_date(i64::MAX),
            b"Fri, 31 Dec 9999 23:59:59 GMT"
        );
        assert_eq!(parse_http_date(b"Sun, 06 Nov 1994 25:49:37 GMT"), None);
    }

    #[test]
    fn writes_a_head() {
        let mut out = Vec::new();
        let date = format_http_date(0);
        let mut head = HeadWriter::start(&mut out, NOT_FOUND, &date);
        head.content_length(12345);
        head.finish(Connection::Close);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\nServer: ringsock/"));
        assert!(text.ends_with(
            "Date: Thu, 01 Jan 1970 00:00:00 GMT\r\nContent-Length: 12345\r\nConnection: close\r\n\r\n"
        ));
    }
}
