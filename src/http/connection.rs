//! One HTTP connection: it owns the socket and its buffers, answers every complete
//! request it has read in order (pipelining), writes each [`Answer`] and sends its body,
//! applies the header and keep-alive timeouts, and closes with a linger after an error.
//! A request to a `--route` is passed to its backend (`routed`).

mod routed;

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::answer::{Answer, Body, FileBody};
use super::files::{self, RelPath};
use super::input::{Input, ReadBuf};
use super::request::{self, Method, Request};
use super::response::{self, Connection as Persistence};
use super::{access_log, router, HttpHandler};
use crate::admission::client::Client;
use crate::admission::proxy_header::Origin;
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

/// A connection: the request bytes not yet answered, and what answers them.
pub(super) struct Connection<'h> {
    /// Request bytes read and not yet answered.
    input: Input,
    /// When the head being read began; `None` while idle between requests.
    head_started: Option<Instant>,
    responder: Responder<'h>,
}

/// Everything an answer needs but the request bytes, which requests borrow meanwhile.
struct Responder<'h> {
    handler: &'h HttpHandler,
    stream: Stream,
    /// Answers not yet sent.
    out: Vec<u8>,
    /// The file path of the request being answered.
    rel: RelPath,
    client: Client,
    /// The client's address, when the access log or a route needs it: the one a
    /// trusted PROXY header named, else the socket's peer (`None` for a Unix socket).
    client_ip: Option<IpAddr>,
    /// The client's address as the access log shows it (empty when there is no log).
    client_text: Vec<u8>,
}

/// What answering the buffered requests left to do.
#[derive(PartialEq, Eq)]
enum Next {
    KeepGoing,
    /// The last answer closes the connection.
    Close,
}

/// How the wait for more request bytes ended, for the connection.
enum Waited {
    More,
    /// EOF, the keep-alive timeout, or shutdown while idle: close quietly.
    End,
    /// The head did not arrive within the header timeout: 408.
    HeadTimedOut,
}

/// Why the wait for more request bytes ended.
enum Wake {
    Read(io::Result<usize>),
    Timeout,
    Shutdown,
}

impl<'h> Connection<'h> {
    pub(super) fn new(handler: &'h HttpHandler, stream: Stream, client: Client) -> Self {
        let has_routes = !handler.shared.settings.routes.upstreams.is_empty();
        let client_ip = match handler.log.is_some() || has_routes {
            true => client_ip(client.origin, &stream),
            false => None,
        };
        let client_text = match (&handler.log, client_ip) {
            (None, _) => Vec::new(),
            (Some(_), Some(ip)) => ip.to_string().into_bytes(),
            (Some(_), None) => b"unix:".to_vec(),
        };
        Connection {
            input: Input::Empty,
            head_started: Some(Instant::now()),
            responder: Responder {
                handler,
                stream,
                out: Vec::new(),
                rel: RelPath::default(),
                client,
                client_ip,
                client_text,
            },
        }
    }

    pub(super) fn stream(&self) -> &Stream {
        &self.responder.stream
    }

    /// Serves the connection until it closes. Answering is boxed: its state (file
    /// opens, sends, the disk) exists only while a request is answered, so an idle
    /// connection's task is no bigger than the wait for its next request.
    pub(super) async fn serve(&mut self) -> io::Result<()> {
        loop {
            if Box::pin(self.answer_buffered()).await? == Next::Close {
                return self.responder.close_gracefully().await;
            }
            match self.wait_for_input().await? {
                Waited::More => {}
                Waited::End => return Ok(()),
                Waited::HeadTimedOut => {
                    let started = self.head_started.unwrap_or_else(Instant::now);
                    let status = response::REQUEST_TIMEOUT;
                    self.responder.answer_unparsed(b"", status, false, started);
                    return self.responder.close_gracefully().await;
                }
            }
        }
    }

    /// Answers every complete request in the input, in order, and sends the answers;
    /// keeps only the unanswered rest.
    async fn answer_buffered(&mut self) -> io::Result<Next> {
        let mut start = 0;
        let started = self.head_started.unwrap_or_else(Instant::now);
        while start < self.input.len() {
            let req = match request::parse_head(&mut self.input.bytes_mut()[start..]) {
                Ok(Some(req)) => req,
                Ok(None) => break,
                Err(reject) => {
                    crate::debug!(
                        "rejecting a request with {}: {}",
                        reject.status.code,
                        reject.why
                    );
                    let unparsed = &self.input.bytes_mut()[start..];
                    // Even a rejected HEAD gets no body: the client reads none.
                    let head_only = unparsed.starts_with(b"HEAD ");
                    let line = request::request_line(unparsed);
                    self.responder
                        .answer_unparsed(line, reject.status, head_only, started);
                    return Ok(Next::Close);
                }
            };
            start += req.head_len;
            let next = match self.responder.route(&req).await {
                None => self.responder.respond(&req, started).await?,
                Some(Err(refusal)) => self.responder.refuse(&req, refusal, started).await?,
                Some(Ok((routed, line))) => {
                    self.answer_routed(&routed, &line, &mut start, started)
                        .await?
                }
            };
            if next == Next::Close {
                return Ok(Next::Close);
            }
        }
        self.responder.flush(false).await?;
        self.consume(start);
        Ok(Next::KeepGoing)
    }

    /// Drops the first `answered` input bytes, keeping the unanswered rest at the front.
    fn consume(&mut self, answered: usize) {
        if answered > 0 {
            self.input.consume(answered);
            self.head_started = (!self.input.is_empty()).then(Instant::now);
        }
    }

    /// Waits for more request bytes. Idle between requests the keep-alive timeout
    /// applies and ends the connection silently, as nginx does; reading a head (or
    /// waiting for the first one) the header timeout applies, answered with 408.
    /// Shutdown ends every connection with no request bytes pending; one whose head is
    /// arriving gets its answer (with `Connection: close`). A connection that waits
    /// between requests long enough for the worker's sweep (1 to 2 s) gives up its
    /// buffers and waits on without any (`runtime::park`).
    async fn wait_for_input(&mut self) -> io::Result<Waited> {
        let settings = &self.responder.handler.shared.settings;
        let (idle, wait) = match self.head_started {
            None => (true, settings.keepalive_timeout),
            Some(at) => (false, settings.header_timeout.saturating_sub(at.elapsed())),
        };
        let deadline = Instant::now() + wait;
        let mut quiet = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wake = if quiet {
                self.wait_quietly(left).await
            } else {
                self.wait_with_buffer(left).await
            };
            return Ok(match wake {
                Wake::Read(Ok(0)) => Waited::End,
                Wake::Read(Ok(_)) => {
                    self.head_started.get_or_insert_with(Instant::now);
                    Waited::More
                }
                Wake::Read(Err(e)) if e.raw_os_error() == Some(libc::ECANCELED) && !quiet => {
                    // Swept: idle long enough to give up the buffers.
                    quiet = true;
                    self.responder.out = Vec::new();
                    continue;
                }
                Wake::Read(Err(e)) => return Err(e),
                Wake::Shutdown => Waited::End,
                Wake::Timeout if idle => Waited::End,
                Wake::Timeout => Waited::HeadTimedOut,
            });
        }
    }

    /// One receive with a buffer of the pool (what was read so far at its front), for at
    /// most `left`. Between requests it is parked where the worker's sweep can cancel it.
    async fn wait_with_buffer(&mut self, left: Duration) -> Wake {
        let worker = &self.responder.handler.worker;
        let closable = self.input.is_empty();
        let buf = self.input.take_for_read(&worker.buffers);
        let recv = self.responder.stream.recv_owned(buf, false);
        let ticket = closable.then(|| worker.parking.park(recv.canceller()));
        let wake = monoio::select! {
            (result, buf) = recv => {
                self.input.put_back(buf);
                Wake::Read(result)
            },
            _ = monoio::time::sleep(left) => Wake::Timeout,
            _ = stopping(worker, closable) => Wake::Shutdown,
        };
        drop(ticket);
        wake
    }

    /// One receive into a buffer the kernel picks when data comes, for a connection that
    /// was idle: it holds none meanwhile.
    async fn wait_quietly(&mut self, left: Duration) -> Wake {
        let worker = &self.responder.handler.worker;
        let recv = Box::pin(self.responder.stream.recv_provided(true));
        monoio::select! {
            got = recv => Wake::Read(got.map(|data| {
                let mut buf = worker.buffers.take();
                let n = buf.extend_from_slice(&data);
                self.input.put_back(ReadBuf::Pooled(buf));
                n
            })),
            _ = monoio::time::sleep(left) => Wake::Timeout,
            _ = worker.stopping() => Wake::Shutdown,
        }
    }
}

/// Resolves at shutdown for a connection that may be closed then (`closable`: no request
/// bytes pending), never for one whose head is arriving.
async fn stopping(worker: &crate::runtime::Worker, closable: bool) {
    if closable {
        worker.stopping().await
    } else {
        std::future::pending().await
    }
}

impl Responder<'_> {
    /// Answers one parsed request: the answer is written, its body sent (or buffered
    /// with the head), then counted and logged in one place.
    async fn respond(&mut self, req: &Request<'_>, started: Instant) -> io::Result<Next> {
        let handler = self.handler;
        let answer = match handler.shared.settings.clients.allow_request(&self.client) {
            Ok(()) => handler.answer(req, &mut self.rel).await,
            Err(retry_after) => router::too_many(retry_after),
        };
        self.respond_with(req, answer, started).await
    }

    /// Writes, sends, counts and logs `answer` to `req`. A body the request carried is
    /// not read: the connection closes after the answer.
    async fn respond_with(
        &mut self,
        req: &Request<'_>,
        answer: Answer,
        started: Instant,
    ) -> io::Result<Next> {
        let handler = self.handler;
        let closes = answer.closes || !req.keep_alive || req.has_body();
        let persistence = self.persistence(closes, req.http10);
        let head_only = req.method == Method::Head;
        answer.write(&mut self.out, &handler.date.now(), persistence, head_only);
        let (body_bytes, sent) = match answer.body {
            Body::File(body) if !head_only && body.len > 0 => self.add_file(body).await,
            _ if head_only => (0, Ok(())),
            _ => (answer.body_len().unwrap_or(0), Ok(())),
        };
        handler.record(&access_log::Entry {
            client: &self.client_text,
            user: None,
            request: &req.line_as_sent(),
            status: answer.status.code,
            body_bytes,
            referer: req.referer,
            user_agent: req.user_agent,
            started,
            backend: self.no_backend(),
        });
        sent?;
        if persistence == Persistence::Close {
            return Ok(Next::Close);
        }
        if self.out.len() >= FLUSH_AT {
            self.flush(false).await?;
        }
        Ok(Next::KeepGoing)
    }

    /// How the connection goes on after an answer: closed when the answer or request
    /// says so, when the server does not keep connections, or when it is stopping.
    fn persistence(&self, closes: bool, http10: bool) -> Persistence {
        let handler = self.handler;
        if closes || !handler.shared.settings.persistent || handler.worker.is_stopping() {
            Persistence::Close
        } else if http10 {
            Persistence::KeepAlive10
        } else {
            Persistence::KeepAlive
        }
    }

    /// The backend fields of a log line for an answer made here: `- -` on a server with
    /// routes, nothing on one without.
    fn no_backend(&self) -> Option<access_log::Backend> {
        let has_routes = !self.handler.shared.settings.routes.upstreams.is_empty();
        has_routes.then(access_log::Backend::default)
    }

    /// The answer to what could not be parsed (a refused head, or none within the header
    /// timeout), always closing; `line` is what there was of the request line.
    fn answer_unparsed(
        &mut self,
        line: &[u8],
        status: response::Status,
        head_only: bool,
        started: Instant,
    ) {
        let answer = Answer::reason(status);
        let date = self.handler.date.now();
        answer.write(&mut self.out, &date, Persistence::Close, head_only);
        let body_bytes = if head_only {
            0
        } else {
            answer.body_len().unwrap_or(0)
        };
        self.handler.record(&access_log::Entry {
            client: &self.client_text,
            user: None,
            request: line,
            status: status.code,
            body_bytes,
            referer: None,
            user_agent: None,
            started,
            backend: self.no_backend(),
        });
    }

    /// A small cached body joins its head in the output buffer; any other is sent now,
    /// after the head. Returns the body bytes sent (or buffered) with the outcome.
    async fn add_file(&mut self, body: FileBody) -> (u64, io::Result<()>) {
        if body.len <= SMALL_BODY as u64
            && files::append_if_cached(&body.file, body.offset, body.len as usize, &mut self.out)
        {
            return (body.len, Ok(()));
        }
        // The head goes with MSG_MORE so it shares a segment with the body.
        if let Err(e) = self.flush(true).await {
            return (0, Err(e));
        }
        let settings = &self.handler.shared.settings;
        // A file body comes only from the root.
        let Some(root) = &settings.routes.root else {
            return (0, Err(io::Error::other("a file body without a root")));
        };
        let mut sent = files::Sent::default();
        let stall = settings.keepalive_timeout;
        let result = files::send_file(
            &self.stream,
            root,
            &body.file,
            body.pages,
            (body.offset, body.len),
            stall,
            &mut sent,
        )
        .await;
        let counters = &self.handler.counters;
        counters.count_bytes(sent.bytes);
        if sent.disk_turns > 0 {
            counters.count_disk_sends(sent.disk_turns, sent.from_disk);
        }
        (sent.bytes, result)
    }

    /// Sends and empties the output buffer. `more`: a body follows at once (MSG_MORE).
    async fn flush(&mut self, more: bool) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let mut sent = 0;
        let stall = self.handler.shared.settings.keepalive_timeout;
        let result = self
            .stream
            .write_all_within(&self.out, more, stall, &mut sent)
            .await;
        // What went out, also when the client went away midway.
        self.handler.counters.count_bytes(sent as u64);
        self.out.clear();
        // A big listing or a long pipeline must not pin its buffer for the connection's life.
        if self.out.capacity() > FLUSH_AT {
            self.out.shrink_to(READ_BUF);
        }
        result
    }

    /// Sends what is left, then closes gracefully: FIN first, then a lingering close
    /// ([`linger`]), so the client gets to read the answer.
    async fn close_gracefully(&mut self) -> io::Result<()> {
        self.flush(false).await?;
        self.stream.shutdown_write()?;
        linger(&self.stream, &AFTER_ERROR).await;
        Ok(())
    }
}

/// The client: the one a trusted balancer's PROXY header named, else the socket's peer;
/// `None` for a Unix socket (which the access log shows as `unix:`, as nginx).
fn client_ip(origin: Origin, stream: &Stream) -> Option<IpAddr> {
    match origin {
        Origin::Client(addr) => Some(addr.ip().to_canonical()),
        Origin::Direct | Origin::Balancer => crate::sys::peer_ip(stream.as_raw_fd()),
    }
}
