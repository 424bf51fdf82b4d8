//! A request to a `--route`: the route's rules first (the request rate, the networks it
//! allows, credentials, what a backend can be sent), then the exchange with the backend,
//! counted and logged as every answer is.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::{Connection, Next, Responder, FLUSH_AT};
use crate::http::access_log::{self, Backend};
use crate::http::answer::{Answer, Value};
use crate::http::auth::{AuthOutcome, BasicAuth};
use crate::http::request::{Framing, Method, Request};
use crate::http::response;
use crate::http::router;
use crate::http::upstream::exchange::{self, ClientSide, Exchanged, Lent};
use crate::http::upstream::head::{self, Outgoing};
use crate::http::upstream::relay::Reader;
use crate::http::upstream::{Outcome, Routed};

/// What a route passes on; anything else (TRACE, CONNECT) is 405.
const ROUTE_METHODS: &[u8] = b"GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH";

/// An answer a route's rules gave in the backend's stead.
pub(super) struct Refusal {
    answer: Answer,
    route: usize,
    outcome: Outcome,
}

/// What the access log shows of a routed request, copied before its head's bytes go.
#[derive(Default)]
pub(super) struct LogLine {
    request: Vec<u8>,
    /// Who `--route-auth` let in.
    user: Option<Arc<str>>,
    referer: Option<Vec<u8>>,
    user_agent: Option<Vec<u8>>,
}

impl Responder<'_> {
    /// `None` if `req` goes to no route; else passed on (with what the log shows of it),
    /// or refused.
    pub(super) async fn route(
        &mut self,
        req: &Request<'_>,
    ) -> Option<Result<(Routed, LogLine), Refusal>> {
        let settings = &self.handler.shared.settings;
        let route = settings.routes.upstreams.find(req.path)?;
        if let Err(retry_after) = settings.clients.allow_request(&self.client) {
            return Some(Err(Refusal {
                answer: router::too_many(retry_after),
                route,
                outcome: Outcome::Limited,
            }));
        }
        let admitted = self.admit(req, route).await;
        Some(admitted.map(|(routed, user)| (routed, self.log_line(req, user))))
    }

    /// The route's rules, in the order that costs least to the one who breaks them; the
    /// user `--route-auth` let in, if any.
    async fn admit(
        &self,
        req: &Request<'_>,
        route: usize,
    ) -> Result<(Routed, Option<Arc<str>>), Refusal> {
        let upstreams = &self.handler.shared.settings.routes.upstreams;
        let upstream = upstreams.get(route);
        let refuse = |answer, outcome| Refusal {
            answer,
            route,
            outcome,
        };
        let reason = |status| Answer::reason(status);
        if req.method == Method::Refused {
            let answer =
                reason(response::METHOD_NOT_ALLOWED).with("Allow", Value::Static(ROUTE_METHODS));
            return Err(refuse(answer, Outcome::Refused));
        }
        // Before any credential is looked at: an address outside the networks costs
        // nothing to refuse, and learns nothing about the users.
        let allowed = |ip| upstream.allow.contains(ip);
        if !upstream.allow.is_empty() && !self.client_ip.is_some_and(allowed) {
            return Err(refuse(reason(response::FORBIDDEN), Outcome::Denied));
        }
        // Before the body is read: a client that waits for 100 Continue sends none.
        let user = match &upstream.auth {
            None => None,
            Some(auth) => Some(
                authenticate(auth, req.authorization, self.client_ip)
                    .await
                    .map_err(|(answer, outcome)| refuse(answer, outcome))?,
            ),
        };
        if req.other_codings {
            return Err(refuse(reason(response::NOT_IMPLEMENTED), Outcome::Refused));
        }
        let expect_continue = match req.expect {
            None => false,
            Some(value) if value.eq_ignore_ascii_case(b"100-continue") => req.has_body(),
            Some(_) => {
                return Err(refuse(
                    reason(response::EXPECTATION_FAILED),
                    Outcome::Refused,
                ))
            }
        };
        if matches!(req.framing, Framing::Length(len) if len > upstreams.max_body) {
            return Err(refuse(
                reason(response::CONTENT_TOO_LARGE),
                Outcome::Refused,
            ));
        }
        let mut head = Vec::with_capacity(req.head.len() + 128);
        head::write_request(
            &Outgoing {
                method: req.method_name,
                path: req.path,
                query: req.query,
                head: req.head,
                framing: req.framing,
                client: self.client_ip,
                proto: "http",
                drop_authorization: upstream.auth.is_some(),
            },
            &mut head,
        );
        let routed = Routed {
            route,
            head,
            body: req.framing,
            expect_continue,
            retryable: is_idempotent(req.method_name) && !req.has_body(),
            head_request: req.method == Method::Head,
            http10: req.http10,
            keep_alive: req.keep_alive && self.handler.shared.settings.persistent,
        };
        Ok((routed, user))
    }

    fn log_line(&self, req: &Request<'_>, user: Option<Arc<str>>) -> LogLine {
        if self.handler.log.is_none() {
            return LogLine::default();
        }
        LogLine {
            user,
            request: req.line_as_sent().into_owned(),
            referer: req.referer.map(<[u8]>::to_vec),
            user_agent: req.user_agent.map(<[u8]>::to_vec),
        }
    }

    /// Answers a request a route's rules refused, and counts it for the route.
    pub(super) async fn refuse(
        &mut self,
        req: &Request<'_>,
        refusal: Refusal,
        started: Instant,
    ) -> io::Result<Next> {
        let counters = &self.handler.shared.settings.routes.upstreams.counters;
        counters[refusal.route].count(refusal.outcome);
        self.respond_with(req, refusal.answer, started).await
    }
}

/// `--route-auth`: the user let in, or the answer (401, 429, 503) and how it counts.
async fn authenticate(
    auth: &BasicAuth,
    authorization: Option<&[u8]>,
    client: Option<IpAddr>,
) -> Result<Arc<str>, (Answer, Outcome)> {
    let answer = |status| Answer::reason(status);
    match auth.check(authorization, client).await {
        AuthOutcome::Allowed { user } => Ok(user),
        AuthOutcome::Challenge => {
            let challenge = Value::Owned(auth.challenge().as_bytes().to_vec());
            let answer = answer(response::UNAUTHORIZED).with("WWW-Authenticate", challenge);
            Err((answer, Outcome::Unauthorized))
        }
        AuthOutcome::TooMany { retry_after_secs } => {
            let retry = Value::Number(retry_after_secs);
            let answer = answer(response::TOO_MANY_REQUESTS).with("Retry-After", retry);
            Err((answer, Outcome::Limited))
        }
        AuthOutcome::Busy => {
            let answer =
                answer(response::SERVICE_UNAVAILABLE).with("Retry-After", Value::Number(1));
            Err((answer, Outcome::Limited))
        }
    }
}

/// RFC 9110 §9.2.2: what may be sent twice with the effect of once.
fn is_idempotent(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"PUT" | b"DELETE" | b"OPTIONS")
}

impl Connection<'_> {
    /// Passes a routed request to its backend and the answer back. `start` is where the
    /// request's body begins in the input; it is moved past it.
    pub(super) async fn answer_routed(
        &mut self,
        routed: &Routed,
        line: &LogLine,
        start: &mut usize,
        started: Instant,
    ) -> io::Result<Next> {
        let closes = match self.exchange(routed, start).await? {
            Exchanged::Relayed(ended) => {
                let backend = Backend {
                    status: Some(ended.status),
                    time: ended.backend_time,
                };
                self.record_routed(line, ended.status, ended.body_bytes, backend, started);
                if let Some(e) = ended.cut {
                    return Err(e);
                }
                ended.closes
            }
            Exchanged::Local(local) => self.answer_here(routed, &local, line, started),
        };
        let closes = closes || !routed.keep_alive || self.responder.handler.worker.is_stopping();
        if closes {
            return Ok(Next::Close);
        }
        if self.responder.out.len() >= FLUSH_AT {
            self.responder.flush(false).await?;
        }
        Ok(Next::KeepGoing)
    }

    /// The exchange, with what it borrows from the connection and the worker.
    async fn exchange(&mut self, routed: &Routed, start: &mut usize) -> io::Result<Exchanged> {
        let handler = self.responder.handler;
        let settings = &handler.shared.settings;
        let Some(routing) = &handler.routing else {
            return Err(io::Error::other(
                "a routed request on a server without routes",
            ));
        };
        let lent = Lent {
            upstreams: &settings.routes.upstreams,
            pool: &routing.backends,
            pipes: &routing.pipes,
            buffers: &handler.worker.buffers,
        };
        let stall = settings.keepalive_timeout;
        let input = &mut self.input;
        let mut client = ClientSide {
            reader: Reader::new(
                &mut self.responder.stream,
                input,
                *start,
                lent.buffers,
                stall,
            ),
            out: &mut self.responder.out,
            stall,
            sent: 0,
        };
        let exchanged = exchange::exchange(&lent, &mut client, routed).await;
        *start = client.reader.at();
        handler.counters.count_bytes(client.sent);
        exchanged
    }

    /// Writes and logs an answer made here (502, 504, 413...); returns whether the
    /// connection closes after it.
    fn answer_here(
        &mut self,
        routed: &Routed,
        local: &exchange::Local,
        line: &LogLine,
        started: Instant,
    ) -> bool {
        let closes = local.closes || !routed.keep_alive;
        let answer = Answer::reason(local.status);
        let responder = &mut self.responder;
        let persistence = responder.persistence(closes, routed.http10);
        let date = responder.handler.date.now();
        answer.write(&mut responder.out, &date, persistence, routed.head_request);
        let body_bytes = match routed.head_request {
            true => 0,
            false => answer.body_len().unwrap_or(0),
        };
        let backend = Backend::default();
        self.record_routed(line, answer.status.code, body_bytes, backend, started);
        closes
    }

    fn record_routed(
        &self,
        line: &LogLine,
        status: u16,
        body_bytes: u64,
        backend: Backend,
        started: Instant,
    ) {
        let responder = &self.responder;
        responder.handler.record(&access_log::Entry {
            client: &responder.client_text,
            user: line.user.as_deref().map(str::as_bytes),
            request: &line.request,
            status,
            body_bytes,
            referer: line.referer.as_deref(),
            user_agent: line.user_agent.as_deref(),
            started,
            backend: Some(backend),
        });
    }
}
