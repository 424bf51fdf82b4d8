//! serve's own counters: responses by status class, bytes sent, what went to the I/O
//! threads, and how long requests took. Each worker owns its set (one writer, so plain
//! load+store, on its own cache lines); `/metrics` sums every worker's.

use std::sync::atomic::AtomicU64;

use crate::metrics::{bump, Exposition, Kind, PerWorker};

/// Every worker's counters.
pub type Metrics = PerWorker<WorkerCounters>;

/// One worker's counters. Aligned so two workers never share a cache line.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Responses by status class: index 0 for 1xx up to 4 for 5xx.
    responses: [AtomicU64; 5],
    bytes_sent: AtomicU64,
    disk_opens: AtomicU64,
    disk_sends: AtomicU64,
    disk_bytes: AtomicU64,
    /// Request durations by [`DURATION_BOUNDS`] bucket (not cumulative; the last is +Inf).
    durations: [AtomicU64; DURATION_BOUNDS.len() + 1],
    duration_sum_micros: AtomicU64,
}

/// Upper bounds of `ringsock_http_request_duration_seconds`' buckets, in microseconds:
/// from a cached answer (tens of µs) to a download that takes minutes.
pub const DURATION_BOUNDS: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 250_000, 1_000_000, 2_500_000,
    10_000_000, 60_000_000,
];

impl WorkerCounters {
    /// Only the owning worker calls these, so the load+store cannot lose an update.
    pub fn count_response(&self, class: usize) {
        if let Some(counter) = self.responses.get(class.wrapping_sub(1)) {
            bump(counter, 1);
        }
    }

    pub fn count_bytes(&self, n: u64) {
        bump(&self.bytes_sent, n);
    }

    /// One request took `took`, from its head's first byte to its answer.
    pub fn count_duration(&self, took: std::time::Duration) {
        let micros = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = DURATION_BOUNDS.partition_point(|&bound| bound < micros);
        bump(&self.durations[bucket], 1);
        bump(&self.duration_sum_micros, micros);
    }

    pub fn count_disk_open(&self) {
        bump(&self.disk_opens, 1);
    }

    /// `turns` sendfile calls on I/O threads sent `bytes` of a body.
    pub fn count_disk_sends(&self, turns: u64, bytes: u64) {
        bump(&self.disk_sends, turns);
        bump(&self.disk_bytes, bytes);
    }
}

/// serve's families, summed over workers.
pub fn render(out: &mut Exposition, all: &Metrics) {
    let classes = [
        "{code=\"1xx\"}",
        "{code=\"2xx\"}",
        "{code=\"3xx\"}",
        "{code=\"4xx\"}",
        "{code=\"5xx\"}",
    ];
    let responses: Vec<(&str, u64)> = classes
        .iter()
        .enumerate()
        .map(|(i, labels)| (*labels, all.sum(|w| &w.responses[i])))
        .collect();
    out.family(
        "ringsock_http_responses_total",
        Kind::Counter,
        "HTTP responses sent, by status class.",
        &responses,
    );
    out.counter(
        "ringsock_http_response_bytes_total",
        "Bytes sent in responses, heads and bodies.",
        all.sum(|w| &w.bytes_sent),
    );
    out.counter(
        "ringsock_http_file_opens_offloaded_total",
        "Opens done on an I/O thread: their path was not in the kernel's lookup cache.",
        all.sum(|w| &w.disk_opens),
    );
    out.counter(
        "ringsock_http_file_sends_offloaded_total",
        "sendfile calls done on an I/O thread: their pages were not in the page cache.",
        all.sum(|w| &w.disk_sends),
    );
    out.counter(
        "ringsock_http_file_bytes_offloaded_total",
        "Body bytes sent by I/O threads.",
        all.sum(|w| &w.disk_bytes),
    );
    let bounds: Vec<f64> = DURATION_BOUNDS.iter().map(|&b| b as f64 / 1e6).collect();
    let counts: Vec<u64> = (0..=DURATION_BOUNDS.len())
        .map(|i| all.sum(|w| &w.durations[i]))
        .collect();
    out.histogram(
        "ringsock_http_request_duration_seconds",
        "Time from a request head's first byte to its answer (the body sent, for files).",
        &bounds,
        &counts,
        all.sum(|w| &w.duration_sum_micros) as f64 / 1e6,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_workers() {
        let metrics = Metrics::default();
        let (a, b) = (metrics.register(), metrics.register());
        a.count_response(2);
        b.count_response(2);
        b.count_response(4);
        b.count_response(9);
        a.count_bytes(10);
        b.count_bytes(5);
        a.count_disk_open();
        b.count_disk_sends(2, 300);
        a.count_duration(std::time::Duration::from_micros(40));
        b.count_duration(std::time::Duration::from_micros(100));
        b.count_duration(std::time::Duration::from_secs(3600));
        let mut out = Exposition::default();
        render(&mut out, &metrics);
        let text = String::from_utf8(out.into_bytes()).unwrap();
        for line in [
            "ringsock_http_responses_total{code=\"2xx\"} 2\n",
            "ringsock_http_responses_total{code=\"4xx\"} 1\n",
            "ringsock_http_responses_total{code=\"5xx\"} 0\n",
            "ringsock_http_response_bytes_total 15\n",
            "ringsock_http_file_opens_offloaded_total 1\n",
            "ringsock_http_file_sends_offloaded_total 2\n",
            "ringsock_http_file_bytes_offloaded_total 300\n",
            "ringsock_http_request_duration_seconds_bucket{le=\"0.0001\"} 2\n",
            "ringsock_http_request_duration_seconds_bucket{le=\"60\"} 2\n",
            "ringsock_http_request_duration_seconds_bucket{le=\"+Inf\"} 3\n",
            "ringsock_http_request_duration_seconds_sum 3600.00014\n",
            "ringsock_http_request_duration_seconds_count 3\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}
