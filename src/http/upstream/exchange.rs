//! One routed request from start to end: a backend connection (kept-alive or new), the
//! request head and body to it, its answer head and body back to the client, and the
//! connection back to the pool when both ended cleanly. Failures get what nginx users
//! know: 502 for a backend that is not there or answers nonsense, 504 for one that takes
//! too long, and a cut client connection for a body that broke off midway, so that no
//! truncated answer ever looks complete.

use std::io;
use std::time::{Duration, Instant};

use super::head::{self, BadAnswer};
use super::metrics::{Cause, Outcome};
use super::pool::BackendPool;
use super::relay::{self, Cut, Reader, Writer};
use super::Upstreams;
use crate::http::input::Input;
use crate::http::request::Framing;
use crate::net::Stream;
use crate::proxy::PipePool;
use crate::runtime::buffers::RecvBuffers;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A routed request as decided while its head was at hand: everything the exchange
/// needs once the head's bytes are gone.
pub struct Routed {
    pub route: usize,
    /// The request head for the backend, written by [`head::write_request`].
    pub head: Vec<u8>,
    pub body: Framing,
    /// The client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
    /// Idempotent and bodyless: it may be sent again on a new connection when a reused
    /// one fails before answering (nginx's `proxy_next_upstream`).
    pub retryable: bool,
    pub head_request: bool,
    pub http10: bool,
    /// The connection may stay open after this answer, as far as the client and the
    /// server's settings go.
    pub keep_alive: bool,
}

/// The client side of an exchange: its reader (socket and unanswered bytes) and the
/// answers queued before this one, which go out first.
pub struct ClientSide<'a> {
    pub reader: Reader<'a>,
    pub out: &'a mut Vec<u8>,
    /// How long the client may refuse bytes.
    pub stall: Duration,
    /// Bytes sent to the client here (what was queued before, `100 Continue`, a large
    /// body), for the byte counter; what is left in `out` is the connection's to send.
    pub sent: u64,
}

/// What the exchange borrows from its worker.
pub struct Lent<'a> {
    pub upstreams: &'a Upstreams,
    pub pool: &'a BackendPool,
    pub pipes: &'a PipePool,
    pub buffers: &'a RecvBuffers,
}

/// How an exchange ended, for the log and the counters.
pub struct Ended {
    pub status: u16,
    pub outcome: Outcome,
    /// Answer body bytes sent (what the access log shows).
    pub body_bytes: u64,
    /// The client connection closes after this answer.
    pub closes: bool,
    /// From the request's start to the answer head's arrival.
    pub backend_time: Option<Duration>,
    /// The answer broke off (either side failed mid-body): the client connection is to
    /// be cut, with RST, after the log line.
    pub cut: Option<io::Error>,
}

/// An answer made here, not by the backend: what the caller writes for the client.
pub struct Local {
    pub status: crate::http::response::Status,
    pub outcome: Outcome,
    /// The request body was not read: the connection must close after the answer.
    pub closes: bool,
}

/// How an exchange went.
pub enum Exchanged {
    /// The backend's answer was passed on.
    Relayed(Ended),
    /// We answer: 502, 504, 413, 400.
    Local(Local),
}

/// Passes `routed` to its backend and the answer back. `Err`: the client connection
/// failed or must be cut (a backend that broke off mid-answer); it is then closed with
/// RST.
pub async fn exchange(
    lent: &Lent<'_>,
    client: &mut ClientSide<'_>,
    routed: &Routed,
) -> io::Result<Exchanged> {
    let started = Instant::now();
    match attempt(lent, client, routed, started, false).await? {
        Attempt::Done(exchanged) => Ok(exchanged),
        Attempt::Retry => {
            lent.upstreams.counters[routed.route].retried();
            match attempt(lent, client, routed, started, true).await? {
                Attempt::Done(exchanged) => Ok(exchanged),
                // Only a first attempt is retried.
                Attempt::Retry => Ok(backend_failed(lent, Cause::ClosedEarly, routed)),
            }
        }
    }
}

/// How one attempt at an exchange ended.
enum Attempt {
    Done(Exchanged),
    /// A reused connection failed before any answer came: send it again on a new one.
    Retry,
}

/// One attempt: a connection, the request sent, the answer passed back. `retried`: a
/// first attempt failed, and this one may not be retried.
async fn attempt(
    lent: &Lent<'_>,
    client: &mut ClientSide<'_>,
    routed: &Routed,
    started: Instant,
    retried: bool,
) -> io::Result<Attempt> {
    let counters = &lent.upstreams.counters[routed.route];
    let check = !routed.retryable || retried;
    let (mut backend, reused) = match connect(lent, routed.route, check).await {
        Ok(connected) => connected,
        Err(cause) => return Ok(Attempt::Done(backend_failed(lent, cause, routed))),
    };
    let retry = reused && routed.retryable && !retried;
    let mut answer_input = Input::Empty;
    let timeout = lent.upstreams.timeout;
    let mut reader = Reader::new(&mut backend, &mut answer_input, 0, lent.buffers, timeout);
    let body_done = match send_request(lent, client, &mut reader, routed).await {
        Ok(Sent::Whole) => true,
        // The backend may have answered before it stopped reading (413, 401): that answer
        // goes to the client, which then loses its connection, the rest of its body unread.
        Ok(Sent::Stopped) => false,
        Ok(Sent::Local(local)) => {
            counters.count(local.outcome);
            return Ok(Attempt::Done(Exchanged::Local(local)));
        }
        Ok(Sent::Failed(_)) if retry => return Ok(Attempt::Retry),
        Ok(Sent::Failed(cause)) => return Ok(Attempt::Done(backend_failed(lent, cause, routed))),
        Err(e) => {
            // The client went away (or stalled) midway through its body.
            counters.count(Outcome::Cut);
            return Err(e);
        }
    };
    let answer = match read_answer(&mut reader, routed.head_request, client.out).await {
        Ok(answer) => answer,
        Err(Cause::ClosedEarly) if retry => return Ok(Attempt::Retry),
        Err(cause) => return Ok(Attempt::Done(backend_failed(lent, cause, routed))),
    };
    let backend_time = started.elapsed();
    let keep_alive = routed.keep_alive && body_done;
    let mut ended = pass_answer(lent, client, &mut reader, routed, &answer, keep_alive).await;
    let reusable = answer.reusable && body_done && reader.is_drained() && ended.cut.is_none();
    ended.backend_time = Some(backend_time);
    if ended.cut.as_ref().is_some_and(is_backend_fault) {
        counters.failed(Cause::CutMidBody);
    }
    counters.count(ended.outcome);
    if reusable {
        lent.pool.put(routed.route, backend);
    }
    Ok(Attempt::Done(Exchanged::Relayed(ended)))
}

/// A kept-alive connection to the route's backend (`check`ed to be open, if asked), or a
/// new one; `true` if kept-alive.
async fn connect(lent: &Lent<'_>, route: usize, check: bool) -> Result<(Stream, bool), Cause> {
    if let Some(stream) = lent.pool.take(route, check) {
        lent.upstreams.counters[route].reused();
        return Ok((stream, true));
    }
    let upstream = lent.upstreams.get(route);
    let resolver = lent.pool.resolver(route);
    match upstream
        .target
        .connect(lent.upstreams.timeout, "--route-timeout", resolver)
        .await
    {
        Ok(stream) => Ok((stream, false)),
        Err(e) => {
            let cause = match e.kind() {
                io::ErrorKind::TimedOut => Cause::ConnectTimeout,
                _ => Cause::Unreachable,
            };
            crate::warn!(
                "failed to connect to {} for the route {}: {e}; answered {}",
                upstream.target,
                upstream.prefix,
                status_for(cause).code
            );
            Err(cause)
        }
    }
}

/// How sending the request went.
enum Sent {
    Whole,
    /// The backend stopped taking the body midway.
    Stopped,
    /// Answered here (a body that broke the rules): the backend connection is dropped.
    Local(Local),
    /// The backend failed before it could have answered.
    Failed(Cause),
}

/// Sends the head, then the body (after `100 Continue`, if the client waits for it).
async fn send_request(
    lent: &Lent<'_>,
    client: &mut ClientSide<'_>,
    backend: &mut Reader<'_>,
    routed: &Routed,
) -> io::Result<Sent> {
    let has_body = !matches!(routed.body, Framing::None | Framing::Length(0));
    let to_backend = Writer {
        stream: backend.stream,
        stall: lent.upstreams.timeout,
        pipes: lent.pipes,
    };
    let mut sent = 0;
    if let Err(e) = to_backend
        .stream
        .write_all_within(&routed.head, has_body, lent.upstreams.timeout, &mut sent)
        .await
    {
        crate::debug!("failed to send a request head to the backend: {e}");
        return Ok(Sent::Failed(Cause::ClosedEarly));
    }
    if !has_body {
        return Ok(Sent::Whole);
    }
    if routed.expect_continue {
        client.out.extend_from_slice(CONTINUE);
        flush(client, false).await?;
    }
    send_body(lent, client, &to_backend, routed.body).await
}

/// Relays the request body from the client to the backend.
async fn send_body(
    lent: &Lent<'_>,
    client: &mut ClientSide<'_>,
    to_backend: &Writer<'_>,
    body: Framing,
) -> io::Result<Sent> {
    let relayed = match body {
        Framing::Length(len) => relay::copy_length(&mut client.reader, to_backend, len).await,
        _ => relay::relay_chunked(
            &mut client.reader,
            to_backend,
            lent.upstreams.max_body,
            false,
        )
        .await
        .map(drop),
    };
    match relayed {
        Ok(()) => Ok(Sent::Whole),
        Err(Cut::Source(e)) => Err(e),
        Err(Cut::Destination(e)) => {
            crate::debug!("the backend stopped taking a request body: {e}");
            Ok(Sent::Stopped)
        }
        Err(Cut::Malformed(why)) => {
            crate::debug!("refusing a chunked request body: {why}");
            Ok(Sent::Local(Local {
                status: crate::http::response::BAD_REQUEST,
                outcome: Outcome::Refused,
                closes: true,
            }))
        }
        Err(Cut::TooLarge) => Ok(Sent::Local(Local {
            status: crate::http::response::CONTENT_TOO_LARGE,
            outcome: Outcome::Refused,
            closes: true,
        })),
    }
}

/// What of the backend's answer head the rest of the exchange needs.
struct AnswerHead {
    status: u16,
    framing: Framing,
    reusable: bool,
}

/// Reads the answer head, skipping interim (1xx) answers, and writes its start for the
/// client into `out` ([`pass_answer`] ends it).
async fn read_answer(
    backend: &mut Reader<'_>,
    head_request: bool,
    out: &mut Vec<u8>,
) -> Result<AnswerHead, Cause> {
    loop {
        match head::parse_answer(backend.buffered(), head_request) {
            Ok(Some(answer)) if answer.status == 101 => {
                return Err(bad_answer(BadAnswer(
                    "101 Switching Protocols to a request without Upgrade",
                )));
            }
            Ok(Some(answer)) if answer.status < 200 => {
                let len = answer.head_len;
                backend.used(len);
                continue;
            }
            Ok(Some(answer)) => {
                answer.write_start(out);
                let head = AnswerHead {
                    status: answer.status,
                    framing: answer.framing,
                    reusable: answer.reusable,
                };
                backend.used(answer.head_len);
                return Ok(head);
            }
            Ok(None) => {}
            Err(bad) => return Err(bad_answer(bad)),
        }
        match backend.read_more().await {
            Ok(0) if backend.buffered().is_empty() => return Err(Cause::ClosedEarly),
            Ok(0) => return Err(bad_answer(BadAnswer("an answer head cut short"))),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(Cause::AnswerTimeout),
            Err(e) => {
                crate::debug!("failed to read an answer head from the backend: {e}");
                return Err(Cause::ClosedEarly);
            }
        }
    }
}

fn bad_answer(bad: BadAnswer) -> Cause {
    crate::warn!("the backend sent {}; answered 502", bad.0);
    Cause::BadAnswer
}

/// Ends the answer head for the client and relays the body. `keep_alive`: the client's
/// connection may stay open, as far as the request goes.
async fn pass_answer(
    lent: &Lent<'_>,
    client: &mut ClientSide<'_>,
    backend: &mut Reader<'_>,
    routed: &Routed,
    answer: &AnswerHead,
    keep_alive: bool,
) -> Ended {
    // An HTTP/1.0 client cannot read chunks: the body goes bare and ends with the
    // connection, as one framed by the backend's close does anyway.
    let framing = match (answer.framing, routed.http10) {
        (Framing::Chunked, true) => Framing::UntilClose,
        (framing, _) => framing,
    };
    let keep_alive = keep_alive && framing != Framing::UntilClose;
    let connection: &[u8] = match (keep_alive, routed.http10) {
        (true, false) => b"",
        (true, true) => b"Connection: keep-alive\r\n",
        (false, _) => b"Connection: close\r\n",
    };
    head::finish_head(framing, connection, client.out);
    let mut ended = Ended {
        status: answer.status,
        outcome: Outcome::Answered(answer.status),
        body_bytes: 0,
        closes: !keep_alive,
        backend_time: None,
        cut: None,
    };
    match answer.framing {
        Framing::None => {}
        Framing::Length(len) if backend.buffered().len() as u64 >= len => {
            // A small body read with its head joins it in the output: one send for both.
            client
                .out
                .extend_from_slice(&backend.buffered()[..len as usize]);
            backend.used(len as usize);
            ended.body_bytes = len;
        }
        from => {
            let relayed = match flush(client, true).await {
                Ok(()) => relay_answer_body(lent, client, backend, from, framing).await,
                Err(e) => Err(e),
            };
            match relayed {
                Ok(moved) => {
                    client.sent += moved;
                    ended.body_bytes = moved;
                }
                Err(e) => {
                    ended.outcome = Outcome::Cut;
                    ended.cut = Some(e);
                }
            }
        }
    }
    ended
}

/// Relays an answer body that did not come with its head, framed by the backend as
/// `from`, to the client as `to`; returns the data bytes sent.
async fn relay_answer_body(
    lent: &Lent<'_>,
    client: &mut ClientSide<'_>,
    backend: &mut Reader<'_>,
    from: Framing,
    to: Framing,
) -> io::Result<u64> {
    let to_client = Writer {
        stream: client.reader.stream,
        stall: client.stall,
        pipes: lent.pipes,
    };
    let relayed = match from {
        Framing::Length(len) => relay::copy_length(backend, &to_client, len)
            .await
            .map(|()| len),
        Framing::Chunked => relay::relay_chunked(backend, &to_client, u64::MAX, to != from).await,
        _ => relay::copy_until_close(backend, &to_client).await,
    };
    relayed.map_err(|cut| match cut {
        Cut::Destination(e) => e,
        Cut::Source(e) => {
            crate::warn!(
                "the backend broke off an answer body: {e}; the client's connection is cut"
            );
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the backend broke off an answer",
            )
        }
        Cut::Malformed(why) => {
            crate::warn!(
                "the backend sent a malformed chunked body: {why}; the client's connection is cut"
            );
            io::Error::new(io::ErrorKind::InvalidData, why)
        }
        Cut::TooLarge => io::Error::other("an answer body over 2^64 bytes"),
    })
}

/// Whether a cut answer was the backend's doing (as `relay_answer_body` says it).
fn is_backend_fault(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::InvalidData
    )
}

/// Sends the client's queued answers (and `100 Continue`, or a routed answer's head).
async fn flush(client: &mut ClientSide<'_>, more: bool) -> io::Result<()> {
    let mut sent = 0;
    let result = client
        .reader
        .stream
        .write_all_within(client.out, more, client.stall, &mut sent)
        .await;
    client.sent += sent as u64;
    client.out.clear();
    result
}

/// The answer for a backend that failed before answering; a body the client sent (or is
/// sending) that was not all read closes the connection.
fn backend_failed(lent: &Lent<'_>, cause: Cause, routed: &Routed) -> Exchanged {
    let counters = &lent.upstreams.counters[routed.route];
    counters.failed(cause);
    counters.count(Outcome::BackendFailed);
    Exchanged::Local(Local {
        status: status_for(cause),
        outcome: Outcome::BackendFailed,
        closes: !matches!(routed.body, Framing::None | Framing::Length(0)),
    })
}

fn status_for(cause: Cause) -> crate::http::response::Status {
    match cause {
        Cause::ConnectTimeout | Cause::AnswerTimeout => crate::http::response::GATEWAY_TIMEOUT,
        _ => crate::http::response::BAD_GATEWAY,
    }
}
