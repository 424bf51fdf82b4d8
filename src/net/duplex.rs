//! One stream used by both directions of a proxied connection at once: one direction
//! receives from it while the other sends to it.
//!
//! This is monoio's own `Split` arrangement for TCP and Unix streams (a receive and a
//! send are independent submissions that each copy the fd, so they may be in flight
//! together), without its halves' shutdown-on-drop, which would defeat the close rules.
//! The halves are handed out once and are not `Clone`, and receiving or sending takes
//! the half mutably: at most one receive and one send are ever in flight, by
//! construction rather than by a comment.

use std::cell::{Cell, UnsafeCell};

use monoio::buf::{IoBuf, IoBufMut, ProvidedRecv};
use monoio::net::OwnedRecv;
use monoio::BufResult;

use super::Stream;

pub struct Duplex {
    stream: UnsafeCell<Stream>,
    split: Cell<bool>,
}

/// The receiving half of a [`Duplex`].
pub struct ReadHalf<'a>(&'a Duplex);

/// The sending half of a [`Duplex`].
pub struct WriteHalf<'a>(&'a Duplex);

impl Duplex {
    pub fn new(stream: Stream) -> Duplex {
        Duplex {
            stream: UnsafeCell::new(stream),
            split: Cell::new(false),
        }
    }

    /// The two halves; `None` once they were handed out.
    pub fn split(&self) -> Option<(ReadHalf<'_>, WriteHalf<'_>)> {
        (!self.split.replace(true)).then_some((ReadHalf(self), WriteHalf(self)))
    }

    /// The stream, for the calls that touch only its fd (shutdown, readiness, options).
    pub fn stream(&self) -> &Stream {
        // SAFETY: the only mutable access is through a half's receive or send, which the
        // runtime turns into a submission that uses a copy of the fd; nothing read
        // through this shared reference (the fd) is written by them.
        unsafe { &*self.stream.get() }
    }
}

impl ReadHalf<'_> {
    /// [`Stream::recv`], or [`Stream::recv_poll_first`] when `expect_empty`; `&mut self`:
    /// one receive at a time.
    pub async fn recv(&mut self, buf: Vec<u8>, expect_empty: bool) -> BufResult<usize, Vec<u8>> {
        // SAFETY: this half is the only one that receives, and only one receive runs at a
        // time (`&mut self`); a send from the write half may run alongside, which monoio's
        // Split contract allows for TCP and Unix streams.
        let stream = unsafe { &mut *self.0.stream.get() };
        if expect_empty {
            stream.recv_poll_first(buf).await
        } else {
            stream.recv(buf).await
        }
    }

    /// [`Stream::recv_owned`]; `&mut self`: the caller awaits one receive before the next.
    pub fn recv_owned<T: IoBufMut + Unpin>(&mut self, buf: T, expect_empty: bool) -> OwnedRecv<T> {
        // SAFETY: as for `recv`.
        let stream = unsafe { &mut *self.0.stream.get() };
        stream.recv_owned(buf, expect_empty)
    }

    /// [`Stream::recv_provided`]; `&mut self`: one receive at a time.
    pub fn recv_provided(&mut self, expect_empty: bool) -> ProvidedRecv<'_> {
        // SAFETY: as for `recv`; the future holds this half borrowed until it is done.
        let stream = unsafe { &mut *self.0.stream.get() };
        stream.recv_provided(expect_empty)
    }

    pub fn stream(&self) -> &Stream {
        self.0.stream()
    }
}

impl WriteHalf<'_> {
    /// [`Stream::send_all`]; `&mut self`: one send at a time. On io_uring this costs
    /// less than a direct send(2) (perf/results/notes-from-code.md): the SEND completes
    /// inside the next ring enter along with everything else.
    pub async fn send_all<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: as for ReadHalf::recv, with the roles swapped.
        unsafe { &mut *self.0.stream.get() }.send_all(buf).await
    }

    pub fn stream(&self) -> &Stream {
        self.0.stream()
    }
}
