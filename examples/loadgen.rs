//! Load generator and backends for perf/proxy.sh: ping-pong, bulk with a checksummed
//! half-close reply, connect churn and idle connections, plus the echo/sink backend.
//!
//! perf/proxy.sh runs client, forwarder and backend on the same 2-core machine, so the
//! client and backend must cost as little CPU per connection and per request as we can
//! make them, or they, not the forwarder, set the numbers:
//!
//! - The backend is a fixed set of epoll threads (default 2, one per core). A thread per
//!   connection would cost a spawn and teardown per churn connection and a context switch
//!   per ping-pong request. Each thread has its own epoll and shares the listening socket
//!   with EPOLLEXCLUSIVE, so one accept wakes one thread, not all. A SINK (bulk)
//!   connection moves on to a blocking thread of its own, where it costs less CPU per
//!   byte (see serve_bulk).
//! - churn keeps several connections in flight per epoll thread (non-blocking connect);
//!   blocking threads with one connection each left the CPUs idle while waiting for
//!   replies. Over loopback TCP it spreads its connections over several source addresses,
//!   because TIME_WAIT entries from a single source make connect() slow (see
//!   CHURN_SOURCES).
//! - ping-pong is one epoll loop; bulk uses one blocking thread per connection, which is
//!   cheap because each of them moves gigabytes.
//!
//! std + libc only.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// Connections each churn thread keeps in flight unless told otherwise. Measured on the
/// 2-core VM with the 4 threads perf/proxy.sh uses: direct churn rises to 32 and is flat
/// beyond; through the forwarders 16 and more are all the same.
const CHURN_IN_FLIGHT: usize = 32;

/// Source addresses (127.0.0.1..=127.0.0.16) churn spreads its connections over when the
/// target is IPv4 loopback. Each connection leaves a TIME_WAIT entry on the client side
/// for 60 s; from one source to one destination only ~28k ports exist, so once tens of
/// thousands are taken, connect() spends most of the client's CPU searching for a free
/// port (__inet_hash_connect/__inet_check_established in perf), without failing with
/// EADDRNOTAVAIL. That capped churn through ringsock at 14.5k conn/s; with 16 sources it
/// reaches 36k, as much as the forwarder and backend leave CPU for.
const CHURN_SOURCES: u32 = 16;

fn usage() -> ! {
    eprintln!(
        "usage:\n  loadgen backend UNIX_PATH [THREADS]  echo backend; a connection starting with 'SINK' gets a checksum reply\n  \
         loadgen pingpong ADDR CONNS SECS     64-byte request/response; ADDR is host:port or /unix/path\n  \
         loadgen bulk ADDR CONNS MIB          each conn sends MIB, half-closes, verifies the checksum reply\n  \
         loadgen churn ADDR THREADS SECS [IN_FLIGHT]\n                                       connect, send 64 B, half-close, read echo, close;\n                                       IN_FLIGHT connections per thread (default {CHURN_IN_FLIGHT})\n  \
         loadgen idle ADDR CONNS PID          hold CONNS open connections, print PID's RSS and threads"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_else(|| usage());
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or_else(|_| usage());
    let opt = |i: usize, default: u64| if i < args.len() { num(i) } else { default };
    let result = match arg(0).as_str() {
        "backend" => backend(&arg(1), opt(2, 2) as usize),
        "pingpong" => pingpong(&arg(1), num(2) as usize, num(3)),
        "bulk" => bulk(&arg(1), num(2) as usize, num(3)),
        "churn" => churn(
            &arg(1),
            num(2) as usize,
            num(3),
            opt(4, CHURN_IN_FLIGHT as u64) as usize,
        ),
        "idle" => idle(&arg(1), num(2) as usize, num(3)),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

/// A connection to ADDR, TCP with TCP_NODELAY or Unix.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn open(addr: &str) -> io::Result<Conn> {
        if addr.starts_with('/') {
            return Ok(Conn::Unix(UnixStream::connect(addr)?));
        }
        let addr: SocketAddr = addr.parse().map_err(|_| io::Error::other("bad address"))?;
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Conn::Tcp(stream))
    }
    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Conn::Tcp(s) => s,
            Conn::Unix(s) => s,
        }
    }
    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }
    fn fd(&self) -> i32 {
        match self {
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Unix(s) => s.as_raw_fd(),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Position-sensitive checksum over the byte stream (Adler-style over 64-bit words), so
/// lost, duplicated or reordered data all change it. Streams are multiples of 8 bytes.
#[derive(Default, Clone, Copy, PartialEq, Debug)]
struct Sum {
    a: u64,
    b: u64,
}

impl Sum {
    fn update(&mut self, data: &[u8]) {
        for word in data.chunks_exact(8) {
            self.a = self
                .a
                .wrapping_add(u64::from_le_bytes(word.try_into().unwrap()));
            self.b = self.b.wrapping_add(self.a);
        }
    }
    fn bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.a.to_le_bytes());
        out[8..].copy_from_slice(&self.b.to_le_bytes());
        out
    }
}

/// What appending one chunk of `words` words does to a `Sum`: `a += s`, and
/// `b += words * a + t`, where `s` and `t` are the chunk's own sum from zero. Linear in
/// the chunk's words, so changing one word changes `s` and `t` in closed form.
struct ChunkSum {
    words: u64,
    s: u64,
    t: u64,
}

impl ChunkSum {
    fn of(data: &[u8]) -> ChunkSum {
        let mut sum = Sum::default();
        sum.update(data);
        ChunkSum {
            words: (data.len() / 8) as u64,
            s: sum.a,
            t: sum.b,
        }
    }

    /// The same chunk with `word` added to its first word, which counts once in `s`
    /// and once in each of the `words` running sums that make up `t`.
    fn with_first_word(&self, word: u64) -> ChunkSum {
        ChunkSum {
            words: self.words,
            s: self.s.wrapping_add(word),
            t: self.t.wrapping_add(self.words.wrapping_mul(word)),
        }
    }

    fn append_to(&self, sum: &mut Sum) {
        sum.b = sum
            .b
            .wrapping_add(self.words.wrapping_mul(sum.a))
            .wrapping_add(self.t);
        sum.a = sum.a.wrapping_add(self.s);
    }
}

/// The closed form must agree with summing every byte, or every bulk run would report
/// failures for forwarders that did nothing wrong.
fn check_chunk_sum() {
    let mut chunk: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    chunk[..8].fill(0);
    let base = ChunkSum::of(&chunk);
    let (mut fast, mut full) = (Sum::default(), Sum::default());
    for round in [0u64, 1, 2, u64::MAX] {
        chunk[..8].copy_from_slice(&round.to_le_bytes());
        full.update(&chunk);
        base.with_first_word(round).append_to(&mut fast);
        assert_eq!(fast, full, "ChunkSum disagrees with Sum at round {round}");
    }
}

/// -1 → the errno as an io::Error.
fn cvt(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

fn sys_read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    cvt(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

fn sys_send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // MSG_NOSIGNAL: a peer that went away is an error for this connection, not SIGPIPE.
    // SAFETY: buf is valid for buf.len() bytes.
    cvt(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })
}

fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: a new fd that we own from here on.
    let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) } as isize)?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn epoll_ctl(ep: &OwnedFd, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: epoll_ctl on fds we own, with a valid event.
    cvt(unsafe { libc::epoll_ctl(ep.as_raw_fd(), op, fd, &mut ev) } as isize).map(drop)
}

/// Tells epoll to wait for `want` on `fd` (0: not registered yet), with as few
/// epoll_ctl calls as possible: none while the interest stays the same.
fn epoll_want(
    ep: &OwnedFd,
    fd: RawFd,
    registered: &mut u32,
    want: u32,
    token: u64,
) -> io::Result<()> {
    if *registered == want {
        return Ok(());
    }
    let op = if *registered == 0 {
        libc::EPOLL_CTL_ADD
    } else {
        libc::EPOLL_CTL_MOD
    };
    epoll_ctl(ep, op, fd, want, token)?;
    *registered = want;
    Ok(())
}

/// Waits up to `timeout_ms` and returns the ready events (none on EINTR).
fn epoll_wait<'a>(
    ep: &OwnedFd,
    events: &'a mut [libc::epoll_event],
    timeout_ms: i32,
) -> io::Result<&'a [libc::epoll_event]> {
    // SAFETY: events is valid for events.len() entries.
    let n = unsafe {
        libc::epoll_wait(
            ep.as_raw_fd(),
            events.as_mut_ptr(),
            events.len() as i32,
            timeout_ms,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(&[])
        } else {
            Err(e)
        };
    }
    Ok(&events[..n as usize])
}

/// Level-triggered interests. Reading also asks for EPOLLRDHUP so that the event says
/// when the peer's FIN is already queued: then reading on to EOF saves a wakeup.
const WANT_READ: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
const WANT_WRITE: u32 = libc::EPOLLOUT as u32;

/// Events carry slot/fd in the low 32 bits and a generation in the high 32, so an event
/// still queued for a connection closed earlier in the same batch cannot act on a new
/// connection that reused its fd or slot.
fn token(index: usize, generation: u32) -> u64 {
    index as u64 | ((generation as u64) << 32)
}

/// The echo/sink backend: `threads` epoll threads sharing one listening socket.
fn backend(path: &str, threads: usize) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    // SAFETY: raising the backlog of our own listening socket, so churn bursts queue
    // instead of being refused.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    let listener = std::sync::Arc::new(listener);
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let listener = listener.clone();
            std::thread::spawn(move || backend_thread(listener.as_raw_fd()))
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| io::Error::other("backend thread panicked"))??;
    }
    Ok(())
}

/// What a backend connection is doing with the bytes it reads.
enum Mode {
    /// Fewer than 8 bytes in: not yet known whether this is a SINK connection.
    Head { head: [u8; 8], len: usize },
    /// Write back everything read.
    Echo,
    /// Checksum everything after the 8-byte header; `carry` holds the start of a word
    /// split across reads, since Sum works on whole 8-byte words.
    Sink {
        sum: Sum,
        carry: [u8; 8],
        carry_len: usize,
    },
}

struct BackendConn {
    fd: OwnedFd,
    generation: u32,
    mode: Mode,
    /// Bytes to write before reading more: the echo a full socket buffer did not take,
    /// or the reply at EOF. While this is non-empty we wait for EPOLLOUT, not EPOLLIN,
    /// so a client that does not read its echo is slowed down instead of buffered.
    pending: Vec<u8>,
    /// EOF read: once `pending` is written, shut down our side and close.
    eof: bool,
    /// Interest registered with epoll (0: not yet registered).
    registered: u32,
}

/// Result of driving a connection as far as it goes without blocking.
enum Next {
    Wait(u32),
    Close,
    /// A SINK connection: continue it on a thread of its own (see serve_bulk).
    Bulk,
}

impl BackendConn {
    /// Reads, echoes or sums and writes until the socket would block; `more` says to keep
    /// reading after a short read (the peer's FIN may be queued behind the data).
    fn drive(&mut self, buf: &mut [u8], more: bool) -> Next {
        let fd = self.fd.as_raw_fd();
        // A bound on reads per wakeup keeps one bulk connection from starving the
        // others on this thread; level-triggered epoll reports it again.
        for _ in 0..16 {
            while !self.pending.is_empty() {
                match sys_send(fd, &self.pending) {
                    Ok(n) => drop(self.pending.drain(..n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Next::Wait(WANT_WRITE)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Next::Close,
                }
            }
            if self.eof {
                // SAFETY: shutdown on our own socket.
                unsafe { libc::shutdown(fd, libc::SHUT_WR) };
                return Next::Close;
            }
            match sys_read(fd, buf) {
                Ok(0) => self.on_eof(),
                Ok(n) => {
                    if self.on_data(&buf[..n]).is_err() {
                        return Next::Close;
                    }
                    if matches!(self.mode, Mode::Sink { .. }) {
                        return Next::Bulk;
                    }
                    // A short read with no FIN seen has most likely emptied the socket:
                    // wait for epoll instead of spending a read on EAGAIN.
                    if n < buf.len() && !more && self.pending.is_empty() {
                        return Next::Wait(WANT_READ);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait(WANT_READ),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        Next::Wait(if self.pending.is_empty() {
            WANT_READ
        } else {
            WANT_WRITE
        })
    }

    fn on_data(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.mode {
            Mode::Echo => self.echo(data),
            Mode::Sink {
                sum,
                carry,
                carry_len,
            } => {
                sink(sum, carry, carry_len, data);
                Ok(())
            }
            Mode::Head { head, len } => {
                let had = *len;
                let take = (8 - had).min(data.len());
                head[had..had + take].copy_from_slice(&data[..take]);
                *len += take;
                if *len < 8 {
                    return Ok(());
                }
                let head = *head;
                if &head[..4] == b"SINK" {
                    let (mut sum, mut carry, mut carry_len) = (Sum::default(), [0u8; 8], 0);
                    sink(&mut sum, &mut carry, &mut carry_len, &data[take..]);
                    self.mode = Mode::Sink {
                        sum,
                        carry,
                        carry_len,
                    };
                    return Ok(());
                }
                self.mode = Mode::Echo;
                if had == 0 {
                    // The usual case: the header came in one read, echo the read as is.
                    self.echo(data)
                } else {
                    // The header was split across reads: echo it first, in order.
                    self.pending.extend_from_slice(&head);
                    self.echo(&data[take..])
                }
            }
        }
    }

    /// Writes `data` now if nothing is queued before it, and queues what is left.
    fn echo(&mut self, data: &[u8]) -> io::Result<()> {
        let mut sent = 0;
        if self.pending.is_empty() {
            while sent < data.len() {
                match sys_send(self.fd.as_raw_fd(), &data[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.pending.extend_from_slice(&data[sent..]);
        Ok(())
    }

    fn on_eof(&mut self) {
        self.eof = true;
        match &self.mode {
            // EOF before 8 bytes: an echo connection, echo what came.
            Mode::Head { head, len } => {
                let (head, len) = (*head, *len);
                self.pending.extend_from_slice(&head[..len]);
            }
            Mode::Echo => {}
            // As before: a trailing partial word is not part of the sum.
            Mode::Sink { sum, .. } => {
                let reply = sum.bytes();
                self.pending.extend_from_slice(&reply);
            }
        }
    }
}

/// Adds `data` to the checksum, carrying a partial word over to the next read.
fn sink(sum: &mut Sum, carry: &mut [u8; 8], carry_len: &mut usize, mut data: &[u8]) {
    if *carry_len > 0 {
        let take = (8 - *carry_len).min(data.len());
        carry[*carry_len..*carry_len + take].copy_from_slice(&data[..take]);
        *carry_len += take;
        data = &data[take..];
        if *carry_len < 8 {
            return;
        }
        sum.update(&carry[..]);
        *carry_len = 0;
    }
    let whole = data.len() / 8 * 8;
    sum.update(&data[..whole]);
    carry[..data.len() - whole].copy_from_slice(&data[whole..]);
    *carry_len = data.len() - whole;
}

/// Finishes a SINK connection on a thread of its own, with blocking reads. Bulk
/// connections are few and each moves gigabytes, so a thread spawn is nothing to them,
/// and it matters for the CPU they cost: a blocking reader is woken by its writer and
/// the scheduler runs it where the writer just filled the socket buffer, so the data is
/// copied out of a warm cache. Summed in the epoll threads (with 1 to 8 of them), 4 x
/// 1 GiB direct took 100-150 CPU ticks (1/100 s) at 37-54 Gbit/s; on their own threads
/// ~77 ticks at ~84 Gbit/s.
fn serve_bulk(ep: &OwnedFd, conn: BackendConn) {
    let BackendConn {
        fd,
        mode:
            Mode::Sink {
                mut sum,
                mut carry,
                mut carry_len,
            },
        registered,
        ..
    } = conn
    else {
        return;
    };
    if registered != 0 {
        // The thread owns the fd from now on: no more events for it here.
        let _ = epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd.as_raw_fd(), 0, 0);
    }
    std::thread::spawn(move || -> io::Result<()> {
        let mut conn = UnixStream::from(fd);
        conn.set_nonblocking(false)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => sink(&mut sum, &mut carry, &mut carry_len, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // As before: a trailing partial word is not part of the sum.
        conn.write_all(&sum.bytes())?;
        conn.shutdown(Shutdown::Write)
    });
}

fn backend_thread(listen_fd: RawFd) -> io::Result<()> {
    const LISTENER: u64 = u64::MAX;
    let ep = epoll_create()?;
    // EPOLLEXCLUSIVE: a new connection wakes one of the threads waiting, not all of them.
    epoll_ctl(
        &ep,
        libc::EPOLL_CTL_ADD,
        listen_fd,
        (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32,
        LISTENER,
    )?;
    // Indexed by fd: fds are small and unique while open, so no map lookup per event.
    let mut conns: Vec<Option<BackendConn>> = Vec::new();
    let mut generation = 0u32;
    // One large buffer per thread, shared by its connections: bulk reads move up to
    // 256 KiB per syscall, and idle connections cost no buffer.
    let mut buf = vec![0u8; 256 * 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        for ev in epoll_wait(&ep, &mut events, -1)? {
            let (ready, tok) = (ev.events, ev.u64);
            if tok == LISTENER {
                loop {
                    // SAFETY: accept4 on our listening socket; the new fd is ours.
                    let fd = unsafe {
                        libc::accept4(
                            listen_fd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if fd < 0 {
                        let e = io::Error::last_os_error();
                        match e.raw_os_error() {
                            Some(libc::EAGAIN) => break,
                            Some(libc::EINTR | libc::ECONNABORTED) => continue,
                            _ => {
                                // Out of fds or memory: the listener stays readable, so
                                // pause instead of spinning on it.
                                eprintln!("loadgen backend: accept: {e}");
                                std::thread::sleep(Duration::from_millis(10));
                                break;
                            }
                        }
                    }
                    generation = generation.wrapping_add(1);
                    let mut conn = BackendConn {
                        // SAFETY: accept4 returned a new fd that nothing else owns.
                        fd: unsafe { OwnedFd::from_raw_fd(fd) },
                        generation,
                        mode: Mode::Head {
                            head: [0; 8],
                            len: 0,
                        },
                        pending: Vec::new(),
                        eof: false,
                        registered: 0,
                    };
                    // Serve at once: the request (and with churn, the FIN) is often
                    // already queued, and then the connection never touches epoll.
                    match conn.drive(&mut buf, true) {
                        Next::Wait(want) => {
                            let slot = fd as usize;
                            let tok = token(slot, generation);
                            if epoll_want(&ep, fd, &mut conn.registered, want, tok).is_ok() {
                                if conns.len() <= slot {
                                    conns.resize_with(slot + 1, || None);
                                }
                                conns[slot] = Some(conn);
                            }
                        }
                        Next::Bulk => serve_bulk(&ep, conn),
                        Next::Close => {}
                    }
                }
                continue;
            }
            let slot = (tok & 0xffff_ffff) as usize;
            let Some(conn) = conns.get_mut(slot).and_then(|c| c.as_mut()) else {
                continue;
            };
            if conn.generation != (tok >> 32) as u32 {
                continue;
            }
            let more = ready & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
            let keep = match conn.drive(&mut buf, more) {
                Next::Wait(want) => {
                    let fd = conn.fd.as_raw_fd();
                    let tok = token(slot, conn.generation);
                    epoll_want(&ep, fd, &mut conn.registered, want, tok).is_ok()
                }
                Next::Close => false,
                Next::Bulk => {
                    if let Some(conn) = conns[slot].take() {
                        serve_bulk(&ep, conn);
                    }
                    continue;
                }
            };
            if !keep {
                // Dropping closes the fd, which also removes it from epoll.
                conns[slot] = None;
            }
        }
    }
}

fn pingpong(addr: &str, conns: usize, secs: u64) -> io::Result<()> {
    const SIZE: usize = 64;
    let mut streams: Vec<Conn> = (0..conns)
        .map(|_| Conn::open(addr))
        .collect::<io::Result<_>>()?;
    // SAFETY: epoll calls on fds we own.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    let request = [b'x'; SIZE];
    let mut sent_at = vec![Instant::now(); conns];
    let mut got = vec![0usize; conns];
    for (i, s) in streams.iter_mut().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.fd(), &mut ev) };
        set_nonblocking(s.fd());
        s.stream().write_all(&request)?;
        sent_at[i] = Instant::now();
    }
    let mut latencies_us: Vec<u32> = Vec::with_capacity(1 << 20);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; conns];
    let mut buf = [0u8; SIZE];
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    while Instant::now() < end {
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), conns as i32, 1000) };
        for ev in &events[..n.max(0) as usize] {
            let i = ev.u64 as usize;
            let s = streams[i].stream();
            match s.read(&mut buf[..SIZE - got[i]]) {
                Ok(0) => return Err(io::Error::other("connection closed during ping-pong")),
                Ok(n) => got[i] += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
            if got[i] == SIZE {
                got[i] = 0;
                latencies_us.push(sent_at[i].elapsed().as_micros().min(u32::MAX as u128) as u32);
                s.write_all(&request)?;
                sent_at[i] = Instant::now();
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    let pct = |p: f64| {
        latencies_us
            .get(((latencies_us.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "pingpong conns={conns} req_per_s={:.0} p50_us={} p99_us={} failures=0",
        latencies_us.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

fn set_nonblocking(fd: i32) {
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

fn bulk(addr: &str, conns: usize, mib: u64) -> io::Result<()> {
    check_chunk_sum();
    let start = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|i| {
            let addr = addr.to_string();
            std::thread::spawn(move || -> io::Result<bool> {
                let mut conn = Conn::open(&addr)?;
                let mut chunk = vec![0u8; 1 << 20];
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ i as u64;
                for b in chunk.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                // Each round's MiB differs only in its first word, so its effect on the
                // sum is known from the sum of the chunk with that word zero: the client
                // spends its CPU on sending, not on summing every byte twice.
                chunk[..8].fill(0);
                let base = ChunkSum::of(&chunk);
                let mut expect = Sum::default();
                conn.stream().write_all(b"SINK\0\0\0\0")?;
                for round in 0..mib {
                    // Vary each MiB so a duplicated or skipped chunk changes the sum.
                    chunk[..8].copy_from_slice(&round.to_le_bytes());
                    base.with_first_word(round).append_to(&mut expect);
                    conn.stream().write_all(&chunk)?;
                }
                conn.shutdown_write()?;
                let mut reply = Vec::new();
                conn.stream().read_to_end(&mut reply)?;
                Ok(reply == expect.bytes())
            })
        })
        .collect();
    let mut failures = 0;
    for w in workers {
        match w.join() {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => failures += 1,
            Ok(Err(e)) => {
                eprintln!("bulk connection failed: {e}");
                failures += 1
            }
            Err(_) => failures += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let gbit = (conns as u64 * mib * 8) as f64 / 1024.0 / secs;
    println!("bulk conns={conns} mib={mib} gbit_per_s={gbit:.2} failures={failures}");
    Ok(())
}

/// Where churn connects, as a socket address built once.
#[derive(Clone, Copy)]
struct Target {
    addr: libc::sockaddr_storage,
    len: libc::socklen_t,
    family: i32,
    /// Source addresses 127.0.0.1..=127.0.0.N to spread connections over (0: let the
    /// kernel choose). See CHURN_SOURCES.
    sources: u32,
}

impl Target {
    fn parse(addr: &str) -> io::Result<Target> {
        // SAFETY: all-zero is a valid sockaddr_storage; below we write a smaller
        // sockaddr_* into it, which it is sized and aligned for.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let ptr = &mut storage as *mut libc::sockaddr_storage;
        let mut sources = 0;
        let (len, family) = if addr.starts_with('/') {
            // SAFETY: as above.
            let mut un: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            if addr.len() >= un.sun_path.len() {
                return Err(io::Error::other("unix socket path too long"));
            }
            un.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (dst, src) in un.sun_path.iter_mut().zip(addr.bytes()) {
                *dst = src as libc::c_char;
            }
            unsafe { ptr.cast::<libc::sockaddr_un>().write(un) };
            (std::mem::size_of::<libc::sockaddr_un>(), libc::AF_UNIX)
        } else {
            match addr
                .parse::<SocketAddr>()
                .map_err(|_| io::Error::other("bad address"))?
            {
                SocketAddr::V4(a) => {
                    // SAFETY: as above.
                    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                    sin.sin_family = libc::AF_INET as libc::sa_family_t;
                    sin.sin_port = a.port().to_be();
                    sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
                    unsafe { ptr.cast::<libc::sockaddr_in>().write(sin) };
                    if a.ip().is_loopback() {
                        sources = CHURN_SOURCES;
                    }
                    (std::mem::size_of::<libc::sockaddr_in>(), libc::AF_INET)
                }
                SocketAddr::V6(a) => {
                    // SAFETY: as above.
                    let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                    sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    sin6.sin6_port = a.port().to_be();
                    sin6.sin6_addr.s6_addr = a.ip().octets();
                    sin6.sin6_scope_id = a.scope_id();
                    unsafe { ptr.cast::<libc::sockaddr_in6>().write(sin6) };
                    (std::mem::size_of::<libc::sockaddr_in6>(), libc::AF_INET6)
                }
            }
        };
        Ok(Target {
            addr: storage,
            len: len as libc::socklen_t,
            family,
            sources,
        })
    }

    /// A non-blocking socket with its connect started (TCP: usually still in progress);
    /// `n` picks the source address.
    fn connect(&self, n: u32) -> io::Result<OwnedFd> {
        // SAFETY: a new socket that we own from here on.
        let fd = cvt(unsafe {
            libc::socket(
                self.family,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        } as isize)?;
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        if self.family != libc::AF_UNIX {
            // As the blocking client did: the 64-byte request goes out at once.
            let one: libc::c_int = 1;
            // SAFETY: setsockopt on our socket with a c_int option.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        if self.sources > 0 {
            // Bind only the address; IP_BIND_ADDRESS_NO_PORT leaves the port to
            // connect(), which picks one free for this source and destination.
            let one: libc::c_int = 1;
            // SAFETY: all-zero is a valid sockaddr_in.
            let mut src: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            src.sin_family = libc::AF_INET as libc::sa_family_t;
            src.sin_addr.s_addr = (0x7f00_0001 + n % self.sources).to_be();
            // SAFETY: setsockopt and bind on our socket with valid arguments.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
                let sa = (&src as *const libc::sockaddr_in).cast();
                let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                cvt(libc::bind(fd.as_raw_fd(), sa, len) as isize)?;
            }
        }
        // SAFETY: addr holds a valid address of self.len bytes.
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&self.addr as *const libc::sockaddr_storage).cast(),
                self.len,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        Ok(fd)
    }
}

const CHURN_REQUEST: [u8; 64] = [b'c'; 64];

/// One in-flight churn connection.
struct ChurnSlot {
    fd: Option<OwnedFd>,
    generation: u32,
    /// Request bytes written; after all 64, our side is shut down and we read.
    sent: usize,
    /// Reply bytes read so far, and whether all of them matched the request.
    got: usize,
    matches: bool,
    registered: u32,
    started: Instant,
    /// After an error the slot waits until then before connecting again, so a refused
    /// or failing target costs a bounded rate of attempts instead of a busy loop.
    retry_at: Option<Instant>,
}

enum ChurnStep {
    Wait(u32),
    /// EOF read; whether the reply was exactly the request.
    Finished(bool),
    Failed(io::Error),
}

impl ChurnSlot {
    /// Sends, half-closes and reads until the socket would block or the reply is complete.
    fn advance(&mut self, buf: &mut [u8]) -> ChurnStep {
        let Some(fd) = self.fd.as_ref().map(|f| f.as_raw_fd()) else {
            return ChurnStep::Failed(io::Error::other("no connection"));
        };
        loop {
            let result = if self.sent < CHURN_REQUEST.len() {
                // Before the TCP handshake completes this is EAGAIN (wait for EPOLLOUT);
                // a refused connect shows up here as its error.
                sys_send(fd, &CHURN_REQUEST[self.sent..]).map(|n| {
                    self.sent += n;
                    if self.sent == CHURN_REQUEST.len() {
                        // SAFETY: shutdown on our own socket.
                        unsafe { libc::shutdown(fd, libc::SHUT_WR) };
                    }
                })
            } else {
                match sys_read(fd, buf) {
                    Ok(0) => {
                        return ChurnStep::Finished(self.matches && self.got == CHURN_REQUEST.len())
                    }
                    Ok(n) => {
                        self.matches &= buf[..n].iter().all(|&b| b == b'c');
                        self.got += n;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            };
            match result {
                // Just half-closed: the echo cannot be here yet, wait instead of reading.
                Ok(()) if self.sent == CHURN_REQUEST.len() && self.got == 0 => {
                    return ChurnStep::Wait(WANT_READ)
                }
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return ChurnStep::Wait(if self.sent < CHURN_REQUEST.len() {
                        WANT_WRITE
                    } else {
                        WANT_READ
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return ChurnStep::Failed(e),
            }
        }
    }
}

#[derive(Default)]
struct ChurnStats {
    done: u64,
    failed: u64,
    /// Failure reasons and counts, reported on stderr.
    errors: HashMap<String, u64>,
}

impl ChurnStats {
    fn fail(&mut self, why: String) {
        self.failed += 1;
        *self.errors.entry(why).or_default() += 1;
    }
}

struct ChurnThread {
    ep: OwnedFd,
    target: Target,
    end: Instant,
    slots: Vec<ChurnSlot>,
    generation: u32,
    buf: [u8; 256],
    stats: ChurnStats,
}

impl ChurnThread {
    /// Drives slot `i`: opens a new connection first if `fresh`, and opens the next one
    /// whenever a connection completes, until one has to wait or fails.
    fn run_slot(&mut self, i: usize, mut fresh: bool) {
        loop {
            if fresh {
                if Instant::now() >= self.end {
                    return;
                }
                match self.target.connect(self.generation) {
                    Ok(fd) => {
                        self.generation = self.generation.wrapping_add(1);
                        self.slots[i] = ChurnSlot {
                            fd: Some(fd),
                            generation: self.generation,
                            sent: 0,
                            got: 0,
                            matches: true,
                            registered: 0,
                            started: Instant::now(),
                            retry_at: None,
                        };
                    }
                    Err(e) => return self.error(i, e),
                }
            }
            let slot = &mut self.slots[i];
            match slot.advance(&mut self.buf) {
                ChurnStep::Wait(want) => {
                    let fd = slot.fd.as_ref().map_or(-1, |f| f.as_raw_fd());
                    let tok = token(i, slot.generation);
                    if let Err(e) = epoll_want(&self.ep, fd, &mut slot.registered, want, tok) {
                        self.error(i, e);
                    }
                    return;
                }
                ChurnStep::Finished(ok) => {
                    if ok {
                        self.stats.done += 1;
                    } else {
                        self.stats.fail("reply differs from request".into());
                    }
                    // Closing also removes the fd from epoll.
                    slot.fd = None;
                    fresh = true;
                }
                ChurnStep::Failed(e) => return self.error(i, e),
            }
        }
    }

    fn error(&mut self, i: usize, e: io::Error) {
        self.stats.fail(e.to_string());
        let slot = &mut self.slots[i];
        slot.fd = None;
        slot.retry_at = Some(Instant::now() + Duration::from_millis(10));
    }

    fn run(mut self) -> io::Result<ChurnStats> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; self.slots.len()];
        loop {
            let now = Instant::now();
            if now >= self.end {
                break;
            }
            // (Re)start slots that are not connected: at the start, and after errors.
            let mut wake = self.end;
            for i in 0..self.slots.len() {
                if self.slots[i].fd.is_some() {
                    continue;
                }
                if self.slots[i].retry_at.map_or(true, |t| t <= now) {
                    self.run_slot(i, true);
                }
                // Also a slot that failed again just now: wake up for its retry.
                if let (None, Some(t)) = (&self.slots[i].fd, self.slots[i].retry_at) {
                    wake = wake.min(t);
                }
            }
            let timeout_ms = wake
                .saturating_duration_since(now)
                .as_micros()
                .div_ceil(1000) as i32;
            for ev in epoll_wait(&self.ep, &mut events, timeout_ms)?.iter() {
                let tok = ev.u64;
                let i = (tok & 0xffff_ffff) as usize;
                let slot = &self.slots[i];
                if slot.fd.is_some() && slot.generation == (tok >> 32) as u32 {
                    self.run_slot(i, false);
                }
            }
        }
        // A connection in flight this long has hung: that is a failure, not a slow
        // success cut off by the deadline.
        for slot in &self.slots {
            if slot.fd.is_some() && slot.started.elapsed() > Duration::from_secs(1) {
                self.stats.fail("no reply within 1 s".into());
            }
        }
        Ok(self.stats)
    }
}

fn churn(addr: &str, threads: usize, secs: u64, in_flight: usize) -> io::Result<()> {
    let target = Target::parse(addr)?;
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let idle = || ChurnSlot {
                    fd: None,
                    generation: 0,
                    sent: 0,
                    got: 0,
                    matches: true,
                    registered: 0,
                    started: start,
                    retry_at: None,
                };
                ChurnThread {
                    ep: epoll_create()?,
                    target,
                    end,
                    slots: (0..in_flight.max(1)).map(|_| idle()).collect(),
                    generation: 0,
                    buf: [0; 256],
                    stats: ChurnStats::default(),
                }
                .run()
            })
        })
        .collect();
    let mut total = ChurnStats::default();
    for w in workers {
        let stats = w
            .join()
            .map_err(|_| io::Error::other("churn thread panicked"))??;
        total.done += stats.done;
        total.failed += stats.failed;
        for (why, n) in stats.errors {
            *total.errors.entry(why).or_default() += n;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    for (why, n) in &total.errors {
        eprintln!("churn: {n} x {why}");
    }
    println!(
        "churn threads={threads} conn_per_s={:.0} failures={}",
        total.done as f64 / secs,
        total.failed
    );
    Ok(())
}

fn idle(addr: &str, conns: usize, pid: u64) -> io::Result<()> {
    let mut open = Vec::with_capacity(conns);
    let mut failures = 0;
    for _ in 0..conns {
        // A round trip proves the connection reaches the backend, not just the forwarder.
        let ok = (|| -> io::Result<Conn> {
            let mut conn = Conn::open(addr)?;
            conn.stream().write_all(b"12345678")?;
            let mut reply = [0u8; 8];
            conn.stream().read_exact(&mut reply)?;
            Ok(conn)
        })();
        match ok {
            Ok(conn) => open.push(conn),
            Err(_) => failures += 1,
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    // Forwarders that fork (socat, nginx workers) spread over processes: add them up.
    let tree = process_tree(pid);
    let field = |pid: &u64, name: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    };
    let rss_kib: u64 = tree.iter().map(|p| field(p, "VmRSS:")).sum();
    let threads: u64 = tree.iter().map(|p| field(p, "Threads:")).sum();
    println!(
        "idle conns={} rss_mib={:.1} threads={threads} processes={} failures={failures}",
        open.len(),
        rss_kib as f64 / 1024.0,
        tree.len()
    );
    Ok(())
}

/// `pid` and all its descendants.
fn process_tree(pid: u64) -> Vec<u64> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        if let Ok(children) =
            std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        {
            all.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u64>().ok()),
            );
        }
        i += 1;
    }
    all
}
