//! The main thread once the workers run: sd_notify, the watchdog, `--exit-idle-time`,
//! signals, and the drain bounded by `--shutdown-timeout`.

use std::io;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::limit::Limiter;
use super::signals::{is_stop, note_ignored, signal_name, wait_signal};
use super::Lifecycle;
use crate::sys::{getsockopt_int, reset_on_close};
use crate::systemd::notify::Notifier;

pub struct Supervisor<'a> {
    pub lifecycle: &'a Lifecycle,
    pub notifier: &'a Notifier,
    pub limiter: &'a Limiter,
    pub signals: &'a libc::sigset_t,
    pub reopen_logs: Option<&'a (dyn Fn() + Sync)>,
    pub reload: Option<&'a (dyn Fn() + Sync)>,
    pub live_status: Option<&'a (dyn Fn(&Limiter) -> String + Sync)>,
}

impl Supervisor<'_> {
    /// Sleeps in sigtimedwait, waking for watchdog pings and idle checks; returns why to stop.
    pub fn wait_for_stop(&self, done: &mpsc::Receiver<()>) -> io::Result<String> {
        let mut watchdog = Watchdog::new(self.notifier);
        let mut status = String::new();
        let mut memory = MemoryReturn::default();
        loop {
            memory.after_closes(
                self.limiter.take_peak(),
                self.limiter.open(),
                self.limiter.quieted(),
            );
            // The loop wakes at least once a second: the live status is never older.
            if let Some(live) = self.live_status {
                let now = live(self.limiter);
                if now != status {
                    self.notifier.send(&format!("STATUS={now}"));
                    status = now;
                }
            }
            // A worker that ends on its own has crashed; let the service manager restart us.
            if !matches!(done.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                return Err(io::Error::other("a worker thread stopped unexpectedly"));
            }
            let mut wait = watchdog.feed().min(Duration::from_secs(1));
            if let Some(limit) = self.lifecycle.exit_idle_time {
                if let Some(idle) = self.limiter.idle_for() {
                    if idle >= limit {
                        return Ok(format!("no connection for {limit:?} (--exit-idle-time)"));
                    }
                    wait = wait.min(limit - idle);
                }
            }
            if let Some(signal) = wait_signal(self.signals, wait) {
                if is_stop(signal) {
                    return Ok(format!("received {}", signal_name(signal)));
                }
                self.on_signal(signal);
            }
        }
    }

    /// What a signal other than a stop asks: SIGUSR1 reopens the logs, SIGHUP reloads
    /// (what `systemctl reload` sends), telling systemd it does (RELOADING=1, then
    /// READY=1 once done, the notify-reload protocol); any other is logged.
    fn on_signal(&self, signal: libc::c_int) {
        match (signal, self.reopen_logs, self.reload) {
            (libc::SIGUSR1, Some(reopen), _) => {
                crate::info!("received SIGUSR1; reopening the access log");
                reopen();
            }
            (libc::SIGHUP, _, Some(reload)) => {
                crate::info!("received SIGHUP; reloading");
                let now = crate::sys::monotonic_usec();
                self.notifier
                    .send(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
                reload();
                self.notifier.send("READY=1");
            }
            _ => note_ignored(signal),
        }
    }

    /// Waits for the workers to finish their connections, up to `--shutdown-timeout` or
    /// a second SIGTERM/SIGINT; then whatever is still open is cut.
    pub fn drain(&self, done: &mpsc::Receiver<()>) {
        let deadline = self
            .lifecycle
            .shutdown_timeout
            .and_then(|timeout| Instant::now().checked_add(timeout));
        let mut watchdog = Watchdog::new(self.notifier);
        let mut running = self.lifecycle.threads;
        loop {
            loop {
                match done.try_recv() {
                    Ok(()) => running -= 1,
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            if running == 0 {
                return;
            }
            let now = Instant::now();
            if deadline.is_some_and(|at| now >= at) {
                crate::warn!(
                    "--shutdown-timeout of {:?} reached; cutting {} open connections",
                    self.lifecycle.shutdown_timeout.unwrap_or_default(),
                    self.limiter.open()
                );
                break;
            }
            // Keep the watchdog fed while connections finish; look at the workers often,
            // since they report on a channel sigtimedwait cannot wait on.
            let mut wait = watchdog.feed().min(DRAIN_POLL);
            if let Some(at) = deadline {
                wait = wait.min(at - now);
            }
            match wait_signal(self.signals, wait) {
                Some(signal) if is_stop(signal) => {
                    crate::warn!(
                        "received {} again; cutting {} open connections",
                        signal_name(signal),
                        self.limiter.open()
                    );
                    break;
                }
                Some(signal) => note_ignored(signal),
                None => {}
            }
        }
        reset_open_connections();
    }
}

/// Gives memory back once a burst of connections has ended, or gone quiet. glibc's malloc
/// keeps what freed connections held in each worker's arena, fragmented, so a host would
/// otherwise keep the memory of its busiest minute for good: 5,000 idle connections left
/// 62 MB of a 4 MB process behind (perf/results/idle-memory-2026-12-08.md).
#[derive(Default)]
struct MemoryReturn {
    /// The most connections open since memory was last given back.
    peak: usize,
    /// The count a second ago.
    last: usize,
    /// Connections that gave up their receive buffers since memory was last given back.
    quieted: usize,
    /// The limiter's count of those when last looked at.
    quieted_seen: u64,
}

/// Connections that must have closed since the peak before memory is given back: a few
/// MiB worth, so a steady churn never trims and a burst's end always does.
const RETURN_AFTER_CLOSES: usize = 512;

impl MemoryReturn {
    /// Called about once a second with the most connections open at once since the last
    /// call, those open now, and how many went quiet since start (gave up their receive
    /// buffers).
    /// Gives memory back once enough closed or went quiet and both stopped: trimming
    /// while connections still close would miss what their tasks free afterwards.
    fn after_closes(&mut self, peak: usize, open: usize, quieted_total: u64) {
        let quieted = (quieted_total - self.quieted_seen) as usize;
        self.quieted_seen = quieted_total;
        self.peak = self.peak.max(peak);
        let settled = open >= self.last && quieted == 0;
        self.last = open;
        self.quieted += quieted;
        if self.peak - open + self.quieted >= RETURN_AFTER_CLOSES && settled {
            let returned = crate::sys::return_free_memory();
            crate::debug!(
                "{} connections closed since the peak of {} and {} went quiet; free memory \
                 given back: {returned}",
                self.peak - open,
                self.peak,
                self.quieted
            );
            self.peak = open;
            self.quieted = 0;
        }
    }
}

/// How often the supervisor looks whether the workers finished draining.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Shortest watchdog interval kept: a `WatchdogSec=` that short cannot be served
/// anyway, and pinging faster would only spin.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(10);

/// Pings the service manager's watchdog at half its `WatchdogSec=`.
struct Watchdog<'a> {
    notifier: &'a Notifier,
    interval: Option<Duration>,
    next: Option<Instant>,
}

impl<'a> Watchdog<'a> {
    fn new(notifier: &'a Notifier) -> Watchdog<'a> {
        let interval = notifier
            .watchdog_interval()
            .map(|i| i.max(MIN_PING_INTERVAL));
        Watchdog {
            notifier,
            interval,
            next: interval.map(|i| Instant::now() + i),
        }
    }

    /// Pings if it is time; returns how long until the next ping.
    fn feed(&mut self) -> Duration {
        let (Some(interval), Some(next)) = (self.interval, self.next) else {
            return Duration::MAX;
        };
        if Instant::now() >= next {
            self.notifier.send("WATCHDOG=1");
            // From after the send, which may have waited for room in the manager's queue.
            self.next = Some(Instant::now() + interval);
            return interval;
        }
        next - Instant::now()
    }
}

/// Reports a worker thread's end to the supervisor when dropped.
pub struct Finished(pub mpsc::Sender<()>);

impl Drop for Finished {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Makes every connected TCP socket of the process close with RST, just before exit
/// closes them all: a client cut off by the shutdown timeout must not mistake the end
/// of a truncated stream for a complete one. Walks /proc/self/fd because the sockets
/// belong to the workers' tasks; listening sockets, datagram sockets and other files
/// are left as they are.
fn reset_open_connections() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let connected_stream = getsockopt_int(fd, libc::SO_TYPE).ok() == Some(libc::SOCK_STREAM)
            && getsockopt_int(fd, libc::SO_ACCEPTCONN).ok() == Some(0);
        if connected_stream {
            // On an fd closed or reused meanwhile this fails, or touches a socket that
            // exit closes anyway.
            reset_on_close(fd);
        }
    }
}
