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
