//! The tests' one process harness: starting the built binary as systemd would (fds 3..
//! with LISTEN_FDS/LISTEN_PID, or through `systemd-socket-activate`), watching it and
//! stopping it; a NOTIFY_SOCKET to listen on.

use std::ffi::CString;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

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

/// How to start ringsock: its arguments, where its listening sockets come from, its
/// environment, driver and limits. Then [`Spawn::start`] it and watch it, or
/// [`Spawn::run`] it to its exit.
pub struct Spawn {
    program: PathBuf,
    args: Vec<String>,
    listeners: Vec<Listen>,
    activate: Vec<String>,
    names: Option<String>,
    env: Vec<(String, String)>,
    driver: Driver,
    listen_pid: Option<String>,
    fd_limit: Option<(u64, u64)>,
    hosts: Option<CString>,
    io_uring_action: Option<u32>,
}

impl Spawn {
    pub fn new(args: &[&str]) -> Spawn {
        Spawn {
            program: PathBuf::from(BIN),
            args: args.iter().map(|s| s.to_string()).collect(),
            listeners: Vec::new(),
            activate: Vec::new(),
            names: None,
            env: Vec::new(),
            driver: Driver::IoUring,
            listen_pid: None,
            fd_limit: None,
            hosts: None,
            io_uring_action: None,
        }
    }

    /// Runs `program` instead of the built ringsock: the installed one, or another
    /// daemon started the same way (aptly under `systemd-socket-activate`, haproxy).
    pub fn program(mut self, program: impl AsRef<Path>) -> Spawn {
        self.program = program.as_ref().to_path_buf();
        self
    }

    /// One socket passed directly, at fd 3 and on in this order, with LISTEN_FDS and
    /// LISTEN_PID set.
    pub fn listen(mut self, l: Listen) -> Spawn {
        self.listeners.push(l);
        self
    }

    /// One address (`-l ADDR`) for `systemd-socket-activate`, the way the README shows
    /// without a systemd unit: it binds them all at fds 3.. in this order, waits for the
    /// first connection and execs ringsock in its own process, so the pid we hold
    /// becomes ringsock's. Only the environment set here reaches ringsock then (`-E`).
    pub fn activate(mut self, addr: &str) -> Spawn {
        self.activate.push(addr.to_string());
        self
    }

    /// The sockets' names: LISTEN_FDNAMES, or `--fdname` when activated.
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

    /// Starts it with RLIMIT_NOFILE at `n` (soft and hard), to run out of fds on purpose.
    pub fn fd_limit(self, n: u64) -> Spawn {
        self.fd_limits(n, n)
    }

    /// Starts it with RLIMIT_NOFILE at `soft` and `hard`.
    pub fn fd_limits(mut self, soft: u64, hard: u64) -> Spawn {
        self.fd_limit = Some((soft, hard));
        self
    }

    /// Runs ringsock in a mount namespace of its own where `file` is /etc/hosts, so a
    /// test can choose what host names resolve to (and change it while ringsock runs,
    /// by rewriting `file` in place). Needs root; see [`can_make_mount_namespace`].
    pub fn hosts(mut self, file: &Path) -> Spawn {
        self.hosts = Some(CString::new(file.as_os_str().as_bytes()).unwrap());
        self
    }

    /// Installs a seccomp filter that gives the three io_uring calls `action` (a
    /// `SECCOMP_RET_*` value): what a unit's SystemCallFilter= without them does.
    pub fn filter_io_uring(mut self, action: u32) -> Spawn {
        self.io_uring_action = Some(action);
        self
    }

    /// Starts it, stdout and stderr going to files that [`Ringsock::stdout`] and
    /// [`Ringsock::stderr`] read.
    pub fn start(self) -> Ringsock {
        assert!(
            self.listeners.is_empty() || self.activate.is_empty(),
            "sockets are passed directly (listen) or bound by systemd-socket-activate \
             (activate), not both"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let stdout = File::create(dir.path().join("stdout")).expect("stdout file");
        let stderr = File::create(dir.path().join("stderr")).expect("stderr file");
        let mut env = vec![("RINGSOCK_LOG_LEVEL".to_string(), "debug".to_string())];
        if let Driver::Epoll = self.driver {
            env.push(("MONOIO_FORCE_LEGACY_DRIVER".into(), "1".into()));
        }
        let mut cmd = if !self.activate.is_empty() {
            self.activated_command(env)
        } else {
            self.direct_command(env)
        };
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        self.before_exec(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let name = self
            .program
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        drop(self.listeners);
        Ringsock { child, name, dir }
    }

    /// Starts it and waits for it to exit by itself (argument and startup errors,
    /// --help): the status, and stderr then stdout. Panics if it still runs after 20 s:
    /// a regression that makes it serve instead of failing must fail the test, not hang
    /// it.
    pub fn run(self) -> (ExitStatus, String) {
        let mut ringsock = self.start();
        let status = ringsock.wait_exit(Duration::from_secs(20));
        (status, ringsock.output())
    }

    /// `systemd-socket-activate -l ADDR... [--fdname=NAMES] -E VAR=VALUE... -- PROGRAM ARGS`.
    fn activated_command(&self, mut env: Vec<(String, String)>) -> Command {
        assert!(
            self.listen_pid.is_none(),
            "systemd-socket-activate sets LISTEN_PID"
        );
        let mut cmd = Command::new("systemd-socket-activate");
        // It passes on fds it was itself activated with: it must see none of ours.
        without_manager_env(&mut cmd);
        for addr in &self.activate {
            cmd.arg("-l").arg(addr);
        }
        if let Some(names) = &self.names {
            cmd.arg(format!("--fdname={names}"));
        }
        env.extend(self.env.iter().cloned());
        for (k, v) in env {
            cmd.arg("-E").arg(format!("{k}={v}"));
        }
        cmd.arg("--").arg(&self.program).args(&self.args);
        cmd
    }

    /// The program itself; with listeners, by `sh -c 'LISTEN_PID=$$ exec ...'`, since
    /// its pid is only known after fork (the listeners are moved to fds 3.. in
    /// [`Spawn::before_exec`]).
    fn direct_command(&self, env: Vec<(String, String)>) -> Command {
        let mut cmd = if self.listeners.is_empty() {
            Command::new(&self.program)
        } else {
            let mut cmd = Command::new("sh");
            let script = match &self.listen_pid {
                Some(pid) => format!("LISTEN_PID={pid} exec \"$0\" \"$@\""),
                None => "LISTEN_PID=$$ exec \"$0\" \"$@\"".to_string(),
            };
            cmd.arg("-c").arg(script).arg(&self.program);
            cmd
        };
        without_manager_env(&mut cmd).args(&self.args).envs(env);
        if !self.listeners.is_empty() {
            cmd.env("LISTEN_FDS", self.listeners.len().to_string());
        }
        if let Some(names) = &self.names {
            cmd.env("LISTEN_FDNAMES", names);
        }
        if let Driver::IoUring = self.driver {
            cmd.env_remove("MONOIO_FORCE_LEGACY_DRIVER");
        }
        // Last, so a test can pass what the harness would set otherwise (LISTEN_FDS).
        cmd.envs(self.env.iter().cloned());
        cmd
    }

    /// What happens in the child between fork and exec: the listeners moved to fds 3..,
    /// the fd limit, the mount namespace, the seccomp filter.
    fn before_exec(&self, cmd: &mut Command) {
        let fds: Vec<i32> = self.listeners.iter().map(Listen::fd).collect();
        let fd_limit = self.fd_limit;
        let hosts = self.hosts.clone();
        let filter = self.io_uring_action.map(io_uring_filter);
        // SAFETY: only async-signal-safe calls (dup/dup2/fcntl/setrlimit, unshare/mount,
        // prctl) on memory allocated before the fork, between fork and exec.
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
                if let Some(filter) = &filter {
                    let prog = libc::sock_fprog {
                        len: filter.len() as u16,
                        filter: filter.as_ptr() as *mut _,
                    };
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                        || libc::prctl(
                            libc::PR_SET_SECCOMP,
                            libc::SECCOMP_MODE_FILTER,
                            &prog as *const _,
                        ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
}

/// A seccomp program that gives io_uring_setup, _enter and _register `action` and
/// allows everything else.
fn io_uring_filter(action: u32) -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const ALLOW: u32 = 0x7fff_0000;
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let calls = [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ];
    let mut filter = vec![insn(LD_W_ABS, 0, 0, 0)]; // seccomp_data.nr
    for (i, nr) in calls.iter().enumerate() {
        // Jump to the `action` return below the remaining checks and the allow.
        let to_action = (calls.len() - i) as u8;
        filter.push(insn(JEQ_K, to_action, 0, *nr as u32));
    }
    filter.push(insn(RET_K, 0, 0, ALLOW));
    filter.push(insn(RET_K, 0, 0, action));
    filter
}

/// A running ringsock (or what [`Spawn::program`] named), killed when dropped.
pub struct Ringsock {
    pub child: Child,
    /// The program's file name, for messages.
    name: String,
    /// Holds the stdout and stderr files.
    dir: tempfile::TempDir,
}

impl Ringsock {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr(&self) -> String {
        read_lossy(&self.dir.path().join("stderr"))
    }

    pub fn stdout(&self) -> String {
        read_lossy(&self.dir.path().join("stdout"))
    }

    /// All it wrote: stderr, then stdout.
    pub fn output(&self) -> String {
        self.stderr() + &self.stdout()
    }

    /// Waits until stderr contains `needle`, panicking with the log after `timeout`, or
    /// as soon as it exited without having written it.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let logged = wait_until(
            timeout,
            || {
                // Whether it is gone first: what it wrote just before it went still counts.
                let gone = self.gone();
                if self.stderr().contains(needle) {
                    Some(true)
                } else {
                    gone.then_some(false)
                }
            },
            || {
                format!(
                    "{} never logged {needle:?}; output:\n{}",
                    self.name,
                    self.output()
                )
            },
        );
        assert!(
            logged,
            "{} exited before logging {needle:?}; output:\n{}",
            self.name,
            self.output()
        );
    }

    /// Waits for the log line naming `driver`: the test then really ran on it.
    pub fn expect_driver(&self, driver: Driver) {
        let needle = match driver {
            Driver::IoUring => "using the io_uring driver",
            Driver::Epoll => "using the epoll driver",
        };
        self.wait_for_log(needle, Duration::from_secs(10));
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Exit status if it has exited already.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Whether it has exited, without reaping it (so `&self` will do): its state in
    /// /proc is Z until it is reaped, and there is no entry after.
    fn gone(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).map_or(true, |stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
    }

    /// Waits for exit, or panics with stderr after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = within(timeout, || self.exited());
        status.unwrap_or_else(|| {
            panic!(
                "{} did not exit within {timeout:?}; output:\n{}",
                self.name,
                self.output()
            )
        })
    }

    /// Waits for exit and asserts it was clean (status 0), with the log if not.
    pub fn wait_clean_exit(&mut self, timeout: Duration, driver: Driver) {
        let status = self.wait_exit(timeout);
        assert!(status.success(), "{driver:?}: {status}\n{}", self.stderr());
    }

    /// SIGTERM and wait for a clean exit; returns stderr.
    pub fn stop(mut self) -> String {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(20));
        assert!(
            status.success(),
            "{} exited with {status}; output:\n{}",
            self.name,
            self.output()
        );
        self.stderr()
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

    /// CPU time the process uses during `window` while the caller waits: the window is
    /// the measurement, so the sleep is the point.
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
}

impl Drop for Ringsock {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
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
