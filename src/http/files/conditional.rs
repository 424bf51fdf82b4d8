//! Validators (Last-Modified, ETag), conditional requests and ranges: how to answer a
//! GET or HEAD for a file, decided from the request's headers alone.

use std::io;

use crate::http::request::{parse_decimal, trim, Method, Request};
use crate::http::response::parse_http_date;

/// What identifies a version of a file to clients: size, mtime and the ETag made of them
/// (nginx's format, so caches in front see the same validators).
pub struct FileInfo {
    pub len: u64,
    /// The mtime, but never later than now: a file dated in the future would otherwise
    /// be announced as modified after the response's own Date (RFC 9110 §8.8.2.1
    /// forbids it) and keep 304-ing whatever replaced it until that date.
    pub last_modified: i64,
    /// Whether `last_modified` is a strong validator: at least a second before now,
    /// since a file can change again within the second its mtime names (§8.8.2.2).
    strong_date: bool,
    etag: [u8; 40],
    etag_len: usize,
}

impl FileInfo {
    /// `now`: seconds since the epoch, as for `mtime`.
    pub fn new(len: u64, mtime: i64, now: i64) -> FileInfo {
        let mut etag = [0u8; 40];
        let mut cursor = io::Cursor::new(&mut etag[..]);
        // 2 quotes, 1 dash and at most 2 × 16 hex digits fit in 40 bytes. The ETag keeps
        // the real mtime: it must not change from one second to the next.
        let _ = io::Write::write_fmt(&mut cursor, format_args!("\"{:x}-{:x}\"", mtime, len));
        let etag_len = cursor.position() as usize;
        FileInfo {
            len,
            last_modified: mtime.min(now),
            strong_date: mtime < now,
            etag,
            etag_len,
        }
    }

    pub fn etag(&self) -> &[u8] {
        &self.etag[..self.etag_len]
    }
}

/// How to answer a GET or HEAD for a file, after the conditional headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// If-Match or If-Unmodified-Since failed: 412.
    PreconditionFailed,
    NotModified,
    Full,
    /// Bytes `first..=last`.
    Partial {
        first: u64,
        last: u64,
    },
    Unsatisfiable,
}

/// Applies RFC 9110 §13.2.2's order: If-Match (else If-Unmodified-Since), then
/// If-None-Match (else If-Modified-Since), then Range guarded by If-Range.
///
/// If-Modified-Since matches only the exact Last-Modified date, as nginx does by
/// default: mirrors replace files with older ones (rsync -t, a snapshot switched back),
/// and "not modified since a later date" would keep clients on the replaced file.
pub fn plan(info: &FileInfo, req: &Request<'_>) -> Plan {
    let precondition_holds = match (req.if_match, req.if_unmodified_since) {
        (Some(tags), _) => etag_list_matches(tags, info.etag(), Comparison::Strong),
        (None, Some(date)) => {
            parse_http_date(date).map_or(true, |since| info.last_modified <= since)
        }
        (None, None) => true,
    };
    if !precondition_holds {
        return Plan::PreconditionFailed;
    }
    let not_modified = match (req.if_none_match, req.if_modified_since) {
        (Some(tags), _) => etag_list_matches(tags, info.etag(), Comparison::Weak),
        (None, Some(date)) => parse_http_date(date) == Some(info.last_modified),
        (None, None) => false,
    };
    if not_modified {
        return Plan::NotModified;
    }
    // Range only applies to GET (RFC 9110 §14.2).
    let Some(range) = req.range.filter(|_| req.method == Method::Get) else {
        return Plan::Full;
    };
    if let Some(validator) = req.if_range {
        // If-Range needs a strong validator (§13.1.5): an exact ETag, not W/, or a date
        // at least a second old.
        let validator = trim(validator);
        let current = if validator.first() == Some(&b'"') {
            validator == info.etag()
        } else {
            info.strong_date && parse_http_date(validator) == Some(info.last_modified)
        };
        if !current {
            return Plan::Full;
        }
    }
    match parse_range(range, info.len) {
        RangeSpec::Ignore => Plan::Full,
        RangeSpec::Unsatisfiable => Plan::Unsatisfiable,
        RangeSpec::Bytes { first, last } => Plan::Partial { first, last },
    }
}

/// How entity tags compare (RFC 9110 §8.8.3.2): If-Match wants the same bytes from a
/// strong tag, If-None-Match ignores the `W/`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Strong,
    Weak,
}

/// Whether a list of entity tags (`*`, or tags with or without `W/`) names `etag`,
/// which is strong. `*` matches any current file.
fn etag_list_matches(list: &[u8], etag: &[u8], comparison: Comparison) -> bool {
    list.split(|&b| b == b',').any(|tag| {
        let tag = trim(tag);
        if tag == b"*" {
            return true;
        }
        match tag.strip_prefix(b"W/") {
            Some(_) if comparison == Comparison::Strong => false,
            Some(weak) => weak == etag,
            None => tag == etag,
        }
    })
}

/// What a `Range` header asks of a file of a given length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// Malformed, another unit, several ranges: serving the whole file is always allowed.
    Ignore,
    /// Nothing of the file can be selected: 416.
    Unsatisfiable,
    /// Bytes `first..=last`, within the file.
    Bytes { first: u64, last: u64 },
}

/// A single `bytes=` range against a file of `len` bytes.
pub fn parse_range(value: &[u8], len: u64) -> RangeSpec {
    let value = trim(value);
    if value.len() < 6 || !value[..6].eq_ignore_ascii_case(b"bytes=") {
        return RangeSpec::Ignore;
    }
    let spec = trim(&value[6..]);
    if spec.contains(&b',') {
        return RangeSpec::Ignore;
    }
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return RangeSpec::Ignore;
    };
    let (start, end) = (trim(&spec[..dash]), trim(&spec[dash + 1..]));
    if start.is_empty() {
        return match parse_decimal(end) {
            None => RangeSpec::Ignore,
            Some(0) => RangeSpec::Unsatisfiable,
            // A non-zero suffix of an empty file is satisfiable but selects nothing,
            // which a 206 cannot express (RFC 9110 §14.1.2): ignore the Range.
            Some(_) if len == 0 => RangeSpec::Ignore,
            Some(suffix) => RangeSpec::Bytes {
                first: len.saturating_sub(suffix),
                last: len - 1,
            },
        };
    }
    let Some(first) = parse_decimal(start) else {
        return RangeSpec::Ignore;
    };
    let last = match end {
        b"" => u64::MAX,
        digits => match parse_decimal(digits) {
            Some(last) if last >= first => last,
            _ => return RangeSpec::Ignore,
        },
    };
    if first >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Bytes {
        first,
        last: last.min(len - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request;
    use crate::http::response;

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range(b"bytes=0-0", 10),
            RangeSpec::Bytes { first: 0, last: 0 }
        );
        assert_eq!(
            parse_range(b"bytes=9-", 10),
            RangeSpec::Bytes { first: 9, last: 9 }
        );
        assert_eq!(
            parse_range(b"bytes=5-100", 10),
            RangeSpec::Bytes { first: 5, last: 9 }
        );
        assert_eq!(
            parse_range(b"bytes=-3", 10),
            RangeSpec::Bytes { first: 7, last: 9 }
        );
        assert_eq!(
            parse_range(b"bytes=-30", 10),
            RangeSpec::Bytes { first: 0, last: 9 }
        );
        assert_eq!(parse_range(b"bytes=10-", 10), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-0", 10), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=0-1,3-4", 10), RangeSpec::Ignore);
        // An empty file: a suffix selects nothing, so the whole (empty) file is sent.
        assert_eq!(parse_range(b"bytes=-5", 0), RangeSpec::Ignore);
        assert_eq!(parse_range(b"bytes=0-", 0), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=5-1", 10), RangeSpec::Ignore);
        assert_eq!(parse_range(b"lines=1-2", 10), RangeSpec::Ignore);
        assert_eq!(parse_range(b"bytes=x-2", 10), RangeSpec::Ignore);
    }

    fn req<'a>(headers: &'a str) -> Request<'a> {
        let buf: &'a str = headers;
        request::parse(buf.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn conditionals() {
        let now = 1_800_000_000;
        let info = FileInfo::new(100, 784_111_777, now);
        let etag = String::from_utf8(info.etag().to_vec()).unwrap();
        assert_eq!(etag, "\"2ebc98a1-64\"");
        let base = "GET /f HTTP/1.1\r\nHost: a\r\n";
        let ims = format!("{base}If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n");
        assert_eq!(plan(&info, &req(&ims)), Plan::NotModified);
        let old = format!("{base}If-Modified-Since: Sun, 06 Nov 1994 08:49:36 GMT\r\n\r\n");
        assert_eq!(plan(&info, &req(&old)), Plan::Full);
        // Only the exact date: a file replaced by an older one is not "not modified".
        let later = format!("{base}If-Modified-Since: Sun, 06 Nov 1994 08:49:38 GMT\r\n\r\n");
        assert_eq!(plan(&info, &req(&later)), Plan::Full);
        let inm = format!("{base}If-None-Match: \"x\", W/{etag}\r\n\r\n");
        assert_eq!(plan(&info, &req(&inm)), Plan::NotModified);
        // If-None-Match wins over If-Modified-Since.
        let both = format!("{base}If-None-Match: \"x\"\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n");
        assert_eq!(plan(&info, &req(&both)), Plan::Full);
        let range = format!("{base}Range: bytes=10-\r\nIf-Range: {etag}\r\n\r\n");
        assert_eq!(
            plan(&info, &req(&range)),
            Plan::Partial {
                first: 10,
                last: 99
            }
        );
        let stale = format!("{base}Range: bytes=10-\r\nIf-Range: \"old\"\r\n\r\n");
        assert_eq!(plan(&info, &req(&stale)), Plan::Full);
        let head = "HEAD /f HTTP/1.1\r\nHost: a\r\nRange: bytes=1-2\r\n\r\n";
        assert_eq!(plan(&info, &req(head)), Plan::Full);
        let beyond = format!("{base}Range: bytes=100-\r\n\r\n");
        assert_eq!(plan(&info, &req(&beyond)), Plan::Unsatisfiable);
        let by_date =
            format!("{base}Range: bytes=10-\r\nIf-Range: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n");
        assert_eq!(
            plan(&info, &req(&by_date)),
            Plan::Partial {
                first: 10,
                last: 99
            }
        );
    }

    #[test]
    fn preconditions() {
        let info = FileInfo::new(100, 784_111_777, 1_800_000_000);
        let etag = String::from_utf8(info.etag().to_vec()).unwrap();
        let base = "GET /f HTTP/1.1\r\nHost: a\r\n";
        let check = |headers: String| plan(&info, &req(&format!("{base}{headers}\r\n")));
        assert_eq!(check(format!("If-Match: {etag}\r\n")), Plan::Full);
        assert_eq!(check("If-Match: *\r\n".into()), Plan::Full);
        assert_eq!(
            check("If-Match: \"other\"\r\n".into()),
            Plan::PreconditionFailed
        );
        // If-Match compares strongly: a weak tag never matches.
        assert_eq!(
            check(format!("If-Match: W/{etag}\r\n")),
            Plan::PreconditionFailed
        );
        let unmodified =
            "If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\nRange: bytes=1-2\r\n";
        assert_eq!(
            check(unmodified.into()),
            Plan::Partial { first: 1, last: 2 }
        );
        let modified = "If-Unmodified-Since: Sun, 06 Nov 1994 08:49:36 GMT\r\nRange: bytes=1-2\r\n";
        assert_eq!(check(modified.into()), Plan::PreconditionFailed);
        // If-Match wins over If-Unmodified-Since; an invalid date is ignored.
        let both =
            format!("If-Match: {etag}\r\nIf-Unmodified-Since: Sun, 06 Nov 1994 08:49:36 GMT\r\n");
        assert_eq!(check(both), Plan::Full);
        assert_eq!(
            check("If-Unmodified-Since: yesterday\r\n".into()),
            Plan::Full
        );
    }

    #[test]
    fn future_and_fresh_mtimes() {
        let now = 1_800_000_000;
        // Dated in the future: announced as modified now, never later.
        let future = FileInfo::new(5, now + 3600, now);
        assert_eq!(future.last_modified, now);
        // Modified this very second: its date cannot vouch for a range (If-Range).
        let fresh = FileInfo::new(100, now, now);
        let date = response::format_http_date(now);
        let date = std::str::from_utf8(&date).unwrap();
        let if_range =
            format!("GET /f HTTP/1.1\r\nHost: a\r\nRange: bytes=10-\r\nIf-Range: {date}\r\n\r\n");
        assert_eq!(plan(&fresh, &req(&if_range)), Plan::Full);
    }
}
