//! Where each request goes and what it is answered: the API, metrics and the mirror
//! tree. Answers are written into the connection's output buffer; a file body is handed
//! back for the connection to send.

use std::fs::File;
use std::sync::Arc;

use super::files::{self, FileInfo, Kind, Plan, RelPath};
use super::request::{Method, Request};
use super::response::{self, Connection, HeadWriter, Status};
use super::{api, HttpHandler};

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

/// What a file's answer is made of, besides the connection and the output buffer.
struct FileAnswer<'a> {
    req: &'a Request<'a>,
    info: &'a FileInfo,
    content_type: &'static [u8],
    date: &'a [u8; response::DATE_LEN],
}

/// A file body still to send after the head.
pub struct Body {
    pub file: Arc<File>,
    pub pages: files::Pages,
    pub offset: u64,
    pub len: u64,
}

impl HttpHandler {
    /// Writes the head (and small body) of one answer into `out`; a file body is
    /// returned for the caller to send after flushing, with whether the connection
    /// stays open after it.
    pub(super) async fn respond(
        &self,
        req: &Request<'_>,
        connection: Connection,
        out: &mut Vec<u8>,
        rel: &mut RelPath,
    ) -> (Option<Body>, Connection) {
        match self.answer(req, connection, out, rel).await {
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
    async fn answer(
        &self,
        req: &Request<'_>,
        connection: Connection,
        out: &mut Vec<u8>,
        rel: &mut RelPath,
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
        match route(req.path, self.shared.settings.root.is_some()) {
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
                    &self.worker.pool.stats(),
                    self.shared.settings.access_log.as_deref(),
                    &self.shared.settings.clients,
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
            Route::Files => self.file(req, connection, out, rel).await,
        }
    }

    async fn file(
        &self,
        req: &Request<'_>,
        connection: Connection,
        out: &mut Vec<u8>,
        rel: &mut RelPath,
    ) -> Result<Option<Body>, Status> {
        let root = self
            .shared
            .settings
            .root
            .as_ref()
            .ok_or(response::NOT_FOUND)?;
        rel.decode(req.path)?;
        let (date, now) = self.date.now_and_second();
        let mut offloaded = false;
        let opened = files::open(root, rel, now, &mut offloaded).await;
        if offloaded {
            self.counters.count_disk_open();
        }
        let (file, kind) = opened?;
        let (info, pages) = match kind {
            // `file/` names a directory that is not there, as open(2) would say
            // (ENOTDIR); serving the file there would give it a second URL.
            Kind::File(..) if rel.names_dir() => return Err(response::NOT_FOUND),
            Kind::File(info, pages) => (info, pages),
            Kind::Dir if root.autoindex => {
                self.directory(req, file, connection, out, rel).await?;
                return Ok(None);
            }
            Kind::Dir | Kind::Other => return Err(response::FORBIDDEN),
        };
        let answer = FileAnswer {
            req,
            info: &info,
            content_type: files::content_type(rel.as_bytes()),
            date: &date,
        };
        Ok(self
            .answer_file(&answer, connection, out)
            .map(|(offset, len)| Body {
                file: Arc::new(file),
                pages,
                offset,
                len,
            }))
    }

    /// The head for a file after the conditional headers, and the body range to send
    /// (`None` when there is no body: 304, 412, 416, HEAD or an empty range).
    fn answer_file(
        &self,
        answer: &FileAnswer<'_>,
        connection: Connection,
        out: &mut Vec<u8>,
    ) -> Option<(u64, u64)> {
        let (req, info) = (answer.req, answer.info);
        let head_only = req.method == Method::Head;
        let plan = files::plan(info, req);
        let status = match plan {
            Plan::PreconditionFailed => response::PRECONDITION_FAILED,
            Plan::NotModified => response::NOT_MODIFIED,
            Plan::Full => response::OK,
            Plan::Partial { .. } => response::PARTIAL_CONTENT,
            Plan::Unsatisfiable => response::RANGE_NOT_SATISFIABLE,
        };
        self.count(status);
        let mut head = HeadWriter::start(out, status, answer.date);
        validators(&mut head, info);
        let (offset, len) = match plan {
            Plan::NotModified => {
                head.finish(connection);
                return None;
            }
            Plan::PreconditionFailed => {
                error_body(head, status, connection, head_only);
                return None;
            }
            Plan::Unsatisfiable => {
                let mut value = b"bytes */".to_vec();
                response::push_u64(&mut value, info.len);
                head.header("Content-Range", &value);
                error_body(head, status, connection, head_only);
                return None;
            }
            Plan::Full => (0, info.len),
            Plan::Partial { first, last } => {
                head.content_range(first, last, info.len);
                (first, last - first + 1)
            }
        };
        head.header("Content-Type", answer.content_type)
            .header("Accept-Ranges", b"bytes")
            .content_length(len);
        head.finish(connection);
        (!head_only && len > 0).then_some((offset, len))
    }

    /// A directory under `--autoindex`: redirect to the slash form, then list it. `rel`
    /// is its path under the root.
    async fn directory(
        &self,
        req: &Request<'_>,
        dir: File,
        connection: Connection,
        out: &mut Vec<u8>,
        rel: &RelPath,
    ) -> Result<(), Status> {
        let head_only = req.method == Method::Head;
        let date = self.date.now();
        if !rel.names_dir() {
            self.count(response::MOVED_PERMANENTLY);
            // Built from the normalised path, never the raw one: `//pool` would make
            // `//pool/`, which browsers read as the host `pool`. The query stays.
            let mut location = vec![b'/'];
            let rel = rel.as_bytes();
            if rel != b"." {
                files::percent_encode(rel, &mut location);
                location.push(b'/');
            }
            if let Some(query) = req.query {
                location.push(b'?');
                location.extend_from_slice(query);
            }
            let mut head = HeadWriter::start(out, response::MOVED_PERMANENTLY, &date);
            head.header("Location", &location);
            error_body(head, response::MOVED_PERMANENTLY, connection, head_only);
            return Ok(());
        }
        let html = files::list(dir, req.path.to_vec())
            .await
            .map_err(|_| response::INTERNAL_SERVER_ERROR)?;
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

    /// 429 for a client over `--per-client-rate`, with when to come back; the
    /// connection stays as it was (nginx's limit_req does not close either).
    pub(super) fn too_many(
        &self,
        out: &mut Vec<u8>,
        retry_after: u64,
        connection: Connection,
        req: &Request<'_>,
    ) {
        self.count(response::TOO_MANY_REQUESTS);
        let date = self.date.now();
        let mut head = HeadWriter::start(out, response::TOO_MANY_REQUESTS, &date);
        let mut seconds = Vec::new();
        response::push_u64(&mut seconds, retry_after);
        head.header("Retry-After", &seconds);
        error_body(
            head,
            response::TOO_MANY_REQUESTS,
            connection,
            req.method == Method::Head,
        );
    }

    /// A status with a one-line text body, e.g. `404 Not Found`.
    pub(super) fn simple(
        &self,
        out: &mut Vec<u8>,
        status: Status,
        connection: Connection,
        head_only: bool,
    ) {
        self.count(status);
        let date = self.date.now();
        let head = HeadWriter::start(out, status, &date);
        error_body(head, status, connection, head_only);
    }

    fn count(&self, status: Status) {
        self.last_status.set(status.code);
        self.counters.count_response(status.class());
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
