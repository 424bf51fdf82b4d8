//! The accept loop every worker runs on every listener.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::{TcpListener, UnixListener};

use super::limit::{Limiter, Permit};
use super::{Handler, Worker};
use crate::log::RateLimit;
use crate::net::Stream;
use crate::systemd::activation::{Family, Listener};

/// A listening socket as every worker accepts on it: the limiter its connections take
/// permits from, and the handler's plan for them, both fixed at start.
pub struct Entrance<P> {
    pub listener: Listener,
    pub limiter: Arc<Limiter>,
    pub plan: P,
}

/// This worker's clone of one listening socket.
pub struct WorkerListener<P> {
    inner: Inner,
    family: Family,
    address: String,
    limiter: Arc<Limiter>,
    plan: Rc<P>,
}

enum Inner {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl<P: Clone> WorkerListener<P> {
    /// Registers a duplicate of the listener with the current thread's runtime. Every
    /// worker owning its own fd lets the kernel spread connections across them.
    pub fn new(entrance: &Entrance<P>) -> io::Result<WorkerListener<P>> {
        let listener = &entrance.listener;
        let fd = listener.fd.try_clone()?;
        let inner = match listener.family {
            Family::Tcp => Inner::Tcp(TcpListener::from_std(std::net::TcpListener::from(fd))?),
            Family::Unix => Inner::Unix(UnixListener::from_std(
                std::os::unix::net::UnixListener::from(fd),
            )?),
        };
        Ok(WorkerListener {
            inner,
            family: listener.family,
            address: listener.address.clone(),
            limiter: entrance.limiter.clone(),
            plan: Rc::new(entrance.plan.clone()),
        })
    }
}

impl<P> WorkerListener<P> {
    async fn readable(&self) -> io::Result<()> {
        match &self.inner {
            Inner::Tcp(l) => l.readable(false).await,
            Inner::Unix(l) => l.readable(false).await,
        }
    }

    /// Non-blocking accept4(2). The runtime's accept op is avoided on purpose: cancelling
    /// one in flight can leak the accepted fd in monoio 0.2.4, and we must be able to stop
    /// waiting (limit reached, shutdown) at any time.
    fn try_accept(&self) -> io::Result<OwnedFd> {
        let fd = match &self.inner {
            Inner::Tcp(l) => l.as_raw_fd(),
            Inner::Unix(l) => l.as_raw_fd(),
        };
        // SAFETY: null address pointers are allowed; flags are valid.
        let rc = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        let conn = crate::sys::cvt(rc)?;
        // SAFETY: accept4 returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(conn) })
    }
}

static ACCEPT_ERRORS: RateLimit = RateLimit::new(Duration::from_secs(5));

/// Errors after which the listener still works: resource exhaustion and connections
/// that died in the backlog. Anything else (EBADF, EINVAL) means the socket is broken.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EPROTO
                | libc::EPERM
                | libc::EINTR
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

/// Accepts on `listener` until shutdown, each connection admitted by the listener's
/// own limiter: `--connections-max`'s, or a side door's.
pub async fn accept_loop<H: Handler>(
    listener: WorkerListener<H::Plan>,
    worker: Rc<Worker>,
    handler: Rc<H>,
) {
    let mut backoff = Duration::ZERO;
    loop {
        // Wait for a pending connection first and take a permit only then: a permit held
        // while idle on one listener would starve clients waiting on another.
        monoio::select! {
            _ = worker.stopping() => return,
            ready = listener.readable() => if let Err(e) = ready {
                crate::error!("failed to wait on listener {}: {e}; no longer accepting there", listener.address);
                return;
            },
        }
        // Drain the backlog while permits last, without polling again in between.
        loop {
            let permit = match listener.limiter.try_acquire() {
                Some(permit) => permit,
                None => monoio::select! {
                    _ = worker.stopping() => return,
                    permit = listener.limiter.acquire() => permit,
                },
            };
            // select! picks a ready branch at random, and the per-worker notification
            // may not have run yet: without this, connections arriving after SIGTERM
            // were still accepted.
            if worker.is_stopping() {
                return;
            }
            match accept_one(&listener, &worker, &handler, permit, &mut backoff) {
                Accepted::Next => {}
                Accepted::Drained => break,
                Accepted::BackOff => {
                    monoio::select! {
                        _ = worker.stopping() => return,
                        _ = monoio::time::sleep(backoff) => {},
                    }
                    break;
                }
                Accepted::Broken => return,
            }
        }
    }
}

/// What one accept(2) left the loop to do.
enum Accepted {
    /// Took a connection (or dropped one that could not be set up): accept the next.
    Next,
    /// The backlog is empty: wait for readiness.
    Drained,
    /// Out of fds or memory: wait `backoff` before trying again.
    BackOff,
    /// The listener is broken: stop accepting on it.
    Broken,
}

/// Accepts one connection and spawns its handler, which holds `permit` till it ends.
fn accept_one<H: Handler>(
    listener: &WorkerListener<H::Plan>,
    worker: &Rc<Worker>,
    handler: &Rc<H>,
    permit: Permit,
    backoff: &mut Duration,
) -> Accepted {
    match listener.try_accept() {
        Ok(fd) => {
            *backoff = Duration::ZERO;
            // A connection that cannot be set up (registered with the runtime) is
            // dropped; the listener is fine.
            let stream = match Stream::from_fd(fd, listener.family) {
                Ok(stream) => stream,
                Err(e) => {
                    crate::warn_limited!(
                        ACCEPT_ERRORS,
                        "failed to set up a connection accepted on {}: {e}",
                        listener.address
                    );
                    return Accepted::Next;
                }
            };
            listener.limiter.note_accepted();
            let handler = handler.clone();
            let admitted = worker.admit(permit);
            let plan = listener.plan.clone();
            monoio::spawn(async move {
                let _admitted = admitted;
                handler.handle(stream, plan).await;
            });
            Accepted::Next
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Accepted::Drained,
        Err(e) if is_transient(&e) => {
            // Out of fds or memory: accepting again at once would spin. Back off 10 ms
            // doubling to 1 s, keep serving the connections we have.
            *backoff = (*backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
            crate::warn_limited!(
                ACCEPT_ERRORS,
                "failed to accept on {}: {e}; retrying in {backoff:?}{}",
                listener.address,
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    " (raise LimitNOFILE= or lower --connections-max)"
                } else {
                    ""
                }
            );
            Accepted::BackOff
        }
        Err(e) => {
            crate::error!(
                "failed to accept on {}: {e}; no longer accepting there",
                listener.address
            );
            Accepted::Broken
        }
    }
}
