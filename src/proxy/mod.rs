//! `ringsock proxy TARGET`: forwards every accepted connection to TARGET, both directions
//! at once, with splice(2) and half-close kept.

mod forward;
mod pipe;
mod pump;
mod resolve;
pub mod target;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::log::RateLimit;
use crate::net::{is_disconnect, Duplex, Stream};
use crate::runtime::Handler;
pub use forward::forward;
pub use pipe::{PipeBudget, PipePool};
use resolve::Resolver;
pub use target::Target;

/// Empty pipes each worker keeps for reuse.
const PIPES_KEPT: usize = 256;

static CONNECT_ERRORS: RateLimit = RateLimit::new(Duration::from_secs(5));
static PUMP_ERRORS: RateLimit = RateLimit::new(Duration::from_secs(5));

pub struct ProxyHandler {
    target: Target,
    resolver: Resolver,
    connect_timeout: Duration,
    pipes: PipePool,
}

impl ProxyHandler {
    /// One worker's handler; `pipes` is the process-wide pipe budget.
    pub fn new(target: Target, connect_timeout: Duration, pipes: Arc<PipeBudget>) -> ProxyHandler {
        ProxyHandler {
            target,
            resolver: Resolver::default(),
            connect_timeout,
            pipes: PipePool::new(pipes, PIPES_KEPT),
        }
    }
}

impl Handler for ProxyHandler {
    async fn handle(self: Rc<Self>, client: Stream) {
        let upstream = match self
            .target
            .connect(self.connect_timeout, &self.resolver)
            .await
        {
            Ok(upstream) => upstream,
            Err(e) => {
                crate::warn_limited!(CONNECT_ERRORS, "failed to connect to {}: {e}", self.target);
                // RST, not FIN: the client must not mistake "no backend" for an empty reply.
                client.reset_on_close();
                return;
            }
        };
        let (client, upstream) = (Duplex::new(client), Duplex::new(upstream));
        if let Err(e) = forward(&client, &upstream, &self.pipes).await {
            if !is_disconnect(&e) {
                crate::warn_limited!(
                    PUMP_ERRORS,
                    "failed to forward a connection to {}: {e}",
                    self.target
                );
            }
            crate::debug!("connection to {} aborted: {e}", self.target);
            // One side failed mid-stream: cut the other with RST too, so it cannot take
            // a truncated stream for a complete one (forward has let it read what it
            // was sent). A Unix-socket peer gets EOF: AF_UNIX has no reset.
            client.stream().reset_on_close();
            upstream.stream().reset_on_close();
        }
    }
}
