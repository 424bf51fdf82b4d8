//! What the proxy has done, for `/metrics` on its own socket (a listener named
//! `metrics`, or `--metrics ADDR`) and for the `STATUS=` line `systemctl status` shows.
//! Connection events are counted once per connection; bytes as they move, in per-worker
//! counters that are summed when rendered.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use super::resolve::is_resolve_failure;
use crate::metrics::{bump, Exposition, Kind, PerWorker};
use crate::runtime::limit::Limiter;

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
    pub workers: PerWorker<WorkerCounters>,
}

/// One worker's counters, added to by its connections as bytes are delivered, so
/// `/metrics` shows a long transfer while it runs. Only that worker writes them ([`bump`]:
/// no locked add per message); aligned so two workers never share a cache line.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub to_target: AtomicU64,
    pub to_client: AtomicU64,
    /// Of both, the bytes spliced rather than copied.
    pub spliced: AtomicU64,
    /// Connections cut by `--idle-timeout`.
    pub idle_timeouts: AtomicU64,
}

impl WorkerCounters {
    /// `n` bytes delivered by copy (`spliced` false) or through a pipe; `counter` is
    /// the direction's. Only the owning worker may call this.
    pub fn delivered(&self, counter: &AtomicU64, n: usize, spliced: bool) {
        bump(counter, n as u64);
        if spliced {
            bump(&self.spliced, n as u64);
        }
    }
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

    /// The proxy's own families.
    pub fn render(&self, out: &mut Exposition) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.family(
            "ringsock_proxy_connect_failures_total",
            Kind::Counter,
            "Connections to TARGET that failed, by cause.",
            &[
                ("{cause=\"refused\"}", load(&self.connect_refused)),
                ("{cause=\"timeout\"}", load(&self.connect_timed_out)),
                ("{cause=\"resolve\"}", load(&self.connect_unresolved)),
                ("{cause=\"other\"}", load(&self.connect_other)),
            ],
        );
        out.counter(
            "ringsock_proxy_resets_total",
            "Connections cut with RST after an error on either side.",
            load(&self.resets),
        );
        out.counter(
            "ringsock_proxy_idle_timeouts_total",
            "Connections cut by --idle-timeout.",
            self.workers.sum(|w| &w.idle_timeouts),
        );
        out.family(
            "ringsock_proxy_bytes_total",
            Kind::Counter,
            "Bytes forwarded, by direction, counted as they are delivered.",
            &[
                (
                    "{direction=\"to_target\"}",
                    self.workers.sum(|w| &w.to_target),
                ),
                (
                    "{direction=\"to_client\"}",
                    self.workers.sum(|w| &w.to_client),
                ),
            ],
        );
        out.counter(
            "ringsock_proxy_spliced_bytes_total",
            "Of those, bytes moved with splice(2) rather than copied.",
            self.workers.sum(|w| &w.spliced),
        );
    }

    /// The `STATUS=` line: what `systemctl status` shows, refreshed at most once a second.
    pub fn status(&self, limiter: &Limiter, target: &str) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let failures = load(&self.connect_refused)
            + load(&self.connect_timed_out)
            + load(&self.connect_unresolved)
            + load(&self.connect_other);
        format!(
            "Forwarding to {target}: {} open, {} accepted, {} connect failures, {} resets, {} MiB to target, {} MiB to clients",
            limiter.open(),
            limiter.accepted(),
            failures,
            load(&self.resets),
            self.workers.sum(|w| &w.to_target) >> 20,
            self.workers.sum(|w| &w.to_client) >> 20,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_workers_counters() {
        let counters = ProxyCounters::default();
        let (a, b) = (counters.workers.register(), counters.workers.register());
        a.delivered(&a.to_target, 100, true);
        a.delivered(&a.to_client, 7, false);
        b.delivered(&b.to_target, 20, false);
        b.delivered(&b.to_client, 3000, true);
        bump(&b.idle_timeouts, 1);
        let mut out = Exposition::default();
        counters.render(&mut out);
        let text = String::from_utf8(out.into_bytes()).unwrap();
        for line in [
            "ringsock_proxy_bytes_total{direction=\"to_target\"} 120\n",
            "ringsock_proxy_bytes_total{direction=\"to_client\"} 3007\n",
            "ringsock_proxy_spliced_bytes_total 3100\n",
            "ringsock_proxy_idle_timeouts_total 1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}
