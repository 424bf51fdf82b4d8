//! Both directions of one proxied connection, and the rules for ending it.
//!
//! - Each direction ends at EOF, passed on as FIN once every byte before it was
//!   delivered (half-close). Both ended: the connection closes normally.
//! - A side that resets can be sent nothing more and its stream is cut: both directions
//!   stop and the other side is cut. The kernel reports a reset once, to whichever call
//!   comes first: a read that fails, or a write that fails with ECONNRESET. After that
//!   the other direction reads a plain EOF from the reset socket, so the failures of a
//!   round are looked at before its EOFs, and an EOF is never passed on once its source
//!   is known to have reset.
//! - A side that only stops taking bytes (a write to it fails otherwise: EPIPE) may still
//!   have bytes for us, e.g. a backend that answers early and closes: the direction
//!   reading from it goes on to its end, then the other side is cut.
//! - A side that sent EOF and then closed completely (POLLHUP: an AF_UNIX peer that
//!   closed, a TCP peer that reset after its FIN) can receive nothing more: with nothing
//!   in flight to it, the connection ends. A TCP peer that closed tells us only when the
//!   next write is refused, which the rules above handle.
//! - A half-closed connection on which nothing moves for `--half-close-timeout` is cut
//!   (HAProxy's `timeout client-fin`/`server-fin`).
//! - "Cut" is RST, so nobody takes a truncated stream for a complete one; but first the
//!   side is given time to read what was already sent to it (`net::linger`), since RST
//!   discards what is still queued. AF_UNIX has no RST, and its close discards nothing
//!   queued to the peer: a Unix-socket side is closed at once, with what it sent us left
//!   unread, since only that makes the kernel report ECONNRESET to it instead of EOF
//!   (perf/results/unix-cut-2026-12-08.md).

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use super::metrics::WorkerCounters;
use super::pipe::PipePool;
use super::pump::{pump, Failure, Progress};
use crate::metrics::bump;
use crate::net::{linger, Duplex, Linger, Stream};
use crate::runtime::buffers::RecvBuffers;
use crate::runtime::park::Parking;
use crate::sys::{self, poll_now};

/// How long a side that is about to be cut gets to read what was sent to it (nginx's
/// lingering_time and lingering_timeout); what it sends meanwhile is dropped, bounded
/// by time alone.
const BEFORE_CUT: Linger = Linger {
    limit: Duration::from_secs(30),
    stall: Duration::from_secs(5),
    max_dropped: usize::MAX,
};

/// How often a half-closed connection looks whether the side that sent EOF has since
/// closed completely, and whether the half-close timeout ran out.
const HALF_CLOSED_CHECK: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client,
    Upstream,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The connection as `forward` sees it between rounds.
struct Ends<'a> {
    sockets: [&'a Duplex; 2],
    /// Indexed by the side each direction reads from: finished or stopped.
    done: [bool; 2],
    /// The first side that went away, and the error the caller logs (a reset's, when
    /// that side also reset).
    gone: Option<(Side, io::Error)>,
    /// Indexed by side: whether we passed an EOF on to it.
    fin_sent: [bool; 2],
}

impl Ends<'_> {
    /// A direction's pump failed; returns an error when the connection must end now.
    fn failed(&mut self, src: Side, failure: Failure) -> Option<io::Error> {
        self.done[src.index()] = true;
        let (side, e) = match failure {
            Failure::Read(e) => (src, e),
            Failure::Write(e) => (src.other(), e),
        };
        // A failing read, or a write refused with ECONNRESET, is a reset; any other
        // failing write means the side only stopped reading.
        let reset = side == src || e.raw_os_error() == Some(libc::ECONNRESET);
        if reset {
            // Its stream is cut and nothing more can reach it: both directions stop.
            self.done = [true, true];
        }
        match &self.gone {
            Some((first, _)) if *first == side => {
                if reset {
                    self.gone = Some((side, e));
                }
                None
            }
            // Both sides are gone: nobody is left to deliver to.
            Some(_) => Some(e),
            None => {
                self.gone = Some((side, e));
                None
            }
        }
    }

    /// Applies one round of the pumps' results (indexed by the side each reads from):
    /// failures first, since a reset one direction was told of must stop the other
    /// before it passes on the plain EOF the reset left behind. An error: the
    /// connection ends now.
    fn round(&mut self, results: [Option<Result<(), Failure>>; 2]) -> Option<io::Error> {
        let mut eofs = [false, false];
        for (src, result) in [Side::Client, Side::Upstream].into_iter().zip(results) {
            match result {
                Some(Err(failure)) => {
                    if let Some(e) = self.failed(src, failure) {
                        return Some(e);
                    }
                }
                Some(Ok(())) => eofs[src.index()] = true,
                None => {}
            }
        }
        for src in [Side::Client, Side::Upstream] {
            if eofs[src.index()] {
                if let Some(e) = self.finished(src) {
                    return Some(e);
                }
            }
        }
        None
    }

    /// A direction's source sent EOF and everything before it was delivered: pass the
    /// EOF on, unless the source turned out to have reset.
    fn finished(&mut self, src: Side) -> Option<io::Error> {
        if self.done[src.index()] {
            // Stopped this round by a reset seen by the other direction.
            return None;
        }
        if self.reset_behind_eof(src) {
            let reset = io::Error::from_raw_os_error(libc::ECONNRESET);
            return self.failed(src, Failure::Read(reset));
        }
        self.done[src.index()] = true;
        let dst = src.other();
        match self.sockets[dst.index()].stream().shutdown_write() {
            Ok(()) => {
                self.fin_sent[dst.index()] = true;
                None
            }
            Err(e) => self.failed(src, Failure::Write(e)),
        }
    }

    /// Whether the EOF just read from `side` is what a reset left behind, its report
    /// taken by some call we did not see fail: a TCP socket we sent no FIN to is in
    /// CLOSE_WAIT after a real FIN, in CLOSE after a reset. (A peer that sent FIN and
    /// then reset is taken for a reset too: the safe side.)
    fn reset_behind_eof(&self, side: Side) -> bool {
        let stream = self.sockets[side.index()].stream();
        // AF_UNIX has no reset, and the question would cost a syscall per connection.
        matches!(stream, Stream::Tcp(_))
            && !self.fin_sent[side.index()]
            && sys::tcp_state(stream.as_raw_fd()) == Some(sys::TCP_CLOSE)
    }
}

/// What a worker lends each of its proxied connections.
pub struct Lent<'a> {
    /// Pipes to splice through.
    pub pipes: &'a PipePool,
    /// Where receives wait, and are swept off their buffers when idle.
    pub parking: &'a Parking,
    /// The buffers busy connections receive into.
    pub buffers: &'a RecvBuffers,
    /// The worker's counters, added to as bytes move.
    pub counters: &'a WorkerCounters,
}

/// Runs both directions until both finished (each half-closed in turn), or until the
/// rules above end the connection: then the error to report, after which the caller
/// cuts both sides. `half_close_timeout`: `None` for never.
pub async fn forward(
    client: &Duplex,
    upstream: &Duplex,
    lent: &Lent<'_>,
    half_close_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
) -> io::Result<()> {
    let counters = lent.counters;
    let (Some((from_client, to_client)), Some((from_upstream, to_upstream))) =
        (client.split(), upstream.split())
    else {
        return Err(io::Error::other(
            "a connection's streams were already in use",
        ));
    };
    // Indexed by the side each direction reads from.
    let progress = [
        Progress::new(counters, &counters.to_target),
        Progress::new(counters, &counters.to_client),
    ];
    let mut up = pin!(pump(from_client, to_upstream, lent, &progress[0]));
    let mut down = pin!(pump(from_upstream, to_client, lent, &progress[1]));
    let mut ends = Ends {
        sockets: [client, upstream],
        done: [false, false],
        gone: None,
        fin_sent: [false, false],
    };
    let mut watch = None;
    // Only with --idle-timeout: the default (infinity) costs no timer.
    let mut idle_watch = idle_timeout.map(|t| Box::pin(idle(&progress, t, counters)));
    let result = std::future::poll_fn(|cx| {
        if let Some(idle) = idle_watch.as_mut() {
            if let Poll::Ready(result) = idle.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
        }
        let mut results = [None, None];
        for (src, pump) in [(Side::Client, up.as_mut()), (Side::Upstream, down.as_mut())] {
            if !ends.done[src.index()] {
                if let Poll::Ready(result) = pump.poll(cx) {
                    results[src.index()] = Some(result);
                }
            }
        }
        if let Some(e) = ends.round(results) {
            return Poll::Ready(Err(e));
        }
        let ended = match ends.done {
            [true, true] => return Poll::Ready(Ok(())),
            [false, false] => return Poll::Pending,
            [true, false] => Side::Client,
            [false, true] => Side::Upstream,
        };
        // Half-closed: watch the side whose direction ended, and what still moves to it.
        watch
            .get_or_insert_with(|| {
                Box::pin(half_closed(
                    ends.sockets[ended.index()],
                    &progress[ended.other().index()],
                    half_close_timeout,
                ))
            })
            .as_mut()
            .poll(cx)
    })
    .await;
    result?;
    match ends.gone {
        None => Ok(()),
        Some((side, e)) => {
            let cut = ends.sockets[side.other().index()].stream();
            if matches!(cut, Stream::Tcp(_)) {
                // Boxed: only a cut lingers; inline, every connection's task would carry it.
                Box::pin(linger(cut, &BEFORE_CUT)).await;
            }
            Err(e)
        }
    }
}

/// `--idle-timeout`: fails once no byte was received or delivered in either direction
/// for `timeout`, so a vanished client cannot hold a backend (and its locks) forever.
async fn idle(
    progress: &[Progress<'_>; 2],
    timeout: Duration,
    counters: &WorkerCounters,
) -> io::Result<()> {
    let check = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let moved = || progress.iter().map(Progress::activity).sum::<u64>();
    let mut last = moved();
    let mut since = Instant::now();
    loop {
        monoio::time::sleep(check).await;
        if moved() != last {
            last = moved();
            since = Instant::now();
        } else if since.elapsed() >= timeout {
            bump(&counters.idle_timeouts, 1);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "nothing moved either way for --idle-timeout",
            ));
        }
    }
}

/// Watches a half-closed connection: `ended`'s direction is over; `toward` is the other
/// direction, which delivers to it. Ends normally once `ended` closed completely with
/// nothing in flight to it; with an error once it closed with bytes in flight (they
/// cannot arrive), or once nothing moved for `timeout`.
async fn half_closed(
    ended: &Duplex,
    toward: &Progress<'_>,
    timeout: Option<Duration>,
) -> io::Result<()> {
    let mut last = toward.total();
    let mut progress_at = Instant::now();
    loop {
        monoio::time::sleep(HALF_CLOSED_CHECK).await;
        if poll_now(ended.stream().as_raw_fd(), libc::POLLHUP)? {
            if toward.in_flight() {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "peer closed with bytes in flight to it",
                ));
            }
            return Ok(());
        }
        if toward.total() != last {
            last = toward.total();
            progress_at = Instant::now();
        } else if timeout.is_some_and(|t| progress_at.elapsed() >= t) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "nothing moved on a half-closed connection for --half-close-timeout",
            ));
        }
    }
}
