//! Hostile input against the real binary on both drivers: malformed heads (a fixed list
//! and thousands of mutated ones), half-closed readers and backends, signals, idle and
//! slow clients at the default limits, running out of fds. No client may leave a worker
//! busy, a connection open past its timeouts, or the others locked out.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::proxy::proxy;
use crate::serve::{get, serve, Server};
use crate::util::*;

/// A worker pinned at 100% would use all of this window; an idle one almost none.
const QUIET_WINDOW: Duration = Duration::from_millis(1000);
const QUIET_MAX_CPU: Duration = Duration::from_millis(150);

fn assert_quiet(ringsock: &Ringsock, what: &str) {
    let used = ringsock.cpu_during(QUIET_WINDOW);
    assert!(
        used <= QUIET_MAX_CPU,
        "{what}: ringsock used {used:?} of CPU in {QUIET_WINDOW:?} while nothing was to be done\n{}",
        ringsock.stderr()
    );
}

/// A GET for `/api/version` on a fresh connection: its status line, or why none came
/// within `limit`.
fn probe(addr: SocketAddr, limit: Duration) -> Result<String, String> {
    let start = Instant::now();
    let mut conn = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(limit)).unwrap();
    conn.write_all(get("/api/version").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut head = [0u8; 12];
    conn.read_exact(&mut head)
        .map_err(|e| format!("no answer after {:?}: {e}", start.elapsed()))?;
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn assert_answers(server: &Server, what: &str) {
    match probe(server.addr, Duration::from_secs(1)) {
        Ok(line) => assert_eq!(line, "HTTP/1.1 200", "{what}"),
        Err(e) => panic!("{what}: {e}\n{}", server.ringsock.stderr()),
    }
}

#[test]
fn malformed_request_lines_get_400_and_the_worker_goes_on() {
    let cases = [
        // Used to be "corrected" forever, pinning the worker (no answer, no 408).
        ("four parts, HTTP/1.0", "GET /a b HTTP/1.0\r\n\r\n"),
        (
            "four parts, HTTP/1.1",
            "GET /a b HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        (
            "four parts, HTTP/1.2",
            "GET /a b HTTP/1.2\r\nHost: t\r\n\r\n",
        ),
        (
            "invalid Host",
            "GET /api/version HTTP/1.1\r\nHost: a b\r\n\r\n",
        ),
        (
            "unknown transfer coding",
            "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n",
        ),
    ];
    for driver in DRIVERS {
        let server = serve(driver, &["--threads", "1"]);
        for (name, raw) in cases {
            let mut conn = server.connect();
            conn.send(raw.as_bytes());
            let resp = conn.response(false);
            assert_eq!(resp.status, 400, "{driver:?} {name}");
            assert_eq!(
                resp.header("Connection"),
                Some("close"),
                "{driver:?} {name}"
            );
            assert!(
                conn.closed_within(Duration::from_secs(5)),
                "{driver:?} {name}"
            );
            assert_answers(&server, &format!("{driver:?} after {name}"));
        }
        // A suffix range of an empty file selects nothing: the Range is ignored.
        server.file("empty", b"");
        let resp = server.get("GET /empty HTTP/1.1\r\nHost: t\r\nRange: bytes=-5\r\n\r\n");
        assert_eq!(resp.status, 200, "{driver:?}");
        assert!(resp.body.is_empty());
        server.ringsock.stop();
    }
}

#[test]
fn a_half_closed_client_that_never_reads_costs_no_cpu_and_is_dropped() {
    let data = vec![7u8; 32 << 20];
    for driver in DRIVERS {
        let server = serve(driver, &["--threads", "1", "--keepalive-timeout", "2s"]);
        server.file("big", &data);
        let start = Instant::now();
        let mut client = connect_tcp(server.addr);
        set_receive_buffer(&client, 4096);
        client.write_all(get("/big").as_bytes()).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        // Time to fill the client's small window: the CPU is measured once the server
        // can only wait, and no event says when that is.
        std::thread::sleep(Duration::from_millis(300));
        assert_quiet(
            &server.ringsock,
            &format!("{driver:?}: a half-closed client"),
        );
        assert_answers(&server, &format!("{driver:?}: beside a half-closed client"));
        // Nothing read for --keepalive-timeout: the connection is given up.
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got);
        let waited = start.elapsed();
        assert!(
            waited < Duration::from_secs(8),
            "{driver:?}: still open after {waited:?}"
        );
        assert!(got.len() < data.len(), "{driver:?}: the whole body arrived");
        server.ringsock.stop();
    }
}

#[test]
fn a_backend_that_answers_half_closes_and_stops_reading_costs_no_cpu() {
    for driver in DRIVERS {
        let backend = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = backend.local_addr().unwrap().to_string();
        let (ringsock, addr) = proxy(driver, &["--threads", "1"], &target);
        let mut client = connect_tcp(addr);
        let (mut upstream, _) = backend.accept().unwrap();
        upstream.write_all(b"early answer").unwrap();
        upstream.shutdown(Shutdown::Write).unwrap();
        let mut writer = client.try_clone().unwrap();
        let uploading = std::thread::spawn(move || {
            writer
                .set_write_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let chunk = vec![1u8; 1 << 20];
            for _ in 0..256 {
                if writer.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        let mut answer = [0u8; 12];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"early answer");
        // Time for the upload to fill every buffer on the way to the backend (the
        // writer blocks, which nothing outside it shows), before the CPU is measured.
        std::thread::sleep(Duration::from_millis(500));
        assert_quiet(
            &ringsock,
            &format!("{driver:?}: a backend that stopped reading"),
        );
        drop(upstream);
        drop(client);
        uploading.join().unwrap();
        ringsock.stop();
    }
}

#[test]
fn signals_other_than_term_and_int_are_logged_and_change_nothing() {
    const STREAMS: usize = 8;
    const CHUNKS: usize = 10;
    for driver in DRIVERS {
        let backend = Backend::unix(Reply::Echo);
        let (mut ringsock, addr) = proxy(driver, &[], &backend.target);
        // Streams that stay in flight while the signals arrive.
        let streams: Vec<_> = (0..STREAMS)
            .map(|i| {
                let data = pattern(CHUNKS << 16, i as u64 + 1);
                let conn = connect_tcp(addr);
                std::thread::spawn(move || {
                    let mut reader = conn.try_clone().unwrap();
                    let reading = std::thread::spawn(move || {
                        let mut got = Vec::new();
                        reader.read_to_end(&mut got).map(|_| got)
                    });
                    let mut conn = conn;
                    for chunk in data.chunks(1 << 16) {
                        conn.write_all(chunk).unwrap();
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    conn.shutdown(Shutdown::Write).unwrap();
                    let got = reading.join().unwrap().expect("read echo");
                    got == data
                })
            })
            .collect();
        // The signals come while the streams are under way, not before they start.
        std::thread::sleep(Duration::from_millis(150));
        for (signal, name) in [
            (libc::SIGHUP, "SIGHUP"),
            (libc::SIGUSR1, "SIGUSR1"),
            (libc::SIGUSR2, "SIGUSR2"),
            (libc::SIGALRM, "SIGALRM"),
        ] {
            ringsock.signal(signal);
            ringsock.wait_for_log(&format!("received {name}; ignored"), Duration::from_secs(5));
            assert!(
                ringsock.exited().is_none(),
                "{driver:?}: {name} ended the process"
            );
        }
        for (i, stream) in streams.into_iter().enumerate() {
            assert!(stream.join().unwrap(), "{driver:?}: stream {i} differs");
        }
        ringsock.stop();
    }
}

/// Request heads a fuzzer would start from: what apt, curl and browsers send, plus the
/// edges the parser has rules for.
const SEED_HEADS: [&str; 8] = [
    "GET /dists/bookworm/InRelease HTTP/1.1\r\nHost: deb\r\nUser-Agent: Debian APT-HTTP/1.3 (2.6.1)\r\n\r\n",
    "GET /pool/main/a.deb HTTP/1.1\r\nHost: deb\r\nRange: bytes=10-\r\nIf-Range: \"5f-3\"\r\n\r\n",
    "HEAD /api/version HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "GET /a%20b/../c?x=1 HTTP/1.1\r\nHost: [::1]:80\r\nIf-None-Match: W/\"x\", *\r\n\r\n",
    "POST /api HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "GET http://deb.example/dists/ HTTP/1.2\r\nHost: deb.example\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    "GET /metrics HTTP/1.1\r\nHost: t\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n",
];

/// Bytes that mean something to an HTTP parser, to splice into a head.
const TOKENS: [&[u8]; 16] = [
    b" ",
    b"\r",
    b"\n",
    b"\r\n",
    b"\0",
    b"\t",
    b":",
    b"%",
    b"%2",
    b"HTTP/1.",
    b"/..",
    b"\xff",
    b"Host: ",
    b"Range: bytes=-",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 99999999999999999999\r\n",
];

/// Deterministic pseudo-random numbers (xorshift), so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A seed head with one to four random mutations.
fn mutated_head(rng: &mut Rng) -> Vec<u8> {
    let mut head = SEED_HEADS[rng.below(SEED_HEADS.len())].as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(head.len() + 1);
        match rng.below(6) {
            0 if at < head.len() => head[at] = rng.next() as u8,
            1 => head
                .splice(at..at, TOKENS[rng.below(TOKENS.len())].iter().copied())
                .for_each(drop),
            2 => head.truncate(at),
            3 => {
                let end = (at + rng.below(16)).min(head.len());
                head.drain(at..end);
            }
            4 => {
                let end = (at + rng.below(64)).min(head.len());
                let copy = head[at..end].to_vec();
                head.splice(at..at, copy).for_each(drop);
            }
            _ => head = (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
        }
    }
    head
}

#[test]
fn thousands_of_mutated_heads_never_leave_a_worker_busy() {
    const BATCHES: u64 = 8;
    const PER_BATCH: usize = 250;
    for driver in DRIVERS {
        let server = serve(
            driver,
            &[
                "--threads",
                "1",
                "--header-timeout",
                "1s",
                "--keepalive-timeout",
                "1s",
            ],
        );
        // The listener and the worker's copy of it, once the worker runs.
        server.ringsock.expect_driver(driver);
        let listening = server.ringsock.open_sockets();
        let mut held = Vec::new();
        for batch in 0..BATCHES {
            held.clear();
            let seed = 0x5eed_0000 + batch;
            let mut rng = Rng(seed);
            for _ in 0..PER_BATCH {
                let head = mutated_head(&mut rng);
                // A worker that stopped accepting leaves the backlog full: connect hangs.
                let Ok(mut conn) = TcpStream::connect_timeout(&server.addr, Duration::from_secs(2))
                else {
                    panic!(
                        "{driver:?}: connect failed in batch seed {seed:#x}\n{}",
                        server.ringsock.stderr()
                    );
                };
                let _ = conn.write_all(&head);
                // Half are left open, as a client waiting for its answer would.
                if rng.below(2) == 0 {
                    held.push(conn);
                }
            }
            assert_answers(&server, &format!("{driver:?}: after batch seed {seed:#x}"));
        }
        assert_quiet(
            &server.ringsock,
            &format!("{driver:?}: after the last batch"),
        );
        // Every connection the last batch left open is closed within its timeouts
        // (1 s for the head, then at most 2 s of lingering after the error answer).
        wait_until(
            Duration::from_secs(8),
            || (server.ringsock.open_sockets() == listening).then_some(()),
            || {
                format!(
                    "{driver:?}: connections outlived their timeouts ({} sockets open, {listening} \
                     listening):\n{}\n{}",
                    server.ringsock.open_sockets(),
                    sockets_of(&server.ringsock),
                    server.ringsock.stderr()
                )
            },
        );
        drop(held);
        server.ringsock.stop();
    }
}

#[test]
fn idle_and_slow_clients_at_the_default_limits_lock_nobody_out() {
    const IDLE: usize = 2000;
    const SLOW_HEADS: usize = 300;
    for driver in DRIVERS {
        let server = serve(driver, &[]);
        server.file("big", &vec![1u8; 16 << 20]);
        let idle: Vec<TcpStream> = (0..IDLE).map(|_| connect_tcp(server.addr)).collect();
        let mut slow: Vec<TcpStream> = (0..SLOW_HEADS).map(|_| connect_tcp(server.addr)).collect();
        let readers: Vec<TcpStream> = (0..20)
            .map(|_| {
                let mut c = connect_tcp(server.addr);
                set_receive_buffer(&c, 4096);
                c.write_all(get("/big").as_bytes()).unwrap();
                c.shutdown(Shutdown::Write).unwrap();
                c
            })
            .collect();
        // Slowloris: one byte of a head every half second, for three seconds.
        let head = get("/api/version");
        for byte in head.as_bytes().iter().take(6) {
            for conn in &mut slow {
                let _ = conn.write_all(std::slice::from_ref(byte));
            }
            assert_answers(
                &server,
                &format!("{driver:?}: beside idle and slow clients"),
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        assert_quiet(
            &server.ringsock,
            &format!("{driver:?}: idle and slow clients"),
        );
        for _ in 0..20 {
            assert_answers(
                &server,
                &format!("{driver:?}: beside idle and slow clients"),
            );
        }
        drop((idle, slow, readers));
        server.ringsock.stop();
    }
}

#[test]
fn idle_proxied_connections_at_the_default_limit_lock_nobody_out() {
    const IDLE: usize = 2000;
    for driver in DRIVERS {
        let backend = Backend::unix(Reply::Echo);
        let (ringsock, addr) = proxy(driver, &[], &backend.target);
        let idle: Vec<TcpStream> = (0..IDLE).map(|_| connect_tcp(addr)).collect();
        backend.wait_accepted(IDLE, Duration::from_secs(30));
        assert_quiet(&ringsock, &format!("{driver:?}: {IDLE} idle connections"));
        for i in 0..20u64 {
            let conn = connect_tcp(addr);
            conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let data = pattern(100, i + 1);
            assert_eq!(send_half_close_read(conn, &data), data, "{driver:?}");
        }
        drop(idle);
        ringsock.stop();
    }
}

#[test]
fn serve_out_of_fds_answers_503_and_closes() {
    for driver in DRIVERS {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("small"), b"hello").unwrap();
        let (listen, addr) = Listen::tcp();
        let ringsock = Spawn::new(&[
            "serve",
            "--root",
            root.path().to_str().unwrap(),
            "--threads",
            "1",
            "-c",
            "1000",
        ])
        .listen(listen)
        .driver(driver)
        .fd_limit(48)
        .start();
        ringsock.expect_driver(driver);
        // Each kept connection takes one fd; the file's own fd is given back after each
        // answer. When the accept takes the last fd, the file cannot be opened.
        let mut kept = Vec::new();
        let unavailable = loop {
            assert!(kept.len() < 48, "{driver:?}: never ran out of fds");
            let mut conn = crate::serve::Conn::new(connect_tcp(addr));
            conn.reader
                .get_ref()
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            conn.send(get("/small").as_bytes());
            let resp = conn.response(false);
            if resp.status == 503 {
                break (conn, resp);
            }
            assert_eq!(resp.status, 200, "{driver:?}");
            kept.push(conn);
        };
        let (mut conn, resp) = unavailable;
        assert_eq!(resp.header("Connection"), Some("close"), "{driver:?}");
        assert_eq!(resp.header("Retry-After"), Some("1"), "{driver:?}");
        assert!(conn.closed_within(Duration::from_secs(5)), "{driver:?}");
        // Freed fds serve again, once the server has closed its side of two.
        let open = ringsock.open_sockets();
        kept.truncate(kept.len() - 2);
        wait_until(
            Duration::from_secs(5),
            || (ringsock.open_sockets() <= open - 2).then_some(()),
            || format!("{driver:?}: two closed connections still open in ringsock"),
        );
        assert_eq!(
            probe(addr, Duration::from_secs(3)).as_deref(),
            Ok("HTTP/1.1 200"),
            "{driver:?}\n{}",
            ringsock.stderr()
        );
        drop(kept);
        ringsock.stop();
    }
}

/// `ss`'s view of the process's sockets, for a failure message.
fn sockets_of(ringsock: &Ringsock) -> String {
    let out = std::process::Command::new("ss")
        .args(["-anpe"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let pid = format!("pid={},", ringsock.pid());
    let fds = std::process::Command::new("ls")
        .args(["-l", &format!("/proc/{}/fd", ringsock.pid())])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let listed: Vec<&str> = out.lines().filter(|l| l.contains(&pid)).collect();
    format!("{}\n{fds}", listed.join("\n"))
}
