//! Both directions of one proxied connection, and the rules for ending it.
//!
//! - Each direction ends at EOF, passed on as FIN once every byte before it was
//!   delivered (half-close). Both ended: the connection closes normally.
//! - A side that stops taking bytes (a write to it fails) may still have bytes for us,
//!   e.g. a backend that answers early and closes: the direction reading from it goes
//!   on to its end, then the other side is cut.
//! - A side that resets (a read from it fails) can be sent nothing more: both
//!   directions stop and the other side is cut.
//! - "Cut" is RST, so nobody takes a truncated stream for a complete one; but first the
//!   side is given time to read what was already sent to it (see `linger`), since RST
//!   discards what is still queued. AF_UNIX has no RST: a Unix-socket peer sees EOF.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use super::pipe::PipePool;
use super::pump::{pump, Failure};
use crate::net::{Duplex, Stream};

/// Longest a side that is about to be cut gets to read what was sent to it...
const LINGER_LIMIT: Duration = Duration::from_secs(30);
/// ...and how long it may go without reading anything of it (nginx's lingering_time
/// and lingering_timeout).
const LINGER_STALL: Duration = Duration::from_secs(5);
/// How often the linger checks whether the peer has read everything.
const LINGER_POLL: Duration = Duration::from_millis(10);

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
}

/// Runs both directions until both finished (each half-closed in turn), or until the
/// rules above end the connection: then the error to report, after which the caller
/// cuts both sides.
pub async fn forward(client: &Duplex, upstream: &Duplex, pipes: &PipePool) -> io::Result<()> {
    let mut up = pin!(pump(client, upstream, pipes));
    let mut down = pin!(pump(upstream, client, pipes));
    let (mut up_done, mut down_done) = (false, false);
    // The side that went away first, and why.
    let mut gone: Option<(Side, io::Error)> = None;
    std::future::poll_fn(|cx| {
        // Each pump by the side it reads from.
        for src in [Side::Client, Side::Upstream] {
            let (done, pump) = match src {
                Side::Client => (&mut up_done, up.as_mut()),
                Side::Upstream => (&mut down_done, down.as_mut()),
            };
            if *done {
                continue;
            }
            let Poll::Ready(result) = pump.poll(cx) else {
                continue;
            };
            *done = true;
            let (side, e, reset) = match result {
                Ok(()) => continue,
                Err(Failure::Read(e)) => (src, e, true),
                Err(Failure::Write(e)) => (src.other(), e, false),
            };
            match &gone {
                // The same side failing again (it stopped reading, then reset).
                Some((first, _)) if *first == side => {}
                // Both sides are gone: nobody is left to deliver to.
                Some(_) => return Poll::Ready(Err(e)),
                None => gone = Some((side, e)),
            }
            if reset {
                // Nothing more can reach the side that reset: stop the pump writing to it.
                match side {
                    Side::Client => down_done = true,
                    Side::Upstream => up_done = true,
                }
            }
        }
        if up_done && down_done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await?;
    match gone {
        None => Ok(()),
        Some((side, e)) => {
            let still_there = match side.other() {
                Side::Client => client,
                Side::Upstream => upstream,
            };
            linger(still_there.stream()).await;
            Err(e)
        }
    }
}

/// Lets `side` read what we already sent it before it is cut: its input is read and
/// dropped (a peer blocked sending to us can then go on to read) until our send queue
/// to it is empty, or it stalls. Its EOF ends only the reading: a client that
/// half-closed may still be reading its answer.
async fn linger(side: &Stream) {
    let start = Instant::now();
    let mut progress_at = start;
    let mut unsent = usize::MAX;
    let mut input_open = true;
    // On the heap: in the future's own state it would make every connection's task
    // 4 KiB larger, lingering or not (2,000 idle connections: +8 MiB RSS, perf/).
    let mut scratch = vec![0u8; 4096];
    while start.elapsed() < LINGER_LIMIT && progress_at.elapsed() < LINGER_STALL {
        match side.unsent() {
            Ok(0) | Err(_) => return,
            Ok(n) if n < unsent => {
                unsent = n;
                progress_at = Instant::now();
            }
            Ok(_) => {}
        }
        if !input_open {
            monoio::time::sleep(LINGER_POLL).await;
            continue;
        }
        monoio::select! {
            ready = side.readable() => {
                if ready.is_err() {
                    return;
                }
                match side.recv_now(&mut scratch) {
                    Ok(0) => input_open = false,
                    Ok(_) => progress_at = Instant::now(),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            },
            _ = monoio::time::sleep(LINGER_POLL) => {},
        }
    }
}
