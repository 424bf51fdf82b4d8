//! `ringsock proxy TARGET`: forwards every accepted connection to TARGET, both directions
//! at once, with splice(2) and half-close kept.

mod forward;
pub mod metrics;
mod pipe;
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

use crate::log::RateLimit;
use crate::net::client::ClientRules;
use crate::net::proxy_header;
use crate::net::{is_disconnect, Duplex, Stream};
use crate::runtime::limit::Limiter;
use crate::runtime::{Handler, Worker};
pub use forward::forward;
use forward::Moved;
pub use pipe::{PipeBudget, PipePool};
use pump::RECV_SIZE;
use resolve::Resolver;
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
    /// `--metrics ADDR`: one more socket, named `metrics`.
    pub metrics_listen: Option<crate::activation::ListenAddr>,
}

pub struct ProxyHandler {
    settings: Settings,
    /// One per target, index-aligned with [`Targets`]: each caches its own host lookup.
    resolvers: Vec<Resolver>,
    pipes: Rc<PipePool>,
    limiter: Arc<Limiter>,
    /// An fd held in reserve: when the accepted clients have taken every fd, closing it
    /// lets one of them reach the target, so one connection goes on and, once it
    /// closes, gives fds back to the others (instead of all of them waiting for each
    /// other until --connect-timeout). Reopened when a connection ends.
    spare_fd: RefCell<Option<OwnedFd>>,
}

impl ProxyHandler {
    /// One worker's handler; `pipes` is the process-wide pipe budget. Starts the task
    /// that gives idle pipes back, so it must run on the worker's runtime.
    pub fn new(settings: Settings, pipes: Arc<PipeBudget>, worker: &Worker) -> ProxyHandler {
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
            settings,
            pipes,
            limiter: worker.limiter.clone(),
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
            match target.connect(left, &self.resolvers[index]).await {
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

/// How long a scraper has to send its request, and to take each part of the answer.
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

/// After a metrics answer: let the scraper read it before the close.
const METRICS_LINGER: crate::net::Linger = crate::net::Linger {
    limit: Duration::from_secs(2),
    stall: Duration::from_secs(2),
    max_dropped: 64 * 1024,
};

impl Handler for ProxyHandler {
    const RECV_BUFFER: usize = RECV_SIZE;

    async fn handle(self: Rc<Self>, client: Stream, listener: Rc<str>) {
        if &*listener == metrics::METRICS_LISTENER && !self.settings.target.names(&listener) {
            self.answer_metrics(&client).await;
            return;
        }
        self.forward(client, &listener).await;
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
    /// A connection on the `metrics` socket: read the request head (whatever it asks),
    /// answer the Prometheus text, close. Bounded: 4 KiB and 5 s.
    async fn answer_metrics(&self, client: &Stream) {
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 1024];
        let deadline = Instant::now() + METRICS_TIMEOUT;
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 4096 {
            match crate::sys::recv_now(client.as_raw_fd(), &mut buf) {
                Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    monoio::select! {
                        _ = client.readable() => {}
                        _ = monoio::time::sleep(left) => return,
                    }
                }
                // EOF or an error before a whole head: nobody to answer.
                _ => return,
            }
        }
        let body = self.settings.counters.render(&self.limiter);
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut sent = 0;
        let written = client.write_all_within(answer.as_bytes(), false, METRICS_TIMEOUT, &mut sent);
        if written.await.is_err() {
            return;
        }
        let _ = client.shutdown_write();
        crate::net::linger(client, &METRICS_LINGER).await;
    }

    async fn forward(&self, client: Stream, listener: &str) {
        // A received PROXY header is taken off before any byte is forwarded; the client
        // it names is the one a sent header (-p) names.
        let admitted = match self.settings.clients.admit(&client, listener).await {
            Ok(admitted) => admitted,
            Err(why) => {
                crate::debug!("closing a connection: {why}");
                return;
            }
        };
        // Every listener has a target: checked at start.
        let Some((index, target)) = self.settings.target.for_listener(listener) else {
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
        let mut moved = Moved::default();
        let result = forward(
            &client,
            &upstream,
            &self.pipes,
            self.settings.half_close_timeout,
            self.settings.idle_timeout,
            &mut moved,
        )
        .await;
        self.settings.counters.ended(&moved, result.is_err());
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
            // was sent). A Unix-socket peer gets EOF: AF_UNIX has no reset.
            client.stream().reset_on_close();
            upstream.stream().reset_on_close();
        }
    }
}
