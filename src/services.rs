//! From the validated [`Config`](crate::cli::Config) to live state: the per-client
//! tables, the counters, and the settings each worker's handler is made from. The CLI
//! hands over plain data; everything shared between workers starts here.

use std::sync::Arc;
use std::time::Duration;

use crate::admission::client::{ClientRules, PerClient, RequestRate};
use crate::admission::networks::Networks;
use crate::cli::{Admission, Common, ProxyConfig, RoutesConfig, ServeConfig};
use crate::http::access_log::AccessLog;
use crate::http::auth::{self, BasicAuth};
use crate::http::files::Root;
use crate::http::upstream::{Upstream, Upstreams};
use crate::runtime::Lifecycle;
use crate::{http, metrics, proxy};

/// File descriptors one connection holds at most: the client and the target socket,
/// and a pipe end's share while splicing...
const FDS_PER_PROXIED_CONNECTION: usize = 3;
/// ...or the client socket, the file being sent, and the socket's duplicate an I/O
/// thread holds while it sends from the disk.
const FDS_PER_HTTP_CONNECTION: usize = 3;
/// ...or, with routes, the client and backend sockets and a pipe's two ends.
const FDS_PER_ROUTED_CONNECTION: usize = 4;
/// The proxy's only blocking calls are host-name lookups of TARGET.
const PROXY_IO_THREADS: usize = 4;

pub fn proxy_lifecycle(common: &Common) -> Lifecycle {
    lifecycle(common, FDS_PER_PROXIED_CONNECTION, PROXY_IO_THREADS)
}

pub fn serve_lifecycle(common: &Common, serve: &ServeConfig) -> Lifecycle {
    let fds = match serve.routes.routes.is_empty() {
        true => FDS_PER_HTTP_CONNECTION,
        false => FDS_PER_ROUTED_CONNECTION,
    };
    lifecycle(common, fds, serve.io_threads)
}

fn lifecycle(common: &Common, fds_per_connection: usize, io_threads: usize) -> Lifecycle {
    Lifecycle {
        threads: common.threads,
        connections_max: common.connections_max,
        fds_per_connection,
        exit_idle_time: common.exit_idle_time,
        shutdown_timeout: common.shutdown_timeout,
        io_threads,
    }
}

/// The one admission table of the process, which every worker checks its clients in.
pub fn client_rules(admission: &Admission) -> Arc<ClientRules> {
    Arc::new(ClientRules {
        trusted: admission.trusted.clone(),
        prefixes: admission.prefixes,
        per_client: admission.per_client_max.map(PerClient::new),
        rate: admission
            .rate
            .map(|rate| RequestRate::new(rate.per_second, rate.burst)),
        ..ClientRules::default()
    })
}

/// What every worker's proxy handler is made from, with counters they all add to.
pub fn proxy_settings(proxy: ProxyConfig, clients: Arc<ClientRules>) -> proxy::Settings {
    proxy::Settings {
        target: proxy.target,
        connect_timeout: proxy.connect_timeout,
        half_close_timeout: proxy.half_close_timeout,
        idle_timeout: proxy.idle_timeout,
        keepalive: proxy.keepalive,
        clients,
        send_header: proxy.send_header,
        counters: Arc::default(),
    }
}

/// The HTTP server of the proxy's metrics socket: metrics on every path, and the
/// connection closed after each answer, as the socket did before it spoke HTTP through
/// the server's code; a scraper has 5 s to send its request and to take the answer.
pub fn proxy_metrics_door(proxy: &proxy::Settings) -> http::Settings {
    let (counters, clients) = (proxy.counters.clone(), proxy.clients.clone());
    let source: metrics::Source = Arc::new(move |out, worker| {
        metrics::common(out, &worker.limiter, &worker.pool.stats());
        counters.render(out);
        clients.render(out);
    });
    let scrape = Duration::from_secs(5);
    http::Settings {
        routes: http::Routes {
            root: None,
            api_version: false,
            metrics_everywhere: true,
            metrics: source,
            upstreams: Arc::new(Upstreams::none()),
        },
        header_timeout: scrape,
        keepalive_timeout: scrape,
        persistent: false,
        access_log: None,
        clients: Arc::default(),
        counters: Arc::default(),
    }
}

/// `--root`, opened once for every worker.
pub fn root(serve: &ServeConfig) -> Result<Option<Arc<Root>>, String> {
    let Some(dir) = &serve.root else {
        return Ok(None);
    };
    Root::new(dir, serve.follow_symlinks, serve.autoindex)
        .map(|root| Some(Arc::new(root)))
        .map_err(|e| format!("failed to open --root {}: {e}", dir.display()))
}

/// What every worker's HTTP handler is made from, with counters they all add to.
pub fn serve_settings(
    serve: &ServeConfig,
    root: Option<Arc<Root>>,
    clients: Arc<ClientRules>,
    access_log: Option<Arc<AccessLog>>,
) -> Result<http::Settings, String> {
    let counters = Arc::new(http::metrics::Metrics::default());
    let upstreams = Arc::new(upstreams(&serve.routes, serve.io_threads)?);
    let metrics = serve_metrics(&counters, &clients, access_log.as_ref(), &upstreams);
    Ok(http::Settings {
        routes: http::Routes {
            root,
            api_version: true,
            metrics_everywhere: false,
            metrics,
            upstreams,
        },
        clients,
        access_log,
        header_timeout: serve.header_timeout,
        keepalive_timeout: serve.keepalive_timeout,
        persistent: true,
        counters,
    })
}

/// `--route`s as the workers use them; an htpasswd file that cannot be read is an error
/// at start. Routes naming one file share one reading of it (and its cache and limits).
fn upstreams(config: &RoutesConfig, io_threads: usize) -> Result<Upstreams, String> {
    let mut files: Vec<(&std::path::Path, Arc<BasicAuth>)> = Vec::new();
    let mut routes = Vec::new();
    for route in &config.routes {
        let auth = match &route.htpasswd {
            None => None,
            Some(path) => Some(match files.iter().find(|(p, _)| p == path) {
                Some((_, auth)) => auth.clone(),
                None => {
                    let in_flight = auth::checks_in_flight(io_threads);
                    let auth = BasicAuth::new(path, &route.prefix, in_flight)
                        .map(Arc::new)
                        .map_err(|e| {
                            format!("--route-auth {}={}: {e}", route.prefix, path.display())
                        })?;
                    files.push((path, auth.clone()));
                    auth
                }
            }),
        };
        routes.push(Upstream {
            prefix: route.prefix.clone(),
            target: route.target.clone(),
            allow: Networks::new(route.allow.clone()),
            auth,
        });
    }
    Ok(Upstreams::new(routes, config.max_body, config.timeout))
}

/// What serve's `/metrics` shows: its connections, answers, routes, I/O threads,
/// admission and access log.
fn serve_metrics(
    counters: &Arc<http::metrics::Metrics>,
    clients: &Arc<ClientRules>,
    access_log: Option<&Arc<AccessLog>>,
    upstreams: &Arc<Upstreams>,
) -> metrics::Source {
    let (counters, clients, access_log) = (counters.clone(), clients.clone(), access_log.cloned());
    let upstreams = upstreams.clone();
    Arc::new(move |out, worker| {
        metrics::common(out, &worker.limiter, &worker.pool.stats());
        http::metrics::render(out, &counters);
        upstreams.render(out);
        auth::render(&upstreams.auths(), out);
        clients.render(out);
        if let Some(log) = &access_log {
            log.render(out);
        }
    })
}
