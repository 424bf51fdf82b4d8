//! ringsock patch: a receive whose buffer is chosen only when data arrives (see
//! `buf/provided.rs`): io_uring's RECV with IOSQE_BUFFER_SELECT, or on epoll a recv(2)
//! into a buffer taken from the pool once the socket is readable.

use std::{io, rc::Rc};

#[cfg(all(target_os = "linux", feature = "iouring"))]
use io_uring::{opcode, squeue, types};
#[cfg(all(unix, any(feature = "legacy", feature = "poll-io")))]
use {crate::syscall_u32, std::os::unix::prelude::AsRawFd};

use super::{super::shared_fd::SharedFd, Op, OpAble};
use crate::buf::{BufPool, ProvidedBuf};
#[cfg(any(feature = "legacy", feature = "poll-io"))]
use crate::driver::ready::Direction;

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

/// Receives once into a buffer of this runtime's pool; `poll_first`: the socket is
/// expected to be empty, so io_uring waits for data before its first attempt.
pub(crate) async fn recv_provided(fd: &SharedFd, poll_first: bool) -> io::Result<ProvidedBuf> {
    let pool = BufPool::current(None)?;
    match pool.mode() {
        #[cfg(all(target_os = "linux", feature = "iouring"))]
        crate::buf::ProvidedBufMode::Ring => from_ring(fd, poll_first, pool).await,
        #[cfg(all(target_os = "linux", feature = "iouring"))]
        crate::buf::ProvidedBufMode::Refused(_) => into_own(fd, poll_first, pool).await,
        _ => on_readiness(fd, poll_first, pool).await,
    }
}

#[cfg(all(target_os = "linux", feature = "iouring"))]
async fn from_ring(
    fd: &SharedFd,
    mut poll_first: bool,
    pool: Rc<BufPool>,
) -> io::Result<ProvidedBuf> {
    if pool.is_unfilled() {
        pool.grow();
    }
    loop {
        let op = Op::submit_with(RecvProvided::new(fd, poll_first, &pool))?;
        let done = op.await;
        // Claimed before the result is looked at, so that no path can drop the buffer id.
        let buf = pool.claim(done.meta.flags);
        match (done.meta.result, buf) {
            (Ok(n), Some(mut buf)) => {
                buf.set_received(n as usize);
                return Ok(buf);
            }
            // The kernel consumes no buffer for an EOF on some versions.
            (Ok(0), None) => return Ok(ProvidedBuf::own(pool, Vec::new())),
            (Ok(_), None) => {
                return Err(io::Error::new(
                    io::ErrorKind::Other,
                    "io_uring reported bytes received without their buffer",
                ))
            }
            // The ring was empty and nothing was read: the data waits in the socket, so
            // nothing is lost or reordered. A receive that waited for data (poll first)
            // learns the socket is readable; one that did not learns nothing, as the
            // kernel picks the buffer before it looks for data.
            (Err(e), _) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                let readable = poll_first;
                if pool.grow() {
                    poll_first = false;
                } else if !readable {
                    // Wait for data with no buffer: one of ours parked here could stay
                    // for as long as the connection idles.
                    poll_first = true;
                } else {
                    // Spent at the cap: a buffer of its own, filled at once.
                    pool.count_fallback();
                    return into_own(fd, false, pool).await;
                }
            }
            (Err(e), _) => return Err(e),
        }
    }
}

/// An ordinary RECV into a buffer of its own (parked with it if the socket is empty).
#[cfg(all(target_os = "linux", feature = "iouring"))]
async fn into_own(fd: &SharedFd, poll_first: bool, pool: Rc<BufPool>) -> io::Result<ProvidedBuf> {
    let buf = pool.spare();
    let op = if poll_first {
        Op::recv_poll_first(fd.clone(), buf)?
    } else {
        Op::recv(fd.clone(), buf)?
    };
    match op.read().await {
        (Ok(_), buf) => Ok(ProvidedBuf::own(pool, buf)),
        (Err(e), buf) => {
            pool.keep_spare(buf);
            Err(e)
        }
    }
}

/// epoll: readiness first, then a buffer.
async fn on_readiness(
    fd: &SharedFd,
    poll_first: bool,
    pool: Rc<BufPool>,
) -> io::Result<ProvidedBuf> {
    let done = Op::submit_with(RecvProvided::new(fd, poll_first, &pool))?.await;
    done.meta.result?;
    #[cfg(any(feature = "legacy", feature = "poll-io"))]
    let buf = done.data.got.unwrap_or_default();
    #[cfg(not(any(feature = "legacy", feature = "poll-io")))]
    let buf = Vec::new();
    Ok(ProvidedBuf::own(pool, buf))
}

impl RecvProvided {
    fn new(fd: &SharedFd, poll_first: bool, pool: &Rc<BufPool>) -> RecvProvided {
        RecvProvided {
            fd: fd.clone(),
            poll_first,
            pool: pool.clone(),
            #[cfg(any(feature = "legacy", feature = "poll-io"))]
            got: None,
        }
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
