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

mod services;

use cli::{Common, Config, ProxyConfig, ServeConfig};
use http::access_log::AccessLog;
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

fn run_proxy(common: &Common, proxy: ProxyConfig, notifier: &Notifier) -> Result<(), String> {
    let mut listeners = listeners(common, None)?;
    if let Some(addr) = &proxy.metrics {
        let mut metrics = addr
            .bind()
            .map_err(|e| format!("failed to listen on --metrics {addr}: {e}{}", bind_hint(&e)))?;
        metrics.name = proxy::metrics::METRICS_LISTENER.into();
        listeners.push(metrics);
    }
    let header_required = &common.admission.header_required;
    let listeners = proxy::plan(listeners, &proxy.target, header_required)?;
    let status = format!(
        "Forwarding to {} on {} sockets",
        proxy.target,
        listeners.len()
    );
    let settings = services::proxy_settings(proxy, services::client_rules(&common.admission));
    let (counters, target_text) = (settings.counters.clone(), settings.target.to_string());
    let live_status =
        move |limiter: &runtime::limit::Limiter| counters.status(limiter, &target_text);
    let pipes = proxy::PipeBudget::from_system();
    let metrics_door = http::Shared::new(services::proxy_metrics_door(&settings));
    runtime::run(
        listeners,
        &services::proxy_lifecycle(common),
        notifier,
        &runtime::Service {
            status: &status,
            reopen_logs: None,
            reload: None,
            live_status: Some(&live_status),
        },
        move |worker| {
            proxy::ProxyHandler::new(settings.clone(), pipes.clone(), &metrics_door, worker)
        },
    )
    .map_err(|e| e.to_string())
}

fn run_serve(common: &Common, serve: ServeConfig, notifier: &Notifier) -> Result<(), String> {
    let root = services::root(&serve)?;
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
    let access_log = serve.access_log.as_deref().map(AccessLog::open);
    let reopen_log = access_log.clone().map(|log| move || log.reopen());
    let clients = services::client_rules(&common.admission);
    let settings = services::serve_settings(&serve, root, clients, access_log)?;
    let auths = settings.routes.upstreams.auths();
    let reload = move || {
        for auth in &auths {
            // Logs its outcome; a file that fails keeps the users read before.
            let _ = auth.reload();
        }
    };
    let shared = http::Shared::new(settings);
    // Every socket serves everything; its plan says whether a PROXY header comes first.
    let listeners = listeners
        .into_iter()
        .map(|l| {
            let header = proxy::header_rule(&l.name, &common.admission.header_required);
            runtime::Planned::counted(l, header)
        })
        .collect();
    runtime::run(
        listeners,
        &services::serve_lifecycle(common, &serve),
        notifier,
        &runtime::Service {
            status: &status,
            reopen_logs: reopen_log.as_ref().map(|f| f as &(dyn Fn() + Sync)),
            reload: Some(&reload),
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
    check_names(&common.admission.header_required, &listeners)?;
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
