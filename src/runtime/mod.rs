//! Thread-per-core workers and the supervisor that starts, watches and stops them.
//!
//! Each worker thread owns one monoio runtime (io_uring, or epoll when io_uring is
//! unavailable), its own clone of every listening fd, and the connections it accepted;
//! nothing on the data path is shared between threads. The main thread becomes the
//! supervisor: it handles signals, sd_notify, the watchdog and `--exit-idle-time`.

mod accept;
pub mod blocking;
pub mod buffers;
pub mod limit;
pub mod park;
mod ring;
pub mod shutdown;
mod signals;
mod supervisor;
mod worker;

use std::future::Future;
use std::io;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use crate::net::Stream;
use crate::systemd::activation::Listener;
use crate::systemd::notify::Notifier;
use accept::Entrance;
use blocking::BlockingPool;
pub use limit::ConnectionsMax;
use limit::Limiter;
use shutdown::Shutdown;
use supervisor::{Finished, Supervisor};
pub use worker::Worker;

/// What a subcommand does with each accepted connection. One instance per worker.
pub trait Handler: 'static {
    /// What the subcommand decided at start about one listener's connections (where
    /// they go, what they are for), so nothing is looked up by name per connection.
    type Plan: Clone + Send + Sync + 'static;

    /// `plan`: the plan of the listener it arrived on.
    /// Bytes per buffer of each worker's receive pool (`Stream::recv_provided`): the most
    /// one receive returns.
    const RECV_BUFFER: usize;

    fn handle(self: Rc<Self>, stream: Stream, plan: Rc<Self::Plan>) -> impl Future<Output = ()>;
}

/// A listening socket as the workers run it, all decided at start: how its connections
/// are admitted, and the handler's plan for them.
pub struct Planned<P> {
    pub listener: Listener,
    pub admission: Admission,
    pub plan: P,
}

/// How a listener's connections are admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The service's own connections: under `--connections-max`, in the accepted and
    /// open counts, and activity for `--exit-idle-time`.
    Counted,
    /// At most this many at once from this listener, with a limit of its own and counted
    /// nowhere else: a side door (metrics) that must answer while the service is full,
    /// and cannot fill it.
    Own(usize),
}

impl<P> Planned<P> {
    /// A listener for the service's own connections.
    pub fn counted(listener: Listener, plan: P) -> Planned<P> {
        Planned {
            listener,
            admission: Admission::Counted,
            plan,
        }
    }
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
    /// `None`: wait for every connection however long it takes.
    pub shutdown_timeout: Option<Duration>,
    /// Most threads for calls that may block (`--io-threads`).
    pub io_threads: usize,
}

/// What one subcommand adds to the shared lifecycle: its sd_notify status, and what
/// SIGUSR1 does for it.
pub struct Service<'a> {
    /// The `STATUS=` line sent with `READY=1`.
    pub status: &'a str,
    /// Reopens its log files (logrotate); without it SIGUSR1 is logged and ignored.
    pub reopen_logs: Option<&'a (dyn Fn() + Sync)>,
    /// Re-reads what may change without a restart (SIGHUP, `systemctl reload`); without
    /// it SIGHUP is logged and ignored.
    pub reload: Option<&'a (dyn Fn() + Sync)>,
    /// A `STATUS=` line to send when it changes, checked at most once a second.
    pub live_status: Option<&'a (dyn Fn(&Limiter) -> String + Sync)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

/// Runs `make_handler`'s handlers on the listeners until a signal or `--exit-idle-time`
/// ends it; returns once open connections drained or `shutdown_timeout` passed.
pub fn run<H, F>(
    listeners: Vec<Planned<H::Plan>>,
    lifecycle: &Lifecycle,
    notifier: &Notifier,
    service: &Service<'_>,
    make_handler: F,
) -> io::Result<()>
where
    H: Handler,
    F: Fn(&Rc<Worker>) -> H + Send + Sync + 'static,
{
    let connections_max = limit::connections_max(
        lifecycle.connections_max,
        limit::raise_fd_limit(),
        lifecycle.fds_per_connection,
    );
    // Blocked here, before any thread starts, so every worker inherits the mask.
    let signals = signals::block_signals()?;
    crate::sys::bound_free_heap_top();
    let shutdown = Arc::new(Shutdown::default());
    let limiter = Limiter::new(connections_max);
    let listeners = Arc::new(entrances(listeners, &limiter));
    let pool = BlockingPool::new(lifecycle.io_threads);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let started = start_workers(
        lifecycle.threads,
        &listeners,
        Arc::new(make_handler),
        &shutdown,
        &limiter,
        &pool,
        &done_tx,
    );
    drop(done_tx);
    let driver = match started {
        Ok(driver) => driver,
        Err(e) => {
            shutdown.trigger();
            return Err(e);
        }
    };
    ring::log_driver(driver, lifecycle.threads);
    for entrance in listeners.iter() {
        let listener = &entrance.listener;
        crate::info!("listening on {} ({})", listener.address, listener.name);
    }
    notifier.send(&format!("READY=1\nSTATUS={}", service.status));

    let supervisor = Supervisor {
        lifecycle,
        notifier,
        limiter: &limiter,
        signals: &signals,
        reopen_logs: service.reopen_logs,
        reload: service.reload,
        live_status: service.live_status,
    };
    let reason = supervisor.wait_for_stop(&done_rx)?;
    shut_down(&reason, &shutdown, listeners, &limiter, notifier);
    supervisor.drain(&done_rx);
    Ok(())
}

/// Each listener with the limiter its admission takes permits from: `limiter` for the
/// counted ones, a new one of its own for each side door.
fn entrances<P>(listeners: Vec<Planned<P>>, limiter: &Arc<Limiter>) -> Vec<Entrance<P>> {
    listeners
        .into_iter()
        .map(|planned| Entrance {
            limiter: match planned.admission {
                Admission::Counted => limiter.clone(),
                Admission::Own(max) => Limiter::new(max),
            },
            listener: planned.listener,
            plan: planned.plan,
        })
        .collect()
}

/// Stops accepting and says so; the drain that follows is the supervisor's.
fn shut_down<P>(
    reason: &str,
    shutdown: &Shutdown,
    listeners: Arc<Vec<Entrance<P>>>,
    limiter: &Limiter,
    notifier: &Notifier,
) {
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
}

/// Starts `threads` workers and waits until each accepts; returns the driver they run.
fn start_workers<H, F>(
    threads: usize,
    listeners: &Arc<Vec<Entrance<H::Plan>>>,
    make_handler: Arc<F>,
    shutdown: &Arc<Shutdown>,
    limiter: &Arc<Limiter>,
    pool: &Arc<BlockingPool>,
    done: &mpsc::Sender<()>,
) -> io::Result<Option<Driver>>
where
    H: Handler,
    F: Fn(&Rc<Worker>) -> H + Send + Sync + 'static,
{
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<Driver>>();
    for index in 0..threads {
        worker::spawn(worker::Start {
            index,
            listeners: listeners.clone(),
            make_handler: make_handler.clone(),
            shutdown: shutdown.clone(),
            limiter: limiter.clone(),
            pool: pool.clone(),
            ready: ready_tx.clone(),
            finished: Finished(done.clone()),
        })?;
    }
    drop(ready_tx);
    let mut driver = None;
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(d)) => driver = Some(d),
            Ok(Err(e)) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("failed to start a worker: {e}"),
                ))
            }
            Err(_) => return Err(io::Error::other("a worker thread died while starting")),
        }
    }
    Ok(driver)
}
