//! The process-wide connection limit (`--connections-max`) and the open-connection
//! count that `--exit-idle-time` and metrics read; and the same kind of limit, apart,
//! for a side door such as the metrics socket (`Admission::Own`).
//!
//! A permit is taken *before* accept(2), so at the limit new clients wait in the
//! kernel's listen backlog instead of being accepted and closed (which is what
//! systemd-socket-proxyd does, one connection too late).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Instant;

use crate::sync::lock;

/// `--connections-max` as given, or its default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionsMax {
    Given(usize),
    Default,
}

/// The default `--connections-max`. systemd-socket-proxyd's 256 lets 256 idle clients or
/// slow request heads lock every other client out; an idle connection costs a few KiB
/// here (perf/results), so a host holds this many with room to spare.
pub const DEFAULT_CONNECTIONS_MAX: usize = 16384;

/// Open files kept back from the connections: listeners, rings, logs, the process's own.
const RESERVED_FDS: u64 = 64;

/// The limit to enforce: a given value as is (with a warning when the fd limit cannot
/// hold it), the default lowered to what `fd_limit` holds.
pub fn connections_max(
    setting: ConnectionsMax,
    fd_limit: Option<u64>,
    fds_per_connection: usize,
) -> usize {
    let fits = fd_limit.map_or(usize::MAX, |limit| {
        (limit.saturating_sub(RESERVED_FDS) / fds_per_connection as u64).max(1) as usize
    });
    match setting {
        ConnectionsMax::Given(n) => {
            if n > fits {
                crate::warn!(
                    "--connections-max {n} needs up to {} open files but the limit is {}; \
                     raise LimitNOFILE= (or ulimit -n) or lower --connections-max",
                    n.saturating_mul(fds_per_connection),
                    fd_limit.unwrap_or(0)
                );
            }
            n
        }
        ConnectionsMax::Default if fits < DEFAULT_CONNECTIONS_MAX => {
            crate::info!(
                "at most {fits} connections at once: the open file limit of {} holds no more \
                 (raise LimitNOFILE= for the default {DEFAULT_CONNECTIONS_MAX})",
                fd_limit.unwrap_or(0)
            );
            fits
        }
        ConnectionsMax::Default => DEFAULT_CONNECTIONS_MAX,
    }
}

/// Each connection costs two or three fds; the default soft limit of 1024 would cap us
/// far below `--connections-max`, and systemd's hard limit is high. Returns the soft
/// limit now in force (`None`: unlimited or unknown).
pub fn raise_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: limit is a valid rlimit to fill and then pass back.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let old = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                crate::debug!(
                    "raised the open file limit from {old} to {}",
                    limit.rlim_max
                );
            } else {
                limit.rlim_cur = old;
            }
        }
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

pub struct Limiter {
    max: usize,
    open: AtomicUsize,
    /// The most connections open at once since [`Limiter::take_peak`] last read it.
    peak: AtomicUsize,
    /// Waits of quiet connections moved off their receive buffers, since start.
    quieted: AtomicU64,
    accepted: AtomicU64,
    has_waiters: AtomicBool,
    waiters: Mutex<Vec<Waker>>,
    /// Connections waiting for an fd for what they need: while there are any, accepting
    /// waits as at the limit, so the fds that closing connections give back go to them
    /// and not to new clients that would only wait too.
    waiting_for_fds: AtomicUsize,
    epoch: Instant,
    /// Milliseconds since `epoch` when a connection last closed: once the open count is
    /// zero, when it fell to zero. Stored before the count drops, so whoever sees zero
    /// also sees when.
    last_close_ms: AtomicU64,
}

/// One open connection's share of the limit; released on drop.
pub struct Permit {
    limiter: Arc<Limiter>,
}

impl Limiter {
    pub fn new(max: usize) -> Arc<Limiter> {
        Arc::new(Limiter {
            max,
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            quieted: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            has_waiters: AtomicBool::new(false),
            waiters: Mutex::new(Vec::new()),
            waiting_for_fds: AtomicUsize::new(0),
            epoch: Instant::now(),
            last_close_ms: AtomicU64::new(0),
        })
    }

    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        if self.waiting_for_fds.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let before = self
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()?;
        self.peak.fetch_max(before + 1, Ordering::Relaxed);
        Some(Permit {
            limiter: self.clone(),
        })
    }

    /// Waits for a free slot. Only accept loops wait here, a handful per process, so a
    /// mutex-guarded list of wakers is enough.
    pub fn acquire(self: &Arc<Self>) -> impl Future<Output = Permit> + '_ {
        std::future::poll_fn(move |cx| {
            if let Some(permit) = self.try_acquire() {
                return Poll::Ready(permit);
            }
            {
                let mut waiters = lock(&self.waiters);
                if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    waiters.push(cx.waker().clone());
                }
                self.has_waiters.store(true, Ordering::SeqCst);
            }
            // A permit released between the first try and registering would not have
            // seen us: look again.
            match self.try_acquire() {
                Some(permit) => Poll::Ready(permit),
                None => Poll::Pending,
            }
        })
    }

    /// A connection found no fd: accepting stops until the returned guard is dropped
    /// (it got one, or gave up), so new clients wait in the listen backlog instead of
    /// being accepted only to be reset. `first` says whether accepting was running until
    /// now, for a log line per episode.
    pub fn wait_for_fds(self: &Arc<Self>) -> (FdWait, bool) {
        let first = self.waiting_for_fds.fetch_add(1, Ordering::SeqCst) == 0;
        (
            FdWait {
                limiter: self.clone(),
            },
            first,
        )
    }

    pub fn note_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// The most connections open at once since the last call (or since start), and
    /// starts counting again from those open now: a burst that came and went between
    /// two looks is still seen.
    pub fn take_peak(&self) -> usize {
        self.peak.swap(self.open(), Ordering::Relaxed)
    }

    /// `n` receives were swept off their buffers for having waited a whole period.
    pub fn note_quieted(&self, n: usize) {
        if n > 0 {
            self.quieted.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Receives swept off their buffers since start.
    pub fn quieted(&self) -> u64 {
        self.quieted.load(Ordering::Relaxed)
    }

    /// `--connections-max` as in force.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections waiting for a file descriptor now (accepting pauses meanwhile).
    pub fn waiting_for_fds(&self) -> usize {
        self.waiting_for_fds.load(Ordering::SeqCst)
    }

    /// How long no connection has been open; `None` while one is.
    pub fn idle_for(&self) -> Option<std::time::Duration> {
        if self.open() > 0 {
            return None;
        }
        let since = self.last_close_ms.load(Ordering::SeqCst);
        Some(
            self.epoch
                .elapsed()
                .saturating_sub(std::time::Duration::from_millis(since)),
        )
    }

    fn release(&self) {
        self.last_close_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
        self.open.fetch_sub(1, Ordering::SeqCst);
        self.wake_acceptors();
    }

    fn wake_acceptors(&self) {
        if self.has_waiters.swap(false, Ordering::SeqCst) {
            // Wake every waiting accept loop; the ones that lose the race wait again.
            let waiters = std::mem::take(&mut *lock(&self.waiters));
            waiters.into_iter().for_each(Waker::wake);
        }
    }
}

/// A connection waiting for an fd; accepting resumes once none is left.
pub struct FdWait {
    limiter: Arc<Limiter>,
}

impl Drop for FdWait {
    fn drop(&mut self) {
        if self.limiter.waiting_for_fds.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.limiter.wake_acceptors();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_exact() {
        let limiter = Limiter::new(2);
        let a = limiter.try_acquire().expect("first");
        let _b = limiter.try_acquire().expect("second");
        assert!(limiter.try_acquire().is_none());
        assert_eq!(limiter.open(), 2);
        drop(a);
        assert_eq!(limiter.open(), 1);
        assert!(limiter.try_acquire().is_some());
    }

    #[test]
    fn the_default_fits_the_fd_limit_and_a_given_limit_is_kept() {
        let default = ConnectionsMax::Default;
        assert_eq!(
            connections_max(default, Some(1 << 20), 3),
            DEFAULT_CONNECTIONS_MAX
        );
        assert_eq!(connections_max(default, None, 3), DEFAULT_CONNECTIONS_MAX);
        assert_eq!(connections_max(default, Some(20_000), 2), 9_968);
        assert_eq!(connections_max(default, Some(10), 2), 1);
        assert_eq!(
            connections_max(ConnectionsMax::Given(50_000), Some(1024), 3),
            50_000
        );
    }

    #[test]
    fn accepting_waits_while_a_connection_waits_for_fds() {
        let limiter = Limiter::new(10);
        let (first, is_first) = limiter.wait_for_fds();
        let (second, is_first_again) = limiter.wait_for_fds();
        assert!(is_first && !is_first_again, "one episode, one log line");
        assert!(limiter.try_acquire().is_none());
        drop(first);
        assert!(limiter.try_acquire().is_none());
        drop(second);
        assert!(limiter.try_acquire().is_some());
    }

    #[test]
    fn a_peak_between_two_looks_is_seen() {
        let limiter = Limiter::new(10);
        let permits: Vec<_> = (0..3).map(|_| limiter.try_acquire().unwrap()).collect();
        drop(permits);
        let _one = limiter.try_acquire().unwrap();
        assert_eq!(limiter.take_peak(), 3);
        assert_eq!(
            limiter.take_peak(),
            1,
            "counting starts again from those open"
        );
    }

    #[test]
    fn idle_time_counts_from_the_last_close() {
        let limiter = Limiter::new(1);
        let permit = limiter.try_acquire().expect("permit");
        assert_eq!(limiter.idle_for(), None);
        drop(permit);
        assert!(limiter.idle_for().expect("idle") < std::time::Duration::from_secs(5));
    }
}
