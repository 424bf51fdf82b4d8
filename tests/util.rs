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
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ringsock");

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
}

impl Spawn {
    pub fn new(args: &[&str]) -> Spawn {
        Spawn {
            args: args.iter().map(|s| s.to_string()).collect(),
            listeners: Vec::new(),
            names: None,
            env: Vec::new(),
            driver: Driver::IoUring,
        }
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
            cmd.arg("-c").arg("LISTEN_PID=$$ exec \"$0\" \"$@\"").arg(BIN);
            cmd.env("LISTEN_FDS", self.listeners.len().to_string());
            cmd
        };
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env("RINGSOCK_LOG_LEVEL", "debug");
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
        // SAFETY: only async-signal-safe calls (dup/dup2/fcntl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // First move every fd above the target range, then into place, so that
                // an fd already sitting at 3.. is not clobbered.
                let high: Vec<i32> = fds.iter().map(|&fd| libc::fcntl(fd, libc::F_DUPFD, 100)).collect();
                for (i, &fd) in high.iter().enumerate() {
                    if fd < 0 || libc::dup2(fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn ringsock");
        drop(self.listeners);
        Ringsock { child, stderr_path, _dir: dir }
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
        panic!("ringsock never logged {needle:?}; stderr:\n{}", self.stderr());
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
        panic!("ringsock did not exit within {timeout:?}; stderr:\n{}", self.stderr());
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> String {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(20));
        assert!(status.success(), "ringsock exited with {status}; stderr:\n{}", self.stderr());
        self.stderr()
    }

    /// Thread count of the process, io_uring kernel workers included.
    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid())).map(|d| d.count()).unwrap_or(0)
    }
}

impl Drop for Ringsock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs ringsock to completion with no listeners (argument and startup errors).
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).env_remove("LISTEN_PID").env_remove("LISTEN_FDS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run ringsock");
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status, text)
}

/// A test NOTIFY_SOCKET that collects sd_notify datagrams.
pub struct NotifySocket {
    pub path: PathBuf,
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    pub fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket { path, socket, _dir: dir }
    }

    /// Next datagram, or None after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        self.socket.recv(&mut buf).ok().map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
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
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
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
    stream.shutdown(std::net::Shutdown::Write).expect("shutdown");
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
