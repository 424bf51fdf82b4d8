//! Client sockets and ports: connecting, accepting within a time, queues and resets,
//! ports that are held or closed on purpose.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::poll_every;

/// Connects with retries (the listener may be in another process's backlog handling).
pub fn connect_tcp(addr: SocketAddr) -> TcpStream {
    with_timeouts(TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect"))
}

/// 30 s read and write timeouts, so a test that would hang fails instead.
fn with_timeouts<C: Conn>(conn: C) -> C {
    let timeout = Some(Duration::from_secs(30));
    conn.set_read_timeout_to(timeout).unwrap();
    conn.set_write_timeout_to(timeout).unwrap();
    conn
}

/// Whether this process may give a child a mount namespace of its own (root, or
/// CAP_SYS_ADMIN), which [`Spawn::hosts`] needs.
pub fn can_make_mount_namespace() -> bool {
    Command::new("unshare")
        .args(["--mount", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// An unused TCP port on `ip` (`127.0.0.1`, `::1`) for programs that bind by number
/// (systemd-socket-activate, --listen). Another process could take it in between, but
/// nothing else on a test machine binds random loopback ports.
pub fn free_port(ip: &str) -> u16 {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reserves a loopback TCP port for a program the test starts: bound with SO_REUSEADDR
/// and not listening, so no outgoing connection is handed it as its local port, while
/// ringsock's --listen and systemd-socket-activate, which set SO_REUSEADDR too, can still
/// bind and listen on it. Unlike free_port() nothing can take it in between.
pub struct PortHold {
    _socket: socket2::Socket,
    pub addr: SocketAddr,
}

impl PortHold {
    /// `ip` is `127.0.0.1` or `::1`.
    pub fn new(ip: &str) -> PortHold {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let addr = SocketAddr::new(ip, 0);
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.bind(&addr.into()).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        PortHold {
            _socket: socket,
            addr,
        }
    }
}

/// A TCP port that refuses connections (bound, not listening) until [`ClosedPort::open`]:
/// a target that is down and comes back on the same port, with no other process able
/// to take the port in between.
pub struct ClosedPort {
    socket: socket2::Socket,
    pub addr: SocketAddr,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        ClosedPort { socket, addr }
    }

    pub fn open(self) -> TcpListener {
        self.socket.listen(128).unwrap();
        self.socket.into()
    }
}

/// Connections waiting in the accept queue of the IPv4 TCP listener on `addr`, from
/// /proc/net/tcp (rx_queue of a LISTEN socket is its accept backlog).
pub fn accept_queue(addr: SocketAddr) -> Option<usize> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) || fields.get(3) != Some(&"0A") {
            return None;
        }
        let rx = fields.get(4)?.split(':').nth(1)?;
        usize::from_str_radix(rx, 16).ok()
    })
}

/// accept(2) with a deadline, so a test whose connection never arrives fails instead of
/// hanging.
pub fn accept_within(listener: &TcpListener, timeout: Duration) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let stream = poll_every(Duration::from_millis(5), timeout, || {
        match listener.accept() {
            Ok((stream, _)) => Some(stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("accept: {e}"),
        }
    })
    .unwrap_or_else(|| panic!("no connection within {timeout:?}"));
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// A connected stream the helpers drive from two threads (writer and reader).
pub trait Conn: Read + Write + Send + Sized + 'static {
    fn clone_conn(&self) -> std::io::Result<Self>;
    fn shutdown_write(&self) -> std::io::Result<()>;
    fn set_read_timeout_to(&self, timeout: Option<Duration>) -> std::io::Result<()>;
    fn set_write_timeout_to(&self, timeout: Option<Duration>) -> std::io::Result<()>;
}

/// Both stream types have these methods under the same names; the trait lets helpers
/// take either.
macro_rules! impl_conn {
    ($($stream:ty),*) => {$(
        impl Conn for $stream {
            fn clone_conn(&self) -> std::io::Result<Self> {
                self.try_clone()
            }
            fn shutdown_write(&self) -> std::io::Result<()> {
                self.shutdown(std::net::Shutdown::Write)
            }
            fn set_read_timeout_to(&self, timeout: Option<Duration>) -> std::io::Result<()> {
                self.set_read_timeout(timeout)
            }
            fn set_write_timeout_to(&self, timeout: Option<Duration>) -> std::io::Result<()> {
                self.set_write_timeout(timeout)
            }
        }
    )*};
}

impl_conn!(TcpStream, UnixStream);

pub fn connect_unix(path: &Path) -> UnixStream {
    with_timeouts(UnixStream::connect(path).expect("connect unix"))
}

/// Connects and expects to be reset without a byte: either the read gets ECONNRESET,
/// or the RST already arrived while connect(2) was returning, which then reports it.
pub fn expect_reset(addr: SocketAddr) -> Result<(), String> {
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
        Err(e) => return Err(format!("connect failed: {e}")),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        other => Err(format!("expected a reset, got {other:?}")),
    }
}

/// SO_RCVBUF: a small one makes a peer's window fill fast, to leave a writer waiting.
pub fn set_receive_buffer(stream: &TcpStream, bytes: libc::c_int) {
    // SAFETY: a valid int option on an open socket.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Raises this test process's soft RLIMIT_NOFILE to at least `want` (within the hard
/// limit), for tests that hold thousands of connections.
pub fn raise_own_fd_limit(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit to fill, then to pass back.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(
        limit.rlim_cur >= want,
        "this test needs {want} open files; the hard limit is {}",
        limit.rlim_max
    );
}
