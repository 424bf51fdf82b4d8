//! ringsock patch: a receive whose buffer is chosen only when data arrives (see
//! `buf/provided.rs`): io_uring's RECV with IOSQE_BUFFER_SELECT, or on epoll a recv(2)
//! into a buffer taken from the pool once the socket is readable.

use std::{
    future::Future,
    io,
    marker::PhantomData,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
};

#[cfg(all(target_os = "linux", feature = "iouring"))]
use io_uring::{opcode, squeue, types};
#[cfg(all(unix, any(feature = "legacy", feature = "poll-io")))]
use {crate::syscall_u32, std::os::unix::prelude::AsRawFd};

use super::{super::shared_fd::SharedFd, recv::Recv, Completion, Op, OpAble};
#[cfg(any(feature = "legacy", feature = "poll-io"))]
use crate::driver::ready::Direction;
use crate::{
    buf::{BufPool, IoBufMut, ProvidedBuf, ProvidedBufConfig},
    driver::{Inner, CURRENT},
};

pub(crate) struct RecvProvided {
    /// Holds a strong ref to the FD, preventing the file from being closed
    /// while the operation is in-flight.
    fd: SharedFd,
    poll_first: bool,
    pool: Rc<BufPool>,
    /// epoll: the buffer received into, taken when the socket was found readable.
    #[cfg(any(feature = "legacy", feature = "poll-io"))]
    got: Option<Vec<u8>>,
}

/// The future of `recv_provided` on [`TcpStream`](crate::net::TcpStream) and
/// [`UnixStream`](crate::net::UnixStream): one receive into a buffer of this runtime's pool
/// taken when data arrives. Its receive is submitted when it is made, as monoio's own are;
/// dropped before it is done, the receive is cancelled and any buffer it took given back.
///
/// A hand-written state machine, not an `async fn`: nested async functions holding the
/// rare fallback's state made every receive move and drop much larger futures, which
/// cost about 350 instructions a message more than an owned receive.
#[must_use = "futures do nothing unless polled"]
pub struct ProvidedRecv<'a> {
    state: State,
    /// One receive at a time on a stream: the future borrows it mutably.
    _stream: PhantomData<&'a mut ()>,
}

enum State {
    /// io_uring: a RECV that takes a buffer from the ring when data arrives. epoll: a
    /// wait for readiness, then a recv(2) into a buffer from the free list.
    Select(Op<RecvProvided>),
    /// An ordinary RECV into a buffer of its own: the ring refused, or spent at its cap.
    Own {
        op: Op<Recv<Vec<u8>>>,
        pool: Rc<BufPool>,
    },
    /// Nothing could be submitted; the error is returned on the first poll.
    Failed(Option<io::Error>),
}

/// Receives once into a buffer of this runtime's pool; `poll_first`: the socket is
/// expected to be empty, so io_uring waits for data before its first attempt.
pub(crate) fn recv_provided<'a>(fd: &SharedFd, poll_first: bool) -> ProvidedRecv<'a> {
    // One look-up of the runtime for both the pool and the submission.
    let state = CURRENT.try_with(|inner| {
        let Some(inner) = inner else {
            return State::Failed(Some(BufPool::no_runtime()));
        };
        let pool = match inner.provided_pool() {
            Some(pool) => pool,
            None => inner.create_provided_pool(ProvidedBufConfig::DEFAULT),
        };
        match pool.mode() {
            #[cfg(all(target_os = "linux", feature = "iouring"))]
            crate::buf::ProvidedBufMode::Refused(_) => own(fd.clone(), poll_first, pool),
            _ => {
                #[cfg(all(target_os = "linux", feature = "iouring"))]
                if pool.is_unfilled() {
                    // The first receive adds a chunk rather than learn it from ENOBUFS.
                    pool.grow();
                }
                select_on(inner, fd.clone(), poll_first, pool)
            }
        }
    });
    ProvidedRecv {
        state,
        _stream: PhantomData,
    }
}

#[cfg(all(target_os = "linux", feature = "iouring"))]
fn select(fd: SharedFd, poll_first: bool, pool: Rc<BufPool>) -> State {
    CURRENT.with(|inner| select_on(inner, fd, poll_first, pool))
}

fn select_on(inner: &Inner, fd: SharedFd, poll_first: bool, pool: Rc<BufPool>) -> State {
    let op = inner.submit_with(RecvProvided {
        fd,
        poll_first,
        pool,
        #[cfg(any(feature = "legacy", feature = "poll-io"))]
        got: None,
    });
    match op {
        Ok(op) => State::Select(op),
        Err(e) => State::Failed(Some(e)),
    }
}

/// An ordinary RECV into a buffer of its own (parked with it if the socket is empty).
#[cfg(all(target_os = "linux", feature = "iouring"))]
fn own(fd: SharedFd, poll_first: bool, pool: Rc<BufPool>) -> State {
    let buf = pool.spare();
    let op = if poll_first {
        Op::recv_poll_first(fd, buf)
    } else {
        Op::recv(fd, buf)
    };
    match op {
        Ok(op) => State::Own { op, pool },
        Err(e) => State::Failed(Some(e)),
    }
}

impl Future for ProvidedRecv<'_> {
    type Output = io::Result<ProvidedBuf>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match &mut self.state {
                State::Select(op) => {
                    let done = ready!(Pin::new(op).poll(cx));
                    match selected(done) {
                        Ok(buf) => return Poll::Ready(buf),
                        Err(next) => next,
                    }
                }
                State::Own { op, pool } => {
                    let done = ready!(Pin::new(op).poll(cx));
                    let mut buf = done.data.buf;
                    return Poll::Ready(match done.meta.result {
                        Ok(n) => {
                            // SAFETY: the kernel wrote `n` bytes to the buffer.
                            unsafe { buf.set_init(n as usize) };
                            Ok(ProvidedBuf::own(pool.clone(), buf))
                        }
                        Err(e) => {
                            pool.keep_spare(buf);
                            Err(e)
                        }
                    });
                }
                State::Failed(e) => {
                    return Poll::Ready(Err(e
                        .take()
                        .unwrap_or_else(|| io::Error::from(io::ErrorKind::Other))))
                }
            };
            self.state = next;
        }
    }
}

/// What a finished select receive gives: the buffer, or the receive to make next.
fn selected(done: Completion<RecvProvided>) -> Result<io::Result<ProvidedBuf>, State> {
    let RecvProvided {
        fd,
        poll_first,
        pool,
        #[cfg(any(feature = "legacy", feature = "poll-io"))]
        got,
    } = done.data;
    #[cfg(any(feature = "legacy", feature = "poll-io"))]
    if let Some(buf) = got {
        // epoll: recv(2) succeeded into this buffer.
        return Ok(done.meta.result.map(|_| ProvidedBuf::own(pool, buf)));
    }
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    {
        // Claimed before the result is looked at, so that no path can drop the buffer id.
        let buf = pool.claim(done.meta.flags);
        match (done.meta.result, buf) {
            (Ok(n), Some(mut buf)) => {
                buf.set_received(n as usize);
                Ok(Ok(buf))
            }
            // The kernel consumes no buffer for an EOF on some versions.
            (Ok(0), None) => Ok(Ok(ProvidedBuf::own(pool, Vec::new()))),
            (Ok(_), None) => Ok(Err(io::Error::new(
                io::ErrorKind::Other,
                "io_uring reported bytes received without their buffer",
            ))),
            // The ring was empty and nothing was read: the data waits in the socket, so
            // nothing is lost or reordered. A receive that waited for data (poll first)
            // learns the socket is readable; one that did not learns nothing, as the
            // kernel picks the buffer before it looks for data.
            (Err(e), _) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                Err(if pool.grow() {
                    select(fd, false, pool)
                } else if !poll_first {
                    // Wait for data with no buffer: one of ours parked here could stay
                    // for as long as the connection idles.
                    select(fd, true, pool)
                } else {
                    // Spent at the cap: a buffer of its own, filled at once.
                    pool.count_fallback();
                    own(fd, false, pool)
                })
            }
            (Err(e), _) => Ok(Err(e)),
        }
    }
    #[cfg(not(all(target_os = "linux", feature = "iouring")))]
    {
        let _ = (fd, poll_first);
        Ok(done.meta.result.map(|_| ProvidedBuf::own(pool, Vec::new())))
    }
}

impl OpAble for RecvProvided {
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    fn uring_op(&mut self) -> io_uring::squeue::Entry {
        let entry = opcode::Recv::new(
            types::Fd(self.fd.raw_fd()),
            std::ptr::null_mut(),
            self.pool.size() as u32,
        )
        .buf_group(crate::driver::PROVIDED_BUF_GROUP)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT);
        if self.poll_first {
            super::recv::with_ioprio(entry, super::recv::IORING_RECVSEND_POLL_FIRST)
        } else {
            entry
        }
    }

    #[cfg(any(feature = "legacy", feature = "poll-io"))]
    #[inline]
    fn legacy_interest(&self) -> Option<(Direction, usize)> {
        self.fd.registered_index().map(|idx| (Direction::Read, idx))
    }

    #[cfg(all(any(feature = "legacy", feature = "poll-io"), unix))]
    fn legacy_call(&mut self) -> io::Result<u32> {
        // Called once the socket looks readable: only now does a buffer leave the pool,
        // and it goes back if the socket had nothing after all.
        let mut buf = self.got.take().unwrap_or_else(|| self.pool.spare());
        let received = syscall_u32!(recv(
            self.fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.capacity(),
            0
        ));
        match received {
            Ok(n) => {
                // SAFETY: recv(2) wrote `n` bytes, at most the capacity it was given.
                unsafe { buf.set_len(n as usize) };
                self.got = Some(buf);
            }
            Err(_) => self.pool.keep_spare(buf),
        }
        received
    }

    #[cfg(all(any(feature = "legacy", feature = "poll-io"), windows))]
    fn legacy_call(&mut self) -> io::Result<u32> {
        Err(io::ErrorKind::Unsupported.into())
    }
}
