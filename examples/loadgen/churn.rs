//! Connect churn: connect, send 64 B, half-close, read the echo, close, and again.
//!
//! Each thread keeps several connections in flight on its own epoll (non-blocking
//! connect): blocking threads with one connection each left the CPUs idle while waiting
//! for replies. Over loopback TCP connections come from several source addresses,
//! because TIME_WAIT entries from a single source make connect() slow (see
//! CHURN_SOURCES).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::addr::Target;
use crate::sys::{self, WANT_READ, WANT_WRITE};

/// Connections each churn thread keeps in flight unless told otherwise. Measured on the
/// 2-core VM with the 4 threads perf/proxy.sh uses: direct churn rises to 32 and is flat
/// beyond; through the forwarders 16 and more are all the same.
pub const CHURN_IN_FLIGHT: usize = 32;

/// Source addresses (127.0.0.1..=127.0.0.16) churn spreads its connections over when the
/// target is IPv4 loopback. Each connection leaves a TIME_WAIT entry on the client side
/// for 60 s; from one source to one destination only ~28k ports exist, so once tens of
/// thousands are taken, connect() spends most of the client's CPU searching for a free
/// port (__inet_hash_connect/__inet_check_established in perf), without failing with
/// EADDRNOTAVAIL. That capped churn through ringsock at 14.5k conn/s; with 16 sources it
/// reaches 36k, as much as the forwarder and backend leave CPU for.
const CHURN_SOURCES: u32 = 16;

const CHURN_REQUEST: [u8; 64] = [b'c'; 64];

pub fn churn(addr: &str, threads: usize, secs: u64, in_flight: usize) -> io::Result<()> {
    let target = Target::parse(addr, CHURN_SOURCES)?;
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let workers: Vec<_> = (0..threads)
        .map(|_| std::thread::spawn(move || ChurnThread::new(target, start, end, in_flight)?.run()))
        .collect();
    let mut total = ChurnStats::default();
    for w in workers {
        let stats = w
            .join()
            .map_err(|_| io::Error::other("churn thread panicked"))??;
        total.add(stats);
    }
    let secs = start.elapsed().as_secs_f64();
    for (why, n) in &total.errors {
        eprintln!("churn: {n} x {why}");
    }
    println!(
        "churn threads={threads} conn_per_s={:.0} failures={}",
        total.done as f64 / secs,
        total.failed
    );
    Ok(())
}

/// One in-flight churn connection.
struct ChurnSlot {
    fd: Option<OwnedFd>,
    generation: u32,
    /// Request bytes written; after all 64, our side is shut down and we read.
    sent: usize,
    /// Reply bytes read so far, and whether all of them matched the request.
    got: usize,
    matches: bool,
    registered: u32,
    started: Instant,
    /// After an error the slot waits until then before connecting again, so a refused
    /// or failing target costs a bounded rate of attempts instead of a busy loop.
    retry_at: Option<Instant>,
}

enum ChurnStep {
    Wait(u32),
    /// EOF read; whether the reply was exactly the request.
    Finished(bool),
    Failed(io::Error),
}

impl ChurnSlot {
    /// A slot with no connection yet, to be connected at once.
    fn idle(started: Instant) -> ChurnSlot {
        ChurnSlot {
            fd: None,
            generation: 0,
            sent: 0,
            got: 0,
            matches: true,
            registered: 0,
            started,
            retry_at: None,
        }
    }

    /// A slot for a connection just started.
    fn connected(fd: OwnedFd, generation: u32) -> ChurnSlot {
        ChurnSlot {
            fd: Some(fd),
            generation,
            ..ChurnSlot::idle(Instant::now())
        }
    }

    /// Sends, half-closes and reads until the socket would block or the reply is complete.
    fn advance(&mut self, buf: &mut [u8]) -> ChurnStep {
        let Some(fd) = self.fd.as_ref().map(|f| f.as_raw_fd()) else {
            return ChurnStep::Failed(io::Error::other("no connection"));
        };
        loop {
            let result = if self.sent < CHURN_REQUEST.len() {
                self.send(fd)
            } else {
                match sys::read(fd, buf) {
                    Ok(0) => {
                        return ChurnStep::Finished(self.matches && self.got == CHURN_REQUEST.len())
                    }
                    Ok(n) => {
                        self.matches &= buf[..n].iter().all(|&b| b == b'c');
                        self.got += n;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            };
            match result {
                // Just half-closed: the echo cannot be here yet, wait instead of reading.
                Ok(()) if self.sent == CHURN_REQUEST.len() && self.got == 0 => {
                    return ChurnStep::Wait(WANT_READ)
                }
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return ChurnStep::Wait(if self.sent < CHURN_REQUEST.len() {
                        WANT_WRITE
                    } else {
                        WANT_READ
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return ChurnStep::Failed(e),
            }
        }
    }

    /// Sends the rest of the request, and half-closes once all of it is out. Before the
    /// TCP handshake completes this is EAGAIN (wait for EPOLLOUT); a refused connect
    /// shows up here as its error.
    fn send(&mut self, fd: std::os::fd::RawFd) -> io::Result<()> {
        let n = sys::send(fd, &CHURN_REQUEST[self.sent..])?;
        self.sent += n;
        if self.sent == CHURN_REQUEST.len() {
            // If this failed, the backend sees no EOF and the slot is counted as hung.
            let _ = sys::shutdown_write(fd);
        }
        Ok(())
    }
}

#[derive(Default)]
struct ChurnStats {
    done: u64,
    failed: u64,
    /// Failure reasons and counts, reported on stderr.
    errors: HashMap<String, u64>,
}

impl ChurnStats {
    fn fail(&mut self, why: String) {
        self.failed += 1;
        *self.errors.entry(why).or_default() += 1;
    }

    fn add(&mut self, other: ChurnStats) {
        self.done += other.done;
        self.failed += other.failed;
        for (why, n) in other.errors {
            *self.errors.entry(why).or_default() += n;
        }
    }
}

struct ChurnThread {
    ep: OwnedFd,
    target: Target,
    end: Instant,
    slots: Vec<ChurnSlot>,
    generation: u32,
    buf: [u8; 256],
    stats: ChurnStats,
}

impl ChurnThread {
    fn new(
        target: Target,
        start: Instant,
        end: Instant,
        in_flight: usize,
    ) -> io::Result<ChurnThread> {
        Ok(ChurnThread {
            ep: sys::epoll_create()?,
            target,
            end,
            slots: (0..in_flight.max(1))
                .map(|_| ChurnSlot::idle(start))
                .collect(),
            generation: 0,
            buf: [0; 256],
            stats: ChurnStats::default(),
        })
    }

    /// Drives slot `i`: opens a new connection first if `fresh`, and opens the next one
    /// whenever a connection completes, until one has to wait or fails.
    fn run_slot(&mut self, i: usize, mut fresh: bool) {
        loop {
            if fresh {
                if Instant::now() >= self.end {
                    return;
                }
                match self.target.connect(self.generation) {
                    Ok(fd) => {
                        self.generation = self.generation.wrapping_add(1);
                        self.slots[i] = ChurnSlot::connected(fd, self.generation);
                    }
                    Err(e) => return self.error(i, e),
                }
            }
            let slot = &mut self.slots[i];
            match slot.advance(&mut self.buf) {
                ChurnStep::Wait(want) => {
                    let fd = slot.fd.as_ref().map_or(-1, |f| f.as_raw_fd());
                    let tok = sys::token(i, slot.generation);
                    if let Err(e) = sys::epoll_want(&self.ep, fd, &mut slot.registered, want, tok) {
                        self.error(i, e);
                    }
                    return;
                }
                ChurnStep::Finished(ok) => {
                    if ok {
                        self.stats.done += 1;
                    } else {
                        self.stats.fail("reply differs from request".into());
                    }
                    // Closing also removes the fd from epoll.
                    slot.fd = None;
                    fresh = true;
                }
                ChurnStep::Failed(e) => return self.error(i, e),
            }
        }
    }

    fn error(&mut self, i: usize, e: io::Error) {
        self.stats.fail(e.to_string());
        let slot = &mut self.slots[i];
        slot.fd = None;
        slot.retry_at = Some(Instant::now() + Duration::from_millis(10));
    }

    fn run(mut self) -> io::Result<ChurnStats> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; self.slots.len()];
        loop {
            let now = Instant::now();
            if now >= self.end {
                break;
            }
            let wake = self.restart_slots(now);
            let timeout_ms = wake
                .saturating_duration_since(now)
                .as_micros()
                .div_ceil(1000) as i32;
            for ev in sys::epoll_wait(&self.ep, &mut events, timeout_ms)?.iter() {
                let (i, generation) = sys::untoken(ev.u64);
                let slot = &self.slots[i];
                if slot.fd.is_some() && slot.generation == generation {
                    self.run_slot(i, false);
                }
            }
        }
        // A connection in flight this long has hung: that is a failure, not a slow
        // success cut off by the deadline.
        for slot in &self.slots {
            if slot.fd.is_some() && slot.started.elapsed() > Duration::from_secs(1) {
                self.stats.fail("no reply within 1 s".into());
            }
        }
        Ok(self.stats)
    }

    /// (Re)starts slots that are not connected: at the start, and after errors whose
    /// retry time has come. Returns when the next retry is due (at most the end).
    fn restart_slots(&mut self, now: Instant) -> Instant {
        let mut wake = self.end;
        for i in 0..self.slots.len() {
            if self.slots[i].fd.is_some() {
                continue;
            }
            if self.slots[i].retry_at.map_or(true, |t| t <= now) {
                self.run_slot(i, true);
            }
            // Also a slot that failed again just now: wake up for its retry.
            if let (None, Some(t)) = (&self.slots[i].fd, self.slots[i].retry_at) {
                wake = wake.min(t);
            }
        }
        wake
    }
}
