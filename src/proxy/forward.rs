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
//!   side is given time to read what was already sent to it (`net::linger`), since RST
//!   discards what is still queued. AF_UNIX has no RST: a Unix-socket peer sees EOF.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use super::pipe::PipePool;
use super::pump::{pump, Failure};
use crate::net::{linger, Duplex, Linger};

/// How long a side that is about to be cut gets to read what was sent to it (nginx's
/// lingering_time and lingering_timeout); what it sends meanwhile is dropped, bounded
/// by time alone.
const BEFORE_CUT: Linger = Linger {
    limit: Duration::from_secs(30),
    stall: Duration::from_secs(5),
    max_dropped: usize::MAX,
};

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
            linger(still_there.stream(), &BEFORE_CUT).await;
            Err(e)
        }
    }
}
