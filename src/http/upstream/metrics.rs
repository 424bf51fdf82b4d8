//! What `/metrics` says about routes: requests by route and outcome, backend errors by
//! route and cause. Shared by the workers (a routed request costs a backend round trip;
//! one relaxed add more is nothing next to it).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::{Exposition, Kind};

/// How a routed request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered; by its status class, 1xx to 5xx.
    Answered(u16),
    /// 403: not from a network `--route-allow` names.
    Denied,
    /// 401: no or wrong credentials.
    Unauthorized,
    /// 429: too many failed attempts from the client's range.
    Limited,
    /// 413, 417 or 501: refused before the backend saw it.
    Refused,
    /// 502 or 504: the backend failed before answering.
    BackendFailed,
    /// The connection was cut mid-body (either side).
    Cut,
}

const OUTCOMES: [&str; 11] = [
    "1xx",
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "denied",
    "unauthorized",
    "limited",
    "refused",
    "backend_failed",
    "cut",
];

impl Outcome {
    fn index(self) -> usize {
        match self {
            Outcome::Answered(status) => usize::from((status / 100).clamp(1, 5)) - 1,
            Outcome::Denied => 5,
            Outcome::Unauthorized => 6,
            Outcome::Limited => 7,
            Outcome::Refused => 8,
            Outcome::BackendFailed => 9,
            Outcome::Cut => 10,
        }
    }
}

/// Why a backend failed a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Its socket does not exist, or nobody listens there.
    Unreachable,
    /// No connection within `--route-timeout`.
    ConnectTimeout,
    /// No answer head within `--route-timeout`.
    AnswerTimeout,
    /// An answer head that cannot be passed on.
    BadAnswer,
    /// It closed or reset the connection before answering.
    ClosedEarly,
    /// It closed, reset or stalled in the middle of a body.
    CutMidBody,
}

const CAUSES: [&str; 6] = [
    "unreachable",
    "connect_timeout",
    "answer_timeout",
    "bad_answer",
    "closed_early",
    "cut_mid_body",
];

/// One route's counters.
#[derive(Debug, Default)]
pub struct RouteCounters {
    outcomes: [AtomicU64; OUTCOMES.len()],
    causes: [AtomicU64; CAUSES.len()],
    /// Requests sent again on a new connection after a reused one failed.
    retries: AtomicU64,
    /// Requests sent on a kept-alive connection rather than a new one.
    reused: AtomicU64,
}

impl RouteCounters {
    pub fn count(&self, outcome: Outcome) {
        self.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self, cause: Cause) {
        self.causes[cause as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reused(&self) {
        self.reused.fetch_add(1, Ordering::Relaxed);
    }
}

/// The route families, one sample per route and label.
pub fn render<'a>(
    out: &mut Exposition,
    routes: impl Iterator<Item = (&'a str, &'a RouteCounters)> + Clone,
) {
    let family = |out: &mut Exposition,
                  name,
                  help,
                  label: &str,
                  names: &[&str],
                  read: &dyn Fn(&RouteCounters, usize) -> u64| {
        let samples: Vec<(String, u64)> = routes
            .clone()
            .flat_map(|(prefix, counters)| {
                names.iter().enumerate().map(move |(i, value)| {
                    (
                        format!("{{route={prefix:?},{label}=\"{value}\"}}"),
                        read(counters, i),
                    )
                })
            })
            .collect();
        let samples: Vec<(&str, u64)> = samples.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        out.family(name, Kind::Counter, help, &samples);
    };
    family(
        out,
        "ringsock_routed_requests_total",
        "Requests to a --route, by how they ended.",
        "outcome",
        &OUTCOMES,
        &|c, i| c.outcomes[i].load(Ordering::Relaxed),
    );
    family(
        out,
        "ringsock_backend_errors_total",
        "Backend failures, by cause.",
        "cause",
        &CAUSES,
        &|c, i| c.causes[i].load(Ordering::Relaxed),
    );
    family(
        out,
        "ringsock_backend_requests_total",
        "Requests sent to a backend: on a kept-alive connection, or again after one failed.",
        "connection",
        &["reused", "retried"],
        &|c, i| [&c.reused, &c.retries][i].load(Ordering::Relaxed),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_and_cause_has_its_label() {
        let counters = RouteCounters::default();
        counters.count(Outcome::Answered(204));
        counters.count(Outcome::Answered(503));
        counters.count(Outcome::Cut);
        counters.failed(Cause::AnswerTimeout);
        counters.reused();
        let mut out = Exposition::default();
        render(&mut out, [("/api/", &counters)].into_iter());
        let text = String::from_utf8(out.into_bytes()).unwrap();
        for line in [
            "ringsock_routed_requests_total{route=\"/api/\",outcome=\"2xx\"} 1\n",
            "ringsock_routed_requests_total{route=\"/api/\",outcome=\"5xx\"} 1\n",
            "ringsock_routed_requests_total{route=\"/api/\",outcome=\"cut\"} 1\n",
            "ringsock_routed_requests_total{route=\"/api/\",outcome=\"denied\"} 0\n",
            "ringsock_backend_errors_total{route=\"/api/\",cause=\"answer_timeout\"} 1\n",
            "ringsock_backend_requests_total{route=\"/api/\",connection=\"reused\"} 1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}
