//! The echo/sink backend: a fixed set of epoll threads sharing one listening Unix
//! socket. A connection starting with "SINK" is summed and answered with its checksum
//! at EOF (on a blocking thread of its own, see serve_bulk); one starting with "FLOOD"
//! is sent bytes until it fails (a download, see serve_flood); any other is echoed.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use crate::sum::Sum;
use crate::sys::{self, WANT_READ, WANT_WRITE};

/// The echo/sink backend: `threads` epoll threads sharing one listening socket.
pub fn backend(path: &str, threads: usize) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    // A deep backlog, so churn bursts queue instead of being refused.
    sys::listen(listener.as_raw_fd(), 4096)?;
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

/// The checksum of a SINK connection so far; `carry` holds the start of a word split
/// across reads, since Sum works on whole 8-byte words.
#[derive(Default)]
struct Sink {
    sum: Sum,
    carry: [u8; 8],
    carry_len: usize,
}

impl Sink {
    /// Adds `data` to the checksum, carrying a partial word over to the next read.
    fn add(&mut self, mut data: &[u8]) {
        if self.carry_len > 0 {
            let take = (8 - self.carry_len).min(data.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&data[..take]);
            self.carry_len += take;
            data = &data[take..];
            if self.carry_len < 8 {
                return;
            }
            self.sum.update(&self.carry[..]);
            self.carry_len = 0;
        }
        let whole = data.len() / 8 * 8;
        self.sum.update(&data[..whole]);
        self.carry[..data.len() - whole].copy_from_slice(&data[whole..]);
        self.carry_len = data.len() - whole;
    }

    /// The reply at EOF. As before: a trailing partial word is not part of the sum.
    fn reply(&self) -> [u8; 16] {
        self.sum.bytes()
    }
}

/// What a backend connection is doing with the bytes it reads.
enum Mode {
    /// Fewer than 8 bytes in: not yet known whether this is a SINK connection.
    Head { head: [u8; 8], len: usize },
    /// Write back everything read.
    Echo,
    /// Checksum everything after the 8-byte header.
    Sink(Sink),
    /// Send bytes until the connection fails; ignore what comes in.
    Flood,
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
    /// A FLOOD connection: continue it on a thread of its own (see serve_flood).
    Flood,
}

impl BackendConn {
    fn new(fd: OwnedFd, generation: u32) -> BackendConn {
        BackendConn {
            fd,
            generation,
            mode: Mode::Head {
                head: [0; 8],
                len: 0,
            },
            pending: Vec::new(),
            eof: false,
            registered: 0,
        }
    }

    /// Reads, echoes or sums and writes until the socket would block; `more` says to keep
    /// reading after a short read (the peer's FIN may be queued behind the data).
    fn drive(&mut self, buf: &mut [u8], more: bool) -> Next {
        let fd = self.fd.as_raw_fd();
        // A bound on reads per wakeup keeps one bulk connection from starving the
        // others on this thread; level-triggered epoll reports it again.
        for _ in 0..16 {
            if let Some(next) = self.flush() {
                return next;
            }
            if self.eof {
                // We close right after, which ends the connection even if this failed.
                let _ = sys::shutdown_write(fd);
                return Next::Close;
            }
            match sys::read(fd, buf) {
                Ok(0) => self.on_eof(),
                Ok(n) => {
                    if self.on_data(&buf[..n]).is_err() {
                        return Next::Close;
                    }
                    match self.mode {
                        Mode::Sink(_) => return Next::Bulk,
                        Mode::Flood => return Next::Flood,
                        _ => {}
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

    /// Writes `pending`; None once all of it is out, else what to do instead of reading.
    fn flush(&mut self) -> Option<Next> {
        while !self.pending.is_empty() {
            match sys::send(self.fd.as_raw_fd(), &self.pending) {
                Ok(n) => drop(self.pending.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Some(Next::Wait(WANT_WRITE))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Some(Next::Close),
            }
        }
        None
    }

    fn on_data(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.mode {
            Mode::Echo => self.echo(data),
            Mode::Sink(sink) => {
                sink.add(data);
                Ok(())
            }
            Mode::Head { .. } => self.on_head(data),
            Mode::Flood => Ok(()),
        }
    }

    /// Collects the first 8 bytes, which decide between echo and sink.
    fn on_head(&mut self, data: &[u8]) -> io::Result<()> {
        let Mode::Head { head, len } = &mut self.mode else {
            return Ok(());
        };
        let had = *len;
        let take = (8 - had).min(data.len());
        head[had..had + take].copy_from_slice(&data[..take]);
        *len += take;
        if *len < 8 {
            return Ok(());
        }
        let head = *head;
        if &head[..5] == b"FLOOD" {
            self.mode = Mode::Flood;
            return Ok(());
        }
        if &head[..4] == b"SINK" {
            let mut sink = Sink::default();
            sink.add(&data[take..]);
            self.mode = Mode::Sink(sink);
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

    /// Writes `data` now if nothing is queued before it, and queues what is left.
    fn echo(&mut self, data: &[u8]) -> io::Result<()> {
        let mut sent = 0;
        if self.pending.is_empty() {
            while sent < data.len() {
                match sys::send(self.fd.as_raw_fd(), &data[sent..]) {
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
            Mode::Echo | Mode::Flood => {}
            Mode::Sink(sink) => {
                let reply = sink.reply();
                self.pending.extend_from_slice(&reply);
            }
        }
    }
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
        mode: Mode::Sink(mut sink),
        registered,
        ..
    } = conn
    else {
        return;
    };
    if registered != 0 {
        // The thread owns the fd from now on: no more events for it here.
        let _ = sys::epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd.as_raw_fd(), 0, 0);
    }
    std::thread::spawn(move || -> io::Result<()> {
        let mut conn = UnixStream::from(fd);
        conn.set_nonblocking(false)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => sink.add(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        conn.write_all(&sink.reply())?;
        conn.shutdown(Shutdown::Write)
    });
}

/// Sends to a FLOOD connection on a thread of its own, with blocking writes, until the
/// connection fails: a download whose client may never read (loadgen stall), so it
/// blocks that thread, not an epoll thread serving others.
fn serve_flood(ep: &OwnedFd, conn: BackendConn) {
    if conn.registered != 0 {
        let _ = sys::epoll_ctl(ep, libc::EPOLL_CTL_DEL, conn.fd.as_raw_fd(), 0, 0);
    }
    std::thread::spawn(move || {
        let mut stream = UnixStream::from(conn.fd);
        let chunk = vec![0x5a_u8; 1 << 20];
        if stream.set_nonblocking(false).is_ok() {
            while stream.write_all(&chunk).is_ok() {}
        }
    });
}

/// The epoll token of the listening socket; connections use sys::token, whose slot is
/// an fd and never all ones.
const LISTENER: u64 = u64::MAX;

/// One backend epoll thread and the connections it serves.
struct BackendThread {
    ep: OwnedFd,
    listen_fd: RawFd,
    /// Indexed by fd: fds are small and unique while open, so no map lookup per event.
    conns: Vec<Option<BackendConn>>,
    generation: u32,
    /// One large buffer per thread, shared by its connections: bulk reads move up to
    /// 256 KiB per syscall, and idle connections cost no buffer.
    buf: Vec<u8>,
}

fn backend_thread(listen_fd: RawFd) -> io::Result<()> {
    let ep = sys::epoll_create()?;
    // EPOLLEXCLUSIVE: a new connection wakes one of the threads waiting, not all of them.
    let interest = (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32;
    sys::epoll_ctl(&ep, libc::EPOLL_CTL_ADD, listen_fd, interest, LISTENER)?;
    let mut thread = BackendThread {
        ep,
        listen_fd,
        conns: Vec::new(),
        generation: 0,
        buf: vec![0u8; 256 * 1024],
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        for ev in sys::epoll_wait(&thread.ep, &mut events, -1)? {
            let (ready, tok) = (ev.events, ev.u64);
            if tok == LISTENER {
                thread.accept_all();
            } else {
                thread.on_event(ready, tok);
            }
        }
    }
}

impl BackendThread {
    /// Accepts and serves connections until none is pending.
    fn accept_all(&mut self) {
        loop {
            match sys::accept(self.listen_fd) {
                Ok(fd) => self.serve_new(fd),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR | libc::ECONNABORTED) => {}
                    _ => {
                        // Out of fds or memory: the listener stays readable, so pause
                        // instead of spinning on it.
                        eprintln!("loadgen backend: accept: {e}");
                        std::thread::sleep(Duration::from_millis(10));
                        return;
                    }
                },
            }
        }
    }

    fn serve_new(&mut self, fd: OwnedFd) {
        self.generation = self.generation.wrapping_add(1);
        let mut conn = BackendConn::new(fd, self.generation);
        // Serve at once: the request (and with churn, the FIN) is often already
        // queued, and then the connection never touches epoll.
        match conn.drive(&mut self.buf, true) {
            Next::Wait(want) => {
                let fd = conn.fd.as_raw_fd();
                let slot = fd as usize;
                let tok = sys::token(slot, self.generation);
                if sys::epoll_want(&self.ep, fd, &mut conn.registered, want, tok).is_ok() {
                    if self.conns.len() <= slot {
                        self.conns.resize_with(slot + 1, || None);
                    }
                    self.conns[slot] = Some(conn);
                }
            }
            Next::Bulk => serve_bulk(&self.ep, conn),
            Next::Flood => serve_flood(&self.ep, conn),
            Next::Close => {}
        }
    }

    fn on_event(&mut self, ready: u32, tok: u64) {
        let (slot, generation) = sys::untoken(tok);
        let Some(conn) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) else {
            return;
        };
        if conn.generation != generation {
            return;
        }
        let more = ready & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
        let keep = match conn.drive(&mut self.buf, more) {
            Next::Wait(want) => {
                let fd = conn.fd.as_raw_fd();
                let tok = sys::token(slot, conn.generation);
                sys::epoll_want(&self.ep, fd, &mut conn.registered, want, tok).is_ok()
            }
            Next::Close => false,
            Next::Bulk => {
                if let Some(conn) = self.conns[slot].take() {
                    serve_bulk(&self.ep, conn);
                }
                return;
            }
            Next::Flood => {
                if let Some(conn) = self.conns[slot].take() {
                    serve_flood(&self.ep, conn);
                }
                return;
            }
        };
        if !keep {
            // Dropping closes the fd, which also removes it from epoll.
            self.conns[slot] = None;
        }
    }
}
