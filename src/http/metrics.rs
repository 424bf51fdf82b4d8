//! Request and byte counters. Each worker owns its own set (one writer, so plain
//! load+store instead of locked read-modify-write, on its own cache lines); `/metrics`
//! sums every worker's set.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// One worker's counters. Aligned so two workers never share a cache line.
#[repr(align(128))]
#[derive(Default)]
pub struct WorkerCounters {
    /// Responses by status class: index 0 for 1xx up to 4 for 5xx.
    responses: [AtomicU64; 5],
    bytes_sent: AtomicU64,
    disk: DiskCounters,
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

/// File work moved to I/O threads because it would have waited for the disk.
#[derive(Default)]
struct DiskCounters {
    opens: AtomicU64,
    sends: AtomicU64,
    bytes: AtomicU64,
}

impl WorkerCounters {
    /// Only the owning worker calls this, so the load+store cannot lose an update.
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
        bump(&self.disk.opens, 1);
    }

    /// `turns` sendfile calls on I/O threads sent `bytes` of a body.
    pub fn count_disk_sends(&self, turns: u64, bytes: u64) {
        bump(&self.disk.sends, turns);
        bump(&self.disk.bytes, bytes);
    }
}

/// Adds `n` to a counter only one thread writes: a load and a store, no locked
/// read-modify-write, so counting costs the hot path next to nothing.
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// Every worker's counters, for summing.
#[derive(Default)]
pub struct Metrics {
    workers: Mutex<Vec<Arc<WorkerCounters>>>,
}

/// A sum over all workers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub responses: [u64; 5],
    pub bytes_sent: u64,
    pub disk_opens: u64,
    pub disk_sends: u64,
    pub disk_bytes: u64,
    /// Per bucket, not cumulative.
    pub durations: [u64; DURATION_BOUNDS.len() + 1],
    pub duration_sum_micros: u64,
}

impl Metrics {
    /// A new worker's counters, registered for summing.
    pub fn register(&self) -> Arc<WorkerCounters> {
        let counters = Arc::new(WorkerCounters::default());
        lock(&self.workers).push(counters.clone());
        counters
    }

    pub fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        for worker in lock(&self.workers).iter() {
            for (sum, counter) in totals.responses.iter_mut().zip(&worker.responses) {
                *sum += counter.load(Ordering::Relaxed);
            }
            totals.bytes_sent += worker.bytes_sent.load(Ordering::Relaxed);
            totals.disk_opens += worker.disk.opens.load(Ordering::Relaxed);
            totals.disk_sends += worker.disk.sends.load(Ordering::Relaxed);
            totals.disk_bytes += worker.disk.bytes.load(Ordering::Relaxed);
            for (sum, bucket) in totals.durations.iter_mut().zip(&worker.durations) {
                *sum += bucket.load(Ordering::Relaxed);
            }
            totals.duration_sum_micros += worker.duration_sum_micros.load(Ordering::Relaxed);
        }
        totals
    }
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
        assert_eq!(
            metrics.totals(),
            Totals {
                responses: [0, 2, 0, 1, 0],
                bytes_sent: 15,
                disk_opens: 1,
                disk_sends: 2,
                disk_bytes: 300,
                durations: [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                duration_sum_micros: 3_600_000_140,
            }
        );
    }
}
