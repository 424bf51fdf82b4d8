//! One worker thread: its own runtime, its own copy of every listener, the connections it
//! accepted, and the one guard each of them holds.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::task::{Poll, Waker};
use std::time::Duration;

use monoio::FusionRuntime;

use super::accept::{accept_loop, Entrance, WorkerListener};
use super::blocking::BlockingPool;
use super::buffers::RecvBuffers;
use super::limit::{Limiter, Permit};
use super::park::{Parking, SWEEP_EVERY};
use super::ring::{build_runtime, configure_recv_pool};
use super::shutdown::{LocalShutdown, Shutdown, ShutdownWait};
use super::supervisor::Finished;
use super::{Driver, Handler};

/// Per-worker state handed to handlers.
pub struct Worker {
    pub index: usize,
    /// `--connections-max`'s, which the counts and `--exit-idle-time` read; a side
    /// door's own limit stays with its listener.
    pub limiter: Arc<Limiter>,
    /// Where this worker's blocking calls run.
    pub pool: Arc<BlockingPool>,
    /// The process-wide trigger, always set before `local` hears of it.
    global: Arc<Shutdown>,
    /// The same news on this thread, cheap to wait for from every connection.
    local: Rc<LocalShutdown>,
    open: Cell<usize>,
    drained: RefCell<Option<Waker>>,
    /// Receives waiting on this worker's connections, swept off their buffers when idle.
    pub parking: Parking,
    /// The buffers its busy connections receive into.
    pub buffers: RecvBuffers,
}

/// What every open connection holds until it ends: its share of `--connections-max`
/// and its place in its worker's drain.
pub struct Admitted {
    _permit: Permit,
    worker: Rc<Worker>,
}

impl Worker {
    /// Whether shutdown began: read before every accept, so no connection is taken
    /// after SIGTERM even when this thread's own notification is still queued.
    pub fn is_stopping(&self) -> bool {
        self.global.is_triggered()
    }

    /// Resolves once shutdown began; dropping it unregisters.
    pub fn stopping(&self) -> ShutdownWait {
        self.local.wait()
    }

    /// Counts a connection as open on this worker until the guard is dropped.
    pub fn admit(self: &Rc<Self>, permit: Permit) -> Admitted {
        self.open.set(self.open.get() + 1);
        Admitted {
            _permit: permit,
            worker: self.clone(),
        }
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

impl Drop for Admitted {
    fn drop(&mut self) {
        let open = self.worker.open.get() - 1;
        self.worker.open.set(open);
        if open == 0 {
            if let Some(waker) = self.worker.drained.borrow_mut().take() {
                waker.wake();
            }
        }
    }
}

/// What a worker thread starts from, all shared with the supervisor.
pub struct Start<F, P> {
    pub index: usize,
    pub listeners: Arc<Vec<Entrance<P>>>,
    pub make_handler: Arc<F>,
    pub shutdown: Arc<Shutdown>,
    pub limiter: Arc<Limiter>,
    pub pool: Arc<BlockingPool>,
    /// Told once the worker accepts (with its driver), or why it could not start.
    pub ready: mpsc::Sender<io::Result<Driver>>,
    /// Reports the end of the thread however it ends, a panic included.
    pub finished: Finished,
}

/// Starts worker thread `start.index`.
pub fn spawn<H, F>(start: Start<F, H::Plan>) -> io::Result<()>
where
    H: Handler,
    F: Fn(&Rc<Worker>) -> H + Send + Sync + 'static,
{
    std::thread::Builder::new()
        .name(format!("ringsock-w{}", start.index))
        .spawn(move || run_thread(start))
        .map(drop)
}

fn run_thread<H, F>(start: Start<F, H::Plan>)
where
    H: Handler,
    F: Fn(&Rc<Worker>) -> H + Send + Sync + 'static,
{
    let Start {
        index,
        listeners,
        make_handler,
        shutdown,
        limiter,
        pool,
        ready,
        finished: _finished,
    } = start;
    let mut runtime = match build_runtime(&pool) {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let driver = match &runtime {
        FusionRuntime::Uring(_) => Driver::IoUring,
        FusionRuntime::Legacy(_) => Driver::Epoll,
    };
    runtime.block_on(async move {
        if let Err(e) = configure_recv_pool(H::RECV_BUFFER) {
            let _ = ready.send(Err(e));
            return;
        }
        let worker = Rc::new(Worker {
            index,
            limiter,
            pool,
            global: shutdown.clone(),
            local: Rc::new(LocalShutdown::default()),
            open: Cell::new(0),
            drained: RefCell::new(None),
            parking: Parking::default(),
            buffers: RecvBuffers::new(H::RECV_BUFFER),
        });
        let own_listeners = listeners.iter().map(WorkerListener::new).collect();
        let own_listeners: Vec<WorkerListener<H::Plan>> = match own_listeners {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let handler = Rc::new(make_handler(&worker));
        drop(listeners);
        let _ = ready.send(Ok(driver));
        serve(worker, own_listeners, handler, shutdown).await;
    });
    // Submit whatever is still queued in the ring before the main thread may exit.
    drop(runtime);
}

/// Accepts on every listener until shutdown, then waits for this worker's connections.
async fn serve<H: Handler>(
    worker: Rc<Worker>,
    listeners: Vec<WorkerListener<H::Plan>>,
    handler: Rc<H>,
    shutdown: Arc<Shutdown>,
) {
    let local = worker.local.clone();
    monoio::spawn(async move {
        shutdown.wait().await;
        local.trigger();
    });
    monoio::spawn(sweep_parked(Rc::downgrade(&worker)));
    let accepting: Vec<_> = listeners
        .into_iter()
        .map(|l| monoio::spawn(accept_loop(l, worker.clone(), handler.clone())))
        .collect();
    worker.stopping().await;
    // Let the accept loops finish while the runtime still turns: that cancels their
    // io_uring polls, which hold references to the listening sockets. Left to the
    // kernel's asynchronous ring teardown at exit, they kept a --listen address bound
    // ~10 ms after the process was gone, so an immediate restart failed with EADDRINUSE.
    for task in accepting {
        task.await;
    }
    // With DEFER_TASKRUN the cancelled polls are only reaped when the worker next waits
    // on the ring: wait once, briefly, so it happens here and not in the kernel's
    // teardown after exit.
    monoio::time::sleep(Duration::from_millis(1)).await;
    worker.drained().await;
}

/// Moves the receives of this worker's quiet connections off their buffers, every
/// [`SWEEP_EVERY`], for as long as the worker lives.
async fn sweep_parked(worker: std::rc::Weak<Worker>) {
    loop {
        monoio::time::sleep(SWEEP_EVERY).await;
        match worker.upgrade() {
            Some(worker) => worker.limiter.note_quieted(worker.parking.sweep()),
            None => return,
        }
    }
}
