//! Routes to HTTP backends (`serve --route PREFIX=TARGET`): a request whose decoded path
//! starts with a route's prefix is passed on to its backend as HTTP/1.1 and the answer
//! passed back, bodies streamed both ways (spliced when large), heads rewritten so that
//! nothing hop-by-hop or ambiguous crosses. What nginx's `proxy_pass` with upstream
//! keep-alive does for an aptly host.

pub mod chunked;
pub mod exchange;
pub mod head;
mod metrics;
mod pool;
pub mod relay;

use std::sync::Arc;
use std::time::Duration;

use crate::admission::networks::Networks;
use crate::http::auth::BasicAuth;
use crate::proxy::{PipeBudget, Target};
pub use exchange::Routed;
pub use metrics::{Outcome, RouteCounters};
pub use pool::BackendPool;

/// `--route-max-body`'s default: above any package a Debian archive carries, so the
/// default set-up takes every real upload. Streamed bodies cost no memory whatever
/// their size; the limit bounds what an allowed client can make the backend write.
pub const DEFAULT_MAX_BODY: u64 = 2 << 30;
/// `--route-timeout`'s default, nginx's `proxy_connect_timeout` and
/// `proxy_read_timeout`: a backend that answers nothing for this long gets 504.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// One `--route`, with the rules its prefix was given.
pub struct Upstream {
    /// The decoded path prefix, e.g. `/api/`.
    pub prefix: String,
    pub target: Target,
    /// `--route-allow`: who may use the route; empty, everyone.
    pub allow: Networks,
    /// `--route-auth`: the users who may.
    pub auth: Option<Arc<BasicAuth>>,
}

/// Every route, and the limits they share.
pub struct Upstreams {
    /// Longest prefix first, so the first match is the longest.
    routes: Vec<Upstream>,
    pub max_body: u64,
    pub timeout: Duration,
    pub counters: Box<[RouteCounters]>,
    /// The pipes bodies are spliced through come out of this (the proxy's budget:
    /// `proxy::pipe`).
    pub pipes: Arc<PipeBudget>,
}

impl Upstreams {
    pub fn new(mut routes: Vec<Upstream>, max_body: u64, timeout: Duration) -> Upstreams {
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        let counters = routes.iter().map(|_| RouteCounters::default()).collect();
        let routes_exist = !routes.is_empty();
        Upstreams {
            routes,
            max_body,
            timeout,
            counters,
            // No routes, no pipes: a server without routes reads nothing from /proc.
            pipes: match routes_exist {
                true => PipeBudget::from_system(),
                false => PipeBudget::new(0),
            },
        }
    }

    /// Every distinct htpasswd file of `--route-auth`, once each.
    pub fn auths(&self) -> Vec<Arc<BasicAuth>> {
        let mut auths: Vec<Arc<BasicAuth>> = Vec::new();
        for auth in self.routes.iter().filter_map(|r| r.auth.as_ref()) {
            if !auths.iter().any(|a| Arc::ptr_eq(a, auth)) {
                auths.push(auth.clone());
            }
        }
        auths
    }

    /// No routes: every request is the server's own.
    pub fn none() -> Upstreams {
        Upstreams::new(Vec::new(), DEFAULT_MAX_BODY, DEFAULT_TIMEOUT)
    }

    /// `/metrics`' route families.
    pub fn render(&self, out: &mut crate::metrics::Exposition) {
        if !self.routes.is_empty() {
            let each = self.routes.iter().map(|r| r.prefix.as_str());
            metrics::render(out, each.zip(self.counters.iter()));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn get(&self, index: usize) -> &Upstream {
        &self.routes[index]
    }

    /// The route for a request path as sent (percent-encoded): matched on its decoded
    /// form, so `/%61pi/` is `/api/` here as it is to the backend.
    pub fn find(&self, path: &[u8]) -> Option<usize> {
        if self.routes.is_empty() {
            return None;
        }
        let decoded = percent_decoded(path);
        self.routes
            .iter()
            .position(|route| decoded.starts_with(route.prefix.as_bytes()))
    }
}

/// `path` with its %XX escapes decoded (an invalid escape is left as it is).
fn percent_decoded(path: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !path.contains(&b'%') {
        return path.into();
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        match (
            path[i],
            path.get(i + 1).copied().and_then(hex),
            path.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push(high << 4 | low);
                i += 3;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams(prefixes: &[&str]) -> Upstreams {
        let routes = prefixes
            .iter()
            .map(|prefix| Upstream {
                prefix: prefix.to_string(),
                target: Target::parse("/run/x.sock").unwrap(),
                allow: Networks::default(),
                auth: None,
            })
            .collect();
        Upstreams::new(routes, DEFAULT_MAX_BODY, DEFAULT_TIMEOUT)
    }

    #[test]
    fn the_longest_prefix_wins_on_the_decoded_path() {
        let all = upstreams(&["/api/", "/api/files/"]);
        let prefix = |path: &[u8]| all.find(path).map(|i| all.get(i).prefix.clone());
        assert_eq!(prefix(b"/api/files/x").as_deref(), Some("/api/files/"));
        assert_eq!(prefix(b"/api/repos").as_deref(), Some("/api/"));
        assert_eq!(prefix(b"/%61pi/repos").as_deref(), Some("/api/"));
        assert_eq!(prefix(b"/api%2Ffiles/x").as_deref(), Some("/api/files/"));
        assert_eq!(prefix(b"/api"), None);
        assert_eq!(prefix(b"/dists/x"), None);
        assert_eq!(prefix(b"/%zz/api/"), None);
    }
}
