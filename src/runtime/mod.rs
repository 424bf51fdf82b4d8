//! Thread-per-core workers and the supervisor that starts, watches and stops them.
//!
//! Each worker thread owns one monoio runtime (io_uring, or epoll when io_uring is
//! unavailable), its own clone of every listening fd, and the connections it accepted;
//! nothing on the data path is shared between threads. The main thread becomes the
//! supervisor: it handles signals, sd_notify, the watchdog and `--exit-idle-time`.

mod accept;
pub mod limit;
pub use limit::ConnectionsMax;
pub mod shutdown;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::time::TimeDriver;
use monoio::{FusionDriver, FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::activation::Listener;
use crate::net::{getsockopt_int, reset_on_close, Stream};
use crate::notify::Notifier;
use accept::{accept_loop, WorkerListener};
use limit::Limiter;
use shutdown::{LocalShutdown, Shutdown};

/// What a subcommand does with each accepted connection. One instance per worker.
pub trait Handler: 'static {
    fn handle(self: Rc<Self>, stream: Stream) -> impl Future<Output = ()>;
}

/// Settings shared by every subcommand: how many workers, how many connections, when to stop.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    pub threads: usize,
    pub connections_max: ConnectionsMax,
    /// Open files one connection may hold, to fit the default limit in the fd limit.
    pub fds_per_connection: usize,
    /// `None`: never exit for idleness.
    pub exit_idle_time: Option<Duration>,
    pub shutdown_timeout: Duration,
}

/// Per-worker state handed to handlers.
pub struct Worker {
    pub index: usize,
    pub shutdown: Rc<LocalShutdown>,
    pub limiter: Arc<Limiter>,
    /// The process-wide trigger, set before `shutdown` hears of it on this thread.
    stopping: Arc<Shutdown>,
    open: Cell<usize>,
    drained: RefCell<Option<Waker>>,
}

/// Counts a connection as open on its worker until dropped.
struct Tracker(Rc<Worker>);

impl Worker {
    /// Whether shutdown began anywhere: read before every accept, so no connection is
    /// taken after SIGTERM even when this worker's own notification is still queued
    /// (the process-wide flag is always set first).
    fn is_stopping(&self) -> bool {
        self.stopping.is_triggered()
    }

    fn track(self: &Rc<Self>) -> Tracker {
        self.open.set(self.open.get() + 1);
        Tracker(self.clone())
    }

    /// Resolves when this worker has no open connection left.
    async fn drained(&self) {
        std::future::poll_fn(|cx| {
            if self.open.get() == 0 {
                Poll::Ready(())
            } else {
                *self.drained.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let open = self.0.open.get() - 1;
        self.0.open.set(open);
        if open == 0 {
            if let Some(waker) = self.0.drained.borrow_mut().take() {
                waker.wake();
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

/// io_uring submission queue size per worker. Each open connection has at most a couple
/// of polls in flight; monoio grows its completion handling past this, so it bounds
/// batching, not connections.
const RING_ENTRIES: u32 = 4096;

/// Runs `make_handler`'s handlers on the listeners until a signal or `--exit-idle-time`
/// ends it; returns once open connections drained or `shutdown_timeout` passed.
pub fn run<H, F>(
    listeners: Vec<Listener>,
    lifecycle: &Lifecycle,
    notifier: &Notifier,
    status: &str,
    make_handler: F,
) -> io::Result<()>
where
    H: Handler,
    F: Fn(&Rc<Worker>) -> H + Send + Sync + 'static,
{
    let fd_limit = raise_fd_limit();
    let connections_max = limit::connections_max(
        lifecycle.connections_max,
        fd_limit,
        lifecycle.fds_per_connection,
    );
    // Blocked here, before any thread starts, so every worker inherits the mask and the
    // signals wait for the supervisor's sigtimedwait instead of killing the process.
    let signals = block_signals()?;

    let listeners = Arc::new(listeners);
    let make_handler = Arc::new(make_handler);
    let shutdown = Arc::new(Shutdown::default());
    let limiter = Limiter::new(connections_max);
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<Driver>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();

    for index in 0..lifecycle.threads {
        let (listeners, make_handler, shutdown, limiter) = (
            listeners.clone(),
            make_handler.clone(),
            shutdown.clone(),
            limiter.clone(),
        );
        let ready_tx = ready_tx.clone();
        let finished = Finished(done_tx.clone());
        std::thread::Builder::new()
            .name(format!("ringsock-w{index}"))
            .spawn(move || {
                // Reports the end of this thread however it ends, a panic included.
                let _finished = finished;
                let mut runtime = match build_runtime() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let driver = match &runtime {
                    FusionRuntime::Uring(_) => Driver::IoUring,
                    FusionRuntime::Legacy(_) => Driver::Epoll,
                };
                runtime.block_on(async move {
                    let worker = Rc::new(Worker {
                        index,
                        shutdown: Rc::new(LocalShutdown::default()),
                        limiter,
                        stopping: shutdown.clone(),
                        open: Cell::new(0),
                        drained: RefCell::new(None),
                    });
                    let worker_listeners: io::Result<Vec<WorkerListener>> =
                        listeners.iter().map(WorkerListener::new).collect();
                    let worker_listeners = match worker_listeners {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let handler = Rc::new(make_handler(&worker));
                    drop(listeners);
                    let _ = ready_tx.send(Ok(driver));

                    let local = worker.shutdown.clone();
                    monoio::spawn(async move {
                        shutdown.wait().await;
                        local.trigger();
                    });
                    let accepting: Vec<_> = worker_listeners
                        .into_iter()
                        .map(|l| monoio::spawn(accept_loop(l, worker.clone(), handler.clone())))
                        .collect();
                    worker.shutdown.wait().await;
                    // Let the accept loops finish while the runtime still turns: that
                    // cancels their io_uring polls, which hold references to the listening
                    // sockets. Left to the kernel's asynchronous ring teardown at exit,
                    // they kept a --listen address bound ~10 ms after the process was
                    // gone, so an immediate restart failed with EADDRINUSE.
                    for task in accepting {
                        task.await;
                    }
                    // With DEFER_TASKRUN the cancelled polls are only reaped when the
                    // worker next waits on the ring: wait once, briefly, so it happens
                    // here and not in the kernel's teardown after exit.
                    monoio::time::sleep(Duration::from_millis(1)).await;
                    worker.drained().await;
                });
                // Likewise submit whatever is still queued in the ring before the main
                // thread may exit.
                drop(runtime);
            })?;
    }
    drop((ready_tx, done_tx));

    let mut driver = None;
    for _ in 0..lifecycle.threads {
        match ready_rx.recv() {
            Ok(Ok(d)) => driver = Some(d),
            Ok(Err(e)) => {
                shutdown.trigger();
                return Err(io::Error::new(
                    e.kind(),
                    format!("failed to start a worker: {e}"),
                ));
            }
            Err(_) => {
                shutdown.trigger();
                return Err(io::Error::other("a worker thread died while starting"));
            }
        }
    }
    log_driver(driver, lifecycle.threads);
    for listener in listeners.iter() {
        crate::info!("listening on {} ({})", listener.address, listener.name);
    }
    notifier.send(&format!("READY=1\nSTATUS={status}"));

    let supervisor = Supervisor {
        lifecycle,
        notifier,
        limiter: &limiter,
        signals: &signals,
    };
    let reason = supervisor.wait_for_stop(&done_rx)?;
    // Stop accepting first: once the log says we are shutting down, no new connection
    // may be taken (it would hold the drain for up to --shutdown-timeout).
    shutdown.trigger();
    // And close our listening sockets (the workers close their copies as they stop
    // accepting): a client of a --listen address is refused at once instead of waiting
    // in a backlog nobody will take it from. Activated sockets stay open in the
    // service manager, which queues new clients for the next start.
    drop(listeners);
    crate::info!(
        "{reason}; shutting down with {} connections open",
        limiter.open()
    );
    notifier.send(&format!("STOPPING=1\nSTATUS=Shutting down: {reason}"));
    supervisor.drain(&done_rx);
    Ok(())
}

struct Supervisor<'a> {
    lifecycle: &'a Lifecycle,
    notifier: &'a Notifier,
    limiter: &'a Limiter,
    signals: &'a libc::sigset_t,
}

impl Supervisor<'_> {
    /// Sleeps in sigtimedwait, waking for watchdog pings and idle checks; returns why to stop.
    fn wait_for_stop(&self, done: &mpsc::Receiver<()>) -> io::Result<String> {
        let mut watchdog = Watchdog::new(self.notifier);
        loop {
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
                note_ignored(signal);
            }
        }
    }

    /// Waits for the workers to finish their connections, up to `--shutdown-timeout` or
    /// a second SIGTERM/SIGINT; then whatever is still open is cut.
    fn drain(&self, done: &mpsc::Receiver<()>) {
        let deadline = Instant::now().checked_add(self.lifecycle.shutdown_timeout);
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
                    self.lifecycle.shutdown_timeout,
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
struct Finished(mpsc::Sender<()>);

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

type WorkerRuntime = FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// Builds this thread's runtime: io_uring with the cheapest completion delivery the
/// kernel offers, else io_uring as is, else epoll (monoio's own fallback).
///
/// By default the kernel runs a ring's completion work (task_work) by interrupting
/// the thread (an IPI) whenever it arrives. Each worker is the only thread touching its
/// ring, so `SINGLE_ISSUER | DEFER_TASKRUN` (6.1+) lets it run that work in batches
/// when it next waits instead; `COOP_TASKRUN` (5.19+) at least avoids the interrupts.
/// See perf/results for what it is worth.
fn build_runtime() -> io::Result<WorkerRuntime> {
    let builder = || {
        RuntimeBuilder::<FusionDriver>::new()
            .with_entries(RING_ENTRIES)
            .enable_timer()
            .attach_thread_pool(Box::new(ThreadPerBlockingTask))
    };
    let mut deferred = io_uring::IoUring::builder();
    deferred.setup_single_issuer().setup_defer_taskrun();
    let mut cooperative = io_uring::IoUring::builder();
    cooperative.setup_coop_taskrun();
    for flags in [deferred, cooperative] {
        match builder().uring_builder(flags).build() {
            Ok(runtime) => return Ok(runtime),
            Err(e) => crate::debug!("io_uring refused a setup flag ({e}); trying with fewer"),
        }
    }
    builder().build()
}

/// Runs monoio's `spawn_blocking` work (only host-name lookups) on a short-lived thread:
/// rare enough that a standing pool would be idle threads for nothing.
struct ThreadPerBlockingTask;

impl monoio::blocking::ThreadPool for ThreadPerBlockingTask {
    fn schedule_task(&self, task: monoio::blocking::BlockingTask) {
        let _ = std::thread::Builder::new()
            .name("ringsock-blocking".into())
            .spawn(move || task.run());
    }
}

fn log_driver(driver: Option<Driver>, threads: usize) {
    match driver {
        Some(Driver::IoUring) => {
            crate::info!(
                "using the io_uring driver on {threads} worker {}",
                plural(threads)
            )
        }
        _ => crate::warn!(
            "io_uring is unavailable ({}); using the epoll driver on {threads} worker {}",
            why_no_uring(),
            plural(threads)
        ),
    }
}

fn plural(threads: usize) -> &'static str {
    if threads == 1 {
        "thread"
    } else {
        "threads"
    }
}

/// Asks the kernel directly, so the log names the cause (disabled by sysctl, blocked by
/// seccomp, missing) rather than just "not available".
fn why_no_uring() -> String {
    if std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_some() {
        return "MONOIO_FORCE_LEGACY_DRIVER is set".into();
    }
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes a 120-byte io_uring_params struct.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: the fd was just returned to us.
        unsafe { libc::close(fd as libc::c_int) };
        return "the kernel lacks an io_uring operation ringsock needs".into();
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel has no io_uring".into(),
        Some(libc::EPERM) => {
            "io_uring_setup: permission denied; check sysctl kernel.io_uring_disabled \
                               and the unit's SystemCallFilter="
                .into()
        }
        _ => format!("io_uring_setup: {e}"),
    }
}

/// Each connection costs two or three fds; the default soft limit of 1024 would cap us
/// far below `--connections-max`, and systemd's hard limit is high. Returns the soft
/// limit now in force (`None`: unlimited or unknown).
fn raise_fd_limit() -> Option<u64> {
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

/// Signals that begin the graceful shutdown.
const STOP_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];
/// Signals whose default action would end the process at once, dropping every open
/// connection with a clean-looking FIN: taken and logged instead. logrotate sends USR1,
/// `systemctl reload` or a closed terminal HUP.
const IGNORED_SIGNALS: [libc::c_int; 6] = [
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGIO,
];

fn is_stop(signal: libc::c_int) -> bool {
    STOP_SIGNALS.contains(&signal)
}

fn note_ignored(signal: libc::c_int) {
    crate::info!(
        "received {}; ignored (ringsock has nothing to reload: restart it to change its flags)",
        signal_name(signal)
    );
}

fn block_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in STOP_SIGNALS.iter().chain(&IGNORED_SIGNALS) {
            libc::sigaddset(&mut set, *signal);
        }
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
            0 => Ok(set),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<libc::c_int> {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: set was initialised by block_signals; a null siginfo is allowed.
    let signal = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
    (signal > 0).then_some(signal)
}

fn signal_name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGALRM => "SIGALRM",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGIO => "SIGIO",
        _ => "a signal",
    }
}
