//! ringsock: a socket-activated io_uring forwarder (`proxy`) and HTTP/1.1 mirror server
//! (`serve`) sharing one activation, worker, limit and shutdown mechanism.

#[macro_use]
pub mod log;
pub mod address;
pub mod admission;
pub mod cli;
pub mod http;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod runtime;
pub mod sync;
pub mod sys;
pub mod systemd;

use std::sync::Arc;

use cli::{Common, Config};
use systemd::activation::{ListenAddr, Listener};
use systemd::notify::Notifier;

/// Runs a validated configuration to completion. The error is the one line `main` prints.
pub fn run(config: Config) -> Result<(), String> {
    let common = match &config {
        Config::Proxy(common, _) | Config::Serve(common, _) => common,
    };
    log::init(common.log_level);
    let notifier = Notifier::from_env();
    match config {
        Config::Proxy(common, proxy) => run_proxy(&common, proxy, &notifier),
        Config::Serve(common, serve) => run_serve(&common, serve, &notifier),
    }
}

fn run_proxy(common: &Common, proxy: cli::ProxyConfig, notifier: &Notifier) -> Result<(), String> {
    let mut listeners = listeners(common, None)?;
    if let Some(addr) = &proxy.metrics_listen {
        let mut metrics = addr
            .bind()
            .map_err(|e| format!("failed to listen on --metrics {addr}: {e}{}", bind_hint(&e)))?;
        metrics.name = proxy::metrics::METRICS_LISTENER.into();
        listeners.push(metrics);
    }
    let listeners = proxy::plan(listeners, &proxy.target, &common.header_required)?;
    let status = format!(
        "Forwarding to {} on {} sockets",
        proxy.target,
        listeners.len()
    );
    let (counters, target_text) = (proxy.counters.clone(), proxy.target.to_string());
    let live_status =
        move |limiter: &runtime::limit::Limiter| counters.status(limiter, &target_text);
    let pipes = proxy::PipeBudget::from_system();
    let metrics_door = http::Shared::new(proxy_metrics_door(&proxy));
    runtime::run(
        listeners,
        &common.lifecycle,
        notifier,
        &runtime::Service {
            status: &status,
            reopen_logs: None,
            live_status: Some(&live_status),
        },
        move |worker| proxy::ProxyHandler::new(proxy.clone(), pipes.clone(), &metrics_door, worker),
    )
    .map_err(|e| e.to_string())
}

/// The HTTP server of the proxy's metrics socket: metrics on every path, and the
/// connection closed after each answer, as the socket did before it spoke HTTP through
/// the server's code; a scraper has 5 s to send its request and to take the answer.
fn proxy_metrics_door(proxy: &cli::ProxyConfig) -> http::Settings {
    let (counters, clients) = (proxy.counters.clone(), proxy.clients.clone());
    let source: metrics::Source = Arc::new(move |out, worker| {
        metrics::common(out, &worker.limiter, &worker.pool.stats());
        counters.render(out);
        clients.render(out);
    });
    let scrape = std::time::Duration::from_secs(5);
    http::Settings {
        routes: http::Routes {
            root: None,
            api_version: false,
            metrics_everywhere: true,
            metrics: source,
            upstreams: Arc::new(http::upstream::Upstreams::none()),
        },
        header_timeout: scrape,
        keepalive_timeout: scrape,
        persistent: false,
        access_log: None,
        clients: Arc::default(),
        counters: Arc::default(),
    }
}

/// What serve's `/metrics` shows: its connections, answers, I/O threads, admission and
/// access log.
fn serve_metrics(
    counters: &Arc<http::metrics::Metrics>,
    clients: &Arc<admission::client::ClientRules>,
    access_log: Option<&Arc<http::access_log::AccessLog>>,
    upstreams: &Arc<http::upstream::Upstreams>,
) -> metrics::Source {
    let (counters, clients, access_log) = (counters.clone(), clients.clone(), access_log.cloned());
    let upstreams = upstreams.clone();
    Arc::new(move |out, worker| {
        metrics::common(out, &worker.limiter, &worker.pool.stats());
        http::metrics::render(out, &counters);
        upstreams.render(out);
        clients.render(out);
        if let Some(log) = &access_log {
            log.render(out);
        }
    })
}

fn run_serve(common: &Common, serve: cli::ServeConfig, notifier: &Notifier) -> Result<(), String> {
    let root = match &serve.root {
        Some(dir) => Some(
            http::files::Root::new(dir, serve.follow_symlinks, serve.autoindex)
                .map(std::sync::Arc::new)
                .map_err(|e| format!("failed to open --root {}: {e}", dir.display()))?,
        ),
        None => None,
    };
    let default = ListenAddr::Inet(std::net::SocketAddr::from(([127, 0, 0, 1], 8080)));
    let listeners = listeners(common, Some(default))?;
    let status = match &serve.root {
        Some(dir) => format!(
            "Serving {} over HTTP on {} sockets",
            dir.display(),
            listeners.len()
        ),
        None => format!("Serving the API over HTTP on {} sockets", listeners.len()),
    };
    let access_log = serve
        .access_log
        .as_deref()
        .map(http::access_log::AccessLog::open);
    let reopen_log = access_log.clone().map(|log| move || log.reopen());
    let counters = Arc::new(http::metrics::Metrics::default());
    let upstreams = Arc::new(http::upstream::Upstreams::none());
    let metrics = serve_metrics(&counters, &common.clients, access_log.as_ref(), &upstreams);
    let shared = http::Shared::new(http::Settings {
        routes: http::Routes {
            root,
            api_version: true,
            metrics_everywhere: false,
            metrics,
            upstreams,
        },
        clients: common.clients.clone(),
        access_log,
        header_timeout: serve.header_timeout,
        keepalive_timeout: serve.keepalive_timeout,
        persistent: true,
        counters,
    });
    // Every socket serves everything; its plan says whether a PROXY header comes first.
    let listeners = listeners
        .into_iter()
        .map(|l| {
            let header = proxy::header_rule(&l.name, &common.header_required);
            runtime::Planned::counted(l, header)
        })
        .collect();
    runtime::run(
        listeners,
        &common.lifecycle,
        notifier,
        &runtime::Service {
            status: &status,
            reopen_logs: reopen_log.as_ref().map(|f| f as &(dyn Fn() + Sync)),
            live_status: None,
        },
        move |worker| http::HttpHandler::new(&shared, worker),
    )
    .map_err(|e| e.to_string())
}

/// Activated sockets plus any `--listen` ones; `default` when there are neither.
fn listeners(common: &Common, default: Option<ListenAddr>) -> Result<Vec<Listener>, String> {
    let mut listeners = systemd::activation::take_activated().map_err(|e| e.to_string())?;
    let mut addrs = common.listen.clone();
    if listeners.is_empty() && addrs.is_empty() {
        addrs.extend(default);
    }
    for addr in addrs {
        listeners.push(
            addr.bind()
                .map_err(|e| format!("failed to listen on {addr}: {e}{}", bind_hint(&e)))?,
        );
    }
    if listeners.is_empty() {
        return Err(
            "no sockets to listen on: start ringsock from a systemd .socket unit \
                    (or `systemd-socket-activate -l 8080 ringsock ...`), or pass --listen ADDR"
                .into(),
        );
    }
    check_names(&common.header_required, &listeners)?;
    Ok(listeners)
}

/// Every `--proxy-protocol-on NAME` must name a socket: a typo would silently leave a
/// balancer's headers to be read as requests.
fn check_names(wanted: &[String], listeners: &[Listener]) -> Result<(), String> {
    for name in wanted {
        if !listeners.iter().any(|l| &l.name == name) {
            let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
            return Err(format!(
                "--proxy-protocol-on {name}: no listening socket has that name; the sockets \
                 are named {} (FileDescriptorName= in the .socket unit, or the --listen text)",
                names.join(", ")
            ));
        }
    }
    Ok(())
}

/// What to do about the usual reasons a `--listen` address cannot be bound.
fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "; another process listens there: stop it or choose another address"
        }
        std::io::ErrorKind::PermissionDenied => {
            "; ports below 1024 need root or CAP_NET_BIND_SERVICE: let systemd hold the socket \
             (a .socket unit) or choose a higher port"
        }
        std::io::ErrorKind::AddrNotAvailable => "; no local interface has that address",
        _ => "",
    }
}
