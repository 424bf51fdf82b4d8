//! `ringsock serve`: a minimal HTTP/1.1 server (aptly's `/api/version`, Prometheus
//! metrics, a mirror tree) run by the same workers, limits and shutdown as `proxy`.
//!
//! One task per connection: read into a reused buffer, answer every complete request in
//! it in order (pipelining) into a reused output buffer, write that with one send, send
//! file bodies with sendfile(2). Reads use the runtime's ownership-passing receive (on
//! io_uring one submission that completes with the data); writes are non-blocking
//! syscalls that wait for readiness only when the socket buffer is full.

pub mod access_log;
pub mod answer;
pub mod api;
pub mod auth;
mod connection;
pub mod files;
mod input;
pub mod metrics;
pub mod request;
pub mod response;
mod router;
pub mod upstream;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::admission::client::{ClientRules, HeaderRule};
use crate::net::{is_disconnect, Stream};
use crate::proxy::PipePool;
use crate::runtime::{Handler, Worker};
use metrics::{Metrics, WorkerCounters};
use response::DateCache;
pub use router::{route, Route, Routes};

/// What the server was configured with, shared by all workers.
pub struct Settings {
    pub routes: Routes,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    /// Whether a connection stays open for more requests (keep-alive), or closes after
    /// each answer.
    pub persistent: bool,
    pub access_log: Option<Arc<access_log::AccessLog>>,
    /// `--proxy-protocol-from` and `--per-client-*`.
    pub clients: Arc<ClientRules>,
    /// Every worker's counters, which the workers' handlers add to.
    pub counters: Arc<Metrics>,
}

/// Built once; every worker's handler holds it.
pub struct Shared {
    settings: Settings,
}

impl Shared {
    pub fn new(settings: Settings) -> Arc<Shared> {
        Arc::new(Shared { settings })
    }
}

/// One per worker.
pub struct HttpHandler {
    shared: Arc<Shared>,
    worker: Rc<Worker>,
    counters: Arc<WorkerCounters>,
    date: DateCache,
    log: Option<Rc<access_log::WorkerLog>>,
    /// What routed requests use, on a server with routes.
    routing: Option<Routing>,
}

/// One worker's backend connections and pipes, for `--route`.
struct Routing {
    backends: Rc<upstream::BackendPool>,
    pipes: Rc<PipePool>,
}

/// Empty pipes a worker keeps for bodies, and how often idle pipes and backend
/// connections are closed.
const PIPES_KEPT: usize = 64;
const TRIMMED_EVERY: Duration = Duration::from_secs(5);

impl Routing {
    /// A worker's, with the task that closes what stays unused.
    fn start(upstreams: &upstream::Upstreams, worker: &Rc<Worker>) -> Routing {
        let routing = Routing {
            backends: Rc::new(upstream::BackendPool::new(upstreams.len())),
            pipes: Rc::new(PipePool::new(upstreams.pipes.clone(), PIPES_KEPT)),
        };
        let (backends, pipes) = (
            Rc::downgrade(&routing.backends),
            Rc::downgrade(&routing.pipes),
        );
        let worker = worker.clone();
        monoio::spawn(async move {
            loop {
                monoio::select! {
                    _ = monoio::time::sleep(TRIMMED_EVERY) => {}
                    _ = worker.stopping() => return,
                }
                match (backends.upgrade(), pipes.upgrade()) {
                    (Some(backends), Some(pipes)) => {
                        backends.trim();
                        pipes.trim();
                    }
                    _ => return,
                }
            }
        });
        routing
    }
}

impl HttpHandler {
    pub fn new(shared: &Arc<Shared>, worker: &Rc<Worker>) -> HttpHandler {
        HttpHandler {
            counters: shared.settings.counters.register(),
            shared: shared.clone(),
            worker: worker.clone(),
            date: DateCache::default(),
            log: shared
                .settings
                .access_log
                .as_ref()
                .map(|log| access_log::WorkerLog::start(log, worker)),
            routing: {
                let upstreams = &shared.settings.routes.upstreams;
                (!upstreams.is_empty()).then(|| Routing::start(upstreams, worker))
            },
        }
    }

    /// Counts an answer and writes its access log line: the one place both happen.
    fn record(&self, entry: &access_log::Entry<'_>) {
        self.counters
            .count_response(usize::from(entry.status / 100));
        self.counters.count_duration(entry.started.elapsed());
        if let Some(log) = &self.log {
            log.line(entry);
        }
    }
}

impl Handler for HttpHandler {
    /// Whether the listener's connections start with a PROXY header.
    type Plan = HeaderRule;
    /// A typical request head: what a connection's first read takes.
    const RECV_BUFFER: usize = 4 * 1024;

    async fn handle(self: Rc<Self>, stream: Stream, header: Rc<HeaderRule>) {
        self.serve(stream, *header).await;
    }
}

impl HttpHandler {
    /// Serves one connection until it closes; `header` says whether it starts with a
    /// PROXY header.
    pub async fn serve(&self, stream: Stream, header: HeaderRule) {
        let client = match self.shared.settings.clients.admit(&stream, header).await {
            Ok(client) => client,
            Err(why) => {
                crate::debug!("closing a connection: {why}");
                return;
            }
        };
        let mut connection = connection::Connection::new(self, stream, client);
        if let Err(e) = connection.serve().await {
            if !is_disconnect(&e) {
                crate::debug!("failed to serve a connection: {e}");
            }
            // A body cut short must not look complete to the client.
            connection.stream().reset_on_close();
        }
    }
}
