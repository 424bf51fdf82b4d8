//! A connected stream socket (TCP or Unix) as the handlers see it: readiness through the
//! runtime, plus the few raw socket calls the close rules need.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use std::cell::UnsafeCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpStream, UnixStream};
use monoio::BufResult;

use crate::activation::Family;

/// A connected, non-blocking stream socket registered with this worker's runtime.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Wraps a connected non-blocking socket. TCP gets TCP_NODELAY: a forwarder must
    /// not add Nagle delays to the small writes of request/response protocols.
    pub fn from_fd(fd: OwnedFd, family: Family) -> io::Result<Stream> {
        Ok(match family {
            Family::Tcp => {
                let stream = std::net::TcpStream::from(fd);
                stream.set_nodelay(true)?;
                Stream::Tcp(TcpStream::from_std(stream)?)
            }
            Family::Unix => Stream::Unix(UnixStream::from_std(
                std::os::unix::net::UnixStream::from(fd),
            )?),
        })
    }

    /// Waits until a read would not block. `relaxed = false`: the epoll driver then checks
    /// with poll(2), because our own non-blocking syscalls bypass its readiness cache.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable(false).await,
            Stream::Unix(s) => s.readable(false).await,
        }
    }

    /// Waits until the send buffer has room (or the socket has an error to report).
    ///
    /// io_uring's POLL_ADD always listens for POLLRDHUP too, so once the peer has
    /// half-closed, a poll for POLLOUT completes at once however full the buffer is:
    /// waiting on it alone would spin a core until the peer reads. So every wake is
    /// confirmed with poll(2); a false one is followed by a short sleep, doubling up
    /// to [`FALSE_WAKE_MAX_SLEEP`], instead of another poll that would fire at once.
    pub async fn writable(&self) -> io::Result<()> {
        let mut sleep = FALSE_WAKE_FIRST_SLEEP;
        loop {
            match self {
                Stream::Tcp(s) => s.writable(false).await?,
                Stream::Unix(s) => s.writable(false).await?,
            }
            if poll_now(self.as_raw_fd(), libc::POLLOUT)? {
                return Ok(());
            }
            monoio::time::sleep(sleep).await;
            sleep = (sleep * 2).min(FALSE_WAKE_MAX_SLEEP);
        }
    }

    /// Receives into `buf`'s spare capacity with the runtime's own receive: on io_uring
    /// a RECV submission that completes with the data (no readiness round trip, no extra
    /// syscall), on epoll a recv(2) when ready.
    pub fn recv<T: IoBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> + '_ {
        match self {
            Stream::Tcp(s) => Either::Left(s.read(buf)),
            Stream::Unix(s) => Either::Right(s.read(buf)),
        }
    }

    /// Sends all of `buf` with the runtime's own send, as many submissions as it takes.
    pub fn send_all<T: IoBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> + '_ {
        match self {
            Stream::Tcp(s) => Either::Left(s.write_all(buf)),
            Stream::Unix(s) => Either::Right(s.write_all(buf)),
        }
    }

    /// Sends FIN: the peer reads EOF but may still send to us (half-close).
    pub fn shutdown_write(&self) -> io::Result<()> {
        // SAFETY: plain syscall on an fd we own.
        match unsafe { libc::shutdown(self.as_raw_fd(), libc::SHUT_WR) } {
            0 => Ok(()),
            _ => match io::Error::last_os_error() {
                // The peer is already gone; there is nobody left to tell.
                e if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
                e => Err(e),
            },
        }
    }

    /// Makes the coming close send RST instead of FIN, so the peer learns the stream was
    /// cut rather than complete.
    pub fn reset_on_close(&self) {
        reset_on_close(self.as_raw_fd());
    }

    /// Bytes we sent that the peer has not taken yet (SIOCOUTQ): for TCP, not yet
    /// acknowledged; for Unix sockets, not yet read.
    fn unsent(&self) -> io::Result<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ on Linux) writes one int.
        cvt(unsafe { libc::ioctl(self.as_raw_fd(), libc::TIOCOUTQ, &mut n) })?;
        Ok(n.max(0) as usize)
    }

    /// One non-blocking recv(2) into `buf`, outside the runtime: for reading and dropping
    /// input after [`Stream::readable`].
    fn recv_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of buf.len() bytes; the fd is open.
        let n = unsafe {
            libc::recv(
                self.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// The pending socket error (SO_ERROR), used after a non-blocking connect.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        Ok(match getsockopt_int(self.as_raw_fd(), libc::SO_ERROR)? {
            0 => None,
            errno => Some(io::Error::from_raw_os_error(errno)),
        })
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

/// After a false write-readiness wake (see [`Stream::writable`]), the first sleep and
/// the longest: a half-closed peer that reads slowly is looked at every 64 ms at worst.
const FALSE_WAKE_FIRST_SLEEP: Duration = Duration::from_millis(1);
const FALSE_WAKE_MAX_SLEEP: Duration = Duration::from_millis(64);

/// Whether `fd` is ready for `events` right now, or has an error or hang-up to report
/// (the next call on it will say which).
pub fn poll_now(fd: RawFd, events: libc::c_short) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    cvt(unsafe { libc::poll(&mut pollfd, 1, 0) })?;
    Ok(pollfd.revents & (events | libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0)
}

/// How long a closing connection may wait for its peer to read what it was sent.
pub struct Linger {
    /// At most this long in all...
    pub limit: Duration,
    /// ...and this long without the peer reading anything of it or sending us anything.
    pub stall: Duration,
    /// Input read and dropped meanwhile, at most.
    pub max_dropped: usize,
}

/// How often a linger looks whether the peer has read everything: soon after progress,
/// then less and less often, so a thousand peers that read nothing cost a few wakes
/// each rather than a hundred a second.
const LINGER_POLL_FIRST: Duration = Duration::from_millis(10);
const LINGER_POLL_MAX: Duration = Duration::from_millis(320);

/// The lingering close, before the caller closes `stream` (with FIN or RST): the peer
/// gets time to read what it was sent. Its input is read and dropped meanwhile, so a
/// peer blocked sending to us can go on to read, and no unread input turns the close
/// into a RST that discards our last bytes. Ends when our send queue to the peer is
/// empty or a bound in `bounds` is reached; the peer's EOF ends only the reading (a
/// client that half-closed may still be reading its answer).
pub async fn linger(stream: &Stream, bounds: &Linger) {
    let start = Instant::now();
    let mut progress_at = start;
    let mut unsent = usize::MAX;
    let mut input_open = true;
    let mut dropped = 0;
    // On the heap: in the future's own state it would make every connection's task
    // 4 KiB larger, lingering or not (2,000 idle proxied connections: +8 MiB RSS).
    let mut scratch = vec![0u8; 4096];
    let mut poll_every = LINGER_POLL_FIRST;
    while start.elapsed() < bounds.limit && progress_at.elapsed() < bounds.stall {
        match stream.unsent() {
            Ok(0) | Err(_) => return,
            Ok(n) if n < unsent => {
                unsent = n;
                progress_at = Instant::now();
                poll_every = LINGER_POLL_FIRST;
            }
            Ok(_) => poll_every = (poll_every * 2).min(LINGER_POLL_MAX),
        }
        // Never past the bounds: the stall ends the linger on time.
        let wait = poll_every
            .min(bounds.stall.saturating_sub(progress_at.elapsed()))
            .min(bounds.limit.saturating_sub(start.elapsed()));
        if !input_open {
            monoio::time::sleep(wait).await;
            continue;
        }
        monoio::select! {
            ready = stream.readable() => {
                if ready.is_err() {
                    return;
                }
                match stream.recv_now(&mut scratch) {
                    Ok(0) => input_open = false,
                    Ok(n) => {
                        dropped += n;
                        if dropped > bounds.max_dropped {
                            return;
                        }
                        progress_at = Instant::now();
                        poll_every = LINGER_POLL_FIRST;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            },
            _ = monoio::time::sleep(wait) => {},
        }
    }
}

/// Sets SO_LINGER to zero seconds on `fd`: its close sends RST, not FIN (TCP only).
pub fn reset_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: linger is a valid, correctly sized option value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// An int-valued SOL_SOCKET option.
pub fn getsockopt_int(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are valid for the kernel to write an int into.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// Turns a syscall's `-1` into the errno it set.
pub fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Whether an error means the peer is gone (as opposed to a local failure).
pub fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED | libc::ETIMEDOUT | libc::ENOTCONN
        )
    )
}

/// One stream used by both directions of a proxied connection at once: one pump reads
/// it while the other writes it.
///
/// This is monoio's own `Split` arrangement for TCP and Unix streams (an `UnsafeCell`
/// shared by a read half and a write half, which monoio declares sound because a receive
/// and a send are independent submissions that each copy the fd), without its halves'
/// shutdown-on-drop, which would defeat the close rules. At most one receive and one send
/// are in flight per stream: one pump per direction.
pub struct Duplex(UnsafeCell<Stream>);

impl Duplex {
    pub fn new(stream: Stream) -> Duplex {
        Duplex(UnsafeCell::new(stream))
    }

    pub fn stream(&self) -> &Stream {
        // SAFETY: see the type's comment: what is read through this (the fd) is never
        // written by a receive or send in flight.
        unsafe { &*self.0.get() }
    }

    /// [`Stream::recv`] from one of the two directions.
    pub fn recv(&self, buf: Vec<u8>) -> impl Future<Output = BufResult<usize, Vec<u8>>> + '_ {
        // SAFETY: see the type's comment (monoio's Split contract).
        unsafe { &mut *self.0.get() }.recv(buf)
    }

    /// [`Stream::send_all`] from one of the two directions. On io_uring this beat a
    /// direct send(2) by about a fifth in proxy CPU per ping-pong request (perf/, same
    /// run): the SEND completes inside the next ring enter along with everything else.
    pub fn send_all(&self, buf: Vec<u8>) -> impl Future<Output = BufResult<usize, Vec<u8>>> + '_ {
        // SAFETY: as for recv.
        unsafe { &mut *self.0.get() }.send_all(buf)
    }
}

/// One of two futures, so a method can return whichever the stream's kind needs.
enum Either<L, R> {
    Left(L),
    Right(R),
}

impl<L: Future, R: Future<Output = L::Output>> Future for Either<L, R> {
    type Output = L::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<L::Output> {
        // SAFETY: structural pinning: the inner future is never moved out of the enum.
        unsafe {
            match self.get_unchecked_mut() {
                Either::Left(f) => Pin::new_unchecked(f).poll(cx),
                Either::Right(f) => Pin::new_unchecked(f).poll(cx),
            }
        }
    }
}
