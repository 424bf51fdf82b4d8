//! `ringsock serve`: a minimal HTTP/1.1 server (aptly's `/api/version`, Prometheus
//! metrics, a mirror tree) run by the same workers, limits and shutdown as `proxy`.
//!
//! One task per connection: read into a reused buffer, answer every complete request in
//! it in order (pipelining) into a reused output buffer, write that with one send, send
//! file bodies with sendfile(2). Reads use the runtime's ownership-passing receive (on
//! io_uring one submission that completes with the data); writes are non-blocking
//! syscalls that wait for readiness only when the socket buffer is full.

pub mod api;
pub mod files;
pub mod metrics;
pub mod request;
pub mod response;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;

use crate::net::{is_disconnect, linger, Linger, Stream};
use crate::runtime::{Handler, Worker};
use files::{FileInfo, Kind, Plan, Root};
use metrics::{Metrics, WorkerCounters};
use request::{Method, Reject, Request};
use response::{Connection, DateCache, HeadWriter, Status};

/// What the server was configured with, shared by all workers.
pub struct Settings {
    pub root: Option<Root>,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
}

/// Built once; every worker's handler holds it.
pub struct Shared {
    settings: Settings,
    metrics: Metrics,
}

impl Shared {
    pub fn new(settings: Settings) -> Arc<Shared> {
        Arc::new(Shared {
            settings,
            metrics: Metrics::default(),
        })
    }
}

/// One per worker.
pub struct HttpHandler {
    shared: Arc<Shared>,
    worker: Rc<Worker>,
    counters: Arc<WorkerCounters>,
    date: DateCache,
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Version,
    Metrics,
    Files,
    NotFound,
}

/// Routes on the path (query already stripped). The API wins over files of the same name.
pub fn route(path: &[u8], has_root: bool) -> Route {
    match path {
        b"/api/version" => Route::Version,
        b"/metrics" => Route::Metrics,
        _ if has_root => Route::Files,
        _ => Route::NotFound,
    }
}

/// A file body still to send after the head.
struct Body {
    file: File,
    offset: u64,
    len: u64,
}

/// First read buffer; grown to [`request::MAX_HEAD`] only for a head that needs it.
const READ_BUF: usize = 4096;
/// Pipelined answers are batched into one send up to this size.
const FLUSH_AT: usize = 64 * 1024;
/// After an error answer, how long and how much we read and discard before closing, so
/// unread request bytes do not turn our close into a RST that destroys the answer.
const AFTER_ERROR: Linger = Linger {
    limit: Duration::from_secs(2),
    stall: Duration::from_secs(2),
    max_dropped: 1 << 20,
};

impl HttpHandler {
    pub fn new(shared: &Arc<Shared>, worker: &Rc<Worker>) -> HttpHandler {
        HttpHandler {
            counters: shared.metrics.register(),
            shared: shared.clone(),
            worker: worker.clone(),
            date: DateCache::default(),
        }
    }
}

impl Handler for HttpHandler {
    async fn handle(self: Rc<Self>, mut stream: Stream) {
        if let Err(e) = self.serve(&mut stream).await {
            if !is_disconnect(&e) {
                crate::debug!("failed to serve a connection: {e}");
            }
            // A body cut short must not look complete to the client.
            stream.reset_on_close();
        }
    }
}

/// Why the wait for more request bytes ended.
enum Wake {
    Read((io::Result<usize>, Vec<u8>)),
    Timeout,
    Shutdown,
}

impl HttpHandler {
    async fn serve(&self, stream: &mut Stream) -> io::Result<()> {
        let mut buf: Vec<u8> = Vec::with_capacity(READ_BUF);
        let mut out: Vec<u8> = Vec::with_capacity(READ_BUF);
        let mut rel: Vec<u8> = Vec::new();
        // When the head being read began; `None` while idle between requests.
        let mut head_started = Some(Instant::now());
        loop {
            let mut start = 0;
            let mut close = false;
            while start < buf.len() {
                let req = match request::parse_head(&mut buf[start..]) {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(Reject { status, why }) => {
                        crate::debug!("rejecting a request with {}: {why}", status.code);
                        // Even a rejected HEAD gets no body: the client reads none.
                        let head_only = buf[start..].starts_with(b"HEAD ");
                        self.simple(&mut out, status, Connection::Close, head_only);
                        return self.finish_closing(stream, &mut out).await;
                    }
                };
                start += req.head_len;
                let connection = if !req.keep_alive || self.worker.is_stopping() {
                    Connection::Close
                } else if req.http10 {
                    Connection::KeepAlive10
                } else {
                    Connection::KeepAlive
                };
                let (body, connection) = self.respond(&req, connection, &mut out, &mut rel);
                if let Some(body) = body {
                    // The head goes with MSG_MORE so it shares a segment with the body.
                    self.write_out(stream, &mut out, true).await?;
                    let mut sent = 0;
                    let result = files::send_file(
                        stream,
                        &body.file,
                        body.offset,
                        body.len,
                        self.shared.settings.keepalive_timeout,
                        &mut sent,
                    )
                    .await;
                    self.counters.count_bytes(sent);
                    result?;
                }
                if connection == Connection::Close {
                    close = true;
                    break;
                }
                if out.len() >= FLUSH_AT {
                    self.write_out(stream, &mut out, false).await?;
                }
            }
            if close {
                return self.finish_closing(stream, &mut out).await;
            }
            self.write_out(stream, &mut out, false).await?;

            // Keep only the unanswered rest, at the front.
            if start > 0 {
                buf.copy_within(start.., 0);
                buf.truncate(buf.len() - start);
                head_started = (!buf.is_empty()).then(Instant::now);
            }
            if buf.len() == buf.capacity() {
                buf.reserve_exact(request::MAX_HEAD - buf.len());
            }

            // Idle between requests: the keep-alive timeout applies and a timeout closes
            // silently. Reading a head (or waiting for the first one): the header timeout,
            // then 408.
            let (idle, wait) = match head_started {
                None => (true, self.shared.settings.keepalive_timeout),
                Some(at) => (
                    false,
                    self.shared
                        .settings
                        .header_timeout
                        .saturating_sub(at.elapsed()),
                ),
            };
            // Shutdown closes every connection with no request bytes pending; one whose
            // head is arriving gets its answer (with `Connection: close`).
            let closable = buf.is_empty();
            let wake = {
                let read = read_more(stream, buf);
                let shutdown = async {
                    if closable {
                        self.worker.stopping().await
                    } else {
                        std::future::pending().await
                    }
                };
                monoio::select! {
                    r = read => Wake::Read(r),
                    _ = monoio::time::sleep(wait) => Wake::Timeout,
                    _ = shutdown => Wake::Shutdown,
                }
            };
            match wake {
                Wake::Read((Ok(0), _)) => return Ok(()),
                Wake::Read((Ok(_), back)) => {
                    buf = back;
                    if head_started.is_none() {
                        head_started = Some(Instant::now());
                    }
                }
                Wake::Read((Err(e), _)) => return Err(e),
                // Idle keep-alive connections just close at their timeout, as nginx
                // does; so does any connection without pending request bytes at shutdown.
                Wake::Shutdown => return Ok(()),
                Wake::Timeout if idle => return Ok(()),
                Wake::Timeout => {
                    self.simple(
                        &mut out,
                        response::REQUEST_TIMEOUT,
                        Connection::Close,
                        false,
                    );
                    return self.finish_closing(stream, &mut out).await;
                }
            }
        }
    }

    /// Writes the head (and small body) of one answer into `out`; a file body is
    /// returned for the caller to send after flushing, with whether the connection
    /// stays open after it.
    fn respond(
        &self,
        req: &Request<'_>,
        connection: Connection,
        out: &mut Vec<u8>,
        rel: &mut Vec<u8>,
    ) -> (Option<Body>, Connection) {
        match self.answer(req, connection, out, rel) {
            Ok(body) => (body, connection),
            // Out of fds: this connection's own fd is best given back (nginx closes too).
            Err(status) if status == response::SERVICE_UNAVAILABLE => {
                self.count(status);
                let date = self.date.now();
                let mut head = HeadWriter::start(out, status, &date);
                head.header("Retry-After", b"1");
                let head_only = req.method == Method::Head;
                error_body(head, status, Connection::Close, head_only);
                (None, Connection::Close)
            }
            Err(status) => {
                self.simple(out, status, connection, req.method == Method::Head);
                (None, connection)
            }
        }
    }

    /// [`Self::respond`] for every answer but a failure to look the file up.
    fn answer(
        &self,
        req: &Request<'_>,
        connection: Connection,
        out: &mut Vec<u8>,
        rel: &mut Vec<u8>,
    ) -> Result<Option<Body>, Status> {
        let head_only = req.method == Method::Head;
        if req.method == Method::NotAllowed {
            self.count(response::METHOD_NOT_ALLOWED);
            let date = self.date.now();
            let mut head = HeadWriter::start(out, response::METHOD_NOT_ALLOWED, &date);
            head.header("Allow", b"GET, HEAD");
            error_body(head, response::METHOD_NOT_ALLOWED, connection, false);
            return Ok(None);
        }
        let path = request::path_of(req.target);
        match route(path, self.shared.settings.root.is_some()) {
            Route::Version => {
                self.count(response::OK);
                let date = self.date.now();
                let mut head = HeadWriter::start(out, response::OK, &date);
                head.header("Content-Type", api::VERSION_TYPE)
                    .content_length(api::VERSION_BODY.len() as u64);
                head.finish(connection);
                if !head_only {
                    out.extend_from_slice(api::VERSION_BODY);
                }
                Ok(None)
            }
            Route::Metrics => {
                let mut text = String::with_capacity(1024);
                api::render_metrics(
                    &mut text,
                    self.worker.limiter.accepted(),
                    self.worker.limiter.open(),
                    &self.shared.metrics.totals(),
                );
                self.count(response::OK);
                let date = self.date.now();
                let mut head = HeadWriter::start(out, response::OK, &date);
                head.header("Content-Type", api::METRICS_TYPE)
                    .content_length(text.len() as u64);
                head.finish(connection);
                if !head_only {
                    out.extend_from_slice(text.as_bytes());
                }
                Ok(None)
            }
            Route::NotFound => Err(response::NOT_FOUND),
            Route::Files => self.file(req, path, connection, out, rel),
        }
    }

    fn file(
        &self,
        req: &Request<'_>,
        path: &[u8],
        connection: Connection,
        out: &mut Vec<u8>,
        rel: &mut Vec<u8>,
    ) -> Result<Option<Body>, Status> {
        let root = self
            .shared
            .settings
            .root
            .as_ref()
            .ok_or(response::NOT_FOUND)?;
        files::resolve(path, rel)?;
        let c_rel = std::ffi::CStr::from_bytes_with_nul(rel).map_err(|_| response::BAD_REQUEST)?;
        let file = root.open(c_rel)?;
        let (date, now) = self.date.now_and_second();
        let kind = files::kind(&file, now).map_err(|_| response::INTERNAL_SERVER_ERROR)?;
        let info = match kind {
            // `file/` names a directory that is not there, as open(2) would say
            // (ENOTDIR); serving the file there would give it a second URL.
            Kind::File(_) if path.ends_with(b"/") => return Err(response::NOT_FOUND),
            Kind::File(info) => info,
            Kind::Dir if root.autoindex => {
                self.directory(req, &file, connection, out, rel)?;
                return Ok(None);
            }
            Kind::Dir | Kind::Other => return Err(response::FORBIDDEN),
        };
        let head_only = req.method == Method::Head;
        let plan = files::plan(&info, req);
        let status = match plan {
            Plan::PreconditionFailed => response::PRECONDITION_FAILED,
            Plan::NotModified => response::NOT_MODIFIED,
            Plan::Full => response::OK,
            Plan::Partial { .. } => response::PARTIAL_CONTENT,
            Plan::Unsatisfiable => response::RANGE_NOT_SATISFIABLE,
        };
        self.count(status);
        let mut head = HeadWriter::start(out, status, &date);
        validators(&mut head, &info);
        let (offset, len) = match plan {
            Plan::NotModified => {
                head.finish(connection);
                return Ok(None);
            }
            Plan::PreconditionFailed => {
                error_body(head, status, connection, head_only);
                return Ok(None);
            }
            Plan::Unsatisfiable => {
                let mut value = b"bytes */".to_vec();
                response::push_u64(&mut value, info.len);
                head.header("Content-Range", &value);
                error_body(head, status, connection, head_only);
                return Ok(None);
            }
            Plan::Full => (0, info.len),
            Plan::Partial { first, last } => {
                head.content_range(first, last, info.len);
                (first, last - first + 1)
            }
        };
        head.header("Content-Type", files::content_type(&rel[..rel.len() - 1]))
            .header("Accept-Ranges", b"bytes")
            .content_length(len);
        head.finish(connection);
        Ok((!head_only && len > 0).then_some(Body { file, offset, len }))
    }

    /// A directory under `--autoindex`: redirect to the slash form, then list it. `rel`
    /// is its path under the root as [`files::resolve`] left it.
    fn directory(
        &self,
        req: &Request<'_>,
        dir: &File,
        connection: Connection,
        out: &mut Vec<u8>,
        rel: &[u8],
    ) -> Result<(), Status> {
        let head_only = req.method == Method::Head;
        let date = self.date.now();
        let path = request::path_of(req.target);
        if !path.ends_with(b"/") {
            self.count(response::MOVED_PERMANENTLY);
            // Built from the normalised path, never the raw one: `//pool` would make
            // `//pool/`, which browsers read as the host `pool`. The query stays.
            let mut location = vec![b'/'];
            let rel = &rel[..rel.len() - 1];
            if rel != b"." {
                files::percent_encode(rel, &mut location);
                location.push(b'/');
            }
            location.extend_from_slice(&req.target[path.len()..]);
            let mut head = HeadWriter::start(out, response::MOVED_PERMANENTLY, &date);
            head.header("Location", &location);
            error_body(head, response::MOVED_PERMANENTLY, connection, head_only);
            return Ok(());
        }
        let mut html = Vec::new();
        files::autoindex(dir, path, &mut html).map_err(|_| response::INTERNAL_SERVER_ERROR)?;
        self.count(response::OK);
        let mut head = HeadWriter::start(out, response::OK, &date);
        head.header("Content-Type", b"text/html; charset=utf-8")
            .content_length(html.len() as u64);
        head.finish(connection);
        if !head_only {
            out.extend_from_slice(&html);
        }
        Ok(())
    }

    /// A status with a one-line text body, e.g. `404 Not Found`.
    fn simple(&self, out: &mut Vec<u8>, status: Status, connection: Connection, head_only: bool) {
        self.count(status);
        let date = self.date.now();
        let head = HeadWriter::start(out, status, &date);
        error_body(head, status, connection, head_only);
    }

    fn count(&self, status: Status) {
        self.counters.count_response(status.class());
    }

    /// Sends and empties `out`. `more`: a body follows at once (MSG_MORE).
    async fn write_out(&self, stream: &Stream, out: &mut Vec<u8>, more: bool) -> io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let mut sent = 0;
        let result = write_all(
            stream,
            out,
            more,
            self.shared.settings.keepalive_timeout,
            &mut sent,
        )
        .await;
        // What went out, also when the client went away midway.
        self.counters.count_bytes(sent as u64);
        out.clear();
        // A big listing or a long pipeline must not pin its buffer for the connection's life.
        if out.capacity() > FLUSH_AT {
            out.shrink_to(READ_BUF);
        }
        result
    }

    /// Sends what is left, then closes gracefully: FIN first, then a lingering close
    /// ([`linger`]), so the client gets to read the answer.
    async fn finish_closing(&self, stream: &mut Stream, out: &mut Vec<u8>) -> io::Result<()> {
        self.write_out(stream, out, false).await?;
        stream.shutdown_write()?;
        linger(stream, &AFTER_ERROR).await;
        Ok(())
    }
}

/// Last-Modified and ETag, on every answer about a file.
fn validators(head: &mut HeadWriter<'_>, info: &FileInfo) {
    head.header(
        "Last-Modified",
        &response::format_http_date(info.last_modified),
    )
    .header("ETag", info.etag());
}

/// Finishes `head` with a `CODE Reason\n` text body.
fn error_body(mut head: HeadWriter<'_>, status: Status, connection: Connection, head_only: bool) {
    // "NNN " + reason + "\n"
    let len = 4 + status.reason.len() + 1;
    head.header("Content-Type", b"text/plain; charset=utf-8")
        .content_length(len as u64);
    let out = head.finish(connection);
    if !head_only {
        response::push_u64(out, u64::from(status.code));
        out.push(b' ');
        out.extend_from_slice(status.reason.as_bytes());
        out.push(b'\n');
    }
}

/// Appends what the socket has to `buf`'s spare capacity with the runtime's own receive:
/// on io_uring one RECV submission that completes with the data, on epoll a recv(2) that
/// keeps the driver's readiness cache right. Measured on loopback with wrk -c64, this beat
/// waiting for readiness (POLL_ADD) and calling recv(2) ourselves by 20-30% on io_uring.
async fn read_more(stream: &mut Stream, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
    let len = buf.len();
    let (result, slice) = stream.recv(buf.slice_mut(len..)).await;
    (result, slice.into_inner())
}

/// Waits until the socket takes more bytes; a client that has read nothing for `stall`
/// is given up on (nginx's send_timeout), so it cannot hold a connection slot forever.
pub async fn writable_within(stream: &Stream, stall: Duration) -> io::Result<()> {
    monoio::select! {
        ready = stream.writable() => ready,
        _ = monoio::time::sleep(stall) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client stopped reading",
        )),
    }
}

/// Writes all of `data` with non-blocking send(2), waiting for write readiness only
/// when the socket buffer is full. `sent` counts what went out, also on failure.
async fn write_all(
    stream: &Stream,
    data: &[u8],
    more: bool,
    stall: Duration,
    sent: &mut usize,
) -> io::Result<()> {
    while *sent < data.len() {
        match crate::sys::send_now(stream.as_raw_fd(), &data[*sent..], more) {
            Ok(n) => *sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                writable_within(stream, stall).await?
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

    #[test]
    fn routes() {
        assert_eq!(route(b"/api/version", false), Route::Version);
        assert_eq!(route(b"/metrics", true), Route::Metrics);
        assert_eq!(route(b"/dists/x/InRelease", true), Route::Files);
        assert_eq!(route(b"/dists/x/InRelease", false), Route::NotFound);
    }
}
