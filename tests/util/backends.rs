//! Backends for the proxy to forward to: echo, reply after EOF, on TCP, a Unix path or an
//! abstract name; one thread per connection, counting what they accepted.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// Backend that echoes every byte and half-closes when the client does; one thread per
/// connection. Counts connections.
pub struct EchoBackend {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl EchoBackend {
    pub fn unix() -> EchoBackend {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("echo.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                std::thread::spawn(move || echo(conn));
            }
        });
        EchoBackend { path, _dir: dir }
    }
}

pub fn echo(conn: UnixStream) {
    serve(conn, Reply::Echo);
}

/// What a [`Backend`] does with each connection.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    /// Echo every byte as it arrives; half-close after the client did.
    Echo,
    /// Read to EOF first, then send everything back and close: the request/response
    /// shape that needs half-close kept end to end.
    AfterEof,
}

/// A backend on a Unix path, an abstract name or TCP; one thread per connection.
/// Counts the connections it accepted, which is how tests see what ringsock forwarded.
pub struct Backend {
    /// The TARGET argument that reaches it.
    pub target: String,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    wake: Wake,
    _dir: Option<tempfile::TempDir>,
}

enum Wake {
    Tcp(SocketAddr),
    Unix(std::os::unix::net::SocketAddr),
}

pub(super) static BACKEND_SEQ: AtomicUsize = AtomicUsize::new(0);

impl Backend {
    pub fn unix(reply: Reply) -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = Backend::unix_at(&dir.path().join("backend.sock"), reply);
        backend._dir = Some(dir);
        backend
    }

    /// At a given path, for a target that comes up after ringsock started.
    pub fn unix_at(path: &Path, reply: Reply) -> Backend {
        let listener = UnixListener::bind(path).expect("bind backend");
        let wake = Wake::Unix(std::os::unix::net::SocketAddr::from_pathname(path).unwrap());
        Backend::run_unix(listener, path.to_str().unwrap().to_string(), wake, reply)
    }

    /// In the abstract namespace, named uniquely per process and backend.
    pub fn abstract_name(reply: Reply) -> Backend {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "ringsock-test-{}-{}",
            std::process::id(),
            BACKEND_SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixListener::bind_addr(&addr).expect("bind abstract backend");
        Backend::run_unix(listener, format!("@{name}"), Wake::Unix(addr), reply)
    }

    /// `bind` is `127.0.0.1:0` or `[::1]:0`; the target is the bound address.
    pub fn tcp(bind: &str, reply: Reply) -> Backend {
        Backend::tcp_on(TcpListener::bind(bind).expect("bind tcp backend"), reply)
    }

    /// On a listener the test made, e.g. from [`ClosedPort::open`].
    pub fn tcp_on(listener: TcpListener, reply: Reply) -> Backend {
        let addr = listener.local_addr().unwrap();
        let incoming = std::iter::from_fn(move || Some(listener.accept().map(|(c, _)| c)));
        Backend::run(incoming, addr.to_string(), Wake::Tcp(addr), reply)
    }

    fn run_unix(listener: UnixListener, target: String, wake: Wake, reply: Reply) -> Backend {
        let incoming = std::iter::from_fn(move || Some(listener.accept().map(|(c, _)| c)));
        Backend::run(incoming, target, wake, reply)
    }

    fn run<C: Conn>(
        incoming: impl Iterator<Item = std::io::Result<C>> + Send + 'static,
        target: String,
        wake: Wake,
        reply: Reply,
    ) -> Backend {
        let (accepted, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (a, s) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || accept_all(incoming, &a, &s, reply));
        Backend {
            target,
            accepted,
            stop,
            wake,
            _dir: None,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until `n` connections were accepted.
    pub fn wait_accepted(&self, n: usize, timeout: Duration) {
        wait_until(
            timeout,
            || (self.accepted() >= n).then_some(()),
            || format!("backend accepted {} of {n} connections", self.accepted()),
        )
    }
}

/// Serves every connection on a thread of its own, counting them, until `stop` is set.
fn accept_all<C: Conn>(
    incoming: impl Iterator<Item = std::io::Result<C>>,
    accepted: &AtomicUsize,
    stop: &AtomicBool,
    reply: Reply,
) {
    for conn in incoming {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        accepted.fetch_add(1, Ordering::SeqCst);
        std::thread::spawn(move || serve(conn, reply));
    }
}

impl Drop for Backend {
    /// Stops the accept thread: set the flag, then wake its accept(2) with a connection.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = match &self.wake {
            Wake::Tcp(addr) => TcpStream::connect(addr).map(drop),
            Wake::Unix(addr) => UnixStream::connect_addr(addr).map(drop),
        };
    }
}

fn serve<C: Conn>(mut conn: C, reply: Reply) {
    match reply {
        Reply::Echo => {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        Reply::AfterEof => {
            let mut got = Vec::new();
            if conn.read_to_end(&mut got).is_err() || conn.write_all(&got).is_err() {
                return;
            }
        }
    }
    let _ = conn.shutdown_write();
}
