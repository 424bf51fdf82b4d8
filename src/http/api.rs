//! The API side: aptly's `/api/version` answered byte for byte as aptly does, and
//! `/metrics` in the Prometheus text format.

use std::fmt::Write;

use super::metrics::Totals;

/// aptly answers `{"Version":"1.5.0+ds1-1+b4"}` with no trailing newline; clients parse it.
pub const VERSION_BODY: &[u8] =
    concat!("{\"Version\":\"", env!("CARGO_PKG_VERSION"), "\"}").as_bytes();
pub const VERSION_TYPE: &[u8] = b"application/json; charset=utf-8";
pub const METRICS_TYPE: &[u8] = b"text/plain; version=0.0.4; charset=utf-8";

/// Renders the Prometheus exposition text.
pub fn render_metrics(out: &mut String, accepted: u64, open: usize, totals: &Totals) {
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
        };
        render_metrics(&mut out, 7, 2, &totals);
        assert!(out.contains("ringsock_connections_accepted_total 7\n"));
        assert!(out.contains("ringsock_connections_open 2\n"));
        assert!(out.contains("ringsock_http_responses_total{code=\"2xx\"} 3\n"));
        assert!(out.contains("ringsock_http_responses_total{code=\"4xx\"} 1\n"));
        assert!(out.contains("ringsock_http_response_bytes_total 99\n"));
    }
}
