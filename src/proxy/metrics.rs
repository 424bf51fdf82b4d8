//! What the proxy has done, for `/metrics` on its own socket (a listener named
//! `metrics`, or `--metrics ADDR`) and for the `STATUS=` line `systemctl status` shows.
//! Counted once per connection, when it ends (never per burst), in process-wide atomics.

use std::fmt::Write;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use super::forward::{Moved, IDLE_TIMEOUTS};
use crate::runtime::limit::Limiter;

/// The socket name that serves metrics instead of forwarding.
pub const METRICS_LISTENER: &str = "metrics";

#[derive(Debug, Default)]
pub struct ProxyCounters {
    connect_refused: AtomicU64,
    connect_timed_out: AtomicU64,
    connect_other: AtomicU64,
    /// Connections that ended with an error on either side (cut with RST).
    resets: AtomicU64,
    to_upstream: AtomicU64,
    to_client: AtomicU64,
    spliced: AtomicU64,
}

impl ProxyCounters {
    pub fn connect_failed(&self, e: &io::Error) {
        let counter = match e.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => &self.connect_refused,
            io::ErrorKind::TimedOut => &self.connect_timed_out,
            _ => &self.connect_other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ended(&self, moved: &Moved, reset: bool) {
        self.to_upstream
            .fetch_add(moved.to_upstream, Ordering::Relaxed);
        self.to_client.fetch_add(moved.to_client, Ordering::Relaxed);
        self.spliced.fetch_add(moved.spliced, Ordering::Relaxed);
        if reset {
            self.resets.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text.
    pub fn render(&self, limiter: &Limiter) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, values: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in values {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "ringsock_connections_accepted_total",
            "counter",
            "Connections accepted since start.",
            &[("", limiter.accepted())],
        );
        metric(
            "ringsock_connections_open",
            "gauge",
            "Connections open now.",
            &[("", limiter.open() as u64)],
        );
        metric(
            "ringsock_connections_max",
            "gauge",
            "--connections-max in force; at it, new clients wait in the listen backlog.",
            &[("", limiter.max() as u64)],
        );
        metric(
            "ringsock_connections_waiting_for_fds",
            "gauge",
            "Connections waiting for a file descriptor (accepting pauses meanwhile).",
            &[("", limiter.waiting_for_fds() as u64)],
        );
        metric(
            "ringsock_proxy_connect_failures_total",
            "counter",
            "Connections to TARGET that failed, by cause.",
            &[
                ("{cause=\"refused\"}", load(&self.connect_refused)),
                ("{cause=\"timeout\"}", load(&self.connect_timed_out)),
                ("{cause=\"other\"}", load(&self.connect_other)),
            ],
        );
        metric(
            "ringsock_proxy_resets_total",
            "counter",
            "Connections cut with RST after an error on either side.",
            &[("", load(&self.resets))],
        );
        metric(
            "ringsock_proxy_idle_timeouts_total",
            "counter",
            "Connections cut by --idle-timeout.",
            &[("", IDLE_TIMEOUTS.load(Ordering::Relaxed))],
        );
        metric(
            "ringsock_proxy_bytes_total",
            "counter",
            "Bytes forwarded by finished connections, by direction.",
            &[
                ("{direction=\"to_target\"}", load(&self.to_upstream)),
                ("{direction=\"to_client\"}", load(&self.to_client)),
            ],
        );
        metric(
            "ringsock_proxy_spliced_bytes_total",
            "counter",
            "Of those, bytes moved with splice(2) rather than copied.",
            &[("", load(&self.spliced))],
        );
        out
    }

    /// The `STATUS=` line: what `systemctl status` shows, refreshed at most once a second.
    pub fn status(&self, limiter: &Limiter, target: &str) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let failures =
            load(&self.connect_refused) + load(&self.connect_timed_out) + load(&self.connect_other);
        format!(
            "Forwarding to {target}: {} open, {} accepted, {} connect failures, {} resets, {} MiB to target, {} MiB to clients",
            limiter.open(),
            limiter.accepted(),
            failures,
            load(&self.resets),
            load(&self.to_upstream) >> 20,
            load(&self.to_client) >> 20,
        )
    }
}
