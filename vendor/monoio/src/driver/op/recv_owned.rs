//! ringsock patch: an ordinary receive into the caller's buffer whose operation can be
//! cancelled from outside its future, with the result still delivered: bytes that
//! arrived before the cancel took effect are returned, never lost. ringsock parks such a
//! receive while a connection is busy, and cancels it once the connection has been idle
//! for a while, to wait on without holding the buffer (see `recv_provided`).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use super::{super::shared_fd::SharedFd, recv::Recv, Op, OpCanceller};
use crate::{buf::IoBufMut, BufResult};

/// The future of `recv_owned` on [`TcpStream`](crate::net::TcpStream) and
/// [`UnixStream`](crate::net::UnixStream). Dropped before it is done, the receive is
/// cancelled as monoio's own are (and its buffer held until the kernel lets go).
#[must_use = "futures do nothing unless polled"]
pub struct OwnedRecv<T: IoBufMut> {
    op: Op<Recv<T>>,
}

/// Cancels one [`OwnedRecv`]'s receive. The future then completes: with ECANCELED if
/// nothing had been received, else with what had.
#[derive(Clone, Debug)]
pub struct RecvCanceller(OpCanceller);

impl RecvCanceller {
    /// # Safety
    ///
    /// The receive must still be pending: its future neither completed nor dropped.
    /// After that its slot may belong to another operation, which this would cancel.
    pub unsafe fn cancel(&self) {
        self.0.cancel()
    }
}

impl<T: IoBufMut> OwnedRecv<T> {
    pub(crate) fn new(fd: SharedFd, buf: T, poll_first: bool) -> Self {
        // Submitting fails only outside a runtime, which every caller is inside of, as
        // for monoio's own receives.
        let op = if poll_first {
            Op::recv_poll_first(fd, buf)
        } else {
            Op::recv(fd, buf)
        };
        OwnedRecv {
            op: op.expect("a receive submitted inside a monoio runtime"),
        }
    }

    /// What cancels this receive while it is pending.
    pub fn canceller(&self) -> RecvCanceller {
        RecvCanceller(self.op.op_canceller())
    }
}

impl<T: IoBufMut + Unpin> Future for OwnedRecv<T> {
    type Output = BufResult<usize, T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let complete = std::task::ready!(Pin::new(&mut self.get_mut().op).poll(cx));
        let res = complete.meta.result.map(|n| n as usize);
        let mut buf = complete.data.buf;
        if let Ok(n) = res {
            // SAFETY: the kernel wrote `n` bytes to the buffer.
            unsafe { buf.set_init(n) };
        }
        Poll::Ready((res, buf))
    }
}
