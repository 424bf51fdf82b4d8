//! Moves one direction of a proxied connection, socket to socket, until EOF.
//!
//! Small messages go through the runtime's own receive and a send: on io_uring a RECV
//! parked on the socket completes with the data, with no readiness round trip and no
//! extra syscall. Once a receive fills its buffer the stream is bulk and moves
//! socket → pipe → socket with splice(2), zero-copy, until a burst comes up short
//! again. splice costs more than a copy for a 64-byte request (pipe buffers, page
//! references) and less for a pipe's worth: HAProxy's `splice-auto` makes the same call.
//!
//! The splices are non-blocking syscalls issued on readiness (io_uring POLL_ADD, or
//! epoll). io_uring's own SPLICE op is always punted to a kernel worker thread that then
//! sleeps on the socket, so 2,000 idle connections would pin 4,000 `iou-wrk` threads;
//! waiting for readiness first pins none.

use std::cell::Cell;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;

use super::metrics::WorkerBytes;
use super::pipe::{Pipe, PipePool};
use crate::net::{ReadHalf, Stream, WriteHalf};
use crate::sys;

/// Receive buffer per direction, held for the connection's life (a parked RECV owns it).
/// Small on purpose: 2,000 idle connections cost 8 MiB of it. A receive that fills it
/// switches the direction to splice.
pub const RECV_SIZE: usize = 2 * 1024;

/// A splice burst shorter than this ends bulk mode: the stream is back to messages.
const BULK_BURST: usize = 16 * 1024;

/// What one direction has taken from its source and delivered to its destination: the
/// difference is in flight (in our buffer or pipe). Deliveries are also added to the
/// worker's byte counters as they happen.
pub struct Progress<'a> {
    received: Cell<u64>,
    delivered: Cell<u64>,
    bytes: &'a WorkerBytes,
    /// The direction's counter in `bytes`.
    counter: &'a AtomicU64,
}

impl<'a> Progress<'a> {
    /// Counts into `counter`, one of `bytes`' two directions.
    pub fn new(bytes: &'a WorkerBytes, counter: &'a AtomicU64) -> Progress<'a> {
        Progress {
            received: Cell::new(0),
            delivered: Cell::new(0),
            bytes,
            counter,
        }
    }

    fn received(&self, n: usize) {
        self.received.set(self.received.get() + n as u64);
    }

    /// `n` bytes reached the destination, through a pipe or copied.
    fn delivered(&self, n: usize, spliced: bool) {
        self.delivered.set(self.delivered.get() + n as u64);
        self.bytes.delivered(self.counter, n, spliced);
    }

    /// Bytes delivered so far: what an idle check compares.
    pub fn total(&self) -> u64 {
        self.delivered.get()
    }

    /// Bytes received plus bytes delivered: changes whenever anything moves.
    pub fn activity(&self) -> u64 {
        self.received.get() + self.delivered.get()
    }

    pub fn in_flight(&self) -> bool {
        self.received.get() != self.delivered.get()
    }
}

/// Why a direction stopped short of EOF: which of its two sockets failed. What the
/// error means for the connection is `forward`'s to decide.
#[derive(Debug)]
pub enum Failure {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `src` to `dst` until EOF: `Ok` means the source ended and every byte before
/// its EOF was delivered. Passing the EOF on (FIN) is the caller's decision, since the
/// other direction may meanwhile have learnt that `src` was reset (see `forward`).
pub async fn pump(
    mut src: ReadHalf<'_>,
    mut dst: WriteHalf<'_>,
    pipes: &PipePool,
    progress: &Progress<'_>,
) -> Result<(), Failure> {
    let mut buf = Vec::with_capacity(RECV_SIZE);
    // Every receive but the first follows one that came up short or a splice burst that
    // did: the socket is most likely empty, and the receive had better wait for data
    // before trying. The first may find bytes sent before the connection was accepted.
    let mut drained = false;
    loop {
        let (received, returned) = src.recv(buf, drained).await;
        let n = received.map_err(Failure::Read)?;
        if n == 0 {
            return Ok(());
        }
        progress.received(n);
        let (sent, mut returned) = dst.send_all(returned).await;
        sent.map_err(Failure::Write)?;
        progress.delivered(n, false);
        returned.clear();
        buf = returned;
        drained = true;
        if n == RECV_SIZE {
            splice_while_bulk(src.stream(), dst.stream(), pipes, progress).await?;
        }
    }
}

/// Splices burst after burst while the bursts stay large. Never decides EOF: splice(2)
/// also returns 0 at an urgent mark once the peer's FIN is queued, where recv(2) skips
/// the urgent byte and goes on, so only the caller's next receive can say the stream
/// ended.
async fn splice_while_bulk(
    src: &Stream,
    dst: &Stream,
    pipes: &PipePool,
    progress: &Progress<'_>,
) -> Result<(), Failure> {
    loop {
        match splice_burst(src, dst, pipes, progress).await? {
            n if n >= BULK_BURST => src.readable().await.map_err(Failure::Read)?,
            _ => return Ok(()),
        }
    }
}

/// Splices until the source has nothing more for now (or splice returns 0), through a
/// pipe held only for the burst: an idle connection holds no pipe. Returns the bytes
/// moved.
async fn splice_burst(
    src: &Stream,
    dst: &Stream,
    pipes: &PipePool,
    progress: &Progress<'_>,
) -> Result<usize, Failure> {
    // No pipe (out of fds, or the pipe budget is spent): this connection need not die
    // for it; it goes on copying through its receive buffer until one can be had.
    let Some(pipe) = pipes.get() else {
        return Ok(0);
    };
    let burst = splice_through(src, dst, &pipe, progress).await?;
    // Only an empty pipe may be reused (on error it may still hold bytes: it is closed).
    pipes.put(pipe);
    Ok(burst)
}

async fn splice_through(
    src: &Stream,
    dst: &Stream,
    pipe: &Pipe,
    progress: &Progress<'_>,
) -> Result<usize, Failure> {
    let capacity = pipe.capacity();
    let mut burst = 0;
    loop {
        // The pipe is empty here: each read is drained before the next.
        let n = match sys::splice(src.as_raw_fd(), pipe.write_fd(), capacity) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(Failure::Read(e)),
        };
        progress.received(n);
        let mut in_pipe = n;
        let mut again = false;
        while in_pipe > 0 {
            match sys::splice(pipe.read_fd(), dst.as_raw_fd(), in_pipe) {
                Ok(sent) => {
                    in_pipe -= sent;
                    progress.delivered(sent, true);
                    again = false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    dst.writable(again).await.map_err(Failure::Write)?;
                    again = true;
                }
                Err(e) => return Err(Failure::Write(e)),
            }
        }
        burst += n;
        // A short read means the socket is drained for now (or at EOF, or an urgent
        // mark, or the pipe ran out of slots: the caller's receive tells which).
        if n < capacity {
            return Ok(burst);
        }
    }
}
