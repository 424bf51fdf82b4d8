//! What the proxy has done, for `/metrics` on its own socket (a listener named
//! `metrics`, or `--metrics ADDR`) and for the `STATUS=` line `systemctl status` shows.
//! Connection events are counted once per connection in process-wide atomics; bytes
//! are counted as they move, in per-worker counters that `/metrics` sums.

use std::fmt::Write;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::forward::IDLE_TIMEOUTS;
use super::resolve::is_resolve_failure;
use crate::http::metrics::bump;
use crate::runtime::limit::Limiter;
use crate::sync::lock;

/// The socket name that serves metrics instead of forwarding.
pub const METRICS_LISTENER: &str = "metrics";

#[derive(Debug, Default)]
pub struct ProxyCounters {
    connect_refused: AtomicU64,
    connect_timed_out: AtomicU64,
    connect_unresolved: AtomicU64,
    connect_other: AtomicU64,
    /// Connections that ended with an error on either side (cut with RST).
    resets: AtomicU64,
    workers: Mutex<Vec<Arc<WorkerBytes>>>,
}

/// One worker's byte counters, added to by its connections as bytes are delivered, so
/// `/metrics` shows a long transfer while it runs. Only that worker writes them ([`bump`]:
/// no locked add per message); aligned so two workers never share a cache line.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct WorkerBytes {
    pub to_target: AtomicU64,
    pub to_client: AtomicU64,
    /// Of both, the bytes spliced rather than copied.
    pub spliced: AtomicU64,
}

impl WorkerBytes {
    /// `n` bytes delivered by copy (`spliced` false) or through a pipe; `counter` is
    /// the direction's. Only the owning worker may call this.
    pub fn delivered(&self, counter: &AtomicU64, n: usize, spliced: bool) {
        bump(counter, n as u64);
        if spliced {
            bump(&self.spliced, n as u64);
        }
    }
}

/// Every worker's bytes, summed.
#[derive(Debug, Default, PartialEq, Eq)]
struct ByteTotals {
    to_target: u64,
    to_client: u64,
    spliced: u64,
}

impl ProxyCounters {
    pub fn connect_failed(&self, e: &io::Error) {
        // First: a name without addresses also says NotFound, which a missing Unix
        // socket path says too.
        let counter = if is_resolve_failure(e) {
            &self.connect_unresolved
        } else {
            match e.kind() {
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => &self.connect_refused,
                io::ErrorKind::TimedOut => &self.connect_timed_out,
                _ => &self.connect_other,
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ended(&self, reset: bool) {
        if reset {
            self.resets.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A new worker's byte counters, registered for summing.
    pub fn register(&self) -> Arc<WorkerBytes> {
        let bytes = Arc::new(WorkerBytes::default());
        lock(&self.workers).push(bytes.clone());
        bytes
    }

    fn bytes(&self) -> ByteTotals {
        let mut totals = ByteTotals::default();
        for worker in lock(&self.workers).iter() {
            totals.to_target += worker.to_target.load(Ordering::Relaxed);
            totals.to_client += worker.to_client.load(Ordering::Relaxed);
            totals.spliced += worker.spliced.load(Ordering::Relaxed);
        }
        totals
    }

    /// The Prometheus text.
    pub fn render(&self, limiter: &Limiter) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let bytes = self.bytes();
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
                ("{cause=\"resolve\"}", load(&self.connect_unresolved)),
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
            "Bytes forwarded, by direction, counted as they are delivered.",
            &[
                ("{direction=\"to_target\"}", bytes.to_target),
                ("{direction=\"to_client\"}", bytes.to_client),
            ],
        );
        metric(
            "ringsock_proxy_spliced_bytes_total",
            "counter",
            "Of those, bytes moved with splice(2) rather than copied.",
            &[("", bytes.spliced)],
        );
        out
    }

    /// The `STATUS=` line: what `systemctl status` shows, refreshed at most once a second.
    pub fn status(&self, limiter: &Limiter, target: &str) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let failures = load(&self.connect_refused)
            + load(&self.connect_timed_out)
            + load(&self.connect_unresolved)
            + load(&self.connect_other);
        let bytes = self.bytes();
        format!(
            "Forwarding to {target}: {} open, {} accepted, {} connect failures, {} resets, {} MiB to target, {} MiB to clients",
            limiter.open(),
            limiter.accepted(),
            failures,
            load(&self.resets),
            bytes.to_target >> 20,
            bytes.to_client >> 20,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_workers_bytes() {
        let counters = ProxyCounters::default();
        let (a, b) = (counters.register(), counters.register());
        a.delivered(&a.to_target, 100, true);
        a.delivered(&a.to_client, 7, false);
        b.delivered(&b.to_target, 20, false);
        b.delivered(&b.to_client, 3000, true);
        assert_eq!(
            counters.bytes(),
            ByteTotals {
                to_target: 120,
                to_client: 3007,
                spliced: 3100,
            }
        );
    }
}
