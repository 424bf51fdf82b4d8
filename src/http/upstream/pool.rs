//! Kept-alive backend connections, per worker and per route (nginx's upstream
//! `keepalive`): a routed request takes the newest idle one, or connects; one that ends
//! its exchange cleanly comes back, up to [`KEPT_PER_ROUTE`], and is closed after
//! [`IDLE_FOR`] unused.

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::net::Stream;
use crate::proxy::Resolver;

/// Idle connections kept per route and worker: as many as the requests a worker has in
/// flight to the route at busy times, or every request past it connects anew (nginx's
/// example has `keepalive 32`; with 16 here, 32 clients halved the requests a second).
pub const KEPT_PER_ROUTE: usize = 64;
/// How long an idle backend connection is kept (nginx's `keepalive_timeout` for
/// upstreams is 60 s; aptly's Go server keeps them forever).
pub const IDLE_FOR: Duration = Duration::from_secs(60);

/// One worker's idle backend connections and name lookups, per route.
pub struct BackendPool {
    idle: RefCell<Vec<Vec<(Stream, Instant)>>>,
    resolvers: Vec<Resolver>,
}

impl BackendPool {
    pub fn new(routes: usize) -> BackendPool {
        BackendPool {
            idle: RefCell::new((0..routes).map(|_| Vec::new()).collect()),
            resolvers: (0..routes).map(|_| Resolver::default()).collect(),
        }
    }

    /// The lookups of `route`'s backend, when it is named by a host name.
    pub fn resolver(&self, route: usize) -> &Resolver {
        &self.resolvers[route]
    }

    /// The newest idle connection to `route`. With `check`, one the backend closed (or
    /// sent unasked bytes on) meanwhile is found and dropped here, for a syscall, rather
    /// than failing the request: what a request that cannot be sent twice needs. One that
    /// can is sent again on a new connection if this one fails (`exchange`), which costs
    /// less than checking every time.
    pub fn take(&self, route: usize, check: bool) -> Option<Stream> {
        let mut idle = self.idle.borrow_mut();
        let kept = idle.get_mut(route)?;
        while let Some((stream, since)) = kept.pop() {
            if since.elapsed() < IDLE_FOR && (!check || is_quiet(&stream)) {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps a connection whose last exchange ended cleanly.
    pub fn put(&self, route: usize, stream: Stream) {
        let mut idle = self.idle.borrow_mut();
        if let Some(kept) = idle.get_mut(route) {
            if kept.len() >= KEPT_PER_ROUTE {
                kept.remove(0);
            }
            kept.push((stream, Instant::now()));
        }
    }

    /// Closes the connections idle past [`IDLE_FOR`]: run every few seconds, so an idle
    /// worker does not keep the backend's connections (and fds) forever.
    pub fn trim(&self) {
        for kept in self.idle.borrow_mut().iter_mut() {
            kept.retain(|(_, since)| since.elapsed() < IDLE_FOR);
        }
    }

    pub fn kept(&self) -> usize {
        self.idle.borrow().iter().map(Vec::len).sum()
    }
}

/// Whether an idle connection has nothing to read and no EOF: a backend that closed it,
/// or wrote something unasked, has made it unfit for another request.
fn is_quiet(stream: &Stream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        crate::sys::peek_now(stream.as_raw_fd(), &mut byte),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    )
}
