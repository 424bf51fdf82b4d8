//! `ringsock serve` with files that are not in the page cache: evicted bodies come off the
//! disk on I/O threads byte-exact, FIFOs and sockets in the tree are refused at once, a
//! file that shrinks mid-send is cut rather than padded, and slow clients of cold files
//! hold no I/O thread while their sockets are full.
//!
//! The roots live under the target directory, on a real disk: on a tmpfs there is no
//! disk to evict to, and `evict` says so (the test then fails rather than pass vacuously).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::serve::{get, serve_root, Server};
use crate::util::*;

/// A root on the disk the tests are built on (never a tmpfs /tmp).
fn disk_root() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("root under the target dir")
}

fn serve_on_disk(driver: Driver, extra: &[&str]) -> Server {
    serve_root(driver, disk_root(), extra)
}

/// Writes `data` to `rel` under the server's root, durably, so its pages are clean and
/// can be evicted.
fn disk_file(server: &Server, rel: &str, data: &[u8]) -> std::path::PathBuf {
    let path = server.file(rel, data);
    File::open(&path).unwrap().sync_all().unwrap();
    path
}

/// Drops `path`'s pages from the page cache and checks with cachestat(2) that none is
/// left. (Not with a `RWF_NOWAIT` read: on a miss that starts readahead, 8 MiB on this
/// VM's disk, which would have the file back in memory before the request.)
fn evict(path: &Path) {
    let file = File::open(path).unwrap();
    // Pages still being read in (the server's readahead of an earlier request) cannot be
    // dropped yet: advise again until none is left, for at most 5 s.
    wait_until(
        Duration::from_secs(5),
        || {
            // SAFETY: plain advice on an open fd.
            let rc =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(rc, 0, "posix_fadvise");
            (cached_pages(&file) == 0).then_some(())
        },
        || {
            format!(
                "{} still has {} pages cached after POSIX_FADV_DONTNEED (a file system \
                 without a disk?)",
                path.display(),
                cached_pages(&file)
            )
        },
    );
}

/// cachestat(2): how many of `file`'s pages are in the page cache.
fn cached_pages(file: &File) -> u64 {
    let range = [0u64, 0u64]; // offset, length (0: to the end)
    let mut stat = [0u64; 5]; // nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted
                              // SAFETY: cachestat(fd, &cachestat_range, &cachestat, 0) with both structs as u64 arrays.
    let rc = unsafe { libc::syscall(451, file.as_raw_fd(), range.as_ptr(), stat.as_mut_ptr(), 0) };
    assert_eq!(rc, 0, "cachestat: {}", std::io::Error::last_os_error());
    stat[0]
}

/// A counter or gauge from /metrics.
fn metric(server: &Server, name: &str) -> u64 {
    let resp = server.get(&get("/metrics"));
    assert_eq!(resp.status, 200);
    let text = String::from_utf8_lossy(&resp.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

#[test]
fn an_evicted_file_is_sent_from_the_disk_byte_exact() {
    for driver in DRIVERS {
        let server = serve_on_disk(driver, &[]);
        let data = pattern(12 << 20, 1);
        let path = disk_file(&server, "pool/cold.deb", &data);

        evict(&path);
        let resp = server.get(&get("/pool/cold.deb"));
        assert_eq!(resp.status, 200, "{driver:?}");
        assert!(resp.body == data, "{driver:?}: the cold body differs");
        // A body is counted once its last sendfile returned, which the client may beat
        // (and another worker may render /metrics first): wait for it, bounded.
        for name in [
            "ringsock_http_file_sends_offloaded_total",
            "ringsock_http_file_bytes_offloaded_total",
        ] {
            wait_until(
                Duration::from_secs(5),
                || (metric(&server, name) >= 1).then_some(()),
                || format!("{driver:?}: {name} stayed 0 for a body read from the disk"),
            );
        }

        // A range in the middle of an evicted file, and a small file read cold.
        evict(&path);
        let (first, last) = (5 << 20, (5 << 20) + 100_000);
        let range = format!(
            "GET /pool/cold.deb HTTP/1.1\r\nHost: t\r\nRange: bytes={first}-{last}\r\n\r\n"
        );
        let resp = server.get(&range);
        assert_eq!(resp.status, 206, "{driver:?}");
        assert!(
            resp.body == data[first..=last],
            "{driver:?}: the cold range differs"
        );
        let small = pattern(3000, 2);
        let path = disk_file(&server, "dists/InRelease", &small);
        evict(&path);
        let resp = server.get(&get("/dists/InRelease"));
        assert_eq!((resp.status, &resp.body), (200, &small), "{driver:?}");
    }
}

#[test]
fn a_path_not_in_the_lookup_cache_is_opened_on_an_io_thread() {
    for driver in DRIVERS {
        let server = serve_on_disk(driver, &[]);
        let name = format!("/never-looked-up-{}-{driver:?}", std::process::id());
        let before = metric(&server, "ringsock_http_file_opens_offloaded_total");
        assert_eq!(server.get(&get(&name)).status, 404, "{driver:?}");
        let after_first = metric(&server, "ringsock_http_file_opens_offloaded_total");
        assert_eq!(
            after_first,
            before + 1,
            "{driver:?}: the first lookup needs the disk"
        );
        // The miss is now cached (a negative dentry): the worker answers it itself.
        assert_eq!(server.get(&get(&name)).status, 404, "{driver:?}");
        let after_second = metric(&server, "ringsock_http_file_opens_offloaded_total");
        assert_eq!(
            after_second, after_first,
            "{driver:?}: a cached miss went to a thread"
        );
    }
}

#[test]
fn fifos_and_sockets_in_the_tree_are_refused_at_once() {
    for driver in DRIVERS {
        let server = serve_on_disk(driver, &[]);
        let root = server.file("keep", b"x").parent().unwrap().to_path_buf();
        let fifo = std::ffi::CString::new(root.join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");
        let _socket = UnixListener::bind(root.join("socket")).unwrap();
        for path in ["/fifo", "/socket"] {
            let start = Instant::now();
            let resp = server.get(&get(path));
            assert_eq!(resp.status, 403, "{driver:?} {path}");
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "{driver:?} {path}"
            );
        }
        assert_eq!(server.get(&get("/keep")).status, 200, "{driver:?}");
    }
}

/// The client asks for a big file and reads only the head; the file is then cut short.
/// The body must end early with the connection (EOF or reset) — never padded, never
/// hanging — whether the pages were cached or on the disk.
#[test]
fn a_file_shorter_than_its_stat_ends_the_connection() {
    for driver in DRIVERS {
        for cold in [false, true] {
            let server = serve_on_disk(driver, &[]);
            let len = 48 << 20;
            let path = disk_file(&server, "pool/shrinks.deb", &pattern(len, 3));
            if cold {
                evict(&path);
            }
            let mut conn = crate::serve::Conn::new(connect_small_window(server.addr));
            conn.send(get("/pool/shrinks.deb").as_bytes());
            let head = read_head(&mut conn);
            assert!(head.contains(&format!("Content-Length: {len}")), "{head}");
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(1 << 20)
                .unwrap();
            let (body, ended) = read_until_end(&mut conn, Duration::from_secs(15));
            assert!(
                ended,
                "{driver:?} cold={cold}: still open after 15 s with {body} bytes"
            );
            assert!(
                body < len,
                "{driver:?} cold={cold}: a full body from a cut file"
            );
        }
    }
}

/// Sixteen clients download an evicted file and stop reading: once their sockets are
/// full no I/O thread may be busy for them, nothing may queue, and only the bounded
/// pool's threads exist. Then each reads on and gets more.
#[test]
fn slow_clients_of_cold_files_hold_no_io_thread() {
    for driver in DRIVERS {
        let server = serve_on_disk(driver, &["--threads", "1", "--io-threads", "2"]);
        let path = disk_file(&server, "pool/big.deb", &pattern(32 << 20, 4));
        evict(&path);
        let mut clients: Vec<_> = (0..16)
            .map(|_| {
                let mut conn = crate::serve::Conn::new(connect_small_window(server.addr));
                conn.send(get("/pool/big.deb").as_bytes());
                conn
            })
            .collect();
        // Time for every socket to fill: what must hold then is asserted, not waited for.
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(metric(&server, "ringsock_io_threads_busy"), 0, "{driver:?}");
        assert_eq!(metric(&server, "ringsock_io_queue_length"), 0, "{driver:?}");
        // The main thread, one worker and at most two I/O threads: no io-wq threads.
        let threads = server.ringsock.threads();
        assert!(threads <= 4, "{driver:?}: {threads} threads");
        let start = Instant::now();
        assert_eq!(server.get(&get("/api/version")).status, 200);
        assert!(start.elapsed() < Duration::from_secs(1), "{driver:?}");
        for (i, conn) in clients.iter_mut().enumerate() {
            read_head(conn);
            let mut got = vec![0u8; 256 << 10];
            conn.reader
                .read_exact(&mut got)
                .unwrap_or_else(|e| panic!("{driver:?}: client {i} got no more: {e}"));
        }
    }
}

/// A client with a 16 KiB receive buffer, set before connecting: shrinking it on an
/// established connection makes the kernel drop segments inside the window it already
/// advertised, a stall of its own (perf/results/stall-tiny-rcvbuf-2026-12-02.md).
fn connect_small_window(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

/// Reads a response head, byte by byte so no body byte is consumed with it.
fn read_head(conn: &mut crate::serve::Conn) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.reader.read_exact(&mut byte).expect("response head");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads until EOF or an error within `limit`: the bytes read and whether it ended.
fn read_until_end(conn: &mut crate::serve::Conn, limit: Duration) -> (usize, bool) {
    let mut total = 0;
    let mut buf = vec![0u8; 64 << 10];
    // Each look blocks in read (up to the connection's read timeout): no pause between.
    let ended = poll_every(Duration::ZERO, limit, || match conn.reader.read(&mut buf) {
        Ok(0) => Some(()),
        Ok(n) => {
            total += n;
            None
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => None,
        Err(_) => Some(()),
    });
    if ended.is_none() {
        let _ = conn.reader.get_mut().flush();
    }
    (total, ended.is_some())
}
