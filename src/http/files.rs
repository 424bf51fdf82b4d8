//! The mirror tree under `--root`: path resolution that never leaves the root,
//! conditional and range requests, directory listings, and zero-copy bodies.
//!
//! Bodies go out with sendfile(2) on the non-blocking socket whenever the runtime reports
//! it writable. io_uring's SPLICE op is not used: the kernel punts it to a worker thread
//! that then sleeps on the socket, one per slow client.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::request::{trim, Method, Request};
use super::response::{self, parse_http_date, Status};
use crate::net::Stream;

/// The served directory, opened once; files are opened relative to it.
pub struct Root {
    dir: OwnedFd,
    /// Where the root really is, to check where a symlink led.
    canonical: PathBuf,
    pub follow_symlinks: bool,
    pub autoindex: bool,
    /// openat2(2) works here (Linux 5.6+, and not blocked by a seccomp filter).
    openat2: AtomicBool,
}

const OPEN_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;

impl Root {
    pub fn new(path: &Path, follow_symlinks: bool, autoindex: bool) -> io::Result<Root> {
        let canonical = std::fs::canonicalize(path)?;
        let c_path = std::ffi::CString::new(canonical.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a valid NUL-terminated path; the returned fd is ours.
        let fd = crate::sys::cvt(unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        Ok(Root {
            // SAFETY: open just returned this fd.
            dir: unsafe { OwnedFd::from_raw_fd(fd) },
            canonical,
            follow_symlinks,
            autoindex,
            openat2: AtomicBool::new(true),
        })
    }

    /// Opens `rel` (from [`resolve`]) under the root. Symlinks that lead outside it are
    /// refused (403) unless `--follow-symlinks`.
    pub fn open(&self, rel: &CStr) -> Result<File, Status> {
        if self.follow_symlinks {
            return self.openat(rel).map_err(open_status);
        }
        if self.openat2.load(Ordering::Relaxed) {
            // RESOLVE_BENEATH makes the kernel refuse any escape in the one open call.
            // SAFETY: open_how is plain data; zeroed then filled is a valid value.
            let mut how: libc::open_how = unsafe { std::mem::zeroed() };
            how.flags = OPEN_FLAGS as u64;
            how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
            // SAFETY: valid dirfd, NUL-terminated path and open_how of the size passed.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    self.dir.as_raw_fd(),
                    rel.as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                )
            };
            if rc >= 0 {
                // SAFETY: openat2 returned a new fd.
                return Ok(unsafe { File::from_raw_fd(rc as libc::c_int) });
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // An absolute symlink is refused even when it points inside the root:
                // decide that case below, by where the file really is.
                Some(libc::EXDEV | libc::ELOOP) => {}
                Some(libc::ENOSYS | libc::EPERM) => {
                    crate::debug!("openat2 is unavailable ({e}); checking symlinks by path");
                    self.openat2.store(false, Ordering::Relaxed);
                }
                _ => return Err(open_status(e)),
            }
        }
        let file = self.openat(rel).map_err(open_status)?;
        match std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
            Ok(real) if real.starts_with(&self.canonical) => Ok(file),
            Ok(_) => Err(response::FORBIDDEN),
            Err(_) => Err(response::INTERNAL_SERVER_ERROR),
        }
    }

    fn openat(&self, rel: &CStr) -> io::Result<File> {
        // SAFETY: valid dirfd and NUL-terminated path; the returned fd is ours.
        let fd = crate::sys::cvt(unsafe {
            libc::openat(self.dir.as_raw_fd(), rel.as_ptr(), OPEN_FLAGS)
        })?;
        // SAFETY: openat just returned this fd.
        Ok(unsafe { File::from_raw_fd(fd) })
    }
}

fn open_status(e: io::Error) -> Status {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG) => response::NOT_FOUND,
        Some(libc::EACCES | libc::EPERM | libc::ELOOP | libc::EXDEV) => response::FORBIDDEN,
        // Out of fds or memory: the client may retry shortly (on a new connection, which
        // the listen backlog holds until one is free).
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM) => response::SERVICE_UNAVAILABLE,
        _ => response::INTERNAL_SERVER_ERROR,
    }
}

/// Percent-decodes `path` into `rel`, a NUL-terminated path relative to the root.
/// `..` segments, NUL and backslashes are refused (400) whether sent plainly or encoded;
/// empty and `.` segments are dropped. The root itself is `.`.
pub fn resolve(path: &[u8], rel: &mut Vec<u8>) -> Result<(), Status> {
    rel.clear();
    let mut rest = path;
    // Copy the runs between escapes whole; escapes are rare in mirror paths.
    while let Some(at) = rest.iter().position(|&b| b == b'%') {
        rel.extend_from_slice(&rest[..at]);
        let hex = rest.get(at + 1..at + 3).ok_or(response::BAD_REQUEST)?;
        let high = hex_value(hex[0]).ok_or(response::BAD_REQUEST)?;
        let low = hex_value(hex[1]).ok_or(response::BAD_REQUEST)?;
        rel.push(high << 4 | low);
        rest = &rest[at + 3..];
    }
    rel.extend_from_slice(rest);
    if rel.iter().any(|&b| b == 0 || b == b'\\') {
        return Err(response::BAD_REQUEST);
    }
    // Normalise in place: the write position never passes the read position.
    let (mut read, mut write) = (0, 0);
    let len = rel.len();
    while read < len {
        let end = rel[read..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(len, |p| read + p);
        match &rel[read..end] {
            b"" | b"." => {}
            b".." => return Err(response::BAD_REQUEST),
            _ => {
                if write > 0 {
                    rel[write] = b'/';
                    write += 1;
                }
                rel.copy_within(read..end, write);
                write += end - read;
            }
        }
        read = end + 1;
    }
    rel.truncate(write);
    if rel.is_empty() {
        rel.push(b'.');
    }
    rel.push(0);
    Ok(())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The Content-Type for a file name in a Debian repository.
pub fn content_type(rel: &[u8]) -> &'static [u8] {
    let name = match rel.iter().rposition(|&b| b == b'/') {
        Some(at) => &rel[at + 1..],
        None => rel,
    };
    match name {
        b"Release" | b"InRelease" | b"Packages" | b"Sources" | b"Index" => {
            return b"text/plain; charset=utf-8"
        }
        _ => {}
    }
    let ext = match name.iter().rposition(|&b| b == b'.') {
        Some(at) => &name[at + 1..],
        None => return b"application/octet-stream",
    };
    match ext {
        b"deb" | b"udeb" => b"application/vnd.debian.binary-package",
        // What Debian's own mirrors send for source control files.
        b"dsc" => b"text/prs.lines.tag",
        b"gz" => b"application/gzip",
        b"xz" => b"application/x-xz",
        b"bz2" => b"application/x-bzip2",
        b"zst" => b"application/zstd",
        b"gpg" | b"asc" => b"application/pgp-signature",
        b"html" | b"htm" => b"text/html; charset=utf-8",
        b"json" => b"application/json",
        b"txt" => b"text/plain; charset=utf-8",
        _ => b"application/octet-stream",
    }
}

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
        None => Plan::Full,
        Some(None) => Plan::Unsatisfiable,
        Some(Some((first, last))) => Plan::Partial { first, last },
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

/// A single `bytes=` range: `None` to ignore the header (malformed, other unit, several
/// ranges — serving the whole file is always allowed), `Some(None)` when it cannot be
/// satisfied, else the first and last byte.
pub fn parse_range(value: &[u8], len: u64) -> Option<Option<(u64, u64)>> {
    let value = trim(value);
    if value.len() < 6 || !value[..6].eq_ignore_ascii_case(b"bytes=") {
        return None;
    }
    let spec = trim(&value[6..]);
    if spec.contains(&b',') {
        return None;
    }
    let dash = spec.iter().position(|&b| b == b'-')?;
    let (start, end) = (trim(&spec[..dash]), trim(&spec[dash + 1..]));
    if start.is_empty() {
        let suffix = decimal(end)?;
        if suffix == 0 {
            return Some(None);
        }
        // A non-zero suffix of an empty file is satisfiable but selects nothing, which
        // a 206 cannot express (RFC 9110 §14.1.2): ignore the Range, send the 200.
        if len == 0 {
            return None;
        }
        return Some(Some((len.saturating_sub(suffix), len - 1)));
    }
    let first = decimal(start)?;
    let last = if end.is_empty() {
        u64::MAX
    } else {
        decimal(end)?
    };
    if last < first {
        return None;
    }
    if first >= len {
        return Some(None);
    }
    Some(Some((first, last.min(len - 1))))
}

fn decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(text.iter().fold(0u64, |n, &b| n * 10 + u64::from(b - b'0')))
}

/// What an opened path is, for the answer.
pub enum Kind {
    File(FileInfo),
    Dir,
    /// FIFOs, sockets, devices: never served.
    Other,
}

/// What `file` is; `now` (seconds since the epoch) bounds a file's Last-Modified.
pub fn kind(file: &File, now: i64) -> io::Result<Kind> {
    let meta = file.metadata()?;
    let ft = meta.file_type();
    Ok(if ft.is_file() {
        Kind::File(FileInfo::new(meta.len(), meta.mtime(), now))
    } else if ft.is_dir() {
        Kind::Dir
    } else {
        Kind::Other
    })
}

/// An HTML listing of `dir`, linked relative to `url_path` (which ends in `/`).
pub fn autoindex(dir: &File, url_path: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let mut entries: Vec<(Vec<u8>, bool)> = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        let entry = entry?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        entries.push((entry.file_name().as_bytes().to_vec(), is_dir));
    }
    entries.sort();
    let title = String::from_utf8_lossy(url_path);
    out.extend_from_slice(b"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of ");
    escape_html(title.as_bytes(), out);
    out.extend_from_slice(b"</title></head>\n<body><h1>Index of ");
    escape_html(title.as_bytes(), out);
    out.extend_from_slice(b"</h1><hr><pre>\n<a href=\"../\">../</a>\n");
    for (name, is_dir) in &entries {
        // `./` first, as nginx does: a name like `javascript:x` or `foo:bar.deb` would
        // otherwise be read as a URL scheme.
        out.extend_from_slice(b"<a href=\"./");
        percent_encode(name, out);
        if *is_dir {
            out.push(b'/');
        }
        out.extend_from_slice(b"\">");
        escape_html(String::from_utf8_lossy(name).as_bytes(), out);
        if *is_dir {
            out.push(b'/');
        }
        out.extend_from_slice(b"</a>\n");
    }
    out.extend_from_slice(b"</pre><hr></body></html>\n");
    Ok(())
}

fn escape_html(text: &[u8], out: &mut Vec<u8>) {
    for &b in text {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            b'\'' => out.extend_from_slice(b"&#39;"),
            _ => out.push(b),
        }
    }
}

/// Percent-encodes a file name or a path (`/` is kept) for a URL.
pub fn percent_encode(name: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in name {
        if b.is_ascii_alphanumeric() || b"-._~+:@/".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// Largest single sendfile(2): Linux caps one call just below 2 GiB anyway.
const MAX_SENDFILE: u64 = 0x7fff_f000;
/// Bytes sent in a row before letting the worker's other connections run: a fast
/// client with a huge socket buffer must not monopolise the thread.
const FAIR_SHARE: u64 = 4 << 20;

/// Sends `len` bytes of `file` from `offset` with sendfile(2), waiting for write
/// readiness whenever the socket buffer is full. A client that stops reading parks
/// only this task, and is dropped after `stall` without progress. `sent` counts what
/// went out, also when it fails midway.
pub async fn send_file(
    stream: &Stream,
    file: &File,
    offset: u64,
    len: u64,
    stall: Duration,
    sent: &mut u64,
) -> io::Result<()> {
    let mut off = offset as libc::off_t;
    let end = offset + len;
    let mut since_yield = 0u64;
    while (off as u64) < end {
        let want = (end - off as u64).min(MAX_SENDFILE) as usize;
        match crate::sys::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut off, want) {
            Ok(0) => {
                // The file shrank under us: the promised length can no longer be kept.
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while being sent",
                ));
            }
            Ok(n) => {
                *sent += n as u64;
                since_yield += n as u64;
                if since_yield >= FAIR_SHARE {
                    since_yield = 0;
                    super::writable_within(stream, stall).await?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                since_yield = 0;
                super::writable_within(stream, stall).await?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(path: &str) -> Result<String, u16> {
        let mut out = Vec::new();
        resolve(path.as_bytes(), &mut out).map_err(|s| s.code)?;
        assert_eq!(out.pop(), Some(0));
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn resolves_inside_the_root_only() {
        assert_eq!(rel("/").unwrap(), ".");
        assert_eq!(
            rel("/dists/bookworm/InRelease").unwrap(),
            "dists/bookworm/InRelease"
        );
        assert_eq!(rel("//a/./b//c/").unwrap(), "a/b/c");
        assert_eq!(rel("/pool/a%20b%2Bc.deb").unwrap(), "pool/a b+c.deb");
        for bad in [
            "/../etc/passwd",
            "/a/../../etc",
            "/%2e%2e/etc",
            "/%2E%2E%2Fetc",
            "/a/..%2f..%2fetc",
            "/a%00b",
            "/..\\etc",
            "/a%5c..%5cb",
            "/%zz",
            "/%4",
        ] {
            assert_eq!(rel(bad), Err(400), "{bad}");
        }
    }

    #[test]
    fn content_types_for_repository_files() {
        assert_eq!(
            content_type(b"pool/main/h/hello_1.0_amd64.deb"),
            b"application/vnd.debian.binary-package"
        );
        assert_eq!(
            content_type(b"dists/x/InRelease"),
            b"text/plain; charset=utf-8"
        );
        assert_eq!(
            content_type(b"dists/x/main/binary-amd64/Packages.xz"),
            b"application/x-xz"
        );
        assert_eq!(
            content_type(b"dists/x/Release.gpg"),
            b"application/pgp-signature"
        );
        assert_eq!(content_type(b"README"), b"application/octet-stream");
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(b"bytes=0-0", 10), Some(Some((0, 0))));
        assert_eq!(parse_range(b"bytes=9-", 10), Some(Some((9, 9))));
        assert_eq!(parse_range(b"bytes=5-100", 10), Some(Some((5, 9))));
        assert_eq!(parse_range(b"bytes=-3", 10), Some(Some((7, 9))));
        assert_eq!(parse_range(b"bytes=-30", 10), Some(Some((0, 9))));
        assert_eq!(parse_range(b"bytes=10-", 10), Some(None));
        assert_eq!(parse_range(b"bytes=-0", 10), Some(None));
        assert_eq!(parse_range(b"bytes=0-1,3-4", 10), None);
        // An empty file: a suffix selects nothing, so the whole (empty) file is sent.
        assert_eq!(parse_range(b"bytes=-5", 0), None);
        assert_eq!(parse_range(b"bytes=0-", 0), Some(None));
        assert_eq!(parse_range(b"bytes=5-1", 10), None);
        assert_eq!(parse_range(b"lines=1-2", 10), None);
        assert_eq!(parse_range(b"bytes=x-2", 10), None);
    }

    fn req<'a>(headers: &'a str) -> Request<'a> {
        let buf: &'a str = headers;
        super::super::request::parse(buf.as_bytes())
            .unwrap()
            .unwrap()
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
