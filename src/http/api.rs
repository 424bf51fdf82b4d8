//! The API side: aptly's `/api/version` answered byte for byte as aptly does, and
//! `/metrics` in the Prometheus text format.

use std::fmt::Write;

use std::sync::atomic::Ordering;

use super::access_log::AccessLog;
use super::metrics::{Totals, DURATION_BOUNDS};
use crate::admission::client::ClientRules;
use crate::runtime::blocking::PoolStats;

/// aptly answers `{"Version":"1.5.0+ds1-1+b4"}` with no trailing newline; clients parse it.
pub const VERSION_BODY: &[u8] =
    concat!("{\"Version\":\"", env!("CARGO_PKG_VERSION"), "\"}").as_bytes();
pub const VERSION_TYPE: &[u8] = b"application/json; charset=utf-8";
pub const METRICS_TYPE: &[u8] = b"text/plain; version=0.0.4; charset=utf-8";

/// Renders the Prometheus exposition text.
pub fn render_metrics(
    out: &mut String,
    accepted: u64,
    open: usize,
    totals: &Totals,
    pool: &PoolStats,
    access_log: Option<&AccessLog>,
    clients: &ClientRules,
) {
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        "# HELP ringsock_connections_accepted_total Connections accepted since start.\n\
         # TYPE ringsock_connections_accepted_total counter\n\
         ringsock_connections_accepted_total {accepted}\n\
         # HELP ringsock_connections_open Connections open now.\n\
         # TYPE ringsock_connections_open gauge\n\
         ringsock_connections_open {open}\n\
         # HELP ringsock_http_responses_total HTTP responses sent, by status class.\n\
         # TYPE ringsock_http_responses_total counter\n"
    );
    for (i, n) in totals.responses.iter().enumerate() {
        let _ = writeln!(
            out,
            "ringsock_http_responses_total{{code=\"{}xx\"}} {n}",
            i + 1
        );
    }
    let _ = write!(
        out,
        "# HELP ringsock_http_response_bytes_total Bytes sent in responses, heads and bodies.\n\
         # TYPE ringsock_http_response_bytes_total counter\n\
         ringsock_http_response_bytes_total {}\n",
        totals.bytes_sent
    );
    let _ = write!(
        out,
        "# HELP ringsock_http_file_opens_offloaded_total Opens done on an I/O thread: their \
         path was not in the kernel's lookup cache.\n\
         # TYPE ringsock_http_file_opens_offloaded_total counter\n\
         ringsock_http_file_opens_offloaded_total {}\n\
         # HELP ringsock_http_file_sends_offloaded_total sendfile calls done on an I/O thread: \
         their pages were not in the page cache.\n\
         # TYPE ringsock_http_file_sends_offloaded_total counter\n\
         ringsock_http_file_sends_offloaded_total {}\n\
         # HELP ringsock_http_file_bytes_offloaded_total Body bytes sent by I/O threads.\n\
         # TYPE ringsock_http_file_bytes_offloaded_total counter\n\
         ringsock_http_file_bytes_offloaded_total {}\n\
         # HELP ringsock_io_threads I/O threads running now (--io-threads is the most).\n\
         # TYPE ringsock_io_threads gauge\n\
         ringsock_io_threads {}\n\
         # HELP ringsock_io_threads_busy I/O threads running a call now.\n\
         # TYPE ringsock_io_threads_busy gauge\n\
         ringsock_io_threads_busy {}\n\
         # HELP ringsock_io_queue_length Calls waiting for an I/O thread now.\n\
         # TYPE ringsock_io_queue_length gauge\n\
         ringsock_io_queue_length {}\n",
        totals.disk_opens,
        totals.disk_sends,
        totals.disk_bytes,
        pool.threads,
        pool.busy,
        pool.queued
    );
    render_durations(out, totals);
    let _ = write!(
        out,
        "# HELP ringsock_proxy_protocol_refused_total Connections from --proxy-protocol-from \
         peers closed for a missing, malformed or slow PROXY header.\n\
         # TYPE ringsock_proxy_protocol_refused_total counter\n\
         ringsock_proxy_protocol_refused_total {}\n",
        crate::admission::proxy_header::REFUSED.load(Ordering::Relaxed)
    );
    if let Some(limit) = &clients.per_client {
        let _ = write!(
            out,
            "# HELP ringsock_per_client_refused_total Connections closed at accept: their \
             client's address range had --per-client-connections open.\n\
             # TYPE ringsock_per_client_refused_total counter\n\
             ringsock_per_client_refused_total {}\n\
             # HELP ringsock_per_client_ranges Client address ranges with a connection open.\n\
             # TYPE ringsock_per_client_ranges gauge\n\
             ringsock_per_client_ranges {}\n",
            limit.refused.load(Ordering::Relaxed),
            limit.tracked()
        );
    }
    if let Some(rate) = &clients.rate {
        let _ = write!(
            out,
            "# HELP ringsock_per_client_rate_limited_total Requests answered 429: their \
             client was over --per-client-rate.\n\
             # TYPE ringsock_per_client_rate_limited_total counter\n\
             ringsock_per_client_rate_limited_total {}\n",
            rate.limited.load(Ordering::Relaxed)
        );
    }
    if let Some(log) = access_log {
        let _ = write!(
            out,
            "# HELP ringsock_access_log_lines_total Access log lines written.\n\
             # TYPE ringsock_access_log_lines_total counter\n\
             ringsock_access_log_lines_total {}\n\
             # HELP ringsock_access_log_lines_lost_total Access log lines that could not be \
             written (full disk, unwritable path).\n\
             # TYPE ringsock_access_log_lines_lost_total counter\n\
             ringsock_access_log_lines_lost_total {}\n",
            log.lines.load(Ordering::Relaxed),
            log.lines_lost.load(Ordering::Relaxed)
        );
    }
}

/// `ringsock_http_request_duration_seconds` as a Prometheus histogram (cumulative).
fn render_durations(out: &mut String, totals: &Totals) {
    let _ = write!(
        out,
        "# HELP ringsock_http_request_duration_seconds Time from a request head's first byte \
         to its answer (the body sent, for files).\n\
         # TYPE ringsock_http_request_duration_seconds histogram\n"
    );
    let mut cumulative = 0;
    for (bound, n) in DURATION_BOUNDS.iter().zip(&totals.durations) {
        cumulative += n;
        let _ = writeln!(
            out,
            "ringsock_http_request_duration_seconds_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    let count = cumulative + totals.durations[DURATION_BOUNDS.len()];
    let _ = write!(
        out,
        "ringsock_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n\
         ringsock_http_request_duration_seconds_sum {}\n\
         ringsock_http_request_duration_seconds_count {count}\n",
        totals.duration_sum_micros as f64 / 1e6
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_body_is_aptly_shaped() {
        assert_eq!(
            std::str::from_utf8(VERSION_BODY).unwrap(),
            format!("{{\"Version\":\"{}\"}}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn metrics_text_has_every_series() {
        let mut out = String::new();
        let totals = Totals {
            responses: [0, 3, 0, 1, 0],
            bytes_sent: 99,
            disk_opens: 4,
            disk_sends: 5,
            disk_bytes: 6,
            durations: [1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            duration_sum_micros: 1_500_000,
        };
        let pool = PoolStats {
            threads: 3,
            busy: 2,
            queued: 1,
            ran: 8,
        };
        render_metrics(
            &mut out,
            7,
            2,
            &totals,
            &pool,
            None,
            &ClientRules::default(),
        );
        assert!(out.contains("ringsock_connections_accepted_total 7\n"));
        assert!(out.contains("ringsock_connections_open 2\n"));
        assert!(out.contains("ringsock_http_responses_total{code=\"2xx\"} 3\n"));
        assert!(out.contains("ringsock_http_responses_total{code=\"4xx\"} 1\n"));
        assert!(out.contains("ringsock_http_response_bytes_total 99\n"));
        assert!(out.contains("ringsock_http_file_opens_offloaded_total 4\n"));
        assert!(out.contains("ringsock_http_file_sends_offloaded_total 5\n"));
        assert!(out.contains("ringsock_http_file_bytes_offloaded_total 6\n"));
        assert!(out.contains("ringsock_io_threads 3\n"));
        assert!(out.contains("ringsock_io_threads_busy 2\n"));
        assert!(out.contains("ringsock_io_queue_length 1\n"));
        assert!(out.contains("ringsock_http_request_duration_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(out.contains("ringsock_http_request_duration_seconds_bucket{le=\"0.001\"} 3\n"));
        assert!(out.contains("ringsock_http_request_duration_seconds_bucket{le=\"60\"} 3\n"));
        assert!(out.contains("ringsock_http_request_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(out.contains("ringsock_http_request_duration_seconds_sum 1.5\n"));
        assert!(out.contains("ringsock_http_request_duration_seconds_count 4\n"));
    }
}
