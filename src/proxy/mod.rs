//! `ringsock proxy TARGET`: forwards every accepted connection to TARGET, both directions
//! at once, with splice(2) and half-close kept.

mod forward;
pub mod metrics;
mod pipe;
pub mod plan;
mod pump;
mod resolve;
pub mod target;
mod targets;

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admission::client::{ClientRules, HeaderRule};
use crate::admission::proxy_header;
use crate::http::{self, HttpHandler};
use crate::log::RateLimit;
use crate::net::{is_disconnect, Duplex, Stream};
use crate::runtime::limit::Limiter;
use crate::runtime::{Handler, Worker};
pub use forward::{forward, Lent};
pub use pipe::{Pipe, PipeBudget, PipePool};
pub use plan::{header_rule, plan, ListenerPlan};
pub use pump::RECV_SIZE;
pub use resolve::Resolver;
pub use target::Target;
pub use targets::Targets;

/// Empty pipes each worker keeps for reuse...
const PIPES_KEPT: usize = 256;
/// ...until none was used for this long.
const PIPES_TRIMMED_EVERY: Duration = Duration::from_secs(5);

/// Out of fds for the target socket: wait this long at first, doubling to the most,
/// within --connect-timeout, while accepting is held (a closing connection frees fds).
const NO_FD_FIRST_WAIT: Duration = Duration::from_millis(10);
const NO_FD_MAX_WAIT: Duration = Duration::from_secs(1);

static CONNECT_ERRORS: RateLimit = RateLimit::new(Duration::from_secs(5));
static PUMP_ERRORS: RateLimit = RateLimit::new(Duration::from_secs(5));
/// One line per episode of running out of fds, and at most one per 5 s.
static NO_FD_ERRORS: RateLimit = RateLimit::new(Duration::from_secs(5));

/// What every worker's handler is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub target: Targets,
    pub connect_timeout: Duration,
    /// `None`: a half-closed connection may stay idle forever.
    pub half_close_timeout: Option<Duration>,
    /// `--idle-timeout`; `None`: a silent connection may stay forever (the default).
    pub idle_timeout: Option<Duration>,
    /// `--keepalive`: TCP keepalive on the client and TCP target sockets.
    pub keepalive: bool,
    /// `--proxy-protocol-from` and `--per-client-*`.
    pub clients: Arc<ClientRules>,
    /// `-p/--proxy-protocol`: the header sent to the target first.
    pub send_header: Option<proxy_header::Version>,
    /// Shared by every worker's handler.
    pub counters: Arc<metrics::ProxyCounters>,
}

pub struct ProxyHandler {
    settings: Settings,
    /// One per target, index-aligned with [`Targets`]: each caches its own host lookup.
    resolvers: Vec<Resolver>,
    pipes: Rc<PipePool>,
    /// This worker's counters, which its connections add to as bytes move.
    counters: Arc<metrics::WorkerCounters>,
    limiter: Arc<Limiter>,
    /// What answers the metrics socket: the HTTP server with metrics on every path.
    metrics_door: HttpHandler,
    /// Its parking of idle receives.
    worker: Rc<Worker>,
    /// An fd held in reserve: when the accepted clients have taken every fd, closing it
    /// lets one of them reach the target, so one connection goes on and, once it
    /// closes, gives fds back to the others (instead of all of them waiting for each
    /// other until --connect-timeout). Reopened when a connection ends.
    spare_fd: RefCell<Option<OwnedFd>>,
}

impl ProxyHandler {
    /// One worker's handler; `pipes` is the process-wide pipe budget, `metrics_door` the
    /// HTTP server for the metrics socket. Starts the task that gives idle pipes back,
    /// so it must run on the worker's runtime.
    pub fn new(
        settings: Settings,
        pipes: Arc<PipeBudget>,
        metrics_door: &Arc<http::Shared>,
        worker: &Rc<Worker>,
    ) -> ProxyHandler {
        let pipes = Rc::new(PipePool::new(pipes, PIPES_KEPT));
        let trimmed = Rc::downgrade(&pipes);
        monoio::spawn(async move {
            loop {
                monoio::time::sleep(PIPES_TRIMMED_EVERY).await;
                match trimmed.upgrade() {
                    Some(pipes) => pipes.trim(),
                    None => return,
                }
            }
        });
        ProxyHandler {
            resolvers: (0..settings.target.count())
                .map(|_| Resolver::default())
                .collect(),
            counters: settings.counters.workers.register(),
            settings,
            pipes,
            limiter: worker.limiter.clone(),
            metrics_door: HttpHandler::new(metrics_door, worker),
            worker: worker.clone(),
            spare_fd: RefCell::new(spare_fd()),
        }
    }

    /// Connects to the target within --connect-timeout. Out of fds, the client is kept
    /// (not reset) while accepting is held, and the connect retried as fds come back.
    async fn connect(&self, index: usize, target: &Target) -> io::Result<Stream> {
        let deadline = Instant::now() + self.settings.connect_timeout;
        let mut wait = NO_FD_FIRST_WAIT;
        let mut waiting = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match target
                .connect(left, "--connect-timeout", &self.resolvers[index])
                .await
            {
                Err(e) if is_out_of_fds(&e) && Instant::now() + wait < deadline => {
                    let (_, first) = waiting.get_or_insert_with(|| self.limiter.wait_for_fds());
                    if std::mem::take(first) {
                        crate::warn_limited!(
                            NO_FD_ERRORS,
                            "out of file descriptors connecting to {} ({e}); new clients wait \
                             in the listen backlog until a connection closes (raise \
                             LimitNOFILE= or lower --connections-max)",
                            target
                        );
                    }
                    if self.spare_fd.borrow_mut().take().is_some() {
                        continue;
                    }
                    monoio::time::sleep(wait).await;
                    wait = (wait * 2).min(NO_FD_MAX_WAIT);
                }
                result => return result,
            }
        }
    }
}

fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A placeholder fd for [`ProxyHandler::spare_fd`]; `None` when none can be had now.
fn spare_fd() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

impl Handler for ProxyHandler {
    type Plan = ListenerPlan;
    const RECV_BUFFER: usize = RECV_SIZE;

    async fn handle(self: Rc<Self>, client: Stream, plan: Rc<ListenerPlan>) {
        let (target, header) = match &*plan {
            ListenerPlan::Metrics => {
                return self
                    .metrics_door
                    .serve(client, HeaderRule::FromTrusted)
                    .await
            }
            ListenerPlan::Forward { target, header } => (*target, *header),
        };
        self.forward(client, target, header).await;
        let mut spare = self.spare_fd.borrow_mut();
        if spare.is_none() {
            *spare = spare_fd();
        }
    }
}

/// Writes the PROXY header naming `client` (or the client a trusted balancer named) to
/// the freshly connected `upstream`, before any byte of the client's.
async fn send_header(
    version: proxy_header::Version,
    client: &Stream,
    origin: proxy_header::Origin,
    upstream: &Stream,
    stall: Duration,
) -> io::Result<()> {
    let (peer, local, local_path) = crate::sys::socket_ends(client.as_raw_fd());
    let named = match origin {
        proxy_header::Origin::Client(addr) => Some(addr),
        _ => peer,
    };
    let header = proxy_header::encode(version, named, local, local_path.as_deref());
    // No MSG_MORE: with a server-speaks-first protocol no client byte may follow soon.
    upstream
        .write_all_within(&header, false, stall, &mut 0)
        .await
}

impl ProxyHandler {
    /// Forwards a connection to target `index`; `header` says whether it starts with a
    /// PROXY header.
    async fn forward(&self, client: Stream, index: usize, header: HeaderRule) {
        // A received PROXY header is taken off before any byte is forwarded; the client
        // it names is the one a sent header (-p) names.
        let admitted = match self.settings.clients.admit(&client, header).await {
            Ok(admitted) => admitted,
            Err(why) => {
                crate::debug!("closing a connection: {why}");
                return;
            }
        };
        // The plan took the index from these targets at start.
        let Some(target) = self.settings.target.get(index) else {
            return;
        };
        let upstream = match self.connect(index, target).await {
            Ok(upstream) => upstream,
            Err(e) => {
                self.settings.counters.connect_failed(&e);
                crate::warn_limited!(CONNECT_ERRORS, "failed to connect to {target}: {e}");
                // RST, not FIN: the client must not mistake "no backend" for an empty reply.
                client.reset_on_close();
                return;
            }
        };
        if self.settings.keepalive {
            crate::sys::keep_alive(client.as_raw_fd());
            crate::sys::keep_alive(upstream.as_raw_fd());
        }
        if let Some(version) = self.settings.send_header {
            if let Err(e) = send_header(
                version,
                &client,
                admitted.origin,
                &upstream,
                self.settings.connect_timeout,
            )
            .await
            {
                crate::debug!("failed to send the PROXY header to {target}: {e}");
                client.reset_on_close();
                return;
            }
        }
        let (client, upstream) = (Duplex::new(client), Duplex::new(upstream));
        let lent = Lent {
            pipes: &self.pipes,
            parking: &self.worker.parking,
            buffers: &self.worker.buffers,
            counters: &self.counters,
        };
        let result = forward(
            &client,
            &upstream,
            &lent,
            self.settings.half_close_timeout,
            self.settings.idle_timeout,
        )
        .await;
        self.settings.counters.ended(result.is_err());
        if let Err(e) = result {
            if !is_disconnect(&e) && e.kind() != io::ErrorKind::TimedOut {
                crate::warn_limited!(
                    PUMP_ERRORS,
                    "failed to forward a connection to {target}: {e}"
                );
            }
            crate::debug!("connection to {target} aborted: {e}");
            // One side failed mid-stream: cut the other with RST too, so it cannot take
            // a truncated stream for a complete one (forward has let it read what it
            // was sent). AF_UNIX has no reset: a Unix-socket peer reads ECONNRESET only
            // if it sent bytes we had not read, EOF otherwise (forward's close rules).
            client.stream().reset_on_close();
            upstream.stream().reset_on_close();
        }
    }
}
