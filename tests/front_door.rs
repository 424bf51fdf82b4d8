//! The aptly host with ringsock as its only front (issue 21): the real aptly on its
//! activated Unix socket, `serve --root PUBLIC --route /api/=SOCKET` on one TCP port,
//! curl and apt-get as the clients, on both drivers.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::serve::{Conn, Response};
use crate::util::*;

/// ringsock in front of `aptly`: its published tree, its API under /api/.
struct Front {
    ringsock: Ringsock,
    addr: std::net::SocketAddr,
    log: std::path::PathBuf,
}

fn front(driver: Driver, aptly: &Aptly, dir: &Path, extra: &[&str]) -> Front {
    let (listen, addr) = Listen::tcp();
    let public = aptly.public();
    let route = format!("/api/={}", aptly.socket.display());
    let log = dir.join("access.log");
    let mut args = vec![
        "serve",
        "--root",
        public.to_str().unwrap(),
        "--route",
        &route,
        "--access-log",
        log.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let ringsock = Spawn::new(&args).listen(listen).driver(driver).start();
    Front {
        ringsock,
        addr,
        log,
    }
}

impl Front {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `curl ARGS URL`: the status, then the body.
    fn curl(&self, args: &[&str], path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "60", "-w", "\n%{http_code}"])
            .args(args)
            .arg(self.url(path))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        let status = status.trim().parse().unwrap_or(0);
        (status, body.to_string())
    }

    /// The access log's lines, once the workers have written them (once a second).
    fn log_lines(&self, at_least: usize) -> Vec<String> {
        wait_until(
            Duration::from_secs(10),
            || {
                let text = std::fs::read_to_string(&self.log).unwrap_or_default();
                let lines: Vec<String> = text.lines().map(str::to_string).collect();
                (lines.len() >= at_least).then_some(lines)
            },
            || format!("{at_least} access log lines in {}", self.log.display()),
        )
    }
}

/// A package for aptly to take: `NAME_1.0_all.deb` with one file of `size` bytes.
fn package(work: &Path, name: &str, size: usize) -> std::path::PathBuf {
    let pkg = work.join(format!("{name}-src"));
    let doc = pkg.join(format!("usr/share/doc/{name}"));
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(&doc).unwrap();
    std::fs::write(doc.join("README"), pattern(size, 7)).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: 1.0\nArchitecture: all\n\
             Maintainer: Test <test@example.org>\nDescription: front door test\n"
        ),
    )
    .unwrap();
    let deb = work.join(format!("{name}_1.0_all.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&pkg)
        .arg(&deb)
        .output()
        .expect("run dpkg-deb");
    assert!(status.status.success(), "{status:?}");
    deb
}

/// Upload, create, add, publish: the calls an operator's script makes, through `front`.
fn publish(front: &Front, deb: &Path, auth: &[&str]) {
    let form = format!("file=@{}", deb.display());
    let upload = [auth, &["-F", &form]].concat();
    let (status, body) = front.curl(&upload, "/api/files/incoming");
    let name = deb.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, format!("[\"incoming/{name}\"]").as_str())
    );
    let json = ["-H", "Content-Type: application/json", "-X", "POST", "-d"];
    let create = [
        auth,
        &json,
        &[r#"{"Name":"r","DefaultDistribution":"stable","DefaultComponent":"main"}"#],
    ]
    .concat();
    let (status, body) = front.curl(&create, "/api/repos");
    assert_eq!(status, 201, "create: {body}");
    let (status, body) = front.curl(
        &[auth, &["-X", "POST"]].concat(),
        "/api/repos/r/file/incoming",
    );
    assert_eq!(status, 200, "add: {body}");
    assert!(body.contains("added"), "add: {body}");
    let publish = [
        auth,
        &json,
        &[r#"{"SourceKind":"local","Sources":[{"Name":"r"}],"Architectures":["amd64","all"],"Distribution":"stable","Signing":{"Skip":true}}"#],
    ]
    .concat();
    let (status, body) = front.curl(&publish, "/api/publish/:.");
    assert_eq!(status, 201, "publish: {body}");
}

#[test]
fn aptly_behind_one_port_publishes_and_apt_installs_from_it() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let aptly = Aptly::start(dir.path());
        let front = front(driver, &aptly, dir.path(), &[]);
        // aptly's own answer, not ringsock's /api/version: the route covers it.
        let (status, body) = front.curl(&[], "/api/version");
        assert_eq!((status, body), (200, Aptly::version_json()), "{driver:?}");

        let deb = package(dir.path(), "ringsock-front", 200_000);
        publish(&front, &deb, &[]);
        let (status, release) = front.curl(&[], "/dists/stable/Release");
        assert_eq!(status, 200);
        assert!(release.contains("Suite: stable"), "{release}");

        if apt_can_run() {
            let source = format!("deb [trusted=yes] http://{}/ stable main", front.addr);
            let apt = Apt::new(&dir.path().join("apt"), &source);
            let update = apt.get(&["update"]);
            assert!(update.contains("stable/main all Packages"), "{update}");
            apt.get(&["install", "-y", "--no-install-recommends", "ringsock-front"]);
            let installed = apt.root().join("usr/share/doc/ringsock-front/README");
            assert!(
                std::fs::read(&installed).unwrap() == pattern(200_000, 7),
                "{driver:?}"
            );
        } else {
            eprintln!("skipping apt-get: its isolated run needs root");
        }

        // Routed lines carry aptly's status and time; the tree's carry `- -`.
        let lines = front.log_lines(6);
        let routed = lines
            .iter()
            .find(|l| l.contains("\"POST /api/repos HTTP/1.1\" 201"));
        let routed = routed.unwrap_or_else(|| panic!("no routed line in {lines:#?}"));
        assert!(routed.contains(" 201 0."), "{routed}");
        let tree = lines
            .iter()
            .find(|l| l.contains("GET /dists/stable/Release"));
        assert!(tree.unwrap().ends_with(" - -"), "{lines:#?}");
        let (_, metrics) = front.curl(&[], "/metrics");
        assert!(
            metrics.contains("ringsock_routed_requests_total{route=\"/api/\",outcome=\"2xx\"} 5"),
            "{metrics}"
        );
        front.ringsock.stop();
    }
}

#[test]
fn a_pipelined_mix_of_routed_and_file_requests_is_answered_in_order() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let aptly = Aptly::start(dir.path());
        std::fs::write(aptly.public().join("hello.txt"), b"hello from the tree\n").unwrap();
        let front = front(driver, &aptly, dir.path(), &[]);
        let requests = [
            ("GET", "/api/version"),
            ("GET", "/hello.txt"),
            ("GET", "/api/repos"),
            ("HEAD", "/hello.txt"),
            ("GET", "/api/nothing-here"),
            ("GET", "/missing.txt"),
            ("GET", "/api/version"),
        ];
        let mut raw = String::new();
        for (method, path) in requests {
            raw.push_str(&format!("{method} {path} HTTP/1.1\r\nHost: repo\r\n\r\n"));
        }
        let mut conn = Conn::new(connect_tcp(front.addr));
        conn.send(raw.as_bytes());
        let answers: Vec<Response> = requests
            .iter()
            .map(|(method, _)| conn.response(*method == "HEAD"))
            .collect();
        let version = Aptly::version_json();
        let expected: [(u16, Option<&[u8]>); 7] = [
            (200, Some(version.as_bytes())),
            (200, Some(b"hello from the tree\n")),
            (200, Some(b"[]")),
            (200, None),
            (404, None),
            (404, None),
            (200, Some(version.as_bytes())),
        ];
        for (i, (answer, (status, body))) in answers.iter().zip(expected).enumerate() {
            assert_eq!(
                answer.status, status,
                "{driver:?}: answer {i} to {:?}",
                requests[i]
            );
            if let Some(body) = body {
                assert_eq!(answer.body, body, "{driver:?}: answer {i}");
            }
        }
        // aptly's 404 is its own (gin's), the tree's is ringsock's.
        assert_eq!(answers[4].body, b"404 page not found", "{driver:?}");
        assert_eq!(answers[5].body, b"404 Not Found\n");
        assert_eq!(answers[3].header("Content-Length"), Some("20"));
        front.ringsock.stop();
    }
}

#[test]
fn aptly_killed_mid_request_is_502_or_a_cut_and_its_restart_serves_again() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let mut aptly = Aptly::start(dir.path());
        let front = front(driver, &aptly, dir.path(), &["--route-timeout", "3s"]);
        let (status, _) = front.curl(&[], "/api/version");
        assert_eq!(status, 200);

        // A slow upload in flight when aptly dies.
        let big = dir.path().join("big.bin");
        std::fs::write(&big, pattern(8 << 20, 3)).unwrap();
        let url = front.url("/api/files/slow");
        let form = format!("file=@{}", big.display());
        let upload = std::thread::spawn(move || {
            Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "60",
                    "--limit-rate",
                    "1M",
                    "-w",
                    "\n%{http_code}",
                ])
                .args(["-F", &form, &url])
                .output()
                .expect("run curl")
        });
        std::thread::sleep(Duration::from_millis(1500));
        aptly.kill();
        let out = upload.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let status = text.rsplit('\n').next().unwrap_or("");
        // 502, or a connection cut: never a complete-looking success.
        assert!(
            status == "502" || !out.status.success(),
            "{driver:?}: the upload ended {status:?} ({:?}): {text}",
            out.status
        );
        assert_ne!(status, "200", "{driver:?}");

        // Nobody accepts on aptly's socket (its backlog holds the connection): 504.
        let started = Instant::now();
        let (status, _) = front.curl(&[], "/api/version");
        assert_eq!(status, 504, "{driver:?}");
        assert!(started.elapsed() >= Duration::from_secs(3));

        aptly.restart();
        let (status, body) = front.curl(&[], "/api/version");
        assert_eq!((status, body), (200, Aptly::version_json()), "{driver:?}");
        let (_, metrics) = front.curl(&[], "/metrics");
        assert!(
            metrics.contains("cause=\"answer_timeout\"} 1"),
            "{driver:?}: {metrics}"
        );
        front.ringsock.stop();
    }
}

/// A 300 MB package upload: the body streams through, the server's memory does not grow
/// with it.
#[test]
fn a_300_mb_upload_to_aptly_keeps_the_servers_memory_flat() {
    const SIZE: usize = 300 << 20;
    /// Peak RSS allowed: measured 6.5-7.5 MiB on both drivers (the body goes through
    /// pipes, whose pages are the kernel's); twice that is a regression.
    const PEAK_KIB: u64 = 16 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    write_pattern_file(&big, SIZE);
    for driver in DRIVERS {
        let run = tempfile::tempdir().unwrap();
        let aptly = Aptly::start(run.path());
        let front = front(driver, &aptly, run.path(), &[]);
        let form = format!("file=@{}", big.display());
        let (status, body) = front.curl(&["-F", &form], "/api/files/big");
        assert_eq!(
            (status, body.as_str()),
            (200, "[\"big/big.bin\"]"),
            "{driver:?}"
        );
        let stored = aptly.root.join("upload/big/big.bin");
        assert_eq!(std::fs::metadata(&stored).unwrap().len(), SIZE as u64);
        let peak = peak_rss_kib(&front.ringsock);
        eprintln!(
            "{driver:?}: peak RSS {peak} KiB after a {} MiB upload",
            SIZE >> 20
        );
        assert!(peak < PEAK_KIB, "{driver:?}: peak RSS {peak} KiB");
        front.ringsock.stop();
    }
}

fn write_pattern_file(path: &Path, size: usize) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let chunk = pattern(1 << 20, 11);
    for _ in 0..size / chunk.len() {
        file.write_all(&chunk).unwrap();
    }
}

/// VmHWM: the most the process ever had resident.
fn peak_rss_kib(ringsock: &Ringsock) -> u64 {
    let mut status = String::new();
    std::fs::File::open(format!("/proc/{}/status", ringsock.pid()))
        .unwrap()
        .read_to_string(&mut status)
        .unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// An htpasswd file made by Apache's tool, as an operator makes one: `user` with a
/// bcrypt hash (`htpasswd -B`).
fn htpasswd(path: &Path, user: &str, password: &str, create: bool) {
    let mut cmd = Command::new("htpasswd");
    cmd.arg(if create { "-cbB" } else { "-bB" })
        .arg(path)
        .args([user, password]);
    let out = cmd
        .output()
        .expect("run htpasswd (apt-get install apache2-utils)");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn the_api_needs_credentials_and_guessing_them_is_limited() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("aptly.htpasswd");
        htpasswd(&file, "publisher", "s3cret pass", true);
        let aptly = Aptly::start(dir.path());
        let auth = format!("/api/={}", file.display());
        let front = front(driver, &aptly, dir.path(), &["--route-auth", &auth]);

        // No credentials: 401 with the challenge, and aptly never saw the request.
        let mut conn = Conn::new(connect_tcp(front.addr));
        conn.send(b"GET /api/version HTTP/1.1\r\nHost: repo\r\n\r\n");
        let answer = conn.response(false);
        assert_eq!(answer.status, 401, "{driver:?}");
        let challenge = answer.header("WWW-Authenticate").unwrap();
        assert!(
            challenge.starts_with("Basic realm=\"/api/\""),
            "{challenge}"
        );
        // An upload without credentials is refused before its body: curl waits for
        // 100 Continue, gets 401, and sends none of the file.
        let deb = package(dir.path(), "ringsock-auth", 100_000);
        let form = format!("file=@{}", deb.display());
        let (status, _) = front.curl(&["-F", &form], "/api/files/x");
        assert_eq!(status, 401, "{driver:?}");
        assert!(
            !aptly.root.join("upload/x").exists(),
            "{driver:?}: aptly took the upload"
        );

        // The right user publishes; the tree needs no credentials.
        publish(&front, &deb, &["-u", "publisher:s3cret pass"]);
        assert_eq!(front.curl(&[], "/dists/stable/Release").0, 200);

        // Wrong passwords: 401 each, until the client's address has failed 10 times in
        // a minute; then 429 with Retry-After, without a check.
        let wrong = ["-u", "publisher:guess"];
        let statuses: Vec<u16> = (0..12)
            .map(|_| front.curl(&wrong, "/api/repos").0)
            .collect();
        assert_eq!(&statuses[..10], &[401; 10], "{driver:?}");
        assert_eq!(&statuses[10..], &[429, 429], "{driver:?}");
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-D", "-", "-u", "publisher:guess"])
            .arg(front.url("/api/repos"))
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(head.contains("retry-after: "), "{head}");
        // Credentials checked right a moment ago still pass (from the cache).
        let (status, body) = front.curl(&["-u", "publisher:s3cret pass"], "/api/repos");
        assert_eq!(status, 200, "{driver:?}: {body}");

        let (_, metrics) = front.curl(&[], "/metrics");
        for line in [
            "outcome=\"unauthorized\"} 12",
            "outcome=\"limited\"} 3",
            ",result=\"rate_limited\"} 3",
        ] {
            assert!(
                metrics.contains(line),
                "{driver:?}: no {line:?} in\n{metrics}"
            );
        }
        // The access log names the user let in.
        let lines = front.log_lines(20);
        assert!(
            lines
                .iter()
                .any(|l| l.contains(" - publisher [") && l.contains("POST /api/repos ")),
            "{lines:#?}"
        );
        front.ringsock.stop();
    }
}

#[test]
fn route_allow_refuses_other_networks_before_any_credential() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("aptly.htpasswd");
        htpasswd(&file, "publisher", "pw", true);
        let aptly = Aptly::start(dir.path());
        let auth = format!("/api/={}", file.display());
        let args = [
            "--route-auth",
            &auth,
            "--route-allow",
            "/api/=10.0.0.0/8",
            "--proxy-protocol-from",
            "127.0.0.1",
        ];
        let front = front(driver, &aptly, dir.path(), &args);
        // The balancer (curl with a PROXY header) names 127.0.0.1, with or without
        // credentials: 403, and no password is checked.
        let proxied = "--haproxy-protocol";
        assert_eq!(
            front
                .curl(&[proxied, "-u", "publisher:pw"], "/api/version")
                .0,
            403
        );
        assert_eq!(
            front
                .curl(&[proxied, "-u", "publisher:x"], "/api/version")
                .0,
            403
        );
        // The tree is for everyone.
        std::fs::write(aptly.public().join("index.txt"), b"tree\n").unwrap();
        assert_eq!(
            front.curl(&[proxied], "/index.txt"),
            (200, "tree\n".to_string())
        );
        // A balancer names a client in 10/8: allowed, then authenticated.
        let credentials = "cHVibGlzaGVyOnB3"; // publisher:pw
        let mut conn = Conn::new(connect_tcp(front.addr));
        conn.send(
            format!(
                "PROXY TCP4 10.1.2.3 127.0.0.1 40000 80\r\nGET /api/version HTTP/1.1\r\n\
                 Host: repo\r\nAuthorization: Basic {credentials}\r\n\r\n"
            )
            .as_bytes(),
        );
        let answer = conn.response(false);
        assert_eq!(answer.status, 200, "{driver:?}");
        assert_eq!(answer.body, Aptly::version_json().as_bytes());
        let (_, metrics) = front.curl(&[proxied], "/metrics");
        assert!(metrics.contains("outcome=\"denied\"} 2"), "{metrics}");
        assert!(metrics.contains(",result=\"refused\"} 0"), "{metrics}");
        front.ringsock.stop();
    }
}

#[test]
fn sighup_rereads_the_htpasswd_file_and_a_broken_one_keeps_the_users() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aptly.htpasswd");
    htpasswd(&file, "old", "pw1", true);
    let aptly = Aptly::start(dir.path());
    let auth = format!("/api/={}", file.display());
    let notify = NotifySocket::new();
    let (listen, addr) = Listen::tcp();
    let public = aptly.public();
    let route = format!("/api/={}", aptly.socket.display());
    let ringsock = Spawn::new(&[
        "serve",
        "--root",
        public.to_str().unwrap(),
        "--route",
        &route,
        "--route-auth",
        &auth,
    ])
    .listen(listen)
    .env("NOTIFY_SOCKET", notify.env_value())
    .start();
    notify.expect("READY=1", Duration::from_secs(10));
    let front = Front {
        ringsock,
        addr,
        log: dir.path().join("none"),
    };
    assert_eq!(front.curl(&["-u", "old:pw1"], "/api/version").0, 200);
    assert_eq!(front.curl(&["-u", "new:pw2"], "/api/version").0, 401);

    htpasswd(&file, "new", "pw2", false);
    front.ringsock.signal(libc::SIGHUP);
    notify.expect("RELOADING=1", Duration::from_secs(5));
    notify.expect("READY=1", Duration::from_secs(5));
    assert_eq!(front.curl(&["-u", "new:pw2"], "/api/version").0, 200);

    // A file that does not parse: the users in force stay, and the log says why.
    std::fs::write(&file, "new:$2y$10$not-a-hash\n").unwrap();
    front.ringsock.signal(libc::SIGHUP);
    front
        .ringsock
        .wait_for_log("kept the users read before", Duration::from_secs(5));
    assert_eq!(front.curl(&["-u", "new:pw2"], "/api/version").0, 200);
    front.ringsock.stop();
}
