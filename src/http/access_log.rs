//! `--access-log`: one line per response in nginx's "combined" format plus the request
//! time, as mirror operators' statistics and abuse tools read it.
//!
//! Each worker appends lines to its own buffer; a buffer goes to the file when it holds
//! [`FLUSH_AT`] bytes, once a second, and when the worker stops, as one write(2) of whole
//! lines on an I/O thread (a write to a full or slow disk never blocks a worker, and an
//! O_APPEND write is never interleaved with another worker's). SIGUSR1 reopens the file
//! (logrotate's rename + signal, as nginx). A failing write is warned about, counted,
//! and serving goes on.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::log::RateLimit;
use crate::runtime::Worker;
use crate::sync::lock;

/// A worker's buffer is written out at this size...
const FLUSH_AT: usize = 32 * 1024;
/// ...or after this long, whichever comes first.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Longest request line, Referer or User-Agent kept in a line; the rest becomes `...`.
const MAX_FIELD: usize = 2048;

/// Where lines go: a file (reopened on SIGUSR1) or standard error (`-`).
pub struct AccessLog {
    path: Option<PathBuf>,
    file: Mutex<Option<Arc<File>>>,
    pub lines: AtomicU64,
    pub lines_lost: AtomicU64,
    /// Writes handed to I/O threads and not done yet: a stopping worker waits for them.
    in_flight: AtomicUsize,
    /// A full disk must not become a flood of warnings: one a minute.
    lost_warnings: RateLimit,
}

impl AccessLog {
    /// `-` is standard error (journald under systemd). A file that cannot be opened is
    /// warned about and counted; serving goes on, and SIGUSR1 tries again.
    pub fn open(target: &str) -> Arc<AccessLog> {
        let path = (target != "-").then(|| PathBuf::from(target));
        let log = Arc::new(AccessLog {
            path,
            file: Mutex::new(None),
            lines: AtomicU64::new(0),
            lines_lost: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            lost_warnings: RateLimit::new(Duration::from_secs(60)),
        });
        log.reopen();
        log
    }

    /// Opens the path again: after logrotate renamed the file, lines go to a new one.
    pub fn reopen(&self) {
        let opened = match &self.path {
            None => crate::sys::duplicate(libc::STDERR_FILENO).map(File::from),
            Some(path) => std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .custom_flags(libc::O_CLOEXEC)
                .open(path),
        };
        match opened {
            Ok(file) => *lock(&self.file) = Some(Arc::new(file)),
            Err(e) => {
                *lock(&self.file) = None;
                crate::warn!(
                    "failed to open --access-log {}: {e}; access lines are dropped (and counted) \
                     until SIGUSR1 opens it: check that its directory exists and is writable \
                     (LogsDirectory= in the unit)",
                    self.describe()
                );
            }
        }
    }

    /// Lines written and lost, for `/metrics`.
    pub fn render(&self, out: &mut crate::metrics::Exposition) {
        out.counter(
            "ringsock_access_log_lines_total",
            "Access log lines written.",
            self.lines.load(Ordering::Relaxed),
        );
        out.counter(
            "ringsock_access_log_lines_lost_total",
            "Access log lines that could not be written (full disk, unwritable path).",
            self.lines_lost.load(Ordering::Relaxed),
        );
    }

    fn describe(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => "-".into(),
        }
    }

    /// Writes whole lines (on an I/O thread: it may wait for the disk).
    fn write(&self, lines: &[u8], count: u64) {
        let file = lock(&self.file).clone();
        let result = match file {
            Some(file) => (&*file).write_all(lines),
            None => Err(io::Error::other("the file is not open")),
        };
        match result {
            Ok(()) => self.lines.fetch_add(count, Ordering::Relaxed),
            Err(e) => {
                self.warn_lost(&e, count);
                self.lines_lost.fetch_add(count, Ordering::Relaxed)
            }
        };
    }

    fn warn_lost(&self, e: &io::Error, count: u64) {
        crate::warn_limited!(
            self.lost_warnings,
            "failed to write {count} lines to --access-log {}: {e}; serving goes on, lost lines \
             are counted in ringsock_access_log_lines_lost_total (said at most once a minute)",
            self.describe()
        );
    }
}

/// One worker's share: its buffer, its cached timestamp, and the task that flushes.
pub struct WorkerLog {
    log: Arc<AccessLog>,
    buffer: RefCell<Vec<u8>>,
    lines: Cell<u64>,
    time: TimeCache,
}

impl WorkerLog {
    /// Starts the worker's flushing task (the caller runs on the worker's runtime).
    pub fn start(log: &Arc<AccessLog>, worker: &Rc<Worker>) -> Rc<WorkerLog> {
        let this = Rc::new(WorkerLog {
            log: log.clone(),
            buffer: RefCell::new(Vec::with_capacity(FLUSH_AT + MAX_FIELD * 4)),
            lines: Cell::new(0),
            time: TimeCache::default(),
        });
        monoio::spawn(flush_regularly(Rc::downgrade(&this), worker.clone()));
        this
    }

    /// Appends one line; writes the buffer out once it is full.
    pub fn line(&self, entry: &Entry<'_>) {
        let mut buffer = self.buffer.borrow_mut();
        entry.format(&mut buffer, &self.time.now());
        self.lines.set(self.lines.get() + 1);
        if buffer.len() >= FLUSH_AT {
            drop(buffer);
            self.flush();
        }
    }

    /// Hands the buffered lines to an I/O thread.
    fn flush(&self) {
        let mut buffer = self.buffer.borrow_mut();
        if buffer.is_empty() {
            return;
        }
        let lines = std::mem::replace(&mut *buffer, Vec::with_capacity(FLUSH_AT + MAX_FIELD * 4));
        let count = self.lines.replace(0);
        let log = self.log.clone();
        log.in_flight.fetch_add(1, Ordering::AcqRel);
        // Queued on the pool now, not when some task is next polled: a worker that is
        // ending may never poll again. Nobody waits for the result.
        drop(monoio::spawn_blocking(move || {
            log.write(&lines, count);
            log.in_flight.fetch_sub(1, Ordering::AcqRel);
        }));
    }
}

impl Drop for WorkerLog {
    /// The worker is ending (its runtime is being dropped): write what is left here.
    fn drop(&mut self) {
        let lines = std::mem::take(self.buffer.get_mut());
        if !lines.is_empty() {
            self.log.write(&lines, self.lines.get());
        }
        // Earlier flushes still on I/O threads must land before the process exits.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.log.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Flushes every [`FLUSH_EVERY`]; from shutdown on every 100 ms, so that lines of
/// answers already given are written even if the drain is cut short.
async fn flush_regularly(log: std::rc::Weak<WorkerLog>, worker: Rc<Worker>) {
    loop {
        if worker.is_stopping() {
            monoio::time::sleep(Duration::from_millis(100)).await;
        } else {
            monoio::select! {
                _ = monoio::time::sleep(FLUSH_EVERY) => {}
                _ = worker.stopping() => {}
            }
        }
        match log.upgrade() {
            Some(log) => log.flush(),
            None => return,
        }
    }
}

/// What one line says.
pub struct Entry<'a> {
    pub client: &'a [u8],
    /// The user `--route-auth` let in (nginx's `$remote_user`), `-` when none.
    pub user: Option<&'a [u8]>,
    /// The request line as received (empty when none arrived, e.g. a 408).
    pub request: &'a [u8],
    pub status: u16,
    pub body_bytes: u64,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    pub started: Instant,
    /// On a server with routes (`--route`), every line ends with the backend's status and
    /// time (nginx's `$upstream_status $upstream_response_time`), `- -` for a request no
    /// backend answered; `None` on a server without, whose lines stay as they were.
    pub backend: Option<Backend>,
}

/// A routed request's backend answer, for the log.
#[derive(Clone, Copy, Debug, Default)]
pub struct Backend {
    pub status: Option<u16>,
    /// From the request's start to the backend's answer head.
    pub time: Option<Duration>,
}

impl Entry<'_> {
    /// `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
    /// "$http_referer" "$http_user_agent" $request_time`, then with routes
    /// `$upstream_status $upstream_response_time`.
    fn format(&self, out: &mut Vec<u8>, time_local: &[u8]) {
        out.extend_from_slice(self.client);
        out.extend_from_slice(b" - ");
        match self.user {
            Some(user) => escape(user, out),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" [");
        out.extend_from_slice(time_local);
        out.extend_from_slice(b"] \"");
        escape(self.request, out);
        out.extend_from_slice(b"\" ");
        crate::http::response::push_u64(out, u64::from(self.status));
        out.push(b' ');
        crate::http::response::push_u64(out, self.body_bytes);
        for field in [self.referer, self.user_agent] {
            out.extend_from_slice(b" \"");
            match field {
                Some(value) => escape(value, out),
                None => out.push(b'-'),
            }
            out.push(b'"');
        }
        out.push(b' ');
        seconds(self.started.elapsed(), out);
        if let Some(backend) = self.backend {
            out.push(b' ');
            match backend.status {
                Some(status) => crate::http::response::push_u64(out, u64::from(status)),
                None => out.push(b'-'),
            }
            out.push(b' ');
            match backend.time {
                Some(time) => seconds(time, out),
                None => out.push(b'-'),
            }
        }
        out.push(b'\n');
    }
}

/// Seconds with milliseconds, as nginx writes times: `0.004`.
fn seconds(took: Duration, out: &mut Vec<u8>) {
    let millis = took.as_millis() as u64;
    crate::http::response::push_u64(out, millis / 1000);
    out.push(b'.');
    let frac = millis % 1000;
    out.extend_from_slice(&[
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// Copies `value` as nginx escapes log variables: `"`, `\`, control bytes and bytes
/// above 0x7e as `\xHH`, so a hostile header can neither end the field nor the line.
fn escape(value: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let (value, cut) = match value.len() > MAX_FIELD {
        true => (&value[..MAX_FIELD], true),
        false => (value, false),
    };
    for &b in value {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            out.push(b);
        }
    }
    if cut {
        out.extend_from_slice(b"...");
    }
}

/// `02/Dec/2026:08:14:43 +0000` in local time, made once a second.
#[derive(Default)]
struct TimeCache {
    second: Cell<i64>,
    text: RefCell<Vec<u8>>,
}

impl TimeCache {
    fn now(&self) -> std::cell::Ref<'_, Vec<u8>> {
        let now = crate::http::response::unix_now_coarse();
        if now != self.second.get() || self.text.borrow().is_empty() {
            self.second.set(now);
            *self.text.borrow_mut() = format_time_local(now);
        }
        self.text.borrow()
    }
}

fn format_time_local(unix: i64) -> Vec<u8> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // SAFETY: tm is plain data; localtime_r fills it from a valid time_t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let t = unix as libc::time_t;
    // SAFETY: valid pointers to a time_t and a tm.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return b"01/Jan/1970:00:00:00 +0000".to_vec();
    }
    let offset = tm.tm_gmtoff / 60;
    let (sign, offset) = if offset < 0 {
        ('-', -offset)
    } else {
        ('+', offset)
    };
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} {sign}{:02}{:02}",
        tm.tm_mday,
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_year + 1900,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        offset / 60,
        offset % 60
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_combined_plus_request_time_and_hostile_bytes_are_escaped() {
        let entry = Entry {
            client: b"192.0.2.7",
            user: None,
            request: b"GET /dists/stable/InRelease HTTP/1.1",
            status: 200,
            body_bytes: 4096,
            referer: None,
            user_agent: Some(b"Debian APT-HTTP/1.3 (2.6.1)\"\n\x01"),
            started: Instant::now(),
            backend: None,
        };
        let mut out = Vec::new();
        entry.format(&mut out, b"02/Dec/2026:08:14:43 +0000");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "192.0.2.7 - - [02/Dec/2026:08:14:43 +0000] \"GET /dists/stable/InRelease HTTP/1.1\" \
             200 4096 \"-\" \"Debian APT-HTTP/1.3 (2.6.1)\\x22\\x0A\\x01\" 0.000\n"
        );
    }

    #[test]
    fn with_routes_a_line_ends_with_the_backends_status_and_time() {
        let line = |backend| {
            let entry = Entry {
                client: b"192.0.2.7",
                user: None,
                request: b"GET /api/version HTTP/1.1",
                status: 200,
                body_bytes: 2,
                referer: None,
                user_agent: None,
                started: Instant::now(),
                backend: Some(backend),
            };
            let mut out = Vec::new();
            entry.format(&mut out, b"02/Dec/2026:08:14:43 +0000");
            String::from_utf8(out).unwrap()
        };
        let routed = line(Backend {
            status: Some(201),
            time: Some(Duration::from_millis(1234)),
        });
        assert!(
            routed.ends_with("\"-\" \"-\" 0.000 201 1.234\n"),
            "{routed}"
        );
        let local = line(Backend::default());
        assert!(local.ends_with(" 0.000 - -\n"), "{local}");
    }

    #[test]
    fn a_long_field_is_cut() {
        let mut out = Vec::new();
        escape(&vec![b'a'; MAX_FIELD + 10], &mut out);
        assert_eq!(out.len(), MAX_FIELD + 3);
        assert!(out.ends_with(b"a..."));
    }

    #[test]
    fn time_local_has_the_nginx_shape() {
        let text = String::from_utf8(format_time_local(1_764_664_483)).unwrap();
        assert_eq!(text.len(), "02/Dec/2025:08:34:43 +0000".len(), "{text}");
        assert_eq!(&text[2..3], "/");
        assert_eq!(&text[6..7], "/");
        assert!(text.contains("/2025:"), "{text}");
    }
}
