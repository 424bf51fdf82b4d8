//! Runs the built binary the way systemd would: listening sockets at fds 3.. with
//! LISTEN_FDS/LISTEN_PID (or through `systemd-socket-activate`), stderr captured.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ringsock");

/// What the test process may have inherited from a service manager and must not leak
/// into a ringsock it starts: the activation and notify protocol variables.
pub const MANAGER_ENV: [&str; 5] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "JOURNAL_STREAM",
];

/// Starts `cmd` with none of [`MANAGER_ENV`]; callers then set what the test needs.
pub fn without_manager_env(cmd: &mut Command) -> &mut Command {
    for var in MANAGER_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Both runtime drivers: every behaviour test runs once per driver.
#[derive(Clone, Copy, Debug)]
pub enum Driver {
    IoUring,
    Epoll,
}

pub const DRIVERS: [Driver; 2] = [Driver::IoUring, Driver::Epoll];

/// A listening socket to pass in.
pub enum Listen {
    Tcp(TcpListener),
    Unix(UnixListener),
    /// Any fd, to test the errors for things that are not listening stream sockets.
    Raw(OwnedFd),
}

impl Listen {
    pub fn tcp() -> (Listen, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let addr = l.local_addr().unwrap();
        (Listen::Tcp(l), addr)
    }

    pub fn tcp6() -> (Listen, SocketAddr) {
        let l = TcpListener::bind("[::1]:0").expect("bind tcp6");
        let addr = l.local_addr().unwrap();
        (Listen::Tcp(l), addr)
    }

    pub fn unix(path: &Path) -> Listen {
        Listen::Unix(UnixListener::bind(path).expect("bind unix"))
    }

    fn fd(&self) -> i32 {
        match self {
            Listen::Tcp(l) => l.as_raw_fd(),
            Listen::Unix(l) => l.as_raw_fd(),
            Listen::Raw(fd) => fd.as_raw_fd(),
        }
    }
}

/// A running ringsock.
pub struct Ringsock {
    pub child: Child,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

pub struct Spawn {
    args: Vec<String>,
    listeners: Vec<Listen>,
    names: Option<String>,
    env: Vec<(String, String)>,
    driver: Driver,
    listen_pid: Option<String>,
    fd_limit: Option<(u64, u64)>,
    hosts: Option<std::ffi::CString>,
}

impl Spawn {
    pub fn new(args: &[&str]) -> Spawn {
        Spawn {
            args: args.iter().map(|s| s.to_string()).collect(),
            listeners: Vec::new(),
            names: None,
            env: Vec::new(),
            driver: Driver::IoUring,
            listen_pid: None,
            fd_limit: None,
            hosts: None,
        }
    }

    /// Runs ringsock in a mount namespace of its own where `file` is /etc/hosts, so a
    /// test can choose what host names resolve to (and change it while ringsock runs,
    /// by rewriting `file` in place). Needs root; see [`can_make_mount_namespace`].
    pub fn hosts(mut self, file: &Path) -> Spawn {
        use std::os::unix::ffi::OsStrExt;
        self.hosts = Some(std::ffi::CString::new(file.as_os_str().as_bytes()).unwrap());
        self
    }

    /// Starts it with RLIMIT_NOFILE at `n` (soft and hard), to run out of fds on purpose.
    pub fn fd_limit(self, n: u64) -> Spawn {
        self.fd_limits(n, n)
    }

    /// Starts it with RLIMIT_NOFILE at `soft` and `hard`.
    pub fn fd_limits(mut self, soft: u64, hard: u64) -> Spawn {
        self.fd_limit = Some((soft, hard));
        self
    }

    /// Passes this LISTEN_PID instead of ringsock's own pid (activation meant for
    /// another process must be ignored).
    pub fn listen_pid(mut self, pid: &str) -> Spawn {
        // It goes into a shell script: digits only.
        assert!(
            pid.bytes().all(|b| b.is_ascii_digit()),
            "LISTEN_PID {pid:?}"
        );
        self.listen_pid = Some(pid.to_string());
        self
    }

    pub fn listen(mut self, l: Listen) -> Spawn {
        self.listeners.push(l);
        self
    }

    pub fn names(mut self, names: &str) -> Spawn {
        self.names = Some(names.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Spawn {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn driver(mut self, driver: Driver) -> Spawn {
        self.driver = driver;
        self
    }

    /// Starts ringsock with the listeners at fds 3.. and LISTEN_PID set to its own pid
    /// (by `sh -c 'LISTEN_PID=$$ exec ...'`, since the pid is only known after fork).
    pub fn start(self) -> Ringsock {
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr_path = dir.path().join("stderr");
        let stderr = File::create(&stderr_path).expect("stderr file");
        let mut cmd = if self.listeners.is_empty() {
            Command::new(BIN)
        } else {
            let mut cmd = Command::new("sh");
            let script = match &self.listen_pid {
                Some(pid) => format!("LISTEN_PID={pid} exec \"$0\" \"$@\""),
                None => "LISTEN_PID=$$ exec \"$0\" \"$@\"".to_string(),
            };
            cmd.arg("-c").arg(script).arg(BIN);
            cmd
        };
        without_manager_env(&mut cmd)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .env("RINGSOCK_LOG_LEVEL", "debug");
        if !self.listeners.is_empty() {
            cmd.env("LISTEN_FDS", self.listeners.len().to_string());
        }
        if let Some(names) = &self.names {
            cmd.env("LISTEN_FDNAMES", names);
        }
        match self.driver {
            Driver::IoUring => cmd.env_remove("MONOIO_FORCE_LEGACY_DRIVER"),
            Driver::Epoll => cmd.env("MONOIO_FORCE_LEGACY_DRIVER", "1"),
        };
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let fds: Vec<i32> = self.listeners.iter().map(Listen::fd).collect();
        let fd_limit = self.fd_limit;
        let hosts = self.hosts.clone();
        // SAFETY: only async-signal-safe calls (dup/dup2/fcntl/setrlimit, unshare/mount)
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // First move every fd above the target range, then into place, so that
                // an fd already sitting at 3.. is not clobbered.
                let high: Vec<i32> = fds
                    .iter()
                    .map(|&fd| libc::fcntl(fd, libc::F_DUPFD, 100))
                    .collect();
                for (i, &fd) in high.iter().enumerate() {
                    if fd < 0 || libc::dup2(fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                if let Some((soft, hard)) = fd_limit {
                    let limit = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(hosts) = &hosts {
                    // A private copy of the mount table, so the bind mount stays ours.
                    if libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(
                            std::ptr::null(),
                            b"/\0".as_ptr().cast(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) != 0
                        || libc::mount(
                            hosts.as_ptr(),
                            b"/etc/hosts\0".as_ptr().cast(),
                            std::ptr::null(),
                            libc::MS_BIND,
                            std::ptr::null(),
                        ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn ringsock");
        drop(self.listeners);
        Ringsock {
            child,
            stderr_path,
            _dir: dir,
        }
    }
}

impl Ringsock {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until stderr contains `needle`, panicking with the log after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.stderr().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "ringsock never logged {needle:?}; stderr:\n{}",
            self.stderr()
        );
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits for exit, or panics with stderr after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "ringsock did not exit within {timeout:?}; stderr:\n{}",
            self.stderr()
        );
    }

    /// Waits for exit and asserts it was clean (status 0), with the log if not.
    pub fn wait_clean_exit(&mut self, timeout: Duration, driver: Driver) {
        let status = self.wait_exit(timeout);
        assert!(status.success(), "{driver:?}: {status}\n{}", self.stderr());
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> String {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(20));
        assert!(
            status.success(),
            "ringsock exited with {status}; stderr:\n{}",
            self.stderr()
        );
        self.stderr()
    }

    /// CPU time (user + system) the process has used so far, its threads included.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are the 12th and
        // 13th of them, in clock ticks.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks_at =
            |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let used = ticks_at(11) + ticks_at(12);
        Duration::from_millis(used * 1000 / ticks)
    }

    /// CPU time the process uses during `window` while the caller waits.
    pub fn cpu_during(&self, window: Duration) -> Duration {
        let before = self.cpu_time();
        std::thread::sleep(window);
        self.cpu_time().saturating_sub(before)
    }

    /// Thread count of the process, io_uring kernel workers included.
    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Ringsock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs ringsock to completion with no listeners (argument and startup errors); stderr
/// then stdout. Panics if it is still running after 20 s: a regression that makes it
/// serve instead of failing must fail the test, not hang it.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (err_path, out_path) = (dir.path().join("stderr"), dir.path().join("stdout"));
    let mut cmd = Command::new(BIN);
    without_manager_env(&mut cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run ringsock");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ringsock {args:?} still running after 20 s: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read = |path: &Path| {
        String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
    };
    let text = read(&err_path) + &read(&out_path);
    (status, text)
}

/// A test NOTIFY_SOCKET that collects sd_notify datagrams.
pub struct NotifySocket {
    pub path: PathBuf,
    socket: UnixDatagram,
    /// What NOTIFY_SOCKET is set to: the path, or `@name`.
    value: String,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    pub fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        let value = path.to_str().unwrap().to_string();
        NotifySocket {
            path,
            socket,
            value,
            _dir: dir,
        }
    }

    /// In the abstract namespace (`NOTIFY_SOCKET=@name`), as systemd itself may pass.
    pub fn abstract_name() -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "ringsock-notify-{}-{}",
            std::process::id(),
            BACKEND_SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        let dir = tempfile::tempdir().unwrap();
        NotifySocket {
            path: PathBuf::new(),
            socket,
            value: format!("@{name}"),
            _dir: dir,
        }
    }

    /// The value for NOTIFY_SOCKET.
    pub fn env_value(&self) -> &str {
        &self.value
    }

    /// Next datagram, or None after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<String> {
        // std refuses a zero read timeout; the shortest wait does the same job.
        let timeout = timeout.max(Duration::from_millis(1));
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        self.socket
            .recv(&mut buf)
            .ok()
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Waits for a datagram containing `needle`; returns it.
    pub fn expect(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        while let Some(left) = timeout.checked_sub(start.elapsed()) {
            match self.recv(left) {
                Some(msg) if msg.contains(needle) => return msg,
                Some(_) => continue,
                None => break,
            }
        }
        panic!("no sd_notify message containing {needle:?} within {timeout:?}");
    }
}

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

pub fn echo(mut conn: UnixStream) {
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
    let _ = conn.shutdown(std::net::Shutdown::Write);
}

/// Connects with retries (the listener may be in another process's backlog handling).
pub fn connect_tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Sends `data`, half-closes, reads until EOF: the reply must come back intact.
pub fn send_half_close_read(mut stream: TcpStream, data: &[u8]) -> Vec<u8> {
    let mut reader = stream.try_clone().unwrap();
    let reading = std::thread::spawn(move || {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).map(|_| got)
    });
    stream.write_all(data).expect("write");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    reading.join().unwrap().expect("read reply")
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs ringsock under `systemd-socket-activate`, the way the README shows without a
/// systemd unit: it binds the `-l` addresses, waits for the first connection and execs
/// ringsock in its own process, so the pid we hold becomes ringsock's.
pub struct Activate {
    args: Vec<String>,
    listen: Vec<String>,
    fdnames: Option<String>,
    env: Vec<(String, String)>,
    driver: Driver,
}

impl Activate {
    pub fn new(args: &[&str]) -> Activate {
        Activate {
            args: args.iter().map(|s| s.to_string()).collect(),
            listen: Vec::new(),
            fdnames: None,
            env: Vec::new(),
            driver: Driver::IoUring,
        }
    }

    /// One `-l ADDR`; fds are numbered 3.. in this order.
    pub fn listen(mut self, addr: &str) -> Activate {
        self.listen.push(addr.to_string());
        self
    }

    pub fn fdnames(mut self, names: &str) -> Activate {
        self.fdnames = Some(names.to_string());
        self
    }

    /// Passed with `-E`: the child gets nothing else from our environment.
    pub fn env(mut self, key: &str, value: &str) -> Activate {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn driver(mut self, driver: Driver) -> Activate {
        self.driver = driver;
        self
    }

    pub fn start(self) -> Ringsock {
        let mut cmd = Command::new("systemd-socket-activate");
        for addr in &self.listen {
            cmd.arg("-l").arg(addr);
        }
        if let Some(names) = &self.fdnames {
            cmd.arg(format!("--fdname={names}"));
        }
        let mut env = vec![("RINGSOCK_LOG_LEVEL".to_string(), "debug".to_string())];
        if let Driver::Epoll = self.driver {
            env.push(("MONOIO_FORCE_LEGACY_DRIVER".into(), "1".into()));
        }
        env.extend(self.env);
        for (k, v) in env {
            cmd.arg("-E").arg(format!("{k}={v}"));
        }
        cmd.arg(BIN).args(&self.args);
        // systemd-socket-activate passes on fds it was itself activated with: it must
        // see none of ours.
        without_manager_env(&mut cmd);
        spawn_logged(cmd)
    }
}

/// Spawns `cmd` with stderr going to a file that wait_for_log reads.
pub fn spawn_logged(mut cmd: Command) -> Ringsock {
    let dir = tempfile::tempdir().expect("tempdir");
    let stderr_path = dir.path().join("stderr");
    let stderr = File::create(&stderr_path).expect("stderr file");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let child = cmd.spawn().expect("spawn");
    Ringsock {
        child,
        stderr_path,
        _dir: dir,
    }
}

impl Ringsock {
    /// Waits for the log line naming `driver`: the test then really ran on it.
    pub fn expect_driver(&self, driver: Driver) {
        let needle = match driver {
            Driver::IoUring => "using the io_uring driver",
            Driver::Epoll => "using the epoll driver",
        };
        self.wait_for_log(needle, Duration::from_secs(10));
    }

    /// SIGTERM, then notice the exit within a millisecond (stop() polls every 20 ms):
    /// for checks of what must hold right after the process is gone.
    pub fn stop_promptly(mut self) -> String {
        self.signal(libc::SIGTERM);
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.exited() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no exit after SIGTERM:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_micros(200));
        };
        assert!(
            status.success(),
            "ringsock exited with {status}; stderr:\n{}",
            self.stderr()
        );
        self.stderr()
    }

    /// Sockets among its open fds (listeners and connections; not pipes or rings).
    pub fn open_sockets(&self) -> usize {
        self.open_fds("socket:")
    }

    /// Open fds whose /proc link starts with `kind` (`socket:`, `pipe:`, `anon_inode:`).
    pub fn open_fds(&self, kind: &str) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|fds| {
                fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                    .filter(|target| target.to_string_lossy().starts_with(kind))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Exit status if it has exited already.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }
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
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    start.elapsed() < timeout,
                    "no connection within {timeout:?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A connected stream the helpers drive from two threads (writer and reader).
pub trait Conn: Read + Write + Send + Sized + 'static {
    fn clone_conn(&self) -> std::io::Result<Self>;
    fn shutdown_write(&self) -> std::io::Result<()>;
    fn set_read_timeout_to(&self, timeout: Option<Duration>) -> std::io::Result<()>;
    fn set_write_timeout_to(&self, timeout: Option<Duration>) -> std::io::Result<()>;
}

impl Conn for TcpStream {
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

impl Conn for UnixStream {
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

pub fn connect_unix(path: &Path) -> UnixStream {
    let stream = UnixStream::connect(path).expect("connect unix");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
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

static BACKEND_SEQ: AtomicUsize = AtomicUsize::new(0);

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
        let (accepted, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (a, s) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || serve(conn, reply));
            }
        });
        Backend {
            target: addr.to_string(),
            accepted,
            stop,
            wake: Wake::Tcp(addr),
            _dir: None,
        }
    }

    fn run_unix(listener: UnixListener, target: String, wake: Wake, reply: Reply) -> Backend {
        let (accepted, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (a, s) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || serve(conn, reply));
            }
        });
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
        let start = Instant::now();
        while self.accepted() < n {
            assert!(
                start.elapsed() < timeout,
                "backend accepted {} of {n} connections within {timeout:?}",
                self.accepted()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
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

/// Length of the pattern block: a prime, so no splice or buffer size divides it and a
/// chunk lost, doubled or swapped shows up as a mismatch, not as equal bytes.
const BLOCK_LEN: usize = 1_048_573;

fn block() -> &'static [u8] {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK.get_or_init(|| pattern(BLOCK_LEN, 0x5eed))
}

/// Up to `max` bytes of the endless repetition of the block, from stream offset `pos`.
fn stream_at(pos: usize, max: usize) -> &'static [u8] {
    let off = pos % BLOCK_LEN;
    &block()[off..BLOCK_LEN.min(off + max)]
}

/// A pause in [`echo_transfer`]'s sending: after `at` bytes it says so on `reached` and
/// waits for `go` (dropping the sender counts as go).
pub struct Gate {
    pub at: usize,
    pub reached: mpsc::Sender<()>,
    pub go: mpsc::Receiver<()>,
}

/// Sends `len` bytes of the pattern (from offset `seed`, so connections differ), then
/// half-closes, while reading the echo concurrently and comparing every byte: Ok only
/// if exactly those bytes came back, followed by EOF.
pub fn echo_transfer<C: Conn>(
    conn: C,
    len: usize,
    seed: usize,
    gate: Option<Gate>,
) -> Result<(), String> {
    // Both ways bounded: a stalled proxy fails the transfer instead of hanging the test.
    conn.set_read_timeout_to(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout_to(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut writer = conn.clone_conn().map_err(|e| e.to_string())?;
    let sending = std::thread::spawn(move || -> std::io::Result<()> {
        let mut sent = 0;
        let mut gate = gate;
        while sent < len {
            let mut max = (len - sent).min(1 << 18);
            if let Some(g) = &gate {
                if sent == g.at {
                    let _ = g.reached.send(());
                    let _ = g.go.recv_timeout(Duration::from_secs(60));
                    gate = None;
                    continue;
                }
                if g.at > sent {
                    max = max.min(g.at - sent);
                }
            }
            let chunk = stream_at(seed + sent, max);
            writer.write_all(chunk)?;
            sent += chunk.len();
        }
        if let Some(g) = &gate {
            let _ = g.reached.send(());
        }
        writer.shutdown_write()
    });
    let received = read_pattern(conn, len, seed);
    let sent = sending.join().expect("sender panicked");
    match (received, sent) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Err(e)) => Err(format!("sending failed: {e}")),
        (Err(r), Err(s)) => Err(format!("{r}; sending failed too: {s}")),
    }
}

/// Writes `len` pattern bytes from offset `seed` (what read_pattern checks), counting
/// them in `progress` as they go.
pub fn write_pattern<W: Write>(
    out: &mut W,
    len: usize,
    seed: usize,
    progress: &AtomicUsize,
) -> std::io::Result<()> {
    let mut sent = 0;
    while sent < len {
        let chunk = stream_at(seed + sent, (len - sent).min(1 << 16));
        out.write_all(chunk)?;
        sent += chunk.len();
        progress.store(sent, Ordering::SeqCst);
    }
    Ok(())
}

/// Reads until EOF and checks it is exactly `len` pattern bytes from offset `seed`.
pub fn read_pattern<C: Conn>(mut conn: C, len: usize, seed: usize) -> Result<(), String> {
    let mut buf = vec![0u8; 1 << 18];
    let mut got = 0usize;
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(format!("read failed after {got} of {len} bytes: {e}")),
        };
        if got + n > len {
            return Err(format!(
                "received {} bytes, more than the {len} sent",
                got + n
            ));
        }
        let mut checked = 0;
        while checked < n {
            let want = stream_at(seed + got + checked, n - checked);
            if buf[checked..checked + want.len()] != *want {
                let at = (0..want.len())
                    .find(|&i| buf[checked + i] != want[i])
                    .unwrap();
                return Err(format!("byte {} of {len} differs", got + checked + at));
            }
            checked += want.len();
        }
        got += n;
    }
    if got == len {
        Ok(())
    } else {
        Err(format!("EOF after {got} of {len} bytes"))
    }
}

/// Writes `data` and reads back exactly as many bytes: one echo round trip.
pub fn round_trip<C: Conn>(conn: &mut C, data: &[u8]) -> std::io::Result<Vec<u8>> {
    conn.write_all(data)?;
    let mut got = vec![0u8; data.len()];
    conn.read_exact(&mut got)?;
    Ok(got)
}

/// Asserts nothing arrives within `wait`: the only way to see that bytes were *not*
/// forwarded, so it is a timeout by nature.
pub fn assert_silent<C: Conn>(conn: &mut C, wait: Duration, what: &str) {
    conn.set_read_timeout_to(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("{what}: expected no data for {wait:?}, got {other:?}"),
    }
    conn.set_read_timeout_to(Some(Duration::from_secs(30)))
        .unwrap();
}

/// True when the peer closed or reset without sending a byte.
pub fn closed_without_data<C: Conn>(conn: &mut C) -> Result<(), String> {
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Ok(0) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        other => Err(format!("expected EOF or reset, got {other:?}")),
    }
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
