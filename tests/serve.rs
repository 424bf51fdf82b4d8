//! `ringsock serve` against real clients over loopback: raw sockets for the protocol
//! edges, curl, Python's http.client and apt for real-world behaviour.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

/// A running `ringsock serve` on a fresh loopback port with its own root.
pub struct Server {
    pub ringsock: Ringsock,
    pub addr: SocketAddr,
    root: tempfile::TempDir,
}

pub fn serve(driver: Driver, extra: &[&str]) -> Server {
    let root = tempfile::tempdir().expect("root");
    serve_root(driver, root, extra)
}

pub fn serve_root(driver: Driver, root: tempfile::TempDir, extra: &[&str]) -> Server {
    let (listen, addr) = Listen::tcp();
    let root_arg = root.path().to_str().unwrap().to_string();
    let mut args = vec!["serve", "--root", root_arg.as_str()];
    args.extend_from_slice(extra);
    let ringsock = Spawn::new(&args).listen(listen).driver(driver).start();
    Server {
        ringsock,
        addr,
        root,
    }
}

impl Server {
    pub fn file(&self, rel: &str, data: &[u8]) -> PathBuf {
        let path = self.root.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        path
    }

    pub fn connect(&self) -> Conn {
        Conn::new(connect_tcp(self.addr))
    }

    /// One request on a fresh connection.
    pub fn get(&self, raw: &str) -> Response {
        let mut conn = self.connect();
        conn.send(raw.as_bytes());
        conn.response(raw.starts_with("HEAD"))
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct Conn {
    pub reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Conn {
            reader: BufReader::new(stream),
        }
    }

    pub fn send(&mut self, data: &[u8]) {
        self.reader.get_mut().write_all(data).expect("send request");
    }

    /// Reads one response; the body by Content-Length (none for HEAD and 304).
    pub fn response(&mut self, head_only: bool) -> Response {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        assert!(line.starts_with("HTTP/1.1 "), "bad status line {line:?}");
        let status = line[9..12].parse().expect("status code");
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("header line");
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (name, value) = trimmed.split_once(':').expect("header colon");
            headers.push((name.to_string(), value.trim().to_string()));
        }
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if !head_only && status != 304 {
            let len: usize = resp
                .header("Content-Length")
                .expect("Content-Length")
                .parse()
                .unwrap();
            resp.body = vec![0; len];
            self.reader.read_exact(&mut resp.body).expect("body");
        }
        resp
    }

    /// True when the server closed the connection (EOF or reset) within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .unwrap();
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

fn head(path: &str) -> String {
    format!("HEAD {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

fn with(path: &str, header: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n{header}\r\n\r\n")
}

#[test]
fn api_version_answers_like_aptly() {
    for driver in DRIVERS {
        let server = serve(driver, &[]);
        let resp = server.get(&get("/api/version"));
        assert_eq!(resp.status, 200, "{driver:?}");
        assert_eq!(
            resp.header("Content-Type"),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(
            resp.text(),
            format!("{{\"Version\":\"{}\"}}", env!("CARGO_PKG_VERSION"))
        );
        assert!(
            resp.header("Date").is_some_and(|d| d.ends_with(" GMT")),
            "{resp:?}"
        );
        assert!(resp
            .header("Server")
            .is_some_and(|s| s.starts_with("ringsock")));
        let resp = server.get(&head("/api/version"));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("Content-Length"), Some(resp_len().as_str()));
        assert_eq!(server.get(&get("/nothing")).status, 404);
        server.ringsock.stop();
    }
}

fn resp_len() -> String {
    format!("{{\"Version\":\"{}\"}}", env!("CARGO_PKG_VERSION"))
        .len()
        .to_string()
}

#[test]
fn listens_on_127_0_0_1_8080_without_sockets_or_listen() {
    // Port 8080 may be taken on a shared machine: then the error must name the address.
    let mut ringsock = Spawn::new(&["serve"]).start();
    let failed = within(Duration::from_secs(10), || {
        // Whether it exited first: what it wrote just before still counts.
        let status = ringsock.exited();
        let log = ringsock.stderr();
        if log.contains("listening on 127.0.0.1:8080") {
            Some(None)
        } else {
            status.map(|status| Some((status, log)))
        }
    })
    .unwrap_or_else(|| panic!("neither listened nor failed: {}", ringsock.stderr()));
    match failed {
        None => drop(ringsock.stop()),
        Some((status, log)) => {
            assert!(!status.success());
            assert!(log.contains("127.0.0.1:8080"), "{log}");
        }
    }
}

#[test]
fn listen_flag_and_unix_sockets() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let ringsock = Spawn::new(&["serve", "--listen", &listen]).start();
    ringsock.wait_for_log("listening on", Duration::from_secs(10));
    let mut conn = Conn::new(connect_tcp(listen.parse().unwrap()));
    conn.send(get("/api/version").as_bytes());
    assert_eq!(conn.response(false).status, 200);
    ringsock.stop();

    // An activated Unix socket, as aptly's units use; curl as the client.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("http.sock");
    for driver in DRIVERS {
        let _ = std::fs::remove_file(&path);
        let ringsock = Spawn::new(&["serve"])
            .listen(Listen::unix(&path))
            .driver(driver)
            .start();
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--unix-socket"])
            .arg(&path)
            .arg("http://localhost/api/version")
            .output()
            .expect("run curl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{{\"Version\":\"{}\"}}", env!("CARGO_PKG_VERSION")),
            "{driver:?}"
        );
        ringsock.stop();
    }
}

#[test]
fn keep_alive_and_pipelining() {
    for driver in DRIVERS {
        let server = serve(driver, &[]);
        server.file("a.txt", b"first");
        let mut conn = server.connect();
        // Three requests in one write: answered in order on the one connection.
        let batch = get("/a.txt") + &get("/missing") + &head("/api/version") + &get("/api/version");
        conn.send(batch.as_bytes());
        let a = conn.response(false);
        assert_eq!((a.status, a.text().as_str()), (200, "first"), "{driver:?}");
        assert_eq!(conn.response(false).status, 404);
        let h = conn.response(true);
        assert_eq!(h.status, 200);
        let v = conn.response(false);
        assert!(
            v.text().contains("Version"),
            "HEAD must not have sent a body: {v:?}"
        );
        // Still open: another round trip works.
        conn.send(get("/a.txt").as_bytes());
        assert_eq!(conn.response(false).status, 200);
        // Connection: close is honoured.
        conn.send(with("/a.txt", "Connection: close").as_bytes());
        let last = conn.response(false);
        assert_eq!(last.header("Connection"), Some("close"));
        assert!(conn.closed_within(Duration::from_secs(5)));

        // HTTP/1.0: closes unless keep-alive is asked for, and then says so.
        let mut conn = server.connect();
        conn.send(b"GET /a.txt HTTP/1.0\r\n\r\n");
        assert_eq!(conn.response(false).status, 200);
        assert!(conn.closed_within(Duration::from_secs(5)));
        let mut conn = server.connect();
        for _ in 0..2 {
            conn.send(b"GET /a.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
            let r = conn.response(false);
            assert_eq!(r.header("Connection"), Some("keep-alive"));
        }
        server.ringsock.stop();
    }
}

#[test]
fn a_long_pipeline_is_answered_in_order() {
    for driver in DRIVERS {
        let server = serve(driver, &[]);
        for i in 0..10 {
            server.file(
                &format!("f{i}"),
                format!("body {i}").repeat(i + 1).as_bytes(),
            );
        }
        // 500 requests in one write: heads split across reads, answers batched.
        let batch: String = (0..500)
            .map(|n| get(&format!("/f{}?n={n}", n % 10)))
            .collect();
        let mut conn = server.connect();
        let mut writer = conn.reader.get_ref().try_clone().unwrap();
        let sending = std::thread::spawn(move || writer.write_all(batch.as_bytes()));
        for n in 0..500 {
            let r = conn.response(false);
            let i = n % 10;
            assert_eq!(
                r.text(),
                format!("body {i}").repeat(i + 1),
                "{driver:?} answer {n}"
            );
        }
        sending.join().unwrap().unwrap();
        server.ringsock.stop();
    }
}

#[test]
fn bad_input_gets_a_clear_status_and_the_worker_survives() {
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "u".repeat(9000));
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "h".repeat(17000)
    );
    let cases: Vec<(&str, String, u16)> = vec![
        ("garbage", "\x16\x03\x01 hello\r\n\r\n".into(), 400),
        ("no host", "GET / HTTP/1.1\r\n\r\n".into(), 400),
        ("bad header", "GET / HTTP/1.1\r\nHost t\r\n\r\n".into(), 400),
        ("http/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".into(), 505),
        ("http/2 request", "GET / HTTP/2.0\r\nHost: t\r\n\r\n".into(), 505),
        ("long uri", long_uri, 414),
        ("big head", big_head, 431),
        ("unknown method", "BREW /pot HTTP/1.1\r\nHost: t\r\n\r\n".into(), 501),
        ("body on GET", "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello".into(), 400),
        ("chunked GET", "GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400),
        (
            "smuggling",
            "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            400,
        ),
        ("two lengths", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".into(), 400),
    ];
    for driver in DRIVERS {
        let server = serve(driver, &["--threads", "1"]);
        for (name, raw, status) in &cases {
            let mut conn = server.connect();
            conn.send(raw.as_bytes());
            let resp = conn.response(false);
            assert_eq!(resp.status, *status, "{driver:?} {name}");
            assert_eq!(resp.header("Connection"), Some("close"), "{name}");
            assert!(conn.closed_within(Duration::from_secs(5)), "{name}");
        }
        // 405 names what is allowed and, without a body, keeps the connection.
        let mut conn = server.connect();
        conn.send(b"DELETE /x HTTP/1.1\r\nHost: t\r\n\r\n");
        let resp = conn.response(false);
        assert_eq!(resp.status, 405);
        assert_eq!(resp.header("Allow"), Some("GET, HEAD"));
        conn.send(get("/api/version").as_bytes());
        assert_eq!(conn.response(false).status, 200);
        // `OPTIONS *` asks about the server, CONNECT names a host: the same 405, not a
        // 400 for the odd target.
        for raw in [
            "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
            "CONNECT deb.example:443 HTTP/1.1\r\nHost: deb.example:443\r\n\r\n",
        ] {
            conn.send(raw.as_bytes());
            let resp = conn.response(false);
            assert_eq!(resp.status, 405, "{raw:?}");
            assert_eq!(resp.header("Allow"), Some("GET, HEAD"));
        }
        // A later HTTP/1 minor version is served as HTTP/1.1 (RFC 9110 §2.5).
        conn.send(b"GET /api/version HTTP/1.2\r\nHost: t\r\n\r\n");
        assert_eq!(conn.response(false).status, 200);
        // A rejected HEAD is answered without a body, like any HEAD.
        let mut conn = server.connect();
        conn.send(b"HEAD /api/version HTTP/1.1\r\n\r\n");
        let resp = conn.response(true);
        assert_eq!(resp.status, 400);
        assert!(
            conn.closed_within(Duration::from_secs(5)),
            "{driver:?}: bytes after a HEAD's 400"
        );
        // The same worker still serves.
        assert_eq!(server.get(&get("/api/version")).status, 200);
        server.ringsock.stop();
    }
}

#[test]
fn slow_heads_get_408_and_idle_connections_close() {
    for driver in DRIVERS {
        let server = serve(
            driver,
            &["--header-timeout", "1s", "--keepalive-timeout", "1s"],
        );
        let start = Instant::now();
        let mut conn = server.connect();
        conn.send(b"GET /api/version HTTP/1.1\r\nHo");
        let resp = conn.response(false);
        assert_eq!(resp.status, 408, "{driver:?}");
        assert!(conn.closed_within(Duration::from_secs(5)));
        assert!(start.elapsed() < Duration::from_secs(5));

        let mut conn = server.connect();
        conn.send(get("/api/version").as_bytes());
        assert_eq!(conn.response(false).status, 200);
        let idle = Instant::now();
        assert!(conn.closed_within(Duration::from_secs(5)), "{driver:?}");
        let waited = idle.elapsed();
        assert!(
            waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
            "{waited:?}"
        );
        server.ringsock.stop();
    }
}

#[test]
fn repository_files_with_types_validators_and_ranges() {
    let data = pattern(1000, 3);
    for driver in DRIVERS {
        let server = serve(driver, &[]);
        for (rel, ty) in [
            (
                "pool/main/h/hello_1.0_amd64.deb",
                "application/vnd.debian.binary-package",
            ),
            ("pool/main/h/hello_1.0.dsc", "text/prs.lines.tag"),
            (
                "dists/x/main/binary-amd64/Packages",
                "text/plain; charset=utf-8",
            ),
            ("dists/x/main/binary-amd64/Packages.gz", "application/gzip"),
            ("dists/x/main/binary-amd64/Packages.xz", "application/x-xz"),
            (
                "dists/x/main/binary-amd64/Packages.bz2",
                "application/x-bzip2",
            ),
            ("dists/x/main/binary-amd64/Packages.zst", "application/zstd"),
            ("dists/x/Release", "text/plain; charset=utf-8"),
            ("dists/x/InRelease", "text/plain; charset=utf-8"),
            ("dists/x/Release.gpg", "application/pgp-signature"),
            ("key.asc", "application/pgp-signature"),
            ("index.html", "text/html; charset=utf-8"),
            ("x.json", "application/json"),
            ("pool/main/h/hello_1.0.orig.tar", "application/octet-stream"),
        ] {
            server.file(rel, &data);
            let resp = server.get(&get(&format!("/{rel}")));
            assert_eq!(resp.status, 200, "{driver:?} {rel}");
            assert_eq!(resp.header("Content-Type"), Some(ty), "{rel}");
            assert_eq!(resp.body, data, "{rel}");
        }
        let path = "/pool/main/h/hello_1.0_amd64.deb";
        // Published a while ago: a date validator is strong only a second after the
        // file changed (RFC 9110 §8.8.2.2), and If-Range below relies on it.
        let published = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        std::fs::File::options()
            .write(true)
            .open(server.root.path().join(&path[1..]))
            .unwrap()
            .set_modified(published)
            .unwrap();
        let full = server.get(&get(path));
        assert_eq!(full.header("Content-Length"), Some("1000"));
        assert_eq!(full.header("Accept-Ranges"), Some("bytes"));
        let modified = full.header("Last-Modified").unwrap().to_string();
        let etag = full.header("ETag").unwrap().to_string();

        // Conditionals.
        let r = server.get(&with(path, &format!("If-Modified-Since: {modified}")));
        assert_eq!(r.status, 304);
        assert_eq!(r.header("ETag"), Some(etag.as_str()));
        assert_eq!(
            server
                .get(&with(
                    path,
                    "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT"
                ))
                .status,
            200
        );
        assert_eq!(
            server
                .get(&with(path, "If-Modified-Since: not a date"))
                .status,
            200
        );
        assert_eq!(
            server
                .get(&with(path, &format!("If-None-Match: {etag}")))
                .status,
            304
        );
        assert_eq!(server.get(&with(path, "If-None-Match: *")).status, 304);
        assert_eq!(
            server.get(&with(path, "If-None-Match: \"other\"")).status,
            200
        );
        let both = format!("If-None-Match: \"other\"\r\nIf-Modified-Since: {modified}");
        assert_eq!(
            server.get(&with(path, &both)).status,
            200,
            "If-None-Match decides"
        );
        // Only the exact Last-Modified is "not modified" (nginx's default): a mirror file
        // replaced by an older one must not be 304 for a date after the older mtime.
        assert_eq!(
            server
                .get(&with(
                    path,
                    "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT"
                ))
                .status,
            200
        );
        // If-Match and If-Unmodified-Since guard a resumed download: 412 when the file
        // is not the one the client has the first part of.
        for (header, status) in [
            (format!("If-Match: {etag}\r\nRange: bytes=1-2"), 206),
            ("If-Match: \"other\"\r\nRange: bytes=1-2".to_string(), 412),
            (
                format!("If-Unmodified-Since: {modified}\r\nRange: bytes=1-2"),
                206,
            ),
            (
                "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\nRange: bytes=1-2".into(),
                412,
            ),
        ] {
            assert_eq!(server.get(&with(path, &header)).status, status, "{header}");
        }

        // Ranges: first byte, last byte, suffix, open end, beyond the end.
        for (range, first, last) in [
            ("0-0", 0, 0),
            ("999-999", 999, 999),
            ("-10", 990, 999),
            ("500-", 500, 999),
            ("990-5000", 990, 999),
        ] {
            let r = server.get(&with(path, &format!("Range: bytes={range}")));
            assert_eq!(r.status, 206, "{range}");
            assert_eq!(
                r.header("Content-Range"),
                Some(format!("bytes {first}-{last}/1000").as_str())
            );
            assert_eq!(r.body, &data[first..=last], "{range}");
        }
        for range in ["1000-", "5000-6000", "-0"] {
            let r = server.get(&with(path, &format!("Range: bytes={range}")));
            assert_eq!(r.status, 416, "{range}");
            assert_eq!(r.header("Content-Range"), Some("bytes */1000"));
        }
        // Several ranges or nonsense: the whole file.
        assert_eq!(server.get(&with(path, "Range: bytes=0-1,5-6")).status, 200);
        assert_eq!(server.get(&with(path, "Range: pages=1")).status, 200);
        // If-Range: the current validator gets the range, an old one the whole file.
        let r = server.get(&with(
            path,
            &format!("Range: bytes=10-19\r\nIf-Range: {etag}"),
        ));
        assert_eq!((r.status, r.body.len()), (206, 10));
        let r = server.get(&with(
            path,
            &format!("Range: bytes=10-19\r\nIf-Range: {modified}"),
        ));
        assert_eq!(r.status, 206);
        let r = server.get(&with(path, "Range: bytes=10-19\r\nIf-Range: \"old\""));
        assert_eq!((r.status, r.body.len()), (200, 1000));
        // HEAD: the head of a GET, no body.
        let r = server.get(&head(path));
        assert_eq!((r.status, r.header("Content-Length")), (200, Some("1000")));
        let mut conn = server.connect();
        conn.send((head(path) + &get("/api/version")).as_bytes());
        assert_eq!(conn.response(true).status, 200);
        assert!(conn.response(false).text().contains("Version"));
        // A file is not a directory: `a.deb/` is not found, as open(2) would say.
        assert_eq!(server.get(&get(&format!("{path}/"))).status, 404);
        // Dated in the future (a clock skewed at publication): announced as modified at
        // the response's own Date, never later (RFC 9110 §8.8.2.1).
        let future = server.file("future.deb", b"later");
        let in_2100 = std::time::UNIX_EPOCH + Duration::from_secs(4_102_444_800);
        std::fs::File::options()
            .write(true)
            .open(&future)
            .unwrap()
            .set_modified(in_2100)
            .unwrap();
        let r = server.get(&get("/future.deb"));
        assert_eq!(r.header("Last-Modified"), r.header("Date"), "{driver:?}");
        // Empty files.
        server.file("empty", b"");
        let r = server.get(&get("/empty"));
        assert_eq!((r.status, r.body.len()), (200, 0));
        assert_eq!(server.get(&with("/empty", "Range: bytes=0-")).status, 416);
        server.ringsock.stop();
    }
}

#[test]
fn paths_never_leave_the_root() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"SECRET").unwrap();
    for driver in DRIVERS {
        let server = serve(driver, &[]);
        server.file("pool/a.deb", b"inside");
        std::os::unix::fs::symlink(
            outside.path().join("secret"),
            server.root.path().join("out-abs"),
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.path(), server.root.path().join("out-dir")).unwrap();
        std::os::unix::fs::symlink("pool/a.deb", server.root.path().join("in-rel")).unwrap();
        std::os::unix::fs::symlink(
            server.root.path().join("pool/a.deb"),
            server.root.path().join("in-abs"),
        )
        .unwrap();
        let secret_rel = format!(
            "../{}/secret",
            outside.path().file_name().unwrap().to_str().unwrap()
        );
        for path in [
            format!("/{secret_rel}"),
            format!("/pool/../../{secret_rel}"),
            "/%2e%2e/%2e%2e/etc/passwd".into(),
            "/pool/..%2f..%2fetc/passwd".into(),
            "/pool%2f..%2f..%2fetc%2fpasswd".into(),
            "/..\\..\\etc\\passwd".into(),
            "/pool/%5c..%5c..%5cetc".into(),
            "/pool/a.deb%00.txt".into(),
            "/%zz".into(),
            "/out-abs".into(),
            "/out-dir/secret".into(),
            "/etc/passwd".into(),
            "//etc/passwd".into(),
        ] {
            let resp = server.get(&get(&path));
            assert!(
                matches!(resp.status, 400 | 403 | 404),
                "{driver:?} {path}: {}",
                resp.status
            );
            assert!(
                !resp.text().contains("SECRET") && !resp.text().contains("root:"),
                "{path}"
            );
        }
        assert_eq!(server.get(&get("/out-abs")).status, 403);
        // Links that stay inside are fine, relative or absolute.
        assert_eq!(server.get(&get("/in-rel")).text(), "inside");
        assert_eq!(server.get(&get("/in-abs")).text(), "inside");
        assert_eq!(server.get(&get("/pool/./a.deb")).text(), "inside");
        assert_eq!(server.get(&get("/pool//a%2Edeb?x=1")).text(), "inside");
        // Directories: 403 without --autoindex.
        assert_eq!(server.get(&get("/pool/")).status, 403);
        assert_eq!(server.get(&get("/")).status, 403);
        server.ringsock.stop();

        // --follow-symlinks lets links out; --autoindex lists directories.
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("out-abs"))
            .unwrap();
        std::fs::create_dir(root.path().join("pool")).unwrap();
        std::fs::write(root.path().join("pool/a <b>.deb"), b"x").unwrap();
        std::fs::write(root.path().join("pool/javascript:alert(1)"), b"x").unwrap();
        let server = serve_root(driver, root, &["--follow-symlinks", "--autoindex"]);
        assert_eq!(server.get(&get("/out-abs")).text(), "SECRET");
        // The slash form of a directory, built from the normalised path (`//pool/` would
        // send browsers to the host `pool`), with the query kept.
        for (path, location) in [
            ("/pool", "/pool/"),
            ("//pool", "/pool/"),
            ("/./pool?x=1", "/pool/?x=1"),
        ] {
            let r = server.get(&get(path));
            assert_eq!(
                (r.status, r.header("Location")),
                (301, Some(location)),
                "{path}"
            );
        }
        // A HEAD's redirect has no body: the pipelined request after it is read right.
        let mut conn = server.connect();
        conn.send((head("/pool") + &get("/api/version")).as_bytes());
        assert_eq!(conn.response(true).status, 301);
        assert!(conn.response(false).text().contains("Version"));
        let r = server.get(&get("/pool/"));
        assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
        assert!(
            r.text()
                .contains("href=\"./a%20%3Cb%3E.deb\">a &lt;b&gt;.deb</a>"),
            "{}",
            r.text()
        );
        // A name with a colon is no URL scheme: the link stays relative.
        assert!(
            r.text().contains("href=\"./javascript:alert%281%29\""),
            "{}",
            r.text()
        );
        let r = server.get(&get("/"));
        assert!(r.text().contains("href=\"./pool/\""), "{}", r.text());
        server.ringsock.stop();
    }
}

/// Request targets and Host values at the edges of the grammar (RFC 9112 §3.2, RFC 9110
/// §4.2), answered as nginx answers them where nginx is right: nothing but the path
/// names a file, and what the RFCs call invalid is 400.
#[test]
fn request_targets_and_hosts_at_the_edges() {
    for driver in DRIVERS {
        let server = serve(driver, &[]);
        server.file("small.txt", b"small\n");
        server.file("a#b", b"hash\n");
        let host = |value: &str| format!("GET /small.txt HTTP/1.1\r\nHost: {value}\r\n\r\n");
        let cases: Vec<(String, u16)> = vec![
            // The authority ends at `?` or `#`: the path is `/`, a directory (403).
            (get("http://x?/small.txt"), 403),
            (get("http://x#/small.txt"), 403),
            (get("http://u:p@x/small.txt"), 400),
            (get("http:///small.txt"), 400),
            (get("http://x:80/small.txt?q"), 200),
            ("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n".into(), 400),
            (
                "GET /small.txt HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n".into(),
                400,
            ),
            (host(":::::"), 400),
            (host("["), 400),
            (host(".."), 400),
            (host("a:80:80"), 400),
            (host("[::1]:8080"), 200),
            // A file is not a directory, however the slash or dot is spelt.
            (get("/small.txt/."), 404),
            (get("/small.txt/%2e"), 404),
            (get("/small.txt%2f"), 404),
            (get("/small.txt/"), 404),
            // A fragment is cut off, never read as part of a name.
            (get("/a#b"), 404),
            (get("/small.txt#frag"), 200),
            (get("/a%23b"), 200),
        ];
        for (request, want) in &cases {
            let resp = server.get(request);
            assert_eq!(resp.status, *want, "{driver:?} {request:?}");
        }
        server.ringsock.stop();
    }
}

/// A symlink leading out of the root (rsync -l copies them from an upstream as they are)
/// must not let a client make the server open, stat or even look up anything outside:
/// not a FIFO or a device (opening /dev/watchdog arms a reboot), and not whether a path
/// exists (every escaping path gets the same 403).
#[test]
fn escaping_symlinks_open_nothing_outside_the_root() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"SECRET").unwrap();
    let fifo = outside.path().join("fifo");
    let c_fifo = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o644) }, 0);
    let outside_name = outside.path().file_name().unwrap().to_str().unwrap();
    let outside_abs = outside.path().to_str().unwrap().to_string();
    for driver in DRIVERS {
        let server = serve(driver, &[]);
        let root = server.root.path();
        std::os::unix::fs::symlink("/", root.join("to-slash")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("to-outside")).unwrap();
        std::os::unix::fs::symlink(format!("../{outside_name}"), root.join("up")).unwrap();
        std::os::unix::fs::symlink(&fifo, root.join("fifo-link")).unwrap();
        std::fs::create_dir(root.join("pool")).unwrap();
        std::os::unix::fs::symlink(format!("../../{outside_name}/fifo"), root.join("pool/deep"))
            .unwrap();
        let watch = OpenWatch::new(&[outside.path(), &secret, &fifo]);
        let paths = [
            format!("/to-slash{outside_abs}/secret"),
            format!("/to-slash{outside_abs}/nope"),
            format!("/to-slash{outside_abs}/fifo"),
            "/to-slash/etc/passwd".into(),
            "/to-slash/etc/no-such-file".into(),
            "/to-slash".into(),
            "/to-outside/secret".into(),
            "/to-outside/nope".into(),
            "/to-outside/fifo".into(),
            "/up/secret".into(),
            "/up/nope".into(),
            "/fifo-link".into(),
            "/pool/deep".into(),
        ];
        for path in &paths {
            let resp = server.get(&get(path));
            assert_eq!(
                resp.status, 403,
                "{driver:?} {path}: the same answer for every escape"
            );
            assert!(!resp.text().contains("SECRET"), "{driver:?} {path}");
        }
        assert_eq!(
            watch.events(),
            0,
            "{driver:?}: the server opened or read something outside the root"
        );
        server.ringsock.stop();
    }
}

#[test]
fn files_over_4_gib() {
    for driver in DRIVERS {
        let server = serve(driver, &[]);
        let len: u64 = 5 << 30;
        let path = server.root.path().join("big.iso");
        {
            // Sparse: only the last page is written.
            let file = std::fs::File::create(&path).unwrap();
            file.set_len(len).unwrap();
            use std::os::unix::fs::FileExt;
            file.write_all_at(b"THE-END-MARKER", len - 14).unwrap();
        }
        let r = server.get(&head("/big.iso"));
        assert_eq!(
            r.header("Content-Length"),
            Some(len.to_string().as_str()),
            "{driver:?}"
        );
        let r = server.get(&with("/big.iso", "Range: bytes=-14"));
        assert_eq!(r.status, 206);
        assert_eq!(
            r.header("Content-Range"),
            Some(format!("bytes {}-{}/{len}", len - 14, len - 1).as_str())
        );
        assert_eq!(r.body, b"THE-END-MARKER");
        let r = server.get(&with(
            "/big.iso",
            &format!("Range: bytes={}-{}", (4u64 << 30) + 1, (4u64 << 30) + 4096),
        ));
        assert_eq!((r.status, r.body.len()), (206, 4096));
        assert!(r.body.iter().all(|&b| b == 0));
        server.ringsock.stop();
    }
}

#[test]
fn concurrent_large_downloads_and_a_stalled_client() {
    let data = std::sync::Arc::new(pattern(32 << 20, 11));
    for driver in DRIVERS {
        // One worker: the stalled client and the downloads share it.
        let server = serve(driver, &["--threads", "1"]);
        server.file("pool/big.deb", &data);
        // A client that asks for the file and never reads.
        let mut stalled = server.connect();
        stalled.send(get("/pool/big.deb").as_bytes());
        // Time for its answer to fill the socket, so the downloads share the worker with
        // a client that is already stalled.
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let data = data.clone();
                let addr = server.addr;
                std::thread::spawn(move || {
                    let mut conn = Conn::new(connect_tcp(addr));
                    conn.send(get("/pool/big.deb").as_bytes());
                    let r = conn.response(false);
                    assert_eq!(r.status, 200);
                    assert!(r.body == *data, "body differs");
                })
            })
            .collect();
        for t in threads {
            t.join().expect("download");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{driver:?}: {:?}",
            start.elapsed()
        );
        // Waiting on the stalled socket parks no io_uring kernel worker: the main thread
        // and the one worker are all there is.
        assert!(
            server.ringsock.threads() <= 3,
            "{driver:?}: {} threads",
            server.ringsock.threads()
        );
        // The stalled client still gets everything once it reads.
        let r = stalled.response(false);
        assert!(r.body == *data, "{driver:?}: stalled client's body differs");
        server.ringsock.stop();
    }
}

#[test]
fn a_client_that_stops_reading_is_dropped_after_the_keepalive_timeout() {
    let data = pattern(32 << 20, 13);
    for driver in DRIVERS {
        let server = serve(driver, &["--keepalive-timeout", "1s"]);
        server.file("big", &data);
        let mut conn = server.connect();
        conn.send(get("/big").as_bytes());
        // Reading nothing for longer than --keepalive-timeout is the test.
        std::thread::sleep(Duration::from_millis(2500));
        let mut got = Vec::new();
        let start = Instant::now();
        let _ = conn.reader.read_to_end(&mut got);
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(
            got.len() < data.len(),
            "{driver:?}: the whole body arrived anyway"
        );
        assert_eq!(server.get(&get("/api/version")).status, 200);
        server.ringsock.stop();
    }
}

#[test]
fn graceful_shutdown_finishes_responses_and_closes_idle_connections() {
    let data = pattern(16 << 20, 5);
    for driver in DRIVERS {
        let mut server = serve(driver, &[]);
        server.file("big", &data);
        let mut idle = server.connect();
        idle.send(get("/api/version").as_bytes());
        assert_eq!(idle.response(false).status, 200);
        // Connected but silent: nothing to finish either.
        let mut fresh = server.connect();
        // A download in flight: the client has not read the body yet.
        let mut busy = server.connect();
        busy.send(get("/big").as_bytes());
        // Time for the answer to get under way, so SIGTERM finds it in flight.
        std::thread::sleep(Duration::from_millis(200));
        server.ringsock.signal(libc::SIGTERM);
        assert!(idle.closed_within(Duration::from_secs(5)), "{driver:?}");
        assert!(fresh.closed_within(Duration::from_secs(5)), "{driver:?}");
        let r = busy.response(false);
        assert!(r.body == data, "{driver:?}: in-flight body cut");
        let status = server.ringsock.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "{status}");
    }
}

#[test]
fn metrics_count_connections_requests_and_bytes() {
    for driver in DRIVERS {
        let server = serve(driver, &["--threads", "2"]);
        server.file("f", b"0123456789");
        for _ in 0..3 {
            assert_eq!(server.get(&get("/f")).status, 200);
        }
        assert_eq!(server.get(&get("/nope")).status, 404);
        let r = server.get(&get("/metrics"));
        assert_eq!(
            r.header("Content-Type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let text = r.text();
        let value = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
                .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
        };
        assert_eq!(
            value("ringsock_connections_accepted_total"),
            5,
            "{driver:?}"
        );
        assert!(value("ringsock_connections_open") >= 1);
        // The /metrics request itself is counted after rendering.
        assert_eq!(value("ringsock_http_responses_total{code=\"2xx\"}"), 3);
        assert_eq!(value("ringsock_http_responses_total{code=\"4xx\"}"), 1);
        assert!(value("ringsock_http_response_bytes_total") > 30);
        // Four requests answered before this one: the histogram counts them, its
        // buckets never decrease, and +Inf equals the count.
        assert_eq!(value("ringsock_http_request_duration_seconds_count"), 4);
        let buckets: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with("ringsock_http_request_duration_seconds_bucket{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(buckets.len(), 15, "{text}");
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
        assert_eq!(buckets.last(), Some(&4));
        assert!(text.contains("ringsock_http_request_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
        server.ringsock.stop();
    }
}

#[test]
fn curl_and_python_http_client() {
    for driver in DRIVERS {
        let server = serve(driver, &[]);
        let data = pattern(300_000, 9);
        server.file("dists/x/Packages.gz", &data);
        let base = format!("http://{}", server.addr);
        // curl reuses one connection for several URLs.
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "-w",
                "%{http_code} %{num_connects} %{size_download}\\n",
            ])
            .args(["-o", "/dev/null", &format!("{base}/api/version")])
            .args(["-o", "/dev/null", &format!("{base}/dists/x/Packages.gz")])
            .args(["-o", "/dev/null", &format!("{base}/dists/x/Packages.gz")])
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text,
            "200 1 19\n200 0 300000\n200 0 300000\n".replace("19", &resp_len()),
            "{driver:?}"
        );
        // Resume: curl -C asks for a Range.
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("p");
        std::fs::write(&partial, &data[..1234]).unwrap();
        let status = Command::new("curl")
            .args(["-sS", "--max-time", "20", "-C", "-", "-o"])
            .arg(&partial)
            .arg(format!("{base}/dists/x/Packages.gz"))
            .status()
            .unwrap();
        assert!(status.success());
        assert!(std::fs::read(&partial).unwrap() == data);

        let script = r#"
import http.client, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=20)
out = []
for path, method in [("/api/version", "GET"), ("/dists/x/Packages.gz", "HEAD"), ("/dists/x/Packages.gz", "GET"), ("/missing", "GET")]:
    c.request(method, path)
    r = c.getresponse()
    body = r.read()
    out.append("%s %d %d %s" % (method, r.status, len(body), r.getheader("Content-Type")))
print("\n".join(out))
"#;
        let out = Command::new("python3")
            .args(["-c", script, "127.0.0.1", &server.addr.port().to_string()])
            .output()
            .expect("run python3");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = format!(
            "GET 200 {} application/json; charset=utf-8\nHEAD 200 0 application/gzip\nGET 200 300000 application/gzip\nGET 404 14 text/plain; charset=utf-8\n",
            resp_len()
        );
        assert_eq!(text, expected, "{driver:?}");
        server.ringsock.stop();
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A flat repository with one package: `deb [trusted=yes] http://.../ ./`.
fn build_repository(root: &Path, work: &Path) {
    let pkg = work.join("pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/share/doc/ringsock-test")).unwrap();
    std::fs::write(
        pkg.join("usr/share/doc/ringsock-test/README"),
        pattern(50_000, 1),
    )
    .unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        "Package: ringsock-test\nVersion: 1.0\nArchitecture: all\nMaintainer: Test <test@example.org>\n\
         Description: ringsock test package\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("pool")).unwrap();
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&pkg)
        .arg(root.join("pool/ringsock-test_1.0_all.deb")));
    let packages = run(Command::new("dpkg-scanpackages")
        .args(["--multiversion", "pool", "/dev/null"])
        .current_dir(root));
    std::fs::write(root.join("Packages"), &packages).unwrap();
    run(Command::new("gzip")
        .args(["-k", "-9", "Packages"])
        .current_dir(root));
    let mut release = String::from("Origin: ringsock\nLabel: ringsock\nSuite: test\nCodename: test\nDate: Thu, 01 Jan 2026 00:00:00 UTC\nArchitectures: all amd64\n");
    for (field, tool) in [("MD5Sum", "md5sum"), ("SHA256", "sha256sum")] {
        release.push_str(&format!("{field}:\n"));
        for name in ["Packages", "Packages.gz"] {
            let sum = run(Command::new(tool).arg(name).current_dir(root));
            let size = std::fs::metadata(root.join(name)).unwrap().len();
            release.push_str(&format!(
                " {} {size} {name}\n",
                sum.split_whitespace().next().unwrap()
            ));
        }
    }
    std::fs::write(root.join("Release"), release).unwrap();
}

#[test]
fn apt_update_and_download() {
    if !apt_can_run() {
        eprintln!("skipping: apt's isolated run needs root");
        return;
    }
    for driver in DRIVERS {
        let root = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        build_repository(root.path(), work.path());
        let server = serve_root(driver, root, &[]);
        let source = format!("deb [trusted=yes] http://{}/ ./", server.addr);
        let apt = Apt::new(&work.path().join("apt"), &source);
        let apt_get = |args: &[&str]| apt.get(args);
        let update = apt_get(&["update"]);
        assert!(update.contains("Get:"), "{driver:?}: {update}");
        apt_get(&["download", "ringsock-test"]);
        let deb = apt.out().join("ringsock-test_1.0_all.deb");
        assert!(
            std::fs::read(&deb).unwrap()
                == std::fs::read(server.root.path().join("pool/ringsock-test_1.0_all.deb"))
                    .unwrap()
        );
        // A second update revalidates: unchanged files are not fetched again.
        let again = apt_get(&["update"]);
        assert!(
            again.contains("Hit:") || !again.contains("Get:2"),
            "{driver:?}: {again}"
        );
        server.ringsock.stop();
    }
}
