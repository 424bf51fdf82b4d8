//! Where each request goes and what it is answered: the API, metrics and the mirror
//! tree, each an [`Answer`] for the connection to write.

use std::fs::File;
use std::sync::Arc;

use super::answer::{Answer, Body, ContentRange, FileBody, Value};
use super::files::{self, FileInfo, Kind, Pages, Plan, RelPath, Root};
use super::request::{Method, Request};
use super::response::{self, Status};
use super::upstream::Upstreams;
use super::{api, HttpHandler};
use crate::metrics;

/// What a server answers, decided at start.
pub struct Routes {
    /// The mirror tree, if any.
    pub root: Option<Arc<Root>>,
    /// `/api/version`, answered as aptly does.
    pub api_version: bool,
    /// Whether every path answers metrics (the proxy's metrics socket, which answered
    /// whatever it was asked), rather than `/metrics` alone.
    pub metrics_everywhere: bool,
    pub metrics: metrics::Source,
    /// `--route`s to HTTP backends; none by default.
    pub upstreams: Arc<Upstreams>,
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
pub fn route(path: &[u8], routes: &Routes) -> Route {
    match path {
        b"/api/version" if routes.api_version => Route::Version,
        _ if routes.metrics_everywhere => Route::Metrics,
        b"/metrics" => Route::Metrics,
        _ if routes.root.is_some() => Route::Files,
        _ => Route::NotFound,
    }
}

impl HttpHandler {
    /// The answer to one request; `rel` is the connection's scratch path.
    pub(super) async fn answer(&self, req: &Request<'_>, rel: &mut RelPath) -> Answer {
        if matches!(req.method, Method::Other | Method::Refused) {
            return Answer::reason(response::METHOD_NOT_ALLOWED)
                .with("Allow", Value::Static(b"GET, HEAD"));
        }
        match route(req.path, &self.shared.settings.routes) {
            Route::Version => Answer::ok(api::VERSION_TYPE, Body::Static(api::VERSION_BODY)),
            Route::Metrics => Answer::ok(metrics::CONTENT_TYPE, Body::Owned(self.metrics_text())),
            Route::NotFound => Answer::reason(response::NOT_FOUND),
            Route::Files => self.file(req, rel).await.unwrap_or_else(failed_lookup),
        }
    }

    fn metrics_text(&self) -> Vec<u8> {
        let mut out = metrics::Exposition::default();
        (self.shared.settings.routes.metrics)(&mut out, &self.worker);
        out.into_bytes()
    }

    async fn file(&self, req: &Request<'_>, rel: &mut RelPath) -> Result<Answer, Status> {
        let root = self
            .shared
            .settings
            .routes
            .root
            .as_ref()
            .ok_or(response::NOT_FOUND)?;
        rel.decode(req.path)?;
        let now = self.date.now_and_second().1;
        let mut offloaded = false;
        let opened = files::open(root, rel, now, &mut offloaded).await;
        if offloaded {
            self.counters.count_disk_open();
        }
        let (file, kind) = opened?;
        match kind {
            // `file/` names a directory that is not there, as open(2) would say
            // (ENOTDIR); serving the file there would give it a second URL.
            Kind::File(..) if rel.names_dir() => Err(response::NOT_FOUND),
            Kind::File(info, pages) => Ok(file_answer(req, info, file, pages, rel)),
            Kind::Dir if root.autoindex => directory(req, file, rel).await,
            Kind::Dir | Kind::Other => Err(response::FORBIDDEN),
        }
    }
}

/// A file's answer after the conditional headers: 200, 206, 304, 412 or 416, always
/// with the file's validators.
fn file_answer(
    req: &Request<'_>,
    info: FileInfo,
    file: File,
    pages: Pages,
    rel: &RelPath,
) -> Answer {
    let body = |offset, len| {
        Body::File(FileBody {
            file: Arc::new(file),
            pages,
            offset,
            len,
        })
    };
    let (status, content_range, body) = match files::plan(&info, req) {
        Plan::PreconditionFailed => (response::PRECONDITION_FAILED, None, Body::Reason),
        Plan::NotModified => (response::NOT_MODIFIED, None, Body::None),
        Plan::Unsatisfiable => (
            response::RANGE_NOT_SATISFIABLE,
            Some(ContentRange::Unsatisfiable { len: info.len }),
            Body::Reason,
        ),
        Plan::Full => (response::OK, None, body(0, info.len)),
        Plan::Partial { first, last } => (
            response::PARTIAL_CONTENT,
            Some(ContentRange::Bytes {
                first,
                last,
                len: info.len,
            }),
            body(first, last - first + 1),
        ),
    };
    Answer {
        content_type: Some(files::content_type(rel.as_bytes())),
        validators: Some(info),
        content_range,
        body,
        ..Answer::reason(status)
    }
}

/// A directory under `--autoindex`: a redirect to the slash form, else its listing.
async fn directory(req: &Request<'_>, dir: File, rel: &RelPath) -> Result<Answer, Status> {
    if !rel.names_dir() {
        // Built from the normalised path, never the raw one: `//pool` would make
        // `//pool/`, which browsers read as the host `pool`. The query stays.
        let mut location = vec![b'/'];
        if rel.as_bytes() != b"." {
            files::percent_encode(rel.as_bytes(), &mut location);
            location.push(b'/');
        }
        if let Some(query) = req.query {
            location.push(b'?');
            location.extend_from_slice(query);
        }
        return Ok(
            Answer::reason(response::MOVED_PERMANENTLY).with("Location", Value::Owned(location))
        );
    }
    match files::list(dir, req.path.to_vec()).await {
        Ok(html) => Ok(Answer::ok(b"text/html; charset=utf-8", Body::Owned(html))),
        Err(e) => {
            crate::warn!(
                "failed to list the directory {}: {e}; answered 500",
                String::from_utf8_lossy(rel.as_bytes())
            );
            Err(response::INTERNAL_SERVER_ERROR)
        }
    }
}

/// What a failed lookup is answered: its status, and out of fds also `Retry-After` and
/// a close, so this connection's own fd is given back (nginx closes too).
fn failed_lookup(status: Status) -> Answer {
    if status == response::SERVICE_UNAVAILABLE {
        return Answer {
            closes: true,
            ..Answer::reason(status).with("Retry-After", Value::Number(1))
        };
    }
    Answer::reason(status)
}

/// 429 for a client over `--per-client-rate`, with when to come back; the connection
/// stays as it was (nginx's limit_req does not close either).
pub fn too_many(retry_after: u64) -> Answer {
    Answer::reason(response::TOO_MANY_REQUESTS).with("Retry-After", Value::Number(retry_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(root: bool, metrics_everywhere: bool) -> Routes {
        let dir = std::env::temp_dir();
        Routes {
            root: root.then(|| Arc::new(Root::new(&dir, false, false).unwrap())),
            api_version: !metrics_everywhere,
            metrics_everywhere,
            metrics: Arc::new(|_, _| {}),
            upstreams: Arc::new(Upstreams::none()),
        }
    }

    #[test]
    fn the_api_and_metrics_win_over_files() {
        let (mirror, api_only) = (routes(true, false), routes(false, false));
        assert_eq!(route(b"/api/version", &api_only), Route::Version);
        assert_eq!(route(b"/metrics", &mirror), Route::Metrics);
        assert_eq!(route(b"/dists/x/InRelease", &mirror), Route::Files);
        assert_eq!(route(b"/dists/x/InRelease", &api_only), Route::NotFound);
        // The proxy's metrics socket answers metrics whatever it is asked.
        let side_door = routes(false, true);
        assert_eq!(route(b"/", &side_door), Route::Metrics);
        assert_eq!(route(b"/api/version", &side_door), Route::Metrics);
    }
}
