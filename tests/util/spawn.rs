//! Starting the built binary as systemd would (fds 3.., LISTEN_FDS/LISTEN_PID, or through
//! `systemd-socket-activate`), watching it and stopping it; a NOTIFY_SOCKET to listen on.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;

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
        wait_until(
            timeout,
            || self.stderr().contains(needle).then_some(()),
            || {
                format!(
                    "ringsock never logged {needle:?}; stderr:\n{}",
                    self.stderr()
                )
            },
        )
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits for exit, or panics with stderr after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let stderr_path = self.stderr_path.clone();
        let child = &mut self.child;
        wait_until(
            timeout,
            || child.try_wait().expect("try_wait"),
            || {
                let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                format!("ringsock did not exit; stderr:\n{stderr}")
            },
        )
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
        self.find(needle, timeout).unwrap_or_else(|| {
            panic!("no sd_notify message containing {needle:?} within {timeout:?}")
        })
    }

    /// The first datagram containing `needle` within `timeout` (those before it are
    /// read and dropped), or None: for a test that a message does not come.
    pub fn find(&self, needle: &str, timeout: Duration) -> Option<String> {
        // Each look blocks in recv for a slice of the wait: a datagram is seen the moment
        // it comes, with no sleep in between.
        poll_every(Duration::ZERO, timeout, || {
            self.recv(Duration::from_millis(20))
                .filter(|msg| msg.contains(needle))
        })
    }
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
        let status = poll_every(Duration::from_micros(200), Duration::from_secs(20), || {
            self.exited()
        })
        .unwrap_or_else(|| panic!("no exit after SIGTERM:\n{}", self.stderr()));
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
