//! `ringsock serve`: a minimal HTTP/1.1 server (aptly's `/api/version`, Prometheus
//! metrics, a mirror tree) run by the same workers, limits and shutdown as `proxy`.
//!
//! One task per connection: read into a reused buffer, answer every complete request in
//! it in order (pipelining) into a reused output buffer, write that with one send, send
//! file bodies with sendfile(2). Reads use the runtime's ownership-passing receive (on
//! io_uring one submission that completes with the data); writes are non-blocking
//! syscalls that wait for readiness only when the socket buffer is full.

pub mod access_log;
pub mod api;
mod conn;
pub mod files;
pub mod metrics;
pub mod request;
pub mod response;
mod router;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::net::{is_disconnect, Stream};
use crate::runtime::{Handler, Worker};
use files::Root;
use metrics::{Metrics, WorkerCounters};
use response::DateCache;
pub use router::{route, Route};

/// What the server was configured with, shared by all workers.
pub struct Settings {
    pub root: Option<Arc<Root>>,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub access_log: Option<Arc<access_log::AccessLog>>,
    /// `--proxy-protocol-from` and `--per-client-*`.
    pub clients: Arc<crate::net::client::ClientRules>,
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
    log: Option<Rc<access_log::WorkerLog>>,
    /// The status of the answer just written, for the access log.
    last_status: std::cell::Cell<u16>,
}

impl HttpHandler {
    pub fn new(shared: &Arc<Shared>, worker: &Rc<Worker>) -> HttpHandler {
        HttpHandler {
            counters: shared.metrics.register(),
            shared: shared.clone(),
            worker: worker.clone(),
            date: DateCache::default(),
            log: shared
                .settings
                .access_log
                .as_ref()
                .map(|log| access_log::WorkerLog::start(log, worker)),
            last_status: std::cell::Cell::new(0),
        }
    }
}

impl Handler for HttpHandler {
    /// A typical request head (what a connection's reads take now: conn.rs's READ_BUF).
    const RECV_BUFFER: usize = 4 * 1024;

    async fn handle(self: Rc<Self>, mut stream: Stream, listener: Rc<str>) {
        if let Err(e) = self.serve(&mut stream, &listener).await {
            if !is_disconnect(&e) {
                crate::debug!("failed to serve a connection: {e}");
            }
            // A body cut short must not look complete to the client.
            stream.reset_on_close();
        }
    }
}
