//! One HTTP connection: reading heads into a reused buffer, answering every complete
//! request in it in order (pipelining) into a reused output buffer sent with one send,
//! file bodies with sendfile(2), the header and keep-alive timeouts, and the lingering
//! close after an error.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;

use super::files::{self, RelPath};
use super::request::{self, Reject};
use super::response::{self, Connection};
use super::router::Body;
use super::{access_log, HttpHandler};
use crate::net::client::Client;
use crate::net::proxy_header::Origin;
use crate::net::{linger, Linger, Stream};

/// First read buffer; grown to [`request::MAX_HEAD`] only for a head that needs it.
const READ_BUF: usize = 4096;
/// Pipelined answers are batched into one send up to this size.
const FLUSH_AT: usize = 64 * 1024;
/// Bodies up to this size are copied into the output buffer, when cached, rather than
/// sent with sendfile(2): one send carries head and body, and the RWF_NOWAIT read that
/// copies them is also the exact check that they are cached.
const SMALL_BODY: usize = 16 * 1024;
/// After an error answer, how long and how much we read and discard before closing, so
/// unread request bytes do not turn our close into a RST that destroys the answer.
const AFTER_ERROR: Linger = Linger {
    limit: Duration::from_secs(2),
    stall: Duration::from_secs(2),
    max_dropped: 1 << 20,
};

/// A connection's buffers, reused for every request on it.
struct Conn {
    /// Request bytes read and not yet answered.
    input: Vec<u8>,
    /// Answers not yet sent.
    out: Vec<u8>,
    /// The file path of the request being answered.
    rel: RelPath,
    /// When the head being read began; `None` while idle between requests.
    head_started: Option<Instant>,
    /// The client's address as the access log shows it (empty when there is no log).
    client: Vec<u8>,
}

impl Default for Conn {
    fn default() -> Conn {
        Conn {
            input: Vec::with_capacity(READ_BUF),
            out: Vec::with_capacity(READ_BUF),
            rel: RelPath::default(),
            head_started: Some(Instant::now()),
            client: Vec::new(),
        }
    }
}

impl Conn {
    /// Drops the first `answered` input bytes, keeping the unanswered rest at the front,
    /// and makes room for a head up to [`request::MAX_HEAD`].
    fn consume(&mut self, answered: usize) {
        if answered > 0 {
            self.input.copy_within(answered.., 0);
            self.input.truncate(self.input.len() - answered);
            self.head_started = (!self.input.is_empty()).then(Instant::now);
        }
        if self.input.len() == self.input.capacity() {
            self.input
                .reserve_exact(request::MAX_HEAD - self.input.len());
        }
    }
}

/// What answering the buffered requests left to do.
enum Answered {
    KeepGoing,
    /// The last answer closes the connection.
    Close,
}

/// How the wait for more request bytes ended, for the connection.
enum Input {
    More,
    /// EOF, the keep-alive timeout, or shutdown while idle: close quietly.
    End,
    /// The head did not arrive within the header timeout: 408.
    HeadTimedOut,
}

/// Why the wait for more request bytes ended.
enum Wake {
    Read((io::Result<usize>, Vec<u8>)),
    Timeout,
    Shutdown,
}

impl HttpHandler {
    /// Serves one connection until it closes.
    pub(super) async fn serve(&self, stream: &mut Stream, listener: &str) -> io::Result<()> {
        let client = match self.shared.settings.clients.admit(stream, listener).await {
            Ok(client) => client,
            Err(why) => {
                crate::debug!("closing a connection: {why}");
                return Ok(());
            }
        };
        let origin = client.origin;
        let mut conn = Conn::default();
        if self.log.is_some() {
            conn.client = client_text(origin, stream);
        }
        loop {
            if let Answered::Close = self.answer_buffered(stream, &mut conn, &client).await? {
                return self.finish_closing(stream, &mut conn.out).await;
            }
            match self.wait_for_input(stream, &mut conn).await? {
                Input::More => {}
                Input::End => return Ok(()),
                Input::HeadTimedOut => {
                    let before = conn.out.len();
                    self.simple(
                        &mut conn.out,
                        response::REQUEST_TIMEOUT,
                        Connection::Close,
                        false,
                    );
                    let started = conn.head_started.unwrap_or_else(Instant::now);
                    let answer = &conn.out[before..];
                    self.log_raw(
                        &conn.client,
                        b"",
                        response::REQUEST_TIMEOUT,
                        answer,
                        started,
                    );
                    return self.finish_closing(stream, &mut conn.out).await;
                }
            }
        }
    }

    /// Answers every complete request in the input buffer, in order, and sends the
    /// answers; keeps only the unanswered rest.
    async fn answer_buffered(
        &self,
        stream: &Stream,
        conn: &mut Conn,
        client: &Client,
    ) -> io::Result<Answered> {
        let mut start = 0;
        while start < conn.input.len() {
            let req = match request::parse_head(&mut conn.input[start..]) {
                Ok(Some(req)) => req,
                Ok(None) => break,
                Err(Reject { status, why }) => {
                    crate::debug!("rejecting a request with {}: {why}", status.code);
                    // Even a rejected HEAD gets no body: the client reads none.
                    let head_only = conn.input[start..].starts_with(b"HEAD ");
                    let before = conn.out.len();
                    self.simple(&mut conn.out, status, Connection::Close, head_only);
                    let started = conn.head_started.unwrap_or_else(Instant::now);
                    let line = request::request_line(&conn.input[start..]);
                    let answer = &conn.out[before..];
                    self.log_raw(&conn.client, line, status, answer, started);
                    return Ok(Answered::Close);
                }
            };
            start += req.head_len;
            let connection = if !req.keep_alive || self.worker.is_stopping() {
                Connection::Close
            } else if req.http10 {
                Connection::KeepAlive10
            } else {
                Connection::KeepAlive
            };
            let before = conn.out.len();
            let (body, connection) = match self.shared.settings.clients.allow_request(client) {
                Ok(()) => {
                    self.respond(&req, connection, &mut conn.out, &mut conn.rel)
                        .await
                }
                Err(retry_after) => {
                    self.too_many(&mut conn.out, retry_after, connection, &req);
                    (None, connection)
                }
            };
            let (file_bytes, result) = match body {
                Some(body) => {
                    let (sent, result) = self.add_body(stream, &mut conn.out, body).await;
                    (Some(sent), result)
                }
                None => (None, Ok(())),
            };
            let started = conn.head_started.unwrap_or_else(Instant::now);
            self.counters.count_duration(started.elapsed());
            if let Some(log) = &self.log {
                log.line(&access_log::Entry {
                    client: &conn.client,
                    request: &req.line_as_sent(),
                    status: self.last_status.get(),
                    // Looked for only with a log: the answer is still in the buffer.
                    body_bytes: file_bytes
                        .unwrap_or_else(|| buffered_body_len(&conn.out[before..])),
                    referer: req.referer,
                    user_agent: req.user_agent,
                    started,
                });
            }
            result?;
            if connection == Connection::Close {
                return Ok(Answered::Close);
            }
            if conn.out.len() >= FLUSH_AT {
                self.write_out(stream, &mut conn.out, false).await?;
            }
        }
        self.write_out(stream, &mut conn.out, false).await?;
        conn.consume(start);
        Ok(Answered::KeepGoing)
    }

    /// A small cached body joins its head in the output buffer; any other is sent now,
    /// after the head. Returns the body bytes sent (or buffered) with the outcome.
    async fn add_body(
        &self,
        stream: &Stream,
        out: &mut Vec<u8>,
        body: Body,
    ) -> (u64, io::Result<()>) {
        if body.len <= SMALL_BODY as u64
            && files::append_if_cached(&body.file, body.offset, body.len as usize, out)
        {
            return (body.len, Ok(()));
        }
        // The head goes with MSG_MORE so it shares a segment with the body.
        if let Err(e) = self.write_out(stream, out, true).await {
            return (0, Err(e));
        }
        self.send_body(stream, body).await
    }

    /// A log line for an answer written without a parsed request (a rejected head, a 408);
    /// `answer` is what was written for it.
    fn log_raw(
        &self,
        client: &[u8],
        line: &[u8],
        status: response::Status,
        answer: &[u8],
        started: Instant,
    ) {
        if let Some(log) = &self.log {
            log.line(&access_log::Entry {
                client,
                request: line,
                status: status.code,
                body_bytes: buffered_body_len(answer),
                referer: None,
                user_agent: None,
                started,
            });
        }
    }

    async fn send_body(&self, stream: &Stream, body: Body) -> (u64, io::Result<()>) {
        let mut sent = files::Sent::default();
        let stall = self.shared.settings.keepalive_timeout;
        let result = files::send_file(
            stream,
            &body.file,
            body.pages,
            (body.offset, body.len),
            stall,
            &mut sent,
        )
        .await;
        self.counters.count_bytes(sent.bytes);
        if sent.disk_turns > 0 {
            self.counters
                .count_disk_sends(sent.disk_turns, sent.from_disk);
        }
        (sent.bytes, result)
    }

    /// Waits for more request bytes. Idle between requests the keep-alive timeout
    /// applies and ends the connection silently, as nginx does; reading a head (or
    /// waiting for the first one) the header timeout applies, answered with 408.
    /// Shutdown ends every connection with no request bytes pending; one whose head is
    /// arriving gets its answer (with `Connection: close`).
    async fn wait_for_input(&self, stream: &mut Stream, conn: &mut Conn) -> io::Result<Input> {
        let settings = &self.shared.settings;
        let (idle, wait) = match conn.head_started {
            None => (true, settings.keepalive_timeout),
            Some(at) => (false, settings.header_timeout.saturating_sub(at.elapsed())),
        };
        let closable = conn.input.is_empty();
        let wake = {
            let read = read_more(stream, std::mem::take(&mut conn.input));
            let shutdown = async {
                if closable {
                    self.worker.stopping().await
                } else {
                    std::future::pending().await
                }
            };
            monoio::select! {
                r = read => Wake::Read(r),
                _ = monoio::time::sleep(wait) => Wake::Timeout,
                _ = shutdown => Wake::Shutdown,
            }
        };
        Ok(match wake {
            Wake::Read((Ok(0), _)) => Input::End,
            Wake::Read((Ok(_), back)) => {
                conn.input = back;
                conn.head_started.get_or_insert_with(Instant::now);
                Input::More
            }
            Wake::Read((Err(e), _)) => return Err(e),
            Wake::Shutdown => Input::End,
            Wake::Timeout if idle => Input::End,
            Wake::Timeout => Input::HeadTimedOut,
        })
    }

    /// Sends and empties `out`. `more`: a body follows at once (MSG_MORE).
    async fn write_out(&self, stream: &Stream, out: &mut Vec<u8>, more: bool) -> io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let mut sent = 0;
        let result = stream
            .write_all_within(out, more, self.shared.settings.keepalive_timeout, &mut sent)
            .await;
        // What went out, also when the client went away midway.
        self.counters.count_bytes(sent as u64);
        out.clear();
        // A big listing or a long pipeline must not pin its buffer for the connection's life.
        if out.capacity() > FLUSH_AT {
            out.shrink_to(READ_BUF);
        }
        result
    }

    /// Sends what is left, then closes gracefully: FIN first, then a lingering close
    /// ([`linger`]), so the client gets to read the answer.
    async fn finish_closing(&self, stream: &mut Stream, out: &mut Vec<u8>) -> io::Result<()> {
        self.write_out(stream, out, false).await?;
        stream.shutdown_write()?;
        linger(stream, &AFTER_ERROR).await;
        Ok(())
    }
}

/// The client as the access log names it: the one a trusted balancer's PROXY header
/// named, else the socket's peer; `unix:` for a Unix socket, as nginx.
fn client_text(origin: Origin, stream: &Stream) -> Vec<u8> {
    let ip = match origin {
        Origin::Client(addr) => addr.ip().to_canonical(),
        Origin::Direct | Origin::Balancer => match crate::sys::peer_ip(stream.as_raw_fd()) {
            Some(ip) => ip,
            None => return b"unix:".to_vec(),
        },
    };
    ip.to_string().into_bytes()
}

/// The body bytes of the one answer in `answer` (a head and, maybe, a body in the buffer).
fn buffered_body_len(answer: &[u8]) -> u64 {
    match answer.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(head_end) => (answer.len() - head_end - 4) as u64,
        None => 0,
    }
}

/// Appends what the socket has to `buf`'s spare capacity with the runtime's own receive:
/// on io_uring one RECV submission that completes with the data, on epoll a recv(2) that
/// keeps the driver's readiness cache right. On io_uring this beat waiting for readiness
/// (POLL_ADD) and calling recv(2) ourselves (perf/results/notes-from-code.md).
async fn read_more(stream: &mut Stream, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
    let len = buf.len();
    let (result, slice) = stream.recv(buf.slice_mut(len..)).await;
    (result, slice.into_inner())
}
