//! `ringsock serve` on a disk that stops answering: a file whose reads never finish (a
//! FUSE mount, tests/fixtures/hangfs.py, whose daemon leaves READ unanswered) must hold
//! up only its own requests, never the API, the metrics or other files.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util::*;

const HANGFS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hangfs.py");

/// How long each request may take while the hung reads are pending: ample for an
/// answer from memory, far below the hung reads' "never".
const PROBE_LIMIT: Duration = Duration::from_secs(2);

const IN_RELEASE: &[u8] = b"Origin: ringsock test\nSuite: stable\n";

/// What hangfs serves for ok.txt.
const OK_TXT: &[u8] = b"ok: this file answers\n";

/// hangfs mounted on a directory. Dropping it (also while a panic unwinds) ends the
/// daemon, which fails every read still waiting on it, and detaches the mount.
struct HangFs {
    daemon: Ringsock,
    mnt: PathBuf,
}

impl HangFs {
    /// Mounts hangfs on `mnt` and waits until it serves; `Err` with the reason when FUSE
    /// is not permitted here (no /dev/fuse, or mount(2) refused), which skips the test.
    fn mount(mnt: &Path) -> Result<HangFs, String> {
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse does not exist (no FUSE in this kernel or container)".into());
        }
        let daemon = Spawn::new(&[HANGFS, mnt.to_str().unwrap()])
            .program("python3")
            .start();
        let mut fs = HangFs {
            daemon,
            mnt: mnt.to_path_buf(),
        };
        // "ready" on stdout once it serves, or an exit without it.
        let ready = within(Duration::from_secs(10), || {
            // Whether it exited first: a "ready" written just before still counts.
            let exited = fs.daemon.exited().is_some();
            if fs.daemon.stdout().trim() == "ready" {
                Some(true)
            } else {
                exited.then_some(false)
            }
        })
        .unwrap_or_else(|| panic!("hangfs not ready within 10 s:\n{}", fs.log()));
        if ready {
            return Ok(fs);
        }
        // It ended without "ready": 77 means FUSE is not permitted, anything else is a bug.
        let status = fs.daemon.exited().expect("exited");
        if status.code() == Some(77) {
            return Err(fs.log().trim().to_string());
        }
        panic!("hangfs failed ({status}):\n{}", fs.log());
    }

    fn log(&self) -> String {
        self.daemon.stderr()
    }

    /// READs of hang.deb the daemon holds unanswered (it logs each one).
    fn pending_reads(&self) -> usize {
        self.log().matches("left pending").count()
    }
}

impl Drop for HangFs {
    fn drop(&mut self) {
        // SIGTERM: it detaches the mount and closes /dev/fuse, which fails the pending
        // READs. Until then a thread asleep on one cannot even be killed (the kernel waits
        // uninterruptibly for a request the daemon already took), so this must happen
        // before the ringsock that reads the file is stopped or killed.
        self.daemon.signal(libc::SIGTERM);
        let ended = within(Duration::from_secs(5), || {
            match self.daemon.child.try_wait() {
                Ok(None) => None,
                // Exited, or nothing left to wait for: no panic here, this may be unwinding.
                _ => Some(()),
            }
        });
        if ended.is_none() {
            // Dying closes /dev/fuse all the same.
            self.daemon.kill();
        }
        // Whatever became of the daemon, leave no mount behind (EINVAL if it is gone).
        use std::os::unix::ffi::OsStrExt;
        let mnt = std::ffi::CString::new(self.mnt.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(mnt.as_ptr(), libc::MNT_DETACH) };
    }
}

/// GETs `path` on a fresh connection within `limit` in all: the status and body, or
/// what went wrong.
fn fetch(addr: SocketAddr, path: &str, limit: Duration) -> Result<(u16, Vec<u8>), String> {
    let start = Instant::now();
    let mut conn = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    conn.set_write_timeout(Some(limit)).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let left = limit
            .checked_sub(start.elapsed())
            .filter(|left| !left.is_zero())
            .ok_or_else(|| no_answer(start, &got, "timed out"))?;
        conn.set_read_timeout(Some(left)).unwrap();
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(no_answer(start, &got, "timed out"))
            }
            Err(e) => return Err(no_answer(start, &got, &e.to_string())),
        }
    }
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| no_answer(start, &got, "closed before the end of the head"))?;
    let head = String::from_utf8_lossy(&got[..head_end]);
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((status, got[head_end + 4..].to_vec()))
}

fn no_answer(start: Instant, got: &[u8], why: &str) -> String {
    format!(
        "no complete answer after {:?} ({why}); got {} bytes: {:?}",
        start.elapsed(),
        got.len(),
        String::from_utf8_lossy(&got[..got.len().min(120)])
    )
}

/// Where each of `pid`'s threads sleeps in the kernel, and in which system call: on a
/// failure, this tells a worker stuck in sendfile(2) (40) or openat2(2) (437) from one
/// waiting for work (epoll_wait, io_uring_enter) at a glance.
fn threads_waiting(pid: i32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "  (gone)\n".into();
    };
    let mut out = String::new();
    for task in tasks.flatten() {
        let read = |file: &str| {
            std::fs::read_to_string(task.path().join(file))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let syscall = read("syscall");
        let nr = syscall.split_whitespace().next().unwrap_or("?");
        out += &format!(
            "  {:>7} {:<16} wchan {:<24} syscall {nr}\n",
            task.file_name().to_string_lossy(),
            read("comm"),
            read("wchan"),
        );
    }
    out
}

/// Starts a GET of `path` that may never finish; the thread gives up after 30 s.
fn get_in_background(addr: SocketAddr, path: &str) -> std::thread::JoinHandle<String> {
    let path = path.to_string();
    std::thread::spawn(move || match fetch(addr, &path, Duration::from_secs(30)) {
        Ok((status, body)) => format!("{status} with {} bytes", body.len()),
        Err(e) => e,
    })
}

/// Why the requests below must all pass: ringsock serves file bodies with sendfile(2)
/// (or reads them) on its worker threads, and a read from a disk that stops answering
/// (a dead NFS server, a failing drive, a FUSE daemon that hangs) sleeps in the kernel,
/// taking the whole worker with it: every connection on that worker then waits too.
/// With `--threads 1` that is every request. Two hung GETs, so that a single spare
/// thread for disk I/O is not enough either.
#[test]
fn a_hanging_file_read_delays_no_other_request() {
    for driver in DRIVERS {
        if !hanging_read_delays_nothing(driver) {
            return;
        }
    }
}

/// One run on `driver`; false when FUSE is not permitted here and the test is skipped.
fn hanging_read_delays_nothing(driver: Driver) -> bool {
    let root = tempfile::tempdir().expect("root");
    let in_release = root.path().join("dists/InRelease");
    std::fs::create_dir_all(in_release.parent().unwrap()).unwrap();
    std::fs::write(&in_release, IN_RELEASE).unwrap();
    let mnt = root.path().join("hang");
    std::fs::create_dir(&mnt).unwrap();

    let (listen, addr) = Listen::tcp();
    let root_arg = root.path().to_str().unwrap();
    let args = [
        "serve",
        "--root",
        root_arg,
        "--threads",
        "1",
        "--shutdown-timeout",
        "5s",
    ];
    let server = Spawn::new(&args).listen(listen).driver(driver).start();
    // Declared after the server so that it is dropped first, also when an assertion
    // below panics: see HangFs's Drop.
    let fs = match HangFs::mount(&mnt) {
        Ok(fs) => fs,
        Err(why) => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED a_hanging_file_read_delays_no_other_request: needs a FUSE mount \
                 (root or CAP_SYS_ADMIN, and /dev/fuse): {why}"
            );
            return false;
        }
    };
    server.expect_driver(driver);
    let report = |what: &str| -> String {
        format!(
            "{driver:?}: {what}\nringsock threads:\n{}ringsock stderr:\n{}\nhangfs log:\n{}",
            threads_waiting(server.pid()),
            server.stderr(),
            fs.log()
        )
    };
    match fetch(addr, "/api/version", Duration::from_secs(10)) {
        Ok((200, _)) => {}
        other => panic!("{}", report(&format!("before the hang: {other:?}"))),
    }

    // The second GET starts only once the first one's READ is pending, always: its
    // open(2) then waits for the page that READ holds locked (FUSE drops a file's
    // cached pages on every open unless the daemon says FOPEN_KEEP_CACHE, and hangfs,
    // like most FUSE file systems, does not), so even the open of a hung file blocks.
    // Started together they would race, and the test would see that only sometimes.
    let mut hung = vec![get_in_background(addr, "/hang/hang.deb")];
    wait_until(
        Duration::from_secs(10),
        || (fs.pending_reads() > 0).then_some(()),
        || report("no READ of hang.deb reached hangfs"),
    );
    hung.push(get_in_background(addr, "/hang/hang.deb"));
    // Time for the second GET to get as far as it will (the locked page, or the
    // accept queue of a worker that is stuck already).
    std::thread::sleep(Duration::from_millis(300));

    let probes: [(&str, Option<&[u8]>); 4] = [
        ("/api/version", None),
        ("/metrics", None),
        // A file already in the page cache, on the real disk.
        ("/dists/InRelease", Some(IN_RELEASE)),
        // A file on the very filesystem that hangs, which still answers it.
        ("/hang/ok.txt", Some(OK_TXT)),
    ];
    let mut failures = Vec::new();
    for (path, want_body) in probes {
        match fetch(addr, path, PROBE_LIMIT) {
            Ok((200, body)) if want_body.map_or(true, |want| body == want) => {}
            Ok((status, body)) => failures.push(format!(
                "GET {path}: {status} {:?}",
                String::from_utf8_lossy(&body[..body.len().min(120)])
            )),
            Err(e) => failures.push(format!(
                "GET {path} while 2 GETs of /hang/hang.deb hang: {e}"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{}",
        report(&format!(
            "requests held up by a hung file read:\n  {}",
            failures.join("\n  ")
        ))
    );

    // A disk error only the server can explain: 500, and one log line naming the file
    // and the error.
    match fetch(addr, "/hang/eio.deb", PROBE_LIMIT) {
        Ok((500, _)) => {}
        other => panic!("{}", report(&format!("GET /hang/eio.deb: {other:?}"))),
    }
    server.wait_for_log(
        "failed to open hang/eio.deb under --root: Input/output error (os error 5); answered 500",
        Duration::from_secs(5),
    );

    // Only requests made while the file hung prove anything: the hung GETs must still
    // be waiting (a server that gave up on them early would pass vacuously).
    let still_hung = hung.iter().filter(|h| !h.is_finished()).count();
    assert_eq!(
        still_hung,
        2,
        "{}",
        report("a GET of /hang/hang.deb ended while its reads were still hanging")
    );

    // Ending the daemon fails the hung reads: the server must get over them and stop.
    let pending = fs.pending_reads();
    drop(fs);
    match fetch(addr, "/api/version", Duration::from_secs(10)) {
        Ok((200, _)) => {}
        other => panic!(
            "{driver:?}: after hangfs ended: {other:?}\n{}",
            server.stderr()
        ),
    }
    server.stop();
    for (i, handle) in hung.into_iter().enumerate() {
        // Their connections went with the server, so they end now.
        let outcome = handle.join().expect("hung GET thread");
        eprintln!("{driver:?}: hung GET {i} ended: {outcome} ({pending} READs were pending)");
    }
    true
}
