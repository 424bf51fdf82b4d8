//! The lingering close: before a connection is closed (with FIN or RST), the peer gets
//! time to read what it was sent, as nginx's lingering_close.

use std::io;
use std::time::{Duration, Instant};

use super::Stream;

/// How long a closing connection may wait for its peer to read what it was sent.
pub struct Linger {
    /// At most this long in all...
    pub limit: Duration,
    /// ...and this long without the peer reading anything of it or sending us anything.
    pub stall: Duration,
    /// Input read and dropped meanwhile, at most.
    pub max_dropped: usize,
}

/// How often a linger looks whether the peer has read everything: soon after progress,
/// then less and less often, so a thousand peers that read nothing cost a few wakes
/// each rather than a hundred a second.
const LINGER_POLL_FIRST: Duration = Duration::from_millis(10);
const LINGER_POLL_MAX: Duration = Duration::from_millis(320);

/// The lingering close, before the caller closes `stream` (with FIN or RST): the peer
/// gets time to read what it was sent. Its input is read and dropped meanwhile, so a
/// peer blocked sending to us can go on to read, and no unread input turns the close
/// into a RST that discards our last bytes. Ends when our send queue to the peer is
/// empty or a bound in `bounds` is reached; the peer's EOF ends only the reading (a
/// client that half-closed may still be reading its answer).
pub async fn linger(stream: &Stream, bounds: &Linger) {
    let start = Instant::now();
    let mut progress_at = start;
    let mut unsent = usize::MAX;
    let mut input_open = true;
    let mut dropped = 0;
    // On the heap: in the future's own state it would make every connection's task
    // 4 KiB larger, lingering or not (2,000 idle proxied connections: +8 MiB RSS).
    let mut scratch = vec![0u8; 4096];
    let mut poll_every = LINGER_POLL_FIRST;
    while start.elapsed() < bounds.limit && progress_at.elapsed() < bounds.stall {
        match stream.unsent() {
            Ok(0) | Err(_) => return,
            Ok(n) if n < unsent => {
                unsent = n;
                progress_at = Instant::now();
                poll_every = LINGER_POLL_FIRST;
            }
            Ok(_) => poll_every = (poll_every * 2).min(LINGER_POLL_MAX),
        }
        // Never past the bounds: the stall ends the linger on time.
        let wait = poll_every
            .min(bounds.stall.saturating_sub(progress_at.elapsed()))
            .min(bounds.limit.saturating_sub(start.elapsed()));
        if !input_open {
            monoio::time::sleep(wait).await;
            continue;
        }
        monoio::select! {
            ready = stream.readable() => {
                if ready.is_err() {
                    return;
                }
                match stream.recv_now(&mut scratch) {
                    Ok(0) => input_open = false,
                    Ok(n) => {
                        dropped += n;
                        if dropped > bounds.max_dropped {
                            return;
                        }
                        progress_at = Instant::now();
                        poll_every = LINGER_POLL_FIRST;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            },
            _ = monoio::time::sleep(wait) => {},
        }
    }
}
