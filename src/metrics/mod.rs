//! Prometheus metrics for both subcommands: one writer of the text exposition format,
//! the families every service has (connections, I/O threads), and counters that one
//! worker writes and `/metrics` sums.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::runtime::blocking::PoolStats;
use crate::runtime::limit::Limiter;
use crate::sync::lock;

pub const CONTENT_TYPE: &[u8] = b"text/plain; version=0.0.4; charset=utf-8";

/// What a service's `/metrics` is made of: every family it has, written into the text.
/// Called on a worker with its state (the limiter and the I/O pool are the process's).
pub type Source = Arc<dyn Fn(&mut Exposition, &crate::runtime::Worker) + Send + Sync>;

/// Prometheus' text exposition format (version 0.0.4), written family by family.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

#[derive(Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Exposition {
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, Kind::Counter, help, &[("", value)]);
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, Kind::Gauge, help, &[("", value)]);
    }

    /// A family with one sample per label set; `labels` is written as given, e.g.
    /// `{cause="refused"}`.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str, samples: &[(&str, u64)]) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        // Writing into a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.text, "{name}{labels} {value}");
        }
    }

    /// A histogram from per-bucket counts (not cumulative; one more than `bounds`, the
    /// last for +Inf), with bounds and sum in seconds.
    pub fn histogram(&mut self, name: &str, help: &str, bounds: &[f64], counts: &[u64], sum: f64) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in bounds.iter().zip(counts) {
            cumulative += n;
            let _ = writeln!(self.text, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = cumulative + counts.get(bounds.len()).copied().unwrap_or(0);
        let _ = write!(
            self.text,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}\n"
        );
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.text.into_bytes()
    }
}

/// The families every service has: its connections and the I/O thread pool.
pub fn common(out: &mut Exposition, limiter: &Limiter, pool: &PoolStats) {
    out.counter(
        "ringsock_connections_accepted_total",
        "Connections accepted since start.",
        limiter.accepted(),
    );
    out.gauge(
        "ringsock_connections_open",
        "Connections open now.",
        limiter.open() as u64,
    );
    out.gauge(
        "ringsock_connections_max",
        "--connections-max in force; at it, new clients wait in the listen backlog.",
        limiter.max() as u64,
    );
    out.gauge(
        "ringsock_connections_waiting_for_fds",
        "Connections waiting for a file descriptor (accepting pauses meanwhile).",
        limiter.waiting_for_fds() as u64,
    );
    out.counter(
        "ringsock_connections_quieted_total",
        "Waits of idle connections moved off their receive buffers (after 1 to 2 s).",
        limiter.quieted(),
    );
    out.gauge(
        "ringsock_io_threads",
        "I/O threads running now (--io-threads is the most).",
        pool.threads as u64,
    );
    out.gauge(
        "ringsock_io_threads_busy",
        "I/O threads running a call now.",
        pool.busy as u64,
    );
    out.gauge(
        "ringsock_io_queue_length",
        "Calls waiting for an I/O thread now.",
        pool.queued as u64,
    );
}

/// Adds `n` to a counter only one thread writes: a load and a store, no locked
/// read-modify-write, so counting costs the hot path next to nothing.
pub fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// Each worker's own set of counters (written by that worker alone, see [`bump`]), kept
/// here to be summed when rendered.
#[derive(Debug)]
pub struct PerWorker<T> {
    workers: Mutex<Vec<Arc<T>>>,
}

impl<T> Default for PerWorker<T> {
    fn default() -> Self {
        PerWorker {
            workers: Mutex::new(Vec::new()),
        }
    }
}

impl<T: Default> PerWorker<T> {
    /// A new worker's counters, registered for summing.
    pub fn register(&self) -> Arc<T> {
        let counters = Arc::new(T::default());
        lock(&self.workers).push(counters.clone());
        counters
    }

    /// Calls `f` with every worker's counters.
    pub fn each(&self, mut f: impl FnMut(&T)) {
        for worker in lock(&self.workers).iter() {
            f(worker);
        }
    }

    /// The sum over workers of what `read` takes from each.
    pub fn sum(&self, read: impl Fn(&T) -> &AtomicU64) -> u64 {
        let mut total = 0;
        self.each(|worker| total += read(worker).load(Ordering::Relaxed));
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_histograms_in_the_text_format() {
        let mut out = Exposition::default();
        out.family(
            "x_total",
            Kind::Counter,
            "Xs.",
            &[("{a=\"1\"}", 2), ("{a=\"2\"}", 3)],
        );
        out.histogram("d_seconds", "Ds.", &[0.001, 1.0], &[1, 2, 4], 1.5);
        let text = String::from_utf8(out.into_bytes()).unwrap();
        assert_eq!(
            text,
            "# HELP x_total Xs.\n# TYPE x_total counter\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3\n\
             # HELP d_seconds Ds.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{le=\"0.001\"} 1\nd_seconds_bucket{le=\"1\"} 3\n\
             d_seconds_bucket{le=\"+Inf\"} 7\nd_seconds_sum 1.5\nd_seconds_count 7\n"
        );
    }

    #[test]
    fn per_worker_counters_are_summed() {
        let all: PerWorker<AtomicU64> = PerWorker::default();
        let (a, b) = (all.register(), all.register());
        bump(&a, 2);
        bump(&b, 3);
        assert_eq!(all.sum(|c| c), 5);
    }
}
