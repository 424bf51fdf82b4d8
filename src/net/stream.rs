//! A connected, non-blocking stream socket (TCP or Unix) registered with the worker's
//! runtime: receives and sends through the runtime, readiness that never spins, and the
//! few raw calls the close rules need.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut, ProvidedRecv};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{OwnedRecv, TcpStream, UnixStream};
use monoio::BufResult;

use crate::sys;
use crate::systemd::activation::Family;

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
    /// waiting on it alone would spin a core until the peer reads. A first wake is
    /// trusted (the common case costs no extra syscall); `again` says the write after
    /// the last wake still found no room, and then every wake is confirmed with poll(2)
    /// and a false one is followed by a short sleep, doubling up to
    /// [`FALSE_WAKE_MAX_SLEEP`], instead of another poll that would fire at once.
    pub async fn writable(&self, again: bool) -> io::Result<()> {
        let mut sleep = FALSE_WAKE_FIRST_SLEEP;
        loop {
            match self {
                Stream::Tcp(s) => s.writable(false).await?,
                Stream::Unix(s) => s.writable(false).await?,
            }
            if !again || sys::poll_now(self.as_raw_fd(), libc::POLLOUT)? {
                return Ok(());
            }
            // Boxed: a timer is 640 bytes, and this future is part of every proxied
            // connection's task while the rare false wake is all that needs one.
            Box::pin(monoio::time::sleep(sleep)).await;
            sleep = (sleep * 2).min(FALSE_WAKE_MAX_SLEEP);
        }
    }

    /// Receives into `buf`'s spare capacity with the runtime's own receive: on io_uring
    /// a RECV submission that completes with the data (no readiness round trip, no extra
    /// syscall), on epoll a recv(2) when ready.
    pub async fn recv<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Tcp(s) => s.read(buf).await,
            Stream::Unix(s) => s.read(buf).await,
        }
    }

    /// [`Stream::recv`] on a socket expected to be empty, its last receive having come up
    /// short: on io_uring the RECV arms its poll at once rather than first trying a recv
    /// that would fail with EAGAIN (IORING_RECVSEND_POLL_FIRST, a patch of ours to
    /// monoio: vendor/monoio/PATCHES.md). The same as `recv` on epoll.
    pub async fn recv_poll_first<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Tcp(s) => s.read_poll_first(buf).await,
            Stream::Unix(s) => s.read_poll_first(buf).await,
        }
    }

    /// Receives once into a buffer of this worker's pool that is taken only when data
    /// arrives, so an idle connection waiting here holds no receive buffer: on io_uring
    /// one RECV that the kernel gives a buffer of its registered ring, on epoll a recv(2)
    /// once readable. The buffer goes back to the pool when the result is dropped; empty
    /// means EOF. `poll_first`: as for [`Stream::recv_poll_first`]. The buffer size is the
    /// handler's choice (`runtime::Handler::RECV_BUFFER`); monoio's PATCHES.md (patch 4)
    /// says how it copes with an old kernel or a spent pool.
    pub fn recv_provided(&mut self, poll_first: bool) -> ProvidedRecv<'_> {
        match self {
            Stream::Tcp(s) => s.recv_provided(poll_first),
            Stream::Unix(s) => s.recv_provided(poll_first),
        }
    }

    /// [`Stream::recv`] (or [`Stream::recv_poll_first`]) as a receive that can be
    /// cancelled from outside its future without losing what it received (the worker's
    /// sweep of idle connections does: `runtime::park`).
    pub fn recv_owned<T: IoBufMut + Unpin>(&mut self, buf: T, poll_first: bool) -> OwnedRecv<T> {
        match self {
            Stream::Tcp(s) => s.recv_owned(buf, poll_first),
            Stream::Unix(s) => s.recv_owned(buf, poll_first),
        }
    }

    /// Sends all of `buf` with the runtime's own send, as many submissions as it takes.
    pub async fn send_all<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Tcp(s) => s.write_all(buf).await,
            Stream::Unix(s) => s.write_all(buf).await,
        }
    }

    /// Waits until the socket takes more bytes; a peer that has read nothing for `stall`
    /// is given up on (nginx's send_timeout), so it cannot hold a connection slot forever.
    /// `again`: as for [`Stream::writable`].
    pub async fn writable_within(&self, stall: Duration, again: bool) -> io::Result<()> {
        monoio::select! {
            ready = self.writable(again) => ready,
            _ = monoio::time::sleep(stall) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "peer stopped reading",
            )),
        }
    }

    /// Writes all of `data` with non-blocking send(2), waiting for write readiness only
    /// when the socket buffer is full (at most `stall` each time). `more`: more follows
    /// at once (MSG_MORE). `sent` counts what went out, also on failure.
    pub async fn write_all_within(
        &self,
        data: &[u8],
        more: bool,
        stall: Duration,
        sent: &mut usize,
    ) -> io::Result<()> {
        let mut again = false;
        while *sent < data.len() {
            match sys::send_now(self.as_raw_fd(), &data[*sent..], more) {
                Ok(n) => {
                    *sent += n;
                    again = false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable_within(stall, again).await?;
                    again = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends FIN: the peer reads EOF but may still send to us (half-close).
    pub fn shutdown_write(&self) -> io::Result<()> {
        match sys::shutdown_write(self.as_raw_fd()) {
            // The peer is already gone; there is nobody left to tell.
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
            result => result,
        }
    }

    /// Makes the coming close send RST instead of FIN, so the peer learns the stream was
    /// cut rather than complete.
    pub fn reset_on_close(&self) {
        sys::reset_on_close(self.as_raw_fd());
    }

    /// How many more bytes a send or splice to this socket can queue now without
    /// failing with EAGAIN (see `sys::send_room`).
    pub fn send_room(&self) -> io::Result<usize> {
        sys::send_room(self.as_raw_fd(), matches!(self, Stream::Tcp(_)))
    }

    /// Bytes we sent that the peer has not taken yet.
    pub fn unsent(&self) -> io::Result<usize> {
        sys::unsent(self.as_raw_fd())
    }

    /// One non-blocking recv(2) into `buf`, outside the runtime: for reading and dropping
    /// input after [`Stream::readable`].
    pub fn recv_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        sys::recv_now(self.as_raw_fd(), buf)
    }

    /// The pending socket error (SO_ERROR), used after a non-blocking connect.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        Ok(
            match sys::getsockopt_int(self.as_raw_fd(), libc::SO_ERROR)? {
                0 => None,
                errno => Some(io::Error::from_raw_os_error(errno)),
            },
        )
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
