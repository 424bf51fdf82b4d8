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
//!
//! A pipe filled from the source waits, with what the destination did not take yet, for
//! that destination to drain, but only within half the process's pipe budget. Past it,
//! each splice from the source takes no more than the destination has room for, so the
//! pipe is held only while bytes move through it: clients that never read cannot hold
//! the whole budget and switch zero-copy off for everyone else.

use std::cell::Cell;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;

use super::forward::Lent;
use super::metrics::WorkerCounters;
use super::pipe::{Pipe, PipePool};
use monoio::buf::ProvidedBuf;

use crate::net::{ReadHalf, Stream, WriteHalf};
use crate::runtime::buffers::RecvBuf;
use crate::runtime::park::Parking;
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
    bytes: &'a WorkerCounters,
    /// The direction's counter in `bytes`.
    counter: &'a AtomicU64,
}

impl<'a> Progress<'a> {
    /// Counts into `counter`, one of `bytes`' two directions.
    pub fn new(bytes: &'a WorkerCounters, counter: &'a AtomicU64) -> Progress<'a> {
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
    lent: &Lent<'_>,
    progress: &Progress<'_>,
) -> Result<(), Failure> {
    let (pipes, parking) = (lent.pipes, lent.parking);
    // `None` while the direction has been idle: it takes a buffer again when it is busy.
    let mut buf = Some(lent.buffers.take());
    // Every receive but the first follows one that came up short or a splice burst that
    // did: the socket is most likely empty, and the receive had better wait for data
    // before trying. The first may find bytes sent before the connection was accepted.
    let mut drained = false;
    loop {
        let own = buf.take().unwrap_or_else(|| lent.buffers.take());
        let n = match receive(&mut src, own, drained, parking)
            .await
            .map_err(Failure::Read)?
        {
            Received::Own(data) => {
                let n = data.len();
                if n > 0 {
                    progress.received(n);
                    let (sent, mut returned) = dst.send_all(data).await;
                    sent.map_err(Failure::Write)?;
                    returned.clear();
                    buf = Some(returned);
                }
                n
            }
            Received::Pooled(data) => {
                let n = data.len();
                if n > 0 {
                    progress.received(n);
                    // Boxed, as the wait that got it: the first message after a quiet
                    // spell is rare, and its state would weigh on every task.
                    let sent = Box::pin(dst.send_all(data)).await.0;
                    sent.map_err(Failure::Write)?;
                }
                n
            }
        };
        if n == 0 {
            return Ok(());
        }
        progress.delivered(n, false);
        drained = true;
        if n == RECV_SIZE {
            // Boxed: bulk is the rarer state, and its splices and waits would otherwise
            // make every connection's task larger for as long as it lives.
            let bulk = Box::pin(splice_while_bulk(
                src.stream(),
                dst.stream(),
                pipes,
                progress,
            ));
            if let Some(spilled) = bulk.await? {
                // The destination filled up before a pipe's bytes were all in: they go
                // by copy, through the runtime's send, which waits for room holding no
                // pipe. The source has more, most likely: no need to wait for it.
                let len = spilled.len();
                let (sent, _) = dst.send_all(spilled).await;
                sent.map_err(Failure::Write)?;
                progress.delivered(len, false);
                drained = false;
            }
        }
    }
}

/// What one receive got: bytes in the direction's own buffer, or, after it had waited long
/// enough to be swept off its buffer, in a buffer of the worker's pool.
enum Received {
    Own(RecvBuf),
    Pooled(ProvidedBuf),
}

/// One receive. It waits with `buf` (one submission, as cheap as a receive gets) unless
/// the worker's sweep finds it parked a whole period: then it is cancelled, keeping
/// whatever it had received, and the wait goes on with no buffer (`runtime::park`).
/// Empty means EOF.
async fn receive(
    src: &mut ReadHalf<'_>,
    buf: RecvBuf,
    expect_empty: bool,
    parking: &Parking,
) -> io::Result<Received> {
    let recv = src.recv_owned(buf, expect_empty);
    let ticket = parking.park(recv.canceller());
    let (result, buf) = recv.await;
    drop(ticket);
    match result {
        Ok(_) => Ok(Received::Own(buf)),
        Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
            // Swept: idle for a second or more. The buffer goes, the wait goes on (boxed:
            // its state would otherwise weigh on every connection's task).
            drop(buf);
            Box::pin(src.recv_provided(true))
                .await
                .map(Received::Pooled)
        }
        Err(e) => Err(e),
    }
}

/// Splices burst after burst while the bursts stay large. Never decides EOF: splice(2)
/// also returns 0 at an urgent mark once the peer's FIN is queued, where recv(2) skips
/// the urgent byte and goes on, so only the caller's next receive can say the stream
/// ended. Returns bytes left over for the caller to send, when the destination took
/// less than it had room for.
async fn splice_while_bulk(
    src: &Stream,
    dst: &Stream,
    pipes: &PipePool,
    progress: &Progress<'_>,
) -> Result<Option<Vec<u8>>, Failure> {
    loop {
        match splice_burst(src, dst, pipes, progress).await? {
            Burst::Spilled(bytes) => return Ok(Some(bytes)),
            Burst::Moved(n) if n >= BULK_BURST => src.readable().await.map_err(Failure::Read)?,
            Burst::Moved(_) => return Ok(None),
        }
    }
}

/// How a burst ended.
enum Burst {
    /// The source had nothing more for now (or splice returned 0, or no pipe could be
    /// had): this many bytes were moved.
    Moved(usize),
    /// The destination took less than its room promised; these bytes, taken out of the
    /// pipe, are still to be delivered, before anything else.
    Spilled(Vec<u8>),
}

/// Splices until the source has nothing more for now.
///
/// While its share of the pipe budget allows (see `Pipe::wait_share`), a pass fills the
/// pipe from the source and waits, pipe in hand, for the destination to take it all: the
/// cheapest way per byte. Reading a pipe's worth at once from a TCP source opens its
/// window in large steps; reading only what the destination has room for (often a Unix
/// socket's 208 KiB) cost twice the CPU per GiB, most of it the client's transmit work
/// that the smaller window updates moved into the proxy. Once that share is spent (by
/// clients that never read, say), a pass takes no more from the source than the
/// destination has room for, and waits for room holding no pipe: the bytes stay in the
/// source's socket buffer, so any number of stalled clients cannot take the pipes that
/// every other connection's zero-copy depends on.
async fn splice_burst(
    src: &Stream,
    dst: &Stream,
    pipes: &PipePool,
    progress: &Progress<'_>,
) -> Result<Burst, Failure> {
    let mut burst = 0;
    let mut full = Full::default();
    loop {
        // No pipe (out of fds, or the pipe budget is spent): this connection need not
        // die for it; it goes on copying through its receive buffer until one can be had.
        let Some(pipe) = pipes.get() else {
            return Ok(Burst::Moved(burst));
        };
        let share = pipe.wait_share();
        let want = if share.is_some() {
            pipe.capacity()
        } else {
            // Unknown room (SO_MEMINFO refused): a pipe's worth; what does not fit spills.
            match full.want(dst.send_room().unwrap_or(usize::MAX)) {
                Some(want) => want.min(pipe.capacity()),
                None => {
                    drop(share);
                    pipes.put(pipe);
                    dst.writable(full.waited()).await.map_err(Failure::Write)?;
                    continue;
                }
            }
        };
        // On error the pipe may still hold bytes: it is closed, not reused.
        let n = fill(src, &pipe, want, progress)?;
        let spilled = empty_into(dst, &pipe, n, share.is_some(), progress).await?;
        drop(share);
        pipes.put(pipe);
        full = Full::default();
        if let Some(bytes) = spilled {
            return Ok(Burst::Spilled(bytes));
        }
        burst += n;
        // A short read means the socket is drained for now (or at EOF, or an urgent
        // mark, or the pipe ran out of slots: the caller's receive tells which).
        if n < want {
            return Ok(Burst::Moved(burst));
        }
    }
}

/// The waits for room in the destination since bytes last moved. A wait may end with
/// no room: io_uring's poll reports the peer's half-close (POLLRDHUP) as readiness
/// whatever was asked, and a socket with an error or hang-up is "ready" too. The first
/// wake is trusted; after that, `Stream::writable` confirms each with poll(2) and backs
/// off from false ones. If even a confirmed wake finds no room, the kernel disagrees
/// with the estimate (an error or hang-up it will only name on a write): a small pass
/// is made anyway, which fails with the error, or spills and goes by send.
#[derive(Default)]
struct Full {
    waits: u8,
}

/// Bytes moved by a pass made although the estimate said there was no room.
const PROBE: usize = 4096;

impl Full {
    /// How much the next pass should take from the source; `None`: wait first.
    fn want(&self, room: usize) -> Option<usize> {
        match (room, self.waits) {
            (0, 0 | 1) => None,
            (0, _) => Some(PROBE),
            (room, _) => Some(room),
        }
    }

    /// Counts a wait; returns whether it is not the first (see `Stream::writable`).
    fn waited(&mut self) -> bool {
        self.waits = self.waits.saturating_add(1);
        self.waits > 1
    }
}

/// Splices up to `want` bytes from `src` into the empty `pipe`; returns how many.
fn fill(src: &Stream, pipe: &Pipe, want: usize, progress: &Progress<'_>) -> Result<usize, Failure> {
    let n = match sys::splice(src.as_raw_fd(), pipe.write_fd(), want) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(Failure::Read(e)),
    };
    progress.received(n);
    Ok(n)
}

/// Splices the `n` bytes in `pipe` into `dst`, leaving the pipe empty. When `dst` is
/// full: with `may_wait`, waits for room with the pipe; without, reads the rest out of
/// the pipe and returns it, for the caller to send before anything else (the room
/// estimate said it would fit, so it is little).
async fn empty_into(
    dst: &Stream,
    pipe: &Pipe,
    n: usize,
    may_wait: bool,
    progress: &Progress<'_>,
) -> Result<Option<Vec<u8>>, Failure> {
    let mut in_pipe = n;
    let mut again = false;
    while in_pipe > 0 {
        match sys::splice(pipe.read_fd(), dst.as_raw_fd(), in_pipe) {
            Ok(sent) => {
                in_pipe -= sent;
                progress.delivered(sent, true);
                again = false;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && may_wait => {
                dst.writable(again).await.map_err(Failure::Write)?;
                again = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // A pipe's bytes are never lost, and a pipe with bytes is never reused:
                // failing to read them back fails the connection.
                return pipe.drain(in_pipe).map(Some).map_err(Failure::Write);
            }
            Err(e) => return Err(Failure::Write(e)),
        }
    }
    Ok(None)
}
